//! A Debian 12 router booted with a real systemd as PID 1 (`systemd-nspawn -b`) inside a
//! lab network namespace, for testing the shipped unit as a router runs it.
//!
//! ```ignore
//! let router = Container::boot(lab, &lab.rtr, &[(bin, "/opt/sshgw-test/sshgw")])?;
//! router.run_ok(&["systemctl", "start", "sshgw"], Duration::from_secs(60))?;
//! let pid = router.unit_property("sshgw", "MainPID")?;
//! ```
//!
//! # What nspawn needs here (and why)
//!
//! * `--register=no --keep-unit`: the host need not run systemd or D-Bus.
//! * `--network-namespace-path=/run/netns/<lab>-rtr`: the container is the lab's router. Unlike
//!   `--private-network`, this grants no `CAP_NET_ADMIN`, so `--capability=` adds it, with
//!   `CAP_BPF` and `CAP_PERFMON` (a service can only hold what the container's bounding set
//!   has) and `CAP_IPC_LOCK` (else nspawn's seccomp filter denies `mlock`, which a real host
//!   allows).
//! * `--system-call-filter=bpf`: nspawn's own seccomp allow-list leaves `bpf()` out.
//! * bpffs: the container's systemd does not mount `/sys/fs/bpf` and refuses a `.mount`
//!   unit for it, so a oneshot unit mounts a bpffs private to the container. The host's
//!   `/sys/fs/bpf` is never bound in: the unit's `ExecStartPre` would take over the host's
//!   `/sys/fs/bpf/sshgw`.
//!
//! # Cleanup
//!
//! nspawn runs in a cgroup of its own (`<lab name>-nspawn` in each cgroup hierarchy), so
//! its `--keep-unit` leftovers (`payload/`, `supervisor/`) stay there. On drop the container
//! is shut down (SIGTERM to nspawn: an orderly poweroff), or, if that does not end it in
//! time, every process of that cgroup is killed (`cgroup.kill`). Then the cgroups, nspawn's
//! `/run/systemd/nspawn` bookkeeping and the rootfs are removed. [`sweep_stale`] removes the
//! cgroups of earlier runs that were killed.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, owner_pid};
use crate::process::{Finished, Proc, Processes, describe_status};
use crate::rootfs;
use crate::topology::Lab;
use crate::wait::poll_until;

/// How long the container may take from `systemd-nspawn` to `running`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long an orderly poweroff may take before the container's processes are killed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of a short command inside the container (systemctl, cat, sshgw CLI).
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The capabilities the container's bounding set gets (see the module docs).
pub const CAPABILITIES: &str = "CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON,CAP_IPC_LOCK";

/// `PATH` of commands run inside the container.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Mounts a private bpffs at `/sys/fs/bpf`, as systemd does on a real host.
const BPFFS_UNIT: &str = "\
[Unit]
Description=Mount a bpffs at /sys/fs/bpf (what PID 1 does on a real host)
DefaultDependencies=no
Before=sysinit.target
ConditionPathIsMountPoint=!/sys/fs/bpf

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -t bpf -o mode=700,nosuid,nodev,noexec bpf /sys/fs/bpf

[Install]
WantedBy=sysinit.target
";

/// A booted container; shut down and removed on drop.
pub struct Container {
    name: String,
    root: PathBuf,
    procs: Processes,
    nspawn: Proc,
    leader: u32,
    cgroups: Vec<PathBuf>,
}

