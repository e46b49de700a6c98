//! The central index and SIEM test servers themselves (tests/src/postgres.rs, syslog.rs,
//! otlp.rs), before sshgw talks to them:
//!
//! * PostgreSQL 15: a role made by the harness logs in with psql over TCP with TLS verified
//!   against the test CA (`sslmode=verify-full`), over plain TCP, and over the Unix socket
//!   URL (also from inside another network namespace); the superuser can, the role cannot,
//!   read a table it was not granted; rows survive a fast shutdown and a SIGKILL;
//! * rsyslogd: octet-counted RFC 5424 messages (RFC 6587) arrive whole, structured data
//!   intact, before and after a stop and a new start on the same port, in a namespace;
//! * the OTLP/HTTP sink: an export encoded with the official types is decoded and
//!   answered; a bad one is refused; connections are refused after `stop` and accepted
//!   again after `start_again`.
//!
//! Needs root and `cargo xtask prereqs` (postgresql-15, rsyslog, openssl); a missing tool
//! fails the test (never a skip, with or without `CI=true`).
//!
//! Run: `CI=true cargo test -p sshgw-tests --test central_services -- --test-threads=1`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use sshgw_tests::central::NsRef;
use sshgw_tests::netns::LAB_PREFIX;
use sshgw_tests::otlp::OtlpSink;
use sshgw_tests::postgres::PgServer;
use sshgw_tests::syslog::SyslogReceiver;
use sshgw_tests::{Netns, Processes};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `body` with a fresh temp dir and process registry; on failure dumps the logs; every
/// process it started is SIGKILLed at the end (also when `body` panics: the registry's drop).
fn harness_test(name: &str, body: impl FnOnce(&Processes, &Path) -> Result<()>) {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("sshgw-{name}-"))
        .tempdir()
        .expect("temp dir");
    let procs = Processes::new(tmp.path().join("logs")).expect("process registry");
    let result = body(&procs, tmp.path());
    if let Err(err) = result {
        procs.dump_logs(40);
        procs.kill_all();
        panic!("{name} failed: {err:?}");
    }
    procs.kill_all();
}

fn ns_name(role: &str) -> String {
    format!("{LAB_PREFIX}{}-{role}", std::process::id())
}

#[test]
fn postgres_tls_tcp_socket_and_restart() {
    harness_test("pg", |procs, tmp| {
        let mut pg = PgServer::start(procs, &tmp.join("pg"))?;
        ensure!(pg.psql("SELECT current_database()")? == "sshgw");
        ensure!(pg.psql("SHOW ssl")? == "on");
        pg.create_login_role("sshgw_rtr1", "rtr1-secret")?;
        pg.psql(
            "CREATE TABLE sessions (id text PRIMARY KEY, login text);\
             CREATE TABLE secrets (x int);\
             GRANT SELECT, INSERT ON sessions TO sshgw_rtr1",
        )?;
        let ssl_of_backend = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

        // TCP with TLS, the server verified against the test CA and 127.0.0.1 in its SAN.
        let ca = pg.ca_cert_path();
        let verify_full = format!(
            "{}&sslrootcert={}",
            pg.tcp_url("sshgw_rtr1", "verify-full"),
            ca.display()
        );
        ensure!(
            verify_full
                == format!(
                    "postgres://sshgw_rtr1@127.0.0.1:{}/sshgw?sslmode=verify-full&sslrootcert={}",
                    pg.port(),
                    ca.display()
                )
        );
        let got = pg
            .psql_url(
                &verify_full,
                "rtr1-secret",
                &format!("{ssl_of_backend}; SELECT current_user"),
            )?
            .map_err(|e| anyhow::anyhow!("verify-full login: {e}"))?;
        ensure!(got == "t\nsshgw_rtr1", "{got:?}");
        pg.psql_url(
            &verify_full,
            "rtr1-secret",
            "INSERT INTO sessions VALUES ('rtr1:1', 'alice')",
        )?
        .map_err(|e| anyhow::anyhow!("insert over TLS: {e}"))?;

        // Plain TCP.
        let plain = pg.tcp_url("sshgw_rtr1", "disable");
        let got = pg
            .psql_url(&plain, "rtr1-secret", ssl_of_backend)?
            .map_err(|e| anyhow::anyhow!("plain TCP login: {e}"))?;
        ensure!(got == "f", "{got:?}");
        // A wrong password is refused.
        let refused = pg.psql_url(&plain, "wrong", "SELECT 1")?;
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("password authentication failed")),
            "{refused:?}"
        );

        // The Unix socket URL (tokio-postgres' form), psql_as and a permission denial.
        let socket_url = pg.socket_url("sshgw_rtr1");
        ensure!(
            socket_url
                == format!(
                    "postgresql:///sshgw?host={}&port={}&user=sshgw_rtr1",
                    pg.socket_dir().display(),
                    pg.port()
                ),
            "{socket_url}"
        );
        let got = pg
            .psql_as("sshgw_rtr1", "rtr1-secret", "SELECT login FROM sessions")?
            .map_err(|e| anyhow::anyhow!("socket login: {e}"))?;
        ensure!(got == "alice", "{got:?}");
        let denied = pg.psql_as("sshgw_rtr1", "rtr1-secret", "SELECT * FROM secrets")?;
        ensure!(
            denied
                .as_ref()
                .is_err_and(|e| e.contains("permission denied for table secrets")),
            "{denied:?}"
        );
        let denied = pg.psql_as("sshgw_rtr1", "rtr1-secret", "DELETE FROM sessions")?;
        ensure!(
            denied
                .as_ref()
                .is_err_and(|e| e.contains("permission denied")),
            "{denied:?}"
        );

        // The server runs as the unprivileged postgres user.
        let pid = pg.proc().context("no postmaster")?.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let postgres = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
        ensure!(
            status.lines().any(|l| l.starts_with("Uid:")
                && l.split_whitespace()
                    .skip(1)
                    .all(|u| u == postgres.uid.to_string())),
            "postmaster credentials: {status}"
        );

        // The socket crosses network namespaces: psql inside a fresh one (no TCP route to
        // the host's loopback), as `nobody`, still gets in.
        let ns = Netns::create(&ns_name("pg"))?;
        let mut cmd = ns.exec_command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-A", "-t", "-d", &socket_url])
            .args(["-c", "SELECT count(*) FROM sessions"])
            .env("PGPASSWORD", "rtr1-secret")
            .env("HOME", "/nonexistent")
            .current_dir("/");
        let out = procs
            .run_quiet(
                "psql as nobody in a namespace",
                &mut cmd,
                Duration::from_secs(60),
            )?
            .check("psql as nobody over the Unix socket from another network namespace")?;
        ensure!(out.stdout.trim() == "1", "{out:?}");
        let socket = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port()));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket)?.permissions());
        ensure!(mode & 0o777 == 0o777, "socket mode {mode:o}");
        drop(ns);

        // Fast shutdown and a new start: same port, rows kept.
        let port = pg.port();
        pg.stop()?;
        ensure!(!pg.is_running());
        ensure!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "port {port} still accepts after stop"
        );
        pg.start_again()?;
        ensure!(pg.port() == port);
        ensure!(pg.psql("SELECT id || '/' || login FROM sessions")? == "rtr1:1/alice");

        // A crash (SIGKILL) and crash recovery: the committed row is still there.
        pg.psql("INSERT INTO sessions VALUES ('rtr1:2', 'bob')")?;
        pg.kill()?;
        pg.start_again()?;
        ensure!(pg.psql("SELECT count(*) FROM sessions")? == "2");
        drop(pg);
        Ok(())
    });
}

