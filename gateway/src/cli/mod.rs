//! Command-line interface.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 3 input refused (invalid file or
//! request), 4 daemon unreachable, 5 `doctor` found a problem.

mod ca;
mod central;
mod datapath;
mod devices;
mod doctor;
mod escape;
mod policy;
mod recording;
mod recording_fetch;
mod sessions;
pub mod status;
mod table;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::{
    config::{self, Config},
    control::client::{Client, ClientError, Document},
    daemon::logging::{self, LogFormat},
};

pub const DEFAULT_CONFIG: &str = "/etc/sshgw/sshgw.toml";

#[derive(Parser)]
#[command(name = "sshgw", version, about = "Transparent SSH audit gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log format: JSON when stderr is not a terminal, unless set.
        #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
        log_format: LogFormat,
    },
    /// Show the datapath: interfaces, listeners and counters.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the gateway's CA public keys (creating the keys on first use).
    Ca {
        #[command(subcommand)]
        what: ca::CaCommand,
        #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The kernel datapath a stopped daemon leaves in place (failing closed).
    Datapath {
        #[command(subcommand)]
        what: datapath::DatapathCommand,
        #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Audit-SSH policies: push, show, check.
    Policy {
        #[command(subcommand)]
        what: policy::PolicyCommand,
    },
    /// The device table: push, show.
    Devices {
        #[command(subcommand)]
        what: devices::DevicesCommand,
    },
    /// Session recordings: keygen, decrypt, export, replay, verify.
    Recording {
        #[command(subcommand)]
        what: recording::RecordingCommand,
    },
    /// The central PostgreSQL index of every router's sessions.
    Central {
        #[command(subcommand)]
        what: central::CentralCommand,
    },
    /// Check this router's setup (or, with --server, an audited server) and say how to fix it.
    Doctor(doctor::DoctorArgs),
    /// Serve the auditor's web console: browse, search and replay sessions in a browser
    /// that alone holds the recording private key.
    Console {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Read sessions from the central PostgreSQL index ([central]) instead of this
        /// router's session log.
        #[arg(long)]
        central: bool,
        /// Address to listen on (default [console] listen, else 127.0.0.1:8080); any but
        /// loopback needs [console] tls_cert and tls_key.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// The session log: list, show, kill.
    #[command(args_conflicts_with_subcommands = true)]
    Sessions {
        #[command(subcommand)]
        what: Option<sessions::SessionsCommand>,
        #[command(flatten)]
        list: sessions::ListArgs,
    },
}

/// Where the daemon is: its control socket, from `--socket` or the config.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Config file (for the control socket and pin directory).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Control socket (overrides the config).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

impl Target {
    fn config(&self) -> Result<Option<Config>> {
        match &self.config {
            Some(path) => Ok(Some(Config::load(path)?)),
            None if self.socket.is_none() && Path::new(DEFAULT_CONFIG).exists() => {
                Ok(Some(Config::load(Path::new(DEFAULT_CONFIG))?))
            }
            None => Ok(None),
        }
    }

    fn socket(&self, config: Option<&Config>) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| config.map(|c| c.control_socket.clone()))
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONTROL_SOCKET))
    }
}

/// The request was refused as invalid (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Console { .. }) {
        // Behave like any Unix filter: `sshgw sessions | head` ends quietly. (The servers,
        // the daemon and the console, keep Rust's default of ignoring SIGPIPE, so a
        // vanished peer is just an error, never the end of the process.)
        // SAFETY: setting a signal disposition before any other thread exists.
        #[allow(unsafe_code)] // reason: SIGPIPE's disposition is set through libc::signal
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL)
        };
    }
    let result = match cli.command {
        Command::Run { config, log_format } => {
            logging::init(log_format);
            run(config)
        }
        Command::Status { target, json } => status::run(&target, json),
        Command::Ca { what, config } => ca::run(what, &config),
        Command::Policy { what } => policy::run(what),
        Command::Datapath { what, config } => datapath::run(what, &config),
        Command::Devices { what } => devices::run(what),
        Command::Recording { what } => recording::run(what),
        Command::Doctor(args) => doctor::run(&args),
        Command::Central { what } => central::run(what),
        Command::Console {
            config,
            central,
            listen,
        } => crate::console::run(crate::console::Options {
            config,
            central,
            listen,
        }),
        Command::Sessions {
            what: Some(what), ..
        } => sessions::run(what),
        Command::Sessions { what: None, list } => sessions::list(list),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote input and daemon answers: escaped like any other output.
            eprintln!("sshgw: {}", escape::escape(&format!("{e:#}")));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Refused>().is_some() {
        3
    } else if e.downcast_ref::<doctor::ChecksFailed>().is_some() {
        5
    } else if matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Unreachable { .. })
    ) {
        4
    } else {
        1
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(config_path: PathBuf) -> Result<()> {
    let config = Config::load(&config_path)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::daemon::run(config, &config_path))
}

/// Reads FILE, or standard input for `-`.
fn read_input(file: &Path) -> Result<String> {
    use anyhow::Context;
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

/// One request of the typed client to the daemon of `target`; an error answer becomes
/// [`Refused`] (4xx) or an error with the daemon's text and the status.
fn ask<T, F>(target: &Target, request: impl FnOnce(Client) -> F) -> Result<T>
where
    F: Future<Output = Result<T, ClientError>>,
{
    let config = target.config()?;
    let client = Client::new(target.socket(config.as_ref()));
    runtime()?.block_on(request(client)).map_err(|e| match e {
        ClientError::Status { status, body } => {
            let message = body["error"]
                .as_str()
                .unwrap_or("request failed")
                .to_string();
            if status.is_client_error() {
                Refused(message).into()
            } else {
                anyhow::anyhow!("{message} ({status})")
            }
        }
        other => other.into(),
    })
}

/// A state document for `show`. With `json`, prints it exactly as the daemon sent it (its
/// ETag on standard error) and returns `None`; otherwise returns it and its ETag for a table.
fn show_document<T: serde::de::DeserializeOwned>(
    document: Document<T>,
    json: bool,
) -> Result<Option<(T, String)>> {
    let etag = document.etag.clone().unwrap_or_else(|| "-".into());
    if json {
        eprintln!("etag {}", escape::escape(&etag));
        print_json(&document.json)?;
        return Ok(None);
    }
    Ok(Some((document.value()?, etag)))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
