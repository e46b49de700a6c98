//! The shipped unit under a real systemd: Debian 12 (systemd 252) booted with
//! `systemd-nspawn -b` as the lab's router (its network namespace `<lab>-rtr`), sshgw
//! installed with `xtask/deploy/install.sh` exactly as on a router, and the unit unchanged.
//!
//! It covers `systemctl start`, `status`, `reload`, `stop` with a live session (drained,
//! then ended with the shutdown message), the daemon's limits, capabilities and journal,
//! an ssh from the lab's device namespace that is intercepted and recorded, fail-closed while
//! stopped, and a SIGKILL after which systemd restarts the daemon and it takes over the
//! pinned link. It never skips: without root, `systemd-nspawn` or `debootstrap` it fails.
//!
//! The first run builds the Debian rootfs with debootstrap (a few minutes, cached under
//! `target/sshgw-test-cache/`; see `sshgw_tests::rootfs`).
//!
//! Run: `cargo xtask test --netns-only -- systemd_real`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sshgw_tests::doctor::verdict;
use sshgw_tests::gateway::{default_devices, sshgw_bin, str_field};
use sshgw_tests::nspawn::{Container, EXEC_TIMEOUT};
use sshgw_tests::recording::{RecordingKey, recorded_policies, verify};
use sshgw_tests::wait::poll_until;
use sshgw_tests::{Family, Lab, SshdConfig, lab_test, rootfs};

const UNIT: &str = "sshgw.service";
/// Where the test binds the binary, the unit and the deploy files inside the container.
const STAGE: &str = "/opt/sshgw-test";
/// `systemctl stop` waits for the drain (`drain_timeout_secs`, 30 s by default).
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on systemd's restart after a crash (`RestartSec=1s`) and the takeover.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
/// Journal text that would mean the sandbox denied the daemon something.
const DENIALS: &[&str] = &[
    "Operation not permitted",
    "EPERM",
    "SIGSYS",
    "Bad system call",
    "Permission denied",
    "Read-only file system",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shipped_unit() -> Result<Vec<u8>> {
    let path = workspace().join("systemd/sshgw.service");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The router as a test sees it: the container and the lab around it.
struct Router<'a> {
    lab: &'a Lab,
    c: Container,
}

impl Router<'_> {
    fn sh(&self, args: &[&str]) -> Result<String> {
        self.c.run_ok(args, EXEC_TIMEOUT)
    }

    fn sshgw_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["sshgw"];
        all.extend_from_slice(args);
        let out = self.sh(&all)?;
        serde_json::from_str(&out).with_context(|| format!("sshgw {args:?} printed {out:?}"))
    }

    fn prop(&self, property: &str) -> Result<String> {
        self.c.unit_property(UNIT, property)
    }

    fn journal(&self) -> String {
        self.c.journal(Some(UNIT))
    }

    /// Waits until the unit's journal holds `needle` more than `before` times.
    fn wait_journal(&self, needle: &str, before: usize, timeout: Duration) -> Result<()> {
        poll_until(
            &format!("the journal to log {needle:?}"),
            timeout,
            Duration::from_millis(200),
            || Ok((self.journal().matches(needle).count() > before).then_some(())),
        )
    }

    /// The link id of `r0` in `sshgw status --json` (from the daemon or the pins).
    fn link_id(&self) -> Result<u64> {
        let st = self.sshgw_json(&["status", "--json"])?;
        st["interfaces"]
            .as_array()
            .and_then(|ifs| ifs.iter().find(|i| i["name"] == "r0"))
            .and_then(|i| i["link_id"].as_u64())
            .with_context(|| format!("r0 is not attached: {st:#}"))
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let st = self.sshgw_json(&["status", "--json"])?;
        Ok(st["counters"][name].as_u64().unwrap_or(0))
    }
}

