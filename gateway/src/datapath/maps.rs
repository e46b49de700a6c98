//! Filling the pinned maps (ENROLLED, AUDITED, PORTS, LISTENER) and reading the counters.
//!
//! Updates are diffs against what is already in the maps, so a takeover by a restarted
//! daemon never empties a set the running program depends on.

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
    net::IpAddr,
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray, SockMap, lpm_trie::Key},
};
use gateway_common::{Counter, Ipv4Bytes, Ipv6Bytes, LISTENER_V4, LISTENER_V6, maps};
use ipnet::IpNet;

/// What the TC program matches on: enrolled sources, audited destinations, ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchSets {
    pub enrolled: HashSet<IpAddr>,
    pub audited: HashSet<IpNet>,
    pub ports: HashSet<u16>,
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
    sync_hash(ebpf, maps::PORTS, &sets.ports)?;
    sync_lpm(ebpf, maps::AUDITED_V4, &audited_v4)?;
    sync_lpm(ebpf, maps::AUDITED_V6, &audited_v6)?;
    sync_hash(ebpf, maps::ENROLLED_V4, &enrolled_v4)?;
    sync_hash(ebpf, maps::ENROLLED_V6, &enrolled_v6)?;
    Ok(())
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
