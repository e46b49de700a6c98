//! An SSH load client and an SSH server built with russh, for holding thousands of
//! interactive sessions through one sshgw (the benchmark's scale figure,
//! [`crate::bench::scale`]).
//!
//! OpenSSH runs a process per session at both ends (ssh, and sshd's per-connection process
//! and the shell), which a 2-core machine cannot do 10,000 times. These two hold every
//! session in one process each, on one thread, with a few KiB per session:
//!
//! * [`server`]: listens in the lab's server namespace and accepts only OpenSSH user
//!   certificates, checked the way sshd checks them against `TrustedUserCAKeys` ([`cert`]);
//!   a session's shell (or command) is an in-process echo that first writes
//!   [`READY_MARKER`];
//! * [`client`]: runs in the device namespace, opens sessions through the gateway the way
//!   the lab's device does (sshgw asks for nothing: `none` succeeds), requests a pty and a
//!   shell, waits for the marker and keeps the session idle; on request it times keystroke
//!   round trips through the echo.
//!
//! Both are subcommands of `sshgw-bench` (`load-server`, `load-client`) and talk to the
//! harness in JSON lines ([`protocol`]): commands on standard input, events on standard
//! output, diagnostics on standard error.

pub mod cert;
pub mod client;
pub mod protocol;
pub mod server;

/// What the echo writes once a session's shell or command runs (the client waits for it).
pub const READY_MARKER: &str = "sshgw-load-ready";

/// The key exchange of both ends, as the benchmark's OpenSSH figures pin it
/// ([`crate::bench::env::BENCH_KEX`]): the device leg and the server leg each pay for
/// one curve25519 exchange.
pub fn kex_order(server: bool) -> std::borrow::Cow<'static, [russh::kex::Name]> {
    use russh::kex;
    std::borrow::Cow::Owned(if server {
        vec![
            kex::CURVE25519,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]
    } else {
        vec![
            kex::CURVE25519,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        ]
    })
}

/// A one-thread tokio runtime: both ends hold every session on it.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}
