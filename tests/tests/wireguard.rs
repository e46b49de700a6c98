//! Real WireGuard between the device and the router, set up as the worked example in
//! docs/deployment.md says (the harness reads its blocks from the page, see
//! `sshgw_tests::wireguard_lab`): boringtun-cli on both ends, configured by `wg-quick`, keys
//! made per test, the router's nftables ruleset, sshgw attached to `wg0` with the device's
//! tunnel address in the device table and the device pinned to `wg0`. Every SSH is real
//! OpenSSH through the tunnel.
//!
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`), OpenSSH, `wg`/`wg-quick`
//! (wireguard-tools), `nft` (nftables) and boringtun-cli (`cargo xtask prereqs` installs
//! them; a missing one fails the test, nothing is skipped):
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test wireguard -- --test-threads=2`.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sshgw_tests::gateway::{Status, bpftool, str_field};
use sshgw_tests::prober::{Prober, Tally};
use sshgw_tests::recording::{
    RecordingKey, closed_recorded_channel, file_mode, recorded_policies, recording_toml, verify,
};
use sshgw_tests::wait::poll_until;
use sshgw_tests::wireguard_lab::{
    OTHER_UNDERLAY_ROUTER, OtherDevice, WG_IF, WG_PORT, WireGuardLab, bob, chain_counter,
    example_devices, forward_drops, jdoe, nft, peer_section, wireguard_gateway_config,
};
use sshgw_tests::{Family, Gateway, Lab, SSH_PORT, Sshd, SshdConfig, family_tests, lab_test};

const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
/// A device whose session keys died with the old interface starts a new handshake after
/// WireGuard's keepalive and rekey timeouts (10 s + 5 s) plus jitter.
const REHANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

const V4: Family = Family::V4;
const COMPLETE: &str = "status:   complete (authenticated end-of-recording record)";
const L3_PROGRAM: &str = "sshgw_ingress_l3";

/// How sshd (LogLevel VERBOSE) logs a TCP connection from `addr`.
fn sshd_saw(addr: IpAddr) -> String {
    format!("Connection from {addr} port ")
}

/// The `source` prefix of a session from `addr` (`100.100.0.7:` / `[fd00:100::7]:`).
fn source_prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:"),
        IpAddr::V6(a) => format!("[{a}]:"),
    }
}

/// `(link id, program id)` of `iface` in `sshgw status`.
fn attachment(status: &Status, iface: &str) -> Option<(u32, u32)> {
    let i = status.interfaces.iter().find(|i| i.name == iface)?;
    Some((i.link_id?, i.program_id?))
}

/// Fails unless sshgw runs its L3 program variant on `iface`; returns the link id.
fn expect_l3_program(status: &Status, iface: &str) -> Result<u32> {
    let (link, prog) = attachment(status, iface)
        .with_context(|| format!("{iface} is not attached: {}", status.raw))?;
    let out = Command::new(bpftool()?)
        .args(["prog", "show", "id", &prog.to_string()])
        .output()
        .context("running bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&format!("name {L3_PROGRAM} ")),
        "{iface} should run {L3_PROGRAM}: {text}"
    );
    Ok(link)
}

/// sshd trusting the gateway (principal jdoe may log in as root) and the daemon, both
/// started; `cfg` comes from the example.
fn start(
    lab: &Lab,
    sshd: SshdConfig,
    cfg: sshgw_tests::GatewayConfig,
) -> Result<(Sshd, Gateway<'_>, Status)> {
    let sshd = lab.start_sshd_with(sshd)?;
    let mut gw = lab.gateway_with(cfg)?;
    let status = gw.start()?;
    Ok((sshd, gw, status))
}

/// The received bytes of peer `public` on the router's `ifname`.
fn rx_of(wg: &WireGuardLab, ifname: &str, public: &str) -> Result<u64> {
    let peers = wg.router.transfer(ifname)?;
    Ok(peers
        .get(public)
        .with_context(|| format!("no peer {public} on {ifname}: {peers:?}"))?
        .rx)
}

