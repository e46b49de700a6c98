//! OpenTelemetry logs over OTLP/HTTP: one `ExportLogsServiceRequest` (protobuf, from the
//! `opentelemetry-proto` crate) per batch, POSTed to `<endpoint>/v1/logs`. A 2xx answer
//! without rejected records delivers the batch; anything else is retried, whole.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use prost::Message;

use super::event::Event;
use crate::config::OtlpConfig;

/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct OtlpSink {
    client: reqwest::Client,
    url: String,
    router_id: String,
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

impl OtlpSink {
    pub fn new(config: &OtlpConfig, router_id: &str) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("sshgw/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("export.otlp.ca_file: cannot read {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("export.otlp.ca_file: {}", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(OtlpSink {
            client: builder
                .build()
                .context("export.otlp: building the HTTP client")?,
            url: format!("{}/v1/logs", config.endpoint.trim_end_matches('/')),
            router_id: router_id.to_owned(),
        })
    }

    fn record(event: &Event) -> LogRecord {
        let nanos = (event.at.max(0) as u64) * 1000;
        let mut attributes = vec![
            text("event.id", &event.id),
            text("event.name", &event.kind),
            int("event.sequence", event.seq),
        ];
        if let Some(session) = &event.session_id {
            attributes.push(text("sshgw.session_id", session));
        }
        LogRecord {
            time_unix_nano: nanos,
            observed_time_unix_nano: nanos,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(event.body.to_string())),
            }),
            attributes,
            event_name: event.kind.clone(),
            ..Default::default()
        }
    }

    fn request(&self, events: &[Event]) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        text("service.name", "sshgw"),
                        text("service.instance.id", &self.router_id),
                        text("host.name", &self.router_id),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "sshgw.audit".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records: events.iter().map(Self::record).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Delivers `events` or fails (then nothing counts as delivered).
    pub async fn send(&mut self, events: &[Event]) -> Result<()> {
        let body = self.request(events).encode_to_vec();
        let reply = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .with_context(|| format!("OTLP POST {}", self.url))?;
        let status = reply.status();
        let bytes = reply.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            let error = format!("OTLP POST {}: {status}: {}", self.url, text.trim());
            // The collector refuses the request itself (malformed, too large): sending it
            // again cannot help. Others (401, 403, 404: a setup error) are retried.
            if matches!(status.as_u16(), 400 | 413 | 422) {
                return Err(super::Permanent(error).into());
            }
            bail!(error);
        }
        if let Ok(answer) = ExportLogsServiceResponse::decode(bytes.as_ref())
            && let Some(partial) = answer.partial_success
            && partial.rejected_log_records > 0
        {
            // The rest was accepted: retrying would duplicate it, and the collector would
            // reject the same records again.
            tracing::warn!(
                rejected = partial.rejected_log_records,
                of = events.len(),
                error = partial.error_message,
                "export: the OTLP collector rejected some records"
            );
        }
        Ok(())
    }
}
