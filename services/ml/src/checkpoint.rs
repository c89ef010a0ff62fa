//! Checkpoints. Every checkpoint directory is a Hugging Face GPT-2 model as it stands
//! (`config.json`, `model.safetensors`, `tokenizer.json`), plus what resuming needs:
//! `optimizer.safetensors` (AdamW moments) and `trainer_state.json`. A run training LoRA
//! adapters saves them beside the frozen base, in PEFT's layout ([`crate::lora`]).
//!
//! A run directory holds `step-<n>` checkpoints and a `latest` file naming the newest. Each
//! checkpoint is written under a temporary name and renamed into place, and `latest` is
//! replaced atomically, so a crash never leaves a half-written checkpoint behind the name.

use crate::MlError;
use crate::gpt::{Gpt, GptConfig};
use crate::optim::AdamW;
use crate::quantize;
use crate::tokenizer::{END_OF_TEXT, SYSTEM, end_of_text};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Device;
use tokenizers::Tokenizer;

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";
/// Tells transformers' `AutoTokenizer` to read `tokenizer.json` as it is: the GPT-2 class
/// `config.json` would pick rebuilds its own pre-tokenizer.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const STATE: &str = "trainer_state.json";
const LATEST: &str = "latest";
/// The Hugging Face architecture of a reward model (a GPT body and a scalar head).
pub const REWARD_ARCHITECTURE: &str = "GPT2ForSequenceClassification";
/// Older checkpoints beyond this many are removed.
const KEEP: usize = 2;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MlError + '_ {
    MlError::io(path)
}

fn bad(path: &Path, why: impl std::fmt::Display) -> MlError {
    MlError::Checkpoint(format!("{}: {why}", path.display()))
}

/// Writes a checkpoint into a new directory `dir` (which must not exist).
pub fn save<S: Serialize>(
    dir: &Path,
    model: &Gpt,
    tokenizer: &Tokenizer,
    optimizer: Option<&AdamW>,
    state: &S,
) -> Result<(), MlError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let eos = end_of_text(tokenizer);
    let mut config = model.config.to_hf_json(eos);
    if model.has_score_head() {
        // A reward model: HF's sequence classifier with one label, which reads its score at
        // the last token that is not padding. Rows end with end-of-text, where Quark reads
        // it; the system marker, which never ends a row, is the padding.
        config["architectures"] = serde_json::json!([REWARD_ARCHITECTURE]);
        config["num_labels"] = serde_json::json!(1);
        config["pad_token_id"] = serde_json::json!(tokenizer.token_to_id(SYSTEM));
    }
    if model.is_quantized() {
        config["quantization_config"] = serde_json::json!({"quant_method": quantize::METHOD});
        quantize::save_weights(model, &tmp.join(WEIGHTS))?;
    } else {
        model
            .vs
            .save(tmp.join(WEIGHTS))
            .map_err(|e| bad(&tmp.join(WEIGHTS), e))?;
    }
    write_json(&tmp.join(CONFIG), &config)?;
    // A run with adapters keeps its frozen base beside them, for resuming.
    if model.adapters().is_some() {
        crate::lora::save(model, &tmp)?;
    }
    tokenizer
        .save(tmp.join(TOKENIZER), false)
        .map_err(|e| bad(&tmp.join(TOKENIZER), e))?;
    let tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": END_OF_TEXT,
        "model_max_length": model.config.block_size,
    });
    write_json(&tmp.join(TOKENIZER_CONFIG), &tokenizer_config)?;
    if let Some(optimizer) = optimizer {
        optimizer.save(&tmp.join(OPTIMIZER))?;
    }
    write_json(&tmp.join(STATE), state)?;
    if dir.exists() {
        return Err(bad(dir, "already exists; refusing to overwrite it"));
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), MlError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| bad(path, e))?;
    std::fs::write(path, text).map_err(io(path))
}

/// The size of a checkpoint's weights file, in bytes (fp32 or int8, as stored).
pub fn weights_bytes(dir: &Path) -> Result<u64, MlError> {
    let path = dir.join(WEIGHTS);
    Ok(std::fs::metadata(&path).map_err(io(&path))?.len())
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, MlError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| bad(path, e))
}

/// Loads the model and tokenizer of a checkpoint (or any HF GPT-2 directory in this layout),
/// checking that they agree.
pub fn load(dir: &Path, device: Device) -> Result<(Gpt, Tokenizer), MlError> {
    if !dir.is_dir() {
        return Err(bad(dir, "no such checkpoint directory"));
    }
    let raw: serde_json::Value = read_json(&dir.join(CONFIG))?;
    let config: GptConfig =
        serde_json::from_value(raw.clone()).map_err(|e| bad(&dir.join(CONFIG), e))?;
    let reward = raw["architectures"]
        .as_array()
        .is_some_and(|a| a.iter().any(|name| name == REWARD_ARCHITECTURE));
    let tokenizer = crate::tokenizer::load(&dir.join(TOKENIZER))?;
    let vocab = tokenizer.get_vocab_size(true) as i64;
    if vocab > config.vocab_size {
        return Err(MlError::Config(format!(
            "{}: the tokenizer has {vocab} tokens but the model only {}",
            dir.display(),
            config.vocab_size
        )));
    }
    let mut model = Gpt::uninitialised(config, device)?;
    if reward {
        model.add_score_head(None)?;
    }
    let weights = dir.join(WEIGHTS);
    if !weights.exists() {
        return Err(bad(&weights, "missing"));
    }
    match raw["quantization_config"]["quant_method"].as_str() {
        None => model.vs.load(&weights).map_err(|e| bad(&weights, e))?,
        Some(quantize::METHOD) => quantize::load_weights(&mut model, &weights)?,
        Some(other) => {
            return Err(bad(
                &dir.join(CONFIG),
                format!("unknown quantization {other}"),
            ));
        }
    }
    crate::lora::load(&mut model, dir)?;
    Ok((model, tokenizer))
}

/// A directory of `step-<n>` checkpoints.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    /// The newest checkpoint, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>, MlError> {
        let pointer = self.root.join(LATEST);
        match std::fs::read_to_string(&pointer) {
            Ok(name) => {
                let dir = self.root.join(name.trim());
                if !dir.is_dir() {
                    return Err(bad(
                        &pointer,
                        format!("names {}, which is missing", dir.display()),
                    ));
                }
                Ok(Some(dir))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&pointer)(e)),
        }
    }

    /// Saves the checkpoint of `step`, points `latest` at it and prunes old ones.
    pub fn save<S: Serialize>(
        &self,
        step: u64,
        model: &Gpt,
        tokenizer: &Tokenizer,
        optimizer: Option<&AdamW>,
        state: &S,
    ) -> Result<PathBuf, MlError> {
        let name = format!("step-{step:08}");
        let dir = self.root.join(&name);
        if dir.exists() {
            // The same step saved again (a resumed run stopping where it started).
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        save(&dir, model, tokenizer, optimizer, state)?;
        let tmp = self.root.join(".latest.tmp");
        std::fs::write(&tmp, &name).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.root.join(LATEST)).map_err(io(&self.root))?;
        self.prune(&name)?;
        Ok(dir)
    }

    fn prune(&self, keep_latest: &str) -> Result<(), MlError> {
        let mut steps: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(io(&self.root))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("step-") && n.as_str() != keep_latest)
            .collect();
        steps.sort();
        let excess = (steps.len() + 1).saturating_sub(KEEP);
        for name in &steps[..excess] {
            let dir = self.root.join(name);
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }
}
