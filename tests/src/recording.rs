//! Session recordings and operations helpers: recording keys (`sshgw recording keygen`), the
//! reading commands (`decrypt`, `export`, `verify`) with the decrypted zip read back, the
//! plaintext header of a `.sshlog` file, a size-limited tmpfs for the recording directory
//! (unmounted on drop, also on panic), and small edits of the daemon's config file for
//! reload/stop tests.
//!
//! ```ignore
//! let key = RecordingKey::generate(lab, "rec")?;            // rec + rec.pub in a fresh dir
//! let mut cfg = GatewayConfig::default().policies(recorded_policies());
//! cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
//! // ... run a session, find channels[].recording in `sessions show ID --json` ...
//! let zip = decrypt(lab, &file, &key.private)?;            // must exit 0
//! let text = zip.member_text("term_data.txt")?;
//! let v = recording_cli(lab, &["verify", "-i", f, "-k", k])?; // a Finished: check the code
//! let header = read_header(&file)?;                          // plaintext JSON header
//! let fs = Tmpfs::mount(&lab.new_subdir("recordings")?, "64k")?; // umount -l on drop
//! let fs = Tmpfs::mount_keeping(&lab.sshgw_state_dir()?, "1m")?; // starts with a copy
//! fs.fill()?;                                                // ENOSPC from now on
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::gateway::{Gateway, sshgw_bin};
use crate::process::{Finished, describe_status};
use crate::topology::Lab;
use crate::wait::poll_until;

/// Deadline of one `sshgw recording ...` run (decrypting a few MiB in a debug build).
pub const RECORDING_CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A recording key pair written by `sshgw recording keygen -o NAME`.
#[derive(Debug, Clone)]
pub struct RecordingKey {
    /// `NAME`: the private key (base64 X25519 scalar), mode 0600.
    pub private: PathBuf,
    /// `NAME.pub`: the public key, for the gateway.
    pub public: PathBuf,
}

impl RecordingKey {
    /// `sshgw recording keygen -o <fresh dir>/<label>` (no namespace needed).
    pub fn generate(lab: &Lab, label: &str) -> Result<Self> {
        let dir = lab.new_subdir(&format!("recording-key-{label}"))?;
        let private = dir.join(label);
        let name = private.to_string_lossy().into_owned();
        recording_cli(lab, &["keygen", "-o", &name])?.check("sshgw recording keygen")?;
        let public = dir.join(format!("{label}.pub"));
        ensure!(
            private.is_file() && public.is_file(),
            "sshgw recording keygen did not write {} and {}",
            private.display(),
            public.display()
        );
        Ok(Self { private, public })
    }

    /// The public key's base64 text (trimmed).
    pub fn public_base64(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.public)
            .with_context(|| format!("reading {}", self.public.display()))?
            .trim()
            .to_owned())
    }
}

/// Runs `sshgw recording ARGS` in the host namespaces, bounded by [`RECORDING_CLI_TIMEOUT`].
/// A non-zero exit is not an error here.
pub fn recording_cli(lab: &Lab, args: &[&str]) -> Result<Finished> {
    recording_cli_within(lab, args, RECORDING_CLI_TIMEOUT)
}

/// [`recording_cli`] with a deadline for large recordings (a debug build decrypts a few
/// MiB a second on a loaded machine).
pub fn recording_cli_within(lab: &Lab, args: &[&str], timeout: Duration) -> Result<Finished> {
    let mut cmd = Command::new(sshgw_bin()?);
    cmd.arg("recording").args(args).env("RUST_BACKTRACE", "1");
    lab.procs().run_quiet(
        &format!("sshgw recording {}", args.join(" ")),
        &mut cmd,
        timeout,
    )
}

/// The audit policy of the lab (203.0.113.10, 2001:db8:1::10, port 22) with
/// `ssh.command_logging` on.
pub fn recorded_policies() -> Value {
    json!({"policies": [{
        "id": "audit-recorded",
        "name": "Audit and record the lab server",
        "precedence": 10,
        "enabled": true,
        "action": "audit_ssh",
        "destinations": ["203.0.113.10/32", "2001:db8:1::10/128"],
        "ports": [22],
        "ssh": {"command_logging": true}
    }]})
}

