//! A real OpenSSH server (`/usr/sbin/sshd -D -e`) in a lab namespace (normally `srv`).
//!
//! ```ignore
//! let sshd = lab.start_sshd()?;                     // 0.0.0.0/[::] ports 22 and 2222
//! let sshd = lab.start_sshd_for_gateway()?;         // + trusts the lab's sshgw user CA,
//!                                                   //   principal jdoe may log in as root/jdoe
//! let sshd = lab.start_sshd_with(
//!     SshdConfig::default().trust_sshgw_ca().principals("vmuser", &["alice", "jdoe"]),
//! )?;
//! ```
//!
//! # Unix users without touching the host
//!
//! sshd runs in a private mount namespace
//! (`ip netns exec SRV unshare --mount --propagation private sh -c 'mount --bind ...; exec sshd'`)
//! in which `/etc/passwd` and `/etc/group` are bind-mounted copies of the host's files plus
//! the lab users ([`LAB_USERS`] by default: uids >= 60000, shell `/bin/sh`, homes
//! `<lab dir>/home/<name>` owned by the user). Nothing on the host changes; the users exist
//! only for this sshd and its sessions. The host's `/etc/shadow` is not copied: a user
//! missing from it has no password and is not locked, which is all key/certificate logins
//! need (`UsePAM no`). The lab directory is made traversable (0711) so the users can reach
//! their homes and sshd can read their principals files as them.
//!
//! # Trusting the gateway
//!
//! [`SshdConfig::trust_sshgw_ca`] adds `TrustedUserCAKeys` with the output of
//! `sshgw ca user-key` (see [`Lab::sshgw_ca`], which creates the CA before sshd starts).
//! [`SshdConfig::principals`] writes `AuthorizedPrincipalsFile <dir>/principals/%u` files and
//! [`SshdConfig::principals_command`] an `AuthorizedPrincipalsCommand`. The lab client key
//! stays in `AuthorizedKeysFile`, so direct (bypassed) sessions keep working.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

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

/// The standard lab users: name and uid (gid = uid). Uids are >= 60000 so they never
/// collide with the host's users.
pub const LAB_USERS: &[(&str, u32)] = &[
    ("jdoe", 60001),
    ("johndoe", 60002),
    ("vmuser", 60003),
    ("alice", 60004),
    ("bob", 60005),
];

/// The principal of the lab device's user (`jdoe@example.com` in the default devices.json).
pub const LAB_PRINCIPAL: &str = "jdoe";

/// A Unix user that exists only inside the lab sshd's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixUser {
    pub name: String,
    /// uid and gid (a per-user group of the same name).
    pub uid: u32,
}

/// sshd settings; [`SshdConfig::default`] is the lab standard.
#[derive(Debug, Clone)]
pub struct SshdConfig {
    /// `ListenAddress` entries (readiness waits for each one).
    pub listen: Vec<SocketAddr>,
    /// Extra sshd_config lines appended after the standard ones.
    /// sshd uses the *first* value of most keywords, so these cannot override the standard
    /// lines; use [`SshdConfig::replace_base`] for that.
    pub extra: Vec<String>,
    /// Replaces the standard lines (other than ListenAddress, HostKey, PidFile,
    /// AuthorizedKeysFile and the CA/principals lines) when set.
    pub base: Option<Vec<String>>,
    /// Unix users added for this sshd (private `/etc/passwd`); empty = sshd runs with the
    /// host's users only and no private mount namespace. Default: [`LAB_USERS`].
    pub users: Vec<UnixUser>,
    /// `TrustedUserCAKeys` = the lab gateway's user CA (`sshgw ca user-key`).
    pub trust_sshgw_ca: bool,
    /// `AuthorizedPrincipalsFile`: login -> principals allowed to log in as it. None = no
    /// such directive (a certificate principal must then equal the login).
    pub principals: Option<BTreeMap<String, Vec<String>>>,
    /// `AuthorizedPrincipalsCommand` script (run by `/bin/sh` as root with the arguments
    /// `%u %t %k`: login, certificate type, base64 certificate); it prints the principals
    /// allowed for the login.
    pub principals_command: Option<String>,
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
    "Subsystem sftp internal-sftp",
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
            users: LAB_USERS
                .iter()
                .map(|&(name, uid)| UnixUser {
                    name: name.to_owned(),
                    uid,
                })
                .collect(),
            trust_sshgw_ca: false,
            principals: None,
            principals_command: None,
        }
    }
}

