//! `cargo xtask deploy --root`: the installed layout, and the install script's live-system
//! steps run against a temp root with fake `systemctl`, `groupadd`, … that record their
//! arguments.
//!
//! Needs the debug sshgw (`cargo build -p sshgw`; `cargo xtask test` builds it first and
//! passes it as `$SSHGW_BIN`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn workspace() -> PathBuf {
    Path::new(MANIFEST_DIR).parent().unwrap().to_path_buf()
}

/// The sshgw to install: `$SSHGW_BIN` (`cargo xtask test` sets the release build), else
/// `<target>/debug/sshgw`. Missing is a failure.
fn sshgw_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SSHGW_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "SSHGW_BIN={} does not exist", bin.display());
        return bin;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace().join(dir),
        _ => workspace().join("target"),
    };
    let bin = target.join("debug").join("sshgw");
    assert!(
        bin.is_file(),
        "{} is missing: these tests install and run the debug sshgw. Build it with \
         `cargo build -p sshgw` (or run `cargo xtask test`, which builds it first), or set \
         SSHGW_BIN",
        bin.display()
    );
    bin
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "xtask-deploy-test.{tag}.{}.{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new().mode(0o755).create(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn deploy_root(root: &Path, binary: &Path) -> Output {
    let out = Command::new(XTASK)
        .args(["deploy", "--root"])
        .arg(root)
        .arg("--binary")
        .arg(binary)
        .output()
        .expect("run xtask");
    assert!(
        out.status.success(),
        "deploy --root failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32),
    Link(PathBuf),
}

