//! `sshgw status`: what the datapath is doing, from the running daemon or, when it is
//! down, straight from the pinned kernel state.

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{self, Counters, InterfaceStatus},
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

fn print_session_log(log: &HealthReport, out: &mut impl Write) -> std::io::Result<()> {
    if log.is_ok() {
        write!(out, "session log: ok")?;
    } else {
        let since = log
            .since
            .map(crate::sessions::format_time)
            .unwrap_or_default();
        let effect = match log.on_failure {
            crate::config::LogFailure::Refuse => "new sessions are refused",
            crate::config::LogFailure::Allow => "sessions are allowed (on_log_failure = allow)",
        };
        write!(
            out,
            "session log: FAILING since {since}: {} ({effect})",
            log.error.as_deref().unwrap_or("unknown error")
        )?;
    }
    let mut notes = Vec::new();
    if log.queued > 0 {
        notes.push(format!("{} records waiting", log.queued));
    }
    if log.lost > 0 {
        notes.push(format!("{} records lost", log.lost));
    }
    if log.write_failures > 0 {
        notes.push(format!("{} failed writes", log.write_failures));
    }
    if notes.is_empty() {
        writeln!(out)
    } else {
        writeln!(out, "; {}", notes.join(", "))
    }
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

/// The report when no daemon answers.
pub fn from_pins(pin_dir: PathBuf) -> Result<Report> {
    let pinned = datapath::pinned_state(&pin_dir)?;
    Ok(match pinned {
        Some(state) => Report {
            daemon: "stopped".into(),
            pin_dir,
            pinned: true,
            interfaces: state.interfaces.into_iter().map(Into::into).collect(),
            listeners: vec![],
            counters: counters_owned(state.counters),
            session_log: None,
        },
        None => Report {
            daemon: "stopped".into(),
            pin_dir,
            pinned: false,
            interfaces: vec![],
            listeners: vec![],
            counters: Default::default(),
            session_log: None,
        },
    })
}

pub fn print_human(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "daemon:      {}", r.daemon)?;
    let pin_note = match (r.pinned, r.daemon.as_str()) {
        (true, "running") => "pinned",
        (true, _) => "pinned: audited SSH is dropped until sshgw runs again",
        (false, _) => "nothing pinned",
    };
    writeln!(out, "pin dir:     {} ({pin_note})", r.pin_dir.display())?;
    if r.interfaces.is_empty() {
        writeln!(out, "interfaces:  none")?;
    }
    for (i, iface) in r.interfaces.iter().enumerate() {
        writeln!(
            out,
            "{}{} (link {}, program {})",
            if i == 0 {
                "interfaces:  "
            } else {
                "             "
            },
            iface.name,
            iface.link_id,
            iface.program_id
        )?;
    }
    let listeners: Vec<String> = r.listeners.iter().map(|a| a.to_string()).collect();
    writeln!(
        out,
        "listeners:   {}",
        if listeners.is_empty() {
            "none".to_string()
        } else {
            listeners.join(", ")
        }
    )?;
    if let Some(log) = &r.session_log {
        print_session_log(log, out)?;
    }
    if !r.counters.is_empty() {
        writeln!(out, "counters:")?;
        for (name, value) in &r.counters {
            writeln!(out, "  {name:<28} {value}")?;
        }
    }
    Ok(())
}
