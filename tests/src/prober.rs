//! A background prober that keeps opening TCP connections to an SSH server from inside a
//! namespace and sorts the answers by the SSH identification line: sshgw's own
//! (`SSH-2.0-sshgw_…`: the connection was intercepted), any other SSH server's (it was not),
//! or none (the SYN was dropped, or nothing answered in time).
//!
//! ```ignore
//! let prober = Prober::start(&lab.dev, SocketAddr::new(Family::V4.audited(), 22))?;
//! // ... re-create a tunnel, restart the daemon ...
//! prober.wait_for(|t| t.intercepted > before, "an intercepted connection")?;
//! let tally = prober.stop()?;
//! ensure!(tally.direct == 0, "{tally:?}");
//! ```

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use crate::netns::Netns;
use crate::wait::poll_until;

/// The start of sshgw's SSH identification line.
pub const SSHGW_BANNER: &str = "SSH-2.0-sshgw_";

/// How long one connection attempt may take before it counts as unanswered.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an open connection may take to send its identification line.
pub const BANNER_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one attempt per this interval, so failing attempts do not spin a core.
const PACE: Duration = Duration::from_millis(100);

/// What the prober has seen so far.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub attempts: u64,
    /// Answered with sshgw's identification line.
    pub intercepted: u64,
    /// Answered by another SSH server: the connection was **not** intercepted.
    pub direct: u64,
    /// No answer: the connection was refused, dropped or timed out.
    pub unanswered: u64,
    /// Connected, but no identification line arrived in time.
    pub silent: u64,
    /// The identification lines of the direct answers.
    pub direct_banners: Vec<String>,
}

/// The prober thread and its shared tally.
pub struct Prober {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// Reads the identification line (up to the first `\n`, at most 255 bytes).
fn read_banner(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(BANNER_TIMEOUT)).ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 255 {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
    text.starts_with("SSH-").then_some(text)
}

/// One attempt, counted into `tally`.
fn probe_once(target: SocketAddr, tally: &Mutex<Tally>) {
    let outcome = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
        .ok()
        .map(|mut s| read_banner(&mut s));
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    t.attempts += 1;
    match outcome {
        None => t.unanswered += 1,
        Some(None) => t.silent += 1,
        Some(Some(b)) if b.starts_with(SSHGW_BANNER) => t.intercepted += 1,
        Some(Some(b)) => {
            t.direct += 1;
            t.direct_banners.push(b);
        }
    }
}

impl Prober {
    /// Starts probing `target` from namespace `ns` until [`Prober::stop`].
    #[allow(unsafe_code)] // reason: setns(2) on the prober's own thread
    pub fn start(ns: &Netns, target: SocketAddr) -> Result<Self> {
        let ns_file = std::fs::File::open(ns.path())
            .with_context(|| format!("opening {}", ns.path().display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop2, tally2) = (stop.clone(), tally.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            // SAFETY: setns on an fd we own, for this thread only.
            ensure!(
                unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
                "setns: {}",
                std::io::Error::last_os_error()
            );
            while !stop2.load(Ordering::Relaxed) {
                let started = Instant::now();
                probe_once(target, &tally2);
                if let Some(rest) = PACE.checked_sub(started.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            Ok(())
        });
        Ok(Self {
            stop,
            tally,
            thread: Some(thread),
        })
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (bounded) until the tally satisfies `pred`; fails early if the prober stopped.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Tally) -> bool,
    ) -> Result<Tally> {
        poll_until(what, timeout, Duration::from_millis(50), || {
            ensure!(
                self.thread.as_ref().is_some_and(|t| !t.is_finished()),
                "the prober stopped: {:?}",
                self.tally()
            );
            let t = self.tally();
            Ok(pred(&t).then_some(t))
        })
        .with_context(|| format!("prober tally: {:?}", self.tally()))
    }

    /// Stops the prober (after its current attempt) and returns the final tally.
    pub fn stop(mut self) -> Result<Tally> {
        self.halt()?;
        Ok(self.tally())
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("the prober panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
