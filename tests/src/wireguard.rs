//! Real WireGuard in the lab: Cloudflare's userspace implementation (`boringtun-cli`, the
//! kernel here has no WireGuard module) configured by `wg` and `wg-quick` from Debian's
//! `wireguard-tools`.
//!
//! boringtun makes a tun interface (`link/none`, no link-layer header) and a control socket
//! `/var/run/wireguard/<interface>.sock` that `wg` talks to. `/run` is shared by every
//! network namespace, so two namespaces (or two parallel labs) with a `wg0` each would take
//! over each other's socket. A [`WgHost`] therefore gives its namespace a private mount
//! namespace with a tmpfs on `/run/wireguard`, held open by a `sleep infinity` holder
//! process; every `wg`, `wg-quick` and boringtun of that host runs inside it. Nothing on
//! the host changes except that `/run/wireguard` exists (as an empty directory).
//!
//! ```ignore
//! let rtr = WgHost::new(lab, &lab.rtr, "rtr")?;
//! let key = rtr.genkey("wg0")?;                      // wg0.key (0600) and wg0.pub
//! rtr.write_config("wg0", &text)?;                   // wg0.conf (0600)
//! rtr.up("wg0")?;                                    // wg-quick up, boringtun as fallback
//! let rx = rtr.transfer("wg0")?[&peer_public].rx;    // `wg show wg0 transfer`
//! rtr.down("wg0")?;                                  // wg-quick down, waits for boringtun to exit
//! ```
//!
//! Dropping a host stops its boringtun processes (SIGTERM, then SIGKILL) and the holder; in
//! a lab that stays up, [`WgHost::keep`] leaves them running for `cargo xtask lab --down`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::Netns;
use crate::process::{Io, Proc, Processes};
use crate::topology::Lab;
use crate::wait::{POLL_INTERVAL, poll_until};

/// Where boringtun and `wg` keep their control sockets.
pub const WG_RUN_DIR: &str = "/run/wireguard";

/// Environment variable naming the boringtun-cli binary (absolute path).
pub const BORINGTUN_ENV: &str = "SSHGW_BORINGTUN";

/// Deadline of one `wg` or `wg-quick` run.
pub const WG_TIMEOUT: Duration = Duration::from_secs(30);

/// How long boringtun may take to exit after `wg-quick down` deleted its interface (about
/// two seconds).
pub const BORINGTUN_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the holder may take to set up its mount namespace.
const HOLDER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The tools a WireGuard lab needs, with the package that provides them.
const TOOLS: &[(&str, &str)] = &[
    ("wg", "wireguard-tools"),
    ("wg-quick", "wireguard-tools"),
    ("nft", "nftables"),
];

/// `name` on `PATH` or in one of `extra`.
fn find_program(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    path.iter()
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `$CARGO_HOME/bin`, defaulting to `~/.cargo/bin` (where `cargo install` puts boringtun-cli).
fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home).join("bin")),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    }
}

/// The boringtun-cli binary: `$SSHGW_BORINGTUN`, else `PATH`, else cargo's bin directory.
pub fn boringtun_bin() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(BORINGTUN_ENV) {
        let p = PathBuf::from(&v);
        ensure!(
            p.is_absolute() && p.is_file(),
            "{BORINGTUN_ENV}={} is not an absolute path to a file",
            p.display()
        );
        return Ok(p);
    }
    let extra: Vec<PathBuf> = cargo_bin_dir().into_iter().collect();
    find_program("boringtun-cli", &extra).ok_or_else(|| {
        anyhow!(
            "boringtun-cli is not installed (the kernel has no WireGuard module, so the \
             WireGuard tests use Cloudflare's userspace implementation): run `cargo xtask \
             prereqs`, or `cargo install boringtun-cli --locked`"
        )
    })
}

