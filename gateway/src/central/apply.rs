//! Applies outbox rows to the central schema: one transaction per batch, together with the
//! router's cursor. A batch that was applied but whose commit never came back is applied
//! again after a restart; the cursor, read under a row lock in the same transaction, makes
//! it skip what is already in, so no row is lost or doubled whatever crashes where.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use tokio_postgres::{Client, Statement, Transaction, types::ToSql};

use super::connect::describe;
use crate::sessions::outbox::{OutboxRow, kind};

/// The time of a row (µs since the epoch) as PostgreSQL's `timestamptz`.
fn time(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
}

/// The statements of [`batch`], prepared once per connection.
pub struct Prepared(HashMap<&'static str, Statement>);

const STATEMENTS: [&str; 12] = [
    EVENT,
    SESSION_OPENED,
    SESSION_LOGGED_IN,
    SESSION_CLOSED,
    CHANNEL_OPENED,
    CHANNEL_CLOSED,
    FILE_OPERATION,
    RECORDING_UPLOADED,
    RECORD_UPLOADED,
    ADOPTED_SESSION,
    ADOPTED_CHANNEL,
    ADMIN_ACTION,
];

impl Prepared {
    pub async fn new(client: &Client) -> Result<Self> {
        let mut map = HashMap::new();
        for sql in STATEMENTS {
            let statement =
                client.prepare(sql).await.map_err(describe).context(
                    "preparing the central statements (did `sshgw central migrate` run?)",
                )?;
            map.insert(sql, statement);
        }
        Ok(Prepared(map))
    }
}

/// The router's cursor in PostgreSQL: the last seq applied (0 before the first batch),
/// refused when another session log ships under the same router id.
pub async fn cursor(client: &Client, origin: &Origin<'_>) -> Result<i64> {
    let row = client
        .query_opt(
            "SELECT seq, instance FROM sshgw.router_cursor WHERE router_id = $1",
            &[&origin.router_id],
        )
        .await
        .map_err(describe)?;
    checked(row, origin)
}

/// PostgreSQL refused one row's data (SQLSTATE class 22 or 23): shipping it again would
/// fail again. The shipper replaces it with [`unshippable`] and goes on.
#[derive(Debug, thiserror::Error)]
#[error("outbox row {seq} was refused by PostgreSQL: {error}")]
pub struct RowRefused {
    pub seq: i64,
    pub error: String,
}

/// What stands in for a row PostgreSQL refused: its kind and session, and why (the payload
/// itself stays in the router's log).
pub fn unshippable(row: &OutboxRow, error: &str) -> OutboxRow {
    OutboxRow {
        kind: kind::UNSHIPPABLE.to_owned(),
        payload: serde_json::json!({ "kind": row.kind, "error": error }),
        ..row.clone()
    }
}

/// A copy of `value` with NUL characters (which PostgreSQL's text and jsonb refuse) as
/// U+FFFD; borrowed when there is none.
pub fn without_nul(value: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    use serde_json::Value;
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    fn replace(v: &mut Value) {
        match v {
            Value::String(s) => *s = s.replace('\0', "\u{FFFD}"),
            Value::Array(a) => a.iter_mut().for_each(replace),
            Value::Object(o) => {
                let old = std::mem::take(o);
                for (k, mut v) in old {
                    replace(&mut v);
                    o.insert(k.replace('\0', "\u{FFFD}"), v);
                }
            }
            _ => {}
        }
    }
    if !has_nul(value) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut copy = value.clone();
    replace(&mut copy);
    std::borrow::Cow::Owned(copy)
}

/// This router's shipping identity: its id and its session log's instance id.
pub struct Origin<'a> {
    pub router_id: &'a str,
    pub instance: &'a str,
}

/// The cursor, checked: a cursor row left by another session log under the same router id
/// is an error (its seqs are not ours).
async fn locked_cursor(tx: &Transaction<'_>, origin: &Origin<'_>) -> Result<i64> {
    let row = tx
        .query_opt(
            "SELECT seq, instance FROM sshgw.router_cursor WHERE router_id = $1 FOR UPDATE",
            &[&origin.router_id],
        )
        .await
        .map_err(describe)?;
    checked(row, origin)
}

