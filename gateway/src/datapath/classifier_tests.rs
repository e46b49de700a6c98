//! The TC program's verdicts on crafted packets, run in the kernel with `BPF_PROG_TEST_RUN`
//! (aya's `TestRun`): no interface and no lab, so every parser branch is cheap to reach.
//! Over-the-wire tests of the same attacks are in `tests/tests/datapath_integrity.rs`.
//!
//! Loading a program needs root (CAP_BPF) and the embedded eBPF object
//! (`cargo xtask build-ebpf`). Without them these tests fail under `CI=true` and are
//! skipped, loudly, otherwise. Each test pins its maps in its own directory
//! `/sys/fs/bpf/sgw-<pid>-unit-<n>` and removes it.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions},
};
use gateway_common::{Counter, FlowKey, INTERCEPT_MARK_GLOBAL, programs};

use super::{MatchSets, Switches, maps, object, pinned::unpin_dir, program};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_PIPE: u32 = 3;

const ENROLLED_V4: [u8; 4] = [100, 96, 0, 7];
const OTHER_V4: [u8; 4] = [100, 96, 0, 8];
const AUDITED_V4: [u8; 4] = [203, 0, 113, 10];
const NOT_AUDITED_V4: [u8; 4] = [203, 0, 113, 20];
const ENROLLED_V6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const OTHER_V6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8];
const AUDITED_V6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const NOT_AUDITED_V6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20];

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The object loaded with its maps pinned in a private directory, removed on drop.
struct Loaded {
    ebpf: Ebpf,
    pins: PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = unpin_dir(&self.pins);
    }
}

/// Loads the object with the lab's sets and `switches`; None (after saying so) when this
/// is not root or the object is missing, unless `CI=true`.
fn load(switches: Switches) -> Option<Loaded> {
    let unavailable = if !nix::unistd::geteuid().is_root() {
        Some("loading BPF programs needs root".to_owned())
    } else {
        object::bytes().err().map(|e| e.to_string())
    };
    if let Some(why) = unavailable {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "classifier tests cannot run under CI=true: {why}"
        );
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let pins = PathBuf::from(format!("/sys/fs/bpf/sgw-{}-unit-{n}", std::process::id()));
    std::fs::create_dir_all(&pins).expect("pin dir");
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins)
        .override_global(INTERCEPT_MARK_GLOBAL, &0x100u32, true)
        .load(object::bytes().expect("object"))
        .expect("load the object");
    let mut loaded = Loaded { ebpf, pins };
    let addr = |a: &str| a.parse::<IpAddr>().unwrap();
    let sets = MatchSets {
        enrolled: HashSet::from([addr("100.96.0.7"), addr("fd00:96::7")]),
        audited: HashSet::from([
            "203.0.113.10/32".parse().unwrap(),
            "2001:db8:1::10/128".parse().unwrap(),
        ]),
        ports: HashSet::from([22]),
        switches,
    };
    maps::sync(&mut loaded.ebpf, &sets).expect("fill the maps");
    for name in programs::ALL {
        program(&mut loaded.ebpf, name)
            .expect("program")
            .load()
            .expect("the verifier accepts the program");
    }
    Some(loaded)
}

fn defaults() -> Switches {
    Switches::of(
        &crate::config::Config::parse("state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\n")
            .expect("config")
            .datapath,
    )
}

/// The header readers that can read an Ethernet frame where they expect it.
const READERS: [&str; 2] = [programs::ETHERNET, programs::GENERIC];

/// The action the program returns with a packet it counts under `counter`.
fn action(counter: Counter) -> u32 {
    match counter {
        Counter::Passed | Counter::PassedPreexisting => TC_ACT_PIPE,
        Counter::InterceptedSyn | Counter::InterceptedPacket | Counter::InterceptedSyncookieAck => {
            TC_ACT_OK
        }
        Counter::DroppedListenerDown
        | Counter::DroppedAssignFailed
        | Counter::DroppedUnenrolled
        | Counter::DroppedEvasive
        | Counter::DroppedSynBudget
        | Counter::DroppedTunnelIpip
        | Counter::DroppedTunnelGre
        | Counter::DroppedTunnelIpsec
        | Counter::DroppedTunnelOther
        | Counter::DroppedTunnelUdp
        | Counter::DroppedStray => TC_ACT_SHOT,
    }
}

