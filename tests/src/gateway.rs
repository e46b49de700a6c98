//! The sshgw daemon under test, run in the lab's `rtr` namespace (or the router of another
//! site, [`GatewayConfig::site`]).
//!
//! The binary comes from `$SSHGW_BIN` (absolute path), falling back to
//! `<workspace>/target/debug/sshgw`. The harness writes `config.toml`, `state/devices.json` and
//! `state/policies.json` and runs
//! `sshgw run --config CONFIG --log-format text` entered into `rtr` with `setns` only (never
//! `ip netns exec`, which would hide the host's `/sys/fs/bpf`).
//!
//! The daemon's state dir is per lab (`<lab dir>/sshgw-state`), shared by every [`Gateway`]
//! of the lab like the persistent state of a real router: its CA keys (`ca/`) are created by
//! [`Lab::sshgw_ca`] before sshd starts (sshd must trust the user CA) and its `known_hosts`
//! survives restarts. Config files and the control socket are per [`Gateway`].
//!
//! A gateway on the second site ([`Lab::add_site`], [`GatewayConfig::site`]) is another router:
//! its own state dir `<lab dir>/sshgw-state-site2` (with a copy of the lab's `ca/`, so the lab
//! sshd trusts it too), its own pin directory `/sys/fs/bpf/<lab name>-site2` and its own
//! device table ([`site_devices`]); it runs at the same time as the first site's.
//!
//! ```ignore
//! let ca = lab.sshgw_ca()?;             // `sshgw ca user-key` / `known-hosts` (created once)
//! let sshd = lab.start_sshd_for_gateway()?; // trusts ca.user_ca_file
//! let mut gw = lab.gateway_with(GatewayConfig::default().ssh("port_forwarding = true"))?;
//! let mut gw = lab.gateway()?;          // files written, not started
//! let status = gw.start()?;             // spawn + poll `sshgw status --json` until running
//! gw.wait_for_intercept(Family::V4.audited(), 22, Duration::from_secs(5))?;
//! gw.kill()?;                           // SIGKILL (fail-closed checks)
//! gw.start()?;                          // restart with the same config
//! gw.stop()?;                           // SIGTERM + bounded wait
//!
//! // The control API (std-only HTTP/1.1 over the socket) and the CLI (`--socket` added):
//! let (code, json) = gw.api("PUT", "/v1/policies", Some(&policies))?;
//! let reply = gw.api_bytes("PUT", "/v1/policies", Some(b"{not json"))?; // reply.error()
//! let reply = gw.api_headers("PUT", "/v1/devices", &[("If-Match", "\"…\"")], Some(b))?;
//! gw.push_policies(&policies)?;         // `sshgw policy push FILE`, must succeed
//! let shown = gw.cli_json(&["policy", "show", "--json"])?;
//! let out = gw.cli(&["sessions", "kill", id])?; // a Finished: inspect the exit code
//! let live = gw.sessions(&["--active"])?;
//! gw.write_policies(&policies)?; gw.sighup()?; // edit on disk + reload
//! // Config knobs: GatewayConfig::default().datapath("unenrolled = \"pass\"").nofile(1024)
//! //     .control_group("nogroup").interfaces(&["r0", "r2"]).policies(p).devices(d)
//!
//! // A second router: its own daemon, device and `[cluster] router_id`.
//! let site2 = lab.add_site()?;
//! let cfg = GatewayConfig::default().site(SiteId::Second).router_id("rtr-b");
//! let mut gw2 = lab.gateway_with(cfg)?;
//! site2.ssh(Family::V4.audited()).run("echo $SSH_CONNECTION")?; // from `<lab>-dev2`
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::control::ApiReply;
use crate::netns::Netns;
use crate::process::{Finished, Proc, describe_status};
use crate::topology::{BPF_PIN_ROOT, Lab, SiteId, addr, host_port};
use crate::wait::poll_until;

/// Environment variable naming the sshgw binary (absolute path).
pub const SSHGW_BIN_ENV: &str = "SSHGW_BIN";

/// How long the daemon may take to report `"daemon": "running"`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval between readiness status queries.
pub const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long the daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for one `sshgw status` run.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The skb mark bit and routing table the datapath uses (for leftover checks).
pub const INTERCEPT_FWMARK: &str = "0x100";
pub const INTERCEPT_TABLE: &str = "100";

/// Log fragment of an intercepted connection.
pub const INTERCEPT_LOG: &str = "intercepted connection";