/// Fails with one message naming everything missing for a WireGuard lab: `wg`, `wg-quick`,
/// `nft` and boringtun-cli. The tests never skip.
pub fn require_tools() -> Result<PathBuf> {
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    let mut missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| find_program(tool, &sbin).is_none())
        .map(|(tool, pkg)| format!("`{tool}` (package {pkg})"))
        .collect();
    let boringtun = boringtun_bin();
    if let Err(err) = &boringtun {
        missing.push(format!("{err:#}"));
    }
    if !missing.is_empty() {
        bail!(
            "the WireGuard lab cannot run; missing: {}. `cargo xtask prereqs` installs them",
            missing.join("; ")
        );
    }
    boringtun
}

/// A WireGuard key pair: the private key in a 0600 file, the public key in the clear.
#[derive(Debug, Clone)]
pub struct WgKey {
    /// `<host dir>/<name>.key`, mode 0600.
    pub private: PathBuf,
    /// Base64, as `wg pubkey` prints it.
    pub public: String,
}

/// One peer's counters in `wg show IF transfer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub rx: u64,
    pub tx: u64,
}

/// A namespace that runs WireGuard interfaces, with its own `/run/wireguard`.
pub struct WgHost {
    label: String,
    netns: PathBuf,
    dir: PathBuf,
    procs: Processes,
    holder: Proc,
    /// The holder's mount namespace (`mnt:[inode]`): it outlives the holder while boringtun
    /// runs in it.
    mnt_ns: PathBuf,
    boringtun: PathBuf,
    keep: bool,
}

/// The `mnt:[inode]` identity of process `pid`'s mount namespace.
fn mount_ns_of(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// True once the holder's mount table has the tmpfs on [`WG_RUN_DIR`].
fn holder_ready(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|table| {
        table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(4) == Some(&WG_RUN_DIR) && line.contains(" - tmpfs sshgw-wg ")
        })
    })
}

