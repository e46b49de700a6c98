//! `sshgw run`: wires the datapath, the listeners, admission, the relay and the control
//! socket, and handles signals (SIGTERM/SIGINT: clean stop; SIGHUP: reload the state files).

// Accepted connections: logged, admitted, handed to the relay.
mod accept;
// The central shipper and the SIEM exporters the config asks for.
mod feeds;
// Timers: interface re-attachment and retention.
mod housekeeping;
pub mod logging;
mod notify;
// SIGHUP.
mod reload;
mod rlimit;
// Graceful stop, and the exit on failure.
mod shutdown;
// The long-running tasks and their supervision.
mod tasks;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use self::{accept::Admit, tasks::Tasks};
use crate::{
    config::Config,
    control::{self, server::ControlListener},
    datapath::{Datapath, MatchSets},
    identity::devices::DeviceTable,
    intercept::listener::Listeners,
    policy::model::PolicySet,
    recording::key_store::KeyStore,
    relay::{self, Ciphers, RecordingSettings, RelayContext},
    sessions::{live::LiveSessions, store::SessionStore},
    state::{self, LiveState},
    trust::ca::{Authorities, HostCerts},
    trust::upstream_keys::UpstreamKeys,
};

pub async fn run(config: Config, config_path: &Path) -> Result<()> {
    rlimit::raise_nofile_logged();
    // Everything the daemon writes (keys, state, session log, recordings) is private; the
    // control socket's 0660 is set explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Before anything answers: a bad storage key stops the start, never a running daemon.
    let bucket = storage_bucket(&config)?;
    let feeds = feeds::Feeds::from_config(&config)?;
    let stores = Stores::open(&config)?;
    let started = stores.started;
    let wired = Wired::attach(&config, stores, feeds.consumers.clone()).await?;
    let shared = wired.shared.clone();
    let (enrolled, audited) = (wired.sets.enrolled.len(), wired.sets.audited.len());
    let mut tasks = spawn_tasks(&config, wired, started, bucket).await?;
    feeds.spawn(&mut tasks, &shared.store);
    tracing::info!(
        interfaces = ?config.datapath.interfaces,
        listeners = ?shared.listeners,
        enrolled,
        audited,
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
            _ = hup.recv() => reload::reload(config_path, &shared).await,
            what = tasks.supervise() => break Some(what),
            () = shared.store.writer_stopped() => break Some("the session log writer stopped".to_string()),
        }
    };
    match failure {
        Some(what) => shutdown::fail(tasks, &shared, &what).await,
        None => shutdown::stop_cleanly(tasks, &shared).await,
    }
}

/// What the daemon keeps on disk, opened in order: the state dir and files, the CAs, the
/// session log, the recording dir and key.
struct Stores {
    devices: DeviceTable,
    policies: PolicySet,
    sets: MatchSets,
    authorities: Arc<Authorities>,
    live: Arc<LiveSessions>,
    store: SessionStore,
    started: std::time::SystemTime,
    recordings: std::path::PathBuf,
    key: KeyStore,
}

impl Stores {
    fn open(config: &Config) -> Result<Stores> {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
        let (devices, policies) = state::load(config)?;
        let sets = state::match_sets(config, &devices, &policies);
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
        let key = KeyStore::load(
            config.recording_key_path(),
            config.recording.public_key_file.as_deref(),
        )?;
        Ok(Stores {
            devices,
            policies,
            sets,
            authorities,
            live,
            store,
            started,
            recordings,
            key,
        })
    }
}

/// The daemon once its sockets are bound and its datapath is attached.
struct Wired {
    control: ControlListener,
    listeners: Listeners,
    sets: MatchSets,
    shared: Arc<control::Context>,
    admit: Arc<Admit>,
}

impl Wired {
    /// Binds the control socket and the listeners, attaches the datapath, and builds what
    /// the relay, the control API and the accept loops share.
    async fn attach(
        config: &Config,
        stores: Stores,
        outbox: crate::sessions::outbox::Consumers,
    ) -> Result<Wired> {
        let control = control::server::bind(config).await?;
        let listeners = Listeners::bind(config.datapath.listen_port)?;
        let sets = stores.sets;
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
            stores.devices,
            stores.policies,
            datapath.clone(),
        ));
        let relay = relay_context(
            config,
            &live_state,
            stores.recordings,
            stores.key,
            (&stores.store, &stores.live),
            stores.authorities,
        )?;
        let shared = Arc::new(control::Context {
            listeners: listeners.addresses(),
            config: config.clone(),
            state: live_state.clone(),
            store: stores.store,
            live: stores.live,
            relay: relay.clone(),
            datapath,
            outbox,
        });
        let admit = Arc::new(Admit {
            state: live_state,
            relay,
            ingress,
        });
        Ok(Wired {
            control,
            listeners,
            sets,
            shared,
            admit,
        })
    }
}

