//! The load client: holds N interactive SSH sessions (russh) through the gateway.
//!
//! `sshgw-bench load-client --connect ADDR:PORT --user LOGIN --window W`, run in the lab's
//! device namespace: it connects to the audited address, which sshgw intercepts, and logs
//! in as the lab's device does (sshgw identifies the device by its address and lets `none`
//! succeed). Each session requests a pty (`xterm`, 80×24) and a shell, and counts as up when
//! the echo's [`READY_MARKER`] arrives; it then stays idle. It answers sshgw's keepalives
//! (russh does) and sends nothing else until asked.
//!
//! Commands come as JSON lines on standard input ([`Command`]); each is answered by one
//! [`Event`] line. A ramp keeps at most `window` handshakes in flight; a session that fails
//! is replaced by a new attempt, and more than `max(N/50, 5)` failures in one step end it
//! with an error. A keystroke is one byte written to a session's channel; its round trip
//! ends when that byte comes back from the echo (monotonic clock). Keystrokes are sampled
//! one at a time, [`KEYSTROKE_PACE`] apart, on sessions spread evenly over the open ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use russh::client::{self, Msg};
use russh::{Channel, ChannelMsg, Disconnect, Preferred};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::READY_MARKER;
use super::protocol::{Command, Event, KeystrokeReport, RampReport, emit};

/// Longest one session may take from connect to its marker.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a keystroke may take to come back.
pub const KEYSTROKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Gap between two sampled keystrokes.
pub const KEYSTROKE_PACE: Duration = Duration::from_millis(3);
/// The byte each keystroke sends.
const KEY: u8 = b'k';
/// Channel window and largest packet: an interactive session needs little.
const WINDOW: u32 = 32 * 1024;
const MAX_PACKET: u32 = 32 * 1024;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect: SocketAddr,
    pub user: String,
    /// Handshakes in flight during a ramp.
    pub window: usize,
}

/// Runs the client until [`Command::Quit`] or the end of standard input.
pub fn run(opts: &ClientOptions) -> Result<()> {
    super::runtime()?.block_on(drive(opts))
}

async fn drive(opts: &ClientOptions) -> Result<()> {
    let config = Arc::new(config());
    let mut open: Vec<Idle> = Vec::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading a command")? {
        let cmd: Command =
            serde_json::from_str(&line).with_context(|| format!("not a command: {line:?}"))?;
        let event = match cmd {
            Command::Warmup => warmup(&config, opts).await?,
            Command::Ramp { to } => Event::Ramped(ramp(&config, opts, &mut open, to).await),
            Command::Keystrokes { count } => Event::Keystrokes(keystrokes(&mut open, count).await),
            Command::Quit => break,
        };
        emit(&event)?;
    }
    // Exiting closes every socket; sshgw sees the connections end.
    Ok(())
}

fn config() -> client::Config {
    client::Config {
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: 8,
        preferred: Preferred {
            kex: super::kex_order(false),
            ..Preferred::default()
        },
        inactivity_timeout: None,
        keepalive_interval: None,
        nodelay: true,
        ..client::Config::default()
    }
}

/// The client side of a connection: the server's host key is not checked (the gateway's
/// own tests do that); this client only measures. Also the attack client's handler.
pub struct LoadClient;

impl client::Handler for LoadClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// An open, idle session.
struct Idle {
    handle: client::Handle<LoadClient>,
    channel: Channel<Msg>,
}

/// Connects, logs in, opens a pty shell and waits for the marker; returns the session and
/// its setup time in ms.
async fn open_session(
    config: Arc<client::Config>,
    addr: SocketAddr,
    user: String,
) -> Result<(Idle, f64)> {
    let started = Instant::now();
    let idle = tokio::time::timeout(OPEN_TIMEOUT, login_and_shell(config, addr, &user))
        .await
        .with_context(|| format!("the session was not up within {OPEN_TIMEOUT:?}"))??;
    Ok((idle, started.elapsed().as_secs_f64() * 1e3))
}

async fn login_and_shell(
    config: Arc<client::Config>,
    addr: SocketAddr,
    user: &str,
) -> Result<Idle> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let mut handle = client::connect_stream(config, stream, LoadClient)
        .await
        .context("SSH handshake")?;
    let auth = handle
        .authenticate_none(user)
        .await
        .context("authentication")?;
    if !auth.success() {
        bail!("the gateway refused the login of {user:?} with `none`: {auth:?}");
    }
    let mut channel = handle
        .channel_open_session()
        .await
        .context("opening a session channel")?;
    let mut seen = Vec::new();
    channel
        .request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .context("sending pty-req")?;
    expect_success(&mut channel, "pty-req", &mut seen).await?;
    channel
        .request_shell(true)
        .await
        .context("sending the shell request")?;
    expect_success(&mut channel, "shell", &mut seen).await?;
    wait_for_marker(&mut channel, &mut seen).await?;
    Ok(Idle { handle, channel })
}