/// Resolves the sshgw binary: `$SSHGW_BIN` (must be an absolute path to an existing file), else
/// `<workspace>/target/debug/sshgw` if it exists.
pub fn sshgw_bin() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(SSHGW_BIN_ENV) {
        let p = PathBuf::from(&v);
        if !p.is_absolute() {
            bail!("{SSHGW_BIN_ENV}={} is not an absolute path", p.display());
        }
        if !p.is_file() {
            bail!(
                "{SSHGW_BIN_ENV}={} does not exist (build it with `cargo build -p sshgw`)",
                p.display()
            );
        }
        return Ok(p);
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sshgw");
    if fallback.is_file() {
        return Ok(fallback.canonicalize().unwrap_or(fallback));
    }
    bail!(
        "the sshgw binary was not found: set {SSHGW_BIN_ENV} to its absolute path \
         (e.g. {SSHGW_BIN_ENV}=$PWD/target/debug/sshgw after `cargo build -p sshgw`); \
         fallback {} does not exist",
        fallback.display()
    )
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
static BPFFS_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure the BPF filesystem is mounted at /sys/fs/bpf (in the host mount namespace, where
/// the daemon pins its objects); mounts it if not. Systemd hosts always have it; minimal
/// containers/VMs may not.
#[allow(unsafe_code)] // reason: statfs(2) through libc
pub fn ensure_bpffs() -> Result<()> {
    let _guard = BPFFS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = CString::new(BPF_PIN_ROOT).expect("no NUL");
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPF_PIN_ROOT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting the BPF filesystem at {BPF_PIN_ROOT}"))?;
    Ok(())
}

/// Finds bpftool (PATH, /usr/sbin, /usr/local/sbin) or fails with a clear message.
pub fn bpftool() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("bpftool"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("bpftool is not installed (install it with `cargo xtask prereqs` or `apt-get install bpftool`); it is needed to check that BPF links are gone"))
}

/// True if `bpftool link show id ID` finds the link.
pub fn bpf_link_exists(id: u32) -> Result<bool> {
    let out = Command::new(bpftool()?)
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .context("running bpftool")?;
    Ok(out.status.success())
}

/// The string field `key` of a JSON object (a session record, a file operation, …).
pub fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// The lab standard devices.json: device `laptop-jdoe` with the enrolled addresses on `r0`.
pub fn default_devices() -> Value {
    json!({"devices": [{
        "id": "laptop-jdoe",
        "addresses": ["100.96.0.7", "fd00:96::7"],
        "interface": "r0",
        "user": {"email": "jdoe@example.com", "groups": ["developers"]},
        "posture": ["disk-encryption"]
    }]})
}

/// The devices.json of a site's gateway: [`default_devices`] for the first site; for the
/// second, device `laptop-jdoe-2` (same user) with `dev2`'s enrolled addresses on its `r0`.
pub fn site_devices(site: SiteId) -> Value {
    match site {
        SiteId::First => default_devices(),
        SiteId::Second => json!({"devices": [{
            "id": "laptop-jdoe-2",
            "addresses": [addr::DEV2_ENROLLED_V4.to_string(), addr::DEV2_ENROLLED_V6.to_string()],
            "interface": crate::topology::iface::RTR_LAN,
            "user": {"email": "jdoe@example.com", "groups": ["developers"]},
            "posture": ["disk-encryption"]
        }]}),
    }
}

/// The lab standard policies.json: audit SSH to 203.0.113.10 and 2001:db8:1::10 on port 22.
pub fn default_policies() -> Value {
    json!({"policies": [{
        "id": "audit-lab",
        "name": "Audit lab server",
        "precedence": 10,
        "enabled": true,
        "action": "audit_ssh",
        "destinations": ["203.0.113.10/32", "2001:db8:1::10/128"],
        "ports": [22]
    }]})
}

/// What the harness writes for the daemon.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The site whose router runs the daemon (default: the first, `<lab>-rtr`).
    pub site: SiteId,
    /// `[datapath] interfaces`.
    pub interfaces: Vec<String>,
    /// `[datapath] ports`.
    pub ports: Vec<u16>,
    /// `[datapath] pin_dir`; None = the site's: `/sys/fs/bpf/<lab name>` for the first,
    /// `/sys/fs/bpf/<lab name>-site2` for the second.
    pub pin_dir: Option<PathBuf>,
    /// Extra lines of the `[datapath]` table (e.g. `unenrolled = "drop"`).
    pub datapath: Vec<String>,
    /// Top-level `control_group` (who besides root may use the control socket).
    pub control_group: Option<String>,
    /// Contents of `state/devices.json`.
    pub devices: Value,
    /// Contents of `state/policies.json`.
    pub policies: Value,
    /// Lines of the `[ssh]` table (e.g. `port_forwarding = true`); no table when empty.
    pub ssh: Vec<String>,
    /// Raw TOML appended to config.toml; must start with a `[table]` header (it follows the
    /// `[datapath]` and `[ssh]` tables).
    pub extra_toml: String,
    /// `--log-format` value.
    pub log_format: String,
    /// Extra environment for the daemon (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// `RLIMIT_NOFILE` (soft and hard) of the daemon, like `prlimit --nofile=N:N`; None:
    /// inherited.
    pub nofile: Option<u64>,
    /// Start the daemon with `ip netns exec` (a private mount namespace with a fresh
    /// `/sys`) instead of entering only the network namespace.
    pub ip_netns_exec: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            site: SiteId::First,
            interfaces: vec!["r0".to_owned()],
            ports: vec![22],
            pin_dir: None,
            datapath: Vec::new(),
            control_group: None,
            devices: default_devices(),
            policies: default_policies(),
            ssh: Vec::new(),
            extra_toml: String::new(),
            log_format: "text".to_owned(),
            env: Vec::new(),
            nofile: None,
            ip_netns_exec: false,
        }
    }
}

