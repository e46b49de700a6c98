//! The contract between the sshgw TC program and the daemon: map names, key layouts,
//! listener slots and counter indices. Both sides compile this crate, so a change here
//! changes both at once.
#![no_std]

/// Map names, as declared by the eBPF program and opened by the daemon.
pub mod maps {
    /// Enrolled device addresses (IPv4), key: address bytes as they appear on the wire.
    pub const ENROLLED_V4: &str = "ENROLLED_V4";
    /// Enrolled device addresses (IPv6), key: the 16 address bytes.
    pub const ENROLLED_V6: &str = "ENROLLED_V6";
    /// Audited destinations (IPv4 LPM trie), key: prefix length + address bytes.
    pub const AUDITED_V4: &str = "AUDITED_V4";
    /// Audited destinations (IPv6 LPM trie).
    pub const AUDITED_V6: &str = "AUDITED_V6";
    /// Port sets, an array of [`super::PortSet`]: intercepted TCP destination ports at
    /// [`super::PORTS_INTERCEPT`], encapsulation UDP ports at [`super::PORTS_TUNNEL_UDP`].
    pub const PORTS: &str = "PORTS";
    /// The transparent listeners, indexed by [`super::LISTENER_V4`]/[`super::LISTENER_V6`].
    pub const LISTENER: &str = "LISTENER";
    /// Per-CPU counters, indexed by [`super::Counter`].
    pub const STATS: &str = "STATS";
    /// Runtime switches: one [`super::Settings`] at index 0.
    pub const SETTINGS: &str = "SETTINGS";
    /// Ingress interface of each intercepted SYN, keyed by [`super::FlowKey`] (LRU). It
    /// also marks the flow as sshgw's: a later packet of it with no local socket is dropped.
    pub const FLOW_INGRESS: &str = "FLOW_INGRESS";
    /// Per-source SYN budget: the theoretical arrival time (ns) of the next SYN a source may
    /// send, keyed by [`super::SourceKey`] (LRU; GCRA, see [`super::Settings`]).
    pub const SYN_BUDGET: &str = "SYN_BUDGET";
}

/// Bits of [`Settings::flags`].
pub mod settings {
    /// SSH from a source that is not enrolled to an audited destination is dropped.
    pub const UNENROLLED_DROP: u32 = 1;
    /// Tunnel protocols and encapsulation UDP ports toward audited destinations are dropped.
    pub const TUNNELS_DROP: u32 = 2;
}

/// The runtime switches, the single value of the SETTINGS array.
///
/// The SYN budget is a generic cell rate algorithm per enrolled source address: a source
/// may send a new audited SYN when the time it is due (kept in SYN_BUDGET) is at most
/// `syn_tolerance_ns` ahead of now; each admitted SYN moves it `syn_interval_ns` further.
/// That allows a burst of `tolerance / interval + 1` SYNs and then one per interval.
/// `syn_interval_ns == 0` turns the budget off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    pub flags: u32,
    pub _reserved: u32,
    pub syn_interval_ns: u64,
    pub syn_tolerance_ns: u64,
}

#[cfg(feature = "user")]
#[allow(unsafe_code)] // reason: aya::Pod is an unsafe trait; the type is repr(C) plain data
unsafe impl aya::Pod for Settings {}

/// A source address, the key of SYN_BUDGET. IPv4 addresses use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceKey {
    /// 4 or 6.
    pub family: u32,
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
#[allow(unsafe_code)] // reason: aya::Pod is an unsafe trait; the type is repr(C) plain data
unsafe impl aya::Pod for SourceKey {}

/// SYN_BUDGET entries. An idle source that is evicted only gets a full budget again, and
/// only enrolled sources are ever inserted.
pub const MAX_SYN_SOURCES: u32 = 65_536;

/// Index in PORTS of the intercepted TCP destination ports.
pub const PORTS_INTERCEPT: u32 = 0;
/// Index in PORTS of the UDP destination ports that carry encapsulated traffic (VXLAN,
/// Geneve, ...), dropped toward audited destinations when tunnels are dropped.
pub const PORTS_TUNNEL_UDP: u32 = 1;
pub const PORT_SETS: u32 = 2;

