// KafkaJS (npm) against Quark's broker: an idempotent producer publishes raw feedback.received
// payloads made by Quark (read as hex from argv) and a consumer group reads them back.
//
//     NODE_PATH=~/.cache/quark/node/node_modules node tests/node/kafkajs_client.js BROKERS HEX...
//
// Prints one JSON line: {"client": "kafkajs", "published": n, "consumed": n} or {"error": ...}.
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [brokers, ...payloads] = process.argv.slice(2);
  const kafka = new Kafka({ clientId: "kafkajs-test", brokers: brokers.split(","), logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const values = payloads.map((hex) => Buffer.from(hex, "hex"));
  await producer.send({ topic: "feedback.received", acks: -1, messages: values.map((value) => ({ value })) });
  await producer.disconnect();

  const wanted = new Set(payloads);
  const seen = new Set();
  const consumer = kafka.consumer({ groupId: `kafkajs-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic: "feedback.received", fromBeginning: true });
  const done = new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ message }) => {
        const hex = message.value.toString("hex");
        if (wanted.has(hex)) seen.add(hex);
        if (seen.size === wanted.size) resolve();
      },
    });
  });
  const timeout = new Promise((resolve) => setTimeout(resolve, 30000));
  await Promise.race([done, timeout]);
  await consumer.disconnect();
  console.log(JSON.stringify({ client: "kafkajs", published: values.length, consumed: seen.size }));
}

main().catch((error) => {
  console.log(JSON.stringify({ client: "kafkajs", error: String(error) }));
});