/// A `[recording]` table for [`crate::GatewayConfig::extra_toml`]: the public key file and
/// the directory (both optional) and any `extra` lines (e.g. `on_recording_failure = "allow"`).
pub fn recording_toml(public_key: Option<&Path>, dir: Option<&Path>, extra: &[&str]) -> String {
    let mut toml = String::from("[recording]\n");
    if let Some(key) = public_key {
        toml.push_str(&format!("public_key_file = {}\n", toml_path(key)));
    }
    if let Some(dir) = dir {
        toml.push_str(&format!("dir = {}\n", toml_path(dir)));
    }
    for line in extra {
        toml.push_str(line);
        toml.push('\n');
    }
    toml
}

/// A path as a TOML basic string.
pub fn toml_path(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).expect("string serializes")
}

/// The members of a zip written by `sshgw recording decrypt`, by name.
#[derive(Debug, Clone)]
pub struct DecryptedZip {
    pub path: PathBuf,
    pub members: BTreeMap<String, Vec<u8>>,
    /// `decrypt`'s stderr (`wrote …`, and a truncation warning if any).
    pub stderr: String,
}

impl DecryptedZip {
    /// Reads every member of the zip at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut archive = zip::ZipArchive::new(file)
            .with_context(|| format!("{} is not a zip", path.display()))?;
        let mut members = BTreeMap::new();
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .with_context(|| format!("reading member {i} of {}", path.display()))?;
            let name = entry
                .name()
                .with_context(|| format!("member {i} of {} has no valid name", path.display()))?
                .into_owned();
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .with_context(|| format!("reading {name} in {}", path.display()))?;
            members.insert(name, data);
        }
        Ok(Self {
            path: path.to_owned(),
            members,
            stderr: String::new(),
        })
    }

    /// The member names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }

    /// One member as (lossy) UTF-8; an error names the members there are.
    pub fn member_text(&self, name: &str) -> Result<String> {
        let data = self.members.get(name).ok_or_else(|| {
            anyhow!(
                "{} has no member {name:?}; members: {:?}",
                self.path.display(),
                self.names()
            )
        })?;
        Ok(String::from_utf8_lossy(data).into_owned())
    }
}

static OUT_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fresh output path `<lab dir>/<stem>-<n>.<ext>` that does not exist yet.
pub fn fresh_output(lab: &Lab, stem: &str, ext: &str) -> PathBuf {
    let n = OUT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lab.dir().join(format!("{stem}-{n}.{ext}"))
}

/// `sshgw recording decrypt -i FILE -k KEY -o <fresh>.zip`; must exit 0. Returns the members.
pub fn decrypt(lab: &Lab, recording: &Path, key: &Path) -> Result<DecryptedZip> {
    let out = fresh_output(lab, "decrypted", "zip");
    let finished = recording_cli(
        lab,
        &[
            "decrypt",
            "-i",
            &recording.to_string_lossy(),
            "-k",
            &key.to_string_lossy(),
            "-o",
            &out.to_string_lossy(),
        ],
    )?
    .check(&format!(
        "sshgw recording decrypt -i {}",
        recording.display()
    ))?;
    let mut zip = DecryptedZip::read(&out)?;
    zip.stderr = finished.stderr;
    Ok(zip)
}

/// `sshgw recording verify -i FILE -k KEY` (any exit code).
pub fn verify(lab: &Lab, recording: &Path, key: &Path) -> Result<Finished> {
    recording_cli(
        lab,
        &[
            "verify",
            "-i",
            &recording.to_string_lossy(),
            "-k",
            &key.to_string_lossy(),
        ],
    )
}

/// `sshgw recording export --format FORMAT [-o OUT]`; must exit 0.
fn export(
    lab: &Lab,
    recording: &Path,
    key: &Path,
    format: &str,
    out: Option<&Path>,
) -> Result<Finished> {
    let (recording, key) = (recording.to_string_lossy(), key.to_string_lossy());
    let out = out.map(|p| p.to_string_lossy().into_owned());
    let mut args = vec!["export", "-i", &recording, "-k", &key, "--format", format];
    if let Some(out) = &out {
        args.extend(["-o", out.as_str()]);
    }
    recording_cli(lab, &args)?.check(&format!("sshgw recording export --format {format}"))
}

