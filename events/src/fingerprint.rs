//! Schema fingerprints for single-object encoding: CRC-64-AVRO of the schema's Parsing
//! Canonical Form, as the Avro specification defines it.

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use digest::Digest;
use serde_json::Value;

/// The Parsing Canonical Form of `schema`.
///
/// apache-avro's `canonical_form` keeps logical types as `{"type":"string"}` where the
/// specification wants the primitive's simple form `"string"` (so do fastavro and Java); the
/// fingerprints would differ from every other implementation's. This collapses those objects.
pub fn parsing_canonical_form(schema: &Schema) -> String {
    fn collapse(value: Value) -> Value {
        match value {
            Value::Object(map)
                if map.len() == 1 && map.get("type").is_some_and(Value::is_string) =>
            {
                map.into_iter()
                    .next()
                    .map(|(_, t)| t)
                    .unwrap_or(Value::Null)
            }
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, collapse(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(collapse).collect()),
            other => other,
        }
    }
    let canonical: Value =
        serde_json::from_str(&schema.canonical_form()).expect("a canonical form is JSON");
    collapse(canonical).to_string()
}

/// The 8-byte CRC-64-AVRO fingerprint (little-endian) of `schema`.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    Rabin::digest(parsing_canonical_form(schema).as_bytes()).into()
}
