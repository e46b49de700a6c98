//! Deciding a connection with the Audit-SSH policies.
//!
//! Enabled policies run in precedence order (ties: the order of the file), and the first
//! one whose destination, port, identity and posture all match decides: `audit_ssh`
//! audits the session, `block` blocks it. No match blocks it too.
//!
//! Cost: [`PolicyEngine::new`] is linear in the size of the set. The destinations are
//! indexed by prefix length (a hash map from masked network address to the policies that
//! list it), so [`PolicyEngine::evaluate`] costs one hash lookup per distinct prefix
//! length in use (at most 33 for IPv4, 129 for IPv6), plus, for each of the k policies
//! whose destinations contain the address, a port scan, a few hash lookups for the
//! identity (one per subject group) and a scan of its required posture checks. It does
//! not touch the device table, and scanning all 1,000 policies' 16,384 destinations is
//! never needed: only the k candidates are looked at.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;

use crate::policy::model::{Action, Policy, PolicySet, ProgramRule, SftpRule, UnrecordableRule};

/// Who is connecting: from the device table entry of the connection's source address.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub email: &'a str,
    pub groups: &'a [String],
    /// Posture checks the device currently passes.
    pub posture: &'a [String],
}

/// The outcome of [`PolicyEngine::evaluate`].
#[derive(Debug, Clone)]
pub enum Decision {
    /// Relay and audit the session under this policy.
    Audit { policy: Arc<Policy> },
    /// Refuse the connection: a `block` policy matched first, or (`None`) nothing matched.
    Block { policy: Option<Arc<Policy>> },
}

impl Decision {
    /// The id of the deciding policy; `None` when no policy matched.
    pub fn policy_id(&self) -> Option<&str> {
        match self {
            Decision::Audit { policy }
            | Decision::Block {
                policy: Some(policy),
            } => Some(&policy.id),
            Decision::Block { policy: None } => None,
        }
    }

    /// One line for the user, e.g. `sshgw: blocked by policy "Contractors" (block-contractors)`
    /// or `sshgw: no policy allows this connection`.
    pub fn message(&self) -> String {
        match self {
            Decision::Audit { policy } => format!(
                "sshgw: audited by policy {} ({})",
                quoted(&policy.name),
                one_line(&policy.id)
            ),
            Decision::Block {
                policy: Some(policy),
            } => format!(
                "sshgw: blocked by policy {} ({})",
                quoted(&policy.name),
                one_line(&policy.id)
            ),
            Decision::Block { policy: None } => "sshgw: no policy allows this connection".into(),
        }
    }
}

/// A program request (shell, exec, subsystem) as the policy judges it; the relay tells
/// which it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program<'a> {
    Shell,
    /// The `sftp` subsystem, or an exec of an sftp-server binary.
    Sftp,
    /// Plain legacy scp.
    Scp {
        upload: bool,
    },
    /// A program that hands the session over to a channel sshgw cannot record: its name
    /// (`mosh-server`) and what it belongs to (`mosh`).
    Unrecordable {
        program: &'a str,
        origin: &'a str,
    },
    /// Any other exec.
    Exec,
    /// A subsystem other than `sftp`.
    Subsystem(&'a str),
}

/// A program the policy lets run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Run,
    /// It runs, and hands the session over to a channel sshgw cannot record: the session
    /// log must say so, in these words.
    RunUnrecorded(String),
}

