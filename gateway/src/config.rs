//! The daemon's TOML configuration (`sshgw run --config FILE`).
//!
//! Later features add sections and fields; existing names never change meaning.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/sshgw/control.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sshgw";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Persistent state: device table, policies, CA keys, session log.
    pub state_dir: PathBuf,
    /// Unix socket of the local control API.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Group whose members may use the control socket (besides root).
    #[serde(default)]
    pub control_group: Option<String>,
    /// On stop, sessions get this long to end by themselves before they are closed.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
    pub datapath: DatapathConfig,
    #[serde(default)]
    pub ssh: SshConfig,
    #[serde(default)]
    pub recording: RecordingConfig,
    #[serde(default)]
    pub sessions: SessionsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Object storage for recordings and session records; none keeps them only here.
    #[serde(default)]
    pub storage: Option<StorageConfig>,
    /// The central PostgreSQL index the outbox is shipped to; none keeps it here.
    #[serde(default)]
    pub central: Option<CentralConfig>,
    /// SIEM exporters fed from the outbox.
    #[serde(default)]
    pub export: ExportConfig,
    /// The auditor's web console (`sshgw console`); the daemon ignores it.
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// `sshgw console` (docs/console.md). It never takes the recording private key: auditors
/// open that in their browser.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Where it listens (default 127.0.0.1:8080; `--listen` overrides). Any address other
    /// than loopback needs `tls_cert` and `tls_key`.
    pub listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain and private key of the console's HTTPS listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA of client certificates: with it, every client must present one it signed,
    /// and such a client needs no access token.
    pub client_ca: Option<PathBuf>,
    /// Refused: named so that the error says why (see [`ConsoleConfig::validate`]).
    private_key: Option<toml::Value>,
    private_key_file: Option<toml::Value>,
    recording_private_key: Option<toml::Value>,
}

impl ConsoleConfig {
    fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("private_key", &self.private_key),
            ("private_key_file", &self.private_key_file),
            ("recording_private_key", &self.recording_private_key),
        ] {
            if value.is_some() {
                bail!(
                    "console.{name}: the console never takes the recording private key; auditors \
                     open it in their browser, where it stays (remove this setting and keep the \
                     key off the router)"
                );
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("console.tls_cert and console.tls_key: set both or neither");
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            bail!("console.client_ca: client certificates need TLS (console.tls_cert and tls_key)");
        }
        Ok(())
    }
}

/// The central PostgreSQL index (docs/many-routers.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// `postgres://ROLE@HOST:PORT/DB?sslmode=…`; `sslmode` is `verify-full` (the default),
    /// `require` (verified like `verify-full`) or `disable`; `sslrootcert=FILE` names the CA.
    pub postgres: String,
    /// The role's password (mode 0600); else the URL's, else none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Outbox rows applied per PostgreSQL transaction.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: u32,
}

fn default_batch_rows() -> u32 {
    500
}

/// `[export]`: what SIEM events carry, and where they go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Exec command lines (and subsystem names) in the events; `false` leaves them out.
    pub include_commands: bool,
    /// File paths of file operations (and recording paths) in the events.
    pub include_paths: bool,
    pub otlp: Option<OtlpConfig>,
    pub syslog: Option<SyslogConfig>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            include_commands: true,
            include_paths: true,
            otlp: None,
            syslog: None,
        }
    }
}

/// OpenTelemetry logs over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL; logs go to `<endpoint>/v1/logs`.
    pub endpoint: String,
    /// A CA bundle (PEM) for an `https://` endpoint; else the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// RFC 5424 syslog over TCP, octet-counted (RFC 6587), optionally TLS (RFC 5425).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `HOST:PORT`.
    pub address: String,
    #[serde(default)]
    pub tls: bool,
    /// A CA bundle (PEM) that signs the receiver's certificate; else the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name the receiver's certificate must carry; default: the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// This router among several: its id names its objects (and, later, its central rows).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Required once `[storage]` is set: 1 to 63 of `A-Z a-z 0-9 . _ -`, not starting with
    /// a dot.
    pub router_id: Option<String>,
}

