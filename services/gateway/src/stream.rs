//! A streamed reply (server-sent events): the echoed prompt when asked, the answer's pieces
//! as they are cleared, each with its tokens' log-probabilities when asked, then the finish
//! reason and usage (or the error), the usage alone when `include_usage` asks, and `[DONE]`.

use crate::Gateway;
use crate::api::Usage;
use crate::logprobs;
use crate::moderation::Sent;
use crate::reply::{Reply, Shape};
use crate::routes::{Job, run};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use quark_ml::Tokenizer;
use quark_ml::generate::TokenLogprob;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A piece of a streamed reply: its text and, when they were asked for and the text is what
/// the model generated, its tokens with their readings (none for a prompt's first token).
pub(crate) struct Chunk {
    text: String,
    readings: Option<Vec<(u32, Option<TokenLogprob>)>>,
}

impl Chunk {
    /// The prompt shown before the answer, with `prompt_logprobs` when they were read.
    pub fn echo(
        text: String,
        ids: &[u32],
        prompt_logprobs: Option<&[Option<TokenLogprob>]>,
    ) -> Chunk {
        let readings =
            prompt_logprobs.map(|read| ids.iter().copied().zip(read.iter().cloned()).collect());
        Chunk { text, readings }
    }

    /// A piece of the answer; its readings only when `asked`.
    pub fn answer(sent: Sent, asked: bool) -> Chunk {
        let readings = sent
            .logprobs
            .filter(|_| asked)
            .map(|read| read.iter().map(|r| (r.token, Some(r.clone()))).collect());
        Chunk {
            text: sent.text.to_string(),
            readings,
        }
    }

    /// Its log-probabilities in the reply's shape, the text starting at character `offset`.
    fn logprobs(&self, shape: &Shape, tokenizer: &Tokenizer, offset: usize) -> Value {
        let Some(readings) = &self.readings else {
            return Value::Null;
        };
        match shape {
            Shape::Text => {
                let tokens: Vec<_> = readings.iter().map(|(id, r)| (*id, r.as_ref())).collect();
                logprobs::completion(tokenizer, &tokens, offset)
            }
            Shape::Chat => {
                let answer: Vec<TokenLogprob> =
                    readings.iter().filter_map(|(_, r)| r.clone()).collect();
                logprobs::chat(tokenizer, &answer)
            }
        }
    }
}

/// Streams the reply to `job` (see the module's doc), holding its place among the
/// generations in flight until the generation ends.
pub(crate) fn streamed(
    gateway: Arc<Gateway>,
    job: Job,
    reply: Reply,
    include_usage: bool,
    admitted: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let reply = Arc::new(reply);
    let served = job.served.clone();
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(run(gateway, &job, Some(tx)).await);
        drop(admitted);
    });
    let pieces = {
        let reply = reply.clone();
        // Characters before each piece: completions' text_offset counts from the start.
        let mut offset = 0;
        tokio_stream::wrappers::ReceiverStream::new(rx).map(move |chunk| {
            let logprobs = chunk.logprobs(&reply.shape, &served.tokenizer, offset);
            offset += chunk.text.chars().count();
            let body = reply.chunk(&chunk.text, logprobs);
            Ok::<_, std::convert::Infallible>(SseEvent::default().data(body.to_string()))
        })
    };
    let end = futures::stream::once(async move {
        let mut last = vec![];
        match done_rx.await {
            Ok(Ok(o)) => {
                let g = &o.answered.generation;
                let usage = Usage::new(g.prompt_tokens, g.tokens.len());
                last.push(reply.last(&o.answered, &usage));
                if include_usage {
                    last.push(reply.usage(&usage));
                }
            }
            Ok(Err(e)) => last.push(json!({"error": {"message": e.message, "type": "server_error", "param": e.param, "code": null}})),
            Err(_) => last.push(json!({"error": {"message": "generation stopped", "type": "server_error", "param": null, "code": null}})),
        };
        let events: Vec<_> = last
            .into_iter()
            .map(|body| body.to_string())
            .chain(["[DONE]".to_string()])
            .map(|data| Ok(SseEvent::default().data(data)))
            .collect();
        futures::stream::iter(events)
    })
    .flatten();
    Sse::new(pieces.chain(end))
        .keep_alive(KeepAlive::default())
        .into_response()
}
