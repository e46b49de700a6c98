//! Identity tests over the wire (F6, F20): one user can never act as another.
//!
//! The lab's enrolled device is `laptop-jdoe` (100.96.0.7, `jdoe@example.com`). The attacker
//! is a second enrollee on 100.96.0.8 whose mailbox shares a local part with an employee
//! (`jdoe@contractor.test`) or with an administrative account (`root@contractor.test`). It
//! uses its own fresh key, which no server knows: the only way in is a certificate minted
//! by the gateway. The lab sshd is configured as docs/deployment.md recommends for
//! certificate-only logins (`TrustedUserCAKeys`, no principals file: a certificate logs in
//! only as the login equal to its principal).
//!
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`) and OpenSSH:
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test identity`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sshgw_tests::gateway::default_devices;
use sshgw_tests::{
    Family, Gateway, GatewayConfig, KeyPair, Lab, Ssh, SshOutput, SshdConfig, lab_test,
};

const V4: Family = Family::V4;
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_FAILED: &str = "reload failed; keeping the previous state";

/// The attacker's device on 100.96.0.8, pinned to the lab tunnel `r0`.
fn contractor(email: &str, address: &str) -> Value {
    json!({
        "id": "laptop-contractor",
        "addresses": [address],
        "interface": "r0",
        "user": {"email": email, "groups": ["contractors"]}
    })
}

/// The lab device table plus `device`.
fn with_device(device: Value) -> Value {
    let mut table = default_devices();
    table["devices"]
        .as_array_mut()
        .expect("devices list")
        .push(device);
    table
}

/// `ssh LOGIN@203.0.113.10` from the attacker's address with the attacker's own key.
fn as_attacker<'a>(lab: &'a Lab, key: &KeyPair, login: &str) -> Ssh<'a> {
    lab.ssh(V4.audited())
        .bind(V4.not_enrolled())
        .identity(&key.private)
        .user(login)
}

/// The login did not happen: ssh failed and printed nothing of the remote command.
fn expect_no_login(out: &SshOutput, what: &str) -> Result<()> {
    ensure!(
        !out.success() && out.stdout.trim().is_empty(),
        "{what}: the login should have been impossible, but ssh exited {:?} with stdout {:?} \
         (stderr {:?})",
        out.code(),
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// `PUT /v1/devices/{id}` of `device`: must answer 400 with an error starting with `field`.
fn expect_put_refused(gw: &Gateway<'_>, device: &Value, field: &str, what: &str) -> Result<String> {
    let id = device["id"].as_str().context("device id")?;
    let body = serde_json::to_vec(device)?;
    let reply = gw.api_bytes("PUT", &format!("/v1/devices/{id}"), Some(&body))?;
    let error = reply.error().unwrap_or_default();
    ensure!(
        reply.status == 400 && error.starts_with(field),
        "{what}: PUT /v1/devices/{id} should answer 400 naming {field}: {} {:?}",
        reply.status,
        reply.body
    );
    Ok(error)
}

fn shown_devices(gw: &Gateway<'_>) -> Result<Value> {
    gw.cli_json(&["devices", "show", "--json"])
}

/// F6 under the default `principal = "local_part"`: a second user whose email shares the
/// employee's local part, and a user whose local part is `root`, are refused at push (CLI
/// and single-device PUT) and on reload, and cannot log in as `jdoe` or `root`.
#[test]
fn shared_and_reserved_principals_are_refused() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_with(SshdConfig::default().trust_sshgw_ca())?;
        let mut gw = lab.gateway()?;
        gw.start()?;
        let attacker = KeyPair::generate(lab.procs(), &lab.dir().join("attacker"), "attacker")?;
        let before = shown_devices(&gw)?;

        // The contractor jdoe@contractor.test would get principal `jdoe`.
        let twin = with_device(contractor("jdoe@contractor.test", "100.96.0.8"));
        let file = gw.write_input("devices", &twin)?;
        let push = gw.cli(&["devices", "push", &file.to_string_lossy()])?;
        let login = as_attacker(lab, &attacker, "jdoe").run("id -un")?;
        expect_no_login(&login, "jdoe@contractor.test as jdoe")?;
        ensure!(
            push.status.code() == Some(3)
                && push.stderr.contains("devices[1].user.email")
                && push.stderr.contains("jdoe@example.com"),
            "a second user with principal jdoe should be refused naming the field: {push:?}"
        );
        let config = gw.config_path().to_string_lossy().into_owned();
        let check = gw.sshgw(&[
            "devices",
            "check",
            &file.to_string_lossy(),
            "--config",
            &config,
        ])?;
        ensure!(
            check.status.code() == Some(3) && check.stderr.contains("devices[1].user.email"),
            "devices check (offline) should refuse the same file: {check:?}"
        );
        expect_put_refused(
            &gw,
            &contractor("jdoe@contractor.test", "100.96.0.8"),
            "devices[1].user.email",
            "a second jdoe through PUT /v1/devices/{id}",
        )?;

        // A mailbox named root would get principal `root`.
        let root = with_device(contractor("root@contractor.test", "100.96.0.8"));
        let file = gw.write_input("devices", &root)?;
        let push = gw.cli(&["devices", "push", &file.to_string_lossy()])?;
        let login = as_attacker(lab, &attacker, "root").run("id -u")?;
        expect_no_login(&login, "root@contractor.test as root")?;
        ensure!(
            push.status.code() == Some(3)
                && push.stderr.contains("devices[1].user.email")
                && push.stderr.contains("reserved"),
            "root@contractor.test should be refused as a reserved principal: {push:?}"
        );
        ensure!(
            shown_devices(&gw)? == before,
            "the refused pushes changed the device table: {:#}",
            shown_devices(&gw)?
        );

        // The same file on disk is refused by SIGHUP, naming the field.
        let failed = gw.log_count(RELOAD_FAILED);
        gw.write_devices(&twin)?;
        gw.sighup()?;
        let line = gw.wait_for_nth_log(RELOAD_FAILED, failed, LOG_TIMEOUT)?;
        ensure!(
            line.contains("devices[1].user.email"),
            "the reload error should name the field: {line}"
        );
        let login = as_attacker(lab, &attacker, "jdoe").run("id -un")?;
        expect_no_login(&login, "after the refused reload")?;
        gw.write_devices(&default_devices())?;
        invalid_entries_are_refused(&gw)?;
        ensure!(shown_devices(&gw)? == before, "the device table changed");
        Ok(())
    });
}