impl Loaded {
    /// Runs `frame` `repeat` times through both header readers; the verdict of the last run.
    fn run(&mut self, frame: &[u8], repeat: u32) -> u32 {
        self.run_on(&READERS, frame, repeat)
    }

    /// Runs `frame` `repeat` times through each of `readers`; their common verdict.
    fn run_on(&mut self, readers: &[&str], frame: &[u8], repeat: u32) -> u32 {
        let mut verdicts = Vec::new();
        for &name in readers {
            let prog = program(&mut self.ebpf, name).expect("program");
            let result = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat,
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            verdicts.push(result.return_value);
        }
        assert!(
            verdicts.iter().all(|v| *v == verdicts[0]),
            "the header readers {readers:?} disagree: {verdicts:?}"
        );
        verdicts[0]
    }

    /// Runs `frame` once through both header readers: each returns the action of `counter`
    /// and counts the packet under it, and under no other counter.
    fn expect(&mut self, what: &str, frame: &[u8], counter: Counter) {
        self.expect_on(&READERS, what, frame, counter);
    }

    fn expect_on(&mut self, readers: &[&str], what: &str, frame: &[u8], counter: Counter) {
        let before = maps::counters(&self.ebpf).expect("counters");
        assert_eq!(
            self.run_on(readers, frame, 1),
            action(counter),
            "{what}: verdict"
        );
        let after = maps::counters(&self.ebpf).expect("counters");
        for c in Counter::ALL {
            let want = if c == counter {
                readers.len() as u64
            } else {
                0
            };
            let got = after[c.name()] - before[c.name()];
            assert_eq!(got, want, "{what}: counter {}", c.name());
        }
    }

    fn counter(&self, counter: Counter) -> u64 {
        maps::counters(&self.ebpf).expect("counters")[counter.name()]
    }
}

/// An Ethernet frame around an IP packet.
fn ether(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// An IPv4 frame of protocol `proto`; `frag` is the fragment field (flags and offset).
fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    ether(0x0800, &p)
}

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug)]
enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// The fragment header with its offset and flags field (offset << 3 | M).
    Fragment(u16),
    Ah,
}

impl Ext {
    fn code(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment(_) => 44,
            Ext::Ah => 51,
            Ext::DestOpts => 60,
        }
    }

    /// The header, followed by the header or protocol `next`.
    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // A PadN option filling the 8 bytes.
            Ext::HopByHop | Ext::DestOpts => vec![next, 0, 1, 4, 0, 0, 0, 0],
            // Type 2, no segments left.
            Ext::Routing => vec![next, 0, 2, 0, 0, 0, 0, 0],
            Ext::Fragment(field) => {
                let [hi, lo] = field.to_be_bytes();
                vec![next, 0, hi, lo, 0, 0, 0, 9]
            }
            // Length in 4-byte units minus 2: SPI and sequence number, no ICV.
            Ext::Ah => vec![next, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
        }
    }
}

/// An IPv6 frame: `exts` destination options headers (8 bytes each), then `proto`.
fn v6(proto: u8, src: [u8; 16], dst: [u8; 16], exts: usize, payload: &[u8]) -> Vec<u8> {
    v6_chain(proto, src, dst, &vec![Ext::DestOpts; exts], payload)
}

/// An IPv6 frame: the extension headers `chain`, then `proto`.
fn v6_chain(proto: u8, src: [u8; 16], dst: [u8; 16], chain: &[Ext], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, ext) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(proto, |e| e.code());
        body.extend_from_slice(&ext.bytes(next));
    }
    body.extend_from_slice(payload);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[chain.first().map_or(proto, |e| e.code()), 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&body);
    ether(0x86dd, &p)
}

