//! One device cannot starve the others: `[limits]` caps what a device, and all devices
//! together, may hold, a connection must log in within the pre-auth grace (key exchange
//! included), and the server sees a connection only after a login the policy allows.
//! (Security review findings F5, F8; the field report's client stuck in key exchange.)

use std::time::Duration;

use anyhow::{Result, ensure};
use sshgw_tests::{Family, GatewayConfig, Lab, SshdConfig, lab_test};

const V4: Family = Family::V4;
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `sshgw-rawssh` from the enrolled device against the audited server; its stdout.
fn rawssh(lab: &Lab, args: &[&str]) -> Result<String> {
    let bin = env!("CARGO_BIN_EXE_sshgw-rawssh");
    let mut cmd = lab.dev.exec_command(bin);
    cmd.arg(V4.audited().to_string()).arg("jdoe").args(args);
    let out = lab
        .procs()
        .run("sshgw-rawssh", &mut cmd, Duration::from_secs(120))?;
    ensure!(out.success(), "sshgw-rawssh {args:?}: {out:?}");
    Ok(out.stdout)
}

/// A client stuck before key exchange completes is closed once the pre-auth grace is over
/// (a disconnect message cannot reach it), and it never made the gateway connect to the
/// server.
#[test]
fn preauth_grace_covers_key_exchange() {
    lab_test(|lab| {
        let sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        // The default grace (20 s): the old relay held such a client for 120 s.
        let mut gw = lab.gateway_with(GatewayConfig::default())?;
        gw.start()?;
        let out = rawssh(lab, &["stuck-in-kex", "60"])?;
        ensure!(out.contains("closed by the gateway"), "{out}");
        gw.wait_for_log("no login within the pre-auth grace", LOG_TIMEOUT)?;
        ensure!(
            !sshd.log().contains("Connection from"),
            "the server saw a connection for a device that never logged in:\n{}",
            sshd.log()
        );
        Ok(())
    });
}
