//! `sshgw run`: wires the datapath, the listeners, admission, the relay and the control
//! socket, and handles signals (SIGTERM/SIGINT: clean stop; SIGHUP: reload the state files).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    admission,
    ca::{Authorities, HostCerts},
    config::{Config, OnStop},
    control,
    datapath::{Datapath, FlowIngress},
    listener::{self, Listeners},
    metrics::METRICS,
    notify,
    recording::keys::RecordingKey,
    relay::{self, Ciphers, RecordingSettings, RelayContext},
    sessions::{live::LiveSessions, retention, store::SessionStore},
    state::{self, LiveState},
    status::{self, Report},
    upstream_keys::UpstreamKeys,
};

/// State shared by the accept loops and the control API.
pub struct Shared {
    pub config: Config,
    pub state: Arc<LiveState>,
    pub store: SessionStore,
    pub live: Arc<LiveSessions>,
    pub relay: Arc<RelayContext>,
    datapath: Arc<std::sync::Mutex<Option<Datapath>>>,
    listeners: Vec<SocketAddr>,
}

impl Shared {
    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        let counters = self
            .datapath
            .lock()
            .expect("datapath lock poisoned")
            .as_ref()
            .and_then(|dp| dp.counters().ok());
        crate::metrics::render(&self.live, counters.as_ref())
    }

    pub fn status(&self) -> Result<Report> {
        let guard = self.datapath.lock().expect("datapath lock poisoned");
        let dp = guard.as_ref().context("the datapath is shutting down")?;
        Ok(Report {
            daemon: "running".into(),
            pin_dir: self.config.datapath.pin_dir.clone(),
            pinned: true,
            interfaces: dp.interfaces().into_iter().map(Into::into).collect(),
            listeners: self.listeners.clone(),
            counters: status::counters_owned(dp.counters()?),
        })
    }
}

/// What each accepted connection needs.
struct Admit {
    state: Arc<LiveState>,
    relay: Arc<RelayContext>,
    ingress: FlowIngress,
}

pub async fn run(config: Config, config_path: &Path) -> Result<()> {
    // Everything the daemon writes (keys, state, session log, recordings) is private; the
    // control socket's 0660 is set explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
    let (devices, policies) = state::load(&config)?;
    let sets = state::match_sets(&config, &devices, &policies);
    let authorities = Arc::new(Authorities::load_or_create(&config.state_dir)?);
    let store = SessionStore::open(&config.session_log_path())?;
    let live = Arc::new(LiveSessions::default());
    let recordings = config.recordings_dir();
    std::fs::create_dir_all(&recordings)
        .with_context(|| format!("cannot create recording dir {}", recordings.display()))?;
    let recording_key = load_recording_key(&config)?;
    let relay = Arc::new(RelayContext {
        recording: RecordingSettings {
            dir: recordings,
            key: std::sync::RwLock::new(recording_key),
            on_failure: config.recording.on_recording_failure,
        },
        store: store.clone(),
        live: live.clone(),
        config: config.ssh.clone(),
        ciphers: Ciphers::new(&config.ssh)?,
        host_certs: HostCerts::new(authorities.clone(), config.ssh.host_names.clone()),
        upstream_keys: UpstreamKeys::new(config.known_hosts_path(), config.ssh.upstream_host_keys),
        authorities,
    });
    let control = control::server::bind(&config).await?;
    let listeners = Listeners::bind(config.datapath.listen_port)?;
    let mut dp = Datapath::start(
        &config.datapath,
        &sets,
        Some(&listeners.v4),
        listeners.v6.as_ref(),
    )
    .await?;
    let ingress = dp.flow_ingress()?;
    let datapath = Arc::new(std::sync::Mutex::new(Some(dp)));
    let live_state = Arc::new(LiveState::new(
        config.clone(),
        devices,
        policies,
        datapath.clone(),
    ));

    let shared = Arc::new(Shared {
        listeners: listeners.addresses(),
        config: config.clone(),
        state: live_state.clone(),
        store: store.clone(),
        live: live.clone(),
        relay: relay.clone(),
        datapath,
    });
    let admit = Arc::new(Admit {
        state: live_state,
        relay,
        ingress,
    });
    // Control and housekeeping run until the very end; the accept loops stop first.
    let mut service = tokio::task::JoinSet::new();
    service.spawn(control::server::serve(control, shared.clone()));
    service.spawn(retention_loop(config.clone(), store.clone()));
    service.spawn(interface_watch(shared.clone()));
    if let Some(addr) = config.metrics.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        service.spawn(control::server::serve_metrics(listener, shared.clone()));
    }
    let mut accepting = tokio::task::JoinSet::new();
    accepting.spawn(accept_loop(listeners.v4, admit.clone()));
    if let Some(v6) = listeners.v6 {
        accepting.spawn(accept_loop(v6, admit.clone()));
    }
    tracing::info!(
        interfaces = ?config.datapath.interfaces,
        listeners = ?shared.listeners,
        enrolled = sets.enrolled.len(),
        audited = sets.audited.len(),
        control_socket = %config.control_socket.display(),
        "sshgw ready"
    );
    notify::notify("READY=1\nSTATUS=intercepting");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(config_path, &shared).await,
        }
    }
    notify::notify("STOPPING=1\nSTATUS=draining sessions");
    stop(accepting, &shared).await?;
    service.abort_all();
    let _ = std::fs::remove_file(&config.control_socket);
    Ok(())
}