fn tcp(dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0x9c, 0x40];
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    t
}

fn udp(dport: u16) -> Vec<u8> {
    let mut u = vec![0x9c, 0x40];
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    u
}

/// What a tunnel packet carries: here, a SYN inside an inner IPv4 header.
fn inner() -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 99, 0, 1];
    p.extend_from_slice(&AUDITED_V4);
    p.extend_from_slice(&tcp(22, 0x02));
    p
}

/// Tunnel protocols and the counter each is dropped under.
const TUNNELS: [(u8, Counter); 8] = [
    (4, Counter::DroppedTunnelIpip),
    (41, Counter::DroppedTunnelIpip),
    (47, Counter::DroppedTunnelGre),
    (50, Counter::DroppedTunnelIpsec),
    (51, Counter::DroppedTunnelIpsec),
    (97, Counter::DroppedTunnelOther),
    (115, Counter::DroppedTunnelOther),
    (137, Counter::DroppedTunnelOther),
];

#[test]
fn tunnels_toward_audited_destinations_are_dropped_by_reason() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    let mut expected = std::collections::BTreeMap::<&str, u64>::new();
    for (proto, counter) in TUNNELS {
        let v4_audited = v4(proto, ENROLLED_V4, AUDITED_V4, 0, &inner());
        assert_eq!(dp.run(&v4_audited, 1), TC_ACT_SHOT, "IPv4 protocol {proto}");
        let v4_other = v4(proto, OTHER_V4, NOT_AUDITED_V4, 0, &inner());
        assert_eq!(
            dp.run(&v4_other, 1),
            TC_ACT_PIPE,
            "IPv4 protocol {proto}, not audited"
        );
        // Two readers ran each packet.
        *expected.entry(counter.name()).or_default() += 2;
        if proto == 51 {
            continue; // IPv6 walks AH as an extension header.
        }
        for exts in [0, 3] {
            let v6_audited = v6(proto, ENROLLED_V6, AUDITED_V6, exts, &inner());
            assert_eq!(
                dp.run(&v6_audited, 1),
                TC_ACT_SHOT,
                "IPv6 {proto} after {exts}"
            );
            let v6_other = v6(proto, ENROLLED_V6, NOT_AUDITED_V6, exts, &inner());
            assert_eq!(
                dp.run(&v6_other, 1),
                TC_ACT_PIPE,
                "IPv6 {proto} not audited"
            );
            *expected.entry(counter.name()).or_default() += 2;
        }
    }
    for (port, verdict) in [
        (4789, TC_ACT_SHOT),
        (8472, TC_ACT_SHOT),
        (6081, TC_ACT_SHOT),
        (53, TC_ACT_PIPE),
    ] {
        assert_eq!(
            dp.run(&v4(17, ENROLLED_V4, AUDITED_V4, 0, &udp(port)), 1),
            verdict,
            "UDP {port}"
        );
        assert_eq!(
            dp.run(&v6(17, ENROLLED_V6, AUDITED_V6, 2, &udp(port)), 1),
            verdict,
            "UDP6 {port}"
        );
        assert_eq!(
            dp.run(&v4(17, ENROLLED_V4, NOT_AUDITED_V4, 0, &udp(port)), 1),
            TC_ACT_PIPE
        );
    }
    expected.insert(Counter::DroppedTunnelUdp.name(), 3 * 2 * 2);
    for (name, want) in expected {
        let got = maps::counters(&dp.ebpf).unwrap()[name];
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn tunnels_pass_when_allowed() {
    let switches = Switches {
        drop_tunnels: false,
        ..defaults()
    };
    let Some(mut dp) = load(switches) else {
        return;
    };
    for (proto, _) in TUNNELS {
        assert_eq!(
            dp.run(&v4(proto, ENROLLED_V4, AUDITED_V4, 0, &inner()), 1),
            TC_ACT_PIPE
        );
    }
    assert_eq!(
        dp.run(&v6(17, ENROLLED_V6, AUDITED_V6, 0, &udp(4789)), 1),
        TC_ACT_PIPE
    );
}

#[test]
fn headers_that_cannot_be_trusted_are_dropped_toward_audited() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    // A first fragment, a too long extension chain, a UDP first fragment without its ports.
    let first_fragment = v4(6, ENROLLED_V4, AUDITED_V4, 0x2000, &tcp(22, 0x02));
    assert_eq!(dp.run(&first_fragment, 1), TC_ACT_SHOT);
    let later_fragment = v4(6, ENROLLED_V4, AUDITED_V4, 0x0003, &tcp(22, 0x02));
    assert_eq!(dp.run(&later_fragment, 1), TC_ACT_PIPE);
    let long_chain = v6(6, ENROLLED_V6, AUDITED_V6, 9, &tcp(22, 0x02));
    assert_eq!(dp.run(&long_chain, 1), TC_ACT_SHOT);
    let long_chain_other = v6(6, ENROLLED_V6, NOT_AUDITED_V6, 9, &tcp(22, 0x02));
    assert_eq!(dp.run(&long_chain_other, 1), TC_ACT_PIPE);
    let empty_udp_fragment = v4(17, ENROLLED_V4, AUDITED_V4, 0x2000, &[]);
    assert_eq!(dp.run(&empty_udp_fragment, 1), TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DroppedEvasive), 3 * 2);
}

