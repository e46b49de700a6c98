//! `sshgw doctor` in the lab: a broken router (sysctls, an INPUT chain that drops the
//! intercepted flows, no boot guard) is reported with fixes and exit code 5; the same router
//! fixed as docs/deployment.md says passes, and audited SSH is intercepted through the
//! documented INPUT rule. `--server` reports an audited server that answers SSH from the
//! router's device-facing address, and passes once the server accepts only the router. The
//! shipped boot guard (xtask/deploy/sshgw-guard.nft) drops audited SSH while no sshgw runs.
//!
//! Run: `cargo xtask test --netns-only -- doctor`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sshgw_tests::doctor::verdict;
use sshgw_tests::gateway::sshgw_bin;
use sshgw_tests::{Family, Finished, Gateway, Lab, Netns, lab_test};

fn guard_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/deploy/sshgw-guard.nft")
}

/// `nft -f` of `rules` inside `ns`.
fn nft(lab: &Lab, ns: &Netns, label: &str, rules: &str) -> Result<()> {
    let file = lab.dir().join(format!("{}-{label}.nft", ns.name()));
    std::fs::write(&file, rules)?;
    ns.exec("nft", &["-f", &file.to_string_lossy()])
        .with_context(|| format!("loading {label}:\n{rules}"))?;
    Ok(())
}

/// Runs doctor (in `rtr`) and returns its exit code and JSON report.
fn doctor(lab: &Lab, args: &[&str]) -> Result<(i32, Value)> {
    let mut cmd = lab.rtr.setns_command(sshgw_bin()?);
    cmd.arg("doctor").args(args).arg("--json");
    let out: Finished =
        lab.procs()
            .run("sshgw doctor", &mut cmd, std::time::Duration::from_secs(60))?;
    let json = serde_json::from_str(&out.stdout)
        .with_context(|| format!("doctor printed no JSON: {out:?}"))?;
    Ok((out.status.code().unwrap_or(-1), json))
}

fn router_doctor(gw: &Gateway<'_>, lab: &Lab) -> Result<(i32, Value)> {
    doctor(lab, &["--config", &gw.config_path().to_string_lossy()])
}

const INPUT_DROP: &str = "table inet filter {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
  }
}";

/// The INPUT rule docs/deployment.md#firewall gives, for the lab's interface.
const INPUT_MARK_RULE: &str =
    "add rule inet filter input iifname \"r0\" meta mark & 0x100 == 0x100 tcp dport 22 accept";

fn break_router(lab: &Lab) -> Result<()> {
    lab.rtr.sysctl("net.ipv4.conf.all.src_valid_mark", "1")?;
    lab.rtr.sysctl("net.ipv4.ip_forward", "0")?;
    lab.rtr.sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    nft(lab, &lab.rtr, "input-drop", INPUT_DROP)
}

fn fix_router(lab: &Lab) -> Result<()> {
    lab.rtr.sysctl("net.ipv4.conf.all.src_valid_mark", "0")?;
    lab.rtr.sysctl("net.ipv4.ip_forward", "1")?;
    lab.rtr.sysctl("net.ipv4.tcp_fwmark_accept", "0")?;
    nft(lab, &lab.rtr, "input-mark", INPUT_MARK_RULE)?;
    load_guard(lab)
}

/// The shipped guard file, then its sets pointed at the lab (as the file's comment says).
fn load_guard(lab: &Lab) -> Result<()> {
    let shipped = std::fs::read_to_string(guard_file())?;
    nft(lab, &lab.rtr, "guard", &shipped)?;
    nft(
        lab,
        &lab.rtr,
        "guard-sets",
        "flush set inet sshgw_guard device_ifs\n\
         add element inet sshgw_guard device_ifs { \"r0\" }\n\
         flush set inet sshgw_guard audited4\n\
         add element inet sshgw_guard audited4 { 203.0.113.10 }\n\
         flush set inet sshgw_guard audited6\n\
         add element inet sshgw_guard audited6 { 2001:db8:1::10 }\n",
    )
}

