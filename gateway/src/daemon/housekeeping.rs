//! What the daemon does on a timer: re-attaching the datapath to re-created interfaces,
//! and retention.

use std::{sync::Arc, time::Duration};

use crate::{
    config::Config,
    control,
    sessions::{
        live::LiveSessions,
        retention,
        store::{SessionStore, Write},
    },
};

/// Re-attaches the datapath to interfaces that were re-created or appeared late. Until
/// then (at most a second) their traffic is forwarded unaudited; docs/deployment.md
/// shows a firewall rule that closes that window.
pub async fn interface_watch(shared: Arc<control::Context>) {
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
pub async fn retention_loop(
    config: Config,
    store: SessionStore,
    live: Arc<LiveSessions>,
    started: std::time::SystemTime,
    outbox: crate::sessions::outbox::Consumers,
) {
    let limits = retention::Limits {
        max_age_days: config.retention.max_age_days,
        max_total_mb: config.retention.max_total_mb,
        keep_unshipped: config.storage.is_some(),
    };
    let recordings = config.recordings_dir();
    let consumers = outbox.names();
    // Every minute the outbox drops what every consumer delivered; every hour, retention.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    for pass in 0u64.. {
        tick.tick().await;
        store.write(Write::PruneOutbox(consumers.clone()));
        if !pass.is_multiple_of(60) {
            continue;
        }
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
