//! Router checks read from /proc and /sys: the daemon's process (capabilities, open-file
//! limit), bpffs and whose mount namespace it lives in, and the sysctls interception needs.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::Check;

/// Capabilities the daemon needs: (bit, name, what for).
const NEEDED_CAPS: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load the program and maps"),
    (
        38,
        "CAP_PERFMON",
        "the verifier rejects the TC program without it",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "attach, policy routing, transparent listeners",
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        "reach the pins below the root-owned /sys/fs/bpf",
    ),
];
const CAP_SYS_ADMIN: u32 = 21;

/// Below this soft limit the gateway cannot serve a modest fleet (2 fds per connection).
const MIN_NOFILE: u64 = 4096;
const BASELINE_FDS: u64 = 30;

/// The running daemon, found through the control socket's peer credentials.
pub enum Daemon {
    Running(i32),
    Unreachable(String),
}

impl Daemon {
    pub fn find(socket: &Path) -> Self {
        let stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            Err(e) => return Self::Unreachable(format!("no answer on {}: {e}", socket.display())),
        };
        match getsockopt(&stream, PeerCredentials) {
            Ok(cred) => Self::Running(cred.pid()),
            Err(e) => {
                Self::Unreachable(format!("cannot read the peer of {}: {e}", socket.display()))
            }
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self {
            Self::Running(pid) => Some(*pid),
            Self::Unreachable(_) => None,
        }
    }

    pub fn check(&self) -> Check {
        match self {
            Self::Running(pid) => Check::ok("daemon", format!("running, pid {pid}")),
            Self::Unreachable(why) => Check::fail(
                "daemon",
                format!("not reachable: {why}"),
                "systemctl start sshgw; journalctl -u sshgw says why it stopped (run doctor \
                 as root or a member of the control group)",
            ),
        }
    }

    /// `/proc/PID/NAME` of the daemon, or why it cannot be read.
    fn proc_file(&self, name: &str) -> Result<String, String> {
        let pid = self.pid().ok_or("the daemon is not running")?;
        let path = format!("/proc/{pid}/{name}");
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))
    }

    /// The daemon holds every capability it needs (root's CAP_SYS_ADMIN covers PERFMON).
    pub fn capabilities(&self) -> Check {
        let status = match self.proc_file("status") {
            Ok(s) => s,
            Err(e) => return Check::skip("capabilities", e),
        };
        let Some(eff) = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        else {
            return Check::skip("capabilities", "no CapEff in /proc/PID/status");
        };
        let has = |bit: u32| eff & (1 << bit) != 0;
        let missing: Vec<String> = NEEDED_CAPS
            .iter()
            // Root's CAP_SYS_ADMIN also lets the verifier accept the program.
            .filter(|(bit, name, _)| !(has(*bit) || (*name == "CAP_PERFMON" && has(CAP_SYS_ADMIN))))
            .map(|(_, name, why)| format!("{name} ({why})"))
            .collect();
        if missing.is_empty() {
            Check::ok(
                "capabilities",
                format!("CapEff {eff:#x} holds what sshgw needs"),
            )
        } else {
            Check::fail(
                "capabilities",
                format!("the daemon lacks {}", missing.join(", ")),
                "the shipped unit grants CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_DAC_READ_SEARCH \
                 (CapabilityBoundingSet= and AmbientCapabilities=); check drop-ins that reset them",
            )
        }
    }

    /// The daemon's open-file limit: soft == hard and large enough.
    pub fn open_files(&self) -> Check {
        let limits = match self.proc_file("limits") {
            Ok(s) => s,
            Err(e) => return Check::skip("open files", e),
        };
        let nums: Vec<u64> = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [soft, hard] = nums[..] else {
            return Check::skip(
                "open files",
                "no numeric 'Max open files' in /proc/PID/limits",
            );
        };
        let detail = format!(
            "soft {soft}, hard {hard}: about {} concurrent connections",
            soft.saturating_sub(BASELINE_FDS) / 2
        );
        let fix = "LimitNOFILE=524288 in the unit (the shipped unit sets it), then \
                   systemctl restart sshgw";
        if soft < MIN_NOFILE {
            Check::fail("open files", detail, fix)
        } else if soft < hard {
            Check::warn("open files", detail, fix)
        } else {
            Check::ok("open files", detail)
        }
    }
}

/// A `/proc/PID/mountinfo` entry: (mount point, major:minor, fstype).
fn mounts(pid: &str) -> Result<Vec<(PathBuf, String, String)>, String> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|w| *w == "-")?;
            Some((
                PathBuf::from(f.get(4)?),
                (*f.get(2)?).to_owned(),
                (*f.get(sep + 1)?).to_owned(),
            ))
        })
        .collect())
}

