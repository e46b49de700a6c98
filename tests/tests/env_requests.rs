//! What ran is what is logged: `env` requests are checked against `[ssh] deny_env` and the
//! accepted ones are recorded with the program. (Security review finding F16.)

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;
use sshgw_tests::recording::{
    RecordingKey, closed_recorded_channel, read_header, recorded_policies, recording_toml,
};
use sshgw_tests::{Family, GatewayConfig, SshdConfig, lab_test};

const V4: Family = Family::V4;

#[test]
fn env_requests_are_filtered_and_recorded() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "rec")?;
        // A server that accepts any variable, as some do.
        let _sshd = lab.start_sshd_with(SshdConfig::gateway().line("AcceptEnv *"))?;
        let mut cfg = GatewayConfig::default().policies(recorded_policies());
        cfg.extra_toml = recording_toml(Some(&key.public), None, &[]);
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;
        let out = lab
            .ssh(V4.audited())
            .bind(V4.enrolled())
            .user("jdoe")
            .option("SetEnv=LD_AUDIT_BYPASS=1 SSHGW_OK=2")
            .run("echo ${LD_AUDIT_BYPASS:-unset} ${SSHGW_OK:-unset}")?;
        out.check()?;
        ensure!(
            out.stdout.trim() == "unset 2",
            "the default deny_env must refuse LD_*, and allow the rest: {out:?}"
        );
        let sessions = gw.sessions(&[])?;
        let id = sessions[0]["id"].as_str().context("id")?;
        let (_, channel, file) = closed_recorded_channel(&gw, id, Duration::from_secs(30))?;
        ensure!(
            channel["env"] == json!([["SSHGW_OK", "2"]]),
            "the channel record names the environment: {channel:#}"
        );
        let header = read_header(&file)?;
        ensure!(
            header["sshgw"]["env"] == json!([["SSHGW_OK", "2"]]),
            "the recording header names the environment the program ran in: {header:#}"
        );
        gw.wait_for_log("refused an env request", Duration::from_secs(10))?;
        Ok(())
    });
}
