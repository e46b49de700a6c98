//! The session log: one record per intercepted connection (allowed or blocked) and one per
//! channel, kept in SQLite, plus the registry of live sessions that can be listed and killed.

pub mod health;
pub mod live;
pub mod retention;
pub mod store;
mod writer;

#[cfg(test)]
mod log_rows_tests;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch: how times are stored.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// RFC 3339 with microseconds, UTC.
pub fn format_time(micros: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

fn serialize_time<S: serde::Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*micros))
}

fn serialize_opt_time<S: serde::Serializer>(micros: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match micros {
        Some(m) => s.serialize_str(&format_time(*m)),
        None => s.serialize_none(),
    }
}

fn deserialize_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = String::deserialize(d)?;
    parse_time(&text).map_err(serde::de::Error::custom)
}

fn deserialize_opt_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|t| parse_time(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn parse_time(text: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339(text).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_micros() as i64)
}

/// One intercepted connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub email: Option<String>,
    pub device_id: Option<String>,
    /// The device's address and port.
    pub source: String,
    /// The original destination address and port.
    pub destination: String,
    /// The Unix login, once the user named it.
    pub login: Option<String>,
    pub policy_id: Option<String>,
    pub policy_name: Option<String>,
    /// `audit_ssh` or `block`.
    pub decision: String,
    #[serde(
        serialize_with = "serialize_time",
        deserialize_with = "deserialize_time"
    )]
    pub started_at: i64,
    #[serde(
        serialize_with = "serialize_opt_time",
        deserialize_with = "deserialize_opt_time"
    )]
    pub ended_at: Option<i64>,
    pub duration_ms: Option<u64>,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    /// `client`, `server`, `admin kill`, `max duration`, or an error text.
    pub close_reason: Option<String>,
    /// Serial of the minted user certificate (a string: 64-bit values exceed JSON numbers).
    pub cert_serial: Option<String>,
    /// SHA-256 fingerprint of the server's host key.
    pub upstream_host_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelRecord>,
    /// File operations seen on SFTP and legacy scp channels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_ops: Vec<FileOpRecord>,
}

/// One file operation on an SFTP or scp channel, with what the server (or the gateway,
/// when it denied it) answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileOpRecord {
    pub channel: u32,
    #[serde(
        serialize_with = "serialize_time",
        deserialize_with = "deserialize_time"
    )]
    pub at: i64,
    /// `sftp` or `scp`.
    pub protocol: String,
    /// `open`, `close`, `remove`, `rename`, `mkdir`, … (SFTP); `upload`, `download` (scp).
    pub op: String,
    pub path: String,
    pub target: Option<String>,
    pub flags: Option<String>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// `ok`, the server's error, or the gateway's denial.
    pub status: String,
    /// Refused by the gateway's transfer rules (never reached the server).
    pub denied: bool,
}

impl SessionRecord {
    /// A record just opened: everything not known at the accept is empty.
    pub fn new(
        id: String,
        source: String,
        destination: String,
        decision: &str,
        started_at: i64,
    ) -> Self {
        SessionRecord {
            id,
            email: None,
            device_id: None,
            source,
            destination,
            login: None,
            policy_id: None,
            policy_name: None,
            decision: decision.to_string(),
            started_at,
            ended_at: None,
            duration_ms: None,
            bytes_from_client: 0,
            bytes_from_server: 0,
            close_reason: None,
            cert_serial: None,
            upstream_host_key: None,
            channels: vec![],
            file_ops: vec![],
        }
    }
}

/// One program (shell, exec, subsystem) on a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The device-side SSH channel number.
    pub channel: u32,
    /// `shell`, `exec` or `subsystem`.
    pub kind: String,
    /// The exec command line or the subsystem name.
    pub command: Option<String>,
    #[serde(
        serialize_with = "serialize_time",
        deserialize_with = "deserialize_time"
    )]
    pub started_at: i64,
    #[serde(
        serialize_with = "serialize_opt_time",
        deserialize_with = "deserialize_opt_time"
    )]
    pub ended_at: Option<i64>,
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    /// Path of the encrypted recording, when the policy asked for one.
    pub recording: Option<String>,
    /// Environment variables the server accepted for the program (`env` requests), as
    /// `[name, value]` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}