/// Waits for the answer to the request just sent; data arriving first is kept in `seen`.
async fn expect_success(channel: &mut Channel<Msg>, what: &str, seen: &mut Vec<u8>) -> Result<()> {
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => bail!("the {what} request was refused"),
            Some(ChannelMsg::Data { data }) => seen.extend_from_slice(&data),
            Some(ChannelMsg::Close) | None => bail!("the channel closed after {what}"),
            Some(_) => {}
        }
    }
}

async fn wait_for_marker(channel: &mut Channel<Msg>, seen: &mut Vec<u8>) -> Result<()> {
    let marker = READY_MARKER.as_bytes();
    while !seen.windows(marker.len()).any(|w| w == marker) {
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) => seen.extend_from_slice(&data),
            Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => bail!(
                "the channel closed before the marker (got {:?})",
                String::from_utf8_lossy(seen)
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

async fn warmup(config: &Arc<client::Config>, opts: &ClientOptions) -> Result<Event> {
    let (mut idle, setup_ms) = open_session(config.clone(), opts.connect, opts.user.clone())
        .await
        .context("the warm-up session")?;
    let keystroke_ms = keystroke(&mut idle)
        .await
        .context("the warm-up keystroke")?;
    idle.handle
        .disconnect(Disconnect::ByApplication, "", "en")
        .await
        .context("closing the warm-up session")?;
    Ok(Event::WarmedUp {
        setup_ms,
        keystroke_ms,
    })
}

/// Opens sessions until `to` are open.
async fn ramp(
    config: &Arc<client::Config>,
    opts: &ClientOptions,
    open: &mut Vec<Idle>,
    to: usize,
) -> RampReport {
    let from = open.len();
    let max_failures = (to.saturating_sub(from) / 50).max(5);
    let mut report = RampReport::default();
    let mut in_flight = JoinSet::new();
    let started = Instant::now();
    while open.len() < to {
        while in_flight.len() < opts.window && open.len() + in_flight.len() < to {
            in_flight.spawn(open_session(
                config.clone(),
                opts.connect,
                opts.user.clone(),
            ));
        }
        match in_flight.join_next().await {
            Some(Ok(Ok((idle, ms)))) => {
                open.push(idle);
                report.setup_ms.push(ms);
            }
            Some(Ok(Err(err))) => {
                report
                    .failures
                    .push(format!("with {} open: {err:#}", open.len()));
                if report.failures.len() > max_failures {
                    report.error = Some(format!(
                        "more than {max_failures} sessions failed to come up"
                    ));
                    break;
                }
            }
            Some(Err(err)) => {
                report.error = Some(format!("a session task failed: {err}"));
                break;
            }
            None => break,
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    in_flight.abort_all();
    report.open = open.len();
    report.opened = open.len() - from;
    report
}

/// Times `count` keystrokes on sessions spread over `open`, one at a time.
async fn keystrokes(open: &mut [Idle], count: usize) -> KeystrokeReport {
    let mut report = KeystrokeReport::default();
    if open.is_empty() {
        report.errors.push("no session is open".to_owned());
        return report;
    }
    for i in 0..count {
        let index = i * open.len() / count % open.len();
        match keystroke(&mut open[index]).await {
            Ok(ms) => report.ms.push(ms),
            Err(err) => report.errors.push(format!("session {index}: {err:#}")),
        }
        tokio::time::sleep(KEYSTROKE_PACE).await;
    }
    report
}

/// Writes one byte and waits for the echo; returns the round trip in ms.
async fn keystroke(idle: &mut Idle) -> Result<f64> {
    let started = Instant::now();
    idle.channel
        .data_bytes(vec![KEY])
        .await
        .context("sending a keystroke")?;
    tokio::time::timeout(KEYSTROKE_TIMEOUT, wait_for_key(&mut idle.channel))
        .await
        .with_context(|| format!("no echo within {KEYSTROKE_TIMEOUT:?}"))??;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

async fn wait_for_key(channel: &mut Channel<Msg>) -> Result<()> {
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) if data.contains(&KEY) => return Ok(()),
            Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => {
                bail!("the session closed")
            }
            Some(_) => {}
        }
    }
}
