//! Operating the daemon: Prometheus metrics (control socket and `[metrics] listen`), SIGHUP
//! reloads that leave sessions alone, and the graceful stop with its drain timeout.
//!
//! The device runs plain OpenSSH `ssh` from the enrolled address (100.96.0.7) to the audited
//! server (203.0.113.10); sshd trusts the gateway's user CA. Every test builds its own lab.
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`), OpenSSH and curl:
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test operations -- --test-threads=2`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use prometheus_parse::{LineInfo, Sample, Scrape, Value as Prom};
use serde_json::{Value, json};
use sshgw_tests::gateway::str_field;
use sshgw_tests::recording::{replace_config_line, set_top_level};
use sshgw_tests::{
    Family, GatewayConfig, Lab, OTHER_TCP_PORT, SSH_PORT, Ssh, SshConnection, SshSession,
    SshdConfig, lab_test,
};

const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);

const V4: Family = Family::V4;

/// The daemon's log line after a successful SIGHUP reload.
const RELOADED: &str = "reloaded";
const RESTART_ONLY: &str = "changed setting takes effect only after a restart";
const SHUTDOWN: &str = "sshgw: the gateway is shutting down";

/// `ssh` from the enrolled device to `dst`.
fn from_device(lab: &Lab, dst: std::net::IpAddr) -> Ssh<'_> {
    lab.ssh(dst).bind(V4.enrolled())
}

fn policy(id: &str, name: &str, precedence: i64, action: &str, dst: &str, ports: &[u16]) -> Value {
    json!({
        "id": id,
        "name": name,
        "precedence": precedence,
        "action": action,
        "destinations": [dst],
        "ports": ports,
    })
}

/// A relayed `echo $SSH_CONNECTION; exec cat` session, checked to go through the gateway.
fn open_relayed(lab: &Lab, what: &str) -> Result<SshSession> {
    let mut s = from_device(lab, V4.audited()).session("echo $SSH_CONNECTION; exec cat")?;
    let conn =
        SshConnection::parse(&s.read_line(SESSION_TIMEOUT)?).with_context(|| what.to_owned())?;
    ensure!(
        conn.client == V4.router_wan(),
        "{what}: should be relayed: {conn:?}"
    );
    s.roundtrip(&format!("{what}: hello"), SESSION_TIMEOUT)?;
    Ok(s)
}

// ------------------------------------------------------------------------------------------
// 8. Metrics
// ------------------------------------------------------------------------------------------

/// Parses a Prometheus text exposition with `prometheus-parse`, strictly: every line must be
/// a comment, blank, or a sample the parser recognizes (it skips what it cannot read), every
/// sample's family must have a `# TYPE`, and no family may be typed twice.
fn parse_metrics(text: &str) -> Result<Scrape> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let what = || format!("/metrics line {}: {line:?}", n + 1);
        match LineInfo::parse(line) {
            LineInfo::Empty | LineInfo::Doc { .. } => {}
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                ensure!(
                    typed
                        .insert(family.clone(), format!("{sample_type:?}"))
                        .is_none(),
                    "{}: family {family} typed twice",
                    what()
                );
            }
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                value
                    .parse::<f64>()
                    .with_context(|| format!("{}: the value is not a number", what()))?;
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        metric_name
                            .strip_suffix(s)
                            .filter(|f| typed.get(*f).is_some_and(|t| t == "Histogram"))
                    })
                    .unwrap_or(metric_name);
                ensure!(
                    typed.contains_key(family),
                    "{}: sample before (or without) its # TYPE",
                    what()
                );
            }
            LineInfo::Ignored => {
                ensure!(
                    line.starts_with('#'),
                    "{}: not valid exposition format",
                    what()
                );
            }
        }
    }
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).context("prometheus-parse rejected /metrics")
}

/// The value of the counter/gauge/untyped sample `name` with exactly `labels`.
fn sample_value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels_are(s, labels))
        .find_map(|s| match s.value {
            Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => Some(v),
            _ => None,
        })
}

fn labels_are(s: &Sample, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) && s.labels.len() == labels.len()
}

