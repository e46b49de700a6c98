//! The gateway's own SSH connection to the real server, authenticated with a freshly
//! minted user certificate, with the server's host key checked against the pins.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, atomic::AtomicBool},
    time::Duration,
};

use russh::{
    ChannelOpenFailure, client,
    keys::{HashAlg, PublicKey, ssh_key::Certificate},
};
use tokio::{net::TcpStream, sync::Notify};

use super::{RelayContext, channel, tap::ProgramTap};
use crate::{
    identity::Identity,
    trust::ca::{MintedCert, UserCertRequest},
    trust::upstream_keys::KeyVerdict,
};

/// Why the relay could not reach or log in to the real server. `Display` is the one line
/// the user sees.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("sshgw: cannot reach {dst}: {reason}")]
    Unreachable { dst: SocketAddr, reason: String },
    #[error(
        "sshgw: host key of {dst} ({presented}) does not match the key pinned by the gateway \
         ({expected}); refusing to connect"
    )]
    HostKeyMismatch {
        dst: SocketAddr,
        expected: String,
        presented: String,
    },
    #[error(
        "sshgw: host key of {dst} ({presented}) is not in the gateway's known_hosts \
         (strict mode); ask the operator to add it"
    )]
    HostKeyUnknown { dst: SocketAddr, presented: String },
    #[error("sshgw: host key of {dst} ({presented}) is revoked in the gateway's known_hosts")]
    HostKeyRevoked { dst: SocketAddr, presented: String },
    #[error(
        "sshgw: {dst} refused the sshgw certificate for login {login:?} (principal {principal:?}): \
         check that the server trusts the sshgw user CA (TrustedUserCAKeys) and lets \
         {principal:?} log in as {login:?}"
    )]
    CertificateRefused {
        dst: SocketAddr,
        login: String,
        principal: String,
    },
    #[error("sshgw: SSH handshake with {dst} failed: {reason}")]
    Handshake { dst: SocketAddr, reason: String },
    #[error("sshgw: cannot issue a certificate: {0}")]
    Certificate(String),
}

/// What the server-side handler needs from the device side: forwarded and agent
/// channels the server opens are relayed to the device.
pub struct Bridge {
    pub device: OnceLock<russh::server::Handle>,
    /// What the policy in force allows (forwarding is decided per channel).
    pub permissions: super::SharedPermissions,
    /// Set once the device asked for agent forwarding on some channel.
    pub agent_requested: AtomicBool,
    pub traffic: Arc<crate::sessions::live::ByteCounters>,
    /// Notified when the server side of the connection ends.
    pub server_closed: Notify,
    /// The session id, for the relay's logs.
    pub session: String,
}

/// A connected (not yet authenticated) server connection.
pub struct Connected {
    pub handle: client::Handle<ServerSide>,
    pub dst: SocketAddr,
    /// Our address on the connection: the certificate's `source-address`.
    pub local: SocketAddr,
    pub host_key_fingerprint: String,
}

pub struct ServerSide {
    ctx: Arc<RelayContext>,
    dst: SocketAddr,
    verdict: Arc<Mutex<Option<(KeyVerdict, String)>>>,
    bridge: Arc<Bridge>,
}

fn client_config(ctx: &RelayContext, dst: SocketAddr) -> Arc<client::Config> {
    let certificates = ctx.upstream_keys.wants_certificates(dst.ip(), dst.port());
    ctx.configs
        .upstream(certificates, || build_client_config(ctx, certificates))
}

fn build_client_config(ctx: &RelayContext, certificates: bool) -> client::Config {
    let mut preferred = russh::Preferred {
        cipher: ctx.ciphers.upstream.clone().into(),
        ..Default::default()
    };
    if certificates {
        preferred.host_key_certificates = preferred.key.clone();
    }
    client::Config {
        window_size: super::WINDOW_SIZE,
        window_refill: russh::WindowRefill::OnRelease,
        nodelay: true,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(ctx.config.keepalive_secs)),
        keepalive_max: 3,
        preferred,
        ..Default::default()
    }
}

/// TCP connect and SSH handshake with the real server, host key checked.
pub async fn connect(
    ctx: Arc<RelayContext>,
    dst: SocketAddr,
    bridge: Arc<Bridge>,
) -> Result<Connected, UpstreamError> {
    let started = std::time::Instant::now();
    let timeout = Duration::from_secs(ctx.config.connect_timeout_secs);
    let unreachable = |reason: String| UpstreamError::Unreachable { dst, reason };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", timeout.as_secs())))?
        .map_err(|e| unreachable(io_reason(&e)))?;
    stream.set_nodelay(true).ok();
    let local = stream
        .local_addr()
        .map_err(|e| unreachable(e.to_string()))?;

    let verdict = Arc::new(Mutex::new(None));
    let handler = ServerSide {
        ctx: ctx.clone(),
        dst,
        verdict: verdict.clone(),
        bridge,
    };
    let handshake = client::connect_stream(client_config(&ctx, dst), stream, handler);
    let result = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| UpstreamError::Handshake {
            dst,
            reason: format!("no SSH handshake within {}s", timeout.as_secs()),
        })?;
    let seen = verdict.lock().expect("verdict lock poisoned").take();
    match (result, seen) {
        (Ok(handle), Some((_, fingerprint))) => {
            crate::metrics::METRICS
                .upstream_connect
                .observe(started.elapsed());
            Ok(Connected {
                handle,
                dst,
                local,
                host_key_fingerprint: fingerprint,
            })
        }
        (Ok(_), None) => Err(UpstreamError::Handshake {
            dst,
            reason: "the server's host key was never checked".into(),
        }),
        (Err(e), Some((verdict, presented))) => Err(match verdict {
            KeyVerdict::Mismatch { expected, .. } => UpstreamError::HostKeyMismatch {
                dst,
                expected: expected.join(", "),
                presented,
            },
            KeyVerdict::Unknown => UpstreamError::HostKeyUnknown { dst, presented },
            KeyVerdict::Revoked => UpstreamError::HostKeyRevoked { dst, presented },
            KeyVerdict::Trusted | KeyVerdict::Pinned => UpstreamError::Handshake {
                dst,
                reason: e.to_string(),
            },
        }),
        (Err(e), None) => Err(UpstreamError::Handshake {
            dst,
            reason: e.to_string(),
        }),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
            "no route to host".into()
        }
        _ => e.to_string(),
    }
}

