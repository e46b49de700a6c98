//! `sshgw devices push|show`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::{Refused, Target, escape::escape, table};
use crate::devices::DeviceTable;

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
        } => {
            let text = super::read_input(&file)?;
            // Refuse locally first: clearer errors, and nothing sent on a typo. (The daemon
            // also checks the principals against its `[ssh]` settings.)
            let table = DeviceTable::parse(&text)
                .map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
            let answer =
                super::call_with(&target, "PUT", "/devices", if_match.as_deref(), Some(text))?;
            println!(
                "applied {} devices; etag {}",
                answer.body["devices"]
                    .as_u64()
                    .unwrap_or(table.devices.len() as u64),
                escape(answer.etag.as_deref().unwrap_or("-"))
            );
            Ok(())
        }
        DevicesCommand::Show { json, target } => {
            let answer = super::call_with(&target, "GET", "/devices", None, None)?;
            let etag = answer.etag.as_deref().unwrap_or("-");
            if json {
                eprintln!("etag {}", escape(etag));
                return super::print_json(&answer.body);
            }
            let table: DeviceTable = serde_json::from_value(answer.body)?;
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
            println!("etag {}", escape(etag));
            Ok(())
        }
    }
}
