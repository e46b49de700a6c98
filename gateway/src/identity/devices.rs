//! The device table (WARP-style tunnel mapping): which tunnel address belongs to which
//! device and user. Stored as `devices.json` in the state dir.
//!
//! Validation happens in two steps. [`DeviceTable::validate`] checks what any table must
//! satisfy (ids, addresses, email syntax); [`DeviceTable::check_principals`] checks the
//! table against the daemon's `[ssh]` principal settings: no two users may share a
//! certificate principal, and no user may get a reserved one.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
};

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{config::SshConfig, identity::principal, util::json_file};

/// Longest device id.
const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTable {
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    /// Canonical: IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are read as IPv4.
    #[serde(deserialize_with = "canonical_addresses")]
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

    /// Checks what every table must satisfy; errors name the field (`devices[3].id: …`).
    pub fn validate(&self) -> Result<()> {
        let mut ids = HashSet::new();
        let mut owners = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            check_id(&d.id).map_err(|e| anyhow::anyhow!("devices[{i}].id: {e}"))?;
            if !ids.insert(d.id.as_str()) {
                bail!("devices[{i}].id: {:?} is used by another device", d.id);
            }
            if d.addresses.is_empty() {
                bail!("devices[{i}].addresses: list at least one tunnel address");
            }
            for (j, a) in d.addresses.iter().enumerate() {
                check_address(*a)
                    .map_err(|e| anyhow::anyhow!("devices[{i}].addresses[{j}]: {e}"))?;
                match owners.insert(*a, d.id.as_str()) {
                    Some(other) if other == d.id => {
                        bail!("devices[{i}].addresses[{j}]: {a} is listed twice")
                    }
                    Some(other) => {
                        bail!(
                            "devices[{i}].addresses[{j}]: {a} already belongs to device {other:?}"
                        )
                    }
                    None => {}
                }
            }
            principal::split_email(&d.user.email)
                .map_err(|e| anyhow::anyhow!("devices[{i}].user.email: {e}"))?;
        }
        Ok(())
    }

    /// Checks the table against `[ssh] principal` and `reserved_principals`: every user's
    /// certificate principal is unreserved, and two different users (emails, compared
    /// without ASCII case) never share one (also compared without ASCII case).
    pub fn check_principals(&self, ssh: &SshConfig) -> Result<()> {
        let mut holders: HashMap<String, (usize, &str)> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            let email = d.user.email.as_str();
            let field = format!("devices[{i}].user.email");
            let p = principal::derive(email, ssh.principal)
                .map_err(|e| anyhow::anyhow!("{field}: {e}"))?;
            if principal::is_reserved(&p, &ssh.reserved_principals) {
                bail!(
                    "{field}: {email:?} would get the certificate principal {p:?}, which is reserved \
                     ([ssh] reserved_principals): this user could log in as that account"
                );
            }
            match holders.get(&p.to_ascii_lowercase()) {
                Some((j, other)) if !other.eq_ignore_ascii_case(email) => bail!(
                    "{field}: {email:?} would get the certificate principal {p:?}, like {other:?} \
                     of devices[{j}]: both users would log in as the same accounts (set [ssh] \
                     principal = \"email\" to tell them apart)"
                ),
                Some(_) => {}
                None => {
                    holders.insert(p.to_ascii_lowercase(), (i, email));
                }
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

/// Device ids end up in certificate key ids (`sshgw:EMAIL:DEVICE:SESSION`), URLs and the
/// servers' logs: letters, digits and `. _ @ + -`, starting with a letter or digit.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        bail!("must not be empty");
    }
    if id.len() > MAX_ID_LEN {
        bail!("{id:?} is longer than {MAX_ID_LEN} characters");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-');
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) || !id.chars().all(allowed) {
        bail!(
            "{id:?} is not a device id: use letters, digits and . _ @ + -, starting with a letter or digit"
        );
    }
    Ok(())
}

/// A tunnel address must be one a device can send from.
fn check_address(a: IpAddr) -> Result<()> {
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    let what = if a.is_unspecified() {
        "unspecified"
    } else if a.is_loopback() {
        "a loopback address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if broadcast {
        "the broadcast address"
    } else {
        return Ok(());
    };
    bail!("{a} is {what}, not a device's tunnel address")
}

