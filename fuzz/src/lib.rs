//! What the fuzz targets share: a registry that holds every schema version ever committed, and
//! the property every decoded event must have.

use apache_avro::Schema;
use quark_events::samples::sample;
use quark_events::{Event, EventKind, Id, LocalRegistry, decode, encode, encode_confluent};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;

/// The first registry id given to a committed (older) schema version; current schemas hold
/// 1..=n as in [`LocalRegistry::default`].
pub const HISTORY_IDS: u32 = 1000;

/// Every current schema, and every version of each committed in the repository's history, so
/// that the fuzzer reaches schema resolution (an older writer read into today's type) as well.
pub static REGISTRY: LazyLock<LocalRegistry> = LazyLock::new(|| {
    let registry = LocalRegistry::default();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut id = HISTORY_IDS;
    for kind in EventKind::ALL {
        for text in committed_versions(&repo, kind.topic()) {
            if let Ok(schema) = Schema::parse_str(&text) {
                registry.register(id, schema);
                id += 1;
            }
        }
    }
    registry
});

/// The text of every committed version of `schemas/<topic>.avsc`.
fn committed_versions(repo: &Path, topic: &str) -> Vec<String> {
    let path = format!("schemas/{topic}.avsc");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let commits = git(&["log", "--format=%H", "--", &path]).unwrap_or_default();
    commits
        .lines()
        .filter_map(|commit| git(&["show", &format!("{commit}:{path}")]))
        .collect()
}

/// The sample event of `kind` with every id and time fixed, so that an input the fuzzer saves
/// reproduces in another process.
pub fn fixed_sample(kind: EventKind) -> Event {
    fn fix(value: &mut Value) {
        match value {
            Value::String(s) if s.parse::<Id>().is_ok() => *s = Id(Default::default()).to_string(),
            Value::Array(items) => items.iter_mut().for_each(fix),
            Value::Object(fields) => {
                for (name, field) in fields.iter_mut() {
                    if name.ends_with("_at") && field.is_i64() {
                        *field = Value::from(0);
                    }
                    fix(field);
                }
            }
            _ => {}
        }
    }
    let mut json = sample(kind, "fuzz").to_json();
    fix(&mut json);
    Event::from_json(kind, json).expect("a sample with fixed ids is still an event")
}

/// Decodes `bytes`; whatever decodes must encode again and decode to the same event (a
/// consumer that republishes it, or a replay, sees the same event). Compared as JSON: maps
/// encode in no fixed order, and a NaN that decoded must still count as the same. What does
/// not decode is an error, never a panic: the runner sends it to the dead-letter topic.
pub fn decodes_or_refuses(bytes: &[u8]) {
    let Ok(event) = decode(bytes, &*REGISTRY) else {
        return;
    };
    let encoded = encode(&event).expect("a decoded event encodes");
    let again: Event = decode(&encoded, &*REGISTRY).expect("an encoded event decodes");
    assert_eq!(
        again.to_json(),
        event.to_json(),
        "{:?} changed on a round trip",
        event.kind()
    );
}

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

/// A well-formed event damaged as `data` says: its first bytes pick the type, the framing and
/// how much to cut off the end; each following (position, value) triple overwrites a byte.
/// None when `data` is too short to say.
pub fn damaged(data: &[u8]) -> Option<Vec<u8>> {
    let [kind, framing, cut, edits @ ..] = data else {
        return None;
    };
    let mut bytes = ENCODED[*kind as usize % ENCODED.len()][usize::from(framing % 2)].clone();
    // Positions wrap around the message.
    for edit in edits.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % bytes.len();
        bytes[at] = edit[2];
    }
    // Every other framing byte also cuts up to 7 bytes off the end.
    let keep = bytes.len() - usize::from(cut % 8) * usize::from(framing & 2 != 0);
    bytes.truncate(keep);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_events::SchemaResolver;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Not a fuzzer: a fixed, seeded sweep over the targets' own code, so that `scripts/test`
    /// notices when they stop building or the property stops holding for plain damage.
    #[test]
    fn every_damaged_event_decodes_to_itself_or_is_refused() {
        let mut rng = StdRng::seed_from_u64(17);
        let (mut decoded, mut refused) = (0, 0);
        for kind in 0..EventKind::ALL.len() as u8 {
            for framing in 0..4 {
                let intact = damaged(&[kind, framing, 0]).expect("three bytes say enough");
                assert!(
                    decode(&intact, &*REGISTRY).is_ok(),
                    "{kind}/{framing} intact"
                );
                for _ in 0..200 {
                    let mut data = vec![kind, framing, rng.random()];
                    data.extend((0..3 * rng.random_range(1..4)).map(|_| rng.random::<u8>()));
                    let bytes = damaged(&data).expect("long enough");
                    decodes_or_refuses(&bytes);
                    decodes_or_refuses(&data);
                    match decode(&bytes, &*REGISTRY) {
                        Ok(_) => decoded += 1,
                        Err(_) => refused += 1,
                    }
                }
            }
        }
        // Both outcomes are reached, or the sweep tests nothing.
        assert!(
            decoded > 0 && refused > 0,
            "{decoded} decoded, {refused} refused"
        );
    }

    #[test]
    fn every_committed_schema_version_parses_into_the_registry() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let committed: u32 = EventKind::ALL
            .iter()
            .map(|kind| committed_versions(&repo, kind.topic()).len() as u32)
            .sum();
        assert!(
            committed >= EventKind::ALL.len() as u32,
            "{committed} in git history"
        );
        let registered = (HISTORY_IDS..)
            .take_while(|id| REGISTRY.schema(*id).is_some())
            .count() as u32;
        assert_eq!(registered, committed);
    }
}
