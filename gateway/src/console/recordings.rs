//! A channel's recording as stored (still encrypted): from this router's recordings
//! directory, else from object storage by the key, version and SHA-256 the log recorded.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::sync::Semaphore;

use crate::{
    config::Config,
    sessions::ChannelRecord,
    storage::{bucket::Bucket, credentials},
};

/// The largest recording handed out: the page's reader decrypts at most this much
/// (`MAX_RECORDING_BYTES` of console-wasm); larger ones are for `sshgw recording fetch`.
pub const MAX_BYTES: usize = 256 << 20;
/// Recordings read into memory at once (each up to [`MAX_BYTES`]).
const AT_ONCE: usize = 2;

pub struct Recordings {
    /// This router's recordings directory (not with `--central`: the paths there are
    /// other routers').
    dir: Option<PathBuf>,
    bucket: Option<Bucket>,
    reading: Semaphore,
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
            reading: Semaphore::new(AT_ONCE),
        })
    }

    pub async fn get(&self, channel: &ChannelRecord) -> Result<Vec<u8>, Missing> {
        let _turn = self.reading.acquire().await.expect("never closed");
        if let (Some(dir), Some(path)) = (&self.dir, &channel.recording)
            && let Some(bytes) = read_local(dir, Path::new(path)).await?
        {
            return Ok(bytes);
        }
        match (&channel.recording_object, &self.bucket) {
            (Some(object), Some(bucket)) => match bucket.get_bytes(object, MAX_BYTES).await {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(too_large(&format!("object {}", object.key), None)),
                Err(e) => Err(Missing::Failed(e)),
            },
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
}

/// The file at `path` if it exists and lies inside `dir` (a path the log names is never
/// followed out of the recordings directory).
async fn read_local(dir: &Path, path: &Path) -> Result<Option<Vec<u8>>, Missing> {
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
    tokio::fs::read(&full)
        .await
        .map(Some)
        .with_context(|| format!("cannot read {}", full.display()))
        .map_err(Missing::Failed)
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