/// Every entry below `root`, by relative path.
fn tree(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                out.insert(rel, Entry::Link(fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir(mode));
                walk(root, &path, out);
            } else {
                out.insert(rel, Entry::File(mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn root_install_layout_and_config_is_never_overwritten() {
    let bin = sshgw_bin();
    let tmp = TempDir::new("layout");
    let root = tmp.0.join("root");
    fs::create_dir(&root).unwrap();

    let out = deploy_root(&root, &bin);
    let stdout = text(&out);

    // Exactly these entries; directories made on the way are 0755 (umask 022).
    let unit_link = PathBuf::from("/etc/systemd/system/sshgw.service");
    let expected: BTreeMap<String, Entry> = [
        ("etc", Entry::Dir(0o755)),
        ("etc/sshgw", Entry::Dir(0o750)),
        ("etc/sshgw/sshgw.toml", Entry::File(0o640)),
        ("etc/systemd", Entry::Dir(0o755)),
        ("etc/systemd/system", Entry::Dir(0o755)),
        (
            "etc/systemd/system/multi-user.target.wants",
            Entry::Dir(0o755),
        ),
        (
            "etc/systemd/system/multi-user.target.wants/sshgw.service",
            Entry::Link(unit_link.clone()),
        ),
        ("etc/systemd/system/sshgw.service", Entry::File(0o644)),
        (
            "etc/systemd/system/sshgw-console.service",
            Entry::File(0o644),
        ),
        ("usr", Entry::Dir(0o755)),
        ("usr/local", Entry::Dir(0o755)),
        ("usr/local/bin", Entry::Dir(0o755)),
        ("usr/local/bin/sshgw", Entry::File(0o755)),
    ]
    .into_iter()
    .map(|(p, e)| (p.to_owned(), e))
    .collect();
    assert_eq!(tree(&root), expected, "stdout:\n{stdout}");

    // Contents: the binary as given, the unit byte-identical, the shipped default config.
    assert!(same_contents(&root.join("usr/local/bin/sshgw"), &bin));
    assert_eq!(
        fs::read(root.join("etc/systemd/system/sshgw.service")).unwrap(),
        fs::read(workspace().join("systemd/sshgw.service")).unwrap(),
        "the installed unit differs from systemd/sshgw.service"
    );
    let config = root.join("etc/sshgw/sshgw.toml");
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/sshgw.toml")).unwrap()
    );

    // The offline run says what it skipped and what comes next.
    for needle in [
        "skipped (--offline): creating the system group and user sshgw",
        "groupadd --system sshgw",
        "useradd --system --no-create-home --shell /usr/sbin/nologin --gid sshgw sshgw",
        "skipped (--offline): systemctl daemon-reload",
        "enabled: /etc/systemd/system/multi-user.target.wants/sshgw.service -> /etc/systemd/system/sshgw.service",
        "installed the default /etc/sshgw/sshgw.toml",
        "set [datapath] interfaces",
        "systemctl start sshgw",
        "sshgw ca user-key",
    ] {
        assert!(
            stdout.contains(needle),
            "stdout lacks {needle:?}:\n{stdout}"
        );
    }
    // No etc/group in the tree: ownership root:sshgw cannot be given, and it says so.
    assert!(
        stdout.contains("chown root:sshgw /etc/sshgw /etc/sshgw/sshgw.toml"),
        "{stdout}"
    );

    // Second run: the edited config stays, the rest is replaced, and it says so.
    let edited = "# edited by the operator\nstate_dir = \"/srv/sshgw\"\n";
    fs::write(&config, edited).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let stdout = text(&deploy_root(&root, &bin));
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);
    assert_eq!(
        fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600,
        "the existing config's mode was changed"
    );
    assert!(
        stdout.contains("kept the existing /etc/sshgw/sshgw.toml")
            && stdout.contains("not overwritten"),
        "{stdout}"
    );
    assert!(stdout.contains("replaced /usr/local/bin/sshgw"), "{stdout}");
    let mut expected = expected;
    expected.insert("etc/sshgw/sshgw.toml".into(), Entry::File(0o600));
    assert_eq!(tree(&root), expected, "stdout:\n{stdout}");
}

#[test]
fn root_install_takes_the_group_from_the_tree_when_root() {
    let is_root = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !is_root {
        eprintln!("not root: chown to the tree's sshgw group is covered by the root run only");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let tmp = TempDir::new("group");
    let root = &tmp.0;
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nsshgw:x:987:\n").unwrap();
    let fake = root.join("fake-sshgw");
    fs::write(&fake, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();

    let stdout = text(&deploy_root(root, &fake));
    for path in ["etc/sshgw", "etc/sshgw/sshgw.toml"] {
        let meta = fs::metadata(root.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 987), "{path}");
    }
    assert!(!stdout.contains("skipped: group ownership"), "{stdout}");
}

#[test]
fn default_config_parses_with_the_daemon() {
    let bin = sshgw_bin();
    let tmp = TempDir::new("config");
    let config = tmp.0.join("sshgw.toml");
    fs::copy(Path::new(MANIFEST_DIR).join("deploy/sshgw.toml"), &config).unwrap();

    // `status` loads the config and, with no daemon, reports the (absent) pinned state.
    let out = Command::new(&bin)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "sshgw status rejected the default config ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"daemon\":"), "{stdout}");

    // The check is real: an unknown key fails the same command with the config error.
    let bad = tmp.0.join("bad.toml");
    fs::write(
        &bad,
        format!("bogus_key = 1\n{}", fs::read_to_string(&config).unwrap()),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["status", "--json", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_key"));
}

/// A fake command that appends `name args…` to `log`, then runs `body`.
fn fake(bin_dir: &Path, name: &str, log: &Path, body: &str) {
    let path = bin_dir.join(name);
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> '{}'\n{body}\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A temp "router": fake system commands (recording their arguments) and a root below which
/// install.sh installs.
struct FakeSystem {
    tmp: TempDir,
    /// Fakes seen by the (remote) user.
    bin_dir: PathBuf,
    /// Put first on PATH by the fake `sudo`.
    root_bin_dir: PathBuf,
    root: PathBuf,
    /// `$TMPDIR` for the fake remote side (where `mktemp -d` stages).
    remote_tmp: PathBuf,
    log: PathBuf,
    binary: PathBuf,
}

impl FakeSystem {
    fn new(tag: &str) -> Self {
        let tmp = TempDir::new(tag);
        let sys = FakeSystem {
            bin_dir: tmp.0.join("bin"),
            root_bin_dir: tmp.0.join("root-bin"),
            root: tmp.0.join("root"),
            remote_tmp: tmp.0.join("remote-tmp"),
            log: tmp.0.join("calls.log"),
            binary: tmp.0.join("sshgw-fake"),
            tmp,
        };
        for dir in [&sys.bin_dir, &sys.root_bin_dir, &sys.root, &sys.remote_tmp] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(&sys.binary, "#!/bin/sh\necho fake sshgw\n").unwrap();
        fs::set_permissions(&sys.binary, fs::Permissions::from_mode(0o755)).unwrap();
        sys
    }

    /// Fakes for the live-system commands; the user is `uid`, `getent` answers
    /// `group_exists`, `systemctl enable` runs `enable_body`.
    fn install_fakes(&self, uid: u32, group_exists: bool, enable_body: &str) {
        let log = &self.log;
        fake(&self.bin_dir, "id", log, &format!("echo {uid}"));
        fake(&self.root_bin_dir, "id", log, "echo 0");
        let getent = if group_exists { "exit 0" } else { "exit 2" };
        fake(&self.bin_dir, "getent", log, getent);
        for name in ["groupadd", "useradd", "chown"] {
            fake(&self.bin_dir, name, log, "exit 0");
        }
        // `systemctl is-active` says inactive (3).
        fake(
            &self.bin_dir,
            "systemctl",
            log,
            &format!("case $1 in is-active) exit 3 ;; enable) {enable_body} ;; esac\nexit 0"),
        );
        // sudo -n: runs the command with root's fakes first on PATH; no -n, no sudo.
        fake(
            &self.bin_dir,
            "sudo",
            log,
            &format!(
                "[ \"$1\" = -n ] || {{ echo 'sudo: a password is required' >&2; exit 1; }}\n\
                 shift\nPATH='{}':$PATH exec \"$@\"",
                self.root_bin_dir.display()
            ),
        );
    }

    /// Fake OpenSSH: `ssh [-o OPT]... -- HOST CMD` runs CMD here with `sh -c`, with
    /// `--prefix ROOT` added to the install.sh call; `scp [-o OPT]... -q -- FILES... HOST:DIR/`
    /// copies (following symlinks, like scp).
    fn install_fake_ssh(&self) {
        let log = &self.log;
        let skip_opts = "while [ $# -gt 0 ]; do case $1 in -o) shift 2 ;; -q) shift ;; --) shift; break ;; *) break ;; esac; done";
        fake(
            &self.bin_dir,
            "ssh",
            log,
            &format!(
                "{skip_opts}\nshift\n\
                 cmd=$(printf '%s' \"$*\" | sed 's#/install\\.sh #/install.sh --prefix {} #')\n\
                 TMPDIR='{}' exec sh -c \"$cmd\"",
                self.root.display(),
                self.remote_tmp.display()
            ),
        );
        fake(
            &self.bin_dir,
            "scp",
            log,
            &format!(
                "{skip_opts}\neval \"dest=\\${{$#}}\"\ndir=${{dest#*:}}\n\
                 while [ $# -gt 1 ]; do cp -L \"$1\" \"$dir\" || exit 1; shift; done"
            ),
        );
    }

    fn path(&self) -> std::ffi::OsString {
        std::env::join_paths(
            std::iter::once(self.bin_dir.clone()).chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
        )
        .unwrap()
    }

    /// Runs the same install.sh `deploy --host` runs, live mode, below `root`.
    fn run_script(&self) -> Output {
        Command::new("sh")
            .arg(Path::new(MANIFEST_DIR).join("deploy/install.sh"))
            .arg("--binary")
            .arg(&self.binary)
            .arg("--unit")
            .arg(workspace().join("systemd/sshgw.service"))
            .arg("--config")
            .arg(Path::new(MANIFEST_DIR).join("deploy/sshgw.toml"))
            .arg("--prefix")
            .arg(&self.root)
            .env("PATH", self.path())
            .output()
            .unwrap()
    }

    /// `cargo xtask deploy --host admin@router --ssh-opt Port=2222 --binary BINARY`.
    fn deploy_host(&self, binary: &Path) -> Output {
        Command::new(XTASK)
            .args([
                "deploy",
                "--host",
                "admin@router",
                "--ssh-opt",
                "Port=2222",
                "--binary",
            ])
            .arg(binary)
            .env("PATH", self.path())
            .output()
            .unwrap()
    }

    fn take_calls(&self) -> Vec<String> {
        let calls = fs::read_to_string(&self.log).unwrap_or_default();
        let _ = fs::remove_file(&self.log);
        calls
            .lines()
            .filter(|l| !l.starts_with("id "))
            .map(|l| {
                l.replace(&*self.root.to_string_lossy(), "<root>")
                    .replace(&*self.tmp.0.to_string_lossy(), "<tmp>")
            })
            .collect()
    }

    fn staging_dirs_left(&self) -> usize {
        fs::read_dir(&self.remote_tmp).unwrap().count()
    }
}

#[test]
fn install_script_live_steps_with_fake_system_commands() {
    let sys = FakeSystem::new("live");
    sys.install_fakes(0, false, "exit 0");
    let out = sys.run_script();
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "install.sh failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sys.take_calls(),
        [
            "getent group sshgw",
            "groupadd --system sshgw",
            "getent passwd sshgw",
            "useradd --system --no-create-home --shell /usr/sbin/nologin --gid sshgw sshgw",
            "chown root:sshgw <root>/etc/sshgw",
            "chown root:sshgw <root>/etc/sshgw/sshgw.toml",
            "systemctl daemon-reload",
            "systemctl enable sshgw.service",
            "systemctl is-active --quiet sshgw.service",
        ]
    );
    // Live, `systemctl enable` makes the wants link; the script does not.
    assert!(
        !sys.root
            .join("etc/systemd/system/multi-user.target.wants")
            .exists()
    );
    assert!(stdout.contains("systemctl start sshgw"), "{stdout}");

    // Second run: group and user exist, the config is kept and not touched; the service
    // is running, so the next step is a restart (which the script leaves to the operator).
    sys.install_fakes(0, true, "exit 0");
    fake(&sys.bin_dir, "systemctl", &sys.log, "exit 0");
    let out = sys.run_script();
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        sys.take_calls(),
        [
            "getent group sshgw",
            "getent passwd sshgw",
            "chown root:sshgw <root>/etc/sshgw",
            "systemctl daemon-reload",
            "systemctl enable sshgw.service",
            "systemctl is-active --quiet sshgw.service",
        ]
    );
    assert!(stdout.contains("not overwritten"), "{stdout}");
    assert!(stdout.contains("2. systemctl restart sshgw"), "{stdout}");
}

#[test]
fn install_script_refuses_to_run_live_without_root() {
    let sys = FakeSystem::new("nonroot");
    sys.install_fakes(1000, false, "exit 0");
    let out = sys.run_script();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must run as root (running as uid 1000)")
    );
    assert!(sys.take_calls().is_empty());
    assert!(
        fs::read_dir(&sys.root).unwrap().next().is_none(),
        "it installed something"
    );
}

#[test]
fn deploy_host_over_fake_ssh_with_sudo() {
    let sys = FakeSystem::new("host");
    sys.install_fakes(1000, false, "exit 0");
    sys.install_fake_ssh();
    let out = sys.deploy_host(&sys.binary);
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "deploy --host failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("installing with sudo -n"), "{stdout}");
    assert!(
        stdout.contains("installed the default /etc/sshgw/sshgw.toml"),
        "{stdout}"
    );

    let calls = sys.take_calls();
    let ssh: Vec<&String> = calls.iter().filter(|c| c.starts_with("ssh ")).collect();
    assert_eq!(ssh.len(), 3, "probe, mktemp, install: {calls:#?}");
    for call in &ssh {
        assert!(
            call.starts_with("ssh -o Port=2222 -- admin@router "),
            "{call}"
        );
    }
    assert!(ssh[0].contains("id -u && uname -m") && ssh[0].contains("sudo -n true"));
    assert!(ssh[1].contains("mktemp -d"));
    assert!(ssh[2].contains("sudo -n sh ") && ssh[2].contains("/install.sh --binary "));
    let scp: Vec<&String> = calls.iter().filter(|c| c.starts_with("scp ")).collect();
    assert_eq!(scp.len(), 1, "{calls:#?}");
    assert!(scp[0].starts_with("scp -o Port=2222 -q -- "), "{}", scp[0]);
    assert!(
        scp[0].contains("admin@router:<tmp>/remote-tmp/sshgw-deploy."),
        "{}",
        scp[0]
    );
    // sudo for the probe and for the install, then the live steps as root.
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("sudo -n ")).count(),
        2
    );
    let live: Vec<&str> = calls
        .iter()
        .filter(|c| !c.starts_with("ssh ") && !c.starts_with("scp ") && !c.starts_with("sudo "))
        .map(String::as_str)
        .collect();
    assert_eq!(
        live,
        [
            "getent group sshgw",
            "groupadd --system sshgw",
            "getent passwd sshgw",
            "useradd --system --no-create-home --shell /usr/sbin/nologin --gid sshgw sshgw",
            "chown root:sshgw <root>/etc/sshgw",
            "chown root:sshgw <root>/etc/sshgw/sshgw.toml",
            "systemctl daemon-reload",
            "systemctl enable sshgw.service",
            "systemctl is-active --quiet sshgw.service",
            "systemctl is-active --quiet sshgw-console.service",
        ]
    );

    // What was copied is what got installed, under the fixed names.
    assert_eq!(
        fs::read(sys.root.join("usr/local/bin/sshgw")).unwrap(),
        fs::read(&sys.binary).unwrap()
    );
    assert_eq!(
        fs::read(sys.root.join("etc/systemd/system/sshgw.service")).unwrap(),
        fs::read(workspace().join("systemd/sshgw.service")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(sys.root.join("etc/sshgw/sshgw.toml")).unwrap(),
        fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/sshgw.toml")).unwrap()
    );
    assert_eq!(
        sys.staging_dirs_left(),
        0,
        "the remote staging dir was not removed"
    );
}