/// `LEN SP MSG` (RFC 6587 octet counting).
fn octet_counted(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

#[test]
fn rsyslog_octet_counted_rfc5424_and_restart() {
    harness_test("syslog", |procs, tmp| {
        let ns = Netns::create(&ns_name("siem"))?;
        let mut siem = SyslogReceiver::start(procs, Some(&ns), &tmp.join("syslog"))?;
        let port = siem.port();
        // In the namespace only.
        ensure!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "the syslog port answers on the host's loopback"
        );
        let m1 = r#"<134>1 2026-12-05T00:00:00.000000Z rtr1 sshgw - session.opened [sshgw@32473 id="rtr1:1" login="alice"] {"a":1}"#;
        let m2 = r#"<134>1 2026-12-05T00:00:01.000000Z rtr1 sshgw 4242 session.closed [sshgw@32473 id="rtr1:1" bytes="10\]"] {"a":2,"s":"x y"}"#;
        // Both in one write and one TCP segment: only the octet counts separate them.
        let mut both = octet_counted(m1);
        both.extend(octet_counted(m2));
        siem.send_raw(&[&both])?;
        let got = siem.wait_for_messages(2, WAIT)?;
        ensure!(got == vec![m1.to_owned(), m2.to_owned()], "{got:#?}");

        // Stop (SIGTERM) and start again on the same port.
        siem.stop()?;
        ensure!(!siem.is_running());
        siem.start_again()?;
        ensure!(siem.port() == port);
        let m3 = r#"<134>1 2026-12-05T00:00:02.000000Z rtr1 sshgw - session.opened [sshgw@32473 id="rtr1:2"] {"a":3}"#;
        siem.send_raw(&[&octet_counted(m3)])?;
        let got = siem.wait_for_messages(3, WAIT)?;
        ensure!(
            got == vec![m1.to_owned(), m2.to_owned(), m3.to_owned()],
            "{got:#?}"
        );

        // What it accepted right before a graceful stop is in the file afterwards.
        let burst: Vec<String> = (0..200)
            .map(|i| format!("<134>1 2026-12-05T00:01:00.000000Z rtr1 sshgw - burst [sshgw@32473 n=\"{i}\"] {{}}"))
            .collect();
        let frames: Vec<Vec<u8>> = burst.iter().map(|m| octet_counted(m)).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        siem.send_raw(&refs)?;
        // The connection is closed: wait until rsyslog has taken everything off it, i.e.
        // until the last message is in (then SIGTERM must lose nothing written so far).
        siem.wait_for_messages(3 + burst.len(), WAIT)?;
        siem.stop()?;
        let got = siem.messages()?;
        ensure!(got.len() == 3 + burst.len(), "{} messages", got.len());
        ensure!(got[3..] == burst[..], "burst reordered or altered");
        drop(siem);
        drop(ns);
        Ok(())
    });
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn sample_export() -> ExportLogsServiceRequest {
    use any_value::Value::{IntValue, StringValue};
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", StringValue("sshgw".into()))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "sshgw.audit".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                log_records: vec![
                    LogRecord {
                        time_unix_nano: 1_796_428_800_000_000_000,
                        severity_number: 9,
                        severity_text: "INFO".into(),
                        event_name: "session.opened".into(),
                        body: Some(AnyValue {
                            value: Some(StringValue("session opened".into())),
                        }),
                        attributes: vec![
                            kv("sshgw.session.id", StringValue("rtr1:1".into())),
                            kv("sshgw.bytes", IntValue(42)),
                        ],
                        ..Default::default()
                    },
                    LogRecord {
                        severity_number: 9,
                        event_name: "session.closed".into(),
                        attributes: vec![kv("sshgw.session.id", StringValue("rtr1:1".into()))],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One HTTP/1.1 request on `stream` (kept open); returns the status and body.
fn post(
    stream: &mut TcpStream,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    // Read the head byte by byte up to the blank line, then Content-Length bytes.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .context("reading the response head")?;
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("no Content-Length in the response")?;
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok((status, body))
}

#[test]
fn otlp_sink_decodes_logs_and_restarts() {
    harness_test("otlp", |_procs, _tmp| {
        let ns = Netns::create(&ns_name("otlp"))?;
        let mut sink = OtlpSink::start(Some(&ns))?;
        let port = sink.port();
        ensure!(sink.endpoint() == format!("http://127.0.0.1:{port}"));
        ensure!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "the OTLP port answers on the host's loopback"
        );
        let in_ns = NsRef::new(Some(&ns));
        let connect = || in_ns.connect(port);

        // Two exports on one kept-alive connection.
        let mut stream = connect()?;
        let body = sample_export().encode_to_vec();
        for _ in 0..2 {
            let (status, answer) = post(&mut stream, "/v1/logs", "application/x-protobuf", &body)?;
            ensure!(
                status == 200,
                "status {status}: {}",
                String::from_utf8_lossy(&answer)
            );
            ExportLogsServiceResponse::decode(answer.as_slice())
                .context("the answer is not an ExportLogsServiceResponse")?;
        }
        ensure!(sink.requests() == 2);
        let records = sink.wait_for_records(4, WAIT)?;
        let r = &records[0];
        ensure!(
            r.resource.get("service.name").map(String::as_str) == Some("sshgw"),
            "{r:?}"
        );
        ensure!(
            r.scope_name == "sshgw.audit" && r.scope_version == "0.1.0",
            "{r:?}"
        );
        ensure!(
            r.body == "session opened" && r.event_name == "session.opened",
            "{r:?}"
        );
        ensure!(r.attributes["sshgw.session.id"] == "rtr1:1", "{r:?}");
        ensure!(r.attributes["sshgw.bytes"] == "42", "{r:?}");
        ensure!(r.severity_number == 9 && r.severity_text == "INFO", "{r:?}");
        ensure!(r.time_unix_nano == 1_796_428_800_000_000_000, "{r:?}");
        ensure!(records[1].event_name == "session.closed" && records[1].body.is_empty());

        // Refused: JSON, garbage, another path.
        let (status, _) = post(&mut stream, "/v1/logs", "application/json", b"{}")?;
        ensure!(status == 415, "JSON answered {status}");
        let (status, _) = post(
            &mut stream,
            "/v1/logs",
            "application/x-protobuf",
            b"\xff\xff\xff",
        )?;
        ensure!(status == 400, "garbage answered {status}");
        let (status, _) = post(&mut stream, "/v1/traces", "application/x-protobuf", &body)?;
        ensure!(status == 404, "/v1/traces answered {status}");
        ensure!(sink.rejected().len() == 3, "{:?}", sink.rejected());
        sink.fail_with(Some(503));
        let (status, _) = post(&mut stream, "/v1/logs", "application/x-protobuf", &body)?;
        ensure!(status == 503, "fail_with(503) answered {status}");
        sink.fail_with(None);
        ensure!(sink.records().len() == 4);

        // Stopped: the open connection is closed and new ones are refused.
        sink.stop()?;
        let mut rest = Vec::new();
        ensure!(
            stream.read_to_end(&mut rest).map_or(true, |n| n == 0),
            "the kept-alive connection stayed open"
        );
        ensure!(connect().is_err(), "connections accepted after stop");
        sink.start_again()?;
        ensure!(sink.port() == port);
        let mut stream = connect()?;
        let (status, _) = post(&mut stream, "/v1/logs", "application/x-protobuf", &body)?;
        ensure!(status == 200, "after start_again: {status}");
        ensure!(sink.records().len() == 6 && sink.requests() == 3);
        drop(sink);
        drop(ns);
        Ok(())
    });
}
