//! The device table (WARP-style tunnel mapping): which tunnel address belongs to which
//! device and user. Stored as `devices.json` in the state dir.

use std::{collections::HashSet, net::IpAddr, path::Path};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::json_file;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTable {
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    pub addresses: Vec<IpAddr>,
    /// Ingress interface the device's tunnel ends on, when pinned to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub user: User,
    /// Posture checks the device currently passes.
    #[serde(default)]
    pub posture: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl DeviceTable {
    pub fn parse(text: &str) -> Result<Self> {
        let table: DeviceTable = json_file::parse(text)?;
        table.validate()?;
        Ok(table)
    }

    /// Loads `devices.json`; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<Self> {
        Ok(json_file::load_with(path, Self::parse)?.unwrap_or_default())
    }

    pub fn validate(&self) -> Result<()> {
        let mut ids = HashSet::new();
        let mut owners = std::collections::HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            if d.id.is_empty() {
                bail!("devices[{i}].id: must not be empty");
            }
            if !ids.insert(d.id.as_str()) {
                bail!("devices[{i}].id: {:?} is used by another device", d.id);
            }
            if d.addresses.is_empty() {
                bail!("devices[{i}].addresses: list at least one tunnel address");
            }
            for (j, a) in d.addresses.iter().enumerate() {
                if let Some(other) = owners.insert(*a, d.id.as_str()) {
                    bail!("devices[{i}].addresses[{j}]: {a} already belongs to device {other:?}");
                }
            }
            if !d.user.email.contains('@') || d.user.email.starts_with('@') {
                bail!(
                    "devices[{i}].user.email: {:?} is not an email address",
                    d.user.email
                );
            }
        }
        Ok(())
    }

    /// Inserts or replaces the device with `device.id`, then validates the whole table.
    pub fn upsert(&self, device: Device) -> Result<Self> {
        let mut next = self.clone();
        match next.devices.iter_mut().find(|d| d.id == device.id) {
            Some(slot) => *slot = device,
            None => next.devices.push(device),
        }
        next.validate()?;
        Ok(next)
    }

    /// The table without device `id`, or `None` when there is no such device.
    pub fn without(&self, id: &str) -> Option<Self> {
        let mut next = self.clone();
        let before = next.devices.len();
        next.devices.retain(|d| d.id != id);
        (next.devices.len() != before).then_some(next)
    }

    /// Every tunnel address: the datapath's ENROLLED set.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.devices
            .iter()
            .flat_map(|d| d.addresses.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"devices": [{"id": "laptop-jdoe", "addresses": ["100.96.0.7", "fd00:96::7"], "interface": "wg0",
        "user": {"email": "jdoe@example.com", "groups": ["developers"]}, "posture": ["disk-encryption"]}]}"#;

    #[test]
    fn parses_the_documented_shape() {
        let t = DeviceTable::parse(EXAMPLE).unwrap();
        assert_eq!(t.addresses().count(), 2);
        assert_eq!(t.devices[0].id, "laptop-jdoe");
        assert_eq!(t.devices[0].interface.as_deref(), Some("wg0"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = DeviceTable::parse(r#"{"devices": [{"id": "a", "addresses": ["100.96.0.300"], "user": {"email": "a@b"}}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("devices[0].addresses[0]:"), "{e}");
        let e = DeviceTable::parse(
            r#"{"devices": [{"id": "a", "addresses": ["100.96.0.1"], "user": {"email": "a@b"}},
                           {"id": "b", "addresses": ["100.96.0.1"], "user": {"email": "b@b"}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("devices[1].addresses[0]") && e.contains("\"a\""),
            "{e}"
        );
    }
}
