//! The safety filter and `POST /v1/moderations` (OpenAI's shape).
//!
//! A prompt is read before the model answers: a blocked one gets the refusal and no
//! generation. An answer is read before it is sent: whole when it is sent whole, sentence by
//! sentence when it is streamed (a sentence goes out only once read). Blocked: the refusal
//! instead (a stream stops). Redacted: the flagged sentences replaced. Flagged: sent as it
//! is. Every filtered request ends with `finish_reason: "content_filter"` when its text was
//! changed, says what was found under `"quark": {"moderation"}` and is counted in telemetry.

use crate::Gateway;
use crate::api::{ApiError, Refusals, TextInput, text_input};
use crate::routes::body;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quark_ml::MlError;
use quark_ml::batch::Engine;
use quark_ml::generate::{FinishReason, GenerateOptions, Generation, Piece, TokenLogprob};
use quark_moderation::policy::{Action, Verdict, sentence_ends};
use quark_moderation::{ModerationError, Moderator};
use quark_runtime::config::ModerationSettings;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::sync::Arc;
use utoipa::ToSchema;

/// Texts one `/v1/moderations` request may carry.
const MAX_INPUTS: usize = 256;

/// A moderator and what the settings make of its findings.
pub struct Screen {
    pub moderator: Arc<dyn Moderator>,
    settings: ModerationSettings,
}

/// What the filter did to one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Filtered {
    /// `input` (the prompt) or `output` (the answer).
    pub stage: &'static str,
    /// The strictest action taken.
    pub action: Action,
    pub categories: Vec<String>,
}

impl Filtered {
    /// Whether the text sent differs from what was asked or generated.
    pub fn changed(&self) -> bool {
        self.action != Action::Flag
    }

    fn of(stage: &'static str, verdict: &Verdict) -> Option<Filtered> {
        let action = match verdict {
            Verdict::Pass => return None,
            Verdict::Flag { .. } => Action::Flag,
            Verdict::Redact { .. } => Action::Redact,
            Verdict::Block { .. } => Action::Block,
        };
        Some(Filtered {
            stage,
            action,
            categories: verdict.categories().to_vec(),
        })
    }

    /// `self` joined with a later finding of the same stage: the stricter action, every
    /// category.
    fn merge(self, other: Option<Filtered>) -> Filtered {
        let Some(other) = other else { return self };
        let mut categories = self.categories;
        for c in other.categories {
            if !categories.contains(&c) {
                categories.push(c);
            }
        }
        Filtered {
            stage: self.stage,
            action: self.action.max(other.action),
            categories,
        }
    }
}

fn unavailable(e: ModerationError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("moderation failed: {e}"),
    )
}

impl Screen {
    pub fn new(
        moderator: Arc<dyn Moderator>,
        settings: ModerationSettings,
    ) -> Result<Screen, ModerationError> {
        settings.policy.validate()?;
        Ok(Screen {
            moderator,
            settings,
        })
    }

    pub fn refusal(&self) -> &str {
        &self.settings.refusal
    }

    /// What reading the prompt found: `Some` with `Block` means refuse. Redaction applies to
    /// answers only: a prompt in a redacted category is flagged.
    pub fn prompt(&self, text: &str) -> Result<Option<Filtered>, ApiError> {
        if !self.settings.input || text.trim().is_empty() {
            return Ok(None);
        }
        let verdict = self
            .settings
            .policy
            .apply(self.moderator.as_ref(), text)
            .map_err(unavailable)?;
        Ok(Filtered::of("input", &verdict).map(|mut f| {
            if f.action != Action::Block {
                f.action = Action::Flag;
            }
            f
        }))
    }

    /// The answer as it may be sent, and what was found in it.
    pub fn answer(&self, text: &str) -> Result<(String, Option<Filtered>), ApiError> {
        if !self.settings.output {
            return Ok((text.to_string(), None));
        }
        let verdict = self
            .settings
            .policy
            .apply(self.moderator.as_ref(), text)
            .map_err(unavailable)?;
        let sent = match &verdict {
            Verdict::Pass | Verdict::Flag { .. } => text.to_string(),
            Verdict::Redact { text, .. } => text.clone(),
            Verdict::Block { .. } => self.settings.refusal.clone(),
        };
        Ok((sent, Filtered::of("output", &verdict)))
    }

    /// A reader for a streamed answer (`None` when answers pass unread).
    pub fn stream(self: &Arc<Self>) -> Option<Streamed> {
        self.settings.output.then(|| Streamed {
            screen: self.clone(),
            pending: String::new(),
            sent: String::new(),
            filtered: None,
        })
    }
}

