//! The SSH clients people use besides OpenSSH, run from the lab's device namespace: PuTTY
//! (`plink`, `pscp`, `psftp`), Dropbear's `dbclient`, curl (libssh2) and the Python
//! libraries paramiko, asyncssh and ansible-pylibssh (libssh 0.12), the last three driven by
//! `drive.py` with the interpreter of the venv `cargo xtask prereqs` builds under the target
//! dir. Each client gets a HOME of its own in the lab dir, holding its host-key trust: the
//! gateway's host CA where the client checks certificates, the per-destination plain pin
//! (`sshgw ca known-hosts --plain`) where it cannot.
//!
//! ```ignore
//! let home = clients::putty_home(lab)?;                      // trusts the sshgw host CA
//! let out = clients::run(lab, "plink", clients::putty(lab, &home, "plink")
//!     .args(["-batch", "root@203.0.113.10", "exit 5"]))?;
//! let pins = clients::plain_pins(lab, &[Family::V4.audited()])?; // "203.0.113.10 ssh-ed25519 …"
//! let summary = clients::python(lab, "paramiko", dst, &kh, "jdoe", &key, &dir)?;
//! ```

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::gateway::sshgw_bin;
use crate::process::Finished;
use crate::ssh::KeyPair;
use crate::topology::Lab;

/// Environment variable naming the clients' Python venv (default: `<target>/clients-venv`).
pub const VENV_ENV: &str = "SSHGW_CLIENTS_VENV";
/// Deadline of one client run (login, a command or a small transfer, debug-build daemon).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The Python driver (see the module docs).
const DRIVER: &str = include_str!("drive.py");

/// The venv's Python interpreter; missing means `cargo xtask prereqs` did not run (the
/// tests never skip).
pub fn venv_python() -> Result<PathBuf> {
    let venv = std::env::var_os(VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/clients-venv"));
    let python = venv.join("bin/python");
    if !python.is_file() {
        bail!(
            "the SSH clients' Python venv is missing ({}): run `cargo xtask prereqs` (or \
             `cargo xtask test`), which creates it with paramiko, asyncssh and ansible-pylibssh",
            python.display()
        );
    }
    Ok(python)
}

/// `PROGRAM` in the device namespace with `HOME=home` (clients keep their trust there).
pub fn dev_command(lab: &Lab, home: &Path, program: &str) -> Command {
    let mut cmd = lab.dev.exec_command("env");
    cmd.arg(format!("HOME={}", home.display())).arg(program);
    cmd
}

/// Runs a prepared client command, bounded by [`CLIENT_TIMEOUT`]; any exit code is returned.
pub fn run(lab: &Lab, label: &str, cmd: &mut Command) -> Result<Finished> {
    lab.procs().run(label, cmd, CLIENT_TIMEOUT)
}

/// Fails with the client's output unless it exited with `code`.
pub fn expect_code(out: &Finished, code: i32, what: &str) -> Result<()> {
    if out.status.code() != Some(code) {
        bail!(
            "{what}: expected exit code {code}, got {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            out.stdout.trim_end(),
            out.stderr.trim_end()
        );
    }
    Ok(())
}

/// Runs the shell command line `command` on a terminal of its own (`script`), as a user at
/// a keyboard would, typing the contents of `typed`; returns what the terminal showed.
pub fn on_terminal(lab: &Lab, mut cmd: Command, typed: &Path, label: &str) -> Result<Finished> {
    lab.procs().run_io(
        label,
        &mut cmd,
        CLIENT_TIMEOUT,
        &crate::process::Io {
            stdin: Some(typed.to_owned()),
            stdout: None,
        },
    )
}

/// `sshgw ca known-hosts --plain DEST…` on the lab's state dir: one pin line per destination.
pub fn plain_pins(lab: &Lab, dsts: &[IpAddr]) -> Result<String> {
    lab.sshgw_ca()?;
    let mut cmd = Command::new(sshgw_bin()?);
    cmd.args(["ca", "known-hosts", "--config"])
        .arg(lab.dir().join("sshgw-ca.toml"))
        .arg("--plain")
        .args(dsts.iter().map(IpAddr::to_string));
    let out = lab
        .procs()
        .run_quiet("sshgw ca known-hosts --plain", &mut cmd, CLIENT_TIMEOUT)?
        .check("sshgw ca known-hosts --plain")?;
    Ok(out.stdout)
}

/// The SHA-256 fingerprint (`SHA256:…`) of the first key in an OpenSSH public-key or
/// known_hosts text, with `ssh-keygen -l`.
pub fn fingerprint(lab: &Lab, text: &str) -> Result<String> {
    let file = lab.new_subdir("fingerprint")?.join("keys");
    fs::write(&file, text)?;
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-l", "-E", "sha256", "-f"]).arg(&file);
    let out = lab
        .procs()
        .run_quiet("ssh-keygen -l", &mut cmd, CLIENT_TIMEOUT)?
        .check("ssh-keygen -l")?;
    out.stdout
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("ssh-keygen -l printed no fingerprint: {:?}", out.stdout))
}

