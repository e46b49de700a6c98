//! The three-namespace lab: a device, the router (device under test) and a server.
//!
//! ```text
//!  <lab>-dev                        <lab>-rtr (sshgw runs here)              <lab>-srv
//!  d0 100.96.0.7/24  (enrolled)  -- r0 100.96.0.1/24  fd00:96::1/64
//!     100.96.0.8/24  (not enr.)     r1 203.0.113.1/24 2001:db8:1::1/64 -- s0 203.0.113.10/24 (audited)
//!     fd00:96::7/64  (enrolled)                                               203.0.113.20/24 (not audited)
//!     fd00:96::8/64  (not enr.)                                               2001:db8:1::10/64 (audited)
//!  default via 100.96.0.1 / fd00:96::1                                        2001:db8:1::20/64 (not audited)
//!                                                                          default via 203.0.113.1 / 2001:db8:1::1
//! ```
//!
//! [`Lab::add_site`] adds a second site: a device behind a second router, both reaching the same
//! server through a second link, for tests with several routers (interface names as above
//! except the server's `s1`):
//!
//! ```text
//!  <lab>-dev2                       <lab>-rtr2                                <lab>-srv
//!  d0 100.96.1.7/24  (enrolled)  -- r0 100.96.1.1/24  fd00:96:1::1/64
//!     fd00:96:1::7/64 (enrolled)    r1 198.51.100.1/24 2001:db8:2::1/64 -- s1 198.51.100.10/24
//!  default via 100.96.1.1 /         203.0.113.0/24 via 198.51.100.10          2001:db8:2::10/64
//!              fd00:96:1::1         2001:db8:1::/64 via 2001:db8:2::10        100.96.1.0/24 via 198.51.100.1
//!                                                                             fd00:96:1::/64 via 2001:db8:2::1
//! ```
//!
//! Every lab gets unique names (`sgw-<pid>-<n>`, namespaces `sgw-<pid>-<n>-dev|rtr|srv`), its
//! own temporary directory (logs, keys, configs) and a process registry. Veth pairs are created
//! directly inside their namespaces, so labs can run in parallel. On drop the lab kills its
//! processes (by PID), prints all logs if the thread is panicking, removes registered BPF pin
//! directories and deletes its namespaces.
//!
//! In the WireGuard mode ([`crate::wireguard_lab::WireGuardLab`]) the device also reaches the
//! router through a real WireGuard tunnel over `d0`/`r0`: `wg0` 100.100.0.7 on the device,
//! `wg0` 100.100.0.1/24 on the router, where sshgw attaches.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::gateway::SshgwCa;
use crate::netns::{LAB_PREFIX, Netns, sweep_stale};
use crate::process::Processes;
use crate::ssh::KeyPair;

/// Root of the BPF filesystem; each lab's daemon pins under `BPF_PIN_ROOT/<lab name>`.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf";

/// Lines of each process log printed when a test fails.
pub const DUMP_TAIL_LINES: usize = 150;

/// Set to `1` to keep the lab's temporary directory (logs, configs) after the lab is dropped.
pub const KEEP_TMP_ENV: &str = "SSHGW_TEST_KEEP_TMP";

/// Addresses of the lab topology.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Enrolled device address (listed in devices.json).
    pub const DEV_ENROLLED_V4: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 7);
    pub const DEV_ENROLLED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 7);
    /// Second address on the device, not enrolled.
    pub const DEV_OTHER_V4: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 8);
    pub const DEV_OTHER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 8);
    /// Router, device side (`r0`); the devices' default gateway.
    pub const RTR_LAN_V4: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 1);
    pub const RTR_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1);
    /// Router, server side (`r1`); the source of the gateway's upstream connections.
    pub const RTR_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const RTR_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    /// Server address covered by the audit policy.
    pub const SRV_AUDITED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const SRV_AUDITED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    /// Server address not covered by any policy.
    pub const SRV_OTHER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
    pub const SRV_OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x20);

    /// The second site ([`crate::Lab::add_site`]): the enrolled address of `dev2`.
    pub const DEV2_ENROLLED_V4: Ipv4Addr = Ipv4Addr::new(100, 96, 1, 7);
    pub const DEV2_ENROLLED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 1, 0, 0, 0, 0, 7);
    /// `rtr2`, device side (`r0`); `dev2`'s default gateway.
    pub const RTR2_LAN_V4: Ipv4Addr = Ipv4Addr::new(100, 96, 1, 1);
    pub const RTR2_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 1, 0, 0, 0, 0, 1);
    /// `rtr2`, server side (`r1`); the source of its gateway's upstream connections.
    pub const RTR2_WAN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const RTR2_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
    /// The server on the second site's link (`s1`); `rtr2`'s next hop to the server
    /// addresses above.
    pub const SRV2_LINK_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    pub const SRV2_LINK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
}