/// Checks histogram `name`: buckets with increasing bounds ending in +Inf, cumulative counts,
/// `+Inf` = `_count` >= `min_count`, and a `_sum`. Returns the count.
fn check_histogram(scrape: &Scrape, name: &str, min_count: f64) -> Result<f64> {
    let buckets = scrape
        .samples
        .iter()
        .find_map(|s| match (&s.value, s.metric == name) {
            (Prom::Histogram(b), true) => Some(b.clone()),
            _ => None,
        })
        .with_context(|| format!("no histogram {name} in /metrics"))?;
    ensure!(buckets.len() >= 2, "{name}: buckets {buckets:?}");
    for pair in buckets.windows(2) {
        ensure!(
            pair[0].less_than < pair[1].less_than,
            "{name}: bucket bounds must increase: {buckets:?}"
        );
        ensure!(
            pair[0].count <= pair[1].count,
            "{name}: bucket counts must be cumulative: {buckets:?}"
        );
    }
    let last = buckets.last().expect("two buckets");
    ensure!(
        last.less_than.is_infinite(),
        "{name}: the last bucket must be +Inf: {buckets:?}"
    );
    let count = sample_value(scrape, &format!("{name}_count"), &[])
        .with_context(|| format!("no {name}_count"))?;
    let sum = sample_value(scrape, &format!("{name}_sum"), &[])
        .with_context(|| format!("no {name}_sum"))?;
    ensure!(
        last.count == count && count >= min_count && sum > 0.0,
        "{name}: +Inf bucket {}, _count {count}, _sum {sum} (want count >= {min_count})",
        last.count
    );
    Ok(count)
}

