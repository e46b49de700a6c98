//! A program request (shell, exec, subsystem) is audited on its own terms: a refused one
//! leaves no recording behind, a second request on the same channel never runs under the
//! first one's rules, and data sent without a program reaches nothing. Each test performs the
//! attack over the wire: stock OpenSSH where it can, `sshgw-rawssh` where OpenSSH never would.
//! (Security review findings F1, F2, F17.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sshgw_tests::recording::{RecordingKey, recorded_policies, recording_toml};
use sshgw_tests::{Family, Gateway, GatewayConfig, Lab, Ssh, SshdConfig, lab_test};

const V4: Family = Family::V4;
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

fn relayed(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.audited()).bind(V4.enrolled()).user("jdoe")
}

/// Runs `sshgw-rawssh` from the enrolled device against the audited server; its stdout.
fn rawssh(lab: &Lab, args: &[&str]) -> Result<String> {
    let bin = env!("CARGO_BIN_EXE_sshgw-rawssh");
    let mut cmd = lab.dev.exec_command(bin);
    cmd.arg(V4.audited().to_string()).arg("jdoe").args(args);
    let out = lab
        .procs()
        .run("sshgw-rawssh", &mut cmd, Duration::from_secs(90))?;
    ensure!(out.success(), "sshgw-rawssh {args:?}: {out:?}");
    Ok(out.stdout)
}

/// A read-only SFTP policy for the lab server, optionally recorded.
fn read_only_policy(recorded: bool) -> Value {
    json!({"policies": [{
        "id": "audit-ro",
        "name": "Read-only file transfer",
        "precedence": 10,
        "enabled": true,
        "action": "audit_ssh",
        "destinations": ["203.0.113.10/32"],
        "ports": [22],
        "ssh": {"sftp": "read_only", "command_logging": recorded}
    }]})
}

/// Every recording file referenced by a channel row of any session.
fn referenced_recordings(gw: &Gateway<'_>) -> Result<BTreeSet<PathBuf>> {
    let mut referenced = BTreeSet::new();
    for session in gw.sessions(&[])? {
        let id = session["id"].as_str().context("session without id")?;
        for channel in gw.session(id)?["channels"].as_array().into_iter().flatten() {
            if let Some(file) = channel["recording"].as_str() {
                referenced.insert(PathBuf::from(file));
            }
        }
    }
    Ok(referenced)
}

fn recording_files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sshlog") {
            files.insert(path);
        }
    }
    Ok(files)
}

/// F1: `ssh -s host nope` under a recorded policy must not leave a recording that no row
/// references (retention would count it, and one user could make it delete everyone's).
#[test]
fn refused_programs_leave_no_recordings() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        let mut cfg = GatewayConfig::default().policies(recorded_policies());
        cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;

        relayed(lab).run("echo evidence-marker")?.check()?;
        for _ in 0..20 {
            let out = relayed(lab).arg("-s").run("nope")?;
            ensure!(!out.success(), "subsystem nope should fail: {out:?}");
        }
        gw.wait_for_session(&[], LOG_TIMEOUT, "all 21 sessions closed", |_| {
            gw.sessions(&[])
                .is_ok_and(|all| all.len() == 21 && all.iter().all(|s| !s["ended_at"].is_null()))
        })?;
        let files = recording_files(&gw.state_dir().join("recordings"))?;
        let referenced = referenced_recordings(&gw)?;
        let orphans: Vec<_> = files.difference(&referenced).collect();
        ensure!(
            orphans.is_empty(),
            "{} recordings are referenced by no channel row: {orphans:?}",
            orphans.len()
        );
        ensure!(
            files.len() == 1,
            "only the marker session was recorded: {files:?}"
        );
        Ok(())
    });
}

/// F2: a failed subsystem request must not leave its (rule-less) tap on the channel for
/// the next request: `sftp = "read_only"` still refuses the upload.
fn second_program_keeps_the_rules(lab: &Lab, recorded: bool) -> Result<()> {
    let mut cfg = GatewayConfig::default().policies(read_only_policy(recorded));
    if recorded {
        let key = RecordingKey::generate(lab, "rec")?;
        cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
    }
    let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
    let mut gw = lab.gateway_with(cfg)?;
    gw.start()?;
    let target = lab.user_home("jdoe").join("ro-bypass");

    let out = rawssh(lab, &["second-program", "nope", &target.to_string_lossy()])?;
    eprintln!("sshgw-rawssh:\n{out}");
    ensure!(
        out.contains("subsystem nope: failed"),
        "first request: {out}"
    );
    // F17: the second request runs (its own recording under command_logging), it does
    // not end the session.
    ensure!(out.contains("subsystem sftp: ok"), "second request: {out}");
    ensure!(
        out.contains("open: status"),
        "the read-only rule must refuse the upload: {out}"
    );
    ensure!(
        !target.exists(),
        "the upload reached the server: {target:?}"
    );
    let session = gw.wait_for_session(&[], LOG_TIMEOUT, "the rawssh session", |s| {
        !s["ended_at"].is_null()
    })?;
    let id = session["id"].as_str().context("id")?;
    let record = gw.session(id)?;
    let denied = record["file_ops"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|op| op["denied"] == json!(true));
    ensure!(
        denied,
        "the refused upload is a denied file operation: {record:#}"
    );
    Ok(())
}

#[test]
fn second_program_request_keeps_the_rules() {
    lab_test(|lab| second_program_keeps_the_rules(lab, false));
}

#[test]
fn second_program_request_keeps_the_rules_recorded() {
    lab_test(|lab| second_program_keeps_the_rules(lab, true));
}

/// Data sent on a session channel before any program is requested is neither relayed nor
/// recorded; the program requested afterwards runs normally.
#[test]
fn data_before_the_program_reaches_nothing() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway()?;
        gw.start()?;
        let out = rawssh(lab, &["data-first", "cat; echo done"])?;
        ensure!(out.contains("exec: ok"), "{out}");
        ensure!(
            !out.contains("typed-before-the-program")
                && out.contains("done")
                && out.contains("exit 0"),
            "{out}"
        );
        gw.wait_for_log(
            "discarding data the device sent on a channel with no program",
            LOG_TIMEOUT,
        )?;
        Ok(())
    });
}