/// Waits (bounded) until `sshgw status` shows `wg0` attached with a link other than
/// `old_link` and running the L3 program; returns the new link id.
fn wait_attached(gw: &Gateway<'_>, old_link: Option<u32>) -> Result<u32> {
    let status = poll_until(
        "the daemon to attach to the (new) wg0",
        LOG_TIMEOUT,
        Duration::from_millis(100),
        || {
            let s = gw.status()?;
            Ok(attachment(&s, WG_IF)
                .is_some_and(|(link, _)| Some(link) != old_link)
                .then_some(s))
        },
    )?;
    expect_l3_program(&status, WG_IF)
}

/// laptop-jdoe's ssh through its tunnel is relayed: the server sees the router.
fn expect_jdoe_intercepted(lab: &Lab, wg: &WireGuardLab, what: &str) -> Result<()> {
    let conn = lab
        .ssh(V4.audited())
        .bind(jdoe(V4))
        .ssh_connection()
        .with_context(|| wg.diag())?;
    ensure!(
        conn.client == V4.router_wan(),
        "{what}: the server should see the router: {conn:?}"
    );
    Ok(())
}

/// 1. Steps 1-8 of the example: an audited SSH session from laptop-jdoe through the tunnel
///    is intercepted (the server sees the router), logged with the device, its user and its
///    tunnel address, and recorded; the recording verifies. The keys and configs are 0600.
fn tunnel_session_is_intercepted_and_recorded(lab: &Lab, fam: Family) -> Result<()> {
    let wg = WireGuardLab::up(lab, "")?;
    for host in [&wg.router, &wg.device] {
        for file in [host.dir().join("wg0.key"), host.config_path(WG_IF)] {
            let mode = file_mode(&file)?;
            ensure!(mode == 0o600, "{} has mode {mode:o}", file.display());
        }
    }
    let key = RecordingKey::generate(lab, "rec")?;
    let mut cfg = wireguard_gateway_config()?.policies(recorded_policies());
    cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
    let (sshd, gw, status) = start(lab, SshdConfig::gateway(), cfg)?;
    expect_l3_program(&status, WG_IF)?;

    let rx_before = rx_of(&wg, WG_IF, &wg.device_key.public)?;
    let out = lab
        .ssh(fam.audited())
        .bind(jdoe(fam))
        .run("echo $SSH_CONNECTION; echo through-wireguard")?;
    out.check().with_context(|| wg.diag())?;
    let conn = out.ssh_connection()?;
    ensure!(
        conn.client == fam.router_wan() && out.stdout.contains("through-wireguard"),
        "the server should see the router ({}), not the tunnel address: {out:?}",
        fam.router_wan()
    );
    gw.wait_for_intercept(fam.audited(), SSH_PORT, LOG_TIMEOUT)?;

    let src = source_prefix(jdoe(fam));
    let s = gw.wait_for_session(&[], SESSION_TIMEOUT, "the tunnel session", |s| {
        str_field(s, "source").is_some_and(|x| x.starts_with(&src))
    })?;
    let id = str_field(&s, "id").context("session without id")?;
    let (record, _channel, recording) = closed_recorded_channel(&gw, id, SESSION_TIMEOUT)?;
    for (field, want) in [
        ("device_id", "laptop-jdoe"),
        ("email", "jdoe@example.com"),
        ("decision", "audit_ssh"),
    ] {
        ensure!(
            str_field(&record, field) == Some(want),
            "session field {field} should be {want:?}: {record:#}"
        );
    }
    let verified = verify(lab, &recording, &key.private)?.check("sshgw recording verify")?;
    ensure!(
        verified.stdout.contains(COMPLETE),
        "the recording should verify complete: {verified:?}"
    );

    let rx_after = rx_of(&wg, WG_IF, &wg.device_key.public)?;
    ensure!(
        rx_after > rx_before,
        "the session should have gone through WireGuard (rx {rx_before} -> {rx_after})"
    );
    ensure!(
        !sshd.log().contains(&sshd_saw(jdoe(fam))),
        "sshd saw the tunnel address directly:\n{}",
        sshd.log()
    );
    Ok(())
}
family_tests!(tunnel_session_is_intercepted_and_recorded => wireguard_session_is_intercepted_and_recorded_v4, wireguard_session_is_intercepted_and_recorded_v6);

