//! Control API tests over the daemon's real Unix socket: peer credentials (SO_PEERCRED and
//! the socket's mode/group), input validation with field-path errors, atomic refusal (state
//! in memory and on disk unchanged), body size and time limits, and the CLI's exit codes.
//!
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`), `curl` and `setpriv`
//! (util-linux) for the unprivileged-peer test:
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test control_api -- --test-threads=2`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use base64::Engine;
use serde_json::{Value, json};
use sshgw_tests::gateway::{bpftool, default_devices, default_policies};
use sshgw_tests::recording::{closed_recorded_channel, read_header, recorded_policies};
use sshgw_tests::wait::poll_until;
use sshgw_tests::{ApiReply, Family, Gateway, GatewayConfig, Lab, SshdConfig, lab_test};
use sshgw_tests::{control, files};

/// `nobody` / `nogroup` on Debian.
const NOBODY: u32 = 65534;
const CURL_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TIMEOUT: Duration = Duration::from_secs(15);

/// `curl --unix-socket SOCK http://sshgw/PATH`, as root or (with `as_nobody`) as uid/gid
/// 65534 without supplementary groups. Returns curl's exit code, the HTTP code (0 when there
/// was no answer) and the body.
fn curl(lab: &Lab, socket: &Path, path: &str, as_nobody: bool) -> Result<(i32, u16, String)> {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "curl",
        ]);
        c
    } else {
        Command::new("curl")
    };
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
    ])
    .arg(socket)
    .arg(format!("http://sshgw{path}"));
    let out = lab.procs().run_quiet("curl", &mut cmd, CURL_TIMEOUT)?;
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    Ok((
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", out.stderr),
    ))
}

/// 11. The socket is 0660; root may use it. A peer that is neither root, the daemon's user
///     nor in `control_group` is refused with 403 even when the socket mode would let it
///     connect; with `control_group = "nogroup"` the socket belongs to that group and its
///     members are allowed without any chmod.
#[test]
fn control_socket_checks_peer_credentials() {
    lab_test(|lab| {
        let mut gw = lab.gateway()?;
        gw.start()?;
        let sock = gw.control_socket().to_owned();
        let meta = fs::metadata(&sock)?;
        ensure!(
            meta.permissions().mode() & 0o777 == 0o660,
            "the control socket should have mode 0660: {:o}",
            meta.permissions().mode()
        );

        let (rc, code, body) = curl(lab, &sock, "/v1/status", false)?;
        ensure!(
            rc == 0 && code == 200,
            "curl as root: rc {rc}, HTTP {code}: {body}"
        );
        let status: Value = serde_json::from_str(&body).context("status body")?;
        ensure!(status["daemon"] == "running", "status: {status}");

        // Let uid 65534 reach the socket's directory (the lab dir is 0700).
        fs::set_permissions(lab.dir(), fs::Permissions::from_mode(0o711))?;
        let (rc, code, body) = curl(lab, &sock, "/v1/status", true)?;
        ensure!(
            rc != 0 && code == 0,
            "with mode 0660 root:root, uid 65534 should not even connect: rc {rc}, HTTP {code}: {body}"
        );

        // A misconfigured socket mode: the peer check still refuses.
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o666))?;
        let (rc, code, body) = curl(lab, &sock, "/v1/policies", true)?;
        ensure!(
            rc == 0 && code == 403,
            "uid 65534 should get 403: rc {rc}, HTTP {code}: {body}"
        );
        let err: Value = serde_json::from_str(&body).context("403 body")?;
        ensure!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "the 403 body should be {{\"error\": …}}: {body}"
        );
        let line = gw
            .proc()
            .context("daemon")?
            .wait_for_line("control socket peer refused", Duration::from_secs(10))?;
        ensure!(
            line.contains(&NOBODY.to_string()),
            "the refusal log line should name uid {NOBODY}: {line}"
        );
        gw.stop()?;

        // control_group: the group owns the socket and its members may use it.
        let mut gw = lab.gateway_with(GatewayConfig::default().control_group("nogroup"))?;
        gw.start()?;
        let sock = gw.control_socket().to_owned();
        let meta = fs::metadata(&sock)?;
        ensure!(
            meta.permissions().mode() & 0o777 == 0o660 && meta.gid() == NOBODY,
            "with control_group the socket should be 0660 group {NOBODY}: mode {:o} gid {}",
            meta.permissions().mode() & 0o777,
            meta.gid()
        );
        let (rc, code, body) = curl(lab, &sock, "/v1/status", true)?;
        ensure!(
            rc == 0 && code == 200,
            "a member of control_group should be allowed: rc {rc}, HTTP {code}: {body}"
        );
        let status: Value = serde_json::from_str(&body).context("status body")?;
        ensure!(status["daemon"] == "running", "status: {status}");
        Ok(())
    });
}

