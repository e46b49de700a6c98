//! The control API's routes, called in-process: every refusal the netns suite
//! (`tests/tests/control_api.rs`) checks over the socket, with its exact status and text,
//! and a successful call of every route. A refused change leaves memory and disk alone.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::test_context::{Answer, POLICIES, TestContext, context};

/// A one-policy set as literal text (so the positions in parse errors stay put), with `id`,
/// `destinations` and any `extra` fields as JSON text.
fn policy(id: &str, destinations: &str, extra: &str) -> Vec<u8> {
    format!(
        "{{\"policies\": [{{\"id\": {id}, \"name\": \"Audit lab server\", \"precedence\": 10, \
         \"action\": \"audit_ssh\", \"destinations\": {destinations}, \"ports\": [22]{extra}}}]}}"
    )
    .into_bytes()
}

/// The state as served and as stored, to check that a refusal changed nothing.
async fn state_of(ctx: &TestContext) -> Vec<(Option<String>, Value, Vec<u8>)> {
    let config = &ctx.shared.config;
    let mut out = Vec::new();
    for (route, file) in [
        ("/v1/devices", config.devices_path()),
        ("/v1/policies", config.policies_path()),
    ] {
        let got = ctx.call("GET", route, b"").await;
        assert_eq!(got.status, StatusCode::OK, "GET {route}");
        out.push((got.etag, got.body, std::fs::read(file).unwrap()));
    }
    out
}

fn assert_error(got: &Answer, status: StatusCode, error: &str, what: &str) {
    assert_eq!((got.status, got.error()), (status, error), "{what}");
    assert_eq!(got.body.as_object().map(|o| o.len()), Some(1), "{what}");
}

