//! The load server's certificate checks: what OpenSSH's sshd decides for a user certificate
//! when `TrustedUserCAKeys` names one CA and no `AuthorizedPrincipalsFile` is configured
//! (PROTOCOL.certkeys; sshd's `auth2-pubkey.c` and `auth-options.c`):
//!
//! * the certificate is signed by the configured CA, and the signature verifies;
//! * it is a user certificate (not a host certificate);
//! * it lists principals, and the requested login is one of them;
//! * `valid_after <= now < valid_before`;
//! * every critical option is understood: `source-address` (the client's address must be in
//!   its list), `force-command` (accepted: the load server runs its echo whatever the
//!   command). Anything else is refused, including `verify-required`, which only a FIDO
//!   key's signature can satisfy and which the load server therefore never accepts (sshd
//!   would let a non-FIDO key pass it: this is the stricter side).
//!
//! That the client holds the certificate's key is proven by the signature of its
//! authentication request, which russh verifies before it asks the handler.

use std::fmt;
use std::net::IpAddr;

use russh::keys::ssh_key::Certificate;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;

/// The critical option that limits where a certificate may be used from.
pub const SOURCE_ADDRESS: &str = "source-address";
/// The critical option that names the only command a certificate may run.
pub const FORCE_COMMAND: &str = "force-command";

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Signed by a key other than the trusted CA.
    UntrustedCa,
    /// The CA's signature over the certificate does not verify.
    BadSignature,
    /// A host certificate offered for a user login.
    NotUserCertificate,
    /// No principals: sshd requires a user certificate to name its logins.
    NoPrincipals,
    /// The login is not among the principals.
    LoginNotListed {
        login: String,
        principals: Vec<String>,
    },
    NotYetValid {
        valid_after: u64,
        now: u64,
    },
    Expired {
        valid_before: u64,
        now: u64,
    },
    UnknownCriticalOption(String),
    /// The client's address is not in `source-address`.
    SourceAddress {
        peer: IpAddr,
        allowed: String,
    },
    /// `source-address` is not a list of addresses and CIDR blocks.
    BadSourceAddress(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UntrustedCa => write!(f, "the certificate is not signed by the trusted CA"),
            Refusal::BadSignature => write!(f, "the CA signature does not verify"),
            Refusal::NotUserCertificate => write!(f, "a host certificate, not a user certificate"),
            Refusal::NoPrincipals => write!(f, "the certificate lists no principals"),
            Refusal::LoginNotListed { login, principals } => write!(
                f,
                "login {login:?} is not among the principals {principals:?}"
            ),
            Refusal::NotYetValid { valid_after, now } => write!(
                f,
                "not valid before {valid_after} (now {now}, {} s early)",
                valid_after - now
            ),
            Refusal::Expired { valid_before, now } => write!(
                f,
                "expired at {valid_before} (now {now}, {} s late)",
                now - valid_before
            ),
            Refusal::UnknownCriticalOption(name) => {
                write!(f, "unknown critical option {name:?}")
            }
            Refusal::SourceAddress { peer, allowed } => {
                write!(
                    f,
                    "client address {peer} is not in source-address {allowed:?}"
                )
            }
            Refusal::BadSourceAddress(list) => {
                write!(f, "source-address {list:?} is not a list of addresses")
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// Decides, as sshd would, whether `cert` (whose key the client has proven it holds) may log
/// in as `login` from `peer` at Unix time `now`, when `ca` is the only trusted user CA.
pub fn check_user_certificate(
    cert: &Certificate,
    ca: &KeyData,
    login: &str,
    peer: IpAddr,
    now: u64,
) -> Result<(), Refusal> {
    check_signer(cert, ca)?;
    if cert.cert_type() != CertType::User {
        return Err(Refusal::NotUserCertificate);
    }
    check_principal(cert, login)?;
    check_validity(cert, now)?;
    check_critical_options(cert, peer)
}

fn check_signer(cert: &Certificate, ca: &KeyData) -> Result<(), Refusal> {
    if cert.signature_key() != ca {
        return Err(Refusal::UntrustedCa);
    }
    cert.verify_signature().map_err(|_| Refusal::BadSignature)
}

fn check_principal(cert: &Certificate, login: &str) -> Result<(), Refusal> {
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Err(Refusal::NoPrincipals);
    }
    if principals.iter().any(|p| p == login) {
        Ok(())
    } else {
        Err(Refusal::LoginNotListed {
            login: login.to_owned(),
            principals: principals.to_vec(),
        })
    }
}

fn check_validity(cert: &Certificate, now: u64) -> Result<(), Refusal> {
    if now < cert.valid_after() {
        return Err(Refusal::NotYetValid {
            valid_after: cert.valid_after(),
            now,
        });
    }
    if now >= cert.valid_before() {
        return Err(Refusal::Expired {
            valid_before: cert.valid_before(),
            now,
        });
    }
    Ok(())
}

fn check_critical_options(cert: &Certificate, peer: IpAddr) -> Result<(), Refusal> {
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            SOURCE_ADDRESS => check_source_address(value, peer)?,
            FORCE_COMMAND => {}
            _ => return Err(Refusal::UnknownCriticalOption(name.clone())),
        }
    }
    Ok(())
}

/// `source-address`: a comma-separated list of addresses and CIDR blocks; the client's
/// address (an IPv4-mapped IPv6 address counts as IPv4) must fall in one of them.
pub fn check_source_address(list: &str, peer: IpAddr) -> Result<(), Refusal> {
    let peer = peer.to_canonical();
    let mut matched = false;
    for entry in list.split(',') {
        match cidr_contains(entry.trim(), peer) {
            Some(hit) => matched |= hit,
            None => return Err(Refusal::BadSourceAddress(list.to_owned())),
        }
    }
    if matched {
        Ok(())
    } else {
        Err(Refusal::SourceAddress {
            peer,
            allowed: list.to_owned(),
        })
    }
}

/// Whether the block `entry` (`ADDR` or `ADDR/LEN`) holds `ip`; None when `entry` is
/// malformed.
fn cidr_contains(entry: &str, ip: IpAddr) -> Option<bool> {
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => (addr.parse::<IpAddr>().ok()?, Some(len.parse::<u32>().ok()?)),
        None => (entry.parse::<IpAddr>().ok()?, None),
    };
    match (addr.to_canonical(), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let len = len.unwrap_or(32);
            (len <= 32).then(|| prefix_eq(u32::from(net).into(), u32::from(ip).into(), len, 32))
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let len = len.unwrap_or(128);
            (len <= 128).then(|| prefix_eq(u128::from(net), u128::from(ip), len, 128))
        }
        // A well-formed block of the other family never matches.
        (IpAddr::V4(_), _) => len.is_none_or(|l| l <= 32).then_some(false),
        (IpAddr::V6(_), _) => len.is_none_or(|l| l <= 128).then_some(false),
    }
}

/// Whether the first `len` of `bits` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, len: u32, bits: u32) -> bool {
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (a >> shift) == (b >> shift)
}