/// A fresh HOME for a client: `<lab dir>/home-<label>-N` (mode 0700).
pub fn client_home(lab: &Lab, label: &str) -> Result<PathBuf> {
    let home = lab.new_subdir(&format!("home-{label}"))?;
    set_mode(&home, 0o700)?;
    Ok(home)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// A HOME whose PuTTY trusts the gateway's host CA for every host (PuTTY 0.78's Unix
/// storage: `~/.putty/sshhostcas/NAME` with the CA's base64 key blob).
pub fn putty_home(lab: &Lab) -> Result<PathBuf> {
    let ca = lab.sshgw_ca()?;
    let blob = ca
        .known_hosts_line
        .split_whitespace()
        .nth(3)
        .with_context(|| format!("unexpected known-hosts line {:?}", ca.known_hosts_line))?;
    let home = client_home(lab, "putty")?;
    let dir = home.join(".putty/sshhostcas");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("sshgw"), format!("PublicKey={blob}\nValidity=*\n"))?;
    Ok(home)
}

/// A PuTTY-format copy (`.ppk`) of `key`, made by `puttygen`.
pub fn ppk(lab: &Lab, key: &KeyPair) -> Result<PathBuf> {
    let out = key.private.with_extension("ppk");
    let mut cmd = Command::new("puttygen");
    cmd.arg(&key.private)
        .args(["-O", "private", "-o"])
        .arg(&out);
    lab.procs()
        .run_quiet("puttygen", &mut cmd, CLIENT_TIMEOUT)?
        .check("puttygen")?;
    Ok(out)
}

/// A HOME whose `~/.ssh/known_hosts` holds `pins` (Dropbear, libssh and curl read it).
pub fn pinned_home(lab: &Lab, label: &str, pins: &str) -> Result<PathBuf> {
    let home = client_home(lab, label)?;
    let ssh = home.join(".ssh");
    fs::create_dir_all(&ssh)?;
    set_mode(&ssh, 0o700)?;
    fs::write(ssh.join("known_hosts"), pins)?;
    Ok(home)
}

/// A Dropbear-format copy of `key` (`dropbearconvert openssh dropbear`).
pub fn dropbear_key(lab: &Lab, key: &KeyPair) -> Result<PathBuf> {
    let out = key.private.with_extension("dropbear");
    let mut cmd = Command::new("dropbearconvert");
    cmd.args(["openssh", "dropbear"])
        .arg(&key.private)
        .arg(&out);
    lab.procs()
        .run_quiet("dropbearconvert", &mut cmd, CLIENT_TIMEOUT)?
        .check("dropbearconvert")?;
    Ok(out)
}

/// Runs `drive.py CLIENT` (paramiko, asyncssh, pylibssh) against `host` from the device
/// namespace and returns its JSON summary; a failure is an error with the client's output.
pub fn python(
    lab: &Lab,
    client: &str,
    host: IpAddr,
    known_hosts: &Path,
    user: &str,
    key: &Path,
    workdir: &Path,
) -> Result<Value> {
    let script = lab.dir().join("drive.py");
    if !script.is_file() {
        fs::write(&script, DRIVER)?;
    }
    let home = client_home(lab, client)?;
    let mut cmd = dev_command(lab, &home, &venv_python()?.to_string_lossy());
    cmd.arg(&script)
        .arg(client)
        .arg(host.to_string())
        .arg(known_hosts)
        .arg(user)
        .arg(key)
        .arg(workdir);
    let out = run(lab, &format!("{client} ->{host}"), &mut cmd)?.check(client)?;
    let last = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("{client} printed no JSON summary: {:?}", out.stdout))
}
