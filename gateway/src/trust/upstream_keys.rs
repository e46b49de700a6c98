//! Pinning of the real servers' host keys in an OpenSSH `known_hosts` file
//! (`Config::known_hosts_path()`).
//!
//! Operators may pre-seed the file with `ssh-keyscan` output, hashed (`ssh-keygen -H`)
//! entries, `@cert-authority` and `@revoked` lines. ssh-key parses the entries; the host
//! matching follows OpenSSH: comma-separated patterns with `*`/`?` wildcards and `!`
//! negation, `[host]:port` for ports other than 22, `|1|salt|hash` = HMAC-SHA1(salt, name).
//!
//! The file is re-read on every check, so live edits take effect at once. In TOFU mode the
//! first key seen for a server is appended; existing lines are never rewritten.
//!
//! All functions do (small) blocking file I/O.

use std::{
    io::ErrorKind,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context, Result};
use hmac::{KeyInit, Mac};
use russh::keys::{
    Certificate, HashAlg, PublicKey,
    ssh_key::{
        known_hosts::{Entry, HostPatterns, Marker},
        public::KeyData,
    },
};

use crate::config::HostKeyMode;

/// The outcome of checking a server's host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Matches a pinned key, or a valid certificate from a trusted `@cert-authority`.
    Trusted,
    /// TOFU: first sight of this server; the key was appended to the file.
    Pinned,
    /// The server has other pinned keys.
    Mismatch {
        /// SHA256 fingerprints of the keys pinned for this server.
        expected: Vec<String>,
        /// SHA256 fingerprint of the key it presented.
        presented: String,
    },
    /// Nothing pinned for this server, and it may not be pinned now: strict mode, or an
    /// `@cert-authority` line covers the server but did not vouch for the key.
    Unknown,
    /// The key (or the certificate's CA) is listed `@revoked`.
    Revoked,
}

/// Checks server host keys against the known_hosts file.
#[derive(Debug)]
pub struct UpstreamKeys {
    path: PathBuf,
    mode: HostKeyMode,
    /// Serialises TOFU appends.
    lock: Mutex<()>,
}

/// One parsed line of the file.
struct Line {
    entry: Entry,
}

/// What the file says about one key, before any TOFU decision.
enum Lookup {
    Revoked,
    Trusted,
    Mismatch(Vec<String>),
    /// Nothing pinned for the host; `ca_covers`: an `@cert-authority` line matches it.
    New {
        ca_covers: bool,
    },
}

impl UpstreamKeys {
    pub fn new(path: PathBuf, mode: HostKeyMode) -> Self {
        UpstreamKeys {
            path,
            mode,
            lock: Mutex::new(()),
        }
    }

    /// Checks a plain host key presented by `host:port`.
    pub fn check(&self, host: IpAddr, port: u16, key: &PublicKey) -> Result<KeyVerdict> {
        let name = host_name(host, port);
        let lines = self.load()?;
        self.check_plain(&name, &lines, key.key_data())
    }

    /// Checks a host certificate presented by `host:port`: trusted if signed by an
    /// `@cert-authority` key whose patterns match the server, of type host, naming the
    /// server's address among its principals and within its validity window. Otherwise the
    /// certificate's own key is checked like a plain key.
    pub fn check_certificate(
        &self,
        host: IpAddr,
        port: u16,
        cert: &Certificate,
    ) -> Result<KeyVerdict> {
        let name = host_name(host, port);
        let lines = self.load()?;
        let ca = cert.signature_key();
        if is_revoked(&lines, ca) {
            tracing::debug!(
                host = %name,
                ca = %ca.fingerprint(HashAlg::Sha256),
                "upstream host certificate is signed by a revoked CA"
            );
            return Ok(KeyVerdict::Revoked);
        }
        let principal = host.to_canonical().to_string();
        let ca_fp = ca.fingerprint(HashAlg::Sha256);
        let trusted_ca = lines.iter().any(|l| {
            l.entry.marker() == Some(&Marker::CertAuthority)
                && l.entry.public_key().key_data() == ca
                && host_matches(l.entry.host_patterns(), &name)
        });
        if trusted_ca {
            match validate_host_cert(cert, &principal, &ca_fp) {
                // The certified key itself may still be revoked: `check_plain` says so.
                Ok(()) if !is_revoked(&lines, cert.public_key()) => return Ok(KeyVerdict::Trusted),
                Ok(()) => {}
                Err(reason) => tracing::warn!(
                    host = %name,
                    ca = %ca_fp,
                    serial = cert.serial(),
                    key_id = cert.key_id(),
                    reason,
                    "upstream host certificate not accepted; checking its key as a plain key"
                ),
            }
        }
        self.check_plain(&name, &lines, cert.public_key())
    }

