//! `sshgw doctor`: checks a router (or, with `--server`, an audited server seen from the
//! router) for the setup mistakes that break interception or let audited SSH past it, and
//! prints what is wrong and how to fix it. See docs/deployment.md#sshgw-doctor.
//!
//! Exit codes: 0 no check failed (warnings allowed), 5 at least one check failed, and the
//! CLI's usual 1 (doctor itself could not run, e.g. an unreadable config) and 2 (usage).

mod firewall;
mod host;
mod server;
mod unit;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::Target;
use crate::config::Config;

#[derive(Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    target: Target,
    /// Check that the audited server HOST[:PORT] (port 22 by default) accepts SSH only from
    /// the router's own address, instead of checking this router. Repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    server: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    /// Could not be checked here (the reason is in the detail).
    Skip,
}

/// One check: what was found and, unless it is fine, how to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn skip(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Skip,
            ..Self::ok(name, detail)
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warn,
            fix: Some(fix.into()),
            ..Self::ok(name, detail)
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            fix: Some(fix.into()),
            ..Self::ok(name, detail)
        }
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    /// `router`, or `server HOST:PORT` checks.
    scope: String,
    checks: Vec<Check>,
    failed: usize,
    warnings: usize,
    /// What the checks cannot see.
    limits: Vec<&'static str>,
}

/// At least one check failed (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("{0} check(s) failed")]
pub struct ChecksFailed(pub usize);

pub fn run(args: &DoctorArgs) -> Result<()> {
    let report = if args.server.is_empty() {
        let config = args.target.config()?.context(
            "sshgw doctor needs the router's config: pass --config FILE (default /etc/sshgw/sshgw.toml)",
        )?;
        router_report(&config, args.target.socket(Some(&config)))
    } else {
        server_report(&args.server)?
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        print_human(&report);
    }
    match report.failed {
        0 => Ok(()),
        n => Err(ChecksFailed(n).into()),
    }
}

fn router_report(config: &Config, socket: PathBuf) -> Report {
    let daemon = host::Daemon::find(&socket);
    let mut checks = vec![daemon.check()];
    checks.push(host::bpffs(&config.datapath.pin_dir, daemon.pid()));
    checks.push(daemon.capabilities());
    checks.push(daemon.open_files());
    checks.extend(host::sysctls(&config.datapath.interfaces));
    let ruleset = firewall::Ruleset::read();
    checks.push(ruleset.input_rule(config));
    checks.push(ruleset.boot_guard());
    checks.push(unit::drop_ins());
    finish("router".into(), checks, ROUTER_LIMITS.to_vec())
}

const ROUTER_LIMITS: &[&str] = &[
    "the INPUT check reads nftables rules (iptables-nft rules included); iptables-legacy \
     rules and rules reached through jumps are not evaluated",
    "the boot guard check only looks for the table; it does not compare its sets with the \
     audited destinations",
];

fn server_report(servers: &[String]) -> Result<Report> {
    let mut checks = Vec::new();
    for s in servers {
        checks.extend(server::check(s)?);
    }
    let scope = format!("server {}", servers.join(", "));
    Ok(finish(scope, checks, server::LIMITS.to_vec()))
}

fn finish(scope: String, checks: Vec<Check>, limits: Vec<&'static str>) -> Report {
    let count = |v| checks.iter().filter(|c| c.verdict == v).count();
    Report {
        failed: count(Verdict::Fail),
        warnings: count(Verdict::Warn),
        scope,
        checks,
        limits,
    }
}

fn print_human(report: &Report) {
    println!("sshgw doctor: {} checks", report.scope);
    for c in &report.checks {
        let label = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        println!("  {label:<5} {:<17} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            for (i, line) in fix.lines().enumerate() {
                let head = if i == 0 { "fix:" } else { "" };
                println!("  {:<5} {:<17} {head:<4} {line}", "", "");
            }
        }
    }
    println!("limits of these checks:");
    for l in &report.limits {
        println!("  - {l}");
    }
    println!("{} failed, {} warning(s)", report.failed, report.warnings);
}
