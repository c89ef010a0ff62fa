//! A sentence encoder: a BERT model in a sentence-transformers directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`, `sentence_bert_config.json`, `modules.json`,
//! `1_Pooling/config.json`), run on libtorch with the model's own tokenizer, mean pooling over
//! the real tokens and, when the directory says so, unit length — what sentence-transformers
//! computes for the same directory.

use crate::MlError;
use crate::checkpoint::read_json;
use serde::Deserialize;
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The BERT fields of `config.json` the encoder uses.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attention_out: nn::Linear,
    attention_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    out: nn::Linear,
    out_norm: nn::LayerNorm,
}

pub struct SentenceEncoder {
    vs: nn::VarStore,
    config: BertConfig,
    words: nn::Embedding,
    positions: nn::Embedding,
    token_types: nn::Embedding,
    embeddings_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    tokenizer: Tokenizer,
    normalize: bool,
}

impl SentenceEncoder {
    /// Loads the sentence-transformers directory `dir` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<SentenceEncoder, MlError> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        if config.hidden_act != "gelu" {
            return Err(MlError::Config(format!(
                "{}: activation {} (only gelu is supported)",
                dir.display(),
                config.hidden_act
            )));
        }
        let pooling: PoolingConfig = read_json(&dir.join("1_Pooling").join("config.json"))?;
        if !pooling.pooling_mode_mean_tokens
            || pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
        {
            return Err(MlError::Config(format!(
                "{}: only mean pooling is supported",
                dir.display()
            )));
        }
        let modules: Vec<ModuleEntry> = read_json(&dir.join("modules.json"))?;
        let normalize = modules.iter().any(|m| m.kind.ends_with("models.Normalize"));
        let max_len = read_json::<SentenceBertConfig>(&dir.join("sentence_bert_config.json"))?
            .max_seq_length
            .min(config.max_position_embeddings as usize);
        let tokenizer = tokenizer(&dir.join("tokenizer.json"), max_len)?;
        let encoder = SentenceEncoder::build(config, tokenizer, normalize, device);
        let mut vs = encoder.vs;
        let weights = dir.join("model.safetensors");
        vs.load(&weights)
            .map_err(|e| MlError::Checkpoint(format!("{}: {e}", weights.display())))?;
        vs.freeze();
        Ok(SentenceEncoder { vs, ..encoder })
    }

    fn build(
        config: BertConfig,
        tokenizer: Tokenizer,
        normalize: bool,
        device: Device,
    ) -> SentenceEncoder {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        let norm = |p: nn::Path| {
            let c = nn::LayerNormConfig {
                eps,
                ..Default::default()
            };
            nn::layer_norm(p, vec![d], c)
        };
        let linear = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        let emb = &root / "embeddings";
        let embedding = |p: nn::Path, n| nn::embedding(p, n, d, Default::default());
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = &root / "encoder" / "layer" / i;
                let attention = &p / "attention";
                Layer {
                    query: linear(&attention / "self" / "query", d, d),
                    key: linear(&attention / "self" / "key", d, d),
                    value: linear(&attention / "self" / "value", d, d),
                    attention_out: linear(&attention / "output" / "dense", d, d),
                    attention_norm: norm(&attention / "output" / "LayerNorm"),
                    intermediate: linear(
                        &p / "intermediate" / "dense",
                        d,
                        config.intermediate_size,
                    ),
                    out: linear(&p / "output" / "dense", config.intermediate_size, d),
                    out_norm: norm(&p / "output" / "LayerNorm"),
                }
            })
            .collect();
        SentenceEncoder {
            words: embedding(&emb / "word_embeddings", config.vocab_size),
            positions: embedding(&emb / "position_embeddings", config.max_position_embeddings),
            token_types: embedding(&emb / "token_type_embeddings", config.type_vocab_size),
            embeddings_norm: norm(&emb / "LayerNorm"),
            layers,
            config,
            tokenizer,
            normalize,
            vs,
        }
    }

    /// Width of an embedding.
    pub fn dimension(&self) -> usize {
        self.config.hidden_size as usize
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Tokens of `text` without the special tokens (at most the model's `max_seq_length`: it
    /// reads no further), the measure passages are cut by.
    pub fn token_count(&self, text: &str) -> Result<usize, MlError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| MlError::Tokenizer(e.to_string()))?;
        Ok(encoding.len())
    }

    /// Embeddings of `texts` in their order, `batch_size` at a time (each text truncated to
    /// the model's `max_seq_length` tokens, as sentence-transformers does).
    pub fn encode(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, MlError> {
        // Longest first, so a batch holds texts of about one length and pads little (the
        // order sentence-transformers batches in).
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].chars().count()));
        let mut out = vec![Vec::new(); texts.len()];
        for indices in order.chunks(batch_size.max(1)) {
            let chunk: Vec<&str> = indices.iter().map(|&i| texts[i]).collect();
            let batch = self
                .tokenizer
                .encode_batch(chunk, true)
                .map_err(|e| MlError::Tokenizer(e.to_string()))?;
            let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| {
                let flat: Vec<i64> = batch
                    .iter()
                    .flat_map(|e| f(e).iter().map(|&v| v as i64))
                    .collect();
                Tensor::from_slice(&flat)
                    .view([batch.len() as i64, -1])
                    .to_device(self.device())
            };
            let ids = rows(&|e| e.get_ids());
            let types = rows(&|e| e.get_type_ids());
            let mask = rows(&|e| e.get_attention_mask());
            let pooled = tch::no_grad(|| self.embed(&ids, &types, &mask));
            let pooled = pooled.to_device(Device::Cpu).to_kind(Kind::Float);
            for (&i, vector) in indices.iter().zip(Vec::<Vec<f32>>::try_from(pooled)?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// Pooled (and normalised) embeddings of a padded batch: `[b, d]`.
    fn embed(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t) = ids.size2().unwrap();
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        let mut x = self.words.forward(ids)
            + self.positions.forward(&positions).unsqueeze(0)
            + self.token_types.forward(types);
        x = self.embeddings_norm.forward(&x);
        // Padding takes no part in attention: `[b, 1, 1, t]`, true where a token is real.
        let attend = mask.ne(0).view([b, 1, 1, t]);
        let (h, d) = (self.config.num_attention_heads, self.config.hidden_size);
        let heads = |y: Tensor| y.view([b, t, h, d / h]).transpose(1, 2);
        for layer in &self.layers {
            let (q, k, v) = (
                heads(layer.query.forward(&x)),
                heads(layer.key.forward(&x)),
                heads(layer.value.forward(&x)),
            );
            let y = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&attend),
                0.0,
                false,
                None,
                false,
            )
            .transpose(1, 2)
            .contiguous()
            .view([b, t, d]);
            x = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&y) + &x));
            let inner = layer.intermediate.forward(&x).gelu("none");
            x = layer.out_norm.forward(&(layer.out.forward(&inner) + &x));
        }
        let weights = mask.to_kind(x.kind()).unsqueeze(-1);
        let summed = (&x * &weights).sum_dim_intlist(1, false, x.kind());
        let counts = weights.sum_dim_intlist(1, false, x.kind()).clamp_min(1e-9);
        let pooled = summed / counts;
        match self.normalize {
            true => {
                let norm = pooled.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
                pooled / norm
            }
            false => pooled,
        }
    }
}

/// The model's tokenizer, truncating to `max_len` tokens and padding a batch to its longest.
fn tokenizer(path: &Path, max_len: usize) -> Result<Tokenizer, MlError> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| MlError::Tokenizer(format!("{}: {e}", path.display())))?;
    // The model's own padding token when the file names one, else BERT's.
    let mut padding = tokenizer
        .get_padding()
        .cloned()
        .unwrap_or_else(|| PaddingParams {
            pad_id: tokenizer.token_to_id("[PAD]").unwrap_or(0),
            pad_token: "[PAD]".into(),
            ..PaddingParams::default()
        });
    padding.strategy = PaddingStrategy::BatchLongest;
    tokenizer.with_padding(Some(padding));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..TruncationParams::default()
        }))
        .map_err(|e| MlError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}
