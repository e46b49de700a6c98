//! The gateway's certificate authorities.
//!
//! Three Ed25519 keys live in `state_dir/ca/` (OpenSSH private key format, unencrypted,
//! mode 0600, directory 0700):
//!
//! - `user_ca`: signs the short-lived user certificates sshgw presents to the real servers
//!   (their sshd trusts it through `TrustedUserCAKeys`, see `sshgw ca user-key`);
//! - `host_ca`: signs host certificates for the host keys presented to devices
//!   (their `known_hosts` trust it through `@cert-authority`, see `sshgw ca known-hosts`).
//!
//! and a 32-byte secret, `host_key_secret` (mode 0600), from which each destination's own
//! host key is derived: HKDF-SHA256 (salt [`HOST_KEY_SALT`], info = the destination address)
//! gives the Ed25519 seed. Every audited server thus gets a stable key of its own, which
//! clients without certificate support can pin (`sshgw ca known-hosts --plain DEST`), and
//! the host certificate for that destination certifies it. A `host_key` file left by an
//! older sshgw (one key for every destination) is no longer read.
//!
//! Key material never reaches a log: the `Debug` impls print fingerprints only.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::DirBuilder,
    io::ErrorKind,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use rand::Rng;
use russh::keys::ssh_key::{
    Algorithm, Certificate, HashAlg, LineEnding, PrivateKey, PublicKey,
    certificate::{Builder, CertType},
};

use crate::util::fs;

/// Longest lifetime of a minted user certificate.
pub const MAX_USER_CERT_LIFETIME: Duration = Duration::from_secs(120);
/// User certificates start this far in the past, to absorb clock skew with the servers.
const USER_CERT_BACKDATE_SECS: u64 = 30;
/// Host certificates start this far in the past (clock skew with the devices).
const HOST_CERT_BACKDATE_SECS: u64 = 5 * 60;
/// Lifetime of a host certificate.
const HOST_CERT_LIFETIME_SECS: u64 = 7 * 24 * 60 * 60;
/// A cached host certificate is re-minted when less than this remains.
const HOST_CERT_RENEW_SECS: u64 = 24 * 60 * 60;

const USER_CA_COMMENT: &str = "sshgw-user-ca";
const HOST_CA_COMMENT: &str = "sshgw-host-ca";
const HOST_KEY_COMMENT: &str = "sshgw-host-key";
/// HKDF salt of the per-destination host keys; a new derivation scheme gets a new salt.
pub const HOST_KEY_SALT: &[u8] = b"sshgw host key v1";
/// Length of `host_key_secret`.
const HOST_KEY_SECRET_LEN: usize = 32;

/// The gateway's keys: user CA, host CA and the secret the host keys shown to devices are
/// derived from.
pub struct Authorities {
    user_ca: PrivateKey,
    host_ca: PrivateKey,
    host_secret: zeroize::Zeroizing<[u8; HOST_KEY_SECRET_LEN]>,
}

impl fmt::Debug for Authorities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorities")
            .field("user_ca", &fingerprint(&self.user_ca))
            .field("host_ca", &fingerprint(&self.host_ca))
            .finish_non_exhaustive()
    }
}

