//! `sshgw recording fetch --session ID | --record FILE`: downloads a session's recordings from object
//! storage by the object keys and versions the session log recorded, checks each against the
//! SHA-256 the log holds, and writes them (mode 0600, never over an existing file) for
//! `recording verify|decrypt|export|replay`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Refused, escape::escape};
use crate::{
    sessions::{SessionRecord, uploads::StoredObject},
    storage::{bucket::Bucket, credentials},
    util::fs,
};

/// Where the session's record comes from.
pub enum Source {
    /// The running gateway's session log, by id.
    Session(String),
    /// A file: the bucket's `<session>.json` or `sessions show --json` output.
    Record(PathBuf),
}

pub fn fetch(
    source: &Source,
    output: &Path,
    credentials_file: Option<&Path>,
    target: &super::Target,
) -> Result<()> {
    let config = target.config()?.context(
        "recording fetch needs the gateway's config with its [storage] section (--config FILE)",
    )?;
    let storage = config
        .storage
        .as_ref()
        .context("the config has no [storage] section: recordings are not uploaded anywhere")?;
    let record = match source {
        Source::Session(id) => {
            super::ask(target, |c| async move { c.session(id).await })?.value()?
        }
        Source::Record(file) => read_record(file)?,
    };
    let (objects, waiting) = uploaded(&record)?;
    let key = credentials::load(credentials_file.or(storage.credentials_file.as_deref()))?;
    let bucket = Bucket::new(storage, &key)?;
    let runtime = super::runtime()?;
    for (channel, object) in &objects {
        let path = output.join(file_name(object));
        let size = runtime.block_on(download(&bucket, object, &path))?;
        println!(
            "channel {channel}: {} (version {}, {size} bytes, SHA-256 {}) -> {}",
            escape(&object.key),
            object.version_id.as_deref().unwrap_or("-"),
            object.sha256,
            escape(&path.display().to_string())
        );
    }
    if !waiting.is_empty() {
        bail!(Refused(format!(
            "session {}: the recordings of channel(s) {} are not in the store (not uploaded yet, or gone from the spool before their upload: see `sshgw status`)",
            escape(&record.id),
            waiting.join(", ")
        )));
    }
    Ok(())
}

/// A session record from a file: the bucket's object (`{"router_id", "session"}`) or the
/// record itself.
fn read_record(file: &Path) -> Result<SessionRecord> {
    let text = super::read_input(file)?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Refused(format!("{}: not JSON: {e}", file.display())))?;
    if let Some(session) = value.get_mut("session") {
        value = session.take();
    }
    serde_json::from_value(value)
        .map_err(|e| Refused(format!("{}: not a session record: {e}", file.display())).into())
}

/// The uploaded recordings (channel, object) and the channels whose recordings are not in
/// the store.
type Uploaded = (Vec<(u32, StoredObject)>, Vec<String>);

/// What of the session's recordings is in the store; an error when there is nothing to
/// download.
fn uploaded(record: &SessionRecord) -> Result<Uploaded> {
    let recorded: Vec<_> = record
        .channels
        .iter()
        .filter(|c| c.recording.is_some())
        .collect();
    if recorded.is_empty() {
        bail!(Refused(format!(
            "session {} has no recordings",
            escape(&record.id)
        )));
    }
    let waiting: Vec<String> = recorded
        .iter()
        .filter(|c| c.recording_object.is_none())
        .map(|c| c.channel.to_string())
        .collect();
    let objects: Vec<_> = recorded
        .iter()
        .filter_map(|c| Some((c.channel, c.recording_object.clone()?)))
        .collect();
    if objects.is_empty() {
        bail!(Refused(format!(
            "session {}: none of its recordings is in the store yet (channel(s) {}; see `sshgw status`)",
            escape(&record.id),
            waiting.join(", ")
        )));
    }
    Ok((objects, waiting))
}

/// The object's name without its prefix and date.
fn file_name(object: &StoredObject) -> PathBuf {
    PathBuf::from(object.key.rsplit('/').next().unwrap_or(&object.key))
}

async fn download(bucket: &Bucket, object: &StoredObject, path: &Path) -> Result<u64> {
    if path.symlink_metadata().is_ok() {
        bail!(Refused(format!(
            "{} exists; not overwriting it",
            path.display()
        )));
    }
    let tmp = fs::temp_beside(path)?;
    let mut staged = fs::Staged::create(path, tmp.clone(), fs::Mode::Private)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let size = bucket.get_to(object, staged.file()).await?;
    staged
        .install()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{policy::model::Action, sessions::ChannelRecord};

    fn session(objects: &[Option<&str>]) -> SessionRecord {
        let mut s = SessionRecord::new(
            "s1".into(),
            "100.96.0.7:1".into(),
            "203.0.113.10:22".into(),
            Action::AuditSsh,
            1,
        );
        s.channels = objects
            .iter()
            .enumerate()
            .map(|(n, key)| ChannelRecord {
                recording: Some(format!("/r/s1-ch{n}.sshlog")),
                recording_object: key.map(|k| StoredObject {
                    key: k.into(),
                    version_id: None,
                    sha256: "00".into(),
                }),
                ..ChannelRecord::program(
                    n as u32,
                    &crate::recording::writer::ChannelKind::Shell,
                    1,
                    None,
                    vec![],
                )
            })
            .collect();
        s
    }

    #[test]
    fn a_record_file_is_the_bucket_object_or_the_record_itself() {
        let dir = tempfile::tempdir().unwrap();
        let record = session(&[Some("p/s1-ch0.sshlog")]);
        let wrapped = dir.path().join("s1.json");
        let json = serde_json::json!({"router_id": "rtr-1", "session": record});
        std::fs::write(&wrapped, json.to_string()).unwrap();
        assert_eq!(read_record(&wrapped).unwrap(), record);
        let bare = dir.path().join("show.json");
        std::fs::write(&bare, serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(read_record(&bare).unwrap(), record);
        std::fs::write(&bare, "{\"id\": 3}").unwrap();
        let err = read_record(&bare).unwrap_err().to_string();
        assert!(err.contains("not a session record"), "{err}");
    }

    #[test]
    fn a_fetch_takes_what_is_uploaded_and_names_what_is_not() {
        let (done, waiting) =
            uploaded(&session(&[Some("p/rtr/2026/12/05/s1-ch0.sshlog")])).unwrap();
        assert_eq!(file_name(&done[0].1), PathBuf::from("s1-ch0.sshlog"));
        assert!(waiting.is_empty());
        let (done, waiting) = uploaded(&session(&[Some("k"), None])).unwrap();
        assert_eq!((done.len(), waiting), (1, vec!["1".to_string()]));
        let err = uploaded(&session(&[None])).unwrap_err().to_string();
        assert!(
            err.contains("none of its recordings is in the store yet"),
            "{err}"
        );
        let err = uploaded(&session(&[])).unwrap_err().to_string();
        assert!(err.contains("has no recordings"), "{err}");
    }
}
