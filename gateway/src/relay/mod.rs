//! The SSH relay: terminates the device's SSH connection and logs in to the real server
//! with a short-lived certificate, relaying every channel.

mod audit;
mod downstream;
mod flow;
mod pump;
pub mod stall;
mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use russh::{SshId, server};

use crate::{
    admission::{Admission, Outcome},
    ca::{Authorities, HostCerts},
    config::{RecordingFailure, SshConfig},
    identity::Identity,
    listener::Intercepted,
    policies::Policy,
    policy_eval::PolicyEngine,
    recording::{
        keys::RecordingKey,
        writer::{ChannelMeta, Recorder},
    },
    sessions::{
        SessionRecord,
        live::{LiveSessions, Tracker},
        now_micros,
        store::SessionStore,
    },
    upstream_keys::UpstreamKeys,
};
use downstream::DeviceSide;
use upstream::Bridge;

/// Receive window per channel, both legs: large enough that bulk transfers are not
/// window-limited on a LAN. It is also what sshgw holds at most per channel and direction:
/// windows reopen only for data passed on (see `flow`).
const WINDOW_SIZE: u32 = 4 * 1024 * 1024;
/// The device must finish key exchange and authentication within this time.
const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// Everything a connection needs that outlives it.
pub struct RelayContext {
    pub config: SshConfig,
    pub ciphers: Ciphers,
    pub authorities: Arc<Authorities>,
    pub host_certs: HostCerts,
    pub upstream_keys: UpstreamKeys,
    pub store: SessionStore,
    pub live: Arc<LiveSessions>,
    pub recording: RecordingSettings,
}

/// The cipher lists of `[ssh]`, resolved once at start.
pub struct Ciphers {
    pub device: Vec<russh::cipher::Name>,
    pub upstream: Vec<russh::cipher::Name>,
}

impl Ciphers {
    pub fn new(config: &SshConfig) -> anyhow::Result<Self> {
        Ok(Ciphers {
            device: crate::config::cipher_names("device_ciphers", &config.device_ciphers)?,
            upstream: crate::config::cipher_names("upstream_ciphers", &config.upstream_ciphers)?,
        })
    }
}

/// Where recordings go, the key they are encrypted to, and what a failure means.
pub struct RecordingSettings {
    pub dir: std::path::PathBuf,
    /// Replaceable at run time; new channels use the key current when they start.
    pub key: std::sync::RwLock<Option<Arc<RecordingKey>>>,
    pub on_failure: RecordingFailure,
}

impl RecordingSettings {
    /// Opens the recording of channel `channel` of session `session`.
    async fn open(
        &self,
        session: &str,
        channel: u32,
        meta: ChannelMeta,
    ) -> anyhow::Result<(Recorder, std::path::PathBuf)> {
        let key = self
            .key
            .read()
            .expect("recording key lock poisoned")
            .clone()
            .context("no recording key is configured ([recording] public_key_file or `sshgw recording set-key`)")?;
        let path = self.dir.join(format!("{session}-ch{channel}.sshlog"));
        let recorder = Recorder::create(&path, &key, meta)
            .await
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok((recorder, path))
    }
}

/// The server connection once logged in, shared by the device side and the teardown.
type ServerSlot = Arc<std::sync::OnceLock<Arc<russh::client::Handle<upstream::ServerSide>>>>;

/// Facts about one intercepted connection.
pub struct ConnectionInfo {
    pub id: String,
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
    pub identity: Option<Arc<Identity>>,
    pub authenticated: AtomicBool,
    /// What the admitting policy allows; `None` when the connection is refused.
    pub permissions: Option<Permissions>,
    pub tracker: Arc<Tracker>,
    /// Why the relay refused, once it did (the session log's close reason).
    pub failure: std::sync::Mutex<Option<String>>,
    /// What the gateway told the user when it ended the session (kill, max duration,
    /// shutdown): recordings note it as the programs' end.
    pub ended_by_gateway: std::sync::Mutex<Option<String>>,
    /// Ends the session with `failure` as the message (set by [`ConnectionInfo::abort`]).
    aborted: tokio::sync::Notify,
}

