//! `sshgw policy push|show|check`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::{Refused, Target, escape::escape, table};
use crate::policy::model::{Policy, PolicySet};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Replace all policies with FILE (or - for standard input).
    Push {
        file: PathBuf,
        /// Apply only if the policies in force still have this ETag (from `policy show`);
        /// otherwise nothing changes and the exit code is 3.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show the policies in force (and their ETag: on standard error with --json).
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
        PolicyCommand::Push {
            file,
            if_match,
            target,
        } => {
            let text = super::read_input(&file)?;
            PolicySet::parse(&text).map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
            let if_match = if_match.as_deref();
            let answer = super::ask(
                &target,
                |c| async move { c.push_policies(text, if_match).await },
            )?;
            println!(
                "applied {} policies; etag {}",
                answer.value()?.policies,
                escape(answer.etag.as_deref().unwrap_or("-"))
            );
            Ok(())
        }
        PolicyCommand::Check { file } => {
            let text = super::read_input(&file)?;
            let set = PolicySet::parse(&text)
                .map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
            println!(
                "{}: {} policies, valid",
                escape(&file.display().to_string()),
                set.policies.len()
            );
            Ok(())
        }
        PolicyCommand::Show { json, target } => show(json, &target),
    }
}

/// `policy show`: the table by precedence and the ETag, or the JSON document.
fn show(json: bool, target: &Target) -> Result<()> {
    let document = super::ask(target, |c| async move { c.policies().await })?;
    let Some((mut set, etag)) = super::show_document(document, json)? else {
        return Ok(());
    };
    set.policies.sort_by_key(|p| p.precedence);
    let rows: Vec<Vec<String>> = set.policies.iter().map(row).collect();
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
    println!("etag {}", escape(&etag));
    Ok(())
}

/// One policy's line of `policy show`.
fn row(p: &Policy) -> Vec<String> {
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
        p.action.to_string(),
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
}
