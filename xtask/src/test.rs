//! `cargo xtask test`: the single entry point that builds everything and runs every test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::prereqs::{self, Prereqs};
use crate::{ebpf, util};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only the unit tests (no network-namespace tests, no root needed).
    #[arg(long, conflicts_with = "netns_only")]
    pub unit_only: bool,

    /// Run only the network-namespace tests.
    #[arg(long)]
    pub netns_only: bool,

    /// Extra arguments for the netns test binary (after `--`), e.g. a test name filter.
    #[arg(last = true, value_name = "EXTRA", conflicts_with = "unit_only")]
    pub extra: Vec<String>,
}

/// Unit-tested host crates. Never `--workspace`: gateway-ebpf must not be built for the host.
const UNIT_TEST_PACKAGES: &[&str] = &["sshgw", "sshgw-recording", "gateway-common", "xtask"];
const NETNS_TEST_PACKAGE: &str = "sshgw-tests";
const NETNS_TEST_THREADS: &str = "--test-threads=2";
const SSHD: &str = "/usr/sbin/sshd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Prereqs,
    NetnsRequirements,
    BuildEbpf,
    BuildGateway,
    UnitTests,
    NetnsTests,
    /// `cargo xtask bench --quick`: shows the benchmark harness works (no timing checks).
    BenchQuick,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Prereqs => "prereqs",
            Step::NetnsRequirements => "netns requirements",
            Step::BuildEbpf => "build-ebpf",
            Step::BuildGateway => "build sshgw (release)",
            Step::UnitTests => "unit tests",
            Step::NetnsTests => "netns tests",
            Step::BenchQuick => "bench --quick",
        }
    }

    /// Whether a failure makes the remaining steps pointless (they are then skipped).
    /// Test steps are not: the netns tests still run after a unit-test failure.
    fn aborts_on_failure(self) -> bool {
        !matches!(self, Step::UnitTests | Step::NetnsTests | Step::BenchQuick)
    }
}

fn plan(args: &TestArgs) -> Vec<Step> {
    let netns = !args.unit_only;
    let unit = !args.netns_only;
    let mut steps = vec![Step::Prereqs];
    if netns {
        // Checked before the builds so a missing requirement fails fast.
        steps.push(Step::NetnsRequirements);
    }
    steps.extend([Step::BuildEbpf, Step::BuildGateway]);
    if unit {
        steps.push(Step::UnitTests);
    }
    if netns {
        steps.push(Step::NetnsTests);
        // A filtered run is about particular tests; the benchmark harness is not one.
        if args.extra.is_empty() {
            steps.push(Step::BenchQuick);
        }
    }
    steps
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Skipped,
}

struct RunState<'a> {
    root: PathBuf,
    target_dir: PathBuf,
    extra: &'a [String],
    prereqs: Option<Prereqs>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let root = util::workspace_root()?;
    let mut ctx = RunState {
        target_dir: util::target_dir(&root),
        root,
        extra: &args.extra,
        prereqs: None,
    };

    let steps = plan(args);
    let mut results: Vec<(Step, Outcome, Duration)> = Vec::new();
    let mut aborted = false;
    for (i, &step) in steps.iter().enumerate() {
        if aborted {
            results.push((step, Outcome::Skipped, Duration::ZERO));
            continue;
        }
        println!("\n==> [{}/{}] {}", i + 1, steps.len(), step.name());
        let start = Instant::now();
        let outcome = match execute(step, &mut ctx) {
            Ok(()) => Outcome::Ok,
            Err(err) => {
                eprintln!("[test] {} FAILED: {err:#}", step.name());
                aborted = step.aborts_on_failure();
                Outcome::Failed
            }
        };
        results.push((step, outcome, start.elapsed()));
    }

    print_summary(&results);
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, outcome, _)| *outcome == Outcome::Failed)
        .map(|(step, _, _)| step.name())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} steps failed: {}",
            failed.len(),
            steps.len(),
            failed.join(", ")
        );
    }
    println!("[test] all {} steps passed", steps.len());
    Ok(())
}