/// Interface names.
pub mod iface {
    /// Device side of the device<->router veth (in `dev`).
    pub const DEV: &str = "d0";
    /// Router side of the device<->router veth (in `rtr`); sshgw attaches here.
    pub const RTR_LAN: &str = "r0";
    /// Router side of the router<->server veth (in `rtr`).
    pub const RTR_WAN: &str = "r1";
    /// Server side of the router<->server veth (in `srv`).
    pub const SRV: &str = "s0";
    /// Server side of the second router's veth (in `srv`); `rtr2` and `dev2` reuse the names
    /// above.
    pub const SRV2: &str = "s1";
}

/// Address family selector, so every test can run for IPv4 and IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn pick(self, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => IpAddr::V6(v6),
        }
    }

    /// Enrolled device address (100.96.0.7 / fd00:96::7).
    pub fn enrolled(self) -> IpAddr {
        self.pick(addr::DEV_ENROLLED_V4, addr::DEV_ENROLLED_V6)
    }

    /// Non-enrolled device address (100.96.0.8 / fd00:96::8).
    pub fn not_enrolled(self) -> IpAddr {
        self.pick(addr::DEV_OTHER_V4, addr::DEV_OTHER_V6)
    }

    /// Audited server address (203.0.113.10 / 2001:db8:1::10).
    pub fn audited(self) -> IpAddr {
        self.pick(addr::SRV_AUDITED_V4, addr::SRV_AUDITED_V6)
    }

    /// Non-audited server address (203.0.113.20 / 2001:db8:1::20).
    pub fn not_audited(self) -> IpAddr {
        self.pick(addr::SRV_OTHER_V4, addr::SRV_OTHER_V6)
    }

    /// Router address on the device side (100.96.0.1 / fd00:96::1).
    pub fn router_lan(self) -> IpAddr {
        self.pick(addr::RTR_LAN_V4, addr::RTR_LAN_V6)
    }

    /// Router address on the server side (203.0.113.1 / 2001:db8:1::1): what sshd sees as the
    /// client of an intercepted connection.
    pub fn router_wan(self) -> IpAddr {
        self.pick(addr::RTR_WAN_V4, addr::RTR_WAN_V6)
    }

    /// The tcpdump `-v` field holding the TTL / hop limit (`ttl` / `hlim`).
    pub fn ttl_field(self) -> &'static str {
        match self {
            Family::V4 => "ttl",
            Family::V6 => "hlim",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// `addr` formatted for `host:port` (IPv6 in brackets), as the daemon logs `orig_dst=`.
pub fn host_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Which router site of a lab a gateway or an `ssh` belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SiteId {
    /// `<lab>-dev` behind `<lab>-rtr`: the lab every test has.
    #[default]
    First,
    /// `<lab>-dev2` behind `<lab>-rtr2`, added by [`Lab::add_site`].
    Second,
}

/// One router site of a lab: a device namespace behind its own router namespace. Every site
/// reaches the one server namespace and its addresses ([`Family::audited`] and the rest).
#[derive(Clone, Copy)]
pub struct Site<'a> {
    pub id: SiteId,
    /// The device namespace (`d0`).
    pub dev: &'a Netns,
    /// The router namespace (`r0`, `r1`), where this site's daemon runs.
    pub rtr: &'a Netns,
    lab: &'a Lab,
}

