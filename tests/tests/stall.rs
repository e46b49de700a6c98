//! The relay never stalls: bulk traffic in both directions at once, on one or many channels
//! of a connection, with a slow reader, through a port forward, over SFTP, and across
//! rekeying, with one core kept busy. Every transfer is compared by sha256 at both ends and
//! watched by a no-progress watchdog ([`sshgw_tests::stress`]); nothing here is timed.
//!
//! Needs root, the sshgw binary, OpenSSH client and server, sftp.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sshgw_tests::files;
use sshgw_tests::recording::{
    RecordingKey, closed_recorded_channel, recorded_policies, recording_toml,
};
use sshgw_tests::stress::{BusyCore, wait_with_progress};
use sshgw_tests::{Family, Gateway, GatewayConfig, Lab, Ssh, Sshd, SshdConfig, lab_test};

const V4: Family = Family::V4;
/// The size of each bulk transfer, each way.
const BULK: u64 = 256 * 1024 * 1024;
/// Bounds one sha256sum or random-file write (never the transfers: the watchdog does that).
const FILE_TIMEOUT: Duration = Duration::from_secs(300);
/// How many times the both-ways transfer repeats.
const ROUNDS: usize = 10;

/// `ssh` from the enrolled device to the audited server, as the lab user, with no deadline of
/// its own (the watchdog decides).
fn relayed(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.audited())
        .bind(V4.enrolled())
        .user("jdoe")
        .timeout(Duration::from_secs(24 * 3600))
}

fn start<'a>(lab: &'a Lab, sshd: SshdConfig, gw: GatewayConfig) -> Result<(Sshd, Gateway<'a>)> {
    let sshd = lab.start_sshd_with(sshd)?;
    let mut gateway = lab.gateway_with(gw)?;
    gateway.start()?;
    Ok((sshd, gateway))
}

/// A gateway config that records every session (the key pair is returned for verify).
fn recorded(lab: &Lab) -> Result<(GatewayConfig, RecordingKey)> {
    let key = RecordingKey::generate(lab, "rec")?;
    let mut cfg = GatewayConfig::default().policies(recorded_policies());
    cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
    Ok((cfg, key))
}

/// A random file of [`BULK`] bytes and its digest.
fn bulk_input(lab: &Lab) -> Result<(PathBuf, String)> {
    let input = lab.dir().join("bulk.bin");
    files::random_file(lab, &input, BULK, FILE_TIMEOUT)?;
    let digest = files::sha256(lab, &input, FILE_TIMEOUT)?;
    Ok((input, digest))
}

/// `ssh host cat < input > output` through the relay: both directions at full speed at once.
/// Returns ssh's stderr.
fn cat_both_ways(
    lab: &Lab,
    gw: &Gateway<'_>,
    ssh: Ssh<'_>,
    input: &Path,
    digest: &str,
    label: &str,
) -> Result<String> {
    let output = lab.dir().join(format!("{label}.out"));
    let proc = ssh.stdin_file(input).stdout_file(&output).spawn("cat")?;
    wait_with_progress(lab, Some(gw), label, &[&proc], &[&output])?;
    let status = proc.try_status()?.expect("exited");
    ensure!(
        status.success(),
        "{label}: ssh {status:?}: {}",
        proc.log_text()
    );
    let got = files::sha256(lab, &output, FILE_TIMEOUT)?;
    ensure!(got == digest, "{label}: echoed {got}, sent {digest}");
    std::fs::remove_file(&output)?;
    Ok(proc.stderr_text())
}

/// Ten rounds of 256 MiB both ways through `ssh host cat`, with a core kept busy. With a
/// recording key, every round's channel is recorded and the first round's recording must
/// verify as complete; each is removed once checked (they are 512 MiB).
fn cat_rounds(lab: &Lab, cfg: GatewayConfig, key: Option<&RecordingKey>) -> Result<()> {
    let (_sshd, gw) = start(lab, SshdConfig::gateway(), cfg)?;
    let (input, digest) = bulk_input(lab)?;
    let _busy = BusyCore::start(lab)?;
    for round in 0..ROUNDS {
        let label = format!("cat round {round}");
        cat_both_ways(lab, &gw, relayed(lab), &input, &digest, &label)?;
        if let Some(key) = key {
            check_recording(lab, &gw, key, round == 0, &label)?;
        }
    }
    Ok(())
}

