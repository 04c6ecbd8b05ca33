//! Logs and traces: the tracing subscriber, the optional OpenTelemetry export, and W3C trace
//! context in (from AMQP headers) and out (to PHP and to retried messages).
//!
//! Invariant: with no OTLP endpoint configured, no OpenTelemetry layer is installed and
//! [`enabled`] is false, so the per-message cost is a plain tracing span.

pub(crate) mod events;
pub(crate) mod log_limit;
pub mod metrics;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{OtlpProtocol, SamplerKind, TelemetryConfig};

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static FILTER: OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
> = OnceLock::new();

/// `RUST_LOG` wins; else `telemetry.log_level`; else `info`. Noisy client crates stay at warn.
fn filter_for(level: Option<&str>) -> tracing_subscriber::EnvFilter {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        return filter;
    }
    let level = level.unwrap_or("info");
    tracing_subscriber::EnvFilter::try_new(format!("{level},lapin=warn,amq_protocol=warn"))
        .unwrap_or_else(|_| "info,lapin=warn,amq_protocol=warn".into())
}

/// Applies a new log level (SIGHUP); `RUST_LOG`, when set, keeps precedence.
pub(crate) fn set_log_level(level: Option<&str>) {
    if let Some(handle) = FILTER.get() {
        let _ = handle.reload(filter_for(level));
    }
}

/// True when spans are exported over OTLP.
#[must_use]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Where and how traces are exported, after environment overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// OTLP endpoint.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// `service.name`.
    pub service_name: String,
    /// Sampler.
    pub sampler: SamplerKind,
    /// Sampler argument.
    pub sampler_arg: Option<f64>,
}

