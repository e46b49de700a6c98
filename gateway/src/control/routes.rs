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
//! `/sessions…`: see [`super::sessions`].

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use crate::{
    daemon::Shared,
    devices::{Device, DeviceTable},
    json_file,
    policies::PolicySet,
    recording::keys::RecordingKey,
    state::ApplyError,
};

pub type Reply = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics_reply(shared: &Shared) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(shared.metrics())))
        .expect("static response parts are valid")
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
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

fn bad_request(message: String) -> Reply {
    error(StatusCode::BAD_REQUEST, message)
}

fn applied(result: Result<(), ApplyError>, what: impl Serialize) -> Reply {
    match result {
        Ok(()) => json(StatusCode::OK, &what),
        Err(ApplyError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(ApplyError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(e @ ApplyError::Internal(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn validated_policies(set: PolicySet) -> anyhow::Result<PolicySet> {
    set.validate()?;
    Ok(set)
}

fn validated_devices(table: DeviceTable) -> anyhow::Result<DeviceTable> {
    table.validate()?;
    Ok(table)
}

pub async fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
    shared: &Shared,
) -> Reply {
    if path == "/metrics" && method == Method::GET {
        return metrics_reply(shared);
    }
    let Some(route) = path.strip_prefix(super::API_PREFIX) else {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint {path}"));
    };
    let state = &shared.state;
    match (method, route) {
        (m, r) if r == "/sessions" || r.starts_with("/sessions/") => {
            super::sessions::route(m, r, query, shared).await
        }
        (&Method::PUT, "/recording/key") => set_recording_key(&body, shared),
        (&Method::GET, "/status") => match shared.status() {
            Ok(report) => json(StatusCode::OK, &report),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        (&Method::GET, "/policies") => json(StatusCode::OK, &state.snapshot().policies),
        (&Method::PUT, "/policies") => match parse(&body, validated_policies) {
            Ok(set) => {
                let count = set.policies.len();
                applied(
                    state.replace_policies(set).await,
                    serde_json::json!({ "applied": true, "policies": count }),
                )
            }
            Err(message) => bad_request(message),
        },
        (&Method::POST, "/policies/validate") => match parse(&body, validated_policies) {
            Ok(set) => json(
                StatusCode::OK,
                &serde_json::json!({ "valid": true, "policies": set.policies.len() }),
            ),
            Err(message) => bad_request(message),
        },
        (&Method::GET, "/devices") => json(StatusCode::OK, &state.snapshot().devices),
        (&Method::PUT, "/devices") => match parse(&body, validated_devices) {
            Ok(table) => {
                let count = table.devices.len();
                applied(
                    state.replace_devices(table).await,
                    serde_json::json!({ "applied": true, "devices": count }),
                )
            }
            Err(message) => bad_request(message),
        },
        (m, r) if r.starts_with("/devices/") => {
            let id = &r["/devices/".len()..];
            if id.is_empty() || id.contains('/') {
                return error(StatusCode::NOT_FOUND, format!("no such endpoint {path}"));
            }
            match *m {
                Method::PUT => match parse::<Device>(&body, Ok) {
                    Ok(device) if device.id != id => error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "id: {:?} does not match the path's device id {id:?}",
                            device.id
                        ),
                    ),
                    Ok(device) => applied(
                        state.upsert_device(device).await,
                        serde_json::json!({ "applied": true, "device": id }),
                    ),
                    Err(message) => bad_request(message),
                },
                Method::DELETE => applied(
                    state.delete_device(id).await,
                    serde_json::json!({ "deleted": id }),
                ),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "use PUT or DELETE"),
            }
        }
        (_, "/status" | "/policies" | "/policies/validate" | "/devices") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
    }
}

/// Replaces the recording key (body: the base64 public key, as in `NAME.pub`). New
/// channels use it at once; it is kept in the state dir and wins over the config file.
fn set_recording_key(body: &[u8], shared: &Shared) -> Reply {
    let text = String::from_utf8_lossy(body);
    let key = match RecordingKey::parse(text.trim()) {
        Ok(key) => key,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("public key: {e:#}")),
    };
    let path = shared.config.recording_key_path();
    let tmp = path.with_extension("pub.tmp");
    let written = std::fs::write(&tmp, key.to_base64())
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the key in {}: {e}", path.display()),
        );
    }
    *shared
        .relay
        .recording
        .key
        .write()
        .expect("recording key lock poisoned") = Some(std::sync::Arc::new(key));
    tracing::info!(path = %path.display(), "recording key replaced");
    json(StatusCode::OK, &serde_json::json!({ "applied": true }))
}