/// A streamed answer, read a sentence at a time.
pub struct Streamed {
    screen: Arc<Screen>,
    /// Generated, not yet read (an unfinished sentence).
    pending: String,
    /// What went out.
    pub sent: String,
    pub filtered: Option<Filtered>,
}

/// Text the filter let out, and whether it is not the text generated.
#[derive(Default)]
pub struct Cleared {
    pub text: String,
    pub changed: bool,
}

impl Streamed {
    /// Takes a generated piece; returns the text cleared to go out (empty in the middle of
    /// a sentence), or `None` once the answer is blocked (generation should stop).
    pub fn push(&mut self, piece: &str) -> Result<Option<Cleared>, ApiError> {
        self.pending.push_str(piece);
        match sentence_ends(&self.pending).last().copied() {
            Some(end) => {
                let rest = self.pending.split_off(end);
                let whole = std::mem::replace(&mut self.pending, rest);
                self.read(&whole)
            }
            None => Ok(Some(Cleared::default())),
        }
    }

    /// Reads what is left when generation ends.
    pub fn finish(&mut self) -> Result<Option<Cleared>, ApiError> {
        let rest = std::mem::take(&mut self.pending);
        if rest.is_empty() || self.is_blocked() {
            return Ok(Some(Cleared::default()));
        }
        self.read(&rest)
    }

    pub fn is_blocked(&self) -> bool {
        self.filtered
            .as_ref()
            .is_some_and(|f| f.action == Action::Block)
    }

    fn read(&mut self, text: &str) -> Result<Option<Cleared>, ApiError> {
        if text.trim().is_empty() {
            self.sent.push_str(text);
            return Ok(Some(Cleared {
                text: text.to_string(),
                changed: false,
            }));
        }
        let (cleared, found) = self.screen.answer(text)?;
        self.filtered = match self.filtered.take() {
            Some(before) => Some(before.merge(found)),
            None => found,
        };
        if self.is_blocked() {
            return Ok(None);
        }
        // Keep the whitespace the sentence began with (the tokenizer puts it there).
        let lead = &text[..text.len() - text.trim_start().len()];
        let out = match cleared == text {
            true => Cleared {
                text: cleared,
                changed: false,
            },
            false => Cleared {
                text: format!("{lead}{cleared}"),
                changed: true,
            },
        };
        self.sent.push_str(&out.text);
        Ok(Some(out))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ModerationRequest {
    #[schema(schema_with = text_input)]
    input: TextInput,
    model: Option<String>,
}

/// `POST /v1/moderations`: `{"input": "..." | ["...", ...], "model"?}` → `{"id", "model",
/// "results": [{"flagged", "categories", "category_scores"}]}`, with the categories the
/// classifier has learnt (OpenAI's names).
#[utoipa::path(post, path = "/v1/moderations", request_body = ModerationRequest, responses(
        (status = 200, description = "one result per input", body = serde_json::Value),
        Refusals,
))]
pub async fn moderations(
    State(gateway): State<Arc<Gateway>>,
    parsed: Result<Json<ModerationRequest>, JsonRejection>,
) -> Response {
    match moderate(&gateway, parsed).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn moderate(
    gateway: &Gateway,
    parsed: Result<Json<ModerationRequest>, JsonRejection>,
) -> Result<serde_json::Value, ApiError> {
    let request = body(parsed)?;
    // Like embeddings without an encoder: nothing here answers this route.
    let screen = gateway.screen().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "moderation is off on this gateway (gateway.moderation)",
        )
    })?;
    let texts = request.input.texts(
        MAX_INPUTS,
        "input must be a string or an array of strings (only text is moderated)",
    )?;
    let name = screen.moderator.name().to_string();
    if let Some(model) = request.model.filter(|m| *m != name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no moderation model {model}: this gateway has {name}"),
        ));
    }
    let moderator = screen.moderator.clone();
    let read = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        moderator.moderate(&refs)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(unavailable)?;
    let results: Vec<serde_json::Value> = read
        .iter()
        .map(|m| {
            let categories: serde_json::Map<String, serde_json::Value> = m
                .scores
                .keys()
                .map(|c| (c.clone(), m.flagged.contains(c).into()))
                .collect();
            serde_json::json!({
                "flagged": m.is_flagged(),
                "categories": categories,
                "category_scores": m.scores,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "id": format!("modr-{}", uuid::Uuid::new_v4().simple()),
        "model": name,
        "results": results,
    }))
}

/// A generation as it was sent, and what the filter did on the way.
pub(crate) struct Answered {
    pub generation: Generation,
    pub filtered: Vec<Filtered>,
}

