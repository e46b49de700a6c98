//! The real OpenSSH client (`ssh`), run in a lab namespace (normally `dev`).
//!
//! ```ignore
//! let out = lab.ssh(Family::V4.audited()).bind(Family::V4.enrolled()).run("echo $SSH_CONNECTION")?;
//! assert_eq!(out.ssh_connection()?.client, Family::V4.router_wan());
//!
//! let mut session = lab.ssh(Family::V4.audited()).session("cat")?;
//! session.roundtrip("hello", Duration::from_secs(5))?;
//!
//! // Options override the harness defaults (StrictHostKeyChecking=no, UserKnownHostsFile=/dev/null).
//! lab.ssh(dst).option("StrictHostKeyChecking=yes").option(&format!("UserKnownHostsFile={kh}")).run("true")?;
//! // Files in and out, scp/sftp/rsync with the same options, a real terminal:
//! lab.ssh(dst).stdin_file(&big).timeout(Duration::from_secs(300)).run("sha256sum")?;
//! lab.ssh(dst).user("jdoe").scp(&["-O", local, &ssh.remote("up.bin")])?;
//! let mut term = lab.ssh(dst).pty_session(None, (24, 80))?;
//! term.send("stty size\n")?; term.expect("24 80", Duration::from_secs(10))?;
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::Netns;
use crate::process::{Finished, Io, Proc, Processes, describe_status};
use crate::topology::Lab;

/// Default `ConnectTimeout` (seconds).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u32 = 5;

/// Extra time, on top of ConnectTimeout, that a whole `ssh host cmd` run may take before the
/// harness kills it (authentication and the command itself).
pub const RUN_GRACE: Duration = Duration::from_secs(20);

/// How long a control master may take to accept clients.
pub const CONTROL_MASTER_TIMEOUT: Duration = Duration::from_secs(15);

/// An SSH key pair on disk generated with `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    /// `ssh-keygen -q -t ed25519 -N '' -C COMMENT -f PATH` (PATH must not exist yet).
    pub fn generate(procs: &Processes, path: &Path, comment: &str) -> Result<Self> {
        Self::generate_type(procs, path, comment, "ed25519")
    }

    /// Like [`KeyPair::generate`] with another key type (`ecdsa`, `rsa`).
    pub fn generate_type(
        procs: &Processes,
        path: &Path,
        comment: &str,
        key_type: &str,
    ) -> Result<Self> {
        let mut cmd = std::process::Command::new("ssh-keygen");
        cmd.args(["-q", "-t", key_type, "-N", "", "-C", comment, "-f"])
            .arg(path);
        procs
            .run_quiet("ssh-keygen", &mut cmd, Duration::from_secs(30))?
            .check("ssh-keygen")?;
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        Ok(Self {
            private: path.to_owned(),
            public: PathBuf::from(public),
        })
    }

    /// The `.pub` file's single line.
    pub fn public_line(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.public)
            .with_context(|| format!("reading {}", self.public.display()))?
            .trim_end()
            .to_owned())
    }
}

/// Builder for an `ssh` invocation from a lab namespace.
#[derive(Clone)]
pub struct Ssh<'a> {
    lab: &'a Lab,
    ns: &'a Netns,
    host: IpAddr,
    port: u16,
    user: String,
    bind: Option<IpAddr>,
    connect_timeout: u32,
    identity: PathBuf,
    options: Vec<String>,
    extra_args: Vec<String>,
    io: Io,
    timeout: Option<Duration>,
}

/// `-o` options every harness ssh gets unless overridden by [`Ssh::option`] with the same key.
fn default_options(connect_timeout: u32) -> Vec<String> {
    vec![
        "IdentitiesOnly=yes".to_owned(),
        "BatchMode=yes".to_owned(),
        "StrictHostKeyChecking=no".to_owned(),
        "UserKnownHostsFile=/dev/null".to_owned(),
        format!("ConnectTimeout={connect_timeout}"),
    ]
}

fn option_key(opt: &str) -> String {
    opt.split(['=', ' '])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

static SCRATCH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// The outcome of `ssh host command`.
#[derive(Debug, Clone)]
pub struct SshOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The server-side `$SSH_CONNECTION`: "client_ip client_port server_ip server_port".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConnection {
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
}

impl SshConnection {
    /// Parses an `$SSH_CONNECTION` value.
    pub fn parse(line: &str) -> Result<Self> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            bail!("not an SSH_CONNECTION value: {line:?}");
        }
        let ctx = || format!("parsing SSH_CONNECTION {line:?}");
        Ok(Self {
            client: f[0].parse().with_context(ctx)?,
            client_port: f[1].parse().with_context(ctx)?,
            server: f[2].parse().with_context(ctx)?,
            server_port: f[3].parse().with_context(ctx)?,
        })
    }
}

