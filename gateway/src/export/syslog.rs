//! RFC 5424 syslog over TCP with octet counting (RFC 6587 §3.4.1), optionally in TLS
//! (RFC 5425).
//!
//! Syslog has no acknowledgement. A message written to a socket that the receiver then
//! drops on a restart would be lost while counted as sent. So every batch goes over its
//! own connection: write, half-close, and wait for the receiver to close its side, which
//! it does only after it has read everything up to our end of stream. Only then does the
//! batch count as delivered; a batch cut short is sent again, whole (at least once).

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::event::Event;
use crate::{config::SyslogConfig, sessions::format_time};

/// `log audit` (13), severity informational (6).
const PRI: u32 = 13 * 8 + 6;
/// RFC 5612's enterprise number for documentation examples: the SD-ID's namespace.
const SD_ID: &str = "sshgw@32473";
/// Connect, send and the receiver's close, each.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct SyslogSink {
    address: String,
    router_id: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One event as an RFC 5424 message (without framing).
pub fn message(router_id: &str, event: &Event) -> String {
    let session = event
        .session_id
        .as_deref()
        .map(|s| format!(" session=\"{}\"", sd_escape(s)))
        .unwrap_or_default();
    format!(
        "<{PRI}>1 {} {router_id} sshgw {} {} [{SD_ID} id=\"{}\" seq=\"{}\"{session}] {}",
        format_time(event.at),
        std::process::id(),
        event.kind,
        sd_escape(&event.id),
        event.seq,
        event.body
    )
}

/// `LEN SP MSG`.
pub fn frame(message: &str) -> String {
    format!("{} {message}", message.len())
}

impl SyslogSink {
    pub fn new(config: &SyslogConfig, router_id: &str) -> Result<Self> {
        let tls = if config.tls {
            let host = match &config.server_name {
                Some(name) => name.clone(),
                None => host_of(&config.address).to_owned(),
            };
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .with_context(|| format!("export.syslog: {host:?} is not a TLS server name"))?;
            let tls_config = crate::central::connect::client_config(config.ca_file.as_deref())
                .context("export.syslog")?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(tls_config)), name))
        } else {
            None
        };
        Ok(SyslogSink {
            address: config.address.clone(),
            router_id: router_id.to_owned(),
            tls,
        })
    }

    /// Delivers `events` or fails (then nothing counts as delivered).
    pub async fn send(&mut self, events: &[Event]) -> Result<()> {
        let mut data = String::new();
        for event in events {
            data.push_str(&frame(&message(&self.router_id, event)));
        }
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(&self.address))
            .await
            .with_context(|| format!("syslog {}: connect timed out", self.address))?
            .with_context(|| format!("syslog {}", self.address))?;
        match &self.tls {
            None => deliver(tcp, data.as_bytes()).await,
            Some((connector, name)) => {
                let stream = tokio::time::timeout(TIMEOUT, connector.connect(name.clone(), tcp))
                    .await
                    .context("TLS handshake timed out")?
                    .context("TLS handshake")?;
                deliver(stream, data.as_bytes()).await
            }
        }
        .with_context(|| format!("syslog {}", self.address))
    }
}

/// Writes, half-closes, and waits for the receiver's end of stream.
async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, data: &[u8]) -> Result<()> {
    let io = async {
        stream.write_all(data).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(TIMEOUT, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("sending the batch"),
        Err(_) => bail!("the receiver did not close the batch's connection within {TIMEOUT:?}"),
    }
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_message_is_rfc5424_with_its_id_in_structured_data() {
        let event = Event {
            id: "rtr-a:7".into(),
            seq: 7,
            at: 1_764_000_000_000_000,
            kind: "session.opened".into(),
            session_id: Some("a\"b]".into()),
            body: json!({"k": 1}),
        };
        let m = message("rtr-a", &event);
        assert!(
            m.starts_with("<110>1 2025-11-24T16:00:00.000000Z rtr-a sshgw "),
            "{m}"
        );
        assert!(
            m.contains(" session.opened [sshgw@32473 id=\"rtr-a:7\" seq=\"7\" session=\"a\\\"b\\]\"] {\"k\":1}"),
            "{m}"
        );
        assert_eq!(frame("abc"), "3 abc");
        assert_eq!(frame("é"), "2 é");
        assert_eq!(host_of("[::1]:6514"), "::1");
        assert_eq!(host_of("logs.example.com:6514"), "logs.example.com");
    }
}
