//! The benchmark lab: the standard netns lab plus a third server address, an sshd tuned so
//! that it is never the bottleneck, and the release sshgw with two audit policies.
//!
//! ```text
//! route          address         what the device's ssh goes through
//! direct         203.0.113.20    the router's plain forwarding (not audited; the TC program
//!                                still sees its packets on r0)
//! sshgw          203.0.113.10    sshgw, policy bench-audit (no recording)
//! sshgw+logging  203.0.113.30    sshgw, policy bench-logged (command_logging + recording key)
//! ```
//!
//! All three reach the same sshd in `srv` (it listens on the wildcard address). The scale
//! figure adds 203.0.113.40, audited by policy `bench-scale`, for its russh load server
//! ([`EnvOptions::load_server`]; sshd then listens on the three addresses above only).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;

use crate::gateway::{Gateway, GatewayConfig, sshgw_bin};
use crate::sshd::{Sshd, SshdConfig};
use crate::topology::{Lab, iface};
use crate::wait::poll_until;

/// Server address audited with command logging (added to `s0` by the benchmark only).
pub const SRV_LOGGED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// The load server's address (the scale figure only, [`EnvOptions::load_server`]): port 22,
/// audited by policy `bench-scale`.
pub const SRV_LOAD_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 40);

/// Which way the device's SSH goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Direct,
    Sshgw,
    SshgwLogged,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::Direct, Route::Sshgw, Route::SshgwLogged];

    pub fn addr(self) -> IpAddr {
        IpAddr::V4(match self {
            Route::Direct => crate::topology::addr::SRV_OTHER_V4,
            Route::Sshgw => crate::topology::addr::SRV_AUDITED_V4,
            Route::SshgwLogged => SRV_LOGGED_V4,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Sshgw => "sshgw",
            Route::SshgwLogged => "sshgw+logging",
        }
    }

    pub fn via_gateway(self) -> bool {
        self != Route::Direct
    }
}

/// sshd_config lines that keep sshd out of the measurement: no startup throttling, enough
/// sessions per connection, no DNS, no per-login extras.
pub const SSHD_BENCH_LINES: &[&str] = &[
    "MaxStartups 10000",
    "MaxSessions 10000",
    "PrintLastLog no",
    "ClientAliveInterval 0",
];

/// Extra `ssh -o` options of every benchmark ssh.
pub const SSH_BENCH_OPTIONS: &[&str] = &["LogLevel=ERROR", "ConnectTimeout=60"];

/// The key exchange every benchmark ssh is pinned to: what sshgw's device leg negotiates
/// with OpenSSH 9.2 (russh 0.65 has no sntrup761x25519), so both routes pay for the same
/// key exchange. The setup figure also measures the direct route with the client's default.
pub const BENCH_KEX: &str = "curve25519-sha256";

/// Algorithms one route negotiated on the device leg (from `ssh -v`).
#[derive(Debug, Clone, Serialize)]
pub struct Negotiated {
    pub route: Route,
    pub pinned_kex: bool,
    pub kex: String,
    pub cipher: String,
}

/// Marker a remote command prints once its session is up.
pub const READY_MARKER: &str = "sshgw-bench-ready";

/// A connection or session that failed (it is not part of any sample series).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub route: Route,
    pub reason: String,
}

/// What a figure needs from the lab.
#[derive(Debug, Clone, Default)]
pub struct EnvOptions {
    /// `[datapath] on_stop = "remove"` (the datapath figure stops and starts the daemon to
    /// measure forwarding without the program).
    pub remove_on_stop: bool,
    /// Extra lines for sshgw's `[ssh]` table.
    pub gateway_ssh: Vec<String>,
    /// The scale figure's load server: [`SRV_LOAD_V4`] on `s0`, audited by policy
    /// `bench-scale`; sshd then listens on the three route addresses only, so that the load
    /// server can have port 22 of its own address.
    pub load_server: bool,
    /// sshgw's `RLIMIT_NOFILE` (soft and hard); None: inherited from the harness.
    pub nofile: Option<u64>,
}

/// A running benchmark lab: sshd in `srv`, sshgw in `rtr`, host keys already accepted.
pub struct BenchEnv<'a> {
    pub lab: &'a Lab,
    pub sshd: Sshd,
    pub gw: Gateway<'a>,
    pub recording_key: PathBuf,
}

