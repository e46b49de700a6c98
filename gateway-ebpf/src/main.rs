//! sshgw TC-ingress classifier.
//!
//! For TCP to an intercepted port from an ENROLLED source to an AUDITED destination it sets
//! the intercept mark on every packet (policy routing then delivers the packet locally) and
//! hands the flow's SYN to the transparent listener taken from the SOCKMAP. Everything else
//! returns `TC_ACT_PIPE` untouched. With no listener in the SOCKMAP (daemon down) matching
//! SYNs are dropped: an audited server is never reachable unaudited.
//!
//! Around that it closes the side doors toward audited destinations: tunnel protocols and
//! encapsulation UDP ports are dropped (they could carry SSH past the program), each source
//! gets a SYN budget (one device cannot flood the listener or the FLOW_INGRESS table for the
//! others), and a handshake ACK that answers one of the listener's SYN cookies goes to the
//! listener instead of to the real server.
//!
//! The object holds three entry points that differ only in how they read headers (see
//! `gateway_common::programs`): in place behind a known link-layer header (Ethernet or none)
//! with a fallback to `bpf_skb_load_bytes_relative`, or with that helper alone.
#![no_std]
#![no_main]

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, BPF_TCP_TIME_WAIT, TC_ACT_OK, TC_ACT_PIPE,
        TC_ACT_SHOT, bpf_hdr_start_off::BPF_HDR_START_NET, bpf_sock, bpf_sock_tuple,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release,
        bpf_skb_load_bytes_relative, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockMap, lpm_trie::Key},
    programs::TcContext,
};
use gateway_common::{
    Counter, FlowKey, Ipv4Bytes, Ipv6Bytes, LISTENER_V4, LISTENER_V6, MAX_AUDITED, MAX_ENROLLED,
    MAX_FLOWS, MAX_SYN_SOURCES, PORT_SETS, PORTS_INTERCEPT, PORTS_TUNNEL_UDP, PortSet, Settings,
    SourceKey, settings,
};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Mark bit that the fwmark rule routes into the local table. Set at load time.
#[unsafe(no_mangle)]
static INTERCEPT_MARK: Global<u32> = Global::new(0x100);

#[map]
static ENROLLED_V4: HashMap<Ipv4Bytes, u8> = HashMap::pinned(MAX_ENROLLED, 0);
#[map]
static ENROLLED_V6: HashMap<Ipv6Bytes, u8> = HashMap::pinned(MAX_ENROLLED, 0);
#[map]
static AUDITED_V4: LpmTrie<Ipv4Bytes, u8> = LpmTrie::pinned(MAX_AUDITED, 0);
#[map]
static AUDITED_V6: LpmTrie<Ipv6Bytes, u8> = LpmTrie::pinned(MAX_AUDITED, 0);
#[map]
static PORTS: Array<PortSet> = Array::pinned(PORT_SETS, 0);
#[map]
static LISTENER: SockMap = SockMap::pinned(2, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);
#[map]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);
#[map]
static FLOW_INGRESS: LruHashMap<FlowKey, u32> = LruHashMap::pinned(MAX_FLOWS, 0);
#[map]
static SYN_BUDGET: LruHashMap<SourceKey, u64> = LruHashMap::pinned(MAX_SYN_SOURCES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_ETHERIP: u8 = 97;
const IPPROTO_L2TP: u8 = 115;
const IPPROTO_MPLS: u8 = 137;
const IPV6_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_AH: u8 = 51;
/// Extension headers we walk; a longer chain toward an audited server is dropped.
const IPV6_MAX_EXT: usize = 8;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: Ipv4Bytes,
    daddr: Ipv4Bytes,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: Ipv6Bytes,
    daddr: Ipv6Bytes,
}

/// The fixed 20 bytes of the TCP header (options follow). `bpf_tcp_check_syncookie` takes
/// a copy of it.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHead {
    sport: u16,
    dport: u16,
    seq: u32,
    ack_seq: u32,
    doff: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

/// What the parser extracted from a packet that may need steering.
struct Flow {
    tuple: bpf_sock_tuple,
    key: FlowKey,
    v6: bool,
    tcp: TcpHead,
}

