//! Log-probabilities in OpenAI's two shapes: the completions endpoint's (`tokens`,
//! `token_logprobs`, `top_logprobs`, `text_offset`, what lm-evaluation-harness reads) and the
//! chat endpoint's (`content`: one entry a token, with its bytes and alternatives).

use quark_ml::Tokenizer;
use quark_ml::generate::TokenLogprob;
use serde_json::{Map, Value, json};

/// A token's text as a client reads it (special tokens included).
fn piece(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// Completions' `logprobs` of `tokens`, each with its reading (none for the text's first
/// token, which has no context), the text starting at character `start`.
pub fn completion(
    tokenizer: &Tokenizer,
    tokens: &[(u32, Option<&TokenLogprob>)],
    start: usize,
) -> Value {
    let mut offset = start;
    let (mut texts, mut logprobs, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for &(id, reading) in tokens {
        let text = piece(tokenizer, id);
        offsets.push(offset);
        offset += text.chars().count();
        texts.push(text);
        logprobs.push(reading.map(|r| r.logprob));
        tops.push(reading.map(|r| {
            let mut top = Map::new();
            for &(alternative, logprob) in &r.top {
                top.entry(piece(tokenizer, alternative))
                    .or_insert(json!(logprob));
            }
            Value::Object(top)
        }));
    }
    json!({"tokens": texts, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
}

/// Chat's `logprobs` of the answer's tokens.
pub fn chat(tokenizer: &Tokenizer, readings: &[TokenLogprob]) -> Value {
    let entry = |id: u32, logprob: f64| {
        let token = piece(tokenizer, id);
        json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
    let content: Vec<Value> = readings
        .iter()
        .map(|r| {
            let mut e = entry(r.token, r.logprob);
            e["top_logprobs"] = r.top.iter().map(|&(id, l)| entry(id, l)).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}
