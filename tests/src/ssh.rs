//! The real OpenSSH client (`ssh`), run in a lab namespace (normally `dev`).
//!
//! ```ignore
//! let out = lab.ssh(Family::V4.audited()).bind(Family::V4.enrolled()).run("echo $SSH_CONNECTION")?;
//! assert_eq!(out.ssh_connection()?.client, Family::V4.router_wan());
//!
//! let mut session = lab.ssh(Family::V4.audited()).session("cat")?;
//! session.roundtrip("hello", Duration::from_secs(5))?;
//! ```

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::Netns;
use crate::process::{Finished, Proc, Processes, describe_status};
use crate::topology::Lab;

/// Default `ConnectTimeout` (seconds).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u32 = 5;

/// Extra time, on top of ConnectTimeout, that a whole `ssh host cmd` run may take before the
/// harness kills it (authentication and the command itself).
pub const RUN_GRACE: Duration = Duration::from_secs(20);

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
}

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

    /// An extra `-o KEY=VALUE`.
    pub fn option(mut self, opt: &str) -> Self {
        self.options.push(opt.to_owned());
        self
    }

    /// Extra raw arguments placed before the host (e.g. `-v`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    fn command(&self, remote_command: &str) -> std::process::Command {
        let mut cmd = self.ns.exec_command("ssh");
        cmd.args(["-F", "/dev/null", "-T", "-i"])
            .arg(&self.identity);
        for opt in [
            "IdentitiesOnly=yes".to_owned(),
            "BatchMode=yes".to_owned(),
            "StrictHostKeyChecking=no".to_owned(),
            "UserKnownHostsFile=/dev/null".to_owned(),
            format!("ConnectTimeout={}", self.connect_timeout),
        ]
        .iter()
        .chain(&self.options)
        {
            cmd.args(["-o", opt]);
        }
        if let Some(src) = self.bind {
            cmd.arg("-b").arg(src.to_string());
        }
        cmd.arg("-p")
            .arg(self.port.to_string())
            .arg("-l")
            .arg(&self.user);
        cmd.args(&self.extra_args);
        cmd.arg(self.host.to_string()).arg(remote_command);
        cmd
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
        let timeout = Duration::from_secs(self.connect_timeout.into()) + RUN_GRACE;
        Ok(self
            .lab
            .procs()
            .run(&self.label(), &mut self.command(remote_command), timeout)?
            .into())
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