impl ConnectionInfo {
    /// Ends the session from inside the relay, telling the user `message`.
    pub fn abort(&self, message: String) {
        *self.failure.lock().expect("failure lock poisoned") = Some(message);
        self.aborted.notify_one();
    }
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
        // The destination's own host key, and the host certificate for it.
        let identity = self.host_certs.get(dst)?;
        Ok(Arc::new(server::Config {
            server_id: SshId::Standard(
                format!("SSH-2.0-sshgw_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            keys: vec![identity.key],
            certificates: vec![identity.certificate],
            // Listed when `none` is refused (see `auth_none`): a key the client proves, else
            // keyboard-interactive without prompts. That refusal is immediate.
            methods: downstream::device_auth_methods(),
            auth_rejection_time: Duration::from_secs(1),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(self.config.keepalive_secs)),
            keepalive_max: 3,
            nodelay: true,
            window_size: WINDOW_SIZE,
            window_refill: russh::WindowRefill::OnRelease,
            preferred: russh::Preferred {
                cipher: self.ciphers.device.clone().into(),
                ..Default::default()
            },
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
    let (permissions, refusal, policy_id) = match admission.outcome {
        Outcome::Relay { policy } => {
            let id = policy.id.clone();
            (Some(Permissions::new(policy, &ctx.config)), None, Some(id))
        }
        Outcome::Refuse { message, policy_id } => (None, Some(message), policy_id),
    };
    let identity = admission.identity;
    let tracker = Arc::new(Tracker::open(
        SessionRecord {
            email: identity.as_ref().map(|i| i.email.clone()),
            device_id: identity.as_ref().map(|i| i.device_id.clone()),
            policy_id,
            policy_name: admission.policy_name,
            ..SessionRecord::new(
                session_id.clone(),
                conn.peer.to_string(),
                conn.original_dst.to_string(),
                if permissions.is_some() {
                    "audit_ssh"
                } else {
                    "block"
                },
                now_micros(),
            )
        },
        ctx.store.clone(),
        ctx.live.clone(),
    ));
    let info = Arc::new(ConnectionInfo {
        id: session_id,
        peer: conn.peer,
        original_dst: conn.original_dst,
        identity,
        authenticated: AtomicBool::new(false),
        permissions,
        tracker: tracker.clone(),
        failure: std::sync::Mutex::new(refusal.clone()),
        aborted: Default::default(),
        ended_by_gateway: Default::default(),
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
        traffic: tracker.bytes(),
        server_closed: Default::default(),
        session: info.id.clone(),
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
    let server: ServerSlot = Default::default();
    let handler = DeviceSide::new(
        ctx.clone(),
        info.clone(),
        bridge.clone(),
        pending,
        refusal,
        server.clone(),
    );
    let running = match tokio::time::timeout(
        LOGIN_GRACE,
        server::run_stream(config, conn.stream, handler),
    )
    .await
    {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            finish(&info, &format!("error: device handshake failed: {e}"));
            return;
        }
        Err(_) => {
            finish(&info, "error: device sent no SSH banner in time");
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
    let kill = tracker.kill_switch();
    tokio::pin!(running);
    tokio::pin!(expiry);
    // Ends the device leg with `message` and waits for it to close.
    let end_with = async |message: String| {
        *info.ended_by_gateway.lock().expect("end reason poisoned") = Some(message.clone());
        let _ = device
            .disconnect(russh::Disconnect::ByApplication, message, "en".into())
            .await;
    };
    let reason = tokio::select! {
        result = &mut running => match result {
            Ok(()) => "client".to_string(),
            Err(e) => format!("error: {e}"),
        },
        _ = bridge.server_closed.notified() => {
            end_with("sshgw: the server closed the connection".into()).await;
            let _ = running.as_mut().await;
            "server".to_string()
        }
        () = &mut expiry => {
            tracing::info!(session = %info.id, "maximum session duration reached");
            end_with(deadline.map(|(_, m)| m).unwrap_or_default()).await;
            let _ = running.as_mut().await;
            "max duration".to_string()
        }
        () = info.aborted.notified() => {
            let message = info.failure.lock().expect("failure lock poisoned").clone().unwrap_or_default();
            end_with(message).await;
            let _ = running.as_mut().await;
            "error".to_string()
        }
        () = kill.notified() => {
            let message = tracker.kill_reason();
            tracing::info!(session = %info.id, reason = %message, "session killed");
            let reason = if message == crate::sessions::live::ADMIN_KILL {
                "admin kill".to_string()
            } else {
                "gateway shutdown".to_string()
            };
            end_with(message).await;
            let _ = running.as_mut().await;
            reason
        }
    };
    grace.abort();
    // Close the server leg too, whoever ended the session.
    if let Some(server) = server.get() {
        let _ = server
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    finish(&info, &reason);
}

/// How the session loop reports a device that closed TCP without a disconnect message:
/// an orderly close, and a close with unread data in the socket (a reset).
const SOCKET_CLOSED: &[&str] = &[
    "error: early eof",
    "error: Connection reset by peer (os error 104)",
];

/// Closes the session record (a refusal's reason wins over how the socket ended) and
/// emits it as the structured `session closed` event.
fn finish(info: &ConnectionInfo, reason: &str) {
    let failure = info.failure.lock().expect("failure lock poisoned").clone();
    // PuTTY, Dropbear, paramiko and libssh end a session by closing (or resetting) the
    // TCP connection after their channels closed, without SSH_MSG_DISCONNECT: that is the
    // client's normal exit. Only the same while the device has a channel open is an error.
    let reason = if SOCKET_CLOSED.contains(&reason) && !info.tracker.has_open_device_channel() {
        "client"
    } else {
        reason
    };
    let record = info.tracker.close(failure.as_deref().unwrap_or(reason));
    crate::metrics::METRICS.session_closed(record.bytes_from_client, record.bytes_from_server);
    tracing::info!(
        session = %record.id,
        email = record.email.as_deref().unwrap_or("-"),
        device = record.device_id.as_deref().unwrap_or("-"),
        source = %record.source,
        orig_dst = %record.destination,
        login = record.login.as_deref().unwrap_or("-"),
        policy = record.policy_id.as_deref().unwrap_or("-"),
        decision = %record.decision,
        duration_ms = record.duration_ms.unwrap_or_default(),
        bytes_from_client = record.bytes_from_client,
        bytes_from_server = record.bytes_from_server,
        close_reason = record.close_reason.as_deref().unwrap_or("-"),
        cert_serial = record.cert_serial.as_deref().unwrap_or("-"),
        upstream_host_key = record.upstream_host_key.as_deref().unwrap_or("-"),
        channels = record.channels.len(),
        "session closed"
    );
}