impl<'a> BenchEnv<'a> {
    pub fn start(lab: &'a Lab, opts: &EnvOptions) -> Result<Self> {
        lab.srv.ip(&[
            "addr",
            "add",
            &format!("{SRV_LOGGED_V4}/24"),
            "dev",
            iface::SRV,
        ])?;

        if opts.load_server {
            lab.srv.ip(&[
                "addr",
                "add",
                &format!("{SRV_LOAD_V4}/24"),
                "dev",
                iface::SRV,
            ])?;
        }

        let mut sshd_cfg = SshdConfig::gateway();
        if opts.load_server {
            // A wildcard listener on port 22 would keep the load server from binding it.
            sshd_cfg.listen = Route::ALL
                .iter()
                .map(|r| SocketAddr::new(r.addr(), 22))
                .collect();
        }
        for line in SSHD_BENCH_LINES {
            sshd_cfg = sshd_cfg.line(line);
        }
        let sshd = lab.start_sshd_with(sshd_cfg)?;

        let recording_key = lab.dir().join("bench-recording-key");
        let mut keygen = Command::new(sshgw_bin()?);
        keygen
            .args(["recording", "keygen", "-o"])
            .arg(&recording_key);
        lab.procs()
            .run_quiet(
                "sshgw recording keygen",
                &mut keygen,
                Duration::from_secs(20),
            )?
            .check("sshgw recording keygen")?;
        let public = PathBuf::from(format!("{}.pub", recording_key.display()));

        let mut policies = vec![
            json!({"id": "bench-audit", "name": "Bench: audited", "precedence": 10,
             "enabled": true, "action": "audit_ssh",
             "destinations": [format!("{}/32", Route::Sshgw.addr())], "ports": [22]}),
            json!({"id": "bench-logged", "name": "Bench: audited with command logging",
             "precedence": 20, "enabled": true, "action": "audit_ssh",
             "destinations": [format!("{}/32", Route::SshgwLogged.addr())], "ports": [22],
             "ssh": {"command_logging": true}}),
        ];
        if opts.load_server {
            policies.push(json!({"id": "bench-scale", "name": "Bench: load server",
             "precedence": 30, "enabled": true, "action": "audit_ssh",
             "destinations": [format!("{SRV_LOAD_V4}/32")], "ports": [22]}));
        }
        let mut cfg = GatewayConfig::default().policies(json!({ "policies": policies }));
        if let Some(limit) = opts.nofile {
            cfg = cfg.nofile(limit);
        }
        for line in &opts.gateway_ssh {
            cfg = cfg.ssh(line);
        }
        // The concurrency benchmark opens thousands of sessions from the one lab device:
        // measure the gateway, not the per-source SYN budget that would pace them.
        cfg = cfg.datapath("syn_rate_per_source = 0");
        if opts.remove_on_stop {
            cfg = cfg.datapath("on_stop = \"remove\"");
        }
        // ... nor by the per-device connection limits, which the ramp is far beyond.
        cfg.extra_toml = format!(
            "[recording]\npublic_key_file = {}\n\n[limits]\nmax_connections = 65536\n\
             max_connections_per_device = 65536\nmax_preauth = 4096\nmax_preauth_per_device = 4096\n",
            serde_json::to_string(&public.to_string_lossy())?
        );
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;
        let env = Self {
            lab,
            sshd,
            gw,
            recording_key,
        };
        // First logins: the gateway pins the server's host key (tofu), caches warm up.
        for route in Route::ALL {
            env.ssh_ok(route, "true")
                .with_context(|| format!("warm-up login via {}", route.label()))?;
        }
        env.clear_recordings()?;
        Ok(env)
    }

