//! Bus benchmark: events/s produced and consumed end to end through the embedded broker, with
//! the Avro codec and with raw bytes of the same size, and produce→consume latency.
//!
//!     cargo run --release -p quark-e2e --bin quark-bench-bus -- [messages]

use futures::stream::{self, StreamExt};
use quark_e2e::{TestBroker, bin, partitions_at};
use quark_events::bus::{BusConfig, Publisher, ensure_topics};
use quark_events::samples::sample;
use quark_events::{Event, EventKind, LocalRegistry, decode, encode};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::{Message, Offset};
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 1000;

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|_| sample(EventKind::FeedbackReceived, "bench"))
        .collect()
}

async fn consumer(bus: &BusConfig, topic: &str, start: Offset) -> StreamConsumer {
    let consumer: StreamConsumer = bus
        .consumer_config("bench", "bench")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer
        .assign(&partitions_at(&consumer, topic, start))
        .unwrap();
    consumer
}

/// Produces `n` messages (made by `encode_one`) and consumes `n` back from the start of the
/// topic (checking each with `decode_one`); returns both rates in messages/s.
async fn run(
    bus: &BusConfig,
    topic: &str,
    n: usize,
    encode_one: impl Fn(usize) -> Vec<u8>,
    decode_one: impl Fn(&[u8]),
) -> (f64, f64) {
    let publisher = Publisher::new(bus, "bench").unwrap();
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let publisher = publisher.clone();
            let payload = encode_one(i);
            async move {
                publisher
                    .send(topic, None, &payload, OwnedHeaders::new())
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let produce = n as f64 / started.elapsed().as_secs_f64();

    let consumer = consumer(bus, topic, Offset::Beginning).await;
    let started = Instant::now();
    for _ in 0..n {
        let message = consumer.recv().await.unwrap();
        decode_one(message.payload().unwrap());
    }
    let consume = n as f64 / started.elapsed().as_secs_f64();
    (produce, consume)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("messages: a number"))
        .unwrap_or(20_000);
    let _ = bin("quark-broker");
    let broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    let admin: AdminClient<DefaultClientContext> = bus.client_config("bench").create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new(
                "bench.raw",
                bus.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();

    let registry = LocalRegistry::default();
    let avro_events = events(n);
    let size = encode(&avro_events[0]).unwrap().len();

    // The codec alone, in memory.
    let started = Instant::now();
    let encoded: Vec<Vec<u8>> = avro_events.iter().map(|e| encode(e).unwrap()).collect();
    let encode_rate = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for bytes in &encoded {
        std::hint::black_box(decode(bytes, &registry).unwrap());
    }
    let decode_rate = n as f64 / started.elapsed().as_secs_f64();

    // Two rounds in opposite orders, so neither variant gains from going first (the broker's
    // storage grows as the run goes); each figure is the mean of its two rounds.
    let raw = vec![b'x'; size];
    let raw_run = || {
        run(
            &bus,
            "bench.raw",
            n,
            |_| raw.clone(),
            |b| assert_eq!(b.len(), size),
        )
    };
    let avro_run = || {
        run(
            &bus,
            EventKind::FeedbackReceived.topic(),
            n,
            |i| encode(&avro_events[i]).unwrap(),
            |b| {
                std::hint::black_box(decode(b, &registry).unwrap());
            },
        )
    };
    let (raw_1, avro_1) = (raw_run().await, avro_run().await);
    let (avro_2, raw_2) = (avro_run().await, raw_run().await);
    let mean = |a: (f64, f64), b: (f64, f64)| ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
    let (raw_produce, raw_consume) = mean(raw_1, raw_2);
    let (avro_produce, avro_consume) = mean(avro_1, avro_2);

    // Latency: one event at a time, from the send call to its arrival at a consumer.
    let topic = EventKind::TelemetryReported.topic();
    let consumer = consumer(&bus, topic, Offset::End).await;
    let publisher = Publisher::new(&bus, "bench").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = Vec::new();
    for _ in 0..500 {
        let event = sample(EventKind::TelemetryReported, "bench");
        let sent = Instant::now();
        publisher.publish(&event).await.unwrap();
        let message = consumer.recv().await.unwrap();
        decode(message.payload().unwrap(), &registry).unwrap();
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);

    println!(
        "broker: {} (QUARK_BROKER, else this build's quark-broker), fetch wait {} ms",
        std::env::var("QUARK_BROKER").unwrap_or_else(|_| "quark-broker".into()),
        bus.fetch_wait_max_ms
    );
    println!(
        "messages: {n} of {size} bytes (feedback.received), {} partitions, {IN_FLIGHT} in flight",
        bus.partitions
    );
    println!("codec in memory: encode {encode_rate:.0}/s, decode {decode_rate:.0}/s");
    println!("raw bytes:  produce {raw_produce:.0}/s, consume {raw_consume:.0}/s");
    println!("avro:       produce {avro_produce:.0}/s, consume {avro_consume:.0}/s");
    println!(
        "avro/raw:   produce {:.3}, consume {:.3}",
        avro_produce / raw_produce,
        avro_consume / raw_consume
    );
    println!(
        "produce→consume latency over 500 sequential events: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
}
