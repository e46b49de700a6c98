//! SIGHUP: the config file and the state files read again, applied where a running
//! daemon can apply them.

use std::path::Path;

use super::notify;
use crate::{config::Config, control};

/// SIGHUP: re-reads the config file and the state files. Devices, policies, the settings
/// [`Config::reload_from`] takes over and the recording key file apply at once; other
/// changed settings are reported as needing a restart. Sessions are not touched.
pub async fn reload(config_path: &Path, shared: &control::Context) {
    notify::notify("RELOADING=1");
    let result = async {
        let next = Config::load(config_path)?;
        // Take over only what a running daemon can change; the rest stays as started.
        let mut effective = shared.state.config();
        for setting in effective.reload_from(&next) {
            tracing::warn!(setting, "changed setting takes effect only after a restart");
        }
        let keys = &shared.relay.recording.key;
        let key = keys.read_configured(effective.recording.public_key_file.as_deref())?;
        let on_log_failure = effective.sessions.on_log_failure;
        // The new settings take effect with the state files, under the writer lock.
        if let Err(e) = shared.state.reload(effective).await {
            anyhow::bail!("{e}");
        }
        shared.store.set_on_failure(on_log_failure);
        if let Some(key) = key {
            // Under the writer lock, as `set-key` is: a key set meanwhile is never undone.
            shared.state.with_writer_lock(|| keys.reload(key)).await;
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