/// Mints a certificate for this connection and logs in as `login`.
pub async fn authenticate(
    ctx: &RelayContext,
    conn: &mut Connected,
    identity: &Identity,
    permissions: &super::Permissions,
    login: &str,
    session_id: &str,
) -> Result<MintedCert, UpstreamError> {
    let dst = conn.dst;
    let mint_started = std::time::Instant::now();
    let minted = ctx
        .authorities
        .mint_user_cert(&UserCertRequest {
            principal: &identity.principal,
            login,
            email: &identity.email,
            device_id: &identity.device_id,
            session_id,
            source_address: conn.local.ip(),
            lifetime: Duration::from_secs(ctx.config.certificate_lifetime_secs),
            permit_port_forwarding: permissions.port_forwarding,
            permit_agent_forwarding: permissions.agent_forwarding,
        })
        .map_err(|e| UpstreamError::Certificate(format!("{e:#}")))?;
    crate::metrics::METRICS
        .certificate_mint
        .observe(mint_started.elapsed());
    let refused = || UpstreamError::CertificateRefused {
        dst,
        login: login.to_string(),
        principal: identity.principal.clone(),
    };
    let result = conn
        .handle
        .authenticate_openssh_cert(login, Arc::new(minted.key.clone()), minted.cert.clone())
        .await
        .map_err(|e| UpstreamError::Handshake {
            dst,
            reason: e.to_string(),
        })?;
    if result.success() {
        Ok(minted)
    } else {
        Err(refused())
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl client::Handler for ServerSide {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let (verdict, presented) = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => (
                self.ctx
                    .upstream_keys
                    .check(self.dst.ip(), self.dst.port(), key),
                fingerprint(key),
            ),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => (
                self.ctx
                    .upstream_keys
                    .check_certificate(self.dst.ip(), self.dst.port(), cert),
                certificate_fingerprint(cert),
            ),
        };
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(dst = %self.dst, error = %format!("{e:#}"), "cannot check the server's host key");
                return Ok(false);
            }
        };
        let accepted = matches!(verdict, KeyVerdict::Trusted | KeyVerdict::Pinned);
        match &verdict {
            KeyVerdict::Pinned => {
                tracing::info!(dst = %self.dst, fingerprint = %presented, "pinned new server host key (tofu)")
            }
            KeyVerdict::Trusted => {}
            refused => tracing::warn!(
                dst = %self.dst,
                fingerprint = %presented,
                verdict = ?refused,
                "server host key refused"
            ),
        }
        *self.verdict.lock().expect("verdict lock poisoned") = Some((verdict, presented));
        Ok(accepted)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let Some(device) = self
            .bridge
            .device
            .get()
            .filter(|_| self.bridge.permissions.port_forwarding())
            .cloned()
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let (addr, orig) = (
            connected_address.to_string(),
            originator_address.to_string(),
        );
        let (traffic, session) = (self.bridge.traffic.clone(), self.bridge.session.clone());
        // Opening the device-side channel takes a round trip; never block this loop on it.
        tokio::spawn(async move {
            let down = device
                .channel_open_forwarded_tcpip(addr, connected_port, orig, originator_port)
                .await;
            bridge_stream(down, reply, channel, device, &session, traffic).await;
        });
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.bridge.permissions.agent_forwarding()
            && self
                .bridge
                .agent_requested
                .load(std::sync::atomic::Ordering::Acquire);
        let Some(device) = self.bridge.device.get().filter(|_| allowed).cloned() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let (traffic, session) = (self.bridge.traffic.clone(), self.bridge.session.clone());
        tokio::spawn(async move {
            let down = device.channel_open_agent().await;
            bridge_stream(down, reply, channel, device, &session, traffic).await;
        });
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        self.bridge.server_closed.notify_one();
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

fn certificate_fingerprint(cert: &Certificate) -> String {
    PublicKey::from(cert.public_key().clone())
        .fingerprint(HashAlg::Sha256)
        .to_string()
}

/// Answers the server's open of a forwarded channel (TCP/IP or agent) once the device-side
/// channel `down` opened, or failed to, and relays the two as a byte stream.
async fn bridge_stream(
    down: Result<russh::Channel<russh::server::Msg>, russh::Error>,
    reply: client::ChannelOpenHandle,
    up: russh::Channel<client::Msg>,
    device: russh::server::Handle,
    session: &str,
    traffic: Arc<crate::sessions::live::ByteCounters>,
) {
    match down {
        Ok(down) => {
            reply.accept().await;
            // A forwarded channel runs no program: no tap is ever attached.
            channel::start::<ProgramTap>(channel::Kind::Stream, session, down, up, device, traffic);
        }
        Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
    }
}