/// The policy set and device table in force, and the bytes of both files.
struct Snapshot {
    policies: Value,
    devices: Value,
    policies_file: Vec<u8>,
    devices_file: Vec<u8>,
}

fn snapshot(gw: &Gateway<'_>) -> Result<Snapshot> {
    let (c1, policies) = gw.api("GET", "/v1/policies", None)?;
    let (c2, devices) = gw.api("GET", "/v1/devices", None)?;
    ensure!(c1 == 200 && c2 == 200, "GET policies/devices: {c1} {c2}");
    Ok(Snapshot {
        policies,
        devices,
        policies_file: fs::read(gw.policies_path())?,
        devices_file: fs::read(gw.devices_path())?,
    })
}

/// Nothing changed: in memory (GET) and on disk (bytes).
fn unchanged(gw: &Gateway<'_>, before: &Snapshot, what: &str) -> Result<()> {
    let now = snapshot(gw)?;
    ensure!(
        now.policies == before.policies,
        "{what}: the policies in force changed: {:#}",
        now.policies
    );
    ensure!(
        now.devices == before.devices,
        "{what}: the device table changed: {:#}",
        now.devices
    );
    ensure!(
        now.policies_file == before.policies_file,
        "{what}: policies.json changed on disk"
    );
    ensure!(
        now.devices_file == before.devices_file,
        "{what}: devices.json changed on disk"
    );
    Ok(())
}

/// A one-policy set with `field` replaced (or added) in the policy.
fn policy_with(field: &str, value: Value) -> Value {
    let mut set = default_policies();
    set["policies"][0][field] = value;
    set
}

/// A predicate on an API error message.
type ErrorCheck = Box<dyn Fn(&str) -> bool>;

/// `method path body` must answer `status` with an error that passes `check`.
fn expect_error(
    gw: &Gateway<'_>,
    method: &str,
    path: &str,
    body: &[u8],
    status: u16,
    check: impl Fn(&str) -> bool,
    what: &str,
) -> Result<String> {
    let reply = gw.api_bytes(method, path, Some(body))?;
    let error = reply.error();
    ensure!(
        reply.status == status && error.as_deref().is_some_and(&check),
        "{what}: {method} {path} should answer {status} with a matching error, got {} {:?}",
        reply.status,
        reply.body
    );
    Ok(error.unwrap_or_default())
}