impl std::fmt::Debug for Site<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("id", &self.id)
            .field("dev", self.dev)
            .field("rtr", self.rtr)
            .finish()
    }
}

impl<'a> Site<'a> {
    fn pick(&self, family: Family, first: IpAddr, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
        match self.id {
            SiteId::First => first,
            SiteId::Second => family.pick(v4, v6),
        }
    }

    /// The device's enrolled address (the first site: [`Family::enrolled`]; the second:
    /// 100.96.1.7 / fd00:96:1::7).
    pub fn enrolled(&self, family: Family) -> IpAddr {
        let first = family.enrolled();
        self.pick(
            family,
            first,
            addr::DEV2_ENROLLED_V4,
            addr::DEV2_ENROLLED_V6,
        )
    }

    /// The router's device-side address (the device's gateway).
    pub fn router_lan(&self, family: Family) -> IpAddr {
        let first = family.router_lan();
        self.pick(family, first, addr::RTR2_LAN_V4, addr::RTR2_LAN_V6)
    }

    /// The router's server-side address: what sshd sees as the client of a connection this
    /// site's gateway intercepted (the second site: 198.51.100.1 / 2001:db8:2::1).
    pub fn router_wan(&self, family: Family) -> IpAddr {
        let first = family.router_wan();
        self.pick(family, first, addr::RTR2_WAN_V4, addr::RTR2_WAN_V6)
    }

    /// The router's device-facing interface, for `[datapath] interfaces`.
    pub fn lan_iface(&self) -> &'static str {
        iface::RTR_LAN
    }

    /// The suffix of this site's default BPF pin directory ([`Lab::pin_dir`]): none for the
    /// first site, `site2` for the second, so two daemons never share pins.
    pub fn pin_suffix(&self) -> Option<&'static str> {
        match self.id {
            SiteId::First => None,
            SiteId::Second => Some("site2"),
        }
    }

    /// An `ssh` to `host` from this site's device namespace ([`Lab::ssh`] otherwise).
    pub fn ssh(&self, host: IpAddr) -> crate::ssh::Ssh<'a> {
        self.lab.ssh(host).from_ns(self.dev)
    }

    /// One SSH session from this site's enrolled address to the audited server that runs
    /// `command`; an error unless it succeeds.
    pub fn session(&self, family: Family, command: &str) -> Result<()> {
        self.ssh(family.audited())
            .bind(self.enrolled(family))
            .run(command)?
            .check()?;
        Ok(())
    }
}

/// The namespaces [`Lab::add_site`] creates.
struct SecondSite {
    dev: Netns,
    rtr: Netns,
}

static LAB_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Fails unless running as root (the lab needs CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF).
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the network-namespace lab needs root (CAP_NET_ADMIN/CAP_SYS_ADMIN/CAP_BPF); run the tests as root"
        );
    }
    Ok(())
}

/// One lab: three namespaces wired up as in the module docs, plus a temp dir, a process
/// registry and an SSH client key authorized for root on the lab's sshd.
pub struct Lab {
    name: String,
    procs: Processes,
    client_key: KeyPair,
    authorized_keys: PathBuf,
    cleanup_dirs: Mutex<Vec<PathBuf>>,
    seq: AtomicUsize,
    sshgw_ca: OnceLock<SshgwCa>,
    /// The device namespace (`d0`).
    pub dev: Netns,
    /// The router namespace (`r0`, `r1`); the device under test.
    pub rtr: Netns,
    /// The server namespace (`s0`, and `s1` once [`Lab::add_site`] ran).
    pub srv: Netns,
    /// `<name>-dev2` and `<name>-rtr2`, once [`Lab::add_site`] ran.
    site2: OnceLock<SecondSite>,
    // Dropped last: logs must survive until the namespaces and processes are gone.
    tmp: Option<TempDir>,
}

