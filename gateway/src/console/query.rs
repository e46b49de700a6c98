//! The filters of `/api/v1/sessions` and `/api/v1/chart`, from the query string.

use std::time::UNIX_EPOCH;

use crate::{
    central::search,
    sessions::{destination_match, store::Filter},
};

/// Rows a list returns unless `limit` says otherwise, and the most it may ask for.
const DEFAULT_LIMIT: u32 = 200;
const MAX_LIMIT: u32 = 5000;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Query {
    pub user: Option<String>,
    pub device: Option<String>,
    /// `(exact, LIKE pattern)`, see [`destination_match`].
    pub destination: Option<(String, String)>,
    pub router: Option<String>,
    /// µs since the epoch.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub has_file_ops: bool,
    pub active: bool,
    pub limit: u32,
    /// The chart's grouping (`destination` or `user`).
    pub by: Option<String>,
}

/// Parses a query string; an unknown name or a bad value is an error naming it. Empty
/// values (a form's blank fields) are no filter.
pub fn parse(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.trim().to_string();
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "user" => q.user = Some(value),
            "device" => q.device = Some(value),
            "destination" => q.destination = Some(destination_match(&value)?),
            "router" => q.router = Some(value),
            "since" => q.since = Some(time(&value, "since")?),
            "until" => q.until = Some(time(&value, "until")?),
            "has_file_ops" => q.has_file_ops = flag(&value, "has_file_ops")?,
            "active" => q.active = flag(&value, "active")?,
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or(format!(
                        "limit: {value:?} is not a number from 1 to {MAX_LIMIT}"
                    ))?
            }
            "by" if value == "destination" || value == "user" => q.by = Some(value),
            "by" => return Err(format!("by: {value:?} is neither destination nor user")),
            other => return Err(format!("unknown filter {other:?}")),
        }
    }
    Ok(q)
}

fn flag(value: &str, name: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(format!("{name}: {value:?} is not true or false")),
    }
}

/// RFC 3339 in UTC (`2026-12-05T10:00:00Z`), or a form's `datetime-local` value
/// (`2026-12-05T10:00`, taken as UTC), as µs since the epoch.
fn time(text: &str, name: &str) -> Result<i64, String> {
    let full = match text.len() {
        16 => format!("{text}:00Z"),
        19 => format!("{text}Z"),
        _ => text.to_string(),
    };
    let t = humantime::parse_rfc3339(&full).map_err(|e| {
        format!("{name}: {text:?} is not a UTC time like 2026-12-05T10:00:00Z ({e})")
    })?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0))
}

impl Query {
    /// The session log's filter; `None` when `router` names another router than this one
    /// (nothing can match).
    pub fn local(&self, this_router: Option<&str>) -> Option<Filter> {
        if self
            .router
            .as_deref()
            .is_some_and(|r| Some(r) != this_router)
        {
            return None;
        }
        Some(Filter {
            since: self.since,
            until: self.until,
            email: self.user.clone(),
            device: self.device.clone(),
            destination: self.destination.clone(),
            active: self.active,
            has_file_ops: self.has_file_ops,
            ids: None,
            limit: Some(self.limit),
        })
    }

    /// The central index's query.
    pub fn central(&self) -> search::Query {
        search::Query {
            since: self.since,
            until: self.until,
            user: self.user.clone(),
            device: self.device.clone(),
            destination: self.destination.clone(),
            active: self.active,
            router: self.router.clone(),
            file: None,
            has_file_ops: self.has_file_ops,
            limit: self.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_blank_fields_are_ignored() {
        let q = parse(Some(
            "user=jdoe%40example.com&device=&destination=192.0.2.10&since=2026-12-05T10:00\
             &until=2026-12-05T11:30:15Z&has_file_ops=true&active=on&limit=50&router=rtr-a",
        ))
        .unwrap();
        assert_eq!(q.user.as_deref(), Some("jdoe@example.com"));
        assert_eq!(q.device, None);
        assert_eq!(
            q.destination,
            Some(("192.0.2.10".into(), "192.0.2.10:%".into()))
        );
        assert_eq!(q.since, Some(1_796_464_800_000_000));
        assert_eq!(q.until, Some(1_796_470_215_000_000));
        assert!(q.has_file_ops && q.active);
        assert_eq!((q.limit, q.router.as_deref()), (50, Some("rtr-a")));
        assert_eq!(parse(None).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn bad_filters_are_named() {
        for (query, expected) in [
            ("colour=red", "unknown filter \"colour\""),
            ("since=yesterday", "since: \"yesterday\" is not a UTC time"),
            ("limit=0", "limit: \"0\" is not a number from 1 to 5000"),
            ("active=maybe", "active: \"maybe\" is not true or false"),
            (
                "destination=example.com",
                "destination: \"example.com\" is not an address",
            ),
            (
                "by=colour",
                "by: \"colour\" is neither destination nor user",
            ),
        ] {
            let err = parse(Some(query)).unwrap_err();
            assert!(err.starts_with(expected), "{query}: {err}");
        }
    }

    #[test]
    fn another_routers_filter_matches_nothing_locally() {
        let q = parse(Some("router=rtr-b")).unwrap();
        assert!(q.local(Some("rtr-a")).is_none());
        assert!(q.local(None).is_none());
        assert!(q.local(Some("rtr-b")).is_some());
        assert!(parse(None).unwrap().local(None).is_some());
    }
}
