//! The API's one route table: every endpoint under [`super::API_PREFIX`], its method and
//! its handler (in [`super::handlers`]).
//!
//! | method | path | |
//! |---|---|---|
//! | GET | /status | datapath status |
//! | GET, PUT | /policies | the policy set; PUT replaces it whole |
//! | POST | /policies/validate | validate a policy set without applying it |
//! | GET, PUT | /devices | the device table; PUT replaces it whole |
//! | PUT, DELETE | /devices/{id} | upsert or delete one device |
//! | PUT | /recording/key | replace the recording public key (base64 body) |
//! | GET | /sessions?active=true&since=1h&user=EMAIL&limit=N | list, newest first |
//! | GET | /sessions/{id} | one session with its channels |
//! | POST | /sessions/{id}/kill | end a live session (both legs) |
//!
//! `GET /metrics` (Prometheus text) is served beside them, outside the prefix. GETs of the
//! state documents and every change to them answer with the state's `ETag`; changes take
//! an optional `If-Match` (see [`super::etag`]). Every change is logged by
//! [`super::admin_log`].

use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::{Method, StatusCode};

use super::{
    Context,
    admin_log::{self, Peer},
    etag::parse_if_match,
    handlers::{Outcome, Request, bad_request, plain, sessions, state, system},
    reply::{Reply, error},
};

/// One request, as the server hands it to the routes.
pub struct Call<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The raw `If-Match` header, if any.
    pub if_match: Option<&'a str>,
    pub body: Bytes,
    pub peer: Peer,
}

/// The paths the API knows, below the prefix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Status,
    Policies,
    PoliciesValidate,
    Devices,
    /// `/devices/{id}`
    Device,
    RecordingKey,
    Sessions,
    /// `/sessions/{id}`
    Session,
    /// `/sessions/{id}/kill`
    SessionKill,
}

type Handler = for<'a> fn(&'a Request<'a>, &'a Context) -> BoxFuture<'a, Outcome>;

struct Route {
    method: Method,
    path: Path,
    handler: Handler,
}

#[rustfmt::skip]
static ROUTES: &[Route] = &[
    Route { method: Method::GET, path: Path::Status, handler: |r, c| Box::pin(system::status(r, c)) },
    Route { method: Method::GET, path: Path::Policies, handler: |r, c| Box::pin(state::get_policies(r, c)) },
    Route { method: Method::PUT, path: Path::Policies, handler: |r, c| Box::pin(state::put_policies(r, c)) },
    Route { method: Method::POST, path: Path::PoliciesValidate, handler: |r, c| Box::pin(state::validate_policies(r, c)) },
    Route { method: Method::GET, path: Path::Devices, handler: |r, c| Box::pin(state::get_devices(r, c)) },
    Route { method: Method::PUT, path: Path::Devices, handler: |r, c| Box::pin(state::put_devices(r, c)) },
    Route { method: Method::PUT, path: Path::Device, handler: |r, c| Box::pin(state::put_device(r, c)) },
    Route { method: Method::DELETE, path: Path::Device, handler: |r, c| Box::pin(state::delete_device(r, c)) },
    Route { method: Method::PUT, path: Path::RecordingKey, handler: |r, c| Box::pin(system::set_recording_key(r, c)) },
    Route { method: Method::GET, path: Path::Sessions, handler: |r, c| Box::pin(sessions::list(r, c)) },
    Route { method: Method::GET, path: Path::Session, handler: |r, c| Box::pin(sessions::show(r, c)) },
    Route { method: Method::POST, path: Path::SessionKill, handler: |r, c| Box::pin(sessions::kill(r, c)) },
];

impl Path {
    /// The path `route` (below the prefix) names, with its `{id}` (empty when it has none).
    fn parse(route: &str) -> Option<(Path, &str)> {
        let exact = match route {
            "/status" => Some(Path::Status),
            "/policies" => Some(Path::Policies),
            "/policies/validate" => Some(Path::PoliciesValidate),
            "/devices" => Some(Path::Devices),
            "/recording/key" => Some(Path::RecordingKey),
            _ => None,
        };
        if let Some(path) = exact {
            return Some((path, ""));
        }
        if route == "/sessions" || route.starts_with("/sessions/") {
            return Self::session(route);
        }
        let id = route.strip_prefix("/devices/")?;
        (!id.is_empty() && !id.contains('/')).then_some((Path::Device, id))
    }

