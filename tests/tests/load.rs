//! The scale figure's pieces that need no lab: the load server's certificate checks (what
//! sshd decides with `TrustedUserCAKeys`), the unit's `LimitNOFILE=` and the descriptor
//! arithmetic that stops the ramp before sshgw runs out. Certificates are minted here with
//! fixed keys and times; nothing is timed.

use std::net::IpAddr;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{Certificate, PrivateKey};
use sshgw_tests::bench::scale::{fd_bound, parse_limit_nofile};
use sshgw_tests::load::cert::{Refusal, check_user_certificate};

/// The "current" time of every check.
const NOW: u64 = 1_800_000_000;
/// The router's upstream address: where sshgw's connections come from.
const PEER: &str = "203.0.113.1";

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

fn peer() -> IpAddr {
    PEER.parse().expect("an address")
}

/// What a certificate says; the default is what sshgw mints for jdoe.
struct Spec {
    cert_type: CertType,
    principals: Vec<&'static str>,
    valid_after: u64,
    valid_before: u64,
    critical: Vec<(&'static str, &'static str)>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            cert_type: CertType::User,
            principals: vec!["jdoe"],
            valid_after: NOW - 30,
            valid_before: NOW + 120,
            critical: vec![("source-address", "203.0.113.1/32")],
        }
    }
}

fn mint(ca: &PrivateKey, spec: Spec) -> Certificate {
    let subject = key(9);
    let mut b = Builder::new(
        vec![7u8; 32],
        subject.public_key().key_data().clone(),
        spec.valid_after,
        spec.valid_before,
    )
    .expect("validity");
    b.cert_type(spec.cert_type)
        .expect("type")
        .key_id("sshgw:jdoe@example.com:laptop-jdoe:1")
        .expect("key id");
    if spec.principals.is_empty() {
        b.all_principals_valid().expect("no principals");
    }
    for p in spec.principals {
        b.valid_principal(p).expect("principal");
    }
    for (name, value) in spec.critical {
        b.critical_option(name, value).expect("critical option");
    }
    b.extension("permit-pty", "").expect("extension");
    b.sign(ca).expect("signing")
}

/// Checks a certificate minted by CA 1 against CA 1, for login `jdoe` from [`PEER`].
fn check(spec: Spec) -> Result<(), Refusal> {
    let ca = key(1);
    let cert = mint(&ca, spec);
    check_user_certificate(&cert, ca.public_key().key_data(), "jdoe", peer(), NOW)
}

#[test]
fn accepts_what_sshgw_mints() {
    assert_eq!(check(Spec::default()), Ok(()));
}

#[test]
fn refuses_another_ca() {
    let cert = mint(&key(2), Spec::default());
    let trusted = key(1);
    assert_eq!(
        check_user_certificate(&cert, trusted.public_key().key_data(), "jdoe", peer(), NOW),
        Err(Refusal::UntrustedCa)
    );
}

#[test]
fn refuses_a_login_that_is_not_a_principal() {
    let ca = key(1);
    let cert = mint(&ca, Spec::default());
    let got = check_user_certificate(&cert, ca.public_key().key_data(), "root", peer(), NOW);
    assert_eq!(
        got,
        Err(Refusal::LoginNotListed {
            login: "root".to_owned(),
            principals: vec!["jdoe".to_owned()],
        })
    );
}

#[test]
fn refuses_a_certificate_without_principals() {
    let spec = Spec {
        principals: Vec::new(),
        ..Spec::default()
    };
    assert_eq!(check(spec), Err(Refusal::NoPrincipals));
}

#[test]
fn refuses_an_expired_certificate() {
    let spec = Spec {
        valid_after: NOW - 200,
        valid_before: NOW,
        ..Spec::default()
    };
    assert_eq!(
        check(spec),
        Err(Refusal::Expired {
            valid_before: NOW,
            now: NOW
        })
    );
}

