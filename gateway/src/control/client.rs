//! Control socket client used by the CLI.

use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a request did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("sshgw is not running (no answer on {path})")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// One answer of the daemon.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// The state's `ETag` (without quotes), on state documents and changes to them.
    pub etag: Option<String>,
    pub body: serde_json::Value,
}

/// Sends one request and returns the status and JSON body.
pub async fn request(
    socket: &Path,
    method: &str,
    route: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    let answer = send(socket, method, route, None, body).await?;
    Ok((answer.status, answer.body))
}

/// Sends one request, with `If-Match: "if_match"` when given.
pub async fn send(
    socket: &Path,
    method: &str,
    route: &str,
    if_match: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<Answer, ClientError> {
    let stream = match UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ClientError::Other(anyhow::anyhow!(
                "permission denied on {}: use root or a member of the control group",
                socket.display()
            )));
        }
        Err(source) => {
            return Err(ClientError::Unreachable {
                path: socket.display().to_string(),
                source,
            });
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("control socket handshake failed")?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{route}", super::API_PREFIX))
        .header("host", "sshgw")
        .header("content-type", "application/json");
    if let Some(tag) = if_match {
        req = req.header("if-match", format!("\"{}\"", tag.trim_matches('"')));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("invalid request")?;
    let resp = sender
        .send_request(req)
        .await
        .context("control request failed")?;
    let status = resp.status();
    let etag = resp
        .headers()
        .get(hyper::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("cannot read control response")?
        .to_bytes();
    let body = serde_json::from_slice(&bytes).context("control response is not JSON")?;
    Ok(Answer { status, etag, body })
}
