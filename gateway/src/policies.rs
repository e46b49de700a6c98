//! Audit-SSH policies, stored as `policies.json` in the state dir. This module holds the
//! schema; the datapath takes its AUDITED set from the enabled policies' destinations.

use std::{collections::HashSet, path::Path};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{json_file, network::Network};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub precedence: i64,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub action: Action,
    pub destinations: Vec<Network>,
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    AuditSsh,
    Block,
}

fn enabled_by_default() -> bool {
    true
}
fn default_ports() -> Vec<u16> {
    vec![22]
}

impl PolicySet {
    pub fn parse(text: &str) -> Result<Self> {
        let set: PolicySet = json_file::parse(text)?;
        set.validate()?;
        Ok(set)
    }

    /// Loads `policies.json`; a missing file is an empty set (everything blocked).
    pub fn load(path: &Path) -> Result<Self> {
        Ok(json_file::load_with(path, Self::parse)?.unwrap_or_default())
    }

    fn validate(&self) -> Result<()> {
        let mut ids = HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            if p.id.is_empty() {
                bail!("policies[{i}].id: must not be empty");
            }
            if !ids.insert(p.id.as_str()) {
                bail!("policies[{i}].id: {:?} is used by another policy", p.id);
            }
            if p.destinations.is_empty() {
                bail!("policies[{i}].destinations: list at least one IP or CIDR");
            }
            if let Some(j) = p.ports.iter().position(|&port| port == 0) {
                bail!("policies[{i}].ports[{j}]: 0 is not a valid port");
            }
        }
        Ok(())
    }

    /// Destinations of every enabled policy: the datapath's AUDITED set.
    pub fn audited_networks(&self) -> impl Iterator<Item = Network> + '_ {
        self.policies
            .iter()
            .filter(|p| p.enabled)
            .flat_map(|p| p.destinations.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audited_set_is_enabled_destinations() {
        let set = PolicySet::parse(
            r#"{"policies": [
              {"id": "audit-prod", "name": "Audit production SSH", "precedence": 10, "enabled": true,
               "action": "audit_ssh", "destinations": ["203.0.113.0/24", "2001:db8:1::/64"], "ports": [22]},
              {"id": "off", "name": "Disabled", "precedence": 20, "enabled": false,
               "action": "block", "destinations": ["198.51.100.0/24"]}]}"#,
        )
        .unwrap();
        let nets: Vec<String> = set.audited_networks().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["203.0.113.0/24", "2001:db8:1::/64"]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = PolicySet::parse(
            r#"{"policies": [{"id": "p", "name": "n", "precedence": 1, "action": "audit_ssh",
                "destinations": ["10.0.0.300/8"]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("policies[0].destinations[0]: \"10.0.0.300/8\" is not an IP network"),
            "{e}"
        );
        let e = PolicySet::parse(
            r#"{"policies": [{"id": "p", "name": "n", "precedence": 1, "action": "allow", "destinations": ["10.0.0.0/8"]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("policies[0].action:"), "{e}");
    }
}
