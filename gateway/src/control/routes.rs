//! The API's endpoints, all under [`super::API_PREFIX`]:
//!
//! | method | path | |
//! |---|---|---|
//! | GET | /status | datapath status |
//! | GET, PUT | /policies | the policy set; PUT replaces it whole |
//! | POST | /policies/validate | validate a policy set without applying it |
//! | GET, PUT | /devices | the device table; PUT replaces it whole |
//! | PUT, DELETE | /devices/{id} | upsert or delete one device |
//! | PUT | /recording/key | replace the recording public key (base64 body) |
//!
//! GETs of the state documents and every change to them answer with the state's `ETag`;
//! changes take an optional `If-Match` (see [`super::etag`]). Every change is logged by
//! [`super::admin_log`]. `/sessions…`: see [`super::sessions`].

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use super::{
    Context,
    admin_log::{self, Evidence, Peer},
    etag::{parse_if_match, with_etag},
    reply::{Reply, error, json},
};
use crate::{
    identity::devices::{Device, DeviceTable},
    policy::model::PolicySet,
    recording::keys::RecordingKey,
    state::{ApplyError, Expect, Snapshot},
    util::json_file,
};

/// One request, as the routes see it.
pub struct Call<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The raw `If-Match` header, if any.
    pub if_match: Option<&'a str>,
    pub body: Bytes,
    pub peer: Peer,
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics_reply(shared: &Context) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(shared.metrics())))
        .expect("static response parts are valid")
}

/// Parses and validates a JSON body; the error names the failing field.
fn parse<T: serde::de::DeserializeOwned>(
    body: &[u8],
    validate: impl FnOnce(T) -> anyhow::Result<T>,
) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| "request body is not UTF-8".to_string())?;
    json_file::parse(text)
        .and_then(validate)
        .map_err(|e| format!("{e:#}"))
}

fn bad_request(message: String) -> (Reply, Evidence) {
    (error(StatusCode::BAD_REQUEST, message), Evidence::default())
}

/// Which document of the state a change is about.
#[derive(Clone, Copy)]
enum Document {
    Devices,
    Policies,
}

impl Document {
    fn etag(self, snapshot: &Snapshot) -> &str {
        match self {
            Document::Devices => &snapshot.devices_etag,
            Document::Policies => &snapshot.policies_etag,
        }
    }
}