/// S3-compatible object storage (docs/configuration.md, docs/deployment.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `https://…` (or `http://…` for a store on the same host or a trusted link).
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Key prefix before `<router_id>/…`; empty for none.
    #[serde(default)]
    pub prefix: String,
    /// `access_key_id=…` and `secret_access_key=…` lines (mode 0600); without it the
    /// environment's `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` are used.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Delete a recording's local copy once the store confirms its size and checksum.
    #[serde(default)]
    pub delete_local_after_upload: bool,
    /// Past this many MiB awaiting upload, new recorded sessions get
    /// `recording.on_recording_failure`; 0 means no limit.
    #[serde(default = "default_max_spool_mb")]
    pub max_spool_mb: u64,
    /// Files larger than this many MiB go up in parts of this size (at least 5).
    #[serde(default = "default_part_size_mb")]
    pub part_size_mb: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_max_spool_mb() -> u64 {
    1024
}

fn default_part_size_mb() -> u64 {
    16
}

impl CentralConfig {
    fn validate(&self) -> Result<()> {
        if !(self.postgres.starts_with("postgres://") || self.postgres.starts_with("postgresql://"))
        {
            bail!("central.postgres: not a postgres:// URL");
        }
        if !(1..=10_000).contains(&self.batch_rows) {
            bail!("central.batch_rows: must be between 1 and 10000");
        }
        Ok(())
    }
}

impl ExportConfig {
    fn validate(&self) -> Result<()> {
        if let Some(otlp) = &self.otlp
            && !(otlp.endpoint.starts_with("http://") || otlp.endpoint.starts_with("https://"))
        {
            bail!(
                "export.otlp.endpoint: {:?} is not an http:// or https:// URL",
                otlp.endpoint
            );
        }
        if let Some(syslog) = &self.syslog {
            let port_ok = syslog
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                bail!(
                    "export.syslog.address: {:?} is not HOST:PORT",
                    syslog.address
                );
            }
        }
        Ok(())
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<()> {
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            bail!(
                "storage.endpoint: {:?} is not an http:// or https:// URL",
                self.endpoint
            );
        }
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            bail!(
                "storage.bucket: {:?} is not an S3 bucket name (3 to 63 of a-z 0-9 . -)",
                self.bucket
            );
        }
        let prefix_ok = self.prefix.split('/').all(|part| {
            !part.is_empty() && part != "." && part != ".." && part.chars().all(key_char)
        });
        if !self.prefix.is_empty() && !prefix_ok {
            bail!(
                "storage.prefix: {:?} must be path segments of A-Z a-z 0-9 . _ - separated by single slashes, with no leading or trailing slash",
                self.prefix
            );
        }
        if !(5..=128).contains(&self.part_size_mb) {
            bail!(
                "storage.part_size_mb: must be between 5 (S3's smallest part) and 128 (a part is held in memory while it is sent)"
            );
        }
        Ok(())
    }
}

/// Characters sshgw puts in object keys and router ids.
pub fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// What one device, and all of them together, may hold at once (docs/configuration.md).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Intercepted connections open at once, all devices together.
    pub max_connections: usize,
    /// Intercepted connections open at once from one device.
    pub max_connections_per_device: usize,
    /// Connections that have not logged in yet, all devices together.
    pub max_preauth: usize,
    /// Connections that have not logged in yet, from one device.
    pub max_preauth_per_device: usize,
    /// Seconds a connection has for its banner, key exchange and login.
    pub preauth_grace_secs: u64,
    /// Channels (sessions, forwards) open at once on one connection.
    pub max_channels_per_connection: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 8192,
            max_connections_per_device: 64,
            max_preauth: 256,
            max_preauth_per_device: 16,
            preauth_grace_secs: 20,
            max_channels_per_connection: 64,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<()> {
        let fields = [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_device",
                self.max_connections_per_device,
            ),
            ("max_preauth", self.max_preauth),
            ("max_preauth_per_device", self.max_preauth_per_device),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection,
            ),
        ];
        for (name, value) in fields {
            if value == 0 {
                bail!("limits.{name}: must be at least 1");
            }
        }
        if self.max_connections_per_device > self.max_connections {
            bail!("limits.max_connections_per_device: must not exceed limits.max_connections");
        }
        if self.max_preauth_per_device > self.max_preauth {
            bail!("limits.max_preauth_per_device: must not exceed limits.max_preauth");
        }
        if !(1..=600).contains(&self.preauth_grace_secs) {
            bail!("limits.preauth_grace_secs: must be between 1 and 600");
        }
        Ok(())
    }
}

/// The session log (`<state_dir>/sessions.db`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// What happens to new connections while the session log cannot be written.
    pub on_log_failure: LogFailure,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFailure {
    /// Refuse new connections with a message, and end a session whose record cannot be
    /// written, until the log can be written again.
    #[default]
    Refuse,
    /// Carry on; the records wait in memory (bounded) until the log recovers.
    Allow,
}

