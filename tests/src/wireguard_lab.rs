//! The lab's WireGuard mode: the device reaches the router through a real WireGuard tunnel,
//! set up exactly as the worked example in `docs/deployment.md` says.
//!
//! ```text
//!  <lab>-dev                                   <lab>-rtr (sshgw on wg0)
//!  wg0 100.100.0.7, fd00:100::7  ==UDP 51820==  wg0 100.100.0.1/24, fd00:100::1/64
//!  d0  100.96.0.7 (underlay)     -------------  r0  100.96.0.1 (underlay)
//!  203.0.113.0/24, 2001:db8:1::/64 via wg0        nftables ruleset `inet sshgw`
//! ```
//!
//! The example's blocks (the `<!-- wireguard-example: NAME -->` markers in the page) are
//! compiled into the harness and used as written: only the key placeholders, the
//! `/etc/wireguard/` directory and `router.example.net` are replaced. A change to the page
//! changes what the tests run, and a block the harness cannot use fails them.
//!
//! ```ignore
//! let wg = WireGuardLab::up(lab, "")?;                  // steps 2-5: keys, tunnels, firewall
//! let cfg = wireguard_gateway_config()?;                // steps 6-7: interfaces, device table
//! let conn = lab.ssh(Family::V4.audited()).bind(jdoe(Family::V4)).ssh_connection()?;
//! let drops = forward_drops(lab)?;                      // the forward rule's counters
//! let other = OtherDevice::new(lab)?;                   // a second device namespace (dev2)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::gateway::GatewayConfig;
use crate::netns::Netns;
use crate::topology::{Family, Lab, addr};
use crate::wireguard::{WG_TIMEOUT, WgHost, WgKey};

/// `docs/deployment.md`, compiled in.
const DEPLOYMENT_MD: &str = include_str!("../../docs/deployment.md");

/// The tunnel interface on the router and on the device.
pub const WG_IF: &str = "wg0";
/// The router's WireGuard port.
pub const WG_PORT: u16 = 51820;
/// The nftables table of the example.
pub const NFT_TABLE: &str = "sshgw";

/// Tunnel addresses of the example.
pub mod tunnel {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 0, 1);
    pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
    /// laptop-jdoe, in the example's device table.
    pub const JDOE_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 0, 7);
    pub const JDOE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 7);
    /// A second device (laptop-bob) that tests add.
    pub const BOB_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 0, 9);
    pub const BOB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 9);
}

fn pick(fam: Family, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
    match fam {
        Family::V4 => IpAddr::V4(v4),
        Family::V6 => IpAddr::V6(v6),
    }
}

/// laptop-jdoe's tunnel address.
pub fn jdoe(fam: Family) -> IpAddr {
    pick(fam, tunnel::JDOE_V4, tunnel::JDOE_V6)
}

/// laptop-bob's tunnel address.
pub fn bob(fam: Family) -> IpAddr {
    pick(fam, tunnel::BOB_V4, tunnel::BOB_V6)
}

/// The fenced block that follows `<!-- wireguard-example: NAME -->` in docs/deployment.md.
pub fn example_block(name: &str) -> Result<String> {
    let marker = format!("<!-- wireguard-example: {name} -->");
    let mut lines = DEPLOYMENT_MD
        .lines()
        .skip_while(|l| l.trim() != marker)
        .skip(1);
    let fence = lines
        .next()
        .with_context(|| format!("docs/deployment.md has no marker {marker:?}"))?;
    ensure!(
        fence.starts_with("```"),
        "docs/deployment.md: {marker:?} is not followed by a fenced block"
    );
    let mut block = String::new();
    for line in lines {
        if line.starts_with("```") {
            return Ok(block);
        }
        block.push_str(line);
        block.push('\n');
    }
    bail!("docs/deployment.md: the block after {marker:?} is not closed")
}

/// `template` with each `(from, to)` replaced (every `from` must occur); fails if a
/// `<placeholder>` is left over.
pub fn render(template: &str, subs: &[(&str, &str)]) -> Result<String> {
    let mut text = template.to_owned();
    for (from, to) in subs {
        ensure!(
            text.contains(from),
            "the example block has no {from:?}:\n{template}"
        );
        text = text.replace(from, to);
    }
    // The config blocks contain no `<` of their own: any left is a placeholder.
    if let Some(line) = text.lines().find(|l| l.contains('<')) {
        bail!("a placeholder is left in the rendered block: {line:?}\n{text}");
    }
    Ok(text)
}

