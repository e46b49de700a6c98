//! `sshgw central migrate`: creates or upgrades the central PostgreSQL schema, as the role
//! in `[central] postgres` (which must own the schema: run it with an administrator's
//! config, or `--url`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::{
    central::{connect::Target, schema},
    config::Config,
};

#[derive(Subcommand)]
pub enum CentralCommand {
    /// Create or upgrade the central schema (tables, roles sshgw_router and sshgw_auditor,
    /// row-level security).
    Migrate {
        #[arg(long, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Connect with this URL instead of `[central] postgres` (an administrator's).
        #[arg(long)]
        url: Option<String>,
        /// The password for --url (a 0600 file).
        #[arg(long, requires = "url")]
        password_file: Option<PathBuf>,
    },
}

pub fn run(command: CentralCommand) -> Result<()> {
    let CentralCommand::Migrate {
        config,
        url,
        password_file,
    } = command;
    let target = match url {
        Some(url) => Target::new(&url, password_file.as_deref())?,
        None => {
            let config = Config::load(&config)?;
            let central = config
                .central
                .as_ref()
                .with_context(|| "the config has no [central] section (or pass --url)")?;
            Target::from_config(central)?
        }
    };
    let before = super::runtime()?.block_on(async {
        let mut client = target.connect().await?;
        schema::migrate(&mut client).await
    })?;
    if before == schema::VERSION {
        println!("central schema: already at version {}", schema::VERSION);
    } else {
        println!(
            "central schema: version {before} -> {} (as {})",
            schema::VERSION,
            target.user()
        );
    }
    Ok(())
}

/// A client for the config's `[central]` (the `--central` reads).
pub fn connect(config: &Config) -> Result<(tokio::runtime::Runtime, tokio_postgres::Client)> {
    let central = config
        .central
        .as_ref()
        .context("--central: the config has no [central] section")?;
    let target = Target::from_config(central)?;
    let runtime = super::runtime()?;
    let client = runtime.block_on(target.connect())?;
    Ok((runtime, client))
}