/// The newest session's recording exists (and verifies when `verify`); then it is removed.
fn check_recording(
    lab: &Lab,
    gw: &Gateway<'_>,
    key: &RecordingKey,
    verify: bool,
    label: &str,
) -> Result<()> {
    let sessions = gw.sessions(&[])?;
    let id = sessions
        .iter()
        .filter_map(|s| s["id"].as_str())
        .max()
        .ok_or_else(|| anyhow::anyhow!("{label}: no session in the log"))?;
    let (_, _, file) = closed_recorded_channel(gw, id, Duration::from_secs(60))?;
    if verify {
        let (file, private) = (file.to_string_lossy(), key.private.to_string_lossy());
        let out = sshgw_tests::recording::recording_cli_within(
            lab,
            &["verify", "-i", &file, "-k", &private],
            FILE_TIMEOUT,
        )?;
        ensure!(out.success(), "{label}: recording does not verify: {out:?}");
    }
    std::fs::remove_file(&*file)?;
    Ok(())
}

#[test]
fn cat_both_ways_busy_core() {
    lab_test(|lab| cat_rounds(lab, GatewayConfig::default(), None));
}

#[test]
fn cat_both_ways_busy_core_recorded() {
    lab_test(|lab| {
        let (cfg, key) = recorded(lab)?;
        cat_rounds(lab, cfg, Some(&key))
    });
}

/// A ControlMaster connection from the device, with `options`; returns the master and a
/// maker of `ssh` commands that run as its channels.
fn master<'a>(
    lab: &'a Lab,
    options: &[&str],
) -> Result<(sshgw_tests::Proc, impl Fn() -> Ssh<'a> + use<'a>)> {
    let mut ssh = relayed(lab);
    for opt in options {
        ssh = ssh.option(opt);
    }
    ssh.control_master(&lab.dir().join("cm.sock"))
}

/// Four channels of one connection, each echoing 256 MiB both ways at once.
#[test]
fn four_channels_on_one_connection() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let (input, digest) = bulk_input(lab)?;
        let _busy = BusyCore::start(lab)?;
        let (_master, join) = master(lab, &[])?;
        let outputs: Vec<PathBuf> = (0..4)
            .map(|i| lab.dir().join(format!("channel-{i}.out")))
            .collect();
        let procs = outputs
            .iter()
            .map(|out| join().stdin_file(&input).stdout_file(out).spawn("cat"))
            .collect::<Result<Vec<_>>>()?;
        let watched: Vec<&Path> = outputs.iter().map(PathBuf::as_path).collect();
        let running: Vec<&sshgw_tests::Proc> = procs.iter().collect();
        wait_with_progress(lab, Some(&gw), "four channels", &running, &watched)?;
        for (proc, out) in procs.iter().zip(&outputs) {
            let status = proc.try_status()?.expect("exited");
            ensure!(
                status.success(),
                "channel {out:?}: {status:?}: {}",
                proc.log_text()
            );
            let got = files::sha256(lab, out, FILE_TIMEOUT)?;
            ensure!(got == digest, "{out:?}: echoed {got}, sent {digest}");
        }
        let sessions = gw.sessions(&[])?;
        ensure!(
            sessions.len() == 1,
            "the four channels share one connection: {sessions:?}"
        );
        Ok(())
    });
}

/// The largest window-bounded amount the relay may hold at once for `lanes` lanes (the
/// window sshgw advertises, per channel and direction: gateway/src/relay/mod.rs).
fn window_bound(lanes: u64) -> f64 {
    (lanes * 4 * 1024 * 1024) as f64
}