/// A flow as the TC program saw its SYN: the key of FLOW_INGRESS. Addresses and ports are
/// in network byte order; IPv4 addresses use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// 4 or 6.
    pub family: u32,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[cfg(feature = "user")]
#[allow(unsafe_code)] // reason: aya::Pod is an unsafe trait; the type is repr(C) plain data
unsafe impl aya::Pod for FlowKey {}

pub const MAX_FLOWS: u32 = 65_536;

/// The TC classifier functions in the object. All three steer alike and differ only in how
/// they find the IP header; the daemon picks one per interface from its link type.
pub mod programs {
    /// Any device: reads headers with `bpf_skb_load_bytes_relative` from the network header.
    pub const GENERIC: &str = "sshgw_ingress";
    /// Ethernet devices (`ARPHRD_ETHER`, e.g. veth): reads headers in place behind a 14-byte
    /// Ethernet header.
    pub const ETHERNET: &str = "sshgw_ingress_eth";
    /// L3 devices without a link-layer header (`ARPHRD_NONE`: WireGuard, tun): reads
    /// headers in place at offset 0.
    pub const L3: &str = "sshgw_ingress_l3";
    pub const ALL: [&str; 3] = [GENERIC, ETHERNET, L3];
}

/// The set of intercepted TCP ports as a bitmap, the single value of the PORTS array (the
/// program tests a bit inline, without a hash lookup). A port's bit is indexed by its two
/// bytes as they are on the wire, read as a native `u16`, so the program need not swap
/// them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub words: [u64; 1024],
}

#[cfg(feature = "user")]
#[allow(unsafe_code)] // reason: aya::Pod is an unsafe trait; the type is repr(C) plain data
unsafe impl aya::Pod for PortSet {}

impl PortSet {
    pub const EMPTY: PortSet = PortSet { words: [0; 1024] };

    /// Word index and bit of a port given as read from the packet (network byte order).
    #[inline(always)]
    pub const fn slot(wire: u16) -> (usize, u64) {
        ((wire >> 6) as usize, 1 << (wire & 63))
    }

    /// The wire form of a port in host byte order.
    pub const fn wire(port: u16) -> u16 {
        u16::from_ne_bytes(port.to_be_bytes())
    }

    pub fn insert(&mut self, port: u16) {
        let (word, bit) = Self::slot(Self::wire(port));
        self.words[word] |= bit;
    }

    /// Whether the port, as read from the packet, is in the set.
    #[inline(always)]
    pub fn contains_wire(&self, wire: u16) -> bool {
        let (word, bit) = Self::slot(wire);
        self.words[word] & bit != 0
    }

    pub fn contains(&self, port: u16) -> bool {
        self.contains_wire(Self::wire(port))
    }
}

/// Load-time global holding the skb mark bit that routes intercepted packets locally.
pub const INTERCEPT_MARK_GLOBAL: &str = "INTERCEPT_MARK";

/// SOCKMAP slot of the IPv4 transparent listener.
pub const LISTENER_V4: u32 = 0;
/// SOCKMAP slot of the IPv6 transparent listener.
pub const LISTENER_V6: u32 = 1;

pub const MAX_ENROLLED: u32 = 65_536;
pub const MAX_AUDITED: u32 = 16_384;
pub const MAX_PORTS: u32 = 64;

