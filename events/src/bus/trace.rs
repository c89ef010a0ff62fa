//! W3C trace context in Kafka headers, so a feedback event, the retraining it caused and the
//! promotion that followed appear as one trace.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector(Option<OwnedHeaders>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        let headers = self.0.take().unwrap_or_default();
        self.0 = Some(headers.insert(Header {
            key,
            value: Some(&value),
        }));
    }
}

struct HeaderExtractor<'a>(&'a BorrowedHeaders);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// Adds `traceparent` (and `tracestate`) for the current span to `headers`.
pub(crate) fn inject_current(headers: OwnedHeaders) -> OwnedHeaders {
    let context = tracing::Span::current().context();
    let mut injector = HeaderInjector(Some(headers));
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut injector));
    injector.0.unwrap_or_default()
}

/// The trace context a message carries, if any.
pub(crate) fn extract(headers: Option<&BorrowedHeaders>) -> Context {
    match headers {
        Some(headers) => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
        }
        None => Context::new(),
    }
}