#[test]
fn deploy_host_failure_carries_the_remote_stderr_and_cleans_up() {
    let sys = FakeSystem::new("hostfail");
    sys.install_fakes(0, true, "echo 'Failed to enable unit: boom' >&2; exit 1");
    sys.install_fake_ssh();
    let out = sys.deploy_host(&sys.binary);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("error: the install on admin@router failed (exit status: 1):")
            && stderr.contains("Failed to enable unit: boom"),
        "{stderr}"
    );
    assert!(
        !sys.take_calls().iter().any(|c| c.starts_with("sudo")),
        "root needs no sudo"
    );
    assert_eq!(
        sys.staging_dirs_left(),
        0,
        "the remote staging dir was not removed"
    );
}

#[test]
fn deploy_host_refuses_a_binary_for_another_architecture() {
    let other = if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    let sys = FakeSystem::new("arch");
    sys.install_fakes(0, true, "exit 0");
    sys.install_fake_ssh();
    fake(&sys.bin_dir, "uname", &sys.log, &format!("echo {other}"));
    // Any ELF executable of the host's architecture will do: xtask itself.
    let out = sys.deploy_host(Path::new(XTASK));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    if matches!(std::env::consts::ARCH, "x86_64" | "aarch64") {
        assert!(
            stderr.contains(&format!(
                "the sshgw binary is for {} but admin@router is {other}",
                std::env::consts::ARCH
            )),
            "{stderr}"
        );
    }
    let calls = sys.take_calls();
    assert!(!calls.iter().any(|c| c.starts_with("scp")), "{calls:#?}");
    assert_eq!(sys.staging_dirs_left(), 0);
}

#[test]
fn deploy_host_without_root_or_sudo_fails_before_copying() {
    let sys = FakeSystem::new("nosudo");
    sys.install_fakes(1000, false, "exit 0");
    sys.install_fake_ssh();
    // sudo that wants a password.
    fake(
        &sys.bin_dir,
        "sudo",
        &sys.log,
        "echo 'sudo: a password is required' >&2; exit 1",
    );
    let out = sys.deploy_host(&sys.binary);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the remote user (uid 1000) is not root and `sudo -n` does not work: sudo: a password is required"),
        "{stderr}"
    );
    assert!(!sys.take_calls().iter().any(|c| c.starts_with("scp")));
}

#[test]
fn deploy_root_rejects_a_missing_directory_and_binary() {
    let tmp = TempDir::new("errors");
    let out = Command::new(XTASK)
        .args(["deploy", "--root"])
        .arg(tmp.0.join("nope"))
        .arg("--binary")
        .arg(XTASK)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such directory"));

    let out = Command::new(XTASK)
        .args(["deploy", "--root"])
        .arg(&tmp.0)
        .arg("--binary")
        .arg(tmp.0.join("missing-sshgw"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an executable file"));
    assert!(fs::read_dir(&tmp.0).unwrap().next().is_none());
}
