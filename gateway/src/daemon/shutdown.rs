//! How the daemon ends: a graceful stop (SIGTERM/SIGINT), or an exit on failure so that
//! the service manager restarts it.

use std::time::Duration;

use anyhow::Result;

use super::{notify, tasks::Tasks};
use crate::{config::OnStop, control};

/// SIGTERM or SIGINT: stops as [`stop`] does, then the control socket goes.
pub async fn stop_cleanly(tasks: Tasks, shared: &control::Context) -> Result<()> {
    notify::notify("STOPPING=1\nSTATUS=draining sessions");
    let Tasks {
        accepting,
        mut service,
        ..
    } = tasks;
    stop(accepting, shared).await?;
    service.abort_all();
    let _ = std::fs::remove_file(&shared.config.control_socket);
    Ok(())
}

/// A task the daemon cannot run without has ended: end the sessions, leave the datapath
/// attached (it fails closed, as after a crash) and exit non-zero, so that the service
/// manager restarts sshgw.
pub async fn fail(mut tasks: Tasks, shared: &control::Context, what: &str) -> Result<()> {
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
