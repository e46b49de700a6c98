//! The systemd unit: `systemd-analyze verify` accepts it, and its hardening scores an
//! exposure of at most 2.5 (`systemd-analyze security --offline=true`).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail, ensure};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit() -> PathBuf {
    workspace().join("systemd/sshgw.service")
}

fn systemd_analyze(args: &[&str]) -> Result<std::process::Output> {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .context("systemd-analyze is missing (Debian package systemd)")
}

/// The unit names /usr/local/bin/sshgw; verify needs an executable there, so it checks a
/// copy that points at the binary under test instead.
#[test]
fn unit_verifies() -> Result<()> {
    let bin = sshgw_tests::gateway::sshgw_bin()?;
    let dir = tempfile::tempdir()?;
    let text = std::fs::read_to_string(unit())?;
    ensure!(
        text.contains("ExecStart=/usr/local/bin/sshgw run"),
        "unit has an unexpected ExecStart"
    );
    let copy = dir.path().join("sshgw.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/sshgw", &bin.display().to_string()),
    )?;
    let out = systemd_analyze(&["verify", &copy.display().to_string()])?;
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "systemd-analyze verify failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn unit_exposure_is_low() -> Result<()> {
    let out = systemd_analyze(&["security", "--offline=true", &unit().display().to_string()])?;
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
    ensure!(score <= 2.5, "exposure {score} exceeds 2.5: {line}");
    Ok(())
}