#[tokio::test]
async fn invalid_policy_sets_are_refused_naming_the_field() {
    let ctx = context();
    let before = state_of(&ctx).await;
    let lab = r#""audit-lab""#;
    let dests = r#"["203.0.113.10/32"]"#;
    // The same policy twice.
    let one = String::from_utf8(policy(lab, dests, "")).unwrap();
    let entry = &one["{\"policies\": [".len()..one.len() - "]}".len()];
    let dup_ids = format!("{{\"policies\": [{entry}, {entry}]}}").into_bytes();
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated JSON", br#"{"policies": [{"id": "x""#.to_vec(),
         "policies[0].?: EOF while parsing an object at line 1 column 24"),
        ("a syntax error on line 3", b"{\"policies\": [\n  {\"id\": \"x\",\n   \"name\": }]}".to_vec(),
         "policies[0].name: expected value at line 3 column 12"),
        ("not UTF-8", b"{\"policies\": [\xff]}".to_vec(),
         "request body is not UTF-8"),
        ("a number as id", policy("5", dests, ""),
         "policies[0].id: invalid type: integer `5`, expected a string at line 1 column 22"),
        ("an unknown field", policy(lab, dests, r#", "bogus": true"#),
         "policies[0].bogus: unknown field `bogus`, expected one of `id`, `name`, `precedence`, `enabled`, `action`, `destinations`, `ports`, `identity`, `posture`, `ssh` at line 1 column 162"),
        ("an unknown ssh field", policy(lab, dests, r#", "ssh": {"usernmes": ["x"]}"#),
         "policies[0].ssh.usernmes: unknown field `usernmes`, expected one of `command_logging`, `usernames`, `port_forwarding`, `agent_forwarding`, `max_duration`, `sftp`, `max_upload_bytes`, `shell`, `exec`, `unrecordable_programs` at line 1 column 173"),
        ("an invalid CIDR", policy(lab, r#"["10.0.0.300/8"]"#, ""),
         "policies[0].destinations[0]: \"10.0.0.300/8\" is not an IP network at line 1 column 135"),
        ("a bad duration", policy(lab, dests, r#", "ssh": {"max_duration": "5w"}"#),
         "policies[0].ssh.max_duration: \"5w\": unknown unit 'w' (use d, h, m or s); write a duration such as \"30m\", \"8h\" or \"1h30m\" at line 1 column 183"),
        ("duplicate ids", dup_ids,
         "policies[1].id: \"audit-lab\" is used by another policy"),
        ("no destinations", policy(lab, "[]", ""),
         "policies[0].destinations: list at least one IP or CIDR"),
    ];
    for (what, body, error) in &cases {
        let pushed = ctx.call("PUT", "/v1/policies", body).await;
        assert_error(&pushed, StatusCode::BAD_REQUEST, error, what);
        assert_eq!(state_of(&ctx).await, before, "{what}");
        let validated = ctx.call("POST", "/v1/policies/validate", body).await;
        assert_error(&validated, StatusCode::BAD_REQUEST, error, what);
    }
}

/// method, path, If-Match, body; the status and error text it gets.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Vec<u8>,
    StatusCode,
    String,
);

/// Sends every case; each is refused as the case says and changes nothing. A 412 carries
/// the ETag in force, for the writer to read again.
async fn refusals(ctx: &TestContext, cases: Vec<Case<'_>>) {
    let before = state_of(ctx).await;
    for (method, path, if_match, body, status, error) in &cases {
        let what = format!("{method} {path}");
        let got = ctx.call_with(method, path, *if_match, body).await;
        assert_error(&got, *status, error, &what);
        assert_eq!(state_of(ctx).await, before, "{what}");
        let etag = match (*status, *path) {
            (StatusCode::PRECONDITION_FAILED, "/v1/policies") => before[1].0.clone(),
            (StatusCode::PRECONDITION_FAILED, _) => before[0].0.clone(),
            _ => None,
        };
        assert_eq!(got.etag, etag, "{what}");
    }
}

/// `If-Match: "0123"` when the document's ETag is `etag`.
fn stale(what: &str, etag: &str) -> String {
    format!(
        "the {what} changed since it was read (If-Match \"0123\"); it is now \"{etag}\": \
         read it again and redo the change"
    )
}

#[tokio::test]
async fn device_errors() {
    let ctx = context();
    let laptop = || -> Value {
        let table: Value = serde_json::from_str(super::test_context::DEVICES).unwrap();
        table["devices"][0].clone()
    };
    let mut second = laptop();
    second["id"] = json!("second");
    let dup_address = serde_json::to_vec(&json!({"devices": [laptop(), second]})).unwrap();
    let mut someone_else = laptop();
    someone_else["id"] = json!("someone-else");
    let someone_else = serde_json::to_vec(&someone_else).unwrap();
    let stale_devices = stale("device table", &ctx.shared.state.snapshot().devices_etag);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("PUT", "/v1/devices", None, dup_address, StatusCode::BAD_REQUEST,
         "devices[1].addresses[0]: 100.96.0.7 already belongs to device \"laptop-jdoe\"".into()),
        ("DELETE", "/v1/devices/unknown", None, vec![], StatusCode::NOT_FOUND,
         "no device with id \"unknown\"".into()),
        ("PUT", "/v1/devices/laptop-jdoe", None, someone_else, StatusCode::BAD_REQUEST,
         "id: \"someone-else\" does not match the path's device id \"laptop-jdoe\"".into()),
        ("PUT", "/v1/devices/laptop-jdoe", None, b"{".to_vec(), StatusCode::BAD_REQUEST,
         "?: EOF while parsing an object at line 1 column 1".into()),
        ("GET", "/v1/devices/laptop-jdoe", None, vec![], StatusCode::METHOD_NOT_ALLOWED,
         "use PUT or DELETE".into()),
        ("DELETE", "/v1/devices/", None, vec![], StatusCode::NOT_FOUND,
         "no such endpoint /v1/devices/".into()),
        ("DELETE", "/v1/devices/a/b", None, vec![], StatusCode::NOT_FOUND,
         "no such endpoint /v1/devices/a/b".into()),
        ("DELETE", "/v1/devices/laptop-jdoe", Some("\"0123\""), vec![], StatusCode::PRECONDITION_FAILED,
         stale_devices),
    ];
    refusals(&ctx, cases).await;
}

#[tokio::test]
async fn endpoint_errors() {
    let ctx = context();
    let stale_policies = stale("policy set", &ctx.shared.state.snapshot().policies_etag);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("GET", "/v1/nonexistent", None, vec![], StatusCode::NOT_FOUND,
         "no such endpoint /v1/nonexistent".into()),
        ("GET", "/status", None, vec![], StatusCode::NOT_FOUND,
         "no such endpoint /status".into()),
        ("DELETE", "/v1/policies", None, vec![], StatusCode::METHOD_NOT_ALLOWED,
         "method DELETE not allowed on /v1/policies".into()),
        ("GET", "/v1/policies/validate", None, vec![], StatusCode::METHOD_NOT_ALLOWED,
         "method GET not allowed on /v1/policies/validate".into()),
        ("POST", "/v1/devices", None, vec![], StatusCode::METHOD_NOT_ALLOWED,
         "method POST not allowed on /v1/devices".into()),
        ("PUT", "/v1/status", None, vec![], StatusCode::METHOD_NOT_ALLOWED,
         "method PUT not allowed on /v1/status".into()),
        ("GET", "/v1/recording/key", None, vec![], StatusCode::NOT_FOUND,
         "no such endpoint /v1/recording/key".into()),
        ("PUT", "/v1/recording/key", None, b"AAAA".to_vec(), StatusCode::BAD_REQUEST,
         "public key: invalid public key: 3 bytes, expected 32 (an X25519 key in base64, 44 characters)".into()),
        ("DELETE", "/v1/devices/laptop-jdoe", Some("abc"), vec![], StatusCode::BAD_REQUEST,
         r#"If-Match: "abc" is not an entity tag (a quoted string such as "\"3f5a…\"")"#.into()),
        ("DELETE", "/v1/devices/laptop-jdoe", Some(" , "), vec![], StatusCode::BAD_REQUEST,
         "If-Match: no entity tag given".into()),
        ("PUT", "/v1/policies", Some("\"0123\""), POLICIES.as_bytes().to_vec(), StatusCode::PRECONDITION_FAILED,
         stale_policies),
    ];
    refusals(&ctx, cases).await;
}

/// Asserts a 200 answer with exactly this JSON body.
fn assert_ok(got: &Answer, body: Value) {
    assert_eq!((got.status, &got.body), (StatusCode::OK, &body), "{got:?}");
}

#[tokio::test]
async fn policy_routes_answer() {
    let ctx = context();
    let before = state_of(&ctx).await;
    let got = ctx.call("GET", "/v1/policies", b"").await;
    // Served with every default spelled out.
    assert_ok(
        &got,
        json!({"policies": [{"id": "audit-lab", "name": "Audit lab server",
            "precedence": 10, "enabled": true, "action": "audit_ssh",
            "destinations": ["203.0.113.10/32", "2001:db8:1::10/128"], "ports": [22],
            "identity": {"emails": [], "email_domains": [], "groups": []}, "posture": [],
            "ssh": {"command_logging": false, "usernames": []}}]}),
    );
    let etag = got.etag.clone().unwrap();
    let on_disk = std::fs::read(ctx.shared.config.policies_path()).unwrap();
    assert_eq!(etag, crate::util::json_file::sha256_hex(&on_disk));

    let other = serde_json::to_vec(&json!({"policies": [
        {"id": "a", "name": "A", "precedence": 1, "action": "audit_ssh", "destinations": ["203.0.113.20"]},
        {"id": "b", "name": "B", "precedence": 2, "action": "block", "destinations": ["198.51.100.0/24"]}
    ]}))
    .unwrap();
    let got = ctx.call("POST", "/v1/policies/validate", &other).await;
    assert_ok(&got, json!({"valid": true, "policies": 2}));
    assert_eq!(got.etag, None);
    assert_eq!(state_of(&ctx).await, before, "validate applies nothing");

    let quoted = format!("\"{etag}\"");
    let got = ctx
        .call_with("PUT", "/v1/policies", Some(&quoted), &other)
        .await;
    assert_ok(&got, json!({"applied": true, "policies": 2}));
    let now = ctx.call("GET", "/v1/policies", b"").await;
    assert_eq!(now.etag, got.etag);
    assert_eq!(now.body["policies"][1]["id"], "b");
    assert_ne!(got.etag, Some(etag));
    assert_eq!(leftovers(&ctx), Vec::<String>::new());
}

#[tokio::test]
async fn device_routes_answer() {
    let ctx = context();
    let before = state_of(&ctx).await;
    let got = ctx.call("GET", "/v1/devices", b"").await;
    assert_eq!((got.status, &got.etag), (StatusCode::OK, &before[0].0));
    let table = serde_json::to_vec(&got.body).unwrap();
    let got = ctx.call_with("PUT", "/v1/devices", Some("*"), &table).await;
    assert_ok(&got, json!({"applied": true, "devices": 1}));
    assert_eq!(got.etag, before[0].0, "the same table, the same ETag");

    let tablet = json!({"id": "tablet-jdoe", "addresses": ["100.96.0.9"],
        "user": {"email": "jdoe@example.com"}});
    let tablet = serde_json::to_vec(&tablet).unwrap();
    let got = ctx.call("PUT", "/v1/devices/tablet-jdoe", &tablet).await;
    assert_ok(&got, json!({"applied": true, "device": "tablet-jdoe"}));
    assert_ne!(got.etag, before[0].0);
    let got = ctx.call("DELETE", "/v1/devices/tablet-jdoe", b"").await;
    assert_ok(&got, json!({"deleted": "tablet-jdoe"}));
    assert_eq!(got.etag, before[0].0, "back to the original table");
    let got = ctx.call("DELETE", "/v1/devices/tablet-jdoe", b"").await;
    let gone = "no device with id \"tablet-jdoe\"";
    assert_error(&got, StatusCode::NOT_FOUND, gone, "twice");
    assert_eq!(state_of(&ctx).await, before);
    assert_eq!(leftovers(&ctx), Vec::<String>::new());
}

#[tokio::test]
async fn recording_key_status_and_metrics_answer() {
    let ctx = context();
    let key = "6UMFAjnFDI7mdBkTOS/3aTmfCQP0XBWe9yxn6vR3LlQ=";
    let got = ctx
        .call("PUT", "/v1/recording/key", format!("{key}\n").as_bytes())
        .await;
    assert_ok(&got, json!({"applied": true}));
    let stored = std::fs::read_to_string(ctx.shared.config.recording_key_path()).unwrap();
    assert_eq!(stored, key);
    let in_memory = ctx.shared.relay.recording.key.read().unwrap().clone();
    assert_eq!(in_memory.map(|k| k.to_base64()).as_deref(), Some(key));
    assert_eq!(leftovers(&ctx), Vec::<String>::new());

    // Without a datapath there is no status to report.
    let got = ctx.call("GET", "/v1/status", b"").await;
    let down = "the datapath is shutting down";
    assert_error(&got, StatusCode::INTERNAL_SERVER_ERROR, down, "status");
    let got = ctx.call("GET", "/metrics", b"").await;
    let text = got.body.as_str().unwrap_or_default();
    assert!(
        got.status == StatusCode::OK && text.contains("sshgw_"),
        "{got:?}"
    );
}

/// Staging files left in the state dir.
fn leftovers(ctx: &TestContext) -> Vec<String> {
    std::fs::read_dir(ctx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}