/// Resolves the export settings: standard `OTEL_*` variables win over the file.
#[must_use]
pub(crate) fn export_settings(
    config: &TelemetryConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Option<Export> {
    let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| config.otlp_endpoint.clone())?;
    Some(Export {
        endpoint,
        // An unknown name in a variable falls back to the default, as the SDKs do.
        protocol: env("OTEL_EXPORTER_OTLP_PROTOCOL")
            .and_then(|p| OtlpProtocol::parse(&p))
            .or(config.otlp_protocol)
            .unwrap_or_default(),
        service_name: env("OTEL_SERVICE_NAME")
            .or_else(|| config.service_name.clone())
            .unwrap_or_else(|| "amqp-agent".to_owned()),
        sampler: env("OTEL_TRACES_SAMPLER")
            .and_then(|s| SamplerKind::parse(&s))
            .or(config.sampler)
            .unwrap_or_default(),
        sampler_arg: env("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|a| a.parse().ok())
            .or(config.sampler_arg),
    })
}

/// The OpenTelemetry sampler of `kind`; `arg` is the ratio of the ratio-based ones.
#[must_use]
pub(crate) fn sampler(kind: SamplerKind, arg: Option<f64>) -> Sampler {
    let ratio = arg.unwrap_or(1.0).clamp(0.0, 1.0);
    match kind {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
        SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentBasedTraceIdRatio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// Colour (ANSI escapes) only for a terminal, and never when `NO_COLOR` is set to a non-empty
/// value (<https://no-color.org>): a file, a pipe or journald must get plain text.
#[must_use]
pub(crate) fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Installs the global subscriber: formatted logs (text or JSON) filtered by `RUST_LOG`, plus
/// the OpenTelemetry layer when `export` is set. Must run inside the Tokio runtime.
///
/// # Errors
/// When the OTLP exporter cannot be built.
pub(crate) fn init(json: bool, level: Option<&str>, export: Option<&Export>) -> anyhow::Result<()> {
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter_for(level));
    let _ = FILTER.set(handle);
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    let Some(export) = export else {
        registry.init();
        return Ok(());
    };
    let provider = provider(export)?;
    let tracer = provider.tracer("amqp-agent");
    registry
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(endpoint = %export.endpoint, protocol = export.protocol.name(), sampler = export.sampler.name(), "Exporting traces over OTLP");
    Ok(())
}

use tracing_subscriber::Layer as _;

fn provider(export: &Export) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    let exporter = match export.protocol {
        OtlpProtocol::HttpProtobuf => {
            // A base endpoint gets the signal path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
            let url = if export.endpoint.ends_with("/v1/traces") {
                export.endpoint.clone()
            } else {
                format!("{}/v1/traces", export.endpoint.trim_end_matches('/'))
            };
            SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()?
        }
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(export.endpoint.clone())
            .build()?,
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(export.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(export.sampler, export.sampler_arg))
        .with_resource(resource)
        .build())
}

/// Flushes and stops the exporter (blocking work, so off the async threads).
pub(crate) async fn shutdown() {
    if let Some(provider) = PROVIDER.get().cloned() {
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

struct HeaderExtractor<'a>(Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        crate::contract::string_header(self.0, key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .map_or_else(Vec::new, |t| t.inner().keys().map(|k| k.as_str()).collect())
    }
}

/// Makes `span` a child of the trace context carried in the message headers, if any.
pub(crate) fn set_parent_from_headers(span: &tracing::Span, headers: Option<&FieldTable>) {
    if !enabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C (traceparent, tracestate) of `span`, when traces are exported.
#[must_use]
pub(crate) fn context_of(span: &tracing::Span) -> Option<(String, Option<String>)> {
    if !enabled() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    let parent = carrier.remove(crate::trace_context::TRACEPARENT)?;
    Some((
        parent,
        carrier
            .remove(crate::trace_context::TRACESTATE)
            .filter(|s| !s.is_empty()),
    ))
}

/// Links `span` to `other` (a batch's FastCGI span to each message's process span), when traces
/// are exported.
pub(crate) fn link(span: &tracing::Span, other: &tracing::Span) {
    if !enabled() {
        return;
    }
    let sc = other.context().span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

/// The trace id of `span` as hex, when traces are exported.
#[must_use]
pub(crate) fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Writes `span`'s trace context into message headers, so the next attempt continues the trace.
pub(crate) fn inject_into_headers(span: &tracing::Span, headers: &mut FieldTable) {
    if let Some((parent, state)) = context_of(span) {
        headers.insert(
            crate::trace_context::TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(parent)),
        );
        if let Some(state) = state {
            headers.insert(
                crate::trace_context::TRACESTATE.into(),
                AMQPValue::LongString(LongString::from(state)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_variables_win_over_the_file() {
        let file = TelemetryConfig {
            otlp_endpoint: Some("http://file:4317".into()),
            otlp_protocol: Some(OtlpProtocol::Grpc),
            service_name: Some("from-file".into()),
            ..TelemetryConfig::default()
        };
        assert!(
            export_settings(&TelemetryConfig::default(), |_| None).is_none(),
            "off by default"
        );
        let e = export_settings(&file, |_| None).unwrap();
        assert_eq!(
            (e.endpoint.as_str(), e.protocol, e.service_name.as_str()),
            ("http://file:4317", OtlpProtocol::Grpc, "from-file")
        );
        let e = export_settings(&file, |k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4318".into()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
            "OTEL_SERVICE_NAME" => Some("from-env".into()),
            "OTEL_TRACES_SAMPLER" => Some("traceidratio".into()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(e.endpoint, "http://env:4318");
        assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(e.service_name, "from-env");
        assert_eq!(
            (e.sampler, e.sampler_arg),
            (SamplerKind::TraceIdRatio, Some(0.25))
        );
    }

    #[test]
    fn samplers_are_the_standard_names() {
        for (name, kind) in SamplerKind::ALL {
            assert_eq!(SamplerKind::parse(name), Some(kind), "{name}");
            assert_eq!(kind.name(), name);
        }
        assert!(SamplerKind::parse("sometimes").is_none());
        let unknown = export_settings(
            &TelemetryConfig {
                otlp_endpoint: Some("http://file:4317".into()),
                sampler: Some(SamplerKind::AlwaysOff),
                ..TelemetryConfig::default()
            },
            |k| (k == "OTEL_TRACES_SAMPLER").then(|| "sometimes".to_owned()),
        )
        .unwrap();
        assert_eq!(
            unknown.sampler,
            SamplerKind::AlwaysOff,
            "an unknown name is ignored"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "empty NO_COLOR counts as unset"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None), "a file, pipe or journald");
    }
}