/// What every relay task shares.
fn relay_context(
    config: &Config,
    live_state: &LiveState,
    recordings: std::path::PathBuf,
    key: KeyStore,
    (store, live): (&SessionStore, &Arc<LiveSessions>),
    authorities: Arc<Authorities>,
) -> Result<Arc<RelayContext>> {
    Ok(Arc::new(RelayContext {
        recording: RecordingSettings {
            dir: recordings,
            key,
            on_failure: config.recording.on_recording_failure,
            spool: Arc::new(crate::recording::spool::Backlog::new(
                config.storage.as_ref().map_or(0, |s| s.max_spool_mb),
            )),
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
        configs: Default::default(),
    }))
}

/// The object store, with `[storage]`. Its credentials are read here, so a missing or
/// unreadable key stops the start with a clear error.
fn storage_bucket(config: &Config) -> Result<Option<crate::storage::bucket::Bucket>> {
    let Some(storage) = &config.storage else {
        return Ok(None);
    };
    let credentials = crate::storage::credentials::load(storage.credentials_file.as_deref())?;
    tracing::info!(endpoint = %storage.endpoint, bucket = %storage.bucket, prefix = %storage.prefix, router_id = ?config.router_id(), access_key_id = %credentials.access_key_id, "storage: uploading recordings and session records");
    Ok(Some(crate::storage::bucket::Bucket::new(
        storage,
        &credentials,
    )?))
}

/// The uploader to `bucket`.
fn uploader(
    config: &Config,
    shared: &control::Context,
    bucket: crate::storage::bucket::Bucket,
) -> Result<crate::storage::uploader::Uploader> {
    let storage = config.storage.as_ref().context("[storage] is not set")?;
    let router_id = config
        .router_id()
        .context("[cluster] router_id is not set")?;
    Ok(crate::storage::uploader::Uploader {
        bucket,
        layout: crate::storage::keys::Layout::new(&storage.prefix, router_id),
        store: shared.store.clone(),
        recordings: config.recordings_dir(),
        delete_local: storage.delete_local_after_upload,
        backlog: shared.relay.recording.spool.clone(),
        missing_since: Default::default(),
    })
}

/// Starts the tasks. Control and housekeeping run until the very end; the accept loops
/// stop first. None of these tasks ever ends by itself: if one does, the daemon exits (see
/// [`Tasks::supervise`]).
async fn spawn_tasks(
    config: &Config,
    wired: Wired,
    started: std::time::SystemTime,
    bucket: Option<crate::storage::bucket::Bucket>,
) -> Result<Tasks> {
    let Wired {
        control,
        listeners,
        shared,
        admit,
        ..
    } = wired;
    if bucket.is_some() {
        // Before retention and the accept loops: what a crash left unnamed is adopted
        // while nothing else touches the recording directory.
        let adopted = crate::storage::orphans::adopt(&shared.store, &config.recordings_dir()).await;
        if adopted > 0 {
            tracing::warn!(
                recordings = adopted,
                "storage: recordings without a channel record were added to the session log for upload"
            );
        }
    }
    let mut tasks = Tasks::default();
    tasks.service(
        "control socket",
        control::server::serve(control, shared.clone()),
    );
    tasks.service(
        "retention",
        housekeeping::retention_loop(
            config.clone(),
            shared.store.clone(),
            shared.live.clone(),
            started,
            shared.outbox.clone(),
        ),
    );
    if let Some(bucket) = bucket {
        tasks.service("storage uploader", uploader(config, &shared, bucket)?.run());
    }
    tasks.service(
        "interface watch",
        housekeeping::interface_watch(shared.clone()),
    );
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
    let accept = accept::accept_loop;
    tasks.accept("IPv4 accept loop", accept(listeners.v4, admit.clone()));
    if let Some(v6) = listeners.v6 {
        tasks.accept("IPv6 accept loop", accept(v6, admit.clone()));
    }
    Ok(tasks)
}