/// One channel's reader stops for a while; another channel of the same connection keeps
/// streaming, keepalives keep flowing on both legs (either leg's peer drops the connection
/// after three unanswered ones), and the relay holds no more than the windows allow.
#[test]
fn slow_reader_does_not_stall_its_connection() {
    lab_test(|lab| {
        let sshd = SshdConfig::gateway()
            .line("ClientAliveInterval 1")
            .line("ClientAliveCountMax 3");
        let cfg = GatewayConfig::default().ssh("keepalive_secs = 1");
        let (_sshd, gw) = start(lab, sshd, cfg)?;
        let _busy = BusyCore::start(lab)?;
        let (master, join) = master(lab, &["ServerAliveInterval=1", "ServerAliveCountMax=3"])?;

        // Channel A: the server streams, and nobody reads for now.
        let home = lab.user_home("jdoe");
        let mut a = join().command("head -c 268435456 /dev/urandom | tee slow.bin");
        let (a_proc, _a_in, mut a_out) = lab.procs().spawn_piped("slow reader", &mut a)?;
        let mut first = vec![0u8; 1024 * 1024];
        std::io::Read::read_exact(&mut a_out, &mut first)?;

        // Channel B streams both ways to completion meanwhile (and for at least 10 s).
        let paused = std::time::Instant::now();
        let b_input = lab.dir().join("b.bin");
        files::random_file(lab, &b_input, 64 * 1024 * 1024, FILE_TIMEOUT)?;
        let b_digest = files::sha256(lab, &b_input, FILE_TIMEOUT)?;
        cat_both_ways(lab, &gw, join(), &b_input, &b_digest, "channel B")?;
        let held = sshgw_tests::stress::metric(&gw, "sshgw_relay_queued_bytes")?;
        ensure!(
            held <= window_bound(4),
            "the relay holds {held} bytes, more than the windows of its lanes allow"
        );
        if let Some(rest) = Duration::from_secs(10).checked_sub(paused.elapsed()) {
            std::thread::sleep(rest); // the scenario: a reader that stays away for 10 s
        }
        ensure!(
            a_proc.is_running(),
            "channel A ended while paused: {}",
            a_proc.log_text()
        );

        // Channel A resumes and gets every byte.
        let a_file = lab.dir().join("slow.out");
        let mut sink = std::fs::File::create(&a_file)?;
        std::io::Write::write_all(&mut sink, &first)?;
        let copy = std::thread::spawn(move || std::io::copy(&mut a_out, &mut sink));
        wait_with_progress(
            lab,
            Some(&gw),
            "channel A after the pause",
            &[&a_proc],
            &[&a_file],
        )?;
        copy.join().expect("copy thread")?;
        let status = a_proc.try_status()?.expect("exited");
        ensure!(
            status.success(),
            "channel A: {status:?}: {}",
            a_proc.log_text()
        );
        files::same_file(
            lab,
            &home.join("slow.bin"),
            &a_file,
            "channel A",
            FILE_TIMEOUT,
        )?;
        ensure!(
            master.is_running(),
            "the master connection died: {}",
            master.log_text()
        );
        Ok(())
    });
}

/// `-L` forwarding (allowed by the policy) with bulk both ways through the forward at once.
#[test]
fn port_forward_bulk_both_ways() {
    lab_test(|lab| {
        const ECHO: &str = "127.0.0.1:7777";
        const LOCAL: &str = "127.0.0.1:17777";
        let cfg = GatewayConfig::default().ssh("port_forwarding = true");
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), cfg)?;
        let echo = env!("CARGO_BIN_EXE_sshgw-echo");
        lab.procs().spawn(
            "echo server",
            lab.srv.exec_command(echo).args(["serve", ECHO]),
        )?;
        let (input, digest) = bulk_input(lab)?;
        let _busy = BusyCore::start(lab)?;
        let _forward = relayed(lab)
            .option("ExitOnForwardFailure=yes")
            .arg("-N")
            .arg("-L")
            .arg(&format!("{LOCAL}:{ECHO}"))
            .spawn("")?;
        let output = lab.dir().join("forward.out");
        let client = lab.procs().spawn(
            "echo client",
            lab.dev.exec_command(echo).args([
                "send",
                LOCAL,
                &input.to_string_lossy(),
                &output.to_string_lossy(),
            ]),
        )?;
        wait_with_progress(lab, Some(&gw), "-L bulk", &[&client], &[&output])?;
        let status = client.try_status()?.expect("exited");
        ensure!(
            status.success(),
            "echo client {status:?}: {}",
            client.log_text()
        );
        let got = files::sha256(lab, &output, FILE_TIMEOUT)?;
        ensure!(
            got == digest,
            "through the forward: echoed {got}, sent {digest}"
        );
        Ok(())
    });
}

