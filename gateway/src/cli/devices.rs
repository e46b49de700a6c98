//! `sshgw devices push|show`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;

use super::{Refused, Target, escape::escape, table};
use crate::{
    config::{Config, SshConfig},
    identity::devices::DeviceTable,
};

#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Replace the whole device table with FILE (or - for standard input).
    Push {
        file: PathBuf,
        /// Apply only if the table in force still has this ETag (from `devices show`);
        /// otherwise nothing changes and the exit code is 3.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Validate FILE offline (no daemon needed), principals included, against the `[ssh]`
    /// settings of --config (default: /etc/sshgw/sshgw.toml if it exists); exit code 3 when
    /// invalid.
    Check {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the device table (and its ETag: on standard error with --json).
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(command: DevicesCommand) -> Result<()> {
    match command {
        DevicesCommand::Push {
            file,
            if_match,
            target,
        } => push(&file, if_match.as_deref(), &target),
        DevicesCommand::Check { file, config } => check(&file, config),
        DevicesCommand::Show { json, target } => show(json, &target),
    }
}

/// `devices push`: the whole table, optionally only over the ETag the editor read.
fn push(file: &Path, if_match: Option<&str>, target: &Target) -> Result<()> {
    let text = super::read_input(file)?;
    // Refuse locally first: clearer errors, and nothing sent on a typo. (The daemon also
    // checks the principals against its `[ssh]` settings.)
    DeviceTable::parse(&text).map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
    let answer = super::ask(
        target,
        |c| async move { c.push_devices(text, if_match).await },
    )?;
    println!(
        "applied {} devices; etag {}",
        answer.value()?.devices,
        escape(answer.etag.as_deref().unwrap_or("-"))
    );
    Ok(())
}

/// `devices show`: the table and its ETag, or the JSON document (ETag on stderr).
fn show(json: bool, target: &Target) -> Result<()> {
    let document = super::ask(target, |c| async move { c.devices().await })?;
    let Some((table, etag)) = super::show_document(document, json)? else {
        return Ok(());
    };
    let rows: Vec<Vec<String>> = table
        .devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.user.email.clone(),
                table::list(&d.addresses),
                d.interface.clone().unwrap_or_else(|| "-".into()),
                table::list(&d.user.groups),
                table::list(&d.posture),
            ]
        })
        .collect();
    table::print(
        &["ID", "EMAIL", "ADDRESSES", "INTERFACE", "GROUPS", "POSTURE"],
        &rows,
    );
    println!("etag {}", escape(&etag));
    Ok(())
}

/// `devices check`: what the daemon would say about FILE at push or start.
fn check(file: &Path, config: Option<PathBuf>) -> Result<()> {
    let default = Path::new(super::DEFAULT_CONFIG);
    let ssh = match config {
        Some(path) => Config::load(&path)?.ssh,
        None if default.exists() => Config::load(default)?.ssh,
        None => SshConfig::default(),
    };
    let text = super::read_input(file)?;
    let name = escape(&file.display().to_string()).into_owned();
    let table = DeviceTable::parse(&text).map_err(|e| Refused(format!("{name}: {e:#}")))?;
    table
        .check_principals(&ssh)
        .map_err(|e| Refused(format!("{name}: {e:#}")))?;
    println!(
        "{name}: {} devices, valid (principal = {})",
        table.devices.len(),
        serde_json::to_value(ssh.principal)?.as_str().unwrap_or("?")
    );
    Ok(())
}
