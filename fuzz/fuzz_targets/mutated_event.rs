//! A well-formed event of every type, in both framings, damaged: the fuzzer picks the type,
//! the framing, where to cut it and which bytes to overwrite (`quark_fuzz::damaged`), so that
//! it reaches deep into every schema's datum instead of failing at the header.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(bytes) = quark_fuzz::damaged(data) {
        quark_fuzz::decodes_or_refuses(&bytes);
    }
});