/// Who judges a packet to an intercepted port.
enum Source {
    /// A new flow (pure SYN) from an enrolled source to an audited destination.
    Enrolled,
    /// A new flow from a source that is not enrolled, to an audited destination.
    Unenrolled,
    /// Not a new flow: whether it is ours is decided by its local socket alone, whatever
    /// the sets say now. A push that drops a destination or device must not strand the
    /// flows it already admitted (their packets would be forwarded to a server that
    /// never heard of them, which then resets them).
    Established,
}

/// What parsing made of a packet.
enum Parsed {
    /// Not TCP to an intercepted port of an audited destination: pass it untouched.
    NotOurs,
    Flow(Flow, Source),
    /// Toward an audited destination, but its TCP header cannot be trusted (a first
    /// fragment, or an IPv6 header chain we cannot walk). Passing it could let a SYN reach
    /// the server unseen, so it is dropped.
    Evasive,
    /// A tunnel protocol or an encapsulation UDP port toward an audited destination: what
    /// it carries is never seen by this program. Dropped unless tunnels are allowed.
    Tunnel(Counter),
    /// Read in place, the headers were not all in the linear part of the skb (or did not
    /// look like the link type promised): parse again with `bpf_skb_load_bytes_relative`.
    Retry,
}

/// Any device: headers are read relative to the network header by a helper.
#[classifier]
pub fn sshgw_ingress(ctx: TcContext) -> i32 {
    run(&ctx, None)
}

/// Ethernet devices: headers are read in place behind the 14-byte Ethernet header.
#[classifier]
pub fn sshgw_ingress_eth(ctx: TcContext) -> i32 {
    run(&ctx, Some(ETH_HLEN))
}

/// Devices without a link-layer header (WireGuard, tun): headers are read in place.
#[classifier]
pub fn sshgw_ingress_l3(ctx: TcContext) -> i32 {
    run(&ctx, Some(0))
}

#[inline(always)]
fn run(ctx: &TcContext, l2_len: Option<usize>) -> i32 {
    let (counter, action) = match steer(ctx, l2_len) {
        Verdict::Pass(counter) => (counter, TC_ACT_PIPE),
        Verdict::Intercept(counter) => (counter, TC_ACT_OK),
        Verdict::Drop(counter) => (counter, TC_ACT_SHOT),
    };
    count(counter);
    action
}

/// What happens to a packet, and the counter that says why.
enum Verdict {
    /// On unchanged (`TC_ACT_PIPE`).
    Pass(Counter),
    /// Marked and assigned to a local socket (`TC_ACT_OK`).
    Intercept(Counter),
    Drop(Counter),
}

const PASS: Verdict = Verdict::Pass(Counter::Passed);

/// Slot 0 of SETTINGS.
#[inline(always)]
fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

#[inline(always)]
fn flag(bit: u32) -> bool {
    settings().is_some_and(|s| s.flags & bit != 0)
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *slot += 1 };
    }
}

/// Where the parser reads headers from. Offsets count from the start of the IP header.
trait Packet {
    /// A failed read means "not in the linear area, ask the helper" (`Parsed::Retry`)
    /// rather than "the packet is too short".
    const DIRECT: bool;
    fn load<T: Copy>(&self, offset: u32) -> Option<T>;
    /// Whether the IP header's length (`l3_len` bytes including the IP header) agrees with
    /// the skb; a mismatch means the IP header is not where it was assumed to be.
    fn l3_len_ok(&self, l3_len: u32) -> bool;
}

/// Reads relative to the network header with `bpf_skb_load_bytes_relative`, whatever the
/// L2 header of the device; sees non-linear data too.
struct Relative<'a>(&'a TcContext);

impl Packet for Relative<'_> {
    const DIRECT: bool = false;

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        let ret = unsafe {
            bpf_skb_load_bytes_relative(
                self.0.as_ptr(),
                offset,
                value.as_mut_ptr().cast::<c_void>(),
                size_of::<T>() as u32,
                BPF_HDR_START_NET,
            )
        };
        if ret == 0 {
            Some(unsafe { value.assume_init() })
        } else {
            None
        }
    }

    #[inline(always)]
    fn l3_len_ok(&self, _l3_len: u32) -> bool {
        true
    }
}

