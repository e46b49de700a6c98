//! The console's HTTPS listener: `[console] tls_cert`/`tls_key` (PEM), and with
//! `client_ca` a mandatory client certificate signed by that CA.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{central::connect::ca_roots, config::ConsoleConfig};

/// The server config, or `None` without `tls_cert`.
pub fn server_config(config: &ConsoleConfig) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("console.tls_cert: cannot read {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "console.tls_cert: {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("console.tls_key: cannot read {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS: no protocol version")?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let roots = ca_roots(ca).context("console.client_ca")?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("console.client_ca: cannot verify clients with it")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .context("console.tls_cert/tls_key: the key does not fit the certificate")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}