#[test]
fn syn_budget_drops_a_source_beyond_its_burst() {
    // One SYN per second after a burst of five: a run of 8 back-to-back SYNs (all within a
    // second) gets 5 through the budget, which then meet no listener, and 3 dropped by it.
    let switches = Switches {
        syn_rate: 1,
        syn_burst: 5,
        ..defaults()
    };
    let Some(mut dp) = load(switches) else {
        return;
    };
    let syn = v4(6, ENROLLED_V4, AUDITED_V4, 0, &tcp(22, 0x02));
    let prog = program(&mut dp.ebpf, programs::ETHERNET).unwrap();
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(&syn),
            repeat: 8,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(result.return_value, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DroppedListenerDown), 5);
    assert_eq!(dp.counter(Counter::DroppedSynBudget), 3);
    // Unenrolled sources are dropped before any budget (unenrolled = "drop").
    let unenrolled = v4(6, OTHER_V4, AUDITED_V4, 0, &tcp(22, 0x02));
    assert_eq!(dp.run(&unenrolled, 1), TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DroppedUnenrolled), 2);
    assert_eq!(dp.counter(Counter::DroppedSynBudget), 3);
}

/// A TCP packet with `flags` to `port` of AUDITED_V4, or of NOT_AUDITED_V4 when `!audited`.
fn tcp4(src: [u8; 4], audited: bool, frag: u16, port: u16, flags: u8) -> Vec<u8> {
    let dst = if audited { AUDITED_V4 } else { NOT_AUDITED_V4 };
    v4(6, src, dst, frag, &tcp(port, flags))
}

