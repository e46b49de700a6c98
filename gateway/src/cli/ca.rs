//! `sshgw ca user-key|known-hosts [--plain DEST…]`.

use std::{net::IpAddr, path::Path};

use anyhow::Result;
use clap::Subcommand;

use super::Refused;
use crate::{config::Config, trust::ca::Authorities};

#[derive(Subcommand, Clone)]
pub enum CaCommand {
    /// The user CA line for the servers' sshd `TrustedUserCAKeys` file.
    UserKey,
    /// The `@cert-authority` line for the devices' `known_hosts`; with `--plain`, one
    /// plain host-key line per destination instead, for clients that cannot check host
    /// certificates (Dropbear, paramiko, libssh, libssh2).
    KnownHosts {
        /// Print `DEST ssh-ed25519 AAAA…` for each DEST (the audited server's IP address,
        /// as devices dial it), with the `[ssh] host_names` configured for it.
        #[arg(long, value_name = "DEST", num_args = 1.., required = false)]
        plain: Vec<String>,
    },
}

pub fn run(what: CaCommand, config: &Path) -> Result<()> {
    let config = Config::load(config)?;
    let plain = match &what {
        CaCommand::KnownHosts { plain } => parse_destinations(plain)?,
        CaCommand::UserKey => Vec::new(),
    };
    let authorities = Authorities::load_or_create(&config.state_dir)?;
    let lines = match what {
        CaCommand::UserKey => vec![authorities.user_ca_public_line()],
        CaCommand::KnownHosts { plain: list } if list.is_empty() => {
            vec![authorities.known_hosts_line()]
        }
        CaCommand::KnownHosts { .. } => plain
            .iter()
            .map(|dst| {
                let names = config
                    .ssh
                    .host_names
                    .iter()
                    .find(|(ip, _)| ip.to_canonical() == *dst)
                    .map(|(_, names)| names.as_slice())
                    .unwrap_or(&[]);
                authorities.plain_known_hosts_line(*dst, names)
            })
            .collect(),
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Every DEST must be an IP address: the host key is per address the device dials.
fn parse_destinations(list: &[String]) -> Result<Vec<IpAddr>> {
    list.iter()
        .map(|text| {
            text.trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| {
                    Refused(format!(
                        "--plain {text:?}: not an IP address (give the address devices dial, e.g. 203.0.113.10; names come from [ssh] host_names)"
                    ))
                    .into()
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_must_be_addresses() {
        let ok = parse_destinations(&["203.0.113.10".into(), "[2001:db8::10]".into()]).unwrap();
        assert_eq!(ok.len(), 2);
        let err = parse_destinations(&["db1.example.com".into()]).unwrap_err();
        assert!(err.to_string().contains("not an IP address"), "{err}");
    }
}
