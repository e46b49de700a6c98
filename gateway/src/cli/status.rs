//! `sshgw status`: from the daemon, or from the pinned kernel state when it is down.

use std::{io::Write, path::PathBuf};

use anyhow::Result;

use super::{Target, escape::escape_lines};
use crate::{
    config,
    control::{
        api::{Report, counters_owned},
        client::{Client, ClientError},
    },
    datapath,
    sessions::health::HealthReport,
};

pub fn run(target: &Target, json: bool) -> Result<()> {
    let config = target.config()?;
    let socket = target.socket(config.as_ref());
    let pin_dir = config
        .as_ref()
        .map(|c| c.datapath.pin_dir.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PIN_DIR));
    let report = super::runtime()?.block_on(async {
        match Client::new(socket).status().await {
            Ok(report) => Ok(report),
            Err(ClientError::Status { status, body }) => {
                anyhow::bail!("status failed ({status}): {}", body["error"])
            }
            // No daemon: report what the kernel still holds.
            Err(ClientError::Unreachable { .. }) => from_pins(pin_dir),
            Err(ClientError::Other(e)) => Err(e),
        }
    })?;
    if json {
        return super::print_json(&report);
    }
    let mut text = Vec::new();
    print_human(&report, &mut text)?;
    print!("{}", escape_lines(&String::from_utf8_lossy(&text)));
    Ok(())
}

/// The report when no daemon answers.
pub fn from_pins(pin_dir: PathBuf) -> Result<Report> {
    let pinned = datapath::pinned::pinned_state(&pin_dir)?;
    Ok(match pinned {
        Some(state) => Report {
            daemon: "stopped".into(),
            pin_dir,
            pinned: true,
            interfaces: state.interfaces.into_iter().map(Into::into).collect(),
            listeners: vec![],
            counters: counters_owned(state.counters),
            session_log: None,
            storage: None,
            central: None,
            export: Default::default(),
        },
        None => Report {
            daemon: "stopped".into(),
            pin_dir,
            pinned: false,
            interfaces: vec![],
            listeners: vec![],
            counters: Default::default(),
            session_log: None,
            storage: None,
            central: None,
            export: Default::default(),
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
    if let Some(storage) = &r.storage {
        print_storage(storage, out)?;
    }
    if let Some(central) = &r.central {
        print_consumer("central:", central, out)?;
    }
    for (name, report) in &r.export {
        print_consumer(&format!("{name}:"), report, out)?;
    }
    if !r.counters.is_empty() {
        writeln!(out, "counters:")?;
        for (name, value) in &r.counters {
            writeln!(out, "  {name:<28} {value}")?;
        }
    }
    Ok(())
}

/// One outbox consumer: what waits, how old, and the last error.
fn print_consumer(
    label: &str,
    c: &super::super::control::api::ConsumerReport,
    out: &mut impl Write,
) -> std::io::Result<()> {
    write!(out, "{label:<13}{} outbox rows waiting", c.outbox_rows)?;
    if c.outbox_rows > 0 {
        write!(out, ", oldest {} s", c.lag_secs)?;
    }
    match &c.last_error {
        Some(e) => writeln!(out, "; failing: {e}"),
        None => writeln!(out),
    }
}

fn print_storage(
    s: &super::super::control::api::StorageReport,
    out: &mut impl Write,
) -> std::io::Result<()> {
    write!(
        out,
        "storage:     {} recordings ({} MiB) awaiting upload",
        s.backlog_files,
        s.backlog_bytes >> 20
    )?;
    if s.backlog_files > 0 {
        write!(out, ", oldest {} s", s.oldest_pending_secs)?;
    }
    if s.spool_full {
        write!(
            out,
            "; SPOOL FULL (over max_spool_mb = {}): new recordings get on_recording_failure",
            s.max_spool_mb
        )?;
    }
    writeln!(out)?;
    if let Some(error) = &s.last_error {
        writeln!(out, "             last upload error: {error}")?;
    }
    Ok(())
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