/// The cgroup hierarchies nspawn works in: the unified one (cgroup2) first, then the named
/// `systemd` v1 hierarchy on hybrid hosts.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_owned()];
    }
    ["unified", "systemd"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

impl Container {
    /// Unpacks the cached Debian rootfs (building it first if needed), prepares it as a router
    /// (hostname, bpffs unit) and boots it in `netns` with `binds` (host path, container path)
    /// bound read-only. Returns once `systemctl is-system-running --wait` says `running`.
    pub fn boot(lab: &Lab, netns: &Netns, binds: &[(PathBuf, &str)]) -> Result<Self> {
        for tool in ["systemd-nspawn", "debootstrap", "nsenter"] {
            if which(tool).is_none() {
                bail!(
                    "`{tool}` is missing: install systemd-container (at the host systemd's \
                     version), debootstrap and util-linux (`cargo xtask prereqs` does)"
                );
            }
        }
        sweep_stale();
        let tar = rootfs::ensure_cached(lab.procs())?;
        let name = format!("{}-router", lab.name());
        // Under the target dir, not the lab's temp dir: a long-lived rootfs in /tmp is
        // exposed to whatever cleans /tmp while the container runs.
        let dir = containers_dir().join(lab.name());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = dir.join("rootfs");
        rootfs::unpack(lab.procs(), &tar, &root)?;
        prepare_root(&root, &name)?;
        let cgroups = make_cgroups(&format!("{}-nspawn", lab.name()))?;
        let mut cmd = nspawn_command(&root, &name, netns, binds);
        enter_cgroups(&mut cmd, &cgroups)?;
        let nspawn = match lab.procs().spawn("systemd-nspawn", &mut cmd) {
            Ok(p) => p,
            Err(e) => {
                remove_cgroups(&cgroups);
                return Err(e);
            }
        };
        let mut container = Self {
            name,
            root,
            procs: lab.procs().clone(),
            nspawn,
            leader: 0,
            cgroups,
        };
        container.leader = container.wait_leader()?;
        container.wait_running()?;
        Ok(container)
    }

    /// The machine name (also the container's hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `path` inside the container.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// nspawn's output: the container's console (systemd's boot and shutdown messages).
    pub fn console(&self) -> String {
        self.nspawn.log_text()
    }

    /// Waits for the container's PID 1: the child of nspawn named `systemd`.
    fn wait_leader(&self) -> Result<u32> {
        let nspawn = self.nspawn.pid();
        poll_until(
            "the container's systemd to start",
            BOOT_TIMEOUT,
            Duration::from_millis(100),
            || {
                if let Some(st) = self.nspawn.try_status()? {
                    bail!(
                        "systemd-nspawn exited ({}) during boot:\n{}",
                        describe_status(st),
                        self.console()
                    );
                }
                Ok(children(nspawn)
                    .into_iter()
                    .find(|&pid| comm(pid).as_deref() == Some("systemd")))
            },
        )
    }

    /// Polls `systemctl is-system-running --wait` until the boot has finished; fails unless
    /// the state is `running` (a `degraded` boot lists its failed units).
    fn wait_running(&self) -> Result<()> {
        let mut last = String::new();
        let state = poll_until(
            "the container to finish booting",
            BOOT_TIMEOUT,
            Duration::from_millis(200),
            || {
                if let Some(st) = self.nspawn.try_status()? {
                    bail!("systemd-nspawn exited ({})", describe_status(st));
                }
                let out = self.run(&["systemctl", "is-system-running", "--wait"], BOOT_TIMEOUT)?;
                let state = out.stdout.trim().to_owned();
                last = format!("{state} {}", out.stderr.trim());
                Ok(match state.as_str() {
                    "" | "initializing" | "starting" => None,
                    _ => Some(state),
                })
            },
        )
        .with_context(|| format!("last answer: {last}\n--- console ---\n{}", self.console()))?;
        if state != "running" {
            let failed = self
                .run(&["systemctl", "--failed", "--no-pager"], EXEC_TIMEOUT)
                .map(|f| f.stdout)
                .unwrap_or_default();
            bail!(
                "the container booted {state:?}, not \"running\":\n{failed}\n{}",
                self.journal(None)
            );
        }
        Ok(())
    }

    /// A command run inside every namespace of the container (`nsenter -a`), with a clean
    /// environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "env", "-i"])
            .arg(format!("PATH={CONTAINER_PATH}"))
            .args(args);
        cmd
    }

    /// Runs `args` inside the container to completion (any exit code).
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Finished> {
        let label = format!("[{}] {}", self.name, args.join(" "));
        self.procs
            .run_quiet(&label, &mut self.command(args), timeout)
    }

    /// Runs `args` inside the container; fails unless it exits 0. Returns stdout.
    pub fn run_ok(&self, args: &[&str], timeout: Duration) -> Result<String> {
        Ok(self
            .run(args, timeout)?
            .check(&format!("[{}] {}", self.name, args.join(" ")))?
            .stdout)
    }

    /// `systemctl show -P PROPERTY UNIT`.
    pub fn unit_property(&self, unit: &str, property: &str) -> Result<String> {
        Ok(self
            .run_ok(&["systemctl", "show", "-P", property, unit], EXEC_TIMEOUT)?
            .trim()
            .to_owned())
    }

    /// The journal of `unit` (or of the whole boot), message text only; for assertions and
    /// failure reports.
    pub fn journal(&self, unit: Option<&str>) -> String {
        let mut args = vec!["journalctl", "--no-pager", "-o", "cat", "-b"];
        if let Some(unit) = unit {
            args.extend(["-u", unit]);
        }
        match self.run(&args, EXEC_TIMEOUT) {
            Ok(f) => f.stdout,
            Err(e) => format!("(journalctl failed: {e:#})"),
        }
    }

    /// Writes `text` to `path` inside the container (through the host path).
    pub fn write_file(&self, path: &str, text: &str) -> Result<()> {
        let host = self.host_path(path);
        if let Some(dir) = host.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&host, text).with_context(|| format!("writing {}", host.display()))
    }

    fn shutdown(&mut self) {
        if self.nspawn.is_running() {
            // nspawn turns SIGTERM into an orderly poweroff of the container.
            let _ = self.nspawn.signal(nix::sys::signal::Signal::SIGTERM);
            if self.nspawn.wait_exit(SHUTDOWN_TIMEOUT).is_err() {
                eprintln!(
                    "warning: container {} did not power off in {SHUTDOWN_TIMEOUT:?}; killing it",
                    self.name
                );
                kill_cgroup(&self.cgroups);
                let _ = self.nspawn.kill();
            }
        }
        kill_cgroup(&self.cgroups);
        remove_cgroups(&self.cgroups);
        remove_nspawn_bookkeeping(&self.name);
        remove_root(&self.root);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== container {} journal\n{}",
                self.name,
                self.journal(None)
            );
        }
        self.shutdown();
    }
}

