//! Router check of the systemd unit's drop-ins: settings that override the shipped unit and
//! break it (read-only bpffs, fewer capabilities, a lower open-file limit).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Check;

const UNIT: &str = "sshgw.service";
/// Where drop-ins are read from when systemd cannot be asked.
const DROP_IN_DIRS: &[&str] = &[
    "/etc/systemd/system/sshgw.service.d",
    "/run/systemd/system/sshgw.service.d",
    "/usr/lib/systemd/system/sshgw.service.d",
];

/// Directives that break sshgw when a drop-in sets them, and why.
const RISKY: &[(&str, &str)] = &[
    (
        "ProtectKernelTunables=yes",
        "makes /sys/fs/bpf read-only: the daemon cannot pin (EROFS)",
    ),
    (
        "CapabilityBoundingSet=",
        "changes the capabilities (an empty value drops them all)",
    ),
    ("AmbientCapabilities=", "changes the capabilities"),
    (
        "LimitNOFILE=",
        "changes the open-file limit (2 descriptors per connection)",
    ),
    ("User=", "runs the daemon as another user"),
    ("ExecStart=", "replaces the command line"),
];

/// The drop-in files: systemd's own list when it answers, else the standard directories.
fn drop_in_files() -> (Vec<PathBuf>, &'static str) {
    let asked = Command::new("systemctl")
        .args(["show", "-P", "DropInPaths", UNIT])
        .output();
    if let Ok(out) = asked
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        return (
            text.split_whitespace().map(PathBuf::from).collect(),
            "systemctl show -P DropInPaths",
        );
    }
    let mut files = Vec::new();
    for dir in DROP_IN_DIRS {
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "conf")),
            );
        }
    }
    files.sort();
    (files, "the sshgw.service.d directories")
}

/// The risky directives in one drop-in.
fn risky_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter_map(|line| {
            let (_, why) = RISKY.iter().find(|(d, _)| line.starts_with(d))?;
            Some(format!("{}: {line} ({why})", path.display()))
        })
        .collect()
}

pub fn drop_ins() -> Check {
    const NAME: &str = "unit drop-ins";
    let (files, source) = drop_in_files();
    if files.is_empty() {
        return Check::ok(NAME, format!("none ({source})"));
    }
    let risky: Vec<String> = files.iter().flat_map(|f| risky_lines(f)).collect();
    let names = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let fix = "check each against docs/deployment.md#the-unit; `systemctl cat sshgw` shows \
               the result, `systemctl revert sshgw` removes all drop-ins";
    let detail = format!("drop-ins override the shipped unit:\n{}", risky.join("\n"));
    if risky.is_empty() {
        Check::ok(
            NAME,
            format!("{names}: nothing that overrides the hardening sshgw relies on"),
        )
    } else if risky
        .iter()
        .any(|l| l.contains("ProtectKernelTunables=yes"))
    {
        Check::fail(NAME, detail, fix)
    } else {
        Check::warn(NAME, detail, fix)
    }
}