/// F20: addresses a device cannot send from, ids that would corrupt the certificate key id,
/// and emails that would give a broken principal are refused, naming the field.
fn invalid_entries_are_refused(gw: &Gateway<'_>) -> Result<()> {
    let cases = [
        (
            contractor("c@contractor.test", "127.0.0.1"),
            "devices[1].addresses[0]: 127.0.0.1 is a loopback",
        ),
        (
            contractor("c@contractor.test", "::"),
            "devices[1].addresses[0]: :: is unspecified",
        ),
        (
            contractor("c@contractor.test", "224.0.0.1"),
            "devices[1].addresses[0]: 224.0.0.1 is a multicast",
        ),
        (
            contractor("c@contractor.test", "::ffff:100.96.0.7"),
            "devices[1].addresses[0]: 100.96.0.7 already belongs",
        ),
        (
            contractor("a@b@contractor.test", "100.96.0.8"),
            "devices[1].user.email:",
        ),
        (
            contractor("c d@contractor.test", "100.96.0.8"),
            "devices[1].user.email:",
        ),
    ];
    for (device, field) in cases {
        expect_put_refused(gw, &device, field, field)?;
    }
    let mut bad_id = contractor("c@contractor.test", "100.96.0.8");
    bad_id["id"] = json!("laptop:contractor");
    expect_put_refused(gw, &bad_id, "devices[1].id:", "an id with a colon")?;
    Ok(())
}

/// `[ssh] principal = "email"`: certificates carry the whole address, so users of two
/// domains with the same local part coexist, each reaching only the logins the server maps
/// to their address (`AuthorizedPrincipalsFile`). A v4-mapped device address is stored and
/// matched as IPv4.
#[test]
fn email_principals_tell_domains_apart() {
    lab_test(|lab| {
        let sshd = lab.start_sshd_with(
            SshdConfig::default()
                .trust_sshgw_ca()
                .principals("jdoe", &["jdoe@example.com"])
                .principals("alice", &["jdoe@contractor.test"])
                .principals("root", &["jdoe"]),
        )?;
        let devices = with_device(contractor("jdoe@contractor.test", "::ffff:100.96.0.8"));
        let cfg = GatewayConfig::default()
            .ssh("principal = \"email\"")
            .devices(devices);
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()
            .context("the daemon should accept the table under principal = email")?;
        let file = gw.write_input("devices", &shown_devices(&gw)?)?;
        let config = gw.config_path().to_string_lossy().into_owned();
        gw.sshgw(&[
            "devices",
            "check",
            &file.to_string_lossy(),
            "--config",
            &config,
        ])?
        .check("devices check under principal = email")?;
        let shown = shown_devices(&gw)?;
        ensure!(
            shown["devices"][1]["addresses"] == json!(["100.96.0.8"]),
            "the v4-mapped address should be stored as IPv4: {shown:#}"
        );

        let employee = lab.ssh(V4.audited()).bind(V4.enrolled());
        let out = employee.clone().user("jdoe").run("id -un")?;
        ensure!(
            out.success() && out.stdout.trim() == "jdoe",
            "jdoe@example.com should log in as jdoe (principal jdoe@example.com): {out:?}"
        );
        let out = employee.user("root").run("id -u")?;
        expect_no_login(
            &out,
            "jdoe@example.com as root (its principal is no longer `jdoe`)",
        )?;

        let attacker = KeyPair::generate(lab.procs(), &lab.dir().join("attacker"), "attacker")?;
        let out = as_attacker(lab, &attacker, "jdoe").run("id -un")?;
        expect_no_login(&out, "jdoe@contractor.test as jdoe")?;
        let out = as_attacker(lab, &attacker, "alice").run("id -un; echo $SSH_CONNECTION")?;
        ensure!(
            out.success() && out.stdout.starts_with("alice\n"),
            "jdoe@contractor.test should log in as alice: {out:?}"
        );
        ensure!(
            out.stdout.contains(&format!("{} ", V4.router_wan())),
            "the contractor's login should come through the gateway: {out:?}"
        );
        sshd.wait_for_log(
            "ID \"sshgw:jdoe@contractor.test:laptop-contractor:",
            LOG_TIMEOUT,
        )?;
        Ok(())
    });
}