#[test]
fn rootfs_mirror_comes_from_the_apt_sources() {
    let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
                  Components: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n\
                  Suites: bookworm-security\n";
    assert_eq!(
        rootfs::mirror_in(deb822, "bookworm").as_deref(),
        Some("http://mirror.invalid/debian")
    );
    let list = "# comment\ndeb [arch=amd64] http://m.invalid/debian bookworm main\n";
    assert_eq!(
        rootfs::mirror_in(list, "bookworm").as_deref(),
        Some("http://m.invalid/debian")
    );
    assert_eq!(rootfs::mirror_in(list, "trixie"), None);
}

/// The whole field path in one booted router (booting is the expensive part).
#[test]
fn shipped_unit_runs_under_a_real_systemd() {
    lab_test(|lab| {
        let ws = workspace();
        let binds = [
            (sshgw_bin()?, "/opt/sshgw-test/sshgw"),
            (ws.join("systemd"), "/opt/sshgw-test/systemd"),
            (ws.join("xtask/deploy"), "/opt/sshgw-test/deploy"),
        ];
        let c = Container::boot(lab, &lab.rtr, &binds)?;
        let router = Router { lab, c };
        field_path(&router)
            .with_context(|| format!("--- journal of {UNIT} ---\n{}", router.journal().trim_end()))
    });
}

fn field_path(r: &Router<'_>) -> Result<()> {
    install(r)?;
    start(r)?;
    let link = r.link_id()?;
    check_process(r)?;
    doctor(r)?;
    intercept_and_record(r)?;
    reload(r)?;
    stop_with_session(r)?;
    fail_closed(r)?;
    crash_and_takeover(r, link)?;
    check_journal(r)?;
    r.sh(&["systemctl", "stop", UNIT])?;
    ensure!(r.prop("Result")? == "success", "the last stop failed");
    Ok(())
}

/// install.sh as `cargo xtask deploy` runs it on a router; the unit lands byte for byte.
fn install(r: &Router<'_>) -> Result<()> {
    let out = r.sh(&[
        "sh",
        &format!("{STAGE}/deploy/install.sh"),
        "--binary",
        &format!("{STAGE}/sshgw"),
        "--unit",
        &format!("{STAGE}/systemd/sshgw.service"),
        "--config",
        &format!("{STAGE}/deploy/sshgw.toml"),
    ])?;
    eprintln!("install.sh:\n{out}");
    r.sh(&[
        "cmp",
        "/etc/systemd/system/sshgw.service",
        &format!("{STAGE}/systemd/sshgw.service"),
    ])?;
    let installed = std::fs::read(r.c.host_path("/etc/systemd/system/sshgw.service"))?;
    ensure!(
        installed == shipped_unit()?,
        "the installed unit differs from systemd/sshgw.service"
    );
    ensure!(
        r.sh(&["systemctl", "is-enabled", UNIT])?.trim() == "enabled",
        "install.sh should enable the unit"
    );
    // The operator's one required edit: the device-facing interface.
    r.sh(&[
        "sed",
        "-i",
        r#"s/^interfaces = \["wg0"\]$/interfaces = ["r0"]/"#,
        "/etc/sshgw/sshgw.toml",
    ])?;
    r.sh(&[
        "grep",
        "-qx",
        r#"interfaces = \["r0"\]"#,
        "/etc/sshgw/sshgw.toml",
    ])
    .context("the shipped config no longer has the interfaces = [\"wg0\"] line")?;
    Ok(())
}

/// `systemctl start` returns once the daemon is ready; `status` and `sshgw status` agree.
fn start(r: &Router<'_>) -> Result<()> {
    let started = r.c.run(&["systemctl", "start", UNIT], STOP_TIMEOUT)?;
    if !started.success() {
        bail!(
            "systemctl start {UNIT} failed ({}): {}",
            started.stderr.trim(),
            r.c.run(&["systemctl", "status", "--no-pager", UNIT], EXEC_TIMEOUT)?
                .stdout
        );
    }
    ensure!(r.prop("ActiveState")? == "active", "not active");
    ensure!(r.prop("SubState")? == "running", "not running");
    ensure!(r.prop("StatusText")? == "intercepting", "status text");
    let status = r.sh(&["systemctl", "status", "--no-pager", UNIT])?;
    ensure!(
        status.contains("active (running)"),
        "systemctl status: {status}"
    );
    let human = r.sh(&["sshgw", "status"])?;
    ensure!(human.contains("running"), "sshgw status: {human}");
    Ok(())
}

