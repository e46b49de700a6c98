//! The typed control client the CLI uses: one method per endpoint it calls, answering the
//! wire types of [`super::api`] (or, for documents, a [`Document`] that keeps the JSON
//! exactly as the daemon sent it).

use std::{
    marker::PhantomData,
    path::{Path, PathBuf},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::api::{
    DevicesApplied, KeyApplied, Killed, PoliciesApplied, Report, SessionList, SessionQuery, encode,
};
use crate::{identity::devices::DeviceTable, policy::model::PolicySet, sessions::SessionRecord};

/// Why a request did not produce the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("sshgw is not running (no answer on {path})")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    /// The daemon answered with an error status; `body` is its JSON (`{"error": …}`).
    #[error("control request failed ({status})")]
    Status {
        status: StatusCode,
        body: serde_json::Value,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A JSON answer as the daemon sent it, with its `ETag` (on state documents and changes).
#[derive(Debug)]
pub struct Document<T> {
    pub json: serde_json::Value,
    /// Without quotes.
    pub etag: Option<String>,
    kind: PhantomData<T>,
}

impl<T: DeserializeOwned> Document<T> {
    /// The answer as its wire type.
    pub fn value(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.json.clone())
    }
}

/// A client of the daemon's control socket.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// Whether a daemon answers on the socket (with any status).
    pub async fn is_running(&self) -> bool {
        self.send::<Report>(Method::GET, "/status", None, None)
            .await
            .is_ok()
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Report, ClientError> {
        let doc = self.call(Method::GET, "/status", None, None).await?;
        Ok(doc.value().map_err(anyhow::Error::from)?)
    }

    /// `GET /v1/policies`, with its ETag.
    pub async fn policies(&self) -> Result<Document<PolicySet>, ClientError> {
        self.call(Method::GET, "/policies", None, None).await
    }

    /// `PUT /v1/policies`: replaces the set with `text`, only over `if_match` when given.
    pub async fn push_policies(
        &self,
        text: String,
        if_match: Option<&str>,
    ) -> Result<Document<PoliciesApplied>, ClientError> {
        self.call(Method::PUT, "/policies", if_match, Some(text))
            .await
    }

    /// `GET /v1/devices`, with its ETag.
    pub async fn devices(&self) -> Result<Document<DeviceTable>, ClientError> {
        self.call(Method::GET, "/devices", None, None).await
    }

    /// `PUT /v1/devices`: replaces the table with `text`, only over `if_match` when given.
    pub async fn push_devices(
        &self,
        text: String,
        if_match: Option<&str>,
    ) -> Result<Document<DevicesApplied>, ClientError> {
        self.call(Method::PUT, "/devices", if_match, Some(text))
            .await
    }

    /// `GET /v1/sessions` with `query`'s filters.
    pub async fn sessions(
        &self,
        query: &SessionQuery,
    ) -> Result<Document<SessionList>, ClientError> {
        let query = query.to_query();
        let route = if query.is_empty() {
            "/sessions".to_string()
        } else {
            format!("/sessions?{query}")
        };
        self.call(Method::GET, &route, None, None).await
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, id: &str) -> Result<Document<SessionRecord>, ClientError> {
        let route = format!("/sessions/{}", encode(id));
        self.call(Method::GET, &route, None, None).await
    }

    /// `POST /v1/sessions/{id}/kill`.
    pub async fn kill(&self, id: &str) -> Result<Document<Killed>, ClientError> {
        let route = format!("/sessions/{}/kill", encode(id));
        self.call(Method::POST, &route, None, None).await
    }

    /// `PUT /v1/recording/key` with the base64 public key.
    pub async fn set_recording_key(&self, key: &str) -> Result<Document<KeyApplied>, ClientError> {
        let body = Some(key.to_string());
        self.call(Method::PUT, "/recording/key", None, body).await
    }

    /// One request whose answer must be a success; an error status is
    /// [`ClientError::Status`].
    async fn call<T>(
        &self,
        method: Method,
        route: &str,
        if_match: Option<&str>,
        body: Option<String>,
    ) -> Result<Document<T>, ClientError> {
        let (status, doc) = self.send(method, route, if_match, body).await?;
        if status.is_success() {
            Ok(doc)
        } else {
            Err(ClientError::Status {
                status,
                body: doc.json,
            })
        }
    }

    /// Sends one request under the API prefix, with `If-Match: "if_match"` when given,
    /// and returns the status and the JSON answer.
    async fn send<T>(
        &self,
        method: Method,
        route: &str,
        if_match: Option<&str>,
        body: Option<String>,
    ) -> Result<(StatusCode, Document<T>), ClientError> {
        let stream = connect(&self.socket).await?;
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
        let json = serde_json::from_slice(&bytes).context("control response is not JSON")?;
        let kind = PhantomData;
        Ok((status, Document { json, etag, kind }))
    }
}

async fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    match UnixStream::connect(socket).await {
        Ok(stream) => Ok(stream),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(ClientError::Other(anyhow::anyhow!(
                "permission denied on {}: use root or a member of the control group",
                socket.display()
            )))
        }
        Err(source) => Err(ClientError::Unreachable {
            path: socket.display().to_string(),
            source,
        }),
    }
}