/// The first `n` bytes of a SYN to port 22: a TCP header cut short.
fn syn_head(n: usize) -> Vec<u8> {
    tcp(22, SYN)[..n].to_vec()
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
/// IPv4 fragment field: More Fragments, Don't Fragment, and the offset in 8-byte units.
const MF: u16 = 0x2000;
const DF: u16 = 0x4000;

#[test]
fn ipv4_first_and_tiny_fragments_toward_audited_are_evasive() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    let first = |proto: u8, payload: &[u8]| v4(proto, ENROLLED_V4, AUDITED_V4, MF, payload);
    let cases = [
        ("first fragment, SYN", tcp4(ENROLLED_V4, true, MF, 22, SYN)),
        ("first fragment, ACK", tcp4(ENROLLED_V4, true, MF, 22, ACK)),
        (
            "first fragment, unenrolled",
            tcp4(OTHER_V4, true, MF, 22, SYN),
        ),
        ("tiny first fragment, 8 bytes", first(6, &syn_head(8))),
        ("tiny first fragment, 2 bytes", first(6, &syn_head(2))),
        ("UDP first fragment, 2 bytes", first(17, &syn_head(2))),
    ];
    for (what, frame) in cases {
        dp.expect(what, &frame, Counter::DroppedEvasive);
    }
    // Tunnels are told by their protocol or port, fragment or not.
    let udp_tunnel = first(17, &udp(4789));
    dp.expect(
        "UDP 4789 first fragment",
        &udp_tunnel,
        Counter::DroppedTunnelUdp,
    );
    dp.expect(
        "GRE first fragment",
        &first(47, &inner()),
        Counter::DroppedTunnelGre,
    );
    let whole = tcp4(ENROLLED_V4, true, DF, 22, SYN);
    dp.expect("DF, not a fragment", &whole, Counter::DroppedListenerDown);
}

#[test]
fn ipv4_fragments_that_cannot_hide_a_syn_to_audited_pass() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    let frag = |field: u16, dst: [u8; 4], payload: &[u8]| v4(6, ENROLLED_V4, dst, field, payload);
    let cases = [
        (
            "first fragment, not audited",
            frag(MF, NOT_AUDITED_V4, &tcp(22, SYN)),
        ),
        (
            "first fragment, port 80",
            frag(MF, AUDITED_V4, &tcp(80, SYN)),
        ),
        (
            "tiny first fragment, not audited",
            frag(MF, NOT_AUDITED_V4, &syn_head(8)),
        ),
        // Later fragments carry no ports (the offset counts 8 bytes).
        ("later fragment", frag(MF | 1, AUDITED_V4, &syn_head(12))),
        ("last fragment", frag(3, AUDITED_V4, &syn_head(12))),
        (
            "TCP header cut short, not a fragment",
            frag(0, AUDITED_V4, &syn_head(8)),
        ),
        (
            "UDP first fragment, port 53",
            v4(17, ENROLLED_V4, AUDITED_V4, MF, &udp(53)),
        ),
    ];
    for (what, frame) in cases {
        dp.expect(what, &frame, Counter::Passed);
    }
}

/// Eight headers of every kind the parser walks (its limit), in an order no sender uses.
const MIXED: [Ext; 8] = [
    Ext::HopByHop,
    Ext::Routing,
    Ext::Fragment(0),
    Ext::Ah,
    Ext::DestOpts,
    Ext::Routing,
    Ext::Ah,
    Ext::DestOpts,
];

/// An IPv6 packet of protocol `proto` from the enrolled source through `chain` to `dst`.
fn over(chain: &[Ext], dst: [u8; 16], proto: u8, payload: &[u8]) -> Vec<u8> {
    v6_chain(proto, ENROLLED_V6, dst, chain, payload)
}

#[test]
fn ipv6_chains_up_to_the_walk_limit_are_judged_as_plain_packets() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    let (syn, ack, dests) = (tcp(22, SYN), tcp(22, ACK), [Ext::DestOpts; 8]);
    let cases = [
        (
            "no header",
            over(&[], AUDITED_V6, 6, &syn),
            Counter::DroppedListenerDown,
        ),
        (
            "8 headers",
            over(&dests, AUDITED_V6, 6, &syn),
            Counter::DroppedListenerDown,
        ),
        (
            "8 mixed",
            over(&MIXED, AUDITED_V6, 6, &syn),
            Counter::DroppedListenerDown,
        ),
        (
            "8 mixed, ACK",
            over(&MIXED, AUDITED_V6, 6, &ack),
            Counter::PassedPreexisting,
        ),
        (
            "8 mixed, UDP",
            over(&MIXED, AUDITED_V6, 17, &udp(4789)),
            Counter::DroppedTunnelUdp,
        ),
        (
            "8 mixed, ICMPv6",
            over(&MIXED, AUDITED_V6, 58, &[128, 0, 0, 0]),
            Counter::Passed,
        ),
        (
            "8 mixed, not audited",
            over(&MIXED, NOT_AUDITED_V6, 6, &syn),
            Counter::Passed,
        ),
    ];
    for (what, frame, counter) in cases {
        dp.expect(what, &frame, counter);
    }
}

