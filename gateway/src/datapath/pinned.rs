//! The pin directory: where this build's maps and the per-interface links are pinned, and
//! what a stopped daemon left there.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{
    bpffs,
    links::InterfaceStatus,
    maps::{self, Counters},
    object,
};

/// Pinned maps of this build's program. aya reuses a pinned map without checking its
/// shape, so each object build gets its own directory (`maps-<hash>`); the program it
/// replaces keeps its maps until the link swap, then they are unpinned.
pub fn maps_dir(pin_dir: &Path) -> Result<PathBuf> {
    Ok(pin_dir.join(format!("maps-{}", object::layout_id()?)))
}

/// Every pinned maps directory (this build's and earlier builds').
pub fn all_maps_dirs(pin_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(pin_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("maps"))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Unpins every file in `dir` and removes it.
pub fn unpin_dir(dir: &Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries {
            let path = entry?.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot unpin {}", path.display()))?;
        }
        std::fs::remove_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Removes the pin directory tree (pinned maps and any leftover links).
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    for dir in std::iter::once(links_dir(pin_dir)).chain(all_maps_dirs(pin_dir)) {
        unpin_dir(&dir)?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", pin_dir.display())),
    }
}

/// What is left in the kernel when no daemon runs: pinned links keep the program
/// attached (fail closed), and its counters keep counting.
pub struct PinnedState {
    pub interfaces: Vec<InterfaceStatus>,
    pub counters: Counters,
}

pub fn pinned_state(pin_dir: &Path) -> Result<Option<PinnedState>> {
    if !bpffs::has_pins(pin_dir) {
        return Ok(None);
    }
    let mut interfaces = Vec::new();
    if let Ok(entries) = std::fs::read_dir(links_dir(pin_dir)) {
        for entry in entries.filter_map(|e| e.ok()) {
            let info = aya::programs::links::PinnedLink::from_pin(entry.path())
                .map(aya::programs::links::FdLink::from)
                .and_then(|fd| fd.info())
                .with_context(|| format!("cannot read pinned link {}", entry.path().display()))?;
            interfaces.push(InterfaceStatus {
                name: entry.file_name().to_string_lossy().into_owned(),
                link_id: info.id(),
                program_id: info.program_id(),
            });
        }
    }
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    // The newest build's maps, i.e. those of the program the links run.
    let dir = all_maps_dirs(pin_dir)
        .into_iter()
        .max_by_key(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
        .context("no pinned maps")?;
    let counters = maps::pinned_counters(&dir)?;
    Ok(Some(PinnedState {
        interfaces,
        counters,
    }))
}
