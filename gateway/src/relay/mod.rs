//! The SSH relay: terminates the device's SSH connection and logs in to the real server
//! with a short-lived certificate, relaying every channel.

mod channel;
mod configs;
mod credit;
mod device_side;
mod end;
#[cfg(test)]
mod end_reason_tests;
mod flow;
pub mod limits;
mod program;
mod server_side;
mod session;
pub mod stall;
mod tap;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, Result};
use russh::{SshId, server};

use crate::{
    config::{RecordingFailure, SshConfig},
    identity::Identity,
    policy::eval::PolicyEngine,
    policy::model::Policy,
    recording::writer::{ChannelMeta, Recorder},
    sessions::{
        live::{LiveSessions, Tracker},
        store::SessionStore,
    },
    trust::ca::{Authorities, HostCerts},
    trust::upstream_keys::UpstreamKeys,
};
pub use end::EndReason;
pub use session::serve;

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
    /// The russh configurations, shared by the sessions.
    pub configs: configs::ConfigCache,
}

#[cfg(test)]
impl RelayContext {
    /// A relay context as the daemon builds it from `config`, for tests: on the config's
    /// state dir, with the recording key found there (if any).
    pub(crate) fn for_tests(
        config: &crate::config::Config,
        state: &crate::state::LiveState,
        store: &SessionStore,
        live: &Arc<LiveSessions>,
    ) -> Arc<Self> {
        let authorities = Arc::new(Authorities::load_or_create(&config.state_dir).unwrap());
        Arc::new(RelayContext {
            recording: RecordingSettings {
                dir: config.recordings_dir(),
                key: crate::recording::key_store::KeyStore::load(config.recording_key_path(), None)
                    .unwrap(),
                on_failure: config.recording.on_recording_failure,
                spool: Arc::new(crate::recording::spool::Backlog::new(0)),
            },
            store: store.clone(),
            live: live.clone(),
            config: config.ssh.clone(),
            ciphers: Ciphers::new(&config.ssh).unwrap(),
            host_certs: HostCerts::new(authorities.clone(), config.ssh.host_names.clone()),
            upstream_keys: UpstreamKeys::new(
                config.known_hosts_path(),
                config.ssh.upstream_host_keys,
            ),
            authorities,
            limits: limits::Limits::new(config.limits.clone()),
            snapshots: state.subscribe(),
            configs: Default::default(),
        })
    }
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
    pub key: crate::recording::key_store::KeyStore,
    pub on_failure: RecordingFailure,
    /// What waits for upload to object storage; past its limit, new recordings fail.
    pub spool: Arc<crate::recording::spool::Backlog>,
}

impl RecordingSettings {
    /// Opens the recording of channel `channel` of session `session`; `first` (the
    /// session's first recording) is refused while the spool is over its limit.
    async fn open(
        &self,
        session: &str,
        channel: u32,
        meta: ChannelMeta,
        first: bool,
    ) -> anyhow::Result<(Recorder, std::path::PathBuf)> {
        let key = self
            .key
            .current()
            .context("no recording key is configured ([recording] public_key_file or `sshgw recording set-key`)")?;
        if first && let Some(refusal) = self.spool.refusal() {
            anyhow::bail!(refusal);
        }
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
    /// Notified once `authenticated` is set.
    pub logged_in: tokio::sync::Notify,
    /// What the policy in force allows; `None` when the connection is refused.
    pub permissions: SharedPermissions,
    pub tracker: Arc<Tracker>,
    /// Why the relay refused or ended the session itself, once it did (its message is
    /// the session log's close reason).
    pub failure: std::sync::Mutex<Option<EndReason>>,
    /// What the gateway told the user when it ended the session (kill, max duration,
    /// shutdown): recordings note it as the programs' end.
    pub ended_by_gateway: std::sync::Mutex<Option<String>>,
    /// Ends the session with `failure` (set by [`ConnectionInfo::abort`]).
    aborted: tokio::sync::Notify,
}

impl ConnectionInfo {
    /// Ends the session from inside the relay for `reason`.
    pub fn abort(&self, reason: EndReason) {
        self.fail(reason);
        self.aborted.notify_one();
    }

    /// Notes why the relay refuses or ends the session: what the session log will say.
    pub fn fail(&self, reason: EndReason) {
        *self.failure.lock().expect("failure lock poisoned") = Some(reason);
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
        Ok(self
            .configs
            .device(dst, identity, |identity| self.device_config(identity)))
    }

    fn device_config(&self, identity: crate::trust::ca::HostIdentity) -> server::Config {
        server::Config {
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
        }
    }
}
