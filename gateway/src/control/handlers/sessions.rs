//! The session log and the live sessions: list, show one, kill one.

use hyper::StatusCode;

use super::{Outcome, Request, plain};
use crate::{
    control::{
        Context,
        api::{Killed, SessionList},
        reply::{error, json},
    },
    policy::model::MAX_SESSION_DURATION,
    sessions::{SessionRecord, destination_match, live, now_micros, store::Filter},
    util::duration,
};

/// The `since=` query: at most as far back as a session may last. Its zero text is the one
/// the API has always answered with, kept so that replies do not change.
const SINCE: duration::Field = duration::Field {
    name: "since",
    max: MAX_SESSION_DURATION,
    zero: "leave max_duration out for no limit",
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
                let d = duration::parse(&value, &SINCE).map_err(|e| e.to_string())?;
                q.filter.since = Some(now_micros() - d.as_micros() as i64);
            }
            "user" => q.filter.email = Some(value),
            "device" => q.filter.device = Some(value),
            "destination" => q.filter.destination = Some(destination_match(&value)?),
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

/// The live sessions that match the list's filter (its limit does not apply to them).
fn live_matching(ctx: &Context, filter: &Filter) -> Vec<SessionRecord> {
    let email = filter.email.as_deref();
    let since = filter.since.unwrap_or(i64::MIN);
    ctx.live
        .list()
        .into_iter()
        .filter(|s| s.started_at >= since)
        .filter(|s| filter.matches_place(s))
        .filter(|s| {
            email.is_none_or(|e| {
                s.email
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(e))
            })
        })
        .collect()
}

/// `GET /v1/sessions?active=true&since=1h&user=EMAIL&limit=N`: newest first; a session
/// still running is shown as its live summary.
pub async fn list(req: &Request<'_>, ctx: &Context) -> Outcome {
    let q = match parse_query(req.query) {
        Ok(q) => q,
        Err(e) => return plain(error(StatusCode::BAD_REQUEST, e)),
    };
    let result = if q.active {
        Ok(live_matching(ctx, &q.filter))
    } else {
        let store = ctx.store.clone();
        let filter = q.filter;
        tokio::task::spawn_blocking(move || store.list(&filter))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!(e)))
    };
    plain(match result {
        Ok(sessions) => {
            let sessions = sessions
                .into_iter()
                .map(|s| ctx.live.summary(&s.id).unwrap_or(s))
                .collect();
            json(StatusCode::OK, &SessionList { sessions })
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    })
}

/// `GET /v1/sessions/{id}`: one session with its channels.
pub async fn show(req: &Request<'_>, ctx: &Context) -> Outcome {
    let id = req.id;
    let store = ctx.store.clone();
    let key = id.to_string();
    let stored = tokio::task::spawn_blocking(move || store.get(&key))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!(e)));
    plain(match (stored, ctx.live.get(id)) {
        // The live record keeps only some channels and file operations.
        (stored, Some(live)) => json(StatusCode::OK, &live::complete(live, stored.ok().flatten())),
        (Ok(Some(s)), None) => json(StatusCode::OK, &s),
        (Ok(None), None) => error(StatusCode::NOT_FOUND, format!("no session {id:?}")),
        (Err(e), None) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    })
}

/// `POST /v1/sessions/{id}/kill`: ends a live session (both legs; the user is told why).
pub async fn kill(req: &Request<'_>, ctx: &Context) -> Outcome {
    let id = req.id;
    plain(if ctx.live.kill(id, live::KillReason::Admin) {
        json(
            StatusCode::OK,
            &Killed {
                killed: id.to_owned(),
            },
        )
    } else {
        error(StatusCode::NOT_FOUND, format!("no live session {id:?}"))
    })
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
