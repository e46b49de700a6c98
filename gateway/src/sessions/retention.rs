//! Retention of session records and recording files together: by age, then by total size
//! (oldest first), and recording files that no record names. Only ended sessions are ever
//! removed, and only what must go: the size counts the log and the recordings of ended
//! sessions, so neither live sessions nor stray files can push history out.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};

use super::{
    live::LiveSessions,
    store::{SessionStore, Write},
};

/// Unreferenced recordings of this run younger than this are left for a later pass.
pub const UNREFERENCED_GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records (and recordings) older than this are removed; 0 keeps forever.
    pub max_age_days: u64,
    /// Database plus ended sessions' recordings above this many MiB: oldest sessions go;
    /// 0 means no limit.
    pub max_total_mb: u64,
    /// With object storage: sessions with anything not yet uploaded are kept whatever
    /// their age or size (never delete evidence that exists only here).
    pub keep_unshipped: bool,
}

/// Why retention deleted something: the `reason` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Age,
    Size,
    Unreferenced,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::Age, Reason::Size, Reason::Unreferenced];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Size => "size",
            Reason::Unreferenced => "unreferenced",
        }
    }
}

/// What was deleted for one reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub sessions: u64,
    pub files: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.sessions += other.sessions;
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// What one pass deleted, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub age: Tally,
    pub size: Tally,
    pub unreferenced: Tally,
}

impl Pass {
    pub fn get(&self, reason: Reason) -> Tally {
        match reason {
            Reason::Age => self.age,
            Reason::Size => self.size,
            Reason::Unreferenced => self.unreferenced,
        }
    }
}

/// Deletions since the daemon started, by reason (for `/metrics`).
pub struct Deleted {
    counts: [[AtomicU64; 3]; 3],
}

pub static DELETED: Deleted = Deleted {
    counts: [const { [const { AtomicU64::new(0) }; 3] }; 3],
};

impl Deleted {
    fn count(&self, pass: &Pass) {
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            let t = pass.get(reason);
            for (counter, n) in self.counts[i].iter().zip([t.sessions, t.files, t.bytes]) {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Totals so far for `reason`.
    pub fn get(&self, reason: Reason) -> Tally {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        let [s, f, b] = &self.counts[i];
        Tally {
            sessions: s.load(Ordering::Relaxed),
            files: f.load(Ordering::Relaxed),
            bytes: b.load(Ordering::Relaxed),
        }
    }
}

/// The name a recording path has in the recordings dir (records keep full paths; the
/// name alone survives a moved directory).
fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
}

/// Deletes sessions' rows and their files: each file at the path its row names and under
/// its name in the recording directory (the directory may have moved since). Without object
/// storage the rows go first (a file left behind is swept as unreferenced later); with it,
/// the sessions are shipped, so their files go first and a crash never leaves a file that
/// no row names.
fn remove_sessions(
    store: &SessionStore,
    recordings: &Path,
    shipped: bool,
    doomed: Vec<(String, i64, Vec<String>)>,
) -> Result<Tally> {
    let mut tally = Tally {
        sessions: doomed.len() as u64,
        ..Default::default()
    };
    let (ids, files): (Vec<String>, Vec<Vec<String>>) =
        doomed.into_iter().map(|(id, _, files)| (id, files)).unzip();
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    for file in files.iter().flatten() {
        paths.push(file.into());
        let moved = recordings.join(file_name(file));
        if moved != Path::new(file) {
            paths.push(moved);
        }
    }
    if shipped {
        remove_files(&paths, &mut tally);
    }
    store.write(Write::Delete(ids));
    if !store.sync() {
        bail!("the session log cannot be written; retention stopped");
    }
    if !shipped {
        remove_files(&paths, &mut tally);
    }
    Ok(tally)
}

fn remove_files(paths: &[std::path::PathBuf], tally: &mut Tally) {
    for file in paths {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(file) {
            Ok(()) => {
                tally.files += 1;
                tally.bytes += size;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "retention: cannot remove recording")
            }
        }
    }
}

fn by_age(
    store: &SessionStore,
    recordings: &Path,
    max_age_days: u64,
    keep_unshipped: bool,
) -> Result<Tally> {
    let mut tally = Tally::default();
    if max_age_days == 0 {
        return Ok(tally);
    }
    let cutoff = super::now_micros() - (max_age_days as i64) * 86_400 * 1_000_000;
    loop {
        let batch: Vec<_> = store
            .oldest_ended(500, keep_unshipped)?
            .into_iter()
            .filter(|(_, started, _)| *started < cutoff)
            .collect();
        if batch.is_empty() {
            return Ok(tally);
        }
        tally.add(remove_sessions(store, recordings, keep_unshipped, batch)?);
    }
}

