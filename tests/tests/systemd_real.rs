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
//! The console's unit (`sshgw-console.service`, installed by the same install.sh but not
//! enabled) runs beside it: started once the daemon has recorded a session, it must create
//! its token in the shared state directory, run as sshgw without any capability, answer its
//! API on 127.0.0.1:8080 (401 without the token, the recorded session with it, the daemon
//! live over the control socket), keep serving while the daemon is stopped, crashed and
//! restarted (live sessions then unavailable), and stop cleanly. The HTTP client is the
//! host's curl in the router's network namespace (the container's loopback).
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
const CONSOLE_UNIT: &str = "sshgw-console.service";
/// Where the console listens by default (`sshgw console` without `--listen`).
const CONSOLE_URL: &str = "http://127.0.0.1:8080";
/// The console's readiness line on stdout, in its journal.
const CONSOLE_READY: &str = "console: listening on ";
const CONSOLE_TOKEN: &str = "/var/lib/sshgw/console.token";
/// Host curl (a prerequisite of the console tests), run in the router's network namespace.
const CURL: &str = "/usr/bin/curl";
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
    shipped("sshgw.service")
}

fn shipped(unit: &str) -> Result<Vec<u8>> {
    let path = workspace().join("systemd").join(unit);
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

    fn console_prop(&self, property: &str) -> Result<String> {
        self.c.unit_property(CONSOLE_UNIT, property)
    }

    fn console_journal(&self) -> String {
        self.c.journal(Some(CONSOLE_UNIT))
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

    /// `GET {CONSOLE_URL}{path}` from the router's namespace, with the `Authorization`
    /// header in `auth` (a curl header file) if given: the status and the body.
    fn console_get(&self, path: &str, auth: Option<&Path>) -> Result<(u16, String)> {
        let mut cmd = self.lab.rtr.setns_command(CURL);
        cmd.args(["-sS", "--max-time", "20", "-w", "\\n%{http_code}"]);
        if let Some(file) = auth {
            cmd.arg("-H").arg(format!("@{}", file.display()));
        }
        cmd.arg(format!("{CONSOLE_URL}{path}"));
        let out = self
            .lab
            .procs()
            .run_quiet(&format!("curl {path}"), &mut cmd, EXEC_TIMEOUT)?
            .check(&format!("curl {CONSOLE_URL}{path}"))?;
        let (body, code) = out
            .stdout
            .rsplit_once('\n')
            .with_context(|| format!("curl printed no status: {:?}", out.stdout))?;
        let code = code
            .trim()
            .parse()
            .with_context(|| format!("curl printed the status {code:?}"))?;
        Ok((code, body.to_owned()))
    }

    /// [`Router::console_get`] that must answer 200 with JSON.
    fn console_json(&self, path: &str, auth: &Path) -> Result<Value> {
        let (code, body) = self.console_get(path, Some(auth))?;
        ensure!(code == 200, "GET {path} answered {code}: {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path} returned {body:?}"))
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
        field_path(&router).with_context(|| {
            format!(
                "--- journal of {UNIT} ---\n{}\n--- journal of {CONSOLE_UNIT} ---\n{}",
                router.journal().trim_end(),
                router.console_journal().trim_end()
            )
        })
    });
}

