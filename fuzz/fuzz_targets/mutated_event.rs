//! A well-formed event of every type, in both framings, damaged: the fuzzer picks the type,
//! the framing, where to cut it and which bytes to overwrite, so that it reaches deep into
//! every schema's datum instead of failing at the header.
#![no_main]

use quark_events::{EventKind, encode, encode_confluent};
use quark_fuzz::{REGISTRY, decodes_or_refuses, fixed_sample};
use std::sync::LazyLock;

/// Each event type's sample in single-object and in Confluent framing.
static ENCODED: LazyLock<Vec<[Vec<u8>; 2]>> = LazyLock::new(|| {
    EventKind::ALL
        .iter()
        .map(|kind| {
            let event = fixed_sample(*kind);
            [
                encode(&event).expect("samples encode"),
                encode_confluent(&event, &*REGISTRY).expect("samples encode"),
            ]
        })
        .collect()
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [kind, framing, cut, edits @ ..] = data else {
        return;
    };
    let mut bytes = ENCODED[*kind as usize % ENCODED.len()][usize::from(framing % 2)].clone();
    // Each edit is (position, value); positions wrap around the message.
    for edit in edits.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % bytes.len();
        bytes[at] = edit[2];
    }
    // Every other framing byte also cuts up to 7 bytes off the end.
    let keep = bytes.len() - usize::from(cut % 8) * usize::from(framing & 2 != 0);
    decodes_or_refuses(&bytes[..keep]);
});
