//! The russh configurations of both legs, shared by every session that can use them.
//!
//! russh keeps its configuration (an `Arc`) for the life of a connection. Built per
//! connection, each relayed session held its own copy of the host key, the host
//! certificate, the algorithm lists and the rest: a few KiB per session for identical
//! values. Here there is one device-leg configuration per destination address, replaced
//! when its host certificate is re-minted, and one upstream configuration per kind of
//! host-key check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use russh::{client, server};

use crate::trust::ca::HostIdentity;

#[derive(Default)]
pub struct ConfigCache {
    device: Mutex<HashMap<IpAddr, Arc<server::Config>>>,
    /// Without and with host certificates in the key list.
    upstream: [OnceLock<Arc<client::Config>>; 2],
}

impl ConfigCache {
    /// The device-leg configuration for `dst`, built by `build` when there is none yet or
    /// when `identity`'s certificate is not the one the cached configuration serves.
    pub fn device(
        &self,
        dst: IpAddr,
        identity: HostIdentity,
        build: impl FnOnce(HostIdentity) -> server::Config,
    ) -> Arc<server::Config> {
        // As `HostCerts` does: `::ffff:a.b.c.d` and `a.b.c.d` are one destination.
        let dst = dst.to_canonical();
        let mut cache = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = cache.get(&dst)
            && config.certificates.first() == Some(&identity.certificate)
        {
            return config.clone();
        }
        // A destination's certificate was re-minted: configurations serving certificates
        // that expired are dropped with it (sessions using them keep their own `Arc`).
        let now = unix_now();
        cache.retain(|_, c| c.certificates.iter().all(|cert| cert.valid_before() > now));
        let config = Arc::new(build(identity));
        cache.insert(dst, config.clone());
        config
    }

    /// The upstream configuration, built once per value of `certificates`.
    pub fn upstream(
        &self,
        certificates: bool,
        build: impl FnOnce() -> client::Config,
    ) -> Arc<client::Config> {
        self.upstream[usize::from(certificates)]
            .get_or_init(|| Arc::new(build()))
            .clone()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::trust::ca::{Authorities, HostCerts};

    fn device_config(identity: HostIdentity) -> server::Config {
        server::Config {
            keys: vec![identity.key],
            certificates: vec![identity.certificate],
            ..Default::default()
        }
    }

    #[test]
    fn device_configs_are_shared_until_the_certificate_changes() {
        let dir = tempfile::tempdir().unwrap();
        let authorities = Arc::new(Authorities::load_or_create(dir.path()).unwrap());
        let dst: IpAddr = "203.0.113.10".parse().unwrap();
        let other: IpAddr = "203.0.113.11".parse().unwrap();
        let certs = HostCerts::new(authorities.clone(), BTreeMap::new());
        let cache = ConfigCache::default();

        let first = cache.device(dst, certs.get(dst).unwrap(), device_config);
        let again = cache.device(dst, certs.get(dst).unwrap(), device_config);
        assert!(
            Arc::ptr_eq(&first, &again),
            "same certificate, same configuration"
        );
        let elsewhere = cache.device(other, certs.get(other).unwrap(), device_config);
        assert!(!Arc::ptr_eq(&first, &elsewhere), "one per destination");

        // A re-minted certificate (another serial) gets a new configuration.
        let reminted = HostCerts::new(authorities, BTreeMap::new())
            .get(dst)
            .unwrap();
        assert_ne!(reminted.certificate, first.certificates[0]);
        let renewed = cache.device(dst, reminted.clone(), device_config);
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert_eq!(renewed.certificates[0], reminted.certificate);
    }

    #[test]
    fn upstream_configs_are_built_once_per_kind() {
        let cache = ConfigCache::default();
        let plain = cache.upstream(false, client::Config::default);
        let again = cache.upstream(false, || unreachable!("built already"));
        assert!(Arc::ptr_eq(&plain, &again));
        let certs = cache.upstream(true, client::Config::default);
        assert!(!Arc::ptr_eq(&plain, &certs));
    }
}