/// Decides a program request: `ssh.sftp` governs SFTP and plain legacy scp, `ssh.shell`
/// a shell, `ssh.exec` every other exec and subsystem, and `ssh.unrecordable_programs`
/// (before `ssh.exec`) the programs whose session sshgw cannot record. `Err` is the
/// message the user gets.
pub fn judge_program(policy: &Policy, program: Program) -> Result<Verdict, String> {
    let ssh = &policy.ssh;
    let denied = |what: &str, setting: &str| {
        format!(
            "sshgw: {what} is denied by policy {} ({}){setting}",
            quoted(&policy.name),
            one_line(&policy.id)
        )
    };
    let exec_denied = ": ssh.exec = \"deny\"";
    match program {
        Program::Sftp if ssh.sftp == SftpRule::Deny => Err(denied("sftp", "")),
        Program::Scp { .. } if ssh.sftp == SftpRule::Deny => Err(denied("scp", "")),
        Program::Scp { upload: true } if ssh.sftp == SftpRule::ReadOnly => {
            Err(denied("uploading with scp", ""))
        }
        Program::Shell if ssh.shell == ProgramRule::Deny => {
            Err(denied("a shell", ": ssh.shell = \"deny\""))
        }
        Program::Unrecordable { program, origin } => {
            let why =
                format!("sshgw cannot record the {origin} session it starts (it runs outside SSH)");
            if ssh.unrecordable_programs == UnrecordableRule::Deny {
                return Err(format!(
                    "sshgw: {program} is refused by policy {} ({}): {why}; \
                     ssh.unrecordable_programs = \"deny\"",
                    quoted(&policy.name),
                    one_line(&policy.id)
                ));
            }
            if ssh.exec == ProgramRule::Deny {
                return Err(denied(program, exec_denied));
            }
            Ok(Verdict::RunUnrecorded(format!(
                "{why}; allowed by policy {} ({}): ssh.unrecordable_programs = \"allow\"",
                quoted(&policy.name),
                one_line(&policy.id)
            )))
        }
        Program::Exec if ssh.exec == ProgramRule::Deny => Err(denied("exec", exec_denied)),
        Program::Subsystem(name) if ssh.exec == ProgramRule::Deny => {
            Err(denied(&format!("subsystem {}", quoted(name)), exec_denied))
        }
        _ => Ok(Verdict::Run),
    }
}

