//! `sshgw console` under test, and the real browser that drives it (issue 18, item 5).
//!
//! The console runs in the host namespaces (it reads the state dir, the recordings and the
//! daemon's control socket, all files): [`Console::start`] spawns
//! `sshgw console --config FILE --listen 127.0.0.1:0`, waits for its one stdout line
//! `console: listening on URL` (readiness, not a sleep) and kills exactly that process when
//! the [`Console`] is dropped, also on panic. [`read_token`] reads `<state_dir>/console.token`
//! and checks its mode (0600) and form.
//!
//! The browser side is `tests/browser/console.mjs`: Node runs it with playwright-core (pinned
//! in `tests/browser/package-lock.json`, installed by [`ensure_npm_packages`] when missing or
//! stale, so `cargo test` alone works) driving Debian's `chromium` (`/usr/bin/chromium`, or
//! `$SSHGW_CHROMIUM`). [`run_browser`] passes it one JSON object and reads its one JSON line
//! back. Node, npm and chromium come from `cargo xtask prereqs`; a missing one fails the test,
//! with or without `CI=true`: it is never skipped.
//!
//! [`chunks`], [`truncate_inside_chunk`] and [`flip_byte_in_chunk`] damage a finished
//! recording on disk (the container: `u32` header length, header, then `u32` length +
//! ciphertext per chunk; see docs/recording-format.md).
//!
//! ```ignore
//! let console = Console::start(lab, gw.config_path(), &[])?;      // killed on drop
//! let token = read_token(gw.state_dir())?;                         // 0600, 43 chars
//! ensure_npm_packages(lab)?;
//! let report = run_browser(lab, &json!({"url": console.url(), "token": token, ...}))?;
//! let spans = chunks(&path)?;                                      // [(offset, len), ...]
//! truncate_inside_chunk(&path, spans.len() - 1)?;
//! ```

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::gateway::sshgw_bin;
use crate::process::{Finished, Proc, describe_status};
use crate::recording::{file_mode, header_len};
use crate::topology::Lab;

/// The console's readiness line on stdout (followed by the URL).
pub const LISTENING: &str = "console: listening on ";
/// How long the console may take to listen.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused `sshgw console` run may take to exit.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of `npm ci` (a download of playwright-core, a few MB).
pub const NPM_CI_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline of the whole browser run (each of its waits is bounded by 30 s).
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(600);
/// The token file in the state dir.
pub const TOKEN_FILE: &str = "console.token";
/// Where the browser finds chromium when `$SSHGW_CHROMIUM` is not set.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Environment variable naming another chromium executable.
pub const CHROMIUM_ENV: &str = "SSHGW_CHROMIUM";

/// A running `sshgw console`; dropping it SIGKILLs exactly that process (by its PID, which
/// the lab's registry keeps valid until reaped).
pub struct Console {
    proc: Proc,
    url: String,
}

impl Console {
    /// `sshgw console --config CONFIG --listen 127.0.0.1:0 ARGS` in the host namespaces;
    /// returns once it printed `console: listening on URL`.
    pub fn start(lab: &Lab, config: &Path, args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(sshgw_bin()?);
        cmd.arg("console")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_BACKTRACE", "1");
        let proc = lab.procs().spawn("sshgw-console", &mut cmd)?;
        // From here on the guard owns the process: an error below still kills it.
        let mut console = Self {
            proc,
            url: String::new(),
        };
        let (line, url) = listening_url(&console.proc)?;
        ensure!(
            url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
            "sshgw console --listen 127.0.0.1:0 should print `{LISTENING}http://127.0.0.1:PORT/`, \
             printed {line:?}"
        );
        let port = url
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches('/');
        ensure!(
            port.parse::<u16>().is_ok_and(|p| p != 0),
            "the URL {url:?} should name the port picked for 127.0.0.1:0"
        );
        console.url = url;
        Ok(console)
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Its stdout so far (the contract: exactly the one `listening` line).
    pub fn stdout(&self) -> String {
        self.proc.stdout_text()
    }
}

/// Waits for `console: listening on URL` from a starting console: the line and the URL.
pub fn listening_url(proc: &Proc) -> Result<(String, String)> {
    let line = proc
        .wait_for_line(LISTENING, START_TIMEOUT)
        .context("sshgw console did not report `console: listening on URL`")?;
    let url = line
        .split_once(LISTENING)
        .map(|(_, url)| url.trim().to_owned())
        .unwrap_or_default();
    Ok((line, url))
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Err(err) = self.proc.kill() {
            eprintln!(
                "warning: killing sshgw console (pid {}): {err:#}",
                self.proc.pid()
            );
        }
    }
}

