//! The `quark` command as a user runs it: `up` with its embedded broker, `publish`, `watch`,
//! `topics`, `trace`, and a clean stop on Ctrl-C.

use quark_e2e::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Quark {
    data_dir: tempfile::TempDir,
    broker: String,
    gateway: String,
}

impl Quark {
    fn new() -> Quark {
        Quark {
            data_dir: tempfile::tempdir().unwrap(),
            broker: format!("127.0.0.1:{}", free_port()),
            gateway: format!("127.0.0.1:{}", free_port()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("quark"));
        command
            .args(args)
            .env("QUARK__DATA_DIR", self.data_dir.path())
            .env("QUARK__BROKER__LISTEN", &self.broker)
            .env("QUARK__GATEWAY__LISTEN", &self.gateway)
            .env("QUARK__SCHEMA_REGISTRY__LISTEN", "127.0.0.1:0")
            .env("QUARK__TELEMETRY__LOG", "warn")
            .current_dir(self.data_dir.path());
        command
    }

    /// A client command against the broker `quark up` started.
    fn client(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .env("QUARK__BUS__BROKERS", &self.broker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

const FEEDBACK: &str = r#"{"feedback_id":"7d9f4c1e-8b1a-4a57-9d1e-0c6a1f2b3c4d","request_id":"req-1","model_id":"m-1","prompt":"2+2?","response":"5","rating":1,"correction":"4"}"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn up_publish_watch_topics_trace_and_stop() {
    let quark = Quark::new();
    // A starting corpus too short to keep: the loop idles, the commands are what is tested.
    let corpus = quark.data_dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("note.txt"), "A short note.").unwrap();
    // The terminal gets the banner, progress lines and warnings; the log file everything.
    let terminal = quark.data_dir.path().join("terminal.txt");
    let mut up = quark
        .command(&["up", "--ingest", corpus.to_str().unwrap()])
        .env("QUARK__TELEMETRY__LOG", "info")
        .stderr(std::fs::File::create(&terminal).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "quark up to start the broker",
        Duration::from_secs(60),
        || std::net::TcpStream::connect(&quark.broker).is_ok(),
    );

    // Wait until the topics exist (quark up creates them), then publish.
    let mut published = quark.client(&["publish", "feedback.received"], FEEDBACK);
    for _ in 0..100 {
        if published.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        published = quark.client(&["publish", "feedback.received"], FEEDBACK);
    }
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert!(text(&published.stderr).contains("published 1 event"));

    // Bad input: a clear error and nothing produced.
    let bad = quark.client(
        &["publish", "feedback.received"],
        &FEEDBACK.replace("\"rating\":1", "\"rating\":\"bad\""),
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("does not match schemas/feedback.received.avsc"),
        "{}",
        text(&bad.stderr)
    );
    let unknown = quark.client(&["publish", "feedback.recieved"], FEEDBACK);
    assert!(
        text(&unknown.stderr).contains("unknown topic"),
        "{}",
        text(&unknown.stderr)
    );

    let watched = quark.client(
        &[
            "watch",
            "feedback.received",
            "--from-beginning",
            "--limit",
            "1",
        ],
        "",
    );
    assert!(watched.status.success(), "{}", text(&watched.stderr));
    let lines: Vec<serde_json::Value> = text(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one event: the bad publish produced nothing"
    );
    let event = &lines[0]["event"];
    assert_eq!(event["request_id"], "req-1");
    assert_eq!(event["correction"], "4");
    let correlation = event["header"]["correlation_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The journal service of `quark up` records it; `quark topics` then shows its lag as 0.
    let mut topics = String::new();
    for _ in 0..100 {
        topics = text(&quark.client(&["topics"], "").stdout);
        if topics
            .lines()
            .any(|l| l.starts_with("feedback.received ") && l.contains("journal=0"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let line = topics
        .lines()
        .find(|l| l.starts_with("feedback.received "))
        .unwrap_or_else(|| panic!("{topics}"));
    assert!(line.contains("journal=0"), "{topics}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "1", "one message: {topics}");

    let traced = quark.client(&["trace", &correlation], "");
    let lines: Vec<serde_json::Value> = text(&traced.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(&traced.stderr));
    assert_eq!(lines[0]["event_type"], "feedback.received");

    // Standard clients against quark up's broker (aiokafka's idempotent producer used to
    // leave it half-dead), KafkaJS among them; then quark up carries on: its journal records
    // all of them and a publish still goes through.
    python_clients(
        &quark.broker,
        2,
        false,
        &["aiokafka-idempotent", "kafka-python", "confluent-kafka"],
    );
    let kafkajs_events: Vec<_> = (0..2)
        .map(|_| {
            quark_events::samples::sample(quark_events::EventKind::FeedbackReceived, "kafkajs")
        })
        .collect();
    kafkajs(&quark.broker, &kafkajs_events);

    let again = quark.client(&["publish", "feedback.received"], FEEDBACK);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let recorded = (0..150).any(|_| {
        let topics = text(&quark.client(&["topics"], "").stdout);
        // One published before, eight by the clients, one after.
        let done = topics.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.starts_with(&["feedback.received", "10"]) && l.contains("journal=0")
        });
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert!(recorded, "{}", text(&quark.client(&["topics"], "").stdout));

    // Ctrl-C stops everything, the broker child included.
    let status = Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = (0..300).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        up.try_wait().unwrap()
    });
    assert!(
        exited.is_some_and(|s| s.success()),
        "quark up did not exit cleanly: {exited:?}"
    );
    wait_for("the broker to stop", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&quark.broker).is_err()
    });

    let terminal = std::fs::read_to_string(&terminal).unwrap();
    assert!(terminal.contains("quark up: gateway http://"), "{terminal}");
    assert!(
        terminal.contains("feedback.received") && terminal.contains("feedback on req-1"),
        "the progress line of the published feedback: {terminal}"
    );
    assert!(
        !terminal.contains("ERROR"),
        "a healthy run has no error: {terminal}"
    );
    assert!(
        !terminal.contains(" INFO "),
        "no info lines on the terminal: {terminal}"
    );
    let logs = quark.data_dir.path().join("logs");
    let log = std::fs::read_to_string(logs.join("quark.log")).unwrap();
    assert!(log.contains("running; Ctrl-C stops"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    let broker_log = std::fs::read_to_string(logs.join("broker.log")).unwrap();
    assert!(!broker_log.contains("ERROR"), "{broker_log}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let quark = Quark::new();
    let output = quark
        .command(&["topics"])
        .env("QUARK__BUS__PARTITIONS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("bus.partitions"),
        "{}",
        text(&output.stderr)
    );
}

/// A producer in another language, with only the `.avsc` file: `examples/publish_feedback.py`.
#[test]
fn a_python_producer_with_only_the_schema_file_interoperates() {
    let broker = TestBroker::start();
    let bus = broker.bus();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(quark_events::bus::ensure_topics(&bus))
        .unwrap();
    let python = std::env::var("QUARK_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/publish_feedback.py"
    );
    let output = Command::new(&python)
        .args([
            script,
            "--brokers",
            &broker.address,
            "--request-id",
            "from-python",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{python} {script}: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let events = decode_all(&read_topic(&bus, "feedback.received", 1));
    let quark_events::Event::FeedbackReceived(feedback) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(feedback.request_id, "from-python");
    assert_eq!(feedback.correction.as_deref(), Some("Paris."));
    assert_eq!(feedback.header.producer, "support-desk");
}