    /// The lab's `ssh` builder for `route` with the benchmark options (key exchange pinned
    /// to [`BENCH_KEX`]).
    pub fn ssh(&self, route: Route) -> crate::ssh::Ssh<'a> {
        self.ssh_kex(route, true)
    }

    /// [`BenchEnv::ssh`], optionally with the client's default key exchange.
    pub fn ssh_kex(&self, route: Route, pin_kex: bool) -> crate::ssh::Ssh<'a> {
        let mut ssh = self.lab.ssh(route.addr());
        for opt in SSH_BENCH_OPTIONS {
            ssh = ssh.option(opt);
        }
        if pin_kex {
            ssh = ssh.option(&format!("KexAlgorithms={BENCH_KEX}"));
        }
        ssh
    }

    /// An `ssh` command line for `route` (run from `dev`); `tty` forces a remote pty
    /// (`-tt`) and disables the escape character.
    pub fn ssh_command(&self, route: Route, tty: bool, remote: &str) -> Command {
        self.ssh_command_kex(route, true, tty, remote)
    }

    /// [`BenchEnv::ssh_command`], optionally with the client's default key exchange.
    pub fn ssh_command_kex(&self, route: Route, pin_kex: bool, tty: bool, remote: &str) -> Command {
        let ssh = self.ssh_kex(route, pin_kex);
        let mut cmd = self.lab.dev.exec_command("ssh");
        cmd.args(ssh.common_args());
        if tty {
            cmd.args(["-tt", "-e", "none"]);
        } else {
            cmd.arg("-T");
        }
        cmd.args(["-p", "22", "-l", "root"])
            .arg(route.addr().to_string())
            .arg(remote);
        cmd
    }

    /// The key exchange and cipher `route` negotiates (an `ssh -v true` run).
    pub fn negotiated(&self, route: Route, pin_kex: bool) -> Result<Negotiated> {
        let mut ssh = self.lab.ssh(route.addr()).option("LogLevel=DEBUG1");
        if pin_kex {
            ssh = ssh.option(&format!("KexAlgorithms={BENCH_KEX}"));
        }
        let out = ssh.run("true")?;
        out.check()?;
        let find = |prefix: &str| {
            out.stderr
                .lines()
                .find_map(|l| l.split_once(prefix).map(|(_, v)| v))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("unknown")
                .to_owned()
        };
        Ok(Negotiated {
            route,
            pinned_kex: pin_kex,
            kex: find("kex: algorithm: "),
            cipher: find("kex: server->client cipher: "),
        })
    }

    /// Why connections might be failing: the datapath counters and the router's and the
    /// server's TCP drop counters (non-zero `nstat` values), for error messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        match self.gw.status() {
            Ok(st) => out.push_str(&format!("datapath counters: {:?}\n", st.counters)),
            Err(err) => out.push_str(&format!("sshgw status: {err:#}\n")),
        }
        for ns in [&self.lab.rtr, &self.lab.srv, &self.lab.dev] {
            let text = ns
                .exec("nstat", &["-asz"])
                .unwrap_or_else(|e| format!("{e:#}"));
            let interesting: Vec<&str> = text
                .lines()
                .filter(|l| {
                    let name = l.split_whitespace().next().unwrap_or("");
                    let value = l.split_whitespace().nth(1).unwrap_or("0");
                    value != "0"
                        && [
                            "Listen", "Drop", "Syn", "Timeout", "Abort", "Backlog", "Retrans",
                            "Reset",
                        ]
                        .iter()
                        .any(|k| name.contains(k))
                })
                .collect();
            out.push_str(&format!(
                "{} nstat: {}\n",
                ns.name(),
                interesting.join("; ")
            ));
        }
        out
    }

    /// The device's connections still in SYN-SENT, and every router socket on the same
    /// device ports: a SYN that gets no answer usually meets an old socket of the same
    /// 4-tuple on the router (TIME-WAIT after sshgw closed first).
    pub fn tcp_snapshot(&self) -> String {
        let dev = self
            .lab
            .dev
            .exec("ss", &["-tanH", "state", "syn-sent"])
            .unwrap_or_else(|e| format!("{e:#}"));
        let mut out = format!("dev SYN-SENT: [{}]", dev.trim().replace('\n', "; "));
        let rtr = self
            .lab
            .rtr
            .exec("ss", &["-tanH"])
            .unwrap_or_else(|e| format!("{e:#}"));
        for line in dev.lines() {
            // Local address is the 4th column of `ss -tan state X` without the state.
            let Some(local) = line.split_whitespace().nth(2) else {
                continue;
            };
            let matches: Vec<&str> = rtr.lines().filter(|l| l.contains(local)).collect();
            out.push_str(&format!(
                "; rtr sockets for {local}: [{}]",
                matches
                    .iter()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        out
    }

    /// Runs `remote` over `route`; fails unless it exits 0.
    pub fn ssh_ok(&self, route: Route, remote: &str) -> Result<()> {
        self.ssh(route)
            .run(remote)?
            .check()
            .with_context(|| format!("ssh via {}: {remote}", route.label()))?;
        Ok(())
    }

    /// The PID of the running daemon.
    pub fn sshgw_pid(&self) -> Result<u32> {
        match self.gw.proc() {
            Some(p) if p.is_running() => Ok(p.pid()),
            _ => bail!("sshgw is not running"),
        }
    }

    /// The PID of the sshd listener (sessions are its children).
    pub fn sshd_pid(&self) -> u32 {
        self.sshd.proc().pid()
    }

    /// `<state_dir>/recordings`.
    pub fn recordings_dir(&self) -> PathBuf {
        self.gw.state_dir().join("recordings")
    }

    /// Deletes finished recordings (a 1 GiB transfer writes a 1 GiB recording).
    pub fn clear_recordings(&self) -> Result<()> {
        remove_files(&self.recordings_dir())
    }

    /// How many sessions the current daemon run has logged as closed.
    pub fn sessions_closed(&self) -> usize {
        self.gw.log_count("session closed")
    }

    /// Waits (bounded) until the daemon has logged `count` closed sessions.
    pub fn wait_sessions_closed(&self, count: usize, timeout: Duration) -> Result<()> {
        poll_until(
            &format!("sshgw to log {count} closed sessions"),
            timeout,
            Duration::from_millis(10),
            || Ok((self.sessions_closed() >= count).then_some(())),
        )
    }
}

fn remove_files(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