fn checked(row: Option<tokio_postgres::Row>, origin: &Origin<'_>) -> Result<i64> {
    let Some(row) = row else { return Ok(0) };
    let (seq, instance): (i64, Option<String>) = (row.get(0), row.get(1));
    match instance {
        Some(other) if other != origin.instance => anyhow::bail!(
            "router id {:?} is shipped by another session log (instance {other}, this one is {}): a replaced log or a second router with the same id; see docs/many-routers.md",
            origin.router_id,
            origin.instance
        ),
        _ => Ok(seq),
    }
}

/// Applies `rows` (in seq order) and moves the cursor to the last, in one transaction.
/// Returns the cursor after the commit.
///
/// The statements are pipelined: all are sent before the first answer is awaited, in
/// order, and PostgreSQL runs them in that order. A batch costs a few round trips, not a
/// few per row.
pub async fn batch(
    client: &mut Client,
    prepared: &Prepared,
    origin: &Origin<'_>,
    rows: &[OutboxRow],
) -> Result<i64> {
    let router_id = origin.router_id;
    let tx = client.transaction().await.map_err(describe)?;
    let cursor = locked_cursor(&tx, origin).await?;
    let todo: Vec<&OutboxRow> = rows.iter().filter(|r| r.seq > cursor).collect();
    let steps: Vec<Step> = todo.iter().flat_map(|row| steps(router_id, row)).collect();
    let results = pipelined(&tx, prepared, &steps).await;
    // After the first failure PostgreSQL refuses the rest: the first error is the cause.
    if let Some((step, e)) = steps
        .iter()
        .zip(results)
        .find_map(|(step, r)| r.err().map(|e| (step, e)))
    {
        let refused = e
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"));
        let error = format!("{:#}", describe(e));
        if refused {
            return Err(RowRefused {
                seq: step.seq,
                error,
            }
            .into());
        }
        anyhow::bail!("outbox row {} ({}): {error}", step.seq, step.kind);
    }
    let last = todo.last().map_or(cursor, |r| r.seq);
    tx.execute(
        "INSERT INTO sshgw.router_cursor (router_id, seq, shipped_at, instance)
         VALUES ($1, $2, now(), $3)
         ON CONFLICT (router_id) DO UPDATE
             SET seq = greatest(sshgw.router_cursor.seq, excluded.seq), shipped_at = now(),
                 instance = excluded.instance",
        &[&router_id, &last, &origin.instance],
    )
    .await
    .map_err(describe)?;
    tx.commit().await.map_err(describe)?;
    Ok(last)
}

/// Sends every step before awaiting any answer. tokio-postgres sends a request when its
/// future is first polled, and `FuturesOrdered` polls them first in the order given.
async fn pipelined(
    tx: &Transaction<'_>,
    prepared: &Prepared,
    steps: &[Step],
) -> Vec<Result<u64, tokio_postgres::Error>> {
    use futures::StreamExt;
    steps
        .iter()
        .map(|step| {
            let params: Vec<&(dyn ToSql + Sync)> = step.params.iter().map(Param::sql).collect();
            let statement = &prepared.0[step.statement];
            async move { tx.execute(statement, &params).await }
        })
        .collect::<futures::stream::FuturesOrdered<_>>()
        .collect()
        .await
}

/// A statement parameter, owned so that a whole batch can be in flight.
enum Param {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Time(SystemTime),
    Json(serde_json::Value),
}

impl Param {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(v) => v,
            Param::OptText(v) => v,
            Param::Int(v) => v,
            Param::Time(v) => v,
            Param::Json(v) => v,
        }
    }
}

/// One statement of a batch: what it runs, with what, for which row.
struct Step {
    seq: i64,
    kind: String,
    statement: &'static str,
    params: Vec<Param>,
}

