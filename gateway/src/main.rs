//! sshgw: a transparent SSH audit gateway for Linux egress routers.

mod admission;
#[cfg(test)]
mod admission_tests;
mod ca;
mod cli;
mod config;
mod control;
mod daemon;
mod datapath;
mod devices;
// Not called by the relay yet: remove the allow when it is.
mod file_audit;
#[cfg(test)]
mod golden;
mod identity;
mod json_file;
mod listener;
mod logging;
mod metrics;
mod network;
mod notify;
mod policies;
mod policy_eval;
mod principal;
mod recording;
mod relay;
mod rlimit;
mod sessions;
mod state;
#[cfg(test)]
mod state_tests;
mod status;
mod upstream_keys;
#[cfg(test)]
mod wire_golden_tests;

fn main() -> std::process::ExitCode {
    cli::main()
}
