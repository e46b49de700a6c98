//! The replies every handler builds: JSON bodies and `{"error": …}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::api::ApiError;
use crate::util::json_file;

pub type Reply = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let bytes = json_file::to_bytes(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(
        status,
        &ApiError {
            error: message.into(),
        },
    )
}