/// laptop-bob's entry for the device table (a second device on `wg0`).
fn bob_device() -> Value {
    json!({
        "id": "laptop-bob",
        "addresses": [bob(V4).to_string()],
        "interface": WG_IF,
        "user": {"email": "bob@example.com", "groups": ["developers"]}
    })
}

/// The example's device table with laptop-bob added.
fn devices_with_bob() -> Result<Value> {
    let mut devices = example_devices()?;
    devices["devices"]
        .as_array_mut()
        .context("the example's devices.json has no devices list")?
        .push(bob_device());
    Ok(devices)
}

/// A device config (the example's shape) for a peer of the router's `ifname` listening on
/// `port`, with `addresses` as its tunnel addresses.
fn peer_config(addresses: &str, router_public: &str, port: u16, router_tunnel: &str) -> String {
    format!(
        "[Interface]\nAddress = {addresses}\nPostUp = wg set %i private-key /etc/wireguard/wg0.key\n\n\
         [Peer]\nPublicKey = {router_public}\nEndpoint = {OTHER_UNDERLAY_ROUTER}:{port}\n\
         AllowedIPs = {router_tunnel}, 203.0.113.0/24\n"
    )
}

/// Counts, before anything else sees them, the packets that arrive on the router's `wg0`
/// with laptop-jdoe's address as their source (table `inet observe`).
fn observe_jdoe_on_wg0(lab: &Lab) -> Result<()> {
    nft(lab, &["add", "table", "inet", "observe"])?;
    nft(
        lab,
        &[
            "add",
            "chain",
            "inet",
            "observe",
            "pre",
            "{",
            "type",
            "filter",
            "hook",
            "prerouting",
            "priority",
            "-300",
            ";",
            "}",
        ],
    )?;
    nft(
        lab,
        &[
            "add",
            "rule",
            "inet",
            "observe",
            "pre",
            "iifname",
            WG_IF,
            "ip",
            "saddr",
            &jdoe(V4).to_string(),
            "counter",
        ],
    )
    .map(drop)
}

/// laptop-bob (a namespace of its own) as a second peer of the router's `wg0`, allowed
/// 100.100.0.9 only; his tunnel has 100.100.0.9 (the default source) and also laptop-jdoe's
/// 100.100.0.7.
fn bob_on_wg0(lab: &Lab) -> Result<(OtherDevice, WireGuardLab)> {
    let other = OtherDevice::new(lab)?;
    let bob_peer = peer_section(
        "laptop-bob (bob@example.com)",
        &other.key.public,
        &format!("{}/32", bob(V4)),
    );
    let wg = WireGuardLab::up(lab, &bob_peer)?;
    other.up(&peer_config(
        &format!("{}/32, {}/32", bob(V4), jdoe(V4)),
        &wg.router_key.public,
        WG_PORT,
        "100.100.0.1/32",
    ))?;
    Ok((other, wg))
}

/// bob's ssh from his own address is relayed and logged as his.
fn expect_bob_relayed(
    lab: &Lab,
    other: &OtherDevice,
    wg: &WireGuardLab,
    gw: &Gateway<'_>,
) -> Result<()> {
    let conn = lab
        .ssh(V4.audited())
        .from_ns(&other.ns)
        .bind(bob(V4))
        .ssh_connection()
        .with_context(|| wg.diag())?;
    ensure!(
        conn.client == V4.router_wan(),
        "bob from his own address should be intercepted: {conn:?}"
    );
    let bob_src = source_prefix(bob(V4));
    gw.wait_for_session(&[], SESSION_TIMEOUT, "bob's session", |s| {
        str_field(s, "source").is_some_and(|x| x.starts_with(&bob_src))
            && str_field(s, "email") == Some("bob@example.com")
    })?;
    Ok(())
}