impl SshOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// ssh's exit code (255 = ssh-level failure such as a connect timeout).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails (with stdout/stderr) unless the remote command exited 0.
    pub fn check(&self) -> Result<&Self> {
        if !self.success() {
            bail!(
                "ssh failed ({}):\nstdout: {}\nstderr: {}",
                describe_status(self.status),
                self.stdout.trim_end(),
                self.stderr.trim_end()
            );
        }
        Ok(self)
    }

    /// Parses the first stdout line as `$SSH_CONNECTION` (run `echo $SSH_CONNECTION`).
    pub fn ssh_connection(&self) -> Result<SshConnection> {
        self.check()?;
        let line = self
            .stdout
            .lines()
            .next()
            .ok_or_else(|| anyhow!("ssh printed nothing; stderr: {}", self.stderr))?;
        SshConnection::parse(line)
    }
}

impl From<Finished> for SshOutput {
    fn from(f: Finished) -> Self {
        Self {
            status: f.status,
            stdout: f.stdout,
            stderr: f.stderr,
        }
    }
}

impl Lab {
    /// An `ssh` to `host` (port 22, user root) from the `dev` namespace with the lab's client
    /// key.
    pub fn ssh(&self, host: IpAddr) -> Ssh<'_> {
        Ssh {
            lab: self,
            ns: &self.dev,
            host,
            port: 22,
            user: "root".to_owned(),
            bind: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT_SECS,
            identity: self.client_key().private.clone(),
            options: Vec::new(),
            extra_args: Vec::new(),
            io: Io::default(),
            timeout: None,
        }
    }
}

impl<'a> Ssh<'a> {
    /// Run from another namespace.
    pub fn from_ns(mut self, ns: &'a Netns) -> Self {
        self.ns = ns;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_owned();
        self
    }

    /// `-b SRC`: bind the source address.
    pub fn bind(mut self, src: IpAddr) -> Self {
        self.bind = Some(src);
        self
    }

    /// `-o ConnectTimeout=SECS`.
    pub fn connect_timeout(mut self, secs: u32) -> Self {
        self.connect_timeout = secs;
        self
    }

    /// `-i KEY` instead of the lab client key.
    pub fn identity(mut self, key: &Path) -> Self {
        self.identity = key.to_owned();
        self
    }

    /// An extra `-o KEY=VALUE`. A key the harness sets by default (IdentitiesOnly, BatchMode,
    /// StrictHostKeyChecking, UserKnownHostsFile, ConnectTimeout) is replaced, not duplicated
    /// (ssh would use the first value).
    pub fn option(mut self, opt: &str) -> Self {
        self.options.push(opt.to_owned());
        self
    }

    /// Extra raw arguments placed before the host (e.g. `-v`, `-W host:port`, `-R ...`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// [`Ssh::run`] reads stdin from `path` (default `/dev/null`).
    pub fn stdin_file(mut self, path: &Path) -> Self {
        self.io.stdin = Some(path.to_owned());
        self
    }

    /// [`Ssh::run`] writes stdout to `path` instead of capturing it (for large outputs).
    pub fn stdout_file(mut self, path: &Path) -> Self {
        self.io.stdout = Some(path.to_owned());
        self
    }

