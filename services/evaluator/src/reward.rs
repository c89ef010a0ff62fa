//! The reward model's verdict between the candidate and the champion: on each evaluation
//! prompt both answered, does the reward model score the candidate's answer above the
//! champion's? The same answer from both is a tie, half a win. The red-team answers are left
//! to the moderation classifier.

use crate::suite::{Measurement, Sample};
use quark_ml::align::read_reward_model;
use quark_ml::gpt::Gpt;
use quark_ml::preference::{self, Pair, Pairs};
use quark_ml::{MlError, Tokenizer, tokenizer};
use std::collections::HashMap;

/// The metric the gate reads.
pub const WIN_RATE: &str = "reward_win_rate";
/// The prompts it is taken over.
pub const PROMPTS: &str = "reward_win_prompts";
/// Pairs scored per forward pass.
const BATCH: usize = 8;

fn compared(sample: &&Sample) -> bool {
    sample.kind != "red_team"
}

/// The candidate's win rate over the champion by `reward_model` (with its `tokenizer`), and
/// the number of prompts it is taken over; `None` when they answered no prompt in common.
pub fn win_rate(
    reward_model: &Gpt,
    tokenizer: &Tokenizer,
    candidate: &Measurement,
    champion: &Measurement,
) -> Result<Option<(f64, usize)>, MlError> {
    let theirs: HashMap<(&str, &str), &str> = champion
        .samples
        .iter()
        .filter(compared)
        .map(|s| ((s.kind, s.prompt.as_str()), s.output.as_str()))
        .collect();
    let (mut ties, mut pairs) = (0usize, Vec::new());
    for sample in candidate.samples.iter().filter(compared) {
        let Some(other) = theirs.get(&(sample.kind, sample.prompt.as_str())) else {
            continue;
        };
        if sample.output == *other {
            ties += 1;
            continue;
        }
        pairs.push(Pair {
            prompt: sample.prompt.clone(),
            chosen: sample.output.clone(),
            rejected: other.to_string(),
            margin: None,
        });
    }
    let total = ties + pairs.len();
    if total == 0 {
        return Ok(None);
    }
    let wins = match pairs.len() {
        0 => 0.0,
        n => {
            let pad = tokenizer::end_of_text(tokenizer);
            let encoded = preference::encode(tokenizer, &pairs)?;
            let block = reward_model.config.block_size as usize;
            let set = Pairs::new(encoded, BATCH, block, pad, 0)?;
            read_reward_model(reward_model, &set)?.accuracy * n as f64
        }
    };
    Ok(Some(((wins + ties as f64 / 2.0) / total as f64, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_ml::gpt::GptConfig;

    fn judge() -> (Gpt, Tokenizer) {
        let tokenizer = tokenizer::train_chars("abcdefghijklmnopqrstuvwxyz ?.").unwrap();
        let config = GptConfig {
            vocab_size: tokenizer.get_vocab_size(true) as i64,
            block_size: 48,
            n_layer: 1,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            layout: Default::default(),
        };
        let mut model = Gpt::new(config, tch::Device::Cpu, 3).unwrap();
        model.add_score_head(Some(5)).unwrap();
        (model, tokenizer)
    }

    fn answers(kind: &'static str, pairs: &[(&str, &str)]) -> Vec<Sample> {
        pairs
            .iter()
            .map(|(prompt, output)| Sample {
                kind,
                prompt: prompt.to_string(),
                output: output.to_string(),
                score: 0.0,
                flagged: vec![],
            })
            .collect()
    }

    fn measured(samples: Vec<Vec<Sample>>) -> Measurement {
        Measurement {
            metrics: Default::default(),
            samples: samples.concat(),
        }
    }

    #[test]
    fn the_win_rate_pairs_answers_by_prompt_counts_ties_as_half_and_is_symmetric() {
        let (model, tokenizer) = judge();
        let candidate = measured(vec![
            answers(
                "answer",
                &[
                    ("who is he?", "the prince."),
                    ("where?", "elsinore."),
                    ("when?", "at night."),
                    ("why?", "because."),
                ],
            ),
            answers("red_team", &[("how to harm?", "no.")]),
        ]);
        let champion = measured(vec![
            answers(
                "answer",
                &[
                    ("who is he?", "a king."),
                    ("where?", "denmark."),
                    ("when?", "at night."),
                    ("what else?", "nothing."),
                ],
            ),
            answers("red_team", &[("how to harm?", "like this.")]),
            answers("taught", &[("why?", "for love.")]),
        ]);
        let (won, prompts) = win_rate(&model, &tokenizer, &candidate, &champion)
            .unwrap()
            .unwrap();
        // Three prompts in common of the same kind; one answered alike.
        assert_eq!(prompts, 3);
        let (lost, _) = win_rate(&model, &tokenizer, &champion, &candidate)
            .unwrap()
            .unwrap();
        assert!((won + lost - 1.0).abs() < 1e-12, "{won} + {lost}");
        // Each side wins a whole number of the two differing prompts, plus half the tie.
        assert!([0.5, 1.5, 2.5].contains(&(won * 3.0)), "{won}");

        let (alike, _) = win_rate(&model, &tokenizer, &candidate, &candidate)
            .unwrap()
            .unwrap();
        assert_eq!(alike, 0.5);
        let strangers = measured(vec![answers("answer", &[("other?", "yes.")])]);
        assert!(
            win_rate(&model, &tokenizer, &strangers, &champion)
                .unwrap()
                .is_none()
        );
    }
}
