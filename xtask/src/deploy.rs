//! `cargo xtask deploy`: builds sshgw and installs it on a router over SSH (`--host`), or
//! into a directory tree (`--root`).
//!
//! Both targets run the same reviewable script, `xtask/deploy/install.sh` (embedded here as
//! [`INSTALL_SCRIPT`]): on the router as root, or locally with `--prefix DIR --offline`. It
//! installs
//!
//! | path | mode | owner |
//! |---|---|---|
//! | `/usr/local/bin/sshgw` | 0755 | root:root |
//! | `/etc/systemd/system/sshgw.service` (`systemd/sshgw.service`) | 0644 | root:root |
//! | `/etc/systemd/system/sshgw-console.service` (`systemd/sshgw-console.service`) | 0644 | root:root |
//! | `/etc/sshgw/` | 0750 | root:sshgw |
//! | `/etc/sshgw/sshgw.toml` ([`DEFAULT_CONFIG`]), only if absent | 0640 | root:sshgw |
//!
//! creates the system group and user `sshgw` if missing, runs `systemctl daemon-reload` and
//! `systemctl enable sshgw.service`, and never starts the service. The console's unit (the
//! auditor's web console, `sshgw console`) is installed beside it but neither enabled nor
//! started: the next-steps text says how. With `--root`, the group, user and systemctl steps
//! are skipped (and reported); the enable symlink
//! `etc/systemd/system/multi-user.target.wants/sshgw.service` is made directly.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};

use crate::{ebpf, prereqs, util};

/// The config installed as `/etc/sshgw/sshgw.toml` when none exists (`xtask/deploy/sshgw.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../deploy/sshgw.toml");
/// The install step, run as root on the router (`xtask/deploy/install.sh`).
pub const INSTALL_SCRIPT: &str = include_str!("../deploy/install.sh");
/// The systemd unit, relative to the workspace root.
const UNIT_FILE: &str = "systemd/sshgw.service";
/// The console's systemd unit (installed, never enabled), relative to the workspace root.
const CONSOLE_UNIT_FILE: &str = "systemd/sshgw-console.service";
/// How many trailing stderr lines of a failed install go into the error message.
const STDERR_TAIL: usize = 20;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["host", "root"])))]
pub struct DeployArgs {
    /// Install on this router over SSH (OpenSSH `ssh`/`scp`). The remote user must be root
    /// or have passwordless sudo (`sudo -n`).
    #[arg(long, value_name = "USER@HOST")]
    pub host: Option<String>,

    /// Install into this existing directory tree instead (image builds, chroots). Group,
    /// user and systemctl steps are skipped; the enable symlink is created directly.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Extra OpenSSH option for ssh and scp, passed as `-o OPT` (e.g. `Port=2222`,
    /// `IdentityFile=~/.ssh/router`). Repeatable.
    #[arg(long = "ssh-opt", value_name = "OPT", conflicts_with = "root")]
    pub ssh_opts: Vec<String>,

