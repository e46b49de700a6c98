//! A channel's recording as stored (still encrypted): from this router's recordings
//! directory, else from object storage by the key, version and SHA-256 the log recorded.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    config::Config,
    sessions::ChannelRecord,
    storage::{bucket::Bucket, credentials},
};

/// The largest recording handed out: the page's reader decrypts at most this much
/// (`MAX_RECORDING_BYTES` of console-wasm); larger ones are for `sshgw recording fetch`.
pub const MAX_BYTES: usize = 256 << 20;
/// MiB of recordings held in memory at once, from reading them until their answer is sent
/// (or the client is gone); further requests wait.
const BUDGET_MIB: u32 = 512;

pub struct Recordings {
    /// This router's recordings directory (not with `--central`: the paths there are
    /// other routers').
    dir: Option<PathBuf>,
    bucket: Option<Bucket>,
    budget: Arc<Semaphore>,
}

/// Why a recording cannot be handed out.
pub enum Missing {
    /// The channel has none, or it is neither here nor in the store (an API 404).
    NotFound(String),
    /// Larger than [`MAX_BYTES`] (an API 413).
    TooLarge(String),
    /// Reading it failed (an API 502).
    Failed(anyhow::Error),
}

/// What a recording larger than [`MAX_BYTES`] is told.
fn too_large(what: &str, size: Option<u64>) -> Missing {
    let size = size.map_or_else(String::new, |s| format!(" has {} MiB and", s >> 20));
    Missing::TooLarge(format!(
        "{what}{size} is larger than the {} MiB the console hands out: fetch it on a \
         workstation (`sshgw recording fetch`, or copy it from the router) and use `sshgw \
         recording export`",
        MAX_BYTES >> 20
    ))
}

impl Recordings {
    pub fn new(config: &Config, central: bool) -> Result<Recordings> {
        let bucket = match &config.storage {
            Some(storage) => {
                let key = credentials::load(storage.credentials_file.as_deref())
                    .context("[storage]: the console reads recordings from the store")?;
                Some(Bucket::new(storage, &key)?)
            }
            None => None,
        };
        let dir = (!central).then(|| config.recordings_dir());
        Ok(Recordings {
            dir,
            bucket,
            budget: Arc::new(Semaphore::new(BUDGET_MIB as usize)),
        })
    }

    /// The recording's bytes and their share of the memory budget, to hold until sent.
    pub async fn get(
        &self,
        channel: &ChannelRecord,
    ) -> Result<(Vec<u8>, OwnedSemaphorePermit), Missing> {
        if let (Some(dir), Some(path)) = (&self.dir, &channel.recording)
            && let Some(file) = local_file(dir, Path::new(path)).await?
        {
            let held = self.hold(file.1).await;
            let bytes = tokio::fs::read(&file.0)
                .await
                .with_context(|| format!("cannot read {}", file.0.display()))
                .map_err(Missing::Failed)?;
            return Ok((bytes, held));
        }
        match (&channel.recording_object, &self.bucket) {
            (Some(object), Some(bucket)) => {
                // Its size is known only once downloaded: hold the most it may take.
                let held = self.hold(MAX_BYTES as u64).await;
                match bucket.get_bytes(object, MAX_BYTES).await {
                    Ok(Some(bytes)) => Ok((bytes, held)),
                    Ok(None) => Err(too_large(&format!("object {}", object.key), None)),
                    Err(e) => Err(Missing::Failed(e)),
                }
            }
            (Some(object), None) => Err(Missing::NotFound(format!(
                "channel {}: the recording is in object storage ({}), and this config has no \
                 [storage] to fetch it",
                channel.channel, object.key
            ))),
            (None, _) if channel.recording.is_none() => Err(Missing::NotFound(format!(
                "channel {} has no recording",
                channel.channel
            ))),
            (None, _) => Err(Missing::NotFound(format!(
                "channel {}: the recording is not on this machine and not uploaded (yet)",
                channel.channel
            ))),
        }
    }

    /// Waits for `bytes` (at least 1 MiB) of the budget.
    async fn hold(&self, bytes: u64) -> OwnedSemaphorePermit {
        let mib = bytes.div_ceil(1 << 20).clamp(1, u64::from(BUDGET_MIB)) as u32;
        self.budget
            .clone()
            .acquire_many_owned(mib)
            .await
            .expect("the budget is never closed")
    }
}

/// The file at `path` and its size, if it exists and lies inside `dir` (a path the log
/// names is never followed out of the recordings directory).
async fn local_file(dir: &Path, path: &Path) -> Result<Option<(PathBuf, u64)>, Missing> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    let (Some(full), Some(dir)) = (canonical(&full).await?, canonical(dir).await?) else {
        return Ok(None);
    };
    if !full.starts_with(&dir) {
        return Err(Missing::Failed(anyhow::anyhow!(
            "the session log names {} outside the recordings directory {}",
            full.display(),
            dir.display()
        )));
    }
    let size = tokio::fs::metadata(&full)
        .await
        .with_context(|| format!("cannot read {}", full.display()))
        .map_err(Missing::Failed)?
        .len();
    if size > MAX_BYTES as u64 {
        return Err(too_large(&full.display().to_string(), Some(size)));
    }
    Ok(Some((full, size)))
}

/// The canonical path, `None` if it does not exist; other errors (permissions) are errors.
async fn canonical(path: &Path) -> Result<Option<PathBuf>, Missing> {
    match tokio::fs::canonicalize(path).await {
        Ok(path) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Missing::Failed(
            anyhow::Error::new(e).context(format!("cannot reach {}", path.display())),
        )),
    }
}