/// 12. Invalid pushes are refused with 400 and an error naming the field path (or the JSON
///     position); after each, the state in memory and on disk is byte-for-byte unchanged.
///     Validation without applying, the body limit (413), and the single-device endpoints.
#[test]
fn control_api_refuses_invalid_input_atomically() {
    lab_test(|lab| {
        let mut gw = lab.gateway()?;
        gw.start()?;
        let before = snapshot(&gw)?;

        let bad_cidr = policy_with("destinations", json!(["10.0.0.300/8"]));
        let mut dup_ids = default_policies();
        let first = dup_ids["policies"][0].clone();
        dup_ids["policies"].as_array_mut().unwrap().push(first);
        let cases: Vec<(&str, Vec<u8>, ErrorCheck)> = vec![
            (
                "truncated JSON",
                br#"{"policies": [{"id": "x""#.to_vec(),
                Box::new(|e: &str| e.contains("line 1 column")),
            ),
            (
                "a syntax error on line 3",
                b"{\"policies\": [\n  {\"id\": \"x\",\n   \"name\": }]}".to_vec(),
                Box::new(|e: &str| e.contains("line 3 column")),
            ),
            (
                "not UTF-8",
                b"{\"policies\": [\xff]}".to_vec(),
                Box::new(|e: &str| !e.is_empty()),
            ),
            (
                "a number as id",
                serde_json::to_vec(&policy_with("id", json!(5)))?,
                Box::new(|e: &str| e.starts_with("policies[0].id:")),
            ),
            (
                "an unknown field",
                serde_json::to_vec(&policy_with("bogus", json!(true)))?,
                Box::new(|e: &str| {
                    e.starts_with("policies[0].bogus:") && e.contains("unknown field `bogus`")
                }),
            ),
            (
                "an unknown ssh field",
                serde_json::to_vec(&policy_with("ssh", json!({"usernmes": ["x"]})))?,
                Box::new(|e: &str| e.starts_with("policies[0].ssh.usernmes:")),
            ),
            (
                "an invalid CIDR",
                serde_json::to_vec(&bad_cidr)?,
                Box::new(|e: &str| {
                    e.starts_with(
                        "policies[0].destinations[0]: \"10.0.0.300/8\" is not an IP network",
                    )
                }),
            ),
            (
                "a bad duration",
                serde_json::to_vec(&policy_with("ssh", json!({"max_duration": "5w"})))?,
                Box::new(|e: &str| e.starts_with("policies[0].ssh.max_duration:")),
            ),
            (
                "duplicate ids",
                serde_json::to_vec(&dup_ids)?,
                Box::new(|e: &str| e.starts_with("policies[1].id:")),
            ),
            (
                "no destinations",
                serde_json::to_vec(&policy_with("destinations", json!([])))?,
                Box::new(|e: &str| e.starts_with("policies[0].destinations")),
            ),
        ];
        for (what, body, check) in &cases {
            let e = expect_error(&gw, "PUT", "/v1/policies", body, 400, check, what)?;
            eprintln!("{what}: {e}");
            unchanged(&gw, &before, what)?;
            let v = expect_error(&gw, "POST", "/v1/policies/validate", body, 400, check, what)?;
            ensure!(
                v == e,
                "{what}: validate and push should give the same error: {v:?} vs {e:?}"
            );
        }

        // Validation alone applies nothing.
        let other = json!({"policies": [
            {"id": "a", "name": "A", "precedence": 1, "action": "audit_ssh", "destinations": ["203.0.113.20"]},
            {"id": "b", "name": "B", "precedence": 2, "action": "block", "destinations": ["198.51.100.0/24"]}
        ]});
        let (code, reply) = gw.api("POST", "/v1/policies/validate", Some(&other))?;
        ensure!(
            code == 200 && reply == json!({"valid": true, "policies": 2}),
            "validate: {code} {reply}"
        );
        unchanged(&gw, &before, "after validate")?;

        // 33 MiB is over the 32 MiB body limit.
        let mut huge = vec![b' '; 33 * 1024 * 1024];
        huge.extend_from_slice(&serde_json::to_vec(&other)?);
        expect_error(
            &gw,
            "PUT",
            "/v1/policies",
            &huge,
            413,
            |e| e.contains("MiB"),
            "33 MiB body",
        )?;
        unchanged(&gw, &before, "after the oversized body")?;

        // Devices.
        let mut dup_addr = default_devices();
        let mut second = dup_addr["devices"][0].clone();
        second["id"] = json!("second");
        dup_addr["devices"].as_array_mut().unwrap().push(second);
        expect_error(
            &gw,
            "PUT",
            "/v1/devices",
            &serde_json::to_vec(&dup_addr)?,
            400,
            |e| e.starts_with("devices[1].addresses[0]:") && e.contains("laptop-jdoe"),
            "a duplicate device address",
        )?;
        unchanged(&gw, &before, "after the duplicate address")?;
        expect_error(
            &gw,
            "DELETE",
            "/v1/devices/unknown",
            b"",
            404,
            |e| e.contains("unknown"),
            "deleting an unknown device",
        )?;
        let mut device = default_devices()["devices"][0].clone();
        device["id"] = json!("someone-else");
        expect_error(
            &gw,
            "PUT",
            "/v1/devices/laptop-jdoe",
            &serde_json::to_vec(&device)?,
            400,
            |e| e.contains("someone-else") && e.contains("laptop-jdoe"),
            "a body id that differs from the path",
        )?;
        unchanged(&gw, &before, "after the device errors")?;
        expect_error(
            &gw,
            "GET",
            "/v1/nonexistent",
            b"",
            404,
            |_| true,
            "unknown endpoint",
        )?;
        expect_error(
            &gw,
            "DELETE",
            "/v1/policies",
            b"",
            405,
            |_| true,
            "wrong method",
        )?;
        unchanged(&gw, &before, "after the endpoint errors")?;

        // A valid push applies, in memory and on disk.
        let (code, reply) = gw.api("PUT", "/v1/policies", Some(&other))?;
        ensure!(
            code == 200 && reply == json!({"applied": true, "policies": 2}),
            "PUT /v1/policies: {code} {reply}"
        );
        let (_, in_force) = gw.api("GET", "/v1/policies", None)?;
        let on_disk: Value = serde_json::from_slice(&fs::read(gw.policies_path())?)?;
        ensure!(
            on_disk == in_force && in_force["policies"][1]["id"] == "b",
            "after a valid push, disk and memory should hold it:\ndisk {on_disk:#}\nmemory {in_force:#}"
        );
        let mode = fs::metadata(gw.policies_path())?.permissions().mode() & 0o777;
        ensure!(
            mode == 0o600,
            "policies.json should be written 0600, is {mode:o}"
        );

        // Durations are shown in canonical form, and `policy show --json` output pushes back
        // unchanged (`policy push -`, from standard input).
        let mut canonical = other.clone();
        canonical["policies"][0]["ssh"] = json!({"max_duration": "90s"});
        canonical["policies"][1]["ssh"] = json!({"max_duration": "120m"});
        let (code, reply) = gw.api("PUT", "/v1/policies", Some(&canonical))?;
        ensure!(code == 200, "PUT with durations: {code} {reply}");
        let shown = gw.cli_json(&["policy", "show", "--json"])?;
        ensure!(
            shown["policies"][0]["ssh"]["max_duration"] == "1m30s"
                && shown["policies"][1]["ssh"]["max_duration"] == "2h",
            "durations should be shown canonically (90s -> 1m30s, 120m -> 2h): {shown:#}"
        );
        let file = gw.write_input("shown", &shown)?;
        let out = gw
            .cli_with_stdin(&["policy", "push", "-"], &file)?
            .check("sshgw policy push - (the show --json output)")?;
        ensure!(
            out.stdout.contains("applied 2 policies"),
            "policy push -: {:?}",
            out.stdout
        );
        let again = gw.cli_json(&["policy", "show", "--json"])?;
        ensure!(
            again == shown,
            "pushing the shown policies back should change nothing:\nbefore {shown:#}\nafter {again:#}"
        );

        // One device in, one device out.
        let mut extra = default_devices()["devices"][0].clone();
        extra["id"] = json!("tablet-jdoe");
        extra["addresses"] = json!(["100.96.0.9"]);
        let (code, reply) = gw.api("PUT", "/v1/devices/tablet-jdoe", Some(&extra))?;
        ensure!(code == 200, "PUT /v1/devices/tablet-jdoe: {code} {reply}");
        let (_, devices) = gw.api("GET", "/v1/devices", None)?;
        ensure!(
            devices["devices"].as_array().map(Vec::len) == Some(2),
            "two devices after the upsert: {devices:#}"
        );
        let (code, reply) = gw.api("DELETE", "/v1/devices/tablet-jdoe", None)?;
        ensure!(
            code == 200,
            "DELETE /v1/devices/tablet-jdoe: {code} {reply}"
        );
        let (code, _) = gw.api("DELETE", "/v1/devices/tablet-jdoe", None)?;
        ensure!(
            code == 404,
            "deleting it twice should answer 404, got {code}"
        );
        let (_, devices) = gw.api("GET", "/v1/devices", None)?;
        ensure!(
            devices == before.devices,
            "the device table should be back to the original: {devices:#}"
        );

        // Refused and accepted pushes leave no staging files behind.
        let leftovers: Vec<String> = fs::read_dir(gw.state_dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        ensure!(
            leftovers.is_empty(),
            "temporary files left in the state dir: {leftovers:?}"
        );
        Ok(())
    });
}

/// 13. CLI exit codes: 3 for refused input (offline `policy check`, `policy push` of an
///     invalid file, a 4xx answer), 4 when the daemon is unreachable; errors name the field.
#[test]
fn cli_exit_codes() {
    lab_test(|lab| {
        let mut gw = lab.gateway()?;
        let bad = gw.write_input("bad", &policy_with("destinations", json!(["10.0.0.300/8"])))?;
        let good = gw.write_input("good", &default_policies())?;
        let bad = bad.to_string_lossy().into_owned();
        let good = good.to_string_lossy().into_owned();

        // Offline: no daemon running.
        let out = gw.sshgw(&["policy", "check", &bad])?;
        ensure!(
            out.status.code() == Some(3)
                && out.stderr.contains("policies[0].destinations[0]")
                && out.stderr.contains("10.0.0.300/8"),
            "policy check of an invalid file should exit 3 naming the field: {out:?}"
        );
        let out = gw.sshgw(&["policy", "check", &good])?;
        ensure!(
            out.status.success() && out.stdout.contains("1 policies"),
            "policy check of a valid file: {out:?}"
        );
        for args in [
            vec!["policy", "show", "--socket", "/nonexistent/sshgw.sock"],
            vec!["devices", "show", "--socket", "/nonexistent/sshgw.sock"],
            vec![
                "policy",
                "push",
                &good,
                "--socket",
                "/nonexistent/sshgw.sock",
            ],
        ] {
            let out = gw.sshgw(&args)?;
            ensure!(
                out.status.code() == Some(4),
                "sshgw {} should exit 4 (daemon unreachable): {out:?}",
                args.join(" ")
            );
        }
        let out = gw.cli(&["policy", "show"])?;
        ensure!(
            out.status.code() == Some(4),
            "policy show before the daemon started should exit 4: {out:?}"
        );

        gw.start()?;
        let before = snapshot(&gw)?;
        let out = gw.cli(&["policy", "push", &bad])?;
        ensure!(
            out.status.code() == Some(3) && out.stderr.contains("policies[0].destinations[0]"),
            "policy push of an invalid file should exit 3 naming the field: {out:?}"
        );
        unchanged(&gw, &before, "after the refused CLI push")?;
        let out = gw.cli(&["sessions", "show", "no-such-session"])?;
        ensure!(
            out.status.code() == Some(3),
            "a 404 answer should exit 3: {out:?}"
        );
        let out = gw.cli(&["policy", "show"])?;
        ensure!(
            out.status.success() && out.stdout.contains("audit-lab"),
            "policy show (table): {out:?}"
        );
        Ok(())
    });
}

/// Reads from `stream` until EOF or a complete HTTP status line + headers; returns what was
/// read and how long it took. Bounded by the stream's read timeout.
fn read_until_close(stream: &mut UnixStream) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "no reply and no close after {:?}; read so far: {:?}",
                        started.elapsed(),
                        String::from_utf8_lossy(&got)
                    )
                });
            }
        }
    }
    Ok((
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    ))
}