/// A row's statements: the raw event, then what it changes in the tables.
fn steps(router_id: &str, row: &OutboxRow) -> Vec<Step> {
    let payload = without_nul(&row.payload).into_owned();
    let step = |statement: &'static str, params: Vec<Param>| Step {
        seq: row.seq,
        kind: row.kind.clone(),
        statement,
        params,
    };
    let router = || Param::Text(router_id.to_owned());
    let session = || Param::OptText(row.session_id.clone());
    let json = || Param::Json(payload.clone());
    let mut out = vec![step(
        EVENT,
        vec![
            router(),
            Param::Int(row.seq),
            Param::Time(time(row.at)),
            Param::Text(row.kind.clone()),
            session(),
            json(),
        ],
    )];
    let usual = |sql| step(sql, vec![router(), session(), json()]);
    match row.kind.as_str() {
        kind::SESSION_OPENED => out.push(usual(SESSION_OPENED)),
        kind::SESSION_LOGGED_IN => out.push(usual(SESSION_LOGGED_IN)),
        kind::SESSION_CLOSED => out.push(usual(SESSION_CLOSED)),
        kind::CHANNEL_OPENED => out.push(usual(CHANNEL_OPENED)),
        kind::CHANNEL_CLOSED => out.push(usual(CHANNEL_CLOSED)),
        kind::RECORDING_UPLOADED => out.push(usual(RECORDING_UPLOADED)),
        kind::RECORD_UPLOADED => out.push(usual(RECORD_UPLOADED)),
        kind::FILE_OPERATION => out.push(step(
            FILE_OPERATION,
            vec![router(), session(), json(), Param::Int(row.seq)],
        )),
        kind::RECORDING_ADOPTED => {
            out.push(usual(ADOPTED_SESSION));
            out.push(usual(ADOPTED_CHANNEL));
        }
        kind::ADMIN_ACTION => out.push(step(
            ADMIN_ACTION,
            vec![
                router(),
                Param::Int(row.seq),
                Param::Time(time(row.at)),
                json(),
            ],
        )),
        // A kind this sshgw does not know (a newer router): kept in `events` only.
        _ => {}
    }
    out
}

const EVENT: &str = "
INSERT INTO sshgw.events (router_id, seq, at, kind, session_id, payload)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

// The others take $1 router_id, $2 session id, $3 the payload (jsonb); file
// operations add $4 seq. Times in payloads are RFC 3339 text.

const SESSION_OPENED: &str = "
INSERT INTO sshgw.sessions (router_id, id, email, device_id, source, destination, login,
    policy_id, policy_name, decision, started_at, ended_at, duration_ms, bytes_from_client,
    bytes_from_server, close_reason, cert_serial, upstream_host_key)
SELECT $1, $2::text, s->>'email', s->>'device_id', s->>'source', s->>'destination', s->>'login',
    s->>'policy_id', s->>'policy_name', s->>'decision', (s->>'started_at')::timestamptz,
    (s->>'ended_at')::timestamptz, (s->>'duration_ms')::bigint,
    coalesce((s->>'bytes_from_client')::bigint, 0), coalesce((s->>'bytes_from_server')::bigint, 0),
    s->>'close_reason', s->>'cert_serial', s->>'upstream_host_key'
FROM (SELECT $3::jsonb -> 'session' AS s) p
ON CONFLICT (router_id, id) DO NOTHING";

const SESSION_LOGGED_IN: &str = "
UPDATE sshgw.sessions SET login = $3::jsonb->>'login', cert_serial = $3::jsonb->>'cert_serial',
    upstream_host_key = $3::jsonb->>'upstream_host_key'
WHERE router_id = $1 AND id = $2::text";

const SESSION_CLOSED: &str = "
UPDATE sshgw.sessions SET ended_at = ($3::jsonb->>'ended_at')::timestamptz,
    duration_ms = ($3::jsonb->>'duration_ms')::bigint,
    bytes_from_client = coalesce(($3::jsonb->>'bytes_from_client')::bigint, bytes_from_client),
    bytes_from_server = coalesce(($3::jsonb->>'bytes_from_server')::bigint, bytes_from_server),
    close_reason = $3::jsonb->>'close_reason'
