//! A Debian 12 root file system with systemd, for booting a real router OS in
//! `systemd-nspawn` (see [`crate::nspawn`]).
//!
//! `debootstrap --variant=minbase` builds it once from the mirror the host's own apt uses, and
//! the result is cached as a tar file under the target directory
//! (`target/sshgw-test-cache/`), named after a hash of its [`recipe`]: changing the recipe
//! builds a new one (and removes the old tar). Reruns only unpack the tar (a few seconds).
//! Concurrent test processes serialise the build with a lock file. The first build
//! downloads the packages and takes about two minutes on a two-core machine; the tar is
//! about 160 MB.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::process::Processes;

/// The Debian release the router runs.
pub const SUITE: &str = "bookworm";

/// The `debootstrap` packages beyond minbase: systemd as PID 1, D-Bus for systemctl, `ip`,
/// `ps`/`pgrep`, and `nft` for the router's firewall.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,procps,nftables";

/// Bump when [`build`] changes what ends up in the tar (the suite and packages are hashed
/// in already).
const BUILD_STEPS_VERSION: u32 = 1;

/// Everything that decides the rootfs's content; its hash names the cache file.
pub fn recipe() -> String {
    format!(
        "debootstrap --variant=minbase --include={INCLUDE} {SUITE}; apt caches emptied; \
         steps v{BUILD_STEPS_VERSION}"
    )
}

/// Deadline of the first build (debootstrap on a shared two-core machine).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Deadline of unpacking the cached tar.
pub const UNPACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The target directory (`$CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    dir.canonicalize().unwrap_or(dir)
}

/// `target/sshgw-test-cache`.
pub fn cache_dir() -> PathBuf {
    target_dir().join("sshgw-test-cache")
}

/// FNV-1a: a stable (toolchain-independent) hash for the cache file name.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cache file for the current [`recipe`].
pub fn cached_tar() -> PathBuf {
    cache_dir().join(format!(
        "debian-{SUITE}-systemd-{:016x}.tar",
        fnv1a(&recipe())
    ))
}

/// The mirror the host's apt fetches `bookworm` from (deb822 `.sources` files and
/// `sources.list`), so the rootfs comes from wherever the host gets its packages.
/// `SSHGW_TEST_DEBIAN_MIRROR` overrides it.
pub fn host_mirror() -> Result<String> {
    if let Some(m) = std::env::var_os("SSHGW_TEST_DEBIAN_MIRROR") {
        return Ok(m.to_string_lossy().into_owned());
    }
    let mut texts = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "sources")
                && let Ok(text) = fs::read_to_string(entry.path())
            {
                texts.push(text);
            }
        }
    }
    texts
        .iter()
        .find_map(|t| mirror_in(t, SUITE))
        .with_context(|| {
            format!(
                "no apt source for the suite {SUITE} in /etc/apt/sources.list or \
                 /etc/apt/sources.list.d/*.sources; set SSHGW_TEST_DEBIAN_MIRROR to a \
                 Debian mirror URL"
            )
        })
}

/// The URI serving `suite` in a `sources.list` or deb822 text.
pub fn mirror_in(text: &str, suite: &str) -> Option<String> {
    // One-line format: deb [options] URI SUITE COMPONENTS...
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
        if words.next() == Some("deb")
            && let (Some(uri), Some(s)) = (words.next(), words.next())
            && s == suite
        {
            return Some(uri.to_owned());
        }
    }
    // deb822: paragraphs with Types:, URIs:, Suites:.
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        };
        let types = field("Types:").unwrap_or_default();
        let suites = field("Suites:").unwrap_or_default();
        if types.iter().any(|t| t == "deb") && suites.iter().any(|s| s == suite) {
            return field("URIs:")?.into_iter().next();
        }
    }
    None
}

/// The cached rootfs tar, built first if missing (under an exclusive lock, so concurrent
/// runs build it once).
pub fn ensure_cached(procs: &Processes) -> Result<PathBuf> {
    let tar = cached_tar();
    let dir = cache_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_path = dir.join("rootfs.lock");
    let lock_file =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if tar.is_file() {
        return Ok(tar);
    }
    build(procs, &tar)?;
    Ok(tar)
}

fn build(procs: &Processes, tar: &Path) -> Result<()> {
    let mirror = host_mirror()?;
    let work = tempfile::Builder::new()
        .prefix("rootfs-build-")
        .tempdir_in(cache_dir())
        .context("creating the rootfs build dir")?;
    let root = work.path().join("root");
    eprintln!(
        "note: building the Debian {SUITE} rootfs from {mirror} (once; cached as {})",
        tar.display()
    );
    let started = Instant::now();
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "debootstrap", "--variant=minbase"])
        .arg(format!("--include={INCLUDE}"))
        .arg(SUITE)
        .arg(&root)
        .arg(&mirror);
    let out = procs.run_quiet("debootstrap", &mut cmd, BUILD_TIMEOUT)?;
    if !out.success() {
        let log = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        bail!(
            "debootstrap {SUITE} from {mirror} failed:\n{}\n{}\n--- debootstrap.log (tail) ---\n{}",
            out.stdout.trim_end(),
            out.stderr.trim_end(),
            tail(&log, 40)
        );
    }
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        empty_dir(&root.join(cache))?;
    }
    let partial = tar.with_extension("tar.partial");
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(&root).arg("-cf").arg(&partial).arg(".");
    procs
        .run_quiet("tar -c rootfs", &mut cmd, UNPACK_TIMEOUT)?
        .check("packing the rootfs")?;
    fs::rename(&partial, tar).with_context(|| format!("renaming to {}", tar.display()))?;
    remove_other_tars(tar);
    eprintln!(
        "note: Debian {SUITE} rootfs built in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Removes the cached tars of earlier recipes.
fn remove_other_tars(keep: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("debian-") && name.ends_with(".tar") && entry.path() != keep {
            eprintln!("note: removing the rootfs of an earlier recipe: {name}");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes the regular files directly in `dir` (apt's downloaded packages and lists).
fn empty_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Unpacks the cached rootfs into `dest` (created; must not exist yet).
pub fn unpack(procs: &Processes, tar: &Path, dest: &Path) -> Result<()> {
    fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(dest).arg("-xf").arg(tar);
    procs
        .run_quiet("tar -x rootfs", &mut cmd, UNPACK_TIMEOUT)?
        .check(&format!("unpacking {}", tar.display()))?;
    Ok(())
}
