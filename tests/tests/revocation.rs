//! Revocation reaches live sessions: deleting a device or blocking its destination ends its
//! open sessions with a message that names the reason, and new channels on an existing
//! connection (ControlMaster) follow the policy in force, not the one the connection began
//! under. (Security review findings F7.)

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sshgw_tests::recording::{RecordingKey, recording_toml};
use sshgw_tests::{Family, GatewayConfig, Lab, Ssh, SshdConfig, lab_test};

const V4: Family = Family::V4;
const END_TIMEOUT: Duration = Duration::from_secs(30);
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

fn relayed(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.audited()).bind(V4.enrolled()).user("jdoe")
}

fn policy(action: &str, ssh: Value) -> Value {
    json!({"policies": [{
        "id": "lab", "name": "Lab server", "precedence": 10, "enabled": true,
        "action": action, "destinations": ["203.0.113.10/32"], "ports": [22], "ssh": ssh
    }]})
}

/// A live `cat` session, then `change`; the session must end on its own with a message
/// containing every needle, and be logged as revoked.
fn ends_live_session(
    lab: &Lab,
    change: impl FnOnce(&sshgw_tests::Gateway<'_>) -> Result<()>,
    needles: &[&str],
) -> Result<()> {
    let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
    let cfg = GatewayConfig::default().policies(policy("audit_ssh", json!({})));
    let mut gw = lab.gateway_with(cfg)?;
    gw.start()?;
    let mut session = relayed(lab).session("cat")?;
    session.roundtrip("still-here", LINE_TIMEOUT)?;
    change(&gw)?;
    let status = session
        .proc()
        .wait_exit(END_TIMEOUT)
        .context("the session should end after the change")?;
    let stderr = session.proc().stderr_text();
    ensure!(!status.success(), "ssh ended with {status:?}");
    for needle in needles {
        ensure!(
            stderr.contains(needle),
            "ssh's stderr lacks {needle:?}: {stderr}"
        );
    }
    let record = gw.wait_for_session(&[], END_TIMEOUT, "the revoked session", |s| {
        s["close_reason"] == json!("revoked")
    })?;
    eprintln!("closed: {record}");
    Ok(())
}

#[test]
fn deleted_device_loses_its_live_sessions() {
    lab_test(|lab| {
        ends_live_session(
            lab,
            |gw| {
                let (code, reply) = gw.api("DELETE", "/v1/devices/laptop-jdoe", None)?;
                ensure!(code == 200, "DELETE: {code} {reply}");
                Ok(())
            },
            &["sshgw: session ended", "not an enrolled device"],
        )
    });
}

#[test]
fn blocking_policy_ends_live_sessions() {
    lab_test(|lab| {
        ends_live_session(
            lab,
            |gw| {
                let (code, reply) =
                    gw.api("PUT", "/v1/policies", Some(&policy("block", json!({}))))?;
                ensure!(code == 200, "PUT: {code} {reply}");
                Ok(())
            },
            &["sshgw: session ended", "blocked by policy"],
        )
    });
}

/// A connection opened under a policy without recording or transfer rules; the operator
/// turns both on; the next channels on that same connection are recorded and refused SFTP.
#[test]
fn new_channels_follow_the_current_policy() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut cfg = GatewayConfig::default().policies(policy("audit_ssh", json!({})));
        cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;
        let (_master, join) = relayed(lab).control_master(&lab.dir().join("cm.sock"))?;
        join().run("echo before")?.check()?;

        let tighter = policy(
            "audit_ssh",
            json!({"command_logging": true, "sftp": "deny"}),
        );
        let (code, reply) = gw.api("PUT", "/v1/policies", Some(&tighter))?;
        ensure!(code == 200, "PUT: {code} {reply}");

        join().run("echo after")?.check()?;
        let sftp = join().sftp_batch("ls\n")?;
        ensure!(
            !sftp.success() && sftp.stderr.contains("sftp is denied"),
            "sftp after the change: {sftp:?}"
        );
        let sessions = gw.sessions(&["--active"])?;
        ensure!(
            sessions.len() == 1,
            "one multiplexed connection: {sessions:?}"
        );
        let id = sessions[0]["id"].as_str().context("id")?;
        let record = gw.session(id)?;
        let channels = record["channels"].as_array().context("channels")?;
        let recorded = |command: &str| {
            channels
                .iter()
                .find(|c| c["command"] == json!(command))
                .map(|c| c["recording"].is_string())
        };
        ensure!(recorded("echo before") == Some(false), "before: {record:#}");
        ensure!(recorded("echo after") == Some(true), "after: {record:#}");
        Ok(())
    });
}
