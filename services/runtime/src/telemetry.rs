//! Logs and traces. Logs go to stderr as text or JSON; spans always get OpenTelemetry ids (so
//! trace context propagates through Kafka headers) and are exported over OTLP when an endpoint
//! is configured.

use crate::config::{LogFormat, TelemetrySettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid telemetry.log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("cannot build the OTLP exporter for {0}: {1}")]
    Exporter(String, String),
    #[error("a global subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Flushes and stops exporting when dropped; keep it alive for the life of the process.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// The tracer provider: with an OTLP batch exporter when `otlp_endpoint` is set.
pub fn tracer_provider(
    service: &str,
    otlp_endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service.to_string())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    if otlp_endpoint.is_empty() {
        return Ok(builder.build());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp_endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(otlp_endpoint.to_string(), e.to_string()))?;
    Ok(builder.with_batch_exporter(exporter).build())
}

/// Installs the global subscriber and the W3C trace-context propagator.
pub fn init(service: &str, settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&settings.log)
        .map_err(|e| TelemetryError::Filter(settings.log.clone(), e.to_string()))?;
    let provider = tracer_provider(service, &settings.otlp_endpoint)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_string()));
    let fmt = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}