    /// Whether an `@cert-authority` line matches `host:port` (ask the server for a
    /// certificate).
    pub fn wants_certificates(&self, host: IpAddr, port: u16) -> bool {
        let name = host_name(host, port);
        match self.load() {
            Ok(lines) => ca_covers(&lines, &name),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read known_hosts");
                false
            }
        }
    }

    fn check_plain(&self, name: &str, lines: &[Line], key: &KeyData) -> Result<KeyVerdict> {
        match lookup(lines, name, key) {
            Lookup::Revoked => Ok(self.revoked(name, key)),
            Lookup::Trusted => Ok(KeyVerdict::Trusted),
            Lookup::Mismatch(expected) => Ok(self.mismatch(name, expected, key)),
            Lookup::New { ca_covers: true } => Ok(KeyVerdict::Unknown),
            Lookup::New { ca_covers: false } if self.mode == HostKeyMode::Strict => {
                Ok(KeyVerdict::Unknown)
            }
            Lookup::New { ca_covers: false } => self.pin(name, key),
        }
    }

    /// TOFU: under the lock, re-read the file and append the key if still unknown.
    fn pin(&self, name: &str, key: &KeyData) -> Result<KeyVerdict> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lines = self.load()?;
        match lookup(&lines, name, key) {
            Lookup::Revoked => return Ok(self.revoked(name, key)),
            Lookup::Trusted => return Ok(KeyVerdict::Trusted),
            Lookup::Mismatch(expected) => return Ok(self.mismatch(name, expected, key)),
            Lookup::New { ca_covers: true } => return Ok(KeyVerdict::Unknown),
            Lookup::New { ca_covers: false } => {}
        }
        let key_text = PublicKey::new(key.clone(), "")
            .to_openssh()
            .context("cannot encode the host key")?;
        self.append(&format!("{name} {key_text}\n"))?;
        tracing::debug!(
            host = %name,
            fingerprint = %key.fingerprint(HashAlg::Sha256),
            path = %self.path.display(),
            "appended upstream host key (first sight)"
        );
        Ok(KeyVerdict::Pinned)
    }

    /// Appends `line` (O_APPEND, fsync), starting a new line if the file does not end with
    /// one. Creates the file 0600 if missing.
    fn append(&self, line: &str) -> Result<()> {
        use crate::util::fs::{AppendStep, append_line};
        append_line(&self.path, line).map_err(|(step, e)| {
            let path = self.path.display();
            let what = match step {
                AppendStep::Open => format!("cannot open {path} for appending"),
                AppendStep::Stat => format!("cannot stat {path}"),
                AppendStep::Read => format!("cannot read {path}"),
                AppendStep::Write => format!("cannot append to {path}"),
            };
            anyhow::Error::new(e).context(what)
        })
    }

    fn revoked(&self, name: &str, key: &KeyData) -> KeyVerdict {
        tracing::debug!(
            host = %name,
            fingerprint = %key.fingerprint(HashAlg::Sha256),
            "upstream host key is revoked"
        );
        KeyVerdict::Revoked
    }

    fn mismatch(&self, name: &str, expected: Vec<String>, key: &KeyData) -> KeyVerdict {
        let presented = key.fingerprint(HashAlg::Sha256).to_string();
        tracing::debug!(
            host = %name,
            presented,
            expected = ?expected,
            path = %self.path.display(),
            "upstream host key does not match the pinned key"
        );
        KeyVerdict::Mismatch {
            expected,
            presented,
        }
    }

    /// Reads and parses the file; missing = empty. Bad lines are skipped with a warning.
    fn load(&self) -> Result<Vec<Line>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()));
            }
        };
        Ok(parse(&text, &self.path))
    }
}

