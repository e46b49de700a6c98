//! A real OpenSSH server (`/usr/sbin/sshd -D -e`) in a lab namespace (normally `srv`).
//!
//! ```ignore
//! let sshd = lab.start_sshd()?;                       // 0.0.0.0/[::] ports 22 and 2222
//! let sshd = lab.start_sshd_with(SshdConfig::default().line("TrustedUserCAKeys /x/ca.pub"))?;
//! ```

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::process::Proc;
use crate::ssh::KeyPair;
use crate::topology::Lab;

/// The sshd binary (absolute: sshd re-executes itself).
pub const SSHD_BIN: &str = "/usr/sbin/sshd";

/// The SSH port the gateway intercepts.
pub const SSH_PORT: u16 = 22;

/// A second sshd port: "other TCP" that is never intercepted.
pub const OTHER_TCP_PORT: u16 = 2222;

/// How long sshd may take to report all its listeners.
pub const SSHD_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// sshd settings; [`SshdConfig::default`] is the lab standard.
#[derive(Debug, Clone)]
pub struct SshdConfig {
    /// `ListenAddress` entries (readiness waits for each one).
    pub listen: Vec<SocketAddr>,
    /// Extra sshd_config lines appended after the standard ones (e.g. `TrustedUserCAKeys ...`).
    /// sshd uses the *first* value of most keywords, so these cannot override the standard
    /// lines; use [`SshdConfig::replace_base`] for that.
    pub extra: Vec<String>,
    /// Replaces the standard lines (other than ListenAddress, HostKey, PidFile and
    /// AuthorizedKeysFile) when set.
    pub base: Option<Vec<String>>,
}

/// The standard sshd_config lines besides ListenAddress/HostKey/PidFile/AuthorizedKeysFile.
pub const BASE_LINES: &[&str] = &[
    "UsePAM no",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PermitRootLogin prohibit-password",
    "StrictModes no",
    "LogLevel VERBOSE",
    "PrintMotd no",
    "UseDNS no",
];

impl Default for SshdConfig {
    fn default() -> Self {
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        Self {
            listen: vec![
                SocketAddr::new(any4, SSH_PORT),
                SocketAddr::new(any6, SSH_PORT),
                SocketAddr::new(any4, OTHER_TCP_PORT),
                SocketAddr::new(any6, OTHER_TCP_PORT),
            ],
            extra: Vec::new(),
            base: None,
        }
    }
}

impl SshdConfig {
    /// Appends an sshd_config line.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.to_owned());
        self
    }

    /// Replaces [`BASE_LINES`].
    pub fn replace_base(mut self, lines: Vec<String>) -> Self {
        self.base = Some(lines);
        self
    }

    fn render(&self, host_key: &Path, authorized_keys: &Path) -> String {
        let mut s = String::new();
        for addr in &self.listen {
            s.push_str(&format!("ListenAddress {addr}\n"));
        }
        s.push_str(&format!("HostKey {}\n", host_key.display()));
        s.push_str("PidFile none\n");
        s.push_str(&format!(
            "AuthorizedKeysFile {}\n",
            authorized_keys.display()
        ));
        let base: Vec<String> = match &self.base {
            Some(lines) => lines.clone(),
            None => BASE_LINES.iter().map(|l| (*l).to_owned()).collect(),
        };
        for line in base.iter().chain(&self.extra) {
            s.push_str(line);
            s.push('\n');
        }
        s
    }
}

/// A running sshd.
pub struct Sshd {
    proc: Proc,
    dir: PathBuf,
    config: PathBuf,
    host_key: KeyPair,
    listen: Vec<SocketAddr>,
}

impl Sshd {
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// sshd's log (`-e`: everything goes to stderr).
    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Waits (bounded) until sshd's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.proc.wait_for_log(needle, timeout)
    }

    /// The directory holding this sshd's config and host key.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn host_key(&self) -> &KeyPair {
        &self.host_key
    }

    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }
}

/// sshd's "Server listening on ADDR port PORT." log line for `addr`.
fn listening_line(addr: &SocketAddr) -> String {
    format!("Server listening on {} port {}.", addr.ip(), addr.port())
}

impl Lab {
    /// Starts sshd in `srv` with [`SshdConfig::default`].
    pub fn start_sshd(&self) -> Result<Sshd> {
        self.start_sshd_in(&self.srv, SshdConfig::default())
    }

    /// Starts sshd in `srv` with a custom configuration.
    pub fn start_sshd_with(&self, config: SshdConfig) -> Result<Sshd> {
        self.start_sshd_in(&self.srv, config)
    }

    /// Starts sshd in `ns`: generates a host key, writes and validates (`sshd -t`) the config,
    /// spawns `sshd -D -e -f CFG` and waits until it logs "Server listening on" for every
    /// listen address.
    pub fn start_sshd_in(&self, ns: &Netns, config: SshdConfig) -> Result<Sshd> {
        // The privilege-separation directory.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = self.new_subdir("sshd")?;
        let host_key = KeyPair::generate(
            self.procs(),
            &dir.join("ssh_host_ed25519_key"),
            "sshgw-lab-host",
        )?;
        let cfg_path = dir.join("sshd_config");
        fs::write(
            &cfg_path,
            config.render(&host_key.private, self.authorized_keys_path()),
        )
        .with_context(|| format!("writing {}", cfg_path.display()))?;

        let mut check = Command::new(SSHD_BIN);
        check.arg("-t").arg("-f").arg(&cfg_path);
        self.procs()
            .run_quiet("sshd -t", &mut check, Duration::from_secs(10))?
            .check("sshd -t (config check)")?;

        let mut cmd = ns.exec_command(SSHD_BIN);
        cmd.args(["-D", "-e", "-f"]).arg(&cfg_path);
        let proc = self
            .procs()
            .spawn(&format!("sshd@{}", ns.name()), &mut cmd)?;
        let lines: Vec<String> = config.listen.iter().map(listening_line).collect();
        let needles: Vec<&str> = lines.iter().map(String::as_str).collect();
        proc.wait_for_logs(&needles, SSHD_READY_TIMEOUT)
            .context("sshd did not become ready")?;
        Ok(Sshd {
            proc,
            dir,
            config: cfg_path,
            host_key,
            listen: config.listen,
        })
    }
}