    /// Deadline of [`Ssh::run`] and the file-transfer helpers (default: ConnectTimeout +
    /// [`RUN_GRACE`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn run_timeout(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| Duration::from_secs(self.connect_timeout.into()) + RUN_GRACE)
    }

    /// The `-F /dev/null -i KEY -o ...` arguments shared by ssh, scp, sftp and rsync's `-e`.
    pub fn common_args(&self) -> Vec<String> {
        let mut args = vec![
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-i".to_owned(),
            self.identity.to_string_lossy().into_owned(),
        ];
        let overridden: Vec<String> = self.options.iter().map(|o| option_key(o)).collect();
        let defaults = default_options(self.connect_timeout)
            .into_iter()
            .filter(|d| !overridden.contains(&option_key(d)));
        for opt in defaults.chain(self.options.iter().cloned()) {
            args.push("-o".to_owned());
            args.push(opt);
        }
        if let Some(src) = self.bind {
            args.push("-o".to_owned());
            args.push(format!("BindAddress={src}"));
        }
        args
    }

    /// `user@host:path` for scp/rsync (IPv6 hosts in brackets).
    pub fn remote(&self, path: &str) -> String {
        match self.host {
            IpAddr::V4(h) => format!("{}@{h}:{path}", self.user),
            IpAddr::V6(h) => format!("{}@[{h}]:{path}", self.user),
        }
    }

    /// `user@host` (IPv6 hosts in brackets, as sftp wants).
    pub fn destination(&self) -> String {
        match self.host {
            IpAddr::V4(h) => format!("{}@{h}", self.user),
            IpAddr::V6(h) => format!("{}@[{h}]", self.user),
        }
    }

    fn command_tty(&self, remote_command: &str, tty: bool) -> std::process::Command {
        let mut cmd = self.ns.exec_command("ssh");
        cmd.args(self.common_args());
        cmd.arg(if tty { "-tt" } else { "-T" });
        cmd.arg("-p")
            .arg(self.port.to_string())
            .arg("-l")
            .arg(&self.user);
        cmd.args(&self.extra_args);
        cmd.arg(self.host.to_string());
        if !remote_command.is_empty() {
            cmd.arg(remote_command);
        }
        cmd
    }

    /// The `ssh` command line (`-T`); an empty `remote_command` is left out (for `-W`, `-N`).
    pub fn command(&self, remote_command: &str) -> std::process::Command {
        self.command_tty(remote_command, false)
    }

    /// Runs a prepared command (from [`Ssh::tool_command`] or [`Ssh::command`]) in the lab's
    /// registry with this builder's stdio and deadline.
    pub fn run_command(&self, label: &str, cmd: &mut std::process::Command) -> Result<SshOutput> {
        Ok(self
            .lab
            .procs()
            .run_io(label, cmd, self.run_timeout(), &self.io)?
            .into())
    }

    /// `PROGRAM <common args> PORT_FLAG PORT` in the builder's namespace, for scp (`-P`) and
    /// sftp (`-P`); append the tool's own arguments.
    pub fn tool_command(&self, program: &str, port_flag: &str) -> std::process::Command {
        let mut cmd = self.ns.exec_command(program);
        cmd.args(self.common_args())
            .arg(port_flag)
            .arg(self.port.to_string());
        cmd.args(&self.extra_args);
        cmd
    }

    /// `scp <common args> -P PORT ARGS...` (use [`Ssh::remote`] for remote paths). A failing
    /// scp is not an error here: inspect the output.
    pub fn scp(&self, args: &[&str]) -> Result<SshOutput> {
        let mut cmd = self.tool_command("scp", "-P");
        cmd.args(args);
        self.run_command(&format!("scp ->{}", self.host), &mut cmd)
    }

    /// `sftp <common args> -P PORT -b BATCH user@host` with `batch` written to a scratch file.
    pub fn sftp_batch(&self, batch: &str) -> Result<SshOutput> {
        let n = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        let file = self.lab.dir().join(format!("sftp-batch-{n}"));
        fs::write(&file, batch).with_context(|| format!("writing {}", file.display()))?;
        let mut cmd = self.tool_command("sftp", "-P");
        cmd.arg("-b").arg(&file).arg(self.destination());
        self.run_command(&format!("sftp ->{}", self.host), &mut cmd)
    }

    /// `rsync -e "ssh <common args> -p PORT" ARGS...` (use [`Ssh::remote`] for remote paths).
    pub fn rsync(&self, args: &[&str]) -> Result<SshOutput> {
        let mut rsh = format!("ssh -p {}", self.port);
        for a in self.common_args() {
            // rsync splits -e on whitespace; quote arguments that contain some.
            if a.contains(char::is_whitespace) {
                rsh.push_str(&format!(" '{a}'"));
            } else {
                rsh.push(' ');
                rsh.push_str(&a);
            }
        }
        let mut cmd = self.ns.exec_command("rsync");
        cmd.arg("-e").arg(rsh).args(args);
        self.run_command(&format!("rsync ->{}", self.host), &mut cmd)
    }

    fn label(&self) -> String {
        match self.bind {
            Some(src) => format!("ssh {src}->{}:{}", self.host, self.port),
            None => format!("ssh ->{}:{}", self.host, self.port),
        }
    }

    /// Runs `remote_command` and returns its exit status and output; bounded by
    /// ConnectTimeout + [`RUN_GRACE`] (then killed and an error returned). A failing ssh is not
    /// an error here: inspect [`SshOutput`].
    pub fn run(&self, remote_command: &str) -> Result<SshOutput> {
        self.run_command(&self.label(), &mut self.command(remote_command))
    }

    /// Starts a long-lived `ssh` (e.g. `-N` with `-R`, or a ControlMaster) with stdin from
    /// `/dev/null` and its output in the log directory; stop it with [`Proc::terminate`].
    pub fn spawn(&self, remote_command: &str) -> Result<Proc> {
        self.lab.procs().spawn_io(
            &format!("{} (background)", self.label()),
            &mut self.command(remote_command),
            &self.io,
        )
    }

    /// Starts an OpenSSH control master (`-v -N`) on the socket `control` and waits (bounded)
    /// until it accepts clients; returns it and a builder for clients of it (each a new
    /// channel on the master's one connection).
    pub fn control_master(&self, control: &Path) -> Result<(Proc, impl Fn() -> Ssh<'a> + use<'a>)> {
        let path = format!("ControlPath={}", control.display());
        let master = self
            .clone()
            .option("ControlMaster=yes")
            .option(&path)
            .arg("-v")
            .arg("-N")
            .spawn("")?;
        let base = self.clone();
        let client = move || base.clone().option("ControlMaster=no").option(&path);
        crate::wait::poll_until(
            "the ssh control master to accept clients",
            CONTROL_MASTER_TIMEOUT,
            Duration::from_millis(50),
            || {
                if !master.is_running() {
                    bail!("the control master exited: {}", master.log_text());
                }
                Ok(client()
                    .arg("-O")
                    .arg("check")
                    .run("")?
                    .success()
                    .then_some(()))
            },
        )?;
        Ok((master, client))
    }

    /// Runs `ssh -tt` on a new pseudo-terminal of `size` (rows, columns) that becomes ssh's
    /// controlling terminal; `remote_command` None = the login shell.
    pub fn pty_session(
        &self,
        remote_command: Option<&str>,
        size: (u16, u16),
    ) -> Result<PtySession> {
        PtySession::spawn(self, remote_command.unwrap_or(""), size)
    }

    /// Runs `echo $SSH_CONNECTION` and parses it (fails if ssh fails).
    pub fn ssh_connection(&self) -> Result<SshConnection> {
        self.run("echo $SSH_CONNECTION")?
            .ssh_connection()
            .with_context(|| format!("{} echo $SSH_CONNECTION", self.label()))
    }

    /// Opens a long-lived session running `remote_command` with piped stdin/stdout (e.g.
    /// `cat`, or `echo $SSH_CONNECTION; exec cat`).
    pub fn session(&self, remote_command: &str) -> Result<SshSession> {
        let label = format!("{} session", self.label());
        let (proc, stdin, stdout) = self
            .lab
            .procs()
            .spawn_piped(&label, &mut self.command(remote_command))?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("ssh-session-{}", proc.pid()))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(line) => {
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            })
            .context("spawning the session reader thread")?;
        Ok(SshSession {
            proc,
            stdin: Some(stdin),
            lines: rx,
        })
    }
}

