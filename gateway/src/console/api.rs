//! Requests: the page's files (no token: the page must load to ask for it), and the JSON
//! API under `/api/v1/` (token or client certificate), every answer with the same
//! security headers.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use serde_json::{Value, json};

use super::{Console, assets, body::Body, chart, query, recordings::Missing, source};
use crate::control::client::{Client, ClientError};

type Reply = Response<Body>;

/// The page runs only its own scripts and the wasm reader, talks only to this origin and
/// cannot be framed.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// Sessions the chart counts at most (the newest).
const CHART_ROWS: u32 = 100_000;

pub async fn handle(
    console: &Console,
    req: Request<Incoming>,
    peer: SocketAddr,
    by_cert: bool,
) -> Reply {
    let mut reply = match req.uri().path().strip_prefix("/api/") {
        Some(_) if !same_site(&req) => error(
            StatusCode::FORBIDDEN,
            "cross-site request refused: the API answers the console's own page only",
        ),
        Some(rest) => {
            if by_cert || authorized(console, &req) {
                api(console, &req, rest, peer).await
            } else {
                unauthorized()
            }
        }
        None => file(&req),
    };
    secure(&mut reply);
    reply
}

fn authorized(console: &Console, req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| console.token.accepts(v.as_bytes()))
}

/// Whether the browser says the request comes from the console's own page (or from no
/// page: curl, scripts). A client certificate goes with any request the browser sends to
/// this host, also one another site makes it send: without this, such a site could kill a
/// session with the auditor's certificate.
fn same_site(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    let fetch_site = headers
        .get("sec-fetch-site")
        .is_none_or(|v| v == "same-origin" || v == "none");
    let origin = match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, rest)| rest.as_bytes() == host.as_bytes()),
        (Some(_), None) => false,
    };
    fetch_site && origin
}

fn unauthorized() -> Reply {
    let mut reply = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong access token: send Authorization: Bearer TOKEN (the token is in \
         <state_dir>/console.token)",
    );
    reply.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sshgw console\""),
    );
    reply
}

fn secure(reply: &mut Reply) {
    let headers = reply.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

fn file(req: &Request<Incoming>) -> Reply {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the page's files are read with GET",
        );
    }
    match assets::find(req.uri().path()) {
        Some((bytes, content_type)) => {
            let mut reply = Response::new(Body::new(Bytes::from_static(bytes)));
            let headers = reply.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            reply
        }
        None => error(StatusCode::NOT_FOUND, "no such file"),
    }
}

async fn api(console: &Console, req: &Request<Incoming>, rest: &str, peer: SocketAddr) -> Reply {
    let segments: Vec<String> = rest
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let q = req.uri().query();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["v1", "info"]) => info(console).await,
        (&Method::GET, ["v1", "sessions"]) => list(console, q).await,
        (&Method::GET, ["v1", "chart"]) => chart(console, q).await,
        (&Method::GET, ["v1", "live"]) => live(console).await,
        (&Method::GET, ["v1", "sessions", id]) => session(console, id, q).await,
        (&Method::GET, ["v1", "sessions", id, "channels", n, "recording"]) => {
            recording(console, id, n, q).await
        }
        (&Method::POST, ["v1", "sessions", id, "kill"]) => kill(console, id, peer).await,
        (_, ["v1", "info" | "sessions" | "chart" | "live"]) | (_, ["v1", "sessions", _, ..]) => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed here", req.method()),
            )
        }
        _ => error(StatusCode::NOT_FOUND, format!("no API at /api/{rest}")),
    }
}

pub fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut reply = Response::new(Body::new(body.to_string()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json_reply(status, &json!({ "error": message.into() }))
}

fn failed(e: anyhow::Error) -> Reply {
    error(StatusCode::BAD_GATEWAY, format!("{e:#}"))
}

async fn info(console: &Console) -> Reply {
    let live = Client::new(&console.control_socket).is_running().await;
    json_reply(
        StatusCode::OK,
        &json!({
            "source": console.source.name(),
            "router_id": console.source.router(),
            "live": live,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

async fn list(console: &Console, q: Option<&str>) -> Reply {
    let q = match query::parse(q) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match console.source.list(&q).await {
        Ok(body) => json_reply(StatusCode::OK, &body),
        Err(e) => failed(e),
    }
}

async fn chart(console: &Console, q: Option<&str>) -> Reply {
    let q = match query::parse(q) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match console.source.starts(&q, CHART_ROWS).await {
        Ok(starts) => {
            let mut chart = chart::buckets(&starts, q.by.as_deref() == Some("user"));
            // The count above the chart covers every match; say when the chart does not.
            chart["truncated"] = json!(starts.len() as u32 >= CHART_ROWS);
            json_reply(StatusCode::OK, &chart)
        }
        Err(e) => failed(e),
    }
}

/// `?router=R` of a session's URLs.
fn router_of(q: Option<&str>) -> Option<String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .find(|(k, v)| k == "router" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

async fn find(console: &Console, id: &str, q: Option<&str>) -> Result<source::Found, Reply> {
    match console.source.show(id, router_of(q).as_deref()).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, format!("no session {id:?}"))),
        Err(e) => Err(failed(e)),
    }
}

async fn session(console: &Console, id: &str, q: Option<&str>) -> Reply {
    match find(console, id, q).await {
        Ok(found) => json_reply(StatusCode::OK, &source::detail(&found)),
        Err(reply) => reply,
    }
}

async fn recording(console: &Console, id: &str, n: &str, q: Option<&str>) -> Reply {
    let Ok(n) = n.parse::<u32>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("channel {n:?} is not a number"),
        );
    };
    let found = match find(console, id, q).await {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let Some(channel) = found.session.channels.iter().find(|c| c.channel == n) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("session {id:?} has no channel {n}"),
        );
    };
    match console.recordings.get(channel).await {
        Ok((bytes, held)) => {
            let mut reply = Response::new(Body::held(bytes, held));
            reply.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            reply
        }
        Err(Missing::NotFound(message)) => error(StatusCode::NOT_FOUND, message),
        Err(Missing::TooLarge(message)) => error(StatusCode::PAYLOAD_TOO_LARGE, message),
        Err(Missing::Failed(e)) => failed(e),
    }
}

async fn live(console: &Console) -> Reply {
    let client = Client::new(&console.control_socket);
    let query = crate::control::api::SessionQuery {
        active: true,
        ..Default::default()
    };
    match client.sessions(&query).await.map(|d| d.value()) {
        Ok(Ok(list)) => json_reply(
            StatusCode::OK,
            &json!({ "available": true, "reason": null, "sessions": list.sessions }),
        ),
        Ok(Err(e)) => failed(e.into()),
        Err(e) => json_reply(
            StatusCode::OK,
            &json!({
                "available": false,
                "reason": format!("no live sessions from the daemon: {e}"),
                "sessions": [],
            }),
        ),
    }
}

async fn kill(console: &Console, id: &str, peer: SocketAddr) -> Reply {
    let client = Client::new(&console.control_socket);
    match client.kill(id).await {
        Ok(_) => {
            eprintln!("sshgw console: {peer} killed session {id:?}");
            json_reply(StatusCode::OK, &json!({ "killed": id }))
        }
        Err(ClientError::Unreachable { .. }) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon does not answer on its control socket: it is not running, or this \
             console's user may not use the socket",
        ),
        Err(ClientError::Status { status, body }) => {
            let said = body["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_string();
            let status = if status == StatusCode::NOT_FOUND {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            error(status, format!("the daemon refused to kill {id:?}: {said}"))
        }
        Err(ClientError::Other(e)) => failed(e),
    }
}
