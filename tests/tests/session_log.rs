//! The session log's integrity against the users it audits (issue 13: retention, a log that
//! fails closed, bounded live records). Each test does what happens in the field, with real
//! OpenSSH from the enrolled device (100.96.0.7) to the audited server (203.0.113.10):
//!
//! 1. refused programs leave recording files no record names (review F1); with a small size
//!    limit, a restart's retention pass must remove them and keep the evidence;
//! 2. the session log's file system fills up: new connections are refused with a message,
//!    `sshgw status` says so, and once there is room again sessions work and are logged;
//! 3. one connection with more channels than a live record keeps: the live record stays
//!    capped, `sessions show` lists every channel from the log.
//!
//! Needs root and the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`):
//! `cargo xtask test --netns-only -- session_log`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sshgw_tests::gateway::str_field;
use sshgw_tests::recording::{
    RecordingKey, Tmpfs, closed_recorded_channel, decrypt, recorded_policies, recording_toml,
};
use sshgw_tests::wait::poll_until;
use sshgw_tests::{Family, Gateway, GatewayConfig, Lab, Ssh, SshdConfig, lab_test};

const V4: Family = Family::V4;
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);
/// How long the control master may take to exit after SIGTERM.
const MASTER_STOP: Duration = Duration::from_secs(10);

/// The refusal a user sees while the session log cannot be written.
const LOG_REFUSED: &str = "sshgw: session refused: the gateway cannot write its session log (";
/// Channels a live record keeps (`LIVE_CHANNELS` in gateway/src/sessions/live.rs).
const LIVE_CHANNELS: usize = 64;

fn to_audited(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.audited()).bind(V4.enrolled())
}

/// Waits (bounded) for a closed session in the log that is not in `seen`; returns its id.
fn next_closed_session(gw: &Gateway<'_>, seen: &[String]) -> Result<String> {
    let s = gw.wait_for_session(&[], LOG_TIMEOUT, "a new closed session", |s| {
        str_field(s, "id").is_some_and(|id| !seen.iter().any(|x| x == id))
            && !s["ended_at"].is_null()
    })?;
    Ok(str_field(&s, "id")
        .context("session without id")?
        .to_owned())
}

/// Bytes of the `*.sshlog` files in `dir`.
/// Copies of `like` under names no record has, old enough to be a previous run's, until
/// they hold more than `bytes`; returns how many.
fn plant_unreferenced(dir: &Path, like: &Path, bytes: u64) -> Result<usize> {
    let content = fs::read(like)?;
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    let mut planted = 0;
    while (planted * content.len()) as u64 <= bytes {
        let path = dir.join(format!("1a0000000000{planted:07x}-ch2.sshlog"));
        fs::write(&path, &content)?;
        fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(old)?;
        planted += 1;
    }
    Ok(planted)
}

fn recording_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".sshlog") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// The `*.sshlog` files in `dir` that no channel row of the log names (a session that
/// retention removes meanwhile is skipped).
fn unreferenced_recordings(gw: &Gateway<'_>, dir: &Path) -> Result<Vec<String>> {
    let mut named = Vec::new();
    for s in gw.sessions(&[])? {
        let id = str_field(&s, "id").context("session without id")?;
        let shown = gw.cli(&["sessions", "show", id, "--json"])?;
        if !shown.status.success() {
            continue;
        }
        let shown: Value = serde_json::from_str(&shown.stdout)?;
        for c in shown["channels"].as_array().into_iter().flatten() {
            if let Some(path) = str_field(c, "recording") {
                named.push(Path::new(path).file_name().map(|n| n.to_owned()));
            }
        }
    }
    let mut unreferenced = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name.to_string_lossy().ends_with(".sshlog") && !named.contains(&Some(name.clone())) {
            unreferenced.push(name.to_string_lossy().into_owned());
        }
    }
    Ok(unreferenced)
}

/// The value of the one sample `name` (with its labels, as printed) in `/metrics`.
fn metric(gw: &Gateway<'_>, sample: &str) -> Result<f64> {
    let reply = gw.api_bytes("GET", "/metrics", None)?;
    ensure!(reply.status == 200, "GET /metrics: {reply:?}");
    let line = reply
        .body
        .lines()
        .find(|l| l.strip_prefix(sample).is_some_and(|v| v.starts_with(' ')))
        .with_context(|| format!("no sample {sample} in /metrics:\n{}", reply.body))?;
    Ok(line[sample.len()..].trim().parse()?)
}

