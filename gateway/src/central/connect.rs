//! Connecting to the central PostgreSQL: the `[central]` URL, its TLS mode and CA, and the
//! password file.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and never checks
//! a certificate itself. sshgw takes `sslmode` and `sslrootcert` out of the URL first:
//! `verify-full` (the default) and `require` both connect over TLS with rustls, which
//! verifies the chain against `sslrootcert` (else the system's roots) and the host name;
//! `disable` connects in plaintext. `prefer`, `allow` and `verify-ca` are refused: the
//! first two fall back to plaintext when TLS fails, and the last does not check the name.

use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, Config as PgConfig, NoTls, config::SslMode};
use zeroize::Zeroizing;

use crate::config::CentralConfig;

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    Disabled,
    /// Verified: the chain against the CA file (or the system's roots) and the host name.
    Verified {
        ca_file: Option<PathBuf>,
    },
}

/// A parsed `[central] postgres` URL: tokio-postgres's config and the TLS sshgw adds.
#[derive(Debug, Clone)]
pub struct Target {
    pub config: PgConfig,
    pub tls: Tls,
}

impl Target {
    /// Parses `url` and applies `password_file`.
    pub fn new(url: &str, password_file: Option<&Path>) -> Result<Self> {
        let (rest, mut tls, explicit) = split_tls(url)?;
        let mut config: PgConfig = rest
            .parse()
            .map_err(|e| anyhow::anyhow!("central.postgres: not a PostgreSQL URL: {e}"))?;
        let local = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        if local {
            // A Unix socket is the local host: no TLS there, and none by default.
            if explicit && tls != Tls::Disabled {
                bail!(
                    "central.postgres: TLS over a Unix socket is not possible; use sslmode=disable"
                );
            }
            tls = Tls::Disabled;
        }
        if config.get_user().is_none() {
            bail!("central.postgres: the URL names no user (postgres://ROLE@HOST/DB)");
        }
        if let Some(path) = password_file {
            if config.get_password().is_some() {
                bail!("central: the URL has a password and password_file is set; keep one");
            }
            config.password(read_password(path)?.as_bytes());
        }
        config.ssl_mode(match tls {
            Tls::Disabled => SslMode::Disable,
            Tls::Verified { .. } => SslMode::Require,
        });
        config.application_name("sshgw");
        config.connect_timeout(std::time::Duration::from_secs(10));
        // A dead path shows within a minute, not after the kernel's 15 minutes of retries.
        config.keepalives_idle(std::time::Duration::from_secs(30));
        config.tcp_user_timeout(std::time::Duration::from_secs(60));
        Ok(Target { config, tls })
    }

    pub fn from_config(central: &CentralConfig) -> Result<Self> {
        Self::new(&central.postgres, central.password_file.as_deref())
    }

    /// The role the URL logs in as.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// Connects; the connection's task runs on the current runtime until the client drops.
    pub async fn connect(&self) -> Result<Client> {
        let client = match &self.tls {
            Tls::Disabled => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(describe)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "central: connection ended");
                    }
                });
                client
            }
            Tls::Verified { ca_file } => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(
                    ca_file.as_deref(),
                )?);
                let (client, conn) = self.config.connect(tls).await.map_err(describe)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "central: connection ended");
                    }
                });
                client
            }
        };
        Ok(client)
    }
}

/// A PostgreSQL error as one line: the server's message and code when it sent one.
pub fn describe(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow::anyhow!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            anyhow::anyhow!("PostgreSQL: {text}")
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of the URL's query; also says whether `sslmode`
/// was given.
fn split_tls(url: &str) -> Result<(String, Tls, bool)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_owned()),
            Some(("sslrootcert", v)) => root = Some(percent_decode(v)?),
            _ => kept.push(pair),
        }
    }
    if mode.as_deref() == Some("disable") && root.is_some() {
        bail!("central.postgres: sslrootcert is set but sslmode=disable");
    }
    let tls = match mode.as_deref().unwrap_or("verify-full") {
        "disable" => Tls::Disabled,
        "require" | "verify-full" => Tls::Verified {
            ca_file: root.map(PathBuf::from),
        },
        other => bail!(
            "central.postgres: sslmode={other} is not supported; use verify-full (the default), require (verified the same way) or disable"
        ),
    };
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls, mode.is_some()))
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .with_context(|| format!("central.postgres: bad percent-encoding in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("central.postgres: sslrootcert is not UTF-8")
}

/// The password: the file's first line (mode 0600, no symlink).
fn read_password(path: &Path) -> Result<Zeroizing<String>> {
    let Some(mut file) = crate::util::fs::open_private(path, "central.password_file")? else {
        bail!("central.password_file: {} does not exist", path.display());
    };
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read central.password_file {}", path.display()))?;
    let line = Zeroizing::new(text.lines().next().unwrap_or_default().to_owned());
    if line.is_empty() {
        bail!("central.password_file: {} is empty", path.display());
    }
    Ok(line)
}

/// The certificates of a PEM CA file, as rustls roots (at least one).
pub fn ca_roots(path: &Path) -> Result<rustls::RootCertStore> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read CA file {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("CA file {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("CA file {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("CA file {} holds no certificate", path.display());
    }
    Ok(roots)
}

/// A rustls client config trusting `ca_file` (PEM), or the system's roots without one.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let roots = match ca_file {
        Some(path) => ca_roots(path)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!("no CA file is set and the system has no root certificates");
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: no protocol version")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_are_taken_out_of_the_url() {
        let (rest, tls, _) = split_tls("postgres://r@h:5432/db?sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), tls),
            ("postgres://r@h:5432/db", Tls::Disabled)
        );
        let (rest, tls, explicit) =
            split_tls("postgres://r@h/db?connect_timeout=3&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(rest, "postgres://r@h/db?connect_timeout=3");
        assert!(!explicit);
        assert_eq!(
            tls,
            Tls::Verified {
                ca_file: Some("/etc/ca.pem".into())
            }
        );
        for bad in ["prefer", "allow", "verify-ca", "bogus"] {
            let e = split_tls(&format!("postgres://r@h/db?sslmode={bad}")).unwrap_err();
            assert!(e.to_string().contains(&format!("sslmode={bad}")), "{e}");
        }
    }

    #[test]
    fn a_unix_socket_connects_without_tls() {
        let url = "postgresql:///sshgw?host=%2Frun%2Fpg&port=5432&user=r";
        assert_eq!(Target::new(url, None).unwrap().tls, Tls::Disabled);
        let e = Target::new(&format!("{url}&sslmode=verify-full"), None).unwrap_err();
        assert!(e.to_string().contains("Unix socket"), "{e}");
    }

    #[test]
    fn the_password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Target::new("postgres://r@h/db?sslmode=disable", Some(&path)).unwrap_err();
        assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Target::new("postgres://r@h/db?sslmode=disable", Some(&path)).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        let e = Target::new("postgres://r:pw@h/db?sslmode=disable", Some(&path)).unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
    }
}
