//! The central schema, created and upgraded by `sshgw central migrate`.
//!
//! Everything lives in the schema `sshgw`. Every table carries `router_id` in its key. Two
//! group roles are created: `sshgw_router` (SELECT and INSERT, UPDATE only of the columns
//! later events fill in, never DELETE: see [`ROUTER_TABLES`]) and `sshgw_auditor` (SELECT). Row-level security limits a router's role to the rows of the
//! router it is registered for in `sshgw.routers` (by its login role, `session_user`), so
//! one router can neither read nor rewrite another's rows. docs/many-routers.md shows how
//! to add a router.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::connect::describe;

/// The version [`MIGRATION`] brings the schema to.
pub const VERSION: i32 = 1;

/// Tables the routers write, and what a router's role may change in each: the event log,
/// file operations and admin actions are append-only; sessions and channels get only the
/// columns their later events fill in (a router cannot rewrite who, where or what).
const ROUTER_TABLES: [(&str, &str); 6] = [
    ("router_cursor", "UPDATE (seq, shipped_at, instance)"),
    ("events", ""),
    (
        "sessions",
        "UPDATE (login, cert_serial, upstream_host_key, ended_at, duration_ms, \
         bytes_from_client, bytes_from_server, close_reason, record_object_key, \
         record_version_id, record_sha256)",
    ),
    (
        "channels",
        "UPDATE (ended_at, exit_status, exit_signal, object_key, version_id, sha256)",
    ),
    ("file_ops", ""),
    ("admin_actions", ""),
];

