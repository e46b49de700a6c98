//! Command-line interface. Exit codes: 0 success, 1 failure, 2 usage error,
//! 3 input refused, 4 daemon unreachable.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    config::{self, Config},
    control::client::{self, ClientError},
    logging::{self, LogFormat},
    status,
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
        /// Config file, for the control socket and pin directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Control socket (overrides the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the gateway's CA public keys (creating the keys on first use).
    Ca {
        #[command(subcommand)]
        what: CaCommand,
        #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum CaCommand {
    /// The user CA line for the servers' sshd `TrustedUserCAKeys` file.
    UserKey,
    /// The `@cert-authority` line for the devices' `known_hosts`.
    KnownHosts,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, log_format } => {
            logging::init(log_format);
            run(config)
        }
        Command::Status {
            config,
            socket,
            json,
        } => status_cmd(config, socket, json),
        Command::Ca { what, config } => ca_cmd(what, config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sshgw: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(config_path: PathBuf) -> Result<ExitCode> {
    let config = Config::load(&config_path)?;
    runtime()?.block_on(crate::daemon::run(config))?;
    Ok(ExitCode::SUCCESS)
}

fn ca_cmd(what: CaCommand, config_path: PathBuf) -> Result<ExitCode> {
    let config = Config::load(&config_path)?;
    let authorities = crate::ca::Authorities::load_or_create(&config.state_dir)?;
    println!(
        "{}",
        match what {
            CaCommand::UserKey => authorities.user_ca_public_line(),
            CaCommand::KnownHosts => authorities.known_hosts_line(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn status_cmd(config: Option<PathBuf>, socket: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let config = match config {
        Some(path) => Some(Config::load(&path)?),
        None if socket.is_none() && std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Some(Config::load(std::path::Path::new(DEFAULT_CONFIG))?)
        }
        None => None,
    };
    let socket = socket
        .or_else(|| config.as_ref().map(|c| c.control_socket.clone()))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONTROL_SOCKET));
    let pin_dir = config
        .as_ref()
        .map(|c| c.datapath.pin_dir.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PIN_DIR));

    let report = runtime()?.block_on(async {
        match client::request(&socket, "GET", "/status", None).await {
            Ok((code, body)) if code.is_success() => Ok(serde_json::from_value(body)?),
            Ok((code, body)) => anyhow::bail!("status failed ({code}): {}", body["error"]),
            // No daemon: report what the kernel still holds.
            Err(ClientError::Unreachable { .. }) => status::from_pins(pin_dir),
            Err(ClientError::Other(e)) => Err(e),
        }
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        println!();
    } else {
        status::print_human(&report, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}
