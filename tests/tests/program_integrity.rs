//! A program request (shell, exec, subsystem) is audited on its own terms: a refused one
//! leaves no recording behind, a second request on the same channel never runs under the
//! first one's rules, and data sent without a program reaches nothing. Each test performs the
//! attack over the wire: stock OpenSSH where it can, `sshgw-rawssh` where OpenSSH never would.
//! The SFTP file-operation log cannot be forged, nor switched off quietly. (Security review
//! findings F1, F2, F4, F15, F17.)

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sshgw_tests::gateway::str_field;
use sshgw_tests::recording::{RecordingKey, recorded_policies, recording_toml};
use sshgw_tests::wait::poll_until;
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

/// The lab policy with these `ssh` settings (no recording).
fn policy_with(ssh: Value) -> Value {
    json!({"policies": [{
        "id": "audit-files",
        "name": "File audit",
        "precedence": 10,
        "enabled": true,
        "action": "audit_ssh",
        "destinations": ["203.0.113.10/32"],
        "ports": [22],
        "ssh": ssh
    }]})
}

/// jdoe's home on the server as SFTP paths name it.
fn home(lab: &Lab) -> Result<PathBuf> {
    let home = lab.user_home("jdoe");
    home.canonicalize()
        .with_context(|| format!("resolving {}", home.display()))
}

/// The one session of the log not in `before`, once closed.
fn new_closed_session(gw: &Gateway<'_>, before: &BTreeSet<String>) -> Result<Value> {
    let session = gw.wait_for_session(&[], LOG_TIMEOUT, "the new session, closed", |s| {
        str_field(s, "id").is_some_and(|id| !before.contains(id)) && !s["ended_at"].is_null()
    })?;
    gw.session(str_field(&session, "id").context("id")?)
}

fn file_ops(session: &Value) -> Vec<Value> {
    session["file_ops"].as_array().cloned().unwrap_or_default()
}

