//! Recordings in the spool that no channel row names: a crash between a recording's
//! creation and its row's commit, or a session log that could not be written while the
//! session ran (`on_log_failure = "allow"`). With object storage they are evidence like any
//! other, so at start the uploader adopts them into the session log from their plaintext
//! header (session id, program, user, device, login, destination), and they upload as the
//! truncated recordings they are. Retention never deletes them while `[storage]` is set.

use std::path::{Path, PathBuf};

use crate::{
    recording::spool,
    sessions::{
        ProgramKind,
        store::{SessionStore, Write},
        uploads::Adopted,
    },
};

/// Adopts every unreferenced recording in `dir`; returns how many.
pub async fn adopt(store: &SessionStore, dir: &Path) -> usize {
    let (store, dir) = (store.clone(), dir.to_path_buf());
    let found = tokio::task::spawn_blocking(move || {
        let orphans = find(&store, &dir);
        for orphan in &orphans {
            store.write(Write::Adopt(Box::new(orphan.clone())));
        }
        store.sync();
        orphans.len()
    })
    .await;
    found.unwrap_or_default()
}

fn find(store: &SessionStore, dir: &Path) -> Vec<Adopted> {
    let referenced: std::collections::HashSet<String> = match store.recording_refs() {
        Ok(refs) => refs.iter().filter_map(|r| name_of(&r.path)).collect(),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "storage: cannot list the recordings the session log names");
            return Vec::new();
        }
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| name_of(&p.to_string_lossy()).is_some_and(|n| !referenced.contains(&n)))
        .filter(|p| !spool::is_being_written(p))
        .filter_map(|p| adopted(&p))
        .collect()
}

/// The file name of a recording path, when it is a recording's (`<session>-ch<N>.sshlog`).
fn name_of(path: &str) -> Option<String> {
    let name = Path::new(path).file_name()?.to_str()?;
    parse(name).map(|_| name.to_string())
}

/// `<session>-ch<N>.sshlog`: the session and the channel.
fn parse(name: &str) -> Option<(&str, u32)> {
    let (session, channel) = name.strip_suffix(".sshlog")?.rsplit_once("-ch")?;
    Some((session, channel.parse().ok()?)).filter(|(s, _)| !s.is_empty())
}

/// What the recording's header says about its channel; `None` (logged) when it has no
/// readable sshgw header.
fn adopted(path: &PathBuf) -> Option<Adopted> {
    let (session, channel) = parse(path.file_name()?.to_str()?)?;
    let header = std::fs::File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|mut f| crate::recording::reader::read_header(&mut f).map_err(|e| e.to_string()));
    let meta = match header {
        Ok((_, meta)) => meta,
        Err(error) => {
            tracing::warn!(file = %path.display(), error = %error, "storage: an unreferenced file in the recording directory has no readable header; left alone");
            return None;
        }
    };
    let info = meta.sshgw.unwrap_or_default();
    let kind: ProgramKind = info.channel.parse().ok()?;
    if info.session_id != session {
        tracing::warn!(file = %path.display(), header_session = %info.session_id, "storage: an unreferenced recording names another session in its header; left alone");
        return None;
    }
    Some(Adopted {
        session_id: session.to_string(),
        channel,
        path: path.display().to_string(),
        kind,
        command: info.command.or(info.subsystem),
        email: info.user_email,
        device_id: info.device_id,
        login: info.login,
        destination: info.destination,
        started_at: info
            .started_at_us
            .map_or(meta.started_at as i64 * 1_000_000, |us| us as i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{
        keys,
        writer::{ChannelKind, ChannelMeta, FileWriter},
    };

    #[tokio::test(flavor = "multi_thread")]
    async fn a_recording_without_its_row_is_adopted_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("sessions.db")).unwrap();
        let spool = dir.path().join("recordings");
        std::fs::create_dir(&spool).unwrap();
        let (_, public) = keys::generate();
        let meta = ChannelMeta {
            session_id: "19aec8a0c00deadbeef".into(),
            channel: ChannelKind::Exec {
                command: "uptime".into(),
            },
            pty: None,
            user_email: Some("jdoe@example.com".into()),
            device_id: Some("laptop".into()),
            login: "root".into(),
            destination: "203.0.113.10:22".into(),
            env: vec![],
        };
        let path = spool.join("19aec8a0c00deadbeef-ch3.sshlog");
        drop(FileWriter::create(&path, &public, &meta, std::time::SystemTime::now()).unwrap());
        std::fs::write(spool.join("notes.txt"), "not a recording").unwrap();
        std::fs::write(spool.join("x-ch1.sshlog"), "no header").unwrap();

        assert_eq!(adopt(&store, &spool).await, 1);
        let s = store.get("19aec8a0c00deadbeef").unwrap().unwrap();
        assert_eq!(s.email.as_deref(), Some("jdoe@example.com"));
        assert_eq!(s.destination, "203.0.113.10:22");
        assert_eq!(
            s.close_reason.as_deref(),
            Some(crate::sessions::uploads::ADOPTED_CLOSE_REASON)
        );
        assert_eq!(s.channels[0].channel, 3);
        assert_eq!(s.channels[0].command.as_deref(), Some("uptime"));
        let pending = store.pending_recordings(None).unwrap();
        assert_eq!(pending[0].path, path.display().to_string());
        // Once named by a row it is not adopted again.
        assert_eq!(adopt(&store, &spool).await, 0);
    }
}