/// Runs `sshgw console --config CONFIG ARGS` expecting a refusal: it must exit (non-zero)
/// within [`REFUSAL_TIMEOUT`] without ever listening. Returns its output.
pub fn expect_refusal(lab: &Lab, config: &Path, args: &[&str], what: &str) -> Result<Finished> {
    let mut cmd = Command::new(sshgw_bin()?);
    cmd.arg("console")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_BACKTRACE", "1");
    let out = lab
        .procs()
        .run(
            &format!("sshgw console ({what})"),
            &mut cmd,
            REFUSAL_TIMEOUT,
        )
        .with_context(|| format!("sshgw console should refuse {what} and exit"))?;
    ensure!(
        !out.success() && !out.stdout.contains(LISTENING),
        "sshgw console should refuse {what}, but it {} ({}):\nstdout: {}\nstderr: {}",
        if out.stdout.contains(LISTENING) {
            "listened"
        } else {
            "exited 0"
        },
        describe_status(out.status),
        out.stdout.trim_end(),
        out.stderr.trim_end()
    );
    Ok(out)
}

/// `<state_dir>/console.token`: mode 0600, 43 characters of URL-safe base64 (32 bytes).
pub fn read_token(state_dir: &Path) -> Result<String> {
    let path = state_dir.join(TOKEN_FILE);
    let mode = file_mode(&path).with_context(|| {
        format!(
            "sshgw console should create {} at its first start",
            path.display()
        )
    })?;
    ensure!(
        mode == 0o600,
        "{} should have mode 0600, has {mode:o}",
        path.display()
    );
    let token = fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned();
    ensure!(
        token.len() == 43
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{} should hold 43 characters of URL-safe base64, holds {} characters",
        path.display(),
        token.len()
    );
    Ok(token)
}

/// `tests/browser`: the npm project of the browser tests.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `<workspace>/target/test-artifacts/console` (created): the screenshots.
pub fn artifacts_dir() -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    };
    let dir = target.join("test-artifacts").join("console");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// The tools of the browser test, found or a failure naming `cargo xtask prereqs` (never a
/// skip, with or without `CI=true`).
#[derive(Debug, Clone)]
pub struct BrowserTools {
    pub node: PathBuf,
    pub npm: PathBuf,
    pub chromium: PathBuf,
}

