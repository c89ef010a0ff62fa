//! How to reach the Kafka cluster, and how topics are created on it.

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Bootstrap servers, comma-separated (`host:port,…`). Empty: `quark up` starts the
    /// embedded broker and fills this in.
    #[serde(default)]
    pub brokers: String,
    /// Partitions of each topic Quark creates.
    pub partitions: i32,
    /// Replication factor of each topic Quark creates (1 for a single broker).
    pub replication: i32,
    /// Milliseconds between commits of processed offsets (and at shutdown).
    pub commit_interval_ms: u64,
    /// A consumer silent for this long leaves its group and its partitions move to the others;
    /// also how long a restarted consumer may wait for the partitions of its crashed self.
    pub session_timeout_ms: u64,
    /// A consumer that takes longer than this between two messages leaves its group; also the
    /// group's rebalance timeout, the longest a rebalance waits for members to rejoin.
    pub max_poll_interval_ms: u64,
    /// The longest a fetch waits for new messages; lower means lower latency, more requests.
    pub fetch_wait_max_ms: u64,
    /// Extra librdkafka properties for every client, e.g. `security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `ssl.ca.location`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            brokers: String::new(),
            partitions: 3,
            replication: 1,
            commit_interval_ms: 1000,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            fetch_wait_max_ms: 80,
            properties: BTreeMap::new(),
        }
    }
}

/// Whether an option named `key` holds a secret (`sasl.password`, `ssl.key.password`,
/// `aws_secret_access_key`, `token`…), never to be shown.
pub fn is_secret(key: &str) -> bool {
    ["password", "secret", "token"]
        .iter()
        .any(|s| key.to_ascii_lowercase().contains(s))
}

/// `value`, or `<redacted>` where `key` names a secret.
pub fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) { "<redacted>" } else { value }
}

/// Debug without the secrets among the properties: settings are printed in errors and logs.
impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), shown(k, v)))
            .collect();
        f.debug_struct("BusConfig")
            .field("brokers", &self.brokers)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("max_poll_interval_ms", &self.max_poll_interval_ms)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("properties", &properties)
            .finish()
    }
}

impl BusConfig {
    pub fn with_brokers(brokers: impl Into<String>) -> Self {
        BusConfig {
            brokers: brokers.into(),
            ..BusConfig::default()
        }
    }

    /// A librdkafka configuration with the brokers and the extra properties set.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// A consumer configuration for `group`: offsets are committed only by the caller's
    /// explicit store (`enable.auto.offset.store=false`), from the earliest offset when the group
    /// has none.
    pub fn consumer_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval_ms.to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval_ms.to_string(),
            )
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string());
        config
    }
}