#[test]
fn doctor_reports_a_broken_router_and_passes_a_fixed_one() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd_for_gateway()?;
        let mut gw = lab.gateway()?;
        gw.start()?;
        break_router(lab)?;
        let (code, report) = router_doctor(&gw, lab)?;
        eprintln!("broken router: {report:#}");
        ensure!(
            code == 5,
            "doctor should exit 5 on a broken router, got {code}"
        );
        for (name, want) in [
            ("daemon", "ok"),
            ("bpffs", "ok"),
            ("capabilities", "ok"),
            ("open files", "ok"),
            ("forwarding", "fail"),
            ("src_valid_mark", "fail"),
            ("tcp_fwmark_accept", "fail"),
            ("input firewall", "fail"),
            ("boot guard", "warn"),
        ] {
            ensure!(
                verdict(&report, name)? == want,
                "{name} should be {want}: {report:#}"
            );
        }

        fix_router(lab)?;
        let (code, report) = router_doctor(&gw, lab)?;
        eprintln!("fixed router: {report:#}");
        ensure!(
            code == 0,
            "doctor should exit 0 on the fixed router, got {code}: {report:#}"
        );
        ensure!(
            report["failed"] == 0 && report["warnings"] == 0,
            "{report:#}"
        );
        // The documented INPUT rule really lets intercepted SSH through a drop policy.
        let conn = lab.ssh(Family::V4.audited()).ssh_connection()?;
        ensure!(
            conn.client == Family::V4.router_wan(),
            "not intercepted: {conn:?}"
        );
        Ok(())
    });
}

/// With no sshgw running (a router just booted), the shipped guard drops audited SSH in
/// FORWARD; other servers stay reachable.
#[test]
fn boot_guard_drops_audited_ssh_until_sshgw_runs() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd()?;
        load_guard(lab)?;
        let audited = lab
            .ssh(Family::V4.audited())
            .connect_timeout(3)
            .run("true")?;
        ensure!(
            !audited.success(),
            "audited SSH passed the guard: {audited:?}"
        );
        let other = lab.ssh(Family::V4.not_audited()).ssh_connection()?;
        ensure!(other.client == Family::V4.enrolled(), "{other:?}");
        let counters = lab
            .rtr
            .exec("nft", &["list", "chain", "inet", "sshgw_guard", "forward"])?;
        let v4_rule = counters
            .lines()
            .find(|l| l.contains("ip daddr @audited4"))
            .context("no IPv4 guard rule")?;
        ensure!(
            !v4_rule.contains("packets 0 "),
            "the guard counted nothing:\n{counters}"
        );
        Ok(())
    });
}

#[test]
fn doctor_server_finds_other_sources() {
    lab_test(|lab| {
        let _sshd = lab.start_sshd()?;
        let target = Family::V4.audited().to_string();
        let (code, report) = doctor(lab, &["--server", &target])?;
        eprintln!("open server: {report:#}");
        ensure!(code == 5, "exit {code}");
        ensure!(verdict(&report, "server reachable")? == "ok", "{report:#}");
        ensure!(verdict(&report, "other sources")? == "fail", "{report:#}");
        let detail = report["checks"][1]["detail"].as_str().unwrap_or_default();
        ensure!(
            detail.contains(&Family::V4.router_lan().to_string()),
            "{detail}"
        );

        // The server accepts SSH only from the router's address (docs/deployment.md#servers).
        let only_router = format!(
            "table inet sshgw_only_router {{\n  chain input {{\n    \
             type filter hook input priority filter;\n    \
             tcp dport 22 ip saddr != {} drop\n  }}\n}}\n",
            Family::V4.router_wan()
        );
        nft(lab, &lab.srv, "only-router", &only_router)?;
        let (code, report) = doctor(lab, &["--server", &format!("{target}:22")])?;
        eprintln!("restricted server: {report:#}");
        ensure!(code == 0, "exit {code}: {report:#}");
        ensure!(verdict(&report, "other sources")? == "ok", "{report:#}");
        Ok(())
    });
}
