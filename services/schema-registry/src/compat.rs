//! Compatibility levels, checked with apache-avro's schema compatibility (the same resolution
//! rules the codec's reader applies).

use crate::RegistryError;
use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use std::str::FromStr;

/// Confluent's compatibility levels. The default is [`CompatibilityLevel::BackwardTransitive`]:
/// replay reads every version ever written with the current schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompatibilityLevel {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl CompatibilityLevel {
    pub const DEFAULT: CompatibilityLevel = CompatibilityLevel::BackwardTransitive;

    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::None => "NONE",
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether every earlier version is checked, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }

    fn backward(self) -> bool {
        !matches!(
            self,
            CompatibilityLevel::None
                | CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
        )
    }

    fn forward(self) -> bool {
        !matches!(
            self,
            CompatibilityLevel::None
                | CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
        )
    }

    /// Why `new` may not follow `existing` (version number and schema, oldest first) at this
    /// level; empty when it may. Only the latest version counts unless the level is transitive.
    pub fn violations(self, new: &Schema, existing: &[(i32, Schema)]) -> Vec<String> {
        let checked = match (self.transitive(), existing.last()) {
            (true, _) => existing,
            (false, Some(_)) => &existing[existing.len() - 1..],
            (false, None) => &[][..],
        };
        let mut messages = Vec::new();
        for (version, old) in checked {
            if self.backward()
                && let Some(why) = cannot_read(old, new)
            {
                messages.push(format!(
                    "BACKWARD: the new schema cannot read data written with version {version}: {why}"
                ));
            }
            if self.forward()
                && let Some(why) = cannot_read(new, old)
            {
                messages.push(format!(
                    "FORWARD: version {version} cannot read data written with the new schema: {why}"
                ));
            }
        }
        messages
    }
}

/// Why `reader` cannot read everything `writer` writes; `None` when it can.
fn cannot_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => {
            Some("only partially compatible: some values would not resolve".into())
        }
        Err(error) => Some(error.to_string()),
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => CompatibilityLevel::None,
            "BACKWARD" => CompatibilityLevel::Backward,
            "BACKWARD_TRANSITIVE" => CompatibilityLevel::BackwardTransitive,
            "FORWARD" => CompatibilityLevel::Forward,
            "FORWARD_TRANSITIVE" => CompatibilityLevel::ForwardTransitive,
            "FULL" => CompatibilityLevel::Full,
            "FULL_TRANSITIVE" => CompatibilityLevel::FullTransitive,
            _ => return Err(RegistryError::InvalidCompatibility(s.to_string())),
        })
    }
}

impl std::fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