/// 2. Spoofing, first layer (step 10.1): laptop-bob, a second peer of `wg0`, sends with
///    laptop-jdoe's tunnel address. The router's WireGuard decrypts the packets (bob's
///    received bytes grow) and drops them because the source is outside bob's AllowedIPs:
///    none arrives on `wg0`, sshgw intercepts nothing and sshd sees nothing. From its own
///    address bob is intercepted and logged as bob, so the tunnel itself works.
#[test]
fn another_peer_sending_a_device_address_is_dropped_by_wireguard() {
    lab_test(|lab| {
        let (other, wg) = bob_on_wg0(lab)?;
        observe_jdoe_on_wg0(lab)?;
        let cfg = wireguard_gateway_config()?.devices(devices_with_bob()?);
        let sshd_cfg = SshdConfig::gateway().principals("root", &["bob"]);
        let (sshd, gw, _) = start(lab, sshd_cfg, cfg)?;
        expect_bob_relayed(lab, &other, &wg, &gw)?;

        let syns_before = gw.status()?.counters.intercepted_syns;
        let rx_before = rx_of(&wg, WG_IF, &other.key.public)?;
        let out = lab
            .ssh(V4.audited())
            .from_ns(&other.ns)
            .bind(jdoe(V4))
            .connect_timeout(3)
            .run("true")?;
        ensure!(
            out.code() == Some(255) && out.stdout.is_empty(),
            "ssh from bob's peer with jdoe's address should get no answer: {out:?}"
        );
        let rx_after = rx_of(&wg, WG_IF, &other.key.public)?;
        ensure!(
            rx_after > rx_before,
            "WireGuard should have received bob's spoofed packets (rx {rx_before} -> {rx_after})"
        );
        let arrived = chain_counter(lab, "observe", "pre")?;
        ensure!(
            arrived == 0,
            "{arrived} packets from {} arrived on {WG_IF}: WireGuard should drop them",
            jdoe(V4)
        );
        let status = gw.status()?;
        ensure!(
            status.counters.intercepted_syns == syns_before,
            "sshgw should not have seen the spoofed SYNs: {}",
            status.raw
        );
        ensure!(
            !sshd.log().contains(&sshd_saw(jdoe(V4))),
            "sshd saw the spoofed address:\n{}",
            sshd.log()
        );
        let jdoe_src = source_prefix(jdoe(V4));
        ensure!(
            gw.sessions(&[])?
                .iter()
                .all(|s| !str_field(s, "source").is_some_and(|x| x.starts_with(&jdoe_src))),
            "no session may come from {}",
            jdoe(V4)
        );
        Ok(())
    });
}

/// A second tunnel `wg1` on the router whose only peer (the other device) was given
/// laptop-jdoe's address too; the operator put `wg1` into the firewall like `wg0`. Checks
/// that `wg-quick` routes 100.100.0.7 to `wg1` and that `rp_filter` is strict.
fn overlapping_wg1(lab: &Lab, wg: &WireGuardLab, other: &OtherDevice) -> Result<()> {
    let wg1_key = wg.router.genkey("wg1")?;
    let wg1_port = WG_PORT + 1;
    let wg1 = format!(
        "[Interface]\nAddress = 100.101.0.1/24\nListenPort = {wg1_port}\n\
         PostUp = wg set %i private-key {}\n{}",
        wg1_key.private.display(),
        peer_section(
            "contractors' gateway, given laptop-jdoe's address by mistake",
            &other.key.public,
            &format!("100.101.0.9/32, {}/32", jdoe(V4)),
        )
    );
    wg.router.write_config("wg1", &wg1)?;
    wg.router.up("wg1")?;
    // The operator put wg1 into the firewall and into sshgw like wg0.
    let port = wg1_port.to_string();
    nft(
        lab,
        &[
            "add", "rule", "inet", "sshgw", "input", "udp", "dport", &port, "accept",
        ],
    )?;
    nft(
        lab,
        &[
            "add", "rule", "inet", "sshgw", "input", "iifname", "wg1", "meta", "mark", "&",
            "0x100", "==", "0x100", "tcp", "dport", "22", "accept",
        ],
    )?;
    other.up(&peer_config(
        &format!("{}/32", jdoe(V4)),
        &wg1_key.public,
        wg1_port,
        "100.101.0.1/32",
    ))?;
    let route = lab.rtr.ip(&["route", "get", &jdoe(V4).to_string()])?;
    ensure!(
        route.contains("dev wg1"),
        "wg-quick should route {} to wg1: {route}",
        jdoe(V4)
    );
    ensure!(
        lab.rtr.sysctl_get("net.ipv4.conf.all.rp_filter")? == "1",
        "the example sets strict rp_filter"
    );
    Ok(())
}