impl GatewayConfig {
    /// Adds a line to the `[ssh]` table, e.g. `ssh("upstream_host_keys = \"strict\"")`.
    pub fn ssh(mut self, line: &str) -> Self {
        self.ssh.push(line.to_owned());
        self
    }

    /// Adds a line to the `[datapath]` table, e.g. `datapath("unenrolled = \"drop\"")`.
    pub fn datapath(mut self, line: &str) -> Self {
        self.datapath.push(line.to_owned());
        self
    }

    /// Sets the top-level `control_group`.
    pub fn control_group(mut self, group: &str) -> Self {
        self.control_group = Some(group.to_owned());
        self
    }

    /// Replaces the device table written to `state/devices.json`.
    pub fn devices(mut self, devices: Value) -> Self {
        self.devices = devices;
        self
    }

    /// Replaces the policies written to `state/policies.json`.
    pub fn policies(mut self, policies: Value) -> Self {
        self.policies = policies;
        self
    }

    /// Replaces `[datapath] interfaces`.
    pub fn interfaces(mut self, names: &[&str]) -> Self {
        self.interfaces = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// Runs the daemon with `RLIMIT_NOFILE` = `limit` (soft and hard).
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Runs the daemon on `site`'s router, and replaces the device table with
    /// [`site_devices`]`(site)` (call [`GatewayConfig::devices`] after this one to change it).
    pub fn site(mut self, site: SiteId) -> Self {
        self.site = site;
        self.devices = site_devices(site);
        self
    }

    /// Appends `[cluster] router_id = "<id>"` to [`GatewayConfig::extra_toml`] (so
    /// `extra_toml` must not have a `[cluster]` table of its own).
    pub fn router_id(mut self, id: &str) -> Self {
        if !self.extra_toml.is_empty() && !self.extra_toml.ends_with('\n') {
            self.extra_toml.push('\n');
        }
        self.extra_toml
            .push_str(&format!("[cluster]\nrouter_id = {}\n", toml_str(id)));
        self
    }
}

/// The lab gateway's certificate authorities, as printed by `sshgw ca`.
#[derive(Debug, Clone)]
pub struct SshgwCa {
    /// `sshgw ca user-key`: `ssh-ed25519 AAAA... sshgw-user-ca`.
    pub user_ca_line: String,
    /// A file holding [`SshgwCa::user_ca_line`], for sshd's `TrustedUserCAKeys`.
    pub user_ca_file: PathBuf,
    /// `sshgw ca known-hosts`: `@cert-authority * ssh-ed25519 AAAA... sshgw-host-ca`.
    pub known_hosts_line: String,
    /// A file holding [`SshgwCa::known_hosts_line`], for a device's `UserKnownHostsFile`.
    pub known_hosts_file: PathBuf,
}

/// Deadline for `sshgw ca ...` (key generation and file I/O only).
pub const CA_TIMEOUT: Duration = Duration::from_secs(20);

/// A TOML basic string (JSON string escapes are a subset of TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// One attached interface in `sshgw status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct AttachedInterface {
    pub name: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// Datapath counters in `sshgw status --json`. Missing counters read as 0 (a stopped daemon
/// with nothing pinned prints `"counters": {}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub intercepted_syns: u64,
    pub intercepted_packets: u64,
    pub passed_packets: u64,
    pub passed_preexisting_packets: u64,
    pub dropped_while_down: u64,
    pub dropped_assign_failed: u64,
    pub dropped_unenrolled: u64,
    pub dropped_evasive: u64,
    pub dropped_syn_budget: u64,
    pub intercepted_syncookie_acks: u64,
    pub dropped_tunnel_ipip: u64,
    pub dropped_tunnel_gre: u64,
    pub dropped_tunnel_ipsec: u64,
    pub dropped_tunnel_other: u64,
    pub dropped_tunnel_udp: u64,
    pub dropped_stray_packets: u64,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `sshgw status --config F --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    /// `running` or `stopped`.
    pub daemon: String,
    #[serde(default)]
    pub pin_dir: Option<String>,
    pub pinned: bool,
    pub interfaces: Vec<AttachedInterface>,
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Absent counters (e.g. nothing pinned) read as zeros.
    #[serde(default)]
    pub counters: Counters,
    /// The whole JSON document.
    #[serde(skip)]
    pub raw: Value,
}

impl Status {
    pub fn is_running(&self) -> bool {
        self.daemon == "running"
    }

    /// Link ids of all attached interfaces.
    pub fn link_ids(&self) -> Vec<u32> {
        self.interfaces.iter().filter_map(|i| i.link_id).collect()
    }
}

/// The daemon's files and process; borrows the lab.
pub struct Gateway<'a> {
    lab: &'a Lab,
    /// The router namespace of the configured site.
    rtr: &'a Netns,
    bin: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    state_dir: PathBuf,
    control_socket: PathBuf,
    pin_dir: PathBuf,
    cfg: GatewayConfig,
    proc: Option<Proc>,
    runs: Vec<Proc>,
}

impl Lab {
    /// The lab gateway's state dir `<lab dir>/sshgw-state` (created on first use).
    pub fn sshgw_state_dir(&self) -> Result<PathBuf> {
        let dir = self.dir().join("sshgw-state");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The state dir of `site`'s gateway: [`Lab::sshgw_state_dir`] for the first site;
    /// `<lab dir>/sshgw-state-site2` for the second, created on first use with a copy of the
    /// lab's CA keys (`ca/`, made by [`Lab::sshgw_ca`]) so that the lab sshd trusts both.
    pub fn site_state_dir(&self, site: SiteId) -> Result<PathBuf> {
        if site == SiteId::First {
            return self.sshgw_state_dir();
        }
        let dir = self.dir().join("sshgw-state-site2");
        let ca = dir.join("ca");
        if !ca.exists() {
            self.sshgw_ca()?;
            let from = self.sshgw_state_dir()?.join("ca");
            let tmp = dir.join("ca.tmp");
            fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .with_context(|| format!("chmod 700 {}", tmp.display()))?;
            for entry in
                fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))?
            {
                let entry = entry?;
                // fs::copy keeps the mode (0600).
                fs::copy(entry.path(), tmp.join(entry.file_name())).with_context(|| {
                    format!("copying {} to {}", entry.path().display(), tmp.display())
                })?;
            }
            fs::rename(&tmp, &ca)
                .with_context(|| format!("renaming {} to {}", tmp.display(), ca.display()))?;
        }
        Ok(dir)
    }

    /// The lab gateway's CAs. The first call runs `sshgw ca user-key` and
    /// `sshgw ca known-hosts` with a minimal config on the lab state dir (no namespace is
    /// needed), which creates the CA keys the daemon will use; later calls return the cached
    /// answer.
    pub fn sshgw_ca(&self) -> Result<&SshgwCa> {
        if let Some(ca) = self.sshgw_ca_cell().get() {
            return Ok(ca);
        }
        let bin = sshgw_bin()?;
        let state_dir = self.sshgw_state_dir()?;
        let config = self.dir().join("sshgw-ca.toml");
        fs::write(
            &config,
            format!(
                "state_dir = {}\n\n[datapath]\ninterfaces = [\"{}\"]\n",
                toml_path(&state_dir),
                crate::topology::iface::RTR_LAN
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let ca_line = |what: &str| -> Result<String> {
            let mut cmd = Command::new(&bin);
            cmd.args(["ca", what, "--config"]).arg(&config);
            let out = self
                .procs()
                .run_quiet(&format!("sshgw ca {what}"), &mut cmd, CA_TIMEOUT)?
                .check(&format!("sshgw ca {what}"))?;
            let line = out.stdout.trim().to_owned();
            if line.lines().count() != 1 {
                bail!(
                    "sshgw ca {what} should print one line, got {:?}",
                    out.stdout
                );
            }
            Ok(line)
        };
        let user_ca_line = ca_line("user-key")?;
        let known_hosts_line = ca_line("known-hosts")?;
        let user_ca_file = self.dir().join("sshgw_user_ca.pub");
        let known_hosts_file = self.dir().join("sshgw_known_hosts");
        fs::write(&user_ca_file, format!("{user_ca_line}\n"))
            .with_context(|| format!("writing {}", user_ca_file.display()))?;
        fs::write(&known_hosts_file, format!("{known_hosts_line}\n"))
            .with_context(|| format!("writing {}", known_hosts_file.display()))?;
        let _ = self.sshgw_ca_cell().set(SshgwCa {
            user_ca_line,
            user_ca_file,
            known_hosts_line,
            known_hosts_file,
        });
        Ok(self.sshgw_ca_cell().get().expect("just set"))
    }

    /// Prepares the daemon with [`GatewayConfig::default`] (files written, not started).
    pub fn gateway(&self) -> Result<Gateway<'_>> {
        self.gateway_with(GatewayConfig::default())
    }

    /// Prepares the daemon with a custom configuration (files written, not started).
    pub fn gateway_with(&self, cfg: GatewayConfig) -> Result<Gateway<'_>> {
        let bin = sshgw_bin()?;
        ensure_bpffs()?;
        let site = self.site(cfg.site)?;
        let dir = self.new_subdir("sshgw")?;
        let state_dir = self.site_state_dir(cfg.site)?;
        let pin_dir = cfg
            .pin_dir
            .clone()
            .unwrap_or_else(|| self.pin_dir(site.pin_suffix()));
        self.remove_on_drop(&pin_dir);
        let gw = Gateway {
            lab: self,
            rtr: site.rtr,
            bin,
            config_path: dir.join("config.toml"),
            control_socket: dir.join("control.sock"),
            state_dir,
            pin_dir,
            dir,
            cfg,
            proc: None,
            runs: Vec::new(),
        };
        gw.write_files()?;
        Ok(gw)
    }

    /// [`Lab::gateway`] + [`Gateway::start`].
    pub fn start_gateway(&self) -> Result<Gateway<'_>> {
        let mut gw = self.gateway()?;
        gw.start()?;
        Ok(gw)
    }
}

impl<'a> Gateway<'a> {
    fn write_files(&self) -> Result<()> {
        let c = &self.cfg;
        let list = |items: Vec<String>| items.join(", ");
        let mut toml = format!(
            "state_dir = {}\ncontrol_socket = {}\n\n[datapath]\ninterfaces = [{}]\nports = [{}]\npin_dir = {}\n",
            toml_path(&self.state_dir),
            toml_path(&self.control_socket),
            list(c.interfaces.iter().map(|s| toml_str(s)).collect()),
            list(c.ports.iter().map(u16::to_string).collect()),
            toml_path(&self.pin_dir),
        );
        for line in &c.datapath {
            toml.push_str(line);
            toml.push('\n');
        }
        if let Some(group) = &c.control_group {
            // A top-level key: it must come before the first table.
            toml = format!("control_group = {}\n{toml}", toml_str(group));
        }
        if !c.ssh.is_empty() {
            toml.push_str("\n[ssh]\n");
            for line in &c.ssh {
                toml.push_str(line);
                toml.push('\n');
            }
        }
        if !c.extra_toml.is_empty() {
            toml.push('\n');
            toml.push_str(&c.extra_toml);
            toml.push('\n');
        }
        fs::write(&self.config_path, toml)
            .with_context(|| format!("writing {}", self.config_path.display()))?;
        self.write_devices(&c.devices)?;
        self.write_policies(&c.policies)?;
        Ok(())
    }

    /// Rewrites `state/devices.json`.
    pub fn write_devices(&self, devices: &Value) -> Result<()> {
        let p = self.state_dir.join("devices.json");
        fs::write(&p, serde_json::to_vec_pretty(devices)?)
            .with_context(|| format!("writing {}", p.display()))
    }

    /// Rewrites `state/policies.json`.
    pub fn write_policies(&self, policies: &Value) -> Result<()> {
        let p = self.state_dir.join("policies.json");
        fs::write(&p, serde_json::to_vec_pretty(policies)?)
            .with_context(|| format!("writing {}", p.display()))
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `<state_dir>/known_hosts`: the pinned host keys of the real servers.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.state_dir.join("known_hosts")
    }

    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The current (or last) daemon process.
    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// True if the daemon process is alive.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    /// The router namespace the daemon runs in (`rtr`, or the configured site's).
    pub fn rtr(&self) -> &'a Netns {
        self.rtr
    }

    /// A command running `sshgw ARGS` entered into `rtr` via setns.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.rtr.setns_command(&self.bin);
        cmd.args(args).env("RUST_BACKTRACE", "1");
        cmd
    }

    /// Spawns `sshgw run --config CONFIG --log-format FMT` in `rtr` without waiting for it.
    pub fn spawn(&mut self) -> Result<&Proc> {
        if self.is_running() {
            bail!("the daemon is already running");
        }
        let mut cmd = if self.cfg.ip_netns_exec {
            let mut cmd = self.rtr.exec_command(&self.bin);
            cmd.env("RUST_BACKTRACE", "1");
            cmd
        } else {
            self.command(&[])
        };
        cmd.args(["run", "--config"])
            .arg(&self.config_path)
            .args(["--log-format", &self.cfg.log_format]);
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        if let Some(limit) = self.cfg.nofile {
            set_nofile(&mut cmd, limit);
        }
        let label = match self.cfg.site {
            SiteId::First => "sshgw-run",
            SiteId::Second => "sshgw-site2-run",
        };
        let proc = self
            .lab
            .procs()
            .spawn(&format!("{label}{}", self.runs.len() + 1), &mut cmd)?;
        self.runs.push(proc.clone());
        Ok(self.proc.insert(proc))
    }

    /// Spawns the daemon and waits until `status` reports it running. Also used to restart
    /// after [`Gateway::kill`] / [`Gateway::stop`] with the same config.
    pub fn start(&mut self) -> Result<Status> {
        self.spawn()?;
        self.wait_ready(READY_TIMEOUT)
    }

    /// Stops (if running) and starts again with the same config.
    pub fn restart(&mut self) -> Result<Status> {
        if self.is_running() {
            self.stop()?;
        }
        self.start()
    }

    /// Polls `status` until it answers `"daemon": "running"`. Fails early if the daemon exits,
    /// and on timeout; both errors include the daemon log.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Status> {
        let proc = self
            .proc
            .as_ref()
            .ok_or_else(|| anyhow!("the daemon was never started"))?;
        let mut last = String::from("no status answer yet");
        poll_until(
            "sshgw status to report the daemon running",
            timeout,
            READY_POLL_INTERVAL,
            || {
                if let Some(st) = proc.try_status()? {
                    bail!("sshgw exited during startup ({})", describe_status(st));
                }
                match self.status() {
                    Ok(s) if s.is_running() => return Ok(Some(s)),
                    Ok(s) => last = format!("status says daemon={:?}: {}", s.daemon, s.raw),
                    Err(err) => last = format!("{err:#}"),
                }
                Ok(None)
            },
        )
        .with_context(|| {
            format!(
                "last status attempt: {last}\n--- sshgw log ---\n{}",
                proc.log_text().trim_end()
            )
        })
    }

    /// Runs `sshgw status --config CONFIG --json` in `rtr` (setns) and returns the JSON. A
    /// non-zero exit is accepted as long as stdout is a JSON document.
    pub fn status_json(&self) -> Result<Value> {
        let mut cmd = self.command(&["status", "--config"]);
        cmd.arg(&self.config_path).arg("--json");
        let out = self
            .lab
            .procs()
            .run_quiet("sshgw-status", &mut cmd, STATUS_TIMEOUT)?;
        serde_json::from_str(out.stdout.trim()).with_context(|| {
            format!(
                "sshgw status --json ({}) did not print JSON:\nstdout: {}\nstderr: {}",
                describe_status(out.status),
                out.stdout.trim_end(),
                out.stderr.trim_end()
            )
        })
    }

    /// [`Gateway::status_json`] parsed into [`Status`].
    pub fn status(&self) -> Result<Status> {
        let raw = self.status_json()?;
        let mut status: Status = serde_json::from_value(raw.clone())
            .with_context(|| format!("unexpected sshgw status JSON: {raw}"))?;
        status.raw = raw;
        Ok(status)
    }

    fn running_proc(&self) -> Result<&Proc> {
        self.proc
            .as_ref()
            .ok_or_else(|| anyhow!("the daemon was never started"))
    }

    /// SIGTERM and a bounded wait for the exit (SIGKILL + error on timeout).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let proc = self.running_proc()?;
        proc.terminate(STOP_TIMEOUT)
            .with_context(|| format!("--- sshgw log ---\n{}", proc.log_text().trim_end()))
    }

    /// SIGKILL (simulates a crash: nothing is cleaned up) and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.running_proc()?.kill()
    }

    /// The current run's log (stdout + stderr).
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Logs of every run, in order.
    pub fn all_logs(&self) -> String {
        self.runs
            .iter()
            .map(Proc::log_text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (bounded) until the current run logs `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.running_proc()?.wait_for_log(needle, timeout)
    }

    /// Waits (bounded) for a log line of the current run containing both
    /// `intercepted connection` and `orig_dst=<addr>:<port>`, and returns it.
    pub fn wait_for_intercept(&self, addr: IpAddr, port: u16, timeout: Duration) -> Result<String> {
        let needle = format!("orig_dst={}", host_port(addr, port));
        self.wait_for_log_line(&[INTERCEPT_LOG, &needle], timeout)
    }

    /// Waits (bounded) for a log line of the current run containing every one of
    /// `needles`, and returns it.
    pub fn wait_for_log_line(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        let proc = self.running_proc()?;
        poll_until(
            &format!("a daemon log line with {needles:?}"),
            timeout,
            READY_POLL_INTERVAL,
            || {
                Ok(proc
                    .log_text()
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_owned))
            },
        )
        .with_context(|| format!("--- sshgw log ---\n{}", proc.log_text().trim_end()))
    }

    /// Waits (bounded) until the current run has logged `needle` more than `before` times,
    /// and returns the newest such line.
    pub fn wait_for_nth_log(
        &self,
        needle: &str,
        before: usize,
        timeout: Duration,
    ) -> Result<String> {
        poll_until(
            &format!("the daemon to log {needle:?} (seen {before} times before)"),
            timeout,
            READY_POLL_INTERVAL,
            || {
                let log = self.log();
                Ok((log.matches(needle).count() > before)
                    .then(|| log.lines().rev().find(|l| l.contains(needle)))
                    .flatten()
                    .map(str::to_owned))
            },
        )
        .with_context(|| format!("--- sshgw log ---\n{}", self.log()))
    }

    /// Describes routing state the datapath leaves in `rtr` when it should be gone: `ip rule`
    /// entries with the intercept fwmark and routes in the intercept table, for both families.
    /// Empty = clean.
    pub fn routing_leftovers(&self) -> Result<Vec<String>> {
        let rtr = self.rtr;
        let mut found = Vec::new();
        for fam in ["-4", "-6"] {
            let rules = rtr.ip(&[fam, "rule", "show"])?;
            found.extend(
                rules
                    .lines()
                    .filter(|l| l.contains(&format!("fwmark {INTERCEPT_FWMARK}")))
                    .map(|l| format!("ip {fam} rule: {}", l.trim())),
            );
            let out = rtr.ip_output(&[fam, "route", "show", "table", INTERCEPT_TABLE])?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!(
                    "ip {fam} route show table {INTERCEPT_TABLE} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            found.extend(
                stdout
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("ip {fam} route table {INTERCEPT_TABLE}: {}", l.trim())),
            );
        }
        Ok(found)
    }
}

