//! `sshgw-bench`: the benchmark runner behind `cargo xtask bench` (see
//! `sshgw_tests::bench`), plus what it runs inside the lab namespaces: the TCP
//! sender/receiver of the datapath figure and the SSH load server/client of the scale figure
//! (`sshgw_tests::load`).
//!
//! ```text
//! sshgw-bench [run] [--quick] [--out DIR] [--only FIG,...] [--profile] [--sessions N]
//!             [--bulk-bytes N] [--scale-levels N,...] [--gateway-ssh LINE]...
//! sshgw-bench tcp-sink --listen ADDR:PORT
//! sshgw-bench tcp-source --connect ADDR:PORT --bytes N
//! sshgw-bench load-server --listen ADDR:PORT --user-ca FILE
//! sshgw-bench load-client --connect ADDR:PORT --user LOGIN --window N
//! sshgw-bench tcp-connect --connect ADDR:PORT --count N
//! ```
//!
//! Needs root and `SSHGW_BIN` (the release sshgw); `cargo xtask bench` sets everything up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use sshgw_tests::bench::{self, Figure, Options, Sizes, datapath, policy};
use sshgw_tests::load::{client, server};

const USAGE: &str = "usage:
  sshgw-bench [run] [--quick] [--out DIR] [--only FIG,...] [--profile] [--sessions N]
              [--bulk-bytes N] [--scale-levels N,...] [--gateway-ssh LINE]...
      FIG: bulk, setup, latency, concurrency, datapath, floor, bulk-pinned, scale, policy
      --sessions N: idle sessions of the concurrency figure (default 2000, quick 50)
      --bulk-bytes N: bytes per bulk transfer (default 1 GiB, quick 16 MiB)
      --scale-levels N,...: session counts of the scale figure (default 1000,5000,10000;
        quick 20,50,100)
      --gateway-ssh LINE: a line for sshgw's [ssh] table, e.g.
        'upstream_ciphers = [\"aes128-ctr\"]' (repeatable)
  sshgw-bench tcp-sink --listen ADDR:PORT
  sshgw-bench tcp-source --connect ADDR:PORT --bytes N
  sshgw-bench load-server --listen ADDR:PORT --user-ca FILE     (run by the scale figure)
  sshgw-bench load-client --connect ADDR:PORT --user LOGIN --window N

  sshgw-bench tcp-connect --connect ADDR:PORT --count N";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sshgw-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The value following `flag` in `args`.
fn value<'a>(args: &'a [String], flag: &str) -> Result<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .with_context(|| format!("{flag} VALUE is required\n{USAGE}"))
}

fn socket_addr(text: &str, flag: &str) -> Result<std::net::SocketAddr> {
    text.parse()
        .with_context(|| format!("{flag} takes ADDR:PORT, not {text:?}"))
}

fn dispatch(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("tcp-sink") => datapath::tcp_sink(value(args, "--listen")?),
        Some("tcp-source") => {
            let bytes = value(args, "--bytes")?
                .parse()
                .context("--bytes must be a byte count")?;
            datapath::tcp_source(value(args, "--connect")?, bytes)
        }
        Some("load-server") => server::run(&server::ServerOptions {
            listen: socket_addr(value(args, "--listen")?, "--listen")?,
            user_ca: PathBuf::from(value(args, "--user-ca")?),
        }),
        Some("load-client") => client::run(&client::ClientOptions {
            connect: socket_addr(value(args, "--connect")?, "--connect")?,
            user: value(args, "--user")?.to_owned(),
            window: value(args, "--window")?
                .parse()
                .context("--window takes a number")?,
        }),
        Some("tcp-connect") => {
            let count = value(args, "--count")?
                .parse()
                .context("--count must be a number of connections")?;
            policy::tcp_connect(value(args, "--connect")?, count)
        }
        Some("run") => run(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => run(args),
    }
}

fn run(args: &[String]) -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace directory")?
        .to_path_buf();
    let mut quick = false;
    let mut profile = false;
    let mut out_dir = None;
    let mut sessions = None;
    let mut bulk_bytes = None;
    let mut scale_levels = None;
    let mut only = Vec::new();
    let mut gateway_ssh = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--profile" => profile = true,
            "--out" => out_dir = Some(PathBuf::from(it.next().context("--out DIR")?)),
            "--sessions" => {
                sessions = Some(
                    it.next()
                        .context("--sessions N")?
                        .parse()
                        .context("--sessions takes a number")?,
                )
            }
            "--bulk-bytes" => {
                bulk_bytes = Some(
                    it.next()
                        .context("--bulk-bytes N")?
                        .parse()
                        .context("--bulk-bytes takes a byte count")?,
                )
            }
            "--scale-levels" => {
                let list = it.next().context("--scale-levels N,...")?;
                let levels = list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("--scale-levels takes numbers, not {list:?}"))?;
                scale_levels = Some(levels);
            }
            "--gateway-ssh" => gateway_ssh.push(it.next().context("--gateway-ssh LINE")?.clone()),
            "--only" => {
                for name in it.next().context("--only FIG,...")?.split(',') {
                    only.push(Figure::parse(name.trim())?);
                }
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let mut sizes = if quick { Sizes::quick() } else { Sizes::full() };
    if let Some(n) = sessions {
        sizes.sessions = n;
    }
    if let Some(n) = bulk_bytes {
        sizes.bulk_bytes = n;
    }
    if let Some(levels) = scale_levels {
        sizes.scale_levels = levels;
    }
    let opts = Options {
        quick,
        sizes,
        out_dir: out_dir.unwrap_or_else(|| bench::default_out_dir(&workspace)),
        only,
        profile,
        exe: std::env::current_exe().context("locating this executable")?,
        workspace,
        gateway_ssh,
    };
    bench::run_checked(&opts)
}
