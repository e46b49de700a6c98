//! Wire types of the control API that the server sends and the CLI reads.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Counters, InterfaceStatus},
    sessions::health::HealthReport,
};

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
}

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
