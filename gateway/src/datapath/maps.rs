//! Filling the pinned maps (ENROLLED, AUDITED, PORTS, LISTENER) and reading the counters.
//!
//! Updates are diffs against what is already in the maps, so a takeover by a restarted
//! daemon never empties a set the running program depends on.

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, SockMap, lpm_trie::Key},
};
use gateway_common::{
    Counter, FlowKey, Ipv4Bytes, Ipv6Bytes, LISTENER_V4, LISTENER_V6, PORTS_INTERCEPT,
    PORTS_TUNNEL_UDP, PortSet, Settings, maps, settings,
};
use ipnet::IpNet;

use super::links::AttachedNames;
use crate::config::{DatapathConfig, Unenrolled};

/// What the TC program matches on: enrolled sources, audited destinations, ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchSets {
    pub enrolled: HashSet<IpAddr>,
    pub audited: HashSet<IpNet>,
    pub ports: HashSet<u16>,
    pub switches: Switches,
}

/// The program's runtime switches, from `[datapath]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    /// Drop SSH from sources that are not enrolled to audited destinations.
    pub unenrolled_drop: bool,
    /// Drop tunnel protocols and encapsulation UDP toward audited destinations.
    pub drop_tunnels: bool,
    pub tunnel_udp_ports: HashSet<u16>,
    /// New audited flows per second per source (0: no budget), and the burst allowed.
    pub syn_rate: u32,
    pub syn_burst: u32,
}

impl Switches {
    pub fn of(cfg: &DatapathConfig) -> Self {
        Switches {
            unenrolled_drop: cfg.unenrolled == Unenrolled::Drop,
            drop_tunnels: cfg.drop_tunnels,
            tunnel_udp_ports: cfg.tunnel_udp_ports.iter().copied().collect(),
            syn_rate: cfg.syn_rate_per_source,
            syn_burst: cfg.syn_burst_per_source,
        }
    }

    /// The SETTINGS value: flags, and the SYN budget as a cell rate (see [`Settings`]).
    pub fn settings(&self) -> Settings {
        let mut flags = 0;
        if self.unenrolled_drop {
            flags |= settings::UNENROLLED_DROP;
        }
        if self.drop_tunnels {
            flags |= settings::TUNNELS_DROP;
        }
        let (syn_interval_ns, syn_tolerance_ns) = match self.syn_rate {
            0 => (0, 0),
            rate => {
                let interval = 1_000_000_000 / u64::from(rate);
                (interval, interval * u64::from(self.syn_burst.max(1) - 1))
            }
        };
        Settings {
            flags,
            _reserved: 0,
            syn_interval_ns,
            syn_tolerance_ns,
        }
    }
}

/// A port list as the bitmap the program tests.
fn port_set(ports: &HashSet<u16>) -> PortSet {
    let mut set = PortSet::EMPTY;
    for port in ports {
        set.insert(*port);
    }
    set
}

impl MatchSets {
    /// Refuses sets the kernel maps cannot hold, before anything is changed.
    pub fn check_capacity(&self) -> Result<()> {
        let v4 = self.enrolled.iter().filter(|a| a.is_ipv4()).count();
        let v6 = self.enrolled.len() - v4;
        let limit = gateway_common::MAX_ENROLLED as usize;
        if v4 > limit || v6 > limit {
            anyhow::bail!(
                "devices: {v4} IPv4 and {v6} IPv6 tunnel addresses exceed the datapath's limit of {limit} per family"
            );
        }
        let v4 = self
            .audited
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .count();
        let v6 = self.audited.len() - v4;
        let limit = gateway_common::MAX_AUDITED as usize;
        if v4 > limit || v6 > limit {
            anyhow::bail!(
                "policies: {v4} IPv4 and {v6} IPv6 destinations exceed the datapath's limit of {limit} per family"
            );
        }
        Ok(())
    }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("eBPF object has no map {name}"))
}

