//! The control API's view of the running daemon: exactly what its handlers touch.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};

use super::api::{self, Report};
use crate::{
    config::Config,
    datapath::Datapath,
    relay::RelayContext,
    sessions::{
        live::LiveSessions,
        outbox::{ConsumerReport, Consumers},
        store::SessionStore,
    },
    state::LiveState,
};

/// What the control API works on. The daemon builds it and shares it with its own
/// housekeeping (interface watch, reload, stop).
pub struct Context {
    pub config: Config,
    pub state: Arc<LiveState>,
    pub store: SessionStore,
    pub live: Arc<LiveSessions>,
    pub relay: Arc<RelayContext>,
    pub datapath: Arc<std::sync::Mutex<Option<Datapath>>>,
    pub listeners: Vec<SocketAddr>,
    /// The outbox's consumers (`[central]`, `[export.*]`).
    pub outbox: Consumers,
}

impl Context {
    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        let counters = self
            .datapath
            .lock()
            .expect("datapath lock poisoned")
            .as_ref()
            .and_then(|dp| dp.counters().ok());
        crate::metrics::render(
            &self.live,
            counters.as_ref(),
            &self.store.health(),
            self.storage().as_ref(),
            &self.outbox_reports(),
        )
    }

    /// Each configured outbox consumer's backlog and last error, by cursor name.
    pub fn outbox_reports(&self) -> Vec<(&'static str, ConsumerReport)> {
        self.outbox
            .configured()
            .into_iter()
            .map(|(name, delivery)| {
                let report = match self.store.outbox_backlog(name) {
                    Ok(backlog) => ConsumerReport {
                        outbox_rows: backlog.outbox_rows,
                        lag_secs: backlog.lag_secs,
                        last_error: delivery.last_error(),
                    },
                    // Never "caught up" when it cannot be known.
                    Err(e) => ConsumerReport {
                        outbox_rows: u64::MAX,
                        lag_secs: u64::MAX,
                        last_error: Some(format!("cannot read the outbox: {e:#}")),
                    },
                };
                (name, report)
            })
            .collect()
    }

    /// The upload backlog, with `[storage]`.
    pub fn storage(&self) -> Option<api::StorageReport> {
        let config = self.config.storage.as_ref()?;
        let spool = &self.relay.recording.spool;
        let backlog = spool.report();
        Some(api::StorageReport {
            backlog_files: backlog.backlog_files,
            backlog_bytes: backlog.backlog_bytes,
            oldest_pending_secs: backlog.oldest_pending_secs,
            max_spool_mb: config.max_spool_mb,
            spool_full: spool.refusal().is_some(),
            last_error: self.store.upload_error().ok().flatten(),
        })
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
            counters: api::counters_owned(dp.counters()?),
            session_log: Some(self.store.health()),
            storage: self.storage(),
            central: None,
            export: Default::default(),
        }
        .with_outbox(self.outbox_reports()))
    }
}

#[cfg(test)]
impl Context {
    /// The daemon's shared state with no datapath and no listeners, for in-process tests
    /// of the control API.
    pub fn without_datapath(
        config: Config,
        state: Arc<LiveState>,
        store: SessionStore,
        live: Arc<LiveSessions>,
        relay: Arc<RelayContext>,
    ) -> Self {
        Context {
            config,
            state,
            store,
            live,
            relay,
            datapath: Arc::new(std::sync::Mutex::new(None)),
            listeners: Vec::new(),
            outbox: Consumers::default(),
        }
    }
}
