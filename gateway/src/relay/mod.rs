//! The SSH relay: terminates the device's SSH connection and logs in to the real server
//! with a short-lived certificate, relaying every channel.

mod downstream;
mod pump;
mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use russh::{SshId, server};

use crate::{
    admission::{Admission, Outcome},
    ca::{Authorities, HostCerts},
    config::SshConfig,
    identity::Identity,
    listener::Intercepted,
    policies::Policy,
    policy_eval::PolicyEngine,
    upstream_keys::UpstreamKeys,
};
use downstream::DeviceSide;
use upstream::Bridge;

/// Receive window per channel, both legs: large enough that bulk transfers are not
/// window-limited on a LAN.
const WINDOW_SIZE: u32 = 4 * 1024 * 1024;
/// The device must finish key exchange and authentication within this time.
const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// Everything a connection needs that outlives it.
pub struct RelayContext {
    pub config: SshConfig,
    pub authorities: Arc<Authorities>,
    pub host_certs: HostCerts,
    pub upstream_keys: UpstreamKeys,
}

/// Facts about one intercepted connection.
pub struct ConnectionInfo {
    pub id: String,
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
    pub identity: Option<Arc<Identity>>,
    pub authenticated: AtomicBool,
    /// The deciding policy, if any (also for refusals).
    pub policy_id: Option<String>,
    /// What the admitting policy allows; `None` when the connection is refused.
    pub permissions: Option<Permissions>,
}

/// The admitting policy's SSH settings, with the daemon config filling what it leaves open.
#[derive(Debug, Clone)]
pub struct Permissions {
    pub policy: Arc<Policy>,
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
}

impl Permissions {
    fn new(policy: Arc<Policy>, defaults: &SshConfig) -> Self {
        Permissions {
            port_forwarding: policy
                .ssh
                .port_forwarding
                .unwrap_or(defaults.port_forwarding),
            agent_forwarding: policy
                .ssh
                .agent_forwarding
                .unwrap_or(defaults.agent_forwarding),
            policy,
        }
    }

    fn login_allowed(&self, login: &str) -> bool {
        PolicyEngine::login_allowed(&self.policy, login)
    }
}

impl RelayContext {
    fn server_config(&self, dst: IpAddr) -> Result<Arc<server::Config>> {
        let certificate = self.host_certs.get(dst)?;
        Ok(Arc::new(server::Config {
            server_id: SshId::Standard(
                format!("SSH-2.0-sshgw_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            keys: vec![self.authorities.host_key().clone()],
            certificates: vec![certificate],
            // OpenSSH probes with "none" first; it is accepted, so nothing waits.
            auth_rejection_time: Duration::from_secs(1),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(self.config.keepalive_secs)),
            keepalive_max: 3,
            nodelay: true,
            window_size: WINDOW_SIZE,
            ..Default::default()
        }))
    }
}

/// Relays one intercepted connection until either side ends it.
pub async fn serve(
    ctx: Arc<RelayContext>,
    conn: Intercepted,
    session_id: String,
    admission: Admission,
) {
    let started = Instant::now();
    let (permissions, refusal, policy_id) = match admission.outcome {
        Outcome::Relay { policy } => {
            let id = policy.id.clone();
            (Some(Permissions::new(policy, &ctx.config)), None, Some(id))
        }
        Outcome::Refuse { message, policy_id } => (None, Some(message), policy_id),
    };
    let info = Arc::new(ConnectionInfo {
        id: session_id,
        peer: conn.peer,
        original_dst: conn.original_dst,
        identity: admission.identity,
        authenticated: AtomicBool::new(false),
        policy_id,
        permissions,
    });
    let (port_forwarding, agent_forwarding) = info
        .permissions
        .as_ref()
        .map_or((false, false), |p| (p.port_forwarding, p.agent_forwarding));
    let bridge = Arc::new(Bridge {
        device: Default::default(),
        port_forwarding,
        agent_forwarding,
        agent_requested: AtomicBool::new(false),
        traffic: Default::default(),
        server_closed: Default::default(),
    });
    // The server leg's TCP and SSH handshakes run while the device does its own.
    let pending = info.permissions.as_ref().map(|_| {
        tokio::spawn(upstream::connect(
            ctx.clone(),
            conn.original_dst,
            bridge.clone(),
        ))
    });
    let config = match ctx.server_config(conn.original_dst.ip()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(session = %info.id, error = %format!("{e:#}"), "cannot prepare the host certificate");
            return;
        }
    };
    let handler = DeviceSide::new(ctx.clone(), info.clone(), bridge.clone(), pending, refusal);
    let running = match tokio::time::timeout(
        LOGIN_GRACE,
        server::run_stream(config, conn.stream, handler),
    )
    .await
    {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            tracing::info!(session = %info.id, peer = %info.peer, error = %e, "device handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(session = %info.id, peer = %info.peer, "device sent no SSH banner in time");
            return;
        }
    };
    let device = running.handle();
    let grace = {
        let (device, info) = (device.clone(), info.clone());
        tokio::spawn(async move {
            tokio::time::sleep(LOGIN_GRACE).await;
            if !info.authenticated.load(Ordering::Acquire) {
                let _ = device
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "sshgw: login took too long".into(),
                        "en".into(),
                    )
                    .await;
            }
        })
    };
    let deadline = info.permissions.as_ref().and_then(|p| {
        p.policy.ssh.max_duration.map(|d| {
            (
                d,
                format!(
                    "sshgw: session ended: policy {:?} ({}) allows at most {}",
                    p.policy.name,
                    p.policy.id,
                    crate::policies::format_duration(d)
                ),
            )
        })
    });
    let limit = deadline.as_ref().map(|(d, _)| *d);
    let expiry = async move {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(running);
    tokio::pin!(expiry);
    let reason = tokio::select! {
        result = &mut running => match result {
            Ok(()) => "client".to_string(),
            Err(e) => format!("error: {e}"),
        },
        _ = bridge.server_closed.notified() => {
            let _ = device
                .disconnect(russh::Disconnect::ByApplication, "sshgw: the server closed the connection".into(), "en".into())
                .await;
            let _ = running.await;
            "server".to_string()
        }
        () = &mut expiry => {
            let message = deadline.map(|(_, m)| m).unwrap_or_default();
            tracing::info!(session = %info.id, "maximum session duration reached");
            let _ = device.disconnect(russh::Disconnect::ByApplication, message, "en".into()).await;
            let _ = running.await;
            "max duration".to_string()
        }
    };
    grace.abort();
    tracing::info!(
        session = %info.id,
        peer = %info.peer,
        orig_dst = %info.original_dst,
        policy = info.policy_id.as_deref().unwrap_or("-"),
        bytes_from_client = bridge.traffic.from_client.load(Ordering::Relaxed),
        bytes_from_server = bridge.traffic.from_server.load(Ordering::Relaxed),
        duration_ms = started.elapsed().as_millis() as u64,
        close_reason = %reason,
        "connection closed"
    );
}
