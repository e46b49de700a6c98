//! A lab that stays up after the process that built it exits (`cargo xtask lab`), and its
//! teardown from a state file (`cargo xtask lab --down`).
//!
//! A [`Lab`] normally owns everything it creates and removes it on drop: its processes
//! (SIGKILL by PID), BPF pin directories, namespaces and temp dir. Every child also gets
//! `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the test process even when no `Drop` runs. A lab
//! that must stay up is built in three moves:
//!
//! 1. its long-lived processes (sshd, the daemon) are spawned after
//!    [`Processes::set_detached`]`(true)`: no death signal, and a session of their own
//!    (`setsid`), so neither the exit of the lab binary nor Ctrl-C or a hangup of its terminal
//!    reaches them (they are re-parented to init when the lab binary exits);
//! 2. everything created is recorded in a [`LabState`], saved to `<state dir>/lab-state.json`
//!    **as it is created** (namespaces before they exist, each PID right after its spawn), so
//!    a run that is interrupted half-way can be torn down as well;
//! 3. [`detach`] forgets the lab's drop guards: nothing is killed or removed when the lab binary
//!    exits.
//!
//! [`down`] reads the state file and removes exactly what it lists, in this order: the daemon
//! (SIGTERM, then SIGKILL after a bounded wait), the other recorded processes, any process still
//! inside one of the lab's namespaces (e.g. an ssh session the user left open), the BPF pins
//! (`sshgw datapath remove`, then the directory), the namespaces (which takes the veths, routes
//! and the datapath's policy-routing rule with them), and last the directories. PIDs are
//! matched with their start time (`/proc/PID/stat`), so a PID reused by an unrelated process is
//! never signalled. Everything is idempotent: a second `down` finds nothing and says so.
//!
//! ```ignore
//! let mut state = LabState::create(state_dir, "sgwlab", "interactive")?; // mkdir + marker + save
//! state.expect_lab("sgwlab")?;                  // namespaces and pin dir, before they exist
//! let lab = Lab::with_name("sgwlab", state_dir)?;
//! state.record_lab(&lab)?;
//! lab.procs().set_detached(true);
//! let sshd = lab.start_sshd_for_gateway()?;
//! state.record_sshd(&sshd)?;
//! // ... the gateway: state.record_gateway(&gw)? ...
//! persist::detach(lab);                         // stays up after exit
//! // later, in any process:
//! persist::down(state_dir, Some("sgwlab"), &mut |line| println!("{line}"))?;
//! ```

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::gateway::Gateway;
use crate::netns::NETNS_RUN_DIR;
use crate::process::{Proc, Processes};
use crate::sshd::Sshd;
use crate::topology::{BPF_PIN_ROOT, Lab};

/// The state file inside the state dir.
pub const STATE_FILE: &str = "lab-state.json";

/// Marker file: the state dir was created by [`LabState::create`] and may be removed whole.
pub const MARKER_FILE: &str = ".sshgw-lab";

/// Version of the state file layout.
pub const STATE_VERSION: u32 = 1;

/// Process role of the sshgw daemon (stopped first, with a longer grace period).
pub const ROLE_DAEMON: &str = "sshgw";
/// Process role of the lab's sshd.
pub const ROLE_SSHD: &str = "sshd";

/// How long the daemon may take to stop after SIGTERM before it is SIGKILLed.
pub const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long other processes may take to exit after SIGTERM.
pub const PROCESS_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a SIGKILLed process may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one `sshgw sessions` command during the teardown.
const SESSION_KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of `sshgw datapath remove`.
const DATAPATH_REMOVE_TIMEOUT: Duration = Duration::from_secs(20);

/// One process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// `sshgw` (the daemon), `sshd`, or another label.
    pub role: String,
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22): tells our process
    /// from a later one that reused the PID.
    pub start_time: Option<u64>,
    /// The command line, for messages.
    pub command: String,
}