/// Direct packet access to the linear part of the skb, with the IP header at `start`.
struct Direct {
    start: usize,
    end: usize,
    /// For L3 devices, the skb length the IP header must account for exactly (no L2
    /// header, no padding); 0: not checked.
    skb_len: u32,
}

impl Packet for Direct {
    const DIRECT: bool = true;

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        let ptr = self.start + offset as usize;
        if ptr + size_of::<T>() > self.end {
            return None;
        }
        Some(unsafe { core::ptr::read_unaligned(ptr as *const T) })
    }

    #[inline(always)]
    fn l3_len_ok(&self, l3_len: u32) -> bool {
        self.skb_len == 0 || self.skb_len == l3_len
    }
}

/// A failed read: with direct access the header may just lie outside the linear area, so
/// the packet is parsed again by the helper; otherwise the packet is too short and
/// `short` says what that means.
#[inline(always)]
fn missing<P: Packet>(short: impl FnOnce() -> Parsed) -> Parsed {
    if P::DIRECT { Parsed::Retry } else { short() }
}

#[inline(always)]
fn parse<P: Packet>(protocol: u16, pkt: &P, ports: &PortSet) -> Parsed {
    match protocol {
        ETH_P_IP => parse_v4(pkt, ports),
        ETH_P_IPV6 => parse_v6(pkt, ports),
        _ => Parsed::NotOurs,
    }
}

/// Protocols that carry other packets. Toward an audited destination that decapsulates
/// them, an inner SYN to port 22 would never be seen here.
#[inline(always)]
fn tunnel_reason(protocol: u8) -> Option<Counter> {
    match protocol {
        IPPROTO_IPIP | IPPROTO_IPV6 => Some(Counter::DroppedTunnelIpip),
        IPPROTO_GRE => Some(Counter::DroppedTunnelGre),
        // AH is only ever seen here for IPv4: the IPv6 parser walks it like an extension.
        IPPROTO_ESP | IPV6_AH => Some(Counter::DroppedTunnelIpsec),
        IPPROTO_ETHERIP | IPPROTO_L2TP | IPPROTO_MPLS => Some(Counter::DroppedTunnelOther),
        _ => None,
    }
}

/// `Evasive` when the packet is `suspect` and goes to an audited destination, else
/// `NotOurs`.
#[inline(always)]
fn evasive_if(suspect: bool, audited: impl Fn() -> bool) -> Parsed {
    if suspect && audited() {
        Parsed::Evasive
    } else {
        Parsed::NotOurs
    }
}

/// A protocol other than TCP and UDP: a tunnel if it is one and goes to an audited server.
#[inline(always)]
fn parse_other(protocol: u8, audited: impl Fn() -> bool) -> Parsed {
    match tunnel_reason(protocol) {
        Some(reason) if audited() => Parsed::Tunnel(reason),
        _ => Parsed::NotOurs,
    }
}

/// UDP at `offset`: a tunnel if its destination port is an encapsulation port of an audited
/// server.
#[inline(always)]
fn parse_udp<P: Packet>(
    pkt: &P,
    offset: u32,
    fragmented: bool,
    audited: impl Fn() -> bool,
) -> Parsed {
    let Some(udp) = pkt.load::<[u16; 2]>(offset) else {
        return missing::<P>(|| evasive_if(fragmented, &audited));
    };
    // The destination port as read from the packet: a bit test, no helper call.
    let tunnel_port = PORTS
        .get(PORTS_TUNNEL_UDP)
        .is_some_and(|ports| ports.contains_wire(udp[1]));
    if tunnel_port && audited() {
        Parsed::Tunnel(Counter::DroppedTunnelUdp)
    } else {
        Parsed::NotOurs
    }
}