/// Sizes of the recordings of ended sessions, by file name.
fn ended_recordings(store: &SessionStore, recordings: &Path) -> Result<HashMap<String, u64>> {
    Ok(store
        .recording_refs()?
        .into_iter()
        .filter(|r| r.ended)
        .filter_map(|r| {
            let name = file_name(&r.path);
            let size = std::fs::metadata(recordings.join(&name)).ok()?.len();
            Some((name, size))
        })
        .collect())
}

/// Removes the oldest ended sessions while the log and the ended sessions' recordings
/// exceed the limit, no more than needed: each batch is cut where its recordings and its
/// share of the log (estimated from the average row) cover the excess. Returns what it
/// deleted and the bytes counted before and after.
fn by_size(
    store: &SessionStore,
    recordings: &Path,
    max_total_mb: u64,
    keep_unshipped: bool,
) -> Result<(Tally, u64, u64)> {
    let mut tally = Tally::default();
    let mut sizes = ended_recordings(store, recordings)?;
    let mut files: u64 = sizes.values().sum();
    let before = store.used_bytes()? + files;
    let mut total = before;
    let limit = max_total_mb * 1024 * 1024;
    while max_total_mb > 0 && total > limit {
        let mut batch = store.oldest_ended(50, keep_unshipped)?;
        if batch.is_empty() {
            break;
        }
        let per_session = store.used_bytes()? / store.session_count()?.max(1);
        let mut freed = 0;
        let needed = batch
            .iter()
            .position(|(_, _, paths)| {
                freed += per_session;
                freed += paths
                    .iter()
                    .map(|p| sizes.get(&file_name(p)).copied().unwrap_or(0))
                    .sum::<u64>();
                total - freed <= limit
            })
            .map_or(batch.len(), |i| i + 1);
        batch.truncate(needed);
        for path in batch.iter().flat_map(|(_, _, f)| f) {
            files -= sizes.remove(&file_name(path)).unwrap_or(0);
        }
        tally.add(remove_sessions(store, recordings, keep_unshipped, batch)?);
        total = store.used_bytes()? + files;
    }
    Ok((tally, before, total))
}

/// Deletes `*.sshlog` files that no channel row names, unless a live session may still be
/// writing or naming them: files of live sessions, and files of this run younger than
/// [`UNREFERENCED_GRACE`] before `now`. Call after [`SessionStore::sync`], with `live`
/// taken before it: every row of a session that had ended is then in the log.
fn unreferenced(
    store: &SessionStore,
    recordings: &Path,
    live: &HashSet<String>,
    run_started: SystemTime,
    now: SystemTime,
) -> Result<Tally> {
    let referenced: HashSet<String> = store
        .recording_refs()?
        .iter()
        .map(|r| file_name(&r.path))
        .collect();
    let young = now.checked_sub(UNREFERENCED_GRACE).unwrap_or(now).min(now);
    let mut tally = Tally::default();
    let Ok(dir) = std::fs::read_dir(recordings) else {
        return Ok(tally);
    };
    for entry in dir.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(session) = name
            .strip_suffix(".sshlog")
            .and_then(|n| n.rsplit_once("-ch"))
        else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        let modified = meta.modified().unwrap_or(now);
        if !meta.is_file()
            || referenced.contains(&name)
            || live.contains(session.0)
            || (modified >= young && modified >= run_started)
        {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::debug!(file = name, "retention: removed an unreferenced recording");
                tally.files += 1;
                tally.bytes += meta.len();
            }
            Err(e) => {
                tracing::warn!(file = name, error = %e, "retention: cannot remove an unreferenced recording")
            }
        }
    }
    Ok(tally)
}

