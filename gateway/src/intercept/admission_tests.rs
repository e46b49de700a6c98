//! Admission tables: what `admit` and `readmit` decide, and the exact words the user and
//! the session log get, for every branch of the judgement (enrolment, interface pin,
//! policy audit, policy block, no policy, revocation).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use crate::{
    config::Config,
    identity::devices::DeviceTable,
    intercept::admission::{Admission, Outcome, Readmission, admit, readmit},
    policy::model::PolicySet,
    state::{LiveState, Snapshot},
};

const DEVICES: &str = r#"{"devices": [
  {"id": "laptop-jdoe", "addresses": ["100.96.0.7", "fd00:96::7"], "interface": "wg0",
   "user": {"email": "jdoe@example.com", "groups": ["developers"]}, "posture": ["disk-encryption"]},
  {"id": "phone-ann", "addresses": ["100.96.0.8"],
   "user": {"email": "ann@example.com", "groups": ["contractors"]}}]}"#;

const POLICIES: &str = r#"{"policies": [
  {"id": "block-contractors", "name": "Block contractors", "precedence": 5, "action": "block",
   "destinations": ["203.0.113.0/24"], "identity": {"groups": ["contractors"]}},
  {"id": "audit-prod", "name": "Audit production SSH", "precedence": 10, "action": "audit_ssh",
   "destinations": ["203.0.113.0/24", "2001:db8:1::/64"], "ports": [22],
   "posture": ["disk-encryption"]}]}"#;

/// The snapshot a [`LiveState`] without a datapath makes of these two documents.
fn snapshot(devices: &str, policies: &str) -> Arc<Snapshot> {
    let config =
        Config::parse("state_dir = \"/nonexistent/sshgw\"\n[datapath]\ninterfaces = [\"wg0\"]\n")
            .unwrap();
    let devices = DeviceTable::parse(devices).unwrap();
    let policies = PolicySet::parse(policies).unwrap();
    LiveState::new(config, devices, policies, Arc::new(Mutex::new(None))).snapshot()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// An admission as one comparable row: (device, relay policy or refusal message,
/// logged policy id, logged policy name).
type Row = (Option<String>, String, Option<String>, Option<String>);

fn row(admission: &Admission) -> Row {
    let device = admission.identity.as_ref().map(|i| i.device_id.clone());
    let (verdict, policy_id) = match &admission.outcome {
        Outcome::Relay { policy } => (format!("relay {}", policy.id), Some(policy.id.clone())),
        Outcome::Refuse { message, policy_id } => (message.clone(), policy_id.clone()),
    };
    (device, verdict, policy_id, admission.policy_name.clone())
}

fn some(text: &str) -> Option<String> {
    Some(text.to_string())
}

#[test]
fn admission_table() {
    let snapshot = snapshot(DEVICES, POLICIES);
    let jdoe = || some("laptop-jdoe");
    let audit = || (some("audit-prod"), some("Audit production SSH"));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str, Option<&str>, Row)> = vec![
        ("not enrolled", "100.96.0.99:40000", "203.0.113.10:22", Some("wg0"),
         (None, "sshgw: 100.96.0.99 is not an enrolled device".into(), None, None)),
        ("not enrolled over IPv6", "[fd00:96::99]:40000", "[2001:db8:1::10]:22", None,
         (None, "sshgw: fd00:96::99 is not an enrolled device".into(), None, None)),
        ("pinned device on another interface", "100.96.0.7:40000", "203.0.113.10:22", Some("eth0"),
         (None, "sshgw: 100.96.0.7 arrived on eth0, not on its device's tunnel wg0; refused as spoofed".into(), None, None)),
        ("pinned device, ingress unknown", "100.96.0.7:40000", "203.0.113.10:22", None,
         (None, "sshgw: 100.96.0.7 arrived on an unknown interface, not on its device's tunnel wg0; refused as spoofed".into(), None, None)),
        ("pinned device on its tunnel: audit", "100.96.0.7:40000", "203.0.113.10:22", Some("wg0"),
         (jdoe(), "relay audit-prod".into(), audit().0, audit().1)),
        ("IPv6 on its tunnel: audit", "[fd00:96::7]:40000", "[2001:db8:1::10]:22", Some("wg0"),
         (jdoe(), "relay audit-prod".into(), audit().0, audit().1)),
        ("blocked by a policy", "100.96.0.8:40000", "203.0.113.10:22", None,
         (some("phone-ann"), "sshgw: blocked by policy \"Block contractors\" (block-contractors)".into(),
          some("block-contractors"), some("Block contractors"))),
        ("unpinned device, any interface: still blocked", "100.96.0.8:40000", "203.0.113.10:22", Some("eth9"),
         (some("phone-ann"), "sshgw: blocked by policy \"Block contractors\" (block-contractors)".into(),
          some("block-contractors"), some("Block contractors"))),
        ("no policy covers the destination", "100.96.0.7:40000", "192.0.2.1:22", Some("wg0"),
         (jdoe(), "sshgw: no policy allows this connection".into(), None, None)),
        ("no policy covers the port", "100.96.0.7:40000", "203.0.113.10:2222", Some("wg0"),
         (jdoe(), "sshgw: no policy allows this connection".into(), None, None)),
    ];
    for (what, peer, dst, ingress, want) in cases {
        let got = admit(&snapshot, "s-test", addr(peer), addr(dst), ingress);
        assert_eq!(row(&got), want, "{what}");
    }
}

