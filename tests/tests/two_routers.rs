//! Two routers, one server: a lab with a second site ([`Lab::add_site`]: `<lab>-dev2` behind
//! `<lab>-rtr2`), a daemon on each router (router ids `rtr-a` and `rtr-b`), both at once. Each
//! device's SSH session to the audited server is intercepted by its own router: sshd sees that
//! router's WAN address as the client, and each daemon's session log holds exactly its own
//! device's session.
//!
//! Needs root, the sshgw binary and OpenSSH:
//! `SSHGW_BIN=$PWD/target/release/sshgw cargo test -p sshgw-tests --test two_routers`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sshgw_tests::gateway::str_field;
use sshgw_tests::topology::{Site, SiteId};
use sshgw_tests::{Family, Gateway, GatewayConfig, Lab, SSH_PORT, family_tests};

const SESSION_TIMEOUT: Duration = Duration::from_secs(15);

/// One router of the test: its site, its daemon and the device id its devices.json enrolls.
struct Router<'a> {
    name: &'static str,
    site: Site<'a>,
    gw: Gateway<'a>,
    device_id: &'static str,
}

fn start_router<'a>(
    lab: &'a Lab,
    site: Site<'a>,
    name: &'static str,
    device_id: &'static str,
) -> Result<Router<'a>> {
    let cfg = GatewayConfig::default().site(site.id).router_id(name);
    let mut gw = lab.gateway_with(cfg)?;
    let status = gw
        .start()
        .with_context(|| format!("starting the daemon of {name}"))?;
    ensure!(
        status.pinned,
        "{name}: the datapath should be pinned under {}: {}",
        gw.pin_dir().display(),
        status.raw
    );
    Ok(Router {
        name,
        site,
        gw,
        device_id,
    })
}

/// The device behind `r` runs `echo $SSH_CONNECTION` on the audited server: `r`'s daemon
/// intercepts it (its log says so) and sshd sees `r`'s WAN address as the client.
fn ssh_through(r: &Router<'_>, family: Family) -> Result<()> {
    let out = r
        .site
        .ssh(family.audited())
        .bind(r.site.enrolled(family))
        .run("echo $SSH_CONNECTION")?;
    let conn = out
        .ssh_connection()
        .with_context(|| format!("ssh from the device behind {}", r.name))?;
    ensure!(
        conn.client == r.site.router_wan(family) && conn.server == family.audited(),
        "{}: sshd should see the session from {} (the router's WAN address) to {}, got {conn:?}",
        r.name,
        r.site.router_wan(family),
        family.audited()
    );
    r.gw.wait_for_intercept(family.audited(), SSH_PORT, SESSION_TIMEOUT)
        .with_context(|| format!("{}'s daemon should have intercepted the session", r.name))?;
    Ok(())
}

/// `r`'s session log holds exactly one session: its own device's, from the device's enrolled
/// address to the audited server.
fn check_sessions(r: &Router<'_>, family: Family) -> Result<()> {
    let is_own = |s: &Value| str_field(s, "device_id") == Some(r.device_id);
    r.gw.wait_for_session(
        &[],
        SESSION_TIMEOUT,
        &format!("{}'s session log to hold {}'s session", r.name, r.device_id),
        is_own,
    )?;
    let sessions = r.gw.sessions(&[])?;
    ensure!(
        sessions.len() == 1 && is_own(&sessions[0]),
        "{}: `sshgw sessions --json` should list exactly the session of {}, got {sessions:#?}",
        r.name,
        r.device_id
    );
    let s = &sessions[0];
    let addr = |key: &str| -> Result<SocketAddr> {
        str_field(s, key)
            .with_context(|| format!("{}: session without {key:?}: {s:#}", r.name))?
            .parse()
            .with_context(|| format!("{}: session {key:?} is not an address: {s:#}", r.name))
    };
    ensure!(
        addr("source")?.ip() == r.site.enrolled(family)
            && addr("destination")? == SocketAddr::new(family.audited(), SSH_PORT),
        "{}: the session should run from {} to {}: {s:#}",
        r.name,
        r.site.enrolled(family),
        family.audited()
    );
    Ok(())
}

fn each_router_intercepts_its_own_device(lab: &Lab, family: Family) -> Result<()> {
    let site_b = lab.add_site()?;
    let site_a = lab.site(SiteId::First)?;
    let _sshd = lab.start_sshd_for_gateway()?;
    let a = start_router(lab, site_a, "rtr-a", "laptop-jdoe")?;
    let b = start_router(lab, site_b, "rtr-b", "laptop-jdoe-2")?;
    ensure!(
        a.gw.pin_dir() != b.gw.pin_dir()
            && a.gw.state_dir() != b.gw.state_dir()
            && a.gw.control_socket() != b.gw.control_socket(),
        "the two daemons must not share pins, state or control socket"
    );

    for r in [&a, &b] {
        ssh_through(r, family)?;
    }
    for r in [&a, &b] {
        check_sessions(r, family)?;
    }
    Ok(())
}
family_tests!(each_router_intercepts_its_own_device => each_router_intercepts_its_own_device_v4, each_router_intercepts_its_own_device_v6);
