//! Policy integration tests: device identity, Audit-SSH policies pushed live over the control
//! socket, the session log, and the datapath switches that follow the policies.
//!
//! The device runs plain OpenSSH `ssh` from the enrolled address (100.96.0.7, device
//! `laptop-jdoe`, user `jdoe@example.com`, group `developers`, posture `disk-encryption`);
//! the lab sshd trusts the gateway's user CA and lets principal `jdoe` log in as `root` and
//! `jdoe`. A connection is *intercepted* when sshd sees the router's upstream address
//! (203.0.113.1) and *bypassed* when it sees the device's own address.
//!
//! IPv4 unless stated (the live push, spoof and unenrolled-drop tests run for IPv4 and
//! IPv6); every test builds its own lab. Needs root, the sshgw binary
//! (`SSHGW_BIN=/abs/path/sshgw`) and OpenSSH:
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test policy -- --test-threads=2`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sshgw_tests::family_tests;
use sshgw_tests::gateway::str_field;
use sshgw_tests::gateway::{default_devices, default_policies};
use sshgw_tests::wait::poll_until;
use sshgw_tests::{
    Family, Gateway, GatewayConfig, Lab, OTHER_TCP_PORT, SSH_PORT, Ssh, SshConnection, SshOutput,
    SshSession, Sshd, SshdConfig, lab_test,
};

const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// A refusal must reach the user well before any ssh-level timeout.
const PROMPT_FAILURE: Duration = Duration::from_secs(10);

const V4: Family = Family::V4;

/// The daemon's log line after each accepted push or reload.
const APPLIED: &str = "applied new device table and policies";
/// The daemon's log line after a refused SIGHUP reload.
const RELOAD_FAILED: &str = "reload failed; keeping the previous state";

/// The lab sshd (trusting the gateway CA), then the daemon with `cfg`, started.
fn start(lab: &Lab, cfg: GatewayConfig) -> Result<(Sshd, Gateway<'_>)> {
    let sshd = lab.start_sshd_with(SshdConfig::gateway())?;
    let mut gw = lab.gateway_with(cfg)?;
    gw.start()?;
    Ok((sshd, gw))
}

/// `ssh` from the enrolled device address to the audited server address.
fn to_audited(lab: &Lab) -> Ssh<'_> {
    to_audited_fam(lab, V4)
}

/// `ssh` from the enrolled device address to the audited server address of `fam`.
fn to_audited_fam(lab: &Lab, fam: Family) -> Ssh<'_> {
    lab.ssh(fam.audited()).bind(fam.enrolled())
}

/// The family of `addr`.
fn family_of(addr: IpAddr) -> Family {
    if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// One policy with the required fields; add optional fields with `extra` (merged).
fn policy(
    id: &str,
    name: &str,
    precedence: i64,
    action: &str,
    dst: &[&str],
    extra: Value,
) -> Value {
    let mut p = json!({
        "id": id,
        "name": name,
        "precedence": precedence,
        "action": action,
        "destinations": dst,
        "ports": [22],
    });
    if let (Some(obj), Value::Object(more)) = (p.as_object_mut(), extra) {
        obj.extend(more);
    }
    p
}

fn policies(list: Vec<Value>) -> Value {
    json!({ "policies": list })
}

/// Policies that audit nothing in the lab (198.51.100.0/24 is not wired anywhere).
fn policies_elsewhere() -> Value {
    policies(vec![policy(
        "audit-elsewhere",
        "Audit elsewhere",
        10,
        "audit_ssh",
        &["198.51.100.0/24"],
        json!({}),
    )])
}

/// The client address sshd sees for `ssh src -> dst` (`echo $SSH_CONNECTION`; must succeed).
fn client_seen(lab: &Lab, src: IpAddr, dst: IpAddr) -> Result<IpAddr> {
    Ok(lab
        .ssh(dst)
        .bind(src)
        .ssh_connection()
        .with_context(|| format!("ssh {src} -> {dst}"))?
        .client)
}

/// A new connection from the enrolled device to `dst` is intercepted (sshd sees the router).
fn expect_intercepted(lab: &Lab, dst: IpAddr, what: &str) -> Result<()> {
    let fam = family_of(dst);
    let client = client_seen(lab, fam.enrolled(), dst).context(what.to_owned())?;
    ensure!(
        client == fam.router_wan(),
        "{what}: ssh to {dst} should be intercepted (sshd sees {}), but sshd saw {client}",
        fam.router_wan()
    );
    Ok(())
}

/// A new connection from the enrolled device to `dst` is bypassed (sshd sees the device).
fn expect_bypassed(lab: &Lab, dst: IpAddr, what: &str) -> Result<()> {
    let fam = family_of(dst);
    let client = client_seen(lab, fam.enrolled(), dst).context(what.to_owned())?;
    ensure!(
        client == fam.enrolled(),
        "{what}: ssh to {dst} should be bypassed (sshd sees {}), but sshd saw {client}",
        fam.enrolled()
    );
    Ok(())
}

/// The run failed as ssh (exit 255) with every needle on stderr and nothing on stdout.
fn expect_refused(out: &SshOutput, needles: &[&str], what: &str) -> Result<()> {
    ensure!(
        out.code() == Some(255),
        "{what}: ssh should fail with exit code 255: {out:?}"
    );
    for needle in needles {
        ensure!(
            out.stderr.contains(needle),
            "{what}: ssh's stderr should contain {needle:?}: {:?}",
            out.stderr
        );
    }
    ensure!(
        out.stdout.is_empty(),
        "{what}: nothing should have run: {out:?}"
    );
    Ok(())
}

/// Runs `cmd` over `ssh` and checks that it was refused promptly with `needles`.
fn expect_refused_run(ssh: &Ssh<'_>, cmd: &str, needles: &[&str], what: &str) -> Result<SshOutput> {
    let started = Instant::now();
    let out = ssh.run(cmd)?;
    expect_refused(&out, needles, what)?;
    ensure!(
        started.elapsed() < PROMPT_FAILURE,
        "{what}: the refusal took {:?}",
        started.elapsed()
    );
    Ok(out)
}

/// The ids of `policy show --json`, in the order shown.
fn shown_policy_ids(gw: &Gateway<'_>) -> Result<Vec<String>> {
    let v = gw.cli_json(&["policy", "show", "--json"])?;
    Ok(v["policies"]
        .as_array()
        .with_context(|| format!("policy show --json has no policies list: {v}"))?
        .iter()
        .filter_map(|p| str_field(p, "id").map(str::to_owned))
        .collect())
}

/// A session of the log to the audited server from the enrolled device, found (bounded
/// wait) by `pred`.
fn find_session(
    gw: &Gateway<'_>,
    args: &[&str],
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let dst = format!("{}:22", V4.audited());
    let src = format!("{}:", V4.enrolled());
    gw.wait_for_session(args, LOG_TIMEOUT, what, |s| {
        str_field(s, "destination") == Some(dst.as_str())
            && str_field(s, "source").is_some_and(|x| x.starts_with(&src))
            && pred(s)
    })
}

// ------------------------------------------------------------------------------------------
// 1. Live pushes
// ------------------------------------------------------------------------------------------

/// 1. A live push starts and stops interception for new connections without cutting
///    established sessions, bypassed or relayed.
fn live_push_switches_interception(lab: &Lab, fam: Family) -> Result<()> {
    let (_sshd, gw) = start(lab, GatewayConfig::default().policies(policies_elsewhere()))?;
    expect_bypassed(lab, fam.audited(), "before any policy covers it")?;

    // A long-lived direct session, opened while the server is not audited.
    let mut direct = to_audited_fam(lab, fam).session("echo $SSH_CONNECTION; exec cat")?;
    let conn = SshConnection::parse(&direct.read_line(SESSION_TIMEOUT)?)?;
    ensure!(
        conn.client == fam.enrolled(),
        "the first session should be direct: {conn:?}"
    );
    direct.roundtrip("direct before the push", SESSION_TIMEOUT)?;

    // Start auditing the audited address (203.0.113.10 / 2001:db8:1::10).
    gw.push_policies(&default_policies())?;
    ensure!(
        shown_policy_ids(&gw)? == ["audit-lab"],
        "policy show after the push"
    );
    expect_intercepted(lab, fam.audited(), "after pushing the audit policy")?;
    gw.wait_for_intercept(fam.audited(), 22, LOG_TIMEOUT)?;
    direct
        .roundtrip("direct after the push", SESSION_TIMEOUT)
        .context("the established direct session broke when interception started")?;

    // A relayed session, opened while the server is audited.
    let mut relayed = to_audited_fam(lab, fam).session("echo $SSH_CONNECTION; exec cat")?;
    let conn = SshConnection::parse(&relayed.read_line(SESSION_TIMEOUT)?)?;
    ensure!(
        conn.client == fam.router_wan(),
        "the second session should be relayed: {conn:?}"
    );
    relayed.roundtrip("relayed before the second push", SESSION_TIMEOUT)?;

    // Stop auditing it again.
    gw.push_policies(&policies_elsewhere())?;
    ensure!(
        shown_policy_ids(&gw)? == ["audit-elsewhere"],
        "policy show after the second push"
    );
    expect_bypassed(lab, fam.audited(), "after removing the audit policy")?;
    relayed
        .roundtrip("relayed after the second push", SESSION_TIMEOUT)
        .context("the established relayed session broke when interception stopped")?;
    direct
        .roundtrip("direct after the second push", SESSION_TIMEOUT)
        .context("the established direct session broke when interception stopped")?;

    // A disabled policy's destinations are not intercepted either.
    gw.push_policies(&default_policies())?;
    expect_intercepted(lab, fam.audited(), "audit-lab enabled again")?;
    let mut disabled = default_policies();
    disabled["policies"][0]["enabled"] = json!(false);
    gw.push_policies(&disabled)?;
    expect_bypassed(lab, fam.audited(), "audit-lab disabled")?;
    relayed.roundtrip("relayed after the policy was disabled", SESSION_TIMEOUT)?;

    for (what, session) in [("direct", direct), ("relayed", relayed)] {
        let status = session.close(SESSION_TIMEOUT)?;
        ensure!(status.success(), "the {what} session ended with {status:?}");
    }
    ensure!(gw.is_running(), "the daemon died:\n{}", gw.log());
    Ok(())
}
family_tests!(live_push_switches_interception => live_push_switches_interception_without_cutting_sessions_v4, live_push_switches_interception_without_cutting_sessions_v6);

/// 1b. The same promise on a router that follows the kernel's advice for pure routing
///     workloads and turns early demux off (`net.ipv4.ip_early_demux = 0`, which also covers
///     IPv6): a relayed session must survive a push that removes its destination from the
///     audited set, and one that removes its device must end it with the gateway's message
///     (revocation), not a reset. Packets of those flows then reach the router with no
///     early-demuxed socket, so only the datapath can still steer them to the relay's
///     socket.
fn established_sessions_survive_push_without_early_demux(lab: &Lab, fam: Family) -> Result<()> {
    lab.rtr.sysctl("net.ipv4.ip_early_demux", "0")?;
    // The deleted device's address must then be forwarded (checked below), not dropped.
    let (_sshd, gw) = start(
        lab,
        GatewayConfig::default().datapath("unenrolled = \"pass\""),
    )?;
    let open = |what: &str| -> Result<SshSession> {
        let mut s = to_audited_fam(lab, fam).session("echo $SSH_CONNECTION; exec cat")?;
        let conn = SshConnection::parse(&s.read_line(SESSION_TIMEOUT)?)?;
        ensure!(
            conn.client == fam.router_wan(),
            "{what}: should be relayed: {conn:?}"
        );
        s.roundtrip(&format!("{what} before"), SESSION_TIMEOUT)?;
        Ok(s)
    };
    let mut failures = Vec::new();

    let mut a = open("session A")?;
    gw.push_policies(&policies_elsewhere())?;
    expect_bypassed(lab, fam.audited(), "after removing the audit policy")?;
    if let Err(e) = a.roundtrip("session A after the policy push", SESSION_TIMEOUT) {
        failures.push(format!(
            "a push that removed the destination from the audited set cut the relayed \
             session: {e:#}"
        ));
    }

    gw.push_policies(&default_policies())?;
    let b = open("session B")?;
    let (code, reply) = gw.api("DELETE", "/v1/devices/laptop-jdoe", None)?;
    ensure!(
        code == 200,
        "DELETE /v1/devices/laptop-jdoe: {code} {reply}"
    );
    expect_bypassed(lab, fam.audited(), "after deleting the device")?;
    // Revocation ends the session (docs/policy.md): with the gateway's message, which
    // reaches the client only while the datapath still steers the flow to the relay (a
    // server reset would read differently).
    let ended = b.proc().wait_exit(SESSION_TIMEOUT);
    let stderr = b.proc().stderr_text();
    if ended.is_err() || !stderr.contains("sshgw: session ended") {
        failures.push(format!(
            "deleting the device should end its relayed session with the gateway's message \
             ({ended:?}): {stderr}"
        ));
    }
    ensure!(
        failures.is_empty(),
        "with net.ipv4.ip_early_demux=0 on the router, established relayed sessions were cut \
         (the datapath returns TC_ACT_PIPE before its socket lookup once a flow's destination \
         is not AUDITED or its source not ENROLLED; the packets are forwarded to the server, \
         which resets them):\n- {}",
        failures.join("\n- ")
    );
    Ok(())
}
family_tests!(established_sessions_survive_push_without_early_demux => established_sessions_survive_push_without_early_demux_v4, established_sessions_survive_push_without_early_demux_v6);

// ------------------------------------------------------------------------------------------
// 2-5. Decisions
// ------------------------------------------------------------------------------------------

/// 2. A block policy ahead of the audit policy refuses with its name and id, and the session
///    log records the decision.
#[test]
fn block_policy_refuses_with_its_name() {
    lab_test(|lab| {
        let set = policies(vec![
            policy(
                "audit-lab",
                "Audit lab server",
                10,
                "audit_ssh",
                // Host bits are dropped: this is 203.0.113.0/24.
                &["203.0.113.77/24"],
                json!({}),
            ),
            policy(
                "block-devs",
                "Developers: not the lab server",
                5,
                "block",
                &["203.0.113.10/32"],
                json!({"identity": {"groups": ["developers"]}}),
            ),
        ]);
        let (sshd, gw) = start(lab, GatewayConfig::default().policies(set))?;
        expect_refused_run(
            &to_audited(lab),
            "echo should-not-run",
            &[
                "Received disconnect from",
                "sshgw: blocked by policy \"Developers: not the lab server\" (block-devs)",
            ],
            "blocked by block-devs",
        )?;

        let s = find_session(&gw, &[], "the blocked session in the log", |s| {
            str_field(s, "decision") == Some("block")
        })?;
        ensure!(
            str_field(&s, "policy_id") == Some("block-devs")
                && str_field(&s, "policy_name") == Some("Developers: not the lab server")
                && str_field(&s, "email") == Some("jdoe@example.com")
                && str_field(&s, "device_id") == Some("laptop-jdoe"),
            "session record of the blocked connection: {s:#}"
        );
        let id = str_field(&s, "id").context("session without id")?;
        let closed = gw.wait_session_closed(id, LOG_TIMEOUT)?;
        ensure!(
            str_field(&closed, "close_reason").is_some_and(|r| r.contains("blocked by policy")),
            "the close reason of a blocked session should be the refusal: {closed:#}"
        );
        ensure!(
            !sshd.log().contains("Accepted publickey"),
            "a blocked connection must not log in to the server:\n{}",
            sshd.log()
        );
        // The rest of 203.0.113.0/24 is still audited (the block is narrower).
        expect_intercepted(lab, V4.not_audited(), "203.0.113.20 under audit-lab")?;

        // Equal precedence: the order of the file decides.
        let block = policy(
            "block-all",
            "Block everyone",
            10,
            "block",
            &["203.0.113.10/32"],
            json!({}),
        );
        let audit = policy(
            "audit-lab",
            "Audit lab server",
            10,
            "audit_ssh",
            &["203.0.113.10/32"],
            json!({}),
        );
        gw.push_policies(&policies(vec![block.clone(), audit.clone()]))?;
        expect_refused_run(
            &to_audited(lab),
            "true",
            &["sshgw: blocked by policy \"Block everyone\" (block-all)"],
            "block first in the file, same precedence",
        )?;
        gw.push_policies(&policies(vec![audit, block]))?;
        expect_intercepted(
            lab,
            V4.audited(),
            "audit first in the file, same precedence",
        )?;
        Ok(())
    });
}

/// 3. A policy for another email domain does not match: no policy allows the connection.
///    Adding the user's domain (in another case: domains compare case-insensitively) allows
///    it.
#[test]
fn identity_mismatch_is_blocked_by_default() {
    lab_test(|lab| {
        let for_domains = |domains: &[&str]| {
            policies(vec![policy(
                "audit-partner",
                "Audit for partners",
                10,
                "audit_ssh",
                &["203.0.113.10/32"],
                json!({"identity": {"email_domains": domains}}),
            )])
        };
        let (_sshd, gw) = start(
            lab,
            GatewayConfig::default().policies(for_domains(&["other.example"])),
        )?;
        expect_refused_run(
            &to_audited(lab),
            "true",
            &["sshgw: no policy allows this connection"],
            "email domain other.example only",
        )?;
        let s = find_session(&gw, &[], "the refused session in the log", |s| {
            str_field(s, "decision") == Some("block")
        })?;
        ensure!(
            s["policy_id"].is_null(),
            "no policy decided, so the record has no policy id: {s:#}"
        );

        gw.push_policies(&for_domains(&["other.example", "EXAMPLE.com"]))?;
        expect_intercepted(lab, V4.audited(), "after adding EXAMPLE.com")?;
        Ok(())
    });
}

/// 4. A missing posture check blocks; once the device reports the check (`devices push`),
///    the connection is allowed. Removing it again (PUT /v1/devices/{id}) blocks again.
#[test]
fn posture_check_gates_the_connection() {
    lab_test(|lab| {
        let set = policies(vec![policy(
            "audit-healthy",
            "Healthy devices only",
            10,
            "audit_ssh",
            &["203.0.113.10/32"],
            json!({"posture": ["disk-encryption", "os-up-to-date"]}),
        )]);
        let (_sshd, gw) = start(lab, GatewayConfig::default().policies(set))?;
        expect_refused_run(
            &to_audited(lab),
            "true",
            &["sshgw: no policy allows this connection"],
            "device without os-up-to-date",
        )?;

        let mut devices = default_devices();
        devices["devices"][0]["posture"] = json!(["disk-encryption", "os-up-to-date"]);
        gw.push_devices(&devices)?;
        let shown = gw.cli_json(&["devices", "show", "--json"])?;
        ensure!(
            shown["devices"][0]["posture"] == json!(["disk-encryption", "os-up-to-date"]),
            "devices show after the push: {shown:#}"
        );
        let out = to_audited(lab).run("id -un; echo $SSH_CONNECTION")?;
        out.check()?;
        let mut lines = out.stdout.lines();
        ensure!(lines.next() == Some("root"), "id -un: {:?}", out.stdout);
        let conn = SshConnection::parse(lines.next().unwrap_or_default())?;
        ensure!(
            conn.client == V4.router_wan(),
            "should be relayed: {conn:?}"
        );
        find_session(&gw, &[], "the allowed session in the log", |s| {
            str_field(s, "decision") == Some("audit_ssh")
                && str_field(s, "policy_id") == Some("audit-healthy")
        })?;

        // The single-device endpoint: the check fails again.
        let mut device = devices["devices"][0].clone();
        device["posture"] = json!(["disk-encryption"]);
        let (status, reply) = gw.api("PUT", "/v1/devices/laptop-jdoe", Some(&device))?;
        ensure!(
            status == 200,
            "PUT /v1/devices/laptop-jdoe: {status} {reply}"
        );
        expect_refused_run(
            &to_audited(lab),
            "true",
            &["sshgw: no policy allows this connection"],
            "after the device lost os-up-to-date",
        )?;
        Ok(())
    });
}

/// 5. `ssh.usernames` is an allow-list of logins: jdoe works, root is refused with the
///    policy's message before any login reaches the server.
#[test]
fn username_allow_list_is_enforced() {
    lab_test(|lab| {
        let set = policies(vec![policy(
            "jdoe-only",
            "Lab: jdoe only",
            10,
            "audit_ssh",
            &["203.0.113.10/32"],
            json!({"ssh": {"usernames": ["jdoe"]}}),
        )]);
        let (sshd, _gw) = start(lab, GatewayConfig::default().policies(set))?;
        let out = to_audited(lab)
            .user("jdoe")
            .run("id -un; echo $SSH_CONNECTION")?;
        out.check()?;
        let mut lines = out.stdout.lines();
        ensure!(lines.next() == Some("jdoe"), "id -un: {:?}", out.stdout);
        let conn = SshConnection::parse(lines.next().unwrap_or_default())?;
        ensure!(
            conn.client == V4.router_wan(),
            "should be relayed: {conn:?}"
        );

        expect_refused_run(
            &to_audited(lab).user("root"),
            "id -un",
            &[
                "sshgw: login \"root\" is not allowed by policy \"Lab: jdoe only\" (jdoe-only)",
                "allowed: jdoe",
            ],
            "root under jdoe-only",
        )?;
        ensure!(
            !sshd.log().contains("Accepted publickey for root"),
            "the refused root login must not reach the server:\n{}",
            sshd.log()
        );
        Ok(())
    });
}

/// 5b. Policy ports and `[datapath] ports`: with both 22 and 2222 intercepted, a policy for
///     port 2222 only relays 2222, and port 22 to the same destination (caught by the
///     datapath, allowed by no policy) is blocked. A policy port the datapath does not
///     intercept is never seen by the gateway.
#[test]
fn policy_ports_and_datapath_ports() {
    lab_test(|lab| {
        let only_2222 = policies(vec![policy(
            "audit-2222",
            "Audit port 2222",
            10,
            "audit_ssh",
            &["203.0.113.10/32"],
            json!({"ports": [2222]}),
        )]);
        let mut cfg = GatewayConfig::default().policies(only_2222);
        cfg.ports = vec![SSH_PORT, OTHER_TCP_PORT];
        let (_sshd, mut gw) = start(lab, cfg)?;
        let conn = to_audited(lab).port(OTHER_TCP_PORT).ssh_connection()?;
        ensure!(
            conn.client == V4.router_wan() && conn.server_port == OTHER_TCP_PORT,
            "port 2222 should be relayed: {conn:?}"
        );
        expect_refused_run(
            &to_audited(lab),
            "true",
            &["sshgw: no policy allows this connection"],
            "port 22 with a policy for 2222 only",
        )?;
        gw.stop()?;

        // The datapath intercepts port 22 only: the policy's 2222 is never intercepted.
        let both = policies(vec![policy(
            "audit-both",
            "Audit 22 and 2222",
            10,
            "audit_ssh",
            &["203.0.113.10/32"],
            json!({"ports": [22, 2222]}),
        )]);
        let mut gw = lab.gateway_with(GatewayConfig::default().policies(both))?;
        gw.start()?;
        let conn = to_audited(lab).port(OTHER_TCP_PORT).ssh_connection()?;
        ensure!(
            conn.client == V4.enrolled(),
            "port 2222 is not in [datapath] ports, so it should be forwarded untouched: {conn:?}"
        );
        expect_intercepted(lab, V4.audited(), "port 22")?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 6-8. Ingress, session limits, unenrolled sources
// ------------------------------------------------------------------------------------------

/// 6. A device pinned to tunnel `r2` whose SSH arrives on `r0` is refused as spoofed; pinned
///    to `r0` (PUT /v1/devices/{id}) it is relayed.
fn spoofed_source_is_refused(lab: &Lab, fam: Family) -> Result<()> {
    // A second device-facing interface on the router (nothing arrives on it): a veth
    // pair with both ends in rtr (the `dummy` module may be missing).
    lab.rtr.ip(&[
        "link", "add", "r2", "type", "veth", "peer", "name", "r2peer",
    ])?;
    for name in ["r2", "r2peer"] {
        lab.rtr.ip(&["link", "set", name, "up"])?;
    }
    let mut devices = default_devices();
    devices["devices"][0]["interface"] = json!("r2");
    let (_sshd, gw) = start(
        lab,
        GatewayConfig::default()
            .interfaces(&["r0", "r2"])
            .devices(devices.clone()),
    )?;
    let status = gw.status()?;
    let attached: Vec<&str> = status.interfaces.iter().map(|i| i.name.as_str()).collect();
    ensure!(
        attached.contains(&"r0") && attached.contains(&"r2"),
        "both interfaces should be attached: {}",
        status.raw
    );

    expect_refused_run(
        &to_audited_fam(lab, fam),
        "true",
        &[&format!(
            "sshgw: {} arrived on r0, not on its device's tunnel r2; refused as spoofed",
            fam.enrolled()
        )],
        "device pinned to r2 arriving on r0",
    )?;
    let line = gw.wait_for_nth_log("spoofed source", 0, LOG_TIMEOUT)?;
    ensure!(
        line.contains("laptop-jdoe"),
        "the spoof log line should name the device: {line}"
    );

    let mut device = devices["devices"][0].clone();
    device["interface"] = json!("r0");
    let (code, reply) = gw.api("PUT", "/v1/devices/laptop-jdoe", Some(&device))?;
    ensure!(code == 200, "PUT /v1/devices/laptop-jdoe: {code} {reply}");
    expect_intercepted(lab, fam.audited(), "device pinned to r0")?;
    Ok(())
}
family_tests!(spoofed_source_is_refused => source_on_the_wrong_interface_is_refused_as_spoofed_v4, source_on_the_wrong_interface_is_refused_as_spoofed_v6);

/// 7. `ssh.max_duration` ends a session: the user is told why, promptly, and the log says
///    `max duration`.
#[test]
fn max_duration_ends_the_session() {
    lab_test(|lab| {
        let set = policies(vec![policy(
            "short",
            "Lab: 3 seconds",
            10,
            "audit_ssh",
            &["203.0.113.10/32"],
            json!({"ssh": {"max_duration": "3s"}}),
        )]);
        let (_sshd, gw) = start(lab, GatewayConfig::default().policies(set))?;
        let started = Instant::now();
        let out = to_audited(lab)
            .timeout(Duration::from_secs(25))
            .run("sleep 30")
            .context("max_duration did not end `sleep 30`")?;
        let took = started.elapsed();
        eprintln!("max_duration 3s: ssh ended after {took:?}: {out:?}");
        expect_refused(
            &out,
            &["sshgw: session ended: policy \"Lab: 3 seconds\" (short) allows at most 3s"],
            "sleep 30 under a 3s limit",
        )?;
        ensure!(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(13),
            "the session should end about 3s in, it took {took:?}"
        );
        let s = find_session(&gw, &[], "the limited session in the log", |s| {
            str_field(s, "policy_id") == Some("short")
        })?;
        let id = str_field(&s, "id").context("session without id")?;
        let s = gw.wait_session_closed(id, LOG_TIMEOUT)?;
        ensure!(
            str_field(&s, "close_reason") == Some("max duration"),
            "close_reason: {s:#}"
        );
        Ok(())
    });
}

/// 8. `[datapath] unenrolled = "drop"`: SSH from a source that is not a device to an audited
///    destination is dropped (the client times out, nothing answers) and counted; SSH to a
///    non-audited destination is untouched; enrolled devices are still intercepted.
fn unenrolled_drop(lab: &Lab, fam: Family) -> Result<()> {
    let (_sshd, gw) = start(
        lab,
        GatewayConfig::default().datapath("unenrolled = \"drop\""),
    )?;
    let before = gw.status()?.counters.dropped_unenrolled;
    let out = lab
        .ssh(fam.audited())
        .bind(fam.not_enrolled())
        .connect_timeout(3)
        .run("true")?;
    ensure!(
        !out.success()
            && out.stderr.contains("Connection timed out")
            && !out.stderr.contains("refused"),
        "SSH from the non-enrolled source to the audited server should time out (dropped): {out:?}"
    );
    let status = gw.status()?;
    ensure!(
        status.counters.dropped_unenrolled > before,
        "dropped_unenrolled should have increased from {before}: {}",
        status.raw
    );

    let client = client_seen(lab, fam.not_enrolled(), fam.not_audited())?;
    ensure!(
        client == fam.not_enrolled(),
        "SSH from the non-enrolled source to a non-audited address should be forwarded untouched, sshd saw {client}"
    );
    expect_intercepted(lab, fam.audited(), "the enrolled device")?;
    Ok(())
}
family_tests!(unenrolled_drop => unenrolled_drop_drops_ssh_to_audited_destinations_v4, unenrolled_drop_drops_ssh_to_audited_destinations_v6);

// ------------------------------------------------------------------------------------------
// 9. Persistence and reload
// ------------------------------------------------------------------------------------------

/// 9. A pushed policy set is persisted and in force after a crash (SIGKILL) and after a clean
///    restart. SIGHUP re-reads policies.json; an invalid file on SIGHUP keeps the old state
///    and is logged.
#[test]
fn pushed_state_survives_restart_and_sighup_reloads() {
    lab_test(|lab| {
        let (_sshd, mut gw) = start(lab, GatewayConfig::default())?;
        expect_intercepted(lab, V4.audited(), "initial policies")?;

        let pushed = policies(vec![policy(
            "audit-20",
            "Audit the second address",
            10,
            "audit_ssh",
            &["203.0.113.20/32"],
            json!({}),
        )]);
        let (code, reply) = gw.api("PUT", "/v1/policies", Some(&pushed))?;
        ensure!(
            code == 200 && reply == json!({"applied": true, "policies": 1}),
            "PUT /v1/policies: {code} {reply}"
        );
        let in_force = gw.cli_json(&["policy", "show", "--json"])?;
        let on_disk: Value = serde_json::from_slice(&std::fs::read(gw.policies_path())?)?;
        ensure!(
            on_disk == in_force,
            "policies.json should hold what is in force:\ndisk: {on_disk:#}\nshown: {in_force:#}"
        );
        // A second device on the device's other address (PUT /v1/devices/{id}).
        let mut tablet = default_devices()["devices"][0].clone();
        tablet["id"] = json!("tablet-jdoe");
        tablet["addresses"] = json!([V4.not_enrolled().to_string()]);
        let (code, reply) = gw.api("PUT", "/v1/devices/tablet-jdoe", Some(&tablet))?;
        ensure!(code == 200, "PUT /v1/devices/tablet-jdoe: {code} {reply}");

        let check = |gw: &Gateway<'_>, what: &str| -> Result<()> {
            ensure!(
                shown_policy_ids(gw)? == ["audit-20"],
                "{what}: policy show --json: {:#}",
                gw.cli_json(&["policy", "show", "--json"])?
            );
            let devices = gw.cli_json(&["devices", "show", "--json"])?;
            ensure!(
                devices["devices"][1]["id"] == "tablet-jdoe",
                "{what}: devices show --json: {devices:#}"
            );
            expect_intercepted(lab, V4.not_audited(), &format!("{what}: 203.0.113.20"))?;
            expect_bypassed(lab, V4.audited(), &format!("{what}: 203.0.113.10"))?;
            let client = client_seen(lab, V4.not_enrolled(), V4.not_audited())?;
            ensure!(
                client == V4.router_wan(),
                "{what}: the pushed device {} should be intercepted to 203.0.113.20, sshd saw {client}",
                V4.not_enrolled()
            );
            Ok(())
        };
        check(&gw, "after the push")?;

        gw.kill()?;
        gw.start().context("restarting after SIGKILL")?;
        check(&gw, "after SIGKILL and restart")?;

        let exit = gw.stop()?;
        ensure!(exit.success(), "sshgw stop: {exit:?}");
        gw.start().context("restarting after a clean stop")?;
        check(&gw, "after a clean stop and start")?;

        // SIGHUP: back to the default policies, edited on disk.
        let applied = gw.log_count(APPLIED);
        gw.write_policies(&default_policies())?;
        gw.sighup()?;
        gw.wait_for_nth_log(APPLIED, applied, LOG_TIMEOUT)?;
        ensure!(
            shown_policy_ids(&gw)? == ["audit-lab"],
            "policy show after SIGHUP"
        );
        expect_intercepted(lab, V4.audited(), "after SIGHUP: 203.0.113.10")?;
        expect_bypassed(lab, V4.not_audited(), "after SIGHUP: 203.0.113.20")?;

        // SIGHUP with an invalid file: logged, nothing changes.
        let failed = gw.log_count(RELOAD_FAILED);
        let applied = gw.log_count(APPLIED);
        let mut bad = pushed.clone();
        bad["policies"][0]["destinations"] = json!(["10.0.0.300/8"]);
        gw.write_policies(&bad)?;
        gw.sighup()?;
        let line = gw.wait_for_nth_log(RELOAD_FAILED, failed, LOG_TIMEOUT)?;
        ensure!(
            line.contains("policies[0].destinations[0]") && line.contains("10.0.0.300/8"),
            "the reload error should name the field: {line}"
        );
        ensure!(
            gw.log_count(APPLIED) == applied,
            "an invalid file must not be applied:\n{}",
            gw.log()
        );
        ensure!(
            shown_policy_ids(&gw)? == ["audit-lab"],
            "policy show after a failed SIGHUP"
        );
        expect_intercepted(lab, V4.audited(), "after a failed SIGHUP: 203.0.113.10")?;
        expect_bypassed(lab, V4.not_audited(), "after a failed SIGHUP: 203.0.113.20")?;
        ensure!(gw.is_running(), "the daemon died:\n{}", gw.log());
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 10. Killing a session
// ------------------------------------------------------------------------------------------

/// 10. `sshgw sessions kill ID` ends a live session: the user is told, ssh exits promptly,
///     the log says `admin kill`, and the server leg is closed too.
#[test]
fn sessions_kill_ends_both_legs() {
    lab_test(|lab| {
        let (sshd, gw) = start(lab, GatewayConfig::default())?;
        let mut session = to_audited(lab).session("echo $SSH_CONNECTION; exec cat")?;
        let conn = SshConnection::parse(&session.read_line(SESSION_TIMEOUT)?)?;
        ensure!(
            conn.client == V4.router_wan(),
            "should be relayed: {conn:?}"
        );
        session.roundtrip("before the kill", SESSION_TIMEOUT)?;

        let live = find_session(&gw, &["--active"], "the live session", |_| true)?;
        let id = str_field(&live, "id")
            .context("session without id")?
            .to_owned();
        ensure!(
            live["ended_at"].is_null(),
            "a live session has no end yet: {live:#}"
        );

        let killed_at = Instant::now();
        let out = gw
            .cli(&["sessions", "kill", &id])?
            .check("sshgw sessions kill")?;
        ensure!(
            out.stdout.contains(&id),
            "sessions kill output: {:?}",
            out.stdout
        );
        let status = session.proc().wait_exit(SESSION_TIMEOUT)?;
        let took = killed_at.elapsed();
        let stderr = session.proc().stderr_text();
        ensure!(
            stderr.contains("sshgw: session terminated by an administrator"),
            "ssh should show the kill message: {stderr:?}"
        );
        ensure!(
            status.code() == Some(255),
            "ssh should exit 255 after the kill: {status:?}"
        );
        ensure!(
            took < PROMPT_FAILURE,
            "ssh took {took:?} to exit after the kill"
        );

        let s = gw.wait_session_closed(&id, LOG_TIMEOUT)?;
        eprintln!("killed session record: {s:#}");
        ensure!(
            str_field(&s, "close_reason") == Some("admin kill"),
            "close_reason: {s:#}"
        );
        expect_relayed_record(&s, &conn)?;
        ensure!(
            gw.sessions(&["--active"])?
                .iter()
                .all(|x| str_field(x, "id") != Some(id.as_str())),
            "the killed session is still listed as active"
        );

        // The server leg is gone as well: sshd logs the end of that very connection.
        let from = format!("{} port {}", conn.client, conn.client_port);
        let needles = [
            format!("Close session: user root from {from}"),
            format!("Disconnected from user root {from}"),
        ];
        poll_until(
            &format!("sshd to log the end of the connection from {from}"),
            LOG_TIMEOUT,
            Duration::from_millis(50),
            || Ok(needles.iter().any(|n| sshd.log().contains(n)).then_some(())),
        )
        .with_context(|| format!("--- sshd log ---\n{}", sshd.log()))?;

        // Killing it again (or anything unknown) is refused as input: exit code 3.
        let again = gw.cli(&["sessions", "kill", &id])?;
        ensure!(
            again.status.code() == Some(3),
            "killing a finished session should exit 3: {again:?}"
        );
        Ok(())
    });
}

/// The fields of a relayed session's record (`sessions show ID --json`) after it ended: the
/// identity, the login, the certificate and server key, the byte counts and the one exec
/// channel of `echo $SSH_CONNECTION; exec cat`.
fn expect_relayed_record(s: &Value, conn: &SshConnection) -> Result<()> {
    let strs = [
        ("email", Some("jdoe@example.com")),
        ("device_id", Some("laptop-jdoe")),
        ("destination", Some("203.0.113.10:22")),
        ("login", Some("root")),
        ("policy_id", Some("audit-lab")),
        ("policy_name", Some("Audit lab server")),
        ("decision", Some("audit_ssh")),
    ];
    for (key, want) in strs {
        ensure!(str_field(s, key) == want, "{key} should be {want:?}: {s:#}");
    }
    ensure!(
        str_field(s, "source").is_some_and(|x| x.starts_with("100.96.0.7:")),
        "source: {s:#}"
    );
    for key in ["id", "started_at", "ended_at", "cert_serial"] {
        ensure!(
            str_field(s, key).is_some_and(|v| !v.is_empty()),
            "{key} should be a non-empty string: {s:#}"
        );
    }
    ensure!(
        str_field(s, "upstream_host_key").is_some_and(|k| k.starts_with("SHA256:")),
        "upstream_host_key should be a SHA256 fingerprint: {s:#}"
    );
    ensure!(
        s["duration_ms"].as_u64().is_some()
            && s["bytes_from_client"].as_u64().is_some_and(|b| b > 0)
            && s["bytes_from_server"].as_u64().is_some_and(|b| b > 0),
        "duration and byte counts: {s:#}"
    );
    let channels = s["channels"].as_array().context("no channels list")?;
    ensure!(channels.len() == 1, "one channel expected: {s:#}");
    let ch = &channels[0];
    ensure!(
        str_field(ch, "kind") == Some("exec")
            && str_field(ch, "command") == Some("echo $SSH_CONNECTION; exec cat")
            && str_field(ch, "started_at").is_some()
            && ch.get("channel").is_some_and(Value::is_u64)
            && ch.get("exit_status").is_some()
            && ch.get("exit_signal").is_some()
            && ch.get("recording").is_some(),
        "channel record: {ch:#}"
    );
    // sshd saw the router's upstream address: the session really went through the relay.
    ensure!(conn.client == V4.router_wan(), "{conn:?}");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 14. Scale
// ------------------------------------------------------------------------------------------

/// Synthetic policy destinations inside the benchmark range 198.18.0.0/15: 256 /24s in
/// 198.19.0.0/16, then /32s in 198.18.0.0/16.
fn synthetic_destination(i: usize) -> String {
    if i < 256 {
        format!("198.19.{i}.0/24")
    } else {
        let k = i - 256;
        format!("198.18.{}.{}/32", k / 256, k % 256)
    }
}

/// Synthetic device addresses in 100.64.0.0/16 (CGNAT), away from the lab's 100.96.0.0/24.
fn synthetic_address(i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(100, 64, (n >> 8) as u8, (n & 0xff) as u8)
}

/// 14. 1,000 policies (999 synthetic + the lab's) and 10,001 devices (10,000 synthetic + the
///     lab device) pushed with the CLI are applied, and the lab device is still decided
///     correctly. Push durations are printed, not asserted.
#[test]
fn scale_thousand_policies_ten_thousand_devices() {
    lab_test(|lab| {
        const SYNTHETIC_POLICIES: usize = 999;
        const SYNTHETIC_DEVICES: usize = 10_000;
        let (_sshd, gw) = start(lab, GatewayConfig::default().policies(policies_elsewhere()))?;

        let mut list: Vec<Value> = (0..SYNTHETIC_POLICIES)
            .map(|i| {
                let action = if i % 4 == 0 { "block" } else { "audit_ssh" };
                policy(
                    &format!("synthetic-{i:04}"),
                    &format!("Synthetic policy {i}"),
                    (i as i64) * 10,
                    action,
                    &[&synthetic_destination(i)],
                    json!({"identity": {"groups": [format!("team-{}", i % 100)]},
                           "posture": ["disk-encryption"]}),
                )
            })
            .collect();
        // The real one, in the middle of the precedence order.
        list.push(policy(
            "audit-lab",
            "Audit lab server",
            5_005,
            "audit_ssh",
            &["203.0.113.10/32", "2001:db8:1::10/128"],
            json!({"identity": {"groups": ["developers"]}}),
        ));
        let policy_doc = policies(list);

        let mut devices: Vec<Value> = (0..SYNTHETIC_DEVICES)
            .map(|i| {
                json!({
                    "id": format!("device-{i:05}"),
                    "addresses": [synthetic_address(i).to_string()],
                    "interface": "r0",
                    "user": {"email": format!("user{i}@example.com"),
                             "groups": [format!("team-{}", i % 100)]},
                    "posture": ["disk-encryption"],
                })
            })
            .collect();
        devices.push(default_devices()["devices"][0].clone());
        let device_doc = json!({ "devices": devices });

        let t = Instant::now();
        gw.push_devices(&device_doc)?;
        let devices_took = t.elapsed();
        let t = Instant::now();
        gw.push_policies(&policy_doc)?;
        let policies_took = t.elapsed();
        eprintln!(
            "scale: `sshgw devices push` of {} devices took {devices_took:?}; \
             `sshgw policy push` of 1000 policies took {policies_took:?} (debug build, not asserted)",
            SYNTHETIC_DEVICES + 1
        );
        let line = gw.wait_for_nth_log(APPLIED, 1, LOG_TIMEOUT)?;
        ensure!(
            line.contains("enrolled=10002") && line.contains("audited=1001"),
            "the applied line should count 10,002 enrolled addresses and 1,001 audited destinations: {line}"
        );

        let t = Instant::now();
        let shown = gw.cli_json(&["policy", "show", "--json"])?;
        let n_policies = shown["policies"].as_array().map_or(0, Vec::len);
        let shown = gw.cli_json(&["devices", "show", "--json"])?;
        let n_devices = shown["devices"].as_array().map_or(0, Vec::len);
        eprintln!("scale: policy show + devices show took {:?}", t.elapsed());
        ensure!(
            n_policies == 1000 && n_devices == SYNTHETIC_DEVICES + 1,
            "show --json should list 1000 policies and {} devices, got {n_policies} and {n_devices}",
            SYNTHETIC_DEVICES + 1
        );

        let t = Instant::now();
        expect_intercepted(lab, V4.audited(), "lab device under 1000 policies")?;
        eprintln!("scale: one relayed `ssh echo` took {:?}", t.elapsed());
        find_session(&gw, &[], "the lab device's session", |s| {
            str_field(s, "decision") == Some("audit_ssh")
                && str_field(s, "policy_id") == Some("audit-lab")
        })?;
        expect_bypassed(lab, V4.not_audited(), "203.0.113.20 is in no policy")?;

        // Re-pushing the same (large) sets is idempotent.
        let t = Instant::now();
        gw.push_policies(&policy_doc)?;
        eprintln!("scale: re-push of 1000 policies took {:?}", t.elapsed());
        if !gw.is_running() {
            bail!("the daemon died:\n{}", gw.log());
        }
        Ok(())
    });
}
