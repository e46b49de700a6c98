//! Datapath integrity against the users it audits (issue 13, items 6, 7 and 11): every test
//! performs an attack from the lab's device namespace over the wire, with real clients or
//! the raw `sshgw-attack` helper (`tests/src/bin/sshgw-attack.rs`), and checks that audited
//! SSH never reaches the server unaudited and that other devices keep working.
//!
//! * fd exhaustion: the daemon under `RLIMIT_NOFILE` 1024 and a connection flood from an
//!   enrolled device; the program stays attached (only "no such device" detaches).
//! * private bpffs: a daemon started with `ip netns exec` is refused, unless
//!   `allow_private_bpffs`, and then its pins really die with it.
//! * tunnels: a real VXLAN tunnel carrying SSH to the audited server, and IPIP,
//!   IPv6-in-IP, GRE and ESP packets (also behind an IPv6 extension header).
//! * SYN floods: a raw SYN flood from one device neither evicts another device's
//!   FLOW_INGRESS entry nor starves its SSH; handshakes answered with SYN cookies reach the
//!   listener.
//!
//! Needs root, the sshgw binary (`SSHGW_BIN`), tcpdump, `ss` and `nstat` (iproute2).

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use sshgw_tests::gateway::{GatewayConfig, default_devices, set_nofile};
use sshgw_tests::wait::poll_until;
use sshgw_tests::{
    Capture, Family, Gateway, Lab, Packet, Proc, SSH_PORT, family_tests, iface, lab_test,
};

/// The attack helper built with these tests.
const ATTACK: &str = env!("CARGO_BIN_EXE_sshgw-attack");

const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// `sshgw-attack ARGS` in the device namespace.
fn attack(lab: &Lab, args: &[&str]) -> Command {
    let mut cmd = lab.dev.setns_command(ATTACK);
    cmd.args(args);
    cmd
}

/// Runs `sshgw-attack ARGS` to completion.
fn run_attack(lab: &Lab, args: &[&str]) -> Result<()> {
    let label = format!("sshgw-attack {}", args.join(" "));
    lab.procs()
        .run_quiet(&label, &mut attack(lab, args), Duration::from_secs(180))?
        .check(&label)?;
    Ok(())
}

/// `echo $SSH_CONNECTION` from `src` to `dst`:22: who sshd saw as the client.
fn client_seen(lab: &Lab, src: IpAddr, dst: IpAddr, timeout: u32) -> Result<IpAddr> {
    let out = lab
        .ssh(dst)
        .bind(src)
        .connect_timeout(timeout)
        .run("echo $SSH_CONNECTION")?;
    Ok(out
        .ssh_connection()
        .with_context(|| format!("ssh {src} -> {dst}: {out:?}"))?
        .client)
}

/// Retries SSH from the enrolled address to the audited server (bounded) until sshd sees
/// `client`.
fn wait_client_seen(lab: &Lab, fam: Family, client: IpAddr, what: &str) -> Result<()> {
    poll_until(what, Duration::from_secs(90), POLL, || {
        let seen = client_seen(lab, fam.enrolled(), fam.audited(), 5);
        Ok(seen.ok().filter(|c| *c == client).map(|_| ()))
    })
}

/// SSH from the enrolled address reaches the audited server through the gateway.
fn expect_intercepted(lab: &Lab, fam: Family, what: &str) -> Result<()> {
    let client = client_seen(lab, fam.enrolled(), fam.audited(), 10)?;
    ensure!(
        client == fam.router_wan(),
        "{what}: sshd should see the router {}, saw {client}",
        fam.router_wan()
    );
    Ok(())
}

/// A pcap filter for packets from `src` to TCP port 22: with the program attached, none
/// of them reaches the audited server (intercepted flows reach it from the router).
fn direct_ssh_filter(src: IpAddr) -> String {
    format!("src host {src} and tcp dst port {SSH_PORT}")
}

/// The daemon's `sshgw_datapath_interface_check_errors_total`.
fn interface_check_errors(gw: &Gateway<'_>) -> Result<u64> {
    let reply = gw.api_bytes("GET", "/metrics", None)?;
    let text = reply.body;
    text.lines()
        .find_map(|l| l.strip_prefix("sshgw_datapath_interface_check_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no interface check counter in /metrics:\n{text}"))
}

