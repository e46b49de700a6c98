//! `sshgw run`: wires the datapath, the listeners, admission, the relay and the control
//! socket, and handles signals (SIGTERM/SIGINT: clean stop; SIGHUP: reload the state files).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    admission,
    ca::{Authorities, HostCerts},
    config::Config,
    control,
    datapath::{self, Datapath, FlowIngress},
    listener::{self, Listeners},
    recording::keys::RecordingKey,
    relay::{self, RecordingSettings, RelayContext},
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

pub async fn run(config: Config) -> Result<()> {
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
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::server::serve(control, shared.clone()));
    tasks.spawn(retention_loop(config.clone(), store.clone()));
    tasks.spawn(accept_loop(listeners.v4, admit.clone()));
    if let Some(v6) = listeners.v6 {
        tasks.spawn(accept_loop(v6, admit.clone()));
    }
    tracing::info!(
        interfaces = ?config.datapath.interfaces,
        listeners = ?shared.listeners,
        enrolled = sets.enrolled.len(),
        audited = sets.audited.len(),
        control_socket = %config.control_socket.display(),
        "sshgw ready"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = shared.state.reload().await {
                    tracing::error!(error = %e, "reload failed; keeping the previous state");
                }
            }
        }
    }

    tracing::info!("stopping: removing the datapath");
    tasks.abort_all();
    let datapath = shared
        .datapath
        .lock()
        .expect("datapath lock poisoned")
        .take();
    if let Some(dp) = datapath {
        dp.remove().await?;
    }
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!("stopped; nothing left installed");
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
        let ingress = admit
            .ingress
            .take_flow(conn.peer, conn.original_dst)
            .and_then(datapath::interface_name);
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
        tokio::spawn(relay::serve(
            admit.relay.clone(),
            conn,
            session_id,
            decision,
        ));
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
