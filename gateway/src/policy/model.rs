//! Audit-SSH policies, stored as `policies.json` in the state dir. This module holds the
//! schema and its validation; `policy::eval` decides connections with it, and the datapath
//! takes its AUDITED set from the enabled policies' destinations.
//!
//! Every error starts with the field path, e.g.
//! `policies[3].destinations[0]: "10.0.0.300/8" is not an IP network`.

use std::{collections::HashSet, path::Path, time::Duration};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    policy::network::Network,
    util::{duration, json_file, vocabulary::text_names},
};

/// Most policies a set may hold.
pub const MAX_POLICIES: usize = 1_000;
/// Most distinct destinations across all enabled policies: the datapath's AUDITED map size.
pub const MAX_DESTINATIONS: usize = gateway_common::MAX_AUDITED as usize;
/// Longest `ssh.max_duration` accepted.
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(365 * duration::DAY);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub id: String,
    pub name: String,
    /// Lower runs first; ties keep the order of the file.
    pub precedence: i64,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub action: Action,
    pub destinations: Vec<Network>,
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Who the policy applies to; all lists empty means anyone.
    #[serde(default)]
    pub identity: IdentityMatch,
    /// Posture checks the device must pass, all of them.
    #[serde(default)]
    pub posture: Vec<String>,
    #[serde(default)]
    pub ssh: SshSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    AuditSsh,
    Block,
}

impl Action {
    /// The decision as the session log, the API and the metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::AuditSsh => "audit_ssh",
            Action::Block => "block",
        }
    }

    pub fn all() -> [Action; 2] {
        [Action::AuditSsh, Action::Block]
    }
}

// The policy document keeps serde's own derive (its error texts are the operator's).
text_names!(Action, "decision");

/// Alternatives: the subject matches when its email is in `emails`, OR its email domain is
/// in `email_domains`, OR one of its groups is in `groups`. All three empty: anyone.
/// Emails and domains compare case-insensitively; groups compare exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityMatch {
    #[serde(default)]
    pub emails: Vec<String>,
    #[serde(default)]
    pub email_domains: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl IdentityMatch {
    /// True when no list is set, so the policy applies to everyone.
    pub fn is_anyone(&self) -> bool {
        self.emails.is_empty() && self.email_domains.is_empty() && self.groups.is_empty()
    }
}

/// What an audited session may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshSettings {
    /// Record the commands of the session in the audit log.
    pub command_logging: bool,
    /// Unix logins the user may use on the server; empty means any.
    pub usernames: Vec<String>,
    /// `None`: the `[ssh] port_forwarding` config default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_forwarding: Option<bool>,
    /// `None`: the `[ssh] agent_forwarding` config default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_forwarding: Option<bool>,
    /// Written as `"90s"`, `"30m"`, `"8h"`, `"1h30m"`, `"2d"`; `None`: no limit.
    #[serde(with = "duration_text", skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Duration>,
    /// SFTP and legacy scp: `allow`, `read_only` or `deny`.
    #[serde(skip_serializing_if = "is_default")]
    pub sftp: SftpRule,
    /// Bytes a channel may upload (SFTP writes, scp files); `None`: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upload_bytes: Option<u64>,
    /// Interactive shells (`ssh host`).
    #[serde(skip_serializing_if = "is_default")]
    pub shell: ProgramRule,
    /// Commands (`ssh host CMD`) and subsystems other than `sftp`; SFTP (the subsystem or
    /// an sftp-server exec) and plain legacy scp follow `sftp` instead.
    #[serde(skip_serializing_if = "is_default")]
    pub exec: ProgramRule,
    /// Programs that hand the session to a channel sshgw cannot record (mosh-server,
    /// etterminal): refused unless allowed here.
    #[serde(skip_serializing_if = "is_default")]
    pub unrecordable_programs: UnrecordableRule,
}

/// Whether a kind of program (shell, exec) may run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramRule {
    #[default]
    Allow,
    Deny,
}

/// Whether programs whose session sshgw cannot record may start; refused by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnrecordableRule {
    #[default]
    Deny,
    /// They run, and the session log says that their session went unrecorded.
    Allow,
}