// ---------------------------------------------------------------------------------------
// Item 6: fail closed means closed

/// The daemon's fd limit, as under systemd's default soft limit (hard too, so that raising
/// the soft limit at start cannot hide the attack).
const DAEMON_NOFILE: u64 = 1024;
/// Connections the flood holds open: more than the daemon can have descriptors for.
const FLOOD_CONNECTIONS: &str = "1500";
/// How long the flood may take to fill the daemon's descriptor table.
const EXHAUSTION_TIMEOUT: Duration = Duration::from_secs(150);

/// `[limits]` that let one device hold as many connections as it likes, for as long as it
/// likes. The default caps (16 pre-auth connections per device, 256 in all, 20 s to log
/// in) and the SYN budget stop one device long before the daemon runs out of descriptors;
/// lifted, the one lab device stands in for the many devices (or the leak) that can still
/// get it there.
const FLOOD_LIMITS: &str = "[limits]\nmax_preauth = 8192\nmax_preauth_per_device = 8192\n\
                            max_connections_per_device = 8192\npreauth_grace_secs = 600\n";

/// Log lines of a daemon giving up an interface's link (this and earlier versions).
const DETACH_LOGS: [&str; 3] = ["went away", "interface is gone", "was re-created"];
/// The log line of a failed interface lookup that kept the program attached.
const KEPT_LOG: &str = "keeping its program attached";
/// The daemon's log line when its descriptor table is full.
const ACCEPT_EMFILE: &str = "Too many open files";

/// Starts the connection flood from the enrolled address and waits until the daemon's
/// descriptor table is full (its accepts fail with EMFILE). The daemon then hovers at its
/// limit: each accept takes the last free descriptor for an instant and the connection is
/// closed again, so whether its once-a-second interface check lands in such an instant is
/// luck. To make it certain, the soft limit of the running daemon is pinned to the size
/// its table has now (`prlimit`, as if one more connection were open), and the test waits
/// for the daemon's next check. Fails at once if the daemon gives up the link or a packet
/// from the device reaches the server's port 22. Returns the running flood and the
/// daemon's log line.
fn flood_until_exhausted(
    lab: &Lab,
    fam: Family,
    gw: &Gateway<'_>,
    direct: &Capture,
) -> Result<(Proc, String)> {
    let (src, dst) = (fam.enrolled().to_string(), fam.audited().to_string());
    let mut cmd = attack(lab, &["connections", &src, &dst, "22", FLOOD_CONNECTIONS]);
    set_nofile(&mut cmd, 8192);
    let flood = lab.procs().spawn("connection flood", &mut cmd)?;
    let bypass = || -> Result<()> {
        if let Some(line) = gw
            .log()
            .lines()
            .find(|l| DETACH_LOGS.iter().any(|d| l.contains(d)))
        {
            bail!("the daemon gave up the interface's link during the flood: {line}");
        }
        if let Some(pkt) = direct.packets().first() {
            bail!(
                "audited SSH reached the server directly during the flood: {}",
                pkt.text
            );
        }
        if let Some(status) = flood.try_status()? {
            bail!("the flood ended early ({status:?})");
        }
        Ok(())
    };
    poll_until(
        "the daemon's descriptor table to fill up",
        EXHAUSTION_TIMEOUT,
        POLL,
        || {
            bypass()?;
            Ok(gw.log().contains(ACCEPT_EMFILE).then_some(()))
        },
    )?;
    let pid = gw.proc().context("no daemon")?.pid();
    set_soft_limit(pid, lowest_free_fd(pid)?)?;
    let kept = poll_until(
        "the daemon's next interface check",
        LOG_TIMEOUT,
        POLL,
        || {
            bypass()?;
            Ok(gw
                .log()
                .lines()
                .find(|l| l.contains(KEPT_LOG))
                .map(str::to_owned))
        },
    );
    set_soft_limit(pid, DAEMON_NOFILE)?;
    Ok((flood, kept?))
}

/// The lowest descriptor number process `pid` has free.
fn lowest_free_fd(pid: u32) -> Result<u64> {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    Ok((0..).find(|n| !open.contains(n)).expect("a free number"))
}