/// Everything a persistent lab created: what [`down`] removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub version: u32,
    /// Lab name: namespaces are `<name>-dev|rtr|srv`.
    pub name: String,
    /// `interactive` (stays up) or `ci` (torn down by the same run).
    pub mode: String,
    /// PID of the process that built the lab (it has normally exited since).
    pub creator_pid: u32,
    /// Unix time (seconds) of creation.
    pub created_unix: u64,
    /// Set once the lab is completely up.
    pub complete: bool,
    /// The state dir (holds this file; removed last).
    pub state_dir: PathBuf,
    /// Network namespaces (`ip netns` names).
    pub namespaces: Vec<String>,
    /// The router namespace, where `sshgw datapath remove` runs.
    pub router_ns: Option<String>,
    /// Processes started, in start order.
    pub processes: Vec<ProcessRecord>,
    /// BPF pin directories.
    pub pin_dirs: Vec<PathBuf>,
    /// Directories removed (recursively) at the end, in this order, before the state dir.
    pub dirs: Vec<PathBuf>,
    /// The sshgw binary and config, for `sshgw datapath remove`.
    pub sshgw_bin: Option<PathBuf>,
    pub sshgw_config: Option<PathBuf>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LabState {
    /// Creates the state dir (mode 0755, so lab users can reach their homes below it) with its
    /// marker file and saves a fresh state. Refuses a dir that exists without the marker: it
    /// was not made by us and would be removed by [`down`].
    pub fn create(state_dir: &Path, name: &str, mode: &str) -> Result<Self> {
        if !state_dir.is_absolute() {
            bail!(
                "the state dir {} is not an absolute path",
                state_dir.display()
            );
        }
        if state_dir.exists()
            && !state_dir.join(MARKER_FILE).exists()
            && fs::read_dir(state_dir)
                .with_context(|| format!("reading {}", state_dir.display()))?
                .next()
                .is_some()
        {
            bail!(
                "{} exists, is not empty and was not created by the lab (no {MARKER_FILE}); \
                 pick another state dir or remove it",
                state_dir.display()
            );
        }
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", state_dir.display()))?;
        fs::write(
            state_dir.join(MARKER_FILE),
            "created by sshgw-lab; `cargo xtask lab --down` removes this directory\n",
        )
        .with_context(|| format!("writing the marker in {}", state_dir.display()))?;
        let state = Self {
            version: STATE_VERSION,
            name: name.to_owned(),
            mode: mode.to_owned(),
            creator_pid: std::process::id(),
            created_unix: unix_now(),
            complete: false,
            state_dir: state_dir.to_owned(),
            namespaces: Vec::new(),
            router_ns: None,
            processes: Vec::new(),
            pin_dirs: Vec::new(),
            dirs: Vec::new(),
            sshgw_bin: None,
            sshgw_config: None,
        };
        state.save()?;
        Ok(state)
    }

    /// `<state_dir>/lab-state.json`.
    pub fn path(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    /// Reads `<state_dir>/lab-state.json`; `None` if there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>> {
        let path = state_dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let state: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state file", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{} has version {} (this build reads version {STATE_VERSION})",
                path.display(),
                state.version
            );
        }
        Ok(Some(state))
    }

    /// Writes the state file atomically (temp file + rename).
    pub fn save(&self) -> Result<()> {
        let path = self.path();
        let tmp = self.state_dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    fn add_namespace(&mut self, ns: &str) {
        if !self.namespaces.iter().any(|n| n == ns) {
            self.namespaces.push(ns.to_owned());
        }
    }

    fn add_pin_dir(&mut self, dir: &Path) {
        if !self.pin_dirs.iter().any(|d| d == dir) {
            self.pin_dirs.push(dir.to_owned());
        }
    }

    /// Records the names [`Lab::with_name`] is about to use (namespaces, default pin dir)
    /// before they exist, so an interrupted creation can be torn down too.
    pub fn expect_lab(&mut self, name: &str) -> Result<()> {
        for role in ["dev", "rtr", "srv"] {
            self.add_namespace(&format!("{name}-{role}"));
        }
        self.router_ns = Some(format!("{name}-rtr"));
        self.add_pin_dir(&Path::new(BPF_PIN_ROOT).join(name));
        self.save()
    }

    /// Records a created lab: its namespaces and its directory.
    pub fn record_lab(&mut self, lab: &Lab) -> Result<()> {
        lab.name().clone_into(&mut self.name);
        for ns in [&lab.dev, &lab.rtr, &lab.srv] {
            self.add_namespace(ns.name());
        }
        self.router_ns = Some(lab.rtr.name().to_owned());
        self.add_pin_dir(&lab.pin_dir(None));
        if !self.dirs.iter().any(|d| d == lab.dir()) {
            self.dirs.push(lab.dir().to_owned());
        }
        self.save()
    }

    /// Records a started process (PID and start time).
    pub fn record_process(&mut self, role: &str, proc: &Proc) -> Result<()> {
        let pid = proc.pid();
        self.processes.push(ProcessRecord {
            role: role.to_owned(),
            pid,
            start_time: proc_stat(pid).map(|s| s.start_time),
            command: proc.name().to_owned(),
        });
        self.save()
    }

    /// Records the lab's sshd.
    pub fn record_sshd(&mut self, sshd: &Sshd) -> Result<()> {
        self.record_process(ROLE_SSHD, sshd.proc())
    }

    /// Records the running daemon, its pin directory, binary and config.
    pub fn record_gateway(&mut self, gw: &Gateway<'_>) -> Result<()> {
        self.add_pin_dir(gw.pin_dir());
        self.sshgw_bin = Some(gw.bin().to_owned());
        self.sshgw_config = Some(gw.config_path().to_owned());
        match gw.proc() {
            Some(proc) => self.record_process(ROLE_DAEMON, proc),
            None => self.save(),
        }
    }

    /// Marks the lab as completely up.
    pub fn mark_complete(&mut self) -> Result<()> {
        self.complete = true;
        self.save()
    }
}