/// Prometheus metrics. They are always at `/metrics` on the control socket.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Also serve `/metrics` on this TCP address (no authentication: bind it to a
    /// management address).
    pub listen: Option<std::net::SocketAddr>,
}

/// Encrypted session recording (for policies with `command_logging`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// The operator's public key (`sshgw recording keygen` writes NAME.pub). Can also be
    /// replaced at run time with `sshgw recording set-key`.
    pub public_key_file: Option<PathBuf>,
    /// Where recordings go (default: `<state_dir>/recordings`).
    pub dir: Option<PathBuf>,
    /// What happens when a session that must be recorded cannot be.
    pub on_recording_failure: RecordingFailure,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingFailure {
    /// Refuse the session (or end it) with a message.
    #[default]
    Refuse,
    /// Carry on unrecorded, logging the failure.
    Allow,
}

/// How long session records and recordings are kept (both are removed together).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Sessions older than this many days are removed; 0 keeps them forever.
    pub max_age_days: u64,
    /// When the log and recordings together exceed this many MiB, the oldest sessions
    /// are removed; 0 means no limit.
    pub max_total_mb: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_days: 90,
            max_total_mb: 10 * 1024,
        }
    }
}

/// The SSH relay: how sshgw talks to devices and to the real servers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Checking of the real servers' host keys against `known_hosts` in the state dir.
    pub upstream_host_keys: HostKeyMode,
    /// Relay `direct-tcpip` (-L) and `tcpip-forward` (-R). Off: forwarding bypasses recording.
    pub port_forwarding: bool,
    /// Relay agent forwarding (-A).
    pub agent_forwarding: bool,
    /// Seconds allowed for the TCP connect and SSH handshake to the real server.
    pub connect_timeout_secs: u64,
    /// Lifetime of minted user certificates (at most 120 s).
    pub certificate_lifetime_secs: u64,
    /// Extra host-certificate principals per destination address, e.g.
    /// `{ "203.0.113.10" = ["db1.example.com"] }`.
    pub host_names: std::collections::BTreeMap<std::net::IpAddr, Vec<String>>,
    /// Seconds between keepalives to an idle device (replaces an idle timeout).
    pub keepalive_secs: u64,
    /// Environment variables a device may not set (`env` requests): exact names, or a
    /// prefix ending in `*`. Whatever is allowed is relayed and logged with the program.
    pub deny_env: Vec<String>,
    /// Seconds a relayed channel may hold data for a peer whose window is open without
    /// passing any of it on, before the stall watchdog logs it (docs/relay.md).
    pub stall_warning_secs: u64,
    /// Ciphers offered to devices. The client's order picks among them (RFC 4253), so
    /// this list decides only which ones are allowed: see docs/configuration.md.
    pub device_ciphers: Vec<String>,
    /// Ciphers asked of the real servers, most preferred first (sshgw is the client on
    /// that leg, so its order wins).
    pub upstream_ciphers: Vec<String>,
    /// What the user certificate's principal is made of: the email's local part (as
    /// Cloudflare does) or the whole address.
    pub principal: PrincipalMode,
    /// Principals no device may get: a device table that would give one of them to a user
    /// is refused. Compared without regard to ASCII case.
    pub reserved_principals: Vec<String>,
}

/// How a device's email becomes the principal of its user certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalMode {
    /// `jdoe@example.com` → `jdoe`: matches the servers' Unix logins (Cloudflare's choice).
    /// Two users of different domains with the same local part cannot both be enrolled.
    #[default]
    LocalPart,
    /// `jdoe@example.com` → `jdoe@example.com`: unique across domains; the servers map it to
    /// logins with `AuthorizedPrincipalsFile` or `AuthorizedPrincipalsCommand`.
    Email,
}

/// The default of `[ssh] reserved_principals`: administrative and service accounts that a
/// mailbox with the same local part must never log in as.
pub const DEFAULT_RESERVED_PRINCIPALS: &[&str] = &[
    "root",
    "admin",
    "administrator",
    "ubuntu",
    "debian",
    "ec2-user",
    "centos",
    "git",
    "postgres",
];

impl SshConfig {
    /// Whether `[ssh] deny_env` refuses the variable `name`.
    pub fn env_denied(&self, name: &str) -> bool {
        self.deny_env.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
    }
}

