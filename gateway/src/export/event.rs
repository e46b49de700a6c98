//! One SIEM event per outbox row, with ECS-style field names where ECS has one
//! (docs/siem-events.md is the schema). The event id `ROUTER:SEQ` is unique and stable:
//! a receiver deduplicates with it, since delivery is at least once.

use serde_json::{Map, Value, json};

use crate::{
    config::ExportConfig,
    sessions::{format_time, outbox::OutboxRow},
};

/// What the exporter leaves out of every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redaction {
    pub commands: bool,
    pub paths: bool,
}

impl Redaction {
    pub fn of(config: &ExportConfig) -> Self {
        Redaction {
            commands: !config.include_commands,
            paths: !config.include_paths,
        }
    }
}

/// An event ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `ROUTER:SEQ`.
    pub id: String,
    pub seq: i64,
    /// µs since the epoch.
    pub at: i64,
    pub kind: String,
    pub session_id: Option<String>,
    /// The whole event as JSON.
    pub body: Value,
}

/// Payload fields that carry commands (and the program environment, which often holds as
/// much), and those that carry paths; removed per [`Redaction`].
const COMMAND_FIELDS: [&str; 2] = ["command", "env"];
const PATH_FIELDS: [&str; 3] = ["path", "target", "recording"];

/// Builds the event of `row` for `router_id`.
pub fn build(router_id: &str, row: &OutboxRow, redact: Redaction) -> Event {
    let mut payload = row.payload.clone();
    scrub(&mut payload, redact);
    let id = format!("{router_id}:{}", row.seq);
    let mut body = json!({
        "@timestamp": format_time(row.at),
        "event": {
            "id": id,
            "action": row.kind,
            "sequence": row.seq,
            "kind": "event",
            "category": category(&row.kind),
            "dataset": "sshgw.audit",
        },
        "observer": {"name": router_id, "product": "sshgw", "type": "ssh-audit-gateway"},
        "sshgw": {"session_id": row.session_id, "payload": payload},
    });
    let scrubbed = payload_of(&body);
    ecs_fields(&mut body, &row.kind, &scrubbed);
    Event {
        id,
        seq: row.seq,
        at: row.at,
        kind: row.kind.clone(),
        session_id: row.session_id.clone(),
        body,
    }
}

fn payload_of(body: &Value) -> Value {
    body["sshgw"]["payload"].clone()
}

fn category(kind: &str) -> &'static str {
    match kind.split('.').next() {
        Some("session") | Some("channel") => "session",
        Some("file") => "file",
        Some("admin") => "configuration",
        _ => "process",
    }
}

/// File operations whose `path` holds a command line (a refused program, a handoff).
const COMMAND_OPS: [&str; 2] = ["refused", "unaudited handoff"];

/// A file operation's own fields: a refused program's or a handoff's `path` and `status`
/// name the command; any other status than `ok` may quote a path (scp's errors do).
fn scrub_file_op(map: &mut Map<String, Value>, redact: Redaction) {
    let op = map.get("op").and_then(Value::as_str).unwrap_or_default();
    if COMMAND_OPS.contains(&op) {
        if redact.commands {
            map.remove("path");
            map.remove("status");
        }
        return;
    }
    let ok = map.get("status").and_then(Value::as_str) == Some("ok");
    if redact.paths && !ok {
        map.insert("status".into(), "error (redacted)".into());
    }
}

/// Removes what the redaction says, at any depth.
fn scrub(value: &mut Value, redact: Redaction) {
    match value {
        Value::Object(map) => {
            if map.contains_key("op") && map.contains_key("status") {
                scrub_file_op(map, redact);
            }
            if redact.commands {
                for f in COMMAND_FIELDS {
                    map.remove(f);
                }
            }
            if redact.paths {
                for f in PATH_FIELDS {
                    map.remove(f);
                }
            }
            map.values_mut().for_each(|v| scrub(v, redact));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, redact)),
        _ => {}
    }
}

/// `ADDR:PORT` (or `[V6]:PORT`) as ECS `{ip, port}`.
fn endpoint(text: Option<&str>) -> Option<Value> {
    let addr: std::net::SocketAddr = text?.parse().ok()?;
    Some(json!({"ip": addr.ip().to_string(), "port": addr.port()}))
}

