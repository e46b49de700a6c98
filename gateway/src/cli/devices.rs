//! `sshgw devices push|show`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::{Refused, Target, table};
use crate::devices::DeviceTable;

#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Replace the whole device table with FILE (or - for standard input).
    Push {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Show the device table.
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(command: DevicesCommand) -> Result<()> {
    match command {
        DevicesCommand::Push { file, target } => {
            let text = super::read_input(&file)?;
            // Refuse locally first: clearer errors, and nothing sent on a typo.
            let table = DeviceTable::parse(&text)
                .map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
            let reply = super::call(&target, "PUT", "/devices", Some(text))?;
            println!(
                "applied {} devices",
                reply["devices"]
                    .as_u64()
                    .unwrap_or(table.devices.len() as u64)
            );
            Ok(())
        }
        DevicesCommand::Show { json, target } => {
            let value = super::call(&target, "GET", "/devices", None)?;
            if json {
                return super::print_json(&value);
            }
            let table: DeviceTable = serde_json::from_value(value)?;
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
            Ok(())
        }
    }
}