/// `"name"`, with control characters escaped so the message stays on one line (validation
/// already refuses them; this keeps the message safe for sets built in code).
fn quoted(text: &str) -> String {
    format!("\"{}\"", one_line(text))
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The enabled policies of a set, compiled for evaluation. Cheap to share behind an `Arc`
/// and rebuilt whenever the set changes.
#[derive(Debug, Default)]
pub struct PolicyEngine {
    /// Enabled policies in evaluation order; indices into this are "ranks".
    rules: Vec<Rule>,
    destinations: DestinationIndex,
}

#[derive(Debug)]
struct Rule {
    policy: Arc<Policy>,
    ports: Vec<u16>,
    /// No identity list set: the rule applies to everyone.
    anyone: bool,
    /// Lowercase.
    emails: HashSet<String>,
    /// Lowercase.
    email_domains: HashSet<String>,
    groups: HashSet<String>,
    posture: Vec<String>,
}

impl Rule {
    fn new(policy: &Policy) -> Self {
        let lower = |list: &[String]| list.iter().map(|s| s.to_lowercase()).collect();
        Rule {
            policy: Arc::new(policy.clone()),
            ports: policy.ports.clone(),
            anyone: policy.identity.is_anyone(),
            emails: lower(&policy.identity.emails),
            email_domains: lower(&policy.identity.email_domains),
            groups: policy.identity.groups.iter().cloned().collect(),
            posture: policy.posture.clone(),
        }
    }

    /// Port, identity and posture; the destination is matched by the index.
    /// `email` and `domain` are lowercase.
    fn matches(&self, port: u16, email: &str, domain: Option<&str>, subject: &Subject) -> bool {
        self.ports.contains(&port)
            && (self.anyone
                || self.emails.contains(email)
                || domain.is_some_and(|d| self.email_domains.contains(d))
                || subject.groups.iter().any(|g| self.groups.contains(g)))
            && self
                .posture
                .iter()
                .all(|check| subject.posture.contains(check))
    }
}

impl PolicyEngine {
    pub fn new(set: &PolicySet) -> Self {
        let mut enabled: Vec<&Policy> = set.policies.iter().filter(|p| p.enabled).collect();
        // Stable: equal precedences keep the order of the file.
        enabled.sort_by_key(|p| p.precedence);
        let mut destinations = DestinationIndex::default();
        let rules = enabled
            .into_iter()
            .enumerate()
            .map(|(rank, policy)| {
                for network in &policy.destinations {
                    destinations.insert(network.0, rank);
                }
                Rule::new(policy)
            })
            .collect();
        PolicyEngine {
            rules,
            destinations,
        }
    }

    /// Decides a connection to `dst` by `subject`: the first enabled policy, in precedence
    /// order, whose destinations contain the address, whose ports contain the port, whose
    /// identity lists match (or are all empty) and whose posture checks the subject all
    /// passes. No match blocks.
    pub fn evaluate(&self, dst: SocketAddr, subject: &Subject) -> Decision {
        let email = subject.email.to_lowercase();
        let domain = email.rsplit_once('@').map(|(_, domain)| domain);
        let decided = self
            .destinations
            .candidates(dst.ip())
            .into_iter()
            .map(|rank| &self.rules[rank])
            .find(|rule| rule.matches(dst.port(), &email, domain, subject));
        match decided {
            None => Decision::Block { policy: None },
            Some(rule) => match rule.policy.action {
                Action::AuditSsh => Decision::Audit {
                    policy: rule.policy.clone(),
                },
                Action::Block => Decision::Block {
                    policy: Some(rule.policy.clone()),
                },
            },
        }
    }

    /// Whether any enabled policy (audit or block) covers `dst` at all: a destination no
    /// policy covers is not intercepted.
    pub fn covers(&self, dst: SocketAddr) -> bool {
        self.destinations
            .candidates(dst.ip())
            .into_iter()
            .any(|rank| self.rules[rank].ports.contains(&dst.port()))
    }

    /// The login check that happens once the user name is known (ssh.usernames; empty = any).
    pub fn login_allowed(policy: &Policy, login: &str) -> bool {
        policy.ssh.usernames.is_empty() || policy.ssh.usernames.iter().any(|u| u == login)
    }
}

/// Destination networks → ranks of the policies that list them, grouped by prefix length.
#[derive(Debug, Default)]
struct DestinationIndex {
    v4: Vec<(u8, HashMap<u32, Vec<usize>>)>,
    v6: Vec<(u8, HashMap<u128, Vec<usize>>)>,
}

impl DestinationIndex {
    /// Ranks must be inserted in ascending order, which keeps every list sorted.
    fn insert(&mut self, network: IpNet, rank: usize) {
        match network {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                add(&mut self.v4, len, mask_v4(n.addr().into(), len), rank);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                add(&mut self.v6, len, mask_v6(n.addr().into(), len), rank);
            }
        }
    }

    /// Ranks of the policies with a destination containing `ip`, ascending, each once.
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as its IPv4 address.
    fn candidates(&self, ip: IpAddr) -> Vec<usize> {
        let mut ranks = Vec::new();
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, map) in &self.v4 {
                    ranks.extend(map.get(&mask_v4(a, *len)).into_iter().flatten());
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, map) in &self.v6 {
                    ranks.extend(map.get(&mask_v6(a, *len)).into_iter().flatten());
                }
            }
        }
        ranks.sort_unstable();
        ranks.dedup();
        ranks
    }
}