impl Answered {
    pub fn finish_reason(&self) -> &'static str {
        if self.filtered.iter().any(Filtered::changed) {
            "content_filter"
        } else {
            crate::api::finish_reason(self.generation.finish)
        }
    }

    pub fn blocked(&self) -> bool {
        self.filtered.iter().any(|f| f.action == Action::Block)
    }
}

fn generation_error(e: MlError) -> ApiError {
    match e {
        MlError::Config(_) => ApiError::invalid("prompt", e.to_string()),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A piece of an answer as it goes out, and the readings of the tokens behind it: none when
/// the filter changed the text, which then is not what the tokens say.
pub(crate) struct Sent<'a> {
    pub text: &'a str,
    pub logprobs: Option<&'a [TokenLogprob]>,
}

impl<'a> Sent<'a> {
    fn generated(piece: Piece<'a>) -> Sent<'a> {
        Sent {
            text: piece.text,
            logprobs: Some(piece.logprobs),
        }
    }

    fn changed(text: &'a str) -> Sent<'a> {
        Sent {
            text,
            logprobs: None,
        }
    }
}

/// Generates from `ids` with the filter (if any) between the model and `send`: the prompt
/// is read first, then the answer — whole, or sentence by sentence when `streaming`.
pub(crate) fn generate_screened(
    engine: &Engine,
    ids: &[u32],
    options: &GenerateOptions,
    screen: Option<&Arc<Screen>>,
    (prompt, streaming): (&str, bool),
    mut send: impl FnMut(Sent) -> ControlFlow<()>,
) -> Result<Answered, ApiError> {
    let unscreened = |send: &mut dyn FnMut(Sent) -> ControlFlow<()>| {
        engine
            .generate(ids, options, |piece| send(Sent::generated(piece)))
            .map_err(generation_error)
    };
    let Some(screen) = screen else {
        return Ok(Answered {
            generation: unscreened(&mut send)?,
            filtered: vec![],
        });
    };
    let mut filtered: Vec<Filtered> = screen.prompt(prompt)?.into_iter().collect();
    if filtered.iter().any(|f| f.action == Action::Block) {
        let _ = send(Sent::changed(screen.refusal()));
        let generation = Generation {
            text: screen.refusal().to_string(),
            tokens: vec![],
            prompt_tokens: ids.len(),
            finish: FinishReason::Stop,
            logprobs: vec![],
        };
        return Ok(Answered {
            generation,
            filtered,
        });
    }
    let reader = if streaming { screen.stream() } else { None };
    let Some(mut reader) = reader else {
        let mut generation = unscreened(&mut send)?;
        let (text, found) = screen.answer(&generation.text)?;
        generation.text = text;
        filtered.extend(found);
        return Ok(Answered {
            generation,
            filtered,
        });
    };
    let generation = read_streamed(engine, ids, options, &mut reader, &mut send)?;
    if reader.is_blocked() {
        // What went out stays; the refusal ends it.
        let refusal = format!(" {}", screen.refusal());
        let _ = send(Sent::changed(&refusal));
        reader.sent.push_str(&refusal);
    }
    filtered.extend(reader.filtered.take());
    let generation = Generation {
        text: std::mem::take(&mut reader.sent),
        ..generation
    };
    Ok(Answered {
        generation,
        filtered,
    })
}

/// Generates through `reader`: each sentence goes out once read, with the readings of the
/// tokens generated since the last one went out.
fn read_streamed(
    engine: &Engine,
    ids: &[u32],
    options: &GenerateOptions,
    reader: &mut Streamed,
    send: &mut impl FnMut(Sent) -> ControlFlow<()>,
) -> Result<Generation, ApiError> {
    let mut behind: Vec<TokenLogprob> = vec![];
    let mut out = |cleared: &Cleared, behind: &mut Vec<TokenLogprob>| {
        let logprobs = (!cleared.changed).then_some(&behind[..]);
        let flow = send(Sent {
            text: &cleared.text,
            logprobs,
        });
        behind.clear();
        flow
    };
    let mut failure = None;
    let generation = engine
        .generate(ids, options, |piece| {
            behind.extend_from_slice(piece.logprobs);
            match reader.push(piece.text) {
                Ok(Some(cleared)) if cleared.text.is_empty() => ControlFlow::Continue(()),
                Ok(Some(cleared)) => out(&cleared, &mut behind),
                Ok(None) => ControlFlow::Break(()),
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        })
        .map_err(generation_error)?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(cleared) = reader.finish()?
        && !reader.is_blocked()
        && (!cleared.text.is_empty() || !behind.is_empty())
    {
        let _ = out(&cleared, &mut behind);
    }
    Ok(generation)
}
