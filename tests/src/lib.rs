//! Network-namespace lab harness for sshgw integration tests (and `cargo xtask lab`).
//!
//! A [`Lab`] is three fresh network namespaces wired as device -> router -> server (see
//! [`topology`]), with IPv4 and IPv6 addresses from documentation/CGNAT ranges only. On top of
//! it the harness runs real programs, each owned by the lab's process registry
//! ([`process::Processes`]) and killed by PID when the lab is dropped (also on panic):
//!
//! * [`sshd`]: OpenSSH's sshd in `srv` (ports 22 and 2222, IPv4 and IPv6), in a private mount
//!   namespace with lab-only Unix users, optionally trusting the gateway's user CA;
//! * [`ssh`]: the OpenSSH client in `dev` (one-shot commands, long-lived sessions, pty
//!   sessions, scp/sftp/rsync);
//! * [`gateway`]: the sshgw daemon in `rtr` (config/state files, CA, start/stop/kill,
//!   `status`);
//! * [`capture`]: tcpdump in any namespace, parsed packets (TTL / hop limit checks);
//! * [`control`]: a std-only HTTP/1.1 client for the daemon's control socket (see
//!   [`Gateway::api`] and [`Gateway::cli`] for the API and the CLI);
//! * [`wireguard_lab`]: the WireGuard mode, in which the device reaches the router through a
//!   real WireGuard tunnel (boringtun and `wg-quick`, see [`wireguard`]) set up as the worked
//!   example in docs/deployment.md says; [`prober`] keeps connecting to a server and tells
//!   intercepted answers from direct ones;
//! * the central index and SIEM servers: [`postgres`] (PostgreSQL 15, TLS, over TCP and a
//!   Unix socket), [`syslog`] (rsyslogd receiving RFC 5424 over TCP) and [`otlp`] (an
//!   OTLP/HTTP logs sink in the test process); see [`central`] for what they share.
//! * [`load`]: an SSH load client and a certificate-checking echo server built with russh,
//!   which hold thousands of sessions in one process each (the benchmark's scale figure).
//!
//! Requirements: root, `ip` (iproute2), `/usr/sbin/sshd`, `ssh`, `ssh-keygen`, `tcpdump`,
//! `sysctl`; `bpftool` for BPF link checks. All waits are bounded and poll concrete
//! conditions (log lines, status answers, process exits); nothing sleeps as a readiness check.
//!
//! ```ignore
//! use sshgw_tests::*;
//! lab_test(|lab| {
//!     let _sshd = lab.start_sshd_for_gateway()?; // trusts the gateway's user CA
//!     let mut gw = lab.gateway()?;
//!     gw.start()?;
//!     let conn = lab.ssh(Family::V4.audited()).bind(Family::V4.enrolled()).ssh_connection()?;
//!     anyhow::ensure!(conn.client == Family::V4.router_wan());
//!     Ok(())
//! });
//! ```
//!
//! Set `SSHGW_TEST_KEEP_TMP=1` to keep a lab's temp dir (configs, logs) after the test.

pub mod bench;
pub mod capture;
pub mod central;
pub mod clients;
pub mod console;
pub mod console_remote;
pub mod control;
pub mod doctor;
pub mod files;
pub mod gateway;
pub mod load;
pub mod netns;
pub mod nspawn;
pub mod otlp;
pub mod persist;
pub mod postgres;
pub mod prober;
pub mod process;
pub mod recording;
pub mod rootfs;
pub mod s3;
pub mod ssh;
pub mod sshd;
pub mod stress;
pub mod syslog;
pub mod topology;
pub mod tun;
pub mod wait;
pub mod wireguard;
pub mod wireguard_lab;

pub use capture::{Capture, Packet, syn_ack_filter, syn_filter};
pub use control::ApiReply;
pub use gateway::{Counters, Gateway, GatewayConfig, SshgwCa, Status};
pub use netns::Netns;
pub use process::{Finished, Io, Proc, Processes};
pub use ssh::{KeyPair, PtySession, Ssh, SshConnection, SshOutput, SshSession};
pub use sshd::{LAB_PRINCIPAL, LAB_USERS, OTHER_TCP_PORT, SSH_PORT, Sshd, SshdConfig, UnixUser};
pub use topology::{Family, Lab, addr, host_port, iface};

/// Runs `test` in a fresh [`Lab`]. Any error or panic fails the test; the lab then prints every
/// process's log (daemon, sshd, ssh, tcpdump) before tearing down.
pub fn lab_test(test: impl FnOnce(&Lab) -> anyhow::Result<()>) {
    let lab = match Lab::new() {
        Ok(lab) => lab,
        Err(err) => panic!("creating the lab failed: {err:?}"),
    };
    if let Err(err) = test(&lab) {
        // Panicking while `lab` is alive makes its Drop dump the logs.
        panic!("lab {} failed: {err:?}", lab.name());
    }
}

/// Generates an IPv4 and an IPv6 test from `body(lab, family)`, each in its own lab.
#[macro_export]
macro_rules! family_tests {
    ($body:ident => $v4:ident, $v6:ident) => {
        #[test]
        fn $v4() {
            $crate::lab_test(|lab| $body(lab, $crate::Family::V4));
        }

        #[test]
        fn $v6() {
            $crate::lab_test(|lab| $body(lab, $crate::Family::V6));
        }
    };
}
