//! A channel's recording as stored (still encrypted): from this router's recordings
//! directory, else from object storage by the key, version and SHA-256 the log recorded.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
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
    /// Reading it failed (an API 502).
    Failed(anyhow::Error),
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
            && let Some(bytes) = read_local(dir, Path::new(path))
                .await
                .map_err(Missing::Failed)?
        {
            return Ok(bytes);
        }
        match (&channel.recording_object, &self.bucket) {
            (Some(object), Some(bucket)) => bucket
                .get_bytes(object, MAX_BYTES)
                .await
                .map_err(Missing::Failed),
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
async fn read_local(dir: &Path, path: &Path) -> Result<Option<Vec<u8>>> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    let (Ok(full), Ok(dir)) = (
        tokio::fs::canonicalize(&full).await,
        tokio::fs::canonicalize(dir).await,
    ) else {
        return Ok(None);
    };
    if !full.starts_with(&dir) {
        bail!(
            "the session log names {} outside the recordings directory {}",
            full.display(),
            dir.display()
        );
    }
    let size = match tokio::fs::metadata(&full).await {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
    };
    if size > MAX_BYTES as u64 {
        bail!(
            "{} has {} MiB, more than the {} MiB the console hands out: use `sshgw recording \
             export` on it",
            full.display(),
            size >> 20,
            MAX_BYTES >> 20
        );
    }
    match tokio::fs::read(&full).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", full.display())),
    }
}
