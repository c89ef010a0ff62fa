//! Distillation: a smaller student learns the teacher's next-token distribution.
//!
//! The objective is the forward KL, KL(teacher ‖ student), at every position of the
//! training text, on temperature-softened distributions (Hinton et al., scaled by T² so its
//! gradients keep their size), mixed with the next-token loss on the text itself:
//! `(1 − kl_share) · CE + kl_share · T² · KL`. Forward KL on the corpus rather than GKD's
//! generalised JSD with on-policy samples: the teacher's whole distribution at every position
//! of text already in hand is a dense signal that costs one teacher forward per batch, where
//! an on-policy share costs sampling from the student at every step — the larger share of a
//! CPU step — to correct an exposure bias that matters most for long generations.
//!
//! The student starts from the teacher (DistilBERT's initialisation): the embeddings, the
//! final LayerNorm and every other block (layers 0, 2, 4, … of a teacher twice as deep).

use crate::MlError;
use crate::align::Step;
use crate::data::Batch;
use crate::gpt::{Gpt, GptConfig, IGNORE};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The statistics a distillation step reports beside its loss, in this order.
pub const DISTILL_STATS: [&str; 2] = ["distill_kl", "distill_ce"];

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Weight of the KL term (the rest is the next-token loss on the text).
    pub kl_share: f64,
    /// Softening of both distributions in the KL term.
    pub temperature: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            kl_share: 0.9,
            temperature: 2.0,
        }
    }
}

impl DistillConfig {
    pub fn validate(&self) -> Result<(), MlError> {
        if !(0.0..=1.0).contains(&self.kl_share) {
            return Err(MlError::Config(format!(
                "the KL share {} is outside [0, 1]",
                self.kl_share
            )));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(MlError::Config("the temperature must be positive".into()));
        }
        Ok(())
    }
}

/// A student `n_layer` deep, initialised from `teacher`: its embeddings and final LayerNorm,
/// and teacher blocks spread evenly (block `i` of the student is block `i · stride`).
pub fn student_of(teacher: &Gpt, n_layer: i64) -> Result<Gpt, MlError> {
    let t = teacher.config.n_layer;
    if n_layer < 1 || n_layer > t {
        return Err(MlError::Config(format!(
            "a student of {n_layer} layers from a teacher of {t}"
        )));
    }
    let config = GptConfig {
        n_layer,
        ..teacher.config
    };
    let student = Gpt::uninitialised(config, teacher.device())?;
    let stride = t / n_layer;
    let from = teacher.vs.variables();
    tch::no_grad(|| -> Result<(), MlError> {
        for (name, mut var) in student.vs.variables() {
            let source = teacher_name(&name, stride);
            let value = from.get(&source).ok_or_else(|| {
                MlError::Checkpoint(format!(
                    "the teacher has no {source} for the student's {name}"
                ))
            })?;
            var.copy_(value);
        }
        Ok(())
    })?;
    Ok(student)
}

/// The teacher variable a student variable starts from: `transformer.h.<i>.…` maps to block
/// `i · stride`, everything else to itself.
fn teacher_name(name: &str, stride: i64) -> String {
    let Some(rest) = name.strip_prefix("transformer.h.") else {
        return name.to_string();
    };
    match rest.split_once('.') {
        Some((i, tail)) => match i.parse::<i64>() {
            Ok(i) => format!("transformer.h.{}.{tail}", i * stride),
            Err(_) => name.to_string(),
        },
        None => name.to_string(),
    }
}

/// One micro-batch's distillation loss and its statistics (the KL and the next-token loss).
pub fn distill_step(
    student: &Gpt,
    teacher: &Gpt,
    batch: &Batch,
    config: &DistillConfig,
) -> Result<Step, MlError> {
    let context = batch.context();
    let logits = student.forward(&batch.input, &context, None, true)?;
    let teacher_logits = tch::no_grad(|| teacher.forward(&batch.input, &context, None, false))?;
    let vocab = student.config.vocab_size;
    let targets = batch.target.view([-1]);
    let ce = logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
        &targets,
        None,
        tch::Reduction::Mean,
        IGNORE,
        0.0,
    );
    let t = config.temperature;
    let teacher_logp = (teacher_logits / t)
        .log_softmax(-1, Kind::Float)
        .view([-1, vocab]);
    let student_logp = (&logits / t).log_softmax(-1, Kind::Float).view([-1, vocab]);
    let per_position = (teacher_logp.exp() * (&teacher_logp - student_logp)).sum_dim_intlist(
        -1,
        false,
        Kind::Float,
    );
    // Only the positions the next-token loss reads (padding is ignored by both).
    let kept = targets.ne(IGNORE).to_kind(Kind::Float);
    let kl = (per_position * &kept).sum(Kind::Float) / kept.sum(Kind::Float).clamp_min(1.0);
    let loss = &ce * (1.0 - config.kl_share) + &kl * (config.kl_share * t * t);
    let stats = Tensor::stack(&[kl.detach(), ce.detach()], 0);
    Ok(Step {
        loss,
        stats: Some(stats),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_student_block_starts_from_every_stride_th_teacher_block() {
        assert_eq!(
            teacher_name("transformer.h.1.attn.c_attn.weight", 2),
            "transformer.h.2.attn.c_attn.weight"
        );
        assert_eq!(
            teacher_name("transformer.wte.weight", 2),
            "transformer.wte.weight"
        );
        assert_eq!(
            teacher_name("transformer.ln_f.bias", 3),
            "transformer.ln_f.bias"
        );
    }

    #[test]
    fn the_student_copies_the_teacher_where_it_starts_from_it() {
        let config = GptConfig {
            vocab_size: 32,
            block_size: 16,
            n_layer: 4,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            layout: Default::default(),
        };
        let teacher = Gpt::new(config, tch::Device::Cpu, 3).unwrap();
        let student = student_of(&teacher, 2).unwrap();
        assert_eq!(student.config.n_layer, 2);
        let (t, s) = (teacher.vs.variables(), student.vs.variables());
        assert_eq!(
            Vec::<f32>::try_from(&s["transformer.h.1.mlp.c_fc.weight"].flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(&t["transformer.h.2.mlp.c_fc.weight"].flatten(0, -1)).unwrap()
        );
        assert!(s["transformer.wte.weight"].equal(&t["transformer.wte.weight"]));
        assert!(student_of(&teacher, 5).is_err());
    }
}