/// A `[Peer]` section for a router config.
pub fn peer_section(comment: &str, public: &str, allowed_ips: &str) -> String {
    format!("\n[Peer]\n# {comment}\nPublicKey = {public}\nAllowedIPs = {allowed_ips}\n")
}

/// The key commands of step 2 make `wg0.key` (0600) and `wg0.pub`; [`WgHost::genkey`] does
/// the same. Fails if the page says otherwise.
fn example_keys(host: &WgHost) -> Result<WgKey> {
    let block = example_block("keys")?;
    for line in [
        "umask 077",
        "wg genkey > /etc/wireguard/wg0.key",
        "wg pubkey < /etc/wireguard/wg0.key > /etc/wireguard/wg0.pub",
    ] {
        ensure!(
            block.lines().any(|l| l.trim() == line),
            "the example's key step no longer says {line:?}:\n{block}"
        );
    }
    host.genkey(WG_IF)
}

/// `/etc/wireguard/` of the example, as the directory of `host`.
fn etc_wireguard(host: &WgHost) -> String {
    format!("{}/", host.dir().display())
}

/// The device table of step 7.
pub fn example_devices() -> Result<Value> {
    let block = example_block("devices.json")?;
    serde_json::from_str(&block).with_context(|| format!("the example's devices.json:\n{block}"))
}

/// `[datapath] interfaces` of step 6.
pub fn example_interfaces() -> Result<Vec<String>> {
    let block = example_block("sshgw.toml")?;
    let line = block
        .lines()
        .find_map(|l| l.trim().strip_prefix("interfaces ="))
        .with_context(|| format!("the example's sshgw.toml sets no interfaces:\n{block}"))?;
    // A TOML array of basic strings is also JSON.
    serde_json::from_str(line.trim())
        .with_context(|| format!("the example's interfaces = {line:?}"))
}

/// The daemon's configuration for the example: steps 6 and 7 on the harness defaults.
pub fn wireguard_gateway_config() -> Result<GatewayConfig> {
    let interfaces = example_interfaces()?;
    let names: Vec<&str> = interfaces.iter().map(String::as_str).collect();
    Ok(GatewayConfig::default()
        .interfaces(&names)
        .devices(example_devices()?))
}

/// The router and the device of the example, each with its `wg0` up.
pub struct WireGuardLab {
    pub router: WgHost,
    pub device: WgHost,
    pub router_key: WgKey,
    pub device_key: WgKey,
}

impl WireGuardLab {
    /// Steps 2-5 of the example: keys on both sides, the router's `wg0` (with
    /// `extra_router_config` appended, e.g. more `[Peer]` sections), the device's `wg0`, the
    /// router's nftables ruleset and `rp_filter = 1`.
    pub fn up(lab: &Lab, extra_router_config: &str) -> Result<Self> {
        let router = WgHost::new(lab, &lab.rtr, "rtr")?;
        let device = WgHost::new(lab, &lab.dev, "dev")?;
        let router_key = example_keys(&router)?;
        let device_key = example_keys(&device)?;

        let router_conf = render(
            &example_block("router-wg0.conf")?,
            &[
                ("/etc/wireguard/", &etc_wireguard(&router)),
                ("<public key of laptop-jdoe>", &device_key.public),
            ],
        )?;
        router.write_config(WG_IF, &(router_conf + extra_router_config))?;
        router.up(WG_IF)?;

        let router_endpoint = addr::RTR_LAN_V4.to_string();
        let device_conf = render(
            &example_block("device-wg0.conf")?,
            &[
                ("/etc/wireguard/", &etc_wireguard(&device)),
                ("<public key of the router>", &router_key.public),
                ("router.example.net", &router_endpoint),
            ],
        )?;
        device.write_config(WG_IF, &device_conf)?;
        device.up(WG_IF)?;

        load_nftables(lab, &example_block("nftables")?)?;
        lab.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
        Ok(Self {
            router,
            device,
            router_key,
            device_key,
        })
    }