/// Capability names of the unit's `CapabilityBoundingSet=` and their numbers.
fn capability_mask(unit: &str) -> Result<u64> {
    const CAPS: &[(&str, u32)] = &[
        ("CAP_DAC_OVERRIDE", 1),
        ("CAP_DAC_READ_SEARCH", 2),
        ("CAP_NET_BIND_SERVICE", 10),
        ("CAP_NET_ADMIN", 12),
        ("CAP_NET_RAW", 13),
        ("CAP_IPC_LOCK", 14),
        ("CAP_SYS_ADMIN", 21),
        ("CAP_SYS_RESOURCE", 24),
        ("CAP_PERFMON", 38),
        ("CAP_BPF", 39),
    ];
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit has no CapabilityBoundingSet=")?;
    line.split_whitespace().try_fold(0u64, |mask, name| {
        let (_, bit) = CAPS
            .iter()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("unknown capability {name} in the unit"))?;
        Ok(mask | 1 << bit)
    })
}

/// The running daemon's open-file limit and capabilities are what the unit sets.
fn check_process(r: &Router<'_>) -> Result<()> {
    let pid = r.prop("MainPID")?;
    let limits = r.sh(&["cat", &format!("/proc/{pid}/limits")])?;
    let nofile: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' in /proc/PID/limits")?
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    eprintln!("daemon NOFILE (soft, hard): {nofile:?}");
    ensure!(
        nofile.len() == 2 && nofile[0] == nofile[1] && nofile[0] > 1024,
        "NOFILE should be raised, soft == hard: {nofile:?}\n{limits}"
    );
    ensure!(
        r.journal().contains("open-file limit (RLIMIT_NOFILE)"),
        "the daemon should log its open-file limits"
    );
    let status = r.sh(&["cat", &format!("/proc/{pid}/status")])?;
    let field = |name: &str| -> Result<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let want = capability_mask(&String::from_utf8(shipped_unit()?)?)?;
    for name in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        let got = u64::from_str_radix(&field(name)?, 16)?;
        ensure!(
            got == want,
            "{name} is {got:#x}, the unit's set is {want:#x}"
        );
    }
    ensure!(field("NoNewPrivs")? == "1", "NoNewPrivs");
    ensure!(
        field("Seccomp")? == "2",
        "the system call filter is not active"
    );
    let uid = field("Uid")?;
    ensure!(
        !uid.split_whitespace().any(|u| u == "0"),
        "the daemon runs as root: Uid {uid}"
    );
    Ok(())
}

/// `sshgw doctor` on the real router passes; a drop-in that turns ProtectKernelTunables
/// back on is reported (exit 5) before anyone restarts into it.
fn doctor(r: &Router<'_>) -> Result<()> {
    let report = r.sshgw_json(&["doctor", "--json"])?;
    eprintln!("doctor on the router: {report:#}");
    for name in [
        "daemon",
        "bpffs",
        "capabilities",
        "open files",
        "unit drop-ins",
    ] {
        ensure!(verdict(&report, name)? == "ok", "{name}: {report:#}");
    }
    let dropin = "/etc/systemd/system/sshgw.service.d/50-tunables.conf";
    r.c.write_file(dropin, "[Service]\nProtectKernelTunables=yes\n")?;
    r.sh(&["systemctl", "daemon-reload"])?;
    let out = r.c.run(&["sshgw", "doctor", "--json"], EXEC_TIMEOUT)?;
    let report: Value = serde_json::from_str(&out.stdout)?;
    ensure!(
        out.status.code() == Some(5) && verdict(&report, "unit drop-ins")? == "fail",
        "doctor should fail on the drop-in: {report:#}"
    );
    r.sh(&["rm", dropin])?;
    r.sh(&["systemctl", "daemon-reload"])?;
    Ok(())
}