fn add<K: std::hash::Hash + Eq>(
    by_len: &mut Vec<(u8, HashMap<K, Vec<usize>>)>,
    len: u8,
    key: K,
    rank: usize,
) {
    let slot = match by_len.iter().position(|(l, _)| *l == len) {
        Some(i) => i,
        None => {
            by_len.push((len, HashMap::new()));
            by_len.len() - 1
        }
    };
    let ranks = by_len[slot].1.entry(key).or_default();
    if ranks.last() != Some(&rank) {
        ranks.push(rank);
    }
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    // A /0 would shift by the full width, which `checked_shl` refuses: everything matches.
    u32::MAX
        .checked_shl(32 - u32::from(len))
        .map_or(0, |mask| addr & mask)
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len))
        .map_or(0, |mask| addr & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Policies used by the evaluation table. Precedences are deliberately out of file order.
    const SET: &str = r#"{"policies": [
      {"id": "audit-prod", "name": "Audit production", "precedence": 100,
       "action": "audit_ssh", "destinations": ["203.0.113.0/24", "2001:db8:1::/64"],
       "identity": {"email_domains": ["Example.com"]}},
      {"id": "block-contractors", "name": "Block contractors", "precedence": 50,
       "action": "block", "destinations": ["203.0.113.128/25"],
       "identity": {"groups": ["contractors"]}},
      {"id": "disabled-allow-all", "name": "Disabled", "precedence": 1, "enabled": false,
       "action": "audit_ssh", "destinations": ["0.0.0.0/0", "::/0"]},
      {"id": "db-posture", "name": "Databases need posture", "precedence": 20,
       "action": "audit_ssh", "destinations": ["198.51.100.10", "2001:db8:2::/48"], "ports": [22, 2222],
       "identity": {"emails": ["DBA@partner.org"], "groups": ["dba"]},
       "posture": ["disk-encryption", "os-up-to-date"]},
      {"id": "tie-first", "name": "Tie first", "precedence": 30,
       "action": "audit_ssh", "destinations": ["192.0.2.0/28"]},
      {"id": "tie-second", "name": "Tie second", "precedence": 30,
       "action": "block", "destinations": ["192.0.2.0/24"]},
      {"id": "lab-anyone", "name": "Lab, anyone", "precedence": 200,
       "action": "audit_ssh", "destinations": ["10.0.0.0/8"], "ports": [22, 2222],
       "ssh": {"usernames": ["ubuntu"]}},
      {"id": "lab-block-later", "name": "Never reached", "precedence": 300,
       "action": "block", "destinations": ["10.1.0.0/16"]}]}"#;

    fn engine() -> PolicyEngine {
        PolicyEngine::new(&PolicySet::parse(SET).unwrap())
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// (case, destination, email, groups, posture, deciding policy id, audited?)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        Option<&'a str>,
        bool,
    );

    #[test]
    fn evaluation_table() {
        let engine = engine();
        const BOTH: &[&str] = &["disk-encryption", "os-up-to-date"];
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("v4 CIDR, domain match", "203.0.113.5:22", "jdoe@example.com", &[], &[], Some("audit-prod"), true),
            ("domain is case-insensitive", "203.0.113.5:22", "JDoe@EXAMPLE.COM", &[], &[], Some("audit-prod"), true),
            ("other domain", "203.0.113.5:22", "jdoe@example.org", &[], &[], None, false),
            ("subdomain is another domain", "203.0.113.5:22", "jdoe@eu.example.com", &[], &[], None, false),
            ("v6 CIDR", "[2001:db8:1::99]:22", "jdoe@example.com", &[], &[], Some("audit-prod"), true),
            ("v6 outside the /64", "[2001:db8:1:1::99]:22", "jdoe@example.com", &[], &[], None, false),
            ("v4-mapped v6 counts as v4", "[::ffff:203.0.113.5]:22", "jdoe@example.com", &[], &[], Some("audit-prod"), true),
            ("port mismatch (default [22])", "203.0.113.5:2222", "jdoe@example.com", &[], &[], None, false),
            ("earlier block wins", "203.0.113.200:22", "c@example.com", &["contractors"], &[], Some("block-contractors"), false),
            ("block needs its group", "203.0.113.200:22", "c@example.com", &["staff"], &[], Some("audit-prod"), true),
            ("block outside its /25", "203.0.113.100:22", "c@example.com", &["contractors"], &[], Some("audit-prod"), true),
            ("disabled policy skipped", "8.8.8.8:22", "jdoe@example.com", &[], &[], None, false),
            ("email alternative, case-insensitive", "198.51.100.10:22", "dba@Partner.ORG", &[], BOTH, Some("db-posture"), true),
            ("group alternative", "198.51.100.10:22", "x@elsewhere.net", &["web", "dba"], BOTH, Some("db-posture"), true),
            ("groups are case-sensitive", "198.51.100.10:22", "x@elsewhere.net", &["DBA"], BOTH, None, false),
            ("no alternative matches", "198.51.100.10:22", "x@partner.org", &["web"], BOTH, None, false),
            ("posture missing one check", "198.51.100.10:22", "dba@partner.org", &[], &["disk-encryption"], None, false),
            ("posture missing all", "198.51.100.10:22", "dba@partner.org", &["dba"], &[], None, false),
            ("posture superset is fine", "198.51.100.10:2222", "dba@partner.org", &[], &["os-up-to-date", "firewall", "disk-encryption"], Some("db-posture"), true),
            ("bare host is a /32", "198.51.100.11:22", "dba@partner.org", &[], BOTH, None, false),
            ("v6 /48 with second port", "[2001:db8:2:ff::1]:2222", "dba@partner.org", &[], BOTH, Some("db-posture"), true),
            ("tie: file order, first", "192.0.2.5:22", "a@b.c", &[], &[], Some("tie-first"), true),
            ("tie: second where first does not match", "192.0.2.50:22", "a@b.c", &[], &[], Some("tie-second"), false),
            ("anyone: empty identity lists", "10.1.2.3:2222", "anyone@anywhere", &[], &[], Some("lab-anyone"), true),
            ("subject without '@' still matches anyone", "10.1.2.3:22", "weird", &[], &[], Some("lab-anyone"), true),
            ("later block never reached", "10.1.2.3:22", "a@b.c", &[], &[], Some("lab-anyone"), true),
            ("no destination at all", "192.168.1.1:22", "jdoe@example.com", &["contractors", "dba"], BOTH, None, false),
        ];
        for &(case, dst, email, groups, posture, want, audit) in cases {
            let groups = strings(groups);
            let posture = strings(posture);
            let subject = Subject {
                email,
                groups: &groups,
                posture: &posture,
            };
            let decision = engine.evaluate(dst.parse().unwrap(), &subject);
            assert_eq!(decision.policy_id(), want, "{case}: {decision:?}");
            assert_eq!(
                matches!(decision, Decision::Audit { .. }),
                audit,
                "{case}: {decision:?}"
            );
        }
    }

    #[test]
    fn messages() {
        let engine = engine();
        let contractors = strings(&["contractors"]);
        let subject = Subject {
            email: "c@example.com",
            groups: &contractors,
            posture: &[],
        };
        let blocked = engine.evaluate("203.0.113.200:22".parse().unwrap(), &subject);
        assert!(matches!(blocked, Decision::Block { policy: Some(_) }));
        assert_eq!(
            blocked.message(),
            "sshgw: blocked by policy \"Block contractors\" (block-contractors)"
        );
        let nothing = engine.evaluate("192.168.1.1:22".parse().unwrap(), &subject);
        assert!(matches!(nothing, Decision::Block { policy: None }));
        assert_eq!(nothing.policy_id(), None);
        assert_eq!(nothing.message(), "sshgw: no policy allows this connection");
        let audited = engine.evaluate("203.0.113.5:22".parse().unwrap(), &subject);
        assert_eq!(
            audited.message(),
            "sshgw: audited by policy \"Audit production\" (audit-prod)"
        );
        for decision in [blocked, nothing, audited] {
            assert!(!decision.message().contains('\n'));
        }
    }

    #[test]
    fn empty_set_blocks_everything() {
        for engine in [
            PolicyEngine::default(),
            PolicyEngine::new(&PolicySet::default()),
        ] {
            let subject = Subject {
                email: "a@b.c",
                groups: &[],
                posture: &[],
            };
            let d = engine.evaluate("203.0.113.5:22".parse().unwrap(), &subject);
            assert!(matches!(d, Decision::Block { policy: None }));
        }
    }

    #[test]
    fn login_allow_list() {
        let set = PolicySet::parse(SET).unwrap();
        let lab = set.policies.iter().find(|p| p.id == "lab-anyone").unwrap();
        let prod = set.policies.iter().find(|p| p.id == "audit-prod").unwrap();
        for (policy, login, allowed) in [
            (lab, "ubuntu", true),
            (lab, "root", false),
            (lab, "Ubuntu", false),
            (lab, "", false),
            (prod, "root", true),
            (prod, "anything", true),
        ] {
            assert_eq!(
                PolicyEngine::login_allowed(policy, login),
                allowed,
                "{} {login:?}",
                policy.id
            );
        }
        // The decided policy carries the allow-list.
        let subject = Subject {
            email: "a@b.c",
            groups: &[],
            posture: &[],
        };
        let Decision::Audit { policy } =
            engine().evaluate("10.9.9.9:22".parse().unwrap(), &subject)
        else {
            panic!("lab should audit");
        };
        assert!(PolicyEngine::login_allowed(&policy, "ubuntu"));
        assert!(!PolicyEngine::login_allowed(&policy, "root"));
    }

    #[test]
    fn docs_contractor_example() {
        // The last example of docs/policy.md, and its table of results.
        let doc = include_str!("../../../docs/policy.md");
        let block = doc.rsplit("```json\n").next().unwrap();
        let block = block.split("```").next().unwrap();
        let engine = PolicyEngine::new(&PolicySet::parse(block).unwrap());
        let contractors = strings(&["contractors"]);
        for (email, groups, dst, want) in [
            (
                "jdoe@example.com",
                &[][..],
                "203.0.113.200:22",
                "sshgw: audited by policy \"Audit production SSH\" (audit-prod)",
            ),
            (
                "c@example.com",
                &contractors[..],
                "203.0.113.200:22",
                "sshgw: blocked by policy \"Contractors: no payment servers\" (block-contractors-payments)",
            ),
            (
                "c@example.com",
                &contractors[..],
                "203.0.113.10:22",
                "sshgw: audited by policy \"Audit production SSH\" (audit-prod)",
            ),
            (
                "x@other.org",
                &[][..],
                "203.0.113.10:22",
                "sshgw: no policy allows this connection",
            ),
        ] {
            let subject = Subject {
                email,
                groups,
                posture: &[],
            };
            let decision = engine.evaluate(dst.parse().unwrap(), &subject);
            assert_eq!(decision.message(), want, "{email} {dst}");
            if want.contains("blocked") {
                assert!(doc.contains(want.trim_start_matches("sshgw: ")), "{want}");
            }
        }
    }

    #[test]
    fn prefix_masks() {
        let a: u32 = 0xCB00_71C8; // 203.0.113.200
        assert_eq!(mask_v4(a, 0), 0);
        assert_eq!(mask_v4(a, 25), 0xCB00_7180);
        assert_eq!(mask_v4(a, 32), a);
        let b: u128 = 0x2001_0db8_0001_0000_0000_0000_0000_0099;
        assert_eq!(mask_v6(b, 0), 0);
        assert_eq!(mask_v6(b, 64), 0x2001_0db8_0001_0000_0000_0000_0000_0000);
        assert_eq!(mask_v6(b, 128), b);
    }

    #[test]
    fn default_routes_and_overlaps() {
        // /0 destinations, and one policy listing overlapping networks, are each seen once.
        let set = PolicySet::parse(
            r#"{"policies": [
              {"id": "all", "name": "All", "precedence": 2, "action": "audit_ssh",
               "destinations": ["0.0.0.0/0", "::/0"]},
              {"id": "overlap", "name": "Overlap", "precedence": 1, "action": "block",
               "destinations": ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3"],
               "identity": {"emails": ["x@y.z"]}}]}"#,
        )
        .unwrap();
        let engine = PolicyEngine::new(&set);
        let x = Subject {
            email: "x@y.z",
            groups: &[],
            posture: &[],
        };
        let other = Subject {
            email: "o@y.z",
            ..x
        };
        let ip = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            engine.destinations.candidates(ip("10.1.2.3:22").ip()),
            [0, 1]
        );
        assert_eq!(
            engine.evaluate(ip("10.1.2.3:22"), &x).policy_id(),
            Some("overlap")
        );
        assert_eq!(
            engine.evaluate(ip("10.1.2.3:22"), &other).policy_id(),
            Some("all")
        );
        assert_eq!(
            engine.evaluate(ip("[2001:db8::1]:22"), &x).policy_id(),
            Some("all")
        );
    }

    #[test]
    fn a_thousand_policies() {
        // 1,000 policies × 16 destinations: only the matching ones are considered.
        let policies: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                let dsts: Vec<String> = (0..16)
                    .map(|j| format!("10.{}.{j}.0/24", i % 250))
                    .collect();
                serde_json::json!({"id": format!("p{i}"), "name": "n", "precedence": 1000 - i,
                    "action": "audit_ssh", "destinations": dsts,
                    "identity": {"emails": [format!("user{i}@example.com")]}})
            })
            .collect();
        let set =
            PolicySet::parse(&serde_json::json!({ "policies": policies }).to_string()).unwrap();
        let engine = PolicyEngine::new(&set);
        let subject = Subject {
            email: "user3@example.com",
            groups: &[],
            posture: &[],
        };
        // 10.3.x is listed by p3, p253, p503, p753: 4 candidates.
        assert_eq!(
            engine
                .destinations
                .candidates("10.3.5.1".parse().unwrap())
                .len(),
            4
        );
        assert_eq!(
            engine
                .evaluate("10.3.5.1:22".parse().unwrap(), &subject)
                .policy_id(),
            Some("p3")
        );
    }

    /// A policy with these `ssh` settings (JSON).
    fn with_ssh(ssh: &str) -> Policy {
        let text = format!(
            r#"{{"policies": [{{"id": "p1", "name": "Files only", "precedence": 1,
                "action": "audit_ssh", "destinations": ["10.0.0.0/8"], "ssh": {ssh}}}]}}"#
        );
        PolicySet::parse(&text).unwrap().policies.remove(0)
    }

    const MOSH: Program<'static> = Program::Unrecordable {
        program: "mosh-server",
        origin: "mosh",
    };

    #[test]
    fn programs_under_the_defaults() {
        let policy = with_ssh("{}");
        for program in [
            Program::Shell,
            Program::Sftp,
            Program::Scp { upload: true },
            Program::Exec,
            Program::Subsystem("git"),
        ] {
            assert_eq!(
                judge_program(&policy, program),
                Ok(Verdict::Run),
                "{program:?}"
            );
        }
        assert_eq!(
            judge_program(&policy, MOSH),
            Err(
                "sshgw: mosh-server is refused by policy \"Files only\" (p1): sshgw cannot \
                 record the mosh session it starts (it runs outside SSH); \
                 ssh.unrecordable_programs = \"deny\""
                    .into()
            )
        );
    }

    #[test]
    fn a_files_only_policy() {
        let policy = with_ssh(r#"{"shell": "deny", "exec": "deny", "sftp": "read_only"}"#);
        let denied = |what: &str, setting: &str| {
            Err(format!(
                "sshgw: {what} is denied by policy \"Files only\" (p1){setting}"
            ))
        };
        let exec = ": ssh.exec = \"deny\"";
        for (program, want) in [
            (Program::Sftp, Ok(Verdict::Run)),
            (Program::Scp { upload: false }, Ok(Verdict::Run)),
            (
                Program::Scp { upload: true },
                denied("uploading with scp", ""),
            ),
            (Program::Shell, denied("a shell", ": ssh.shell = \"deny\"")),
            (Program::Exec, denied("exec", exec)),
            (Program::Subsystem("git"), denied("subsystem \"git\"", exec)),
        ] {
            assert_eq!(judge_program(&policy, program), want, "{program:?}");
        }
        let deny = with_ssh(r#"{"sftp": "deny"}"#);
        assert_eq!(judge_program(&deny, Program::Sftp), denied("sftp", ""));
        assert_eq!(
            judge_program(&deny, Program::Scp { upload: false }),
            denied("scp", "")
        );
    }

    #[test]
    fn unrecordable_programs_allowed_explicitly() {
        let policy = with_ssh(r#"{"unrecordable_programs": "allow"}"#);
        assert_eq!(
            judge_program(&policy, MOSH),
            Ok(Verdict::RunUnrecorded(
                "sshgw cannot record the mosh session it starts (it runs outside SSH); \
                 allowed by policy \"Files only\" (p1): ssh.unrecordable_programs = \"allow\""
                    .into()
            ))
        );
        // They are still commands: ssh.exec = deny refuses them.
        let policy = with_ssh(r#"{"unrecordable_programs": "allow", "exec": "deny"}"#);
        assert_eq!(
            judge_program(&policy, MOSH),
            Err(
                "sshgw: mosh-server is denied by policy \"Files only\" (p1): ssh.exec = \"deny\""
                    .into()
            )
        );
    }
}