/// Reads an address list, turning IPv4-mapped IPv6 addresses into IPv4 (the datapath and
/// the listeners only ever see the IPv4 form).
fn canonical_addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    let list = Vec::<IpAddr>::deserialize(d)?;
    Ok(list.into_iter().map(|a| a.to_canonical()).collect())
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

    /// `devices.json` text with one device per `(id, address, email)`.
    fn table(devices: &[(&str, &str, &str)]) -> String {
        let list: Vec<String> = devices
            .iter()
            .map(|(id, addr, email)| {
                serde_json::json!({"id": id, "addresses": [addr], "user": {"email": email}})
                    .to_string()
            })
            .collect();
        format!("{{\"devices\": [{}]}}", list.join(","))
    }

    fn refused(text: &str) -> String {
        format!("{:#}", DeviceTable::parse(text).unwrap_err())
    }

    #[test]
    fn addresses_are_canonical_and_usable() {
        let t = DeviceTable::parse(&table(&[("a", "::ffff:100.96.0.7", "a@b")])).unwrap();
        assert_eq!(
            t.devices[0].addresses,
            ["100.96.0.7".parse::<IpAddr>().unwrap()]
        );
        assert!(
            serde_json::to_string(&t)
                .unwrap()
                .contains("\"100.96.0.7\"")
        );
        let e = refused(
            r#"{"devices": [{"id": "a", "addresses": ["100.96.0.7", "::ffff:100.96.0.7"], "user": {"email": "a@b"}}]}"#,
        );
        assert!(
            e.starts_with("devices[0].addresses[1]: 100.96.0.7 is listed twice"),
            "{e}"
        );
        let e = refused(&table(&[
            ("a", "100.96.0.7", "a@b"),
            ("b", "::ffff:100.96.0.7", "b@b"),
        ]));
        assert!(
            e.starts_with("devices[1].addresses[0]: 100.96.0.7 already belongs to device \"a\""),
            "{e}"
        );
        for (addr, what) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("127.0.0.2", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let e = refused(&table(&[("a", addr, "a@b")]));
            assert!(
                e.starts_with("devices[0].addresses[0]: ") && e.contains(what),
                "{addr}: {e}"
            );
        }
    }

    #[test]
    fn ids_and_emails_are_checked_before_any_certificate() {
        for id in ["", "a:b", "a b", "a\u{1b}b", "-a", ".", "a/b", "a\u{202e}b"] {
            let e = refused(&table(&[(id, "100.96.0.7", "a@b")]));
            assert!(e.starts_with("devices[0].id: "), "{id:?}: {e}");
            assert!(!e.contains('\u{1b}') && !e.contains('\u{202e}'), "{e:?}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert!(refused(&table(&[(&long, "100.96.0.7", "a@b")])).contains("longer than"));
        DeviceTable::parse(&table(&[("laptop-jdoe.2@corp+x_1", "100.96.0.7", "a@b")])).unwrap();
        for email in [
            "a@b@c",
            "jdoe@",
            "jdoe",
            "j doe@example.com",
            "j,doe@example.com",
        ] {
            let e = refused(&table(&[("a", "100.96.0.7", email)]));
            assert!(e.starts_with("devices[0].user.email: "), "{email:?}: {e}");
        }
    }

    fn ssh(principal: crate::config::PrincipalMode) -> SshConfig {
        SshConfig {
            principal,
            ..SshConfig::default()
        }
    }

    #[test]
    fn principals_are_unique_and_unreserved() {
        use crate::config::PrincipalMode::{Email, LocalPart};
        let two_domains = DeviceTable::parse(&table(&[
            ("a", "100.96.0.7", "jdoe@example.com"),
            ("b", "100.96.0.8", "JDoe@contractor.test"),
        ]))
        .unwrap();
        let e = two_domains
            .check_principals(&ssh(LocalPart))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("devices[1].user.email: \"JDoe@contractor.test\" would get the certificate principal \"JDoe\", like \"jdoe@example.com\" of devices[0]"),
            "{e}"
        );
        two_domains.check_principals(&ssh(Email)).unwrap();
        // The same user on two devices (address case aside) is one holder.
        DeviceTable::parse(&table(&[
            ("a", "100.96.0.7", "jdoe@example.com"),
            ("b", "100.96.0.8", "jdoe@EXAMPLE.com"),
        ]))
        .unwrap()
        .check_principals(&ssh(LocalPart))
        .unwrap();
        for email in ["root@contractor.test", "Admin@example.com", "ec2-user@x"] {
            let t = DeviceTable::parse(&table(&[("a", "100.96.0.7", email)])).unwrap();
            let e = t.check_principals(&ssh(LocalPart)).unwrap_err().to_string();
            assert!(
                e.starts_with("devices[0].user.email: ") && e.contains("reserved"),
                "{e}"
            );
            t.check_principals(&ssh(Email)).unwrap();
        }
        let custom = SshConfig {
            reserved_principals: vec!["jdoe@example.com".into()],
            ..ssh(Email)
        };
        assert!(
            two_domains
                .check_principals(&custom)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
    }
}
