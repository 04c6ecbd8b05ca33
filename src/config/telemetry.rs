//! `[telemetry]`: log format and level, OTLP export and sampler.

use serde::Deserialize;

use super::{Config, ConfigError, invalid};

/// `[telemetry]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log format: `text` (default) or `json`. `--log-format` overrides it.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// Log filter, as `RUST_LOG` (default `info`); `RUST_LOG` overrides it. Applied on SIGHUP.
    #[serde(default)]
    pub log_level: Option<String>,
    /// OTLP endpoint for traces. Tracing is off unless this or `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`. `OTEL_EXPORTER_OTLP_PROTOCOL` overrides it.
    #[serde(default)]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// `service.name` of the spans (default `amqp-agent`). `OTEL_SERVICE_NAME` overrides it.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Sampler, as `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`); the variable overrides it.
    #[serde(default)]
    pub sampler: Option<SamplerKind>,
    /// Sampler argument (ratio), as `OTEL_TRACES_SAMPLER_ARG`.
    #[serde(default)]
    pub sampler_arg: Option<f64>,
}

/// `telemetry.log_format` (and `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `telemetry.otlp_protocol` (and `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// `grpc` (the default)
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// `http/protobuf`
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The protocol of a standard name, or `None` for an unknown one.
    #[must_use]
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }

    /// The standard name.
    #[must_use]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Checks a `telemetry.log_level` value (a `RUST_LOG`-style filter).
#[must_use]
pub(crate) fn valid_log_level(level: &str) -> bool {
    tracing_subscriber::EnvFilter::try_new(level).is_ok()
}

/// A trace sampler, named as in `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio`
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    /// `parentbased_always_on` (the default)
    #[default]
    #[serde(rename = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    #[serde(rename = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`
    #[serde(rename = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

impl SamplerKind {
    /// Every sampler with its standard name.
    pub const ALL: [(&'static str, Self); 6] = [
        ("always_on", Self::AlwaysOn),
        ("always_off", Self::AlwaysOff),
        ("traceidratio", Self::TraceIdRatio),
        ("parentbased_always_on", Self::ParentBasedAlwaysOn),
        ("parentbased_always_off", Self::ParentBasedAlwaysOff),
        ("parentbased_traceidratio", Self::ParentBasedTraceIdRatio),
    ];

    /// The sampler of a standard name (`OTEL_TRACES_SAMPLER`), or `None` for an unknown one.
    #[must_use]
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// The standard name.
    #[must_use]
    pub(crate) fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("parentbased_always_on", |(n, _)| n)
    }
}

impl Config {
    pub(super) fn validate_observability(&self) -> Result<(), ConfigError> {
        let t = &self.telemetry;
        if t.log_level.as_deref().is_some_and(|l| !valid_log_level(l)) {
            return Err(invalid(
                "telemetry.log_level",
                "is not a log filter (e.g. `info`, `debug`, `warn,amqp_agent=debug`; the value is not repeated here)",
            ));
        }
        self.validate_admin()
    }
}
