"""Confluent's own Python clients against Quark's schema registry and a real broker.

Run by tests/schema_registry.rs with $QUARK_PYTHON; each mode prints one JSON object per line.

  produce BOOTSTRAP REGISTRY SCHEMA_FILE    AvroSerializer (auto-registers the schema) publishes
                                            one feedback.received event; prints its ids.
  consume BOOTSTRAP REGISTRY TOPIC COUNT    AvroDeserializer reads COUNT messages from the start
                                            of TOPIC; prints each value.
  incompatible REGISTRY SUBJECT SCHEMA_FILE registers the schema with a new required field;
                                            prints the registry's refusal.
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

TOPIC = "feedback.received"


def produce(bootstrap, registry_url, schema_file):
    registry = SchemaRegistryClient({"url": registry_url})
    with open(schema_file) as f:
        schema = f.read()
    serializer = AvroSerializer(registry, schema)
    event_id = str(uuid.uuid4())
    value = {
        "header": {
            "event_id": event_id,
            "occurred_at": int(time.time() * 1000),
            "producer": "python-confluent-kafka",
            "correlation_id": event_id,
            "causation_id": None,
        },
        "feedback_id": str(uuid.uuid4()),
        "request_id": "req-python",
        "model_id": "model-python",
        "prompt": "What is the capital of France?",
        "response": "Lyon.",
        "rating": 1,
        "correction": "Paris.",
        "preferred_response": None,
        "labels": ["task:qa"],
    }
    payload = serializer(value, SerializationContext(TOPIC, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
    delivered = []
    producer.produce(TOPIC, payload, key=event_id, on_delivery=lambda e, m: delivered.append(e))
    producer.flush(30)
    if delivered != [None]:
        raise SystemExit(f"not delivered: {delivered}")
    schema_id = int.from_bytes(payload[1:5], "big")
    print(json.dumps({"event_id": event_id, "magic": payload[0], "schema_id": schema_id}))


def consume(bootstrap, registry_url, topic, count):
    registry = SchemaRegistryClient({"url": registry_url})
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "python-avro-deserializer",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    read, deadline = 0, time.time() + 60
    while read < count:
        if time.time() > deadline:
            raise SystemExit(f"only {read} of {count} messages on {topic}")
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            raise SystemExit(str(message.error()))
        context = SerializationContext(topic, MessageField.VALUE)
        value = deserializer(message.value(), context)
        schema_id = int.from_bytes(message.value()[1:5], "big")
        print(json.dumps({"schema_id": schema_id, "value": value}, default=str))
        read += 1
    consumer.close()


def incompatible(registry_url, subject, schema_file):
    registry = SchemaRegistryClient({"url": registry_url})
    with open(schema_file) as f:
        schema = json.load(f)
    schema["fields"].append({"name": "mandatory_new_field", "type": "string"})
    try:
        registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    except SchemaRegistryError as error:
        print(json.dumps({"status": error.http_status_code, "error_code": error.error_code}))
        return
    raise SystemExit("an incompatible schema was registered")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"produce": produce, "incompatible": incompatible}.get(mode, lambda *a: None)(*args)
    if mode == "consume":
        consume(args[0], args[1], args[2], int(args[3]))