impl WgHost {
    /// Starts the holder of a private mount namespace for `ns` (`<lab dir>/wireguard-<label>`
    /// holds its keys, configs and boringtun logs).
    pub fn new(lab: &Lab, ns: &Netns, label: &str) -> Result<Self> {
        let boringtun = require_tools()?;
        let dir = lab.dir().join(format!("wireguard-{label}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        // The mount point must exist; the tmpfs on it is private to the holder's namespace.
        fs::create_dir_all(WG_RUN_DIR).with_context(|| format!("creating {WG_RUN_DIR}"))?;
        let mut cmd = ns.setns_command("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o mode=0700,size=1m sshgw-wg {WG_RUN_DIR} && exec sleep infinity"
            ));
        let holder = lab
            .procs()
            .spawn(&format!("wireguard-holder-{label}"), &mut cmd)?;
        poll_until(
            &format!("the {label} WireGuard mount namespace"),
            HOLDER_READY_TIMEOUT,
            POLL_INTERVAL,
            || {
                if let Some(status) = holder.try_status()? {
                    bail!(
                        "the mount-namespace holder exited ({status}): {}",
                        holder.log_text()
                    );
                }
                Ok(holder_ready(holder.pid()).then_some(()))
            },
        )?;
        let mnt_ns =
            mount_ns_of(holder.pid() as i32).context("reading the holder's mount namespace")?;
        Ok(Self {
            label: label.to_owned(),
            netns: ns.path(),
            dir,
            procs: lab.procs().clone(),
            holder,
            mnt_ns,
            boringtun,
            keep: false,
        })
    }

    /// The directory with this host's keys, configs and boringtun logs (0700).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process holding the mount namespace (`nsenter -t PID -m -n` enters it).
    pub fn holder(&self) -> &Proc {
        &self.holder
    }

    /// `<dir>/<ifname>.conf`.
    pub fn config_path(&self, ifname: &str) -> PathBuf {
        self.dir.join(format!("{ifname}.conf"))
    }

    /// `<dir>/boringtun-<ifname>.log`.
    pub fn boringtun_log(&self, ifname: &str) -> PathBuf {
        self.dir.join(format!("boringtun-{ifname}.log"))
    }

    /// A command that runs `program` in this host's network and mount namespaces, with the
    /// environment `wg-quick` needs to fall back to boringtun.
    #[allow(unsafe_code)] // reason: pre_exec with setns(2) in the child
    pub fn command(&self, program: impl AsRef<OsStr>, ifname: &str) -> Result<Command> {
        let net =
            File::open(&self.netns).with_context(|| format!("opening {}", self.netns.display()))?;
        let mnt_path = format!("/proc/{}/ns/mnt", self.holder.pid());
        let mnt = File::open(&mnt_path).with_context(|| format!("opening {mnt_path}"))?;
        let mut cmd = Command::new(program);
        // SAFETY: setns is an async-signal-safe syscall on fds the closure owns (O_CLOEXEC:
        // the program does not inherit them); nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                for (fd, kind) in [(&net, libc::CLONE_NEWNET), (&mnt, libc::CLONE_NEWNS)] {
                    if libc::setns(fd.as_raw_fd(), kind) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.env("WG_QUICK_USERSPACE_IMPLEMENTATION", &self.boringtun)
            // As root, boringtun would otherwise try to drop to the (absent) sudo user.
            .env("WG_SUDO", "true")
            .env("WG_LOG_LEVEL", "info")
            .env("WG_LOG_FILE", self.boringtun_log(ifname));
        Ok(cmd)
    }

    /// Runs `program ARGS` in the host (bounded); fails unless it exits 0. Returns stdout.
    pub fn run(&self, program: &str, args: &[&str], ifname: &str) -> Result<String> {
        let mut cmd = self.command(program, ifname)?;
        cmd.args(args);
        let what = format!("{} {program} {}", self.label, args.join(" "));
        let out = self
            .procs
            .run_quiet(&what, &mut cmd, WG_TIMEOUT)?
            .check(&what)?;
        Ok(out.stdout)
    }

    /// `wg genkey` into `<dir>/<name>.key` (created 0600 before the key is written, so it is
    /// never readable by others) and `wg pubkey` of it into `<dir>/<name>.pub`.
    pub fn genkey(&self, name: &str) -> Result<WgKey> {
        let private = self.dir.join(format!("{name}.key"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&private)
            .with_context(|| format!("creating {}", private.display()))?;
        let io = Io {
            stdin: None,
            stdout: Some(private.clone()),
        };
        let what = format!("{} wg genkey", self.label);
        self.procs
            .run_io(&what, Command::new("wg").arg("genkey"), WG_TIMEOUT, &io)?
            .check(&what)?;
        let io = Io {
            stdin: Some(private.clone()),
            stdout: None,
        };
        let what = format!("{} wg pubkey", self.label);
        let public = self
            .procs
            .run_io(&what, Command::new("wg").arg("pubkey"), WG_TIMEOUT, &io)?
            .check(&what)?
            .stdout
            .trim()
            .to_owned();
        ensure!(
            public.len() == 44,
            "wg pubkey printed {public:?}, not a key"
        );
        let public_path = self.dir.join(format!("{name}.pub"));
        fs::write(&public_path, format!("{public}\n"))
            .with_context(|| format!("writing {}", public_path.display()))?;
        Ok(WgKey { private, public })
    }

    /// Writes `<dir>/<ifname>.conf` with mode 0600.
    pub fn write_config(&self, ifname: &str, text: &str) -> Result<PathBuf> {
        let path = self.config_path(ifname);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(path)
    }

    /// `wg-quick up <dir>/<ifname>.conf`.
    pub fn up(&self, ifname: &str) -> Result<()> {
        let conf = self.config_path(ifname);
        self.run("wg-quick", &["up", &conf.to_string_lossy()], ifname)
            .with_context(|| format!("boringtun log:\n{}", self.log_tail(ifname)))?;
        Ok(())
    }

    /// `wg-quick down <dir>/<ifname>.conf` (it deletes the interface), then waits (bounded)
    /// until the boringtun behind it has exited: until then it still holds the UDP port.
    pub fn down(&self, ifname: &str) -> Result<()> {
        let pids = self.boringtun_pids(ifname);
        let conf = self.config_path(ifname);
        self.run("wg-quick", &["down", &conf.to_string_lossy()], ifname)?;
        poll_until(
            &format!("boringtun of {} {ifname} to exit", self.label),
            BORINGTUN_EXIT_TIMEOUT,
            POLL_INTERVAL,
            || Ok(pids.iter().all(|&p| !self.owns(p)).then_some(())),
        )
    }

    /// True if `pid` is a process in this host's mount namespace (and not the holder).
    fn owns(&self, pid: i32) -> bool {
        pid != self.holder.pid() as i32 && mount_ns_of(pid).as_ref() == Some(&self.mnt_ns)
    }

    /// PIDs of the processes in this host's mount namespace other than the holder (the
    /// boringtun daemons, and any `wg` still running).
    fn members(&self) -> Vec<i32> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| self.owns(pid))
            .collect()
    }

