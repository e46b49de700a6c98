//! The systemd units: `systemd-analyze verify` accepts them, and their hardening scores a low
//! exposure (`systemd-analyze security --offline=true`): at most 2.5 for the daemon
//! (`sshgw.service`), at most 1.1 for the console (`sshgw-console.service`), which needs no
//! capability at all. The console shares the daemon's state directory, so both units must
//! declare it identically.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail, ensure};

/// The daemon's unit and the command its `ExecStart=` runs.
const DAEMON: (&str, &str) = ("sshgw.service", "/usr/local/bin/sshgw run");
/// The console's unit and the command its `ExecStart=` runs.
const CONSOLE: (&str, &str) = ("sshgw-console.service", "/usr/local/bin/sshgw console");
/// The console's exposure bound: what it measures with systemd 252 (Debian 12). The
/// remainder is PrivateNetwork= (it serves on the host's loopback), IPAddressDeny= (object
/// storage and PostgreSQL may be anywhere), AF_INET/AF_UNIX, the host's root directory and
/// the char-rtc device rule ProtectClock= adds.
const CONSOLE_EXPOSURE: f64 = 1.1;
const DAEMON_EXPOSURE: f64 = 2.5;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit(name: &str) -> PathBuf {
    workspace().join("systemd").join(name)
}

fn systemd_analyze(args: &[&str]) -> Result<std::process::Output> {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .context("systemd-analyze is missing (Debian package systemd)")
}

/// The unit names /usr/local/bin/sshgw; verify needs an executable there, so it checks a
/// copy that points at the binary under test instead.
fn verifies((name, exec): (&str, &str)) -> Result<()> {
    let bin = sshgw_tests::gateway::sshgw_bin()?;
    let dir = tempfile::tempdir()?;
    let text = std::fs::read_to_string(unit(name))?;
    ensure!(
        text.contains(&format!("ExecStart={exec} ")),
        "{name} has an unexpected ExecStart (want {exec:?})"
    );
    let copy = dir.path().join(name);
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/sshgw", &bin.display().to_string()),
    )?;
    let out = systemd_analyze(&["verify", &copy.display().to_string()])?;
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "systemd-analyze verify {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The overall exposure `systemd-analyze security --offline=true` gives the unit.
fn exposure(name: &str) -> Result<f64> {
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        &unit(name).display().to_string(),
    ])?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("no exposure level in:\n{text}"))?;
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot parse {line:?}"))?;
    println!("{line}");
    Ok(score)
}

/// The values of `key=` in the unit's text, in order.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_owned())
        .collect()
}

#[test]
fn unit_verifies() -> Result<()> {
    verifies(DAEMON)
}

#[test]
fn unit_exposure_is_low() -> Result<()> {
    let score = exposure(DAEMON.0)?;
    ensure!(
        score <= DAEMON_EXPOSURE,
        "exposure {score} exceeds {DAEMON_EXPOSURE}"
    );
    Ok(())
}

#[test]
fn console_unit_verifies() -> Result<()> {
    verifies(CONSOLE)
}

#[test]
fn console_unit_exposure_is_low() -> Result<()> {
    let score = exposure(CONSOLE.0)?;
    ensure!(
        score <= CONSOLE_EXPOSURE,
        "the console's exposure {score} exceeds {CONSOLE_EXPOSURE}"
    );
    Ok(())
}

/// systemd applies a unit's `StateDirectory=` owner and mode at every start of that unit, so
/// the two units sharing /var/lib/sshgw must agree on both; a `RuntimeDirectory=sshgw` in the
/// console would remove /run/sshgw (the daemon's control socket) whenever the console stops.
/// And the console gets no capability at all.
#[test]
fn console_unit_shares_the_state_directory_and_holds_no_capability() -> Result<()> {
    let daemon = std::fs::read_to_string(unit(DAEMON.0))?;
    let console = std::fs::read_to_string(unit(CONSOLE.0))?;
    for key in ["User", "Group", "StateDirectory", "StateDirectoryMode"] {
        let (d, c) = (values(&daemon, key), values(&console, key));
        ensure!(
            !d.is_empty() && d == c,
            "{key}= differs: daemon {d:?}, console {c:?}"
        );
    }
    ensure!(
        values(&console, "RuntimeDirectory").is_empty(),
        "the console must not declare RuntimeDirectory= (stopping it would remove the daemon's)"
    );
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        ensure!(
            values(&console, key) == [""],
            "the console's {key}= should be exactly one empty assignment: {:?}",
            values(&console, key)
        );
    }
    Ok(())
}
