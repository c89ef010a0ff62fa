//! Quark's ML core, a plain library: no Kafka, no database.
//!
//! - [`tokenizer`]: byte-level BPE and character tokenizers (Hugging Face `tokenizers`).
//! - [`shards`]: datasets encoded into flat files of token ids, read back memory-mapped.
//! - [`gpt`]: the GPT-2 architecture on libtorch, with Hugging Face names and layout.
//! - [`data`], [`chat`]: pre-training windows, the chat template and packed SFT rows.
//! - [`optim`], [`train`]: AdamW, the schedule and the training loop with exact resume.
//! - [`checkpoint`]: checkpoints that are Hugging Face model directories.
//! - [`lora`]: LoRA adapters in PEFT's layout, merged into the weights for serving.
//! - [`quantize`]: int8 weight-only quantization (per output channel) for serving.
//! - [`preference`], [`align`]: preference pairs, DPO / IPO and the Bradley–Terry reward model.
//! - [`rloo`]: RLOO, REINFORCE with a leave-one-out baseline, against a reward model.
//! - [`probe`]: held-out and taught-conversation readings during fine-tuning, and the choice of checkpoint.
//! - [`plausibility`]: whether replies read as language to a model (the word-order gain).
//! - [`generate`]: KV-cached sampling with streaming; [`kv`]: the caches and attention over them.
//! - [`batch`]: continuous batching, every generation asked of a model in one running batch.
//! - [`encoder`]: a pretrained sentence encoder (BERT, sentence-transformers' layout and pooling).
//! - [`classifier`]: a multi-label linear classifier over embeddings (moderation, intents).
//! - [`device`]: CUDA when present, the CPU otherwise.

pub mod align;
pub mod batch;
pub mod chat;
pub mod checkpoint;
pub mod classifier;
pub mod corpus;
pub mod data;
pub mod device;
pub mod distill;
pub mod encoder;
pub mod generate;
pub mod gpt;
pub mod intents;
pub mod kv;
pub mod layout;
pub mod lora;
pub mod metrics;
pub mod optim;
pub mod plausibility;
pub mod preference;
pub mod probe;
pub mod quantize;
pub mod rloo;
mod sample;
pub mod shards;
pub mod threads;
pub mod tokenizer;
pub mod train;

pub use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a token shard: {1}")]
    BadShard(std::path::PathBuf, String),
    #[error("empty dataset: {0}")]
    Empty(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("data: {0}")]
    Data(String),
    #[error("training diverged at step {0}: loss {1}")]
    Diverged(u64, f64),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl MlError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MlError + '_ {
        move |source| MlError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
