//! The load server: an SSH server (russh) whose only login is an OpenSSH user certificate
//! from a trusted CA ([`super::cert`]) and whose only program is an echo.
//!
//! `sshgw-bench load-server --listen ADDR:PORT --user-ca FILE`: FILE holds the CA's public
//! key line (`sshgw ca user-key`). It prints [`Event::Listening`] once bound, then serves
//! until its standard input closes. Every session runs on one thread; each refused
//! certificate is reported on standard error with the reason (the first
//! [`REFUSALS_LOGGED`]). The host key is a fresh Ed25519 key per run (sshgw pins it on
//! first use).
//!
//! A session accepts a pty request, then a shell or exec request: it writes
//! [`READY_MARKER`] and a newline and from then on writes back every byte it receives.
//! Buffers and windows are small (an idle session holds only russh's state).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Certificate, PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Preferred};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::READY_MARKER;
use super::cert::check_user_certificate;
use super::protocol::{Event, emit};

/// Refusals written to standard error; later ones are only counted.
pub const REFUSALS_LOGGED: usize = 20;
/// Channel window and largest packet: an interactive session needs little.
const WINDOW: u32 = 32 * 1024;
const MAX_PACKET: u32 = 32 * 1024;
/// Pause after a failed accept (e.g. out of descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub user_ca: PathBuf,
}

/// Runs the server until standard input closes.
pub fn run(opts: &ServerOptions) -> Result<()> {
    super::runtime()?.block_on(serve(opts))
}

async fn serve(opts: &ServerOptions) -> Result<()> {
    let ca = Arc::new(read_user_ca(&opts.user_ca)?);
    let config = Arc::new(config(host_key()?));
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    emit(&Event::Listening {
        addr: listener.local_addr()?.to_string(),
    })?;
    let refusals = Arc::new(AtomicUsize::new(0));
    let stdin_closed = stdin_closed();
    tokio::pin!(stdin_closed);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handler = EchoHandler { peer: peer.ip(), ca: ca.clone(), refusals: refusals.clone() };
                    tokio::spawn(serve_connection(config.clone(), stream, handler));
                }
                Err(err) => {
                    eprintln!("load-server: accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut stdin_closed => break,
        }
    }
    eprintln!(
        "load-server: standard input closed; {} certificates refused",
        refusals.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Resolves once standard input reaches end of file (or fails).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn serve_connection(config: Arc<server::Config>, stream: TcpStream, handler: EchoHandler) {
    let _ = stream.set_nodelay(true);
    // A session ends when the client (or sshgw) goes away; that is not an error here.
    if let Ok(running) = server::run_stream(config, stream, handler).await {
        let _ = running.await;
    }
}

/// The CA's public key from a file holding its OpenSSH public key line.
pub fn read_user_ca(path: &Path) -> Result<KeyData> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{} holds no public key line", path.display()))?;
    let key = PublicKey::from_openssh(line)
        .with_context(|| format!("{} is not an OpenSSH public key line", path.display()))?;
    Ok(key.key_data().clone())
}

/// A fresh Ed25519 host key from 32 bytes of `/dev/urandom`.
fn host_key() -> Result<PrivateKey> {
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut seed,
    )
    .context("reading /dev/urandom")?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

fn config(host_key: PrivateKey) -> server::Config {
    server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // A refused certificate is answered at once except for the first `none` probe.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: 4,
        event_buffer_size: 4,
        preferred: Preferred {
            kex: super::kex_order(true),
            ..Preferred::default()
        },
        inactivity_timeout: None,
        keepalive_interval: None,
        nodelay: true,
        ..server::Config::default()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One connection's handler: certificate login, then the echo.
struct EchoHandler {
    peer: IpAddr,
    ca: Arc<KeyData>,
    refusals: Arc<AtomicUsize>,
}

impl server::Handler for EchoHandler {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        match check_user_certificate(certificate, &self.ca, user, self.peer, unix_now()) {
            Ok(()) => Ok(Auth::Accept),
            Err(refusal) => {
                let n = self.refusals.fetch_add(1, Ordering::Relaxed);
                if n < REFUSALS_LOGGED {
                    eprintln!(
                        "load-server: refused the certificate {:?} of {} for login {user:?}: {refusal}",
                        certificate.key_id(),
                        self.peer
                    );
                }
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The handler's callbacks carry the data; the channel object is not needed.
        reply.accept().await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // russh's signature
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        start_echo(channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        start_echo(channel, session)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.data(channel, data.to_vec())
    }
}

/// Confirms the program request and writes the marker.
fn start_echo(channel: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
    session.channel_success(channel)?;
    session.data(channel, format!("{READY_MARKER}\n").into_bytes())
}
