//! Third-party Kafka clients run against a broker: the Python ones
//! (tests/python/third_party_clients.py) and KafkaJS (tests/node/kafkajs_client.js).

use quark_events::Event;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn in_tests(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `script` with the environment's Python (`python -c`), asserts it succeeded (its
/// output in the message otherwise) and returns what it printed.
pub fn python_script(script: &str) -> Vec<u8> {
    let out = crate::python()
        .args(["-c", script])
        .output()
        .expect("run the Python script");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs the Python `clients`, each publishing `count` feedback events (praise, which teaches
/// nothing, with `praise`) and reading them back; asserts each read back all it published and
/// returns every published event id.
pub fn python_clients(brokers: &str, count: usize, praise: bool, clients: &[&str]) -> Vec<String> {
    let out = crate::python()
        .arg(in_tests("python/third_party_clients.py"))
        .args(["--brokers", brokers, "--count", &count.to_string()])
        .args(praise.then_some("--praise"))
        .args(clients)
        .output()
        .expect("run the third-party clients");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clients failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut published = Vec::new();
    for (line, client) in stdout.lines().zip(clients) {
        let result: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(result["client"], *client);
        assert!(result.get("error").is_none(), "{client}: {result}");
        let ids = |key: &str| -> BTreeSet<String> {
            let list = result[key].as_array().unwrap();
            list.iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids("published").len(), count, "{client} published");
        assert_eq!(ids("consumed"), ids("published"), "{client} read back");
        published.extend(ids("published"));
    }
    assert_eq!(
        published.len(),
        count * clients.len(),
        "one line per client"
    );
    published
}

/// KafkaJS publishes `events` (encoded by Quark) with its idempotent producer and reads them
/// back with a consumer group; asserts it read back every one.
pub fn kafkajs(brokers: &str, events: &[Event]) {
    let payloads = events
        .iter()
        .map(|e| hex::encode(quark_events::encode(e).unwrap()));
    let modules = PathBuf::from(std::env::var("QUARK_NODE").expect("QUARK_NODE (scripts/env)"))
        .join("node_modules");
    let out = Command::new("node")
        .arg(in_tests("node/kafkajs_client.js"))
        .arg(brokers)
        .args(payloads)
        .env("NODE_PATH", modules)
        .output()
        .expect("run node");
    let line = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{e}: {line}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(result.get("error").is_none(), "kafkajs: {result}");
    let count = Some(events.len() as u64);
    assert_eq!(
        (result["published"].as_u64(), result["consumed"].as_u64()),
        (count, count),
        "kafkajs: {result}"
    );
}
