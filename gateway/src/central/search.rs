//! Reading the central index: `sshgw sessions --central` and `sessions show ID --central`.
//! The role in `[central] postgres` decides what is visible: an auditor's role
//! (`sshgw_auditor`) sees every router, a router's role only its own rows.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde::Serialize;
use tokio_postgres::{Client, Row, types::ToSql};

use super::connect::describe;
use crate::sessions::{ChannelRecord, FileOpRecord, SessionRecord, uploads::StoredObject};

/// The filters of `sessions --central`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// µs since the epoch.
    pub since: Option<i64>,
    pub user: Option<String>,
    pub device: Option<String>,
    /// `(exact, LIKE pattern)`, see [`crate::sessions::destination_match`].
    pub destination: Option<(String, String)>,
    pub active: bool,
    pub router: Option<String>,
    /// A shell-style glob (`*`, `?`) on the paths of the session's file operations.
    pub file: Option<String>,
    pub limit: u32,
    /// µs since the epoch: started before this.
    pub until: Option<i64>,
    /// Only sessions with file operations.
    pub has_file_ops: bool,
}

type Args = Vec<Box<dyn ToSql + Sync + Send>>;

fn params(args: &Args) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn time(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + std::time::Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_micros(micros.unsigned_abs())
    }
}

/// A session as the central index has it.
#[derive(Debug, Clone, Serialize)]
pub struct CentralSession {
    pub router_id: String,
    #[serde(flatten)]
    pub session: SessionRecord,
    /// The session record's object, once uploaded.
    pub record_object: Option<StoredObject>,
}

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(|t| match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    })
}

fn parse<T: std::str::FromStr>(text: String, column: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| anyhow::anyhow!("central column {column}: {text:?}: {e}"))
}

fn session(r: &Row) -> Result<CentralSession> {
    let object = |key: Option<String>, version: Option<String>, sha: Option<String>| {
        key.map(|key| StoredObject {
            key,
            version_id: version,
            sha256: sha.unwrap_or_default(),
        })
    };
    Ok(CentralSession {
        router_id: r.get("router_id"),
        record_object: object(
            r.get("record_object_key"),
            r.get("record_version_id"),
            r.get("record_sha256"),
        ),
        session: SessionRecord {
            id: r.get("id"),
            email: r.get("email"),
            device_id: r.get("device_id"),
            source: r.get("source"),
            destination: r.get("destination"),
            login: r.get("login"),
            policy_id: r.get("policy_id"),
            policy_name: r.get("policy_name"),
            decision: parse(r.get("decision"), "decision")?,
            started_at: micros(r.get("started_at")).unwrap_or_default(),
            ended_at: micros(r.get("ended_at")),
            duration_ms: r
                .get::<_, Option<i64>>("duration_ms")
                .map(|v| v.max(0) as u64),
            bytes_from_client: r.get::<_, i64>("bytes_from_client").max(0) as u64,
            bytes_from_server: r.get::<_, i64>("bytes_from_server").max(0) as u64,
            close_reason: r.get("close_reason"),
            cert_serial: r.get("cert_serial"),
            upstream_host_key: r.get("upstream_host_key"),
            channels: vec![],
            file_ops: vec![],
        },
    })
}

/// `*` and `?` of a glob as LIKE's `%` and `_`, LIKE's own specials escaped.
pub fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The `WHERE` clause of `q` over `sshgw.sessions s`, and its arguments.
fn conditions(q: &Query) -> (String, Args) {
    let mut sql = String::from(" WHERE true");
    let mut args: Args = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        args.push(value);
        *sql += &clause.replace("$?", &format!("${}", args.len()));
    };
    if let Some(since) = q.since {
        arg(&mut sql, " AND s.started_at >= $?", Box::new(time(since)));
    }
    if let Some(until) = q.until {
        arg(&mut sql, " AND s.started_at < $?", Box::new(time(until)));
    }
    if let Some(user) = &q.user {
        arg(
            &mut sql,
            " AND lower(s.email) = lower($?)",
            Box::new(user.clone()),
        );
    }
    if let Some(device) = &q.device {
        arg(&mut sql, " AND s.device_id = $?", Box::new(device.clone()));
    }
    if let Some((exact, like)) = &q.destination {
        arg(
            &mut sql,
            " AND (s.destination = $?",
            Box::new(exact.clone()),
        );
        arg(
            &mut sql,
            " OR s.destination LIKE $?)",
            Box::new(like.clone()),
        );
    }
    if q.active {
        sql += " AND s.ended_at IS NULL AND s.close_reason IS NULL AND s.decision <> 'block'";
    }
    if let Some(router) = &q.router {
        arg(&mut sql, " AND s.router_id = $?", Box::new(router.clone()));
    }
    if let Some(glob) = &q.file {
        arg(
            &mut sql,
            " AND EXISTS (SELECT 1 FROM sshgw.file_ops f WHERE f.router_id = s.router_id
                AND f.session_id = s.id AND (f.path LIKE $? OR f.target LIKE $?))",
            Box::new(glob_to_like(glob)),
        );
    }
    if q.has_file_ops {
        sql += " AND EXISTS (SELECT 1 FROM sshgw.file_ops f WHERE f.router_id = s.router_id
                AND f.session_id = s.id)";
    }
    (sql, args)
}