#[test]
fn ipv6_chains_beyond_the_walk_limit_toward_audited_are_evasive() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    let nine = [MIXED.as_slice(), &[Ext::HopByHop]].concat();
    let syn = tcp(22, SYN);
    // Whatever follows the ninth header is never read.
    let cases = [
        ("9 headers", v6(6, ENROLLED_V6, AUDITED_V6, 9, &syn)),
        ("9 mixed", over(&nine, AUDITED_V6, 6, &syn)),
        ("9 mixed, ACK", over(&nine, AUDITED_V6, 6, &tcp(22, ACK))),
        (
            "9 mixed, port 80",
            over(&nine, AUDITED_V6, 6, &tcp(80, SYN)),
        ),
        ("9 mixed, UDP 4789", over(&nine, AUDITED_V6, 17, &udp(4789))),
        (
            "9 mixed, ICMPv6",
            over(&nine, AUDITED_V6, 58, &[128, 0, 0, 0]),
        ),
    ];
    for (what, frame) in cases {
        dp.expect(what, &frame, Counter::DroppedEvasive);
    }
    let other = over(&nine, NOT_AUDITED_V6, 6, &syn);
    dp.expect("9 mixed, not audited", &other, Counter::Passed);
}

/// The IPv6 header says extension headers follow; the packet ends two bytes into the first.
fn cut_chain(dst: [u8; 16]) -> Vec<u8> {
    let mut frame = v6(6, ENROLLED_V6, dst, 1, &[]);
    frame.truncate(14 + 40 + 2);
    frame
}

#[test]
fn ipv6_fragments_and_cut_chains_toward_audited_are_evasive() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    // The fragment field: offset (8-byte units) << 3 | More Fragments.
    let frag = |field: u16, dst: [u8; 16], proto: u8, payload: &[u8]| {
        over(&[Ext::Fragment(field)], dst, proto, payload)
    };
    let syn = tcp(22, SYN);
    let cases = [
        ("first fragment, SYN", frag(1, AUDITED_V6, 6, &syn)),
        ("first fragment, ACK", frag(1, AUDITED_V6, 6, &tcp(22, ACK))),
        ("tiny first fragment", frag(1, AUDITED_V6, 6, &syn_head(8))),
        (
            "UDP first fragment, 2 bytes",
            frag(1, AUDITED_V6, 17, &syn_head(2)),
        ),
        ("chain cut short", cut_chain(AUDITED_V6)),
    ];
    for (what, frame) in cases {
        dp.expect(what, &frame, Counter::DroppedEvasive);
    }
    let cases = [
        (
            "first fragment, port 80",
            frag(1, AUDITED_V6, 6, &tcp(80, SYN)),
        ),
        (
            "first fragment, not audited",
            frag(1, NOT_AUDITED_V6, 6, &syn),
        ),
        ("later fragment", frag(8 | 1, AUDITED_V6, 6, &syn_head(8))),
        ("chain cut short, not audited", cut_chain(NOT_AUDITED_V6)),
        (
            "TCP cut short, not a fragment",
            over(&[Ext::DestOpts], AUDITED_V6, 6, &syn_head(8)),
        ),
    ];
    for (what, frame) in cases {
        dp.expect(what, &frame, Counter::Passed);
    }
    // M clear at offset 0: an "atomic fragment" is a whole packet.
    let atomic = frag(0, AUDITED_V6, 6, &syn);
    dp.expect("atomic fragment", &atomic, Counter::DroppedListenerDown);
}