    /// Install this prebuilt sshgw binary instead of building a release one (prereqs,
    /// build-ebpf, `cargo build --release -p sshgw`).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

fn log(msg: &str) {
    println!("[deploy] {msg}");
}

pub fn run(args: &DeployArgs) -> Result<()> {
    let workspace = util::workspace_root()?;
    let unit = workspace.join(UNIT_FILE);
    let console_unit = workspace.join(CONSOLE_UNIT_FILE);
    for file in [&unit, &console_unit] {
        if !file.is_file() {
            bail!("the systemd unit {} is missing", file.display());
        }
    }
    let units = Units {
        daemon: unit,
        console: console_unit,
    };
    if let Some(binary) = &args.binary
        && !util::is_executable(binary)
    {
        bail!(
            "--binary {}: not an executable file (build one with `cargo build --release -p sshgw`)",
            binary.display()
        );
    }

    match (&args.host, &args.root) {
        (Some(host), None) => deploy_host(&workspace, &units, host, args),
        (None, Some(dir)) => {
            if !dir.is_dir() {
                bail!("--root {}: no such directory", dir.display());
            }
            let binary = resolve_binary(&workspace, args.binary.as_deref())?;
            deploy_root(dir, &binary, &units)
        }
        // clap's `target` group makes exactly one of them present.
        _ => bail!("pass exactly one of --host and --root"),
    }
}

/// The units install.sh installs: the daemon's (enabled) and the console's (not enabled).
struct Units {
    daemon: PathBuf,
    console: PathBuf,
}

/// The sshgw binary to install: `--binary`, or a fresh release build.
fn resolve_binary(workspace: &Path, binary: Option<&Path>) -> Result<PathBuf> {
    match binary {
        Some(path) => std::path::absolute(path)
            .with_context(|| format!("cannot resolve --binary {}", path.display())),
        None => build_release(workspace),
    }
}

/// prereqs, build-ebpf, build-console, then `cargo build --release -p sshgw` (which embeds
/// the object and the console's files).
fn build_release(workspace: &Path) -> Result<PathBuf> {
    log(
        "building the release binary (prereqs, build-ebpf, build-console, cargo build --release -p sshgw)",
    );
    let prereqs = prereqs::ensure()?;
    ebpf::build(workspace, &prereqs)?;
    crate::console::build(workspace)?;
    util::run(
        util::host_cargo()
            .args(["build", "--release", "--package", "sshgw"])
            .current_dir(workspace),
    )?;
    let binary = util::target_dir(workspace).join("release").join("sshgw");
    if !util::is_executable(&binary) {
        bail!(
            "`cargo build --release --package sshgw` finished but {} is missing",
            binary.display()
        );
    }
    log(&format!("built {}", binary.display()));
    Ok(binary)
}

/// `--root DIR`: runs the install script locally with `--prefix DIR --offline`.
fn deploy_root(dir: &Path, binary: &Path, units: &Units) -> Result<()> {
    let dir = std::path::absolute(dir)?;
    log(&format!("installing into {}", dir.display()));
    let stage = Stage::new()?;
    let mut cmd = Command::new("sh");
    cmd.arg(&stage.script)
        .arg("--binary")
        .arg(binary)
        .arg("--unit")
        .arg(&units.daemon)
        .arg("--config")
        .arg(&stage.config)
        .arg("--console-unit")
        .arg(&units.console)
        .arg("--prefix")
        .arg(&dir)
        .arg("--offline");
    run_streaming(&mut cmd, "the install script")
}

/// `--host USER@HOST`: probe, build, copy, install.
fn deploy_host(workspace: &Path, units: &Units, host: &str, args: &DeployArgs) -> Result<()> {
    for tool in ["ssh", "scp"] {
        if util::find_executable(tool, &[]).is_none() {
            bail!("`{tool}` is not on PATH (install openssh-client)");
        }
    }
    let remote = Remote {
        host: host.to_owned(),
        opts: args.ssh_opts.clone(),
    };

    // Connection, privileges and architecture are checked before the (long) build.
    let probe = remote.probe()?;
    log(&format!(
        "{host}: uid {}, {}{}",
        probe.uid,
        probe.arch,
        if probe.uid == 0 {
            ""
        } else {
            ", installing with sudo -n"
        }
    ));
    let binary_arch = match &args.binary {
        Some(path) => elf_arch(path)?,
        None => Some(std::env::consts::ARCH),
    };
    if let Some(arch) = binary_arch
        && arch != probe.arch
    {
        bail!(
            "the sshgw binary is for {arch} but {host} is {}: the binary and its eBPF object \
             must be built on a machine with the router's architecture",
            probe.arch
        );
    }
    let binary = resolve_binary(workspace, args.binary.as_deref())?;

    let stage = Stage::new()?;
    // scp names the remote files after the local ones; links give them fixed names.
    let binary_link = stage.dir.path().join("sshgw");
    let unit_link = stage.dir.path().join("sshgw.service");
    let console_unit_link = stage.dir.path().join("sshgw-console.service");
    std::os::unix::fs::symlink(&binary, &binary_link)?;
    std::os::unix::fs::symlink(&units.daemon, &unit_link)?;
    std::os::unix::fs::symlink(&units.console, &console_unit_link)?;

    let remote_dir = remote.make_temp_dir()?;
    log(&format!("copying to {host}:{remote_dir}/"));
    let copied = util::run(
        remote
            .scp()
            .arg("--")
            .args([
                &stage.script,
                &stage.config,
                &unit_link,
                &console_unit_link,
                &binary_link,
            ])
            .arg(format!("{}:{remote_dir}/", scp_host(host))),
    );
    if let Err(err) = copied {
        // Best effort: the error that matters is the copy's.
        let _ = remote
            .ssh(&format!("rm -rf {remote_dir}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        return Err(err);
    }

    log(&format!("running install.sh on {host} as root"));
    let mut cmd = remote.ssh(&remote_install_command(&remote_dir, probe.uid != 0));
    run_streaming(&mut cmd, &format!("the install on {host}"))
}

/// What the first connection learns about the router.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    uid: u32,
    arch: String,
}

struct Remote {
    host: String,
    opts: Vec<String>,
}

impl Remote {
    fn with_opts(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for opt in &self.opts {
            cmd.arg("-o").arg(opt);
        }
        cmd
    }

    /// `ssh [-o OPT]... -- HOST COMMAND` (COMMAND is run by the remote user's shell).
    fn ssh(&self, command: &str) -> Command {
        let mut cmd = self.with_opts("ssh");
        cmd.arg("--").arg(&self.host).arg(command);
        cmd
    }

    fn scp(&self) -> Command {
        let mut cmd = self.with_opts("scp");
        cmd.arg("-q");
        cmd
    }

    /// Checks that we can log in and become root, and learns uid and architecture.
    fn probe(&self) -> Result<Probe> {
        let mut cmd = self.ssh(PROBE_COMMAND);
        log(&format!("$ {}", util::describe(&cmd)));
        let out = cmd
            .output()
            .context("could not start `ssh` (is openssh-client installed?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
        let host = &self.host;
        if out.status.code() == Some(255) {
            bail!(
                "cannot connect to {host} with ssh ({}): {stderr}",
                out.status
            );
        }
        let uid = lines
            .first()
            .and_then(|l| l.parse::<u32>().ok())
            .with_context(|| {
                format!(
                    "unexpected answer from `id -u` on {host} ({}): {stdout:?} {stderr}",
                    out.status
                )
            })?;
        if !out.status.success() {
            bail!(
                "{host}: the remote user (uid {uid}) is not root and `sudo -n` does not work: \
                 {stderr}. Log in as root (--host root@…) or allow passwordless sudo"
            );
        }
        let arch = lines
            .get(1)
            .filter(|a| !a.is_empty())
            .with_context(|| format!("{host}: `uname -m` printed nothing"))?;
        Ok(Probe {
            uid,
            arch: (*arch).to_owned(),
        })
    }

    /// A private (0700) staging directory on the router, for the remote user.
    fn make_temp_dir(&self) -> Result<String> {
        let out =
            util::output(&mut self.ssh(r#"mktemp -d "${TMPDIR:-/tmp}/sshgw-deploy.XXXXXX""#))?;
        let dir = out.trim();
        if !is_safe_remote_path(dir) {
            bail!(
                "`mktemp -d` on {} returned an unexpected path {dir:?}",
                self.host
            );
        }
        Ok(dir.to_owned())
    }
}

/// Prints uid and architecture; fails (after printing them) when the user is not root and
/// `sudo -n` does not work.
const PROBE_COMMAND: &str = r#"id -u && uname -m && { [ "$(id -u)" -eq 0 ] || sudo -n true; }"#;

/// Runs the staged script (as root), then removes the staging directory either way.
fn remote_install_command(dir: &str, sudo: bool) -> String {
    let sudo = if sudo { "sudo -n " } else { "" };
    format!(
        "{sudo}sh {dir}/install.sh --binary {dir}/sshgw --unit {dir}/sshgw.service \
         --config {dir}/sshgw.toml --console-unit {dir}/sshgw-console.service; rc=$?; \
         rm -rf {dir}; exit $rc"
    )
}

/// Paths we interpolate into a remote shell command: absolute, no shell metacharacters.
fn is_safe_remote_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
}

/// The host part of an scp destination: IPv6 literals need brackets there (`user@[::1]:`).
fn scp_host(host: &str) -> String {
    let (user, addr) = match host.rsplit_once('@') {
        Some((user, addr)) => (Some(user), addr),
        None => (None, host),
    };
    let addr = if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    };
    match user {
        Some(user) => format!("{user}@{addr}"),
        None => addr,
    }
}

/// The architecture (as `uname -m` spells it) of an ELF executable, if it is one we know.
fn elf_arch(path: &Path) -> Result<Option<&'static str>> {
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(elf_machine(&header))
}

fn elf_machine(header: &[u8; 20]) -> Option<&'static str> {
    if &header[..4] != b"\x7fELF" || header[5] != 1 {
        return None; // not ELF, or big-endian
    }
    match u16::from_le_bytes([header[18], header[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        _ => None,
    }
}

/// Runs `cmd` with stdout inherited and stderr streamed through (and remembered): on failure
/// the error carries the last lines of its stderr.
fn run_streaming(cmd: &mut Command, what: &str) -> Result<()> {
    let desc = util::describe(cmd);
    println!("$ {desc}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{desc}`"))?;
    let stderr = child.stderr.take().context("stderr was not captured")?;
    let mut tail = VecDeque::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_else(|e| format!("<unreadable stderr: {e}>"));
        eprintln!("{line}");
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait()?;
    if status.success() {
        return Ok(());
    }
    let stderr = Vec::from(tail).join("\n");
    let stderr = stderr.trim();
    if status.code() == Some(255) && desc.starts_with("ssh ") {
        bail!("ssh failed ({status}) while running {what}: {stderr}");
    }
    if stderr.is_empty() {
        bail!("{what} failed ({status})");
    }
    bail!("{what} failed ({status}):\n{stderr}");
}

/// A local directory with the install script and the default config written out.
struct Stage {
    dir: TempDir,
    script: PathBuf,
    config: PathBuf,
}

impl Stage {
    fn new() -> Result<Self> {
        let dir = TempDir::new("xtask-deploy")?;
        let script = dir.path().join("install.sh");
        let config = dir.path().join("sshgw.toml");
        std::fs::write(&script, INSTALL_SCRIPT)
            .with_context(|| format!("cannot write {}", script.display()))?;
        std::fs::write(&config, DEFAULT_CONFIG)
            .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Stage {
            dir,
            script,
            config,
        })
    }
}

/// A private temporary directory, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for attempt in 0..100u32 {
            let path = base.join(format!("{prefix}.{}.{nanos}.{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        bail!("cannot create a temporary directory in {}", base.display())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_has_the_documented_keys() {
        for line in [
            r#"state_dir = "/var/lib/sshgw""#,
            r#"control_socket = "/run/sshgw/control.sock""#,
            r#"control_group = "sshgw""#,
            "[datapath]",
            r#"interfaces = ["wg0"]"#,
            "ports = [22]",
            r#"pin_dir = "/sys/fs/bpf/sshgw""#,
            r#"on_stop = "keep""#,
            "[ssh]",
            "# [recording]",
            r##"# public_key_file = "/etc/sshgw/recording.pub""##,
        ] {
            assert!(
                DEFAULT_CONFIG.lines().any(|l| l.starts_with(line)),
                "default config lacks {line:?}"
            );
        }
        // The interfaces placeholder is flagged for editing right above it.
        let before: Vec<&str> = DEFAULT_CONFIG
            .lines()
            .take_while(|l| !l.starts_with("interfaces"))
            .collect();
        assert!(before.iter().rev().take(3).any(|l| l.contains("EDIT THIS")));
        // `[recording]` stays commented out: an uncommented table without a key is useless.
        assert!(!DEFAULT_CONFIG.lines().any(|l| l.trim() == "[recording]"));
    }

    #[test]
    fn install_script_has_every_step() {
        let s = INSTALL_SCRIPT;
        assert!(s.starts_with("#!/bin/sh\n"));
        for step in [
            "set -eu",
            "getent group \"$SVC\"",
            "run groupadd --system \"$SVC\"",
            "run useradd --system --no-create-home --shell \"$NOLOGIN\" --gid \"$SVC\" \"$SVC\"",
            "NOLOGIN=/usr/sbin/nologin",
            "BIN=/usr/local/bin/sshgw",
            "UNIT=/etc/systemd/system/sshgw.service",
            "CONF=/etc/sshgw/sshgw.toml",
            "install_file \"$binary\" \"$BIN\" 0755",
            "install_file \"$unit\" \"$UNIT\" 0644",
            "CONSOLE_UNIT=/etc/systemd/system/sshgw-console.service",
            "install_file \"$console_unit\" \"$CONSOLE_UNIT\" 0644",
            "systemctl enable --now sshgw-console",
            "chmod 0750 \"$P$CONF_DIR\"",
            "chown \"root:$SVC\"",
            // Never overwrite an existing config (a dangling symlink counts as existing).
            "if [ -e \"$P$CONF\" ] || [ -L \"$P$CONF\" ]; then",
            "not overwritten",
            "install -m 0640 \"$config\" \"$P$CONF\"",
            "run systemctl daemon-reload",
            "run systemctl enable \"$UNIT_NAME\"",
            "ln -sfn \"$UNIT\" \"$P$link\"",
            "skipped (--offline)",
        ] {
            assert!(s.contains(step), "install.sh lacks {step:?}");
        }
        // It enables the service but never starts, restarts, reloads or stops it (the
        // next-steps text may mention those; the commands it runs may not).
        let code: Vec<&str> = s
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.starts_with('#') && !l.starts_with("say "))
            .collect();
        // The console's unit is installed, never enabled: only the daemon's name is.
        assert!(
            !code
                .iter()
                .any(|l| l.contains("enable") && l.to_lowercase().contains("console")),
            "install.sh enables the console unit"
        );
        for forbidden in [
            "systemctl start",
            "systemctl restart",
            "systemctl reload",
            "systemctl stop",
            "--now",
        ] {
            assert!(
                !code.iter().any(|l| l.contains(forbidden)),
                "install.sh runs `{forbidden}`"
            );
        }
    }

