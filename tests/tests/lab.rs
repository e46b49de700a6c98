//! Self-tests of the lab harness that need no sshgw daemon: the topology forwards IPv4 and
//! IPv6, sshd/ssh/tcpdump helpers work, and the lab cleans up after itself.
//!
//! Run as root: `cargo test -p sshgw-tests --test lab -- --test-threads=2`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sshgw_tests::{Family, Lab, OTHER_TCP_PORT, SSH_PORT, iface, lab_test, netns, syn_ack_filter};

const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Without a daemon every flow is forwarded: sshd sees the device's own address, and the
/// SYN-ACK reaching the device has been forwarded once (TTL / hop limit 63).
fn forwarding_baseline(lab: &Lab, fam: Family) -> Result<()> {
    let _sshd = lab.start_sshd()?;

    let cap = lab.capture(
        &lab.dev,
        iface::DEV,
        &syn_ack_filter(fam.audited(), SSH_PORT),
        1,
    )?;
    let out = lab
        .ssh(fam.audited())
        .bind(fam.enrolled())
        .run("echo $SSH_CONNECTION")?;
    out.check()?;
    ensure!(
        out.stdout.starts_with(&format!("{} ", fam.enrolled())),
        "sshd should see the device address, got {:?}",
        out.stdout
    );
    let pkts = cap.wait(CAPTURE_TIMEOUT)?;
    ensure!(
        pkts.len() == 1 && pkts[0].is_syn_ack() && pkts[0].is_from(fam.audited(), SSH_PORT),
        "unexpected capture {pkts:#?}"
    );
    ensure!(
        pkts[0].ttl() == Some(63),
        "forwarded SYN-ACK should have {} 63: {}",
        fam.ttl_field(),
        pkts[0].text
    );

    // Default source is the enrolled address; -b selects the other one.
    let conn = lab.ssh(fam.not_audited()).ssh_connection()?;
    ensure!(
        conn.client == fam.enrolled(),
        "default source should be {}, got {conn:?}",
        fam.enrolled()
    );
    ensure!(
        conn.server == fam.not_audited(),
        "server side address {conn:?}"
    );
    let conn = lab
        .ssh(fam.audited())
        .bind(fam.not_enrolled())
        .ssh_connection()?;
    ensure!(conn.client == fam.not_enrolled(), "{conn:?}");

    // Port 2222 ("other TCP").
    let conn = lab
        .ssh(fam.audited())
        .bind(fam.enrolled())
        .port(OTHER_TCP_PORT)
        .ssh_connection()?;
    ensure!(
        conn.client == fam.enrolled() && conn.server_port == OTHER_TCP_PORT,
        "{conn:?}"
    );

    // A failing remote command is reported, not an error.
    let out = lab.ssh(fam.audited()).run("exit 7")?;
    ensure!(out.code() == Some(7), "exit code: {:?}", out.status);
    Ok(())
}

#[test]
fn forwarding_baseline_v4() {
    lab_test(|lab| forwarding_baseline(lab, Family::V4));
}

#[test]
fn forwarding_baseline_v6() {
    lab_test(|lab| forwarding_baseline(lab, Family::V6));
}

/// The long-lived session helper: SSH_CONNECTION first, then echo round trips, then a clean
/// close.
#[test]
fn session_roundtrip() {
    lab_test(|lab| {
        let sshd = lab.start_sshd()?;
        let fam = Family::V6;
        let mut session = lab
            .ssh(fam.audited())
            .bind(fam.enrolled())
            .session("echo $SSH_CONNECTION; exec cat")?;
        let conn = sshgw_tests::SshConnection::parse(&session.read_line(SESSION_TIMEOUT)?)?;
        ensure!(conn.client == fam.enrolled(), "{conn:?}");
        for i in 0..3 {
            session.roundtrip(&format!("line {i}"), SESSION_TIMEOUT)?;
        }
        let status = session.close(SESSION_TIMEOUT)?;
        ensure!(status.success(), "ssh exit {status:?}");
        sshd.wait_for_log("Accepted publickey for root", Duration::from_secs(5))?;
        Ok(())
    });
}

/// An unreachable port fails fast with "Connection refused" (sshd only listens on 22/2222).
#[test]
fn refused_port_is_reported() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd()?;
        let out = lab
            .ssh(Family::V4.audited())
            .port(2200)
            .connect_timeout(3)
            .run("true")?;
        ensure!(
            !out.success() && out.stderr.contains("Connection refused"),
            "{out:?}"
        );
        Ok(())
    });
}

/// Dropping a lab kills its processes (by PID) and deletes its namespaces.
#[test]
fn lab_cleans_up_on_drop() {
    let lab = Lab::new().expect("lab");
    let sshd = lab.start_sshd().expect("sshd");
    let pid = sshd.proc().pid();
    let names: Vec<String> = [&lab.dev, &lab.rtr, &lab.srv]
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    let dir = lab.dir().to_owned();
    drop(sshd);
    drop(lab);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sshd (pid {pid}) still running"
    );
    for name in names {
        assert!(
            !Path::new(netns::NETNS_RUN_DIR).join(&name).exists(),
            "namespace {name} left behind"
        );
    }
    assert!(!dir.exists(), "lab dir {} left behind", dir.display());
}

/// Namespaces of a dead test process are swept when a lab is created.
#[test]
fn stale_namespaces_are_swept() -> Result<()> {
    // A PID that certainly belonged to a process that has exited.
    let mut child = std::process::Command::new("true").spawn()?;
    let dead = child.id();
    child.wait()?;
    let name = format!("{}{dead}-0-dev", netns::LAB_PREFIX);
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .output()?;
    ensure!(
        out.status.success(),
        "ip netns add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = Path::new(netns::NETNS_RUN_DIR).join(&name);
    let lab = Lab::new().context("lab")?;
    let swept = !path.exists();
    drop(lab);
    if !swept {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
    }
    ensure!(swept, "stale namespace {name} was not swept");
    Ok(())
}