/// Applies the limits once. `run_started` is when this daemon started: unreferenced files
/// from before it cannot belong to a session in progress.
pub fn enforce(
    store: &SessionStore,
    recordings: &Path,
    limits: Limits,
    live: &LiveSessions,
    run_started: SystemTime,
) -> Result<Pass> {
    let live = live.ids();
    let now = SystemTime::now();
    if !store.sync() {
        bail!("the session log cannot be written; retention skipped");
    }
    // With object storage an unreferenced recording is evidence the uploader adopts
    // (storage/orphans.rs), never a leftover to delete.
    let unreferenced = if limits.keep_unshipped {
        Tally::default()
    } else {
        unreferenced(store, recordings, &live, run_started, now)?
    };
    let mut pass = Pass {
        unreferenced,
        age: by_age(
            store,
            recordings,
            limits.max_age_days,
            limits.keep_unshipped,
        )?,
        ..Default::default()
    };
    let (size, before, after) = by_size(
        store,
        recordings,
        limits.max_total_mb,
        limits.keep_unshipped,
    )?;
    pass.size = size;
    DELETED.count(&pass);
    report(&pass, before, after, limits);
    Ok(pass)
}

fn report(pass: &Pass, counted_before: u64, counted_after: u64, limits: Limits) {
    for reason in Reason::ALL {
        let t = pass.get(reason);
        if t == Tally::default() {
            continue;
        }
        let why = match reason {
            Reason::Age => "older than max_age_days",
            Reason::Size => "log and recordings above max_total_mb",
            Reason::Unreferenced => "recording files no session record names",
        };
        tracing::info!(
            reason = reason.as_str(),
            why,
            sessions = t.sessions,
            files = t.files,
            bytes = t.bytes,
            "retention deleted"
        );
    }
    // Not routine: a crash, or a relay that left files behind.
    if pass.unreferenced.files > 0 {
        tracing::warn!(
            files = pass.unreferenced.files,
            "retention found recording files no session record names"
        );
    }
    tracing::info!(
        counted_bytes_before = counted_before,
        counted_bytes_after = counted_after,
        max_total_mb = limits.max_total_mb,
        max_age_days = limits.max_age_days,
        "retention pass"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::model::Action,
        sessions::{ChannelRecord, ProgramKind, SessionRecord, live::Tracker},
    };
    use std::sync::Arc;

    const DAY: i64 = 86_400 * 1_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SessionStore,
        recordings: std::path::PathBuf,
        live: Arc<LiveSessions>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("s.db")).unwrap();
        let recordings = dir.path().join("rec");
        std::fs::create_dir(&recordings).unwrap();
        Fixture {
            _dir: dir,
            store,
            recordings,
            live: Default::default(),
        }
    }

    impl Fixture {
        /// A session `id` started `age_days` ago (ended unless `open`) with one recorded
        /// channel of `size` bytes.
        fn session(&self, id: &str, age_days: i64, open: bool, size: usize) {
            let started = crate::sessions::now_micros() - age_days * DAY;
            let file = self.recordings.join(format!("{id}-ch0.sshlog"));
            std::fs::write(&file, vec![b'x'; size]).unwrap();
            self.store.write(Write::Open(Box::new(SessionRecord {
                ended_at: (!open).then_some(started + 1),
                ..SessionRecord::new(id.into(), "s".into(), "d".into(), Action::AuditSsh, started)
            })));
            self.store.write(Write::ChannelOpen {
                session_id: id.into(),
                record: ChannelRecord {
                    channel: 0,
                    kind: ProgramKind::Shell,
                    command: None,
                    started_at: started,
                    ended_at: None,
                    exit_status: None,
                    exit_signal: None,
                    recording: Some(file.display().to_string()),
                    recording_object: None,
                    env: Vec::new(),
                },
            });
            assert!(self.store.sync());
        }

        fn enforce(&self, limits: Limits, run_started: SystemTime) -> Pass {
            enforce(
                &self.store,
                &self.recordings,
                limits,
                &self.live,
                run_started,
            )
            .unwrap()
        }

        fn exists(&self, id: &str) -> bool {
            let file = self.recordings.join(format!("{id}-ch0.sshlog")).exists();
            let row = self.store.get(id).unwrap().is_some();
            assert_eq!(file, row, "{id}: file and record go together");
            row
        }
    }

    /// With object storage: a shipped session's file goes even where its row's path no
    /// longer leads (the recording directory moved), and an unshipped one stays.
    #[test]
    fn with_storage_shipped_sessions_go_with_their_files_wherever_the_row_points() {
        let f = fixture();
        f.session("shipped", 10, false, 1);
        f.session("unshipped", 10, false, 1);
        let conn = open_for_test(&f);
        conn.execute(
            "UPDATE channels SET recording = '/elsewhere/' || session_id || '-ch0.sshlog'",
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE uploads SET uploaded_at = 1, item = '/elsewhere/shipped-ch0.sshlog'
             WHERE session_id = 'shipped'",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO uploads (session_id, item, uploaded_at) VALUES ('shipped', 'record', 1)",
            [],
        )
        .unwrap();
        let pass = f.enforce(
            Limits {
                max_age_days: 7,
                max_total_mb: 0,
                keep_unshipped: true,
            },
            SystemTime::now(),
        );
        assert_eq!((pass.age.sessions, pass.age.files), (1, 1));
        assert!(!f.exists("shipped") && f.exists("unshipped"));
    }

    fn open_for_test(f: &Fixture) -> rusqlite::Connection {
        rusqlite::Connection::open(f._dir.path().join("s.db")).unwrap()
    }

    #[test]
    fn removes_old_sessions_and_their_recordings() {
        let f = fixture();
        f.session("old", 10, false, 1);
        f.session("new", 0, false, 1);
        f.session("live-old", 10, true, 1);
        let pass = f.enforce(
            Limits {
                max_age_days: 7,
                max_total_mb: 0,
                keep_unshipped: false,
            },
            SystemTime::now(),
        );
        assert_eq!(
            pass.age,
            Tally {
                sessions: 1,
                files: 1,
                bytes: 1
            }
        );
        assert!(!f.exists("old") && f.exists("new"));
        // A session still in progress is never removed, however old.
        assert!(f.exists("live-old"));
    }

    #[test]
    fn size_counts_only_ended_sessions_recordings() {
        let f = fixture();
        let mib = 1024 * 1024;
        f.session("oldest", 3, false, mib / 2);
        f.session("older", 2, false, mib / 2);
        f.session("newer", 1, false, mib / 2);
        // Neither a live session's recording nor stray files count.
        f.session("live", 0, true, 4 * mib);
        std::fs::write(f.recordings.join("stray.bin"), vec![0u8; 4 * mib]).unwrap();
        let limits = Limits {
            max_age_days: 0,
            max_total_mb: 1,
            keep_unshipped: false,
        };
        let pass = f.enforce(limits, SystemTime::UNIX_EPOCH);
        // 1.5 MiB of ended recordings plus the log: the two oldest go, no more.
        assert_eq!((pass.size.sessions, pass.size.files), (2, 2));
        assert!(!f.exists("oldest") && !f.exists("older"));
        assert!(f.exists("newer") && f.exists("live"));
        assert!(f.recordings.join("stray.bin").exists());
        assert_eq!(DELETED.get(Reason::Size).sessions, 2);
        // Within the limit now: a second pass deletes nothing.
        assert_eq!(f.enforce(limits, SystemTime::UNIX_EPOCH), Pass::default());
    }

    #[test]
    fn unreferenced_recordings_are_removed_unless_they_may_be_in_use() {
        let f = fixture();
        f.session("kept", 0, false, 10);
        let write = |name: &str| std::fs::write(f.recordings.join(name), b"orphan").unwrap();
        write("gone-ch1.sshlog");
        write("gone-ch2.sshlog");
        write("other.txt");
        // A live session's file, not (yet) named by a row.
        let tracker = Tracker::open(
            SessionRecord::new("busy".into(), "s".into(), "d".into(), Action::AuditSsh, 0),
            f.store.clone(),
            f.live.clone(),
        );
        write("busy-ch0.sshlog");
        let limits = Limits {
            max_age_days: 0,
            max_total_mb: 0,
            keep_unshipped: false,
        };
        // All of it written in this run, within the grace period: nothing goes.
        let pass = f.enforce(limits, SystemTime::UNIX_EPOCH);
        assert_eq!(pass.unreferenced, Tally::default());
        // Left by an earlier run: orphans go; the live session's file and others stay.
        let later = SystemTime::now() + Duration::from_secs(1);
        let pass = f.enforce(limits, later);
        assert_eq!(
            pass.unreferenced,
            Tally {
                sessions: 0,
                files: 2,
                bytes: 12
            }
        );
        assert!(!f.recordings.join("gone-ch1.sshlog").exists());
        assert!(f.recordings.join("busy-ch0.sshlog").exists());
        assert!(f.recordings.join("other.txt").exists());
        assert!(f.exists("kept"));
        drop(tracker);
        // Ended now, its file still unnamed: an orphan like the others.
        let pass = f.enforce(limits, later);
        assert_eq!(pass.unreferenced.files, 1);
    }
}
