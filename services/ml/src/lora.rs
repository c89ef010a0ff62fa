//! LoRA adapters on the GPT's projections, in Hugging Face PEFT's layout.
//!
//! An adapter adds `x Aᵀ Bᵀ · alpha / rank` to a projection, with `A` `[rank, in]` drawn as
//! PEFT draws it (uniform ±1/√in) and `B` `[out, rank]` zero, so a new adapter changes
//! nothing. The base model is frozen while adapters are attached; [`merge`] folds them into
//! the weights (HF's `Conv1D` stores `W` as `[in, out]`: `W += (B A)ᵀ · scaling`, PEFT's
//! `fan_in_fan_out`). [`save`] writes `adapter_config.json` and `adapter_model.safetensors`
//! with PEFT's names, so `PeftModel.from_pretrained` loads them on the exported base.
//!
//! The token embedding (target `wte`) is adapted as PEFT adapts an embedding (`A` zero, `B`
//! standard normal) and its update is shared by the tied output layer, PEFT's
//! `ensure_weight_tying`. It is what lets a small model learn a correction at all: with the
//! embedding frozen, even adapters of full rank on every projection leave the loss on eight
//! short corrections above 3 nats (docs/benchmarks.md).

use crate::MlError;
use crate::gpt::{Gpt, LowRank};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Tensor, nn};

pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's prefix for the wrapped model's parameters.
const PEFT_PREFIX: &str = "base_model.model.";
/// The token embedding's module name, as a target.
const EMBEDDING: &str = "wte";
/// The tied output layer's module name in PEFT.
const OUTPUT: &str = "lm_head";

/// Which projections get an adapter and how strong it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    /// Module names as PEFT matches them: a projection is adapted when its name
    /// (`h.0.attn.c_attn`) is a target or ends with `.<target>`: `c_attn`, `c_proj` (both
    /// attention's and the MLP's output), `c_fc`, `attn.c_proj`, `mlp.c_proj`.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// The attention and MLP projections and the (tied) token embedding, rank 8.
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: ["c_attn", "c_proj", "c_fc", EMBEDDING]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    fn targets(&self, module: &str) -> bool {
        self.targets
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// PEFT's `adapter_config.json` for this adapter. PEFT ties an adapter on the output
    /// layer to the embedding's only when both are targets.
    pub fn to_peft_json(&self) -> serde_json::Value {
        let tied = self.targets(EMBEDDING);
        let mut targets = self.targets.clone();
        if tied {
            targets.push(OUTPUT.into());
        }
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": targets,
            "fan_in_fan_out": true,
            "bias": "none",
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "ensure_weight_tying": tied,
            "base_model_name_or_path": null,
        })
    }

    fn from_peft_json(value: &serde_json::Value) -> Result<LoraConfig, String> {
        let number = |key: &str| value.get(key).and_then(|v| v.as_f64());
        let rank = number("r").ok_or("no rank (r)")? as i64;
        let alpha = number("lora_alpha").ok_or("no lora_alpha")?;
        let targets = match value.get("target_modules") {
            Some(serde_json::Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_string)
                        .ok_or("a target is not a string")
                })
                .collect::<Result<_, _>>()?,
            Some(serde_json::Value::String(name)) => vec![name.clone()],
            _ => return Err("no target_modules".into()),
        };
        let tied = value.get("ensure_weight_tying") == Some(&serde_json::Value::Bool(true));
        let (outputs, targets): (Vec<String>, Vec<String>) =
            targets.into_iter().partition(|t| t == OUTPUT);
        if !outputs.is_empty() && !tied {
            return Err("an adapter on lm_head not tied to the embedding's".into());
        }
        Ok(LoraConfig {
            rank,
            alpha,
            targets,
        })
    }
}

/// The adapters attached to a model: their variables and configuration.
pub struct Adapters {
    pub vs: nn::VarStore,
    pub config: LoraConfig,
}

