//! Encrypted command logging, the session log and live session control, end to end: the
//! device runs plain OpenSSH `ssh` from the enrolled address (100.96.0.7) to the audited
//! server (203.0.113.10) under a policy with `ssh.command_logging = true`; the recordings the
//! daemon writes are read back with `sshgw recording decrypt|verify|export` and the real
//! `asciinema` (Debian package).
//!
//! Every test builds its own lab. Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`),
//! OpenSSH and asciinema:
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test recording -- --test-threads=2`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sshgw_tests::gateway::str_field;
use sshgw_tests::recording::{
    RecordingKey, Tmpfs, closed_recorded_channel, decrypt, expect_exit, export_asciicast,
    header_len, live_recording, read_header, recorded_policies, recording_cli, recording_toml,
    verify, wait_flushed,
};
use sshgw_tests::ssh::PTY_EXPECT_TIMEOUT;
use sshgw_tests::{
    Family, Gateway, GatewayConfig, Lab, Ssh, SshConnection, SshOutput, Sshd, SshdConfig, lab_test,
};

const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// A refusal must reach the user well before any ssh-level timeout.
const PROMPT_FAILURE: Duration = Duration::from_secs(10);

const V4: Family = Family::V4;

/// What the user and the session log see when a recording cannot be opened.
const REFUSED: &str = "requires a recording, and it cannot be written";
/// ... and when it fails mid-session.
const RECORDING_FAILED: &str = "sshgw: session ended: its recording failed";
const ADMIN_KILL: &str = "sshgw: session terminated by an administrator";
/// `sshgw recording verify` on a complete recording.
const COMPLETE: &str = "status:   complete (authenticated end-of-recording record)";

/// `ssh` from the enrolled device to the audited server (relayed and recorded).
fn to_audited(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.audited()).bind(V4.enrolled())
}

/// The lab sshd (trusting the gateway CA), then the daemon under [`recorded_policies`] with
/// `[recording]` from `toml`, started.
fn start_recorded(lab: &Lab, toml: String) -> Result<(Sshd, Gateway<'_>)> {
    let sshd = lab.start_sshd_with(SshdConfig::gateway())?;
    let mut cfg = GatewayConfig::default().policies(recorded_policies());
    cfg.extra_toml = toml;
    let mut gw = lab.gateway_with(cfg)?;
    gw.start()?;
    Ok((sshd, gw))
}

/// Waits (bounded) for a session of the log (`sessions ARGS`) to the audited server matching
/// `pred` that is not in `seen`, and returns its id.
fn new_session_id(
    gw: &Gateway<'_>,
    args: &[&str],
    seen: &[String],
    pred: impl Fn(&Value) -> bool,
) -> Result<String> {
    let dst = format!("{}:22", V4.audited());
    let s = gw.wait_for_session(args, LOG_TIMEOUT, "a new session in the log", |s| {
        str_field(s, "destination") == Some(dst.as_str())
            && str_field(s, "id").is_some_and(|id| !seen.iter().any(|x| x == id))
            && pred(s)
    })?;
    Ok(str_field(&s, "id")
        .context("session without id")?
        .to_owned())
}

/// The run failed as ssh (exit 255), promptly, with every needle on stderr and nothing on
/// stdout.
fn expect_refused(out: &SshOutput, took: Duration, needles: &[&str], what: &str) -> Result<()> {
    ensure!(
        out.code() == Some(255),
        "{what}: ssh should fail with exit code 255: {out:?}"
    );
    for needle in needles {
        ensure!(
            out.stderr.contains(needle),
            "{what}: ssh's stderr should contain {needle:?}: {:?}",
            out.stderr
        );
    }
    ensure!(
        out.stdout.is_empty(),
        "{what}: nothing should have run: {out:?}"
    );
    ensure!(took < PROMPT_FAILURE, "{what}: the refusal took {took:?}");
    Ok(())
}

/// The recording's plaintext header names the session, the user and the channel, and no
/// plaintext of `secret` is on disk.
fn check_file(
    path: &Path,
    session_id: &str,
    key: &RecordingKey,
    channel: &str,
    secret: &str,
) -> Result<Value> {
    let mode = sshgw_tests::recording::file_mode(path)?;
    ensure!(
        mode == 0o600,
        "{} should have mode 0600, has {mode:o}",
        path.display()
    );
    let raw = fs::read(path)?;
    ensure!(
        !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "{} holds the session output {secret:?} in plaintext",
        path.display()
    );
    let header = read_header(path)?;
    let s = &header["sshgw"];
    let want = [
        ("session_id", session_id.to_owned()),
        ("channel", channel.to_owned()),
        ("user_email", "jdoe@example.com".to_owned()),
        ("device_id", "laptop-jdoe".to_owned()),
        ("login", "root".to_owned()),
        ("destination", format!("{}:22", V4.audited())),
        ("recipient", key.public_base64()?),
    ];
    for (field, value) in want {
        ensure!(
            str_field(s, field) == Some(value.as_str()),
            "header sshgw.{field} should be {value:?}: {header:#}"
        );
    }
    ensure!(s["format"] == 1, "header sshgw.format: {header:#}");
    Ok(header)
}

// ------------------------------------------------------------------------------------------
// 1 + 3. An interactive shell
// ------------------------------------------------------------------------------------------

/// An interactive recorded session: `ssh -tt` on a 24x80 terminal, typing commands and
/// `exit 3`. Returns the daemon, the key, the session record and the recording path.
fn record_pty_shell(lab: &Lab) -> Result<(Sshd, Gateway<'_>, RecordingKey, Value, PathBuf)> {
    let key = RecordingKey::generate(lab, "rec")?;
    let (sshd, gw) = start_recorded(lab, recording_toml(Some(&key.public), None, &[]))?;
    let mut term = to_audited(lab).pty_session(None, (24, 80))?;
    // The echoed command lines show `$((6*7))` and `u$((1+1))`, never the expanded output.
    term.send("echo sshgw-marker-$((6*7))\n")?;
    term.expect("sshgw-marker-42", PTY_EXPECT_TIMEOUT)?;
    term.send("uname -s; echo u$((1+1))-done\n")?;
    let out = term.expect("u2-done", PTY_EXPECT_TIMEOUT)?;
    ensure!(out.contains("Linux"), "uname -s output: {out:?}");
    term.send("exit 3\n")?;
    let status = term.wait_exit(SESSION_TIMEOUT)?;
    ensure!(
        status.code() == Some(3),
        "ssh should exit 3 after `exit 3`: {status:?}; transcript: {:?}",
        term.transcript()
    );
    let id = new_session_id(&gw, &[], &[], |_| true)?;
    let (session, channel, path) = closed_recorded_channel(&gw, &id, LOG_TIMEOUT)?;
    eprintln!("pty session record: {session:#}");
    ensure!(
        str_field(&session, "decision") == Some("audit_ssh")
            && str_field(&session, "policy_id") == Some("audit-recorded")
            && str_field(&session, "close_reason") == Some("client"),
        "session record: {session:#}"
    );
    ensure!(
        session["channels"].as_array().map(Vec::len) == Some(1),
        "one channel expected: {session:#}"
    );
    let number = channel["channel"].as_u64().context("channel number")?;
    ensure!(
        str_field(&channel, "kind") == Some("shell")
            && channel["exit_status"] == 3
            && channel["exit_signal"].is_null()
            && channel["command"].is_null(),
        "the shell channel should have exit_status 3: {channel:#}"
    );
    let expected = gw
        .state_dir()
        .join("recordings")
        .join(format!("{id}-ch{number}.sshlog"));
    ensure!(
        path == expected,
        "recording path {} should be {}",
        path.display(),
        expected.display()
    );
    Ok((sshd, gw, key, session, path))
}

/// 1. A scripted interactive session is recorded: the decrypted typescript holds the typed
///    commands' output and the exit-code trailer, `verify` says complete, and the session log
///    lists the shell channel with its exit status and recording.
#[test]
fn pty_shell_is_recorded() {
    lab_test(|lab| {
        let (_sshd, _gw, key, session, path) = record_pty_shell(lab)?;
        let id = str_field(&session, "id").context("id")?;
        let header = check_file(&path, id, &key, "shell", "sshgw-marker-42")?;
        ensure!(
            header["pty"]["width"] == 80 && header["pty"]["height"] == 24,
            "header pty: {header:#}"
        );
        ensure!(
            header["exit_data"]["status"] == 3 && header["data_size"].as_u64() > Some(0),
            "header exit_data/data_size after the end: {header:#}"
        );

        let zip = decrypt(lab, &path, &key.private)?;
        ensure!(
            zip.names() == ["term_data.txt", "term_times.txt"],
            "pty recording members: {:?}",
            zip.names()
        );
        ensure!(
            !zip.stderr.contains("truncated"),
            "decrypt warned: {}",
            zip.stderr
        );
        let data = zip.member_text("term_data.txt")?;
        let (first, _) = data.split_once('\n').context("term_data.txt is one line")?;
        ensure!(
            first.starts_with("Session started on ")
                && first.contains("COLUMNS=\"80\" LINES=\"24\""),
            "term_data.txt first line: {first:?}"
        );
        for needle in ["sshgw-marker-42", "Linux", "u2-done"] {
            ensure!(
                data.contains(needle),
                "term_data.txt should contain {needle:?}:\n{data}"
            );
        }
        let trailer_at = data
            .rfind("\nScript done on ")
            .with_context(|| format!("term_data.txt has no `Script done` trailer:\n{data}"))?;
        let trailer = &data[trailer_at..];
        ensure!(
            trailer.trim_end().ends_with("[COMMAND_EXIT_CODE=\"3\"]"),
            "term_data.txt trailer: {trailer:?}"
        );
        // term_times.txt: one `<delay> <bytes>` line per server packet, covering all output.
        let times = zip.member_text("term_times.txt")?;
        let mut total = 0usize;
        for line in times.lines() {
            let (delay, bytes) = line
                .split_once(' ')
                .with_context(|| format!("term_times.txt line {line:?}"))?;
            delay
                .parse::<f64>()
                .with_context(|| format!("term_times.txt delay in {line:?}"))?;
            total += bytes
                .parse::<usize>()
                .with_context(|| format!("term_times.txt bytes in {line:?}"))?;
        }
        let output_len = zip.members["term_data.txt"].len() - (first.len() + 1) - trailer.len();
        ensure!(
            total == output_len,
            "term_times.txt counts {total} bytes, term_data.txt holds {output_len} bytes of output"
        );

        let v = verify(lab, &path, &key.private)?;
        expect_exit(&v, 0, "recording verify")?;
        ensure!(
            v.stdout.contains(COMPLETE)
                && v.stdout.contains("channel:  shell")
                && v.stdout.contains("exit:     status 3")
                && v.stdout
                    .contains(&format!("session:  {id} by jdoe@example.com")),
            "verify output: {}",
            v.stdout
        );
        Ok(())
    });
}

/// 3. The asciicast export of the interactive recording is read by the real asciinema:
///    `asciinema cat` exits 0 and prints the session's output.
#[test]
fn asciicast_export_plays_in_asciinema() {
    lab_test(|lab| {
        let asciinema = ["/usr/bin/asciinema", "/usr/local/bin/asciinema"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context(
                "asciinema is not installed (`apt-get install asciinema`, or `cargo xtask prereqs`)",
            )?;
        let (_sshd, _gw, key, _session, path) = record_pty_shell(lab)?;
        let cast = export_asciicast(lab, &path, &key.private)?;
        let text = fs::read_to_string(&cast)?;
        let header: Value = serde_json::from_str(text.lines().next().unwrap_or_default())
            .with_context(|| format!("asciicast header line of {text:?}"))?;
        ensure!(
            header["version"] == 2 && header["width"] == 80 && header["height"] == 24,
            "asciicast header: {header}"
        );
        for (i, line) in text.lines().enumerate().skip(1) {
            let event: Value = serde_json::from_str(line)
                .with_context(|| format!("asciicast line {}: {line:?}", i + 1))?;
            ensure!(
                event.as_array().is_some_and(|e| e.len() == 3
                    && e[0].is_f64()
                    && matches!(e[1].as_str(), Some("o" | "i" | "r"))
                    && e[2].is_string()),
                "asciicast event {}: {line}",
                i + 1
            );
        }

        // asciinema 2.x `cat` reads keys from /dev/tty: give it a terminal with util-linux
        // `script` (bsdutils, Essential on Debian), which copies the terminal's output to stdout.
        let home = lab.new_subdir("asciinema-home")?;
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c"])
            .arg(format!("{asciinema} cat '{}'", cast.display()))
            .arg("/dev/null")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("LC_ALL", "C.UTF-8");
        let out = lab
            .procs()
            .run("asciinema cat", &mut cmd, Duration::from_secs(60))?;
        expect_exit(&out, 0, "asciinema cat")?;
        ensure!(
            out.stdout.contains("sshgw-marker-42") && out.stdout.contains("Linux"),
            "asciinema cat should print the session output: {:?}",
            out.stdout
        );
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 2. An exec channel
// ------------------------------------------------------------------------------------------

/// 2. An exec session without a pty: stdout and stderr (extended data) are recorded as server
///    data, `verify` shows the command line and the exit status, and the session log has the
///    exec channel.
#[test]
fn exec_channel_is_recorded() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        let (_sshd, gw) = start_recorded(lab, recording_toml(Some(&key.public), None, &[]))?;
        let command = "echo out-$((40+2)); echo err-$((6*7)) >&2; exit 5";
        let out = to_audited(lab).run(command)?;
        ensure!(
            out.code() == Some(5) && out.stdout == "out-42\n" && out.stderr.contains("err-42"),
            "ssh `{command}`: {out:?}"
        );
        let id = new_session_id(&gw, &[], &[], |_| true)?;
        let (session, channel, path) = closed_recorded_channel(&gw, &id, LOG_TIMEOUT)?;
        ensure!(
            str_field(&channel, "kind") == Some("exec")
                && str_field(&channel, "command") == Some(command)
                && channel["exit_status"] == 5
                && channel["exit_signal"].is_null(),
            "exec channel record: {session:#}"
        );
        let header = check_file(&path, &id, &key, "exec", "out-42")?;
        ensure!(
            str_field(&header["sshgw"], "command") == Some(command)
                && header.get("pty").is_none_or(Value::is_null)
                && header["exit_data"]["status"] == 5,
            "exec header: {header:#}"
        );

        let zip = decrypt(lab, &path, &key.private)?;
        ensure!(
            zip.names() == ["data_from_client.txt", "data_from_server.txt"],
            "non-pty recording members: {:?}",
            zip.names()
        );
        let server = zip.member_text("data_from_server.txt")?;
        let mut lines: Vec<&str> = server.lines().collect();
        lines.sort_unstable();
        ensure!(
            lines == ["err-42", "out-42"],
            "data_from_server.txt should hold stdout and stderr: {server:?}"
        );
        let client = zip.member_text("data_from_client.txt")?;
        ensure!(
            client.is_empty(),
            "stdin was /dev/null: data_from_client.txt {client:?}"
        );

        let v = verify(lab, &path, &key.private)?;
        expect_exit(&v, 0, "recording verify")?;
        ensure!(
            v.stdout.contains(&format!("channel:  exec {command:?}"))
                && v.stdout.contains("exit:     status 5")
                && v.stdout.contains(COMPLETE)
                && v.stdout.contains("(2 output, 0 input, 0 resize, 1 end)"),
            "verify output: {}",
            v.stdout
        );
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 4. sessions kill
// ------------------------------------------------------------------------------------------

/// 4. `sshgw sessions kill` on a live recorded session: the user sees the administrator's
///    message, the log says `admin kill`, and the recording is finished (complete, decrypts,
///    holds the output up to the kill).
#[test]
fn killed_session_recording_is_complete() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        let (_sshd, gw) = start_recorded(lab, recording_toml(Some(&key.public), None, &[]))?;
        let mut session = to_audited(lab).session("echo $SSH_CONNECTION; exec cat")?;
        let conn = SshConnection::parse(&session.read_line(SESSION_TIMEOUT)?)?;
        ensure!(
            conn.client == V4.router_wan(),
            "should be relayed: {conn:?}"
        );
        session.roundtrip("before-the-kill", SESSION_TIMEOUT)?;
        let id = new_session_id(&gw, &["--active"], &[], |_| true)?;
        let path = live_recording(&gw, &id)?;

        gw.cli(&["sessions", "kill", &id])?
            .check("sshgw sessions kill")?;
        let status = session.proc().wait_exit(SESSION_TIMEOUT)?;
        let stderr = session.proc().stderr_text();
        ensure!(
            stderr.contains(ADMIN_KILL) && status.code() == Some(255),
            "ssh should exit 255 with the kill message: {status:?} {stderr:?}"
        );
        let s = gw.wait_session_closed(&id, LOG_TIMEOUT)?;
        ensure!(
            str_field(&s, "close_reason") == Some("admin kill"),
            "close_reason: {s:#}"
        );
        let (_, channel, closed_path) = closed_recorded_channel(&gw, &id, LOG_TIMEOUT)?;
        ensure!(
            closed_path == path,
            "the recording path changed: {channel:#}"
        );
        eprintln!("killed channel record: {channel:#}");

        let zip = decrypt(lab, &path, &key.private)?;
        let server = zip.member_text("data_from_server.txt")?;
        let client = zip.member_text("data_from_client.txt")?;
        ensure!(
            server.contains("before-the-kill") && client.contains("before-the-kill"),
            "the recording should hold both directions up to the kill:\nserver {server:?}\nclient {client:?}"
        );
        let v = verify(lab, &path, &key.private)?;
        eprintln!("verify after the kill:\n{}{}", v.stdout, v.stderr);
        expect_exit(&v, 0, "verify of a killed session's recording")?;
        ensure!(v.stdout.contains(COMPLETE), "verify: {}", v.stdout);
        // The gateway ended the channel, so the recording's exit_data carries the
        // administrator's message as error_msg (docs/recording-format.md).
        let killed_error = format!("exit:     error {ADMIN_KILL:?}");
        ensure!(
            v.stdout.contains(&killed_error),
            "verify of a killed session's recording should show {killed_error:?}: {}",
            v.stdout
        );
        let data = zip.member_text("data_from_server.txt")?;
        ensure!(
            !data.contains(ADMIN_KILL),
            "the gateway's message is not server output: {data:?}"
        );
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 5. A full disk
// ------------------------------------------------------------------------------------------

/// 5. Recordings on a 64 KiB tmpfs. Full before the session: the session is refused with the
///    policy's message and the log records it. Full during the session: the next flush fails
///    and the session is ended with `its recording failed`.
#[test]
fn full_disk_refuses_or_ends_recorded_sessions() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        let dir = lab.new_subdir("recordings-tmpfs")?;
        let tmpfs = Tmpfs::mount(&dir, "64k")?;
        let (_sshd, gw) = start_recorded(lab, recording_toml(Some(&key.public), Some(&dir), &[]))?;

        // Before: a recorded session works on the empty tmpfs.
        to_audited(lab).run("true")?.check()?;
        let first = new_session_id(&gw, &[], &[], |_| true)?;
        let (_, _, path) = closed_recorded_channel(&gw, &first, LOG_TIMEOUT)?;
        ensure!(
            path.starts_with(&dir),
            "the recording {} should be in [recording] dir {}",
            path.display(),
            dir.display()
        );

        // Full: refused before anything runs.
        let filler = tmpfs.fill()?;
        eprintln!("tmpfs full: {} bytes free", tmpfs.free_bytes()?);
        let started = Instant::now();
        let out = to_audited(lab).run("echo should-not-run")?;
        expect_refused(
            &out,
            started.elapsed(),
            &[
                "sshgw: session refused: policy \"Audit and record the lab server\" requires a recording, and it cannot be written (",
            ],
            "a new session with a full recording disk",
        )?;
        let refused = new_session_id(&gw, &[], std::slice::from_ref(&first), |_| true)?;
        let s = gw.wait_session_closed(&refused, LOG_TIMEOUT)?;
        ensure!(
            str_field(&s, "close_reason").is_some_and(|r| r.contains(REFUSED)),
            "the refused session's close reason: {s:#}"
        );
        fs::remove_file(&filler)?;

        // During: a session that starts with room, then the disk fills up and it keeps
        // producing output (4 KiB lines, both directions recorded): the next chunk cannot be
        // written.
        let mut session = to_audited(lab).session("echo $SSH_CONNECTION; exec cat")?;
        session.read_line(SESSION_TIMEOUT)?;
        session.roundtrip("before-the-disk-fills", SESSION_TIMEOUT)?;
        let live = new_session_id(&gw, &["--active"], &[first, refused], |_| true)?;
        let path = live_recording(&gw, &live)?;
        // Buffered data is lost when its write fails: wait until the early output is on
        // disk (the writer seals a chunk at the latest a second after it was recorded).
        wait_flushed(&path)?;
        let _filler = tmpfs.fill()?;
        let line = "x".repeat(4096);
        let deadline = Instant::now() + SESSION_TIMEOUT;
        let mut sent = 0;
        while session.proc().is_running() {
            ensure!(
                Instant::now() < deadline,
                "the session was not ended within {SESSION_TIMEOUT:?} of the disk filling up \
                 ({sent} lines of 4 KiB sent)"
            );
            // Each roundtrip is a bounded wait; once the gateway ends the session, the write
            // or the read fails and the loop sees ssh gone.
            if session.roundtrip(&line, Duration::from_millis(500)).is_ok() {
                sent += 1;
            }
        }
        let status = session.proc().wait_exit(SESSION_TIMEOUT)?;
        let stderr = session.proc().stderr_text();
        ensure!(
            status.code() == Some(255) && stderr.contains(RECORDING_FAILED),
            "ssh should be ended with {RECORDING_FAILED:?}: {status:?} {stderr:?}"
        );
        let s = gw.wait_session_closed(&live, LOG_TIMEOUT)?;
        ensure!(
            str_field(&s, "close_reason").is_some_and(|r| r.contains(RECORDING_FAILED)),
            "close reason of the session whose recording failed: {s:#}"
        );
        ensure!(
            gw.log().contains("recording failed"),
            "the daemon should log the failure:\n{}",
            gw.log()
        );
        // What was written before the disk filled up is still readable.
        let zip = decrypt(lab, &path, &key.private)?;
        ensure!(
            zip.member_text("data_from_server.txt")?
                .contains("before-the-disk-fills"),
            "the early output should be in the recording"
        );
        drop(tmpfs);
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 6. A daemon crash
// ------------------------------------------------------------------------------------------

/// 6. SIGKILL of the daemon mid-session: the recording keeps every chunk flushed before the
///    crash (decrypt works and warns), `verify` exits 3 saying where it was cut, and the next
///    start marks the session as interrupted.
#[test]
fn sigkill_leaves_a_truncated_but_readable_recording() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        let (_sshd, mut gw) = start_recorded(lab, recording_toml(Some(&key.public), None, &[]))?;
        let mut session = to_audited(lab).session("echo early-$((40+2)); exec cat")?;
        ensure!(
            session.read_line(SESSION_TIMEOUT)? == "early-42",
            "first line of the session"
        );
        session.roundtrip("typed-before-the-crash", SESSION_TIMEOUT)?;
        let id = new_session_id(&gw, &["--active"], &[], |_| true)?;
        let path = live_recording(&gw, &id)?;
        let header = header_len(&path)?;
        let size = wait_flushed(&path)?;
        eprintln!("recording: header {header} bytes, file {size} bytes before the crash");

        gw.kill()?;
        let status = session.proc().wait_exit(SESSION_TIMEOUT)?;
        ensure!(
            !status.success(),
            "ssh should fail after the crash: {status:?}"
        );

        let zip = decrypt(lab, &path, &key.private)?;
        ensure!(
            zip.stderr.contains("truncated"),
            "decrypt should warn that the recording is truncated: {:?}",
            zip.stderr
        );
        let server = zip.member_text("data_from_server.txt")?;
        ensure!(
            server.contains("early-42"),
            "the early output should survive the crash: {server:?}"
        );
        let v = verify(lab, &path, &key.private)?;
        expect_exit(&v, 3, "verify of a recording cut by a crash")?;
        ensure!(
            v.stderr.contains("truncated after chunk ")
                && v.stderr.contains("no end-of-recording record")
                && v.stdout.contains("exit:     no termination data"),
            "verify should say where the recording stops:\nstdout: {}\nstderr: {}",
            v.stdout,
            v.stderr
        );

        gw.start()?;
        let s = gw.session(&id)?;
        ensure!(
            str_field(&s, "close_reason") == Some("interrupted: sshgw stopped"),
            "after a restart the crashed session is interrupted: {s:#}"
        );
        ensure!(
            gw.sessions(&["--active"])?.is_empty(),
            "the interrupted session must not be listed as active"
        );
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 7. Replacing the key at run time
// ------------------------------------------------------------------------------------------

/// 7. No key configured: recorded sessions are refused. `sshgw recording set-key` fixes that
///    without a restart; the new recording decrypts with the new private key, and another
///    private key gets the wrong-key error naming both public keys.
#[test]
fn set_key_at_runtime() {
    lab_test(|lab| {
        let (_sshd, gw) = start_recorded(lab, recording_toml(None, None, &[]))?;
        let started = Instant::now();
        let out = to_audited(lab).run("echo should-not-run")?;
        expect_refused(
            &out,
            started.elapsed(),
            &[REFUSED, "no recording key is configured"],
            "a recorded session without a key",
        )?;
        let refused = new_session_id(&gw, &[], &[], |_| true)?;
        let s = gw.wait_session_closed(&refused, LOG_TIMEOUT)?;
        ensure!(
            str_field(&s, "close_reason").is_some_and(|r| r.contains(REFUSED))
                && s["channels"].as_array().is_none_or(Vec::is_empty),
            "the refused session's record: {s:#}"
        );

        let key = RecordingKey::generate(lab, "new")?;
        let set = gw
            .cli(&["recording", "set-key", &key.public.to_string_lossy()])?
            .check("sshgw recording set-key")?;
        eprintln!("set-key: {}", set.stdout.trim_end());
        let stored = fs::read_to_string(gw.state_dir().join("recording.pub"))?;
        ensure!(
            stored.trim() == key.public_base64()?,
            "state_dir/recording.pub should hold the new key: {stored:?}"
        );
        // A private key passed as the public one is refused as input (exit 3), and so is junk.
        let junk = lab.dir().join("junk.pub");
        fs::write(&junk, "not a key\n")?;
        let bad = gw.cli(&["recording", "set-key", &junk.to_string_lossy()])?;
        expect_exit(&bad, 3, "set-key with junk")?;

        let out = to_audited(lab).run("echo recorded-$((40+2))")?;
        ensure!(
            out.success() && out.stdout == "recorded-42\n",
            "after set-key: {out:?}"
        );
        let id = new_session_id(&gw, &[], &[refused], |_| true)?;
        let (_, _, path) = closed_recorded_channel(&gw, &id, LOG_TIMEOUT)?;
        check_file(&path, &id, &key, "exec", "recorded-42")?;
        let zip = decrypt(lab, &path, &key.private)?;
        ensure!(
            zip.member_text("data_from_server.txt")? == "recorded-42\n",
            "decrypted with the new key: {:?}",
            zip.members
        );
        expect_exit(&verify(lab, &path, &key.private)?, 0, "verify")?;

        let other = RecordingKey::generate(lab, "other")?;
        let wrong = recording_cli(
            lab,
            &[
                "decrypt",
                "-i",
                &path.to_string_lossy(),
                "-k",
                &other.private.to_string_lossy(),
                "-o",
                &lab.dir().join("wrong.zip").to_string_lossy(),
            ],
        )?;
        expect_exit(&wrong, 3, "decrypt with the wrong key")?;
        let expected = format!(
            "wrong key or corrupted data: authentication failed at chunk 0 (offset {}); \
             the header names recipient public key {}, this private key's public key is {}",
            header_len(&path)?,
            key.public_base64()?,
            other.public_base64()?
        );
        ensure!(
            wrong.stderr.contains(&expected),
            "decrypt with the wrong key should say {expected:?}: {:?}",
            wrong.stderr
        );
        ensure!(
            !lab.dir().join("wrong.zip").exists(),
            "a failed decrypt must leave no output"
        );
        // The public key where the private key belongs is named as such.
        let swapped = verify(lab, &path, &key.public)?;
        expect_exit(&swapped, 3, "verify with the public key as the private key")?;
        ensure!(
            swapped.stderr.contains(&format!(
                "this is the public key {} was encrypted to; decrypting needs its private key",
                path.display()
            )),
            "verify with the public key should name the mix-up: {:?}",
            swapped.stderr
        );
        if gw.log().contains("panicked") {
            bail!("the daemon panicked:\n{}", gw.log());
        }
        Ok(())
    });
}