    /// `/sessions…`: repeated `/sessions` prefixes and slashes before the id are skipped,
    /// as they always were.
    fn session(route: &str) -> Option<(Path, &str)> {
        let rest = route.trim_start_matches("/sessions");
        if matches!(rest, "" | "/") {
            return Some((Path::Sessions, ""));
        }
        let rest = rest.trim_start_matches('/');
        match rest.split_once('/').unwrap_or((rest, "")) {
            (id, "") => Some((Path::Session, id)),
            (id, "kill") => Some((Path::SessionKill, id)),
            _ => None,
        }
    }

    /// The answer to a method the path does not take.
    fn wrong_method(self, method: &Method, full_path: &str) -> Reply {
        match self {
            Path::Status | Path::Policies | Path::PoliciesValidate | Path::Devices => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {full_path}"),
            ),
            Path::Device => error(StatusCode::METHOD_NOT_ALLOWED, "use PUT or DELETE"),
            Path::RecordingKey | Path::Sessions | Path::Session | Path::SessionKill => {
                not_found(full_path)
            }
        }
    }
}

fn not_found(path: &str) -> Reply {
    error(StatusCode::NOT_FOUND, format!("no such endpoint {path}"))
}

/// Answers one request; changes are logged as admin actions.
pub async fn route(call: Call<'_>, ctx: &Context) -> Reply {
    let (reply, evidence) = dispatch(&call, ctx).await;
    if admin_log::is_mutating(call.method, call.path) {
        admin_log::record(
            &call.peer,
            call.method,
            call.path,
            reply.status(),
            &evidence,
        );
        let action = admin_log::action(
            &call.peer,
            call.method,
            call.path,
            reply.status(),
            &evidence,
        );
        ctx.store
            .write(crate::sessions::store::Write::Admin(Box::new(action)));
    }
    reply
}

/// Finds the call's route in [`ROUTES`] and runs its handler.
async fn dispatch(call: &Call<'_>, ctx: &Context) -> Outcome {
    let (method, path) = (call.method, call.path);
    if path == "/metrics" && method == Method::GET {
        return plain(system::metrics(ctx));
    }
    let Some(route) = path.strip_prefix(super::API_PREFIX) else {
        return plain(not_found(path));
    };
    let expect = match parse_if_match(call.if_match) {
        Ok(expect) => expect,
        Err(message) => return bad_request(message),
    };
    let Some((target, id)) = Path::parse(route) else {
        return plain(not_found(path));
    };
    let Some(found) = ROUTES
        .iter()
        .find(|r| r.path == target && r.method == method)
    else {
        return plain(target.wrong_method(method, path));
    };
    let request = Request {
        id,
        query: call.query,
        expect: &expect,
        body: &call.body,
    };
    (found.handler)(&request, ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path parses as the old hand-written match read it, and has a route.
    #[test]
    fn paths_parse_as_they_always_did() {
        let cases = [
            ("/status", Some((Path::Status, ""))),
            ("/status/", None),
            ("/policies", Some((Path::Policies, ""))),
            ("/policies/validate", Some((Path::PoliciesValidate, ""))),
            ("/devices", Some((Path::Devices, ""))),
            ("/devices/", None),
            ("/devices/a/b", None),
            ("/devices/laptop", Some((Path::Device, "laptop"))),
            ("/recording/key", Some((Path::RecordingKey, ""))),
            ("/sessions", Some((Path::Sessions, ""))),
            ("/sessions/", Some((Path::Sessions, ""))),
            ("/sessions/sessions", Some((Path::Sessions, ""))),
            ("/sessions//x/", Some((Path::Session, "x"))),
            ("/sessions/x/kill", Some((Path::SessionKill, "x"))),
            ("/sessions/x/other", None),
            ("/sessionsx", None),
        ];
        for (route, want) in cases {
            assert_eq!(Path::parse(route), want, "{route}");
            if let Some((path, _)) = want {
                assert!(ROUTES.iter().any(|r| r.path == path), "{route}");
            }
        }
    }
}
