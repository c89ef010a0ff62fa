//! Where a GPT-2-shaped model departs from GPT-2's own layout, as nanoGPT's does by default:
//! no biases, GELU itself instead of its tanh approximation. Either way the model saves and
//! exports as a Hugging Face GPT-2.

use crate::MlError;
use serde::{Deserialize, Serialize};

/// The layout a model is built in: GPT-2's by default, nanoGPT's with [`Layout::NANOGPT`].
/// A field a config does not name is GPT-2's (checkpoints saved before layouts existed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Layout {
    /// Biases in the projections and LayerNorms, as GPT-2 has them. Without them the model
    /// still holds zero biases that never train, so that its checkpoints have GPT-2's variables.
    pub bias: bool,
    #[serde(rename = "activation_function")]
    pub activation: Activation,
}

impl Default for Layout {
    /// GPT-2's: biases and the tanh approximation of GELU.
    fn default() -> Self {
        Layout {
            bias: true,
            activation: Activation::GeluTanh,
        }
    }
}

impl Layout {
    /// nanoGPT's default: no biases, GELU itself.
    pub const NANOGPT: Layout = Layout {
        bias: false,
        activation: Activation::Gelu,
    };
}

/// The MLP's activation, by its Hugging Face name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// GPT-2's tanh approximation of GELU.
    #[default]
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// GELU itself (through erf), nanoGPT's `nn.GELU()`: on the CPU libtorch computes it
    /// faster than the approximation.
    #[serde(rename = "gelu")]
    Gelu,
}

impl Activation {
    /// libtorch's `approximate` argument of `gelu`.
    pub(crate) fn approximate(self) -> &'static str {
        match self {
            Activation::GeluTanh => "tanh",
            Activation::Gelu => "none",
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = MlError;

    fn from_str(name: &str) -> Result<Self, MlError> {
        serde_json::from_value(serde_json::Value::String(name.into())).map_err(|_| {
            MlError::Config(format!(
                "unknown activation {name:?}: gelu_new (GPT-2's) or gelu (nanoGPT's)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_read_by_their_hugging_face_names() {
        assert_eq!("gelu".parse::<Activation>().unwrap(), Activation::Gelu);
        assert_eq!(
            "gelu_new".parse::<Activation>().unwrap(),
            Activation::GeluTanh
        );
        // transformers' other name for the same approximation.
        assert_eq!(
            "gelu_pytorch_tanh".parse::<Activation>().unwrap(),
            Activation::GeluTanh
        );
        let refused = "relu".parse::<Activation>().unwrap_err().to_string();
        assert!(refused.contains("unknown activation \"relu\""), "{refused}");
    }

    #[test]
    fn a_config_without_layout_fields_is_gpt2s() {
        let layout: Layout = serde_json::from_str("{}").unwrap();
        assert_eq!(layout, Layout::default());
        let nanogpt: Layout =
            serde_json::from_str(r#"{"bias": false, "activation_function": "gelu"}"#).unwrap();
        assert_eq!(nanogpt, Layout::NANOGPT);
    }
}
