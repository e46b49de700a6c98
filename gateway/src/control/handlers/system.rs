//! The daemon itself: its status, its Prometheus metrics, and the recording key it
//! encrypts new channels to.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::{Outcome, Request, bad_request, plain};
use crate::{
    control::{
        Context,
        admin_log::Evidence,
        api::KeyApplied,
        reply::{Reply, error, json},
    },
    recording::keys::RecordingKey,
};

/// `GET /v1/status`.
pub async fn status(_: &Request<'_>, ctx: &Context) -> Outcome {
    plain(match ctx.status() {
        Ok(report) => json(StatusCode::OK, &report),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    })
}

/// `GET /metrics`: Prometheus text format (on the socket and on the metrics listener).
pub fn metrics(ctx: &Context) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(ctx.metrics())))
        .expect("static response parts are valid")
}

/// `PUT /v1/recording/key`: replaces the recording key (body: the base64 public key, as
/// in `NAME.pub`). New channels use it at once; it is kept in the state dir and wins over
/// the config file. The file and the key in memory change together under the state's
/// writer lock, so concurrent calls (and SIGHUP) leave both holding the same key.
pub async fn set_recording_key(req: &Request<'_>, ctx: &Context) -> Outcome {
    let text = String::from_utf8_lossy(req.body);
    let key = match RecordingKey::parse(text.trim()) {
        Ok(key) => key,
        Err(e) => return bad_request(format!("public key: {e:#}")),
    };
    let keys = &ctx.relay.recording.key;
    let encoded = key.to_base64();
    let stored = ctx.state.with_writer_lock(|| keys.replace(key)).await;
    if let Err(e) = stored {
        let message = format!("cannot store the key in {}: {e:#}", keys.path().display());
        return plain(error(StatusCode::INTERNAL_SERVER_ERROR, message));
    }
    let fingerprint = key_fingerprint(&encoded);
    let evidence = Evidence {
        recording_key: Some((encoded, fingerprint)),
        ..Evidence::default()
    };
    (
        json(StatusCode::OK, &KeyApplied { applied: true }),
        evidence,
    )
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