fn field_path(r: &Router<'_>) -> Result<()> {
    install(r)?;
    start(r)?;
    let link = r.link_id()?;
    check_process(r)?;
    doctor(r)?;
    let session = intercept_and_record(r)?;
    let auth = console_start(r, &session)?;
    reload(r)?;
    stop_with_session(r)?;
    fail_closed(r)?;
    console_without_daemon(r, &session, &auth)?;
    crash_and_takeover(r, link)?;
    console_stop(r, &auth)?;
    check_journal(UNIT, &r.journal())?;
    check_journal(CONSOLE_UNIT, &r.console_journal())?;
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
        "--console-unit",
        &format!("{STAGE}/systemd/{CONSOLE_UNIT}"),
    ])?;
    eprintln!("install.sh:\n{out}");
    for unit in [UNIT, CONSOLE_UNIT] {
        let path = format!("/etc/systemd/system/{unit}");
        r.sh(&["cmp", &path, &format!("{STAGE}/systemd/{unit}")])?;
        let installed = std::fs::read(r.c.host_path(&path))?;
        ensure!(
            installed == shipped(unit)?,
            "the installed unit differs from systemd/{unit}"
        );
    }
    ensure!(
        r.sh(&["systemctl", "is-enabled", UNIT])?.trim() == "enabled",
        "install.sh should enable the unit"
    );
    // The console's unit is installed, not enabled (`is-enabled` exits 1 for that).
    let console =
        r.c.run(&["systemctl", "is-enabled", CONSOLE_UNIT], EXEC_TIMEOUT)?;
    ensure!(
        console.stdout.trim() == "disabled",
        "install.sh should leave {CONSOLE_UNIT} disabled: {:?} {:?}",
        console.stdout,
        console.stderr
    );
    ensure!(
        out.contains("systemctl enable --now sshgw-console"),
        "install.sh's next steps should say how to enable the console"
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
/// address) and recorded; the recording verifies with the operator's key. Returns the
/// session's id.
fn intercept_and_record(r: &Router<'_>) -> Result<String> {
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
    str_field(&session, "id")
        .map(str::to_owned)
        .with_context(|| format!("no id in {session:#}"))
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

/// Nothing in the unit's journal says the sandbox denied the service something.
fn check_journal(unit: &str, journal: &str) -> Result<()> {
    let denied: Vec<&str> = journal
        .lines()
        .filter(|l| DENIALS.iter().any(|d| l.contains(d)))
        .collect();
    ensure!(
        denied.is_empty(),
        "denials in the journal of {unit}:\n{}",
        denied.join("\n")
    );
    Ok(())
}

/// `systemctl enable --now sshgw-console` (install.sh's next step) beside the running
/// daemon: it is ready once its journal says `console: listening on`; its token, process and
/// API are what the unit promises. Returns the curl header file that carries the token.
///
/// Enabled, the unit stays loaded once stopped (an unreferenced inactive unit is unloaded at
/// once, and `systemctl show` then reports defaults), so its exit status can be checked.
fn console_start(r: &Router<'_>, session: &str) -> Result<PathBuf> {
    r.c.run(
        &["systemctl", "enable", "--now", CONSOLE_UNIT],
        EXEC_TIMEOUT,
    )?
    .check(&format!("systemctl enable --now {CONSOLE_UNIT}"))?;
    poll_until(
        "the console to log that it listens",
        SESSION_TIMEOUT,
        Duration::from_millis(200),
        || {
            if r.console_prop("ActiveState")? == "failed" {
                bail!("{CONSOLE_UNIT} failed to start");
            }
            Ok(r.console_journal().contains(CONSOLE_READY).then_some(()))
        },
    )?;
    let journal = r.console_journal();
    ensure!(
        journal.contains(&format!("{CONSOLE_READY}{CONSOLE_URL}/")),
        "the console should listen on {CONSOLE_URL}/ by default:\n{journal}"
    );

    // The token, made at first start in the state directory the two units share.
    ensure!(
        journal.contains(&format!("created the access token {CONSOLE_TOKEN}")),
        "the console should say it created its token:\n{journal}"
    );
    let stat = |path: &str| r.sh(&["stat", "-c", "%a %U %G", path]);
    ensure!(
        stat(CONSOLE_TOKEN)?.trim() == "600 sshgw sshgw",
        "{CONSOLE_TOKEN}: {}",
        stat(CONSOLE_TOKEN)?
    );
    ensure!(
        stat("/var/lib/sshgw")?.trim() == "700 sshgw sshgw",
        "the shared state directory: {}",
        stat("/var/lib/sshgw")?
    );
    ensure!(r.prop("ActiveState")? == "active", "the daemon stopped");

    check_console_process(r)?;

    // The API: 401 without the token, the recorded session and the live daemon with it.
    let token = std::fs::read_to_string(r.c.host_path(CONSOLE_TOKEN))?;
    let auth = r.lab.dir().join("console-auth.header");
    std::fs::write(&auth, format!("Authorization: Bearer {}\n", token.trim()))?;
    let (code, body) = r.console_get("/api/v1/sessions", None)?;
    ensure!(code == 401, "without the token: {code} {body}");
    let list = r.console_json("/api/v1/sessions", &auth)?;
    let listed = list["sessions"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| str_field(s, "id") == Some(session)));
    ensure!(listed, "session {session} is not listed: {list:#}");
    let info = r.console_json("/api/v1/info", &auth)?;
    ensure!(
        info["live"] == true && info["source"] == "local",
        "the console should reach the daemon's control socket: {info:#}"
    );
    let live = r.console_json("/api/v1/live", &auth)?;
    ensure!(live["available"] == true, "live sessions: {live:#}");
    Ok(auth)
}

/// The console runs as sshgw with no capability, no new privileges and a system call
/// filter, and cannot see the daemon's CA keys.
fn check_console_process(r: &Router<'_>) -> Result<()> {
    let pid = r.console_prop("MainPID")?;
    let status = r.sh(&["cat", &format!("/proc/{pid}/status")])?;
    let field = |name: &str| -> Result<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    for name in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        let got = u64::from_str_radix(&field(name)?, 16)?;
        ensure!(got == 0, "the console's {name} is {got:#x}, not 0");
    }
    ensure!(field("NoNewPrivs")? == "1", "NoNewPrivs");
    ensure!(
        field("Seccomp")? == "2",
        "the system call filter is not active"
    );
    for (name, id) in [("Uid", "-u"), ("Gid", "-g")] {
        let want = r.sh(&["id", id, "sshgw"])?.trim().to_owned();
        let got = field(name)?;
        ensure!(
            got.split_whitespace().all(|u| u == want),
            "the console's {name} is {got}, not sshgw's {want}"
        );
    }
    // InaccessiblePaths=-/var/lib/sshgw/ca: empty in the console's mount namespace.
    let outside = r.sh(&["ls", "-A", "/var/lib/sshgw/ca"])?;
    ensure!(!outside.trim().is_empty(), "the daemon has no CA keys yet");
    let inside = r.sh(&["nsenter", "-t", &pid, "-m", "ls", "-A", "/var/lib/sshgw/ca"])?;
    ensure!(
        inside.trim().is_empty(),
        "the console sees the CA keys: {inside}"
    );
    Ok(())
}

