//! `cargo xtask prereqs`: checks every build/test prerequisite and installs only what is missing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// Debian packages needed to build (bpf-linker's LLVM) and to run the netns tests.
pub const APT_PACKAGES: &[&str] = &[
    "openssh-server",
    "openssh-client",
    "iproute2",
    "tcpdump",
    "bpftool",
    "rsync",
    // curl's scp:// (libssh2) and mosh: clients the file-audit tests drive.
    "curl",
    "mosh",
    "asciinema",
    "systemd",
    // The real-systemd test: builds a Debian rootfs and boots it (systemd-container, below).
    "debootstrap",
    // `sshgw doctor` reads the firewall; its tests set rules with nft.
    "nftables",
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages of the WireGuard lab (tests/src/wireguard.rs): `wg`, `wg-quick`, `nft`.
pub const WIREGUARD_APT_PACKAGES: &[&str] = &["wireguard-tools", "nftables"];
/// Cloudflare's userspace WireGuard, for kernels without the WireGuard module (as in CI).
const BORINGTUN_CRATE: &str = "boringtun-cli";
const BORINGTUN_VERSION: &str = "0.7.1";
/// Provides systemd-nspawn; must be the same version as the host's systemd package (it
/// depends on that exact libsystemd-shared), so it is installed pinned to it.
const NSPAWN_PACKAGE: &str = "systemd-container";

/// LLVM major that bpf-linker is built against; nightly rustc must use the same one.
pub const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_FEATURE: &str = "llvm-22";
const NIGHTLY: &str = "nightly";

/// What later steps need to know about the (now complete) toolchain.
#[derive(Debug, Clone)]
pub struct Prereqs {
    /// Absolute path of the bpf-linker executable.
    pub bpf_linker: PathBuf,
}

fn log(msg: &str) {
    println!("[prereqs] {msg}");
}

/// Checks all prerequisites, installs the missing ones, and reports where bpf-linker lives.
pub fn ensure() -> Result<Prereqs> {
    check_nightly_llvm()?;

    let mut missing_apt = Vec::new();
    for &pkg in APT_PACKAGES.iter().chain(WIREGUARD_APT_PACKAGES) {
        if deb_installed(pkg)? {
            log(&format!("ok: {pkg}"));
        } else {
            log(&format!("missing: {pkg}"));
            missing_apt.push(pkg);
        }
    }

    let has_rust_src = rust_src_installed()?;
    if has_rust_src {
        log("ok: rust-src (nightly)");
    } else {
        log("missing: rust-src (nightly)");
    }

    let bpf_linker = find_bpf_linker();
    match &bpf_linker {
        Some(path) => log(&format!("ok: bpf-linker ({})", path.display())),
        None => log("missing: bpf-linker"),
    }

    if !missing_apt.is_empty() {
        if !util::is_root()? {
            let mut missing: Vec<String> = missing_apt.iter().map(ToString::to_string).collect();
            if !has_rust_src {
                missing.push("rust-src (nightly)".into());
            }
            if bpf_linker.is_none() {
                missing.push("bpf-linker".into());
            }
            bail!(
                "missing prerequisites: {}. Installing Debian packages needs root; run \
                 `apt-get install -y --no-install-recommends {}` as root (or rerun this command \
                 as root)",
                missing.join(", "),
                missing_apt.join(" "),
            );
        }
        install_apt(&missing_apt)?;
    }
    ensure_nspawn()?;

    if !has_rust_src {
        log("installing rust-src for the nightly toolchain…");
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }

    let bpf_linker = match bpf_linker {
        Some(path) => path,
        None => install_bpf_linker()?,
    };
    ensure_boringtun()?;

    log("all prerequisites present");
    Ok(Prereqs { bpf_linker })
}

/// `rustup run nightly rustc -vV` must report LLVM 22, the version bpf-linker links against.
fn check_nightly_llvm() -> Result<()> {
    let verbose = util::output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))
        .context(
            "the nightly toolchain is not usable (it builds the eBPF program); \
             install it with `rustup toolchain install nightly --component rust-src`",
        )?;
    let (major, full) = parse_llvm_version(&verbose)
        .context("`rustup run nightly rustc -vV` did not report an `LLVM version:` line")?;
    if major != LLVM_MAJOR {
        bail!(
            "nightly rustc uses LLVM {full} but bpf-linker is built against LLVM {LLVM_MAJOR} \
             (llvm-{LLVM_MAJOR}-dev); their LLVM major versions must match. Install a nightly \
             whose `rustc -vV` reports LLVM {LLVM_MAJOR}, or rebuild bpf-linker against LLVM \
             {major} and update xtask/src/prereqs.rs"
        );
    }
    log(&format!(
        "ok: nightly rustc uses LLVM {full} (matches bpf-linker's LLVM {LLVM_MAJOR})"
    ));
    Ok(())
}

/// Parses `LLVM version: 22.1.4` out of `rustc -vV` output into `(22, "22.1.4")`.
fn parse_llvm_version(rustc_vv: &str) -> Option<(u32, String)> {
    let full = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))?
        .trim();
    let major = full.split('.').next()?.parse().ok()?;
    Some((major, full.to_owned()))
}

fn deb_installed(pkg: &str) -> Result<bool> {
    // dpkg-query exits non-zero for packages it has never heard of: that just means "missing".
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("could not run `dpkg-query` (prereqs supports Debian-based systems only)")?;
    Ok(out.status.success() && status_is_installed(&String::from_utf8_lossy(&out.stdout)))
}

fn status_is_installed(dpkg_status: &str) -> bool {
    dpkg_status.contains("install ok installed")
}