/// Sets `RLIMIT_NOFILE` (soft and hard) for `cmd` before it executes.
#[allow(unsafe_code)] // reason: pre_exec with setrlimit(2) in the child
pub fn set_nofile(cmd: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit is async-signal-safe; `rlim` is copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Deadline of one control API request or CLI command (a push of 10,000 devices included).
pub const API_TIMEOUT: Duration = Duration::from_secs(120);

static PUSH_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The control API and the CLI that talks to it.
impl Gateway<'_> {
    /// `<state_dir>/policies.json`.
    pub fn policies_path(&self) -> PathBuf {
        self.state_dir.join("policies.json")
    }

    /// `<state_dir>/devices.json`.
    pub fn devices_path(&self) -> PathBuf {
        self.state_dir.join("devices.json")
    }

    /// One HTTP request on the control socket with a raw body (see [`crate::control`]).
    pub fn api_bytes(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<ApiReply> {
        crate::control::request(&self.control_socket, method, path, body, API_TIMEOUT)
    }

    /// [`Gateway::api_bytes`] with extra header lines (e.g. `If-Match`).
    pub fn api_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<ApiReply> {
        crate::control::request_with(
            &self.control_socket,
            method,
            path,
            headers,
            body,
            API_TIMEOUT,
            &mut || (),
        )
    }

    /// One HTTP request on the control socket with a JSON body; returns the status and the
    /// JSON reply (an error if the reply is not JSON).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let reply = self.api_bytes(method, path, bytes.as_deref())?;
        let json = reply.json()?;
        Ok((reply.status, json))
    }

    /// Runs `sshgw ARGS` (no socket added; e.g. `policy check`), bounded by [`API_TIMEOUT`].
    /// A non-zero exit is not an error here.
    pub fn sshgw(&self, args: &[&str]) -> Result<Finished> {
        let mut cmd = self.command(args);
        self.lab
            .procs()
            .run_quiet(&format!("sshgw {}", args.join(" ")), &mut cmd, API_TIMEOUT)
    }

    /// Runs `sshgw ARGS --socket <control socket>`. A non-zero exit is not an error here.
    pub fn cli(&self, args: &[&str]) -> Result<Finished> {
        let socket = self.control_socket.to_string_lossy().into_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--socket", &socket]);
        self.sshgw(&all)
    }

    /// [`Gateway::cli`] with standard input read from `stdin` (for `push -`).
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &Path) -> Result<Finished> {
        let socket = self.control_socket.to_string_lossy().into_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--socket", &socket]);
        let mut cmd = self.command(&all);
        let io = crate::process::Io {
            stdin: Some(stdin.to_owned()),
            stdout: None,
        };
        self.lab.procs().run_io(
            &format!("sshgw {}", args.join(" ")),
            &mut cmd,
            API_TIMEOUT,
            &io,
        )
    }

    /// [`Gateway::cli`] that must succeed and print JSON (add `--json` to `args`).
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = self
            .cli(args)?
            .check(&format!("sshgw {}", args.join(" ")))?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("sshgw {} printed no JSON: {:?}", args.join(" "), out.stdout))
    }

    /// Writes `doc` to a fresh file in the gateway dir and returns its path.
    pub fn write_input(&self, label: &str, doc: &Value) -> Result<PathBuf> {
        let n = PUSH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{label}-{n}.json"));
        fs::write(&path, serde_json::to_vec_pretty(doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `sshgw policy push FILE` with `policies` written to a file; must succeed.
    pub fn push_policies(&self, policies: &Value) -> Result<Finished> {
        let file = self.write_input("policies", policies)?;
        self.cli(&["policy", "push", &file.to_string_lossy()])?
            .check("sshgw policy push")
    }

    /// `sshgw devices push FILE` with `devices` written to a file; must succeed.
    pub fn push_devices(&self, devices: &Value) -> Result<Finished> {
        let file = self.write_input("devices", devices)?;
        self.cli(&["devices", "push", &file.to_string_lossy()])?
            .check("sshgw devices push")
    }

    /// Sends SIGHUP to the running daemon (reload the state files).
    pub fn sighup(&self) -> Result<()> {
        self.running_proc()?
            .signal(nix::sys::signal::Signal::SIGHUP)
    }

    /// `sshgw sessions ARGS --json`: the session records.
    pub fn sessions(&self, args: &[&str]) -> Result<Vec<Value>> {
        let mut all = vec!["sessions"];
        all.extend_from_slice(args);
        all.push("--json");
        let v = self.cli_json(&all)?;
        v.get("sessions")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| anyhow!("sshgw sessions --json has no \"sessions\" list: {v}"))
    }

    /// The ids of every session in the log.
    pub fn session_ids(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .sessions(&[])?
            .iter()
            .filter_map(|s| str_field(s, "id").map(str::to_owned))
            .collect())
    }

    /// `sshgw sessions show ID --json`.
    pub fn session(&self, id: &str) -> Result<Value> {
        self.cli_json(&["sessions", "show", id, "--json"])
    }

    /// Waits (bounded) until a session record satisfying `pred` is in the log (`sessions`
    /// with `args`, e.g. `--active`) and returns it.
    pub fn wait_for_session(
        &self,
        args: &[&str],
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let mut last = Vec::new();
        poll_until(what, timeout, READY_POLL_INTERVAL, || {
            last = self.sessions(args)?;
            Ok(last.iter().find(|s| pred(s)).cloned())
        })
        .with_context(|| format!("sessions seen last: {last:#?}"))
    }

    /// Waits (bounded) until `sessions show ID --json` has an end time and a close reason,
    /// and returns the record.
    pub fn wait_session_closed(&self, id: &str, timeout: Duration) -> Result<Value> {
        let mut last = Value::Null;
        poll_until(
            &format!("session {id} to be closed in the log"),
            timeout,
            Duration::from_millis(50),
            || {
                last = self.session(id)?;
                Ok(
                    (!last["close_reason"].is_null() && !last["ended_at"].is_null())
                        .then(|| last.clone()),
                )
            },
        )
        .with_context(|| format!("last record: {last:#}"))
    }

    /// How many times the current run has logged `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }
}