/// Makes the map hold exactly `want` (each with value 1).
fn sync_hash<K>(ebpf: &mut Ebpf, name: &str, want: &HashSet<K>) -> Result<()>
where
    K: aya::Pod + Eq + Hash,
{
    let mut map: HashMap<_, K, u8> = HashMap::try_from(map_mut(ebpf, name)?)?;
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains(k))
        .collect();
    for key in want {
        map.insert(key, 1, 0)
            .with_context(|| format!("cannot update map {name}"))?;
    }
    for key in stale {
        map.remove(&key)
            .with_context(|| format!("cannot update map {name}"))?;
    }
    Ok(())
}

fn sync_lpm<K>(ebpf: &mut Ebpf, name: &str, want: &HashSet<(u32, K)>) -> Result<()>
where
    K: aya::Pod + Eq + Hash,
{
    let mut map: LpmTrie<_, K, u8> = LpmTrie::try_from(map_mut(ebpf, name)?)?;
    let stale: Vec<Key<K>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains(&(k.prefix_len(), k.data())))
        .collect();
    for (len, data) in want {
        map.insert(&Key::new(*len, *data), 1, 0)
            .with_context(|| format!("cannot update map {name}"))?;
    }
    for key in stale {
        map.remove(&key)
            .with_context(|| format!("cannot update map {name}"))?;
    }
    Ok(())
}

pub fn sync(ebpf: &mut Ebpf, sets: &MatchSets) -> Result<()> {
    let mut enrolled_v4 = HashSet::new();
    let mut enrolled_v6 = HashSet::new();
    for addr in &sets.enrolled {
        match addr {
            IpAddr::V4(a) => enrolled_v4.insert(a.octets()),
            IpAddr::V6(a) => enrolled_v6.insert(a.octets()),
        };
    }
    let mut audited_v4: HashSet<(u32, Ipv4Bytes)> = HashSet::new();
    let mut audited_v6: HashSet<(u32, Ipv6Bytes)> = HashSet::new();
    for net in &sets.audited {
        match net {
            IpNet::V4(n) => audited_v4.insert((u32::from(n.prefix_len()), n.network().octets())),
            IpNet::V6(n) => audited_v6.insert((u32::from(n.prefix_len()), n.network().octets())),
        };
    }
    // Order matters only for a shrinking set; every step keeps the program consistent.
    let mut port_map: Array<_, PortSet> = Array::try_from(map_mut(ebpf, maps::PORTS)?)?;
    // Each value is replaced whole: each port's bit flips on its own.
    for (index, ports) in [
        (PORTS_INTERCEPT, &sets.ports),
        (PORTS_TUNNEL_UDP, &sets.switches.tunnel_udp_ports),
    ] {
        port_map
            .set(index, port_set(ports), 0)
            .context("cannot update map PORTS")?;
    }
    sync_lpm(ebpf, maps::AUDITED_V4, &audited_v4)?;
    sync_lpm(ebpf, maps::AUDITED_V6, &audited_v6)?;
    sync_hash(ebpf, maps::ENROLLED_V4, &enrolled_v4)?;
    sync_hash(ebpf, maps::ENROLLED_V6, &enrolled_v6)?;
    let mut settings: Array<_, Settings> = Array::try_from(map_mut(ebpf, maps::SETTINGS)?)?;
    settings
        .set(0, sets.switches.settings(), 0)
        .context("cannot update map SETTINGS")?;
    Ok(())
}

/// Where intercepted SYNs came in, recorded by the program per flow. The entries stay
/// after they are read: they also tell the program that a flow is sshgw's, so its late
/// packets are dropped once the local socket is gone (`Counter::DroppedStray`). The LRU
/// map evicts the oldest, and a new SYN on the same 4-tuple overwrites its entry.
pub struct FlowIngress {
    map: std::sync::Mutex<HashMap<MapData, FlowKey, u32>>,
    names: AttachedNames,
}

impl FlowIngress {
    pub fn take(ebpf: &mut Ebpf, names: AttachedNames) -> Result<Self> {
        let map = ebpf
            .take_map(maps::FLOW_INGRESS)
            .context("eBPF object has no FLOW_INGRESS map")?;
        Ok(FlowIngress {
            map: std::sync::Mutex::new(HashMap::try_from(map)?),
            names,
        })
    }