/// Sessions matching `q`, newest first.
pub async fn list(client: &Client, q: &Query) -> Result<Vec<CentralSession>> {
    let (conditions, args) = conditions(q);
    let sql = format!(
        "SELECT * FROM sshgw.sessions s{conditions} ORDER BY s.started_at DESC LIMIT {}",
        q.limit
    );
    let rows = client.query(&sql, &params(&args)).await.map_err(describe)?;
    rows.iter().map(session).collect()
}

/// How many sessions match `q` (its limit aside).
pub async fn count(client: &Client, q: &Query) -> Result<u64> {
    let (conditions, args) = conditions(q);
    let sql = format!("SELECT count(*) FROM sshgw.sessions s{conditions}");
    let row = client
        .query_one(&sql, &params(&args))
        .await
        .map_err(describe)?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Start (µs), user and destination of the newest `q.limit` sessions matching `q`.
pub async fn starts(client: &Client, q: &Query) -> Result<Vec<(i64, Option<String>, String)>> {
    let (conditions, args) = conditions(q);
    let sql = format!(
        "SELECT s.started_at, s.email, s.destination FROM sshgw.sessions s{conditions}
         ORDER BY s.started_at DESC LIMIT {}",
        q.limit
    );
    let rows = client.query(&sql, &params(&args)).await.map_err(describe)?;
    Ok(rows
        .iter()
        .map(|r| (micros(r.get(0)).unwrap_or_default(), r.get(1), r.get(2)))
        .collect())
}

/// The number of file operations of each `(router, session)` that has any.
pub async fn file_op_counts(
    client: &Client,
    sessions: &[(String, String)],
) -> Result<std::collections::HashMap<(String, String), u64>> {
    if sessions.is_empty() {
        return Ok(Default::default());
    }
    let (routers, ids): (Vec<&str>, Vec<&str>) = sessions
        .iter()
        .map(|(r, i)| (r.as_str(), i.as_str()))
        .unzip();
    let rows = client
        .query(
            "SELECT f.router_id, f.session_id, count(*) FROM sshgw.file_ops f
             JOIN unnest($1::text[], $2::text[]) AS k(router_id, session_id)
               ON f.router_id = k.router_id AND f.session_id = k.session_id
             GROUP BY 1, 2",
            &[&routers, &ids],
        )
        .await
        .map_err(describe)?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2).max(0) as u64))
        .collect())
}

/// One session with its channels (and their objects) and file operations; `router`
/// picks one when routers share a session id.
pub async fn show(
    client: &Client,
    id: &str,
    router: Option<&str>,
) -> Result<Option<CentralSession>> {
    let rows = client
        .query(
            "SELECT * FROM sshgw.sessions WHERE id = $1 AND ($2::text IS NULL OR router_id = $2)",
            &[&id, &router],
        )
        .await
        .map_err(describe)?;
    let mut found = match rows.as_slice() {
        [] => return Ok(None),
        [row] => session(row)?,
        _ => bail!(
            "session id {id:?} is on several routers; name one (--router, or ?router= in the console)"
        ),
    };
    let router_id = found.router_id.clone();
    found.session.channels = channels(client, &router_id, id).await?;
    found.session.file_ops = file_ops(client, &router_id, id).await?;
    Ok(Some(found))
}

async fn channels(client: &Client, router: &str, id: &str) -> Result<Vec<ChannelRecord>> {
    let rows = client
        .query(
            "SELECT * FROM sshgw.channels WHERE router_id = $1 AND session_id = $2
             ORDER BY started_at, channel",
            &[&router, &id],
        )
        .await
        .map_err(describe)?;
    rows.iter()
        .map(|r| {
            let env: Option<serde_json::Value> = r.get("env");
            Ok(ChannelRecord {
                channel: r.get::<_, i32>("channel") as u32,
                kind: parse(r.get("kind"), "kind")?,
                command: r.get("command"),
                started_at: micros(r.get("started_at")).unwrap_or_default(),
                ended_at: micros(r.get("ended_at")),
                exit_status: r.get::<_, Option<i64>>("exit_status").map(|v| v as u32),
                exit_signal: r.get("exit_signal"),
                recording: r.get("recording"),
                recording_object: r.get::<_, Option<String>>("object_key").map(|key| {
                    StoredObject {
                        key,
                        version_id: r.get("version_id"),
                        sha256: r.get::<_, Option<String>>("sha256").unwrap_or_default(),
                    }
                }),
                env: env
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

async fn file_ops(client: &Client, router: &str, id: &str) -> Result<Vec<FileOpRecord>> {
    let rows = client
        .query(
            "SELECT * FROM sshgw.file_ops WHERE router_id = $1 AND session_id = $2 ORDER BY seq",
            &[&router, &id],
        )
        .await
        .map_err(describe)?;
    rows.iter()
        .map(|r| {
            Ok(FileOpRecord {
                channel: r.get::<_, i32>("channel") as u32,
                at: micros(r.get("at")).unwrap_or_default(),
                protocol: parse(r.get("protocol"), "protocol")?,
                op: parse(r.get("op"), "op")?,
                path: r.get("path"),
                target: r.get("target"),
                flags: r.get("flags"),
                bytes_read: r.get::<_, i64>("bytes_read").max(0) as u64,
                bytes_written: r.get::<_, i64>("bytes_written").max(0) as u64,
                status: r.get("status"),
                denied: r.get("denied"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns_with_likes_specials_escaped() {
        assert_eq!(glob_to_like("/etc/*.conf"), "/etc/%.conf");
        assert_eq!(glob_to_like("a?c"), "a_c");
        assert_eq!(glob_to_like("100%_x\\"), "100\\%\\_x\\\\");
    }
}