    #[test]
    fn remote_command_runs_the_staged_script_and_cleans_up() {
        assert_eq!(
            remote_install_command("/tmp/sshgw-deploy.AbC123", true),
            "sudo -n sh /tmp/sshgw-deploy.AbC123/install.sh \
             --binary /tmp/sshgw-deploy.AbC123/sshgw \
             --unit /tmp/sshgw-deploy.AbC123/sshgw.service \
             --config /tmp/sshgw-deploy.AbC123/sshgw.toml \
             --console-unit /tmp/sshgw-deploy.AbC123/sshgw-console.service; \
             rc=$?; rm -rf /tmp/sshgw-deploy.AbC123; exit $rc"
        );
        assert!(remote_install_command("/tmp/x", false).starts_with("sh /tmp/x/install.sh "));
    }

    #[test]
    fn ssh_and_scp_get_the_extra_options() {
        let remote = Remote {
            host: "admin@router".into(),
            opts: vec!["Port=2222".into(), "IdentityFile=/k".into()],
        };
        assert_eq!(
            util::describe(&remote.ssh("id -u")),
            r#"ssh -o Port=2222 -o IdentityFile=/k -- admin@router "id -u""#
        );
        assert_eq!(
            util::describe(&remote.scp()),
            "scp -o Port=2222 -o IdentityFile=/k -q"
        );
    }

