//! `sshgw-lab`: the lab behind `cargo xtask lab` (run as root; xtask builds and runs it).
//!
//! ```text
//! sshgw-lab up [--ci] [--wireguard] [--name NAME] [--state-dir DIR]
//! sshgw-lab down [--name NAME] [--state-dir DIR]
//! ```
//!
//! `up` builds the device -> router -> server lab of the harness (`sshgw_tests::topology`),
//! starts sshd in the server namespace trusting the sshgw user CA, starts sshgw in the router
//! namespace with the demo device table (`jdoe@example.com` on `laptop-jdoe`, 100.96.0.7 /
//! fd00:96::7) and a policy that audits 203.0.113.10 / 2001:db8:1::10 with command logging
//! (to a recording key generated with `sshgw recording keygen`), then logs in from the device
//! with the real `ssh` on a pseudo-terminal, types a few commands, prints the session log
//! and replays the decrypted recording. The replay must show the typed commands' output and
//! the session log must hold the session, or `up` fails.
//!
//! * Interactive (default): fixed names, so the printed commands can be copied: namespaces
//!   `sgwlab-dev|rtr|srv`, state dir `/var/tmp/sshgw-lab`. A lab that is still up there is
//!   torn down first. sshd and sshgw are spawned detached (no parent-death signal, own
//!   session: see `sshgw_tests::persist`), the lab is recorded in
//!   `/var/tmp/sshgw-lab/lab-state.json` and stays up; `down` removes it.
//! * `--wireguard`: the device reaches the router through a real WireGuard tunnel (boringtun
//!   and `wg-quick`, set up as the worked example in docs/deployment.md says, see
//!   `sshgw_tests::wireguard_lab`): the device table holds its tunnel address 100.100.0.7
//!   pinned to `wg0`, and sshgw attaches to `wg0`.
//! * `--ci`: unique names (`sgw-<pid>-<n>`, swept like any harness lab if the run is killed),
//!   a fresh state dir under the temp dir, processes that die with this one; after the checks
//!   the lab is torn down through the same state file `down` uses, and nothing may be left.
//!   Exits non-zero on any failure.
//!
//! `down` stops the recorded processes by PID, removes pins, namespaces and directories; it
//! is safe to run twice.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use sshgw_tests::gateway::{Gateway, GatewayConfig, default_devices, sshgw_bin};
use sshgw_tests::persist::{self, LabState};
use sshgw_tests::s3::{self, S3Server};
use sshgw_tests::topology::require_root;
use sshgw_tests::wait::poll_until;
use sshgw_tests::wireguard_lab::{WireGuardLab, wireguard_gateway_config};
use sshgw_tests::{Family, Lab, PtySession, Sshd};

const USAGE: &str = "usage: sshgw-lab up [--ci] [--wireguard] [--name NAME] [--state-dir DIR]
       sshgw-lab down [--name NAME] [--state-dir DIR]";

/// The interactive lab's fixed name (namespaces `sgwlab-dev|rtr|srv`, pins `/sys/fs/bpf/sgwlab`).
const DEFAULT_NAME: &str = "sgwlab";
/// The interactive lab's fixed state dir.
const DEFAULT_STATE_DIR: &str = "/var/tmp/sshgw-lab";
/// Unix time in milliseconds at which `cargo xtask lab` started: the time to the replay is
/// reported from then on (default: from this binary's start).
const T0_ENV: &str = "SSHGW_LAB_T0_MS";

const V4: Family = Family::V4;
const EMAIL: &str = "jdoe@example.com";
const DEVICE_ID: &str = "laptop-jdoe";
const LOGIN: &str = "jdoe";
const POLICY_ID: &str = "audit-lab";
const AUDITED_DESTINATION: &str = "203.0.113.10:22";

/// What the scripted session types, each with a piece of its output to wait for (the echo of
/// the typed line never contains it).
const SCRIPT: &[(&str, &str)] = &[
    ("whoami", "\r\njdoe\r\n"),
    ("uname -a", "\r\nLinux "),
    ("echo $SSH_CONNECTION", "\r\n203.0.113.1 "),
    (
        "echo hello from the device",
        "\r\nhello from the device\r\n",
    ),
];
/// What the replay must show: the output of the typed commands.
const REPLAY_MUST_SHOW: &[&str] = &[
    "\r\njdoe\r\n",
    "\r\nLinux ",
    "\r\nhello from the device\r\n",
];
/// The lab users' shell is /bin/sh (dash): prompt `$ `.
const PROMPT: &str = "$ ";
/// Delay between typed characters (the replay shows the typing).
const KEY_DELAY: Duration = Duration::from_millis(30);
/// Login (TCP, SSH through the relay, certificate login upstream, shell start).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Output of one typed command.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(15);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Until the closed session (and its finished recording) shows in the session log.
const SESSION_LOG_TIMEOUT: Duration = Duration::from_secs(20);
const REPLAY_SPEED: &str = "4";
const REPLAY_IDLE_LIMIT: &str = "1";
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Up,
    Down,
}