/// Attaches fresh adapters (seeded) to the targeted projections and freezes the base.
pub fn attach(model: &mut Gpt, config: &LoraConfig, seed: u64) -> Result<(), MlError> {
    if config.rank < 1 || !config.alpha.is_finite() || config.alpha <= 0.0 {
        return Err(MlError::Config(format!(
            "LoRA needs a positive rank and alpha: {config:?}"
        )));
    }
    if model.adapters().is_some() {
        return Err(MlError::Config("the model already has adapters".into()));
    }
    let vs = nn::VarStore::new(model.device());
    let mut rng = StdRng::seed_from_u64(seed);
    let (rank, scaling) = (config.rank, config.scaling());
    let mut adapted = 0;
    for (name, weight, slot) in model.projections_mut() {
        if !config.targets(&name) {
            continue;
        }
        let (d_in, d_out) = weight.size2()?;
        let path = name
            .split('.')
            .fold(vs.root() / "transformer", |p, part| p / part);
        let bound = 1.0 / (d_in as f64).sqrt();
        let a: Vec<f32> = (0..rank * d_in)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = (&path / "lora_A").var_copy("weight", &Tensor::from_slice(&a).view([rank, d_in]));
        let b = (&path / "lora_B").zeros("weight", &[d_out, rank]);
        *slot = Some(LowRank { a, b, scaling });
        adapted += 1;
    }
    if config.targets(EMBEDDING) {
        let (weight, slot) = model.embedding_mut();
        let (vocab, d) = weight.size2()?;
        let path = vs.root() / "transformer" / EMBEDDING;
        let b: Vec<f32> = (0..d * rank)
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal) as f32)
            .collect();
        let a = path.zeros("lora_embedding_A", &[rank, vocab]);
        let b = path.var_copy("lora_embedding_B", &Tensor::from_slice(&b).view([d, rank]));
        *slot = Some(LowRank { a, b, scaling });
        adapted += 1;
    }
    if adapted == 0 {
        return Err(MlError::Config(format!(
            "no projection matches the LoRA targets {:?}",
            config.targets
        )));
    }
    model.vs.freeze();
    model.set_adapters(Some(Adapters {
        vs,
        config: config.clone(),
    }));
    Ok(())
}

/// Folds the adapters into the weights and detaches them; the model is trainable again.
pub fn merge(model: &mut Gpt) -> Result<(), MlError> {
    if model.adapters().is_none() {
        return Err(MlError::Config("the model has no adapters to merge".into()));
    }
    // Every adapted weight is stored `[in, out]` (the embedding maps one-hot tokens to
    // vectors): `W += (B A)ᵀ · scaling` for all of them.
    let fold = |weight: &mut Tensor, slot: &mut Option<LowRank>| {
        if let Some(lora) = slot.take() {
            let delta = lora.b.matmul(&lora.a).tr() * lora.scaling;
            let _ = weight.g_add_(&delta);
        }
    };
    tch::no_grad(|| {
        for (_, weight, slot) in model.projections_mut() {
            fold(weight, slot);
        }
        let (weight, slot) = model.embedding_mut();
        fold(weight, slot);
    });
    model.set_adapters(None);
    model.vs.unfreeze();
    Ok(())
}

/// Writes the adapters in PEFT's layout into `dir` (which must exist).
pub fn save(model: &Gpt, dir: &Path) -> Result<(), MlError> {
    let adapters = model
        .adapters()
        .ok_or_else(|| MlError::Config("the model has no adapters to save".into()))?;
    let variables = adapters.vs.variables();
    let mut named: Vec<(String, Tensor)> = variables
        .iter()
        .map(|(name, t)| (format!("{PEFT_PREFIX}{name}"), t.shallow_clone()))
        .collect();
    // PEFT ties the output layer's adapter to the embedding's: lm_head's `A` is the
    // embedding's `Bᵀ` and its `B` the embedding's `Aᵀ`. Both are written, as PEFT writes them.
    let embedding = |part: &str| variables.get(&format!("transformer.{EMBEDDING}.{part}"));
    if let (Some(a), Some(b)) = (embedding("lora_embedding_A"), embedding("lora_embedding_B")) {
        let output = |part: &str| format!("{PEFT_PREFIX}{OUTPUT}.{part}.weight");
        named.push((output("lora_A"), b.tr().contiguous()));
        named.push((output("lora_B"), a.tr().contiguous()));
    }
    let path = dir.join(WEIGHTS);
    Tensor::write_safetensors(&named, &path)
        .map_err(|e| MlError::Checkpoint(format!("{}: {e}", path.display())))?;
    let config = dir.join(CONFIG);
    let text = serde_json::to_string_pretty(&adapters.config.to_peft_json())
        .map_err(|e| MlError::Checkpoint(e.to_string()))?;
    std::fs::write(&config, text).map_err(MlError::io(&config))
}

/// Attaches the adapters saved in `dir` (PEFT's layout) to `model`, when it has any.
pub fn load(model: &mut Gpt, dir: &Path) -> Result<bool, MlError> {
    let config_path = dir.join(CONFIG);
    if !config_path.exists() {
        return Ok(false);
    }
    let bad = |why: String| MlError::Checkpoint(format!("{}: {why}", dir.display()));
    let text = std::fs::read_to_string(&config_path).map_err(MlError::io(&config_path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let config = LoraConfig::from_peft_json(&value).map_err(bad)?;
    attach(model, &config, 0)?;
    let mut saved: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join(WEIGHTS))
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .collect();
    let adapters = model.adapters().expect("attached above");
    tch::no_grad(|| {
        for (name, mut var) in adapters.vs.variables() {
            let value = saved
                .remove(&format!("{PEFT_PREFIX}{name}"))
                .ok_or_else(|| bad(format!("no {name}")))?;
            if value.size() != var.size() {
                return Err(bad(format!("{name} has shape {:?}", value.size())));
            }
            var.copy_(&value);
        }
        Ok(())
    })?;
    Ok(true)
}