#[test]
fn a_missing_posture_check_matches_no_policy() {
    let devices = DEVICES.replace(r#""posture": ["disk-encryption"]"#, r#""posture": []"#);
    let snapshot = snapshot(&devices, POLICIES);
    let got = admit(
        &snapshot,
        "s-test",
        addr("100.96.0.7:40000"),
        addr("203.0.113.10:22"),
        Some("wg0"),
    );
    assert_eq!(
        row(&got),
        (
            some("laptop-jdoe"),
            "sshgw: no policy allows this connection".into(),
            None,
            None
        )
    );
}

#[test]
fn every_admission_is_timed() {
    let snapshot = snapshot(DEVICES, POLICIES);
    let decisions = || {
        let text = crate::metrics::render(
            &crate::sessions::live::LiveSessions::default(),
            None,
            &crate::sessions::health::Health::default().report(),
            None,
            &[],
        );
        text.lines()
            .find_map(|l| l.strip_prefix("sshgw_admission_decision_seconds_count "))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("the exposition has the decision histogram")
    };
    let before = decisions();
    for peer in ["100.96.0.7:40000", "100.96.0.99:40000"] {
        admit(
            &snapshot,
            "s-test",
            addr(peer),
            addr("203.0.113.10:22"),
            Some("wg0"),
        );
    }
    // Other tests admit connections in parallel: at least these two were counted.
    assert!(decisions() >= before + 2);
}

fn verdict(readmission: Readmission) -> String {
    match readmission {
        Readmission::Keep(policy) => format!("keep {}", policy.id),
        Readmission::Unchanged => "unchanged".into(),
        Readmission::End(message) => message,
    }
}

#[test]
fn readmission_table() {
    let before = snapshot(DEVICES, POLICIES);
    let peer = addr("100.96.0.7:40000");
    let dst = addr("203.0.113.10:22");
    let admitted = admit(&before, "s-test", peer, dst, Some("wg0"));
    let identity = admitted.identity.expect("admitted");

    let revoked = r#"{"devices": [{"id": "phone-ann", "addresses": ["100.96.0.8"],
        "user": {"email": "ann@example.com", "groups": ["contractors"]}}]}"#;
    let readdressed = r#"{"devices": [{"id": "laptop-other", "addresses": ["100.96.0.7"],
        "user": {"email": "other@example.com"}, "posture": ["disk-encryption"]}]}"#;
    let contractor = DEVICES.replace(r#"["developers"]"#, r#"["contractors"]"#);
    let repinned = DEVICES.replace(r#""wg0""#, r#""wg9""#);
    let no_posture = DEVICES.replace(r#""posture": ["disk-encryption"]"#, r#""posture": []"#);
    let elsewhere = POLICIES.replace("203.0.113.0/24", "198.51.100.0/24");
    let only_ann = POLICIES.replace(
        r#""posture": ["disk-encryption"]"#,
        r#""identity": {"emails": ["ann@example.com"]}"#,
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("nothing changed", DEVICES, POLICIES, "keep audit-prod"),
        ("device revoked", revoked, POLICIES,
         "sshgw: session ended: 100.96.0.7 is not an enrolled device"),
        ("address now another device's", readdressed, POLICIES,
         "sshgw: session ended: 100.96.0.7 no longer belongs to device laptop-jdoe"),
        ("user now blocked", &contractor, POLICIES,
         "sshgw: session ended: blocked by policy \"Block contractors\" (block-contractors)"),
        ("pin moved to another tunnel", &repinned, POLICIES,
         "sshgw: session ended: 100.96.0.7 arrived on wg0, not on its device's tunnel wg9; refused as spoofed"),
        ("posture lost", &no_posture, POLICIES,
         "sshgw: session ended: no policy allows this connection"),
        ("policy no longer for this user", DEVICES, &only_ann,
         "sshgw: session ended: no policy allows this connection"),
        ("destination no longer audited", DEVICES, &elsewhere, "unchanged"),
    ];
    for (what, devices, policies, want) in cases {
        let now = snapshot(devices, policies);
        let got = readmit(&now, &identity, peer, dst, Some("wg0"));
        assert_eq!(verdict(got), want, "{what}");
    }
}
