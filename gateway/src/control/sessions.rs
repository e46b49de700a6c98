//! `/v1/sessions`: the session log and live sessions.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | /sessions?active=true&since=1h&user=EMAIL&limit=N | list, newest first |
//! | GET | /sessions/{id} | one session with its channels |
//! | POST | /sessions/{id}/kill | end a live session (both legs) |

use hyper::{Method, StatusCode};

use super::{
    Context,
    reply::{Reply, error, json},
};
use crate::{
    policy::model::parse_duration,
    sessions::{now_micros, store::Filter},
};

/// Decodes `%XX` and `+` in a query component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug)]
struct ListQuery {
    active: bool,
    filter: Filter,
}

fn parse_query(query: Option<&str>) -> Result<ListQuery, String> {
    let mut q = ListQuery {
        active: false,
        filter: Filter {
            limit: Some(1000),
            ..Default::default()
        },
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        match key {
            "active" => q.active = matches!(value.as_str(), "" | "1" | "true" | "yes"),
            "since" => {
                let d = parse_duration(&value).map_err(|e| format!("since: {e}"))?;
                q.filter.since = Some(now_micros() - d.as_micros() as i64);
            }
            "user" => q.filter.email = Some(value),
            "limit" => {
                q.filter.limit = Some(
                    value
                        .parse()
                        .map_err(|_| format!("limit: {value:?} is not a number"))?,
                )
            }
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok(q)
}

pub async fn route(method: &Method, route: &str, query: Option<&str>, shared: &Context) -> Reply {
    let rest = route.trim_start_matches("/sessions");
    match (method, rest) {
        (&Method::GET, "" | "/") => {
            let q = match parse_query(query) {
                Ok(q) => q,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            let result = if q.active {
                let email = q.filter.email.as_deref();
                let since = q.filter.since.unwrap_or(i64::MIN);
                Ok(shared
                    .live
                    .list()
                    .into_iter()
                    .filter(|s| s.started_at >= since)
                    .filter(|s| {
                        email.is_none_or(|e| {
                            s.email
                                .as_deref()
                                .is_some_and(|m| m.eq_ignore_ascii_case(e))
                        })
                    })
                    .collect())
            } else {
                let store = shared.store.clone();
                let filter = q.filter;
                tokio::task::spawn_blocking(move || store.list(&filter))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!(e)))
            };
            match result {
                Ok(sessions) => {
                    let sessions: Vec<_> = sessions
                        .into_iter()
                        .map(|s| shared.live.summary(&s.id).unwrap_or(s))
                        .collect();
                    json(StatusCode::OK, &serde_json::json!({ "sessions": sessions }))
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            }
        }
        (method, rest) => {
            let rest = rest.trim_start_matches('/');
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            match (method, action) {
                (&Method::GET, "") => {
                    let store = shared.store.clone();
                    let key = id.to_string();
                    let stored = tokio::task::spawn_blocking(move || store.get(&key))
                        .await
                        .unwrap_or_else(|e| Err(anyhow::anyhow!(e)));
                    match (stored, shared.live.get(id)) {
                        // The live record keeps only some channels and file operations.
                        (stored, Some(live)) => json(
                            StatusCode::OK,
                            &crate::sessions::live::complete(live, stored.ok().flatten()),
                        ),
                        (Ok(Some(s)), None) => json(StatusCode::OK, &s),
                        (Ok(None), None) => {
                            error(StatusCode::NOT_FOUND, format!("no session {id:?}"))
                        }
                        (Err(e), None) => {
                            error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
                        }
                    }
                }
                (&Method::POST, "kill") => {
                    if shared
                        .live
                        .kill(id, crate::sessions::live::KillReason::Admin)
                    {
                        json(StatusCode::OK, &serde_json::json!({ "killed": id }))
                    } else {
                        error(StatusCode::NOT_FOUND, format!("no live session {id:?}"))
                    }
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    format!("no such endpoint /v1{route}"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(decode("jdoe%40example.com"), "jdoe@example.com");
        assert_eq!(decode("a+b%2"), "a b%2");
        let q = parse_query(Some("active=true&user=jdoe%40example.com&since=1h")).unwrap();
        assert!(q.active);
        assert_eq!(q.filter.email.as_deref(), Some("jdoe@example.com"));
        assert!(q.filter.since.unwrap() < now_micros() - 3_500_000_000);
        assert!(parse_query(Some("bogus=1")).unwrap_err().contains("bogus"));
        assert!(
            parse_query(Some("since=yesterday"))
                .unwrap_err()
                .starts_with("since:")
        );
    }
}