/// Copies what ECS names into its places: user, source, destination, rule, file, process.
fn ecs_fields(body: &mut Value, kind: &str, payload: &Value) {
    let mut ecs = Map::new();
    let session = &payload["session"];
    if session.is_object() {
        let email = session["email"].as_str();
        ecs.insert(
            "user".into(),
            json!({"email": email, "name": session["login"], "id": email}),
        );
        if let Some(v) = endpoint(session["source"].as_str()) {
            ecs.insert("source".into(), v);
        }
        if let Some(v) = endpoint(session["destination"].as_str()) {
            ecs.insert("destination".into(), v);
        }
        ecs.insert(
            "rule".into(),
            json!({"id": session["policy_id"], "name": session["policy_name"]}),
        );
        ecs.insert("device".into(), json!({"id": session["device_id"]}));
        let outcome = if session["decision"] == "block" {
            "failure"
        } else {
            "success"
        };
        body["event"]["outcome"] = outcome.into();
    }
    if kind == crate::sessions::outbox::kind::SESSION_LOGGED_IN {
        ecs.insert("user".into(), json!({"name": payload["login"]}));
    }
    let file_op = &payload["file_op"];
    if file_op.is_object() {
        let mut file = json!({"size": file_op["bytes_written"]});
        if let Some(path) = file_op["path"].as_str() {
            file["path"] = path.into();
        }
        ecs.insert("file".into(), file);
        body["event"]["outcome"] = if file_op["status"] == "ok" {
            "success"
        } else {
            "failure"
        }
        .into();
    }
    if let Some(command) = payload["channel"]["command"].as_str() {
        ecs.insert("process".into(), json!({"command_line": command}));
    }
    if let Some(map) = body.as_object_mut() {
        map.extend(ecs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, payload: Value) -> OutboxRow {
        OutboxRow {
            seq: 42,
            at: 1_764_000_000_000_000,
            kind: kind.into(),
            session_id: Some("s1".into()),
            payload,
        }
    }

    #[test]
    fn an_event_has_its_id_and_ecs_fields() {
        let r = row(
            "session.opened",
            json!({"session": {"email": "jdoe@example.com", "login": null,
                "source": "100.96.0.7:40000", "destination": "[2001:db8::10]:22",
                "decision": "audit_ssh", "policy_id": "p1", "device_id": "d1"}}),
        );
        let e = build(
            "rtr-a",
            &r,
            Redaction {
                commands: false,
                paths: false,
            },
        );
        assert_eq!(e.id, "rtr-a:42");
        assert_eq!(e.body["event"]["id"], "rtr-a:42");
        assert_eq!(e.body["user"]["email"], "jdoe@example.com");
        assert_eq!(e.body["source"]["ip"], "100.96.0.7");
        assert_eq!(e.body["destination"]["ip"], "2001:db8::10");
        assert_eq!(e.body["destination"]["port"], 22);
        assert_eq!(e.body["event"]["outcome"], "success");
        assert_eq!(e.body["observer"]["name"], "rtr-a");
    }

    #[test]
    fn redaction_removes_commands_and_paths_everywhere() {
        let exec = row(
            "channel.opened",
            json!({"channel": {"command": "cat /etc/shadow", "env": [["A", "b"]], "recording": "/r/x"}}),
        );
        let op = row(
            "file.operation",
            json!({"file_op": {"path": "/secret/plan.txt", "target": null, "status": "ok"}}),
        );
        let none = Redaction {
            commands: true,
            paths: true,
        };
        for r in [exec, op] {
            let e = build("rtr-a", &r, none);
            let text = e.body.to_string();
            for secret in ["shadow", "plan.txt", "/r/x", "\"A\""] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        let handoff = row(
            "file.operation",
            json!({"file_op": {"op": "unaudited handoff", "path": "mosh-server new -s", "status": "mosh cannot be recorded"}}),
        );
        let commands_only = Redaction {
            commands: true,
            paths: false,
        };
        let text = build("rtr-a", &handoff, commands_only).body.to_string();
        assert!(!text.contains("mosh"), "{text}");
        let scp = row(
            "file.operation",
            json!({"file_op": {"op": "upload error", "path": "/x", "status": "scp: /etc/shadow: Permission denied"}}),
        );
        let text = build(
            "rtr-a",
            &scp,
            Redaction {
                commands: false,
                paths: true,
            },
        )
        .body
        .to_string();
        assert!(!text.contains("shadow"), "{text}");
        let kept = build(
            "rtr-a",
            &row("channel.opened", json!({"channel": {"command": "uptime"}})),
            Redaction {
                commands: false,
                paths: true,
            },
        );
        assert_eq!(kept.body["process"]["command_line"], "uptime");
    }
}