/// 3. Spoofing, second layer (step 10.2): a second tunnel `wg1` whose peer was given
///    laptop-jdoe's address. WireGuard accepts the peer's packets, `wg-quick` routes
///    100.100.0.7 to `wg1` so strict `rp_filter` accepts them too, and sshgw (attached to
///    `wg1` as well) refuses the connection: jdoe is pinned to `wg0`. With `wg1` gone, jdoe
///    from the real device is relayed again.
#[test]
fn overlapping_peer_on_another_tunnel_is_refused_by_the_interface_pin() {
    lab_test(|lab| {
        let other = OtherDevice::new(lab)?;
        let wg = WireGuardLab::up(lab, "")?;
        overlapping_wg1(lab, &wg, &other)?;
        let cfg = wireguard_gateway_config()?.interfaces(&[WG_IF, "wg1"]);
        let (sshd, gw, status) = start(lab, SshdConfig::gateway(), cfg)?;
        expect_l3_program(&status, "wg1")?;

        let seen_before = sshd.log().matches("Connection from ").count();
        let out = lab
            .ssh(V4.audited())
            .from_ns(&other.ns)
            .run("true")
            .with_context(|| wg.diag())?;
        let message = format!(
            "sshgw: {} arrived on wg1, not on its device's tunnel wg0; refused as spoofed",
            jdoe(V4)
        );
        ensure!(
            out.code() == Some(255) && out.stderr.contains(&message) && out.stdout.is_empty(),
            "the peer on wg1 should be refused with {message:?}: {out:?}"
        );
        let line = gw.wait_for_nth_log("spoofed source", 0, LOG_TIMEOUT)?;
        ensure!(
            line.contains("laptop-jdoe") && line.contains("wg1"),
            "the spoof log line should name the device and the interface: {line}"
        );
        ensure!(
            rx_of(&wg, "wg1", &other.key.public)? > 0,
            "WireGuard on wg1 should have accepted the peer's packets"
        );
        ensure!(
            sshd.log().matches("Connection from ").count() == seen_before,
            "the refused connection must not reach the server:\n{}",
            sshd.log()
        );

        wg.router.down("wg1")?;
        expect_jdoe_intercepted(lab, &wg, "jdoe from the real device, wg1 gone")
    });
}

/// Freezes the daemon (SIGSTOP), re-creates the router's `wg0` with `wg-quick down`/`up`,
/// waits (bounded) until the device's SYNs come through the new interface, which has no
/// program (the forward rule's counter rises, or sshd sees the device), and thaws the
/// daemon. Returns the forward drops before and the prober's tally at the thaw.
fn recreate_while_frozen(
    lab: &Lab,
    wg: &WireGuardLab,
    gw: &Gateway<'_>,
    sshd: &Sshd,
    prober: &Prober,
) -> Result<(u64, Tally)> {
    let daemon = gw.proc().context("no daemon process")?;
    daemon.signal(Signal::SIGSTOP)?;
    let drops_before = forward_drops(lab)?;
    wg.router.down(WG_IF)?;
    wg.router.up(WG_IF)?;
    let device_seen = sshd_saw(jdoe(V4));
    poll_until(
        "the device's SYNs through the new wg0 to be dropped by the forward rule",
        REHANDSHAKE_TIMEOUT,
        Duration::from_millis(200),
        || {
            let dropped = forward_drops(lab)? > drops_before;
            Ok((dropped || sshd.log().contains(&device_seen)).then_some(()))
        },
    )
    .with_context(|| format!("{:?}\n{}", prober.tally(), wg.diag()))?;
    let during = prober.tally();
    daemon.signal(Signal::SIGCONT)?;
    Ok((drops_before, during))
}

