//! Child processes owned by a lab.
//!
//! Every process the harness starts goes through a [`Processes`] registry. The registry keeps
//! the [`Child`] (so the PID stays valid until *we* reap it: no PID-reuse races), redirects its
//! stdout/stderr to files in the lab's log directory, and on [`Processes::kill_all`] (called
//! from the lab's `Drop`, also while a test panics) sends `SIGKILL` to exactly those PIDs and
//! reaps them. Nothing is ever killed by name.
//!
//! Each child additionally gets `PR_SET_PDEATHSIG(SIGKILL)`, so if the test process itself is
//! killed (and no `Drop` runs) its children die with it. Caveat: the death signal is tied to the
//! *thread* that spawned the child, so spawn long-lived processes from a thread that lives as
//! long as the lab (libtest runs each test in one thread, which is fine).
//!
//! A lab that must outlive the process that built it (`cargo xtask lab`, see
//! [`crate::persist`]) spawns its long-lived processes after [`Processes::set_detached`]:
//! those get no death signal and a session of their own (`setsid`), so neither the exit of
//! the lab binary nor the terminal's Ctrl-C or hangup reaches them.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::wait::{POLL_INTERVAL, poll_until};

/// Registry of the processes started for one lab. Cheap to clone (shared).
#[derive(Clone)]
pub struct Processes {
    inner: Arc<Inner>,
}

struct Inner {
    log_dir: PathBuf,
    next_id: AtomicUsize,
    entries: Mutex<Vec<Entry>>,
    /// Spawn without the parent death signal, in a new session (see [`Processes::set_detached`]).
    detached: AtomicBool,
}

struct Entry {
    id: usize,
    name: String,
    pid: u32,
    child: Child,
    status: Option<ExitStatus>,
    stdout: Option<PathBuf>,
    stderr: PathBuf,
    command: String,
}

/// Handle to one registered process. Cheap to clone; the process itself is owned by the
/// registry, so dropping a handle does not kill anything.
#[derive(Clone)]
pub struct Proc {
    inner: Arc<Inner>,
    id: usize,
    pid: u32,
    name: String,
    stdout: Option<PathBuf>,
    stderr: PathBuf,
}

/// Where a spawned process's stdin comes from and its stdout goes to (stderr always goes to
/// the log directory). Default: stdin `/dev/null`, stdout to the log directory.
#[derive(Debug, Clone, Default)]
pub struct Io {
    /// Read stdin from this file.
    pub stdin: Option<PathBuf>,
    /// Write stdout to this file (created/truncated) instead of a log file.
    pub stdout: Option<PathBuf>,
}

/// Result of a bounded [`Processes::run`].
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails with the command's output unless it exited 0.
    pub fn check(self, what: &str) -> Result<Self> {
        if self.status.success() {
            Ok(self)
        } else {
            bail!(
                "{what} failed ({}):\nstdout: {}\nstderr: {}",
                describe_status(self.status),
                self.stdout.trim_end(),
                self.stderr.trim_end()
            )
        }
    }
}

/// Renders an exit status as `exit code N` or `killed by signal N`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, Vec<Entry>> {
    inner.entries.lock().unwrap_or_else(|e| e.into_inner())
}

fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Makes the child die with its parent thread (see the module docs).
#[allow(unsafe_code)] // reason: pre_exec with prctl(PR_SET_PDEATHSIG) in the child
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe syscalls; no allocation happens here.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Lets the child outlive us: no death signal, and a session of its own so the terminal's
/// job-control signals (Ctrl-C, hangup) never reach it.
#[allow(unsafe_code)] // reason: pre_exec with setsid(2) in the child
fn detach_from_parent(cmd: &mut Command) {
    // SAFETY: getsid, getpid and setsid are async-signal-safe syscalls; nothing allocates.
    unsafe {
        cmd.pre_exec(|| {
            // spawn_pty's own hook may already have made the child a session leader.
            if libc::getsid(0) != libc::getpid() && libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Processes {
    /// Creates a registry that writes process logs into `log_dir` (created if missing).
    pub fn new(log_dir: impl Into<PathBuf>) -> Result<Self> {
        let log_dir = log_dir.into();
        fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                log_dir,
                next_id: AtomicUsize::new(1),
                entries: Mutex::new(Vec::new()),
                detached: AtomicBool::new(false),
            }),
        })
    }

    pub fn log_dir(&self) -> &Path {
        &self.inner.log_dir
    }

    /// From now on, spawn processes that outlive this one (`true`) or die with it (`false`, the
    /// default): detached processes get no `PR_SET_PDEATHSIG` and run in a new session
    /// (`setsid`). The registry still kills them by PID when the lab is dropped; a lab that
    /// stays up is forgotten instead (see [`crate::persist`]).
    pub fn set_detached(&self, detached: bool) {
        self.inner.detached.store(detached, Ordering::Relaxed);
    }

    fn log_paths(&self, id: usize, name: &str) -> (PathBuf, PathBuf) {
        let base = format!("{id:03}-{}", sanitize(name));
        (
            self.inner.log_dir.join(format!("{base}.stdout")),
            self.inner.log_dir.join(format!("{base}.stderr")),
        )
    }

    fn register(
        &self,
        id: usize,
        name: &str,
        cmd: &mut Command,
        stdout: Option<PathBuf>,
        stderr: PathBuf,
    ) -> Result<(Proc, Option<ChildStdin>, Option<ChildStdout>)> {
        let command = command_line(cmd);
        if self.inner.detached.load(Ordering::Relaxed) {
            detach_from_parent(cmd);
        } else {
            set_parent_death_signal(cmd);
        }
        // Hold the lock across spawn so kill_all never misses a half-registered child.
        let mut entries = lock(&self.inner);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {command}"))?;
        let pid = child.id();
        // The pipes go to the caller; the Child itself stays in the registry.
        let stdin = child.stdin.take();
        let out = child.stdout.take();
        entries.push(Entry {
            id,
            name: name.to_owned(),
            pid,
            child,
            status: None,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            command,
        });
        drop(entries);
        let proc = Proc {
            inner: self.inner.clone(),
            id,
            pid,
            name: name.to_owned(),
            stdout,
            stderr,
        };
        Ok((proc, stdin, out))
    }

    /// Starts `cmd` with stdin from /dev/null and stdout/stderr redirected to log files.
    pub fn spawn(&self, name: &str, cmd: &mut Command) -> Result<Proc> {
        self.spawn_io(name, cmd, &Io::default())
    }

    /// Starts `cmd` with stdin/stdout as described by `io` (stderr always goes to a log file).
    /// A stdout redirected to a caller's file is not a log: [`Proc::stdout_text`] is empty and
    /// failure dumps skip it.
    pub fn spawn_io(&self, name: &str, cmd: &mut Command, io: &Io) -> Result<Proc> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (out, err) = self.log_paths(id, name);
        let stdin = match &io.stdin {
            Some(path) => Stdio::from(
                File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let (stdout, stdout_log) = match &io.stdout {
            Some(path) => (
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
                None,
            ),
            None => (
                File::create(&out).with_context(|| format!("creating {}", out.display()))?,
                Some(out),
            ),
        };
        cmd.stdin(stdin)
            .stdout(stdout)
            .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
        let (proc, _, _) = self.register(id, name, cmd, stdout_log, err)?;
        Ok(proc)
    }

    /// Starts `cmd` with a pseudo-terminal slave as stdin, stdout and stderr and as its
    /// controlling terminal (`setsid` + `TIOCSCTTY` before exec), like a login session. Returns
    /// the process and the path of its transcript log (recorded as the process's stdout log;
    /// the caller's reader of the master appends to it).
    #[allow(unsafe_code)] // reason: openpty(3), and pre_exec with setsid(2) and TIOCSCTTY in the child
    pub fn spawn_pty(
        &self,
        name: &str,
        cmd: &mut Command,
        slave: &std::os::fd::OwnedFd,
    ) -> Result<(Proc, PathBuf)> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (out, err) = self.log_paths(id, name);
        File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        // stderr is the terminal too; the (empty) stderr log keeps the registry uniform.
        File::create(&err).with_context(|| format!("creating {}", err.display()))?;
        let dup = |what: &str| {
            slave
                .try_clone()
                .with_context(|| format!("duplicating the pty slave for {what}"))
        };
        cmd.stdin(Stdio::from(dup("stdin")?))
            .stdout(Stdio::from(dup("stdout")?))
            .stderr(Stdio::from(dup("stderr")?));
        // SAFETY: setsid and ioctl are async-signal-safe syscalls; nothing allocates.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                // stdin is the slave by now (std sets up stdio before pre_exec hooks).
                if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (proc, _, _) = self.register(id, name, cmd, Some(out.clone()), err)?;
        Ok((proc, out))
    }

    /// Starts `cmd` with piped stdin and stdout (returned to the caller) and stderr to a log
    /// file.
    pub fn spawn_piped(
        &self,
        name: &str,
        cmd: &mut Command,
    ) -> Result<(Proc, ChildStdin, ChildStdout)> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (_, err) = self.log_paths(id, name);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
        let (proc, stdin, stdout) = self.register(id, name, cmd, None, err)?;
        let stdin = stdin.ok_or_else(|| anyhow!("no stdin pipe"))?;
        let stdout = stdout.ok_or_else(|| anyhow!("no stdout pipe"))?;
        Ok((proc, stdin, stdout))
    }

    /// Runs `cmd` to completion with a deadline; on timeout the process is killed and an error
    /// (with its output so far) returned. A non-zero exit is *not* an error (see
    /// [`Finished::check`]).
    pub fn run(&self, name: &str, cmd: &mut Command, timeout: Duration) -> Result<Finished> {
        self.run_inner(name, cmd, timeout, &Io::default()).1
    }

    /// Like [`Processes::run`] with stdin/stdout as described by `io` (a stdout redirected to a
    /// file reads as empty in [`Finished::stdout`]).
    pub fn run_io(
        &self,
        name: &str,
        cmd: &mut Command,
        timeout: Duration,
        io: &Io,
    ) -> Result<Finished> {
        self.run_inner(name, cmd, timeout, io).1
    }

    /// Like [`Processes::run`], but a successful run is dropped from the registry afterwards
    /// so it does not clutter failure dumps (key generation, config checks, status polls).
    /// Failures stay registered.
    pub fn run_quiet(&self, name: &str, cmd: &mut Command, timeout: Duration) -> Result<Finished> {
        let (id, result) = self.run_inner(name, cmd, timeout, &Io::default());
        if let (Some(id), Ok(f)) = (id, &result)
            && f.status.success()
        {
            lock(&self.inner).retain(|e| e.id != id);
        }
        result
    }

    fn run_inner(
        &self,
        name: &str,
        cmd: &mut Command,
        timeout: Duration,
        io: &Io,
    ) -> (Option<usize>, Result<Finished>) {
        let proc = match self.spawn_io(name, cmd, io) {
            Ok(p) => p,
            Err(err) => return (None, Err(err)),
        };
        let result = match proc.wait_exit(timeout) {
            Ok(status) => Ok(Finished {
                status,
                stdout: proc.stdout_text(),
                stderr: proc.stderr_text(),
            }),
            Err(err) => {
                let _ = proc.kill();
                Err(err.context(format!(
                    "{name} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                    proc.stdout_text().trim_end(),
                    proc.stderr_text().trim_end()
                )))
            }
        };
        (Some(proc.id), result)
    }

    /// Handles to every registered process, in start order.
    pub fn list(&self) -> Vec<Proc> {
        lock(&self.inner)
            .iter()
            .map(|e| Proc {
                inner: self.inner.clone(),
                id: e.id,
                pid: e.pid,
                name: e.name.clone(),
                stdout: e.stdout.clone(),
                stderr: e.stderr.clone(),
            })
            .collect()
    }

    /// SIGKILLs and reaps every registered process that has not been reaped yet.
    pub fn kill_all(&self) {
        self.inner.kill_all();
    }

    /// Prints every process (status, command line, the last `tail` lines of its stdout and
    /// stderr) to stderr. Used when a test fails.
    pub fn dump_logs(&self, tail: usize) {
        let mut out = String::new();
        let entries = lock(&self.inner);
        for e in entries.iter() {
            let state = match e.status {
                Some(s) => describe_status(s),
                None => "running".to_owned(),
            };
            let _ = writeln!(
                out,
                "===== [{}] {} (pid {}, {state}): {}",
                e.id, e.name, e.pid, e.command
            );
            for (label, path) in [("stdout", e.stdout.as_ref()), ("stderr", Some(&e.stderr))] {
                let Some(path) = path else { continue };
                let text = fs::read_to_string(path).unwrap_or_default();
                if text.trim().is_empty() {
                    continue;
                }
                let lines: Vec<&str> = text.lines().collect();
                let skip = lines.len().saturating_sub(tail);
                let _ = writeln!(
                    out,
                    "----- {label} ({}){}",
                    path.display(),
                    if skip > 0 {
                        format!(", last {tail} lines")
                    } else {
                        String::new()
                    }
                );
                for line in &lines[skip..] {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        drop(entries);
        eprint!("{out}");
    }
}

impl Inner {
    fn kill_all(&self) {
        let mut entries = lock(self);
        for e in entries.iter_mut().filter(|e| e.status.is_none()) {
            // Child::kill sends SIGKILL to this exact (not yet reaped) PID.
            let _ = e.child.kill();
            if let Ok(status) = e.child.wait() {
                e.status = Some(status);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.kill_all();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the stdout log (None for processes spawned with piped stdout).
    pub fn stdout_path(&self) -> Option<&Path> {
        self.stdout.as_deref()
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    pub fn stdout_text(&self) -> String {
        self.stdout
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// stdout followed by stderr.
    pub fn log_text(&self) -> String {
        let mut s = self.stdout_text();
        s.push_str(&self.stderr_text());
        s
    }

    fn with_entry<T>(&self, f: impl FnOnce(&mut Entry) -> Result<T>) -> Result<T> {
        let mut entries = lock(&self.inner);
        let e = entries
            .iter_mut()
            .find(|e| e.id == self.id)
            .ok_or_else(|| anyhow!("{} (pid {}) is no longer registered", self.name, self.pid))?;
        f(e)
    }

    /// The exit status if the process has exited (reaping it), None while it runs.
    pub fn try_status(&self) -> Result<Option<ExitStatus>> {
        self.with_entry(|e| {
            if e.status.is_none() {
                e.status = e
                    .child
                    .try_wait()
                    .with_context(|| format!("waiting for {}", e.name))?;
            }
            Ok(e.status)
        })
    }

    pub fn is_running(&self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Sends `sig` to the process if it has not been reaped yet (so the PID is still ours).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.with_entry(|e| {
            if e.status.is_some() {
                bail!("{} (pid {}) already exited", e.name, e.pid);
            }
            kill(Pid::from_raw(e.pid as i32), sig)
                .with_context(|| format!("sending {sig} to {} (pid {})", e.name, e.pid))
        })
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        poll_until(
            &format!("{} (pid {}) to exit", self.name, self.pid),
            timeout,
            POLL_INTERVAL,
            || self.try_status(),
        )
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub fn kill(&self) -> Result<ExitStatus> {
        self.with_entry(|e| {
            if let Some(status) = e.status {
                return Ok(status);
            }
            let _ = e.child.kill();
            let status = e
                .child
                .wait()
                .with_context(|| format!("reaping {}", e.name))?;
            e.status = Some(status);
            Ok(status)
        })
    }

    /// SIGTERM, then wait (bounded) for the exit. On timeout the process is SIGKILLed and an
    /// error returned.
    pub fn terminate(&self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        match self.wait_exit(timeout) {
            Ok(status) => Ok(status),
            Err(err) => {
                let _ = self.kill();
                Err(err.context(format!(
                    "{} ignored SIGTERM for {timeout:?}; SIGKILLed it",
                    self.name
                )))
            }
        }
    }

    /// Waits (bounded) until the process's stdout or stderr contains `needle`. Fails early if
    /// the process exits without having logged it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_logs(&[needle], timeout)
    }

    /// Waits (bounded) until the logs contain every one of `needles`.
    pub fn wait_for_logs(&self, needles: &[&str], timeout: Duration) -> Result<()> {
        let what = format!("{} to log {needles:?}", self.name);
        poll_until(&what, timeout, POLL_INTERVAL, || {
            let exited = self.try_status()?;
            let text = self.log_text();
            if needles.iter().all(|n| text.contains(n)) {
                return Ok(Some(()));
            }
            if let Some(status) = exited {
                // Re-read once: the output may have been flushed right before the exit.
                let text = self.log_text();
                if needles.iter().all(|n| text.contains(n)) {
                    return Ok(Some(()));
                }
                bail!(
                    "{} exited ({}) before logging {needles:?}; log:\n{}",
                    self.name,
                    describe_status(status),
                    text.trim_end()
                );
            }
            Ok(None)
        })
        .with_context(|| format!("log so far:\n{}", self.log_text().trim_end()))
    }

    /// Waits (bounded) for a log line containing `needle` and returns that line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log(needle, timeout)?;
        self.log_text()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("line with {needle:?} vanished"))
    }
}
