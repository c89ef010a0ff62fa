//! Decoding never panics on what a broker may hand it: 200,000 mutations (bytes flipped, set
//! to 0xFF or 0x80, inserted, removed, the message cut short) of a sample of every event type in
//! both framings, seeded, each decoded with `catch_unwind` around it. Every message either
//! decodes or fails with a labelled error, which is what sends it to the dead-letter topic.

use quark_events::codec::MAX_DATUM_ALLOCATION;
use quark_events::samples::sample;
use quark_events::{EventKind, LocalRegistry, decode, encode, encode_confluent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

fn mutate(rng: &mut StdRng, message: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        if message.is_empty() {
            return;
        }
        let at = rng.random_range(0..message.len());
        match rng.random_range(0..6) {
            0 => message[at] ^= 1 << rng.random_range(0..8),
            1 => message[at] = 0xFF,
            // A varint that goes on: lengths and counts far larger than the message.
            2 => message[at] |= 0x80,
            3 => message.insert(at, rng.random()),
            4 => {
                message.remove(at);
            }
            _ => message.truncate(at),
        }
    }
}

#[test]
fn mutated_messages_of_every_type_decode_or_fail_with_a_label_and_never_panic() {
    let registry = LocalRegistry::default();
    let mut originals = Vec::new();
    for kind in EventKind::ALL {
        let event = sample(*kind, "mutated");
        originals.push(encode(&event).unwrap());
        originals.push(encode_confluent(&event, &registry).unwrap());
    }
    let mut rng = StdRng::seed_from_u64(17);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..200_000 {
        let mut message = originals[rng.random_range(0..originals.len())].clone();
        mutate(&mut rng, &mut message);
        let decoded = std::panic::catch_unwind(|| decode(&message, &registry));
        let label = match decoded {
            Ok(Ok(_)) => "decoded",
            Ok(Err(e)) => e.label(),
            Err(_) => panic!("decoding panicked on {message:?}"),
        };
        *outcomes.entry(label).or_default() += 1;
    }
    eprintln!("{outcomes:?}");
    // Both ends were reached: some mutations still decode (a changed string), most do not.
    assert!(outcomes["decoded"] > 1_000, "{outcomes:?}");
    assert!(outcomes.len() > 4, "{outcomes:?}");
}

#[test]
fn a_length_far_past_the_message_is_refused_before_anything_is_allocated() {
    let registry = LocalRegistry::default();
    let event = sample(EventKind::FeedbackReceived, "long");
    let message = encode(&event).unwrap();
    // The header (event id, a string) comes first after the framing: its length, zigzag
    // varint, becomes 1 GiB.
    let mut forged = message[..10].to_vec();
    let mut length = (1u64 << 30) << 1;
    while length >= 0x80 {
        forged.push((length as u8) | 0x80);
        length >>= 7;
    }
    forged.push(length as u8);
    forged.extend_from_slice(&message[11..]);
    let error = decode(&forged, &registry).unwrap_err();
    assert_eq!(error.label(), "invalid_avro");
    assert!(
        error
            .to_string()
            .contains(&MAX_DATUM_ALLOCATION.to_string()),
        "{error}"
    );
}