fn parse(text: &str, path: &Path) -> Vec<Line> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // ssh-key splits fields on single spaces; OpenSSH accepts any run of blanks.
        let normalized = line.split_whitespace().collect::<Vec<_>>().join(" ");
        match normalized.parse::<Entry>() {
            Ok(entry) => lines.push(Line { entry }),
            Err(e) => tracing::warn!(
                path = %path.display(),
                line = i + 1,
                error = %e,
                "skipping unparseable known_hosts line"
            ),
        }
    }
    lines
}

/// The name a server is known by: `host` for port 22, `[host]:port` otherwise.
fn host_name(host: IpAddr, port: u16) -> String {
    let host = host.to_canonical();
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn is_revoked(lines: &[Line], key: &KeyData) -> bool {
    lines.iter().any(|l| {
        l.entry.marker() == Some(&Marker::Revoked) && l.entry.public_key().key_data() == key
    })
}

fn ca_covers(lines: &[Line], name: &str) -> bool {
    lines.iter().any(|l| {
        l.entry.marker() == Some(&Marker::CertAuthority)
            && host_matches(l.entry.host_patterns(), name)
    })
}

fn lookup(lines: &[Line], name: &str, key: &KeyData) -> Lookup {
    if is_revoked(lines, key) {
        return Lookup::Revoked;
    }
    let mut expected = Vec::new();
    for l in lines {
        if l.entry.marker().is_some() || !host_matches(l.entry.host_patterns(), name) {
            continue;
        }
        let pinned = l.entry.public_key().key_data();
        if pinned == key {
            return Lookup::Trusted;
        }
        let fp = pinned.fingerprint(HashAlg::Sha256).to_string();
        if !expected.contains(&fp) {
            expected.push(fp);
        }
    }
    if expected.is_empty() {
        Lookup::New {
            ca_covers: ca_covers(lines, name),
        }
    } else {
        Lookup::Mismatch(expected)
    }
}

fn validate_host_cert(
    cert: &Certificate,
    principal: &str,
    ca_fp: &russh::keys::ssh_key::Fingerprint,
) -> std::result::Result<(), &'static str> {
    if !cert.cert_type().is_host() {
        return Err("not a host certificate");
    }
    if !cert
        .valid_principals()
        .iter()
        .any(|p| p.eq_ignore_ascii_case(principal))
    {
        return Err("the server's address is not among the principals");
    }
    cert.validate([ca_fp])
        .map_err(|_| "bad signature or outside the validity window")
}

