//! Router checks of the nftables ruleset (`nft -j list ruleset`): intercepted flows are
//! delivered locally, so an INPUT chain that drops by default must accept them (they carry
//! the intercept mark), and a boot guard should drop device-to-audited SSH in FORWARD
//! before sshgw attaches.

use std::process::Command;

use serde_json::Value;

use super::Check;
use crate::config::Config;

/// Name of the table the shipped guard (xtask/deploy/sshgw-guard.nft) creates.
pub const GUARD_TABLE: &str = "sshgw_guard";

/// The ruleset, or why it could not be read.
pub struct Ruleset(Result<Vec<Value>, String>);

impl Ruleset {
    pub fn read() -> Self {
        let out = match Command::new("nft").args(["-j", "list", "ruleset"]).output() {
            Ok(out) => out,
            Err(e) => return Self(Err(format!("cannot run nft: {e}"))),
        };
        if !out.status.success() {
            return Self(Err(format!(
                "nft -j list ruleset failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Self(Self::parse(&out.stdout))
    }

    fn parse(json: &[u8]) -> Result<Vec<Value>, String> {
        let v: Value =
            serde_json::from_slice(json).map_err(|e| format!("nft printed no JSON: {e}"))?;
        Ok(v["nftables"].as_array().cloned().unwrap_or_default())
    }

    /// Every base chain on the input hook accepts marked flows before dropping anything.
    pub fn input_rule(&self, config: &Config) -> Check {
        const NAME: &str = "input firewall";
        let items = match &self.0 {
            Ok(items) => items,
            Err(e) => return Check::skip(NAME, e.clone()),
        };
        let mark = config.datapath.intercept_mark;
        let fix = input_fix(config);
        let mut notes = Vec::new();
        for chain in items.iter().filter_map(|i| i.get("chain")) {
            if chain["hook"] != "input" {
                continue;
            }
            let id = chain_id(chain);
            let rules: Vec<&Value> = items
                .iter()
                .filter_map(|i| i.get("rule"))
                .filter(|r| chain_id(r) == id)
                .collect();
            match first_relevant(&rules, mark) {
                Some(Found::AcceptsMarked) => notes.push(format!("{id} accepts marked flows")),
                Some(Found::Drops(handle)) => {
                    return Check::fail(
                        NAME,
                        format!(
                            "{id}: rule {handle} drops or rejects before any rule accepts the intercept mark {mark:#x}"
                        ),
                        fix,
                    );
                }
                None if chain["policy"] == "drop" => {
                    return Check::fail(
                        NAME,
                        format!(
                            "{id} drops by default and no rule accepts the intercept mark {mark:#x}: intercepted SSH never reaches sshgw"
                        ),
                        fix,
                    );
                }
                None => notes.push(format!("{id} accepts by default")),
            }
        }
        if notes.is_empty() {
            Check::ok(
                NAME,
                "no nftables INPUT chain: nothing filters intercepted flows",
            )
        } else {
            Check::ok(NAME, notes.join("; "))
        }
    }

    /// The boot guard table exists.
    pub fn boot_guard(&self) -> Check {
        const NAME: &str = "boot guard";
        let items = match &self.0 {
            Ok(items) => items,
            Err(e) => return Check::skip(NAME, e.clone()),
        };
        let found = items
            .iter()
            .filter_map(|i| i.get("table"))
            .any(|t| t["name"] == GUARD_TABLE);
        if found {
            Check::ok(NAME, format!("table {GUARD_TABLE} is loaded"))
        } else {
            Check::warn(
                NAME,
                format!(
                    "no table {GUARD_TABLE}: after a reboot, audited SSH is forwarded unaudited until sshgw has attached"
                ),
                "load xtask/deploy/sshgw-guard.nft at boot (docs/deployment.md#boot-order)",
            )
        }
    }
}

fn chain_id(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
    format!(
        "{} {} {}",
        s("family"),
        s("table"),
        v.get("chain")
            .or(v.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

enum Found {
    AcceptsMarked,
    /// A drop/reject rule (its handle) came first.
    Drops(i64),
}

/// The first rule that either accepts marked flows or drops/rejects something.
fn first_relevant(rules: &[&Value], mark: u32) -> Option<Found> {
    rules.iter().find_map(|r| {
        let exprs = r["expr"].as_array()?;
        let has = |k: &str| exprs.iter().any(|e| e.get(k).is_some());
        if has("accept") && exprs.iter().any(|e| matches_mark(e, mark)) {
            Some(Found::AcceptsMarked)
        } else if has("drop") || has("reject") {
            Some(Found::Drops(r["handle"].as_i64().unwrap_or(-1)))
        } else {
            None
        }
    })
}

/// A `match` on `meta mark` whose value has the intercept bit (or is not a plain number),
/// or an iptables `-m mark` (xt).
fn matches_mark(expr: &Value, mark: u32) -> bool {
    if let Some(xt) = expr.get("xt") {
        return xt["name"] == "mark";
    }
    let Some(m) = expr.get("match") else {
        return false;
    };
    if !m["left"].to_string().contains(r#"{"meta":{"key":"mark"}}"#) {
        return false;
    }
    m["right"].as_u64().is_none_or(|v| v & u64::from(mark) != 0)
}

fn input_fix(config: &Config) -> String {
    let d = &config.datapath;
    let ifs = d
        .interfaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ports = d
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "add, before any drop rule in that chain:\n  iifname {{ {ifs} }} meta mark & {m:#x} == {m:#x} tcp dport {{ {ports} }} accept\n(docs/deployment.md#firewall)",
        m = d.intercept_mark
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse("state_dir = \"/var/lib/sshgw\"\n[datapath]\ninterfaces = [\"wg0\"]\n")
            .unwrap()
    }

    fn ruleset(rules: &str, policy: &str) -> Ruleset {
        let json = format!(
            r#"{{"nftables":[{{"table":{{"family":"inet","name":"filter"}}}},
            {{"chain":{{"family":"inet","table":"filter","name":"input","hook":"input","policy":"{policy}"}}}},
            {rules}]}}"#
        );
        Ruleset(Ruleset::parse(json.as_bytes()))
    }

    const MARK_ACCEPT: &str = r#"{"rule":{"family":"inet","table":"filter","chain":"input","handle":4,
        "expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"wg0"}},
        {"match":{"op":"==","left":{"&":[{"meta":{"key":"mark"}},256]},"right":256}},{"accept":null}]}}"#;
    const DROP_ALL: &str = r#"{"rule":{"family":"inet","table":"filter","chain":"input","handle":3,
        "expr":[{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},{"drop":null}]}}"#;

    #[test]
    fn drop_policy_needs_the_mark_rule() {
        let c = config();
        assert_eq!(
            ruleset(MARK_ACCEPT, "drop").input_rule(&c).verdict,
            super::super::Verdict::Ok
        );
        let broken = ruleset(DROP_ALL, "drop").input_rule(&c);
        assert_eq!(broken.verdict, super::super::Verdict::Fail);
        assert!(broken.fix.unwrap().contains("meta mark & 0x100 == 0x100"));
        let order = ruleset(&format!("{DROP_ALL},{MARK_ACCEPT}"), "accept").input_rule(&c);
        assert_eq!(order.verdict, super::super::Verdict::Fail, "{order:?}");
        let empty = Ruleset(Ruleset::parse(br#"{"nftables":[]}"#)).input_rule(&c);
        assert_eq!(empty.verdict, super::super::Verdict::Ok);
    }

    #[test]
    fn guard_table_is_found() {
        let with = Ruleset(Ruleset::parse(
            br#"{"nftables":[{"table":{"family":"inet","name":"sshgw_guard"}}]}"#,
        ));
        assert_eq!(with.boot_guard().verdict, super::super::Verdict::Ok);
        let without = ruleset(MARK_ACCEPT, "accept").boot_guard();
        assert_eq!(without.verdict, super::super::Verdict::Warn);
    }
}