/// Extra: slow clients are cut off (a request header must arrive within 5 s, a body within
/// 15 s: 408) and do not hold up other clients meanwhile.
#[test]
fn control_socket_cuts_off_slow_clients() {
    lab_test(|lab| {
        let mut gw = lab.gateway()?;
        gw.start()?;
        let before = snapshot(&gw)?;
        let sock = gw.control_socket().to_owned();

        let mut slow_header = UnixStream::connect(&sock)?;
        slow_header.write_all(b"GET /v1/status HTTP/1.1\r\nHost: sshgw\r\n")?;
        let mut slow_body = UnixStream::connect(&sock)?;
        slow_body.write_all(
            b"PUT /v1/policies HTTP/1.1\r\nHost: sshgw\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"policies\": [",
        )?;
        // Both stalled connections are open: other clients are still served.
        let (code, status) = gw.api("GET", "/v1/status", None)?;
        ensure!(
            code == 200,
            "GET /v1/status while slow clients wait: {code} {status}"
        );

        // Deadlines: 5 s / 15 s in the daemon, plus slack for a loaded machine.
        slow_header.set_read_timeout(Some(Duration::from_secs(12)))?;
        let (reply, took) = read_until_close(&mut slow_header)?;
        eprintln!("incomplete header: cut off after {took:?} with {reply:?}");
        ensure!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
            "an incomplete header should get the connection closed (or 408): {reply:?}"
        );

        slow_body.set_read_timeout(Some(Duration::from_secs(25)))?;
        let (reply, took) = read_until_close(&mut slow_body)?;
        eprintln!("incomplete body: answered after {took:?} with {reply:?}");
        ensure!(
            reply.starts_with("HTTP/1.1 408") && reply.contains("\"error\""),
            "an incomplete body should be answered 408 with an error: {reply:?}"
        );
        unchanged(&gw, &before, "after the slow clients")?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// F9: no injection into the operator's terminal
// ------------------------------------------------------------------------------------------

/// Characters a human-readable CLI output must never carry raw: C0 controls other than the
/// line break, DEL, C1 controls and the bidi/format characters the CLI escapes.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// The human-readable output of `sshgw ARGS`: must succeed and hold no raw control or bidi
/// character.
fn clean_output(gw: &Gateway<'_>, args: &[&str]) -> Result<String> {
    let out = gw.cli(args)?.check(&format!("sshgw {}", args.join(" ")))?;
    let raw = raw_controls(&out.stdout);
    ensure!(
        raw.is_empty(),
        "sshgw {} printed raw control characters {raw:?}:\n{}",
        args.join(" "),
        out.stdout
    );
    Ok(out.stdout)
}

/// F9. A user's exec command line and SFTP upload path full of terminal escapes (cursor
/// moves, line erase, an OSC 52 clipboard write, CR, a bidi override) reach the session log
/// exactly (`--json`), and every human-readable view shows them escaped.
#[test]
fn cli_escapes_what_audited_users_chose() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway()?;
        gw.start()?;
        let ssh = lab
            .ssh(Family::V4.audited())
            .bind(Family::V4.enrolled())
            .user("jdoe");
        let command =
            "true\r\x1b[2K0  exec  ls -la\x1b]52;c;ZXZpbA==\x07 \u{202e}gpj.exe #\x1b[1A\x1b[2K";
        ssh.run(command)?;
        let local = lab.dir().join("payload.txt");
        fs::write(&local, "payload\n")?;
        let remote = "x\x1b[1A\x1b[2K\rinnocent\u{202e}txt.exe";
        let up = ssh.sftp_batch(&format!("put {} \"{remote}\"\n", local.display()))?;
        ensure!(up.success(), "the SFTP upload failed: {up:?}");

        let ids: Vec<String> = poll_until(
            "both sessions in the log",
            LOG_TIMEOUT,
            Duration::from_millis(100),
            || {
                let list = gw.sessions(&[])?;
                Ok((list.len() >= 2).then(|| {
                    list.iter()
                        .filter_map(|s| s["id"].as_str().map(str::to_owned))
                        .collect()
                }))
            },
        )?;
        let (mut saw_command, mut saw_path, mut all) = (false, false, String::new());
        for id in &ids {
            let s = gw.wait_session_closed(id, LOG_TIMEOUT)?;
            saw_command |= s["channels"][0]["command"] == command;
            saw_path |= s["file_ops"].as_array().is_some_and(|ops| {
                ops.iter()
                    .any(|op| op["path"].as_str().is_some_and(|p| p.ends_with(remote)))
            });
            all += &clean_output(&gw, &["sessions", "show", id])?;
        }
        eprintln!("sessions show:\n{all}");
        ensure!(
            saw_command && saw_path,
            "--json should hold the exact command ({saw_command}) and upload path ({saw_path})"
        );
        for escaped in [
            "true\\r\\e[2K0",
            "\\e]52;c;ZXZpbA==\\x07",
            "\\u{202e}gpj.exe",
            "x\\e[1A\\e[2K\\rinnocent\\u{202e}txt.exe",
        ] {
            ensure!(
                all.contains(escaped),
                "the views should show {escaped:?}:\n{all}"
            );
        }
        clean_output(&gw, &["sessions"])?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// F18: administrative actions are evidence; no lost updates
// ------------------------------------------------------------------------------------------

/// The `ETag` of a reply, without quotes (empty when there is none).
fn etag(reply: &ApiReply) -> String {
    reply
        .header("etag")
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

/// SHA-256 (hex) of `bytes`, with `sha256sum` on a scratch file.
fn sha256_of(lab: &Lab, label: &str, bytes: &[u8]) -> Result<String> {
    let path = lab.dir().join(format!("sha256-{label}"));
    fs::write(&path, bytes)?;
    files::sha256(lab, &path, CURL_TIMEOUT)
}

/// The newest `admin action` log line for `route` (bounded wait for `count` of them).
fn admin_line(gw: &Gateway<'_>, route: &str, count: usize) -> Result<String> {
    let needle = format!("route={route} ");
    poll_until(
        &format!("{count} admin action lines for {route}"),
        LOG_TIMEOUT,
        Duration::from_millis(50),
        || {
            let log = gw.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("admin action") && l.contains(&needle))
                .collect();
            Ok((lines.len() >= count).then(|| lines[lines.len() - 1].to_owned()))
        },
    )
    .with_context(|| format!("--- sshgw log ---\n{}", gw.log()))
}

/// F18. A push from an editor that read the device table before someone else changed it is
/// refused with 412 and changes nothing (API and `devices push --if-match`); ETags are the
/// SHA-256 of what GET serves and the daemon stores; every change, applied or refused, is
/// logged as an `admin action` with the caller's uid and pid and the new state's digest.
#[test]
fn stale_pushes_are_refused_and_admin_actions_logged() {
    lab_test(|lab| {
        let mut gw = lab.gateway()?;
        gw.start()?;
        let read = gw.api_bytes("GET", "/v1/devices", None)?;
        let e1 = etag(&read);
        let e1_quoted = format!("\"{e1}\"");

        // Someone else adds a device meanwhile.
        let mut tablet = default_devices()["devices"][0].clone();
        tablet["id"] = json!("tablet-jdoe");
        tablet["addresses"] = json!(["100.96.0.9"]);
        let added = gw.api_bytes(
            "PUT",
            "/v1/devices/tablet-jdoe",
            Some(&serde_json::to_vec(&tablet)?),
        )?;
        ensure!(added.status == 200, "PUT tablet-jdoe: {added:?}");
        let before = snapshot(&gw)?;

        // The first editor pushes its edit of the old table: a lost update.
        let mut edited: Value = serde_json::from_str(&read.body)?;
        edited["devices"][0]["posture"] = json!([]);
        let stale = gw.api_headers(
            "PUT",
            "/v1/devices",
            &[("If-Match", &e1_quoted)],
            Some(&serde_json::to_vec(&edited)?),
        )?;
        ensure!(
            stale.status == 412 && stale.error().is_some_and(|e| e.contains("changed")),
            "a push with a stale If-Match should answer 412: {stale:?}"
        );
        unchanged(&gw, &before, "after the stale push")?;
        let e2 = etag(&added);
        ensure!(
            !e1.is_empty() && etag(&stale) == e2 && e2 != e1,
            "the 412 should carry the current ETag {e2:?} (read {e1:?}): {stale:?}"
        );
        let stale = gw.api_headers(
            "DELETE",
            "/v1/devices/tablet-jdoe",
            &[("If-Match", &e1_quoted)],
            None,
        )?;
        ensure!(
            stale.status == 412,
            "a stale DELETE should answer 412: {stale:?}"
        );
        unchanged(&gw, &before, "after the stale delete")?;
        let policies = gw.api_bytes("GET", "/v1/policies", None)?;
        let stale = gw.api_headers(
            "PUT",
            "/v1/policies",
            &[("If-Match", "\"0000\"")],
            Some(policies.body.as_bytes()),
        )?;
        ensure!(
            stale.status == 412,
            "a stale policy push should answer 412: {stale:?}"
        );

        // ETag = SHA-256 of the GET body and of the file the daemon wrote.
        let now = gw.api_bytes("GET", "/v1/devices", None)?;
        ensure!(
            etag(&now) == e2 && sha256_of(lab, "get", now.body.as_bytes())? == e2,
            "the ETag should be the SHA-256 of the GET body: {now:?}"
        );
        ensure!(
            files::sha256(lab, &gw.devices_path(), CURL_TIMEOUT)? == e2,
            "the ETag should be the SHA-256 of devices.json"
        );

        // The CLI: refused with exit 3 on the stale tag, applied on the current one.
        let file = gw.write_input("edited", &edited)?;
        let file = file.to_string_lossy();
        let out = gw.cli(&["devices", "push", &file, "--if-match", &e1])?;
        ensure!(
            out.status.code() == Some(3),
            "devices push --if-match STALE: {out:?}"
        );
        unchanged(&gw, &before, "after the stale CLI push")?;
        let out = gw
            .cli(&["devices", "push", &file, "--if-match", &e2])?
            .check("devices push --if-match")?;
        let e3 = etag(&gw.api_bytes("GET", "/v1/devices", None)?);
        ensure!(
            out.stdout.contains(&format!("etag {e3}")) && e3 != e2,
            "devices push should print the new ETag {e3}: {out:?}"
        );

        // Every change is in the log with who made it and what is now in force.
        let line = admin_line(&gw, "/v1/devices/tablet-jdoe", 2)?;
        ensure!(
            line.contains("status=412")
                && line.contains("uid=0")
                && line.contains(&format!("pid={}", std::process::id())),
            "the stale DELETE should be logged with our uid and pid: {line}"
        );
        let line = admin_line(&gw, "/v1/devices", 3)?;
        ensure!(
            line.contains("status=200") && line.contains("uid=0") && line.contains(&e3),
            "the CLI push should be logged with uid 0 and digest {e3}: {line}"
        );
        let first = gw
            .log()
            .lines()
            .find(|l| l.contains("admin action") && l.contains("route=/v1/devices/tablet-jdoe "))
            .map(str::to_owned)
            .unwrap_or_default();
        ensure!(
            first.contains(&e2) && first.contains(&format!("pid={}", std::process::id())),
            "the upsert should be logged with our pid and digest {e2}: {first}"
        );
        Ok(())
    });
}

/// F18. 50 concurrent `PUT /v1/recording/key` with distinct keys, three times over: every
/// one is applied, the key on disk is the one in memory (the next recording's header names
/// it), each is logged with its fingerprint, and no temporary file is left behind.
#[test]
fn concurrent_set_key_keeps_disk_and_memory_equal() {
    const ROUNDS: usize = 3;
    const CALLS: usize = 50;
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(GatewayConfig::default().policies(recorded_policies()))?;
        gw.start()?;
        let mut urandom = fs::File::open("/dev/urandom")?;
        let mut seen: Vec<String> = Vec::new();
        for round in 0..ROUNDS {
            let keys: Vec<String> = (0..CALLS)
                .map(|_| {
                    let mut raw = [0u8; 32];
                    urandom
                        .read_exact(&mut raw)
                        .map(|()| base64::engine::general_purpose::STANDARD.encode(raw))
                })
                .collect::<std::io::Result<_>>()?;
            let statuses: Vec<u16> = std::thread::scope(|scope| {
                let calls: Vec<_> = keys
                    .iter()
                    .map(|key| {
                        scope.spawn(|| {
                            gw.api_bytes("PUT", "/v1/recording/key", Some(key.as_bytes()))
                        })
                    })
                    .collect();
                calls
                    .into_iter()
                    .map(|c| c.join().expect("set-key thread").map(|r| r.status))
                    .collect::<Result<_>>()
            })?;
            ensure!(
                statuses.iter().all(|&s| s == 200),
                "round {round}: every set-key should be applied: {statuses:?}"
            );
            let on_disk = fs::read_to_string(gw.state_dir().join("recording.pub"))?;
            ensure!(
                keys.contains(&on_disk),
                "round {round}: recording.pub holds {on_disk:?}, none of the keys sent"
            );
            let marker = format!("after-round-{round}");
            let out = lab
                .ssh(Family::V4.audited())
                .bind(Family::V4.enrolled())
                .run(&format!("echo {marker}"))?;
            ensure!(out.success(), "round {round}: recorded ssh: {out:?}");
            let id = poll_until(
                "the recorded session",
                LOG_TIMEOUT,
                Duration::from_millis(100),
                || {
                    Ok(gw
                        .sessions(&[])?
                        .iter()
                        .filter_map(|s| s["id"].as_str())
                        .find(|id| !seen.iter().any(|x| x == id))
                        .map(str::to_owned))
                },
            )?;
            seen.push(id.clone());
            let (_, _, path) = closed_recorded_channel(&gw, &id, LOG_TIMEOUT)?;
            let header = read_header(&path)?;
            ensure!(
                header["sshgw"]["recipient"] == on_disk.as_str(),
                "round {round}: the recording is encrypted to {} but recording.pub holds {on_disk}",
                header["sshgw"]["recipient"]
            );
        }
        let log = gw.log();
        let logged = log
            .lines()
            .filter(|l| {
                l.contains("admin action")
                    && l.contains("route=/v1/recording/key ")
                    && l.contains("recording_key_fingerprint=\"SHA256:")
            })
            .count();
        ensure!(
            logged == ROUNDS * CALLS,
            "{logged} set-key admin actions logged, expected {}",
            ROUNDS * CALLS
        );
        let leftovers: Vec<String> = fs::read_dir(gw.state_dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        ensure!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// F11: SIGHUP never undoes a concurrent change
// ------------------------------------------------------------------------------------------

/// The daemon's log line after each SIGHUP that was applied.
const RELOADED: &str = "reloaded config=";

/// The IPv4 addresses in the pinned ENROLLED_V4 map (`bpftool map dump`).
fn enrolled_v4_map(gw: &Gateway<'_>) -> Result<BTreeSet<Ipv4Addr>> {
    let maps = fs::read_dir(gw.pin_dir())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("maps-"))
        })
        .with_context(|| format!("no maps-* directory in {}", gw.pin_dir().display()))?;
    let out = Command::new(bpftool()?)
        .args(["-j", "map", "dump", "pinned"])
        .arg(maps.join("ENROLLED_V4"))
        .output()
        .context("running bpftool")?;
    ensure!(out.status.success(), "bpftool map dump: {out:?}");
    let entries: Value = serde_json::from_slice(&out.stdout)?;
    let byte = |v: &Value| -> Option<u8> {
        v.as_u64()
            .map(|n| n as u8)
            .or_else(|| u8::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok())
    };
    entries
        .as_array()
        .context("bpftool output is not a list")?
        .iter()
        .map(|e| {
            let key = e["formatted"]["key"].as_array().or(e["key"].as_array());
            let octets: Vec<u8> = key.into_iter().flatten().filter_map(byte).collect();
            let octets: [u8; 4] = octets
                .try_into()
                .map_err(|_| anyhow::anyhow!("unexpected ENROLLED_V4 entry {e}"))?;
            Ok(Ipv4Addr::from(octets))
        })
        .collect()
}

/// The IPv4 addresses of a device table document.
fn table_v4(table: &Value) -> BTreeSet<Ipv4Addr> {
    table["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect()
}

/// F11. SIGHUP lands while a DELETE or PUT of a device is being applied, 40 times
/// alternating: afterwards the device table in memory, on disk and in the datapath's
/// ENROLLED map always agree, and hold what the change made.
#[test]
fn sighup_during_device_changes_never_undoes_them() {
    const ROUNDS: usize = 40;
    lab_test(|lab| {
        let mut gw = lab.gateway()?;
        gw.start()?;
        let pid = nix::unistd::Pid::from_raw(gw.proc().context("daemon")?.pid() as i32);
        let mut tablet = default_devices()["devices"][0].clone();
        tablet["id"] = json!("tablet-jdoe");
        tablet["addresses"] = json!(["100.96.0.9"]);
        let tablet = serde_json::to_vec(&tablet)?;
        for round in 0..ROUNDS {
            let add = round % 2 == 0;
            let (method, body) = if add {
                ("PUT", Some(tablet.as_slice()))
            } else {
                ("DELETE", None)
            };
            let reloads = gw.log_count(RELOADED);
            let mut hup = || {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP);
            };
            let reply = control::request_with(
                gw.control_socket(),
                method,
                "/v1/devices/tablet-jdoe",
                &[],
                body,
                Duration::from_secs(60),
                &mut hup,
            )?;
            ensure!(reply.status == 200, "round {round}: {method}: {reply:?}");
            gw.wait_for_nth_log(RELOADED, reloads, LOG_TIMEOUT)?;

            let (_, memory) = gw.api("GET", "/v1/devices", None)?;
            let disk: Value = serde_json::from_slice(&fs::read(gw.devices_path())?)?;
            let map = enrolled_v4_map(&gw)?;
            let mut want = BTreeSet::from([Ipv4Addr::new(100, 96, 0, 7)]);
            if add {
                want.insert(Ipv4Addr::new(100, 96, 0, 9));
            }
            let (memory, disk) = (table_v4(&memory), table_v4(&disk));
            ensure!(
                memory == want && disk == want && map == want,
                "round {round} ({method}): a SIGHUP undid the change: memory {memory:?}, disk \
                 {disk:?}, ENROLLED_V4 {map:?}, expected {want:?}"
            );
        }
        Ok(())
    });
}