/// SYN without ACK, whatever else is set: a new flow, judged by the sets.
const PURE_SYNS: [u8; 7] = [0x02, 0x03, 0x06, 0x07, 0x0a, 0x22, 0xc2];
/// Anything else (SYN+ACK, ACK, FIN, RST, none, all): owned by its socket, if any.
const NOT_SYNS: [u8; 9] = [0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x00, 0x3f];

/// A TCP packet over IPv4 or IPv6 from an enrolled source or not, to an audited destination
/// or not.
fn tcp_to(v6_: bool, enrolled: bool, audited: bool, port: u16, flags: u8) -> Vec<u8> {
    if v6_ {
        let src = if enrolled { ENROLLED_V6 } else { OTHER_V6 };
        let dst = if audited { AUDITED_V6 } else { NOT_AUDITED_V6 };
        v6(6, src, dst, 0, &tcp(port, flags))
    } else {
        tcp4(
            if enrolled { ENROLLED_V4 } else { OTHER_V4 },
            audited,
            0,
            port,
            flags,
        )
    }
}

#[test]
fn a_pure_syn_starts_a_flow_and_other_flags_belong_to_their_socket() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    for v6_ in [false, true] {
        for flags in PURE_SYNS {
            let what = |to: &str| format!("v6 {v6_}, flags {flags:#04x}, {to}");
            // No listener in the SOCKMAP: the program fails closed.
            let steered = tcp_to(v6_, true, true, 22, flags);
            dp.expect(&what("steered"), &steered, Counter::DroppedListenerDown);
            let unenrolled = tcp_to(v6_, false, true, 22, flags);
            dp.expect(&what("unenrolled"), &unenrolled, Counter::DroppedUnenrolled);
            let other = tcp_to(v6_, true, false, 22, flags);
            dp.expect(&what("not audited"), &other, Counter::Passed);
            let port = tcp_to(v6_, true, true, 80, flags);
            dp.expect(&what("port 80"), &port, Counter::Passed);
        }
        for flags in NOT_SYNS {
            let what = |to: &str| format!("v6 {v6_}, flags {flags:#04x}, {to}");
            // No local socket and no listener to check a cookie with: forwarded.
            for (enrolled, audited) in [(true, true), (false, true), (true, false)] {
                let frame = tcp_to(v6_, enrolled, audited, 22, flags);
                let to = format!("enrolled {enrolled}, audited {audited}");
                dp.expect(&what(&to), &frame, Counter::PassedPreexisting);
            }
            let port = tcp_to(v6_, true, true, 80, flags);
            dp.expect(&what("port 80"), &port, Counter::Passed);
        }
    }
}

/// The key the program files a `tcp()` segment from `src` to `dst`:22 under.
fn flow_key(src: &[u8], dst: &[u8]) -> FlowKey {
    let mut key = FlowKey {
        family: if src.len() == 4 { 4 } else { 6 },
        sport: 40_000u16.to_be(),
        dport: 22u16.to_be(),
        ..Default::default()
    };
    key.saddr[..src.len()].copy_from_slice(src);
    key.daddr[..dst.len()].copy_from_slice(dst);
    key
}

/// The program's FLOW_INGRESS map.
fn flows(dp: &mut Loaded) -> aya::maps::HashMap<&mut aya::maps::MapData, FlowKey, u32> {
    let map = dp.ebpf.map_mut(gateway_common::maps::FLOW_INGRESS);
    aya::maps::HashMap::try_from(map.expect("FLOW_INGRESS")).expect("FLOW_INGRESS")
}

/// A late packet of a flow the listener took, once its socket is gone, never reaches the
/// real server; a flow the program never took is still forwarded.
#[test]
fn stray_packets_of_taken_flows_are_dropped() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    for v6_ in [false, true] {
        let key = if v6_ {
            flow_key(&ENROLLED_V6, &AUDITED_V6)
        } else {
            flow_key(&ENROLLED_V4, &AUDITED_V4)
        };
        for flags in NOT_SYNS {
            let what = format!("v6 {v6_}, flags {flags:#04x}");
            let frame = tcp_to(v6_, true, true, 22, flags);
            dp.expect(
                &format!("{what}, not taken"),
                &frame,
                Counter::PassedPreexisting,
            );
            flows(&mut dp)
                .insert(key, 7, 0)
                .expect("insert a taken flow");
            dp.expect(&format!("{what}, taken"), &frame, Counter::DroppedStray);
            flows(&mut dp).remove(&key).expect("remove the flow");
        }
    }
}