/// Finds `node` and `npm` on `PATH` and chromium ([`CHROMIUM`] or `$SSHGW_CHROMIUM`).
pub fn browser_tools() -> Result<BrowserTools> {
    let ci = if std::env::var("CI").as_deref() == Ok("true") {
        " (CI=true: the browser tests are never skipped)"
    } else {
        ""
    };
    let chromium = std::env::var_os(CHROMIUM_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    if !is_executable(&chromium) {
        bail!(
            "{} is missing (Debian package chromium, or set {CHROMIUM_ENV}){ci}: run \
             `cargo xtask prereqs` as root (or `cargo xtask test`, which runs it)",
            chromium.display()
        );
    }
    let find = |name: &str| -> Result<PathBuf> {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
            .with_context(|| {
                format!(
                    "`{name}` is not on PATH (Node.js and npm run the browser tests){ci}: run \
                     `cargo xtask prereqs` as root (it installs Debian's nodejs and npm if \
                     no node runs)"
                )
            })
    };
    Ok(BrowserTools {
        node: find("node")?,
        npm: find("npm")?,
        chromium,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `npm ci` must run in `dir`: `node_modules/.package-lock.json` (written by every
/// npm install) is missing or older than `package-lock.json` (the rule of
/// `cargo xtask prereqs`).
pub fn npm_ci_needed(dir: &Path) -> Result<bool> {
    let lock = dir.join("package-lock.json");
    let lock_modified = fs::metadata(&lock)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {}", lock.display()))?;
    let installed: Option<SystemTime> = fs::metadata(dir.join("node_modules/.package-lock.json"))
        .and_then(|m| m.modified())
        .ok();
    Ok(installed.is_none_or(|installed| installed < lock_modified))
}

/// `npm ci --ignore-scripts --no-audit --no-fund` in [`browser_dir`] unless its packages are
/// installed and up to date.
pub fn ensure_npm_packages(lab: &Lab, tools: &BrowserTools) -> Result<()> {
    let dir = browser_dir();
    if !npm_ci_needed(&dir)? {
        return Ok(());
    }
    eprintln!(
        "installing the browser tests' npm packages in {} (npm ci)",
        dir.display()
    );
    let mut cmd = Command::new(&tools.npm);
    cmd.args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    lab.procs()
        .run("npm ci (tests/browser)", &mut cmd, NPM_CI_TIMEOUT)?
        .check(&format!("npm ci in {}", dir.display()))?;
    ensure!(
        !npm_ci_needed(&dir)?,
        "npm ci in {} left no node_modules/.package-lock.json",
        dir.display()
    );
    Ok(())
}

/// Runs `node tests/browser/console.mjs INPUT` and returns its JSON report; fails with the
/// name of the failed check and the browser's message.
pub fn run_browser(lab: &Lab, tools: &BrowserTools, input: &Value) -> Result<Value> {
    let script = browser_dir().join("console.mjs");
    let mut cmd = Command::new(&tools.node);
    cmd.arg(&script)
        .arg(serde_json::to_string(input)?)
        .current_dir(browser_dir())
        .env(CHROMIUM_ENV, &tools.chromium);
    let out = lab
        .procs()
        .run("node console.mjs", &mut cmd, BROWSER_TIMEOUT)?;
    let report: Option<Value> = out
        .stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(Value::is_object);
    match report {
        Some(r) if out.success() && r["ok"] == true => Ok(r),
        Some(r) => bail!(
            "the browser check {:?} failed ({}): {}\nchecks passed before it: {:#}\nstderr:\n{}",
            r["failed"].as_str().unwrap_or("?"),
            describe_status(out.status),
            r["error"].as_str().unwrap_or("?"),
            r["checks"],
            out.stderr.trim_end()
        ),
        None => bail!(
            "node {} printed no JSON report ({}):\nstdout: {}\nstderr: {}",
            script.display(),
            describe_status(out.status),
            out.stdout.trim_end(),
            out.stderr.trim_end()
        ),
    }
}

/// The chunks of a recording: `(offset of the length prefix, ciphertext length)` each.
pub fn chunks(path: &Path) -> Result<Vec<(u64, u32)>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut at = usize::try_from(header_len(path)?)?;
    let mut spans = Vec::new();
    while at < bytes.len() {
        let prefix: [u8; 4] = bytes
            .get(at..at + 4)
            .with_context(|| format!("{}: a chunk length cut off at {at}", path.display()))?
            .try_into()?;
        let len = u32::from_be_bytes(prefix);
        ensure!(
            at + 4 + len as usize <= bytes.len(),
            "{}: chunk {} at {at} ({len} bytes) runs past the end",
            path.display(),
            spans.len()
        );
        spans.push((at as u64, len));
        at += 4 + len as usize;
    }
    Ok(spans)
}

/// The offset of the middle of chunk `n`'s ciphertext.
fn middle_of_chunk(path: &Path, n: usize) -> Result<u64> {
    let spans = chunks(path)?;
    let &(at, len) = spans.get(n).with_context(|| {
        format!(
            "{} has {} chunks, no chunk {n}",
            path.display(),
            spans.len()
        )
    })?;
    Ok(at + 4 + u64::from(len) / 2)
}

/// Cuts the file in the middle of chunk `n`'s ciphertext.
pub fn truncate_inside_chunk(path: &Path, n: usize) -> Result<u64> {
    let cut = middle_of_chunk(path, n)?;
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(cut))
        .with_context(|| format!("truncating {} to {cut} bytes", path.display()))?;
    Ok(cut)
}

/// Flips one bit of a byte in the middle of chunk `n`'s ciphertext; returns its offset.
pub fn flip_byte_in_chunk(path: &Path, n: usize) -> Result<u64> {
    let offset = middle_of_chunk(path, n)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut byte)?;
    byte[0] ^= 0x01;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&byte)
        .with_context(|| format!("writing {} at {offset}", path.display()))?;
    Ok(offset)
}
