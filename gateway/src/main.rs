//! sshgw: a transparent SSH audit gateway for Linux egress routers.
//!
//! The modules are listed in the order data flows through the gateway, then the modules
//! beside the flow and the helpers under all of them. Which module uses which is drawn in
//! docs/architecture.md ("Module dependencies"); there are no import cycles.

// The operator's TOML settings, read by every stage.
mod config;
// Kernel: the TC program, its pinned maps and links, and the policy routing.
mod datapath;
// Intercepted connections: transparent listeners and admission.
mod intercept;
// Who is connecting: devices, the address index, principals.
mod identity;
// What they may do: the policy set and its evaluation.
mod policy;
// Devices, policies and datapath maps swapped together, with rollback.
mod state;
#[cfg(test)]
mod state_tests;
// Keys the relay presents and accepts: the gateway's CAs and the servers' pinned keys.
mod trust;
// One SSH session, device to gateway to server.
mod relay;
// SFTP and scp parsers and transfer rules (pure; fuzzed on their own).
mod file_audit;
// Encrypted per-channel recordings in ssh-log-cli format.
mod recording;
// The SQLite session log and the live-session registry.
mod sessions;
// Evidence off the box: finished recordings and session records to S3 object storage.
mod storage;
// One index for every router: the outbox shipped to a central PostgreSQL.
mod central;
// SIEM feeds from the outbox: OpenTelemetry logs (OTLP/HTTP) and RFC 5424 syslog.
mod export;
// Process-wide counters and their Prometheus exposition.
mod metrics;

// Beside the flow: the local HTTP/JSON API on a Unix socket.
mod control;
// Beside the flow: the auditor's web console (`sshgw console`), a reader of sessions and
// recordings.
mod console;
// Beside the flow: the `sshgw` command line.
mod cli;
// Beside the flow: `sshgw run`, which wires the stages and handles signals.
mod daemon;

// Below everything: leaf helpers with no domain imports.
mod util;

fn main() -> std::process::ExitCode {
    cli::main()
}
