//! `cargo xtask lab --ci` end to end: runs the lab binary (`sshgw-lab up --ci`, what the xtask
//! command runs after its builds) and checks that it passes (its own checks: the replay shows
//! the typed output, the session log has the session, the teardown leaves nothing) and that,
//! seen from outside, nothing of the lab is left: namespaces, BPF pins, state dir, lab dir.
//!
//! The CI variant uses unique names (`sgw-<pid>-<n>`) and a temporary state dir, so it runs
//! beside the other netns tests and beside an interactive `cargo xtask lab`.
//!
//! Needs root and the sshgw binary (`SSHGW_BIN`, as `cargo xtask test` sets it):
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test lab_command`.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The whole CI run: lab, daemon, session, replay, teardown (a few seconds normally).
const LAB_TIMEOUT: Duration = Duration::from_secs(300);

/// The value after `label` on the line that has it (`    lab name: sgw-1-0`).
fn field<'a>(output: &'a str, label: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// Runs `sshgw-lab up --ci EXTRA...`, checks that it passed and that nothing of the lab is
/// left; returns its output.
fn run_lab_ci(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("sshgw-lab.log");
    let log = File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sshgw-lab"))
        .args(["up", "--ci"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawning sshgw-lab");
    let deadline = Instant::now() + LAB_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for sshgw-lab") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Its processes die with it (parent-death signal); later labs sweep the rest.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!(
            "sshgw-lab up --ci {extra:?} did not finish within {LAB_TIMEOUT:?}; output:\n{output}"
        )
    });
    assert!(
        status.success(),
        "sshgw-lab up --ci {extra:?} failed ({status}); output:\n{output}"
    );

    for needle in [
        "hello from the device",
        "ok: the replay shows the output of whoami, uname -a and echo",
        "ok: the log has session",
        "nothing left",
        "CI run passed",
    ] {
        assert!(
            output.contains(needle),
            "the output should contain {needle:?}:\n{output}"
        );
    }

    let name = field(&output, "lab name:").expect("the lab name is printed");
    let state_dir = field(&output, "state dir:").expect("the state dir is printed");
    let lab_dir = field(&output, "lab dir:").expect("the lab dir is printed");
    assert!(
        name.starts_with("sgw-"),
        "the CI lab should have a unique harness name, got {name:?}"
    );
    let mut left = Vec::new();
    for role in ["dev", "rtr", "srv"] {
        let ns = Path::new("/run/netns").join(format!("{name}-{role}"));
        if ns.exists() {
            left.push(ns.display().to_string());
        }
    }
    for path in [
        Path::new("/sys/fs/bpf").join(name),
        Path::new(state_dir).to_owned(),
        Path::new(lab_dir).to_owned(),
    ] {
        if path.exists() {
            left.push(path.display().to_string());
        }
    }
    assert!(
        left.is_empty(),
        "left behind after the CI run: {left:?}; output:\n{output}"
    );
    output
}

#[test]
fn lab_ci_runs_end_to_end_and_leaves_nothing() {
    run_lab_ci(&[]);
}

/// `cargo xtask lab --ci --wireguard`: the same through a real WireGuard tunnel; the session
/// comes from the device's tunnel address.
#[test]
fn lab_ci_with_wireguard_runs_end_to_end_and_leaves_nothing() {
    let output = run_lab_ci(&["--wireguard"]);
    for needle in [
        "wg0 100.100.0.1/24 <== WireGuard",
        "boringtun-cli): SIGKILLed",
    ] {
        assert!(
            output.contains(needle),
            "the output should contain {needle:?}:\n{output}"
        );
    }
}
