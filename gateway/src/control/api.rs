//! Wire types of the control API: the server serialises them and the CLI's
//! [`super::client::Client`] reads the same types back.
//!
//! The small answers (`applied`, `deleted`, `killed`, `valid`, `error`) list their fields in
//! alphabetical order: they used to be built as JSON maps, which serde_json writes sorted,
//! and their bytes stay as they were.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Counters, InterfaceStatus},
    sessions::{SessionRecord, health::HealthReport},
};

/// `GET /v1/status` (and `sshgw status --json` when no daemon answers).

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// "running" or "stopped".
    pub daemon: String,
    pub pin_dir: PathBuf,
    /// Whether links/maps are pinned (after a crash: the fail-closed program).
    pub pinned: bool,
    pub interfaces: Vec<Interface>,
    pub listeners: Vec<SocketAddr>,
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Whether the session log can be written (running daemon only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_log: Option<HealthReport>,
    /// Uploads to object storage (running daemon with `[storage]` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageReport>,
    /// Shipping to the central index (running daemon with `[central]` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub central: Option<ConsumerReport>,
    /// The SIEM exporters by name (`otlp`, `syslog`), those configured.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub export: std::collections::BTreeMap<String, ConsumerReport>,
}

pub use crate::sessions::outbox::ConsumerReport;

impl Report {
    /// Files each consumer's report under `central` or `export`.
    pub fn with_outbox(mut self, reports: Vec<(&'static str, ConsumerReport)>) -> Self {
        for (name, report) in reports {
            if name == crate::sessions::outbox::consumer::CENTRAL {
                self.central = Some(report);
            } else {
                self.export.insert(name.to_owned(), report);
            }
        }
        self
    }
}

pub use crate::recording::spool::StorageReport;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub link_id: u32,
    pub program_id: u32,
}

impl From<InterfaceStatus> for Interface {
    fn from(i: InterfaceStatus) -> Self {
        Interface {
            name: i.name,
            link_id: i.link_id,
            program_id: i.program_id,
        }
    }
}

pub fn counters_owned(c: Counters) -> std::collections::BTreeMap<String, u64> {
    c.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The body of every refused or failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `PUT /v1/policies`: the set now in force has this many policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoliciesApplied {
    pub applied: bool,
    pub policies: usize,
}

/// `POST /v1/policies/validate`: the set is valid and has this many policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoliciesValid {
    pub policies: usize,
    pub valid: bool,
}

/// `PUT /v1/devices`: the table now in force has this many devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesApplied {
    pub applied: bool,
    pub devices: usize,
}

/// `PUT /v1/devices/{id}`: this device was added or replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceApplied {
    pub applied: bool,
    pub device: String,
}

/// `DELETE /v1/devices/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceDeleted {
    pub deleted: String,
}

/// `PUT /v1/recording/key`: new channels are encrypted to the new key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyApplied {
    pub applied: bool,
}

/// `POST /v1/sessions/{id}/kill`: this live session was told to end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Killed {
    pub killed: String,
}

/// `GET /v1/sessions`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    /// Each record with its keys sorted, as the list has always been written (a single
    /// session, `GET /v1/sessions/{id}`, keeps the record's field order).
    #[serde(serialize_with = "sorted_records")]
    pub sessions: Vec<SessionRecord>,
}

fn sorted_records<S: serde::Serializer>(
    records: &[SessionRecord],
    s: S,
) -> Result<S::Ok, S::Error> {
    let values = records
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(serde::ser::Error::custom)?;
    values.serialize(s)
}

/// The filters of `GET /v1/sessions` as the CLI asks for them.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Only sessions in progress.
    pub active: bool,
    /// Only sessions started within this long (`30m`, `8h`, `2d`).
    pub since: Option<String>,
    /// Only sessions of this user (email).
    pub user: Option<String>,
    /// Only sessions of this device id.
    pub device: Option<String>,
    /// Only sessions to this address (any port) or address:port.
    pub destination: Option<String>,
}

impl SessionQuery {
    /// The query string (without `?`), values percent-encoded; empty when no filter is set.
    pub fn to_query(&self) -> String {
        let mut query = Vec::new();
        if self.active {
            query.push("active=true".to_string());
        }
        if let Some(since) = &self.since {
            query.push(format!("since={}", encode(since)));
        }
        if let Some(device) = &self.device {
            query.push(format!("device={}", encode(device)));
        }
        if let Some(destination) = &self.destination {
            query.push(format!("destination={}", encode(destination)));
        }
        if let Some(user) = &self.user {
            query.push(format!("user={}", encode(user)));
        }
        query.join("&")
    }
}

/// Percent-encodes a query value or path segment (emails carry `@` and `+`).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::util::json_file::to_bytes;

    /// A value as the API writes it.
    fn text(value: &impl Serialize) -> String {
        String::from_utf8(to_bytes(value).unwrap()).unwrap()
    }

    /// The typed answers write the bytes the JSON maps they replaced wrote.
    #[test]
    fn answers_keep_their_bytes() {
        let golden = include_str!("../../testdata/golden/session_record.json");
        let record: SessionRecord = serde_json::from_str(golden).unwrap();
        let sessions = vec![record.clone(), record];
        #[rustfmt::skip]
        let cases: Vec<(String, serde_json::Value)> = vec![
            (text(&SessionList { sessions: sessions.clone() }), json!({ "sessions": sessions })),
            (text(&ApiError { error: "no".into() }), json!({ "error": "no" })),
            (text(&PoliciesApplied { applied: true, policies: 3 }),
             json!({ "applied": true, "policies": 3 })),
            (text(&PoliciesValid { policies: 3, valid: true }),
             json!({ "valid": true, "policies": 3 })),
            (text(&DevicesApplied { applied: true, devices: 2 }),
             json!({ "applied": true, "devices": 2 })),
            (text(&DeviceApplied { applied: true, device: "d".into() }),
             json!({ "applied": true, "device": "d" })),
            (text(&DeviceDeleted { deleted: "d".into() }), json!({ "deleted": "d" })),
            (text(&KeyApplied { applied: true }), json!({ "applied": true })),
            (text(&Killed { killed: "s".into() }), json!({ "killed": "s" })),
        ];
        for (typed, map) in cases {
            assert_eq!(typed, text(&map));
        }
    }

    /// The query the CLI sends, as it always built it.
    #[test]
    fn session_queries_are_encoded() {
        let query = SessionQuery {
            active: true,
            since: Some("1h".into()),
            user: Some("j+doe@example.com".into()),
            ..Default::default()
        };
        assert_eq!(
            query.to_query(),
            "active=true&since=1h&user=j%2Bdoe%40example.com"
        );
        let query = SessionQuery {
            device: Some("laptop 1".into()),
            destination: Some("[2001:db8::10]:22".into()),
            ..Default::default()
        };
        assert_eq!(
            query.to_query(),
            "device=laptop%201&destination=%5B2001%3Adb8%3A%3A10%5D%3A22"
        );
        assert_eq!(SessionQuery::default().to_query(), "");
    }
}
