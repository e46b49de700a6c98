//! `sshgw console` (issue 18) through its JSON API, beyond the browser test:
//!
//! 1. `--central`: a router records a pty session and an sftp upload, uploads the recordings
//!    to object storage (SeaweedFS) and ships its session log to the central index
//!    (PostgreSQL 15). An auditor's console (its own config: `[central]` as the
//!    `sshgw_auditor` role, `[storage]` with a key that can read, its own state dir) lists
//!    the sessions with their router and file operations, filters them, charts them, and
//!    hands out each recording from the store (the router's local files moved away first)
//!    byte for byte; `sshgw recording verify` and `export` prove they are the recordings.
//! 2. TLS: with `[console] client_ca` a client without a certificate, or with one from
//!    another CA, fails the handshake, and a client certificate needs no token; `--listen
//!    0.0.0.0:0` is accepted with TLS (and answers on the router's WAN address); `tls_cert`
//!    without `tls_key` is refused naming both; without `client_ca` the token is needed.
//! 3. Refusals over plain HTTP: a wrong token (401 + `WWW-Authenticate: Bearer`), a bad
//!    filter (400 naming it), an unknown session (404), a wrong method (405), path traversal
//!    on the page's files (404); every answer carries the Content-Security-Policy.
//!
//! The consoles of 1 and of the `0.0.0.0` case run in the router namespace (`ip netns
//! exec`): the store listens on that namespace's loopback, PostgreSQL is reached over its
//! Unix socket. The client is curl, run in the console's namespace.
//!
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`), OpenSSH, curl, openssl,
//! PostgreSQL 15 and the S3 venv (`cargo xtask prereqs`; never skipped):
//! `SSHGW_BIN=$PWD/target/release/sshgw cargo test -p sshgw-tests --test console_remote -- --nocapture --test-threads=1`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sshgw_tests::central::{NsRef, random_hex};
use sshgw_tests::console::{self, Console};
use sshgw_tests::console_remote::{
    CentralIndex, HttpClient, Pki, RemoteConsole, Reply, describe_transport, expect_reply,
    require_tools, secret_file, toml_str, wait_shipped,
};
use sshgw_tests::gateway::str_field;
use sshgw_tests::recording::{
    RecordingKey, closed_recorded_channel, expect_exit, export_asciicast, recorded_policies,
    recording_toml, verify,
};
use sshgw_tests::s3::{ADMIN, Credentials, ROUTER, S3Server};
use sshgw_tests::ssh::PTY_EXPECT_TIMEOUT;
use sshgw_tests::wait::poll_until;
use sshgw_tests::{
    Family, Gateway, GatewayConfig, Lab, Sshd, SshdConfig, addr, host_port, lab_test,
};

const V4: Family = Family::V4;

/// A session shows up in, and is closed in, the session log within this.
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
/// ssh exits after `exit` within this.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// The sftp upload.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// A recording reaches the store (the uploader passes every 2 s).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The outbox reaches the central index.
const SHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// The console logs a refused handshake.
const CONSOLE_LOG_TIMEOUT: Duration = Duration::from_secs(15);

const ROUTER_ID: &str = "rtr-a";
const ROUTER_ROLE: &str = "sshgw_rtr_a";
const BUCKET: &str = "sshgw";
const PREFIX: &str = "recordings";
/// The user of the lab device and the login of the sftp session.
const USER: &str = "jdoe@example.com";
const SFTP_LOGIN: &str = "jdoe";
/// `sshgw recording verify` on a complete recording.
const COMPLETE: &str = "status:   complete (authenticated end-of-recording record)";

/// `host:port` of the audited server, as sessions name their destination.
fn audited() -> String {
    host_port(V4.audited(), 22)
}

/// An S3 credentials file for `creds`.
fn credentials_file(lab: &Lab, label: &str, creds: Credentials) -> Result<PathBuf> {
    let dir = lab.new_subdir(&format!("s3-credentials-{label}"))?;
    secret_file(
        &dir,
        "s3.credentials",
        &format!(
            "access_key_id={}\nsecret_access_key={}",
            creds.access_key, creds.secret_key
        ),
    )
}

/// The `[storage]` table for `endpoint` with `credentials`.
fn storage_toml(endpoint: &str, credentials: &Path) -> String {
    format!(
        "[storage]\nendpoint = {}\nbucket = \"{BUCKET}\"\nprefix = \"{PREFIX}\"\ncredentials_file = {}\n",
        toml_str(endpoint),
        toml_str(&credentials.to_string_lossy())
    )
}

/// A fresh 0700 directory.
fn private_dir(lab: &Lab, label: &str) -> Result<PathBuf> {
    let dir = lab.new_subdir(label)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// The ids of a list answer's sessions, in order.
fn ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| str_field(s, "id").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET path` answered 200 (with the CSP), as JSON.
fn get_json(client: &HttpClient, path: &str) -> Result<Value> {
    let reply = client.get(path)?;
    expect_reply(&reply, 200, &format!("GET {path}"))?;
    reply.json()
}

