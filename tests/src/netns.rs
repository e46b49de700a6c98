//! Named network namespaces (`ip netns`) and running commands inside them.
//!
//! Two ways to run something in a namespace:
//! * [`Netns::exec_command`]: `ip netns exec NS prog ...`. Fine for short commands, sshd, ssh
//!   and tcpdump. Note that `ip netns exec` unshares the mount namespace and remounts `/sys`, so
//!   the process does not see the host's `/sys/fs/bpf`.
//! * [`Netns::setns_command`]: spawns `prog` directly with a `pre_exec` hook that calls
//!   `setns(fd, CLONE_NEWNET)` on `/run/netns/NS` (opened before the fork). Only the network
//!   namespace changes; the process shares the host mount namespace (and `/sys/fs/bpf`). Use it
//!   for the sshgw daemon and `sshgw status`.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where `ip netns` keeps its namespace mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Prefix of every namespace (and BPF pin directory) the harness creates:
/// `sgw-<pid of the creating process>-<n>[-role]`.
pub const LAB_PREFIX: &str = "sgw-";

/// Serializes `ip netns add/del` within this process: iproute2 sets up the shared `/run/netns`
/// mount on first use, and concurrent first uses can race.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A network namespace created with `ip netns add` and deleted (`ip netns del`) on drop.
pub struct Netns {
    name: String,
    fd: Arc<OwnedFd>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netns").field("name", &self.name).finish()
    }
}

/// Runs a short command with its output captured (no deadline: only for `ip`, `sysctl` and
/// similar commands that cannot block on the network).
fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd))
}

fn checked(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// `ip netns add NAME`, then brings `lo` up (a fresh namespace has `lo` down, which breaks
    /// local delivery).
    pub fn create(name: &str) -> Result<Self> {
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            checked(Command::new("ip").args(["netns", "add", name]))
                .with_context(|| format!("creating network namespace {name}"))?;
        }
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let fd = match File::open(&path) {
            Ok(f) => OwnedFd::from(f),
            Err(err) => {
                let _ = delete_netns(name);
                return Err(err).with_context(|| format!("opening {}", path.display()));
            }
        };
        let ns = Self {
            name: name.to_owned(),
            fd: Arc::new(fd),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// `ip -n NAME ARGS...`; fails with stderr on a non-zero exit, returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -n NAME ARGS...` returning the raw output whatever the exit status.
    pub fn ip_output(&self, args: &[&str]) -> Result<Output> {
        output(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command line `ip netns exec NAME program`; add arguments with `.arg(...)`.
    pub fn exec_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a short command in the namespace via `ip netns exec` and returns its stdout; fails
    /// on a non-zero exit. Only for commands that cannot block (no network waits).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        checked(self.exec_command(program).args(args))
    }

    /// A command that runs `program` directly, entering only this network namespace in a
    /// `pre_exec` hook (`setns(CLONE_NEWNET)`), so it keeps the host mount namespace (and
    /// `/sys/fs/bpf`).
    #[allow(unsafe_code)] // reason: pre_exec with setns(2) in the child
    pub fn setns_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.fd.clone();
        // SAFETY: setns is an async-signal-safe syscall; the fd is kept alive by the Arc the
        // closure owns (it is O_CLOEXEC, so the exec'd program does not inherit it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Sets a sysctl inside the namespace (`sysctl -q -w KEY=VALUE`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .with_context(|| format!("setting {key}={value} in {}", self.name))?;
        Ok(())
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.exec("sysctl", &["-n", key])?.trim().to_owned())
    }

    /// PIDs of the processes in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(
            checked(Command::new("ip").args(["netns", "pids", &self.name]))?
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = delete_netns(&self.name) {
            eprintln!("warning: {err:#}");
        }
    }
}

fn delete_netns(name: &str) -> Result<()> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    checked(Command::new("ip").args(["netns", "del", name]))
        .with_context(|| format!("deleting network namespace {name}"))?;
    Ok(())
}

/// The creating PID encoded in a harness name `sgw-<pid>-...`.
pub fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(LAB_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0 only checks existence; EPERM would also mean "exists".
    !matches!(
        kill(Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes leftovers of earlier, killed runs: every `sgw-<pid>-*` namespace whose `<pid>` is
/// no longer alive (processes still inside such a namespace are SIGKILLed by PID first: they
/// were started by that dead run), and every `sgw-<pid>-*` directory under `pin_root` (BPF
/// pins) of a dead PID. Errors are reported as warnings; returns the names removed.
pub fn sweep_stale(pin_root: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| !pid_alive(pid));
    if let Ok(dir) = fs::read_dir(NETNS_RUN_DIR) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !stale(&name) {
                continue;
            }
            if let Ok(out) = checked(Command::new("ip").args(["netns", "pids", &name])) {
                for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            match delete_netns(&name) {
                Ok(()) => removed.push(name),
                Err(err) => eprintln!("warning: sweeping stale namespace: {err:#}"),
            }
        }
    }
    if let Ok(dir) = fs::read_dir(pin_root) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                match fs::remove_dir_all(entry.path()) {
                    Ok(()) => removed.push(entry.path().display().to_string()),
                    Err(err) => eprintln!(
                        "warning: removing stale pin dir {}: {err}",
                        entry.path().display()
                    ),
                }
            }
        }
    }
    removed
}
