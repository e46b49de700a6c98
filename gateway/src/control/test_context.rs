//! What the in-process control API tests run against: a daemon's shared state on a temporary
//! state dir, with no datapath, and a way to call the route dispatcher directly.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode, header::ETAG};

use super::{
    admin_log::Peer,
    context::Context,
    routes::{self, Call},
};
use crate::{
    config::Config,
    identity::devices::DeviceTable,
    policy::model::PolicySet,
    relay::RelayContext,
    sessions::{live::LiveSessions, store::SessionStore},
    state::{self, LiveState},
    util::json_file,
};

/// The lab's device table and policy set, as the netns control API tests start with.
pub const DEVICES: &str = r#"{"devices": [{"id": "laptop-jdoe",
    "addresses": ["100.96.0.7", "fd00:96::7"], "interface": "r0",
    "user": {"email": "jdoe@example.com", "groups": ["developers"]},
    "posture": ["disk-encryption"]}]}"#;
pub const POLICIES: &str = r#"{"policies": [{"id": "audit-lab", "name": "Audit lab server",
    "precedence": 10, "enabled": true, "action": "audit_ssh",
    "destinations": ["203.0.113.10/32", "2001:db8:1::10/128"], "ports": [22]}]}"#;

pub struct TestContext {
    pub dir: tempfile::TempDir,
    pub shared: Arc<Context>,
}

/// One answer: status, `ETag` (unquoted) and the body as JSON (or as a string when it is
/// not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub body: serde_json::Value,
}

impl Answer {
    /// The `error` text of an error answer.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// Everything the control API reaches, built as `sshgw run` builds it, minus the datapath.
pub fn context() -> TestContext {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "state_dir = {:?}\ncontrol_socket = {:?}\n[datapath]\ninterfaces = [\"r0\"]\n",
        dir.path().display().to_string(),
        dir.path().join("control.sock").display().to_string(),
    ))
    .unwrap();
    let devices = DeviceTable::parse(DEVICES).unwrap();
    let policies = PolicySet::parse(POLICIES).unwrap();
    std::fs::write(
        config.devices_path(),
        json_file::to_bytes(&devices).unwrap(),
    )
    .unwrap();
    std::fs::write(
        config.policies_path(),
        json_file::to_bytes(&policies).unwrap(),
    )
    .unwrap();
    let (devices, policies) = state::load(&config).unwrap();
    let no_datapath = Arc::new(std::sync::Mutex::new(None));
    let state = Arc::new(LiveState::new(
        config.clone(),
        devices,
        policies,
        no_datapath,
    ));
    let store = SessionStore::open(&config.session_log_path()).unwrap();
    let live = Arc::new(LiveSessions::default());
    let relay = RelayContext::for_tests(&config, &state, &store, &live);
    let shared = Context::without_datapath(config, state, store, live, relay);
    TestContext {
        dir,
        shared: Arc::new(shared),
    }
}

impl TestContext {
    /// `method path` with `body`, straight into the route dispatcher.
    pub async fn call(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        self.call_with(method, path, None, body).await
    }

    /// Like [`TestContext::call`], with a raw `If-Match` header; `path` may carry a query.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let call = Call {
            method: &method,
            path,
            query,
            if_match,
            body: Bytes::copy_from_slice(body),
            peer: Peer {
                uid: 0,
                gid: 0,
                pid: Some(std::process::id() as i32),
            },
        };
        let reply = routes::route(call, &self.shared).await;
        answer(reply).await
    }
}

async fn answer(reply: super::reply::Reply) -> Answer {
    let status = reply.status();
    let etag = reply
        .headers()
        .get(ETAG)
        .map(|v| v.to_str().unwrap().trim_matches('"').to_owned());
    let bytes = reply.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, etag, body }
}