    /// PIDs of the boringtun processes serving `ifname`.
    pub fn boringtun_pids(&self, ifname: &str) -> Vec<i32> {
        self.members()
            .into_iter()
            .filter(|pid| {
                let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let args: Vec<&[u8]> = cmdline
                    .split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .collect();
                args.first().is_some_and(|a| a.ends_with(b"boringtun-cli"))
                    && args.last() == Some(&ifname.as_bytes())
            })
            .collect()
    }

    /// Per-peer counters of `wg show IF transfer`, by public key.
    pub fn transfer(&self, ifname: &str) -> Result<BTreeMap<String, Transfer>> {
        let out = self.run("wg", &["show", ifname, "transfer"], ifname)?;
        let mut peers = BTreeMap::new();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [key, rx, tx] = fields[..] else {
                bail!("unexpected `wg show {ifname} transfer` line {line:?}");
            };
            let parse = |v: &str| {
                v.parse::<u64>()
                    .with_context(|| format!("counter {v:?} in {line:?}"))
            };
            peers.insert(
                key.to_owned(),
                Transfer {
                    rx: parse(rx)?,
                    tx: parse(tx)?,
                },
            );
        }
        Ok(peers)
    }

    /// The last lines of the boringtun log of `ifname` and `wg show` (for failure messages).
    pub fn log_tail(&self, ifname: &str) -> String {
        let log = fs::read_to_string(self.boringtun_log(ifname)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let show = self
            .command("wg", ifname)
            .and_then(|mut c| Ok(c.args(["show", ifname]).output()?))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "--- {} boringtun {ifname} log\n{tail}\n--- {} wg show {ifname}\n{show}",
            self.label, self.label
        )
    }

    /// Leaves the holder and boringtun running when this host is dropped (a lab that stays
    /// up; `cargo xtask lab --down` stops every process in the lab's namespaces).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// SIGTERMs boringtun (it then removes its socket and interface), waits (bounded) and
    /// SIGKILLs what is left, then the holder.
    fn stop_all(&self) {
        let members = self.members();
        for &pid in &members {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let gone = poll_until(
            "boringtun to exit after SIGTERM",
            Duration::from_secs(5),
            POLL_INTERVAL,
            || Ok(members.iter().all(|&p| !self.owns(p)).then_some(())),
        );
        if gone.is_err() {
            for pid in self.members() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = self.holder.kill();
    }
}

impl Drop for WgHost {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::thread::panicking() {
            for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(ifname) = name
                    .strip_prefix("boringtun-")
                    .and_then(|n| n.strip_suffix(".log"))
                {
                    eprintln!("{}", self.log_tail(ifname));
                }
            }
        }
        self.stop_all();
    }
}