impl SshdConfig {
    /// Appends an sshd_config line.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.to_owned());
        self
    }

    /// The lab standard for intercepted sessions: [`SshdConfig::default`] plus
    /// `TrustedUserCAKeys` (the lab gateway's user CA) and an `AuthorizedPrincipalsFile` that
    /// lets [`LAB_PRINCIPAL`] (`jdoe`) log in as `root` and as `jdoe`.
    pub fn gateway() -> Self {
        Self::default()
            .trust_sshgw_ca()
            .principals("root", &[LAB_PRINCIPAL])
            .principals(LAB_PRINCIPAL, &[LAB_PRINCIPAL])
    }

    /// Replaces [`BASE_LINES`].
    pub fn replace_base(mut self, lines: Vec<String>) -> Self {
        self.base = Some(lines);
        self
    }

    /// `TrustedUserCAKeys <file with the sshgw user CA>`.
    pub fn trust_sshgw_ca(mut self) -> Self {
        self.trust_sshgw_ca = true;
        self
    }

    /// Enables `AuthorizedPrincipalsFile` and lets `principals` log in as `login` (adds to
    /// earlier calls for the same login). Logins without an entry get no file: no
    /// certificate may log in as them.
    pub fn principals(mut self, login: &str, principals: &[&str]) -> Self {
        self.principals
            .get_or_insert_with(BTreeMap::new)
            .entry(login.to_owned())
            .or_default()
            .extend(principals.iter().map(|p| (*p).to_owned()));
        self
    }

    /// Enables `AuthorizedPrincipalsFile` with no entries yet (no certificate login at all
    /// until [`SshdConfig::principals`] adds some).
    pub fn principals_file(mut self) -> Self {
        self.principals.get_or_insert_with(BTreeMap::new);
        self
    }

    /// `AuthorizedPrincipalsCommand /bin/sh SCRIPT %u %t %k` with
    /// `AuthorizedPrincipalsCommandUser root`; `script` is the shell script's text.
    pub fn principals_command(mut self, script: &str) -> Self {
        self.principals_command = Some(script.to_owned());
        self
    }

    /// Adds a Unix user (in addition to the defaults) with the given uid (>= 60000).
    pub fn user(mut self, name: &str, uid: u32) -> Self {
        self.users.push(UnixUser {
            name: name.to_owned(),
            uid,
        });
        self
    }

    /// No private users: sshd runs with the host's `/etc/passwd` only.
    pub fn no_users(mut self) -> Self {
        self.users.clear();
        self
    }

    fn render(&self, host_key: &Path, authorized_keys: &Path, files: &AuthFiles) -> String {
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
        if let Some(ca) = &files.trusted_user_ca {
            s.push_str(&format!("TrustedUserCAKeys {}\n", ca.display()));
        }
        if let Some(dir) = &files.principals_dir {
            s.push_str(&format!("AuthorizedPrincipalsFile {}/%u\n", dir.display()));
        }
        if let Some(script) = &files.principals_command {
            // /bin/sh is root-owned on a root-owned path, as sshd requires of the command;
            // the script itself may live in the (world-traversable) lab dir.
            s.push_str(&format!(
                "AuthorizedPrincipalsCommand /bin/sh {} %u %t %k\n",
                script.display()
            ));
            s.push_str("AuthorizedPrincipalsCommandUser root\n");
        }
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

/// Files the CA/principals directives point at (written before sshd starts).
#[derive(Debug, Default)]
struct AuthFiles {
    trusted_user_ca: Option<PathBuf>,
    principals_dir: Option<PathBuf>,
    principals_command: Option<PathBuf>,
}

/// A running sshd.
pub struct Sshd {
    proc: Proc,
    dir: PathBuf,
    config: PathBuf,
    host_key: KeyPair,
    listen: Vec<SocketAddr>,
    users: Vec<UnixUser>,
    principals_dir: Option<PathBuf>,
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

    /// The private Unix users of this sshd.
    pub fn users(&self) -> &[UnixUser] {
        &self.users
    }

    /// The `AuthorizedPrincipalsFile` directory (one file per login), if enabled. sshd
    /// re-reads the files for every login.
    pub fn principals_dir(&self) -> Option<&Path> {
        self.principals_dir.as_deref()
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

    /// Starts sshd in `srv` with [`SshdConfig::gateway`]: trusts the lab gateway's user CA and
    /// lets `jdoe` log in as `root` (and `jdoe`). Needs the sshgw binary.
    pub fn start_sshd_for_gateway(&self) -> Result<Sshd> {
        self.start_sshd_in(&self.srv, SshdConfig::gateway())
    }

    /// Starts sshd in `ns`: generates a host key, writes the users, CA and principals files,
    /// writes and validates (`sshd -t`) the config, spawns `sshd -D -e -f CFG` (in a private
    /// mount namespace with the lab users, see the module docs) and waits until it logs
    /// "Server listening on" for every listen address.
    pub fn start_sshd_in(&self, ns: &Netns, config: SshdConfig) -> Result<Sshd> {
        // The privilege-separation directory.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = self.new_subdir("sshd")?;
        let host_key = KeyPair::generate(
            self.procs(),
            &dir.join("ssh_host_ed25519_key"),
            "sshgw-lab-host",
        )?;

        let mut files = AuthFiles::default();
        if config.trust_sshgw_ca {
            files.trusted_user_ca = Some(self.sshgw_ca()?.user_ca_file.clone());
        }
        if let Some(map) = &config.principals {
            let pdir = dir.join("principals");
            fs::create_dir_all(&pdir).with_context(|| format!("creating {}", pdir.display()))?;
            for (login, principals) in map {
                let mut text = principals.join("\n");
                text.push('\n');
                write_world_readable(&pdir.join(login), &text)?;
            }
            files.principals_dir = Some(pdir);
        }
        if let Some(script) = &config.principals_command {
            let path = dir.join("principals-command.sh");
            write_world_readable(&path, script)?;
            files.principals_command = Some(path);
        }

        let cfg_path = dir.join("sshd_config");
        fs::write(
            &cfg_path,
            config.render(&host_key.private, self.authorized_keys_path(), &files),
        )
        .with_context(|| format!("writing {}", cfg_path.display()))?;

        let mut check = Command::new(SSHD_BIN);
        check.arg("-t").arg("-f").arg(&cfg_path);
        self.procs()
            .run_quiet("sshd -t", &mut check, Duration::from_secs(10))?
            .check("sshd -t (config check)")?;

        let mut cmd = if config.users.is_empty() {
            let mut cmd = ns.exec_command(SSHD_BIN);
            cmd.args(["-D", "-e", "-f"]).arg(&cfg_path);
            cmd
        } else {
            let (passwd, group) = self.write_user_db(&dir, &config.users)?;
            // `exec` keeps the PID: the registered process is sshd itself.
            let mut cmd = ns.exec_command("unshare");
            cmd.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
                .arg(
                    "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group && \
                     exec \"$3\" -D -e -f \"$4\"",
                )
                .arg("sshd-wrapper")
                .arg(&passwd)
                .arg(&group)
                .arg(SSHD_BIN)
                .arg(&cfg_path);
            cmd
        };
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
            users: config.users,
            principals_dir: files.principals_dir,
        })
    }

    /// `<lab dir>/home/<name>`: the home of a lab user.
    pub fn user_home(&self, name: &str) -> PathBuf {
        self.dir().join("home").join(name)
    }

    /// Writes `<dir>/passwd` and `<dir>/group` (host files + `users`) and creates the users'
    /// homes (owned by them, 0755). Makes the lab dir traversable (0711).
    fn write_user_db(&self, dir: &Path, users: &[UnixUser]) -> Result<(PathBuf, PathBuf)> {
        let mut passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
        let mut group = fs::read_to_string("/etc/group").context("reading /etc/group")?;
        let taken = |db: &str, name: &str, id: u32| {
            db.lines().any(|l| {
                let f: Vec<&str> = l.split(':').collect();
                f.first() == Some(&name) || f.get(2) == Some(&id.to_string().as_str())
            })
        };
        fs::set_permissions(self.dir(), fs::Permissions::from_mode(0o711))
            .with_context(|| format!("chmod 0711 {}", self.dir().display()))?;
        for u in users {
            if u.uid < 60000 {
                bail!("lab user {} has uid {} (< 60000)", u.name, u.uid);
            }
            if taken(&passwd, &u.name, u.uid) || taken(&group, &u.name, u.uid) {
                bail!(
                    "lab user {} (uid {}) collides with an existing user or group",
                    u.name,
                    u.uid
                );
            }
            let home = self.user_home(&u.name);
            fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
            fs::set_permissions(&home, fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::chown(&home, Some(u.uid), Some(u.uid))
                .with_context(|| format!("chown {} {}", u.uid, home.display()))?;
            if !passwd.ends_with('\n') {
                passwd.push('\n');
            }
            if !group.ends_with('\n') {
                group.push('\n');
            }
            passwd.push_str(&format!(
                "{0}:*:{1}:{1}:sshgw lab user:{2}:/bin/sh\n",
                u.name,
                u.uid,
                home.display()
            ));
            group.push_str(&format!("{}:x:{}:\n", u.name, u.uid));
        }
        let (passwd_path, group_path) = (dir.join("passwd"), dir.join("group"));
        write_world_readable(&passwd_path, &passwd)?;
        write_world_readable(&group_path, &group)?;
        Ok((passwd_path, group_path))
    }
}

/// Writes `text` to `path` with mode 0644 (readable by the lab users).
fn write_world_readable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod 0644 {}", path.display()))
}