/// Leaves `lab` running when this process exits: forgets its drop guards, so its processes
/// are not killed, and its namespaces, pin directories and temp dir are not removed. The
/// long-lived processes must have been spawned detached ([`Processes::set_detached`]),
/// otherwise their parent-death signal kills them anyway when this process exits. Record
/// everything in a [`LabState`] first: [`down`] is then the only way to remove it.
///
/// In the process that detached, killed children stay zombies until reaped; [`down`] reaps
/// the recorded PIDs (waitpid), so a same-process teardown (`--ci`) works as well.
pub fn detach(lab: Lab) {
    std::mem::forget(lab);
}

/// `/proc/PID/stat`: state letter and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub start_time: u64,
}

/// Reads `/proc/PID/stat` (None if the process does not exist).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// Parses a `/proc/PID/stat` line: the fields after the command (which is in parentheses and
/// may itself contain spaces and parentheses) are split on whitespace; field 3 is the state,
/// field 4 the parent PID and field 22 the start time.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let ppid = fields.get(4 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        start_time,
    })
}

/// This process and its ancestors: never signalled, even when they run inside a lab
/// namespace (`cargo xtask lab --down` typed in an `ip netns exec sgwlab-dev bash`).
fn self_and_ancestors() -> Vec<u32> {
    let mut pids = Vec::new();
    let mut pid = std::process::id();
    while pid > 1 && !pids.contains(&pid) {
        pids.push(pid);
        match proc_stat(pid) {
            Some(stat) => pid = stat.ppid,
            None => break,
        }
    }
    pids
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Reaps `pid` if it is our exited child (a `--ci` run tears down its own children); harmless
/// otherwise (ECHILD).
fn reap(pid: u32) {
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
}

/// Whether the recorded process still runs: it exists, is not a zombie, and (when recorded)
/// has the same start time, so it is not a newer process that reused the PID.
pub fn is_alive(rec: &ProcessRecord) -> bool {
    reap(rec.pid);
    match proc_stat(rec.pid) {
        None => false,
        Some(stat) => {
            !matches!(stat.state, 'Z' | 'X') && rec.start_time.is_none_or(|t| t == stat.start_time)
        }
    }
}

fn wait_gone(rec: &ProcessRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(rec) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, a bounded wait, then SIGKILL. Returns what happened, for the log.
fn stop_process(rec: &ProcessRecord, grace: Duration) -> Result<String> {
    let what = format!("{} (pid {}, {})", rec.role, rec.pid, rec.command);
    if !is_alive(rec) {
        return Ok(format!("{what}: already gone"));
    }
    let pid = Pid::from_raw(rec.pid as i32);
    let start = Instant::now();
    let _ = kill(pid, Signal::SIGTERM);
    if wait_gone(rec, grace) {
        return Ok(format!(
            "{what}: stopped (SIGTERM, {:.1}s)",
            start.elapsed().as_secs_f64()
        ));
    }
    let _ = kill(pid, Signal::SIGKILL);
    if wait_gone(rec, KILL_TIMEOUT) {
        Ok(format!(
            "{what}: SIGKILLed after ignoring SIGTERM for {}s",
            grace.as_secs()
        ))
    } else {
        bail!("{what} survived SIGKILL")
    }
}

/// The PIDs inside a network namespace (`ip netns pids`).
fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn netns_exists(ns: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(ns).exists()
}

/// `program` entering only the network namespace `ns` (setns in pre_exec), keeping the host
/// mount namespace and `/sys/fs/bpf` (as the daemon needs).
#[allow(unsafe_code)] // reason: pre_exec with setns(2) in the child
fn setns_command(ns: &str, program: &Path) -> Result<Command> {
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    let fd =
        OwnedFd::from(File::open(&path).with_context(|| format!("opening {}", path.display()))?);
    let mut cmd = Command::new(program);
    // SAFETY: setns is an async-signal-safe syscall; the closure owns the (O_CLOEXEC) fd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// What a bounded run printed.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with a deadline (killed on timeout, an error) and its output captured.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Ran> {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().context("creating a temp file")?;
    let mut err = tempfile::tempfile().context("creating a temp file")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &mut File| -> Result<String> {
        let mut text = String::new();
        f.rewind()?;
        f.read_to_string(&mut text)?;
        Ok(text)
    };
    Ok(Ran {
        success: status.success(),
        stdout: read(&mut out)?,
        stderr: read(&mut err)?,
    })
}

/// Ends every live session of the daemon (`sshgw sessions --active`, `sessions kill ID`);
/// returns the ids ended. Best effort: a daemon that does not answer is stopped anyway.
fn kill_live_sessions(bin: &Path, config: &Path) -> Vec<String> {
    let mut list = Command::new(bin);
    list.args(["sessions", "--active", "--json", "--config"])
        .arg(config);
    let out = match run_bounded(&mut list, SESSION_KILL_TIMEOUT) {
        Ok(ran) if ran.success => ran.stdout,
        _ => return Vec::new(),
    };
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.get("sessions").and_then(|s| s.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .collect();
    ids.into_iter()
        .filter(|id| {
            let mut kill = Command::new(bin);
            kill.args(["sessions", "kill", id, "--config"]).arg(config);
            run_bounded(&mut kill, SESSION_KILL_TIMEOUT).is_ok_and(|ran| ran.success)
        })
        .collect()
}

/// A directory we may remove recursively: absolute, normal components only, at least two deep
/// (`/tmp/x`, never `/` or `/tmp`).
fn removable(dir: &Path) -> bool {
    dir.is_absolute()
        && dir
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && dir.components().count() >= 3
}

/// What [`down`] would remove or stop if it ran now. Empty = nothing of the lab is left.
pub fn leftovers(state: &LabState) -> Vec<String> {
    let mut found = Vec::new();
    for rec in &state.processes {
        if is_alive(rec) {
            found.push(format!("process {} (pid {})", rec.role, rec.pid));
        }
    }
    for ns in &state.namespaces {
        if netns_exists(ns) {
            found.push(format!("network namespace {ns}"));
        }
    }
    for dir in state.pin_dirs.iter().chain(&state.dirs) {
        if dir.exists() {
            found.push(format!("directory {}", dir.display()));
        }
    }
    if state.state_dir.exists() {
        found.push(format!("state dir {}", state.state_dir.display()));
    }
    found
}

/// What [`down`] did.
#[derive(Debug, Default, Clone)]
pub struct Teardown {
    /// The state file was found (a lab built by [`LabState::create`] was torn down).
    pub had_state: bool,
    /// Everything removed or stopped, one line each; empty = there was nothing to do.
    pub actions: Vec<String>,
}

/// Whether anything of a lab is there: a state file, the state dir, or (with `name`) one of
/// the namespaces `<name>-dev|rtr|srv` or the pin directory `/sys/fs/bpf/<name>`.
pub fn is_up(state_dir: &Path, name: Option<&str>) -> bool {
    state_dir.exists()
        || name.is_some_and(|name| {
            ["dev", "rtr", "srv"]
                .iter()
                .any(|role| netns_exists(&format!("{name}-{role}")))
                || Path::new(BPF_PIN_ROOT).join(name).exists()
        })
}

/// Tears down the lab recorded in `state_dir` (see the module docs for the order). With
/// `name`, also removes `<name>-dev|rtr|srv` and `/sys/fs/bpf/<name>` when no state file lists
/// them (a fixed-name lab whose state file was lost). The state dir itself is removed only if
/// it carries the marker file. Progress lines go to `log`. Idempotent; errors are collected
/// and reported together after every step was tried.
pub fn down(state_dir: &Path, name: Option<&str>, log: &mut dyn FnMut(&str)) -> Result<Teardown> {
    let state = LabState::load(state_dir)?;
    let mut report = Teardown {
        had_state: state.is_some(),
        actions: Vec::new(),
    };
    let mut errors: Vec<String> = Vec::new();
    let mut state = state.unwrap_or_else(|| LabState {
        version: STATE_VERSION,
        name: name.unwrap_or_default().to_owned(),
        mode: String::new(),
        creator_pid: 0,
        created_unix: 0,
        complete: false,
        state_dir: state_dir.to_owned(),
        namespaces: Vec::new(),
        router_ns: None,
        processes: Vec::new(),
        pin_dirs: Vec::new(),
        dirs: Vec::new(),
        sshgw_bin: None,
        sshgw_config: None,
    });
    if let Some(name) = name {
        for role in ["dev", "rtr", "srv"] {
            state.add_namespace(&format!("{name}-{role}"));
        }
        state.add_pin_dir(&Path::new(BPF_PIN_ROOT).join(name));
        if state.router_ns.is_none() {
            state.router_ns = Some(format!("{name}-rtr"));
        }
    }
    let act = |line: String, report: &mut Teardown, log: &mut dyn FnMut(&str)| {
        log(&line);
        report.actions.push(line);
    };

    // 1. The daemon first (with on_stop = "remove" it takes its datapath out), then the
    //    other recorded processes. Live sessions (someone left an ssh open) are killed
    //    through the control API first: the daemon would otherwise drain them for
    //    drain_timeout_secs, and their users get a clear message.
    if state
        .processes
        .iter()
        .any(|p| p.role == ROLE_DAEMON && is_alive(p))
        && let (Some(bin), Some(config)) = (&state.sshgw_bin, &state.sshgw_config)
    {
        for id in kill_live_sessions(bin, config) {
            act(
                format!("sshgw sessions kill {id}: ended a live session"),
                &mut report,
                log,
            );
        }
    }
    let mut ordered: Vec<&ProcessRecord> = state
        .processes
        .iter()
        .filter(|p| p.role == ROLE_DAEMON)
        .collect();
    ordered.extend(state.processes.iter().filter(|p| p.role != ROLE_DAEMON));
    for rec in ordered {
        let grace = if rec.role == ROLE_DAEMON {
            DAEMON_STOP_TIMEOUT
        } else {
            PROCESS_STOP_TIMEOUT
        };
        let was_alive = is_alive(rec);
        match stop_process(rec, grace) {
            Ok(line) if was_alive => act(line, &mut report, log),
            Ok(_) => {}
            Err(err) => errors.push(format!("{err:#}")),
        }
    }

    // 2. Anything still inside the lab's namespaces: sshd's session processes, an ssh the
    //    user left open in the device namespace. These namespaces are the lab's own.
    let spared = self_and_ancestors();
    for ns in state.namespaces.iter().filter(|ns| netns_exists(ns)) {
        for pid in netns_pids(ns) {
            if spared.contains(&pid) {
                log(&format!(
                    "note: pid {pid} ({}) in {ns} runs this teardown (or is its parent): left \
                     running",
                    comm(pid)
                ));
                continue;
            }
            let rec = ProcessRecord {
                role: format!("process in {ns}"),
                pid,
                start_time: proc_stat(pid).map(|s| s.start_time),
                command: comm(pid),
            };
            if !is_alive(&rec) {
                continue;
            }
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            if wait_gone(&rec, KILL_TIMEOUT) {
                act(
                    format!("{} (pid {pid}, {}): SIGKILLed", rec.role, rec.command),
                    &mut report,
                    log,
                );
            } else {
                errors.push(format!("{} (pid {pid}) survived SIGKILL", rec.role));
            }
        }
    }

    // 3. BPF pins the daemon left (it was killed, or on_stop = "keep"): the documented way
    //    out first, then the directory itself.
    for dir in state.pin_dirs.iter().filter(|d| d.exists()) {
        if let (Some(bin), Some(config), Some(rtr)) =
            (&state.sshgw_bin, &state.sshgw_config, &state.router_ns)
            && bin.is_file()
            && config.exists()
            && netns_exists(rtr)
        {
            match setns_command(rtr, bin).and_then(|mut cmd| {
                cmd.args(["datapath", "remove", "--config"]).arg(config);
                run_bounded(&mut cmd, DATAPATH_REMOVE_TIMEOUT)
            }) {
                Ok(ran) if ran.success => act(
                    format!(
                        "sshgw datapath remove: removed the datapath pinned in {}",
                        dir.display()
                    ),
                    &mut report,
                    log,
                ),
                Ok(ran) => log(&format!(
                    "note: sshgw datapath remove failed ({}); removing {} directly",
                    ran.stderr.trim(),
                    dir.display()
                )),
                Err(err) => log(&format!("note: sshgw datapath remove: {err:#}")),
            }
        }
        if dir.exists() {
            match fs::remove_dir_all(dir) {
                Ok(()) => act(
                    format!("removed BPF pins {}", dir.display()),
                    &mut report,
                    log,
                ),
                Err(err) => errors.push(format!("removing {}: {err}", dir.display())),
            }
        }
    }

    // 4. The namespaces: their veths, addresses, routes and policy-routing rules go with them.
    for ns in state.namespaces.iter().filter(|ns| netns_exists(ns)) {
        let out = Command::new("ip")
            .args(["netns", "del", ns])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => {
                act(format!("deleted network namespace {ns}"), &mut report, log)
            }
            Ok(out) => errors.push(format!(
                "ip netns del {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(err) => errors.push(format!("running ip netns del {ns}: {err}")),
        }
    }

    // 5. Directories (lab dir with logs, keys, the daemon's state and recordings), then the
    //    state dir with this state file.
    let mut dirs = state.dirs.clone();
    if state_dir.join(MARKER_FILE).exists() {
        dirs.push(state_dir.to_owned());
    }
    for dir in dirs.iter().filter(|d| d.exists()) {
        if !removable(dir) {
            errors.push(format!("refusing to remove {}", dir.display()));
            continue;
        }
        match fs::remove_dir_all(dir) {
            Ok(()) => act(format!("removed {}", dir.display()), &mut report, log),
            Err(err) => errors.push(format!("removing {}: {err}", dir.display())),
        }
    }

    if !errors.is_empty() {
        bail!("the teardown was incomplete:\n  {}", errors.join("\n  "));
    }
    Ok(report)
}

/// Spawns the lab's long-lived processes detached while `f` runs (see
/// [`Processes::set_detached`]); restores the default afterwards, also on error.
pub fn with_detached<T>(procs: &Processes, f: impl FnOnce() -> Result<T>) -> Result<T> {
    procs.set_detached(true);
    let result = f();
    procs.set_detached(false);
    result
}