/// sftp `put` and `get` of 256 MiB at the same time on one connection.
#[test]
fn sftp_put_and_get_at_once() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let (input, digest) = bulk_input(lab)?;
        let home = lab.user_home("jdoe");
        let server_copy = home.join("down.bin");
        std::fs::copy(&input, &server_copy)?;
        let jdoe = std::fs::metadata(&home)?;
        std::os::unix::fs::chown(
            &server_copy,
            Some(std::os::unix::fs::MetadataExt::uid(&jdoe)),
            None,
        )?;
        let _busy = BusyCore::start(lab)?;
        let (_master, join) = master(lab, &[])?;
        let fetched = lab.dir().join("fetched.bin");
        let sftp = |batch: String, name: &str| -> Result<sshgw_tests::Proc> {
            let file = lab.dir().join(name);
            std::fs::write(&file, batch)?;
            let ssh = join();
            let mut cmd = ssh.tool_command("sftp", "-P");
            cmd.arg("-b").arg(&file).arg(ssh.destination());
            lab.procs().spawn(name, &mut cmd)
        };
        let put = sftp(format!("put {} up.bin\n", input.display()), "sftp-put")?;
        let get = sftp(format!("get down.bin {}\n", fetched.display()), "sftp-get")?;
        let uploaded = home.join("up.bin");
        wait_with_progress(
            lab,
            Some(&gw),
            "sftp put+get",
            &[&put, &get],
            &[&uploaded, &fetched],
        )?;
        for proc in [&put, &get] {
            let status = proc.try_status()?.expect("exited");
            ensure!(
                status.success(),
                "{}: {status:?}: {}",
                proc.name(),
                proc.log_text()
            );
        }
        for file in [&uploaded, &fetched] {
            let got = files::sha256(lab, file, FILE_TIMEOUT)?;
            ensure!(got == digest, "{file:?}: {got}, sent {digest}");
        }
        Ok(())
    });
}

/// Both legs rekey every 16 MiB while 256 MiB go both ways.
#[test]
fn rekeying_mid_transfer() {
    lab_test(|lab| {
        // sshd takes the first value of a keyword: DEBUG1 replaces the base's LogLevel.
        let base = sshgw_tests::sshd::BASE_LINES
            .iter()
            .map(|l| l.replace("LogLevel VERBOSE", "LogLevel DEBUG1"))
            .collect();
        let sshd = SshdConfig::gateway()
            .replace_base(base)
            .line("RekeyLimit 16M");
        let (sshd, gw) = start(lab, sshd, GatewayConfig::default())?;
        let (input, digest) = bulk_input(lab)?;
        let _busy = BusyCore::start(lab)?;
        let ssh = relayed(lab).option("RekeyLimit=16M").arg("-v");
        let client_log = cat_both_ways(lab, &gw, ssh, &input, &digest, "rekeying")?;
        // 256 MiB each way at 16 MiB per key: many key exchanges on each leg.
        for (leg, log) in [("device", client_log), ("server", sshd.log())] {
            let kexinits = log.matches("SSH2_MSG_KEXINIT sent").count();
            ensure!(
                kexinits >= 8,
                "the {leg} leg should have rekeyed every 16 MiB: {kexinits} KEXINITs sent"
            );
        }
        Ok(())
    });
}

/// A client that stops reading and then dies: the relay lets go of everything it held for
/// it (a writer waiting for the window of a channel that no longer exists would hold its
/// lane, and the data in it, forever).
#[test]
fn dead_reader_releases_its_buffers() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let (proc, _stdin, _stdout) = lab.procs().spawn_piped(
            "reader that stops",
            &mut relayed(lab).command("head -c 268435456 /dev/zero"),
        )?;
        // Nobody reads ssh's stdout: once the pipe and ssh's buffers are full, ssh stops
        // reading its socket, and the relay holds what the server sent meanwhile.
        let queued = || sshgw_tests::stress::metric(&gw, "sshgw_relay_queued_bytes");
        sshgw_tests::wait::poll_until(
            "the relay to hold data for the stalled reader",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || Ok((queued()? > 0.0).then_some(())),
        )?;
        proc.kill()?;
        sshgw_tests::wait::poll_until(
            "the relay to release what it held for the dead reader",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || Ok((queued()? == 0.0).then_some(())),
        )
        .with_context(|| sshgw_tests::stress::stall_report(lab, Some(&gw)))?;
        Ok(())
    });
}