/// File transfers a policy allows on SFTP and legacy scp channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftpRule {
    #[default]
    Allow,
    /// Downloads and listing work; uploads, removes, renames and other changes are denied.
    ReadOnly,
    /// The sftp subsystem and scp are refused.
    Deny,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
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

    pub fn validate(&self) -> Result<()> {
        if self.policies.len() > MAX_POLICIES {
            bail!(
                "policies: {} policies; at most {MAX_POLICIES} are supported",
                self.policies.len()
            );
        }
        let mut ids = HashSet::new();
        let mut audited = HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            if p.id.is_empty() {
                bail!("{at}.id: must not be empty");
            }
            if p.id.chars().any(char::is_control) {
                bail!("{at}.id: {:?} contains control characters", p.id);
            }
            if !ids.insert(p.id.as_str()) {
                bail!("{at}.id: {:?} is used by another policy", p.id);
            }
            if p.name.trim().is_empty() {
                bail!("{at}.name: must not be empty");
            }
            if p.name.chars().any(char::is_control) {
                bail!("{at}.name: {:?} contains control characters", p.name);
            }
            if p.destinations.is_empty() {
                bail!("{at}.destinations: list at least one IP or CIDR");
            }
            if p.enabled {
                for (j, d) in p.destinations.iter().enumerate() {
                    if audited.insert(d.0.trunc()) && audited.len() > MAX_DESTINATIONS {
                        bail!(
                            "{at}.destinations[{j}]: the enabled policies list more than \
                             {MAX_DESTINATIONS} distinct destinations, the size of the \
                             datapath's AUDITED map"
                        );
                    }
                }
            }
            if p.ports.is_empty() {
                bail!("{at}.ports: list at least one port (or leave it out for [22])");
            }
            let mut ports = HashSet::new();
            for (j, &port) in p.ports.iter().enumerate() {
                if port == 0 {
                    bail!("{at}.ports[{j}]: 0 is not a valid port");
                }
                if !ports.insert(port) {
                    bail!("{at}.ports[{j}]: {port} is listed twice");
                }
            }
            validate_identity(&at, &p.identity)?;
            validate_names(&format!("{at}.posture"), &p.posture, "posture check")?;
            for (j, login) in p.ssh.usernames.iter().enumerate() {
                if !is_unix_login(login) {
                    bail!(
                        "{at}.ssh.usernames[{j}]: {login:?} is not a valid Unix login name \
                         (lowercase letters, digits, '_', '.', '-', an optional final '$', \
                         starting with a letter or '_', at most 32 characters)"
                    );
                }
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

fn validate_identity(at: &str, identity: &IdentityMatch) -> Result<()> {
    for (j, email) in identity.emails.iter().enumerate() {
        let valid = matches!(email.split_once('@'),
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        if !valid {
            bail!("{at}.identity.emails[{j}]: {email:?} is not an email address (local@domain)");
        }
    }
    for (j, domain) in identity.email_domains.iter().enumerate() {
        if domain.is_empty() {
            bail!("{at}.identity.email_domains[{j}]: must not be empty");
        }
        if domain.contains('@') {
            bail!(
                "{at}.identity.email_domains[{j}]: {domain:?} must not contain '@' \
                 (write just the domain, e.g. \"example.com\")"
            );
        }
    }
    validate_names(&format!("{at}.identity.groups"), &identity.groups, "group")
}

fn validate_names(at: &str, names: &[String], what: &str) -> Result<()> {
    for (j, name) in names.iter().enumerate() {
        if name.is_empty() {
            bail!("{at}[{j}]: the {what} name must not be empty");
        }
    }
    Ok(())
}

/// `[a-z_][a-z0-9_.-]*[$]?`, at most 32 characters: the portable Unix login names.
fn is_unix_login(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut bytes = body.bytes();
    name.len() <= 32
        && matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
}

/// A policy's `ssh.max_duration`.
pub const MAX_DURATION: duration::Field = duration::Field {
    name: "max_duration",
    max: MAX_SESSION_DURATION,
    zero: "leave max_duration out for no limit",
};

/// Parses a `max_duration` ([`duration::parse`]); the error is the message alone, as the
/// field's path is added by whoever reports it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text, &MAX_DURATION).map_err(|e| e.message)
}

/// Serde for `Option<Duration>` as duration text; `null` or absent is `None`.
mod duration_text {
    use std::{fmt, time::Duration};

    use serde::{Deserializer, Serializer, de};

    use super::parse_duration;
    use crate::util::duration::Text;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.collect_str(&Text(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> de::Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"30m\", \"8h\" or \"1h30m\"")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_duration(v).map(Some).map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::duration::format as format_duration;

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

    const FULL: &str = r#"{"policies": [
      {"id": "block-contractors", "name": "Block contractors from production", "precedence": 5,
       "action": "block", "destinations": ["203.0.113.128/25"],
       "identity": {"groups": ["contractors"]}},
      {"id": "audit-prod", "name": "Audit production SSH", "precedence": 10, "enabled": true,
       "action": "audit_ssh", "destinations": ["203.0.113.0/24", "2001:db8:1::/64"], "ports": [22, 2222],
       "identity": {"emails": ["Ops@Example.com"], "email_domains": ["example.com"], "groups": ["sre"]},
       "posture": ["disk-encryption", "os-up-to-date"],
       "ssh": {"command_logging": true, "usernames": ["ubuntu", "deploy$"], "port_forwarding": false,
               "agent_forwarding": true, "max_duration": "1h30m"}}]}"#;

    #[test]
    fn parses_every_field_with_defaults() {
        let set = PolicySet::parse(FULL).unwrap();
        let block = &set.policies[0];
        assert!(block.enabled);
        assert_eq!(block.action, Action::Block);
        assert_eq!(block.ports, [22]);
        assert_eq!(block.identity.groups, ["contractors"]);
        assert!(block.identity.emails.is_empty() && block.identity.email_domains.is_empty());
        assert!(block.posture.is_empty());
        assert_eq!(block.ssh, SshSettings::default());
        assert!(!block.ssh.command_logging && block.ssh.usernames.is_empty());
        assert_eq!(block.ssh.port_forwarding, None);
        assert_eq!(block.ssh.max_duration, None);

        let audit = &set.policies[1];
        assert_eq!(audit.ports, [22, 2222]);
        assert_eq!(
            audit.identity.emails,
            ["Ops@Example.com"],
            "stored as given"
        );
        assert_eq!(audit.posture, ["disk-encryption", "os-up-to-date"]);
        assert!(audit.ssh.command_logging);
        assert_eq!(audit.ssh.usernames, ["ubuntu", "deploy$"]);
        assert_eq!(audit.ssh.port_forwarding, Some(false));
        assert_eq!(audit.ssh.agent_forwarding, Some(true));
        assert_eq!(audit.ssh.max_duration, Some(Duration::from_secs(5400)));
        // Programs: shells and commands allowed, unrecordable ones refused, by default.
        assert_eq!(block.ssh.shell, ProgramRule::Allow);
        assert_eq!(block.ssh.exec, ProgramRule::Allow);
        assert_eq!(block.ssh.unrecordable_programs, UnrecordableRule::Deny);
        let sftp_only = PolicySet::parse(&one(
            r#"{"ssh": {"shell": "deny", "exec": "deny", "sftp": "read_only",
                "unrecordable_programs": "allow"}}"#,
        ))
        .unwrap();
        let ssh = &sftp_only.policies[0].ssh;
        assert_eq!(
            (ssh.shell, ssh.exec),
            (ProgramRule::Deny, ProgramRule::Deny)
        );
        assert_eq!(ssh.unrecordable_programs, UnrecordableRule::Allow);
        let text = serde_json::to_string(&sftp_only).unwrap();
        assert_eq!(PolicySet::parse(&text).unwrap(), sftp_only);
    }

    #[test]
    fn serialize_round_trips() {
        let set = PolicySet::parse(FULL).unwrap();
        let text = serde_json::to_string_pretty(&set).unwrap();
        assert_eq!(PolicySet::parse(&text).unwrap(), set);
        assert!(text.contains(r#""max_duration": "1h30m""#), "{text}");
        // Unset options are left out rather than written as null.
        let block = serde_json::to_value(&set.policies[0]).unwrap();
        assert_eq!(
            block["ssh"],
            serde_json::json!({"command_logging": false, "usernames": []})
        );
        assert_eq!(block["ports"], serde_json::json!([22]));
        assert_eq!(block["enabled"], serde_json::json!(true));
        // null is accepted as "not set".
        let set = PolicySet::parse(
            r#"{"policies": [{"id": "p", "name": "n", "precedence": 1, "action": "block",
                "destinations": ["10.0.0.0/8"], "ssh": {"max_duration": null, "port_forwarding": null}}]}"#,
        )
        .unwrap();
        assert_eq!(set.policies[0].ssh, SshSettings::default());
    }

    /// A set of policies `p0`, `p1`, … each with the fields of one override object
    /// (JSON text) laid over a valid minimal policy.
    fn set_of(overrides: &[&str]) -> String {
        let policies: Vec<serde_json::Value> = overrides
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut p = serde_json::json!({"id": format!("p{i}"), "name": "n", "precedence": i,
                    "action": "audit_ssh", "destinations": ["10.0.0.0/8"]});
                let o: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(o).unwrap();
                for (k, v) in o {
                    p[k] = v;
                }
                p
            })
            .collect();
        serde_json::json!({ "policies": policies }).to_string()
    }

    fn one(overrides: &str) -> String {
        set_of(&[overrides])
    }

    fn error(text: &str) -> String {
        format!("{:#}", PolicySet::parse(text).unwrap_err())
    }

    #[test]
    fn every_validation_error_names_its_field() {
        let cases: &[(String, &str)] = &[
            (one(r#"{"id": ""}"#), "policies[0].id: must not be empty"),
            (
                one(r#"{"id": "a\tb"}"#),
                "policies[0].id: \"a\\tb\" contains control characters",
            ),
            (
                set_of(&["{}", "{}", r#"{"id": "p1"}"#]),
                "policies[2].id: \"p1\" is used by another policy",
            ),
            (
                one(r#"{"name": " "}"#),
                "policies[0].name: must not be empty",
            ),
            (
                one(r#"{"name": "a\nb"}"#),
                "policies[0].name: \"a\\nb\" contains control characters",
            ),
            (
                one(r#"{"destinations": []}"#),
                "policies[0].destinations: list at least one IP or CIDR",
            ),
            (
                set_of(&[
                    "{}",
                    r#"{"destinations": ["2001:db8::/32", "fe80::1%eth0"]}"#,
                ]),
                "policies[1].destinations[1]: \"fe80::1%eth0\" is not an IP network",
            ),
            (
                one(r#"{"ports": []}"#),
                "policies[0].ports: list at least one port",
            ),
            (
                one(r#"{"ports": [22, 0]}"#),
                "policies[0].ports[1]: 0 is not a valid port",
            ),
            (
                one(r#"{"ports": [22, 2222, 22]}"#),
                "policies[0].ports[2]: 22 is listed twice",
            ),
            (
                one(r#"{"ports": [70000]}"#),
                "policies[0].ports[0]: invalid value",
            ),
            (
                one(r#"{"identity": {"emails": ["a@b.c", "jdoe"]}}"#),
                "policies[0].identity.emails[1]: \"jdoe\" is not an email address",
            ),
            (
                one(r#"{"identity": {"emails": ["@example.com"]}}"#),
                "policies[0].identity.emails[0]: \"@example.com\" is not an email address",
            ),
            (
                one(r#"{"identity": {"emails": ["a@b@example.com"]}}"#),
                "policies[0].identity.emails[0]: \"a@b@example.com\" is not an email address",
            ),
            (
                one(r#"{"identity": {"email_domains": ["example.com", "@example.org"]}}"#),
                "policies[0].identity.email_domains[1]: \"@example.org\" must not contain '@'",
            ),
            (
                one(r#"{"identity": {"email_domains": [""]}}"#),
                "policies[0].identity.email_domains[0]: must not be empty",
            ),
            (
                one(r#"{"identity": {"groups": ["sre", ""]}}"#),
                "policies[0].identity.groups[1]: the group name must not be empty",
            ),
            (
                one(r#"{"posture": [""]}"#),
                "policies[0].posture[0]: the posture check name must not be empty",
            ),
            (
                one(r#"{"ssh": {"usernames": ["ubuntu", "Root"]}}"#),
                "policies[0].ssh.usernames[1]: \"Root\" is not a valid Unix login name",
            ),
            (
                one(r#"{"ssh": {"max_duration": "8x"}}"#),
                "policies[0].ssh.max_duration: \"8x\": unknown unit 'x'",
            ),
            (
                one(r#"{"ssh": {"max_duration": "0m"}}"#),
                "policies[0].ssh.max_duration: \"0m\" is zero",
            ),
            (
                one(r#"{"ssh": {"max_duration": 3600}}"#),
                "policies[0].ssh.max_duration: invalid type: integer `3600`, expected a duration",
            ),
            (
                one(r#"{"ssh": {"command_logging": "yes"}}"#),
                "policies[0].ssh.command_logging: invalid type",
            ),
            (
                one(r#"{"ssh": {"port_forwarding": 1}}"#),
                "policies[0].ssh.port_forwarding: invalid type",
            ),
            (
                one(r#"{"ssh": {"exec": "no"}}"#),
                "policies[0].ssh.exec: unknown variant `no`, expected `allow` or `deny`",
            ),
            (
                one(r#"{"ssh": {"shell": "Deny"}}"#),
                "policies[0].ssh.shell: unknown variant `Deny`, expected `allow` or `deny`",
            ),
            (
                one(r#"{"ssh": {"unrecordable_programs": "record"}}"#),
                "policies[0].ssh.unrecordable_programs: unknown variant `record`, expected \
                 `deny` or `allow`",
            ),
            (
                one(r#"{"ssh": {"sftp": "readonly"}}"#),
                "policies[0].ssh.sftp: unknown variant `readonly`, expected one of `allow`, \
                 `read_only`, `deny`",
            ),
            (
                one(r#"{"identity": {"emails": "a@b.c"}}"#),
                "policies[0].identity.emails: invalid type",
            ),
            (
                one(r#"{"enabled": "no"}"#),
                "policies[0].enabled: invalid type",
            ),
            (
                one(r#"{"precedence": 1.5}"#),
                "policies[0].precedence: invalid type",
            ),
            (
                r#"{"policies": [{"id": "p", "name": "n", "precedence": 1, "action": "block"}]}"#
                    .into(),
                "policies[0]: missing field `destinations`",
            ),
        ];
        for (text, want) in cases {
            let e = error(text);
            assert!(
                e.starts_with(want),
                "want {want:?}\n got {e:?}\n for {text}"
            );
        }
    }

    #[test]
    fn the_issue_example_error() {
        let e = error(&set_of(&[
            "{}",
            "{}",
            "{}",
            r#"{"destinations": ["10.0.0.300/8"]}"#,
        ]));
        // serde_json appends the position: "… at line 1 column 333".
        assert!(
            e.starts_with("policies[3].destinations[0]: \"10.0.0.300/8\" is not an IP network"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        for (overrides, want) in [
            (
                r#"{"ssh": {"usernmes": ["ubuntu"]}}"#,
                "policies[0].ssh.usernmes: unknown field `usernmes`",
            ),
            (
                r#"{"identity": {"domains": ["example.com"]}}"#,
                "policies[0].identity.domains: unknown field `domains`",
            ),
            (
                r#"{"port": [22]}"#,
                "policies[0].port: unknown field `port`",
            ),
        ] {
            let e = error(&one(overrides));
            assert!(e.starts_with(want), "want {want:?}\n got {e:?}");
        }
        let e = error(r#"{"policies": [], "version": 2}"#);
        assert!(e.starts_with("version: unknown field `version`"), "{e}");
    }

    #[test]
    fn docs_examples_are_valid() {
        let doc = include_str!("../../../docs/policy.md");
        let blocks: Vec<&str> = doc
            .split("```json\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .collect();
        assert!(blocks.len() >= 5, "{}", blocks.len());
        for block in blocks {
            PolicySet::parse(block).unwrap_or_else(|e| panic!("{e:#}\n{block}"));
        }
        for (text, shown) in [
            (
                one(r#"{"destinations": ["10.0.0.300/8"]}"#),
                "\"10.0.0.300/8\" is not an IP network",
            ),
            (
                one(r#"{"ssh": {"usernmes": []}}"#),
                "unknown field `usernmes`, expected one of `command_logging`, `usernames`",
            ),
            (
                one(r#"{"ssh": {"max_duration": "5w"}}"#),
                "\"5w\": unknown unit 'w' (use d, h, m or s); ",
            ),
        ] {
            let e = error(&text);
            assert!(e.contains(shown), "{e}");
            assert!(doc.contains(shown), "docs/policy.md should quote {shown:?}");
        }
    }

    #[test]
    fn unix_login_names() {
        for ok in ["ubuntu", "_apt", "deploy$", "a.b-c_9", "x", &"a".repeat(32)] {
            assert!(is_unix_login(ok), "{ok}");
        }
        for bad in [
            "",
            "$",
            "Root",
            "9lives",
            "-x",
            ".x",
            "a$b",
            "a b",
            "jdoe@example.com",
            "é",
            &"a".repeat(33),
        ] {
            assert!(!is_unix_login(bad), "{bad}");
        }
    }

    #[test]
    fn limits() {
        let policy = |i: usize, enabled: bool, dsts: &[String]| {
            serde_json::json!({"id": format!("p{i}"), "name": "n", "precedence": i,
                "enabled": enabled, "action": "audit_ssh", "destinations": dsts})
        };
        let set = |policies: Vec<serde_json::Value>| {
            serde_json::json!({ "policies": policies }).to_string()
        };
        let host = |n: usize| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);

        let many: Vec<_> = (0..MAX_POLICIES)
            .map(|i| policy(i, true, &[host(i)]))
            .collect();
        PolicySet::parse(&set(many.clone())).unwrap();
        let mut too_many = many;
        too_many.push(policy(MAX_POLICIES, true, &[host(MAX_POLICIES)]));
        assert_eq!(
            error(&set(too_many)),
            "policies: 1001 policies; at most 1000 are supported"
        );

        // 16,384 distinct destinations fit; duplicates and disabled policies do not count.
        let half: Vec<String> = (0..MAX_DESTINATIONS / 2).map(host).collect();
        let rest: Vec<String> = (MAX_DESTINATIONS / 2..MAX_DESTINATIONS).map(host).collect();
        let fits = vec![
            policy(0, true, &half),
            policy(1, true, &rest),
            policy(2, true, &half[..10]),
            policy(3, false, &[host(MAX_DESTINATIONS)]),
        ];
        PolicySet::parse(&set(fits)).unwrap();
        let over = vec![
            policy(0, true, &half),
            policy(1, true, &rest),
            policy(2, true, &[host(0), host(MAX_DESTINATIONS)]),
        ];
        let e = error(&set(over));
        assert!(
            e.starts_with(
                "policies[2].destinations[1]: the enabled policies list more than 16384 distinct destinations"
            ),
            "{e}"
        );
    }

    #[test]
    fn durations_parse_and_print() {
        for (text, secs, canonical) in [
            ("90s", 90, "1m30s"),
            ("30m", 1800, "30m"),
            ("8h", 8 * 3600, "8h"),
            ("1h30m", 5400, "1h30m"),
            ("2d", 2 * 86400, "2d"),
            ("1d2h3m4s", 86400 + 7200 + 180 + 4, "1d2h3m4s"),
            ("0h5m", 300, "5m"),
            ("120m", 7200, "2h"),
            ("365d", 365 * 86400, "365d"),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_secs(secs), "{text}");
            assert_eq!(format_duration(d), canonical, "{text}");
            assert_eq!(parse_duration(canonical).unwrap(), d, "{canonical}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, want) in [
            ("", "must not be empty"),
            ("0s", "\"0s\" is zero"),
            ("0h0m", "\"0h0m\" is zero"),
            ("90", "\"90\": \"90\" has no unit"),
            ("1h30", "\"1h30\": \"30\" has no unit"),
            ("h", "\"h\": expected a number before 'h'"),
            ("5w", "\"5w\": unknown unit 'w'"),
            ("8H", "\"8H\": unknown unit 'H'"),
            ("1.5h", "\"1.5h\": unknown unit '.'"),
            (" 8h", "\" 8h\": expected a number before ' '"),
            ("-5m", "\"-5m\": expected a number before '-'"),
            ("30m1h", "\"30m1h\": units must go from largest to smallest"),
            ("1h1h", "\"1h1h\": units must go from largest to smallest"),
            ("366d", "\"366d\" is longer than the maximum of 365d"),
            (
                "99999999999999999999s",
                "\"99999999999999999999s\" is longer than the maximum",
            ),
            (
                "18446744073709551615d",
                "\"18446744073709551615d\" is longer than the maximum",
            ),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: want {want:?}, got {e:?}");
        }
    }
}
