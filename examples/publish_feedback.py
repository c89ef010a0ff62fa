"""Publish a feedback.received event to Quark from Python, with only the .avsc file.

    pip install confluent-kafka fastavro
    python examples/publish_feedback.py --brokers 127.0.0.1:9092

The message is Avro single-object encoding: C3 01, the schema's 8-byte CRC-64-AVRO
fingerprint (little-endian; fastavro's hex string is already in that byte order), then the
Avro binary datum. No schema registry is needed.
"""
import argparse
import io
import json
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Producer

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "feedback.received.avsc"


def single_object(schema: dict, record: dict) -> bytes:
    parsed = fastavro.parse_schema(schema)
    fingerprint = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, record)
    return b"\xc3\x01" + bytes.fromhex(fingerprint) + body.getvalue()


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--brokers", default="127.0.0.1:9092")
    args.add_argument("--request-id", default="req-1")
    opts = args.parse_args()

    event_id = str(uuid.uuid4())
    record = {
        "header": {
            "event_id": event_id,
            "occurred_at": int(time.time() * 1000),
            "producer": "support-desk",
            "correlation_id": event_id,
            "causation_id": None,
        },
        "feedback_id": str(uuid.uuid4()),
        "request_id": opts.request_id,
        "model_id": "champion",
        "prompt": "What is the capital of France?",
        "response": "Lyon.",
        "rating": 1,
        "correction": "Paris.",
        "preferred_response": None,
        "labels": ["task:qa"],
    }
    schema = json.loads(SCHEMA_FILE.read_text())
    producer = Producer({"bootstrap.servers": opts.brokers, "enable.idempotence": True, "acks": "all"})
    producer.produce("feedback.received", key=event_id, value=single_object(schema, record))
    if producer.flush(30) != 0:
        raise SystemExit("not delivered")
    print(f"published feedback {event_id}")


if __name__ == "__main__":
    main()