/// 1. F1: `ssh -s … nope` under a recorded policy used to leave a recording no record
///    names, once per try, and with `max_total_mb = 1` enough of them made retention delete
///    every ended session, evidence included. Now 400 tries leave nothing; and files no
///    record names (as a crash between creating a recording and logging it leaves them) are
///    removed by the restart's pass without counting against the evidence, which stays with
///    its recording.
#[test]
fn retention_keeps_evidence_and_removes_unreferenced_recordings() {
    lab_test(|lab| {
        const LIMIT: u64 = 1024 * 1024;
        let key = RecordingKey::generate(lab, "rec")?;
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut cfg = GatewayConfig::default().policies(recorded_policies());
        cfg.extra_toml = format!(
            "{}\n[retention]\nmax_total_mb = 1\n",
            recording_toml(Some(&key.public), None, &[])
        );
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;
        let recordings = gw.state_dir().join("recordings");

        // The evidence: one recorded session.
        let out = to_audited(lab).run("echo evidence-marker")?;
        ensure!(out.success(), "the evidence session: {out:?}");
        let evidence = next_closed_session(&gw, &[])?;
        let (_, _, evidence_file) = closed_recorded_channel(&gw, &evidence, LOG_TIMEOUT)?;

        // The attack: refused programs over one connection.
        let control = lab.dir().join("cm.sock");
        let (master, mux) = to_audited(lab).control_master(&control)?;
        for _ in 0..400 {
            let out = mux().arg("-s").run("nope")?;
            ensure!(!out.success(), "subsystem nope should be refused: {out:?}");
        }
        master.terminate(MASTER_STOP)?;
        let after = recording_bytes(&recordings)?;
        ensure!(
            after == fs::metadata(&evidence_file)?.len(),
            "400 refused programs left recordings behind: {after} bytes"
        );

        // Files no record names, over the limit, as a crash would leave them.
        let tries = plant_unreferenced(&recordings, &evidence_file, LIMIT + LIMIT / 8)?;
        // Retention runs at start.
        gw.stop()?;
        gw.start()?;
        let mut left = Vec::new();
        poll_until(
            "every recording to be named by a channel row",
            LOG_TIMEOUT,
            POLL,
            || {
                left = unreferenced_recordings(&gw, &recordings)?;
                Ok(left.is_empty().then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "{} unreferenced recordings left; the evidence session is {} the log, its \
                 recording {}",
                left.len(),
                if gw.session(&evidence).is_ok() {
                    "still in"
                } else {
                    "gone from"
                },
                if evidence_file.exists() {
                    "still there"
                } else {
                    "deleted"
                },
            )
        })?;
        let s = gw.session(&evidence)?;
        ensure!(
            evidence_file.exists() && !s["channels"].as_array().is_none_or(Vec::is_empty),
            "the evidence session must survive with its recording: {s:#}"
        );
        let zip = decrypt(lab, &evidence_file, &key.private)?;
        ensure!(
            zip.member_text("data_from_server.txt")?
                .contains("evidence-marker"),
            "the evidence recording must be intact"
        );
        let line = gw.wait_for_log_line(
            &["retention deleted", "reason=\"unreferenced\""],
            LOG_TIMEOUT,
        )?;
        ensure!(line.contains(&format!("files={tries}")), "{line}");
        let deleted = metric(
            &gw,
            "sshgw_retention_deleted_files_total{reason=\"unreferenced\"}",
        )?;
        ensure!(
            deleted == tries as f64,
            "deleted {deleted} files, want {tries}"
        );
        ensure!(
            metric(
                &gw,
                "sshgw_retention_deleted_sessions_total{reason=\"size\"}"
            )? == 0.0,
            "no session may go for size"
        );
        gw.stop()?;
        Ok(())
    });
}

/// `sshgw status --json`'s `session_log`, waited for (bounded) until `state` is `want`.
fn wait_log_state(gw: &Gateway<'_>, want: &str, context: &str) -> Result<Value> {
    let mut last = Value::Null;
    poll_until(
        &format!("sshgw status to report the session log {want}"),
        LOG_TIMEOUT,
        POLL,
        || {
            last = gw.status_json()?;
            Ok((str_field(&last["session_log"], "state") == Some(want))
                .then(|| last["session_log"].clone()))
        },
    )
    .with_context(|| format!("last status: {last:#}; {context}"))
}

