//! A real syslog receiver for the SIEM tests: Debian's rsyslogd with its own configuration,
//! listening for RFC 5424 messages over TCP (RFC 6587 framing), never the system rsyslog.
//!
//! ```ignore
//! let mut siem = SyslogReceiver::start(lab.procs(), Some(&lab.rtr), &lab.dir().join("syslog"))?;
//! // ... sshgw in rtr sends to 127.0.0.1:{siem.port()} ...
//! let got = siem.wait_for_messages(2, Duration::from_secs(30))?;
//! assert!(got[0].contains(r#"[sshgw@32473 id="rtr1:1"]"#));
//! siem.stop()?;        // SIGTERM; what it accepted is in the file
//! siem.start_again()?; // same port
//! ```
//!
//! # The receiver
//!
//! `rsyslogd -n -f DIR/rsyslog.conf -i DIR/rsyslogd.pid` runs in the foreground as a child
//! of the test, registered in the [`Processes`] registry, in the given network namespace
//! (`ip netns exec`, which execs it: same PID) or the host's. Its work directory is
//! `DIR/work`. Only `imtcp` is loaded (no `imuxsock`, `imklog` or `/dev/log`): one listener
//! on 127.0.0.1:PORT (a free port below the ephemeral range, kept by
//! [`SyslogReceiver::start_again`]). imtcp accepts both RFC 6587 framings on the same port
//! whatever the sender picks per message: octet counting (`LEN SP MSG`, a frame starting
//! with a digit) and LF-terminated non-transparent framing.
//!
//! Every message lands as one line of `DIR/messages.log` with the template `%rawmsg%\n`:
//! the message exactly as received, without the octet count (`<PRI>1 TIMESTAMP HOST APP
//! PROCID MSGID [SD...] MSG`). rsyslog escapes control characters on receipt (an LF inside
//! a message reads `#012`), so a message is never split over lines. The largest message
//! accepted is 64 KiB (`maxMessageSize`; longer ones are truncated). rsyslog's own messages
//! (errors, start and stop) go to `DIR/rsyslogd.log` (`processInternalMessages`: never to
//! the system's `/dev/log`).
//!
//! Messages go through a direct (unqueued) ruleset to `omfile` with `flushOnTXEnd`, so a
//! message is in the file once its batch is processed, and a graceful stop (SIGTERM) writes
//! every message received before the listener closed: nothing waits in a queue. (Checked by
//! hand: 100000 messages sent in one burst and SIGTERM at once left a gapless prefix of
//! them in the file, the rest unread in the socket, never accepted.)
//!
//! Requirements: root, `rsyslog` (installed by `cargo xtask prereqs` without starting the
//! system daemon); a missing rsyslogd fails the test (never a skip, with or without
//! `CI=true`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::central::{NsRef, Port, require_tool};
use crate::netns::Netns;
use crate::process::{Proc, Processes};
use crate::wait::{POLL_INTERVAL, poll_until};

/// Debian's rsyslogd.
pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// Deadline for rsyslogd to listen (≈50 ms here).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a graceful stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest message rsyslogd accepts whole.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// An rsyslogd receiving RFC 5424 over TCP (see the module docs). SIGKILLed when dropped
/// (by then its file is complete: it is written per batch).
pub struct SyslogReceiver {
    procs: Processes,
    netns: NsRef,
    dir: PathBuf,
    port: Port,
    proc: Option<Proc>,
    generation: u32,
}

impl std::fmt::Debug for SyslogReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogReceiver")
            .field("dir", &self.dir)
            .field("port", &self.port.get())
            .finish_non_exhaustive()
    }
}

