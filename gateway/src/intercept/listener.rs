//! Transparent listeners that the TC program hands intercepted SYNs to.
//!
//! They are bound to loopback (nothing else can reach them by address) with
//! `IP_TRANSPARENT`/`IPV6_TRANSPARENT`, which lets the accepted sockets answer from the
//! audited server's address. `getsockname` on an accepted socket is the flow's original
//! destination (TPROXY semantics).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Listen backlog: large, so bursts of SYNs are queued instead of answered with cookies.
const BACKLOG: i32 = 4096;

pub struct Listeners {
    pub v4: TcpListener,
    /// None when the host has no IPv6 loopback; IPv6 audited SYNs are then dropped.
    pub v6: Option<TcpListener>,
}

fn transparent_listener(addr: SocketAddr) -> Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket
            .set_ip_transparent_v4(true)
            .context("IP_TRANSPARENT needs CAP_NET_ADMIN")?;
    } else {
        socket.set_only_v6(true)?;
        socket
            .set_ip_transparent_v6(true)
            .context("IPV6_TRANSPARENT needs CAP_NET_ADMIN")?;
    }
    socket.set_tcp_nodelay(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind transparent listener to {addr}"))?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into())?)
}

impl Listeners {
    pub fn bind(port: u16) -> Result<Self> {
        let v4 = transparent_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        let v6 = match transparent_listener(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no IPv6 listener: IPv6 audited SSH will be dropped");
                None
            }
        };
        Ok(Listeners { v4, v6 })
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(&self.v4)
            .chain(self.v6.as_ref())
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// An accepted intercepted connection.
pub struct Intercepted {
    pub stream: TcpStream,
    /// The device's address and port.
    pub peer: SocketAddr,
    /// Where the device was connecting to.
    pub original_dst: SocketAddr,
}

/// Accepts the next intercepted connection from `listener`.
///
/// A connection made to the listener's own loopback address did not come through the
/// datapath (a local process connected directly); it is refused so it cannot be relayed
/// back to ourselves.
pub async fn accept(listener: &TcpListener) -> std::io::Result<Option<Intercepted>> {
    let (stream, peer) = listener.accept().await?;
    let original_dst = stream.local_addr()?;
    if original_dst.ip().is_loopback() {
        tracing::warn!(%peer, "refusing a direct connection to the transparent listener");
        return Ok(None);
    }
    stream.set_nodelay(true)?;
    Ok(Some(Intercepted {
        stream,
        peer: normalize(peer),
        original_dst: normalize(original_dst),
    }))
}

/// IPv4-mapped IPv6 addresses cannot occur (listeners are V6ONLY), but normalise anyway.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}