const MIGRATION: &str = r#"
CREATE SCHEMA IF NOT EXISTS sshgw;
CREATE TABLE IF NOT EXISTS sshgw.schema_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sshgw_router') THEN
        CREATE ROLE sshgw_router NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sshgw_auditor') THEN
        CREATE ROLE sshgw_auditor NOLOGIN;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS sshgw.routers (
    router_id text PRIMARY KEY,
    role name NOT NULL UNIQUE,
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION sshgw.my_router() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
    AS $f$ SELECT router_id FROM sshgw.routers WHERE role = session_user $f$;
REVOKE ALL ON FUNCTION sshgw.my_router() FROM PUBLIC;
CREATE TABLE IF NOT EXISTS sshgw.router_cursor (
    router_id text PRIMARY KEY,
    seq bigint NOT NULL,
    shipped_at timestamptz NOT NULL,
    -- The session log that ships under this router id (see sessions/outbox.rs).
    instance text
);
ALTER TABLE sshgw.router_cursor ADD COLUMN IF NOT EXISTS instance text;
CREATE TABLE IF NOT EXISTS sshgw.events (
    router_id text NOT NULL,
    seq bigint NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    session_id text,
    payload jsonb NOT NULL,
    PRIMARY KEY (router_id, seq)
);
CREATE INDEX IF NOT EXISTS events_at ON sshgw.events (at);
CREATE INDEX IF NOT EXISTS events_session ON sshgw.events (router_id, session_id);
CREATE TABLE IF NOT EXISTS sshgw.sessions (
    router_id text NOT NULL,
    id text NOT NULL,
    email text,
    device_id text,
    source text NOT NULL,
    destination text NOT NULL,
    login text,
    policy_id text,
    policy_name text,
    decision text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    duration_ms bigint,
    bytes_from_client bigint NOT NULL DEFAULT 0,
    bytes_from_server bigint NOT NULL DEFAULT 0,
    close_reason text,
    cert_serial text,
    upstream_host_key text,
    record_object_key text,
    record_version_id text,
    record_sha256 text,
    PRIMARY KEY (router_id, id)
);
CREATE INDEX IF NOT EXISTS sessions_started ON sshgw.sessions (started_at);
CREATE INDEX IF NOT EXISTS sessions_email ON sshgw.sessions (email);
CREATE INDEX IF NOT EXISTS sessions_destination ON sshgw.sessions (destination);
CREATE INDEX IF NOT EXISTS sessions_open ON sshgw.sessions (router_id) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS sshgw.channels (
    router_id text NOT NULL,
    session_id text NOT NULL,
    channel integer NOT NULL,
    started_at timestamptz NOT NULL,
    kind text NOT NULL,
    command text,
    ended_at timestamptz,
    exit_status bigint,
    exit_signal text,
    recording text,
    env jsonb,
    object_key text,
    version_id text,
    sha256 text,
    PRIMARY KEY (router_id, session_id, channel, started_at)
);
CREATE TABLE IF NOT EXISTS sshgw.file_ops (
    router_id text NOT NULL,
    seq bigint NOT NULL,
    session_id text NOT NULL,
    channel integer NOT NULL,
    at timestamptz NOT NULL,
    protocol text NOT NULL,
    op text NOT NULL,
    path text NOT NULL,
    target text,
    flags text,
    bytes_read bigint NOT NULL,
    bytes_written bigint NOT NULL,
    status text NOT NULL,
    denied boolean NOT NULL,
    PRIMARY KEY (router_id, seq)
);
CREATE INDEX IF NOT EXISTS file_ops_session ON sshgw.file_ops (router_id, session_id);
CREATE INDEX IF NOT EXISTS file_ops_path ON sshgw.file_ops (path);
CREATE TABLE IF NOT EXISTS sshgw.admin_actions (
    router_id text NOT NULL,
    seq bigint NOT NULL,
    at timestamptz NOT NULL,
    uid bigint NOT NULL,
    gid bigint NOT NULL,
    pid bigint,
    method text NOT NULL,
    route text NOT NULL,
    status integer NOT NULL,
    digest text,
    recording_key_fingerprint text,
    PRIMARY KEY (router_id, seq)
);
GRANT USAGE ON SCHEMA sshgw TO sshgw_router, sshgw_auditor;
GRANT SELECT ON sshgw.routers TO sshgw_router, sshgw_auditor;
GRANT EXECUTE ON FUNCTION sshgw.my_router() TO sshgw_router;
"#;

/// Row-level security and grants for one router table.
fn table_policies(table: &str, update: &str) -> String {
    let update = if update.is_empty() {
        String::new()
    } else {
        format!("GRANT {update} ON sshgw.{table} TO sshgw_router;")
    };
    format!(
        "ALTER TABLE sshgw.{table} ENABLE ROW LEVEL SECURITY;
         DROP POLICY IF EXISTS router_own ON sshgw.{table};
         CREATE POLICY router_own ON sshgw.{table} TO sshgw_router
             USING (router_id = sshgw.my_router()) WITH CHECK (router_id = sshgw.my_router());
         DROP POLICY IF EXISTS auditor_read ON sshgw.{table};
         CREATE POLICY auditor_read ON sshgw.{table} FOR SELECT TO sshgw_auditor USING (true);
         REVOKE ALL ON sshgw.{table} FROM sshgw_router, sshgw_auditor;
         GRANT SELECT, INSERT ON sshgw.{table} TO sshgw_router;
         {update}
         GRANT SELECT ON sshgw.{table} TO sshgw_auditor;"
    )
}

/// Creates or upgrades the schema in one transaction (serialized by an advisory lock);
/// returns the version it was at before (0: none).
pub async fn migrate(client: &mut Client) -> Result<i32> {
    let tx = client.transaction().await.map_err(describe)?;
    tx.execute("SELECT pg_advisory_xact_lock(7357001)", &[])
        .await
        .map_err(describe)?;
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass('sshgw.schema_version') IS NOT NULL",
            &[],
        )
        .await
        .map_err(describe)?
        .get(0);
    let before: i32 = if exists {
        tx.query_opt("SELECT version FROM sshgw.schema_version", &[])
            .await
            .map_err(describe)?
            .map_or(0, |r| r.get(0))
    } else {
        0
    };
    if before > VERSION {
        anyhow::bail!(
            "the central schema is at version {before}, newer than this sshgw knows ({VERSION})"
        );
    }
    tx.batch_execute(MIGRATION)
        .await
        .map_err(describe)
        .context("creating the central schema")?;
    for (table, update) in ROUTER_TABLES {
        tx.batch_execute(&table_policies(table, update))
            .await
            .map_err(describe)
            .with_context(|| format!("row-level security on sshgw.{table}"))?;
    }
    tx.execute(
        "INSERT INTO sshgw.schema_version (version) VALUES ($1)
         ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
        &[&VERSION],
    )
    .await
    .map_err(describe)?;
    tx.commit().await.map_err(describe)?;
    Ok(before)
}