fn execute(step: Step, ctx: &mut RunState<'_>) -> Result<()> {
    match step {
        Step::Prereqs => {
            ctx.prereqs = Some(prereqs::ensure()?);
        }
        Step::NetnsRequirements => check_netns_requirements()?,
        Step::BuildEbpf => {
            let prereqs = ctx
                .prereqs
                .as_ref()
                .context("prereqs step did not complete")?;
            ebpf::build(&ctx.root, prereqs)?;
        }
        Step::BuildGateway => {
            crate::console::build(&ctx.root)?;
            util::run(
                util::host_cargo()
                    .args(["build", "--release", "--package", "sshgw"])
                    .current_dir(&ctx.root),
            )?;
            let bin = sshgw_bin(&ctx.target_dir);
            if !util::is_executable(&bin) {
                bail!(
                    "`cargo build --release --package sshgw` finished but {} is missing",
                    bin.display()
                );
            }
        }
        Step::BenchQuick => {
            // This very binary, even once the unit-test step has replaced target/debug/xtask
            // (building it for the deploy tests, with the workspace's unified features,
            // relinks that path while this process runs from the old file).
            let xtask = PathBuf::from("/proc/self/exe");
            util::run(
                Command::new(xtask)
                    .args(["bench", "--quick"])
                    .current_dir(&ctx.root),
            )?;
        }
        Step::UnitTests => {
            let mut cmd = util::host_cargo();
            // Every package's tests run even if one fails, so one failure hides nothing.
            cmd.args(["test", "--no-fail-fast"]).current_dir(&ctx.root);
            for pkg in UNIT_TEST_PACKAGES {
                cmd.args(["--package", pkg]);
            }
            // xtask's deploy tests install and run the sshgw built just before.
            let bin = sshgw_bin(&ctx.target_dir);
            if let Ok(bin) = bin.canonicalize() {
                cmd.env("SSHGW_BIN", bin);
            }
            util::run(&mut cmd)?;
        }
        Step::NetnsTests => {
            let bin = sshgw_bin(&ctx.target_dir);
            let bin = bin
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", bin.display()))?;
            println!("[test] SSHGW_BIN={}", bin.display());
            util::run(
                util::host_cargo()
                    .args([
                        "test",
                        "--no-fail-fast",
                        "--package",
                        NETNS_TEST_PACKAGE,
                        "--",
                    ])
                    .arg(NETNS_TEST_THREADS)
                    .args(ctx.extra)
                    .env("SSHGW_BIN", &bin)
                    .env(prereqs::CLIENTS_VENV_ENV, prereqs::clients_venv()?)
                    .env(prereqs::S3_VENV_ENV, prereqs::s3_venv()?)
                    .current_dir(&ctx.root),
            )?;
        }
    }
    Ok(())
}

/// The binary the deploy and netns tests run: the release build, as shipped. A debug build
/// relays and records at a few MB/s (its ciphers are generic code compiled without
/// optimisation), which turns the stress suite's GiB of traffic into an hour.
fn sshgw_bin(target_dir: &Path) -> PathBuf {
    target_dir.join("release").join("sshgw")
}

/// The netns tests need root and real `ip`, `sshd`, `ssh` and `tcpdump`. They are never
/// skipped: anything missing fails the run (with or without `CI=true`).
fn check_netns_requirements() -> Result<()> {
    let mut missing = Vec::new();
    let euid = util::effective_uid()?;
    if euid != 0 {
        missing.push(format!("root privileges (running as uid {euid})"));
    }
    // Non-root PATHs often lack the sbin directories.
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    for (tool, package) in [
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("tcpdump", "tcpdump"),
    ] {
        match util::find_executable(tool, &sbin) {
            Some(path) => println!("[test] ok: {tool} ({})", path.display()),
            None => missing.push(format!("`{tool}` (package {package})")),
        }
    }
    if util::is_executable(Path::new(SSHD)) {
        println!("[test] ok: sshd ({SSHD})");
    } else {
        missing.push(format!("`{SSHD}` (package openssh-server)"));
    }
    if euid == 0 {
        println!("[test] ok: running as root");
    }

    if !missing.is_empty() {
        bail!(
            "the network-namespace tests cannot run; missing: {}. They are never skipped: run \
             as root on a host with these installed (`cargo xtask prereqs` installs the \
             packages), or pass --unit-only to run just the unit tests",
            missing.join(", ")
        );
    }
    Ok(())
}

fn print_summary(results: &[(Step, Outcome, Duration)]) {
    println!("\n==> summary");
    for (step, outcome, elapsed) in results {
        let (label, time) = match outcome {
            Outcome::Ok => ("ok", util::format_duration(*elapsed)),
            Outcome::Failed => ("FAILED", util::format_duration(*elapsed)),
            Outcome::Skipped => ("skipped", "-".to_owned()),
        };
        println!("  {label:<8} {:<22} {time:>8}", step.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(unit_only: bool, netns_only: bool) -> TestArgs {
        TestArgs {
            unit_only,
            netns_only,
            extra: Vec::new(),
        }
    }

    #[test]
    fn full_plan_runs_everything_in_order() {
        assert_eq!(
            plan(&args(false, false)),
            [
                Step::Prereqs,
                Step::NetnsRequirements,
                Step::BuildEbpf,
                Step::BuildGateway,
                Step::UnitTests,
                Step::NetnsTests,
                Step::BenchQuick
            ]
        );
    }

    #[test]
    fn a_test_filter_skips_the_bench() {
        let mut filtered = args(false, false);
        filtered.extra = vec!["relay".into()];
        assert!(!plan(&filtered).contains(&Step::BenchQuick));
    }

    #[test]
    fn unit_only_skips_netns_checks_and_tests() {
        let steps = plan(&args(true, false));
        assert!(steps.contains(&Step::UnitTests));
        assert!(!steps.contains(&Step::NetnsRequirements));
        assert!(!steps.contains(&Step::NetnsTests));
    }

    #[test]
    fn netns_only_skips_unit_tests_but_still_builds() {
        let steps = plan(&args(false, true));
        assert!(!steps.contains(&Step::UnitTests));
        assert!(steps.contains(&Step::BuildEbpf));
        assert!(steps.contains(&Step::NetnsRequirements));
        assert!(steps.contains(&Step::NetnsTests));
    }

    #[test]
    fn unit_tests_never_cover_the_ebpf_crate() {
        assert!(!UNIT_TEST_PACKAGES.contains(&"gateway-ebpf"));
    }
}
