//! The benchmark harness behind `cargo xtask bench` (binary `sshgw-bench`).
//!
//! Every figure runs in a fresh [`Lab`](crate::Lab) with the release sshgw and compares the
//! gateway route with the direct route to the same sshd (see [`env`]), sampled alternately
//! (A B A B). The figures:
//!
//! * (a) bulk throughput and (f) CPU per GiB: [`bulk`];
//! * (b) connection setup: [`setup`];
//! * (c) keystroke round trip over a pty: [`latency`];
//! * (d) concurrent idle sessions, sshgw memory and descriptors: [`concurrency`];
//! * (e) the TC program's cost on traffic it does not steer: [`datapath`];
//! * (a) pinned, sshgw on one core and ssh and sshd on the other: [`pinned`];
//! * (g) the crypto floor of the negotiated AEADs, and sshgw's CPU per GiB against it:
//!   [`floor`];
//! * (h) up to 10,000 idle sessions through one sshgw under the shipped unit's open-file
//!   limit, held by a russh load client and server: [`scale`];
//! * (i) the policy decision time and the push time against the size of the device table
//!   and the policy set: [`policy`];
//! * `--profile`: `perf` samples of sshgw during a bulk transfer: [`profile`].
//!
//! [`charts`] draws SVG charts of the figures a run has (RSS against sessions, CPU per GiB
//! against the crypto floor, decision and push time against the table sizes).
//!
//! The outcome is `report.json` (every sample series, medians, p99s, ratios, the machine,
//! the commit and the date), `report.md` (the tables) and `results.md` (the Results section
//! that `cargo xtask bench` splices into `docs/benchmarks.md`). Nothing here asserts a
//! timing: a figure fails only when the harness cannot measure it.

pub mod bulk;
pub mod charts;
pub mod concurrency;
pub mod datapath;
pub mod env;
pub mod floor;
pub mod latency;
pub mod pinned;
pub mod policy;
pub mod profile;
pub mod report;
pub mod scale;
pub mod setup;
pub mod stats;
pub mod sys;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::topology::Lab;
use env::{BenchEnv, EnvOptions, Route};
use report::{FigureError, Report};

/// A figure that can be selected with `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    /// (a) and (f).
    Bulk,
    Setup,
    Latency,
    Concurrency,
    Datapath,
    /// The crypto floor (g); its ratios need the bulk figure in the same run.
    Floor,
    /// (a) with sshgw on one core, ssh and sshd on the other.
    BulkPinned,
    /// (h) thousands of sessions from the russh load client.
    Scale,
    /// (i) decision and push time against the table sizes.
    Policy,
}

impl Figure {
    pub const ALL: [Figure; 9] = [
        Figure::Bulk,
        Figure::Setup,
        Figure::Latency,
        Figure::Concurrency,
        Figure::Datapath,
        Figure::Floor,
        Figure::BulkPinned,
        Figure::Scale,
        Figure::Policy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Figure::Bulk => "bulk",
            Figure::Setup => "setup",
            Figure::Latency => "latency",
            Figure::Concurrency => "concurrency",
            Figure::Datapath => "datapath",
            Figure::Floor => "floor",
            Figure::BulkPinned => "bulk-pinned",
            Figure::Scale => "scale",
            Figure::Policy => "policy",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .with_context(|| {
                format!(
                    "unknown figure {name:?} (one of: {})",
                    Self::ALL.map(Figure::name).join(", ")
                )
            })
    }
}

