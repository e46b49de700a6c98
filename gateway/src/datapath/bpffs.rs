//! The BPF filesystem that holds pinned links and maps across daemon restarts.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

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

/// Refuses a `pin_dir` on a BPF filesystem the host does not see: a fresh bpffs in a
/// private mount namespace (`ip netns exec` remounts `/sys`, and the daemon then mounts its
/// own bpffs there) is destroyed with the last process in that namespace, and with it every
/// pin. The program would then be detached after a crash, so audited SSH would pass
/// unaudited. `allow_private` (`[datapath] allow_private_bpffs`) turns the refusal into a
/// warning.
pub fn check_host_shared(pin_dir: &Path, allow_private: bool) -> Result<()> {
    let parent = pin_dir
        .parent()
        .with_context(|| format!("datapath.pin_dir {} has no parent", pin_dir.display()))?;
    let dev = std::fs::metadata(parent)
        .with_context(|| format!("cannot stat {}", parent.display()))?
        .dev();
    let dev = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    // PID 1's view decides. The shipped unit hides other users' processes
    // (`ProtectProc=invisible`); then the mount's propagation tells whether it is
    // connected to another namespace's mount (systemd services get a slave of the host's).
    let shared = match std::fs::read_to_string("/proc/1/mountinfo") {
        Ok(host) => bpf_devices(&parse_mountinfo(&host)).contains(&dev),
        Err(_) => {
            let own = std::fs::read_to_string("/proc/self/mountinfo")
                .context("cannot read /proc/self/mountinfo")?;
            propagates(&parse_mountinfo(&own), dev)
        }
    };
    if shared {
        return Ok(());
    }
    let why = format!(
        "datapath.pin_dir {}: the BPF filesystem there is not the host's but a private mount \
         (for example from `ip netns exec`, which remounts /sys). Its pins would die with the \
         process, so fail-closed would not survive it",
        pin_dir.display()
    );
    if allow_private {
        tracing::warn!("{why}; starting anyway (datapath.allow_private_bpffs = true)");
        return Ok(());
    }
    bail!(
        "{why}. Enter only the router's network namespace (for example `nsenter \
         --net=/run/netns/NAME`), or set [datapath] allow_private_bpffs = true to accept this"
    )
}

/// One line of `/proc/<pid>/mountinfo`, the fields that matter here.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// `major:minor` of the filesystem.
    dev: (u64, u64),
    mount_point: PathBuf,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    propagation: Vec<String>,
    fstype: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mount).collect()
}

fn parse_mount(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let dev = fields.nth(2)?.split_once(':')?;
    let dev = (dev.0.parse().ok()?, dev.1.parse().ok()?);
    let mount_point = PathBuf::from(unescape(fields.nth(1)?));
    let propagation = fields
        .by_ref()
        .skip(1)
        .take_while(|f| *f != "-")
        .map(str::to_owned)
        .collect();
    let fstype = fields.next()?.to_owned();
    Some(Mount {
        dev,
        mount_point,
        propagation,
        fstype,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bpf_devices(mounts: &[Mount]) -> Vec<(u64, u64)> {
    mounts
        .iter()
        .filter(|m| m.fstype == "bpf")
        .map(|m| m.dev)
        .collect()
}

/// Whether some bpffs mount of `dev` shares mount events with another namespace's mount.
fn propagates(mounts: &[Mount], dev: (u64, u64)) -> bool {
    mounts
        .iter()
        .filter(|m| m.fstype == "bpf" && m.dev == dev)
        .flat_map(|m| &m.propagation)
        .any(|tag| tag.starts_with("shared:") || tag.starts_with("master:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
56 22 0:41 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:9 - bpf bpf rw,mode=700
90 1 8:1 / /mnt/with\\040space rw,relatime - ext4 /dev/sda1 rw";

    #[test]
    fn mountinfo_lines_are_parsed() {
        let mounts = parse_mountinfo(HOST);
        assert_eq!(
            mounts[1],
            Mount {
                dev: (0, 41),
                mount_point: PathBuf::from("/sys/fs/bpf"),
                propagation: vec!["shared:9".into()],
                fstype: "bpf".into(),
            }
        );
        assert_eq!(mounts[2].mount_point, PathBuf::from("/mnt/with space"));
        assert!(mounts[2].propagation.is_empty());
        assert_eq!(bpf_devices(&mounts), [(0, 41)]);
    }

    #[test]
    fn only_a_connected_bpffs_propagates() {
        // A systemd service's view: a slave of the host's shared bpffs.
        let service = "70 60 0:41 / /sys/fs/bpf rw,relatime master:9 - bpf bpf rw";
        assert!(propagates(&parse_mountinfo(service), (0, 41)));
        // `ip netns exec` and a bpffs the daemon mounted itself: private, a new device.
        let private = "80 75 0:77 / /sys/fs/bpf rw,relatime - bpf bpf rw,mode=700";
        assert!(!propagates(&parse_mountinfo(private), (0, 77)));
        assert!(!bpf_devices(&parse_mountinfo(HOST)).contains(&(0, 77)));
    }
}
