//! The GPT-2 architecture in libtorch: learned positions, pre-LayerNorm blocks, tanh-GELU
//! MLP, causal attention through `scaled_dot_product_attention`, and an output layer tied to
//! the token embedding.
//!
//! Variables carry Hugging Face's `GPT2LMHeadModel` names and layout (`transformer.h.0.attn.c_attn.weight`,
//! with HF's `Conv1D` storing weights as `[in, out]`), so a saved `VarStore` is a loadable
//! `model.safetensors`.

use crate::MlError;
use crate::kv::Attention;
pub use crate::kv::{KvCache, SlotCache};
pub use crate::layout::{Activation, Layout};
use crate::quantize::Int8;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

/// A model's shape. Serialised as the Hugging Face GPT-2 `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab_size: i64,
    #[serde(rename = "n_positions")]
    pub block_size: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    /// Dropout on embeddings, attention weights and residual branches while training.
    #[serde(rename = "resid_pdrop")]
    pub dropout: f64,
    #[serde(flatten)]
    pub layout: Layout,
}

impl GptConfig {
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |why: String| Err(MlError::Config(why));
        if self.vocab_size < 1 || self.block_size < 1 || self.n_layer < 1 || self.n_head < 1 {
            return bad(format!("every dimension must be positive: {self:?}"));
        }
        if self.n_embd % self.n_head != 0 {
            return bad(format!(
                "n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is outside [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// The shape as the planning library counts it.
    pub fn shape(&self) -> quark_plan::Shape {
        quark_plan::Shape {
            n_layer: self.n_layer as u64,
            n_head: self.n_head as u64,
            n_embd: self.n_embd as u64,
            block_size: self.block_size as u64,
            vocab_size: self.vocab_size as u64,
        }
    }

    /// The Hugging Face `config.json` of this shape.
    pub fn to_hf_json(&self, eos_token_id: u32) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.block_size,
            "n_ctx": self.block_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "n_inner": null,
            "activation_function": self.layout.activation,
            "layer_norm_epsilon": LAYER_NORM_EPS,
            "resid_pdrop": self.dropout,
            "bias": self.layout.bias,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "initializer_range": 0.02,
            "tie_word_embeddings": true,
            "bos_token_id": eos_token_id,
            "eos_token_id": eos_token_id,
            "torch_dtype": "float32",
        })
    }
}

const LAYER_NORM_EPS: f64 = 1e-5;
/// Targets with this id are not scored (prompt tokens in SFT, padding).
pub const IGNORE: i64 = -100;

/// HF's `Conv1D`: `y = x W + b` with `W` stored `[in, out]`, plus a LoRA adapter's
/// low-rank update when one is attached.
struct Conv1D {
    weight: Tensor,
    /// None for a bias-free model (its zero bias stays in the store, untrained).
    bias: Option<Tensor>,
    adapter: Option<LowRank>,
    /// The weight as int8 (`crate::quantize`): then it replaces `weight`.
    int8: Option<Int8>,
}

impl Conv1D {
    fn new(path: nn::Path, init: &mut Normal, dims: [i64; 2], std: f64, bias: bool) -> Conv1D {
        Conv1D {
            weight: init.var(&path, "weight", &dims, std),
            bias: bias_of(&path, dims[1], bias),
            adapter: None,
            int8: None,
        }
    }

    /// With `adapted` false the adapter is skipped: the frozen base model's output.
    fn forward(&self, x: &Tensor, dtype: Kind, adapted: bool) -> Tensor {
        if let Some(int8) = &self.int8 {
            return int8.linear(x, self.bias.as_ref(), dtype);
        }
        let (d_in, d_out) = self.weight.size2().unwrap();
        let mut out_shape = x.size();
        *out_shape.last_mut().unwrap() = d_out;
        let x = x.reshape([-1, d_in]).to_kind(dtype);
        let weight = self.weight.to_kind(dtype);
        let mut y = match &self.bias {
            Some(bias) => Tensor::addmm(&bias.to_kind(dtype), &x, &weight),
            None => x.mm(&weight),
        };
        if let Some(lora) = self.adapter.as_ref().filter(|_| adapted) {
            y += lora.delta(&x, dtype);
        }
        y.view(out_shape.as_slice())
    }
}

