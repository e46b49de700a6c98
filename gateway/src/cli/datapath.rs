//! `sshgw datapath remove`: takes out what a stopped daemon left in place.

use std::path::Path;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::{config::Config, control::client::Client};

#[derive(Subcommand)]
pub enum DatapathCommand {
    /// Detach the TC program, delete the routing and unpin the maps left by a stopped
    /// daemon. Audited servers become reachable directly (unaudited) afterwards.
    Remove,
}

pub fn run(what: DatapathCommand, config: &Path) -> Result<()> {
    let DatapathCommand::Remove = what;
    let config = Config::load(config)?;
    super::runtime()?.block_on(async {
        if Client::new(&config.control_socket).is_running().await {
            bail!(
                "sshgw is running (it answers on {}); stop it first",
                config.control_socket.display()
            );
        }
        let pinned = crate::datapath::remove_pinned(&config.datapath).await?;
        if pinned {
            println!(
                "datapath removed from {}",
                config.datapath.pin_dir.display()
            );
        } else {
            println!(
                "nothing was pinned at {}; routing cleaned",
                config.datapath.pin_dir.display()
            );
        }
        Ok(())
    })
}