fn install_apt(packages: &[&str]) -> Result<()> {
    log(&format!(
        "installing Debian packages: {} (apt-get)…",
        packages.join(", ")
    ));
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for &pkg in packages {
        if !deb_installed(pkg)? {
            bail!("`apt-get install` succeeded but {pkg} is still not installed");
        }
    }
    Ok(())
}

/// The installed version of `pkg`, if it is installed.
fn deb_version(pkg: &str) -> Result<Option<String>> {
    if !deb_installed(pkg)? {
        return Ok(None);
    }
    let v = util::output(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]))?;
    Ok(Some(v.trim().to_owned()))
}

/// systemd-container at the host systemd's version. If apt no longer offers that version,
/// systemd and systemd-container are upgraded together to the same candidate.
fn ensure_nspawn() -> Result<()> {
    let systemd = deb_version("systemd")?.context("the systemd package is not installed")?;
    if deb_version(NSPAWN_PACKAGE)?.as_deref() == Some(systemd.as_str()) {
        log(&format!(
            "ok: {NSPAWN_PACKAGE} ({systemd}, same as systemd)"
        ));
        return Ok(());
    }
    if !util::is_root()? {
        bail!(
            "missing prerequisite: {NSPAWN_PACKAGE}={systemd}; run `apt-get install -y \
             --no-install-recommends {NSPAWN_PACKAGE}={systemd}` as root"
        );
    }
    let madison = || {
        util::output(Command::new("apt-cache").args(["madison", NSPAWN_PACKAGE]))
            .unwrap_or_default()
    };
    let mut offered = madison();
    if !madison_has(&offered, &systemd) {
        // apt's lists may be old or absent on a fresh machine.
        util::run(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        offered = madison();
    }
    let pinned = format!("{NSPAWN_PACKAGE}={systemd}");
    let packages: Vec<&str> = if madison_has(&offered, &systemd) {
        log(&format!("installing {pinned} (the host systemd's version)"));
        vec![&pinned]
    } else {
        log(&format!(
            "apt no longer offers {NSPAWN_PACKAGE} {systemd}: upgrading systemd and \
             {NSPAWN_PACKAGE} together"
        ));
        vec!["systemd", NSPAWN_PACKAGE]
    };
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let (systemd, nspawn) = (deb_version("systemd")?, deb_version(NSPAWN_PACKAGE)?);
    if nspawn.is_none() || nspawn != systemd {
        bail!("{NSPAWN_PACKAGE} {nspawn:?} does not match systemd {systemd:?} after apt-get");
    }
    Ok(())
}

/// Whether `apt-cache madison` output lists `version`.
fn madison_has(madison: &str, version: &str) -> bool {
    madison
        .lines()
        .any(|l| l.split('|').nth(1).is_some_and(|v| v.trim() == version))
}

fn rust_src_installed() -> Result<bool> {
    let list = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    Ok(list.lines().any(|line| line.trim() == "rust-src"))
}

/// bpf-linker on `PATH`, or in cargo's bin directory (where `cargo install` puts it).
pub fn find_bpf_linker() -> Option<PathBuf> {
    let extra: Vec<PathBuf> = util::cargo_bin_dir().into_iter().collect();
    util::find_executable("bpf-linker", &extra)
}

fn install_bpf_linker() -> Result<PathBuf> {
    log("installing bpf-linker (cargo install, ~8 min)…");
    // Output is streamed (inherited stdio) so the long build shows its progress.
    util::run(
        util::host_cargo()
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                BPF_LINKER_FEATURE,
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )?;
    let path = find_bpf_linker().context(
        "`cargo install bpf-linker` succeeded but bpf-linker is not on PATH or in ~/.cargo/bin",
    )?;
    log(&format!("ok: bpf-linker ({})", path.display()));
    Ok(path)
}

/// boringtun-cli on `PATH`, or in cargo's bin directory (where `cargo install` puts it).
pub fn find_boringtun() -> Option<PathBuf> {
    let extra: Vec<PathBuf> = util::cargo_bin_dir().into_iter().collect();
    util::find_executable(BORINGTUN_CRATE, &extra)
}

fn ensure_boringtun() -> Result<()> {
    if let Some(path) = find_boringtun() {
        log(&format!("ok: {BORINGTUN_CRATE} ({})", path.display()));
        return Ok(());
    }
    log(&format!(
        "missing: {BORINGTUN_CRATE}; installing {BORINGTUN_VERSION} (cargo install, ~2 min)…"
    ));
    util::run(util::host_cargo().args([
        "install",
        BORINGTUN_CRATE,
        "--locked",
        "--version",
        BORINGTUN_VERSION,
    ]))?;
    let path = find_boringtun().with_context(|| {
        format!(
            "`cargo install {BORINGTUN_CRATE}` succeeded but it is not on PATH or in ~/.cargo/bin"
        )
    })?;
    log(&format!("ok: {BORINGTUN_CRATE} ({})", path.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_version_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                  host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_version(vv), Some((22, "22.1.4".to_owned())));
        assert_eq!(parse_llvm_version("rustc 1.0\n"), None);
    }

    #[test]
    fn madison_versions() {
        let m = " systemd-container | 252.39-1~deb12u2 | http://mirror.invalid/debian bookworm/main amd64 Packages\n\
                 systemd-container | 252.38-1~deb12u1 | http://mirror.invalid/debian-security bookworm-security/main amd64 Packages\n";
        assert!(madison_has(m, "252.38-1~deb12u1"));
        assert!(madison_has(m, "252.39-1~deb12u2"));
        assert!(!madison_has(m, "252.38"));
    }

    #[test]
    fn dpkg_status() {
        assert!(status_is_installed("install ok installed"));
        assert!(!status_is_installed("deinstall ok config-files"));
        assert!(!status_is_installed("unknown ok not-installed"));
        assert!(!status_is_installed(""));
    }
}