impl Lab {
    /// Sweeps stale leftovers of killed runs, then builds a fresh lab.
    pub fn new() -> Result<Self> {
        require_root()?;
        for removed in sweep_stale(Path::new(BPF_PIN_ROOT)) {
            eprintln!("note: removed stale lab leftover {removed}");
        }
        let n = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{LAB_PREFIX}{}-{n}", std::process::id());
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .context("creating the lab temp dir")?;
        Self::build(name, tmp)
    }

    /// A lab with a caller-chosen `name` (namespaces `<name>-dev|rtr|srv`, pin directory
    /// `/sys/fs/bpf/<name>`) and its temporary directory inside `parent`: the lab
    /// `cargo xtask lab` leaves up under fixed names (see [`crate::persist`]). No stale sweep
    /// runs, and only `sgw-<pid>-…` names are ever swept by other labs.
    pub fn with_name(name: &str, parent: &Path) -> Result<Self> {
        require_root()?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(parent)
            .with_context(|| format!("creating the lab dir in {}", parent.display()))?;
        Self::build(name.to_owned(), tmp)
    }

    fn build(name: String, tmp: TempDir) -> Result<Self> {
        let procs = Processes::new(tmp.path().join("logs"))?;
        let dev = Netns::create(&format!("{name}-dev"))?;
        let rtr = Netns::create(&format!("{name}-rtr"))?;
        let srv = Netns::create(&format!("{name}-srv"))?;
        wire(&dev, &rtr, &srv).with_context(|| format!("building the topology of lab {name}"))?;

        let client_key = KeyPair::generate(
            &procs,
            &tmp.path().join("client_ed25519"),
            &format!("{name}-client"),
        )?;
        let authorized_keys = tmp.path().join("authorized_keys");
        fs::write(&authorized_keys, client_key.public_line()? + "\n")
            .with_context(|| format!("writing {}", authorized_keys.display()))?;

        Ok(Self {
            name,
            procs,
            client_key,
            authorized_keys,
            cleanup_dirs: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
            sshgw_ca: OnceLock::new(),
            dev,
            rtr,
            srv,
            site2: OnceLock::new(),
            tmp: Some(tmp),
        })
    }

