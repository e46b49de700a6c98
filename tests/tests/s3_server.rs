//! The S3 test server itself (tests/src/s3.rs), no network namespace: SeaweedFS comes up on
//! loopback, a bucket gets Object Lock, the router identity can put and read back under its prefix but not
//! list or delete,
//! a locked version cannot be deleted, `If-None-Match: *` on an existing key is refused
//! with 412, and the data survives SIGKILL and restart. A second server runs beside it.
//! Inside a network namespace (root) the server answers there and not on the host.
//!
//! Needs the venv of `cargo xtask prereqs` (`<target>/s3-venv` or `SSHGW_S3_VENV`); without
//! it the test fails (never skips, with or without `CI=true`).
//!
//! Run: `cargo test -p sshgw-tests --test s3_server`.

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sshgw_tests::netns::LAB_PREFIX;
use sshgw_tests::s3::{ADMIN, ROUTER, S3Server};
use sshgw_tests::{Netns, Processes};

const BUCKET: &str = "sshgw-rec";
const PREFIX: &str = "rtr-a/";

fn run(procs: &Processes, tmp: &Path) -> Result<()> {
    let mut server = S3Server::start_with(procs, None, &tmp.join("s3"), &[(BUCKET, PREFIX)])?;
    ensure!(server.endpoint() == format!("http://127.0.0.1:{}", server.ports().s3));
    server.create_locked_bucket(BUCKET, 1)?;

    let body = tmp.join("session.cast");
    fs::write(&body, b"{\"version\": 2}\nrecorded bytes\n")?;
    let key = format!("{PREFIX}2026/01/01/s1.cast");
    let put = server
        .put(ROUTER, BUCKET, &key, &body, true, &[("sha256", "abc")])?
        .map_err(|e| anyhow::anyhow!("router PutObject: {e}"))?;
    let version = put.version_id.context("no version id: versioning is off")?;

    let head = server.head(BUCKET, &key)?;
    ensure!(
        head.version_id.as_deref() == Some(version.as_str()),
        "{head:?}"
    );
    ensure!(head.size == fs::metadata(&body)?.len(), "{head:?}");
    ensure!(head.lock_mode.as_deref() == Some("COMPLIANCE"), "{head:?}");
    ensure!(head.retain_until.is_some(), "{head:?}");
    ensure!(head.metadata.get("sha256").map(String::as_str) == Some("abc"));

    // WORM: the locked version cannot be deleted, not even by the admin.
    let refused = server.delete_version(BUCKET, &key, &version)?;
    ensure!(refused == Err("AccessDenied".into()), "{refused:?}");

    // A second upload of the same key with If-None-Match: * is refused with 412.
    let again = server.put(ROUTER, BUCKET, &key, &body, true, &[])?;
    let err = again
        .err()
        .context("If-None-Match: * overwrote an existing key")?;
    ensure!(
        err.code == "PreconditionFailed" && err.status == Some(412),
        "{err}"
    );

    // The router writes (and reads back) only under its prefix; it cannot list or delete.
    let outside = server.put(ROUTER, BUCKET, "rtr-b/x.cast", &body, false, &[])?;
    ensure!(
        outside.as_ref().is_err_and(|e| e.code == "AccessDenied"),
        "{outside:?}"
    );
    let head = server.run_script(ROUTER, &["head", BUCKET, &key])?;
    ensure!(head.is_ok(), "router HEAD under its prefix: {head:?}");
    for args in [
        vec!["head", BUCKET, "rtr-b/x.cast"],
        vec!["list-versions", BUCKET, PREFIX],
        vec!["delete", BUCKET, &key],
    ] {
        let answer = server.run_script(ROUTER, &args)?;
        ensure!(
            answer.as_ref().is_err_and(|e| e.status == Some(403)),
            "router {args:?}: {answer:?}"
        );
    }
    ensure!(server.list_multipart_uploads(BUCKET)?.is_empty());

    // A second server beside the first gets ports of its own.
    let other = S3Server::start(procs, None, &tmp.join("s3-other"))?;
    ensure!(
        other
            .ports()
            .all()
            .iter()
            .all(|p| !server.ports().all().contains(p))
    );
    ensure!(other.run_script(ADMIN, &["ping"])?.is_ok());
    drop(other);

    // Crash and restart: same ports, data and lock kept.
    let ports = server.ports();
    server.kill()?;
    ensure!(!server.is_running());
    server.restart()?;
    ensure!(server.ports() == ports);
    let out = tmp.join("read-back.cast");
    let got = server.get(BUCKET, &key, Some(&version), &out)?;
    ensure!(got.version_id.as_deref() == Some(version.as_str()));
    ensure!(fs::read(&out)? == fs::read(&body)?, "read-back differs");
    let versions = server.list_versions(BUCKET, PREFIX)?;
    ensure!(
        versions.versions.len() == 1 && versions.delete_markers.is_empty(),
        "{versions:?}"
    );
    let refused = server.delete_version(BUCKET, &key, &version)?;
    ensure!(refused == Err("AccessDenied".into()), "{refused:?}");

    server.stop()?;
    ensure!(!server.is_running());
    Ok(())
}

#[test]
fn seaweedfs_lock_conditional_put_router_identity_and_restart() {
    let tmp = tempfile::Builder::new()
        .prefix("sshgw-s3-")
        .tempdir()
        .expect("temp dir");
    let procs = Processes::new(tmp.path().join("logs")).expect("process registry");
    if let Err(err) = run(&procs, tmp.path()) {
        procs.dump_logs(40);
        procs.kill_all();
        panic!("S3 server test failed: {err:?}");
    }
    procs.kill_all();
}

fn run_in_netns(procs: &Processes, tmp: &Path) -> Result<()> {
    let ns = Netns::create(&format!("{LAB_PREFIX}{}-s3", std::process::id()))?;
    let mut server = S3Server::start(procs, Some(&ns), &tmp.join("s3"))?;
    server.create_locked_bucket(BUCKET, 1)?;
    let body = tmp.join("body");
    fs::write(&body, b"in a namespace")?;
    let put = server.put(ROUTER, BUCKET, "any/key", &body, true, &[])?;
    ensure!(put.is_ok(), "{put:?}");
    ensure!(server.head(BUCKET, "any/key")?.lock_mode.as_deref() == Some("COMPLIANCE"));
    // The namespace's loopback, not the host's.
    let host = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, server.ports().s3).into(),
        Duration::from_secs(2),
    );
    ensure!(host.is_err(), "the S3 port answers on the host's loopback");
    server.stop()?;
    server.restart()?;
    ensure!(server.head(BUCKET, "any/key")?.size == 14);
    drop(server);
    drop(ns);
    Ok(())
}

#[test]
fn seaweedfs_in_a_network_namespace() {
    let tmp = tempfile::Builder::new()
        .prefix("sshgw-s3-ns-")
        .tempdir()
        .expect("temp dir");
    let procs = Processes::new(tmp.path().join("logs")).expect("process registry");
    if let Err(err) = run_in_netns(&procs, tmp.path()) {
        procs.dump_logs(40);
        procs.kill_all();
        panic!("S3 server in a namespace failed: {err:?}");
    }
    procs.kill_all();
}
