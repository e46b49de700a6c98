//! `sshgw console`, the auditor's web console, in a real browser (issue 18, item 5): the lab
//! records sessions (a policy with `ssh.command_logging = true` and a recording key), then
//! Debian's chromium, driven by playwright-core (`tests/browser/console.mjs`), logs in to
//! the console, lists and filters the sessions, loads the private key from a file, replays a
//! session until its terminal shows the marker typed over ssh, and sees clear errors for a
//! wrong key, a truncated and a tampered recording; every request the page made is checked
//! for the key. With the daemon's control socket, the Live page lists a session held open at
//! its prompt; its Kill button asks for confirmation (Cancel leaves it live), then kills it:
//! ssh ends, the log closes it as `admin kill` and the daemon logs the kill as an admin
//! action of the console. Screenshots of the list, of a replay and of the Live page with the
//! kill dialog open go to `target/test-artifacts/console/`.
//!
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`, else target/debug/sshgw),
//! OpenSSH, Node.js with npm, and chromium (`cargo xtask prereqs` installs them; never
//! skipped, with or without `CI=true`). The npm packages of tests/browser are installed
//! (`npm ci`) when missing:
//! `SSHGW_BIN=$PWD/target/release/sshgw cargo test -p sshgw-tests --test console -- --nocapture --test-threads=1`.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use sshgw_tests::central::random_hex;
use sshgw_tests::console::{self, Console};
use sshgw_tests::gateway::str_field;
use sshgw_tests::recording::{
    RecordingKey, closed_recorded_channel, live_recording, recorded_policies, recording_toml,
    toml_path, wait_flushed,
};
use sshgw_tests::ssh::PTY_EXPECT_TIMEOUT;
use sshgw_tests::wait::poll_until;
use sshgw_tests::{Family, Gateway, GatewayConfig, Lab, SshdConfig, host_port, lab_test};

const V4: Family = Family::V4;
const V6: Family = Family::V6;

/// Deadline for a session to show up in, and be closed in, the session log.
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for ssh to exit after `exit`.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of the sftp upload.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// The user of the lab device (`default_devices`).
const USER: &str = "jdoe@example.com";
/// The login of the sftp session (files land in its home).
const SFTP_LOGIN: &str = "jdoe";
/// What ssh shows when an administrator kills the session (`KillReason::Admin`).
const ADMIN_KILL_MESSAGE: &str = "sshgw: session terminated by an administrator";
/// The close reason of a session killed through the control API (relay/end.rs).
const ADMIN_KILL: &str = "admin kill";

/// `host:port` of the audited server of `family`, as the session log writes destinations.
fn audited(family: Family) -> String {
    host_port(family.audited(), 22)
}

/// Waits (bounded) for a session of the log (`sessions ARGS`) to the audited server of
/// `family` whose id is not in `seen`, and returns its id.
fn new_session_id(
    gw: &Gateway<'_>,
    args: &[&str],
    family: Family,
    seen: &[String],
) -> Result<String> {
    let dst = audited(family);
    let s = gw.wait_for_session(args, LOG_TIMEOUT, "a new session in the log", |s| {
        str_field(s, "destination") == Some(dst.as_str())
            && str_field(s, "id").is_some_and(|id| !seen.iter().any(|x| x == id))
    })?;
    Ok(str_field(&s, "id")
        .context("session without id")?
        .to_owned())
}

/// A recorded interactive session of `family` on a 24x80 terminal: types `first` and waits
/// for `first_output`, waits until that output is sealed in a chunk of its own, then types
/// `echo …` and `exit`, so the recording has at least two chunks. Returns the session id
/// and the recording path once the log has closed the channel.
fn recorded_shell(
    lab: &Lab,
    gw: &Gateway<'_>,
    family: Family,
    seen: &[String],
    first: &str,
    first_output: &str,
) -> Result<(String, PathBuf)> {
    let mut term = lab
        .ssh(family.audited())
        .bind(family.enrolled())
        .pty_session(None, (24, 80))?;
    term.send(&format!("{first}\n"))?;
    term.expect(first_output, PTY_EXPECT_TIMEOUT)?;
    let id = new_session_id(gw, &["--active"], family, seen)?;
    let live = live_recording(gw, &id)?;
    wait_flushed(&live)?;
    term.send("echo second-chunk-$((40+2))\n")?;
    term.expect("second-chunk-42", PTY_EXPECT_TIMEOUT)?;
    term.send("exit\n")?;
    let status = term.wait_exit(SESSION_TIMEOUT)?;
    ensure!(
        status.success(),
        "ssh should exit 0 after `exit`: {status:?}; transcript: {:?}",
        term.transcript()
    );
    let (_, channel, path) = closed_recorded_channel(gw, &id, LOG_TIMEOUT)?;
    ensure!(
        str_field(&channel, "kind") == Some("shell") && path == live,
        "session {id}: one shell channel recorded at {}: {channel:#}",
        live.display()
    );
    let spans = console::chunks(&path)?;
    ensure!(
        spans.len() >= 2,
        "{} should have at least two chunks (the first sealed before the second command), has {spans:?}",
        path.display()
    );
    Ok((id, path))
}

/// The `admin action` lines of the daemon's log for `route` (`admin_log::record`).
fn admin_lines(gw: &Gateway<'_>, route: &str) -> Vec<String> {
    let needle = format!("route={route} ");
    gw.log()
        .lines()
        .filter(|l| l.contains("admin action") && l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// The console in a real browser against the lab's sessions: a good recording, an sftp
/// upload, a truncated and a tampered recording, and a live session to kill (see the
/// module docs).
#[test]
fn console_in_a_real_browser() {
    lab_test(|lab| {
        // The tools first: a missing browser fails at once, before any lab work.
        let tools = console::browser_tools()?;
        console::ensure_npm_packages(lab, &tools)?;
        let artifacts = console::artifacts_dir()?;
        let screenshots = ["console-list.png", "console-replay.png", "console-live.png"]
            .map(|n| artifacts.join(n));
        for old in &screenshots {
            // A screenshot of an earlier run must not pass for one of this run.
            if old.exists() {
                fs::remove_file(old).with_context(|| format!("removing {}", old.display()))?;
            }
        }

        let key = RecordingKey::generate(lab, "rec")?;
        let wrong = RecordingKey::generate(lab, "wrong")?;
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut cfg = GatewayConfig::default().policies(recorded_policies());
        cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;

        // 1. The good session: the marker is output, not only the typed line (`$((6*7))`).
        let tag = random_hex(6)?;
        let marker = format!("CONSOLE-MARKER-{tag}-42");
        let (good, good_path) = recorded_shell(
            lab,
            &gw,
            V4,
            &[],
            &format!("echo CONSOLE-MARKER-{tag}-$((6*7))"),
            &marker,
        )?;
        let mut seen = vec![good.clone()];

        // 2. An sftp upload of a uniquely named file.
        let sftp_file = format!("console-upload-{}.txt", random_hex(6)?);
        let local = lab.dir().join(&sftp_file);
        fs::write(
            &local,
            format!("uploaded through the gateway for the console test {tag}\n"),
        )?;
        let out = lab
            .ssh(V4.audited())
            .bind(V4.enrolled())
            .user(SFTP_LOGIN)
            .timeout(TRANSFER_TIMEOUT)
            .sftp_batch(&format!(
                "put {} {sftp_file}\n",
                local.to_str().context("lab dir is not UTF-8")?
            ))?;
        out.check().context("sftp put")?;
        let sftp = new_session_id(&gw, &[], V4, &seen)?;
        let (record, _, _) = closed_recorded_channel(&gw, &sftp, LOG_TIMEOUT)?;
        ensure!(
            record["file_ops"].as_array().is_some_and(|ops| ops
                .iter()
                .any(|o| str_field(o, "path").is_some_and(|p| p.ends_with(&sftp_file)))),
            "the session log should list the upload of {sftp_file}: {record:#}"
        );
        seen.push(sftp.clone());

        // 3. Two more sessions whose recordings are damaged once they ended: one cut in the
        //    middle of its last chunk, one (over IPv6: another destination for the filter)
        //    with a bit flipped inside its last chunk (not the first: that is a wrong key).
        let (truncated, truncated_path) = recorded_shell(
            lab,
            &gw,
            V4,
            &seen,
            "echo truncated-session-$((1+1))",
            "truncated-session-2",
        )?;
        seen.push(truncated.clone());
        let (tampered, tampered_path) = recorded_shell(
            lab,
            &gw,
            V6,
            &seen,
            "echo tampered-session-$((1+2))",
            "tampered-session-3",
        )?;
        seen.push(tampered.clone());
        let last = console::chunks(&truncated_path)?.len() - 1;
        let cut = console::truncate_inside_chunk(&truncated_path, last)?;
        eprintln!(
            "truncated {} inside chunk {last} at {cut} bytes",
            truncated_path.display()
        );
        let last = console::chunks(&tampered_path)?.len() - 1;
        let at = console::flip_byte_in_chunk(&tampered_path, last)?;
        eprintln!(
            "flipped a bit of {} in chunk {last} at offset {at}",
            tampered_path.display()
        );

        // 4. A session held open at its prompt, for the Live page to kill.
        let mut held = lab
            .ssh(V4.audited())
            .bind(V4.enrolled())
            .pty_session(None, (24, 80))?;
        held.send("echo held-session-$((20+1))\n")?;
        held.expect("held-session-21", PTY_EXPECT_TIMEOUT)?;
        let live = new_session_id(&gw, &["--active"], V4, &seen)?;
        let kill_route = format!("/v1/sessions/{live}/kill");
        eprintln!("held session {live} open at its prompt");

        // The console, in the host namespaces, on the daemon's config.
        let console = Console::start(lab, gw.config_path(), &[])?;
        let token = console::read_token(gw.state_dir())?;
        println!(
            "console: {} (token in {})",
            console.url(),
            gw.state_dir().join(console::TOKEN_FILE).display()
        );

        let input = json!({
            "url": console.url(),
            "token": token,
            "key_file": key.private,
            "public_key": key.public_base64()?,
            "wrong_key_file": wrong.private,
            "marker": marker,
            "sessions": {"good": good, "truncated": truncated, "tampered": tampered, "sftp": sftp,
                         "live": live},
            "expected_ids": seen,
            "user": USER,
            "destination": V4.audited().to_string(),
            "excluded_by_destination": [tampered],
            "sftp_file": sftp_file,
            "good_recording": good_path,
            "artifacts_dir": artifacts,
        });
        let report = console::run_browser(lab, &tools, &input)?;
        println!("browser checks: {:#}", report["checks"]);
        for path in &screenshots {
            ensure!(
                fs::metadata(path).is_ok_and(|m| m.len() > 0),
                "the browser run should have saved {}",
                path.display()
            );
            println!("screenshot: {}", path.display());
        }

        // The kill reached the held session: ssh was told and exited, its terminal closed.
        let status = held.wait_exit(SESSION_TIMEOUT)?;
        let transcript = held.transcript();
        ensure!(
            transcript.contains(ADMIN_KILL_MESSAGE) && status.code() == Some(255),
            "ssh of the killed session {live} should exit 255 with {ADMIN_KILL_MESSAGE:?}: \
             {status:?}; transcript: {transcript:?}"
        );
        let record = gw.wait_session_closed(&live, LOG_TIMEOUT)?;
        ensure!(
            str_field(&record, "close_reason") == Some(ADMIN_KILL),
            "sessions show {live} --json: close_reason should be {ADMIN_KILL:?}: {record:#}"
        );
        ensure!(
            gw.sessions(&["--active"])?
                .iter()
                .all(|s| str_field(s, "id") != Some(live.as_str())),
            "the killed session {live} is still listed by sessions --active"
        );
        // The daemon logged the kill as an admin action of the console (its uid and pid,
        // from SO_PEERCRED), once: Cancel sent nothing.
        let line = poll_until(
            &format!("the admin action POST {kill_route}"),
            LOG_TIMEOUT,
            Duration::from_millis(50),
            || Ok(admin_lines(&gw, &kill_route).pop()),
        )
        .with_context(|| format!("--- sshgw log ---\n{}", gw.log()))?;
        let console_pid = console.proc().pid();
        ensure!(
            line.contains("method=POST")
                && line.contains("status=200")
                && line.contains("uid=0")
                && line.contains(&format!("pid={console_pid} ")),
            "the kill should be logged as an admin action POST {kill_route} with status 200, \
             uid 0 and the console's pid {console_pid}: {line}"
        );
        let lines = admin_lines(&gw, &kill_route);
        ensure!(
            lines.len() == 1,
            "exactly one admin action for {kill_route} (Cancel must not kill), logged {lines:#?}"
        );
        println!("admin action: {line}");

        // The contract: exactly one line on stdout, the `listening` one.
        let stdout = console.stdout();
        ensure!(
            stdout.lines().count() == 1,
            "sshgw console should print exactly one line on stdout, printed {stdout:?}"
        );
        ensure!(
            console.proc().is_running(),
            "sshgw console exited during the browser run:\n{}",
            console.proc().log_text()
        );
        drop(console);
        Ok(())
    });
}

/// `sshgw console` refuses a configuration that gives it the recording private key, and a
/// listen address beyond loopback without TLS.
#[test]
fn console_refuses_a_private_key_and_remote_listening_without_tls() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        let state = lab.new_subdir("console-state")?;
        let base = format!(
            "state_dir = {}\n\n[datapath]\ninterfaces = [\"r0\"]\n\n{}",
            toml_path(&state),
            recording_toml(Some(&key.public), None, &[])
        );

        let with_key = lab.dir().join("console-private-key.toml");
        let private = fs::read_to_string(&key.private)?.trim().to_owned();
        fs::write(
            &with_key,
            format!(
                "{base}\n[console]\nprivate_key = {}\n",
                serde_json::to_string(&private)?
            ),
        )?;
        let out = console::expect_refusal(
            lab,
            &with_key,
            &["--listen", "127.0.0.1:0"],
            "a [console] private_key",
        )?;
        let err = out.stderr.to_lowercase();
        ensure!(
            err.contains("private key") || err.contains("private_key"),
            "the refusal should name the private key: {:?}",
            out.stderr
        );
        ensure!(
            !out.stderr.contains(&private) && !out.stdout.contains(&private),
            "the refusal must not print the private key"
        );

        let plain = lab.dir().join("console-plain.toml");
        fs::write(&plain, &base)?;
        let out = console::expect_refusal(
            lab,
            &plain,
            &["--listen", "0.0.0.0:0"],
            "--listen 0.0.0.0:0 without TLS",
        )?;
        ensure!(
            out.stderr.contains("TLS"),
            "the refusal should name TLS: {:?}",
            out.stderr
        );
        Ok(())
    });
}
