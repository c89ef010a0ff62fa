//! Decoding every registered version: an event written with an older, compatible version of its
//! schema decodes, in both framings, through the registry-backed resolvers (in-process and over
//! HTTP) once that version is registered, and not before. Pre-registration at start.

mod common;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use common::Server;
use quark_events::fingerprint::fingerprint;
use quark_events::samples::sample;
use quark_events::{
    CodecError, Event, EventKind, FeedbackReceived, SchemaResolver, decode, encode,
};
use quark_schema_registry::store::{SubjectVersion, VersionSpec};
use quark_schema_registry::{RegistryError, RemoteRegistry, Store, preregister, subject_of};
use serde_json::Value;

const KIND: EventKind = EventKind::FeedbackReceived;

/// The current feedback.received schema without the fields named (each has a default).
fn older_schema(without: &[&str]) -> String {
    let mut schema: Value = serde_json::from_str(KIND.schema_text()).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.retain(|f| !without.contains(&f["name"].as_str().unwrap()));
    schema.to_string()
}

/// `event` as a datum of `writer` (the current datum with the missing fields dropped), and
/// what it decodes to with the current schema (those fields at their defaults).
fn written_with(writer: &Schema, without: &[&str]) -> (Vec<u8>, Event) {
    let Event::FeedbackReceived(original) = sample(KIND, "older writer") else {
        unreachable!()
    };
    let current = encode(&Event::FeedbackReceived(original.clone())).unwrap();
    let mut datum = &current[10..];
    let reader = GenericDatumReader::builder(KIND.schema()).build().unwrap();
    let Avro::Record(fields) = reader.read_value(&mut datum).unwrap() else {
        panic!("a record")
    };
    let kept = fields
        .into_iter()
        .filter(|(name, _)| !without.contains(&name.as_str()))
        .collect();
    let bytes = GenericDatumWriter::builder(writer)
        .build()
        .unwrap()
        .write_value_to_vec(Avro::Record(kept))
        .unwrap();
    let expected = FeedbackReceived {
        correction: if without.contains(&"correction") {
            None
        } else {
            original.correction.clone()
        },
        labels: if without.contains(&"labels") {
            vec![]
        } else {
            original.labels.clone()
        },
        ..original
    };
    (bytes, expected.into())
}

fn single_object(writer: &Schema, datum: &[u8]) -> Vec<u8> {
    [&[0xC3, 0x01][..], &fingerprint(writer), datum].concat()
}

fn confluent(id: u32, datum: &[u8]) -> Vec<u8> {
    [&[0][..], &id.to_be_bytes(), datum].concat()
}

fn label(result: Result<Event, CodecError>) -> &'static str {
    result.map(|_| "decoded").unwrap_or_else(|e| e.label())
}

#[tokio::test]
async fn an_older_version_decodes_in_both_framings_once_registered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(common::database(dir.path()).await)
        .await
        .unwrap();
    preregister(&store).await.unwrap();
    let resolver = store.resolver();
    let text = older_schema(&["correction"]);
    let writer = Schema::parse_str(&text).unwrap();
    let (datum, expected) = written_with(&writer, &["correction"]);
    let next_id = EventKind::ALL.len() as u32 + 1;

    assert_eq!(
        label(decode(&single_object(&writer, &datum), &resolver)),
        "unknown_fingerprint"
    );
    assert_eq!(
        label(decode(&confluent(next_id, &datum), &resolver)),
        "unknown_schema_id"
    );

    let id = store.register(&subject_of(KIND), &text).await.unwrap() as u32;
    assert_eq!(id, next_id);
    assert_eq!(
        decode(&single_object(&writer, &datum), &resolver).unwrap(),
        expected
    );
    assert_eq!(decode(&confluent(id, &datum), &resolver).unwrap(), expected);
    let current = sample(KIND, "current");
    assert_eq!(
        decode(&encode(&current).unwrap(), &resolver).unwrap(),
        current
    );
}