#[derive(Debug)]
struct Opts {
    action: Action,
    ci: bool,
    wireguard: bool,
    name: Option<String>,
    state_dir: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Opts> {
    let action = match args.next().as_deref() {
        Some("up") => Action::Up,
        Some("down") => Action::Down,
        Some("-h" | "--help") => bail!("sshgw-lab: the lab behind `cargo xtask lab`"),
        Some(other) => bail!("unknown command {other:?}"),
        None => bail!("missing command"),
    };
    let mut opts = Opts {
        action,
        ci: false,
        wireguard: false,
        name: None,
        state_dir: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| anyhow!("{what} needs a value"));
        match arg.as_str() {
            "--ci" if action == Action::Up => opts.ci = true,
            "--wireguard" if action == Action::Up => opts.wireguard = true,
            "--name" => opts.name = Some(value("--name")?),
            "--state-dir" => opts.state_dir = Some(PathBuf::from(value("--state-dir")?)),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if let Some(name) = &opts.name {
        ensure!(
            !name.is_empty()
                && name.len() <= 10
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "--name must be 1-10 characters of a-z, 0-9 and '-' (it prefixes namespace names)"
        );
    }
    Ok(opts)
}

fn main() -> ExitCode {
    // Die quietly on a closed stdout (`| head`), like other command-line tools, instead of
    // panicking half-way: whatever was started is in the state file for `down`.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    #[allow(unsafe_code)] // reason: SIGPIPE's disposition is set through libc::signal
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL)
    };
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(err) => {
            eprintln!("sshgw-lab: {err:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match opts.action {
        Action::Up => up(&opts),
        Action::Down => down(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nsshgw-lab: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Numbered steps with their durations.
struct Steps {
    total: usize,
    done: Vec<(String, Duration, bool)>,
}

impl Steps {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: Vec::new(),
        }
    }

    fn run<T>(&mut self, title: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("\n--> [{}/{}] {title}", self.done.len() + 1, self.total);
        let start = Instant::now();
        let result = f();
        let elapsed = start.elapsed();
        match &result {
            Ok(_) => println!("    done in {}", secs(elapsed)),
            Err(_) => println!("    FAILED after {}", secs(elapsed)),
        }
        self.done.push((title.to_owned(), elapsed, result.is_ok()));
        result
    }

    fn summary(&self) {
        println!("\n--> lab steps");
        for (i, (title, elapsed, ok)) in self.done.iter().enumerate() {
            let label = if *ok { "ok" } else { "FAILED" };
            let short: String = title
                .split(':')
                .next()
                .unwrap_or(title)
                .chars()
                .take(44)
                .collect();
            println!(
                "    {label:<6} [{}/{}] {short:<44} {:>7}",
                i + 1,
                self.total,
                secs(*elapsed)
            );
        }
    }
}

/// How long before this binary started `cargo xtask lab` did (from [`T0_ENV`]).
fn head_start() -> Duration {
    let Some(t0) = std::env::var(T0_ENV)
        .ok()
        .and_then(|v| v.parse::<u128>().ok())
    else {
        return Duration::ZERO;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Duration::from_millis(now.saturating_sub(t0) as u64)
}

/// Indents every line of `text` for the step output.
fn indented(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

// ------------------------------------------------------------------------------------------
// up
// ------------------------------------------------------------------------------------------

/// What the interactive instructions need.
struct Demo {
    dev_ns: String,
    rtr_ns: String,
    srv_ns: String,
    sshgw: PathBuf,
    config: PathBuf,
    key: PathBuf,
    known_hosts: PathBuf,
    recordings: PathBuf,
    daemon_log: PathBuf,
    session_id: String,
    recording: PathBuf,
    /// The console's address with its access token (`…/#token=…`).
    console_url: String,
    /// PIDs of the WireGuard mount-namespace holders of the router and the device.
    wireguard: Option<(u32, u32)>,
}

fn up(opts: &Opts) -> Result<()> {
    require_root()?;
    let started = Instant::now();
    let head_start = head_start();
    let ci = opts.ci;
    let name = opts.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned());
    let mut steps = Steps::new(if ci { 9 } else { 8 } + usize::from(opts.wireguard));

    // 1. The state dir (and, interactively, away with a lab that is still up).
    let mut state = steps.run(
        if ci {
            "prepare a fresh state dir"
        } else {
            "tear down a lab that is still up, prepare the state dir"
        },
        || {
            let state_dir = match (&opts.state_dir, ci) {
                (Some(dir), _) => dir.clone(),
                (None, false) => PathBuf::from(DEFAULT_STATE_DIR),
                (None, true) => tempfile::Builder::new()
                    .prefix("sshgw-lab-ci-")
                    .tempdir()
                    .context("creating the state dir")?
                    .keep(),
            };
            if !ci {
                if persist::is_up(&state_dir, Some(&name)) {
                    println!(
                        "    a lab is still up ({}): tearing it down first",
                        state_dir.display()
                    );
                    persist::down(&state_dir, Some(&name), &mut |line| {
                        println!("      {line}")
                    })?;
                } else {
                    println!("    no lab is up");
                }
            }
            // A CI lab gets its unique name when it is created (record_lab).
            let (label, mode) = if ci {
                ("ci", "ci")
            } else {
                (name.as_str(), "interactive")
            };
            let state = LabState::create(&state_dir, label, mode)?;
            println!("    state dir: {}", state_dir.display());
            Ok(state)
        },
    )?;
    let state_dir = state.state_dir.clone();

    let result = build_and_demo(&mut steps, &mut state, opts, &name, started, head_start);

    if ci {
        // 7. Tear down exactly as `down` does, then check that nothing is left.
        let teardown = steps.run(
            "tear down: as `down` does, then check that nothing is left",
            || {
                persist::down(&state_dir, None, &mut |line| println!("    {line}"))?;
                let left = persist::leftovers(&state);
                ensure!(left.is_empty(), "left behind after the teardown: {left:?}");
                println!("    nothing left");
                Ok(())
            },
        );
        steps.summary();
        result?;
        teardown?;
        println!(
            "\nsshgw-lab: CI run passed in {} (lab {}, state dir {})",
            secs(started.elapsed()),
            state.name,
            state_dir.display()
        );
        return Ok(());
    }

    let demo = match result {
        Ok(demo) => demo,
        Err(err) => {
            steps.summary();
            println!("\n--> the lab failed; removing what it created");
            if let Err(down_err) =
                persist::down(&state_dir, Some(&name), &mut |line| println!("    {line}"))
            {
                eprintln!("warning: {down_err:#}");
            }
            return Err(err);
        }
    };
    state.mark_complete()?;
    steps.summary();
    let text = instructions(&demo, &state_dir);
    let file = state_dir.join("try-it.txt");
    fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
    println!("\n{text}");
    println!("(These commands are also in {}.)", file.display());
    Ok(())
}

/// Steps 2-6. The lab is detached (left up for `down`) when they succeed; on failure it is
/// dropped, which kills its processes and removes its namespaces, pins and temp dir.
fn build_and_demo(
    steps: &mut Steps,
    state: &mut LabState,
    opts: &Opts,
    name: &str,
    started: Instant,
    head_start: Duration,
) -> Result<Demo> {
    let ci = opts.ci;
    let state_dir = state.state_dir.clone();
    let (lab, sshd) = steps.run(
        "create the lab: device, router and server namespaces; sshd trusting the sshgw user CA",
        || {
            let lab = if ci {
                Lab::new()?
            } else {
                state.expect_lab(name)?;
                Lab::with_name(name, &state_dir)?
            };
            state.record_lab(&lab)?;
            println!("    lab name: {}", lab.name());
            println!(
                "    namespaces: {} (device 100.96.0.7, fd00:96::7) -> {} (router, sshgw) -> {} \
                 (server 203.0.113.10, 2001:db8:1::10)",
                lab.dev.name(),
                lab.rtr.name(),
                lab.srv.name()
            );
            println!("    lab dir: {}", lab.dir().display());
            let sshd = long_lived(&lab, ci, || lab.start_sshd_for_gateway());
            let sshd = match sshd {
                Ok(sshd) => sshd,
                Err(err) => {
                    lab.dump_logs();
                    return Err(err);
                }
            };
            state.record_sshd(&sshd)?;
            println!(
                "    sshd (pid {}) in {}: TrustedUserCAKeys = `sshgw ca user-key`; principal jdoe may \
                 log in as jdoe and root",
                sshd.proc().pid(),
                lab.srv.name()
            );
            Ok((lab, sshd))
        },
    )?;

    let mut wg = None;
    if opts.wireguard {
        wg = Some(steps.run(
            "WireGuard between device and router: docs/deployment.md's worked example",
            || wireguard(state, &lab, ci),
        )?);
    }

    match demo(
        steps,
        state,
        &lab,
        &sshd,
        ci,
        wg.as_ref(),
        started,
        head_start,
    ) {
        Ok(demo) => {
            // Everything is recorded in the state file: from here on only `down` removes it
            // (it stops every process in the lab's namespaces, boringtun included).
            if let Some(wg) = &mut wg {
                wg.keep();
            }
            persist::detach(lab);
            Ok(demo)
        }
        Err(err) => {
            lab.dump_logs();
            Err(err)
        }
    }
}

/// The lab's object store: SeaweedFS on the router namespace's loopback with a locked bucket,
/// the router's put-only key, an admin key for `recording fetch`, and the daemon's
/// `[cluster]` and `[storage]` tables.
struct Store {
    server: S3Server,
    admin_key: PathBuf,
    toml: String,
}

const BUCKET: &str = "sshgw-lab";
const ROUTER_ID: &str = "lab-rtr";

fn start_store(lab: &Lab, state: &mut LabState, ci: bool, state_dir: &Path) -> Result<Store> {
    let dir = state_dir.join("s3");
    let grant = format!("recordings/{ROUTER_ID}/");
    let server = long_lived(lab, ci, || {
        S3Server::start_with(
            lab.procs(),
            Some(&lab.rtr),
            &dir,
            &[(BUCKET, grant.as_str())],
        )
    })?;
    state.record_process(
        "seaweedfs",
        server.proc().context("the store has no process")?,
    )?;
    server.create_locked_bucket(BUCKET, 1)?;
    let key_file = |name: &str, creds: s3::Credentials| -> Result<PathBuf> {
        let path = dir.join(name);
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                write!(
                    f,
                    "access_key_id={}\nsecret_access_key={}\n",
                    creds.access_key, creds.secret_key
                )
            })
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let router_key = key_file("router.credentials", s3::ROUTER)?;
    let admin_key = key_file("admin.credentials", s3::ADMIN)?;
    let toml = format!(
        "[cluster]\nrouter_id = \"{ROUTER_ID}\"\n\n[storage]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\n\
         prefix = \"recordings\"\ncredentials_file = {}\n",
        server.endpoint(),
        toml_str(&path_str(&router_key))
    );
    println!(
        "    SeaweedFS (pid {}) in {} at {}: bucket {BUCKET} with Object Lock (COMPLIANCE, 1 day); \
         the router's key may only put (and HEAD) under {grant}",
        server.proc().map_or(0, |p| p.pid()),
        lab.rtr.name(),
        server.endpoint()
    );
    Ok(Store {
        server,
        admin_key,
        toml,
    })
}

/// The session's recording is uploaded: `recording fetch` (with the admin key) gets the
/// exact bytes of the local file, and `verify` calls the downloaded copy complete.
fn check_uploaded(
    gw: &Gateway<'_>,
    store: &Store,
    session_id: &str,
    recording: &Path,
    key: &Path,
    config: &str,
) -> Result<()> {
    let object = poll_until(
        "the recording to be uploaded (recording_object in the session log)",
        SESSION_LOG_TIMEOUT,
        Duration::from_millis(200),
        || {
            let record = gw.session(session_id)?;
            Ok(record["channels"]
                .as_array()
                .and_then(|c| c.iter().find(|c| !c["recording_object"].is_null()))
                .map(|c| c["recording_object"].clone()))
        },
    )?;
    println!("    recording_object: {object}");
    let out = store.server.dir().join("fetched");
    fs::create_dir_all(&out)?;
    let (out_s, admin) = (path_str(&out), path_str(&store.admin_key));
    show(
        gw,
        &[
            "recording",
            "fetch",
            "--session",
            session_id,
            "--output",
            &out_s,
            "--credentials",
            &admin,
            "--config",
            config,
        ],
    )?;
    let name = recording
        .file_name()
        .context("the recording has no file name")?;
    let fetched = out.join(name);
    ensure!(
        fs::read(&fetched)? == fs::read(recording)?,
        "the fetched {} differs from the local {}",
        fetched.display(),
        recording.display()
    );
    show(
        gw,
        &[
            "recording",
            "verify",
            "-i",
            &path_str(&fetched),
            "-k",
            &path_str(key),
        ],
    )?;
    println!("    ok: the object store holds the recording byte for byte, and it verifies");
    Ok(())
}

/// Runs `f` (which spawns sshd or the daemon) so that, in the interactive lab, what it spawns
/// outlives this process.
fn long_lived<T>(lab: &Lab, ci: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if ci {
        f()
    } else {
        persist::with_detached(lab.procs(), f)
    }
}

/// Brings up the example's tunnels (and nftables ruleset) and records the WireGuard
/// mount-namespace holders.
fn wireguard(state: &mut LabState, lab: &Lab, ci: bool) -> Result<WireGuardLab> {
    let wg = long_lived(lab, ci, || WireGuardLab::up(lab, ""))?;
    for host in [&wg.router, &wg.device] {
        state.record_process("wireguard-holder", host.holder())?;
    }
    println!(
        "    {} wg0 100.100.0.1/24 <== WireGuard (boringtun, wg-quick) ==> {} wg0 100.100.0.7",
        lab.rtr.name(),
        lab.dev.name()
    );
    println!(
        "    configs and keys (0600): {} and {}",
        wg.router.dir().display(),
        wg.device.dir().display()
    );
    println!(
        "    nftables: table inet sshgw (input: WireGuard, intercepted SSH; forward: drop audited SSH sshgw did not take)"
    );
    Ok(wg)
}

/// The demo policy: audit SSH to the lab server (both families) with command logging.
fn demo_policies() -> Value {
    json!({"policies": [{
        "id": POLICY_ID,
        "name": "Audit the lab server",
        "precedence": 10,
        "enabled": true,
        "action": "audit_ssh",
        "destinations": ["203.0.113.10/32", "2001:db8:1::10/128"],
        "ports": [22],
        "identity": {"email_domains": ["example.com"]},
        "ssh": {"command_logging": true}
    }]})
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `sshgw ARGS` in the router namespace; prints the command line and its output, fails
/// unless it exits 0. Returns stdout.
fn show(gw: &Gateway<'_>, args: &[&str]) -> Result<String> {
    println!("    $ sshgw {}", args.join(" "));
    let out = gw
        .sshgw(args)?
        .check(&format!("sshgw {}", args.join(" ")))?;
    println!("{}", indented(out.stdout.trim_end()));
    Ok(out.stdout)
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

#[allow(clippy::too_many_arguments)]
fn demo(
    steps: &mut Steps,
    state: &mut LabState,
    lab: &Lab,
    sshd: &Sshd,
    ci: bool,
    wg: Option<&WireGuardLab>,
    started: Instant,
    head_start: Duration,
) -> Result<Demo> {
    let state_dir = state.state_dir.clone();
    let bin = sshgw_bin()?;
    let key = state_dir.join("recording-key");
    let key_pub = state_dir.join("recording-key.pub");
    let recordings = state_dir.join("recordings");
    let known_hosts = state_dir.join("known_hosts");
    let config_link = state_dir.join("sshgw.toml");
    let log_link = state_dir.join("sshgw.log");

    // 3. The object store, then the daemon.
    let (store, gw) = steps.run(
        "start SeaweedFS and sshgw in the router namespace: demo device table, audit policy \
         with command logging, recordings uploaded",
        || {
            let store = start_store(lab, state, ci, &state_dir)?;
            println!("    $ sshgw recording keygen -o {}", key.display());
            let mut keygen = Command::new(&bin);
            keygen.args(["recording", "keygen", "-o"]).arg(&key);
            let out = lab
                .procs()
                .run_quiet(
                    "sshgw recording keygen",
                    &mut keygen,
                    Duration::from_secs(30),
                )?
                .check("sshgw recording keygen")?;
            let said = format!("{}{}", out.stdout, out.stderr);
            println!("{}", indented(said.trim_end()));

            // The device trusts the gateway's host CA: no host key prompt, strict checking.
            let ca = lab.sshgw_ca()?;
            fs::write(&known_hosts, format!("{}\n", ca.known_hosts_line))
                .with_context(|| format!("writing {}", known_hosts.display()))?;
            println!(
                "    {}: `sshgw ca known-hosts` (the device trusts the gateway's host CA)",
                known_hosts.display()
            );

            let base = match wg {
                Some(_) => wireguard_gateway_config()?,
                None => GatewayConfig::default().devices(default_devices()),
            };
            let mut cfg = base
                .policies(demo_policies())
                // `down` stops the daemon with SIGTERM: take the datapath out with it.
                .datapath("on_stop = \"remove\"");
            cfg.extra_toml = format!(
                "[recording]\npublic_key_file = {}\ndir = {}\n\n{}",
                toml_str(&path_str(&key_pub)),
                toml_str(&path_str(&recordings)),
                store.toml
            );
            let mut gw = lab.gateway_with(cfg)?;
            let status = long_lived(lab, ci, || gw.start());
            // Record the PID even if startup failed: it may still run.
            state.record_gateway(&gw)?;
            let status = status?;
            for (link, target) in [
                (&config_link, gw.config_path().to_owned()),
                (
                    &log_link,
                    gw.proc()
                        .context("the daemon has no process")?
                        .stderr_path()
                        .to_owned(),
                ),
                (
                    &state_dir.join("sshd.log"),
                    sshd.proc().stderr_path().to_owned(),
                ),
            ] {
                symlink(&target, link).with_context(|| format!("linking {}", link.display()))?;
            }
            println!(
                "    sshgw (pid {}) running in {}: {} attached, listeners {}",
                gw.proc().map_or(0, |p| p.pid()),
                lab.rtr.name(),
                status
                    .interfaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                status.listeners.join(", ")
            );
            println!("    config: {}", config_link.display());
            let config = path_str(&config_link);
            show(&gw, &["devices", "show", "--config", &config])?;
            show(&gw, &["policy", "show", "--config", &config])?;
            Ok((store, gw))
        },
    )?;
    let config = path_str(&config_link);

    // 4. The scripted session.
    steps.run(
        "scripted ssh session from the device: jdoe@203.0.113.10 on a terminal",
        || scripted_session(lab, &known_hosts),
    )?;

    // 5. The session log.
    let (session_id, recording) = steps.run("the session log: sshgw sessions", || {
        let session = gw
            .wait_for_session(
                &[],
                SESSION_LOG_TIMEOUT,
                "the demo session to be closed in the session log",
                |s| str_field(s, "email") == Some(EMAIL) && s["ended_at"].is_string(),
            )
            .context("the session log does not have the demo session")?;
        let id = str_field(&session, "id")
            .context("the session has no id")?
            .to_owned();
        show(&gw, &["sessions", "--config", &config])?;
        show(&gw, &["sessions", "show", &id, "--config", &config])?;
        let record = gw.session(&id)?;
        let recording = check_record(&record, device_address(wg.is_some()))?;
        println!("    ok: the log has session {id} by {EMAIL} on {DEVICE_ID} as {LOGIN}@{AUDITED_DESTINATION}, recorded");
        Ok((id, recording))
    })?;

    // 6. The replay.
    steps.run("replay the decrypted recording", || {
        let rec = path_str(&recording);
        let key_s = path_str(&key);
        // The recording is finished (end-of-recording record, header rewritten) when the
        // channel closes; wait (bounded) for `verify` to call it complete.
        poll_until(
            "sshgw recording verify to report the recording complete",
            SESSION_LOG_TIMEOUT,
            Duration::from_millis(100),
            || {
                Ok(gw
                    .sshgw(&["recording", "verify", "-i", &rec, "-k", &key_s])?
                    .success()
                    .then_some(()))
            },
        )?;
        show(&gw, &["recording", "verify", "-i", &rec, "-k", &key_s])?;
        println!(
            "    (the replay started {} after `cargo xtask lab` started)",
            secs(head_start + started.elapsed())
        );
        let args = [
            "recording",
            "replay",
            "-i",
            &rec,
            "-k",
            &key_s,
            "--speed",
            REPLAY_SPEED,
            "--idle-limit",
            REPLAY_IDLE_LIMIT,
        ];
        println!("    $ sshgw {}", args.join(" "));
        let shown = tee_command(Command::new(&bin).args(args), REPLAY_TIMEOUT)?;
        println!();
        let missing: Vec<&&str> = REPLAY_MUST_SHOW
            .iter()
            .filter(|needle| !shown.contains(**needle))
            .collect();
        ensure!(
            missing.is_empty(),
            "the replay did not show {missing:?}; it showed {shown:?}"
        );
        println!("    ok: the replay shows the output of whoami, uname -a and echo");
        Ok(())
    })?;

    // 7. Evidence off the box.
    steps.run(
        "the recording in the object store (SeaweedFS, Object Lock): sshgw recording fetch",
        || check_uploaded(&gw, &store, &session_id, &recording, &key, &config),
    )?;
    if !ci {
        // Kept running for `down` (its PID is in the state file).
        std::mem::forget(store.server);
    }

    // 8. The auditor's console.
    let console_url = steps.run(
        "the auditor's console: sshgw console on 127.0.0.1, the demo session in its API",
        || start_console(lab, state, &config_link, &session_id, ci),
    )?;

    Ok(Demo {
        dev_ns: lab.dev.name().to_owned(),
        rtr_ns: lab.rtr.name().to_owned(),
        srv_ns: lab.srv.name().to_owned(),
        sshgw: bin,
        config: config_link,
        key,
        known_hosts,
        recordings,
        daemon_log: log_link,
        session_id,
        recording,
        console_url,
        wireguard: wg.map(|wg| (wg.router.holder().pid(), wg.device.holder().pid())),
    })
}

/// Where the interactive lab's console listens (a CI run takes any free port).
const CONSOLE_LISTEN: &str = "127.0.0.1:8080";
const CONSOLE_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts `sshgw console` in the host's namespaces (it reads the session log, the
/// recordings and the control socket, all reachable from there), kept for `down`; checks
/// that its API lists the demo session and refuses a request without the token. Returns
/// the URL to open, with the token in its fragment (never sent to the server).
fn start_console(
    lab: &Lab,
    state: &mut LabState,
    config: &Path,
    session_id: &str,
    ci: bool,
) -> Result<String> {
    let listen = if ci { "127.0.0.1:0" } else { CONSOLE_LISTEN };
    println!(
        "    $ sshgw console --config {} --listen {listen}",
        config.display()
    );
    let mut cmd = Command::new(sshgw_bin()?);
    cmd.arg("console")
        .arg("--config")
        .arg(config)
        .args(["--listen", listen]);
    let proc = lab.procs().spawn("sshgw-console", &mut cmd)?;
    state.record_process("console", &proc)?;
    let line = proc
        .wait_for_line("console: listening on ", CONSOLE_START_TIMEOUT)
        .with_context(|| {
            format!(
                "sshgw console did not start (is {listen} taken?): {}",
                proc.stderr_text()
            )
        })?;
    let base = line
        .split_once("listening on ")
        .map(|(_, url)| url.trim().to_owned())
        .context("no URL in the console's line")?;
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let token_file = lab.sshgw_state_dir()?.join("console.token");
    let token = fs::read_to_string(&token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let token = token.trim();
    let (status, _) = http_get(&addr, "/api/v1/sessions", None)?;
    ensure!(
        status == 401,
        "the console API answered {status} without the token, not 401"
    );
    let (status, body) = http_get(&addr, "/api/v1/sessions", Some(token))?;
    ensure!(
        status == 200 && body.contains(session_id),
        "the console API should list session {session_id}: {status} {body}"
    );
    println!("    ok: {base} lists session {session_id}; without the token its API answers 401");
    println!("    token: {} (0600)", token_file.display());
    Ok(format!("{base}#token={token}"))
}

/// A GET over plain HTTP/1.1 to the lab's console: the status and the body.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr)
        .with_context(|| format!("connecting to the console at {addr}"))?;
    stream.set_read_timeout(Some(CONSOLE_START_TIMEOUT))?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP reply: {reply:?}"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// The demo device's address: its tunnel address in the WireGuard lab.
fn device_address(wireguard: bool) -> &'static str {
    if wireguard {
        "100.100.0.7"
    } else {
        "100.96.0.7"
    }
}

/// Checks the demo session's record (`sessions show ID --json`); returns its recording.
fn check_record(s: &Value, device: &str) -> Result<PathBuf> {
    for (key, want) in [
        ("email", EMAIL),
        ("device_id", DEVICE_ID),
        ("login", LOGIN),
        ("destination", AUDITED_DESTINATION),
        ("policy_id", POLICY_ID),
        ("decision", "audit_ssh"),
    ] {
        ensure!(
            str_field(s, key) == Some(want),
            "session field {key} should be {want:?}: {s:#}"
        );
    }
    ensure!(
        str_field(s, "source").is_some_and(|src| src.starts_with(&format!("{device}:"))),
        "the session should come from the device ({device}): {s:#}"
    );
    let channels = s["channels"].as_array().context("no channels list")?;
    let shell = channels
        .iter()
        .find(|c| str_field(c, "kind") == Some("shell"))
        .with_context(|| format!("no shell channel: {s:#}"))?;
    let recording = str_field(shell, "recording")
        .with_context(|| format!("the shell channel has no recording: {shell:#}"))?;
    let recording = PathBuf::from(recording);
    ensure!(
        recording.is_file(),
        "the recording {} does not exist",
        recording.display()
    );
    Ok(recording)
}

/// Logs in from the device namespace with the real `ssh` on a pseudo-terminal (24x80), types
/// [`SCRIPT`] and `exit`, and shows the terminal as it goes.
fn scripted_session(lab: &Lab, known_hosts: &Path) -> Result<()> {
    let ssh = lab
        .ssh(V4.audited())
        .user(LOGIN)
        .option(&format!("UserKnownHostsFile={}", known_hosts.display()))
        .option("StrictHostKeyChecking=yes")
        .connect_timeout(10);
    println!(
        "    $ ip netns exec {} ssh -o UserKnownHostsFile={} {LOGIN}@{}",
        lab.dev.name(),
        known_hosts.display(),
        V4.audited()
    );
    let mut term = ssh.pty_session(None, (24, 80))?;
    let mut screen = Screen::default();
    let result = (|| -> Result<()> {
        screen.show(&term.expect(PROMPT, LOGIN_TIMEOUT)?);
        for (line, output) in SCRIPT {
            type_line(&mut term, line)?;
            screen.show(&term.expect(output, OUTPUT_TIMEOUT)?);
            screen.show(&term.expect(PROMPT, OUTPUT_TIMEOUT)?);
        }
        type_line(&mut term, "exit")?;
        let status = term.wait_exit(EXIT_TIMEOUT)?;
        screen.rest(&term.transcript());
        ensure!(status.success(), "ssh exited with {status:?}");
        Ok(())
    })();
    if result.is_err() {
        screen.rest(&term.transcript());
    }
    println!();
    result
}

/// Types `line` and Enter, one character at a time.
fn type_line(term: &mut PtySession, line: &str) -> Result<()> {
    for c in line.chars().chain(std::iter::once('\n')) {
        term.send(c.encode_utf8(&mut [0; 4]))?;
        thread::sleep(KEY_DELAY);
    }
    Ok(())
}

/// Echoes the terminal output of the scripted session to stdout as it arrives.
#[derive(Default)]
struct Screen {
    shown: usize,
}

impl Screen {
    fn show(&mut self, text: &str) {
        if self.shown == 0 {
            print!("    | ");
        }
        let text = text.replace("\r\n", "\n").replace('\n', "\n    | ");
        print!("{text}");
        let _ = std::io::stdout().flush();
        self.shown += 1;
    }

    /// Shows what the transcript holds beyond what was shown (after the last expect).
    fn rest(&mut self, transcript: &str) {
        // Everything up to the last prompt has been shown; print what follows it.
        let tail = transcript
            .rfind(PROMPT)
            .map_or(transcript, |i| &transcript[i + PROMPT.len()..]);
        self.show(tail.trim_end());
    }
}

/// Runs `cmd` with its stdout copied to ours as it arrives (the replay keeps its timing) and
/// returns what it printed; stderr is inherited. Bounded by `timeout`.
fn tee_command(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut pipe = child.stdout.take().context("no stdout pipe")?;
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                    all.extend_from_slice(&buf[..n]);
                }
            }
        }
        all
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let all = reader
        .join()
        .map_err(|_| anyhow!("the output reader panicked"))?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(String::from_utf8_lossy(&all).into_owned())
}

/// The copy-paste commands for an interactive try.
fn instructions(d: &Demo, state_dir: &Path) -> String {
    let sshgw = d.sshgw.display();
    let config = d.config.display();
    let key = d.key.display();
    let rec = d.recording.display();
    let kh = d.known_hosts.display();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    format!(
        "\
==> The lab is up and stays up. Try it yourself (as root):

  # Log in from the device (jdoe@example.com on laptop-jdoe) to the audited server; sshgw
  # relays and records the session. No key needed: the device's address is its identity.
  # known_hosts holds the gateway's host CA; without it ssh asks to accept the host key.
  ip netns exec {dev} ssh -o UserKnownHostsFile={kh} jdoe@203.0.113.10
  ip netns exec {dev} ssh -o UserKnownHostsFile={kh} root@2001:db8:1::10

  # The session log (--active: live sessions; `sessions kill ID` ends one)
  ip netns exec {rtr} {sshgw} sessions --config {config}
  ip netns exec {rtr} {sshgw} sessions show {id} --config {config}

  # Recordings are encrypted to {key}.pub; the private key decrypts them
  ls {recordings}
  {sshgw} recording replay -i {rec} -k {key} --speed 4
  {sshgw} recording decrypt -i {rec} -k {key} -o /tmp/sshgw-lab-session.zip
  {sshgw} recording export -i {rec} -k {key} --format asciicast -o /tmp/sshgw-lab-session.cast
  asciinema play /tmp/sshgw-lab-session.cast

  # The auditor's console (read-only; replays in the browser, which alone gets the key).
  # Open this in a browser on this machine (elsewhere: ssh -L 8080:127.0.0.1:8080 here),
  # then open the private key {key} in the page: it never leaves the browser tab.
  {console}

  # Every finished recording is also uploaded to SeaweedFS (Object Lock) in {rtr}:
  # its key, version and SHA-256 are in `sessions show {id} --json` (recording_object)
  ip netns exec {rtr} {sshgw} recording fetch --session {id} --output /tmp \\
      --credentials {state}/s3/admin.credentials --config {config}
  nsenter --net=/run/netns/{rtr} {sshgw} status --config {config}   # storage: backlog

  # The daemon (datapath status needs the host's /sys/fs/bpf: nsenter, not ip netns exec)
  nsenter --net=/run/netns/{rtr} {sshgw} status --config {config}
  tail -f {log}
  # A shell in a namespace: {dev} (device), {rtr} (router), {srv} (server)
  ip netns exec {dev} bash

{wireguard}  # Tear everything down (safe to run twice); everything lives in {state}
  cd {workspace} && cargo xtask lab --down
",
        dev = d.dev_ns,
        rtr = d.rtr_ns,
        srv = d.srv_ns,
        id = d.session_id,
        console = d.console_url,
        recordings = d.recordings.display(),
        log = d.daemon_log.display(),
        state = state_dir.display(),
        workspace = workspace.display(),
        wireguard = d
            .wireguard
            .map_or_else(String::new, |(rtr_holder, dev_holder)| {
                wireguard_instructions(&d.rtr_ns, &d.dev_ns, rtr_holder, dev_holder)
            }),
    )
}

/// The WireGuard part of the instructions: `wg` and `wg-quick` run in each side's own
/// mount namespace (a private `/run/wireguard`), entered with nsenter.
fn wireguard_instructions(rtr: &str, dev: &str, rtr_holder: u32, dev_holder: u32) -> String {
    format!(
        "  # WireGuard: the device's ssh goes through wg0 (100.100.0.7 -> 100.100.0.1). Each side
  # keeps its boringtun control socket in a private /run/wireguard: enter it with nsenter.
  nsenter --mount=/proc/{rtr_holder}/ns/mnt --net=/run/netns/{rtr} wg show wg0
  nsenter --mount=/proc/{dev_holder}/ns/mnt --net=/run/netns/{dev} wg show wg0
  ip netns exec {rtr} nft list table inet sshgw   # the forward drop counters stay at 0

"
    )
}

// ------------------------------------------------------------------------------------------
// down
// ------------------------------------------------------------------------------------------

fn down(opts: &Opts) -> Result<()> {
    require_root()?;
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let name = opts.name.as_deref().unwrap_or(DEFAULT_NAME);
    if !persist::is_up(&state_dir, Some(name)) {
        println!(
            "no lab is up (no {}, no {name}-dev|rtr|srv namespaces, no /sys/fs/bpf/{name}): \
             nothing to do",
            state_dir.display()
        );
        return Ok(());
    }
    let start = Instant::now();
    match persist::LabState::load(&state_dir) {
        Ok(Some(state)) => println!(
            "tearing down lab {} ({} mode, built by pid {}, {})",
            state.name,
            state.mode,
            state.creator_pid,
            if state.complete {
                "complete"
            } else {
                "incomplete: its run failed or was interrupted"
            }
        ),
        Ok(None) => println!(
            "no state file in {}: removing the {name}-* namespaces, pins and the state dir by name",
            state_dir.display()
        ),
        Err(err) => bail!("{err:#}"),
    }
    let report = persist::down(&state_dir, Some(name), &mut |line| println!("  {line}"))?;
    println!(
        "lab torn down in {} ({} items)",
        secs(start.elapsed()),
        report.actions.len()
    );
    Ok(())
}