    /// Keeps the WireGuard processes running after this is dropped (a lab that stays up).
    pub fn keep(&mut self) {
        self.router.keep();
        self.device.keep();
    }

    /// Diagnostics of both ends, for failure messages.
    pub fn diag(&self) -> String {
        format!(
            "{}\n{}",
            self.router.log_tail(WG_IF),
            self.device.log_tail(WG_IF)
        )
    }
}

/// `nft -f FILE` in the router namespace with `ruleset` written to the lab dir.
pub fn load_nftables(lab: &Lab, ruleset: &str) -> Result<()> {
    let dir = lab.new_subdir("nftables")?;
    let file = dir.join("nftables.conf");
    std::fs::write(&file, ruleset).with_context(|| format!("writing {}", file.display()))?;
    nft(lab, &["-f", &file.to_string_lossy()]).map(drop)
}

/// `nft ARGS` in the router namespace (bounded); fails unless it exits 0. Returns stdout.
pub fn nft(lab: &Lab, args: &[&str]) -> Result<String> {
    let mut cmd = lab.rtr.exec_command("nft");
    cmd.args(args);
    let what = format!("nft {}", args.join(" "));
    Ok(lab
        .procs()
        .run_quiet(&what, &mut cmd, WG_TIMEOUT)?
        .check(&what)?
        .stdout)
}

/// Packets counted by the `counter` rules of chain `inet TABLE CHAIN` in the router.
pub fn chain_counter(lab: &Lab, table: &str, chain: &str) -> Result<u64> {
    let out = nft(lab, &["-j", "list", "chain", "inet", table, chain])?;
    let doc: Value = serde_json::from_str(&out).with_context(|| format!("nft -j: {out}"))?;
    let items = doc["nftables"]
        .as_array()
        .with_context(|| format!("nft -j printed no nftables list: {out}"))?;
    Ok(items
        .iter()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|expr| expr["counter"]["packets"].as_u64())
        .sum())
}

/// Packets the example's forward rule dropped (SSH to an audited server that sshgw did not
/// take).
pub fn forward_drops(lab: &Lab) -> Result<u64> {
    chain_counter(lab, NFT_TABLE, "forward")
}

/// A second device in a namespace of its own (`<lab>-dev2`), with its own underlay veth to
/// the router (`d0` 100.96.2.9/24 -- `r2` 100.96.2.1/24) and a WireGuard host.
pub struct OtherDevice {
    // Dropped first: it stops the processes inside the namespace.
    pub host: WgHost,
    pub key: WgKey,
    pub ns: Netns,
}

/// The second device's underlay address and the router's on that link.
pub const OTHER_UNDERLAY: Ipv4Addr = Ipv4Addr::new(100, 96, 2, 9);
pub const OTHER_UNDERLAY_ROUTER: Ipv4Addr = Ipv4Addr::new(100, 96, 2, 1);

impl OtherDevice {
    pub fn new(lab: &Lab) -> Result<Self> {
        let ns = Netns::create(&format!("{}-dev2", lab.name()))?;
        ns.ip(&[
            "link",
            "add",
            "d0",
            "type",
            "veth",
            "peer",
            "name",
            "r2",
            "netns",
            lab.rtr.name(),
        ])?;
        ns.ip(&["addr", "add", &format!("{OTHER_UNDERLAY}/24"), "dev", "d0"])?;
        ns.ip(&["link", "set", "d0", "up"])?;
        lab.rtr.ip(&[
            "addr",
            "add",
            &format!("{OTHER_UNDERLAY_ROUTER}/24"),
            "dev",
            "r2",
        ])?;
        lab.rtr.ip(&["link", "set", "r2", "up"])?;
        let host = WgHost::new(lab, &ns, "dev2")?;
        let key = host.genkey(WG_IF)?;
        Ok(Self { host, key, ns })
    }

    /// Writes `config` as the device's `wg0.conf` (its `/etc/wireguard/` replaced) and brings
    /// it up.
    pub fn up(&self, config: &str) -> Result<()> {
        let text = config.replace("/etc/wireguard/", &etc_wireguard(&self.host));
        self.host.write_config(WG_IF, &text)?;
        self.host.up(WG_IF)
    }
}
