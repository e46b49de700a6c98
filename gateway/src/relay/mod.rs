//! The SSH relay: terminates the device's SSH connection and logs in to the real server
//! with a short-lived certificate, relaying every channel.

mod channel;
mod credit;
mod device_side;
#[cfg(test)]
mod end_reason_tests;
mod flow;
pub mod limits;
mod server_side;
pub mod stall;
mod tap;

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
    config::{RecordingFailure, SshConfig},
    identity::Identity,
    intercept::admission::{Admission, Outcome},
    intercept::listener::Intercepted,
    policy::eval::PolicyEngine,
    policy::model::{Action, Policy},
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
    trust::ca::{Authorities, HostCerts},
    trust::upstream_keys::UpstreamKeys,
};
use device_side::DeviceSide;
use server_side::Bridge;

/// Receive window per channel, both legs: large enough that bulk transfers are not
/// window-limited on a LAN. It is also what sshgw holds at most per channel and direction:
/// windows reopen only for data passed on (see `flow`).
const WINDOW_SIZE: u32 = 4 * 1024 * 1024;

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
    pub limits: Arc<limits::Limits>,
    /// Every new device table and policy set, to judge live sessions again.
    pub snapshots: tokio::sync::watch::Receiver<Arc<crate::state::Snapshot>>,
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
type ServerSlot = Arc<std::sync::OnceLock<Arc<russh::client::Handle<server_side::ServerSide>>>>;

/// Facts about one intercepted connection.
pub struct ConnectionInfo {
    pub id: String,
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
    pub identity: Option<Arc<Identity>>,
    /// The interface the connection came in on, as the datapath saw it.
    pub ingress: Option<String>,
    pub authenticated: AtomicBool,
    /// What the policy in force allows; `None` when the connection is refused.
    pub permissions: SharedPermissions,
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

/// The permissions of the policy in force for a session. Replaced when a new device table
/// or policy set puts the session under another policy: new channels use the current one.
#[derive(Clone, Default)]
pub struct SharedPermissions(Arc<std::sync::RwLock<Option<Permissions>>>);

impl SharedPermissions {
    fn new(permissions: Option<Permissions>) -> Self {
        SharedPermissions(Arc::new(std::sync::RwLock::new(permissions)))
    }

    pub fn get(&self) -> Option<Permissions> {
        self.0.read().expect("permissions lock poisoned").clone()
    }

    fn set(&self, permissions: Permissions) {
        *self.0.write().expect("permissions lock poisoned") = Some(permissions);
    }

    pub fn port_forwarding(&self) -> bool {
        self.get().is_some_and(|p| p.port_forwarding)
    }