/// The mount holding `dir` in a mount table: the last (top) mount with the longest
/// matching mount point.
fn mount_of<'a>(
    table: &'a [(PathBuf, String, String)],
    dir: &Path,
) -> Option<&'a (PathBuf, String, String)> {
    let best = table
        .iter()
        .filter(|(mp, _, _)| dir.starts_with(mp))
        .map(|(mp, _, _)| mp.components().count())
        .max()?;
    table
        .iter()
        .rev()
        .find(|(mp, _, _)| dir.starts_with(mp) && mp.components().count() == best)
}

/// The pin directory is on a bpffs, and it is the same bpffs instance PID 1 sees: a bpffs
/// mounted in a private mount namespace (a container, `ip netns exec`, `unshare`) dies with
/// it, and with it the pins that keep the datapath failing closed.
pub fn bpffs(pin_dir: &Path, daemon: Option<i32>) -> Check {
    const NAME: &str = "bpffs";
    let whose = daemon.map_or("self".to_owned(), |p| p.to_string());
    let (mine, init) = match (mounts(&whose), mounts("1")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Check::skip(NAME, e),
    };
    let fix_mount = "mount -t bpf -o mode=700 bpf /sys/fs/bpf in the host's mount namespace \
                     (systemd does this at boot); never inside a container, ip netns exec or \
                     unshare";
    let Some((mp, dev, fs)) = mount_of(&mine, pin_dir) else {
        return Check::fail(NAME, "no mount table entry", fix_mount);
    };
    if fs != "bpf" {
        return Check::fail(
            NAME,
            format!(
                "{} is on {fs} ({}), not a bpffs",
                pin_dir.display(),
                mp.display()
            ),
            fix_mount,
        );
    }
    let who = daemon.map_or("doctor".to_owned(), |p| format!("the daemon (pid {p})"));
    match mount_of(&init, pin_dir) {
        Some((_, d, f)) if f == "bpf" && d == dev => Check::ok(
            NAME,
            format!(
                "{} is shared with PID 1's mount namespace (device {dev})",
                mp.display()
            ),
        ),
        _ => Check::fail(
            NAME,
            format!(
                "{who} sees a bpffs at {} (device {dev}) that PID 1's mount namespace does \
                 not: it is a private instance, and the pins die with that namespace",
                mp.display()
            ),
            fix_mount,
        ),
    }
}

fn sysctl(key: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    Some(std::fs::read_to_string(path).ok()?.trim().to_owned())
}

/// Forwarding, src_valid_mark and tcp_fwmark_accept, read in this network namespace.
pub fn sysctls(interfaces: &[String]) -> Vec<Check> {
    let mut checks = Vec::new();
    let v4 = sysctl("net.ipv4.ip_forward");
    let v6 = sysctl("net.ipv6.conf.all.forwarding");
    checks.push(match (v4.as_deref(), v6.as_deref()) {
        (Some("1"), Some("1")) => Check::ok("forwarding", "IPv4 and IPv6 forwarding on"),
        (Some("1"), _) => Check::warn(
            "forwarding",
            "IPv6 forwarding is off: IPv6 traffic that is not intercepted is not routed",
            "sysctl -w net.ipv6.conf.all.forwarding=1 (and in /etc/sysctl.d)",
        ),
        _ => Check::fail(
            "forwarding",
            format!(
                "net.ipv4.ip_forward is {}",
                v4.as_deref().unwrap_or("unreadable")
            ),
            "sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d/90-sshgw.conf)",
        ),
    });
    let mut set = Vec::new();
    for name in std::iter::once("all").chain(interfaces.iter().map(String::as_str)) {
        let key = format!("net.ipv4.conf.{name}.src_valid_mark");
        if sysctl(&key).as_deref() == Some("1") {
            set.push(key);
        }
    }
    checks.push(if set.is_empty() {
        Check::ok("src_valid_mark", "0 on all and on the device interfaces")
    } else {
        Check::fail(
            "src_valid_mark",
            format!(
                "{} = 1: intercepted SYNs are dropped as martians",
                set.join(", ")
            ),
            format!(
                "sysctl -w {}",
                set.iter()
                    .map(|k| format!("{k}=0"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )
    });
    checks.push(match sysctl("net.ipv4.tcp_fwmark_accept").as_deref() {
        Some("1") => Check::fail(
            "tcp_fwmark_accept",
            "1: the relay's replies to devices follow the intercept mark into lo",
            "sysctl -w net.ipv4.tcp_fwmark_accept=0",
        ),
        _ => Check::ok("tcp_fwmark_accept", "0"),
    });
    checks
}