    /// Adds the second site (see the module docs): namespaces `<name>-dev2` and `<name>-rtr2`,
    /// wired to the server like the first site, deleted with the lab. Fails if the lab already
    /// has it.
    pub fn add_site(&self) -> Result<Site<'_>> {
        if self.site2.get().is_some() {
            bail!("lab {} already has its second site", self.name);
        }
        let dev = Netns::create(&format!("{}-dev2", self.name))?;
        let rtr = Netns::create(&format!("{}-rtr2", self.name))?;
        wire_site2(&dev, &rtr, &self.srv)
            .with_context(|| format!("building the second site of lab {}", self.name))?;
        if self.site2.set(SecondSite { dev, rtr }).is_err() {
            bail!("lab {}: the second site was added concurrently", self.name);
        }
        self.site(SiteId::Second)
    }

    /// A site of the lab: [`SiteId::First`] always, [`SiteId::Second`] once
    /// [`Lab::add_site`] ran.
    pub fn site(&self, id: SiteId) -> Result<Site<'_>> {
        let (dev, rtr) = match id {
            SiteId::First => (&self.dev, &self.rtr),
            SiteId::Second => {
                let s = self.site2.get().with_context(|| {
                    format!(
                        "lab {} has no second site (call Lab::add_site first)",
                        self.name
                    )
                })?;
                (&s.dev, &s.rtr)
            }
        };
        Ok(Site {
            id,
            dev,
            rtr,
            lab: self,
        })
    }

    /// Unique lab name `sgw-<pid>-<n>` (namespaces are `<name>-dev|rtr|srv`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lab's temporary directory.
    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().expect("lab temp dir").path()
    }

    /// A fresh, unique subdirectory of the lab dir named `<label>-<n>`.
    pub fn new_subdir(&self, label: &str) -> Result<PathBuf> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir().join(format!("{label}-{n}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The cache behind [`Lab::sshgw_ca`].
    pub(crate) fn sshgw_ca_cell(&self) -> &OnceLock<SshgwCa> {
        &self.sshgw_ca
    }

    /// The process registry (every process the lab starts).
    pub fn procs(&self) -> &Processes {
        &self.procs
    }

    /// The SSH client key authorized for root on the lab's sshd.
    pub fn client_key(&self) -> &KeyPair {
        &self.client_key
    }

    /// `<lab dir>/authorized_keys`, used as sshd's `AuthorizedKeysFile`.
    pub fn authorized_keys_path(&self) -> &Path {
        &self.authorized_keys
    }

    /// Appends a line (a public key, optionally with options) to the authorized_keys file.
    /// sshd re-reads it for every connection.
    pub fn authorize_key(&self, line: &str) -> Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)?;
        writeln!(f, "{}", line.trim_end())?;
        Ok(())
    }

    /// Registers a directory to be removed (recursively) when the lab is dropped, after all
    /// processes are dead; used for the daemon's BPF pin directory.
    pub fn remove_on_drop(&self, dir: impl Into<PathBuf>) {
        self.cleanup_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.into());
    }

    /// The per-lab BPF pin directory `/sys/fs/bpf/<lab name>[-suffix]`.
    pub fn pin_dir(&self, suffix: Option<&str>) -> PathBuf {
        let name = match suffix {
            Some(s) => format!("{}-{s}", self.name),
            None => self.name.clone(),
        };
        Path::new(BPF_PIN_ROOT).join(name)
    }

    /// Prints every process's recent logs to stderr.
    pub fn dump_logs(&self) {
        eprintln!(
            "===== lab {} ({}) process logs",
            self.name,
            self.dir().display()
        );
        self.procs.dump_logs(DUMP_TAIL_LINES);
    }

    /// Runs a short diagnostic command in a namespace and returns its output (or the error),
    /// for failure messages.
    pub fn diag(&self, ns: &Netns, args: &[&str]) -> String {
        match ns.ip_output(args) {
            Ok(out) => format!(
                "$ ip -n {} {}\n{}{}",
                ns.name(),
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => format!("{err:#}"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.procs.kill_all();
        if std::thread::panicking() {
            self.dump_logs();
        }
        for dir in self
            .cleanup_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if dir.exists()
                && let Err(err) = fs::remove_dir_all(&dir)
            {
                eprintln!("warning: removing {}: {err}", dir.display());
            }
        }
        if std::env::var(KEEP_TMP_ENV).is_ok_and(|v| v == "1")
            && let Some(tmp) = self.tmp.take()
        {
            eprintln!("note: keeping lab dir {}", tmp.keep().display());
        }
        // Fields drop next: namespaces are deleted, then the temp dir.
    }
}

/// A veth pair made directly in its two namespaces: no names in the host namespace, so
/// parallel labs never collide.
fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    Ok(())
}

/// `ip addr add CIDR dev DEV [EXTRA]`; IPv6 addresses (`-6`) without DAD.
fn addr(ns: &Netns, cidr: &str, dev: &str, extra: &[&str]) -> Result<()> {
    let v6 = cidr.contains(':');
    let mut args = if v6 { vec!["-6"] } else { vec![] };
    args.extend(["addr", "add", cidr, "dev", dev]);
    if v6 {
        args.push("nodad");
    }
    args.extend_from_slice(extra);
    ns.ip(&args)?;
    Ok(())
}

/// `ip route add DST via GATEWAY` (`-6` for an IPv6 gateway).
fn route(ns: &Netns, dst: &str, via: &str) -> Result<()> {
    let mut args = if via.contains(':') {
        vec!["-6"]
    } else {
        vec![]
    };
    args.extend(["route", "add", dst, "via", via]);
    ns.ip(&args)?;
    Ok(())
}

