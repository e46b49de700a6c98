//! Control socket server: HTTP/1.1 + JSON over a Unix socket.
//!
//! Only root, the daemon's own user and members of `control_group` may connect (checked
//! with `SO_PEERCRED`). Bodies are capped and slow clients are cut off.

use std::{convert::Infallible, os::unix::fs::PermissionsExt, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::unistd::{Gid, Group, Uid, User};
use tokio::net::UnixListener;

use super::{
    Context,
    admin_log::Peer,
    handlers, reply,
    routes::{self, Call},
};
use crate::config::Config;

/// Slow clients are cut off after this long without a complete request header…
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// …or without a complete body.
const BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest accepted request body (10,000 devices fit in a few MiB).
pub const MAX_BODY: usize = 32 * 1024 * 1024;

pub struct ControlListener {
    listener: UnixListener,
    group: Option<Gid>,
}

/// Binds the socket (mode 0660, group `control_group`), refusing to steal it from another
/// live daemon.
pub async fn bind(config: &Config) -> Result<ControlListener> {
    let path = &config.control_socket;
    let group = match &config.control_group {
        Some(name) => Some(
            Group::from_name(name)
                .with_context(|| format!("cannot look up control_group {name:?}"))?
                .with_context(|| format!("control_group: no group named {name:?}"))?
                .gid,
        ),
        None => None,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another sshgw is already listening on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set mode of {}", path.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    Ok(ControlListener { listener, group })
}

/// Whether the peer may use the API: root, our own user, or a member of the group.
fn authorized(uid: u32, gid: u32, group: Option<Gid>) -> bool {
    if uid == 0 || Uid::from_raw(uid) == Uid::effective() {
        return true;
    }
    let Some(group) = group else { return false };
    if Gid::from_raw(gid) == group {
        return true;
    }
    // Supplementary groups of the peer's user.
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).is_ok_and(|groups| groups.contains(&group))
}

pub async fn serve(control: ControlListener, shared: Arc<Context>) {
    loop {
        let (stream, _) = match control.listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Some(Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read control socket peer credentials");
                None
            }
        };
        let allowed = peer.filter(|p| {
            let ok = authorized(p.uid, p.gid, control.group);
            if !ok {
                tracing::warn!(uid = p.uid, gid = p.gid, pid = ?p.pid, "control socket peer refused");
            }
            ok
        });
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone(), allowed));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

/// Answers one request of a connection whose peer is `allowed` (`None`: refused).
async fn handle(
    req: Request<Incoming>,
    shared: Arc<Context>,
    allowed: Option<Peer>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(peer) = allowed else {
        return Ok(reply::error(
            StatusCode::FORBIDDEN,
            "only root and members of the control group may use this socket",
        ));
    };
    let (parts, body) = req.into_parts();
    let body = if matches!(parts.method, Method::PUT | Method::POST) {
        match read_body(body).await {
            Ok(bytes) => bytes,
            Err(reply) => return Ok(reply),
        }
    } else {
        Bytes::new()
    };
    let if_match = match parts
        .headers
        .get(hyper::header::IF_MATCH)
        .map(|v| v.to_str())
    {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return Ok(reply::error(
                StatusCode::BAD_REQUEST,
                "If-Match: not a visible ASCII header value",
            ));
        }
    };
    let call = Call {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        if_match,
        body,
        peer,
    };
    Ok(routes::route(call, &shared).await)
}

/// The request body, within [`MAX_BODY`] and [`BODY_TIMEOUT`], or the error reply.
async fn read_body(body: Incoming) -> Result<Bytes, Response<Full<Bytes>>> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {} MiB", MAX_BODY / (1024 * 1024)),
        )),
        Ok(Err(e)) => Err(reply::error(
            StatusCode::BAD_REQUEST,
            format!("cannot read body: {e}"),
        )),
        Err(_) => Err(reply::error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

pub async fn serve_metrics(listener: tokio::net::TcpListener, shared: Arc<Context>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    Ok::<_, Infallible>(
                        if req.method() == Method::GET && req.uri().path() == "/metrics" {
                            handlers::system::metrics(&shared)
                        } else {
                            reply::error(StatusCode::NOT_FOUND, "only GET /metrics is served here")
                        },
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