/// `s` as a RainerScript string ("...", with `\` and `"` escaped).
fn rainer(s: &Path) -> String {
    let s = s.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl SyslogReceiver {
    /// Writes the configuration into `dir` (created if missing) and starts rsyslogd in
    /// `netns` (or the host namespace); returns once 127.0.0.1:PORT accepts connections.
    pub fn start(procs: &Processes, netns: Option<&Netns>, dir: &Path) -> Result<SyslogReceiver> {
        require_tool(RSYSLOGD, "rsyslog")?;
        fs::create_dir_all(dir.join("work"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let mut receiver = SyslogReceiver {
            procs: procs.clone(),
            netns: NsRef::new(netns),
            dir,
            port: Port::allocate()?,
            proc: None,
            generation: 0,
        };
        fs::write(receiver.conf_path(), receiver.config())
            .with_context(|| format!("writing {}", receiver.conf_path().display()))?;
        receiver.check_config()?;
        receiver.spawn()?;
        Ok(receiver)
    }

    /// Sends `frames` (each already framed) over one TCP connection from inside the
    /// receiver's namespace, then closes it: for tests of the receiver itself.
    pub fn send_raw(&self, frames: &[&[u8]]) -> Result<()> {
        use std::io::Write;
        let mut stream = self.netns.connect(self.port())?;
        for frame in frames {
            stream
                .write_all(frame)
                .with_context(|| format!("sending to rsyslogd on port {}", self.port()))?;
        }
        Ok(())
    }

    /// The TCP port on 127.0.0.1 in the receiver's namespace.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    /// The directory given to [`SyslogReceiver::start`] (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/messages.log`: one received message a line.
    pub fn messages_path(&self) -> PathBuf {
        self.dir.join("messages.log")
    }

    /// rsyslogd, while started.
    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    /// Every message received so far (across restarts), in order, as received (without the
    /// octet count).
    pub fn messages(&self) -> Result<Vec<String>> {
        let path = self.messages_path();
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Waits (bounded) until at least `count` messages have arrived; returns all of them.
    pub fn wait_for_messages(&self, count: usize, timeout: Duration) -> Result<Vec<String>> {
        poll_until(
            &format!("{count} syslog message(s) on port {}", self.port()),
            timeout,
            POLL_INTERVAL,
            || {
                let got = self.messages()?;
                Ok((got.len() >= count).then_some(got))
            },
        )
        .with_context(|| {
            format!(
                "received so far: {:#?}",
                self.messages().unwrap_or_default()
            )
        })
    }

    /// Graceful stop: SIGTERM, then wait (bounded; SIGKILL and an error on timeout). Every
    /// message received before the listener closed is in the file afterwards.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(proc) = self.proc.take()
            && proc.try_status()?.is_none()
        {
            proc.terminate(STOP_TIMEOUT)?;
        }
        Ok(())
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(proc) = self.proc.take() {
            proc.kill()?;
        }
        Ok(())
    }

    /// Starts rsyslogd again on the same port and files (a running one is stopped first).
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join("rsyslog.conf")
    }

    fn config(&self) -> String {
        let d = &self.dir;
        format!(
            "# sshgw test harness (tests/src/syslog.rs)\n\
             global(workDirectory={work} maxMessageSize=\"{max}\" processInternalMessages=\"on\")\n\
             module(load=\"imtcp\")\n\
             template(name=\"sshgw_raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             ruleset(name=\"sshgw_siem\" queue.type=\"Direct\") {{\n\
             \x20   action(type=\"omfile\" file={messages} template=\"sshgw_raw\"\n\
             \x20          queue.type=\"Direct\" flushOnTXEnd=\"on\" asyncWriting=\"off\")\n\
             }}\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"sshgw_siem\")\n\
             # rsyslogd's own messages (the default ruleset).\n\
             *.* action(type=\"omfile\" file={internal})\n",
            work = rainer(&d.join("work")),
            max = MAX_MESSAGE_SIZE,
            messages = rainer(&self.messages_path()),
            port = self.port(),
            internal = rainer(&d.join("rsyslogd.log")),
        )
    }

    fn command(&self, program: &str) -> Command {
        self.netns.command(program)
    }

    /// `rsyslogd -N1`: the configuration is valid.
    fn check_config(&self) -> Result<()> {
        let mut cmd = self.command(RSYSLOGD);
        cmd.arg("-N1").arg("-f").arg(self.conf_path());
        let out = self
            .procs
            .run_quiet("rsyslogd -N1", &mut cmd, START_TIMEOUT)?;
        // rsyslogd -N1 exits 0 even for some errors; it reports them on stderr.
        if !out.status.success() || out.stderr.contains("error") {
            bail!(
                "rsyslogd rejects {}:\n{}{}",
                self.conf_path().display(),
                out.stdout.trim_end(),
                out.stderr.trim_end()
            );
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let pidfile = self.dir.join("rsyslogd.pid");
        // A killed rsyslogd leaves its pid file; a stale one names a dead (or reused) PID.
        let _ = fs::remove_file(&pidfile);
        let mut cmd = self.command(RSYSLOGD);
        cmd.arg("-n")
            .arg("-f")
            .arg(self.conf_path())
            .arg("-i")
            .arg(&pidfile)
            .current_dir(&self.dir);
        self.generation += 1;
        let proc = self.procs.spawn(
            &format!("rsyslogd-{}-{}", self.port(), self.generation),
            &mut cmd,
        )?;
        self.proc = Some(proc.clone());
        poll_until(
            &format!(
                "rsyslogd to accept connections on 127.0.0.1:{}",
                self.port()
            ),
            START_TIMEOUT,
            POLL_INTERVAL,
            || {
                if let Some(status) = proc.try_status()? {
                    bail!(
                        "rsyslogd exited ({status}) while starting:\n{}\n{}",
                        proc.log_text().trim_end(),
                        fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
                    );
                }
                Ok(self.netns.accepts(self.port())?.then_some(()))
            },
        )
    }
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.take() {
            let _ = proc.kill();
        }
    }
}