/// With the daemon stopped the console still serves the session log; live sessions are
/// unavailable.
fn console_without_daemon(r: &Router<'_>, session: &str, auth: &Path) -> Result<()> {
    ensure!(r.prop("ActiveState")? == "inactive", "the daemon runs");
    let info = r.console_json("/api/v1/info", auth)?;
    ensure!(info["live"] == false, "live without the daemon: {info:#}");
    let live = r.console_json("/api/v1/live", auth)?;
    ensure!(
        live["available"] == false,
        "live sessions without the daemon: {live:#}"
    );
    let session = r.console_json(&format!("/api/v1/sessions/{session}"), auth)?;
    ensure!(
        !session["channels"].as_array().is_none_or(Vec::is_empty),
        "the session without the daemon: {session:#}"
    );
    Ok(())
}

/// The console outlived the daemon's stop, crash and restarts without a restart of its own,
/// sees the daemon again, and `systemctl stop` ends it cleanly (SIGTERM: it exits 0),
/// leaving the daemon and its control socket alone.
fn console_stop(r: &Router<'_>, auth: &Path) -> Result<()> {
    ensure!(
        r.console_prop("NRestarts")? == "0" && r.console_prop("SubState")? == "running",
        "the console restarted or stopped while the daemon did"
    );
    let info = r.console_json("/api/v1/info", auth)?;
    ensure!(info["live"] == true, "live after the restart: {info:#}");
    r.c.run(&["systemctl", "stop", CONSOLE_UNIT], EXEC_TIMEOUT)?
        .check(&format!("systemctl stop {CONSOLE_UNIT}"))?;
    ensure!(
        r.console_prop("Result")? == "success",
        "console stop result"
    );
    ensure!(
        r.console_prop("ActiveState")? == "inactive",
        "console still active"
    );
    let (code, status) = (
        r.console_prop("ExecMainCode")?,
        r.console_prop("ExecMainStatus")?,
    );
    ensure!(
        code == "1" && status == "0",
        "the console should exit 0 on SIGTERM: ExecMainCode={code} ExecMainStatus={status}"
    );
    ensure!(
        r.prop("SubState")? == "running",
        "stopping the console stopped the daemon"
    );
    r.sh(&["test", "-S", "/run/sshgw/control.sock"])
        .context("stopping the console removed the daemon's control socket")?;
    r.sh(&["test", "-f", CONSOLE_TOKEN])
        .context("the token should outlive the console")?;
    Ok(())
}
