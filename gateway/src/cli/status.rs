//! `sshgw status`: from the daemon, or from the pinned kernel state when it is down.

use std::path::PathBuf;

use anyhow::Result;

use super::{Target, escape::escape_lines};
use crate::{
    config,
    control::client::{self, ClientError},
    status,
};

pub fn run(target: &Target, json: bool) -> Result<()> {
    let config = target.config()?;
    let socket = target.socket(config.as_ref());
    let pin_dir = config
        .as_ref()
        .map(|c| c.datapath.pin_dir.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PIN_DIR));
    let report = super::runtime()?.block_on(async {
        match client::request(&socket, "GET", "/status", None).await {
            Ok((code, body)) if code.is_success() => Ok(serde_json::from_value(body)?),
            Ok((code, body)) => anyhow::bail!("status failed ({code}): {}", body["error"]),
            // No daemon: report what the kernel still holds.
            Err(ClientError::Unreachable { .. }) => status::from_pins(pin_dir),
            Err(ClientError::Other(e)) => Err(e),
        }
    })?;
    if json {
        return super::print_json(&report);
    }
    let mut text = Vec::new();
    status::print_human(&report, &mut text)?;
    print!("{}", escape_lines(&String::from_utf8_lossy(&text)));
    Ok(())
}
