//! The BPF filesystem that holds pinned links and maps across daemon restarts.

use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` can be created on a bpffs, mounting `/sys/fs/bpf` when it is the
/// conventional location and nothing is mounted there yet (minimal systems, containers).
pub fn ensure(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir
        .parent()
        .with_context(|| format!("datapath.pin_dir {} has no parent", pin_dir.display()))?;
    if is_bpffs(parent) {
        return Ok(());
    }
    if parent == Path::new(DEFAULT_BPFFS) {
        tracing::info!(path = DEFAULT_BPFFS, "mounting the BPF filesystem");
        mount(
            Some("bpf"),
            DEFAULT_BPFFS,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .with_context(|| format!("cannot mount bpffs on {DEFAULT_BPFFS}"))?;
        return Ok(());
    }
    bail!(
        "datapath.pin_dir {}: its parent is not on a BPF filesystem (mount -t bpf bpf {})",
        pin_dir.display(),
        parent.display()
    )
}

/// True when something of ours is pinned under `pin_dir`.
pub fn has_pins(pin_dir: &Path) -> bool {
    pin_dir.is_dir() && is_bpffs(pin_dir)
}