#[test]
fn refuses_a_certificate_not_yet_valid() {
    let spec = Spec {
        valid_after: NOW + 1,
        valid_before: NOW + 120,
        ..Spec::default()
    };
    assert_eq!(
        check(spec),
        Err(Refusal::NotYetValid {
            valid_after: NOW + 1,
            now: NOW
        })
    );
}

#[test]
fn accepts_the_first_and_refuses_the_last_second() {
    let ca = key(1);
    let cert = mint(&ca, Spec::default());
    let ca = ca.public_key().key_data().clone();
    assert_eq!(
        check_user_certificate(&cert, &ca, "jdoe", peer(), NOW - 30),
        Ok(())
    );
    assert!(check_user_certificate(&cert, &ca, "jdoe", peer(), NOW + 120).is_err());
}

#[test]
fn refuses_a_host_certificate() {
    let spec = Spec {
        cert_type: CertType::Host,
        ..Spec::default()
    };
    assert_eq!(check(spec), Err(Refusal::NotUserCertificate));
}

#[test]
fn refuses_an_unknown_critical_option() {
    let spec = Spec {
        critical: vec![
            ("no-such-option@example.com", ""),
            ("source-address", "203.0.113.1/32"),
        ],
        ..Spec::default()
    };
    assert_eq!(
        check(spec),
        Err(Refusal::UnknownCriticalOption(
            "no-such-option@example.com".to_owned()
        ))
    );
}

#[test]
fn refuses_verify_required() {
    let spec = Spec {
        critical: vec![("verify-required", "")],
        ..Spec::default()
    };
    assert_eq!(
        check(spec),
        Err(Refusal::UnknownCriticalOption("verify-required".to_owned()))
    );
}

#[test]
fn accepts_force_command() {
    let spec = Spec {
        critical: vec![("force-command", "/bin/true")],
        ..Spec::default()
    };
    assert_eq!(check(spec), Ok(()));
}

#[test]
fn source_address_must_hold_the_client() {
    let spec = |list: &'static str| Spec {
        critical: vec![("source-address", list)],
        ..Spec::default()
    };
    assert_eq!(check(spec("203.0.113.0/24,2001:db8::/32")), Ok(()));
    assert_eq!(check(spec("2001:db8::1, 203.0.113.1")), Ok(()));
    assert_eq!(
        check(spec("203.0.113.2/32")),
        Err(Refusal::SourceAddress {
            peer: peer(),
            allowed: "203.0.113.2/32".to_owned()
        })
    );
    assert_eq!(
        check(spec("203.0.113.0/33")),
        Err(Refusal::BadSourceAddress("203.0.113.0/33".to_owned()))
    );
    assert_eq!(
        check(spec("not-an-address")),
        Err(Refusal::BadSourceAddress("not-an-address".to_owned()))
    );
}

#[test]
fn limit_nofile_of_the_shipped_unit() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/sshgw.service"),
    )
    .expect("the shipped unit");
    assert_eq!(parse_limit_nofile(&unit).expect("LimitNOFILE="), 524_288);
    assert_eq!(
        parse_limit_nofile("LimitNOFILE=1024:4096\n").expect("soft:hard"),
        4096
    );
    assert_eq!(
        parse_limit_nofile("LimitNOFILE=infinity\n").expect("infinity"),
        u64::MAX
    );
    assert!(parse_limit_nofile("[Service]\nUser=sshgw\n").is_err());
}

#[test]
fn descriptors_bound_the_sessions() {
    // 20,000 descriptors, 256 kept free, 35 in use, 2 per session: 9,854 sessions.
    assert_eq!(fd_bound(20_000, 256, 35, 0, 2.0), 9_854);
    // Measured at 1,000 open with 2,035 in use: 8,854 more.
    assert_eq!(fd_bound(20_000, 256, 2_035, 1_000, 2.0), 9_854);
    // No room left: what is open.
    assert_eq!(fd_bound(1_000, 256, 900, 400, 2.0), 400);
}
