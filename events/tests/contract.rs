//! The event contract: Rust types match `schemas/`, every event survives both framings, and
//! every schema still reads what its earlier committed versions wrote.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use quark_events::samples::sample;
use quark_events::{
    CodecError, EventKind, LocalRegistry, SchemaResolver, decode, encode, encode_confluent,
};
use serde_json::Value;
use std::process::Command;

/// A schema as JSON without `doc` attributes (documentation may differ, structure may not).
fn structure(schema: &Schema) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("doc");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(schema).unwrap();
    strip(&mut json);
    json
}

#[test]
fn rust_types_match_their_schema_files() {
    for kind in EventKind::ALL {
        assert_eq!(
            structure(&kind.derived_schema()),
            structure(kind.schema()),
            "the Rust type of {kind} drifted from schemas/{kind}.avsc"
        );
    }
}

#[test]
fn every_field_of_every_schema_is_documented() {
    fn check(v: &Value, path: &str, kind: EventKind) {
        if let Value::Object(map) = v {
            let is_field = map.contains_key("name")
                && map.contains_key("type")
                && !map.contains_key("fields")
                && !map.contains_key("symbols");
            let is_named = matches!(
                map.get("type").and_then(Value::as_str),
                Some("record" | "enum")
            );
            if is_field || is_named {
                assert!(
                    map.get("doc")
                        .and_then(Value::as_str)
                        .is_some_and(|d| !d.is_empty()),
                    "{kind}: {path}/{} has no doc",
                    map["name"]
                );
            }
            for (k, child) in map {
                check(child, &format!("{path}/{k}"), kind);
            }
        } else if let Value::Array(items) = v {
            items.iter().for_each(|c| check(c, path, kind));
        }
    }
    for kind in EventKind::ALL {
        check(
            &serde_json::from_str(kind.schema_text()).unwrap(),
            "",
            *kind,
        );
    }
}

#[test]
fn every_event_round_trips_in_both_framings() {
    let registry = LocalRegistry::default();
    for kind in EventKind::ALL {
        let event = sample(*kind, "contract-test");
        let single = encode(&event).unwrap();
        assert_eq!(&single[..2], &[0xC3, 0x01]);
        assert_eq!(&single[2..10], &kind.fingerprint());
        assert_eq!(
            decode(&single, &registry).unwrap(),
            event,
            "{kind} single-object"
        );

        let confluent = encode_confluent(&event, &registry).unwrap();
        assert_eq!(confluent[0], 0);
        assert_eq!(
            u32::from_be_bytes(confluent[1..5].try_into().unwrap()),
            registry.id_of(*kind).unwrap()
        );
        assert_eq!(
            decode(&confluent, &registry).unwrap(),
            event,
            "{kind} Confluent"
        );

        let json = event.to_json();
        assert_eq!(
            quark_events::Event::from_json(*kind, json).unwrap(),
            event,
            "{kind} JSON"
        );
    }
}

#[test]
fn fingerprints_are_distinct_and_match_the_avro_spec() {
    let mut seen = std::collections::HashSet::new();
    for kind in EventKind::ALL {
        assert!(
            seen.insert(kind.fingerprint()),
            "{kind} shares a fingerprint"
        );
        // CRC-64-AVRO of the Parsing Canonical Form, little-endian (Avro specification).
        let expected =
            rabin(quark_events::fingerprint::parsing_canonical_form(kind.schema()).as_bytes());
        assert_eq!(kind.fingerprint(), expected.to_le_bytes(), "{kind}");
    }
}

/// The reference CRC-64-AVRO from the Avro specification, written out independently.
fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: Vec<u64> = (0..256u64)
        .map(|i| (0..8).fold(i, |fp, _| (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)))))
        .collect();
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

#[test]
fn parsing_canonical_form_follows_the_specification() {
    // Primitives in their simple form, attributes other than name/type/fields/symbols/items/
    // values/size dropped, names fully qualified, no whitespace (what fastavro and Java
    // compute; the `a_python_producer…` end-to-end test checks the fingerprints agree).
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"R","namespace":"n","doc":"d","fields":[
            {"name":"id","type":{"type":"string","logicalType":"uuid"},"doc":"x"},
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["a","b"]}},
            {"name":"m","type":{"type":"map","values":"int"},"default":{}}]}"#,
    )
    .unwrap();
    assert_eq!(
        quark_events::fingerprint::parsing_canonical_form(&schema),
        r#"{"name":"n.R","type":"record","fields":[{"name":"id","type":"string"},{"name":"at","type":"long"},{"name":"e","type":{"name":"n.E","type":"enum","symbols":["a","b"]}},{"name":"m","type":{"type":"map","values":"int"}}]}"#
    );
}