fn ops_text(session: &Value) -> String {
    file_ops(session)
        .iter()
        .map(|o| {
            format!(
                "{} {} path={} target={} status={:?}",
                o["protocol"], o["op"], o["path"], o["target"], o["status"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// F4: a client that sends OPEN id 7 for one file and OPEN id 7 for another before the
/// replies made the log show its write under the second path, and never the first. Now the
/// reused id is a `protocol violation` row naming both; under `allow` nothing is attributed
/// after it, under rules the channel is closed before either OPEN reaches the server.
#[test]
fn a_reused_sftp_request_id_cannot_forge_the_log() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(GatewayConfig::default().policies(policy_with(json!({}))))?;
        gw.start()?;
        let home = home(lab)?;
        let (first, second) = (home.join("dup-secret"), home.join("dup-innocent"));
        let (first_p, second_p) = (first.to_string_lossy(), second.to_string_lossy());

        let before = gw.session_ids()?;
        let out = rawssh(lab, &["sftp-dup-id", &first_p, &second_p])?;
        eprintln!("sshgw-rawssh (allow):\n{out}");
        let s = new_closed_session(&gw, &before)?;
        let ops = file_ops(&s);
        let violation = ops
            .iter()
            .find(|o| o["op"] == json!("protocol violation"))
            .with_context(|| format!("no protocol violation row:\n{}", ops_text(&s)))?;
        ensure!(
            violation["path"] == json!(first_p) && violation["target"] == json!(second_p),
            "the violation names both opens:\n{}",
            ops_text(&s)
        );
        ensure!(
            str_field(violation, "status").is_some_and(|t| t.contains("request id 7 reused")),
            "{violation}"
        );
        // The write went to the first file; nothing may say it went to the second.
        ensure!(
            std::fs::read(&first).is_ok_and(|d| d == b"forged\n"),
            "the write should have reached the first file: {out}"
        );
        ensure!(
            ops.iter()
                .all(|o| o["op"] == json!("protocol violation") || o["path"] != json!(second_p)),
            "an operation is attributed to {second_p}:\n{}",
            ops_text(&s)
        );

        // Under rules (an upload limit the write stays under), the channel closes.
        gw.push_policies(&policy_with(json!({"max_upload_bytes": 1000})))?;
        let (first, second) = (home.join("dup-secret-2"), home.join("dup-innocent-2"));
        let before = gw.session_ids()?;
        let out = rawssh(
            lab,
            &[
                "sftp-dup-id",
                &first.to_string_lossy(),
                &second.to_string_lossy(),
            ],
        )?;
        eprintln!("sshgw-rawssh (max_upload_bytes):\n{out}");
        ensure!(out.contains("channel closed"), "{out}");
        ensure!(
            !first.exists() && !second.exists(),
            "an OPEN reached the server"
        );
        let s = new_closed_session(&gw, &before)?;
        ensure!(
            file_ops(&s)
                .iter()
                .any(|o| o["op"] == json!("protocol violation")
                    && str_field(o, "status").is_some_and(|t| t.contains("the channel is closed"))),
            "{}",
            ops_text(&s)
        );
        Ok(())
    });
}

/// F15: past a tracking cap (here 1 MiB of paths of open handles: ~300 opens of one file,
/// each spelled with ~4,000 bytes), the log says so at once under `allow`, while the channel
/// is still open, and names the cap; under rules the channel is closed.
#[test]
fn an_sftp_tracking_cap_is_logged_at_once_or_closes_the_channel() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(GatewayConfig::default().policies(policy_with(json!({}))))?;
        gw.start()?;
        let home = home(lab)?;
        let file = home.join("many-handles.txt");
        std::fs::write(&file, "read me\n")?;
        let after = home.join("after-cap.bin");
        let args = |after: &Path| {
            vec![
                "sftp-many-handles".to_owned(),
                file.to_string_lossy().into_owned(),
                "300".to_owned(),
                after.to_string_lossy().into_owned(),
            ]
        };

        let before = gw.session_ids()?;
        let mut cmd = lab.dev.exec_command(env!("CARGO_BIN_EXE_sshgw-rawssh"));
        cmd.arg(V4.audited().to_string())
            .arg("jdoe")
            .args(args(&after));
        let (proc, mut stdin, stdout) = lab.procs().spawn_piped("sshgw-rawssh", &mut cmd)?;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|l: &String| l == "waiting" || l == "channel closed")
        {
            seen.push(lines.next().context("sshgw-rawssh ended early")??);
        }
        ensure!(seen.contains(&"opened 300".to_owned()), "{seen:?}");
        // The channel is open, waiting: the row must already be in the log.
        let live = gw.wait_for_session(&["--active"], LOG_TIMEOUT, "the live session", |s| {
            str_field(s, "id").is_some_and(|id| !before.contains(id))
        })?;
        let id = str_field(&live, "id").context("id")?.to_owned();
        let row = poll_until(
            "the tracking stopped row of the live session",
            LOG_TIMEOUT,
            Duration::from_millis(100),
            || {
                let s = gw.session(&id)?;
                Ok(file_ops(&s)
                    .into_iter()
                    .find(|o| o["op"] == json!("tracking stopped")))
            },
        )?;
        ensure!(
            str_field(&row, "status").is_some_and(|t| t.contains("more than 1048576 bytes")),
            "the row names the cap: {row}"
        );
        ensure!(proc.is_running(), "the channel must still be open");
        writeln!(stdin, "go")?;
        drop(stdin);
        let rest: Vec<String> = lines.collect::<std::io::Result<_>>()?;
        proc.wait_exit(Duration::from_secs(60))?;
        ensure!(
            rest.iter().any(|l| l == "close: status 0") && after.exists(),
            "under allow the upload goes on: {rest:?}"
        );

        // Under read_only, the channel closes at the cap.
        gw.push_policies(&policy_with(json!({"sftp": "read_only"})))?;
        let after = home.join("after-cap-ro.bin");
        let mut cmd = lab.dev.exec_command(env!("CARGO_BIN_EXE_sshgw-rawssh"));
        cmd.arg(V4.audited().to_string())
            .arg("jdoe")
            .args(args(&after));
        let (proc, stdin, stdout) = lab
            .procs()
            .spawn_piped("sshgw-rawssh read_only", &mut cmd)?;
        drop(stdin);
        let out: Vec<String> = BufReader::new(stdout)
            .lines()
            .collect::<std::io::Result<_>>()?;
        proc.wait_exit(Duration::from_secs(60))?;
        ensure!(
            out.iter().any(|l| l == "channel closed") && !out.iter().any(|l| l == "waiting"),
            "under read_only the channel closes at the cap: {out:?}"
        );
        Ok(())
    });
}

