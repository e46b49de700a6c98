//! Developer tasks for sshgw, run as `cargo xtask <command>` (alias in .cargo/config.toml).

mod bench;
mod console;
mod deploy;
mod ebpf;
mod lab;
mod prereqs;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "sshgw build, test and setup tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check build/test prerequisites and install whatever is missing.
    Prereqs,
    /// Build the eBPF datapath object (nightly, bpfel-unknown-none); runs prereqs first.
    BuildEbpf,
    /// Build the console's files that `cargo build -p sshgw` embeds: asciinema-player (npm
    /// ci, locked) and the wasm recording reader; runs prereqs first.
    BuildConsole,
    /// Build everything and run the unit and network-namespace tests.
    Test(test::TestArgs),
    /// Build a release sshgw and install it (binary, systemd unit, default config) on a
    /// router over SSH (--host) or into a directory tree (--root). Enables the service but
    /// does not start it.
    Deploy(deploy::DeployArgs),
    /// The whole job end to end: build, create a device/router/server lab with sshd and
    /// sshgw, run a scripted ssh session, show the session log and replay the recording,
    /// and leave the lab up for an interactive try (--down removes it; --ci checks and
    /// tears down).
    Lab(lab::LabArgs),
    /// Benchmark sshgw against the direct path in the netns lab (release build); writes
    /// target/bench/report.json and, after a full run, refreshes docs/benchmarks.md.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> Result<()> {
    match command {
        Cmd::Prereqs => prereqs::ensure().map(drop),
        Cmd::BuildEbpf => {
            let prereqs = prereqs::ensure()?;
            ebpf::build(&util::workspace_root()?, &prereqs).map(drop)
        }
        Cmd::BuildConsole => {
            prereqs::ensure()?;
            console::build(&util::workspace_root()?)
        }
        Cmd::Test(args) => test::run(&args),
        Cmd::Deploy(args) => deploy::run(&args),
        Cmd::Lab(args) => lab::run(&args),
        Cmd::Bench(args) => bench::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_flags_and_extra_args() {
        let cli = Cli::try_parse_from([
            "xtask",
            "test",
            "--netns-only",
            "--",
            "filter",
            "--nocapture",
        ])
        .expect("valid command line");
        let Cmd::Test(args) = cli.command else {
            panic!("expected the test subcommand");
        };
        assert!(args.netns_only && !args.unit_only);
        assert_eq!(args.extra, ["filter", "--nocapture"]);
    }

    #[test]
    fn conflicting_test_flags_are_rejected() {
        assert!(Cli::try_parse_from(["xtask", "test", "--unit-only", "--netns-only"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "test", "--unit-only", "--", "x"]).is_err());
    }

    #[test]
    fn deploy_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["xtask", "deploy"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "deploy", "--host", "r", "--root", "/x"]).is_err());
        // --ssh-opt only makes sense with --host.
        assert!(
            Cli::try_parse_from(["xtask", "deploy", "--root", "/x", "--ssh-opt", "A=b"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "xtask",
            "deploy",
            "--host",
            "admin@router",
            "--ssh-opt",
            "Port=2222",
            "--ssh-opt",
            "User=admin",
        ])
        .expect("valid command line");
        let Cmd::Deploy(args) = cli.command else {
            panic!("expected the deploy subcommand");
        };
        assert_eq!(args.host.as_deref(), Some("admin@router"));
        assert_eq!(args.ssh_opts, ["Port=2222", "User=admin"]);
        assert!(args.root.is_none() && args.binary.is_none());

        let cli = Cli::try_parse_from(["xtask", "deploy", "--root", "/mnt/r", "--binary", "b"])
            .expect("valid command line");
        let Cmd::Deploy(args) = cli.command else {
            panic!("expected the deploy subcommand");
        };
        assert_eq!(args.root.as_deref(), Some(std::path::Path::new("/mnt/r")));
        assert_eq!(args.binary.as_deref(), Some(std::path::Path::new("b")));
    }

    #[test]
    fn lab_flags() {
        let cli = Cli::try_parse_from(["xtask", "lab"]).expect("valid command line");
        let Cmd::Lab(args) = cli.command else {
            panic!("expected the lab subcommand");
        };
        assert!(!args.ci && !args.down);
        assert!(Cli::try_parse_from(["xtask", "lab", "--down"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "lab", "--ci"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "lab", "--ci", "--down"]).is_err());
    }

    #[test]
    fn bench_flags() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--quick", "--only", "bulk,setup"])
            .expect("valid command line");
        let Cmd::Bench(args) = cli.command else {
            panic!("expected the bench subcommand");
        };
        assert!(args.quick && !args.profile && !args.no_docs);
        assert_eq!(args.only, ["bulk", "setup"]);
        assert!(Cli::try_parse_from(["xtask", "bench", "--profile", "--no-docs"]).is_ok());
    }

    #[test]
    fn build_ebpf_is_kebab_case() {
        assert!(Cli::try_parse_from(["xtask", "build-ebpf"]).is_ok());
    }
}