/// Datapath counters. Userspace sums the per-CPU values.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// New enrolled→audited flows handed to the transparent listener.
    InterceptedSyn = 0,
    /// Later packets of intercepted flows (marked so they are delivered locally).
    InterceptedPacket = 1,
    /// Packets that did not match and continued untouched.
    Passed = 2,
    /// Non-SYN packets to an intercepted port with no local socket and no FLOW_INGRESS entry
    /// (flows sshgw never took: older than the interception, or not audited), forwarded
    /// untouched.
    PassedPreexisting = 3,
    /// Matching SYNs dropped because no listener was in the SOCKMAP (daemon down).
    DroppedListenerDown = 4,
    /// Matching SYNs dropped because `bpf_sk_assign` failed.
    DroppedAssignFailed = 5,
    /// SSH to audited destinations from sources that are not enrolled (`unenrolled = "drop"`).
    DroppedUnenrolled = 6,
    /// Packets to audited destinations whose TCP ports or flags cannot be trusted: first
    /// fragments (a SYN could be completed behind our back) and IPv6 extension-header
    /// chains too long to walk.
    DroppedEvasive = 7,
    /// New audited SYNs from an enrolled source beyond its SYN budget.
    DroppedSynBudget = 8,
    /// Handshake ACKs answering a SYN cookie of the listener, handed to it (they have no
    /// socket yet, and would otherwise be forwarded to the real server).
    InterceptedSyncookieAck = 9,
    /// IP-in-IP (4) and IPv6-in-IP (41) toward audited destinations.
    DroppedTunnelIpip = 10,
    /// GRE (47) toward audited destinations.
    DroppedTunnelGre = 11,
    /// ESP (50) and, for IPv4, AH (51) toward audited destinations.
    DroppedTunnelIpsec = 12,
    /// EtherIP (97), L2TPv3 (115) and MPLS-in-IP (137) toward audited destinations.
    DroppedTunnelOther = 13,
    /// UDP to an encapsulation port (`[datapath] tunnel_udp_ports`) of an audited destination.
    DroppedTunnelUdp = 14,
    /// Non-SYN packets of a flow the listener took (its key is in FLOW_INGRESS) whose local
    /// socket is gone: late ACKs, FINs and retransmissions after sshgw closed or reset it.
    /// Forwarded, they would reach the real server from the device's own address.
    DroppedStray = 15,
}

impl Counter {
    pub const COUNT: u32 = 16;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::InterceptedSyn,
        Counter::InterceptedPacket,
        Counter::Passed,
        Counter::PassedPreexisting,
        Counter::DroppedListenerDown,
        Counter::DroppedAssignFailed,
        Counter::DroppedUnenrolled,
        Counter::DroppedEvasive,
        Counter::DroppedSynBudget,
        Counter::InterceptedSyncookieAck,
        Counter::DroppedTunnelIpip,
        Counter::DroppedTunnelGre,
        Counter::DroppedTunnelIpsec,
        Counter::DroppedTunnelOther,
        Counter::DroppedTunnelUdp,
        Counter::DroppedStray,
    ];

    /// Stable snake_case name used in `sshgw status --json` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::InterceptedSyn => "intercepted_syns",
            Counter::InterceptedPacket => "intercepted_packets",
            Counter::Passed => "passed_packets",
            Counter::PassedPreexisting => "passed_preexisting_packets",
            Counter::DroppedListenerDown => "dropped_while_down",
            Counter::DroppedAssignFailed => "dropped_assign_failed",
            Counter::DroppedUnenrolled => "dropped_unenrolled",
            Counter::DroppedEvasive => "dropped_evasive",
            Counter::DroppedSynBudget => "dropped_syn_budget",
            Counter::InterceptedSyncookieAck => "intercepted_syncookie_acks",
            Counter::DroppedTunnelIpip => "dropped_tunnel_ipip",
            Counter::DroppedTunnelGre => "dropped_tunnel_gre",
            Counter::DroppedTunnelIpsec => "dropped_tunnel_ipsec",
            Counter::DroppedTunnelOther => "dropped_tunnel_other",
            Counter::DroppedTunnelUdp => "dropped_tunnel_udp",
            Counter::DroppedStray => "dropped_stray_packets",
        }
    }
}

/// Key of the IPv4 audited LPM trie: identical layout to aya's `lpm_trie::Key<[u8; 4]>`.
pub type Ipv4Bytes = [u8; 4];
/// Key of the IPv6 maps.
pub type Ipv6Bytes = [u8; 16];