/// `sshgw recording export --format asciicast -o <fresh>.cast`; must exit 0. Returns the path.
pub fn export_asciicast(lab: &Lab, recording: &Path, key: &Path) -> Result<PathBuf> {
    let out = fresh_output(lab, "export", "cast");
    export(lab, recording, key, "asciicast", Some(&out))?;
    Ok(out)
}

/// `sshgw recording export --format file-ops` to standard output; must exit 0. Returns
/// the JSON lines.
pub fn export_file_ops(lab: &Lab, recording: &Path, key: &Path) -> Result<String> {
    Ok(export(lab, recording, key, "file-ops", None)?.stdout)
}

/// Length of the container's prefix before the first chunk: the `u32` header length and the
/// header itself.
pub fn header_len(recording: &Path) -> Result<u64> {
    let mut f =
        File::open(recording).with_context(|| format!("opening {}", recording.display()))?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: no header length", recording.display()))?;
    Ok(4 + u64::from(u32::from_be_bytes(len)))
}

/// Waits (bounded) until the recording holds a chunk after its header (the writer seals one
/// at the latest a second after the oldest buffered packet) and returns the file size.
pub fn wait_flushed(path: &Path) -> Result<u64> {
    let header = header_len(path)?;
    crate::wait::poll_until(
        &format!("{} to hold a flushed chunk", path.display()),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let size = fs::metadata(path)?.len();
            Ok((size > header).then_some(size))
        },
    )
}

/// The plaintext header (`u32 M`, then M bytes of base64 JSON, trailing spaces allowed).
pub fn read_header(recording: &Path) -> Result<Value> {
    let bytes = fs::read(recording).with_context(|| format!("reading {}", recording.display()))?;
    ensure!(
        bytes.len() >= 4,
        "{}: shorter than 4 bytes",
        recording.display()
    );
    let m = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let b64 = bytes
        .get(4..4 + m)
        .with_context(|| format!("{}: header of {m} bytes is cut off", recording.display()))?;
    let json = base64_decode(b64).with_context(|| format!("{}: header", recording.display()))?;
    serde_json::from_slice(&json).with_context(|| {
        format!(
            "{}: the header is not JSON: {:?}",
            recording.display(),
            String::from_utf8_lossy(&json)
        )
    })
}

/// Standard-alphabet base64 with optional `=` padding (strict otherwise).
pub fn base64_decode(text: &[u8]) -> Result<Vec<u8>> {
    let text: Vec<u8> = {
        let end = text.iter().rposition(|&c| c != b'=').map_or(0, |p| p + 1);
        text[..end].to_vec()
    };
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("invalid base64 byte {c:#04x}"),
        }
        .into())
    };
    ensure!(text.len() % 4 != 1, "invalid base64 length {}", text.len());
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for group in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Ok(out)
}

/// File mode bits (`0o600`, …).
pub fn file_mode(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .mode()
        & 0o7777)
}

