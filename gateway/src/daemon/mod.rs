//! `sshgw run`: wires the datapath, the listeners, admission, the relay and the control
//! socket, and handles signals (SIGTERM/SIGINT: clean stop; SIGHUP: reload the state files).

pub mod logging;
mod notify;
mod rlimit;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::{Config, OnStop},
    control,
    datapath::{Datapath, FlowIngress},
    intercept::admission,
    intercept::listener::{self, Listeners},
    metrics::METRICS,
    recording::keys::RecordingKey,
    relay::{self, Ciphers, RecordingSettings, RelayContext},
    sessions::{live::LiveSessions, retention, store::SessionStore},
    state::{self, LiveState},
    trust::ca::{Authorities, HostCerts},
    trust::upstream_keys::UpstreamKeys,
};

/// What each accepted connection needs.
struct Admit {
    state: Arc<LiveState>,
    relay: Arc<RelayContext>,
    ingress: FlowIngress,
}

pub async fn run(config: Config, config_path: &Path) -> Result<()> {
    rlimit::raise_nofile_logged();
    // Everything the daemon writes (keys, state, session log, recordings) is private; the
    // control socket's 0660 is set explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
    let (devices, policies) = state::load(&config)?;
    let sets = state::match_sets(&config, &devices, &policies);
    let authorities = Arc::new(Authorities::load_or_create(&config.state_dir)?);
    let live = Arc::new(LiveSessions::default());
    let store = SessionStore::open_with(
        &config.session_log_path(),
        config.sessions.on_log_failure,
        live.unwritable_hook(),
    )?;
    let started = std::time::SystemTime::now();
    let recordings = config.recordings_dir();
    std::fs::create_dir_all(&recordings)
        .with_context(|| format!("cannot create recording dir {}", recordings.display()))?;
    let recording_key = load_recording_key(&config)?;
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
        limits: relay::limits::Limits::new(config.limits.clone()),
        snapshots: live_state.subscribe(),
    });

    let shared = Arc::new(control::Context {
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
    // Control and housekeeping run until the very end; the accept loops stop first. None
    // of these tasks ever ends by itself: if one does, the daemon exits (see `supervise`).
    let mut tasks = Tasks::default();
    tasks.service(
        "control socket",
        control::server::serve(control, shared.clone()),
    );
    tasks.service(
        "retention",
        retention_loop(config.clone(), store.clone(), live.clone(), started),
    );
    tasks.service("interface watch", interface_watch(shared.clone()));
    tasks.service(
        "stall watchdog",
        relay::stall::watch(Duration::from_secs(config.ssh.stall_warning_secs)),
    );
    if let Some(addr) = config.metrics.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tasks.service(
            "metrics listener",
            control::server::serve_metrics(listener, shared.clone()),
        );
    }
    tasks.accept("IPv4 accept loop", accept_loop(listeners.v4, admit.clone()));
    if let Some(v6) = listeners.v6 {
        tasks.accept("IPv6 accept loop", accept_loop(v6, admit.clone()));
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
    let failure = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = hup.recv() => reload(config_path, &shared).await,
            what = tasks.supervise() => break Some(what),
            () = store.writer_stopped() => break Some("the session log writer stopped".to_string()),
        }
    };
    if let Some(what) = failure {
        return fail(tasks, &shared, &what).await;
    }
    notify::notify("STOPPING=1\nSTATUS=draining sessions");
    stop(tasks.accepting, &shared).await?;
    tasks.service.abort_all();
    let _ = std::fs::remove_file(&config.control_socket);
    Ok(())
}

/// The daemon's long-running tasks, by name.
#[derive(Default)]
struct Tasks {
    accepting: tokio::task::JoinSet<()>,
    service: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn accept(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.accepting.spawn(task).id();
        self.names.insert(id, name);
    }

    fn service(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.service.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Resolves when any task ends (none should): what ended and how.
    async fn supervise(&mut self) -> String {
        let ended = tokio::select! {
            Some(ended) = self.accepting.join_next_with_id() => ended,
            Some(ended) = self.service.join_next_with_id() => ended,
            else => return std::future::pending().await,
        };
        let name = |id| self.names.get(&id).copied().unwrap_or("unnamed");
        match ended {
            Ok((id, ())) => format!("the {} task ended", name(id)),
            Err(e) if e.is_panic() => format!("the {} task panicked", name(e.id())),
            Err(e) => format!("the {} task was cancelled", name(e.id())),
        }
    }
}

/// A task the daemon cannot run without has ended: end the sessions, leave the datapath
/// attached (it fails closed, as after a crash) and exit non-zero, so that the service
/// manager restarts sshgw.
async fn fail(mut tasks: Tasks, shared: &control::Context, what: &str) -> Result<()> {
    tracing::error!(
        reason = what,
        "sshgw cannot go on; exiting so that it is restarted"
    );
    notify::notify(&format!("STOPPING=1\nSTATUS=failed: {what}"));
    tasks.accepting.abort_all();
    let ended = shared
        .live
        .kill_all(crate::sessions::live::KillReason::Restart);
    if ended > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.live.drained()).await;
    }
    if !shared.store.sync() {
        tracing::error!("session log: records still waiting could not be written");
    }
    tasks.service.abort_all();
    drop(
        shared
            .datapath
            .lock()
            .expect("datapath lock poisoned")
            .take(),
    );
    let _ = std::fs::remove_file(&shared.config.control_socket);
    anyhow::bail!("{what}")
}