    #[test]
    fn remote_paths_are_checked_before_use_in_a_shell() {
        assert!(is_safe_remote_path("/tmp/sshgw-deploy.Ab_12-x"));
        assert!(!is_safe_remote_path("tmp/x"));
        assert!(!is_safe_remote_path("/tmp/x y"));
        assert!(!is_safe_remote_path("/tmp/x;reboot"));
        assert!(!is_safe_remote_path("/tmp/$(x)"));
        assert!(!is_safe_remote_path("/tmp/../etc"));
    }

    #[test]
    fn scp_brackets_ipv6_literals() {
        assert_eq!(scp_host("root@router"), "root@router");
        assert_eq!(scp_host("router"), "router");
        assert_eq!(scp_host("root@fd00::1"), "root@[fd00::1]");
        assert_eq!(scp_host("[fd00::1]"), "[fd00::1]");
        assert_eq!(scp_host("a@b@10.0.0.1"), "a@b@10.0.0.1");
    }

    #[test]
    fn elf_machines() {
        let mut h = [0u8; 20];
        h[..6].copy_from_slice(b"\x7fELF\x02\x01");
        h[18] = 0x3e;
        assert_eq!(elf_machine(&h), Some("x86_64"));
        h[18] = 0xb7;
        assert_eq!(elf_machine(&h), Some("aarch64"));
        h[18] = 0x08;
        assert_eq!(elf_machine(&h), None);
        assert_eq!(elf_machine(&[0u8; 20]), None);
        // Our own executable is for the host's architecture.
        let me = std::env::current_exe().expect("test executable");
        if matches!(std::env::consts::ARCH, "x86_64" | "aarch64") {
            assert_eq!(elf_arch(&me).unwrap(), Some(std::env::consts::ARCH));
        }
    }

    #[test]
    fn streaming_failure_carries_stderr() {
        let err = run_streaming(
            Command::new("sh").args(["-c", "echo out; echo first >&2; echo second >&2; exit 3"]),
            "the thing",
        )
        .expect_err("exit 3 fails");
        assert_eq!(
            err.to_string(),
            "the thing failed (exit status: 3):\nfirst\nsecond"
        );
        run_streaming(Command::new("true").arg("x"), "true").expect("true succeeds");
    }

    #[test]
    fn temp_dirs_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("xtask-test").unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(dir);
        assert!(!path.exists());
    }
}