WHERE router_id = $1 AND id = $2::text";

const CHANNEL_OPENED: &str = "
INSERT INTO sshgw.channels (router_id, session_id, channel, started_at, kind, command,
    recording, env)
SELECT $1, $2::text, (c->>'channel')::integer, (c->>'started_at')::timestamptz, c->>'kind',
    c->>'command', c->>'recording', c->'env'
FROM (SELECT $3::jsonb -> 'channel' AS c) p
ON CONFLICT DO NOTHING";

const CHANNEL_CLOSED: &str = "
UPDATE sshgw.channels SET ended_at = ($3::jsonb->>'ended_at')::timestamptz,
    exit_status = ($3::jsonb->>'exit_status')::bigint, exit_signal = $3::jsonb->>'exit_signal'
WHERE router_id = $1 AND session_id = $2::text AND channel = ($3::jsonb->>'channel')::integer
    AND ended_at IS NULL";

const FILE_OPERATION: &str = "
INSERT INTO sshgw.file_ops (router_id, seq, session_id, channel, at, protocol, op, path,
    target, flags, bytes_read, bytes_written, status, denied)
SELECT $1, $4, $2::text, (f->>'channel')::integer, (f->>'at')::timestamptz, f->>'protocol',
    f->>'op', f->>'path', f->>'target', f->>'flags', (f->>'bytes_read')::bigint,
    (f->>'bytes_written')::bigint, f->>'status', (f->>'denied')::boolean
FROM (SELECT $3::jsonb -> 'file_op' AS f) p
ON CONFLICT DO NOTHING";

const RECORDING_UPLOADED: &str = "
UPDATE sshgw.channels SET object_key = $3::jsonb->>'key',
    version_id = $3::jsonb->>'version_id', sha256 = $3::jsonb->>'sha256'
WHERE router_id = $1 AND session_id = $2::text AND channel = ($3::jsonb->>'channel')::integer
    AND (recording = $3::jsonb->>'path' OR $3::jsonb->>'path' IS NULL)";

const RECORD_UPLOADED: &str = "
UPDATE sshgw.sessions SET record_object_key = $3::jsonb->>'key',
    record_version_id = $3::jsonb->>'version_id', record_sha256 = $3::jsonb->>'sha256'
WHERE router_id = $1 AND id = $2::text";

const ADOPTED_SESSION: &str = "
INSERT INTO sshgw.sessions (router_id, id, email, device_id, source, destination, login,
    decision, started_at, close_reason)
SELECT $1, $2::text, a->>'email', a->>'device_id', '-', coalesce(a->>'destination', '-'),
    a->>'login', 'audit_ssh', (a->>'started_at')::timestamptz, 'adopted recording'
FROM (SELECT $3::jsonb AS a) p
ON CONFLICT (router_id, id) DO NOTHING";

const ADOPTED_CHANNEL: &str = "
INSERT INTO sshgw.channels (router_id, session_id, channel, started_at, kind, command, recording)
SELECT $1, $2::text, (a->>'channel')::integer, (a->>'started_at')::timestamptz, a->>'kind',
    a->>'command', a->>'recording'
FROM (SELECT $3::jsonb AS a) p
WHERE NOT EXISTS (SELECT 1 FROM sshgw.channels c WHERE c.router_id = $1
    AND c.session_id = $2::text AND c.channel = (a->>'channel')::integer)";

const ADMIN_ACTION: &str = "
INSERT INTO sshgw.admin_actions (router_id, seq, at, uid, gid, pid, method, route, status,
    digest, recording_key_fingerprint)
SELECT $1, $2, $3, (a->>'uid')::bigint, (a->>'gid')::bigint, (a->>'pid')::bigint,
    a->>'method', a->>'route', (a->>'status')::integer, a->>'digest',
    a->>'recording_key_fingerprint'
FROM (SELECT $4::jsonb AS a) p
ON CONFLICT DO NOTHING";