/// SIGHUP: re-reads the config file and the state files. Devices, policies, the
/// datapath's ports and switches (`DatapathConfig::take_live`) and the recording key file
/// apply at once; other changed settings are reported as needing a restart. Sessions are
/// not touched.
async fn reload(config_path: &Path, shared: &control::Context) {
    notify::notify("RELOADING=1");
    let result = async {
        let next = Config::load(config_path)?;
        for setting in restart_only_changes(&shared.config, &next) {
            tracing::warn!(setting, "changed setting takes effect only after a restart");
        }
        // Take over only what a running daemon can change; the rest stays as started.
        let mut effective = shared.state.config();
        effective.datapath.take_live(&next.datapath);
        effective.drain_timeout_secs = next.drain_timeout_secs;
        effective.sessions = next.sessions.clone();
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
        let pushed_key = effective.recording_key_path();
        let on_log_failure = effective.sessions.on_log_failure;
        // The new settings take effect with the state files, under the writer lock.
        if let Err(e) = shared.state.reload(effective).await {
            anyhow::bail!("{e}");
        }
        shared.store.set_on_failure(on_log_failure);
        if let Some(key) = key {
            // Under the writer lock, as `set-key` is: a key set meanwhile is never undone.
            shared
                .state
                .with_writer_lock(|| {
                    if !pushed_key.exists() {
                        *shared
                            .relay
                            .recording
                            .key
                            .write()
                            .expect("recording key lock poisoned") = Some(Arc::new(key));
                    }
                })
                .await;
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
        ("limits", differs(&old.limits, &new.limits)),
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
async fn stop(mut accepting: tokio::task::JoinSet<()>, shared: &control::Context) -> Result<()> {
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
        let ended = shared
            .live
            .kill_all(crate::sessions::live::KillReason::Shutdown);
        tracing::warn!(
            sessions = ended,
            "drain timeout: ending the remaining sessions"
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.live.drained()).await;
    }
    if !shared.store.sync() {
        tracing::error!(
            queued = shared.store.health().queued,
            "session log: records still waiting could not be written before the stop"
        );
    }
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
        let mut decision = admission::admit(
            &admit.state.snapshot(),
            &session_id,
            conn.peer,
            conn.original_dst,
            ingress.as_deref(),
        );
        refuse_if_unlogged(&mut decision, &admit.relay.store, &session_id);
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
            ingress,
        ));
    }
}

/// Under `[sessions] on_log_failure = "refuse"`, a connection is refused while the session
/// log cannot be written: it would leave no record.
fn refuse_if_unlogged(decision: &mut admission::Admission, store: &SessionStore, session: &str) {
    let Some(message) = store.refusal() else {
        return;
    };
    let policy_id = match &decision.outcome {
        admission::Outcome::Relay { policy } => Some(policy.id.clone()),
        admission::Outcome::Refuse { policy_id, .. } => policy_id.clone(),
    };
    tracing::warn!(session, reason = %message, "connection refused: the session log cannot be written");
    decision.outcome = admission::Outcome::Refuse { message, policy_id };
}

/// Re-attaches the datapath to interfaces that were re-created or appeared late. Until
/// then (at most a second) their traffic is forwarded unaudited; docs/deployment.md
/// shows a firewall rule that closes that window.
async fn interface_watch(shared: Arc<control::Context>) {
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
async fn retention_loop(
    config: Config,
    store: SessionStore,
    live: Arc<LiveSessions>,
    started: std::time::SystemTime,
) {
    let limits = retention::Limits {
        max_age_days: config.retention.max_age_days,
        max_total_mb: config.retention.max_total_mb,
    };
    let recordings = config.recordings_dir();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let (store, recordings, live) = (store.clone(), recordings.clone(), live.clone());
        match tokio::task::spawn_blocking(move || {
            retention::enforce(&store, &recordings, limits, &live, started)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn supervise_names_the_task_that_ended() {
        let mut tasks = Tasks::default();
        tasks.service("control socket", std::future::pending());
        tasks.accept("IPv4 accept loop", async { panic!("poisoned lock") });
        assert_eq!(
            tasks.supervise().await,
            "the IPv4 accept loop task panicked"
        );
        tasks.service("retention", async {});
        assert_eq!(tasks.supervise().await, "the retention task ended");
    }
}
