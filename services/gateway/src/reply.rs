//! Response bodies in OpenAI's shapes: a whole reply (one choice a prompt) and the chunks of
//! a streamed one.

use crate::api::Usage;
use crate::logprobs;
use crate::moderation::{Answered, Filtered};
use quark_ml::Tokenizer;
use quark_ml::generate::TokenLogprob;
use serde_json::{Value, json};

pub(crate) enum Shape {
    Text,
    Chat,
}

impl Shape {
    fn object(&self, stream: bool) -> &'static str {
        match (self, stream) {
            (Shape::Text, _) => "text_completion",
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
        }
    }

    fn choice(&self, text: &str, finish: Option<&str>, stream: bool, logprobs: Value) -> Value {
        match (self, stream) {
            (Shape::Text, _) => {
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
            (Shape::Chat, false) => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish})
            }
            (Shape::Chat, true) => {
                let delta = match finish {
                    Some(_) => json!({}),
                    None => json!({"role": "assistant", "content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }
}

/// One prompt's answer, as a whole reply shows it.
pub(crate) struct Answer<'a> {
    pub answered: &'a Answered,
    pub prompt_logprobs: Option<&'a [Option<TokenLogprob>]>,
    /// With echo: the prompt's text and ids, shown first.
    pub echo: Option<(&'a str, &'a [u32])>,
    pub tokenizer: &'a Tokenizer,
}

impl Answer<'_> {
    /// The log-probabilities asked for; none when the filter changed the text, which then
    /// is not what the tokens say.
    fn logprobs(&self, shape: &Shape, asked: bool) -> Value {
        let g = &self.answered.generation;
        if !asked || self.answered.filtered.iter().any(Filtered::changed) {
            return Value::Null;
        }
        match shape {
            Shape::Chat => logprobs::chat(self.tokenizer, &g.logprobs),
            Shape::Text => {
                let ids = self.echo.map_or(&[][..], |(_, ids)| ids);
                let echoed = self.prompt_logprobs.unwrap_or_default();
                let prompt = ids.iter().zip(echoed).map(|(&id, r)| (id, r.as_ref()));
                let answer = g.logprobs.iter().map(|r| (r.token, Some(r)));
                let tokens: Vec<_> = prompt.chain(answer).collect();
                logprobs::completion(self.tokenizer, &tokens, 0)
            }
        }
    }
}

/// Builds the response bodies of one request.
pub(crate) struct Reply {
    pub id: String,
    pub model: String,
    pub created: i64,
    pub shape: Shape,
    pub stream: bool,
    /// `{"sources": [...]}` when the answer was retrieval-augmented (or tried to be); it goes
    /// in the last body under `"quark"`.
    pub sources: Option<Value>,
}

impl Reply {
    fn body(&self, choices: Vec<Value>, usage: Option<&Usage>) -> Value {
        json!({
            "id": self.id,
            "object": self.shape.object(self.stream),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        })
    }

    /// What the filter did and where the answer came from, under `"quark"`.
    fn annotate(&self, body: &mut Value, answered: &[&Answered]) {
        let mut quark = self.sources.clone().unwrap_or_else(|| json!({}));
        let filtered: Vec<&Filtered> = answered.iter().flat_map(|a| &a.filtered).collect();
        if !filtered.is_empty() {
            quark["moderation"] = json!(filtered);
        }
        if quark.as_object().is_some_and(|o| !o.is_empty()) {
            body["quark"] = quark;
        }
    }

    /// A whole reply: one choice an answer, in order; `request_ids` beside them when there
    /// are several (each answer is its own response.served).
    pub fn whole(&self, answers: &[Answer], asked_logprobs: bool, request_ids: &[String]) -> Value {
        let generations = answers.iter().map(|a| &a.answered.generation);
        let usage = Usage::new(
            generations.clone().map(|g| g.prompt_tokens).sum(),
            generations.map(|g| g.tokens.len()).sum(),
        );
        let choices = answers
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let g = &a.answered.generation;
                let text = match a.echo {
                    Some((prompt, _)) => format!("{prompt}{}", g.text),
                    None => g.text.clone(),
                };
                let logprobs = a.logprobs(&self.shape, asked_logprobs);
                let finish = Some(a.answered.finish_reason());
                let mut choice = self.shape.choice(&text, finish, false, logprobs);
                choice["index"] = json!(index);
                choice
            })
            .collect();
        let mut body = self.body(choices, Some(&usage));
        let answered: Vec<&Answered> = answers.iter().map(|a| a.answered).collect();
        self.annotate(&mut body, &answered);
        if request_ids.len() > 1 {
            body["quark"]["request_ids"] = json!(request_ids);
        }
        body
    }

    /// A streamed piece of the answer (or the echoed prompt), with its log-probabilities.
    pub fn chunk(&self, text: &str, logprobs: Value) -> Value {
        self.body(vec![self.shape.choice(text, None, true, logprobs)], None)
    }

    /// The last chunk: the finish reason and usage.
    pub fn last(&self, answered: &Answered, usage: &Usage) -> Value {
        let finish = Some(answered.finish_reason());
        let choice = self.shape.choice("", finish, true, Value::Null);
        let mut body = self.body(vec![choice], Some(usage));
        self.annotate(&mut body, &[answered]);
        body
    }

    /// `stream_options.include_usage`'s chunk: no choices, the usage.
    pub fn usage(&self, usage: &Usage) -> Value {
        self.body(vec![], Some(usage))
    }
}