/// An open `ssh host command` with piped stdin/stdout.
pub struct SshSession {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl SshSession {
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Writes one line to the remote command's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("session stdin already closed"))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!(
                    "writing to the ssh session; ssh stderr: {}",
                    self.proc.stderr_text().trim_end()
                )
            })
    }

    /// Waits (bounded) for the next stdout line.
    pub fn read_line(&self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => bail!(
                "no line from the ssh session within {timeout:?} (ssh {}); ssh stderr: {}",
                if self.proc.is_running() {
                    "still running"
                } else {
                    "exited"
                },
                self.proc.stderr_text().trim_end()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!(
                "the ssh session closed its stdout ({}); ssh stderr: {}",
                self.proc
                    .wait_exit(Duration::from_secs(2))
                    .map(describe_status)
                    .unwrap_or_else(|_| "still running".to_owned()),
                self.proc.stderr_text().trim_end()
            ),
        }
    }

    /// Sends `line` and expects it echoed back (for a `cat` session).
    pub fn roundtrip(&mut self, line: &str, timeout: Duration) -> Result<()> {
        self.send_line(line)?;
        let got = self.read_line(timeout)?;
        if got != line {
            bail!("ssh session echoed {got:?}, expected {line:?}");
        }
        Ok(())
    }

    /// Closes stdin (EOF for the remote command) and waits (bounded) for ssh to exit.
    pub fn close(mut self, timeout: Duration) -> Result<ExitStatus> {
        drop(self.stdin.take());
        self.proc.wait_exit(timeout)
    }
}

/// Default deadline of one [`PtySession::expect`].
pub const PTY_EXPECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the pty reader thread has collected.
#[derive(Default)]
struct PtyBuffer {
    data: Vec<u8>,
    /// The master returned EOF/EIO (every slave fd is closed: ssh exited).
    closed: bool,
}

