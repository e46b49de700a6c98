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
    /// Intercepted TCP destination ports, key: port in host byte order.
    pub const PORTS: &str = "PORTS";
    /// The transparent listeners, indexed by [`super::LISTENER_V4`]/[`super::LISTENER_V6`].
    pub const LISTENER: &str = "LISTENER";
    /// Per-CPU counters, indexed by [`super::Counter`].
    pub const STATS: &str = "STATS";

    /// Every map the daemon pins, so takeover and clean-up can walk them.
    pub const ALL: [&str; 7] = [
        ENROLLED_V4,
        ENROLLED_V6,
        AUDITED_V4,
        AUDITED_V6,
        PORTS,
        LISTENER,
        STATS,
    ];
}

/// Name of the TC classifier function in the object.
pub const PROGRAM_NAME: &str = "sshgw_ingress";

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
    /// Matching packets of flows that predate interception, forwarded untouched.
    PassedPreexisting = 3,
    /// Matching SYNs dropped because no listener was in the SOCKMAP (daemon down).
    DroppedListenerDown = 4,
    /// Matching SYNs dropped because `bpf_sk_assign` failed.
    DroppedAssignFailed = 5,
}

impl Counter {
    pub const COUNT: u32 = 6;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::InterceptedSyn,
        Counter::InterceptedPacket,
        Counter::Passed,
        Counter::PassedPreexisting,
        Counter::DroppedListenerDown,
        Counter::DroppedAssignFailed,
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
        }
    }
}

/// Key of the IPv4 audited LPM trie: identical layout to aya's `lpm_trie::Key<[u8; 4]>`.
pub type Ipv4Bytes = [u8; 4];
/// Key of the IPv6 maps.
pub type Ipv6Bytes = [u8; 16];