/// Ciphers sshgw accepts in `device_ciphers` / `upstream_ciphers`, and the default of
/// both, in order of preference: AES-GCM first, since with AES-NI it costs a fraction of
/// ChaCha20-Poly1305 (docs/benchmarks.md). CTR modes take an HMAC-SHA2; no CBC, no "none".
pub const SUPPORTED_CIPHERS: &[&str] = &[
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
];

/// The russh names for a validated cipher list, in order.
pub fn cipher_names(field: &str, list: &[String]) -> Result<Vec<russh::cipher::Name>> {
    if list.is_empty() {
        bail!("ssh.{field}: list at least one cipher");
    }
    let mut names = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        if !SUPPORTED_CIPHERS.contains(&name.as_str()) {
            bail!(
                "ssh.{field}[{i}]: {name:?} is not a supported cipher (supported: {})",
                SUPPORTED_CIPHERS.join(", ")
            );
        }
        if list[..i].contains(name) {
            bail!("ssh.{field}[{i}]: {name:?} is listed twice");
        }
        let parsed = russh::cipher::Name::try_from(name.as_str())
            .map_err(|()| anyhow::anyhow!("ssh.{field}[{i}]: {name:?} is unknown to russh"))?;
        names.push(parsed);
    }
    Ok(names)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeyMode {
    /// Pin the first key seen for a server; refuse a different one later.
    Tofu,
    /// Accept only keys or CAs pre-seeded in `known_hosts`.
    Strict,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            upstream_host_keys: HostKeyMode::Tofu,
            port_forwarding: false,
            agent_forwarding: false,
            connect_timeout_secs: 10,
            certificate_lifetime_secs: 120,
            host_names: Default::default(),
            keepalive_secs: 30,
            stall_warning_secs: 60,
            deny_env: ["LD_*", "BASH_ENV", "ENV"].map(String::from).to_vec(),
            device_ciphers: SUPPORTED_CIPHERS.iter().map(|s| (*s).to_owned()).collect(),
            upstream_ciphers: SUPPORTED_CIPHERS.iter().map(|s| (*s).to_owned()).collect(),
            principal: PrincipalMode::LocalPart,
            reserved_principals: DEFAULT_RESERVED_PRINCIPALS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathConfig {
    /// Device-facing interfaces (tunnel ends) the TC program is attached to.
    pub interfaces: Vec<String>,
    /// TCP destination ports that are intercepted.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// bpffs directory holding the pinned links and maps (survives the daemon).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// skb mark bit that routes intercepted packets to the local table.
    #[serde(default = "default_intercept_mark")]
    pub intercept_mark: u32,
    /// Routing table holding the `local 0.0.0.0/0 dev lo` route.
    #[serde(default = "default_route_table")]
    pub route_table: u32,
    /// Priority of the fwmark rule.
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
    /// Port of the loopback listeners (0: any free port). Packets reach them through
    /// `bpf_sk_assign`, so the port never appears on the wire.
    #[serde(default)]
    pub listen_port: u16,
    /// SSH from sources not in the device table to audited destinations.
    #[serde(default)]
    pub unenrolled: Unenrolled,
    /// What a stopping daemon does with the datapath.
    #[serde(default)]
    pub on_stop: OnStop,
    /// Drop tunnel protocols (IPIP, IPv6-in-IPv4, GRE, ESP/AH, EtherIP, L2TP, MPLS-in-IP)
    /// and UDP to `tunnel_udp_ports` when they go to an audited destination.
    #[serde(default = "default_true")]
    pub drop_tunnels: bool,
    /// UDP destination ports that carry encapsulated traffic (VXLAN, Geneve, ...).
    #[serde(default = "default_tunnel_udp_ports")]
    pub tunnel_udp_ports: Vec<u16>,
    /// New audited connections per second one enrolled source address may open (0: no
    /// limit). SYNs beyond it are dropped; the device's TCP retries.
    #[serde(default = "default_syn_rate")]
    pub syn_rate_per_source: u32,
    /// How many new audited connections a source may open at once before the rate applies.
    #[serde(default = "default_syn_burst")]
    pub syn_burst_per_source: u32,
    /// Start even when `pin_dir` is on a BPF filesystem that is not the host's (a private
    /// mount namespace): its pins then die with the daemon, and with them fail-closed.
    #[serde(default)]
    pub allow_private_bpffs: bool,
}

/// The names whose flag is set, in order.
fn changed<const N: usize>(settings: [(&'static str, bool); N]) -> Vec<&'static str> {
    settings
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

impl Config {
    /// SIGHUP: takes from `next` the settings a running daemon applies at once (`[sessions]`,
    /// `drain_timeout_secs`, `recording.public_key_file` and `[datapath]`'s ports and
    /// switches) and returns the names of the other settings that changed: those take
    /// effect only after a restart. Every field is named here, so a new one does not compile
    /// until it is put in one class or the other.
    pub fn reload_from(&mut self, next: &Config) -> Vec<&'static str> {
        let Config {
            // Applied at once.
            drain_timeout_secs,
            sessions,
            // Partly applied at once (see the destructuring in each).
            datapath,
            recording,
            // Need a restart.
            state_dir,
            control_socket,
            control_group,
            ssh,
            limits,
            retention,
            metrics,
            cluster,
            storage,
            central,
            export,
            // Read by `sshgw console` only: nothing for the daemon to apply.
            console: _,
        } = next;
        let RecordingConfig {
            public_key_file,
            dir,
            on_recording_failure,
        } = recording;
        let mut restart_only = changed([
            ("state_dir", self.state_dir != *state_dir),
            ("control_socket", self.control_socket != *control_socket),
            ("control_group", self.control_group != *control_group),
        ]);
        restart_only.extend(self.datapath.reload_from(datapath));
        restart_only.extend(changed([
            ("ssh", self.ssh != *ssh),
            ("limits", self.limits != *limits),
            ("recording.dir", self.recording.dir != *dir),
            (
                "recording.on_recording_failure",
                self.recording.on_recording_failure != *on_recording_failure,
            ),
            ("retention", self.retention != *retention),
            ("metrics", self.metrics != *metrics),
            ("cluster", self.cluster != *cluster),
            ("storage", self.storage != *storage),
            ("central", self.central != *central),
            ("export", self.export != *export),
        ]));
        self.drain_timeout_secs = *drain_timeout_secs;
        self.sessions = sessions.clone();
        self.recording.public_key_file = public_key_file.clone();
        restart_only
    }
}

impl DatapathConfig {
    /// Takes the settings a running daemon applies at once (SIGHUP) from `next`; the
    /// others stay as the daemon started with them.
    #[cfg(test)]
    pub fn take_live(&mut self, next: &DatapathConfig) {
        let _restart_only = self.reload_from(next);
    }

    /// [`Config::reload_from`] for `[datapath]`: every field is named, so a new one does
    /// not compile until it is classified.
    fn reload_from(&mut self, next: &DatapathConfig) -> Vec<&'static str> {
        let DatapathConfig {
            // Applied at once: the maps and the program's settings are rewritten.
            ports,
            unenrolled,
            on_stop,
            drop_tunnels,
            tunnel_udp_ports,
            syn_rate_per_source,
            syn_burst_per_source,
            // Need a restart.
            interfaces,
            pin_dir,
            intercept_mark,
            route_table,
            rule_priority,
            listen_port,
            // Read only while starting, and (as ever) not reported when changed.
            allow_private_bpffs: _,
        } = next;
        let restart_only = changed([
            ("datapath.interfaces", self.interfaces != *interfaces),
            ("datapath.pin_dir", self.pin_dir != *pin_dir),
            (
                "datapath.intercept_mark",
                self.intercept_mark != *intercept_mark,
            ),
            ("datapath.route_table", self.route_table != *route_table),
            (
                "datapath.rule_priority",
                self.rule_priority != *rule_priority,
            ),
            ("datapath.listen_port", self.listen_port != *listen_port),
        ]);
        self.ports = ports.clone();
        self.unenrolled = *unenrolled;
        self.on_stop = *on_stop;
        self.drop_tunnels = *drop_tunnels;
        self.tunnel_udp_ports = tunnel_udp_ports.clone();
        self.syn_rate_per_source = *syn_rate_per_source;
        self.syn_burst_per_source = *syn_burst_per_source;
        restart_only
    }

    fn validate(&self) -> Result<()> {
        if self.interfaces.is_empty() {
            bail!("datapath.interfaces: name at least one device-facing interface");
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                bail!("datapath.interfaces[{i}]: {name:?} is not a valid interface name");
            }
        }
        ports("ports", &self.ports)?;
        if self.ports.is_empty() {
            bail!("datapath.ports: list at least one port");
        }
        ports("tunnel_udp_ports", &self.tunnel_udp_ports)?;
        if self.intercept_mark == 0 {
            bail!("datapath.intercept_mark: must be a non-zero bit mask");
        }
        if matches!(self.route_table, 0 | 253..=255) {
            bail!(
                "datapath.route_table: {} is reserved (unspec/default/main/local); use a dedicated table",
                self.route_table
            );
        }
        if self.syn_rate_per_source > 1_000_000 {
            bail!("datapath.syn_rate_per_source: at most 1000000 per second (0: no limit)");
        }
        if self.syn_rate_per_source > 0 && self.syn_burst_per_source == 0 {
            bail!(
                "datapath.syn_burst_per_source: must be at least 1 while syn_rate_per_source is set"
            );
        }
        if !self.pin_dir.is_absolute() {
            bail!(
                "datapath.pin_dir: {:?} must be an absolute path",
                self.pin_dir
            );
        }
        Ok(())
    }
}

/// A `[datapath]` port list: no port 0, at most `MAX_PORTS` entries.
fn ports(key: &str, list: &[u16]) -> Result<()> {
    if list.len() > gateway_common::MAX_PORTS as usize {
        bail!(
            "datapath.{key}: at most {} ports are supported",
            gateway_common::MAX_PORTS
        );
    }
    if let Some(i) = list.iter().position(|&p| p == 0) {
        bail!("datapath.{key}[{i}]: 0 is not a valid port");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStop {
    /// Leave the program attached and failing closed, so a restart opens no gap.
    #[default]
    Keep,
    /// Remove everything, as if sshgw had never run (audited servers become reachable
    /// directly).
    Remove,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unenrolled {
    /// Leave it alone: audited servers stay reachable directly from addresses that are not
    /// in the device table (a device's unlisted IPv6 address, a revoked device).
    Pass,
    /// Drop it: audited servers are reachable from device interfaces only through sshgw.
    #[default]
    Drop,
}

fn default_drain_timeout() -> u64 {
    30
}
fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}
fn default_ports() -> Vec<u16> {
    vec![22]
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
fn default_intercept_mark() -> u32 {
    0x100
}
fn default_route_table() -> u32 {
    100
}
fn default_rule_priority() -> u32 {
    100
}
fn default_true() -> bool {
    true
}
/// VXLAN (IANA 4789, and 8472, the Linux kernel's and flannel's default), Geneve (6081),
/// IPsec NAT traversal (ESP in UDP, 4500) and L2TP (1701).
fn default_tunnel_udp_ports() -> Vec<u16> {
    vec![4789, 8472, 6081, 4500, 1701]
}
fn default_syn_rate() -> u32 {
    100
}
fn default_syn_burst() -> u32 {
    200
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        self.datapath.validate()?;
        let ssh = &self.ssh;
        if !(1..=120).contains(&ssh.certificate_lifetime_secs) {
            bail!("ssh.certificate_lifetime_secs: must be between 1 and 120 seconds");
        }
        if ssh.connect_timeout_secs == 0 {
            bail!("ssh.connect_timeout_secs: must be at least 1");
        }
        if ssh.keepalive_secs == 0 {
            bail!("ssh.keepalive_secs: must be at least 1");
        }
        for (i, pattern) in ssh.deny_env.iter().enumerate() {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if name.is_empty() || name.contains(['*', '=']) || name.chars().any(char::is_control) {
                bail!(
                    "ssh.deny_env[{i}]: {pattern:?} is not a variable name or a prefix ending in *"
                );
            }
        }
        if ssh.stall_warning_secs == 0 {
            bail!("ssh.stall_warning_secs: must be at least 1");
        }
        self.limits.validate()?;
        self.validate_cluster()?;
        self.console.validate()?;
        cipher_names("device_ciphers", &ssh.device_ciphers)?;
        cipher_names("upstream_ciphers", &ssh.upstream_ciphers)?;
        for (i, name) in ssh.reserved_principals.iter().enumerate() {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!(
                    "ssh.reserved_principals[{i}]: {name:?} is not a principal (empty, or with whitespace or control characters)"
                );
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<()> {
        if let Some(id) = &self.cluster.router_id
            && (id.is_empty() || id.len() > 63 || id.starts_with('.') || !id.chars().all(key_char))
        {
            bail!(
                "cluster.router_id: {id:?} must be 1 to 63 of A-Z a-z 0-9 . _ -, not starting with a dot"
            );
        }
        if let Some(central) = &self.central {
            central.validate()?;
        }
        self.export.validate()?;
        if let Some(storage) = &self.storage {
            if self.cluster.router_id.is_none() {
                bail!(
                    "cluster.router_id: required once [storage] is set (it names this router's objects)"
                );
            }
            storage.validate()?;
        }
        Ok(())
    }

    /// This router's id, once `[cluster]` names it.
    pub fn router_id(&self) -> Option<&str> {
        self.cluster.router_id.as_deref()
    }

    pub fn devices_path(&self) -> PathBuf {
        self.state_dir.join("devices.json")
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.recording
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("recordings"))
    }

    /// The recording public key last set through the control API.
    pub fn recording_key_path(&self) -> PathBuf {
        self.state_dir.join("recording.pub")
    }

    /// The session log database.
    pub fn session_log_path(&self) -> PathBuf {
        self.state_dir.join("sessions.db")
    }

    /// Pinned host keys of the real servers (OpenSSH known_hosts format).
    pub fn known_hosts_path(&self) -> PathBuf {
        self.state_dir.join("known_hosts")
    }

    pub fn policies_path(&self) -> PathBuf {
        self.state_dir.join("policies.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c =
            Config::parse("state_dir = \"/var/lib/sshgw\"\n[datapath]\ninterfaces = [\"wg0\"]\n")
                .unwrap();
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.datapath.ports, vec![22]);
        assert_eq!(c.datapath.intercept_mark, 0x100);
        assert_eq!(c.datapath.route_table, 100);
        assert_eq!(c.datapath.unenrolled, Unenrolled::Drop);
        assert!(c.datapath.drop_tunnels && !c.datapath.allow_private_bpffs);
        assert_eq!(c.datapath.tunnel_udp_ports, [4789, 8472, 6081, 4500, 1701]);
        assert_eq!(
            (
                c.datapath.syn_rate_per_source,
                c.datapath.syn_burst_per_source
            ),
            (100, 200)
        );
        assert_eq!(
            c.devices_path(),
            PathBuf::from("/var/lib/sshgw/devices.json")
        );
    }

    #[test]
    fn sessions_table() {
        let base = "state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.sessions.on_log_failure, LogFailure::Refuse);
        let c = Config::parse(&format!("{base}[sessions]\non_log_failure = \"allow\"\n")).unwrap();
        assert_eq!(c.sessions.on_log_failure, LogFailure::Allow);
        let e = format!(
            "{:#}",
            Config::parse(&format!("{base}[sessions]\non_log_failure = \"drop\"\n")).unwrap_err()
        );
        assert!(e.contains("on_log_failure") && e.contains("refuse"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse(&format!("{base}[sessions]\nbogus = 1\n")).unwrap_err()
        );
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = |t: &str| format!("{:#}", Config::parse(t).unwrap_err());
        assert!(
            err("state_dir = \"/s\"\n[datapath]\ninterfaces = []\n")
                .contains("datapath.interfaces")
        );
        assert!(
            err("state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\nports = [0]\n")
                .contains("datapath.ports[0]")
        );
        assert!(
            err("state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\nroute_table = 254\n")
                .contains("route_table")
        );
        assert!(
            err("state_dir = \"/s\"\nbogus = 1\n[datapath]\ninterfaces = [\"a\"]\n")
                .contains("bogus")
        );
        let dp = |line: &str| {
            err(&format!(
                "state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\n{line}\n"
            ))
        };
        assert!(dp("tunnel_udp_ports = [4789, 0]").contains("datapath.tunnel_udp_ports[1]"));
        assert!(dp("syn_burst_per_source = 0").contains("datapath.syn_burst_per_source"));
        assert!(dp("syn_rate_per_source = 2000000").contains("datapath.syn_rate_per_source"));
        assert!(
            Config::parse("state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\nsyn_rate_per_source = 0\nsyn_burst_per_source = 0\ntunnel_udp_ports = []\n")
                .is_ok(),
            "a zero rate turns the budget off, and no UDP port is a tunnel port"
        );
    }

    #[test]
    fn reload_takes_only_the_live_datapath_settings() {
        let parse = |datapath: &str| {
            Config::parse(&format!("state_dir = \"/s\"\n[datapath]\n{datapath}\n"))
                .unwrap()
                .datapath
        };
        let mut live = parse("interfaces = [\"a\"]");
        let next = parse(
            "interfaces = [\"b\"]\nunenrolled = \"pass\"\ndrop_tunnels = false\ntunnel_udp_ports = [1]\n\
             syn_rate_per_source = 7\nsyn_burst_per_source = 9\nallow_private_bpffs = true",
        );
        live.take_live(&next);
        assert_eq!(live.unenrolled, Unenrolled::Pass);
        assert!(!live.drop_tunnels);
        assert_eq!(live.tunnel_udp_ports, [1]);
        assert_eq!(
            (live.syn_rate_per_source, live.syn_burst_per_source),
            (7, 9)
        );
        assert_eq!(live.interfaces, ["a"], "interfaces need a restart");
        assert!(!live.allow_private_bpffs, "only read at start");
    }

    #[test]
    fn reload_names_each_restart_only_change_and_applies_the_rest() {
        let base = "state_dir = \"/s\"\ndrain_timeout_secs = 5\n";
        let mut live = Config::parse(&format!("{base}[datapath]\ninterfaces = [\"a\"]\n")).unwrap();
        let same = live.clone();
        assert!(live.reload_from(&same).is_empty());
        let next = Config::parse(
            "state_dir = \"/t\"\ncontrol_group = \"g\"\ndrain_timeout_secs = 9\n\
             [datapath]\ninterfaces = [\"b\"]\nlisten_port = 7\nports = [2222]\n\
             [ssh]\nkeepalive_secs = 5\n[limits]\nmax_channels_per_connection = 3\n\
             [recording]\ndir = \"/r\"\non_recording_failure = \"allow\"\npublic_key_file = \"/k\"\n\
             [sessions]\non_log_failure = \"allow\"\n[retention]\nmax_age_days = 1\n\
             [metrics]\nlisten = \"127.0.0.1:9\"\n",
        )
        .unwrap();
        assert_eq!(
            live.reload_from(&next),
            [
                "state_dir",
                "control_group",
                "datapath.interfaces",
                "datapath.listen_port",
                "ssh",
                "limits",
                "recording.dir",
                "recording.on_recording_failure",
                "retention",
                "metrics",
            ]
        );
        assert_eq!(live.state_dir, Path::new("/s"), "kept as started");
        assert_eq!(live.datapath.interfaces, ["a"]);
        assert_eq!(live.datapath.ports, [2222]);
        assert_eq!(live.drain_timeout_secs, 9);
        assert_eq!(live.sessions.on_log_failure, LogFailure::Allow);
        assert_eq!(
            live.recording.public_key_file.as_deref(),
            Some(Path::new("/k"))
        );
        assert_eq!(live.recording.dir, None);
    }

    #[test]
    fn cipher_lists_are_checked() {
        let base = "state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\n[ssh]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.ssh.upstream_ciphers[0], "aes128-gcm@openssh.com");
        let all = cipher_names("device_ciphers", &c.ssh.device_ciphers).unwrap();
        assert_eq!(all.len(), SUPPORTED_CIPHERS.len());
        let err = |line: &str| {
            format!(
                "{:#}",
                Config::parse(&format!("{base}{line}\n")).unwrap_err()
            )
        };
        let e = err("upstream_ciphers = [\"aes128-gcm@openssh.com\", \"aes128-cbc\"]");
        assert!(
            e.contains("ssh.upstream_ciphers[1]")
                && e.contains("\"aes128-cbc\" is not a supported cipher"),
            "{e}"
        );
        let e = err("device_ciphers = [\"aes256-ctr\", \"aes256-ctr\"]");
        assert!(
            e.contains("ssh.device_ciphers[1]") && e.contains("listed twice"),
            "{e}"
        );
        let e = err("device_ciphers = []");
        assert!(
            e.contains("ssh.device_ciphers: list at least one cipher"),
            "{e}"
        );
        assert!(err("device_ciphers = [\"none\"]").contains("not a supported cipher"));
    }

    #[test]
    fn principal_settings() {
        let base = "state_dir = \"/s\"\n[datapath]\ninterfaces = [\"a\"]\n[ssh]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.ssh.principal, PrincipalMode::LocalPart);
        assert_eq!(c.ssh.reserved_principals, DEFAULT_RESERVED_PRINCIPALS);
        let c = Config::parse(&format!(
            "{base}principal = \"email\"\nreserved_principals = []\n"
        ))
        .unwrap();
        assert_eq!(c.ssh.principal, PrincipalMode::Email);
        assert!(c.ssh.reserved_principals.is_empty());
        let err = |line: &str| {
            format!(
                "{:#}",
                Config::parse(&format!("{base}{line}\n")).unwrap_err()
            )
        };
        let e = err("principal = \"full\"");
        assert!(e.contains("local_part") && e.contains("email"), "{e}");
        let e = err("reserved_principals = [\"root\", \"ro ot\"]");
        assert!(e.contains("ssh.reserved_principals[1]"), "{e}");
    }
}
