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

/// One device holds 800 idle TCP connections to an audited server while the daemon has
/// only 1,024 file descriptors (the soft limit a unit without `LimitNOFILE` gets; here the
/// hard limit too, so the daemon cannot raise it): another user's `ssh` still succeeds, and
/// the server never saw the idle ones. (Issue 13, item 7; review F5, F8.)
#[test]
fn one_device_cannot_starve_the_others() {
    lab_test(|lab| {
        const HELD: &str = "800";
        let mut devices = sshgw_tests::gateway::default_devices();
        devices["devices"]
            .as_array_mut()
            .expect("device list")
            .push(serde_json::json!({
                "id": "laptop-ops",
                "addresses": [V4.not_enrolled().to_string()],
                "interface": "r0",
                "user": {"email": "ops@example.com", "groups": []},
            }));
        let sshd = lab.start_sshd_with(
            SshdConfig::default()
                .trust_sshgw_ca()
                .principals("root", &["ops"])
                .principals("jdoe", &["jdoe"]),
        )?;
        let cfg = GatewayConfig::default().devices(devices).nofile(1024);
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;

        let src = V4.enrolled().to_string();
        let dst = V4.audited().to_string();
        let mut cmd = lab.dev.setns_command(env!("CARGO_BIN_EXE_sshgw-attack"));
        cmd.args(["connections", &src, &dst, "22", HELD]);
        sshgw_tests::gateway::set_nofile(&mut cmd, 8192);
        let flood = lab.procs().spawn("800 idle connections", &mut cmd)?;
        // Either all 800 are open (a gateway without limits), or the gateway holds the
        // device to its limits and refuses or closes the rest.
        sshgw_tests::wait::poll_until(
            "the flood to hold all its connections, or the device to reach its limits",
            Duration::from_secs(120),
            Duration::from_millis(200),
            || {
                let over =
                    sshgw_tests::stress::metric_labelled(&gw, "sshgw_connections_over_limit_total")
                        .unwrap_or(0.0);
                let all_open = flood.stdout_text().contains("open ");
                Ok((over > 0.0 || all_open).then_some(()))
            },
        )?;

        let other = lab
            .ssh(V4.audited())
            .bind(V4.not_enrolled())
            .user("root")
            .run("id -un")?;
        ensure!(
            other.success() && other.stdout.trim() == "root",
            "another user's ssh must succeed while one device floods: {other:?}"
        );
        let fds =
            std::fs::read_dir(format!("/proc/{}/fd", gw.proc().expect("running").pid()))?.count();
        ensure!(fds < 512, "the daemon holds {fds} file descriptors");
        let from_router = sshd.log().matches("Connection from 203.0.113.1 ").count();
        ensure!(
            from_router == 1,
            "the server saw {from_router} connections from the gateway; only the real login \
             may reach it"
        );
        flood.kill()?;
        Ok(())
    });
}