/// The answer to a change of `doc`: its new ETag on success, the current one on 412.
fn applied(
    result: Result<std::sync::Arc<Snapshot>, ApplyError>,
    doc: Document,
    shared: &Context,
    what: impl Serialize,
) -> (Reply, Evidence) {
    let reply = match result {
        Ok(next) => {
            let etag = doc.etag(&next);
            return (
                with_etag(json(StatusCode::OK, &what), etag),
                Evidence::digest(etag),
            );
        }
        Err(ApplyError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(ApplyError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(ApplyError::Stale(m)) => with_etag(
            error(StatusCode::PRECONDITION_FAILED, m),
            doc.etag(&shared.state.snapshot()),
        ),
        Err(e @ ApplyError::Internal(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    (reply, Evidence::default())
}

fn validated_policies(set: PolicySet) -> anyhow::Result<PolicySet> {
    set.validate()?;
    Ok(set)
}

fn validated_devices(table: DeviceTable) -> anyhow::Result<DeviceTable> {
    table.validate()?;
    Ok(table)
}

/// Answers one request; changes are logged as admin actions.
pub async fn route(call: Call<'_>, shared: &Context) -> Reply {
    let (reply, evidence) = dispatch(&call, shared).await;
    if admin_log::is_mutating(call.method, call.path) {
        admin_log::record(
            &call.peer,
            call.method,
            call.path,
            reply.status(),
            &evidence,
        );
    }
    reply
}

async fn dispatch(call: &Call<'_>, shared: &Context) -> (Reply, Evidence) {
    let (method, path) = (call.method, call.path);
    if path == "/metrics" && method == Method::GET {
        return (metrics_reply(shared), Evidence::default());
    }
    let Some(route) = path.strip_prefix(super::API_PREFIX) else {
        return not_found(path);
    };
    let expect = match parse_if_match(call.if_match) {
        Ok(expect) => expect,
        Err(message) => return bad_request(message),
    };
    let snapshot = shared.state.snapshot();
    let reply = match (method, route) {
        (m, r) if r == "/sessions" || r.starts_with("/sessions/") => {
            super::sessions::route(m, r, call.query, shared).await
        }
        (&Method::PUT, "/recording/key") => return set_recording_key(&call.body, shared).await,
        (&Method::GET, "/status") => match shared.status() {
            Ok(report) => json(StatusCode::OK, &report),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        (&Method::GET, "/policies") => with_etag(
            json(StatusCode::OK, &snapshot.policies),
            &snapshot.policies_etag,
        ),
        (&Method::PUT, "/policies") => return put_policies(&call.body, &expect, shared).await,
        (&Method::POST, "/policies/validate") => match parse(&call.body, validated_policies) {
            Ok(set) => json(
                StatusCode::OK,
                &serde_json::json!({ "valid": true, "policies": set.policies.len() }),
            ),
            Err(message) => return bad_request(message),
        },
        (&Method::GET, "/devices") => with_etag(
            json(StatusCode::OK, &snapshot.devices),
            &snapshot.devices_etag,
        ),
        (&Method::PUT, "/devices") => return put_devices(&call.body, &expect, shared).await,
        (m, r) if r.starts_with("/devices/") => {
            let id = &r["/devices/".len()..];
            if id.is_empty() || id.contains('/') {
                return not_found(path);
            }
            return one_device(m, id, &call.body, &expect, shared).await;
        }
        (_, "/status" | "/policies" | "/policies/validate" | "/devices") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {path}"),
        ),
        _ => return not_found(path),
    };
    (reply, Evidence::default())
}

fn not_found(path: &str) -> (Reply, Evidence) {
    (
        error(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
        Evidence::default(),
    )
}

async fn put_policies(body: &[u8], expect: &Expect, shared: &Context) -> (Reply, Evidence) {
    match parse(body, validated_policies) {
        Ok(set) => {
            let count = set.policies.len();
            applied(
                shared.state.replace_policies(set, expect).await,
                Document::Policies,
                shared,
                serde_json::json!({ "applied": true, "policies": count }),
            )
        }
        Err(message) => bad_request(message),
    }
}

async fn put_devices(body: &[u8], expect: &Expect, shared: &Context) -> (Reply, Evidence) {
    match parse(body, validated_devices) {
        Ok(table) => {
            let count = table.devices.len();
            applied(
                shared.state.replace_devices(table, expect).await,
                Document::Devices,
                shared,
                serde_json::json!({ "applied": true, "devices": count }),
            )
        }
        Err(message) => bad_request(message),
    }
}

/// `PUT` or `DELETE /devices/{id}`.
async fn one_device(
    method: &Method,
    id: &str,
    body: &[u8],
    expect: &Expect,
    shared: &Context,
) -> (Reply, Evidence) {
    let state = &shared.state;
    match *method {
        Method::PUT => match parse::<Device>(body, Ok) {
            Ok(device) if device.id != id => bad_request(format!(
                "id: {:?} does not match the path's device id {id:?}",
                device.id
            )),
            Ok(device) => applied(
                state.upsert_device(device, expect).await,
                Document::Devices,
                shared,
                serde_json::json!({ "applied": true, "device": id }),
            ),
            Err(message) => bad_request(message),
        },
        Method::DELETE => applied(
            state.delete_device(id, expect).await,
            Document::Devices,
            shared,
            serde_json::json!({ "deleted": id }),
        ),
        _ => (
            error(StatusCode::METHOD_NOT_ALLOWED, "use PUT or DELETE"),
            Evidence::default(),
        ),
    }
}

/// Replaces the recording key (body: the base64 public key, as in `NAME.pub`). New
/// channels use it at once; it is kept in the state dir and wins over the config file.
/// The file and the key in memory change together under the state's writer lock, so
/// concurrent calls (and SIGHUP) leave both holding the same key.
async fn set_recording_key(body: &[u8], shared: &Context) -> (Reply, Evidence) {
    let text = String::from_utf8_lossy(body);
    let key = match RecordingKey::parse(text.trim()) {
        Ok(key) => key,
        Err(e) => return bad_request(format!("public key: {e:#}")),
    };
    let keys = &shared.relay.recording.key;
    let encoded = key.to_base64();
    let stored = shared.state.with_writer_lock(|| keys.replace(key)).await;
    if let Err(e) = stored {
        let message = format!("cannot store the key in {}: {e:#}", keys.path().display());
        return (
            error(StatusCode::INTERNAL_SERVER_ERROR, message),
            Evidence::default(),
        );
    }
    let fingerprint = key_fingerprint(&encoded);
    let evidence = Evidence {
        recording_key: Some((encoded, fingerprint)),
        ..Evidence::default()
    };
    let reply = json(StatusCode::OK, &serde_json::json!({ "applied": true }));
    (reply, evidence)
}

/// `SHA256:` and the unpadded base64 SHA-256 of the raw key, as OpenSSH shows fingerprints.
fn key_fingerprint(encoded: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    let digest = sha2::Sha256::digest(raw);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}