fn fingerprint(key: &PrivateKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl Authorities {
    /// Loads the two CA keys and the host-key secret from `state_dir/ca/`, creating
    /// whichever is missing.
    ///
    /// Existing files are never overwritten. A file whose mode grants group or other any
    /// access or that is not a regular file is refused with an error naming it, and so is a
    /// key that does not parse, is encrypted or is not Ed25519, and a secret that is not
    /// exactly 32 bytes.
    pub fn load_or_create(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("ca");
        ensure_private_dir(state_dir, &dir)?;
        Ok(Authorities {
            user_ca: load_or_create_key(&dir.join("user_ca"), USER_CA_COMMENT)?,
            host_ca: load_or_create_key(&dir.join("host_ca"), HOST_CA_COMMENT)?,
            host_secret: load_or_create_secret(&dir.join("host_key_secret"))?,
        })
    }

    /// The host key sshgw presents to devices that dialled `dst` (with the certificate
    /// from [`HostCerts`]): derived from the host-key secret, so the same for `dst` across
    /// restarts and different for every other destination.
    pub fn host_key_for(&self, dst: IpAddr) -> PrivateKey {
        let info = dst.to_canonical().to_string();
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(HOST_KEY_SALT), &self.host_secret[..]);
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        hkdf.expand(info.as_bytes(), &mut seed[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let keypair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let mut key = PrivateKey::from(keypair);
        key.set_comment(HOST_KEY_COMMENT);
        key
    }

    /// The plain `known_hosts` line for `dst`'s host key, for clients that cannot check
    /// host certificates: `PATTERNS ssh-ed25519 AAAA…` (`patterns` is `dst` and any names).
    pub fn plain_known_hosts_line(&self, dst: IpAddr, names: &[String]) -> String {
        let dst = dst.to_canonical();
        let ip = dst.to_string();
        let mut patterns = vec![ip.clone()];
        patterns.extend(names.iter().filter(|n| **n != ip).cloned());
        let mut key = self.host_key_for(dst).public_key().clone();
        key.set_comment("");
        format!(
            "{} {}",
            patterns.join(","),
            key.to_openssh()
                .expect("encoding an Ed25519 public key cannot fail")
        )
    }

    /// The user CA public key, for the servers' `TrustedUserCAKeys` file:
    /// `ssh-ed25519 AAAA… sshgw-user-ca`.
    pub fn user_ca_public_line(&self) -> String {
        public_line(self.user_ca.public_key(), USER_CA_COMMENT)
    }

    /// The line devices add to `known_hosts`:
    /// `@cert-authority * ssh-ed25519 AAAA… sshgw-host-ca`.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "@cert-authority * {}",
            public_line(self.host_ca.public_key(), HOST_CA_COMMENT)
        )
    }

    /// Mints a fresh Ed25519 key and a user certificate for it, signed by the user CA.
    pub fn mint_user_cert(&self, req: &UserCertRequest) -> Result<MintedCert> {
        ensure!(
            req.lifetime >= Duration::from_secs(1) && req.lifetime <= MAX_USER_CERT_LIFETIME,
            "user certificate lifetime must be between 1 and {} seconds, not {:?}",
            MAX_USER_CERT_LIFETIME.as_secs(),
            req.lifetime
        );
        ensure!(
            !req.principal.is_empty(),
            "user certificate principal is empty"
        );
        for (what, value) in [
            ("principal", req.principal),
            ("email", req.email),
            ("device id", req.device_id),
            ("session id", req.session_id),
        ] {
            ensure!(
                !value.chars().any(char::is_control),
                "user certificate {what} {value:?} contains control characters"
            );
        }
        ensure!(
            !req.principal.contains(',') && !req.principal.chars().any(char::is_whitespace),
            "user certificate principal {:?} contains a comma or whitespace",
            req.principal
        );

        let now = unix_now()?;
        let valid_after = now.saturating_sub(USER_CERT_BACKDATE_SECS);
        let valid_before = now + req.lifetime.as_secs();
        let key_id = format!("sshgw:{}:{}:{}", req.email, req.device_id, req.session_id);
        let source = req.source_address.to_canonical();
        let prefix = if source.is_ipv4() { 32 } else { 128 };

        let mut rng = rand::rng();
        let key = PrivateKey::random(&mut rng, Algorithm::Ed25519)
            .context("cannot generate the certificate key")?;
        let serial = nonzero_serial(&mut rng);
        let mut builder =
            Builder::new_with_random_nonce(&mut rng, key.public_key(), valid_after, valid_before)?;
        builder
            .serial(serial)?
            .cert_type(CertType::User)?
            .key_id(key_id.clone())?
            .valid_principal(req.principal)?
            .critical_option("source-address", format!("{source}/{prefix}"))?
            .extension("permit-pty", "")?;
        if req.permit_port_forwarding {
            builder.extension("permit-port-forwarding", "")?;
        }
        if req.permit_agent_forwarding {
            builder.extension("permit-agent-forwarding", "")?;
        }
        let cert = builder
            .sign(&self.user_ca)
            .context("cannot sign the user certificate")?;
        tracing::debug!(
            key_id,
            serial,
            principal = req.principal,
            login = req.login,
            key = %key.fingerprint(HashAlg::Sha256),
            valid_before,
            "minted user certificate"
        );
        Ok(MintedCert {
            key,
            cert,
            serial,
            key_id,
        })
    }

    fn mint_host_cert(
        &self,
        key: &PublicKey,
        dst: IpAddr,
        names: &[String],
    ) -> Result<Certificate> {
        let now = unix_now()?;
        let mut rng = rand::rng();
        let serial = nonzero_serial(&mut rng);
        let mut builder = Builder::new_with_random_nonce(
            &mut rng,
            key,
            now.saturating_sub(HOST_CERT_BACKDATE_SECS),
            now + HOST_CERT_LIFETIME_SECS,
        )?;
        let ip = dst.to_string();
        builder
            .serial(serial)?
            .cert_type(CertType::Host)?
            .key_id(format!("sshgw-host:{ip}"))?
            .valid_principal(ip.clone())?;
        let mut seen = vec![ip];
        for name in names {
            if !seen.contains(name) {
                builder.valid_principal(name.clone())?;
                seen.push(name.clone());
            }
        }
        let cert = builder
            .sign(&self.host_ca)
            .with_context(|| format!("cannot sign the host certificate for {dst}"))?;
        tracing::debug!(%dst, serial, principals = ?seen, "minted host certificate");
        Ok(cert)
    }
}