#[test]
fn unenrolled_syns_pass_when_allowed() {
    let switches = Switches {
        unenrolled_drop: false,
        ..defaults()
    };
    let Some(mut dp) = load(switches) else {
        return;
    };
    for v6_ in [false, true] {
        let syn = tcp_to(v6_, false, true, 22, SYN);
        dp.expect(&format!("v6 {v6_}, SYN"), &syn, Counter::Passed);
        let ack = tcp_to(v6_, false, true, 22, ACK);
        dp.expect(&format!("v6 {v6_}, ACK"), &ack, Counter::PassedPreexisting);
    }
}

#[test]
fn ip_headers_that_are_not_what_their_ethertype_says_pass() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    // A version 6 header behind the IPv4 EtherType: the in-place reader retries and the
    // helper finds nothing ours. (BPF_PROG_TEST_RUN refuses an IPv4 header cut short.)
    let mut wrong_version = tcp4(ENROLLED_V4, true, 0, 22, SYN);
    wrong_version[14] = 0x65;
    let mut short_ihl = tcp4(ENROLLED_V4, true, 0, 22, SYN);
    short_ihl[14] = 0x44;
    let cases = [
        ("wrong IP version", wrong_version),
        ("IHL below 5", short_ihl),
        ("ARP", ether(0x0806, &[0; 28])),
    ];
    for (what, frame) in cases {
        dp.expect(what, &frame, Counter::Passed);
    }
    // Options move the TCP header: NOP, NOP, NOP, end of list.
    let payload = [[1, 1, 1, 0].as_slice(), &tcp(22, SYN)].concat();
    let mut options = v4(6, ENROLLED_V4, AUDITED_V4, 0, &payload);
    options[14] = 0x46;
    dp.expect("IPv4 options", &options, Counter::DroppedListenerDown);
}

#[test]
fn the_l3_reader_falls_back_to_the_helper() {
    let Some(mut dp) = load(defaults()) else {
        return;
    };
    // The L3 reader expects the IP header at offset 0 but BPF_PROG_TEST_RUN hands it an
    // Ethernet frame: the in-place read finds no IP header and the helper reads the packet.
    let cases = [
        (
            "SYN",
            tcp_to(false, true, true, 22, SYN),
            Counter::DroppedListenerDown,
        ),
        (
            "SYN v6",
            tcp_to(true, true, true, 22, SYN),
            Counter::DroppedListenerDown,
        ),
        (
            "ACK",
            tcp_to(false, true, true, 22, ACK),
            Counter::PassedPreexisting,
        ),
        (
            "unenrolled",
            tcp_to(true, false, true, 22, SYN),
            Counter::DroppedUnenrolled,
        ),
        (
            "not audited",
            tcp_to(false, true, false, 22, SYN),
            Counter::Passed,
        ),
        (
            "first fragment",
            tcp4(ENROLLED_V4, true, MF, 22, SYN),
            Counter::DroppedEvasive,
        ),
        (
            "9 headers",
            over(&[Ext::DestOpts; 9], AUDITED_V6, 6, &tcp(22, SYN)),
            Counter::DroppedEvasive,
        ),
        (
            "chain cut short",
            cut_chain(AUDITED_V6),
            Counter::DroppedEvasive,
        ),
        (
            "GRE",
            v4(47, ENROLLED_V4, AUDITED_V4, 0, &inner()),
            Counter::DroppedTunnelGre,
        ),
    ];
    for (what, frame, counter) in cases {
        dp.expect_on(&[programs::L3], what, &frame, counter);
    }
}