/// 8. `/metrics` on the control socket and on `[metrics] listen`, after one audited and one
///    blocked session, parsed by a Prometheus text parser.
#[test]
fn metrics_are_prometheus_text() {
    lab_test(|lab| {
        const METRICS_PORT: u16 = 9911;
        let policies = json!({"policies": [
            policy("block-other", "Block the other address", 5, "block", "203.0.113.20/32", &[22]),
            policy("audit-lab", "Audit lab server", 10, "audit_ssh", "203.0.113.10/32", &[22]),
        ]});
        let mut cfg = GatewayConfig::default().policies(policies);
        cfg.extra_toml = format!("[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"");
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;

        let conn = from_device(lab, V4.audited()).ssh_connection()?;
        ensure!(conn.client == V4.router_wan(), "audited: {conn:?}");
        let blocked = from_device(lab, V4.not_audited()).run("echo should-not-run")?;
        ensure!(
            blocked.code() == Some(255) && blocked.stderr.contains("sshgw: blocked by policy"),
            "blocked: {blocked:?}"
        );
        // Both sessions are closed in the log before the scrape.
        gw.wait_for_session(&[], LOG_TIMEOUT, "two closed sessions", |_| {
            gw.sessions(&[])
                .is_ok_and(|all| all.len() >= 2 && all.iter().all(|s| !s["ended_at"].is_null()))
        })?;

        let reply = gw.api_bytes("GET", "/metrics", None)?;
        ensure!(reply.status == 200, "GET /metrics: {reply:?}");
        ensure!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain") && t.contains("version=0.0.4")),
            "content type of /metrics: {:?}",
            reply.header("content-type")
        );
        eprintln!("/metrics:\n{}", reply.body);
        let scrape = parse_metrics(&reply.body)?;

        let value = |name: &str, labels: &[(&str, &str)]| -> Result<f64> {
            sample_value(&scrape, name, labels)
                .with_context(|| format!("no sample {name}{labels:?} in /metrics"))
        };
        ensure!(
            value("sshgw_sessions_total", &[("decision", "audit_ssh")])? >= 1.0
                && value("sshgw_sessions_total", &[("decision", "block")])? >= 1.0,
            "sshgw_sessions_total by decision"
        );
        ensure!(
            value(
                "sshgw_policy_decisions_total",
                &[("policy", "audit-lab"), ("decision", "audit_ssh")]
            )? >= 1.0
                && value(
                    "sshgw_policy_decisions_total",
                    &[("policy", "block-other"), ("decision", "block")]
                )? >= 1.0,
            "sshgw_policy_decisions_total by policy"
        );
        ensure!(
            value("sshgw_sessions_active", &[])? == 0.0,
            "no session is active"
        );
        ensure!(
            value("sshgw_bytes_total", &[("direction", "from_client")])? >= 0.0
                && value("sshgw_bytes_total", &[("direction", "from_server")])? > 0.0,
            "sshgw_bytes_total"
        );
        value("sshgw_recording_failures_total", &[])?;
        check_histogram(&scrape, "sshgw_certificate_mint_seconds", 1.0)?;
        check_histogram(&scrape, "sshgw_upstream_connect_seconds", 1.0)?;
        // Both connections were decided: the audited one and the blocked one.
        check_histogram(&scrape, "sshgw_admission_decision_seconds", 2.0)?;
        // Datapath counters: two intercepted SYNs at least (audited + blocked).
        ensure!(
            value(
                "sshgw_datapath_packets_total",
                &[("counter", "intercepted_syns")]
            )? >= 2.0,
            "intercepted_syns"
        );
        for counter in [
            "intercepted_packets",
            "passed_packets",
            "dropped_while_down",
        ] {
            value("sshgw_datapath_packets_total", &[("counter", counter)])?;
        }
        let types: BTreeMap<&str, &str> = [
            ("sshgw_sessions_total", "counter"),
            ("sshgw_sessions_active", "gauge"),
            ("sshgw_certificate_mint_seconds", "histogram"),
        ]
        .into();
        for (family, kind) in types {
            ensure!(
                reply.body.contains(&format!("# TYPE {family} {kind}\n")),
                "{family} should be a {kind}"
            );
        }

        // The same on TCP, from inside the router namespace; any other path is 404.
        let curl = |path: &str| -> Result<(String, String)> {
            let mut cmd = lab.rtr.exec_command("curl");
            cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
                .arg(format!("http://127.0.0.1:{METRICS_PORT}{path}"));
            let out = lab
                .procs()
                .run("curl metrics", &mut cmd, Duration::from_secs(20))?
                .check(&format!("curl {path}"))?;
            let (body, code) = out
                .stdout
                .rsplit_once('\n')
                .with_context(|| format!("curl output {:?}", out.stdout))?;
            Ok((code.to_owned(), body.to_owned()))
        };
        let (code, body) = curl("/metrics")?;
        ensure!(code == "200", "TCP /metrics: HTTP {code}: {body}");
        let tcp = parse_metrics(&body)?;
        ensure!(
            sample_value(&tcp, "sshgw_sessions_total", &[("decision", "block")])
                .is_some_and(|v| v >= 1.0),
            "TCP /metrics should have the same counters:\n{body}"
        );
        for path in ["/", "/v1/status", "/metrics/extra", "/v1/sessions"] {
            let (code, body) = curl(path)?;
            ensure!(code == "404", "TCP {path}: HTTP {code} (want 404): {body}");
        }
        ensure!(gw.is_running(), "the daemon died:\n{}", gw.log());
        gw.stop()?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 9. Reload
// ------------------------------------------------------------------------------------------

/// 9. SIGHUP with a changed config and policies on disk: the datapath ports and the policies
///    apply to new connections at once, a long-lived relayed session keeps working, and a
///    restart-only change is logged as such.
#[test]
fn sighup_reload_keeps_sessions() {
    lab_test(|lab| {
        let mut cfg = GatewayConfig::default().ssh("connect_timeout_secs = 10");
        cfg.ports = vec![SSH_PORT];
        let sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;
        let pid = gw.proc().context("daemon process")?.pid();

        let mut long = open_relayed(lab, "long-lived session")?;
        // Port 2222 is not intercepted yet: the device reaches sshd directly.
        let conn = from_device(lab, V4.audited())
            .port(OTHER_TCP_PORT)
            .ssh_connection()?;
        ensure!(
            conn.client == V4.enrolled(),
            "port 2222 before the reload should be direct: {conn:?}"
        );

        // Edit the config and the policies on disk, then SIGHUP.
        replace_config_line(
            &gw,
            "ports = ",
            &format!("ports = [{SSH_PORT}, {OTHER_TCP_PORT}]"),
        )?;
        set_top_level(&gw, "drain_timeout_secs", "2")?;
        replace_config_line(&gw, "connect_timeout_secs = ", "connect_timeout_secs = 7")?;
        gw.write_policies(&json!({"policies": [
            policy("audit-lab", "Audit lab server", 10, "audit_ssh", "203.0.113.10/32", &[SSH_PORT, OTHER_TCP_PORT]),
        ]}))?;
        let reloaded = gw.log_count(RELOADED);
        let warned = gw.log_count(RESTART_ONLY);
        gw.sighup()?;
        gw.wait_for_nth_log(RELOADED, reloaded, LOG_TIMEOUT)?;
        let warning = gw.wait_for_nth_log(RESTART_ONLY, warned, LOG_TIMEOUT)?;
        eprintln!("reload warning: {warning}");
        ensure!(
            warning.contains("setting=\"ssh\"") || warning.contains("setting=ssh"),
            "the restart-only warning should name the [ssh] table: {warning}"
        );
        let log = gw.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(RESTART_ONLY))
            .map(str::trim)
            .collect::<Vec<_>>();
        ensure!(
            warnings.len() == warned + 1
                && !warnings
                    .iter()
                    .any(|l| l.contains("datapath") || l.contains("drain")),
            "only [ssh] needs a restart; ports and drain_timeout_secs apply at once: {warnings:#?}"
        );
        ensure!(
            gw.proc().map(|p| p.pid()) == Some(pid) && gw.is_running(),
            "the daemon must not restart on SIGHUP"
        );

        // The old session is untouched; new connections see the new ports and policy.
        long.roundtrip("long-lived session after the reload", SESSION_TIMEOUT)
            .context("the reload cut the established session")?;
        let conn = from_device(lab, V4.audited())
            .port(OTHER_TCP_PORT)
            .ssh_connection()?;
        ensure!(
            conn.client == V4.router_wan() && conn.server_port == OTHER_TCP_PORT,
            "port 2222 after the reload should be relayed: {conn:?}"
        );
        let second = open_relayed(lab, "new session on port 22")?;
        long.roundtrip("long-lived session at the end", SESSION_TIMEOUT)?;
        let live = gw.sessions(&["--active"])?;
        ensure!(
            live.len() == 2,
            "two sessions should be live (the long one and the second): {live:#?}"
        );
        let status = long.close(SESSION_TIMEOUT)?;
        ensure!(
            status.success(),
            "the long-lived session ended with {status:?}"
        );
        ensure!(
            !sshd.log().contains("Connection reset"),
            "sshd saw a reset:\n{}",
            sshd.log()
        );
        // drain_timeout_secs = 2 was taken over by the reload: the stop waits 2 s for the
        // second session, then ends it.
        let stopped = Instant::now();
        let exit = gw.stop()?;
        ensure!(exit.success(), "sshgw stop: {exit:?}");
        let draining = gw
            .log()
            .lines()
            .find(|l| l.contains("stopping: no new sessions; draining"))
            .map(str::to_owned)
            .context("no draining line in the log")?;
        ensure!(
            draining.contains("timeout_secs=2") && stopped.elapsed() >= Duration::from_secs(2),
            "the reloaded drain_timeout_secs = 2 should apply to the stop: {draining}"
        );
        let status = second.proc().wait_exit(SESSION_TIMEOUT)?;
        ensure!(
            status.code() == Some(255) && second.proc().stderr_text().contains(SHUTDOWN),
            "the second session should be ended by the stop: {status:?}"
        );
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 10. Graceful stop
// ------------------------------------------------------------------------------------------

/// 10. SIGTERM with `drain_timeout_secs = 2`: new connections are no longer accepted (the
///     datapath drops them: they time out), a session that ends during the drain ends
///     normally, the one still open after 2 s is told the gateway is shutting down, and the
///     daemon exits 0 in bounded time.
#[test]
fn sigterm_drains_then_ends_sessions() {
    lab_test(|lab| {
        const DRAIN: Duration = Duration::from_secs(2);
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut gw = lab.gateway_with(GatewayConfig::default())?;
        set_top_level(&gw, "drain_timeout_secs", "2")?;
        gw.start()?;

        let mut long = open_relayed(lab, "long session")?;
        // The short one answers one line and exits 0.
        let mut short = from_device(lab, V4.audited())
            .session("echo ready; read line; echo \"got-$line\"; exit 0")?;
        ensure!(
            short.read_line(SESSION_TIMEOUT)? == "ready",
            "short session start"
        );
        let before = gw.sessions(&["--active"])?;
        ensure!(before.len() == 2, "two live sessions: {before:#?}");
        let ids: Vec<String> = before
            .iter()
            .filter_map(|s| str_field(s, "id").map(str::to_owned))
            .collect();

        let proc = gw.proc().context("daemon process")?.clone();
        let sigterm = Instant::now();
        proc.signal(Signal::SIGTERM)?;
        proc.wait_for_log("stopping: no new sessions; draining", LOG_TIMEOUT)?;

        // A new connection during the drain is not accepted: its SYNs are dropped.
        let attempt = from_device(lab, V4.audited())
            .connect_timeout(1)
            .option("ConnectionAttempts=1")
            .spawn("echo should-not-run")?;
        // The short session finishes normally during the drain.
        short.send_line("bye")?;
        ensure!(
            short.read_line(SESSION_TIMEOUT)? == "got-bye",
            "short session answer during the drain"
        );
        let status = short.close(SESSION_TIMEOUT)?;
        let short_done = sigterm.elapsed();
        ensure!(
            status.success() && short_done < DRAIN,
            "the short session should end normally within the drain: {status:?} after {short_done:?}"
        );
        long.roundtrip("long session during the drain", SESSION_TIMEOUT)?;

        let attempt_status = attempt.wait_exit(SESSION_TIMEOUT)?;
        let attempt_err = attempt.stderr_text();
        ensure!(
            attempt_status.code() == Some(255)
                && attempt_err.contains("timed out")
                && attempt.stdout_text().is_empty(),
            "a new connection during the drain should time out: {attempt_status:?} {attempt_err:?}"
        );

        // The long one is ended at the drain timeout with the shutdown message.
        let status = long.proc().wait_exit(SESSION_TIMEOUT)?;
        let ended = sigterm.elapsed();
        let stderr = long.proc().stderr_text();
        ensure!(
            status.code() == Some(255) && stderr.contains(SHUTDOWN),
            "the long session should be told {SHUTDOWN:?}: {status:?} {stderr:?}"
        );
        ensure!(
            ended >= DRAIN,
            "the long session was ended after {ended:?}, before the {DRAIN:?} drain timeout"
        );
        let exit = proc.wait_exit(DRAIN + Duration::from_secs(10))?;
        let stopped = sigterm.elapsed();
        ensure!(
            exit.success(),
            "sshgw should exit 0 after SIGTERM: {exit:?}"
        );
        ensure!(
            stopped < DRAIN + Duration::from_secs(8),
            "sshgw took {stopped:?} to stop with a {DRAIN:?} drain timeout"
        );
        eprintln!(
            "stop: short session done after {short_done:?}, long ended after {ended:?}, \
             daemon exited after {stopped:?}"
        );
        ensure!(
            gw.log()
                .contains("drain timeout: ending the remaining sessions"),
            "the daemon should log the drain timeout:\n{}",
            gw.log()
        );

        // The session log (read after a restart) says how each ended.
        gw.start()?;
        let reasons: Vec<(String, String)> = ids
            .iter()
            .map(|id| {
                let s = gw.session(id)?;
                Ok((
                    s["channels"][0]["command"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    str_field(&s, "close_reason").unwrap_or_default().to_owned(),
                ))
            })
            .collect::<Result<_>>()?;
        for (command, reason) in &reasons {
            let want = if command.contains("exec cat") {
                "gateway shutdown"
            } else {
                "client"
            };
            if reason != want {
                bail!("session `{command}` should be closed as {want:?}: {reasons:?}");
            }
        }
        Ok(())
    });
}
