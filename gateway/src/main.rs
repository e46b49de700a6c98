//! sshgw: a transparent SSH audit gateway for Linux egress routers.

mod cli;
mod config;
mod control;
mod daemon;
mod datapath;
mod devices;
mod json_file;
mod listener;
mod logging;
mod network;
mod policies;
mod splice;
mod status;

fn main() -> std::process::ExitCode {
    cli::main()
}