/// Sizes and sample counts.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub bulk_bytes: u64,
    pub bulk_rounds: usize,
    pub setups: usize,
    pub keystrokes: usize,
    pub sessions: usize,
    /// Session handshakes in flight while ramping up.
    pub session_window: usize,
    pub session_rounds: usize,
    pub tcp_bytes: u64,
    /// Size of the SSH uploads that measure the program's per-packet cost on SSH.
    pub datapath_ssh_bytes: u64,
    pub datapath_rounds: usize,
    /// Session counts the scale figure measures at, in order.
    pub scale_levels: Vec<usize>,
    /// Its handshakes in flight, and keystrokes timed per level.
    pub scale_window: usize,
    pub scale_keystrokes: usize,
    /// Device table sizes of the policy figure (the lab's device included).
    pub policy_devices: Vec<usize>,
    /// Policy set sizes of the policy figure (the lab's policy included).
    pub policy_counts: Vec<usize>,
    /// Connections per decision-time sample of the policy figure…
    pub policy_connections: usize,
    /// …opened in this many chunks (the daemon's histogram is read after each).
    pub policy_chunks: usize,
    /// Timed pushes (each with its read-back) per table size.
    pub push_rounds: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            bulk_bytes: 1 << 30,
            bulk_rounds: 5,
            setups: 200,
            keystrokes: 1000,
            sessions: 2000,
            session_window: 32,
            session_rounds: 1,
            tcp_bytes: 8 << 30,
            datapath_ssh_bytes: 256 << 20,
            datapath_rounds: 10,
            scale_levels: vec![1000, 5000, 10_000],
            scale_window: 64,
            scale_keystrokes: 1000,
            // 65,536: the most tunnel addresses per family the datapath holds; 100,000
            // and 10,000 (over the 1,000-policy limit) are tried and reported refused.
            policy_devices: vec![10, 1_000, 65_536, 100_000],
            policy_counts: vec![10, 1_000, 10_000],
            policy_connections: 1000,
            policy_chunks: 10,
            push_rounds: 5,
        }
    }

    pub fn quick() -> Self {
        Self {
            bulk_bytes: 16 << 20,
            bulk_rounds: 2,
            setups: 20,
            keystrokes: 100,
            sessions: 50,
            session_window: 16,
            session_rounds: 1,
            tcp_bytes: 64 << 20,
            datapath_ssh_bytes: 16 << 20,
            datapath_rounds: 2,
            scale_levels: vec![20, 50, 100],
            scale_window: 16,
            scale_keystrokes: 100,
            policy_devices: vec![10, 1_000],
            policy_counts: vec![10, 100],
            policy_connections: 20,
            policy_chunks: 2,
            push_rounds: 1,
        }
    }
}

/// What to run and where the results go.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub sizes: Sizes,
    pub out_dir: PathBuf,
    /// Empty: every figure.
    pub only: Vec<Figure>,
    /// Also profile sshgw with perf during a bulk transfer.
    pub profile: bool,
    /// This binary (the datapath figure runs it in the namespaces as sender and receiver).
    pub exe: PathBuf,
    /// The workspace (for the git commit).
    pub workspace: PathBuf,
    /// Extra lines for sshgw's `[ssh]` table (`--gateway-ssh`), e.g. a cipher list to
    /// compare against the defaults.
    pub gateway_ssh: Vec<String>,
}

impl Options {
    fn wants(&self, f: Figure) -> bool {
        self.only.is_empty() || self.only.contains(&f)
    }
}

fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// Runs `body` in a fresh lab with a benchmark environment; a failure is recorded, and the
/// lab's process logs are printed.
fn in_lab<T>(
    figure: Figure,
    env_opts: &EnvOptions,
    errors: &mut Vec<FigureError>,
    body: impl FnOnce(&mut BenchEnv<'_>) -> Result<T>,
) -> Option<T> {
    log(&format!("== {}", figure.name()));
    let started = Instant::now();
    let outcome = Lab::new().and_then(|lab| {
        let result = BenchEnv::start(&lab, env_opts).and_then(|mut env| body(&mut env));
        if result.is_err() {
            lab.dump_logs();
        }
        result
    });
    log(&format!(
        "== {} done in {:.0}s",
        figure.name(),
        started.elapsed().as_secs_f64()
    ));
    match outcome {
        Ok(v) => Some(v),
        Err(err) => {
            log(&format!("{} FAILED: {err:#}", figure.name()));
            errors.push(FigureError {
                figure,
                error: format!("{err:#}"),
            });
            None
        }
    }
}

/// Runs the selected figures and writes the report files into `opts.out_dir`.
pub fn run(opts: &Options) -> Result<Report> {
    crate::topology::require_root()?;
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let nofile = sys::raise_nofile_limit()?;
    let started = Instant::now();
    let mut report = Report::new(opts);
    log(&format!(
        "{} run on {}; open-file limit {nofile}; load average {}",
        if opts.quick { "quick" } else { "full" },
        report.machine.summary(),
        report.load_before
    ));
    let s = &opts.sizes;
    let plain = EnvOptions {
        gateway_ssh: opts.gateway_ssh.clone(),
        ..EnvOptions::default()
    };
    let mut errors = Vec::new();

    if opts.wants(Figure::Bulk) {
        report.bulk = in_lab(Figure::Bulk, &plain, &mut errors, |env| {
            bulk::run(env, s.bulk_bytes, s.bulk_rounds, &log)
        });
    }
    if opts.wants(Figure::Floor) {
        log("== floor");
        match floor::measure(opts.quick, &opts.gateway_ssh, &log) {
            Ok(mut f) => {
                if let Some(b) = &report.bulk {
                    f.compare(b, &opts.gateway_ssh);
                }
                report.floor = Some(f);
            }
            Err(err) => {
                log(&format!("floor FAILED: {err:#}"));
                errors.push(FigureError {
                    figure: Figure::Floor,
                    error: format!("{err:#}"),
                });
            }
        }
    }
    if opts.wants(Figure::BulkPinned)
        && let Some(p) = in_lab(Figure::BulkPinned, &plain, &mut errors, |env| {
            pinned::run(env, s.bulk_bytes, s.bulk_rounds, &log)
        })
    {
        report.bulk_pinned = Some(p.bulk);
        report.bulk_parallel = p.parallel;
        if let Some(error) = p.parallel_error {
            errors.push(FigureError {
                figure: Figure::BulkPinned,
                error: format!("{} parallel uploads: {error}", pinned::PARALLEL),
            });
        }
    }
    if opts.wants(Figure::Setup) {
        report.setup = in_lab(Figure::Setup, &plain, &mut errors, |env| {
            setup::run(env, s.setups, &log)
        });
    }
    if opts.wants(Figure::Latency) {
        report.latency = in_lab(Figure::Latency, &plain, &mut errors, |env| {
            latency::run(env, s.keystrokes, &log)
        });
    }
    if opts.wants(Figure::Concurrency) {
        report.concurrency = in_lab(Figure::Concurrency, &plain, &mut errors, |env| {
            concurrency::run(env, s.sessions, s.session_window, s.session_rounds, &log)
        });
        if let Some(c) = &report.concurrency {
            for r in c.ramps.iter().filter(|r| r.error.is_some()) {
                errors.push(FigureError {
                    figure: Figure::Concurrency,
                    error: format!(
                        "{} ramp {} stopped at {} of {} sessions: {}",
                        r.route.label(),
                        r.round + 1,
                        r.reached,
                        r.target,
                        r.error.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
    }
    if opts.wants(Figure::Datapath) {
        let remove = EnvOptions {
            remove_on_stop: true,
            ..plain.clone()
        };
        report.datapath = in_lab(Figure::Datapath, &remove, &mut errors, |env| {
            datapath::run(
                env,
                &opts.exe,
                s.tcp_bytes,
                s.datapath_ssh_bytes,
                s.datapath_rounds,
                &log,
            )
        });
    }
    if opts.wants(Figure::Scale) {
        report.scale = scale::figure(opts, &plain, &mut errors, &log);
    }
    if opts.wants(Figure::Policy) {
        report.policy = in_lab(Figure::Policy, &plain, &mut errors, |env| {
            policy::run(env, &opts.exe, s, &log)
        });
    }
    if opts.profile {
        let out = opts.out_dir.clone();
        let bytes = s.bulk_bytes;
        let profiles = in_lab(Figure::Bulk, &plain, &mut errors, |env| {
            let mut all = Vec::new();
            for (route, direction) in [
                (Route::Sshgw, bulk::Direction::Upload),
                (Route::Sshgw, bulk::Direction::Download),
                (Route::SshgwLogged, bulk::Direction::Upload),
            ] {
                all.push(profile::run(env, &out, route, direction, bytes, &log)?);
            }
            Ok(all)
        });
        report.profiles = profiles.unwrap_or_default();
    }

    report.errors = errors;
    report.finish(started.elapsed().as_secs_f64());
    report.write(&opts.out_dir)?;
    log(&format!(
        "wrote {} ({:.0}s)",
        opts.out_dir.join("report.json").display(),
        report.duration_s
    ));
    Ok(report)
}

/// Runs the benchmark and fails when a figure could not be measured (after writing the
/// report).
pub fn run_checked(opts: &Options) -> Result<()> {
    let report = run(opts)?;
    print!("{}", report.markdown());
    if !report.errors.is_empty() {
        bail!(
            "{} figure(s) could not be measured: {}",
            report.errors.len(),
            report
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.figure.name(), e.error))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Default output directory `<workspace>/target/bench`.
pub fn default_out_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("bench")
}
