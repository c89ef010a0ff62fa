//! Whether replies read as language to a model: how much more likely the model finds each
//! reply in its own word order than with its words shuffled (the word-order gain, in nats
//! per token of the reply). Language carries information in its order; random letters and
//! strings of unrelated words do not, so a model that has not been taught them scores their
//! shuffles about as well as the originals. Shuffling keeps every word, so rare words and
//! names cost the same in both orders and do not count against a reply.

use crate::MlError;
use crate::chat::{self, Message, Role};
use crate::gpt::{Context, Gpt, IGNORE};
use crate::probe;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use tch::{Kind, Tensor};
use tokenizers::Tokenizer;

/// Shuffled orders scored per reply.
pub const SHUFFLES: usize = 16;

/// `reply`'s words in up to `count` other orders, the same ones every time; a mark that ends
/// the reply (`.`, `!`, `?`) stays at the end. Empty when no other order exists.
pub fn shuffles(reply: &str, count: usize) -> Vec<String> {
    let trimmed = reply.trim();
    let (body, end) = match trimmed.char_indices().last() {
        Some((i, '.' | '!' | '?')) => (&trimmed[..i], &trimmed[i..]),
        _ => (trimmed, ""),
    };
    let words: Vec<&str> = body.split_whitespace().collect();
    let original = words.join(" ");
    let mut rng = StdRng::seed_from_u64(words.len() as u64);
    let mut orders = Vec::new();
    // A reply of few words has few orders: stop looking after a bounded number of draws.
    for _ in 0..count * 8 {
        if orders.len() == count {
            break;
        }
        let mut order = words.clone();
        order.shuffle(&mut rng);
        let order = order.join(" ");
        if order != original && !orders.contains(&order) {
            orders.push(order);
        }
    }
    orders.into_iter().map(|o| o + end).collect()
}

/// The nats the model spends on the reply of `prompt` → `reply`, and the reply's scored tokens.
fn reply_nats(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompt: &str,
    reply: &str,
) -> Result<(f64, i64), MlError> {
    let conversation = [
        Message::new(Role::User, prompt),
        Message::new(Role::Assistant, reply),
    ];
    let example = chat::render(tokenizer, &conversation)?;
    let block = model.config.block_size as usize;
    let (input, target) = probe::one_row(&example, block, model.device());
    let target = target.squeeze_dim(0);
    let logits = model
        .forward(&input, &Context::default(), None, false)?
        .squeeze_dim(0);
    let nats = logits
        .cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Sum, IGNORE, 0.0)
        .double_value(&[]);
    Ok((nats, target.ne(IGNORE).sum(Kind::Int64).int64_value(&[])))
}

/// The mean word-order gain of the last reply of each conversation: the nats of its shuffles
/// (their mean) less its own, per scored token of the reply. Replies with no other order are
/// left out; `None` when none is left.
pub fn order_gain(
    model: &Gpt,
    tokenizer: &Tokenizer,
    conversations: &[Vec<Message>],
) -> Result<Option<f64>, MlError> {
    let mut gains = Vec::new();
    tch::no_grad(|| -> Result<(), MlError> {
        for conversation in conversations {
            let Some((prompt, reply)) = chat::last_exchange(conversation) else {
                continue;
            };
            let orders = shuffles(reply, SHUFFLES);
            if orders.is_empty() {
                continue;
            }
            let (own, tokens) = reply_nats(model, tokenizer, prompt, reply)?;
            let mut shuffled = 0.0;
            for order in &orders {
                shuffled += reply_nats(model, tokenizer, prompt, order)?.0;
            }
            gains.push((shuffled / orders.len() as f64 - own) / tokens.max(1) as f64);
        }
        Ok(())
    })?;
    Ok((!gains.is_empty()).then(|| gains.iter().sum::<f64>() / gains.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_keep_every_word_and_the_closing_mark() {
        let orders = shuffles("Hamlet is the prince of Denmark.", SHUFFLES);
        assert_eq!(orders.len(), SHUFFLES);
        let sorted = |s: &str| {
            let mut w: Vec<String> = s
                .trim_end_matches('.')
                .split(' ')
                .map(String::from)
                .collect();
            w.sort();
            w
        };
        for order in &orders {
            assert!(order.ends_with('.') && !order.trim_end_matches('.').contains('.'));
            assert_eq!(sorted(order), sorted("Hamlet is the prince of Denmark."));
            assert_ne!(order, "Hamlet is the prince of Denmark.");
        }
        // The same orders every time, all different.
        assert_eq!(
            orders,
            shuffles("Hamlet is the prince of Denmark.", SHUFFLES)
        );
        let distinct: std::collections::HashSet<&String> = orders.iter().collect();
        assert_eq!(distinct.len(), orders.len());
    }

    #[test]
    fn short_replies_have_only_the_orders_they_have() {
        assert_eq!(shuffles("Claudius did.", SHUFFLES), ["did Claudius."]);
        assert!(shuffles("Claudius.", SHUFFLES).is_empty());
        assert!(shuffles("ha ha ha", SHUFFLES).is_empty());
        assert_eq!(shuffles("a b c", 10).len(), 5);
    }
}
