//! Durable file writes: a file created exclusively and fsynced, a file replaced through a
//! staged temporary, a line appended, and the directory fsync that makes each survive a
//! crash. Every writer in the crate goes through these; callers add their own wording
//! around what these errors already say.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// The permissions of a file this module creates.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Exactly 0600, whatever the process umask: keys, state and anything secret.
    Private,
    /// These bits less the process umask, as `open(2)` applies them (public keys, exports).
    Umask(u32),
}

/// Creates `path` with `O_CREAT|O_EXCL|O_NOFOLLOW`: an existing file or a symlink planted
/// under that name is never reused or followed.
pub fn create_new(path: &Path, mode: Mode) -> io::Result<File> {
    let bits = match mode {
        Mode::Private => 0o600,
        Mode::Umask(bits) => bits,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(bits)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if let Mode::Private = mode
        && let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o600))
    {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Creates `path` as [`create_new`] does, writes `data` and fsyncs it; errors say "cannot
/// create PATH" (the cause may be that it exists: an `io::Error` of kind `AlreadyExists`)
/// or "cannot write PATH" (the half-written file, ours by `O_EXCL`, is removed). Does not
/// sync the directory: a caller that needs the name itself durable calls [`sync_dir`].
pub fn write_new(path: &Path, data: &[u8], mode: Mode) -> anyhow::Result<()> {
    let mut file = create_new(path, mode)
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot create {}", path.display())))?;
    if let Err(e) = file.write_all(data).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}

/// Puts a new file at `path` holding `data`, never replacing one: [`write_new`] to a
/// temporary beside it, then a hard link into place, which fails (`AlreadyExists`) if
/// `path` appeared meanwhile. The temporary goes either way; once linked, the directory
/// is synced (best effort). The outer error is the temporary's, the inner one the link's.
pub fn link_new(path: &Path, data: &[u8], mode: Mode) -> anyhow::Result<io::Result<()>> {
    let tmp = temp_beside(path)?;
    write_new(&tmp, data, mode)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    if linked.is_ok() {
        sync_parent_best_effort(path);
    }
    Ok(linked)
}

/// fsyncs the directory `dir`, so that an entry created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// [`sync_dir`] on the parent of `path`, for callers that go on whatever happens.
pub fn sync_parent_best_effort(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = sync_dir(dir);
    }
}

/// A temporary name beside `path` that no other writer uses: the process id, a counter
/// and 64 random bits.
pub fn temp_beside(path: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        rand::Rng::next_u64(&mut rand::rng())
    )))
}

/// A new version of `path`, written into a temporary file beside it (see [`temp_beside`],
/// [`create_new`]) but not yet in place. Dropping it without [`Staged::commit`] or
/// [`Staged::install`] removes the temporary, leaving the old file untouched.
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    file: File,
    renamed: bool,
}

/// Writes `bytes` as a new version of `path` into a fresh temporary beside it (a name no
/// other writer uses, never a planted file or symlink) and fsyncs it; errors say "cannot
/// create TMP" or "cannot write TMP". [`Staged::commit`] then puts it in place.
pub fn stage(path: &Path, bytes: &[u8], mode: Mode) -> anyhow::Result<Staged> {
    use anyhow::Context;
    let tmp = temp_beside(path).map_err(anyhow::Error::new)?;
    let mut staged = Staged::create(path, tmp.clone(), mode)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    staged
        .file()
        .write_all(bytes)
        .and_then(|()| staged.sync())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    Ok(staged)
}

impl Staged {
    /// Creates the temporary file `tmp` (from [`temp_beside`]) for a new version of `path`,
    /// to be written through [`Staged::file`] and put in place by [`Staged::install`].
    pub fn create(path: &Path, tmp: PathBuf, mode: Mode) -> io::Result<Staged> {
        let file = create_new(&tmp, mode)?;
        Ok(Staged {
            tmp,
            path: path.to_path_buf(),
            file,
            renamed: false,
        })
    }

    /// The temporary file, to write the new version into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temporary's name.
    #[cfg(test)]
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// A version from [`stage`] (already fsynced): atomically replaces the old file, then
    /// syncs the directory so that the rename is durable. Errors say "cannot replace PATH"
    /// or "cannot sync DIR".
    pub fn commit(self) -> anyhow::Result<()> {
        use anyhow::Context;
        let path = self.path.clone();
        self.rename()
            .with_context(|| format!("cannot replace {}", path.display()))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
        }
        Ok(())
    }

    /// A version written through [`Staged::file`]: fsyncs it and atomically replaces the
    /// old file; once in place, syncs the directory (best effort).
    pub fn install(self) -> io::Result<()> {
        let path = self.path.clone();
        self.sync().and_then(|()| self.rename())?;
        sync_parent_best_effort(&path);
        Ok(())
    }

    /// fsyncs the new version's content.
    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Atomically puts the new version in place of the old. The rename itself is durable
    /// only after [`sync_dir`] on the parent.
    fn rename(mut self) -> io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The step of [`append_line`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendStep {
    Open,
    Stat,
    Read,
    Write,
}

/// Appends `line` to `path` (`O_APPEND`, then fsync), first starting a new line if the
/// file does not end with one. Creates the file as [`Mode::Private`] if it is missing, and
/// then syncs the directory too (best effort).
pub fn append_line(path: &Path, line: &str) -> Result<(), (AppendStep, io::Error)> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| (AppendStep::Open, e))?;
    let len = file.metadata().map_err(|e| (AppendStep::Stat, e))?.len();
    let mut text = String::with_capacity(line.len() + 1);
    if len > 0 {
        let mut last = [0u8];
        file.read_at(&mut last, len - 1)
            .map_err(|e| (AppendStep::Read, e))?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    text.push_str(line);
    (&file)
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| (AppendStep::Write, e))?;
    if !existed {
        sync_parent_best_effort(path);
    }
    Ok(())
}

/// Opens a private file (no symlinks) and checks it is a regular file that only its owner
/// can access; `None` if it does not exist.
pub fn open_private(path: &Path, what: &str) -> anyhow::Result<Option<File>> {
    use anyhow::{Context, bail};
    use std::{io::ErrorKind, os::unix::fs::MetadataExt};
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open {what} {}", path.display()));
        }
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{what} {} is accessible by group or others (mode {:o}); refusing to use it (chmod 600 it)",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_new_never_reuses_or_follows_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new(&path, b"secret", Mode::Private).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let err = write_new(&path, b"other", Mode::Private).unwrap_err();
        let cause = err.root_cause().downcast_ref::<io::Error>().unwrap();
        assert_eq!(cause.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            link_new(&path, b"other", Mode::Private)
                .unwrap()
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("target"), &link).unwrap();
        assert!(write_new(&link, b"x", Mode::Private).is_err());
        assert!(!dir.path().join("target").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "temporary files left: {names:?}");
    }

    #[test]
    fn a_dropped_stage_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "old\n").unwrap();
        let stage = || Staged::create(&path, temp_beside(&path).unwrap(), Mode::Private).unwrap();
        let (mut a, mut b) = (stage(), stage());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        a.file().write_all(b"a\n").unwrap();
        b.file().write_all(b"b\n").unwrap();
        drop(a);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        b.sync().unwrap();
        b.rename().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left: {names:?}");
    }

    #[test]
    fn appended_lines_start_on_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        append_line(&path, "a\n").unwrap();
        assert_eq!(mode_of(&path), 0o600);
        std::fs::write(&path, "a").unwrap();
        append_line(&path, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
    }
}