/// SIGHUP: re-reads the config file and the state files. Devices, policies, the
/// datapath's ports and switches (`DatapathConfig::take_live`) and the recording key file
/// apply at once; other changed settings are reported as needing a restart. Sessions are
/// not touched.
async fn reload(config_path: &Path, shared: &Shared) {
    notify::notify("RELOADING=1");
    let result = async {
        let next = Config::load(config_path)?;
        for setting in restart_only_changes(&shared.config, &next) {
            tracing::warn!(setting, "changed setting takes effect only after a restart");
        }
        // Take over only what a running daemon can change; the rest stays as started.
        let old = shared.state.config();
        let mut effective = old.clone();
        effective.datapath.take_live(&next.datapath);
        effective.drain_timeout_secs = next.drain_timeout_secs;
        effective.recording.public_key_file = next.recording.public_key_file.clone();
        let key = match (
            &effective.recording.public_key_file,
            effective.recording_key_path().exists(),
        ) {
            (Some(file), false) => Some(
                RecordingKey::from_file(file)
                    .with_context(|| format!("cannot load the recording key {}", file.display()))?,
            ),
            _ => None,
        };
        shared.state.set_config(effective);
        if let Err(e) = shared.state.reload().await {
            shared.state.set_config(old);
            anyhow::bail!("{e}");
        }
        if let Some(key) = key {
            *shared
                .relay
                .recording
                .key
                .write()
                .expect("recording key lock poisoned") = Some(Arc::new(key));
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(config = %config_path.display(), "reloaded"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the previous state")
        }
    }
    notify::notify("READY=1");
}

/// Settings a running daemon cannot change.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let (o, n) = (&old.datapath, &new.datapath);
    [
        ("state_dir", differs(&old.state_dir, &new.state_dir)),
        (
            "control_socket",
            differs(&old.control_socket, &new.control_socket),
        ),
        (
            "control_group",
            differs(&old.control_group, &new.control_group),
        ),
        ("datapath.interfaces", differs(&o.interfaces, &n.interfaces)),
        ("datapath.pin_dir", differs(&o.pin_dir, &n.pin_dir)),
        (
            "datapath.intercept_mark",
            o.intercept_mark != n.intercept_mark,
        ),
        ("datapath.route_table", o.route_table != n.route_table),
        ("datapath.rule_priority", o.rule_priority != n.rule_priority),
        ("datapath.listen_port", o.listen_port != n.listen_port),
        ("ssh", differs(&old.ssh, &new.ssh)),
        (
            "recording.dir",
            differs(&old.recording.dir, &new.recording.dir),
        ),
        (
            "recording.on_recording_failure",
            differs(
                &old.recording.on_recording_failure,
                &new.recording.on_recording_failure,
            ),
        ),
        ("retention", differs(&old.retention, &new.retention)),
        ("metrics", differs(&old.metrics, &new.metrics)),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Graceful stop: accept nothing new (closing the listeners empties the SOCKMAP, so new
/// audited SYNs are dropped), let sessions drain for `drain_timeout_secs`, end the rest,
/// then keep the datapath pinned and failing closed (`on_stop = "keep"`) or remove it.
async fn stop(mut accepting: tokio::task::JoinSet<()>, shared: &Shared) -> Result<()> {
    accepting.abort_all();
    while accepting.join_next().await.is_some() {}
    let config = shared.state.config();
    let live = shared.live.count();
    let drain = Duration::from_secs(config.drain_timeout_secs);
    tracing::info!(
        sessions = live,
        timeout_secs = drain.as_secs(),
        "stopping: no new sessions; draining"
    );
    if tokio::time::timeout(drain, shared.live.drained())
        .await
        .is_err()
    {
        let ended = shared.live.kill_all("sshgw: the gateway is shutting down");
        tracing::warn!(
            sessions = ended,
            "drain timeout: ending the remaining sessions"
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.live.drained()).await;
    }
    shared.store.sync();
    let datapath = shared
        .datapath
        .lock()
        .expect("datapath lock poisoned")
        .take();
    match (datapath, config.datapath.on_stop) {
        (Some(dp), OnStop::Remove) => {
            dp.remove().await?;
            tracing::info!("stopped; datapath removed, nothing left installed");
        }
        (Some(dp), OnStop::Keep) => {
            drop(dp);
            tracing::info!(
                "stopped; the datapath stays attached and drops audited SSH until sshgw runs again"
            );
        }
        (None, _) => {}
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, admit: Arc<Admit>) {
    loop {
        let conn = match listener::accept(&listener).await {
            Ok(Some(conn)) => conn,
            Ok(None) => continue,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let session_id = admission::new_session_id();
        let ingress = admit.ingress.take_interface(conn.peer, conn.original_dst);
        tracing::info!(
            session = %session_id,
            peer = %conn.peer,
            orig_dst = %conn.original_dst,
            ingress = ingress.as_deref().unwrap_or("-"),
            "intercepted connection"
        );
        let decision = admission::admit(
            &admit.state.snapshot(),
            &session_id,
            conn.peer,
            conn.original_dst,
            ingress.as_deref(),
        );
        match &decision.outcome {
            admission::Outcome::Relay { policy } => METRICS.decision(Some(&policy.id), true),
            admission::Outcome::Refuse { policy_id, .. } => {
                METRICS.decision(policy_id.as_deref(), false)
            }
        }
        tokio::spawn(relay::serve(
            admit.relay.clone(),
            conn,
            session_id,
            decision,
        ));
    }
}

/// Re-attaches the datapath to interfaces that were re-created or appeared late. Until
/// then (at most a second) their traffic is forwarded unaudited; docs/deployment.md
/// shows a firewall rule that closes that window.
async fn interface_watch(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut guard = shared.datapath.lock().expect("datapath lock poisoned");
        if let Some(dp) = guard.as_mut()
            && let Err(e) = dp.reconcile(&shared.config.datapath.interfaces)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot re-attach the datapath");
        }
    }
}

/// Applies retention at start and then hourly, off the async threads.
async fn retention_loop(config: Config, store: SessionStore) {
    let limits = retention::Limits {
        max_age_days: config.retention.max_age_days,
        max_total_mb: config.retention.max_total_mb,
    };
    let recordings = config.recordings_dir();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let (store, recordings) = (store.clone(), recordings.clone());
        match tokio::task::spawn_blocking(move || retention::enforce(&store, &recordings, limits))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
    }
}

/// The recording key: the one last set through the API (kept in the state dir), else the
/// configured file, else none (sessions whose policy needs a recording are then refused
/// or go unrecorded, per `on_recording_failure`).
fn load_recording_key(config: &Config) -> Result<Option<Arc<RecordingKey>>> {
    let pushed = config.recording_key_path();
    let path = if pushed.exists() {
        pushed
    } else if let Some(file) = &config.recording.public_key_file {
        file.clone()
    } else {
        tracing::warn!("no recording key configured: policies with command_logging cannot record");
        return Ok(None);
    };
    let key = RecordingKey::from_file(&path)
        .with_context(|| format!("cannot load the recording key {}", path.display()))?;
    tracing::info!(path = %path.display(), "recording key loaded");
    Ok(Some(Arc::new(key)))
}
