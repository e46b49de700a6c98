//! `/v1/sessions…` called in-process: listing the log and the live sessions with their
//! filters, one session, killing a live one, and every refusal with its exact text.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::test_context::{Answer, TestContext, context};
use crate::sessions::{
    SessionRecord,
    live::{KillReason, Tracker},
    now_micros,
};

fn record(id: &str, email: &str, started_at: i64) -> SessionRecord {
    SessionRecord {
        email: Some(email.into()),
        device_id: Some("laptop-jdoe".into()),
        ..SessionRecord::new(
            id.into(),
            "100.96.0.7:40000".into(),
            "203.0.113.10:22".into(),
            "audit_ssh",
            started_at,
        )
    }
}

fn ids(got: &Answer) -> Vec<&str> {
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    got.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect()
}

/// A context whose log holds `s-ended` (jdoe, two hours ago, ended by the client) and
/// whose live table holds `s-live` (ann, a minute ago), and the live one's tracker.
fn two_sessions() -> (TestContext, Tracker) {
    let ctx = context();
    let (store, live) = (&ctx.shared.store, &ctx.shared.live);
    let now = now_micros();
    let ended = Tracker::open(
        record("s-ended", "jdoe@example.com", now - 7_200_000_000),
        store.clone(),
        live.clone(),
    );
    ended.close("client");
    let running = Tracker::open(
        record("s-live", "ann@example.com", now - 60_000_000),
        store.clone(),
        live.clone(),
    );
    assert!(store.sync());
    (ctx, running)
}

#[tokio::test]
async fn sessions_are_listed_and_shown() {
    let (ctx, _running) = two_sessions();
    let (store, live) = (&ctx.shared.store, &ctx.shared.live);
    #[rustfmt::skip]
    let lists: Vec<(&str, Vec<&str>)> = vec![
        ("/v1/sessions", vec!["s-live", "s-ended"]),
        ("/v1/sessions/", vec!["s-live", "s-ended"]),
        ("/v1/sessions?since=3h", vec!["s-live", "s-ended"]),
        ("/v1/sessions?since=1h", vec!["s-live"]),
        ("/v1/sessions?limit=1", vec!["s-live"]),
        ("/v1/sessions?user=jdoe%40example.com", vec!["s-ended"]),
        ("/v1/sessions?active=true", vec!["s-live"]),
        ("/v1/sessions?active=1&user=ANN%40example.com", vec!["s-live"]),
        ("/v1/sessions?active&user=jdoe%40example.com", vec![]),
    ];
    for (path, want) in lists {
        let got = ctx.call("GET", path, b"").await;
        assert_eq!(ids(&got), want, "{path}");
    }
    // A live session is listed as the live table has it, not as the log last saw it.
    let got = ctx.call("GET", "/v1/sessions", b"").await;
    let summary = serde_json::to_value(live.summary("s-live").unwrap()).unwrap();
    assert_eq!(got.body["sessions"][0], summary);

    let got = ctx.call("GET", "/v1/sessions/s-ended", b"").await;
    let stored = serde_json::to_value(store.get("s-ended").unwrap().unwrap()).unwrap();
    assert_eq!((got.status, &got.body), (StatusCode::OK, &stored));
    assert_eq!(got.body["close_reason"], "client");
    let got = ctx.call("GET", "/v1/sessions/s-live", b"").await;
    assert_eq!(
        (got.status, &got.body["id"], &got.body["close_reason"]),
        (StatusCode::OK, &json!("s-live"), &Value::Null)
    );
}

#[tokio::test]
async fn session_refusals() {
    let (ctx, _running) = two_sessions();
    #[rustfmt::skip]
    let refusals: Vec<(&str, &str, StatusCode, &str)> = vec![
        ("GET", "/v1/sessions?bogus=1", StatusCode::BAD_REQUEST, "unknown query parameter \"bogus\""),
        ("GET", "/v1/sessions?since=yesterday", StatusCode::BAD_REQUEST,
         r#"since: "yesterday": expected a number before 'y'; write a duration such as "30m", "8h" or "1h30m""#),
        ("GET", "/v1/sessions?limit=x", StatusCode::BAD_REQUEST, "limit: \"x\" is not a number"),
        ("GET", "/v1/sessions/nope", StatusCode::NOT_FOUND, "no session \"nope\""),
        ("POST", "/v1/sessions/nope/kill", StatusCode::NOT_FOUND, "no live session \"nope\""),
        ("POST", "/v1/sessions/s-ended/kill", StatusCode::NOT_FOUND, "no live session \"s-ended\""),
        ("GET", "/v1/sessions/s-live/kill", StatusCode::NOT_FOUND, "no such endpoint /v1/sessions/s-live/kill"),
        ("POST", "/v1/sessions/s-live/bogus", StatusCode::NOT_FOUND, "no such endpoint /v1/sessions/s-live/bogus"),
        ("DELETE", "/v1/sessions", StatusCode::NOT_FOUND, "no such endpoint /v1/sessions"),
        ("POST", "/v1/sessions", StatusCode::NOT_FOUND, "no such endpoint /v1/sessions"),
    ];
    for (method, path, status, error) in refusals {
        let got = ctx.call(method, path, b"").await;
        assert_eq!(
            (got.status, got.error()),
            (status, error),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn an_administrator_kills_a_live_session() {
    let (ctx, running) = two_sessions();
    let kill_switch = running.kill_switch();
    let got = ctx.call("POST", "/v1/sessions/s-live/kill", b"").await;
    assert_eq!(
        (got.status, got.body),
        (StatusCode::OK, json!({"killed": "s-live"}))
    );
    let signalled = tokio::select! {
        biased;
        () = kill_switch.notified() => true,
        () = std::future::ready(()) => false,
    };
    assert!(signalled, "the kill must wake the session");
    assert!(matches!(running.kill_reason(), KillReason::Admin));
    assert_eq!(
        running.kill_reason().user_message(),
        "sshgw: session terminated by an administrator"
    );
}
