//! The SSH relay: terminates the device's SSH connection and logs in to the real server
//! with a short-lived certificate, relaying every channel.

mod downstream;
mod pump;
mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use russh::{SshId, server};

use crate::{
    ca::{Authorities, HostCerts},
    config::SshConfig,
    identity::{Identity, IdentityIndex},
    listener::Intercepted,
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
    pub identities: RwLock<Arc<IdentityIndex>>,
}

/// Facts about one intercepted connection.
pub struct ConnectionInfo {
    pub id: String,
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
    pub identity: Option<Arc<Identity>>,
    pub authenticated: AtomicBool,
}

impl RelayContext {
    pub fn set_identities(&self, index: IdentityIndex) {
        *self.identities.write().expect("identity lock poisoned") = Arc::new(index);
    }

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

fn new_session_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    format!("{millis:011x}{:08x}", rand::random::<u32>())
}

/// Relays one intercepted connection until either side ends it.
pub async fn serve(ctx: Arc<RelayContext>, conn: Intercepted) {
    let started = Instant::now();
    let identity = ctx
        .identities
        .read()
        .expect("identity lock poisoned")
        .resolve(conn.peer.ip());
    let info = Arc::new(ConnectionInfo {
        id: new_session_id(),
        peer: conn.peer,
        original_dst: conn.original_dst,
        identity,
        authenticated: AtomicBool::new(false),
    });
    let bridge = Arc::new(Bridge {
        device: Default::default(),
        port_forwarding: ctx.config.port_forwarding,
        agent_forwarding: ctx.config.agent_forwarding,
        agent_requested: AtomicBool::new(false),
        traffic: Default::default(),
        server_closed: Default::default(),
    });
    // The server leg's TCP and SSH handshakes run while the device does its own.
    let pending = info.identity.as_ref().map(|_| {
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
    let handler = DeviceSide::new(ctx.clone(), info.clone(), bridge.clone(), pending);
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
    tokio::pin!(running);
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
    };
    grace.abort();
    tracing::info!(
        session = %info.id,
        peer = %info.peer,
        orig_dst = %info.original_dst,
        bytes_from_client = bridge.traffic.from_client.load(Ordering::Relaxed),
        bytes_from_server = bridge.traffic.from_server.load(Ordering::Relaxed),
        duration_ms = started.elapsed().as_millis() as u64,
        close_reason = %reason,
        "connection closed"
    );
}