/// Sets the soft `RLIMIT_NOFILE` of the running daemon `pid` (its hard limit stays
/// [`DAEMON_NOFILE`], so the soft one can be put back without CAP_SYS_RESOURCE).
#[allow(unsafe_code)] // reason: prlimit(2) through libc
fn set_soft_limit(pid: u32, limit: u64) -> Result<()> {
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: DAEMON_NOFILE,
    };
    // SAFETY: prlimit reads the struct we pass; no old value is requested.
    let ret = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlim,
            std::ptr::null_mut(),
        )
    };
    ensure!(
        ret == 0,
        "prlimit {pid}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// 1. An enrolled device floods the daemon with TCP connections to an audited address
///    until it runs out of file descriptors. The interface check then fails (EMFILE), and
///    the program must stay attached: no packet from the device's own address reaches the
///    server's port 22 during or after the flood, and the TCX link id never changes.
#[test]
fn fd_exhaustion_never_detaches_the_datapath() {
    lab_test(|lab| {
        let fam = Family::V4;
        let sshd = lab.start_sshd_for_gateway()?;
        let direct = lab.capture(&lab.srv, iface::SRV, &direct_ssh_filter(fam.enrolled()), 1)?;
        let mut cfg = GatewayConfig::default()
            .nofile(DAEMON_NOFILE)
            .datapath("syn_rate_per_source = 0");
        cfg.extra_toml = FLOOD_LIMITS.to_owned();
        let mut gw = lab.gateway_with(cfg)?;
        let links = gw.start()?.link_ids();
        expect_intercepted(lab, fam, "before the flood")?;

        let (flood, exhausted) = flood_until_exhausted(lab, fam, &gw, &direct)?;
        eprintln!("daemon: {exhausted}");
        flood.kill()?;

        // Once the flood is gone the daemon answers again, on the very same link.
        let status = poll_until(
            "the daemon to answer after the flood",
            Duration::from_secs(60),
            POLL,
            || Ok(gw.status().ok().filter(|s| s.is_running())),
        )?;
        ensure!(
            status.link_ids() == links,
            "the TCX link changed from {links:?}: {}",
            status.raw
        );
        ensure!(
            interface_check_errors(&gw)? >= 1,
            "the failed checks were not counted"
        );
        // sshd drops new connections while the flood's upstream legs are still pre-auth
        // (MaxStartups); once they are gone, SSH from the device is intercepted again.
        wait_client_seen(
            lab,
            fam,
            fam.router_wan(),
            "SSH from the device to be intercepted after the flood",
        )?;
        let direct = direct.stop();
        ensure!(
            direct.is_empty(),
            "audited SSH reached the server from the device itself: {direct:#?}"
        );
        let from_device = format!("Connection from {} ", fam.enrolled());
        ensure!(
            !sshd.log().contains(&from_device),
            "sshd accepted a connection straight from the device"
        );
        ensure!(
            !gw.log()
                .lines()
                .any(|l| DETACH_LOGS.iter().any(|d| l.contains(d))),
            "the daemon gave up the interface's link:\n{}",
            gw.log()
        );
        Ok(())
    });
}

/// 1b. Late packets of a flow the listener took, once its socket is gone (the device reset
///     it), are dropped: forwarded, they would reach the real server from the device's own
///     address. Under a descriptor flood this happens to the flood's connections.
fn stray_packets_of_a_reset_flow_never_reach_the_server(lab: &Lab, fam: Family) -> Result<()> {
    let direct = lab.capture(&lab.srv, iface::SRV, &direct_ssh_filter(fam.enrolled()), 1)?;
    let mut gw = lab.gateway()?;
    gw.start()?;
    let (src, dst) = (fam.enrolled().to_string(), fam.audited().to_string());
    run_attack(lab, &["stray", &src, &dst, "22"])?;
    let counted = poll_until(
        "the stray ACKs to be judged",
        Duration::from_secs(20),
        POLL,
        || {
            let c = gw.status()?.counters;
            let judged = c.dropped_stray_packets + c.passed_preexisting_packets;
            Ok((judged >= 1 || !direct.packets().is_empty()).then_some(c))
        },
    )?;
    let direct = direct.stop();
    ensure!(
        direct.is_empty(),
        "a late packet of an intercepted flow reached the server from the device: {direct:#?}"
    );
    ensure!(
        counted.dropped_stray_packets >= 1 && counted.passed_preexisting_packets == 0,
        "the stray ACKs should be counted as dropped_stray_packets: {counted:?}"
    );
    Ok(())
}
family_tests!(stray_packets_of_a_reset_flow_never_reach_the_server => stray_packets_of_a_reset_flow_never_reach_the_server_v4, stray_packets_of_a_reset_flow_never_reach_the_server_v6);

/// The refusal names why a private bpffs is no good.
const PRIVATE_BPFFS_REFUSAL: &str = "fail-closed would not survive it";

/// 2. A daemon started with `ip netns exec` sees a fresh `/sys` and mounts its own bpffs:
///    its pins would die with it. It refuses to start, and says why.
#[test]
fn private_bpffs_is_refused() {
    lab_test(|lab| {
        let mut gw = lab.gateway_with(GatewayConfig {
            ip_netns_exec: true,
            ..Default::default()
        })?;
        let proc = gw.spawn()?.clone();
        let status = proc.wait_exit(Duration::from_secs(30))?;
        let log = gw.log();
        ensure!(
            !status.success()
                && log.contains(PRIVATE_BPFFS_REFUSAL)
                && log.contains("allow_private_bpffs"),
            "sshgw under `ip netns exec` should refuse to start ({status:?}):\n{log}"
        );
        ensure!(
            !gw.pin_dir().exists(),
            "nothing may be pinned on the host's bpffs"
        );
        Ok(())
    });
}

/// 3. With `allow_private_bpffs = true` the same daemon starts and intercepts, and warns.
///    Its pins really do die with it: after a SIGKILL audited SSH reaches the server
///    directly, which is why this is not the default. (On the host's bpffs a SIGKILL fails
///    closed: `datapath.rs` `sigkill_fails_closed`.)
#[test]
fn private_bpffs_allowed_by_setting_dies_with_the_daemon() {
    lab_test(|lab| {
        let fam = Family::V4;
        let _sshd = lab.start_sshd_for_gateway()?;
        let mut cfg = GatewayConfig::default().datapath("allow_private_bpffs = true");
        cfg.ip_netns_exec = true;
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;
        ensure!(
            gw.log().contains(PRIVATE_BPFFS_REFUSAL),
            "no warning:\n{}",
            gw.log()
        );
        expect_intercepted(lab, fam, "private bpffs")?;
        gw.kill()?;
        // The mount namespace, its bpffs and the pinned link go away with the process.
        wait_client_seen(
            lab,
            fam,
            fam.enrolled(),
            "the private pins to die with the daemon",
        )?;
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Item 11: tunnels toward audited destinations

/// Addresses inside the VXLAN tunnel between the device and the audited server.
const VXLAN_DEV: &str = "10.99.0.1";
const VXLAN_SRV: &str = "10.99.0.2";

/// A VXLAN tunnel (UDP 4789) between the device's enrolled address and the audited
/// server, with 10.99.0.1 (device) and 10.99.0.2 (server) inside.
fn vxlan_tunnel(lab: &Lab, fam: Family) -> Result<()> {
    for (ns, ifc, local, remote, inner) in [
        (
            &lab.dev,
            iface::DEV,
            fam.enrolled(),
            fam.audited(),
            VXLAN_DEV,
        ),
        (
            &lab.srv,
            iface::SRV,
            fam.audited(),
            fam.enrolled(),
            VXLAN_SRV,
        ),
    ] {
        let (local, remote) = (local.to_string(), remote.to_string());
        ns.ip(&[
            "link", "add", "vx0", "type", "vxlan", "id", "42", "local", &local, "remote", &remote,
            "dstport", "4789", "dev", ifc,
        ])?;
        ns.ip(&["addr", "add", &format!("{inner}/24"), "dev", "vx0"])?;
        ns.ip(&["link", "set", "vx0", "up"])?;
    }
    Ok(())
}

/// 4. SSH carried in VXLAN to the audited server (which decapsulates it) never meets the
///    program's TCP rules. It is dropped by default; with `drop_tunnels = false` it logs in
///    directly, which shows what the drop prevents.
fn vxlan_to_audited_server_is_dropped(lab: &Lab, fam: Family) -> Result<()> {
    let _sshd = lab.start_sshd_for_gateway()?;
    vxlan_tunnel(lab, fam)?;
    let inner: IpAddr = VXLAN_SRV.parse()?;
    let from: IpAddr = VXLAN_DEV.parse()?;
    let mut gw = lab.gateway()?;
    gw.start()?;
    let out = lab.ssh(inner).bind(from).connect_timeout(3).run("true")?;
    ensure!(
        !out.success() && out.stderr.contains("timed out"),
        "SSH through VXLAN to the audited server should be dropped: {out:?}"
    );
    let counters = gw.status()?.counters;
    ensure!(
        counters.dropped_tunnel_udp >= 1,
        "dropped_tunnel_udp: {counters:?}"
    );
    expect_intercepted(lab, fam, "plain SSH next to the tunnel")?;
    gw.stop()?;

    let mut gw = lab.gateway_with(GatewayConfig::default().datapath("drop_tunnels = false"))?;
    gw.start()?;
    let client = client_seen(lab, from, inner, 10)?;
    ensure!(
        client == from,
        "with drop_tunnels = false the tunnel reaches sshd directly, from {from}; saw {client}"
    );
    Ok(())
}
family_tests!(vxlan_to_audited_server_is_dropped => vxlan_to_audited_server_is_dropped_v4, vxlan_to_audited_server_is_dropped_v6);

/// IP protocols of the tunnel packets: IPIP, IPv6-in-IP, GRE, ESP.
const TUNNEL_PROTOCOLS: [&str; 4] = ["4", "41", "47", "50"];

/// Sends one packet of every tunnel protocol (each carrying a SYN to port 22) to `dst`.
fn send_tunnel_packets(lab: &Lab, fam: Family, dst: IpAddr, dstopts: bool) -> Result<()> {
    let (src, dst) = (fam.enrolled().to_string(), dst.to_string());
    for proto in TUNNEL_PROTOCOLS {
        let mut args = vec!["encap", &src, &dst, proto];
        if dstopts {
            args.push("dstopts");
        }
        run_attack(lab, &args)?;
    }
    Ok(())
}

/// Captures the tunnel packets (everything from the device but TCP, UDP and ICMP) that
/// reach the server while `send` runs, expecting `count` of them.
fn tunnel_packets_through(
    lab: &Lab,
    fam: Family,
    count: usize,
    send: impl FnOnce() -> Result<()>,
) -> Result<Vec<Packet>> {
    let filter = format!(
        "src host {} and not tcp and not udp and not icmp and not icmp6",
        fam.enrolled()
    );
    let cap = lab.capture(&lab.srv, iface::SRV, &filter, count)?;
    send()?;
    cap.wait(Duration::from_secs(20))
}

/// 5. IPIP, IPv6-in-IP, GRE and ESP from a device interface to an audited destination are
///    dropped and counted per reason; to other destinations they pass. For IPv6 also behind
///    a destination options header. With `drop_tunnels = false` they pass everywhere.
fn tunnel_protocols_to_audited_are_dropped(lab: &Lab, fam: Family) -> Result<()> {
    let mut gw = lab.gateway()?;
    gw.start()?;
    let rounds: &[bool] = match fam {
        Family::V4 => &[false],
        Family::V6 => &[false, true],
    };
    for &dstopts in rounds {
        // Audited first: had one passed, it would be among the packets captured.
        let got = tunnel_packets_through(lab, fam, TUNNEL_PROTOCOLS.len(), || {
            send_tunnel_packets(lab, fam, fam.audited(), dstopts)?;
            send_tunnel_packets(lab, fam, fam.not_audited(), dstopts)
        })?;
        let audited = format!("> {}:", fam.audited());
        let leaked: Vec<_> = got.iter().filter(|p| p.text.contains(&audited)).collect();
        ensure!(
            leaked.is_empty(),
            "tunnel packets reached the audited server: {leaked:#?}"
        );
    }
    let c = gw.status()?.counters;
    let n = rounds.len() as u64;
    ensure!(
        c.dropped_tunnel_ipip == 2 * n && c.dropped_tunnel_gre == n && c.dropped_tunnel_ipsec == n,
        "each tunnel packet to the audited server should be counted once by reason: {c:?}"
    );
    gw.stop()?;

    let mut gw = lab.gateway_with(GatewayConfig::default().datapath("drop_tunnels = false"))?;
    gw.start()?;
    tunnel_packets_through(lab, fam, TUNNEL_PROTOCOLS.len(), || {
        send_tunnel_packets(lab, fam, fam.audited(), false)
    })
    .context("with drop_tunnels = false, tunnel packets to the audited server should pass")?;
    Ok(())
}
family_tests!(tunnel_protocols_to_audited_are_dropped => tunnel_protocols_to_audited_are_dropped_v4, tunnel_protocols_to_audited_are_dropped_v6);

// ---------------------------------------------------------------------------------------
// Item 7, TC part: one device cannot starve the others

/// 6. With `tcp_syncookies = 2` on the router the listener answers every SYN with a cookie
///    and keeps no state, so the handshake's last ACK finds no socket. It must go to the
///    listener (which creates the connection from the cookie), not to the real server.
fn syncookie_handshakes_are_intercepted(lab: &Lab, fam: Family) -> Result<()> {
    let _sshd = lab.start_sshd_for_gateway()?;
    lab.rtr.sysctl("net.ipv4.tcp_syncookies", "2")?;
    let mut gw = lab.gateway()?;
    gw.start()?;
    expect_intercepted(lab, fam, "with tcp_syncookies = 2")?;
    let c = gw.status()?.counters;
    ensure!(
        c.intercepted_syncookie_acks >= 1,
        "intercepted_syncookie_acks: {c:?}"
    );
    eprintln!("rtr: {}", nstat(lab)?);
    Ok(())
}
family_tests!(syncookie_handshakes_are_intercepted => syncookie_handshakes_are_intercepted_v4, syncookie_handshakes_are_intercepted_v6);

/// Mallory's device: enrolled and pinned to `r0` like jdoe's, but its address is not
/// configured in the device namespace, so nothing there answers (or resets) the SYN-ACKs
/// her flood draws: every SYN holds a request socket on the router.
fn devices_with_mallory(fam: Family) -> serde_json::Value {
    let mut devices = default_devices();
    let mallory = mallory(fam).to_string();
    devices["devices"]
        .as_array_mut()
        .expect("device list")
        .push(json!({
            "id": "laptop-mallory",
            "addresses": [mallory],
            "interface": "r0",
            "user": {"email": "mallory@example.com", "groups": []},
        }));
    devices
}

fn mallory(fam: Family) -> IpAddr {
    match fam {
        Family::V4 => "100.96.0.9".parse().expect("address"),
        Family::V6 => "fd00:96::9".parse().expect("address"),
    }
}

/// SYNs in one flood: twice FLOW_INGRESS (65,536 entries) and far beyond the listener's
/// queue (4,096).
const FLOOD_SYNS: &str = "140000";

/// The audited network of the flood test, and the policies auditing it. One source toward
/// one address and port can make at most 65,536 distinct flows; a network of audited
/// servers gives the flood as many as it wants.
fn audited_net(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "203.0.113.0/24",
        Family::V6 => "2001:db8:1::/120",
    }
}

fn audit_networks() -> serde_json::Value {
    json!({"policies": [{
        "id": "audit-lab-net",
        "name": "Audit the lab networks",
        "precedence": 10,
        "enabled": true,
        "action": "audit_ssh",
        "destinations": [audited_net(Family::V4), audited_net(Family::V6)],
        "ports": [22]
    }]})
}

/// The router's syncookie and listen-queue counters.
fn nstat(lab: &Lab) -> Result<String> {
    let out = lab.rtr.exec(
        "nstat",
        &[
            "-asz",
            "TcpExtSyncookiesSent",
            "TcpExtSyncookiesRecv",
            "TcpExtSyncookiesFailed",
            "TcpExtListenOverflows",
            "TcpExtListenDrops",
        ],
    )?;
    Ok(out.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Waits until the router holds an established (not yet accepted) connection from `src`.
fn wait_established(lab: &Lab, src: IpAddr) -> Result<()> {
    // ss wants IPv6 addresses in brackets.
    let src = match src {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    poll_until(
        "the handshake to complete in the router",
        LOG_TIMEOUT,
        POLL,
        || {
            let out = lab
                .rtr
                .exec("ss", &["-Htn", "state", "established", "dst", &src])?;
            Ok((!out.trim().is_empty()).then_some(()))
        },
    )
}

/// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the daemon, and waits until it is so.
fn freeze(gw: &Gateway<'_>, stop: bool) -> Result<()> {
    use nix::sys::signal::Signal;
    let proc = gw.proc().context("no daemon")?;
    proc.signal(if stop {
        Signal::SIGSTOP
    } else {
        Signal::SIGCONT
    })?;
    let stat = format!("/proc/{}/stat", proc.pid());
    poll_until(
        "the daemon's run state",
        LOG_TIMEOUT,
        Duration::from_millis(20),
        || {
            let text = std::fs::read_to_string(&stat)?;
            let state = text.rsplit(") ").next().and_then(|s| s.chars().next());
            Ok((matches!(state, Some('T')) == stop).then_some(()))
        },
    )
}

/// 7. Mallory floods port 22 of an audited network with SYNs from her enrolled address
///    while jdoe connects to one of its servers. First with the daemon frozen between jdoe's handshake and its
///    accept: the flood must not evict jdoe's FLOW_INGRESS entry (his device is pinned to
///    `r0`; without the entry he is refused as spoofed). Then twice more while the flood's
///    half-open connections fill the router: jdoe's SSH is still intercepted. The flood's
///    SYNs beyond the per-source budget are dropped, never passed.
fn syn_flood_does_not_starve_other_devices(lab: &Lab, fam: Family) -> Result<()> {
    let sshd = lab.start_sshd_for_gateway()?;
    let cfg = GatewayConfig::default()
        .devices(devices_with_mallory(fam))
        .policies(audit_networks());
    let mut gw = lab.gateway_with(cfg)?;
    gw.start()?;
    let src = mallory(fam).to_string();
    let flood = [
        "syn-flood",
        src.as_str(),
        audited_net(fam),
        "22",
        FLOOD_SYNS,
    ];

    freeze(&gw, true)?;
    let seen = std::thread::scope(|s| -> Result<IpAddr> {
        let jdoe = s.spawn(|| client_seen(lab, fam.enrolled(), fam.audited(), 120));
        let flooded = wait_established(lab, fam.enrolled()).and_then(|()| run_attack(lab, &flood));
        let resumed = freeze(&gw, false);
        let seen = jdoe
            .join()
            .map_err(|_| anyhow::anyhow!("the ssh thread panicked"))?;
        flooded?;
        resumed?;
        seen
    })
    .context("jdoe's SSH while mallory flooded a frozen daemon")?;
    ensure!(
        seen == fam.router_wan(),
        "jdoe's SSH was not intercepted: sshd saw {seen}"
    );

    for round in 1..=2 {
        run_attack(lab, &flood)?;
        expect_intercepted(lab, fam, &format!("jdoe after flood {round}"))?;
        eprintln!("after flood {round}: rtr {}", nstat(lab)?);
    }
    let c = gw.status()?.counters;
    eprintln!("counters: {c:?}");
    let sent = 3 * FLOOD_SYNS.parse::<u64>()?;
    ensure!(
        c.dropped_syn_budget > sent / 2,
        "most of the {sent} flood SYNs should be dropped by the budget: {c:?}"
    );
    ensure!(
        !gw.log().contains("spoofed"),
        "a device was refused as spoofed:\n{}",
        gw.log()
    );
    ensure!(
        !sshd
            .log()
            .contains(&format!("Connection from {} ", fam.enrolled())),
        "jdoe reached sshd directly"
    );
    Ok(())
}
family_tests!(syn_flood_does_not_starve_other_devices => syn_flood_does_not_starve_other_devices_v4, syn_flood_does_not_starve_other_devices_v6);
