//! Control socket server: HTTP/1.1 + JSON over a Unix socket.
//!
//! Only root, the daemon's own user and members of `control_group` may connect (checked
//! with `SO_PEERCRED`). Bodies are capped and slow clients are cut off.

use std::{convert::Infallible, os::unix::fs::PermissionsExt, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::unistd::{Gid, Group, Uid, User};
use tokio::net::UnixListener;

use super::routes;
use crate::{config::Config, daemon::Shared};

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

pub async fn serve(control: ControlListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match control.listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let allowed = match stream.peer_cred() {
            Ok(cred) => {
                let ok = authorized(cred.uid(), cred.gid(), control.group);
                if !ok {
                    tracing::warn!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "control socket peer refused");
                }
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read control socket peer credentials");
                false
            }
        };
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

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    allowed: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !allowed {
        return Ok(routes::error(
            StatusCode::FORBIDDEN,
            "only root and members of the control group may use this socket",
        ));
    }
    let (parts, body) = req.into_parts();
    let body = if matches!(parts.method, Method::PUT | Method::POST) {
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Ok(routes::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {} MiB", MAX_BODY / (1024 * 1024)),
                ));
            }
            Ok(Err(e)) => {
                return Ok(routes::error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read body: {e}"),
                ));
            }
            Err(_) => {
                return Ok(routes::error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body not received within {}s",
                        BODY_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    } else {
        Bytes::new()
    };
    Ok(routes::route(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        body,
        &shared,
    )
    .await)
}

/// `[metrics] listen`: serves only `GET /metrics` on a TCP address (no credentials are
/// available on TCP, so nothing else is exposed there).
pub async fn serve_metrics(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
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
                            routes::metrics_reply(&shared)
                        } else {
                            routes::error(StatusCode::NOT_FOUND, "only GET /metrics is served here")
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
