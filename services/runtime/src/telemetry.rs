//! Logs and traces. Logs go to stderr, or to a file with only warnings and errors on stderr,
//! as text or JSON; spans always get OpenTelemetry ids (so trace context propagates through
//! Kafka headers) and are exported over OTLP when an endpoint is configured.

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
    #[error("cannot open the log file {0}: {1}")]
    LogFile(String, std::io::Error),
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Every line on stderr.
    Stderr,
    /// Every line appended to this file; warnings and errors on stderr too.
    File(std::path::PathBuf),
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

/// Lines in `format` written by `writer`.
fn lines<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// A layer that sees every event, whatever the log filter (e.g. a progress display).
pub type Watcher = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Installs the global subscriber and the W3C trace-context propagator.
pub fn init(
    service: &str,
    settings: &TelemetrySettings,
    target: &LogTarget,
    watcher: Option<Watcher>,
) -> Result<TelemetryGuard, TelemetryError> {
    // Installed first, so that nothing recorded from here on is lost.
    crate::metrics::handle();
    let filter = || {
        EnvFilter::try_new(&settings.log)
            .map_err(|e| TelemetryError::Filter(settings.log.clone(), e.to_string()))
    };
    let provider = tracer_provider(service, &settings.otlp_endpoint)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.to_string()))
        .with_filter(filter()?);
    let output = match target {
        LogTarget::Stderr => lines(settings.format, std::io::stderr, true)
            .with_filter(filter()?)
            .boxed(),
        LogTarget::File(path) => {
            let file = open_log(path)?;
            let warnings = lines(settings.format, std::io::stderr, true)
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
            lines(settings.format, std::sync::Mutex::new(file), false)
                .with_filter(filter()?)
                .and_then(warnings)
                .boxed()
        }
    };
    tracing_subscriber::registry()
        .with(watcher)
        .with(output)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

fn open_log(path: &std::path::Path) -> Result<std::fs::File, TelemetryError> {
    let failed = |e| TelemetryError::LogFile(path.display().to_string(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(failed)
}
