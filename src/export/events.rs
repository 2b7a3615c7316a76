//! An agent's event export: every event as an OTLP log record and, when
//! [`OtlpConfig::chain_traces`] is on (the default), every chain step as a
//! span ([`super::spans`]), so that the log records of chain steps carry
//! trace context exactly when the trace is exported too.

use opentelemetry::metrics::Meter;
use tapio_core::RawEvent;
use tapio_core::channel::OnDrop;

use super::otlp::{ExportStats, OtlpConfig, OtlpError, OtlpLogExporter};
use super::settings::{OtlpSettings, TelemetryResource};
use super::spans::OtlpSpanExporter;

/// The log exporter and, with [`OtlpConfig::chain_traces`], the span
/// exporter, fed together.
#[derive(Debug)]
pub struct EventExports {
    logs: OtlpLogExporter,
    spans: Option<OtlpSpanExporter>,
}

/// What [`EventExports::shutdown`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventExportStats {
    /// Log records.
    pub logs: ExportStats,
    /// Chain spans, when exported.
    pub spans: Option<ExportStats>,
}

impl EventExports {
    /// Start the log exporter on `settings.logs` and, when
    /// `config.chain_traces`, the span exporter on `settings.traces`; both
    /// carry `resource`. `on_drop` sees the events whose log record is lost
    /// (charged to their collector at the export stage: one truth per
    /// event); a lost span is counted by the span exporter's own metrics
    /// (`tapio_export_spans_dropped_total`), not as a lost event.
    pub fn start(
        config: &OtlpConfig,
        settings: &OtlpSettings,
        resource: &TelemetryResource,
        on_drop: Option<OnDrop>,
    ) -> Result<Self, OtlpError> {
        let logs = OtlpLogExporter::start_with_settings(config, &settings.logs, resource, on_drop)?;
        let spans = if config.chain_traces {
            Some(OtlpSpanExporter::start_with_settings(
                config,
                &settings.traces,
                resource,
                None,
            )?)
        } else {
            None
        };
        Ok(Self { logs, spans })
    }

    /// Queue `event` for both exports; never waits.
    pub fn submit(&self, event: &RawEvent) {
        self.logs.submit(event);
        if let Some(spans) = &self.spans {
            spans.submit(event);
        }
    }

    /// Register both exporters' health metrics on `meter`.
    pub fn register_metrics(&self, meter: &Meter) {
        self.logs.register_metrics(meter);
        if let Some(spans) = &self.spans {
            spans.register_metrics(meter);
        }
    }

    /// The log exporter.
    pub fn logs(&self) -> &OtlpLogExporter {
        &self.logs
    }

    /// The span exporter, when chains are exported.
    pub fn spans(&self) -> Option<&OtlpSpanExporter> {
        self.spans.as_ref()
    }

    /// Deliver what both queued (each within the shutdown timeout), then
    /// stop.
    pub async fn shutdown(self) -> EventExportStats {
        let (logs, spans) = match self.spans {
            Some(spans) => {
                let (logs, spans) = tokio::join!(self.logs.shutdown(), spans.shutdown());
                (logs, Some(spans))
            }
            None => (self.logs.shutdown().await, None),
        };
        EventExportStats { logs, spans }
    }
}
