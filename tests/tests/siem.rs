//! SIEM export with real receivers in the router's namespace: Debian's rsyslog (`imtcp`,
//! RFC 5424 with octet counting) and an OTLP/HTTP sink decoding with OpenTelemetry's own
//! protobuf types. Both receivers go down and come back (rsyslog killed, the sink stopped)
//! while sessions go on; in the end each has every event, deduplicated by `event.id`,
//! exactly once: the ids are `rtr-a:1` to `rtr-a:N` with no gap. With `include_commands`
//! and `include_paths` off, no command line or file path reaches either.
//!
//! Needs root, the sshgw binary, OpenSSH and rsyslog (`cargo xtask prereqs`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sshgw_tests::gateway::{Gateway, GatewayConfig};
use sshgw_tests::otlp::OtlpSink;
use sshgw_tests::syslog::SyslogReceiver;
use sshgw_tests::topology::SiteId;
use sshgw_tests::wait::poll_until;
use sshgw_tests::{Family, lab_test};

const FAM: Family = Family::V4;
const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);
const SECRET_COMMAND: &str = "echo secret-command-7f3a";
const SECRET_PATH: &str = "/tmp/secret-path-9c1e.txt";

/// `status --json`'s `export` once both exporters are caught up, or (`caught_up` false)
/// once both report a failed delivery with rows waiting.
fn wait_export(gw: &Gateway<'_>, caught_up: bool) -> Result<Value> {
    let what = if caught_up {
        "both exporters to deliver everything"
    } else {
        "both exporters to report the receivers down"
    };
    poll_until(what, WAIT, POLL, || {
        let export = gw.status_json()?["export"].clone();
        let state = |name: &str| {
            let e = &export[name];
            let rows = e["outbox_rows"].as_u64().unwrap_or(u64::MAX);
            let failing = e.get("last_error").is_some();
            if caught_up {
                rows == 0 && !failing
            } else {
                rows > 0 && failing
            }
        };
        Ok((state("otlp") && state("syslog")).then_some(export))
    })
}

/// The seq of an event id `rtr-a:N`.
fn seq_of(id: &str) -> Result<i64> {
    id.strip_prefix("rtr-a:")
        .with_context(|| format!("event id {id:?} is not rtr-a's"))?
        .parse()
        .with_context(|| format!("event id {id:?}"))
}

/// The ids in rsyslog's messages (from the structured data), and the messages.
fn syslog_ids(rx: &SyslogReceiver) -> Result<(Vec<i64>, Vec<String>)> {
    let messages = rx.messages()?;
    let mut ids = Vec::new();
    for m in &messages {
        ensure!(m.starts_with("<110>1 "), "not RFC 5424 log audit.info: {m}");
        let id = m
            .split("[sshgw@32473 id=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .with_context(|| format!("no event id in {m}"))?;
        ids.push(seq_of(id)?);
    }
    Ok((ids, messages))
}

fn otlp_ids(sink: &OtlpSink) -> Result<(Vec<i64>, Vec<String>)> {
    let records = sink.records();
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    for r in &records {
        let id = r
            .attributes
            .get("event.id")
            .with_context(|| format!("no event.id attribute: {r:?}"))?;
        ensure!(
            r.resource.get("service.name").map(String::as_str) == Some("sshgw"),
            "{r:?}"
        );
        let body: Value = serde_json::from_str(&r.body).context("the body is not JSON")?;
        ensure!(body["event"]["id"] == id.as_str(), "{body}");
        ids.push(seq_of(id)?);
        bodies.push(r.body.clone());
    }
    Ok((ids, bodies))
}

/// Deduplicated, the ids must be 1..=N with no gap.
fn exactly_once(what: &str, ids: &[i64]) -> Result<i64> {
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    let max = *unique
        .last()
        .with_context(|| format!("{what}: no events"))?;
    ensure!(
        unique == (1..=max).collect::<BTreeSet<_>>(),
        "{what}: the deduplicated ids should be 1..={max}: {unique:?}"
    );
    eprintln!("{what}: {} events received, {max} unique", ids.len());
    Ok(max)
}

#[test]
fn every_event_reaches_both_receivers_across_their_restarts() {
    lab_test(|lab| {
        let site = lab.site(SiteId::First)?;
        let _sshd = lab.start_sshd_for_gateway()?;
        let mut syslog =
            SyslogReceiver::start(lab.procs(), Some(&lab.rtr), &lab.new_subdir("rsyslog")?)?;
        let mut otlp = OtlpSink::start(Some(&lab.rtr))?;
        let cfg = GatewayConfig {
            extra_toml: format!(
                "[export]\ninclude_commands = false\ninclude_paths = false\n\
             [export.otlp]\nendpoint = \"{}\"\n\
             [export.syslog]\naddress = \"127.0.0.1:{}\"\n",
                otlp.endpoint(),
                syslog.port()
            ),
            ..Default::default()
        };
        let mut gw = lab.gateway_with(cfg.router_id("rtr-a"))?;
        gw.start()?;
        site.session(FAM, SECRET_COMMAND)?;
        site.ssh(FAM.audited())
            .bind(site.enrolled(FAM))
            .sftp_batch(&format!("put /etc/hostname {SECRET_PATH}\n"))?
            .check()?;
        wait_export(&gw, true)?;

        // Both receivers go away; sessions go on; both come back.
        syslog.kill()?;
        otlp.stop()?;
        for i in 0..3 {
            site.session(FAM, &format!("echo while-down-{i}"))?;
        }
        let down = wait_export(&gw, false)?;
        eprintln!("while the receivers are down: {down}");
        syslog.start_again()?;
        otlp.start_again()?;
        site.session(FAM, "echo after")?;
        wait_export(&gw, true)?;

        let (syslog_seqs, messages) = syslog_ids(&syslog)?;
        let (otlp_seqs, bodies) = otlp_ids(&otlp)?;
        let syslog_max = exactly_once("syslog", &syslog_seqs)?;
        let otlp_max = exactly_once("OTLP", &otlp_seqs)?;
        ensure!(
            syslog_max == otlp_max && syslog_max >= 6 * 5,
            "both should have every event of the 6 sessions: syslog {syslog_max}, OTLP {otlp_max}"
        );
        for text in messages.iter().chain(&bodies) {
            ensure!(
                !text.contains("secret-command-7f3a") && !text.contains("secret-path-9c1e"),
                "a command or a path reached the SIEM with include_commands/include_paths off: {text}"
            );
        }
        ensure!(
            messages.iter().any(|m| m.contains(" file.operation [")),
            "no file operation event in syslog"
        );
        gw.stop()?;
        Ok(())
    });
}