/// OpenSSH host matching of one entry against `name` (already `[host]:port` if needed).
fn host_matches(patterns: &HostPatterns, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut matched = false;
            for pattern in list {
                let (negated, pattern) = match pattern.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, pattern.as_str()),
                };
                if glob(&pattern.to_ascii_lowercase(), &name) {
                    if negated {
                        return false;
                    }
                    matched = true;
                }
            }
            matched
        }
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Position after the last `*` and the text position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            pi += 1;
            star = Some((pi, ti));
        } else if let Some((sp, st)) = star {
            pi = sp;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{
        Algorithm, PrivateKey,
        ssh_key::certificate::{Builder, CertType},
    };
    use std::os::unix::fs::PermissionsExt;

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn line(key: &PublicKey) -> String {
        key.to_openssh().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fp(key: &PublicKey) -> String {
        key.fingerprint(HashAlg::Sha256).to_string()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn fixture(content: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        if let Some(c) = content {
            std::fs::write(&path, c).unwrap();
        }
        Fixture { _dir: dir, path }
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn host_cert(
        ca: &PrivateKey,
        key: &PublicKey,
        principal: &str,
        cert_type: CertType,
        valid: (u64, u64),
    ) -> Certificate {
        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), key, valid.0, valid.1).unwrap();
        b.cert_type(cert_type)
            .unwrap()
            .key_id("test-host")
            .unwrap()
            .valid_principal(principal)
            .unwrap();
        b.sign(ca).unwrap()
    }

    #[test]
    fn tofu_pins_then_trusts_then_mismatch() {
        let f = fixture(None);
        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Tofu);
        let k = key();
        let h = ip("192.0.2.10");
        assert_eq!(u.check(h, 22, &k).unwrap(), KeyVerdict::Pinned);
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert_eq!(text, format!("192.0.2.10 {}\n", line(&k)));
        let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(u.check(h, 22, &k).unwrap(), KeyVerdict::Trusted);

        let other = key();
        assert_eq!(
            u.check(h, 22, &other).unwrap(),
            KeyVerdict::Mismatch {
                expected: vec![fp(&k)],
                presented: fp(&other),
            }
        );
        // Nothing was appended for the mismatch.
        assert_eq!(std::fs::read_to_string(&f.path).unwrap(), text);
        // A different server is pinned independently, on port 2222 as [host]:port.
        assert_eq!(u.check(h, 2222, &other).unwrap(), KeyVerdict::Pinned);
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert!(
            text.ends_with(&format!("\n[192.0.2.10]:2222 {}\n", line(&other))),
            "{text}"
        );
        assert_eq!(u.check(h, 2222, &other).unwrap(), KeyVerdict::Trusted);
        assert!(matches!(
            u.check(h, 2222, &k).unwrap(),
            KeyVerdict::Mismatch { .. }
        ));
    }

    #[test]
    fn strict_mode() {
        let f = fixture(None);
        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Strict);
        let k = key();
        assert_eq!(
            u.check(ip("192.0.2.10"), 22, &k).unwrap(),
            KeyVerdict::Unknown
        );
        assert!(!f.path.exists(), "strict mode never writes");

        std::fs::write(&f.path, format!("192.0.2.10 {}\n", line(&k))).unwrap();
        assert_eq!(
            u.check(ip("192.0.2.10"), 22, &k).unwrap(),
            KeyVerdict::Trusted
        );
        assert_eq!(
            u.check(ip("192.0.2.11"), 22, &k).unwrap(),
            KeyVerdict::Unknown
        );
        assert!(matches!(
            u.check(ip("192.0.2.10"), 22, &key()).unwrap(),
            KeyVerdict::Mismatch { .. }
        ));
    }

    #[test]
    fn wildcards_and_negation() {
        let k = key();
        let f = fixture(Some(&format!(
            "# comment\n\n10.0.0.*,!10.0.0.13,192.0.2.?  {}  a comment\n",
            line(&k)
        )));
        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Strict);
        let v = |h: &str| u.check(ip(h), 22, &k).unwrap();
        assert_eq!(v("10.0.0.5"), KeyVerdict::Trusted);
        assert_eq!(v("10.0.0.250"), KeyVerdict::Trusted);
        assert_eq!(v("10.0.0.13"), KeyVerdict::Unknown);
        assert_eq!(v("192.0.2.7"), KeyVerdict::Trusted);
        assert_eq!(v("192.0.2.77"), KeyVerdict::Unknown);
        assert_eq!(v("10.0.1.5"), KeyVerdict::Unknown);
        // Port 2222 is `[10.0.0.5]:2222`, which `10.0.0.*` does not match...
        assert_eq!(
            u.check(ip("10.0.0.5"), 2222, &k).unwrap(),
            KeyVerdict::Unknown
        );
        // ...but `[10.0.0.*]:*` does.
        std::fs::write(&f.path, format!("[10.0.0.*]:* {}\n", line(&k))).unwrap();
        assert_eq!(
            u.check(ip("10.0.0.5"), 2222, &k).unwrap(),
            KeyVerdict::Trusted
        );
    }

    #[test]
    fn bracketed_port_form() {
        let k = key();
        let f = fixture(Some(&format!(
            "[192.0.2.10]:2222 {}\n[2001:db8::1]:2200 {}\n",
            line(&k),
            line(&k)
        )));
        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Strict);
        assert_eq!(
            u.check(ip("192.0.2.10"), 2222, &k).unwrap(),
            KeyVerdict::Trusted
        );
        assert_eq!(
            u.check(ip("192.0.2.10"), 22, &k).unwrap(),
            KeyVerdict::Unknown
        );
        assert_eq!(
            u.check(ip("192.0.2.10"), 2223, &k).unwrap(),
            KeyVerdict::Unknown
        );
        assert_eq!(
            u.check(ip("2001:db8::1"), 2200, &k).unwrap(),
            KeyVerdict::Trusted
        );
    }

    #[test]
    fn glob_matching() {
        assert!(glob("*", ""));
        assert!(glob("*", "abc"));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a*c", "ac"));
        assert!(!glob("a*c", "acb"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*.example.*", "db.example.com"));
        assert!(glob("[*]:22?2", "[10.1.2.3]:2202"));
        assert!(!glob("abc", "abcd"));
    }

    #[test]
    fn hashed_entries_from_ssh_keygen() {
        let k = key();
        let k2 = key();
        let f = fixture(Some(&format!(
            "192.0.2.20 {}\n[192.0.2.21]:2222 {}\n",
            line(&k),
            line(&k2)
        )));
        let out = std::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&f.path)
            .output()
            .expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert!(text.contains("|1|"), "{text}");
        assert!(!text.contains("192.0.2.2"), "{text}");

        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Strict);
        assert_eq!(
            u.check(ip("192.0.2.20"), 22, &k).unwrap(),
            KeyVerdict::Trusted
        );
        assert_eq!(
            u.check(ip("192.0.2.21"), 2222, &k2).unwrap(),
            KeyVerdict::Trusted
        );
        assert_eq!(
            u.check(ip("192.0.2.21"), 22, &k2).unwrap(),
            KeyVerdict::Unknown
        );
        assert_eq!(
            u.check(ip("192.0.2.22"), 22, &k).unwrap(),
            KeyVerdict::Unknown
        );
        assert!(matches!(
            u.check(ip("192.0.2.20"), 22, &k2).unwrap(),
            KeyVerdict::Mismatch { .. }
        ));
    }

    #[test]
    fn revoked_keys_are_rejected_everywhere() {
        let bad = key();
        let f = fixture(Some(&format!(
            "192.0.2.10 {}\n@revoked somewhere.else {}\n",
            line(&bad),
            line(&bad)
        )));
        for mode in [HostKeyMode::Tofu, HostKeyMode::Strict] {
            let u = UpstreamKeys::new(f.path.clone(), mode);
            assert_eq!(
                u.check(ip("192.0.2.10"), 22, &bad).unwrap(),
                KeyVerdict::Revoked
            );
            assert_eq!(
                u.check(ip("198.51.100.1"), 22, &bad).unwrap(),
                KeyVerdict::Revoked
            );
        }
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap().lines().count(),
            2,
            "a revoked key is never pinned"
        );
    }

    #[test]
    fn cert_authority() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let rogue = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let host_key = key();
        let now = unix_now();
        let window = (now - 60, now + 3600);
        let f = fixture(Some(&format!(
            "@cert-authority 192.0.2.*,!192.0.2.99 {}\n",
            line(ca.public_key())
        )));
        for mode in [HostKeyMode::Tofu, HostKeyMode::Strict] {
            let u = UpstreamKeys::new(f.path.clone(), mode);
            let h = ip("192.0.2.30");
            assert!(u.wants_certificates(h, 22));
            assert!(!u.wants_certificates(ip("192.0.2.99"), 22));
            assert!(!u.wants_certificates(ip("198.51.100.1"), 22));
            assert!(!u.wants_certificates(h, 2222));

            let good = host_cert(&ca, &host_key, "192.0.2.30", CertType::Host, window);
            assert_eq!(
                u.check_certificate(h, 22, &good).unwrap(),
                KeyVerdict::Trusted
            );
            // Not for another address, and nothing is pinned on the way.
            assert_eq!(
                u.check_certificate(ip("192.0.2.31"), 22, &good).unwrap(),
                KeyVerdict::Unknown
            );
            // Wrong CA, user type, expired: fall back to the plain key, which nobody pinned
            // and which is not TOFU-pinned because the CA line covers the host.
            let wrong_ca = host_cert(&rogue, &host_key, "192.0.2.30", CertType::Host, window);
            let user = host_cert(&ca, &host_key, "192.0.2.30", CertType::User, window);
            let expired = host_cert(&ca, &host_key, "192.0.2.30", CertType::Host, (1, 2));
            for cert in [&wrong_ca, &user, &expired] {
                assert_eq!(
                    u.check_certificate(h, 22, cert).unwrap(),
                    KeyVerdict::Unknown
                );
            }
            // A plain key for a CA-covered host is not pinned either.
            assert_eq!(u.check(h, 22, &host_key).unwrap(), KeyVerdict::Unknown);
        }
        assert_eq!(std::fs::read_to_string(&f.path).unwrap().lines().count(), 1);

        // Pinning the plain key makes the fallback succeed.
        let mut text = std::fs::read_to_string(&f.path).unwrap();
        text.push_str(&format!("192.0.2.30 {}\n", line(&host_key)));
        std::fs::write(&f.path, &text).unwrap();
        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Strict);
        let wrong_ca = host_cert(&rogue, &host_key, "192.0.2.30", CertType::Host, window);
        assert_eq!(
            u.check_certificate(ip("192.0.2.30"), 22, &wrong_ca)
                .unwrap(),
            KeyVerdict::Trusted
        );
        let other_key = key();
        let wrong_key = host_cert(&rogue, &other_key, "192.0.2.30", CertType::Host, window);
        assert!(matches!(
            u.check_certificate(ip("192.0.2.30"), 22, &wrong_key)
                .unwrap(),
            KeyVerdict::Mismatch { .. }
        ));

        // Revoking the certified key rejects it despite a valid certificate.
        let good = host_cert(&ca, &host_key, "192.0.2.30", CertType::Host, window);
        std::fs::write(&f.path, format!("{text}@revoked * {}\n", line(&host_key))).unwrap();
        assert_eq!(
            u.check_certificate(ip("192.0.2.30"), 22, &good).unwrap(),
            KeyVerdict::Revoked
        );

        // Revoking the CA rejects even valid certificates.
        text.push_str(&format!("@revoked * {}\n", line(ca.public_key())));
        std::fs::write(&f.path, &text).unwrap();
        assert_eq!(
            u.check_certificate(ip("192.0.2.30"), 22, &good).unwrap(),
            KeyVerdict::Revoked
        );
    }

    #[test]
    fn unknown_ca_on_uncovered_host_falls_back_to_tofu() {
        let rogue = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let host_key = key();
        let now = unix_now();
        let f = fixture(None);
        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Tofu);
        let cert = host_cert(
            &rogue,
            &host_key,
            "198.51.100.5",
            CertType::Host,
            (now - 60, now + 60),
        );
        let h = ip("198.51.100.5");
        assert!(!u.wants_certificates(h, 22));
        assert_eq!(
            u.check_certificate(h, 22, &cert).unwrap(),
            KeyVerdict::Pinned
        );
        assert_eq!(u.check(h, 22, &host_key).unwrap(), KeyVerdict::Trusted);
        assert_eq!(
            u.check_certificate(h, 22, &cert).unwrap(),
            KeyVerdict::Trusted
        );
    }

    #[test]
    fn bad_lines_are_skipped_and_kept() {
        let k = key();
        let original = format!(
            "this is not a key\n@bogus-marker 192.0.2.1 {}\n192.0.2.1 {}",
            line(&k),
            line(&k)
        );
        let f = fixture(Some(&original));
        let u = UpstreamKeys::new(f.path.clone(), HostKeyMode::Tofu);
        assert_eq!(
            u.check(ip("192.0.2.1"), 22, &k).unwrap(),
            KeyVerdict::Trusted
        );
        let k2 = key();
        assert_eq!(
            u.check(ip("192.0.2.2"), 22, &k2).unwrap(),
            KeyVerdict::Pinned
        );
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert_eq!(
            text,
            format!("{original}\n192.0.2.2 {}\n", line(&k2)),
            "existing lines untouched; a newline is added before the appended line"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_canonical() {
        assert_eq!(host_name(ip("::ffff:192.0.2.1"), 22), "192.0.2.1");
        assert_eq!(host_name(ip("2001:db8::1"), 22), "2001:db8::1");
        assert_eq!(host_name(ip("2001:db8::1"), 2222), "[2001:db8::1]:2222");
    }
}
