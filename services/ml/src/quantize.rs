//! int8 weight-only quantization: the token embedding (also the output layer), the position
//! embedding and every block's projections become int8 with one fp32 scale per output
//! channel (per row of an embedding; symmetric, absmax / 127); LayerNorms and biases stay
//! fp32, and activations keep the compute type. On the CPU the matmuls run in libtorch's `_weight_int8pack_mm` (int8
//! weights read as they are); elsewhere the weights are dequantized as they are used.
//!
//! A quantized checkpoint is the usual directory with `quantization_config.quant_method`
//! `int8_weight_only` in `config.json` and, in `model.safetensors`, each quantized weight
//! under its own name as int8 `[out, in]` beside its scales (`<name>_scale`, `[out]`).

use crate::MlError;
use crate::gpt::Gpt;
use std::collections::HashSet;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const METHOD: &str = "int8_weight_only";
const SCALE: &str = "_scale";

/// A weight `[out, in]` as int8, with one scale per output channel, and its variable name.
pub(crate) struct Int8 {
    name: String,
    weight: Tensor,
    scales: Tensor,
}

impl Int8 {
    fn quantize(name: String, weight: &Tensor) -> Int8 {
        let w = weight.to_kind(Kind::Float);
        let scales = w.abs().amax([1].as_slice(), false).clamp_min(1e-12) / 127.0;
        let weight = (&w / scales.unsqueeze(1))
            .round()
            .clamp(-127.0, 127.0)
            .to_kind(Kind::Int8)
            .contiguous();
        Int8 {
            name,
            weight,
            scales,
        }
    }

    /// `x W^T (+ bias)` for `x` `[…, in]`, in `dtype`.
    pub(crate) fn linear(&self, x: &Tensor, bias: Option<&Tensor>, dtype: Kind) -> Tensor {
        let (d_out, d_in) = self.weight.size2().expect("an int8 weight is 2-D");
        let mut shape = x.size();
        *shape
            .last_mut()
            .expect("an input of at least one dimension") = d_out;
        let x = x.reshape([-1, d_in]).to_kind(dtype).contiguous();
        let scales = self.scales.to_kind(dtype);
        let mut y = if x.device() == Device::Cpu {
            x.internal_weight_int8pack_mm(&self.weight, &scales)
        } else {
            x.matmul(&(self.weight.to_kind(dtype) * scales.unsqueeze(1)).tr())
        };
        if let Some(bias) = bias {
            y += bias.to_kind(dtype);
        }
        y.view(shape.as_slice())
    }

    /// Rows `idx` dequantized (fp32): an embedding lookup.
    pub(crate) fn rows(&self, idx: &Tensor) -> Tensor {
        let flat = idx.reshape([-1]);
        let rows = self.weight.index_select(0, &flat).to_kind(Kind::Float)
            * self.scales.index_select(0, &flat).unsqueeze(1);
        let mut shape = idx.size();
        shape.push(self.weight.size()[1]);
        rows.view(shape.as_slice())
    }
}

/// Quantizes `model`'s weights in place; their fp32 copies leave its variables.
pub fn quantize(model: &mut Gpt) -> Result<(), MlError> {
    if model.is_quantized() {
        return Err(MlError::Config("the model is quantized already".into()));
    }
    if model.adapters().is_some() || model.has_score_head() {
        return Err(MlError::Config(
            "only a plain policy is quantized: merge adapters first; a reward model is not served"
                .into(),
        ));
    }
    let mut removed = vec![];
    tch::no_grad(|| {
        for (name, weight, slot, stored_in_out) in model.quantizable_mut() {
            let w = if stored_in_out {
                weight.tr()
            } else {
                weight.shallow_clone()
            };
            *slot = Some(Int8::quantize(name.clone(), &w));
            *weight = Tensor::new();
            removed.push(name);
        }
    });
    let mut variables = model
        .vs
        .variables_
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let gone: Vec<Tensor> = removed
        .iter()
        .filter_map(|name| variables.named_variables.remove(name))
        .collect();
    let pointers: HashSet<usize> = gone.iter().map(|t| t.data_ptr() as usize).collect();
    variables
        .trainable_variables
        .retain(|v| !pointers.contains(&(v.tensor.data_ptr() as usize)));
    Ok(())
}

/// Writes a quantized model's weights: its fp32 variables and each int8 weight with its scales.
pub(crate) fn save_weights(model: &Gpt, path: &Path) -> Result<(), MlError> {
    let mut tensors: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    for int8 in model.int8_weights() {
        let name = &int8.name;
        tensors.push((format!("{name}{SCALE}"), int8.scales.shallow_clone()));
        tensors.push((name.clone(), int8.weight.shallow_clone()));
    }
    Tensor::write_safetensors(&tensors, path).map_err(MlError::from)
}

/// Reads a quantized checkpoint's weights into `model` (of the same shape, not quantized).
pub(crate) fn load_weights(model: &mut Gpt, path: &Path) -> Result<(), MlError> {
    let bad = |why: String| MlError::Checkpoint(format!("{}: {why}", path.display()));
    quantize(model)?;
    let mut stored: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .collect();
    let device = model.device();
    for (name, _, slot, _) in model.quantizable_mut() {
        let (Some(weight), Some(scales)) = (
            stored.remove(&name),
            stored.remove(&format!("{name}{SCALE}")),
        ) else {
            return Err(bad(format!("{name} or its scales are missing")));
        };
        if weight.kind() != Kind::Int8 {
            return Err(bad(format!("{name} is {:?}, not int8", weight.kind())));
        }
        *slot = Some(Int8 {
            name,
            weight: weight.to_device(device).contiguous(),
            scales: scales.to_kind(Kind::Float).to_device(device),
        });
    }
    tch::no_grad(|| {
        for (name, mut variable) in model.vs.variables() {
            let value = stored
                .remove(&name)
                .ok_or_else(|| bad(format!("{name} is missing")))?;
            variable
                .f_copy_(&value)
                .map_err(|e| bad(format!("{name}: {e}")))?;
        }
        Ok(())
    })
}
