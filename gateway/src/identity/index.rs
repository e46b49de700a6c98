//! Who is connecting: the device and user behind a tunnel source address.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{
    config::PrincipalMode,
    identity::devices::{Device, DeviceTable},
    identity::principal,
};

/// The identity of an intercepted connection, taken from the device table.
#[derive(Debug, Clone)]
pub struct Identity {
    pub device_id: String,
    pub email: String,
    /// The certificate principal, per `[ssh] principal`: the email's local part
    /// (`jdoe@example.com` → `jdoe`) or the whole email.
    pub principal: String,
    pub groups: Vec<String>,
    /// Posture checks the device currently passes.
    pub posture: Vec<String>,
    /// The interface the device's tunnel must arrive on, when pinned to one.
    pub interface: Option<String>,
}

/// Address → device lookup in constant time, rebuilt whenever the table changes.
#[derive(Debug, Default)]
pub struct IdentityIndex {
    by_address: HashMap<IpAddr, Arc<Identity>>,
}

impl IdentityIndex {
    pub fn new(table: &DeviceTable, mode: PrincipalMode) -> Self {
        let mut by_address = HashMap::new();
        for device in &table.devices {
            let identity = Arc::new(identity_of(device, mode));
            for addr in &device.addresses {
                by_address.insert(*addr, identity.clone());
            }
        }
        IdentityIndex { by_address }
    }

    pub fn resolve(&self, source: IpAddr) -> Option<Arc<Identity>> {
        self.by_address.get(&source).cloned()
    }
}

fn identity_of(device: &Device, mode: PrincipalMode) -> Identity {
    let email = device.user.email.clone();
    // The device table only holds valid emails; an empty principal is refused at mint time.
    let principal = principal::derive(&email, mode).unwrap_or_default();
    Identity {
        device_id: device.id.clone(),
        email,
        principal,
        groups: device.user.groups.clone(),
        posture: device.posture.clone(),
        interface: device.interface.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_address_of_a_device() {
        let table = DeviceTable::parse(
            r#"{"devices": [{"id": "laptop-jdoe", "addresses": ["100.96.0.7", "fd00:96::7"],
                "user": {"email": "jdoe@example.com", "groups": ["developers"]}}]}"#,
        )
        .unwrap();
        let index = IdentityIndex::new(&table, PrincipalMode::LocalPart);
        for addr in ["100.96.0.7", "fd00:96::7"] {
            let id = index.resolve(addr.parse().unwrap()).unwrap();
            assert_eq!(id.device_id, "laptop-jdoe");
            assert_eq!(id.principal, "jdoe");
        }
        assert!(index.resolve("100.96.0.8".parse().unwrap()).is_none());
        let index = IdentityIndex::new(&table, PrincipalMode::Email);
        let id = index.resolve("fd00:96::7".parse().unwrap()).unwrap();
        assert_eq!(id.principal, "jdoe@example.com");
    }
}