/// A tmpfs of a fixed size mounted on a directory (in the host mount namespace, which the
/// daemon shares: it enters only the router's network namespace). Lazily unmounted on drop,
/// also when the test panics, even if the daemon still holds files open there.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE,mode=0700 tmpfs DIR` (DIR must exist).
    pub fn mount(dir: &Path, size: &str) -> Result<Self> {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .with_context(|| format!("mounting a {size} tmpfs on {}", dir.display()))?;
        Ok(Self {
            path: dir.to_owned(),
        })
    }

    /// [`Tmpfs::mount`] over a directory that keeps its contents: the tmpfs starts with a
    /// copy of them (modes kept), and the originals are back once it is unmounted. For a
    /// state dir that already holds the CA keys.
    pub fn mount_keeping(dir: &Path, size: &str) -> Result<Self> {
        let stash = dir.with_extension(format!(
            "stash-{}",
            OUT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        copy_tree(dir, &stash)?;
        let fs = Self::mount(dir, size)?;
        copy_tree(&stash, dir)?;
        fs::remove_dir_all(&stash).with_context(|| format!("removing {}", stash.display()))?;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Free bytes (`statvfs`: f_bavail * f_frsize).
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.path)
            .with_context(|| format!("statvfs {}", self.path.display()))?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// Fills the file system completely with a new file `filler-<n>` (writes until ENOSPC) and
    /// returns its path. Remove it to free the space again.
    pub fn fill(&self) -> Result<PathBuf> {
        let n = OUT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.path.join(format!("filler-{n}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let block = vec![0x5au8; 4096];
        // Bounded: a tmpfs of this test's size holds a few hundred blocks at most.
        for _ in 0..1_000_000 {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    // One more byte must fail too: no page is partly free.
                    match f.write(&block[..1]) {
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(path),
                        Ok(_) => continue,
                        Err(e) => return Err(e).context("filling the tmpfs"),
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
            }
        }
        bail!("{} never reported ENOSPC", self.path.display())
    }
}

/// Copies the files and directories under `from` into `to` (created), with their modes.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mode = fs::metadata(from)?.permissions();
    fs::set_permissions(to, mode).with_context(|| format!("chmod {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).with_context(|| {
                format!("copying {} to {}", entry.path().display(), target.display())
            })?;
        }
    }
    Ok(())
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!(
                "warning: unmounting the tmpfs on {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Rewrites the daemon's config file with `edit` (e.g. before a SIGHUP, or before the first
/// start for a top-level key the harness does not write).
pub fn edit_config(gw: &Gateway<'_>, edit: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    let path = gw.config_path();
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let new = edit(&text)?;
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Sets a top-level key of the config (before the first table), replacing an existing line.
pub fn set_top_level(gw: &Gateway<'_>, key: &str, value: &str) -> Result<()> {
    edit_config(gw, |text| {
        let prefix = format!("{key} =");
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&prefix)).collect();
        Ok(format!("{key} = {value}\n{}\n", kept.join("\n")))
    })
}

/// Replaces the one line of the config that starts with `prefix` by `line`.
pub fn replace_config_line(gw: &Gateway<'_>, prefix: &str, line: &str) -> Result<()> {
    edit_config(gw, |text| {
        let hits = text.lines().filter(|l| l.starts_with(prefix)).count();
        ensure!(
            hits == 1,
            "config should have exactly one line starting with {prefix:?}, has {hits}:\n{text}"
        );
        let lines: Vec<&str> = text
            .lines()
            .map(|l| if l.starts_with(prefix) { line } else { l })
            .collect();
        Ok(lines.join("\n") + "\n")
    })
}

/// The one recorded channel of session `id` (waits, bounded, until the session has ended and
/// its channel records are closed): `(session record, channel record, recording path)`.
pub fn closed_recorded_channel(
    gw: &Gateway<'_>,
    id: &str,
    timeout: Duration,
) -> Result<(Value, Value, PathBuf)> {
    let mut last = Value::Null;
    crate::wait::poll_until(
        &format!("session {id} to be closed with a recorded channel"),
        timeout,
        Duration::from_millis(50),
        || {
            last = gw.session(id)?;
            let ended = !last["ended_at"].is_null() && !last["close_reason"].is_null();
            let channel = last["channels"]
                .as_array()
                .and_then(|c| c.first())
                .filter(|c| !c["ended_at"].is_null() && c["recording"].is_string())
                .cloned();
            Ok(channel.filter(|_| ended).map(|ch| {
                let path = PathBuf::from(ch["recording"].as_str().unwrap_or_default());
                (last.clone(), ch, path)
            }))
        },
    )
    .with_context(|| format!("last record: {last:#}"))
}

/// Fails with both streams unless `out` exited with `code`.
pub fn expect_exit(out: &Finished, code: i32, what: &str) -> Result<()> {
    ensure!(
        out.status.code() == Some(code),
        "{what}: expected exit code {code}, got {}:\nstdout: {}\nstderr: {}",
        describe_status(out.status),
        out.stdout.trim_end(),
        out.stderr.trim_end()
    );
    Ok(())
}

/// How long [`live_recording`] waits.
pub const LIVE_RECORDING_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits (bounded) until the live session `id` lists a channel with a recording, and returns
/// the recording path.
pub fn live_recording(gw: &Gateway<'_>, id: &str) -> Result<PathBuf> {
    let mut last = Value::Null;
    poll_until(
        &format!("live session {id} to list its recorded channel"),
        LIVE_RECORDING_TIMEOUT,
        Duration::from_millis(50),
        || {
            last = gw.session(id)?;
            Ok(last["channels"]
                .as_array()
                .and_then(|c| c.first())
                .and_then(|c| c["recording"].as_str())
                .map(PathBuf::from))
        },
    )
    .with_context(|| format!("last record: {last:#}"))
}