/// What a user certificate is for.
#[derive(Debug, Clone)]
pub struct UserCertRequest<'a> {
    /// The only principal of the certificate (the login on the real server).
    pub principal: &'a str,
    /// The login the device asked for (logged, not encoded in the certificate).
    pub login: &'a str,
    pub email: &'a str,
    pub device_id: &'a str,
    pub session_id: &'a str,
    /// Where the gateway's connection to the server comes from (`source-address` option).
    pub source_address: IpAddr,
    /// At most [`MAX_USER_CERT_LIFETIME`].
    pub lifetime: Duration,
    pub permit_port_forwarding: bool,
    pub permit_agent_forwarding: bool,
}

/// A fresh key with its user certificate.
pub struct MintedCert {
    /// Fresh Ed25519 key, one per connection.
    pub key: PrivateKey,
    pub cert: Certificate,
    pub serial: u64,
    /// `sshgw:<email>:<device_id>:<session_id>`.
    pub key_id: String,
}

impl fmt::Debug for MintedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedCert")
            .field("key", &fingerprint(&self.key))
            .field("serial", &self.serial)
            .field("key_id", &self.key_id)
            .field("principals", &self.cert.valid_principals())
            .field("valid_after", &self.cert.valid_after())
            .field("valid_before", &self.cert.valid_before())
            .finish()
    }
}

/// What sshgw presents to a device that dialled one destination: that destination's own
/// host key and the host certificate for it.
#[derive(Clone)]
pub struct HostIdentity {
    pub key: PrivateKey,
    pub certificate: Certificate,
}

/// Host keys and certificates, one per destination address, cached.
pub struct HostCerts {
    authorities: Arc<Authorities>,
    host_names: BTreeMap<IpAddr, Vec<String>>,
    cache: Mutex<HashMap<IpAddr, HostIdentity>>,
}

impl fmt::Debug for HostCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.cache.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("HostCerts")
            .field("authorities", &self.authorities)
            .field("host_names", &self.host_names)
            .field("cached", &cached)
            .finish()
    }
}