/// An ssh from the lab's device namespace is intercepted (the server sees the router's
/// address) and recorded; the recording verifies with the operator's key.
fn intercept_and_record(r: &Router<'_>) -> Result<()> {
    let lab = r.lab;
    let ca = lab.dir().join("router-user-ca.pub");
    std::fs::write(&ca, r.sh(&["sshgw", "ca", "user-key"])?)?;
    let known_hosts = lab.dir().join("router-known-hosts");
    std::fs::write(&known_hosts, r.sh(&["sshgw", "ca", "known-hosts"])?)?;
    let _sshd = lab.start_sshd_with(
        SshdConfig::default()
            .line(&format!("TrustedUserCAKeys {}", ca.display()))
            .principals("root", &["jdoe"]),
    )?;
    let key = RecordingKey::generate(lab, "ops")?;
    r.c.write_file("/etc/sshgw/ops.pub", &std::fs::read_to_string(&key.public)?)?;
    r.sh(&["sshgw", "recording", "set-key", "/etc/sshgw/ops.pub"])?;
    r.c.write_file("/root/devices.json", &default_devices().to_string())?;
    r.c.write_file("/root/policies.json", &recorded_policies().to_string())?;
    r.sh(&["sshgw", "devices", "push", "/root/devices.json"])?;
    r.sh(&["sshgw", "policy", "push", "/root/policies.json"])?;

    let conn = strict_ssh(r)
        .ssh_connection()
        .context("ssh from the device through the router")?;
    ensure!(
        conn.client == Family::V4.router_wan(),
        "not intercepted: the server saw {conn:?}"
    );
    let session = closed_session(r)?;
    let path = session["channels"][0]["recording"]
        .as_str()
        .with_context(|| format!("no recording in {session:#}"))?;
    let v = verify(lab, &r.c.host_path(path), &key.private)?;
    ensure!(
        v.success() && v.stdout.contains("complete"),
        "sshgw recording verify {path}: {v:?}"
    );
    Ok(())
}

/// The lab's ssh to the audited server, trusting only the router's host CA.
fn strict_ssh<'a>(r: &Router<'a>) -> sshgw_tests::Ssh<'a> {
    let kh = r.lab.dir().join("router-known-hosts");
    r.lab
        .ssh(Family::V4.audited())
        .option("StrictHostKeyChecking=yes")
        .option(&format!("UserKnownHostsFile={}", kh.display()))
}

/// The newest audited session, once it is closed in the log.
fn closed_session(r: &Router<'_>) -> Result<Value> {
    poll_until(
        "the session to be closed in the log",
        SESSION_TIMEOUT,
        Duration::from_millis(200),
        || {
            let list = r.sshgw_json(&["sessions", "--json"])?;
            let Some(id) = list["sessions"]
                .as_array()
                .and_then(|s| {
                    s.iter()
                        .find(|s| str_field(s, "decision") == Some("audit_ssh"))
                })
                .and_then(|s| str_field(s, "id").map(str::to_owned))
            else {
                return Ok(None);
            };
            let s = r.sshgw_json(&["sessions", "show", &id, "--json"])?;
            Ok((!s["close_reason"].is_null()).then_some(s))
        },
    )
}