/// `GET /api/v1/sessions?query`: `(count, ids)`, checking that `count` is the number of
/// sessions listed (no limit is hit here).
fn list(client: &HttpClient, query: &str) -> Result<(u64, Vec<String>)> {
    let path = format!("/api/v1/sessions{query}");
    let v = get_json(client, &path)?;
    let count = v["count"]
        .as_u64()
        .with_context(|| format!("GET {path}: no count: {v:#}"))?;
    let ids = ids(&v);
    ensure!(
        count == ids.len() as u64,
        "GET {path}: count {count} for {} sessions listed: {v:#}",
        ids.len()
    );
    Ok((count, ids))
}

/// The sum of every bucket's count for `key` in a chart answer.
fn chart_total(chart: &Value, key: &str) -> u64 {
    chart["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["counts"][key].as_u64()).sum())
        .unwrap_or(0)
}

/// Waits (bounded) until session `id`'s first channel names its object in the store;
/// returns the channel record.
fn wait_uploaded(gw: &Gateway<'_>, id: &str) -> Result<Value> {
    let mut last = Value::Null;
    poll_until(
        &format!("session {id}'s recording to be uploaded"),
        UPLOAD_TIMEOUT,
        Duration::from_millis(250),
        || {
            last = gw.session(id)?;
            Ok(last["channels"]
                .as_array()
                .and_then(|c| c.first())
                .filter(|c| c["recording_object"].is_object())
                .cloned())
        },
    )
    .with_context(|| format!("last record: {last:#}\n--- sshgw log ---\n{}", gw.log()))
}

/// 1. `sshgw console --central` over the central index and the object store.
#[test]
fn central_console_lists_the_index_and_serves_recordings_from_the_store() {
    lab_test(|lab| {
        require_tools()?;
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let index = CentralIndex::start(lab, &[(ROUTER_ID, ROUTER_ROLE)])?;
        let router_prefix = format!("{PREFIX}/{ROUTER_ID}/");
        let store = S3Server::start_with(
            lab.procs(),
            Some(&lab.rtr),
            &lab.dir().join("s3"),
            &[(BUCKET, router_prefix.as_str())],
        )?;
        store.create_locked_bucket(BUCKET, 1)?;
        let router_key = credentials_file(lab, "router", ROUTER)?;
        let admin_key = credentials_file(lab, "auditor", ADMIN)?;

        let key = RecordingKey::generate(lab, "rec")?;
        let mut cfg = GatewayConfig::default().policies(recorded_policies());
        cfg.extra_toml = format!(
            "{}\n{}\n{}",
            recording_toml(Some(&key.public), None, &[]),
            storage_toml(&store.endpoint(), &router_key),
            index.central_toml(ROUTER_ROLE)
        );
        let mut gw = lab.gateway_with(cfg.router_id(ROUTER_ID))?;
        gw.start()?;

        // A recorded pty session whose output carries a marker.
        let tag = random_hex(6)?;
        let marker = format!("CONSOLE-CENTRAL-{tag}-42");
        let mut term = lab
            .ssh(V4.audited())
            .bind(V4.enrolled())
            .pty_session(None, (24, 80))?;
        term.send(&format!("echo CONSOLE-CENTRAL-{tag}-$((6*7))\n"))?;
        term.expect(&marker, PTY_EXPECT_TIMEOUT)?;
        term.send("exit\n")?;
        let status = term.wait_exit(SESSION_TIMEOUT)?;
        ensure!(
            status.success(),
            "ssh should exit 0 after `exit`: {status:?}; transcript: {:?}",
            term.transcript()
        );
        let shell =
            gw.wait_for_session(&[], LOG_TIMEOUT, "the pty session in the log", |_| true)?;
        let shell = str_field(&shell, "id").context("no id")?.to_owned();
        let (_, shell_channel, shell_path) = closed_recorded_channel(&gw, &shell, LOG_TIMEOUT)?;
        ensure!(
            str_field(&shell_channel, "kind") == Some("shell"),
            "the pty session's channel: {shell_channel:#}"
        );

        // An sftp upload of a uniquely named file.
        let sftp_file = format!("console-central-{}.txt", random_hex(6)?);
        let local = lab.dir().join(&sftp_file);
        fs::write(
            &local,
            format!("uploaded for the central console test {tag}\n"),
        )?;
        lab.ssh(V4.audited())
            .bind(V4.enrolled())
            .user(SFTP_LOGIN)
            .timeout(TRANSFER_TIMEOUT)
            .sftp_batch(&format!(
                "put {} {sftp_file}\n",
                local.to_str().context("lab dir is not UTF-8")?
            ))?
            .check()
            .context("sftp put")?;
        let sftp = gw.wait_for_session(&[], LOG_TIMEOUT, "the sftp session in the log", |s| {
            str_field(s, "id").is_some_and(|id| id != shell)
        })?;
        let sftp = str_field(&sftp, "id").context("no id")?.to_owned();
        let (_, _, sftp_path) = closed_recorded_channel(&gw, &sftp, LOG_TIMEOUT)?;

        // Both recordings in the store, then the log (with their objects) in the index.
        let shell_channel = wait_uploaded(&gw, &shell)?;
        let sftp_channel = wait_uploaded(&gw, &sftp)?;
        wait_shipped(&gw, SHIP_TIMEOUT)?;

        // The auditor's config: nothing of the router's but the addresses of the index and
        // the store.
        let auditor_state = private_dir(lab, "auditor-state")?;
        let auditor = lab.dir().join("auditor.toml");
        fs::write(
            &auditor,
            format!(
                "state_dir = {}\ncontrol_socket = {}\n\n[datapath]\ninterfaces = [\"r0\"]\n\n\
                 [cluster]\nrouter_id = \"auditor-desk\"\n\n{}\n{}",
                toml_str(&auditor_state.to_string_lossy()),
                toml_str(&auditor_state.join("no-daemon.sock").to_string_lossy()),
                storage_toml(&store.endpoint(), &admin_key),
                index.central_toml(sshgw_tests::console_remote::AUDITOR_ROLE)
            ),
        )?;
        let console =
            RemoteConsole::start(lab, Some(&lab.rtr), &auditor, "127.0.0.1:0", &["--central"])?;
        ensure!(
            console.url().starts_with("http://127.0.0.1:"),
            "printed {}",
            console.url()
        );
        let token = console::read_token(&auditor_state)?;
        ensure!(
            !gw.state_dir().join(console::TOKEN_FILE).exists(),
            "the auditor's console wrote its token into the router's state dir"
        );
        let api = HttpClient::of(lab, &console)?.token(&token);

        let info = get_json(&api, "/api/v1/info")?;
        ensure!(
            info["source"] == "central" && info["router_id"].is_null() && info["live"] == false,
            "/api/v1/info: {info:#}"
        );

        // The list: both sessions, newest first, with their router.
        let all = get_json(&api, "/api/v1/sessions")?;
        ensure!(
            all["count"] == 2 && ids(&all) == [sftp.clone(), shell.clone()],
            "/api/v1/sessions should list the sftp then the pty session: {all:#}"
        );
        for s in all["sessions"].as_array().into_iter().flatten() {
            ensure!(
                s["router_id"] == ROUTER_ID
                    && str_field(s, "email") == Some(USER)
                    && str_field(s, "destination") == Some(audited().as_str())
                    && s["channels"].is_null(),
                "a listed session: {s:#}"
            );
            let ops = s["file_op_count"].as_u64().context("file_op_count")?;
            let is_sftp = str_field(s, "id") == Some(sftp.as_str());
            ensure!(
                if is_sftp { ops >= 1 } else { ops == 0 },
                "file_op_count {ops} of {s:#}"
            );
        }
        let both: BTreeSet<String> = [shell.clone(), sftp.clone()].into();
        for (query, expected) in [
            (format!("?router={ROUTER_ID}"), both.clone()),
            ("?router=rtr-b".to_owned(), BTreeSet::new()),
            (format!("?user={}", USER.replace('@', "%40")), both.clone()),
            ("?user=nobody%40example.com".to_owned(), BTreeSet::new()),
            ("?has_file_ops=true".to_owned(), [sftp.clone()].into()),
            (
                format!("?destination={}&router={ROUTER_ID}", V4.audited()),
                both.clone(),
            ),
            ("?since=2999-01-01T00:00:00Z".to_owned(), BTreeSet::new()),
            ("?until=2001-01-01T00:00".to_owned(), BTreeSet::new()),
            ("?active=true".to_owned(), BTreeSet::new()),
        ] {
            let (count, listed) = list(&api, &query)?;
            let listed: BTreeSet<String> = listed.into_iter().collect();
            ensure!(
                listed == expected && count == expected.len() as u64,
                "/api/v1/sessions{query}: {listed:?} (count {count}), expected {expected:?}"
            );
        }
        let limited = get_json(&api, "/api/v1/sessions?limit=1")?;
        ensure!(
            limited["count"] == 2 && ids(&limited) == [sftp.clone()],
            "?limit=1: count of all matches, the newest listed: {limited:#}"
        );

        // The sftp session: its channel and the upload by name.
        let detail = get_json(&api, &format!("/api/v1/sessions/{sftp}?router={ROUTER_ID}"))?;
        let channels = detail["channels"].as_array().context("no channels")?;
        let ops = detail["file_ops"].as_array().context("no file_ops")?;
        ensure!(
            detail["id"] == sftp.as_str()
                && detail["router_id"] == ROUTER_ID
                && !channels.is_empty()
                && channels[0]["has_recording"] == true
                && channels[0]["recording_object"] == sftp_channel["recording_object"],
            "/api/v1/sessions/{sftp}: {detail:#}"
        );
        ensure!(
            ops.iter().any(|o| str_field(o, "protocol") == Some("sftp")
                && str_field(o, "path").is_some_and(|p| p.ends_with(&sftp_file))),
            "the sftp session's file_ops should name {sftp_file}: {detail:#}"
        );
        ensure!(
            detail["file_op_count"] == ops.len() as u64,
            "file_op_count of the detail: {detail:#}"
        );
        let shell_detail = get_json(
            &api,
            &format!("/api/v1/sessions/{shell}?router={ROUTER_ID}"),
        )?;
        ensure!(
            shell_detail["channels"][0]["kind"] == "shell"
                && shell_detail["channels"][0]["has_recording"] == true
                && shell_detail["channels"][0]["recording_object"]
                    == shell_channel["recording_object"]
                && shell_detail["file_ops"] == serde_json::json!([]),
            "/api/v1/sessions/{shell}: {shell_detail:#}"
        );
        let elsewhere = api.get(&format!("/api/v1/sessions/{shell}?router=rtr-b"))?;
        expect_reply(&elsewhere, 404, "the session under another router")?;

        // The recordings: the router's local files go away first; what the console hands
        // out can only come from the store.
        let moved_dir = lab.new_subdir("moved-recordings")?;
        for (id, channel, path) in [
            (&shell, &shell_channel, &shell_path),
            (&sftp, &sftp_channel, &sftp_path),
        ] {
            let moved = moved_dir.join(path.file_name().context("recording file name")?);
            fs::rename(path, &moved).with_context(|| format!("moving {} away", path.display()))?;
            let n = channel["channel"].as_u64().context("channel number")?;
            let url = format!("/api/v1/sessions/{id}/channels/{n}/recording?router={ROUTER_ID}");
            let reply = api.get(&url)?;
            expect_reply(&reply, 200, &format!("GET {url}"))?;
            ensure!(
                reply.header("content-type") == Some("application/octet-stream"),
                "GET {url}: content-type {:?}",
                reply.header("content-type")
            );
            let local_bytes = fs::read(&moved)?;
            ensure!(
                reply.body == local_bytes,
                "GET {url}: {} bytes, not the {} bytes the router wrote ({})",
                reply.body.len(),
                local_bytes.len(),
                path.display()
            );
            eprintln!(
                "GET {url}: {} bytes, identical to the router's {} (moved away first)",
                reply.body.len(),
                path.display()
            );
            let fetched = moved_dir.join(format!("{id}-from-console.sshlog"));
            fs::write(&fetched, &reply.body)?;
            let v = verify(lab, &fetched, &key.private)?;
            expect_exit(&v, 0, "sshgw recording verify of the console's bytes")?;
            ensure!(v.stdout.contains(COMPLETE), "verify: {}", v.stdout);
            if id == &shell {
                let cast = fs::read_to_string(export_asciicast(lab, &fetched, &key.private)?)?;
                ensure!(
                    cast.contains(&marker),
                    "the replayed pty output should show {marker}: {cast}"
                );
            }
        }
        let none = api.get(&format!(
            "/api/v1/sessions/{shell}/channels/99/recording?router={ROUTER_ID}"
        ))?;
        expect_reply(&none, 404, "a channel the session does not have")?;
        ensure!(none.json()?["error"].is_string(), "{}", none.text());

        // The chart: both sessions, per user and per destination.
        let by_user = get_json(&api, "/api/v1/chart?by=user")?;
        ensure!(
            by_user["by"] == "user" && chart_total(&by_user, USER) == 2,
            "/api/v1/chart?by=user should count 2 sessions of {USER}: {by_user:#}"
        );
        let by_dest = get_json(&api, "/api/v1/chart")?;
        ensure!(
            by_dest["by"] == "destination" && chart_total(&by_dest, &audited()) == 2,
            "/api/v1/chart should count 2 sessions to {}: {by_dest:#}",
            audited()
        );
        let filtered = get_json(&api, "/api/v1/chart?by=user&has_file_ops=true")?;
        ensure!(
            chart_total(&filtered, USER) == 1,
            "/api/v1/chart?by=user&has_file_ops=true: {filtered:#}"
        );

        let stdout = console.proc().stdout_text();
        ensure!(
            console.proc().is_running() && stdout.lines().count() == 1,
            "the console should still run and have printed one line: {stdout:?}\n{}",
            console.proc().log_text()
        );
        drop(console);
        gw.stop()?;
        Ok(())
    });
}

/// The lab sshd and daemon with one finished session in the log: `(sshd, daemon, id)`.
fn local_lab(lab: &Lab) -> Result<(Sshd, Gateway<'_>, String)> {
    let sshd = lab.start_sshd_with(SshdConfig::gateway())?;
    let mut gw = lab.gateway()?;
    gw.start()?;
    lab.ssh(V4.audited())
        .bind(V4.enrolled())
        .run("echo console-remote")?
        .check()?;
    let s = gw.wait_for_session(&[], LOG_TIMEOUT, "a session in the log", |_| true)?;
    let id = str_field(&s, "id").context("no id")?.to_owned();
    gw.wait_session_closed(&id, LOG_TIMEOUT)?;
    Ok((sshd, gw, id))
}

/// The daemon's config with a `[console]` table of `lines`, written to `name`.
fn console_config(lab: &Lab, gw: &Gateway<'_>, name: &str, lines: &[String]) -> Result<PathBuf> {
    let base = fs::read_to_string(gw.config_path())?;
    ensure!(
        !base.contains("[console]"),
        "the daemon's config has a [console] table"
    );
    let path = lab.dir().join(name);
    fs::write(&path, format!("{base}\n[console]\n{}\n", lines.join("\n")))?;
    Ok(path)
}

fn toml_line(key: &str, path: &Path) -> String {
    format!("{key} = {}", toml_str(&path.to_string_lossy()))
}

/// Fails unless the request got no HTTP answer (a refused TLS handshake).
fn expect_no_answer(client: &HttpClient, path: &str, what: &str) -> Result<String> {
    match client.request("GET", path)? {
        Err(failed) => {
            // 35: the handshake failed; 56: TLS 1.3 finishes the client's side first, the
            // server's alert arrives with the first read.
            ensure!(
                matches!(failed.code, Some(35 | 56)) && failed.stderr.contains("alert"),
                "{what}: expected a TLS alert from the console, got {failed}"
            );
            eprintln!("{what}: refused as expected: {failed}");
            Ok(failed.stderr)
        }
        Ok(reply) => anyhow::bail!(
            "{what}: the console answered HTTP {} instead of refusing the handshake: {:?}",
            reply.status,
            reply.text()
        ),
    }
}

/// 2. TLS, client certificates and remote listening.
#[test]
fn tls_with_client_certificates_and_tokens() {
    lab_test(|lab| {
        require_tools()?;
        let (_sshd, gw, id) = local_lab(lab)?;
        let wan = addr::RTR_WAN_V4.to_string();
        let pki = Pki::make(lab, &[&wan])?;
        let tls = [
            toml_line("tls_cert", &pki.server_cert),
            toml_line("tls_key", &pki.server_key),
        ];
        let mtls_config = console_config(
            lab,
            &gw,
            "console-mtls.toml",
            &[
                tls[0].clone(),
                tls[1].clone(),
                toml_line("client_ca", &pki.ca_cert),
            ],
        )?;
        let tls_config = console_config(lab, &gw, "console-tls.toml", &tls)?;
        let cert_only = console_config(lab, &gw, "console-cert-only.toml", &tls[..1])?;
        let ca_only = console_config(
            lab,
            &gw,
            "console-ca-only.toml",
            &[toml_line("client_ca", &pki.ca_cert)],
        )?;

        // Half a TLS configuration is refused, naming what is missing.
        let out = console::expect_refusal(
            lab,
            &cert_only,
            &["--listen", "127.0.0.1:0"],
            "tls_cert without tls_key",
        )?;
        ensure!(
            out.stderr.contains("tls_cert") && out.stderr.contains("tls_key"),
            "the refusal should name tls_cert and tls_key: {:?}",
            out.stderr
        );
        let out = console::expect_refusal(
            lab,
            &ca_only,
            &["--listen", "127.0.0.1:0"],
            "client_ca without TLS",
        )?;
        ensure!(
            out.stderr.contains("client_ca") && out.stderr.contains("TLS"),
            "the refusal should name client_ca and TLS: {:?}",
            out.stderr
        );

        // Client certificates.
        let console = RemoteConsole::start(lab, None, &mtls_config, "127.0.0.1:0", &[])?;
        ensure!(
            console.url() == format!("https://127.0.0.1:{}/", console.port()),
            "a TLS console should print https://127.0.0.1:PORT/, printed {}",
            console.url()
        );
        let token = console::read_token(gw.state_dir())?;
        let bare = HttpClient::of(lab, &console)?.cacert(&pki.ca_cert);
        expect_no_answer(&bare, "/api/v1/sessions", "no client certificate")?;
        console.wait_for_log_count("TLS handshake with", 1, CONSOLE_LOG_TIMEOUT)?;
        expect_no_answer(
            &bare.clone().token(&token),
            "/api/v1/sessions",
            "a token but no client certificate",
        )?;
        console.wait_for_log_count("TLS handshake with", 2, CONSOLE_LOG_TIMEOUT)?;
        let foreign = bare
            .clone()
            .client_cert(&pki.other_client_cert, &pki.other_client_key);
        expect_no_answer(
            &foreign,
            "/api/v1/sessions",
            "a client certificate of another CA",
        )?;
        console.wait_for_log_count("TLS handshake with", 3, CONSOLE_LOG_TIMEOUT)?;
        let plain = HttpClient::new(
            lab,
            console.ns(),
            &format!("http://127.0.0.1:{}", console.port()),
        )?
        .token(&token);
        let r = plain.request("GET", "/api/v1/sessions")?;
        ensure!(
            !matches!(&r, Ok(reply) if reply.status == 200),
            "plain HTTP to the TLS port should get nothing: {}",
            describe_transport(&r)
        );

        let certified = bare.client_cert(&pki.client_cert, &pki.client_key);
        let (count, listed) = list(&certified, "")?;
        ensure!(
            count == 1 && listed == [id.clone()],
            "with a client certificate and no token: {listed:?}"
        );
        let detail = get_json(&certified, &format!("/api/v1/sessions/{id}"))?;
        ensure!(detail["id"] == id.as_str(), "{detail:#}");
        let page = certified.get("/")?;
        expect_reply(&page, 200, "the page with a client certificate")?;
        drop(console);

        // Any address once TLS is on: in the router namespace, on 0.0.0.0, reached from the
        // server namespace on the router's WAN address.
        let remote = RemoteConsole::start(lab, Some(&lab.rtr), &mtls_config, "0.0.0.0:0", &[])?;
        ensure!(
            remote.url() == format!("https://0.0.0.0:{}/", remote.port()),
            "--listen 0.0.0.0:0 should print https://0.0.0.0:PORT/, printed {}",
            remote.url()
        );
        let from_srv = HttpClient::new(
            lab,
            &NsRef::new(Some(&lab.srv)),
            &format!("https://{wan}:{}", remote.port()),
        )?
        .cacert(&pki.ca_cert);
        expect_no_answer(&from_srv, "/api/v1/info", "remote, no client certificate")?;
        let (count, _) = list(&from_srv.client_cert(&pki.client_cert, &pki.client_key), "")?;
        ensure!(
            count == 1,
            "remote with a client certificate: count {count}"
        );
        drop(remote);

        // TLS without client certificates: the token.
        let console = RemoteConsole::start(lab, None, &tls_config, "127.0.0.1:0", &[])?;
        let anonymous = HttpClient::of(lab, &console)?.cacert(&pki.ca_cert);
        let reply = anonymous.get("/api/v1/sessions")?;
        expect_reply(&reply, 401, "TLS, no token")?;
        ensure!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "401 without WWW-Authenticate: Bearer: {:?}",
            reply.headers
        );
        // A certificate is neither asked for nor honoured without client_ca.
        let cert_no_token = anonymous
            .clone()
            .client_cert(&pki.client_cert, &pki.client_key)
            .get("/api/v1/sessions")?;
        expect_reply(
            &cert_no_token,
            401,
            "TLS without client_ca, a certificate, no token",
        )?;
        let (count, _) = list(&anonymous.clone().token(&token), "")?;
        ensure!(count == 1, "TLS with the token: count {count}");
        drop(console);
        Ok(())
    });
}