/// 4. Step 9: the router's `wg0` is re-created with `wg-quick down`/`up` while the device
///    keeps opening SSH connections. To make the gap before the re-attach certain, the
///    daemon is frozen (SIGSTOP) across the re-creation: the device's SYNs then reach the
///    new `wg0`, which has no program, and the example's forward rule drops them (its
///    counter rises). Thawed, the daemon attaches to the new interface (new link id, its
///    log says so) and the device's connections are intercepted again. No connection from
///    the device's own address ever reaches the server, and none is answered by it.
#[test]
fn recreated_tunnel_is_reattached_and_nothing_passes_unaudited() {
    lab_test(|lab| {
        let wg = WireGuardLab::up(lab, "")?;
        let (sshd, mut gw, status) =
            start(lab, SshdConfig::gateway(), wireguard_gateway_config()?)?;
        let old_link = expect_l3_program(&status, WG_IF)?;
        let attached = "datapath attached to the interface";
        let attaches = gw.log_count(attached);

        let prober = Prober::start(&lab.dev, SocketAddr::new(V4.audited(), SSH_PORT))?;
        prober
            .wait_for(LOG_TIMEOUT, "an intercepted connection", |t| {
                t.intercepted >= 1
            })
            .with_context(|| wg.diag())?;

        let (drops_before, during) = recreate_while_frozen(lab, &wg, &gw, &sshd, &prober)?;
        wait_attached(&gw, Some(old_link))?;
        gw.wait_for_nth_log(attached, attaches, LOG_TIMEOUT)?;
        gw.wait_for_log(
            "the datapath interface was re-created (new index); attaching anew",
            LOG_TIMEOUT,
        )?;
        prober.wait_for(
            REHANDSHAKE_TIMEOUT,
            "an intercepted connection after the re-attach",
            |t| t.intercepted > during.intercepted,
        )?;
        let tally = prober.stop()?;
        eprintln!("prober: {tally:?}; forward drops: {}", forward_drops(lab)?);

        ensure!(
            tally.direct == 0,
            "{} connections were answered by the server itself: {:?}",
            tally.direct,
            tally.direct_banners
        );
        ensure!(
            !sshd.log().contains(&sshd_saw(jdoe(V4))),
            "the server saw the device's own address:\n{}",
            sshd.log()
        );
        ensure!(
            forward_drops(lab)? > drops_before,
            "the forward rule should have dropped the SYNs of the gap"
        );
        expect_jdoe_intercepted(lab, &wg, "after the re-attach")?;
        gw.stop()?;
        Ok(())
    });
}

/// 5. The boot order of step 6 gone wrong: sshgw starts while `wg0` does not exist yet. The
///    daemon says so, starts anyway, and attaches to `wg0` when `wg-quick up` creates it;
///    the device's SSH is then intercepted.
#[test]
fn tunnel_that_appears_after_the_daemon_is_attached() {
    lab_test(|lab| {
        let wg = WireGuardLab::up(lab, "")?;
        wg.router.down(WG_IF)?;
        let (sshd, gw, status) = start(lab, SshdConfig::gateway(), wireguard_gateway_config()?)?;
        ensure!(
            attachment(&status, WG_IF).is_none(),
            "wg0 does not exist, so nothing can be attached: {}",
            status.raw
        );
        gw.wait_for_log("datapath interface does not exist yet", LOG_TIMEOUT)?;

        wg.router.up(WG_IF)?;
        wait_attached(&gw, None)?;
        expect_jdoe_intercepted(lab, &wg, "through the late wg0")?;
        ensure!(
            !sshd.log().contains(&sshd_saw(jdoe(V4))),
            "the server saw the device's own address:\n{}",
            sshd.log()
        );
        Ok(())
    });
}