/// Hostname and the bpffs unit (enabled) in a freshly unpacked rootfs.
fn prepare_root(root: &Path, name: &str) -> Result<()> {
    let write = |path: &str, text: &str| -> Result<()> {
        let p = root.join(path);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("etc/hostname", &format!("{name}\n"))?;
    write(
        "etc/hosts",
        &format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {name}\n"),
    )?;
    write("etc/systemd/system/sshgw-test-bpffs.service", BPFFS_UNIT)?;
    let wants = root.join("etc/systemd/system/sysinit.target.wants");
    fs::create_dir_all(&wants).with_context(|| format!("creating {}", wants.display()))?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/sshgw-test-bpffs.service",
        wants.join("sshgw-test-bpffs.service"),
    )
    .context("enabling sshgw-test-bpffs.service")?;
    Ok(())
}

fn nspawn_command(root: &Path, name: &str, netns: &Netns, binds: &[(PathBuf, &str)]) -> Command {
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("-D")
        .arg(root)
        .args([
            "-M",
            name,
            "-b",
            "--register=no",
            "--keep-unit",
            "--settings=no",
        ])
        .arg(format!(
            "--network-namespace-path={}",
            netns.path().display()
        ))
        .arg(format!("--capability={CAPABILITIES}"))
        .args(["--system-call-filter=bpf", "--console=pipe"]);
    for (host, inside) in binds {
        cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
    }
    cmd
}

/// Creates the cgroup `name` in every hierarchy.
fn make_cgroups(name: &str) -> Result<Vec<PathBuf>> {
    let roots = cgroup_roots();
    if roots.is_empty() {
        bail!("no cgroup hierarchy found under /sys/fs/cgroup");
    }
    let mut made = Vec::new();
    for root in roots {
        let dir = root.join(name);
        if let Err(e) = fs::create_dir(&dir) {
            remove_cgroups(&made);
            return Err(e).with_context(|| format!("creating cgroup {}", dir.display()));
        }
        made.push(dir);
    }
    Ok(made)
}

