"""Standard Kafka clients against Quark's broker: each publishes feedback.received events
(Avro single-object encoding, from schemas/feedback.received.avsc alone) and reads them back.

    python tests/python/third_party_clients.py --brokers 127.0.0.1:9092 --count 5 CLIENT...

CLIENT is one of aiokafka-idempotent, aiokafka, kafka-python, confluent-kafka. With --praise
the feedback is a top rating with no correction (nothing for the loop to learn from). Prints
one JSON line per client: {"client", "published": [event ids], "consumed": [event ids] or "error"}.
A client that fails says so in its line; the script exits 0 unless its own arguments are wrong.
"""
import argparse
import asyncio
import io
import json
import time
import uuid
from pathlib import Path

import fastavro

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "feedback.received.avsc").read_text())
PARSED = fastavro.parse_schema(SCHEMA)
FINGERPRINT = bytes.fromhex(
    fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(PARSED), "CRC-64-AVRO")
)
TOPIC = "feedback.received"
PRAISE = False


def feedback(client: str) -> tuple[str, bytes]:
    event_id = str(uuid.uuid4())
    record = {
        "header": {
            "event_id": event_id,
            "occurred_at": int(time.time() * 1000),
            "producer": client,
            "correlation_id": event_id,
            "causation_id": None,
        },
        "feedback_id": str(uuid.uuid4()),
        "request_id": f"{client}-{event_id[:8]}",
        "model_id": "champion",
        "prompt": "Who is Hamlet?",
        "response": "A Dane.",
        "rating": 5 if PRAISE else 1,
        "correction": None if PRAISE else "The prince of Denmark.",
        "preferred_response": None,
        "labels": [f"client:{client}"],
    }
    body = io.BytesIO()
    fastavro.schemaless_writer(body, PARSED, record)
    return event_id, b"\xc3\x01" + FINGERPRINT + body.getvalue()


def event_id_of(value: bytes) -> str:
    return str(fastavro.schemaless_reader(io.BytesIO(value[10:]), PARSED)["header"]["event_id"])


async def aiokafka_round_trip(brokers: str, count: int, idempotent: bool) -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    client = "aiokafka-idempotent" if idempotent else "aiokafka"
    producer = AIOKafkaProducer(bootstrap_servers=brokers, enable_idempotence=idempotent, acks="all")
    await producer.start()
    published = []
    try:
        for _ in range(count):
            event_id, value = feedback(client)
            await producer.send_and_wait(TOPIC, value, key=event_id.encode())
            published.append(event_id)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=brokers, auto_offset_reset="earliest",
                                group_id=f"{client}-{uuid.uuid4()}")
    await consumer.start()
    consumed = set()
    try:
        deadline = time.monotonic() + 30
        while not set(published) <= consumed and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                consumed.update(event_id_of(m.value) for m in messages)
    finally:
        await consumer.stop()
    return {"client": client, "published": published, "consumed": sorted(consumed & set(published))}


def kafka_python_round_trip(brokers: str, count: int) -> dict:
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers=brokers, acks="all")
    published = []
    for _ in range(count):
        event_id, value = feedback("kafka-python")
        producer.send(TOPIC, value, key=event_id.encode()).get(timeout=30)
        published.append(event_id)
    producer.close()
    consumer = KafkaConsumer(TOPIC, bootstrap_servers=brokers, auto_offset_reset="earliest",
                             group_id=f"kafka-python-{uuid.uuid4()}", consumer_timeout_ms=1000)
    consumed = set()
    deadline = time.monotonic() + 30
    while not set(published) <= consumed and time.monotonic() < deadline:
        for message in consumer:
            consumed.add(event_id_of(message.value))
    consumer.close()
    return {"client": "kafka-python", "published": published, "consumed": sorted(consumed & set(published))}


def confluent_round_trip(brokers: str, count: int) -> dict:
    from confluent_kafka import Consumer, Producer

    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all"})
    published = []
    for _ in range(count):
        event_id, value = feedback("confluent-kafka")
        producer.produce(TOPIC, key=event_id, value=value)
        published.append(event_id)
    if producer.flush(30) != 0:
        raise RuntimeError("not delivered")
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"confluent-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([TOPIC])
    consumed = set()
    deadline = time.monotonic() + 30
    while not set(published) <= consumed and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            consumed.add(event_id_of(message.value()))
    consumer.close()
    return {"client": "confluent-kafka", "published": published, "consumed": sorted(consumed & set(published))}


def run(client: str, brokers: str, count: int) -> dict:
    try:
        if client == "aiokafka-idempotent":
            return asyncio.run(aiokafka_round_trip(brokers, count, True))
        if client == "aiokafka":
            return asyncio.run(aiokafka_round_trip(brokers, count, False))
        if client == "kafka-python":
            return kafka_python_round_trip(brokers, count)
        if client == "confluent-kafka":
            return confluent_round_trip(brokers, count)
    except Exception as error:  # the test reads the failure from the line
        return {"client": client, "error": f"{type(error).__name__}: {error}"}
    raise SystemExit(f"unknown client {client}")


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--brokers", required=True)
    args.add_argument("--count", type=int, default=5)
    args.add_argument("--praise", action="store_true")
    args.add_argument("clients", nargs="+")
    opts = args.parse_args()
    global PRAISE
    PRAISE = opts.praise
    for client in opts.clients:
        print(json.dumps(run(client, opts.brokers, opts.count)), flush=True)


if __name__ == "__main__":
    main()