/// `systemctl reload`: the same process re-reads its files and says so.
fn reload(r: &Router<'_>) -> Result<()> {
    let pid = r.prop("MainPID")?;
    let before = r.journal().matches("\"message\":\"reloaded\"").count();
    r.sh(&["systemctl", "reload", UNIT])?;
    r.wait_journal("\"message\":\"reloaded\"", before, SESSION_TIMEOUT)?;
    ensure!(r.prop("MainPID")? == pid, "reload replaced the process");
    ensure!(r.prop("NRestarts")? == "0", "reload restarted the daemon");
    ensure!(
        r.prop("ActiveState")? == "active",
        "not active after reload"
    );
    Ok(())
}

/// `systemctl stop` with a session open: it drains, ends the session with the shutdown
/// message, and the stop succeeds.
fn stop_with_session(r: &Router<'_>) -> Result<()> {
    let mut session = strict_ssh(r).session("cat")?;
    session.roundtrip("sshgw-before-stop", SESSION_TIMEOUT)?;
    r.c.run(&["systemctl", "stop", UNIT], STOP_TIMEOUT)?
        .check("systemctl stop with a live session")?;
    ensure!(r.prop("Result")? == "success", "stop result");
    ensure!(
        r.prop("ActiveState")? == "inactive",
        "still active after stop"
    );
    let proc = session.proc().clone();
    proc.wait_exit(SESSION_TIMEOUT)
        .context("the ssh session should end when sshgw stops")?;
    let stderr = proc.stderr_text();
    ensure!(
        stderr.contains("the gateway is shutting down"),
        "the client should see the shutdown message: {stderr:?}"
    );
    ensure!(
        r.journal()
            .contains("drain timeout: ending the remaining sessions"),
        "the journal should show the drain ending the session"
    );
    Ok(())
}

/// While the unit is stopped the pinned program drops audited SYNs.
fn fail_closed(r: &Router<'_>) -> Result<()> {
    let before = r.counter("dropped_while_down")?;
    let out = strict_ssh(r).connect_timeout(3).run("true")?;
    ensure!(!out.success(), "audited SSH passed while sshgw was stopped");
    let after = r.counter("dropped_while_down")?;
    ensure!(
        after > before,
        "dropped_while_down should count the SYNs: {before} -> {after}"
    );
    Ok(())
}

/// Started again, then SIGKILLed: systemd restarts it and it takes over the pinned link.
fn crash_and_takeover(r: &Router<'_>, link: u64) -> Result<()> {
    let takeover = "took over the pinned datapath link";
    let seen = r.journal().matches(takeover).count();
    r.sh(&["systemctl", "start", UNIT])?;
    r.wait_journal(takeover, seen, SESSION_TIMEOUT)?;
    ensure!(r.link_id()? == link, "a restart should keep the link");
    let pid = r.prop("MainPID")?;
    let restarts: u64 = r.prop("NRestarts")?.parse()?;
    r.sh(&["kill", "-KILL", &pid])?;
    poll_until(
        "systemd to restart sshgw after SIGKILL",
        RESTART_TIMEOUT,
        Duration::from_millis(200),
        || {
            let up = r.prop("SubState")? == "running"
                && r.prop("MainPID")? != pid
                && r.prop("NRestarts")?.parse::<u64>()? > restarts;
            Ok(up.then_some(()))
        },
    )?;
    r.wait_journal(takeover, seen + 1, SESSION_TIMEOUT)?;
    ensure!(
        r.link_id()? == link,
        "the restarted daemon should keep the link"
    );
    let conn = strict_ssh(r).ssh_connection()?;
    ensure!(
        conn.client == Family::V4.router_wan(),
        "not intercepted: {conn:?}"
    );
    Ok(())
}

/// Nothing in the unit's journal says the sandbox denied the daemon something.
fn check_journal(r: &Router<'_>) -> Result<()> {
    let journal = r.journal();
    let denied: Vec<&str> = journal
        .lines()
        .filter(|l| DENIALS.iter().any(|d| l.contains(d)))
        .collect();
    ensure!(
        denied.is_empty(),
        "denials in the journal:\n{}",
        denied.join("\n")
    );
    Ok(())
}