    pub fn agent_forwarding(&self) -> bool {
        self.get().is_some_and(|p| p.agent_forwarding)
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
            methods: device_side::device_auth_methods(),
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
    ingress: Option<String>,
) {
    let owner = match &admission.identity {
        Some(identity) => limits::Owner::Device(identity.device_id.clone()),
        None => limits::Owner::Address(conn.peer.ip()),
    };
    let (slot, over_limit) = match ctx.limits.admit(owner) {
        limits::Ticket::Admitted(slot) => (slot, None),
        limits::Ticket::Refused(slot, message) => (slot, Some(message)),
        limits::Ticket::Dropped(limit) => {
            dropped_over_limit(&session_id, conn.peer, limit);
            return;
        }
    };
    let (permissions, refusal, policy_id) = match (admission.outcome, over_limit) {
        (_, Some(message)) => (None, Some(message), None),
        (Outcome::Relay { policy }, None) => {
            let id = policy.id.clone();
            (Some(Permissions::new(policy, &ctx.config)), None, Some(id))
        }
        (Outcome::Refuse { message, policy_id }, None) => (None, Some(message), policy_id),
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
                    Action::AuditSsh
                } else {
                    Action::Block
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
        ingress,
        authenticated: AtomicBool::new(false),
        permissions: SharedPermissions::new(permissions),
        tracker: tracker.clone(),
        failure: std::sync::Mutex::new(refusal.clone()),
        aborted: Default::default(),
        ended_by_gateway: Default::default(),
    });
    let bridge = Arc::new(Bridge {
        device: Default::default(),
        permissions: info.permissions.clone(),
        agent_requested: AtomicBool::new(false),
        traffic: tracker.bytes(),
        server_closed: Default::default(),
        session: info.id.clone(),
    });
    let grace = Duration::from_secs(ctx.limits.config().preauth_grace_secs);
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
        Arc::new(slot),
        refusal,
        server.clone(),
    );
    let started = tokio::time::Instant::now();
    // russh runs the session in a task of its own; a duplicate of the socket lets the relay
    // close it even when the session cannot be told anything (still in key exchange).
    let socket = match std::os::fd::AsFd::as_fd(&conn.stream).try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            finish(&info, &format!("error: cannot duplicate the socket: {e}"));
            return;
        }
    };
    let running =
        match tokio::time::timeout(grace, server::run_stream(config, conn.stream, handler)).await {
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
    // Banner, key exchange and login must all fit in the grace: a client stuck in key
    // exchange cannot be told anything, so its connection is simply closed.
    let login_deadline = {
        let info = info.clone();
        async move {
            tokio::time::sleep_until(started + grace).await;
            if info.authenticated.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        }
    };
    let deadline = info.permissions.get().and_then(|p| {
        p.policy.ssh.max_duration.map(|d| {
            (
                d,
                format!(
                    "sshgw: session ended: policy {:?} ({}) allows at most {}",
                    p.policy.name,
                    p.policy.id,
                    crate::policy::model::format_duration(d)
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
    let revoked = revocation(ctx.clone(), info.clone());
    tokio::pin!(revoked);
    tokio::pin!(running);
    tokio::pin!(expiry);
    tokio::pin!(login_deadline);
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
        () = &mut login_deadline => {
            tracing::info!(session = %info.id, peer = %info.peer, grace_secs = grace.as_secs(), "no login within the pre-auth grace; closing");
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                device.disconnect(
                    russh::Disconnect::ByApplication,
                    "sshgw: login took too long".into(),
                    "en".into(),
                ),
            )
            .await;
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                nix::sys::socket::Shutdown::Both,
            );
            let _ = running.as_mut().await;
            "error: no login within the pre-auth grace".to_string()
        }
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
        message = &mut revoked => {
            tracing::info!(session = %info.id, reason = %message, "session revoked by a device or policy change");
            end_with(message).await;
            let _ = running.as_mut().await;
            "revoked".to_string()
        }
        () = kill.notified() => {
            let message = tracker.kill_reason();
            tracing::info!(session = %info.id, reason = %message, "session killed");
            let reason = match message.as_str() {
                crate::sessions::live::ADMIN_KILL => "admin kill".to_string(),
                m if m.contains("shutting down") || m.contains("restarting") => {
                    "gateway shutdown".to_string()
                }
                // Ended by the gateway for a reason of its own (its log cannot be written).
                m => format!("error: {}", m.strip_prefix("sshgw: ").unwrap_or(m)),
            };
            end_with(message).await;
            let _ = running.as_mut().await;
            reason
        }
    };
    // Close the server leg too, whoever ended the session.
    if let Some(server) = server.get() {
        let _ = server
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    finish(&info, &reason);
}

/// Judges a relayed session again whenever the device table or policies change. Returns
/// the message to end it with once they no longer allow it (its device is gone, or the
/// decision became a block); until then, keeps the session's permissions current, so each
/// new channel follows the policy in force.
async fn revocation(ctx: Arc<RelayContext>, info: Arc<ConnectionInfo>) -> String {
    let (Some(identity), Some(_)) = (info.identity.clone(), info.permissions.get()) else {
        // Refused connections end on their own.
        return std::future::pending().await;
    };
    let mut changes = ctx.snapshots.clone();
    loop {
        let snapshot = changes.borrow_and_update().clone();
        let verdict = crate::intercept::admission::readmit(
            &snapshot,
            &identity,
            info.peer,
            info.original_dst,
            info.ingress.as_deref(),
        );
        match verdict {
            crate::intercept::admission::Readmission::End(message) => return message,
            crate::intercept::admission::Readmission::Unchanged => {}
            crate::intercept::admission::Readmission::Keep(policy) => {
                let current = info.permissions.get().map(|p| p.policy);
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &policy)) {
                    tracing::info!(session = %info.id, policy = %policy.id, "session now follows the current policy");
                    info.permissions.set(Permissions::new(policy, &ctx.config));
                }
            }
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// A connection over a limit and over the refusal budget: closed at once, with no session
/// record (a flood must not fill the log). Logged at most once a second.
fn dropped_over_limit(session: &str, peer: SocketAddr, limit: &'static str) {
    static LAST_LOG_SECS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = now_micros() / 1_000_000;
    if LAST_LOG_SECS.swap(now, Ordering::AcqRel) != now {
        tracing::warn!(session, %peer, limit, "connection closed: over a [limits] limit (logged at most once a second)");
    }
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