#[tokio::test]
async fn a_resolver_learns_versions_registered_elsewhere_on_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let reader = Store::open(common::database(dir.path()).await)
        .await
        .unwrap();
    preregister(&reader).await.unwrap();
    let resolver = reader.resolver();
    let elsewhere = Store::open(common::database(dir.path()).await)
        .await
        .unwrap();
    let text = older_schema(&["correction", "labels"]);
    let writer = Schema::parse_str(&text).unwrap();
    let id = elsewhere.register(&subject_of(KIND), &text).await.unwrap() as u32;
    let (datum, expected) = written_with(&writer, &["correction", "labels"]);

    let message = single_object(&writer, &datum);
    let miss = decode(&message, &resolver)
        .unwrap_err()
        .miss()
        .expect("a schema miss");
    assert!(
        resolver.refresh(miss).await,
        "the reload finds the new version"
    );
    assert_eq!(decode(&message, &resolver).unwrap(), expected);
    assert_eq!(decode(&confluent(id, &datum), &resolver).unwrap(), expected);
}

#[tokio::test]
async fn the_http_client_resolves_every_version_and_registers_the_current_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let old = older_schema(&["correction"]);
    server
        .store
        .register(&subject_of(KIND), &old)
        .await
        .unwrap();
    // It registers: the key goes in the URL, as Confluent's clients take it.
    let remote = RemoteRegistry::connect(&server.url_with_key())
        .await
        .unwrap();
    for kind in EventKind::ALL {
        let registered = latest(&server.store, *kind).await.id as u32;
        assert_eq!(remote.id_of(*kind), Some(registered), "{kind}");
    }
    let writer = Schema::parse_str(&old).unwrap();
    let (datum, expected) = written_with(&writer, &["correction"]);
    assert_eq!(
        decode(&single_object(&writer, &datum), remote.as_ref()).unwrap(),
        expected
    );

    // Registered after the client connected: found by id, and by fingerprint.
    for without in [&["labels"][..], &["correction", "labels"][..]] {
        let text = older_schema(without);
        let id = server
            .store
            .register(&subject_of(KIND), &text)
            .await
            .unwrap() as u32;
        let writer = Schema::parse_str(&text).unwrap();
        let (datum, expected) = written_with(&writer, without);
        let message = match without.len() {
            1 => confluent(id, &datum),
            _ => single_object(&writer, &datum),
        };
        let miss = decode(&message, remote.as_ref())
            .unwrap_err()
            .miss()
            .unwrap();
        assert!(remote.refresh(miss).await, "{miss:?}");
        assert_eq!(decode(&message, remote.as_ref()).unwrap(), expected);
    }
    server.stop().await;
}

async fn latest(store: &Store, kind: EventKind) -> SubjectVersion {
    store
        .version(&subject_of(kind), VersionSpec::Latest)
        .await
        .unwrap()
}

#[tokio::test]
async fn preregistration_is_idempotent_and_refuses_an_incompatible_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(common::database(dir.path()).await)
        .await
        .unwrap();
    preregister(&store).await.unwrap();
    let mut first = Vec::new();
    for kind in EventKind::ALL {
        first.push(latest(&store, *kind).await);
    }
    let restarted = Store::open(common::database(dir.path()).await)
        .await
        .unwrap();
    preregister(&restarted).await.unwrap();
    for (kind, before) in EventKind::ALL.iter().zip(first) {
        assert_eq!(latest(&restarted, *kind).await, before, "{kind}");
        assert_eq!(restarted.versions(&subject_of(*kind)).await.unwrap(), [1]);
    }

    // A subject whose earlier version lacks a field the current schema requires (no default).
    let other = tempfile::tempdir().unwrap();
    let store = Store::open(common::database(other.path()).await)
        .await
        .unwrap();
    let text = older_schema(&["prompt"]);
    store.register(&subject_of(KIND), &text).await.unwrap();
    let error = preregister(&store).await.unwrap_err();
    assert!(
        matches!(&error, RegistryError::Preregistration { source, .. }
            if matches!(**source, RegistryError::Incompatible { .. })),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("feedback.received-value") && message.contains("prompt"),
        "{message}"
    );
}
