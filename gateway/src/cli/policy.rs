//! `sshgw policy push|show|check`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::{Refused, Target, table};
use crate::policies::{Action, PolicySet};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Replace all policies with FILE (or - for standard input).
    Push {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Show the policies in force.
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Validate FILE offline (no daemon needed); exit code 3 when invalid.
    Check { file: PathBuf },
}

pub fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Push { file, target } => {
            let text = super::read_input(&file)?;
            PolicySet::parse(&text).map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
            let reply = super::call(&target, "PUT", "/policies", Some(text))?;
            println!(
                "applied {} policies",
                reply["policies"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        PolicyCommand::Check { file } => {
            let text = super::read_input(&file)?;
            let set = PolicySet::parse(&text)
                .map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
            println!("{}: {} policies, valid", file.display(), set.policies.len());
            Ok(())
        }
        PolicyCommand::Show { json, target } => {
            let value = super::call(&target, "GET", "/policies", None)?;
            if json {
                return super::print_json(&value);
            }
            let mut set: PolicySet = serde_json::from_value(value)?;
            set.policies.sort_by_key(|p| p.precedence);
            let rows: Vec<Vec<String>> = set
                .policies
                .iter()
                .map(|p| {
                    let identity = [
                        &p.identity.emails,
                        &p.identity.email_domains,
                        &p.identity.groups,
                    ]
                    .iter()
                    .flat_map(|l| l.iter().cloned())
                    .collect::<Vec<_>>();
                    vec![
                        p.precedence.to_string(),
                        p.id.clone(),
                        if p.enabled { "yes" } else { "no" }.into(),
                        match p.action {
                            Action::AuditSsh => "audit_ssh",
                            Action::Block => "block",
                        }
                        .into(),
                        table::list(&p.destinations),
                        table::list(&p.ports),
                        if identity.is_empty() {
                            "anyone".into()
                        } else {
                            identity.join(",")
                        },
                        table::list(&p.posture),
                        if p.ssh.usernames.is_empty() {
                            "any".into()
                        } else {
                            p.ssh.usernames.join(",")
                        },
                        p.name.clone(),
                    ]
                })
                .collect();
            table::print(
                &[
                    "PREC",
                    "ID",
                    "ENABLED",
                    "ACTION",
                    "DESTINATIONS",
                    "PORTS",
                    "IDENTITY",
                    "POSTURE",
                    "LOGINS",
                    "NAME",
                ],
                &rows,
            );
            Ok(())
        }
    }
}