impl HostCerts {
    /// `host_names`: extra principals per destination (`SshConfig::host_names`).
    pub fn new(authorities: Arc<Authorities>, host_names: BTreeMap<IpAddr, Vec<String>>) -> Self {
        let host_names = host_names
            .into_iter()
            .map(|(ip, names)| (ip.to_canonical(), names))
            .collect();
        HostCerts {
            authorities,
            host_names,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The host key and certificate for `dst` (the address the device dialled): the
    /// certificate's principals are the address and its configured names. The certificate
    /// is re-minted when less than a day of validity remains; the key never changes.
    pub fn get(&self, dst: IpAddr) -> Result<HostIdentity> {
        let dst = dst.to_canonical();
        let now = unix_now()?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(identity) = cache.get(&dst)
            && identity.certificate.valid_before() >= now + HOST_CERT_RENEW_SECS
        {
            return Ok(identity.clone());
        }
        let names = self.host_names.get(&dst).map(Vec::as_slice).unwrap_or(&[]);
        let key = self.authorities.host_key_for(dst);
        let certificate = self
            .authorities
            .mint_host_cert(key.public_key(), dst, names)?;
        // Drop certificates that could not be served any more.
        cache.retain(|_, c| c.certificate.valid_before() >= now + HOST_CERT_RENEW_SECS);
        let identity = HostIdentity { key, certificate };
        cache.insert(dst, identity.clone());
        Ok(identity)
    }
}

fn public_line(key: &PublicKey, comment: &str) -> String {
    let mut key = key.clone();
    key.set_comment(comment);
    key.to_openssh()
        .expect("encoding an Ed25519 public key cannot fail")
}

fn unix_now() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs())
}

fn nonzero_serial(rng: &mut impl Rng) -> u64 {
    loop {
        let serial = rng.next_u64();
        if serial != 0 {
            return serial;
        }
    }
}

