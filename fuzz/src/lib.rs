//! What the fuzz targets share: a registry that holds every schema version ever committed, and
//! the property every decoded event must have.

use apache_avro::Schema;
use quark_events::samples::sample;
use quark_events::{Event, EventKind, Id, LocalRegistry, decode, encode};
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