/// `ssh -tt` on a pseudo-terminal: the harness holds the master side. Everything ssh writes
/// is collected (and appended to the process's stdout log as a transcript).
pub struct PtySession {
    proc: Proc,
    master: File,
    buffer: Arc<(Mutex<PtyBuffer>, Condvar)>,
    /// Offset in the buffer up to which [`PtySession::expect`] has consumed output.
    cursor: usize,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtySession {
    #[allow(unsafe_code)] // reason: openpty(3) and fcntl(2) through libc
    fn spawn(ssh: &Ssh<'_>, remote_command: &str, (rows, cols): (u16, u16)) -> Result<Self> {
        let (mut master_fd, mut slave_fd) = (-1, -1);
        let ws = winsize(rows, cols);
        // SAFETY: openpty writes two fds into the out-pointers; name and termios are NULL.
        let rc = unsafe {
            libc::openpty(
                &mut master_fd,
                &mut slave_fd,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("openpty");
        }
        // SAFETY: openpty succeeded: both fds are open and owned by nobody else.
        let (master, slave) = unsafe {
            (
                OwnedFd::from_raw_fd(master_fd),
                OwnedFd::from_raw_fd(slave_fd),
            )
        };
        for fd in [&master, &slave] {
            // SAFETY: plain fcntl on an fd we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let label = format!("{} pty", ssh.label());
        let (proc, transcript) = ssh.lab.procs().spawn_pty(
            &label,
            &mut ssh.command_tty(remote_command, true),
            &slave,
        )?;
        // Only ssh holds the slave now, so the master reads EIO once ssh exits.
        drop(slave);
        let master = File::from(master);
        let buffer: Arc<(Mutex<PtyBuffer>, Condvar)> = Arc::default();
        let mut reader = master.try_clone().context("cloning the pty master")?;
        let mut log = OpenOptions::new()
            .append(true)
            .open(&transcript)
            .with_context(|| format!("opening {}", transcript.display()))?;
        let shared = buffer.clone();
        thread::Builder::new()
            .name(format!("pty-{}", proc.pid()))
            .spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let (lock, cond) = &*shared;
                    let mut buf = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if n == 0 {
                        buf.closed = true;
                        cond.notify_all();
                        return;
                    }
                    buf.data.extend_from_slice(&chunk[..n]);
                    let _ = log.write_all(&chunk[..n]);
                    cond.notify_all();
                }
            })
            .context("spawning the pty reader thread")?;
        Ok(Self {
            proc,
            master,
            buffer,
            cursor: 0,
        })
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Types `text` into the terminal (use `\n` for Enter).
    pub fn send(&mut self, text: &str) -> Result<()> {
        self.master
            .write_all(text.as_bytes())
            .and_then(|()| self.master.flush())
            .context("writing to the pty master")
    }

    /// Everything ssh has written so far (lossy UTF-8, terminal control sequences included).
    pub fn transcript(&self) -> String {
        let (lock, _) = &*self.buffer;
        String::from_utf8_lossy(&lock.lock().unwrap_or_else(|e| e.into_inner()).data).into_owned()
    }

    /// Waits (bounded) until the output after the cursor contains `needle`; moves the cursor
    /// past it and returns the text from the old cursor to the end of the needle.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.buffer;
        let mut buf = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let unread = &buf.data[self.cursor.min(buf.data.len())..];
            if let Some(pos) = find(unread, needle.as_bytes()) {
                let end = pos + needle.len();
                let text = String::from_utf8_lossy(&unread[..end]).into_owned();
                self.cursor += end;
                return Ok(text);
            }
            let now = Instant::now();
            if buf.closed || now >= deadline {
                let why = if buf.closed {
                    "the terminal closed (ssh exited)"
                } else {
                    "timed out"
                };
                bail!(
                    "{why} after waiting for {needle:?} on the pty; unread output: {:?}",
                    String::from_utf8_lossy(unread)
                );
            }
            buf = cond
                .wait_timeout(buf, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Changes the terminal size (TIOCSWINSZ on the master; the kernel sends SIGWINCH to ssh,
    /// the terminal's foreground process).
    #[allow(unsafe_code)] // reason: the TIOCSWINSZ ioctl through libc
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads a winsize struct from the pointer.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
        }
        Ok(())
    }

    /// Waits (bounded) for ssh to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        self.proc.wait_exit(timeout).with_context(|| {
            format!(
                "ssh on the pty did not exit; transcript: {:?}",
                self.transcript()
            )
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