/// 3. What the API refuses, over plain HTTP; every answer has the CSP.
#[test]
fn api_refusals_and_static_path_traversal() {
    lab_test(|lab| {
        require_tools()?;
        let (_sshd, gw, id) = local_lab(lab)?;
        let console = Console::start(lab, gw.config_path(), &[])?;
        let token = console::read_token(gw.state_dir())?;
        let anonymous = HttpClient::new(lab, &NsRef::default(), console.url())?;
        let api = anonymous.clone().token(&token);
        let mut replies: Vec<(String, Reply)> = Vec::new();
        let mut check = |client: &HttpClient, method: &str, path: &str, status: u16| {
            let reply = client.send(method, path)?;
            let what = format!("{method} {path}");
            expect_reply(&reply, status, &what)?;
            replies.push((what, reply.clone()));
            anyhow::Ok(reply)
        };

        // The good cases first: the page without a token, the API with it.
        let page = check(&anonymous, "GET", "/", 200)?;
        ensure!(
            page.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{:?}",
            page.headers
        );
        check(&api, "GET", "/api/v1/sessions", 200)?;
        check(&api, "GET", &format!("/api/v1/sessions/{id}"), 200)?;

        // Tokens.
        let wrong = "A".repeat(token.len());
        for (label, client) in [
            ("no token", anonymous.clone()),
            ("a wrong token", anonymous.clone().token(&wrong)),
            (
                "a cut token",
                anonymous.clone().token(&token[..token.len() - 1]),
            ),
        ] {
            let reply = check(&client, "GET", "/api/v1/sessions", 401)?;
            ensure!(
                reply
                    .header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{label}: 401 without WWW-Authenticate: Bearer: {:?}",
                reply.headers
            );
            ensure!(
                reply.json()?["error"].is_string() && !reply.text().contains(&token),
                "{label}: {}",
                reply.text()
            );
        }

        // Bad filters, named.
        for (query, name) in [
            ("since=yesterday", "since"),
            ("until=2026-13-45", "until"),
            ("limit=0", "limit"),
            ("active=maybe", "active"),
            ("colour=red", "colour"),
        ] {
            let reply = check(&api, "GET", &format!("/api/v1/sessions?{query}"), 400)?;
            let error = reply.json()?["error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            ensure!(
                error.contains(name),
                "?{query}: the error should name {name}: {error:?}"
            );
        }
        let reply = check(&api, "GET", "/api/v1/chart?by=colour", 400)?;
        ensure!(reply.text().contains("by"), "{}", reply.text());

        // Unknown things.
        for path in [
            "/api/v1/sessions/no-such-session".to_owned(),
            "/api/v1/sessions/00000000-0000-0000-0000-000000000000".to_owned(),
            format!("/api/v1/sessions/{id}?router=rtr-elsewhere"),
            format!("/api/v1/sessions/{id}/channels/7/recording"),
            "/api/v1/sessions/..%2F..%2F..%2Fetc%2Fpasswd/channels/0/recording".to_owned(),
            "/api/v1/nothing".to_owned(),
            "/api/v2/sessions".to_owned(),
        ] {
            let reply = check(&api, "GET", &path, 404)?;
            ensure!(
                reply.json()?["error"].is_string(),
                "{path}: {}",
                reply.text()
            );
        }
        check(
            &api,
            "GET",
            &format!("/api/v1/sessions/{id}/channels/x/recording"),
            400,
        )?;

        // Wrong methods.
        check(&api, "POST", "/api/v1/sessions", 405)?;
        check(&api, "DELETE", &format!("/api/v1/sessions/{id}"), 405)?;
        check(&api, "PUT", "/api/v1/info", 405)?;
        check(&anonymous, "POST", "/", 405)?;

        // Path traversal on the page's files (sent as written: curl --path-as-is).
        for path in [
            "/../../etc/passwd",
            "/%2e%2e/Cargo.toml",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/..%2f..%2fetc%2fpasswd",
            "/vendor/../../../etc/passwd",
            "/vendor/%2e%2e/%2e%2e/Cargo.toml",
            "/app.js/../../Cargo.toml",
            "//etc/passwd",
        ] {
            let reply = check(&anonymous, "GET", path, 404)?;
            let body = reply.text();
            ensure!(
                !body.contains("root:") && !body.contains("[package]"),
                "GET {path} leaked a file: {body:?}"
            );
        }

        for (what, reply) in &replies {
            ensure!(
                reply.header("x-content-type-options") == Some("nosniff")
                    && reply.header("x-frame-options") == Some("DENY"),
                "{what}: security headers {:?}",
                reply.headers
            );
        }
        eprintln!(
            "{} answers checked for the Content-Security-Policy",
            replies.len()
        );
        ensure!(
            console.proc().is_running(),
            "the console exited: {}",
            console.proc().log_text()
        );
        drop(console);
        Ok(())
    });
}