/// Moves the spawned process into `cgroups` before it execs.
#[allow(unsafe_code)] // reason: pre_exec writing cgroup.procs in the child
fn enter_cgroups(cmd: &mut Command, cgroups: &[PathBuf]) -> Result<()> {
    let files: Vec<CString> = cgroups
        .iter()
        .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()))
        .collect::<Result<_, _>>()
        .context("cgroup path with NUL")?;
    // SAFETY: open, write and close are async-signal-safe; the paths were allocated before
    // the fork and are only borrowed here.
    unsafe {
        cmd.pre_exec(move || {
            for file in &files {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// Kills every process in the (unified) cgroups: all of them were started for this
/// container.
fn kill_cgroup(cgroups: &[PathBuf]) {
    for dir in cgroups {
        let kill = dir.join("cgroup.kill");
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        }
    }
}

/// Removes the cgroups (and whatever sub-cgroups nspawn and the container's systemd made),
/// deepest first, once their processes are gone.
fn remove_cgroups(cgroups: &[PathBuf]) {
    for dir in cgroups {
        let removed = poll_until(
            &format!("cgroup {} to be empty", dir.display()),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok(rmdir_tree(dir).then_some(())),
        );
        if let Err(e) = removed {
            eprintln!("warning: {e:#}");
        }
    }
}

/// rmdir of `dir` and its subdirectories, deepest first; true when `dir` is gone.
fn rmdir_tree(dir: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&entry.path());
            }
        }
    }
    fs::remove_dir(dir).is_ok() || !dir.exists()
}

/// nspawn's `/run/systemd/nspawn/propagate/<machine>`, and, when no `systemd-nspawn` runs
/// any more, its image lock files and its (then empty) shared directories. A killed nspawn
/// leaves both behind.
fn remove_nspawn_bookkeeping(name: &str) {
    let base = Path::new(NSPAWN_RUN_DIR);
    let _ = fs::remove_dir(base.join("propagate").join(name));
    let nspawn_runs = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
                .and_then(comm)
                .is_some_and(|c| c == "systemd-nspawn")
        });
    if nspawn_runs {
        return;
    }
    if let Ok(locks) = fs::read_dir(base.join("locks")) {
        for lock in locks.flatten() {
            let _ = fs::remove_file(lock.path());
        }
    }
    for dir in ["propagate", "locks", "incoming", ""] {
        let _ = fs::remove_dir(base.join(dir));
    }
}

const NSPAWN_RUN_DIR: &str = "/run/systemd/nspawn";

/// Where the containers' root directories are unpacked: `<cache>/containers/<lab name>/`.
fn containers_dir() -> PathBuf {
    rootfs::cache_dir().join("containers")
}

/// Removes the unpacked rootfs (and its per-lab directory) unless something is still
/// mounted below it.
fn remove_root(root: &Path) {
    let prefix = root.to_string_lossy().into_owned();
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)));
    if mounted {
        eprintln!(
            "warning: not removing {}: something is mounted below it",
            root.display()
        );
        return;
    }
    if let Some(dir) = root.parent()
        && let Err(e) = fs::remove_dir_all(dir)
    {
        eprintln!("warning: removing {}: {e}", dir.display());
    }
}

/// `tool` on PATH or in the sbin directories.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// PIDs whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent(p) == Some(pid))
        .collect()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn comm(pid: u32) -> Option<String> {
    Some(
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

fn pid_gone(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes what containers of earlier, killed runs left: their nspawn cgroups
/// (`sgw-<pid>-<n>-nspawn`, killing what is left in them first) and their root directories,
/// for runs whose process is gone.
pub fn sweep_stale() {
    for root in cgroup_roots() {
        let Ok(entries) = fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = name.ends_with("-nspawn") && pid_gone(&name);
            if stale {
                eprintln!(
                    "note: removing stale container cgroup {}",
                    entry.path().display()
                );
                kill_cgroup(&[entry.path()]);
                remove_cgroups(&[entry.path()]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(Path::new(NSPAWN_RUN_DIR).join("propagate")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if pid_gone(&name) {
                remove_nspawn_bookkeeping(&name);
            }
        }
    }
    // The containers are dead now: their root directories can go.
    if let Ok(entries) = fs::read_dir(containers_dir()) {
        for entry in entries.flatten() {
            if pid_gone(&entry.file_name().to_string_lossy()) {
                eprintln!(
                    "note: removing stale container dir {}",
                    entry.path().display()
                );
                remove_root(&entry.path().join("rootfs"));
            }
        }
    }
}