    /// The name of the interface the flow `peer` → `dst` came in on.
    pub fn interface(&self, peer: SocketAddr, dst: SocketAddr) -> Option<String> {
        self.flow(peer, dst)
            .and_then(|ifindex| self.names.name(ifindex))
    }

    /// The ingress ifindex of the flow `peer` → `dst`.
    pub fn flow(&self, peer: SocketAddr, dst: SocketAddr) -> Option<u32> {
        let key = flow_key(peer, dst)?;
        let map = self.map.lock().expect("flow map lock poisoned");
        map.get(&key, 0).ok()
    }
}

fn flow_key(peer: SocketAddr, dst: SocketAddr) -> Option<FlowKey> {
    let mut key = FlowKey {
        sport: peer.port().to_be(),
        dport: dst.port().to_be(),
        ..Default::default()
    };
    match (peer.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            key.family = 4;
            key.saddr[..4].copy_from_slice(&s.octets());
            key.daddr[..4].copy_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            key.family = 6;
            key.saddr = s.octets();
            key.daddr = d.octets();
        }
        _ => return None,
    }
    Some(key)
}

/// Puts the transparent listeners into the SOCKMAP slots the program reads.
pub fn set_listeners(
    ebpf: &mut Ebpf,
    v4: Option<&impl AsRawFd>,
    v6: Option<&impl AsRawFd>,
) -> Result<()> {
    let mut map: SockMap<_> = SockMap::try_from(map_mut(ebpf, maps::LISTENER)?)?;
    if let Some(fd) = v4 {
        map.set(LISTENER_V4, fd, 0)
            .context("cannot put the IPv4 listener into the SOCKMAP")?;
    }
    if let Some(fd) = v6 {
        map.set(LISTENER_V6, fd, 0)
            .context("cannot put the IPv6 listener into the SOCKMAP")?;
    }
    Ok(())
}

pub type Counters = BTreeMap<&'static str, u64>;

fn sum_counters<T: std::borrow::Borrow<MapData>>(stats: &PerCpuArray<T, u64>) -> Result<Counters> {
    let mut out = Counters::new();
    for counter in Counter::ALL {
        let values = stats
            .get(&(counter as u32), 0)
            .with_context(|| format!("cannot read counter {}", counter.name()))?;
        out.insert(counter.name(), values.iter().sum());
    }
    Ok(out)
}

/// Counters of a loaded program.
pub fn counters(ebpf: &Ebpf) -> Result<Counters> {
    let map = ebpf
        .map(maps::STATS)
        .context("eBPF object has no STATS map")?;
    sum_counters(&PerCpuArray::<_, u64>::try_from(map)?)
}

/// Counters read straight from the pinned map, which outlives the daemon.
pub fn pinned_counters(maps_dir: &Path) -> Result<Counters> {
    let path = maps_dir.join(maps::STATS);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("cannot open pinned map {}", path.display()))?;
    let map = Map::from_map_data(data)?;
    sum_counters(&PerCpuArray::<_, u64>::try_from(map)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_budget_is_a_cell_rate() {
        let switches = |syn_rate, syn_burst| Switches {
            syn_rate,
            syn_burst,
            ..Default::default()
        };
        let s = switches(100, 200).settings();
        // One SYN per 10 ms, 199 intervals of tolerance: 200 at once, then 100 per second.
        assert_eq!(
            (s.syn_interval_ns, s.syn_tolerance_ns),
            (10_000_000, 1_990_000_000)
        );
        let s = switches(1, 1).settings();
        assert_eq!((s.syn_interval_ns, s.syn_tolerance_ns), (1_000_000_000, 0));
        assert_eq!(switches(0, 5).settings().syn_interval_ns, 0, "0: no budget");
    }

    #[test]
    fn flags_follow_the_switches() {
        let s = Switches {
            unenrolled_drop: true,
            drop_tunnels: true,
            ..Default::default()
        };
        assert_eq!(
            s.settings().flags,
            settings::UNENROLLED_DROP | settings::TUNNELS_DROP
        );
        assert_eq!(Switches::default().settings().flags, 0);
    }
}