#[inline(always)]
fn steer(ctx: &TcContext, l2_len: Option<usize>) -> Verdict {
    // Network byte order, as on the wire.
    let protocol_wire = unsafe { (*ctx.skb.skb).protocol } as u16;
    let protocol = u16::from_be(protocol_wire);
    // Looked up before any header is read: the lookup is a call to LLVM, and the parser
    // would otherwise keep the header fields it read across it. No ports: nothing to do.
    let Some(ports) = PORTS.get(PORTS_INTERCEPT) else {
        return PASS;
    };
    let mut parsed = Parsed::Retry;
    if let Some(l2_len) = l2_len {
        let data = ctx.data();
        let end = ctx.data_end();
        // Behind an Ethernet header its EtherType must be the skb's protocol; at offset 0
        // the IP length must be the skb's. Anything else goes to the helper.
        let in_place = if l2_len == ETH_HLEN {
            data + ETH_HLEN <= end
                && unsafe { core::ptr::read_unaligned((data + 12) as *const u16) } == protocol_wire
        } else {
            true
        };
        if in_place {
            let pkt = Direct {
                start: data + l2_len,
                end,
                skb_len: if l2_len == 0 { ctx.len() } else { 0 },
            };
            parsed = parse(protocol, &pkt, ports);
        }
    }
    if let Parsed::Retry = parsed {
        parsed = parse(protocol, &Relative(ctx), ports);
    }
    match parsed {
        Parsed::Flow(flow, Source::Enrolled | Source::Established) => steer_flow(ctx, flow),
        Parsed::Flow(_, Source::Unenrolled) => {
            if flag(settings::UNENROLLED_DROP) {
                Verdict::Drop(Counter::DroppedUnenrolled)
            } else {
                PASS
            }
        }
        Parsed::Tunnel(reason) => {
            if flag(settings::TUNNELS_DROP) {
                Verdict::Drop(reason)
            } else {
                PASS
            }
        }
        Parsed::Evasive => Verdict::Drop(Counter::DroppedEvasive),
        // Only the direct reader retries, and the helper's result replaced it above.
        Parsed::NotOurs | Parsed::Retry => PASS,
    }
}

#[inline(always)]
fn parse_v4<P: Packet>(pkt: &P, ports: &PortSet) -> Parsed {
    let Some(ip) = pkt.load::<Ipv4Hdr>(0) else {
        return missing::<P>(|| Parsed::NotOurs);
    };
    let ihl = u32::from(ip.ver_ihl & 0x0f) * 4;
    if ip.ver_ihl >> 4 != 4 || !pkt.l3_len_ok(u32::from(u16::from_be(ip.tot_len))) {
        return missing::<P>(|| Parsed::NotOurs);
    }
    if ihl < 20 {
        return Parsed::NotOurs;
    }
    let frag = u16::from_be(ip.frag_off);
    // Later fragments carry no L4 header; without their first fragment they are inert.
    if frag & 0x1fff != 0 {
        return Parsed::NotOurs;
    }
    let fragmented = frag & 0x2000 != 0;
    let audited = || AUDITED_V4.get(Key::new(32, ip.daddr)).is_some();
    match ip.protocol {
        IPPROTO_TCP => {}
        IPPROTO_UDP => return parse_udp(pkt, ihl, fragmented, audited),
        protocol => return parse_other(protocol, audited),
    }
    let Some(tcp) = pkt.load::<TcpHead>(ihl) else {
        // Too short to hold the TCP header: only a (tiny) first fragment can do that.
        return missing::<P>(|| evasive_if(fragmented, &audited));
    };
    // `dport` as read from the packet: a bit test, no helper call.
    if !ports.contains_wire(tcp.dport) {
        return Parsed::NotOurs;
    }
    let source = match judge(tcp.flags, fragmented, audited, || {
        unsafe { ENROLLED_V4.get(ip.saddr) }.is_some()
    }) {
        Ok(source) => source,
        Err(parsed) => return parsed,
    };

    let mut key = FlowKey {
        family: 4,
        sport: tcp.sport,
        dport: tcp.dport,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    key.saddr[..4].copy_from_slice(&ip.saddr);
    key.daddr[..4].copy_from_slice(&ip.daddr);
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.saddr = u32::from_ne_bytes(ip.saddr);
        t.daddr = u32::from_ne_bytes(ip.daddr);
        t.sport = tcp.sport;
        t.dport = tcp.dport;
    }
    Parsed::Flow(
        Flow {
            tuple,
            key,
            v6: false,
            tcp,
        },
        source,
    )
}

/// IPv6 extension headers the parser walks.
#[inline(always)]
fn is_extension(nexthdr: u8) -> bool {
    matches!(
        nexthdr,
        IPV6_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DSTOPTS | IPV6_AH
    )
}

