//! ETags of the state documents and the `If-Match` precondition of pushes.
//!
//! A document's ETag is the SHA-256 (hex) of its bytes as `GET` serves them and as the
//! daemon stores them, quoted as HTTP wants: `"9f86d0…"`. `If-Match` takes one or more
//! such tags, or `*`; weak tags (`W/"…"`) never match, since a push needs the exact state.

use hyper::header::{ETAG, HeaderValue};

use super::reply::Reply;
use crate::state::Expect;

/// `reply` with an `ETag` header for `etag` (bare hex).
pub fn with_etag(mut reply: Reply, etag: &str) -> Reply {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        reply.headers_mut().insert(ETAG, value);
    }
    reply
}

/// Parses an `If-Match` header value; `None` (no header) expects nothing.
pub fn parse_if_match(header: Option<&str>) -> Result<Expect, String> {
    let Some(header) = header else {
        return Ok(Expect::Anything);
    };
    let (mut tags, mut saw_weak) = (Vec::new(), false);
    for item in header.split(',').map(str::trim) {
        match item {
            "*" => return Ok(Expect::Anything),
            "" => {}
            // A weak tag never matches in a strong comparison.
            weak if weak.starts_with("W/") => saw_weak = true,
            quoted => match quoted
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|t| !t.contains('"'))
            {
                Some(tag) => tags.push(tag.to_owned()),
                None => {
                    return Err(format!(
                        "If-Match: {quoted:?} is not an entity tag (a quoted string such as \"\\\"3f5a…\\\"\")"
                    ));
                }
            },
        }
    }
    if tags.is_empty() && !saw_weak {
        return Err("If-Match: no entity tag given".into());
    }
    Ok(Expect::OneOf(tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_values() {
        assert_eq!(parse_if_match(None), Ok(Expect::Anything));
        assert_eq!(parse_if_match(Some("*")), Ok(Expect::Anything));
        assert_eq!(
            parse_if_match(Some("\"ab\", \"cd\"")),
            Ok(Expect::OneOf(vec!["ab".into(), "cd".into()]))
        );
        assert_eq!(parse_if_match(Some("W/\"ab\"")), Ok(Expect::OneOf(vec![])));
        assert!(
            parse_if_match(Some("ab"))
                .unwrap_err()
                .starts_with("If-Match:")
        );
        assert!(parse_if_match(Some(" , ")).is_err());
    }
}