#[test]
fn bad_bytes_are_clear_errors() {
    let registry = LocalRegistry::default();
    let good = encode(&sample(EventKind::FeedbackReceived, "t")).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "empty"),
        (vec![0x7b, 0x22], "unknown_framing"),
        (vec![0xC3, 0x01, 1, 2], "truncated"),
        (vec![0xC3], "truncated"),
        (vec![0xC3, 0x02, 1, 2], "unknown_framing"),
        (
            [&[0xC3, 0x01], &[9u8; 8][..], &good[10..]].concat(),
            "unknown_fingerprint",
        ),
        (good[..good.len() - 5].to_vec(), "invalid_avro"),
        ([&good[..], &[0, 0]].concat(), "trailing_bytes"),
        (vec![0, 0, 0, 0, 99, 1], "unknown_schema_id"),
    ];
    for (bytes, label) in cases {
        let err: CodecError = decode(&bytes, &registry).unwrap_err();
        assert_eq!(err.label(), label, "{bytes:02x?}: {err}");
    }
}

/// Every committed version of every schema, oldest first, from git history.
fn committed_versions(kind: EventKind) -> Vec<(String, String)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let path = format!("schemas/{}.avsc", kind.topic());
    let log = Command::new("git")
        .args(["log", "--format=%H", "--", &path])
        .current_dir(root)
        .output()
        .expect("git must be installed: the compatibility test reads schema history from it");
    assert!(
        log.status.success(),
        "git log failed: {}",
        String::from_utf8_lossy(&log.stderr)
    );
    String::from_utf8(log.stdout)
        .unwrap()
        .lines()
        .rev()
        .map(|commit| {
            let show = Command::new("git")
                .args(["show", &format!("{commit}:{path}")])
                .current_dir(root)
                .output()
                .unwrap();
            (commit.to_string(), String::from_utf8(show.stdout).unwrap())
        })
        .collect()
}

#[test]
fn current_schemas_read_every_committed_version() {
    let mut versions = 0;
    for kind in EventKind::ALL {
        for (commit, text) in committed_versions(*kind) {
            let old = Schema::parse_str(&text).unwrap_or_else(|e| panic!("{kind}@{commit}: {e}"));
            SchemaCompatibility::can_read(&old, kind.schema()).unwrap_or_else(|e| {
                panic!(
                    "schemas/{kind}.avsc cannot read data written with its version of {commit}: {e}"
                )
            });
            versions += 1;
        }
    }
    // Before the first commit there is no history; afterwards every schema has at least one version.
    let in_git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if in_git {
        assert!(
            versions >= EventKind::ALL.len(),
            "expected every schema in git history, found {versions} versions"
        );
    }
}

#[test]
fn the_compatibility_check_rejects_a_breaking_change() {
    // Guard that the check above can fail: adding a required field without a default breaks
    // readers of old data.
    let kind = EventKind::FeedbackReceived;
    let mut json: Value = serde_json::from_str(kind.schema_text()).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string"}));
    let breaking = Schema::parse(&json).unwrap();
    assert!(SchemaCompatibility::can_read(kind.schema(), &breaking).is_err());
    // Adding it as optional with a default is fine.
    json["fields"].as_array_mut().unwrap().pop();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": ["null", "string"], "default": null}));
    let compatible = Schema::parse(&json).unwrap();
    assert!(SchemaCompatibility::can_read(kind.schema(), &compatible).is_ok());
}

#[test]
fn confluent_data_written_with_an_older_schema_decodes_into_the_current_type() {
    // An older feedback.received without `labels`: a producer still on it registered it under
    // its own id. Its data must decode, with `labels` taking the current schema's default.
    let kind = EventKind::FeedbackReceived;
    let mut old: Value = serde_json::from_str(kind.schema_text()).unwrap();
    old["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "labels");
    let old = Schema::parse(&old).unwrap();
    let registry = LocalRegistry::default();
    registry.register(100, old.clone());

    let quark_events::Event::FeedbackReceived(mut current) = sample(kind, "old-producer") else {
        unreachable!()
    };
    let mut record = apache_avro::to_value(&current).unwrap();
    if let apache_avro::types::Value::Record(fields) = &mut record {
        fields.retain(|(name, _)| name != "labels");
    }
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&old)
        .build()
        .unwrap();
    let datum = writer
        .write_value_to_vec(record.resolve(&old).unwrap())
        .unwrap();
    let message = [&[0u8][..], &100u32.to_be_bytes(), &datum].concat();

    current.labels.clear();
    assert_eq!(decode(&message, &registry).unwrap(), current.into());
}