/// Kills, when dropped, the mosh-server processes left in the lab's server namespace: the
/// ones this test's own sessions started (a detached mosh-server outlives its SSH channel).
struct MoshServers<'a>(&'a Lab);

impl MoshServers<'_> {
    fn pids(&self) -> Result<Vec<i32>> {
        Ok(self
            .0
            .srv
            .pids()?
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "mosh-server")
            })
            .collect())
    }

    fn kill(&self) {
        for pid in self.pids().unwrap_or_default() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

impl Drop for MoshServers<'_> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `'arg' 'arg' …` for a command line that is split like a shell would.
fn shell_quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Clients B1: mosh's SSH exec only starts mosh-server; the terminal session then runs over
/// UDP, which sshgw never sees. Refused by default, with a message naming the policy, and no
/// mosh-server runs (the real mosh client's bootstrap); allowed explicitly, it runs and the
/// session log says that it handed the session over.
#[test]
fn mosh_is_refused_unless_the_policy_allows_it() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(GatewayConfig::default().policies(policy_with(json!({}))))?;
        gw.start()?;
        let servers = MoshServers(lab);

        let ssh = relayed(lab);
        let mut cmd = lab.dev.exec_command("mosh");
        cmd.env("LANG", "C.UTF-8")
            .arg("--experimental-remote-ip=local")
            .arg(format!("--ssh=ssh {}", shell_quoted(&ssh.common_args())))
            .arg(format!("jdoe@{}", V4.audited()));
        let before = gw.session_ids()?;
        let out = lab.procs().run("mosh", &mut cmd, Duration::from_secs(90))?;
        let refusal = "sshgw: mosh-server is refused by policy \"File audit\" (audit-files): \
                       sshgw cannot record the mosh session it starts (it runs outside SSH); \
                       ssh.unrecordable_programs = \"deny\"";
        // mosh runs ssh with a tty (-tt): the message arrives through it, on stdout.
        ensure!(
            !out.success() && format!("{}{}", out.stdout, out.stderr).contains(refusal),
            "mosh should fail with the refusal: {out:?}"
        );
        let running = servers.pids()?;
        ensure!(running.is_empty(), "mosh-server runs: {running:?}");
        let s = new_closed_session(&gw, &before)?;
        ensure!(
            s["channels"].as_array().into_iter().flatten().any(|c| {
                str_field(c, "command").is_some_and(|x| x.starts_with("mosh-server"))
                    && c["exit_status"] == json!(1)
            }),
            "the refused exec is a channel with exit status 1: {s:#}"
        );
        ensure!(
            file_ops(&s).iter().any(|o| o["op"] == json!("refused")
                && o["protocol"] == json!("ssh")
                && o["denied"] == json!(true)
                && str_field(o, "status") == Some(refusal)),
            "{}",
            ops_text(&s)
        );

        // Allowed explicitly: it runs, and the log says the session went elsewhere.
        gw.push_policies(&policy_with(json!({"unrecordable_programs": "allow"})))?;
        let before = gw.session_ids()?;
        let out = relayed(lab).run("mosh-server new -s -l LANG=C.UTF-8")?;
        ensure!(
            out.success() && out.stdout.contains("MOSH CONNECT"),
            "mosh-server should start: {out:?}"
        );
        let s = new_closed_session(&gw, &before)?;
        ensure!(
            file_ops(&s)
                .iter()
                .any(|o| o["op"] == json!("unaudited handoff")
                    && o["protocol"] == json!("ssh")
                    && o["path"] == json!("mosh-server new -s -l LANG=C.UTF-8")
                    && str_field(o, "status")
                        .is_some_and(|t| t.contains("ssh.unrecordable_programs = \"allow\""))),
            "{}",
            ops_text(&s)
        );
        ensure!(!servers.pids()?.is_empty(), "the allowed mosh-server runs");
        servers.kill();
        Ok(())
    });
}