/// A LoRA update `x Aᵀ Bᵀ · alpha / rank` (PEFT's layout: `A` is `[rank, in]`, `B` `[out, rank]`).
pub(crate) struct LowRank {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) scaling: f64,
}

impl LowRank {
    fn delta(&self, x: &Tensor, dtype: Kind) -> Tensor {
        x.matmul(&self.a.to_kind(dtype).tr())
            .matmul(&self.b.to_kind(dtype).tr())
            * self.scaling
    }

    /// The token embedding's update for `idx`: the rows of `(B A)ᵀ` (the embedding is a
    /// projection from one-hot tokens, `A` `[rank, vocab]`, `B` `[n_embd, rank]`).
    fn embedded(&self, idx: &Tensor) -> Tensor {
        Tensor::embedding(&self.a.tr(), idx, -1, false, false).matmul(&self.b.tr()) * self.scaling
    }

    /// The tied output layer's update: `x (B A) · scaling`, the transpose of the embedding's.
    fn unembedded(&self, x: &Tensor, dtype: Kind) -> Tensor {
        x.matmul(&self.b.to_kind(dtype))
            .matmul(&self.a.to_kind(dtype))
            * self.scaling
    }
}

/// A trained bias of `d` zeros, or for a bias-free model none: its zeros are kept in the
/// store untrained, so that checkpoints hold GPT-2's variables either way.
fn bias_of(path: &nn::Path, d: i64, trained: bool) -> Option<Tensor> {
    if trained {
        Some(path.zeros("bias", &[d]))
    } else {
        let _zeros = path.zeros_no_train("bias", &[d]);
        None
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl LayerNorm {
    fn new(path: nn::Path, d: i64, bias: bool) -> LayerNorm {
        LayerNorm {
            weight: path.ones("weight", &[d]),
            bias: bias_of(&path, d, bias),
        }
    }

    /// Normalises in fp32 whatever the compute type, as autocast does.
    fn forward(&self, x: &Tensor) -> Tensor {
        let d = self.weight.size()[0];
        x.to_kind(Kind::Float).layer_norm(
            [d],
            Some(&self.weight),
            self.bias.as_ref(),
            LAYER_NORM_EPS,
            true,
        )
    }
}

/// Normal initialisation drawn on the host from a generator of its own: the same seed gives
/// the same weights on any device, whatever else uses torch's process-wide generator.
/// Without a generator (a model about to be loaded) weights start at zero.
struct Normal(Option<StdRng>);

impl Normal {
    fn var(&mut self, path: &nn::Path, name: &str, dims: &[i64], std: f64) -> Tensor {
        let Some(rng) = self.0.as_mut() else {
            return path.zeros(name, dims);
        };
        let n = dims.iter().product::<i64>() as usize;
        let values: Vec<f32> = (0..n)
            .map(|_| (std * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect();
        path.var_copy(name, &Tensor::from_slice(&values).view(dims))
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// What one forward pass reads besides token ids. Packed SFT rows restart positions and
/// attend only within their own example; plain pre-training needs neither.
#[derive(Default)]
pub struct Context<'a> {
    /// `[batch, time]` positions; default `0..time` (after the cache).
    pub positions: Option<&'a Tensor>,
    /// `[batch, 1, time, time]` booleans, true where attention is allowed; default causal.
    pub mask: Option<&'a Tensor>,
    /// Skip the LoRA adapters: the frozen base model's logits (the champion a fine-tuning
    /// run starts from).
    pub base_only: bool,
}

pub struct Gpt {
    pub config: GptConfig,
    pub vs: nn::VarStore,
    wte: Tensor,
    /// LoRA on the token embedding, shared by the tied output layer (PEFT's
    /// `ensure_weight_tying`): a small model cannot say a rare word confidently without it.
    wte_adapter: Option<LowRank>,
    /// The token embedding as int8 (`crate::quantize`): then it replaces `wte`.
    wte_int8: Option<Int8>,
    wpe: Tensor,
    wpe_int8: Option<Int8>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// Matmuls and attention run in this type (bf16 on CUDA); parameters, the residual
    /// stream, LayerNorm and the loss stay fp32, as under PyTorch's autocast.
    compute: Kind,
    /// LoRA adapters, when attached: the only trainable variables then.
    adapters: Option<crate::lora::Adapters>,
    /// A reward model's scalar head `[1, n_embd]` (HF's `GPT2ForSequenceClassification`
    /// `score.weight`), read at the last token of a sequence.
    score: Option<Tensor>,
}

impl Gpt {
    /// A freshly initialised model (GPT-2's scheme: N(0, 0.02), residual projections scaled
    /// by 1/√(2·n_layer)), seeded so the same seed gives the same weights.
    pub fn new(config: GptConfig, device: Device, seed: u64) -> Result<Gpt, MlError> {
        Gpt::build(config, device, Some(seed))
    }

    /// A model of this shape with zero weights, to load a checkpoint into.
    pub fn uninitialised(config: GptConfig, device: Device) -> Result<Gpt, MlError> {
        Gpt::build(config, device, None)
    }

    fn build(config: GptConfig, device: Device, seed: Option<u64>) -> Result<Gpt, MlError> {
        config.validate()?;
        let init = &mut Normal(seed.map(StdRng::seed_from_u64));
        let vs = nn::VarStore::new(device);
        let root = vs.root() / "transformer";
        let d = config.n_embd;
        let proj_std = 0.02 / (2.0 * config.n_layer as f64).sqrt();
        let bias = config.layout.bias;
        let wte = init.var(&(&root / "wte"), "weight", &[config.vocab_size, d], 0.02);
        let wpe = init.var(&(&root / "wpe"), "weight", &[config.block_size, d], 0.02);
        let blocks = (0..config.n_layer)
            .map(|i| {
                let p = &root / "h" / i;
                Block {
                    ln_1: LayerNorm::new(&p / "ln_1", d, bias),
                    c_attn: Conv1D::new(&p / "attn" / "c_attn", init, [d, 3 * d], 0.02, bias),
                    attn_proj: Conv1D::new(&p / "attn" / "c_proj", init, [d, d], proj_std, bias),
                    ln_2: LayerNorm::new(&p / "ln_2", d, bias),
                    c_fc: Conv1D::new(&p / "mlp" / "c_fc", init, [d, 4 * d], 0.02, bias),
                    mlp_proj: Conv1D::new(&p / "mlp" / "c_proj", init, [4 * d, d], proj_std, bias),
                }
            })
            .collect();
        let ln_f = LayerNorm::new(&root / "ln_f", d, bias);
        Ok(Gpt {
            config,
            vs,
            wte,
            wte_adapter: None,
            wte_int8: None,
            wpe,
            wpe_int8: None,
            blocks,
            ln_f,
            compute: default_compute(device),
            adapters: None,
            score: None,
        })
    }

    /// Adds the reward model's scalar head, drawn N(0, 0.02) from `seed` as HF initialises
    /// it (zeros without a seed: a checkpoint is about to be loaded into it).
    pub fn add_score_head(&mut self, seed: Option<u64>) -> Result<(), MlError> {
        if self.score.is_some() {
            return Err(MlError::Config("the model already has a score head".into()));
        }
        let init = &mut Normal(seed.map(StdRng::seed_from_u64));
        let root = self.vs.root() / "score";
        self.score = Some(init.var(&root, "weight", &[1, self.config.n_embd], 0.02));
        Ok(())
    }

    pub fn has_score_head(&self) -> bool {
        self.score.is_some()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Overrides the compute type (fp32 everywhere, or bf16 matmuls with fp32 parameters).
    pub fn set_compute(&mut self, kind: Kind) {
        self.compute = kind;
    }

    /// The variables training updates: the adapters' when attached, else the model's.
    pub fn trainable(&self) -> &nn::VarStore {
        self.adapters.as_ref().map_or(&self.vs, |a| &a.vs)
    }

    pub fn adapters(&self) -> Option<&crate::lora::Adapters> {
        self.adapters.as_ref()
    }

    pub(crate) fn set_adapters(&mut self, adapters: Option<crate::lora::Adapters>) {
        self.adapters = adapters;
    }

    /// The token embedding (`[vocab, n_embd]`, tied to the output layer) and its adapter slot.
    pub(crate) fn embedding_mut(&mut self) -> (&mut Tensor, &mut Option<LowRank>) {
        (&mut self.wte, &mut self.wte_adapter)
    }

    /// The weights int8 quantization covers, by their variable names, with their int8 slots:
    /// the token embedding (`[vocab, n_embd]`, also the output layer), the positions and each
    /// block's projections (stored `[in, out]`: `true`).
    pub(crate) fn quantizable_mut(
        &mut self,
    ) -> Vec<(String, &mut Tensor, &mut Option<Int8>, bool)> {
        let mut out = vec![
            (
                "transformer.wte.weight".to_string(),
                &mut self.wte,
                &mut self.wte_int8,
                false,
            ),
            (
                "transformer.wpe.weight".to_string(),
                &mut self.wpe,
                &mut self.wpe_int8,
                false,
            ),
        ];
        out.extend(
            named_layers(&mut self.blocks)
                .into_iter()
                .map(|(name, layer)| {
                    let name = format!("transformer.{name}.weight");
                    (name, &mut layer.weight, &mut layer.int8, true)
                }),
        );
        out
    }

    /// The int8 weights, when quantized.
    pub(crate) fn int8_weights(&self) -> Vec<&Int8> {
        let layers = self
            .blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj]);
        let blocks = layers.filter_map(|l| l.int8.as_ref());
        self.wte_int8
            .iter()
            .chain(&self.wpe_int8)
            .chain(blocks)
            .collect()
    }

    /// Whether the weights are int8 (`crate::quantize`).
    pub fn is_quantized(&self) -> bool {
        self.wte_int8.is_some()
    }

    /// Each block's projections with their Hugging Face module names (`h.0.attn.c_attn`).
    pub(crate) fn projections_mut(&mut self) -> Vec<(String, &mut Tensor, &mut Option<LowRank>)> {
        named_layers(&mut self.blocks)
            .into_iter()
            .map(|(name, layer)| (name, &mut layer.weight, &mut layer.adapter))
            .collect()
    }

    /// Trainable parameters (the tied output layer counted once).
    pub fn parameters(&self) -> i64 {
        self.trainable()
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>() as i64
    }

    /// Logits `[batch, time, vocab]` (fp32) for token ids `[batch, time]`.
    ///
    /// With a cache, the new positions follow the cached ones and their keys and values are
    /// appended to it.
    pub fn forward(
        &self,
        idx: &Tensor,
        context: &Context,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor, MlError> {
        let mut attention = match cache {
            Some(cache) => Attention::Cached(cache),
            None => Attention::Full,
        };
        let x = self.hidden(idx, context, &mut attention, train)?;
        Ok(self.logits(&x, context))
    }

    /// The tied output layer over final hidden states (fp32 logits).
    pub(crate) fn logits(&self, x: &Tensor, context: &Context) -> Tensor {
        let dtype = self.compute;
        if let Some(int8) = &self.wte_int8 {
            return int8.linear(x, None, dtype).to_kind(Kind::Float);
        }
        let x = x.to_kind(dtype);
        let mut logits = x.matmul(&self.wte.to_kind(dtype).tr());
        if let Some(lora) = self.wte_adapter.as_ref().filter(|_| !context.base_only) {
            logits += lora.unembedded(&x, dtype);
        }
        logits.to_kind(Kind::Float)
    }

    /// A reward model's score `[batch]` for token ids `[batch, time]`, read at each row's
    /// `last` position (`[batch]`, the final real token of a right-padded row).
    pub fn reward(
        &self,
        idx: &Tensor,
        last: &Tensor,
        context: &Context,
        train: bool,
    ) -> Result<Tensor, MlError> {
        let score = self
            .score
            .as_ref()
            .ok_or_else(|| MlError::Config("the model has no score head".into()))?;
        let x = self.hidden(idx, context, &mut Attention::Full, train)?;
        let d = self.config.n_embd;
        let at = last.view([-1, 1, 1]).expand([-1, 1, d], false);
        let x = x.gather(1, &at, false).squeeze_dim(1);
        Ok(x.matmul(&score.tr()).squeeze_dim(-1))
    }

    /// The final LayerNorm's output `[batch, time, n_embd]` (fp32): what the output layer
    /// and a score head read.
    pub(crate) fn hidden(
        &self,
        idx: &Tensor,
        context: &Context,
        attention: &mut Attention,
        train: bool,
    ) -> Result<Tensor, MlError> {
        let (b, t) = idx.size2().map_err(|e| MlError::Config(e.to_string()))?;
        let past = attention.past();
        if let Some(length) = attention
            .length_after(t)
            .filter(|&l| l > self.config.block_size)
        {
            return Err(MlError::Config(format!(
                "{length} positions do not fit the model's block size {}",
                self.config.block_size
            )));
        }
        let dtype = self.compute;
        let adapted = !context.base_only;
        let p = self.config.dropout;
        let positions = match context.positions {
            Some(pos) => pos.shallow_clone(),
            None => Tensor::arange_start(past, past + t, (Kind::Int64, idx.device())),
        };
        let embedding = self.wte_adapter.as_ref().filter(|_| adapted);
        let mut tokens = match &self.wte_int8 {
            Some(int8) => int8.rows(idx),
            None => Tensor::embedding(&self.wte, idx, -1, false, false),
        };
        if let Some(lora) = embedding {
            tokens += lora.embedded(idx);
        }
        let placed = match &self.wpe_int8 {
            Some(int8) => int8.rows(&positions),
            None => Tensor::embedding(&self.wpe, &positions, -1, false, false),
        };
        let mut x = (tokens + placed).dropout(p, train);
        let (h, hd) = (self.config.n_head, self.config.n_embd / self.config.n_head);
        for (i, block) in self.blocks.iter().enumerate() {
            let qkv = block
                .c_attn
                .forward(&block.ln_1.forward(&x), dtype, adapted);
            let heads = |z: Tensor| z.view([b, t, h, hd]).transpose(1, 2);
            let mut parts = qkv.split(self.config.n_embd, 2).into_iter().map(heads);
            let qkv = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let attn_p = if train { p } else { 0.0 };
            let y = attention.attend(i, qkv, context.mask, attn_p)?;
            let y = y
                .transpose(1, 2)
                .contiguous()
                .view([b, t, self.config.n_embd]);
            // Not `+=`: LayerNorm's backward needs the residual stream unmodified.
            x = &x
                + block
                    .attn_proj
                    .forward(&y, dtype, adapted)
                    .dropout(p, train);
            let m = block
                .c_fc
                .forward(&block.ln_2.forward(&x), dtype, adapted)
                .gelu(self.config.layout.activation.approximate());
            x = &x + block.mlp_proj.forward(&m, dtype, adapted).dropout(p, train);
        }
        Ok(self.ln_f.forward(&x))
    }

    /// Mean cross-entropy of `targets` (ignoring [`IGNORE`]) under the logits for `idx`.
    pub fn loss(
        &self,
        idx: &Tensor,
        targets: &Tensor,
        context: &Context,
        train: bool,
    ) -> Result<Tensor, MlError> {
        let logits = self.forward(idx, context, None, train)?;
        Ok(logits
            .view([-1, self.config.vocab_size])
            .cross_entropy_loss::<Tensor>(
                &targets.view([-1]),
                None,
                tch::Reduction::Mean,
                IGNORE,
                0.0,
            ))
    }
}

/// Each block's projections with their Hugging Face module names (`h.0.attn.c_attn`).
fn named_layers(blocks: &mut [Block]) -> Vec<(String, &mut Conv1D)> {
    let mut out = Vec::new();
    for (i, b) in blocks.iter_mut().enumerate() {
        for (name, layer) in [
            ("attn.c_attn", &mut b.c_attn),
            ("attn.c_proj", &mut b.attn_proj),
            ("mlp.c_fc", &mut b.c_fc),
            ("mlp.c_proj", &mut b.mlp_proj),
        ] {
            out.push((format!("h.{i}.{name}"), layer));
        }
    }
    out
}

fn default_compute(device: Device) -> Kind {
    match device {
        Device::Cuda(_) => Kind::BFloat16,
        _ => Kind::Float,
    }
}