/// Wires the veths, addresses, routes and router sysctls.
fn wire(dev: &Netns, rtr: &Netns, srv: &Netns) -> Result<()> {
    use iface::*;
    veth(dev, DEV, rtr, RTR_LAN)?;
    veth(srv, SRV, rtr, RTR_WAN)?;
    router_sysctls(rtr)?;
    for (ns, ifname) in [(dev, DEV), (rtr, RTR_LAN), (rtr, RTR_WAN), (srv, SRV)] {
        ns.ip(&["link", "set", ifname, "up"])?;
    }

    // Device: the enrolled address is the primary one (the default source); the other is a
    // secondary (IPv4) / deprecated (IPv6, preferred_lft 0) address, used only via `ssh -b`.
    addr(dev, "100.96.0.7/24", DEV, &[])?;
    addr(dev, "100.96.0.8/24", DEV, &[])?;
    addr(dev, "fd00:96::7/64", DEV, &[])?;
    addr(dev, "fd00:96::8/64", DEV, &["preferred_lft", "0"])?;

    addr(rtr, "100.96.0.1/24", RTR_LAN, &[])?;
    addr(rtr, "fd00:96::1/64", RTR_LAN, &[])?;
    addr(rtr, "203.0.113.1/24", RTR_WAN, &[])?;
    addr(rtr, "2001:db8:1::1/64", RTR_WAN, &[])?;

    for cidr in [
        "203.0.113.10/24",
        "203.0.113.20/24",
        "2001:db8:1::10/64",
        "2001:db8:1::20/64",
    ] {
        addr(srv, cidr, SRV, &[])?;
    }

    route(dev, "default", "100.96.0.1")?;
    route(dev, "default", "fd00:96::1")?;
    route(srv, "default", "203.0.113.1")?;
    route(srv, "default", "2001:db8:1::1")?;
    Ok(())
}

/// Wires the second site: `dev2` <-> `rtr2`, and `rtr2` <-> a second interface of `srv`
/// (`s1`), with the addresses and routes of the module docs.
fn wire_site2(dev: &Netns, rtr: &Netns, srv: &Netns) -> Result<()> {
    use iface::*;
    veth(dev, DEV, rtr, RTR_LAN)?;
    veth(srv, SRV2, rtr, RTR_WAN)?;
    router_sysctls(rtr)?;
    for (ns, ifname) in [(dev, DEV), (rtr, RTR_LAN), (rtr, RTR_WAN), (srv, SRV2)] {
        ns.ip(&["link", "set", ifname, "up"])?;
    }

    addr(dev, "100.96.1.7/24", DEV, &[])?;
    addr(dev, "fd00:96:1::7/64", DEV, &[])?;
    addr(rtr, "100.96.1.1/24", RTR_LAN, &[])?;
    addr(rtr, "fd00:96:1::1/64", RTR_LAN, &[])?;
    addr(rtr, "198.51.100.1/24", RTR_WAN, &[])?;
    addr(rtr, "2001:db8:2::1/64", RTR_WAN, &[])?;
    addr(srv, "198.51.100.10/24", SRV2, &[])?;
    addr(srv, "2001:db8:2::10/64", SRV2, &[])?;

    route(dev, "default", "100.96.1.1")?;
    route(dev, "default", "fd00:96:1::1")?;
    // The server's addresses (audited or not) sit on `s0`; `rtr2` reaches them over `s1`.
    route(rtr, "203.0.113.0/24", "198.51.100.10")?;
    route(rtr, "2001:db8:1::/64", "2001:db8:2::10")?;
    route(srv, "100.96.1.0/24", "198.51.100.1")?;
    route(srv, "fd00:96:1::/64", "2001:db8:2::1")?;
    Ok(())
}

/// Router sysctls, set explicitly (a fresh netns has forwarding off).
fn router_sysctls(rtr: &Netns) -> Result<()> {
    use iface::*;
    rtr.sysctl("net.ipv4.ip_forward", "1")?;
    rtr.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    for (ifname, rp) in [
        ("all", "0"),
        ("default", "0"),
        (RTR_LAN, "1"),
        (RTR_WAN, "0"),
    ] {
        rtr.sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), rp)?;
        rtr.sysctl(&format!("net.ipv4.conf.{ifname}.src_valid_mark"), "0")?;
    }
    Ok(())
}