/// Creates `dir` (and a missing `state_dir`) with mode 0700; refuses an existing `dir`
/// that others could write to.
fn ensure_private_dir(state_dir: &Path, dir: &Path) -> Result<()> {
    if !state_dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may only have removed bits; make it exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot chmod {}", dir.display()))?;
            let _ = fs::sync_dir(state_dir);
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)
                .with_context(|| format!("cannot stat {}", dir.display()))?;
            if !meta.is_dir() {
                bail!("{} exists and is not a directory", dir.display());
            }
            if meta.mode() & 0o022 != 0 {
                bail!(
                    "{} is writable by group or others (mode {:o}); chmod 700 it",
                    dir.display(),
                    meta.mode() & 0o7777
                );
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

/// Loads the 32-byte host-key secret, or creates it (random, 0600, never replacing a file
/// that appears meanwhile: the same temporary file and hard link as [`create_key`]).
fn load_or_create_secret(path: &Path) -> Result<zeroize::Zeroizing<[u8; HOST_KEY_SECRET_LEN]>> {
    if let Some(secret) = load_secret(path)? {
        return Ok(secret);
    }
    let mut secret = zeroize::Zeroizing::new([0u8; HOST_KEY_SECRET_LEN]);
    rand::rng().fill_bytes(&mut secret[..]);
    path.parent().context("secret path has no parent")?;
    match fs::link_new(path, &secret[..], fs::Mode::Private)? {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the host-key secret");
            Ok(secret)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            load_secret(path)?.with_context(|| format!("secret file {} vanished", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create secret file {}", path.display())),
    }
}

/// Reads the host-key secret; `None` if the file does not exist.
fn load_secret(path: &Path) -> Result<Option<zeroize::Zeroizing<[u8; HOST_KEY_SECRET_LEN]>>> {
    let mut file = match crate::util::fs::open_private(path, "secret file")? {
        Some(file) => file,
        None => return Ok(None),
    };
    let mut data = zeroize::Zeroizing::new(Vec::with_capacity(HOST_KEY_SECRET_LEN + 1));
    std::io::Read::read_to_end(&mut file, &mut data)
        .with_context(|| format!("cannot read secret file {}", path.display()))?;
    let secret: [u8; HOST_KEY_SECRET_LEN] = data[..].try_into().map_err(|_| {
        anyhow::anyhow!(
            "secret file {} holds {} bytes, not {HOST_KEY_SECRET_LEN}; refusing to use it",
            path.display(),
            data.len()
        )
    })?;
    Ok(Some(zeroize::Zeroizing::new(secret)))
}

fn load_or_create_key(path: &Path, comment: &str) -> Result<PrivateKey> {
    match load_key(path)? {
        Some(key) => Ok(key),
        None => create_key(path, comment),
    }
}

/// Loads a private key; `None` if the file does not exist.
fn load_key(path: &Path) -> Result<Option<PrivateKey>> {
    let Some(mut file) = crate::util::fs::open_private(path, "key file")? else {
        return Ok(None);
    };
    // `read_openssh` wipes its buffer when done.
    let key = PrivateKey::read_openssh(&mut file).map_err(|e| {
        anyhow::anyhow!(
            "key file {} is not an OpenSSH private key: {e}",
            path.display()
        )
    })?;
    if key.is_encrypted() {
        bail!(
            "key file {} is encrypted; sshgw needs it unencrypted",
            path.display()
        );
    }
    if key.algorithm() != Algorithm::Ed25519 {
        bail!(
            "key file {} holds a {} key; sshgw needs Ed25519",
            path.display(),
            key.algorithm()
        );
    }
    Ok(Some(key))
}

/// Generates a key and stores it at `path`, never replacing an existing file: the key is
/// written to a fresh 0600 temporary file (O_EXCL), fsynced, then hard-linked into place
/// (which fails if `path` appeared meanwhile; then that key is loaded instead).
fn create_key(path: &Path, comment: &str) -> Result<PrivateKey> {
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate an Ed25519 key")?;
    key.set_comment(comment);
    let text = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the private key")?;

    path.parent().context("key path has no parent")?;
    match fs::link_new(path, text.as_bytes(), fs::Mode::Private)? {
        Ok(()) => {
            tracing::info!(
                path = %path.display(),
                fingerprint = %key.fingerprint(HashAlg::Sha256),
                "created key"
            );
            Ok(key)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // Another process created it first: use theirs.
            load_key(path)?.with_context(|| format!("key file {} vanished", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create key file {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A private file made the way the CA files are.
    fn write_new_file(path: &Path, data: &[u8]) -> Result<()> {
        fs::write_new(path, data, fs::Mode::Private)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn request(lifetime: Duration, fwd: bool, agent: bool) -> UserCertRequest<'static> {
        UserCertRequest {
            principal: "jdoe",
            login: "root",
            email: "jdoe@example.com",
            device_id: "dev-1",
            session_id: "sess-42",
            source_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            lifetime,
            permit_port_forwarding: fwd,
            permit_agent_forwarding: agent,
        }
    }

    #[test]
    fn creates_private_files_and_reloads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let a = Authorities::load_or_create(&state).unwrap();
        let dir = state.join("ca");
        assert_eq!(mode(&dir), 0o700);
        for name in ["user_ca", "host_ca", "host_key_secret"] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(entries.len(), 3, "no temporary files left behind");
        let before: Vec<_> = ["user_ca", "host_ca", "host_key_secret"]
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect();

        let b = Authorities::load_or_create(&state).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(fingerprint(&a.user_ca), fingerprint(&b.user_ca));
        assert_eq!(fingerprint(&a.host_ca), fingerprint(&b.host_ca));
        let dst: IpAddr = "203.0.113.10".parse().unwrap();
        assert_eq!(
            fingerprint(&a.host_key_for(dst)),
            fingerprint(&b.host_key_for(dst))
        );
        assert_ne!(fingerprint(&a.user_ca), fingerprint(&a.host_ca));
        let after: Vec<_> = ["user_ca", "host_ca", "host_key_secret"]
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect();
        assert_eq!(before, after, "files are not rewritten");

        // Debug shows fingerprints, never key material.
        let dbg = format!("{a:?}");
        assert!(dbg.contains("SHA256:"), "{dbg}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
        assert_eq!(a.user_ca_public_line(), b.user_ca_public_line());
    }

    #[test]
    fn refuses_group_readable_key() {
        let tmp = tempfile::tempdir().unwrap();
        Authorities::load_or_create(tmp.path()).unwrap();
        let path = tmp.path().join("ca/host_ca");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", Authorities::load_or_create(tmp.path()).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("group or others"), "{err}");
        assert_eq!(mode(&path), 0o644, "left alone");
    }

    #[test]
    fn refuses_unparseable_key_without_overwriting() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let path = dir.join("user_ca");
        write_new_file(&path, b"garbage\n").unwrap();
        let err = format!("{:#}", Authorities::load_or_create(tmp.path()).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"garbage\n");
    }

    #[test]
    fn loads_keys_made_by_ssh_keygen_and_openssh_reads_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "mine", "-f"])
            .arg(dir.join("user_ca"))
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        let public = std::fs::read_to_string(dir.join("user_ca.pub")).unwrap();
        let a = Authorities::load_or_create(tmp.path()).unwrap();
        assert_eq!(
            PublicKey::from_openssh(&public).unwrap().key_data(),
            a.user_ca.public_key().key_data()
        );
        // OpenSSH reads the keys sshgw wrote.
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(dir.join("host_ca"))
            .output()
            .expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived = PublicKey::from_openssh(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        assert_eq!(derived.key_data(), a.host_ca.public_key().key_data());
    }

    #[test]
    fn public_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(tmp.path()).unwrap();
        let user = a.user_ca_public_line();
        assert!(user.starts_with("ssh-ed25519 AAAA"), "{user}");
        assert!(user.ends_with(" sshgw-user-ca"), "{user}");
        let parsed = PublicKey::from_openssh(&user).unwrap();
        assert_eq!(parsed.key_data(), a.user_ca.public_key().key_data());
        let kh = a.known_hosts_line();
        assert!(kh.starts_with("@cert-authority * ssh-ed25519 AAAA"), "{kh}");
        assert!(kh.ends_with(" sshgw-host-ca"), "{kh}");
        let entry: russh::keys::ssh_key::known_hosts::Entry = kh.parse().unwrap();
        assert_eq!(
            entry.public_key().key_data(),
            a.host_ca.public_key().key_data()
        );
    }

    #[test]
    fn user_cert_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(tmp.path()).unwrap();
        let now = unix_now().unwrap();
        let m = a
            .mint_user_cert(&request(Duration::from_secs(60), false, false))
            .unwrap();
        let ca_fp = a.user_ca.fingerprint(HashAlg::Sha256);
        m.cert.validate([&ca_fp]).unwrap();
        let host_fp = a.host_ca.fingerprint(HashAlg::Sha256);
        assert!(m.cert.validate([&host_fp]).is_err());
        assert_eq!(m.cert.cert_type(), CertType::User);
        assert_eq!(m.cert.valid_principals(), ["jdoe".to_string()]);
        assert_eq!(m.key_id, "sshgw:jdoe@example.com:dev-1:sess-42");
        assert_eq!(m.cert.key_id(), m.key_id);
        assert_eq!(m.cert.serial(), m.serial);
        assert_ne!(m.serial, 0);
        assert_eq!(m.cert.public_key(), m.key.public_key().key_data());
        assert_eq!(m.key.algorithm(), Algorithm::Ed25519);
        assert_eq!(
            m.cert.critical_options().get("source-address").unwrap(),
            "192.0.2.7/32"
        );
        assert_eq!(m.cert.critical_options().len(), 1);
        let ext: Vec<_> = m.cert.extensions().keys().cloned().collect();
        assert_eq!(ext, ["permit-pty"]);
        assert!((now - 31..=now - 29).contains(&m.cert.valid_after()));
        assert!((now + 59..=now + 61).contains(&m.cert.valid_before()));
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("PRIVATE") && dbg.contains("SHA256:"), "{dbg}");

        let m2 = a
            .mint_user_cert(&UserCertRequest {
                source_address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                ..request(Duration::from_secs(120), true, true)
            })
            .unwrap();
        let ext: Vec<_> = m2.cert.extensions().keys().cloned().collect();
        assert_eq!(
            ext,
            [
                "permit-agent-forwarding",
                "permit-port-forwarding",
                "permit-pty"
            ]
        );
        assert_eq!(
            m2.cert.critical_options().get("source-address").unwrap(),
            "2001:db8::1/128"
        );
        assert_ne!(m.serial, m2.serial);
        assert_ne!(
            m.key.public_key().key_data(),
            m2.key.public_key().key_data(),
            "fresh key per certificate"
        );

        let only_fwd = a
            .mint_user_cert(&request(Duration::from_secs(10), true, false))
            .unwrap();
        let ext: Vec<_> = only_fwd.cert.extensions().keys().cloned().collect();
        assert_eq!(ext, ["permit-port-forwarding", "permit-pty"]);
    }

    #[test]
    fn user_cert_lifetime_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(tmp.path()).unwrap();
        assert!(
            a.mint_user_cert(&request(Duration::from_secs(121), false, false))
                .is_err()
        );
        assert!(
            a.mint_user_cert(&request(Duration::ZERO, false, false))
                .is_err()
        );
        assert!(
            a.mint_user_cert(&UserCertRequest {
                principal: "",
                ..request(Duration::from_secs(60), false, false)
            })
            .is_err()
        );
    }

    #[test]
    fn ssh_keygen_parses_user_cert() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(&tmp.path().join("state")).unwrap();
        let m = a
            .mint_user_cert(&request(Duration::from_secs(120), true, false))
            .unwrap();
        let path = tmp.path().join("id-cert.pub");
        m.cert.write_file(&path).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run ssh-keygen");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&m.key_id), "{text}");
        assert!(text.contains("source-address 192.0.2.7/32"), "{text}");
        assert!(text.contains("permit-port-forwarding"), "{text}");
        assert!(!text.contains("permit-agent-forwarding"), "{text}");
        assert!(!text.contains("permit-X11-forwarding"), "{text}");
        assert!(!text.contains("permit-user-rc"), "{text}");
        assert!(text.contains("user certificate"), "{text}");
    }

    #[test]
    fn host_certs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Arc::new(Authorities::load_or_create(tmp.path()).unwrap());
        let db: IpAddr = "203.0.113.10".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let names = BTreeMap::from([(db, vec!["db1.example.com".to_string(), "db1".to_string()])]);
        let certs = HostCerts::new(a.clone(), names);
        let now = unix_now().unwrap();
        let c = certs.get(db).unwrap().certificate;
        c.validate([&a.host_ca.fingerprint(HashAlg::Sha256)])
            .unwrap();
        assert_eq!(c.cert_type(), CertType::Host);
        assert_eq!(
            c.valid_principals(),
            ["203.0.113.10", "db1.example.com", "db1"]
        );
        assert_eq!(c.public_key(), a.host_key_for(db).public_key().key_data());
        assert_eq!(
            certs.get(db).unwrap().key.public_key().key_data(),
            c.public_key()
        );
        assert!((now - 301..=now - 299).contains(&c.valid_after()));
        assert!(
            (now + HOST_CERT_LIFETIME_SECS - 1..=now + HOST_CERT_LIFETIME_SECS + 1)
                .contains(&c.valid_before())
        );
        // Cached: the same certificate comes back.
        assert_eq!(certs.get(db).unwrap().certificate, c);
        let o = certs.get(other).unwrap().certificate;
        assert_eq!(o.valid_principals(), ["198.51.100.1"]);
        assert_ne!(o.public_key(), c.public_key(), "a key per destination");
        // An IPv4-mapped address is the same destination.
        let mapped: IpAddr = "::ffff:203.0.113.10".parse().unwrap();
        assert_eq!(certs.get(mapped).unwrap().certificate, c);

        // ssh-keygen agrees it is a host certificate.
        let path = tmp.path().join("host-cert.pub");
        c.write_file(&path).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run ssh-keygen");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("host certificate"), "{text}");
        assert!(text.contains("db1.example.com"), "{text}");
    }

    #[test]
    fn host_cert_renewed_when_expiring() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Arc::new(Authorities::load_or_create(tmp.path()).unwrap());
        let certs = HostCerts::new(a.clone(), BTreeMap::new());
        let dst: IpAddr = "192.0.2.1".parse().unwrap();
        // Plant a certificate with only an hour left.
        let now = unix_now().unwrap();
        let key = a.host_key_for(dst);
        let mut b = Builder::new_with_random_nonce(
            &mut rand::rng(),
            key.public_key(),
            now - 10,
            now + 3600,
        )
        .unwrap();
        b.cert_type(CertType::Host)
            .unwrap()
            .valid_principal("192.0.2.1")
            .unwrap();
        let old = b.sign(&a.host_ca).unwrap();
        certs.cache.lock().unwrap().insert(
            dst,
            HostIdentity {
                key,
                certificate: old.clone(),
            },
        );
        let new = certs.get(dst).unwrap().certificate;
        assert_ne!(new, old);
        assert!(new.valid_before() > now + 6 * 24 * 3600);
    }

    #[test]
    fn host_keys_are_derived_per_destination_and_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(tmp.path()).unwrap();
        let v4: IpAddr = "203.0.113.10".parse().unwrap();
        let v6: IpAddr = "2001:db8:1::10".parse().unwrap();
        let k4 = a.host_key_for(v4);
        assert_eq!(k4.algorithm(), Algorithm::Ed25519);
        assert_ne!(fingerprint(&k4), fingerprint(&a.host_key_for(v6)));
        let mapped: IpAddr = "::ffff:203.0.113.10".parse().unwrap();
        assert_eq!(fingerprint(&k4), fingerprint(&a.host_key_for(mapped)));

        // Another gateway (another secret) derives other keys.
        let other = tempfile::tempdir().unwrap();
        let b = Authorities::load_or_create(other.path()).unwrap();
        assert_ne!(fingerprint(&k4), fingerprint(&b.host_key_for(v4)));

        // The plain pin is what ssh-keygen reads as that key.
        let names = ["db1.example.com".to_string(), "203.0.113.10".to_string()];
        let line = a.plain_known_hosts_line(v4, &names);
        assert!(
            line.starts_with("203.0.113.10,db1.example.com ssh-ed25519 AAAA"),
            "{line}"
        );
        let kh = tmp.path().join("known_hosts");
        std::fs::write(&kh, format!("{line}\n")).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(&kh)
            .output()
            .expect("run ssh-keygen");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&fingerprint(&k4)), "{text}");
    }

    #[test]
    fn refuses_a_bad_host_key_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let path = dir.join("host_key_secret");
        write_new_file(&path, &[1u8; 31]).unwrap();
        let err = format!("{:#}", Authorities::load_or_create(tmp.path()).unwrap_err());
        assert!(err.contains("holds 31 bytes, not 32"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), [1u8; 31], "left alone");
        std::fs::remove_file(&path).unwrap();
        write_new_file(&path, &[1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = format!("{:#}", Authorities::load_or_create(tmp.path()).unwrap_err());
        assert!(err.contains("group or others"), "{err}");
    }
}