/// Walks the IPv6 extension headers after the fixed header: the upper-layer protocol, its
/// offset and whether the packet is a first fragment (`Err`: the verdict is already clear).
#[inline(always)]
fn walk_extensions<P: Packet>(
    pkt: &P,
    first: u8,
    audited: &impl Fn() -> bool,
) -> Result<(u8, u32, bool), Parsed> {
    let mut nexthdr = first;
    let mut offset: u32 = 40;
    let mut fragmented = false;
    for _ in 0..IPV6_MAX_EXT {
        let Some(ext) = pkt.load::<[u8; 4]>(offset) else {
            return Err(missing::<P>(|| evasive_if(true, audited)));
        };
        match nexthdr {
            IPV6_HOP | IPV6_ROUTING | IPV6_DSTOPTS => {
                nexthdr = ext[0];
                offset += (u32::from(ext[1]) + 1) * 8;
            }
            IPV6_AH => {
                nexthdr = ext[0];
                offset += (u32::from(ext[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let frag = u16::from_be_bytes([ext[2], ext[3]]);
                // Later fragments carry no L4 header.
                if frag & 0xfff8 != 0 {
                    return Err(Parsed::NotOurs);
                }
                // The M flag; an "atomic fragment" (M clear, offset 0) is whole.
                fragmented |= frag & 1 != 0;
                nexthdr = ext[0];
                offset += 8;
            }
            // The upper-layer header (TCP, UDP, a tunnel, ICMPv6, ...).
            _ => break,
        }
    }
    // A chain longer than we walk could hide TCP or a tunnel: fail closed for audited
    // servers.
    if is_extension(nexthdr) {
        return Err(evasive_if(true, audited));
    }
    Ok((nexthdr, offset, fragmented))
}

#[inline(always)]
fn parse_v6<P: Packet>(pkt: &P, ports: &PortSet) -> Parsed {
    let Some(ip) = pkt.load::<Ipv6Hdr>(0) else {
        return missing::<P>(|| Parsed::NotOurs);
    };
    if u32::from_be(ip.ver_tc_flow) >> 28 != 6
        || !pkt.l3_len_ok(40 + u32::from(u16::from_be(ip.payload_len)))
    {
        return missing::<P>(|| Parsed::NotOurs);
    }
    let audited = || AUDITED_V6.get(Key::new(128, ip.daddr)).is_some();
    let (nexthdr, offset, fragmented) = match walk_extensions(pkt, ip.nexthdr, &audited) {
        Ok(upper) => upper,
        Err(parsed) => return parsed,
    };
    match nexthdr {
        IPPROTO_TCP => {}
        IPPROTO_UDP => return parse_udp(pkt, offset, fragmented, audited),
        protocol => return parse_other(protocol, audited),
    }
    let Some(tcp) = pkt.load::<TcpHead>(offset) else {
        return missing::<P>(|| evasive_if(fragmented, &audited));
    };
    // `dport` as read from the packet: a bit test, no helper call.
    if !ports.contains_wire(tcp.dport) {
        return Parsed::NotOurs;
    }
    let source = match judge(tcp.flags, fragmented, audited, || {
        unsafe { ENROLLED_V6.get(ip.saddr) }.is_some()
    }) {
        Ok(source) => source,
        Err(parsed) => return parsed,
    };

    let key = FlowKey {
        family: 6,
        sport: tcp.sport,
        dport: tcp.dport,
        saddr: ip.saddr,
        daddr: ip.daddr,
    };
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv6;
        t.saddr = core::mem::transmute::<Ipv6Bytes, [u32; 4]>(ip.saddr);
        t.daddr = core::mem::transmute::<Ipv6Bytes, [u32; 4]>(ip.daddr);
        t.sport = tcp.sport;
        t.dport = tcp.dport;
    }
    Parsed::Flow(
        Flow {
            tuple,
            key,
            v6: true,
            tcp,
        },
        source,
    )
}

#[inline(always)]
fn mark(ctx: &TcContext) {
    let old = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark(old | INTERCEPT_MARK.load());
}

/// Who judges a TCP packet to an intercepted port (`Err`: the verdict is already clear).
/// Only a new flow's SYN consults the sets; later packets belong to whoever owns the
/// flow's socket.
#[inline(always)]
fn judge(
    flags: u8,
    fragmented: bool,
    audited: impl Fn() -> bool,
    enrolled: impl Fn() -> bool,
) -> Result<Source, Parsed> {
    if fragmented {
        // A later, overlapping fragment could turn this into a SYN the server sees and
        // we never did. SSH never needs fragments (TCP sets DF).
        return Err(evasive_if(true, audited));
    }
    if !is_pure_syn(flags) {
        Ok(Source::Established)
    } else if !audited() {
        Err(Parsed::NotOurs)
    } else if enrolled() {
        Ok(Source::Enrolled)
    } else {
        Ok(Source::Unenrolled)
    }
}

/// A connection request: SYN without ACK.
#[inline(always)]
fn is_pure_syn(flags: u8) -> bool {
    flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
}

#[inline(always)]
fn steer_flow(ctx: &TcContext, mut flow: Flow) -> Verdict {
    let pure_syn = is_pure_syn(flow.tcp.flags);

    // An existing local socket for this 4-tuple means the flow is already ours.
    // The tuple length must be a constant for the verifier.
    let sk = unsafe {
        if flow.v6 {
            bpf_skc_lookup_tcp(
                ctx.as_ptr(),
                &mut flow.tuple,
                size_of::<[u32; 9]>() as u32,
                BPF_F_CURRENT_NETNS as u64,
                0,
            )
        } else {
            bpf_skc_lookup_tcp(
                ctx.as_ptr(),
                &mut flow.tuple,
                size_of::<[u32; 3]>() as u32,
                BPF_F_CURRENT_NETNS as u64,
                0,
            )
        }
    };
    if !sk.is_null() {
        let state = unsafe { (*sk).state };
        // A LISTEN socket (for example the router's own sshd on the wildcard address) is
        // not ours; a TIME_WAIT socket hit by a new SYN must start a new flow.
        let reuse = state != BPF_TCP_LISTEN && !(state == BPF_TCP_TIME_WAIT && pure_syn);
        if reuse {
            return assign(ctx, sk.cast(), Counter::InterceptedPacket);
        }
        unsafe { bpf_sk_release(sk.cast()) };
    }

    if !pure_syn {
        // No local socket and not a new flow: it answers one of the listener's SYN cookies,
        // or it belongs to a flow the listener took whose socket is gone (dropped: the real
        // server must never see the device's own address), or it predates interception and
        // is forwarded as before.
        if let Some(verdict) = cookie_ack(ctx, &flow) {
            return verdict;
        }
        if unsafe { FLOW_INGRESS.get(&flow.key) }.is_some() {
            return Verdict::Drop(Counter::DroppedStray);
        }
        return Verdict::Pass(Counter::PassedPreexisting);
    }
    if !within_syn_budget(&flow.key) {
        // Dropped, never passed: the device's TCP retries once its budget refills.
        return Verdict::Drop(Counter::DroppedSynBudget);
    }
    let Some(listener) = listener(flow.v6) else {
        // Fail closed: the daemon is down, so nobody can audit this flow.
        return Verdict::Drop(Counter::DroppedListenerDown);
    };
    let verdict = assign(ctx, listener, Counter::InterceptedSyn);
    if let Verdict::Intercept(_) = verdict {
        // Userspace attributes the flow only if it arrived where its device is expected.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let _ = FLOW_INGRESS.insert(&flow.key, &ifindex, 0);
    }
    verdict
}

/// Hands the packet to `sk` (a reference this function releases) and marks it.
#[inline(always)]
fn assign(ctx: &TcContext, sk: *mut bpf_sock, counter: Counter) -> Verdict {
    let ret = unsafe { bpf_sk_assign(ctx.as_ptr(), sk.cast(), 0) };
    unsafe { bpf_sk_release(sk.cast()) };
    if ret != 0 {
        return Verdict::Drop(Counter::DroppedAssignFailed);
    }
    mark(ctx);
    Verdict::Intercept(counter)
}

/// The transparent listener of the family, if the daemon has one listening (a reference
/// the caller releases).
#[inline(always)]
fn listener(v6: bool) -> Option<*mut bpf_sock> {
    let slot = if v6 { LISTENER_V6 } else { LISTENER_V4 };
    let listener = unsafe {
        bpf_map_lookup_elem(
            core::ptr::from_ref(&LISTENER).cast_mut().cast::<c_void>(),
            core::ptr::from_ref(&slot).cast::<c_void>(),
        )
    }
    .cast::<bpf_sock>();
    if listener.is_null() {
        return None;
    }
    if unsafe { (*listener).state } != BPF_TCP_LISTEN {
        unsafe { bpf_sk_release(listener.cast()) };
        return None;
    }
    Some(listener)
}

/// Whether `key`'s source may start another audited flow now (see `Settings`), and if so,
/// charges it. Only enrolled sources get here, so one device's flood neither fills the
/// listener's queue nor evicts the others' FLOW_INGRESS entries.
#[inline(always)]
fn within_syn_budget(key: &FlowKey) -> bool {
    let Some(s) = settings() else {
        return true;
    };
    let (interval, tolerance) = (s.syn_interval_ns, s.syn_tolerance_ns);
    if interval == 0 {
        return true;
    }
    let source = SourceKey {
        family: key.family,
        addr: key.saddr,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    match SYN_BUDGET.get_ptr_mut(&source) {
        Some(due) => {
            // Racing CPUs may each admit a SYN on the same value: a budget, not a hard cap.
            let due_at = unsafe { *due };
            let due_at = if due_at > now { due_at } else { now };
            if due_at - now > tolerance {
                return false;
            }
            unsafe { *due = due_at + interval };
            true
        }
        None => {
            let _ = SYN_BUDGET.insert(&source, now + interval, 0);
            true
        }
    }
}

/// A handshake ACK without a socket, to an audited destination, that carries a valid SYN
/// cookie of our listener: the listener answered the SYN with a cookie (its queue
/// overflowed, or `tcp_syncookies = 2`) and must get the ACK to create the connection.
/// Forwarded, it would reach the real server, which resets it. `None`: not such an ACK.
#[inline(always)]
fn cookie_ack(ctx: &TcContext, flow: &Flow) -> Option<Verdict> {
    let flags = flow.tcp.flags;
    if flags & TCP_FLAG_ACK == 0 || flags & (TCP_FLAG_SYN | TCP_FLAG_RST) != 0 {
        return None;
    }
    let audited = if flow.v6 {
        AUDITED_V6.get(Key::new(128, flow.key.daddr)).is_some()
    } else {
        let mut daddr: Ipv4Bytes = [0; 4];
        daddr.copy_from_slice(&flow.key.daddr[..4]);
        AUDITED_V4.get(Key::new(32, daddr)).is_some()
    };
    if !audited {
        return None;
    }
    let listener = listener(flow.v6)?;
    let mut th = flow.tcp;
    let th_ptr = core::ptr::from_mut(&mut th).cast();
    let th_len = size_of::<TcpHead>() as u32;
    // The cookie check reads only the version and the addresses of the IP header.
    let ret = if flow.v6 {
        let mut ip = Ipv6Hdr {
            ver_tc_flow: (6u32 << 28).to_be(),
            payload_len: 0,
            nexthdr: IPPROTO_TCP,
            hop_limit: 0,
            saddr: flow.key.saddr,
            daddr: flow.key.daddr,
        };
        let ip_ptr = core::ptr::from_mut(&mut ip).cast();
        let ip_len = size_of::<Ipv6Hdr>() as u32;
        unsafe { bpf_tcp_check_syncookie(listener.cast(), ip_ptr, ip_len, th_ptr, th_len) }
    } else {
        let mut ip = Ipv4Hdr {
            ver_ihl: 0x45,
            tos: 0,
            tot_len: 0,
            id: 0,
            frag_off: 0,
            ttl: 0,
            protocol: IPPROTO_TCP,
            check: 0,
            saddr: [0; 4],
            daddr: [0; 4],
        };
        ip.saddr.copy_from_slice(&flow.key.saddr[..4]);
        ip.daddr.copy_from_slice(&flow.key.daddr[..4]);
        let ip_ptr = core::ptr::from_mut(&mut ip).cast();
        let ip_len = size_of::<Ipv4Hdr>() as u32;
        unsafe { bpf_tcp_check_syncookie(listener.cast(), ip_ptr, ip_len, th_ptr, th_len) }
    };
    if ret != 0 {
        unsafe { bpf_sk_release(listener.cast()) };
        return None;
    }
    Some(assign(ctx, listener, Counter::InterceptedSyncookieAck))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
