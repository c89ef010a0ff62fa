//! Any bytes at all, as a consumer would receive them from the bus.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| quark_fuzz::decodes_or_refuses(bytes));