/// One raw HTTP/1.1 request with extra headers: the status.
fn raw_status(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "Content-Length: 0\r\n\r\n";
    stream.write_all(request.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP reply: {reply:?}"))
}

/// Review findings, over the wire: a client that pipelines requests and hangs up used to
/// kill the console (SIGPIPE on the next write); and with client certificates another site
/// could make the auditor's browser kill a session (no origin check).
#[test]
fn console_survives_hangups_and_refuses_cross_site_requests() {
    lab_test(|lab| {
        let (_sshd, gw, id) = local_lab(lab)?;
        let console = Console::start(lab, gw.config_path(), &[])?;
        let token = console::read_token(gw.state_dir())?;
        let bearer = format!("Bearer {token}");
        let addr = console
            .url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        for _ in 0..20 {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect(&addr)?;
            // A large answer (the player, hundreds of KiB) takes many writes: the ones after
            // the client's reset fail with EPIPE.
            let request = b"GET /vendor/asciinema-player.min.js HTTP/1.1\r\nHost: x\r\n\r\n";
            stream.write_all(request.repeat(3).as_slice())?;
        }
        let status = raw_status(&addr, "GET", "/api/v1/info", &[("Authorization", &bearer)])?;
        ensure!(
            status == 200 && console.proc().is_running(),
            "the console should outlive clients that hang up (status {status}, running {})",
            console.proc().is_running()
        );

        let kill = format!("/api/v1/sessions/{id}/kill");
        for (name, value) in [
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Site", "same-site"),
        ] {
            let status = raw_status(
                &addr,
                "POST",
                &kill,
                &[("Authorization", &bearer), (name, value)],
            )?;
            ensure!(
                status == 403,
                "POST kill with {name}: {value} answered {status}, not 403"
            );
        }
        let own = format!("http://{addr}");
        for headers in [
            vec![("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")],
            vec![],
        ] {
            let mut all = headers.clone();
            all.push(("Authorization", &bearer));
            let status = raw_status(&addr, "GET", "/api/v1/info", &all)?;
            ensure!(status == 200, "GET info with {headers:?} answered {status}");
        }
        Ok(())
    })
}
