//! `sshgw doctor --server HOST[:PORT]`: from the router, does an audited server answer SSH
//! from sources other than the router's own address? If it does, a jump host, another route
//! or a device on another network can reach it without passing sshgw.
//!
//! It connects once from the address the router's routing picks for the server (which
//! must answer) and once from every other address of the router (its device-facing
//! addresses, for example), and reports each source that gets an SSH banner back.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Check;
use crate::cli::Refused;

const TIMEOUT: Duration = Duration::from_secs(3);

pub const LIMITS: &[&str] = &[
    "the server is tested only from the router's own addresses: a source elsewhere (another \
     network, a jump host) may still be accepted while every test here is refused",
    "a server that restricts logins inside sshd (AllowUsers user@ROUTER, Match Address) still \
     sends its banner to everyone, so it is reported as answering; a firewall rule that drops \
     other sources is the form this check can see",
    "only the given port is tested: sshd or other remote-login services on other ports are not",
];

/// Both checks for one `HOST[:PORT]`.
pub fn check(spec: &str) -> Result<Vec<Check>> {
    let target = resolve(spec)?;
    let router =
        route_source(target).with_context(|| format!("no route from this router to {target}"))?;
    match banner(router, target) {
        Ok(banner) => {
            let reach = Check::ok(
                "server reachable",
                format!("{target} answers {router} (the router's route source): {banner}"),
            );
            Ok(vec![reach, other_sources(target, router)])
        }
        Err(e) => Ok(vec![Check::fail(
            "server reachable",
            format!("{target} sends no SSH banner to the router's own address {router}: {e}"),
            "check that the server runs sshd on this port and that its firewall accepts the \
             router; without that the other sources cannot be judged",
        )]),
    }
}

/// `HOST[:PORT]` (port 22 by default; IPv6 literals as `[::1]:22` or bare).
fn resolve(spec: &str) -> Result<SocketAddr> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 22));
    }
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = match spec.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            p.parse()
                .map_err(|_| Refused(format!("--server {spec}: bad port {p:?}")))?,
        ),
        _ => (spec, 22),
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Refused(format!("--server {spec}: cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| Refused(format!("--server {spec}: {host} has no address")).into())
}

/// The source address the kernel picks toward `target` (a UDP connect sends nothing).
fn route_source(target: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let sock = UdpSocket::bind(any)?;
    sock.connect(target)?;
    Ok(sock.local_addr()?.ip())
}

/// Connects from `source` and returns the server's SSH identification line.
fn banner(source: IpAddr, target: SocketAddr) -> std::io::Result<String> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    sock.connect_timeout(&SockAddr::from(target), TIMEOUT)?;
    let mut stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while got.len() < buf.len() {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(line) = text.lines().find(|l| l.starts_with("SSH-")) {
            return Ok(line.trim_end().to_owned());
        }
    }
    Err(std::io::Error::other("the connection gave no SSH banner"))
}

/// The router's other addresses of the same family (not loopback or link-local).
fn other_addresses(router: IpAddr) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|i| {
                let a = i.address?;
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .collect()
        })
        .unwrap_or_default();
    addrs.retain(|a| {
        a.is_ipv4() == router.is_ipv4()
            && *a != router
            && !a.is_loopback()
            && !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
    });
    addrs.sort();
    addrs.dedup();
    addrs
}

fn other_sources(target: SocketAddr, router: IpAddr) -> Check {
    const NAME: &str = "other sources";
    let sources = other_addresses(router);
    if sources.is_empty() {
        return Check::skip(
            NAME,
            format!("the router has no other address to test {target} from"),
        );
    }
    let mut answered = Vec::new();
    let mut refused = Vec::new();
    for src in sources {
        match banner(src, target) {
            Ok(b) => answered.push(format!("{src} ({b})")),
            Err(e) => refused.push(format!("{src} ({e})")),
        }
    }
    if answered.is_empty() {
        Check::ok(
            NAME,
            format!("{target} does not answer SSH from {}", refused.join(", ")),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "{target} answers SSH from {}: sources other than the router reach it unaudited",
                answered.join(", ")
            ),
            format!(
                "on the server, accept port {} only from the router ({router}), e.g. nftables:\n  \
                 tcp dport {} ip{} saddr != {router} drop\n(docs/deployment.md#servers)",
                target.port(),
                target.port(),
                if router.is_ipv6() { "6" } else { "" }
            ),
        )
    }
}
