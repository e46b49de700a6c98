//! Administrative actions are evidence too: every request that may change something
//! (any method but GET, except `POST /v1/policies/validate`) is logged as an `admin action`
//! event with the caller's credentials (`SO_PEERCRED`: uid, gid, pid), the route, the
//! answer's status, and what the new state is: the SHA-256 of the stored document (its
//! ETag) or the new recording key. The same action is kept in the session log
//! (`admin_actions`, and an `admin.action` outbox event for the central index and SIEMs).

use hyper::{Method, StatusCode};

/// The caller of a control request, as the kernel reports it for the connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// What a change left in force, for the log.
#[derive(Debug, Default)]
pub struct Evidence {
    /// SHA-256 (hex) of the device table or policy set now in force.
    pub digest: Option<String>,
    /// The recording public key now in force (base64) and its SHA-256 fingerprint.
    pub recording_key: Option<(String, String)>,
}

impl Evidence {
    pub fn digest(digest: &str) -> Self {
        Evidence {
            digest: Some(digest.to_owned()),
            ..Evidence::default()
        }
    }
}

/// Whether the request is one that may change state.
pub fn is_mutating(method: &Method, path: &str) -> bool {
    *method != Method::GET
        && *method != Method::HEAD
        && !(*method == Method::POST && path == "/v1/policies/validate")
}

/// Logs one administrative request with its outcome (`status`; the state fields only when
/// it was applied).
pub fn record(peer: &Peer, method: &Method, path: &str, status: StatusCode, evidence: &Evidence) {
    let (key, fingerprint) = match &evidence.recording_key {
        Some((key, fingerprint)) => (Some(key.as_str()), Some(fingerprint.as_str())),
        None => (None, None),
    };
    tracing::info!(
        uid = peer.uid,
        gid = peer.gid,
        pid = peer.pid,
        method = %method,
        route = %path,
        status = status.as_u16(),
        digest = evidence.digest.as_deref(),
        recording_key = key,
        recording_key_fingerprint = fingerprint,
        "admin action"
    );
}

/// The action as the session log keeps it.
pub fn action(
    peer: &Peer,
    method: &Method,
    path: &str,
    status: StatusCode,
    evidence: &Evidence,
) -> crate::sessions::outbox::AdminAction {
    crate::sessions::outbox::AdminAction {
        at: crate::sessions::now_micros(),
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        method: method.to_string(),
        route: path.to_owned(),
        status: status.as_u16(),
        digest: evidence.digest.clone(),
        recording_key_fingerprint: evidence.recording_key.as_ref().map(|(_, f)| f.clone()),
    }
}
