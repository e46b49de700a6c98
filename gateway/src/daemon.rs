//! `sshgw run`: wires the datapath, the listeners, the relay and the control socket,
//! and handles signals (SIGTERM/SIGINT: clean stop; SIGHUP: reload the state files).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};

use crate::{
    ca::{Authorities, HostCerts},
    config::Config,
    control,
    datapath::{Datapath, MatchSets},
    devices::DeviceTable,
    identity::IdentityIndex,
    listener::{self, Listeners},
    policies::PolicySet,
    relay::{self, RelayContext},
    status::{self, Report},
    upstream_keys::UpstreamKeys,
};

/// State shared by the accept loops and the control API.
pub struct Shared {
    config: Config,
    datapath: std::sync::Mutex<Option<Datapath>>,
    listeners: Vec<SocketAddr>,
    relay: Arc<RelayContext>,
    reload: Mutex<()>,
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

    /// Re-reads devices.json and policies.json and updates the match sets.
    async fn reload(&self) -> Result<()> {
        let _serial = self.reload.lock().await;
        let (devices, policies) = load_state(&self.config)?;
        let sets = match_sets(&self.config, &devices, &policies);
        {
            let mut guard = self.datapath.lock().expect("datapath lock poisoned");
            if let Some(dp) = guard.as_mut() {
                dp.update(&sets)?;
            }
        }
        self.relay.set_identities(IdentityIndex::new(&devices));
        tracing::info!(
            enrolled = sets.enrolled.len(),
            audited = sets.audited.len(),
            "reloaded device table and policies"
        );
        Ok(())
    }
}

fn load_state(config: &Config) -> Result<(DeviceTable, PolicySet)> {
    Ok((
        DeviceTable::load(&config.devices_path())?,
        PolicySet::load(&config.policies_path())?,
    ))
}

fn match_sets(config: &Config, devices: &DeviceTable, policies: &PolicySet) -> MatchSets {
    MatchSets {
        enrolled: devices.addresses().collect(),
        audited: policies.audited_networks().map(|n| n.0).collect(),
        ports: config.datapath.ports.iter().copied().collect(),
    }
}

pub async fn run(config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
    let (devices, policies) = load_state(&config)?;
    let sets = match_sets(&config, &devices, &policies);
    let authorities = Arc::new(Authorities::load_or_create(&config.state_dir)?);
    let relay = Arc::new(RelayContext {
        config: config.ssh.clone(),
        host_certs: HostCerts::new(authorities.clone(), config.ssh.host_names.clone()),
        upstream_keys: UpstreamKeys::new(config.known_hosts_path(), config.ssh.upstream_host_keys),
        identities: std::sync::RwLock::new(Arc::new(IdentityIndex::new(&devices))),
        authorities,
    });
    let control = control::server::bind(&config.control_socket).await?;
    let listeners = Listeners::bind(config.datapath.listen_port)?;
    let datapath = Datapath::start(
        &config.datapath,
        &sets,
        Some(&listeners.v4),
        listeners.v6.as_ref(),
    )
    .await?;

    let shared = Arc::new(Shared {
        listeners: listeners.addresses(),
        config: config.clone(),
        datapath: std::sync::Mutex::new(Some(datapath)),
        relay: relay.clone(),
        reload: Mutex::new(()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::server::serve(control, shared.clone()));
    tasks.spawn(accept_loop(listeners.v4, relay.clone()));
    if let Some(v6) = listeners.v6 {
        tasks.spawn(accept_loop(v6, relay.clone()));
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
                if let Err(e) = shared.reload().await {
                    tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the previous state");
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

async fn accept_loop(listener: TcpListener, relay: Arc<RelayContext>) {
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
        tracing::info!(
            peer = %conn.peer,
            orig_dst = %conn.original_dst,
            "intercepted connection"
        );
        tokio::spawn(relay::serve(relay.clone(), conn));
    }
}
