//! `sshgw ca user-key|known-hosts`.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

use crate::{ca::Authorities, config::Config};

#[derive(Subcommand, Clone, Copy)]
pub enum CaCommand {
    /// The user CA line for the servers' sshd `TrustedUserCAKeys` file.
    UserKey,
    /// The `@cert-authority` line for the devices' `known_hosts`.
    KnownHosts,
}

pub fn run(what: CaCommand, config: &Path) -> Result<()> {
    let config = Config::load(config)?;
    let authorities = Authorities::load_or_create(&config.state_dir)?;
    println!(
        "{}",
        match what {
            CaCommand::UserKey => authorities.user_ca_public_line(),
            CaCommand::KnownHosts => authorities.known_hosts_line(),
        }
    );
    Ok(())
}