/// 2. F12: the session log's file system fills up. A connection is then refused with a
///    message (under the default `on_log_failure = "refuse"`) instead of running with no
///    record, `sshgw status` shows the failure, and once there is room again new sessions
///    work and the held records (the refusal included) are in the log.
#[test]
fn a_full_session_log_refuses_new_sessions_until_it_can_write() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let tmpfs = Tmpfs::mount_keeping(&lab.sshgw_state_dir()?, "1m")?;
        let mut gw = lab.gateway_with(GatewayConfig::default())?;
        gw.start()?;
        let out = to_audited(lab).run("echo before")?;
        ensure!(out.success() && out.stdout == "before\n", "{out:?}");
        let before = next_closed_session(&gw, &[])?;

        let filler = tmpfs.fill()?;
        // In flight as the log fails: ended with the message, or done; either way its record
        // is written once the log recovers (below).
        let during = to_audited(lab).run("echo during")?;
        let failing = wait_log_state(
            &gw,
            "failing",
            &format!("ssh during the failure: {during:?}"),
        )?;
        ensure!(
            str_field(&failing, "error").is_some_and(|e| e.contains("full"))
                && str_field(&failing, "on_failure") == Some("refuse"),
            "{failing:#}"
        );
        let human = gw.cli(&["status"])?;
        ensure!(
            human.stdout.contains("session log: FAILING since")
                && human.stdout.contains("new sessions are refused"),
            "sshgw status: {}",
            human.stdout
        );

        let refused = to_audited(lab).run("echo should-not-run")?;
        ensure!(
            refused.code() == Some(255)
                && refused.stderr.contains(LOG_REFUSED)
                && refused.stdout.is_empty(),
            "a new session while the log cannot be written must be refused: {refused:?}"
        );
        ensure!(
            metric(&gw, "sshgw_session_log_healthy")? == 0.0,
            "healthy gauge"
        );
        ensure!(
            metric(&gw, "sshgw_session_log_write_failures_total")? >= 1.0,
            "failure counter"
        );

        fs::remove_file(&filler)?;
        wait_log_state(&gw, "ok", "after freeing the space")?;
        let out = to_audited(lab).run("echo after")?;
        ensure!(
            out.success() && out.stdout == "after\n",
            "after recovery: {out:?}"
        );
        // Four records, none lost: before, during, the refusal and after.
        let all = gw.wait_for_session(&[], LOG_TIMEOUT, "four closed sessions", |_| {
            gw.sessions(&[])
                .is_ok_and(|all| all.len() == 4 && all.iter().all(|s| !s["ended_at"].is_null()))
        });
        let sessions = gw.sessions(&[])?;
        all.with_context(|| format!("sessions: {sessions:#?}"))?;
        ensure!(
            sessions
                .iter()
                .any(|s| str_field(s, "id") == Some(before.as_str())),
            "{sessions:#?}"
        );
        ensure!(
            sessions.iter().any(|s| {
                str_field(s, "close_reason").is_some_and(|r| r.starts_with(LOG_REFUSED))
            }),
            "the refusal must be in the log: {sessions:#?}"
        );
        let log = gw.status_json()?["session_log"].clone();
        ensure!(
            log["lost"] == 0 && log["queued"] == 0,
            "no record may be lost: {log:#}"
        );
        gw.stop()?;
        drop(tmpfs);
        Ok(())
    });
}

/// 3. F14: one connection runs more programs than a live record keeps channels (OpenSSH
///    multiplexing, one after the other). The live record stays capped; `sessions show`
///    lists every channel, from the log.
#[test]
fn many_channels_keep_the_live_record_capped() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(GatewayConfig::default())?;
        gw.start()?;
        let control = lab.dir().join("cm.sock");
        let (master, mux) = to_audited(lab).control_master(&control)?;
        let total = LIVE_CHANNELS + 5;
        for i in 0..total {
            let out = mux().run(&format!("echo channel-{i}"))?;
            ensure!(
                out.success() && out.stdout == format!("channel-{i}\n"),
                "program {i}: {out:?}"
            );
        }
        let live = gw.sessions(&["--active"])?;
        ensure!(live.len() == 1, "one live session: {live:#?}");
        let id = str_field(&live[0], "id").context("no id")?.to_owned();
        let kept = live[0]["channels"].as_array().map_or(0, Vec::len);
        ensure!(
            kept == LIVE_CHANNELS,
            "the live record keeps {LIVE_CHANNELS} channels, not {kept}"
        );
        let shown = gw.session(&id)?;
        let commands: Vec<&str> = shown["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| str_field(c, "command"))
            .collect();
        ensure!(
            commands.len() == total
                && (0..total).all(|i| commands.contains(&format!("echo channel-{i}").as_str())),
            "sessions show must list all {total} programs: {commands:?}"
        );
        master.terminate(MASTER_STOP)?;
        gw.wait_session_closed(&id, LOG_TIMEOUT)?;
        gw.stop()?;
        Ok(())
    });
}
