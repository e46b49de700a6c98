//! Many routers, one index: two routers (two router namespaces, one device each, one
//! server) ship their session logs' outboxes to one real PostgreSQL 15 (started here as
//! the `postgres` user, fresh data directory, TCP with TLS on 127.0.0.1 and a Unix socket
//! the routers reach from their namespaces).
//!
//! 1. Both routers' sessions come back from one `sessions --central` query, with filters.
//! 2. A router's role cannot read, update or delete another router's rows (RLS).
//! 3. The daemon killed while its batch transaction is open: after a restart the central
//!    events are exactly the outbox's seqs, no gap and no duplicate.
//! 4. PostgreSQL stopped: sessions are still admitted and logged; the outbox grows and
//!    drains into the index once PostgreSQL is back.
//! 5. With `[storage]` too (SeaweedFS), `sessions show ID --central` names the object of
//!    each recording, as the router's own log does.
//!
//! Needs root, the sshgw binary, OpenSSH and PostgreSQL 15 (`cargo xtask prereqs`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sshgw_tests::SshdConfig;
use sshgw_tests::gateway::{Gateway, GatewayConfig, sshgw_bin, str_field};
use sshgw_tests::postgres::PgServer;
use sshgw_tests::recording::{RecordingKey, recorded_policies, recording_toml, toml_path};
use sshgw_tests::s3::{ROUTER, S3Server};
use sshgw_tests::topology::SiteId;
use sshgw_tests::wait::poll_until;
use sshgw_tests::{Family, Lab, lab_test};

const FAM: Family = Family::V4;
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const PASSWORD: &str = "router-password-1";

/// A 0600 file with `text`.
fn secret(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// The central PostgreSQL, migrated, with one role per router and an auditor.
struct Central {
    pg: PgServer,
    dir: PathBuf,
    password_file: PathBuf,
}

impl Central {
    fn start(lab: &Lab) -> Result<Self> {
        let dir = lab.new_subdir("central")?;
        let pg = PgServer::start(lab.procs(), &dir)?;
        let password_file = secret(&dir, "router.pw", PASSWORD)?;
        let central = Central {
            pg,
            dir,
            password_file,
        };
        central.migrate()?;
        for (router, role) in [("rtr-a", "sshgw_rtr_a"), ("rtr-b", "sshgw_rtr_b")] {
            central.pg.create_login_role(role, PASSWORD)?;
            central.pg.psql(&format!(
                "INSERT INTO sshgw.routers (router_id, role) VALUES ('{router}', '{role}');
                 GRANT sshgw_router TO {role};"
            ))?;
        }
        central.pg.create_login_role("auditor", PASSWORD)?;
        central.pg.psql("GRANT sshgw_auditor TO auditor;")?;
        Ok(central)
    }

    /// `sshgw central migrate --url` as the superuser, over TLS with `verify-full`.
    fn migrate(&self) -> Result<String> {
        let pw = secret(&self.dir, "postgres.pw", self.pg.superuser_password())?;
        let url = format!(
            "{}&sslrootcert={}",
            self.pg.tcp_url("postgres", "verify-full"),
            self.pg.ca_cert_path().display()
        );
        let out = Command::new(sshgw_bin()?)
            .args(["central", "migrate", "--url", &url, "--password-file"])
            .arg(&pw)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "sshgw central migrate failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    }

    /// `[central]` for a router whose role is `role`, over the Unix socket.
    fn router_toml(&self, role: &str) -> String {
        format!(
            "[central]\npostgres = \"{}\"\npassword_file = \"{}\"\n",
            self.pg.socket_url(role),
            self.password_file.display()
        )
    }

    /// An auditor's config (the CLI reads `[central]` from it), over TCP with TLS.
    fn auditor_config(&self) -> Result<PathBuf> {
        let path = self.dir.join("auditor.toml");
        let url = format!(
            "{}&sslrootcert={}",
            self.pg.tcp_url("auditor", "verify-full"),
            self.pg.ca_cert_path().display()
        );
        std::fs::write(
            &path,
            format!(
                "state_dir = \"{}\"\n[datapath]\ninterfaces = [\"r0\"]\n[central]\npostgres = \"{url}\"\npassword_file = \"{}\"\n",
                self.dir.join("auditor-state").display(),
                self.password_file.display()
            ),
        )?;
        Ok(path)
    }

    /// `sshgw ARGS --config auditor.toml`, as JSON.
    fn auditor_json(&self, args: &[&str]) -> Result<Value> {
        let config = self.auditor_config()?;
        let out = Command::new(sshgw_bin()?)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()?;
        ensure!(
            out.status.success(),
            "sshgw {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("sshgw printed no JSON")
    }

    /// The router ids and ids of `sessions --central ARGS`.
    fn central_sessions(&self, args: &[&str]) -> Result<Vec<(String, String)>> {
        let mut all = vec!["sessions", "--central", "--json"];
        all.extend_from_slice(args);
        let v = self.auditor_json(&all)?;
        let list = v["sessions"].as_array().context("no sessions array")?;
        Ok(list
            .iter()
            .map(|s| {
                (
                    str_field(s, "router_id").unwrap_or("-").to_owned(),
                    str_field(s, "id").unwrap_or("-").to_owned(),
                )
            })
            .collect())
    }

    /// The seqs of `router`'s central events, as the superuser sees them.
    fn event_seqs(&self, router: &str) -> Result<Vec<i64>> {
        let out = self.pg.psql(&format!(
            "SELECT seq FROM sshgw.events WHERE router_id = '{router}' ORDER BY seq"
        ))?;
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.trim().parse().context("seq"))
            .collect()
    }

    fn count(&self, sql: &str) -> Result<i64> {
        Ok(self.pg.psql(sql)?.trim().parse()?)
    }
}

/// A daemon on `site` shipping as `router`/`role`.
fn router<'a>(
    lab: &'a Lab,
    central: &Central,
    site: SiteId,
    router: &str,
    role: &str,
) -> Result<Gateway<'a>> {
    let mut cfg = GatewayConfig::default().site(site);
    cfg.extra_toml = central.router_toml(role);
    let mut gw = lab.gateway_with(cfg.router_id(router))?;
    gw.start()?;
    Ok(gw)
}

/// `status --json`'s `central` object once its outbox is empty and it has no error.
fn wait_shipped(gw: &Gateway<'_>) -> Result<Value> {
    poll_until("the outbox to be shipped", WAIT, POLL, || {
        let status = gw.status_json()?;
        let central = status["central"].clone();
        let done = central["outbox_rows"] == 0 && central.get("last_error").is_none();
        Ok(done.then_some(central))
    })
}

/// Number of sessions in a daemon's local log.
fn local_sessions(gw: &Gateway<'_>) -> Result<Vec<Value>> {
    gw.sessions(&[])
}

/// 1 and 2: one query for both routers, filters, and RLS between the routers.
#[test]
fn both_routers_in_one_index_and_neither_can_touch_the_others_rows() {
    lab_test(|lab| {
        let site_b = lab.add_site()?;
        let site_a = lab.site(SiteId::First)?;
        let _sshd = lab.start_sshd_for_gateway()?;
        let central = Central::start(lab)?;
        ensure!(
            central.migrate()?.contains("already at version"),
            "a second migrate should change nothing"
        );
        let a = router(lab, &central, SiteId::First, "rtr-a", "sshgw_rtr_a")?;
        let b = router(lab, &central, SiteId::Second, "rtr-b", "sshgw_rtr_b")?;
        site_a.session(FAM, "echo from-a")?;
        site_b.session(FAM, "echo from-b")?;
        site_a
            .ssh(FAM.audited())
            .bind(site_a.enrolled(FAM))
            .sftp_batch("put /etc/hostname /tmp/central-upload-marker.txt\n")?
            .check()?;
        wait_shipped(&a)?;
        wait_shipped(&b)?;

        let all = central.central_sessions(&[])?;
        let routers: BTreeSet<_> = all.iter().map(|(r, _)| r.as_str()).collect();
        ensure!(
            routers == BTreeSet::from(["rtr-a", "rtr-b"]) && all.len() == 3,
            "one central query should list the 3 sessions of both routers: {all:?}"
        );
        let only_b = central.central_sessions(&["--router", "rtr-b"])?;
        ensure!(
            only_b.len() == 1 && only_b[0].0 == "rtr-b",
            "--router rtr-b: {only_b:?}"
        );
        let by_device = central.central_sessions(&["--device", "laptop-jdoe-2"])?;
        ensure!(by_device == only_b, "--device laptop-jdoe-2: {by_device:?}");
        let dest = FAM.audited().to_string();
        let by_dest =
            central.central_sessions(&["--destination", &dest, "--user", "JDOE@example.com"])?;
        ensure!(
            by_dest.len() == 3,
            "--destination {dest} --user: {by_dest:?}"
        );
        let files = central.central_sessions(&["--file", "*central-upload-*.txt"])?;
        ensure!(
            files.len() == 1 && files[0].0 == "rtr-a",
            "--file should find the sftp session of rtr-a: {files:?}"
        );
        let shown =
            central.auditor_json(&["sessions", "show", &files[0].1, "--central", "--json"])?;
        let paths: Vec<_> = shown["file_ops"]
            .as_array()
            .context("no file_ops")?
            .iter()
            .filter_map(|f| str_field(f, "path"))
            .collect();
        ensure!(
            paths
                .iter()
                .any(|p| p.ends_with("central-upload-marker.txt")),
            "show --central should list the upload: {shown:#}"
        );
        ensure!(
            shown["router_id"] == "rtr-a"
                && shown["channels"].as_array().is_some_and(|c| !c.is_empty()),
            "show --central: {shown:#}"
        );
        let local_a: BTreeSet<String> = local_sessions(&a)?
            .iter()
            .filter_map(|s| str_field(s, "id").map(str::to_owned))
            .collect();
        let central_a: BTreeSet<String> = all
            .iter()
            .filter(|(r, _)| r == "rtr-a")
            .map(|(_, id)| id.clone())
            .collect();
        ensure!(
            local_a == central_a,
            "rtr-a: local {local_a:?}, central {central_a:?}"
        );

        // Router A's role against router B's rows.
        let b_id = &only_b[0].1;
        let as_a = |sql: &str| central.pg.psql_as("sshgw_rtr_a", PASSWORD, sql);
        for forged in [
            "UPDATE sshgw.events SET payload = '{}' WHERE router_id = 'rtr-a'",
            "UPDATE sshgw.sessions SET destination = '192.0.2.1:22' WHERE router_id = 'rtr-a'",
            "UPDATE sshgw.file_ops SET path = '/nothing' WHERE router_id = 'rtr-a'",
        ] {
            let r = as_a(forged)?;
            ensure!(
                r.as_ref().is_err_and(|e| e.contains("permission denied")),
                "a router's role rewrote its own history ({forged}): {r:?}"
            );
        }
        let updated = as_a(
            "WITH u AS (UPDATE sshgw.sessions SET login = 'forged' WHERE router_id = 'rtr-b' RETURNING 1) SELECT count(*) FROM u",
        )?;
        ensure!(
            updated == Ok("0".into()),
            "A updated B's sessions: {updated:?}"
        );
        let seen = as_a("SELECT count(*) FROM sshgw.events WHERE router_id = 'rtr-b'")?;
        ensure!(seen == Ok("0".into()), "A reads B's events: {seen:?}");
        let insert = as_a(&format!(
            "INSERT INTO sshgw.file_ops (router_id, seq, session_id, channel, at, protocol, op, path, bytes_read, bytes_written, status, denied)
             VALUES ('rtr-b', 999999, '{b_id}', 0, now(), 'sftp', 'open', '/forged', 0, 0, 'ok', false)"
        ))?;
        ensure!(
            insert
                .as_ref()
                .is_err_and(|e| e.contains("row-level security")),
            "A inserted a row as B: {insert:?}"
        );
        let delete = as_a("DELETE FROM sshgw.sessions WHERE router_id = 'rtr-a'")?;
        ensure!(
            delete
                .as_ref()
                .is_err_and(|e| e.contains("permission denied")),
            "a router's role deleted rows: {delete:?}"
        );
        let cursor = as_a("UPDATE sshgw.router_cursor SET seq = 0 WHERE router_id = 'rtr-b'")?;
        ensure!(cursor.is_ok(), "{cursor:?}");
        ensure!(
            central.count("SELECT count(*) FROM sshgw.sessions WHERE login = 'forged'")? == 0
                && central
                    .count("SELECT min(seq) FROM sshgw.router_cursor WHERE router_id = 'rtr-b'")?
                    > 0,
            "B's rows changed"
        );
        Ok(())
    });
}

/// 3: the daemon dies while its batch transaction is open (PostgreSQL made slow with a
/// trigger, so the transaction is surely caught open); after the restart, the index holds
/// every outbox row exactly once.
#[test]
fn a_shipper_killed_mid_batch_leaves_no_gap_and_no_duplicate() {
    lab_test(|lab| {
        let site_a = lab.site(SiteId::First)?;
        let _sshd = lab.start_sshd_for_gateway()?;
        let mut central = Central::start(lab)?;
        central.pg.psql(
            "CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON sshgw.events FOR EACH ROW EXECUTE FUNCTION public.slow();",
        )?;
        central.pg.stop()?;
        let mut a = router(lab, &central, SiteId::First, "rtr-a", "sshgw_rtr_a")?;
        for i in 0..8 {
            site_a.session(FAM, &format!("echo batch-{i}"))?;
        }
        central.pg.start_again()?;
        // The shipper's transaction, open and with rows written (it has a transaction id).
        poll_until(
            "the shipper's batch transaction to be open",
            WAIT,
            POLL,
            || {
                let open = central.count(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'sshgw_rtr_a'
                   AND backend_xid IS NOT NULL",
                )?;
                Ok((open > 0).then_some(()))
            },
        )?;
        ensure!(
            central.count("SELECT count(*) FROM sshgw.events")? == 0,
            "rows were visible before the batch committed"
        );
        a.kill()?;
        poll_until("the killed shipper's backend to end", WAIT, POLL, || {
            let left = central
                .count("SELECT count(*) FROM pg_stat_activity WHERE usename = 'sshgw_rtr_a'")?;
            Ok((left == 0).then_some(()))
        })?;
        ensure!(
            central.count("SELECT count(*) FROM sshgw.events")? == 0
                && central.count("SELECT count(*) FROM sshgw.router_cursor")? == 0,
            "the killed batch was not rolled back"
        );
        central.pg.psql("DROP TRIGGER slow ON sshgw.events;")?;
        a.start()?;
        site_a.session(FAM, "echo after-restart")?;
        wait_shipped(&a)?;
        let seqs = central.event_seqs("rtr-a")?;
        let max = *seqs.last().context("no events")?;
        ensure!(
            seqs == (1..=max).collect::<Vec<_>>(),
            "the central seqs should be 1..={max} exactly once: {seqs:?}"
        );
        let cursor =
            central.count("SELECT seq FROM sshgw.router_cursor WHERE router_id = 'rtr-a'")?;
        ensure!(cursor == max, "cursor {cursor}, last event {max}");
        let local = local_sessions(&a)?.len() as i64;
        let opened = central.count(
            "SELECT count(*) FROM sshgw.events WHERE router_id = 'rtr-a' AND kind = 'session.opened'",
        )?;
        let rows =
            central.count("SELECT count(*) FROM sshgw.sessions WHERE router_id = 'rtr-a'")?;
        ensure!(
            local == 9 && opened == local && rows == local,
            "local sessions {local}, central session.opened {opened}, central sessions {rows}"
        );
        // The batch is pipelined: each session's later updates (login, close, channel
        // close) must still have found the rows its earlier statements inserted.
        let unfinished = central.count(
            "SELECT count(*) FROM sshgw.sessions s WHERE router_id = 'rtr-a'
               AND (ended_at IS NULL OR login IS NULL OR NOT EXISTS (SELECT 1 FROM sshgw.channels c
                    WHERE c.router_id = s.router_id AND c.session_id = s.id AND c.ended_at IS NOT NULL))",
        )?;
        ensure!(
            unfinished == 0,
            "{unfinished} central sessions miss their later updates"
        );
        Ok(())
    });
}

/// 4: with PostgreSQL down, sessions go on; the outbox shows the backlog; it drains.
#[test]
fn postgres_down_sessions_go_on_and_the_index_catches_up() {
    lab_test(|lab| {
        let site_a = lab.site(SiteId::First)?;
        let _sshd = lab.start_sshd_for_gateway()?;
        let mut central = Central::start(lab)?;
        let a = router(lab, &central, SiteId::First, "rtr-a", "sshgw_rtr_a")?;
        site_a.session(FAM, "echo before")?;
        wait_shipped(&a)?;
        central.pg.stop()?;
        for i in 0..3 {
            site_a.session(FAM, &format!("echo while-down-{i}"))?;
        }
        ensure!(
            local_sessions(&a)?.len() == 4,
            "the sessions were not logged locally"
        );
        let backlog = poll_until("the outbox to show the backlog", WAIT, POLL, || {
            let c = a.status_json()?["central"].clone();
            let waiting =
                c["outbox_rows"].as_u64().unwrap_or(0) >= 9 && c.get("last_error").is_some();
            Ok(waiting.then_some(c))
        })?;
        eprintln!("while PostgreSQL is down: {backlog}");
        central.pg.start_again()?;
        wait_shipped(&a)?;
        let rows =
            central.count("SELECT count(*) FROM sshgw.sessions WHERE router_id = 'rtr-a'")?;
        ensure!(
            rows == 4,
            "the central index should hold all 4 sessions, has {rows}"
        );
        let seqs = central.event_seqs("rtr-a")?;
        let max = *seqs.last().context("no events")?;
        ensure!(seqs == (1..=max).collect::<Vec<_>>(), "seqs: {seqs:?}");
        Ok(())
    });
}

/// 5: the recording's object key, as the router logged it, is in the central index.
#[test]
fn show_central_names_each_recordings_object() {
    lab_test(|lab| {
        let site_a = lab.site(SiteId::First)?;
        let _sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let central = Central::start(lab)?;
        let store = S3Server::start_with(
            lab.procs(),
            Some(&lab.rtr),
            &lab.dir().join("s3"),
            &[("sshgw", "recordings/rtr-a/")],
        )?;
        store.create_locked_bucket("sshgw", 1)?;
        let creds = secret(
            &central.dir,
            "s3.credentials",
            &format!(
                "access_key_id={}\nsecret_access_key={}",
                ROUTER.access_key, ROUTER.secret_key
            ),
        )?;
        let key = RecordingKey::generate(lab, "rec")?;
        let mut cfg = GatewayConfig::default().policies(recorded_policies());
        cfg.extra_toml = format!(
            "{}\n[storage]\nendpoint = \"{}\"\nbucket = \"sshgw\"\nprefix = \"recordings\"\ncredentials_file = {}\n{}",
            recording_toml(Some(&key.public), None, &[]),
            store.endpoint(),
            toml_path(&creds),
            central.router_toml("sshgw_rtr_a")
        );
        let mut gw = lab.gateway_with(cfg.router_id("rtr-a"))?;
        gw.start()?;
        site_a.session(FAM, "echo recorded")?;
        let id = poll_until("the recording to be uploaded", WAIT, POLL, || {
            let sessions = local_sessions(&gw)?;
            let Some(id) = sessions.first().and_then(|s| str_field(s, "id")) else {
                return Ok(None);
            };
            let local = gw.session(id)?;
            let uploaded = !local["channels"][0]["recording_object"].is_null();
            Ok(uploaded.then(|| (id.to_owned(), local)))
        })?;
        let (id, local) = id;
        wait_shipped(&gw)?;
        let shown = central.auditor_json(&["sessions", "show", &id, "--central", "--json"])?;
        let object = &shown["channels"][0]["recording_object"];
        ensure!(
            object["key"].is_string() && *object == local["channels"][0]["recording_object"],
            "central {object:#}, local {:#}",
            local["channels"][0]["recording_object"]
        );
        let key = object["key"].as_str().unwrap_or_default();
        ensure!(key.starts_with("recordings/rtr-a/"), "object key {key}");
        store.head("sshgw", key)?;
        gw.stop()?;
        Ok(())
    });
}

/// 6: a session log replaced under the same router id starts its seqs again; the shipper
/// refuses it with a clear error instead of skipping its rows as already shipped.
#[test]
fn a_replaced_session_log_is_refused_not_skipped() {
    lab_test(|lab| {
        let site_a = lab.site(SiteId::First)?;
        let _sshd = lab.start_sshd_for_gateway()?;
        let central = Central::start(lab)?;
        let mut a = router(lab, &central, SiteId::First, "rtr-a", "sshgw_rtr_a")?;
        site_a.session(FAM, "echo first-log")?;
        wait_shipped(&a)?;
        a.stop()?;
        for suffix in ["", "-wal", "-shm"] {
            let path = a.state_dir().join(format!("sessions.db{suffix}"));
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
        }
        a.start()?;
        site_a.session(FAM, "echo second-log")?;
        let error = poll_until("the shipper to refuse the new log", WAIT, POLL, || {
            let c = a.status_json()?["central"].clone();
            Ok(c["last_error"].as_str().map(str::to_owned))
        })?;
        ensure!(
            error.contains("shipped by another session log"),
            "unexpected error: {error}"
        );
        ensure!(
            central.count("SELECT count(*) FROM sshgw.sessions WHERE router_id = 'rtr-a'")? == 1,
            "rows of the second log reached the index"
        );
        Ok(())
    });
}

/// 7: a user's command with a NUL byte (which PostgreSQL's text and jsonb refuse) does not
/// stop the router's shipping: later sessions still reach the index.
#[test]
fn a_nul_byte_in_a_command_does_not_stop_shipping() {
    lab_test(|lab| {
        let site_a = lab.site(SiteId::First)?;
        let _sshd = lab.start_sshd_for_gateway()?;
        let central = Central::start(lab)?;
        let a = router(lab, &central, SiteId::First, "rtr-a", "sshgw_rtr_a")?;
        let bin = env!("CARGO_BIN_EXE_sshgw-rawssh");
        let mut cmd = lab.dev.exec_command(bin);
        cmd.arg(FAM.audited().to_string())
            .arg("jdoe")
            .args(["exec-nul", "mosh-server new nul\\0byte"]);
        let out = lab
            .procs()
            .run("sshgw-rawssh", &mut cmd, Duration::from_secs(120))?;
        ensure!(out.success(), "sshgw-rawssh: {out:?}");
        site_a.session(FAM, "echo after-the-nul")?;
        wait_shipped(&a)?;
        let local = local_sessions(&a)?.len() as i64;
        let central_rows =
            central.count("SELECT count(*) FROM sshgw.sessions WHERE router_id = 'rtr-a'")?;
        ensure!(
            local == 2 && central_rows == local,
            "local {local} sessions, central {central_rows}"
        );
        let replaced = central.count(
            "SELECT count(*) FROM sshgw.events WHERE router_id = 'rtr-a' AND payload::text LIKE '%nul\u{FFFD}byte%'",
        )?;
        ensure!(
            replaced >= 1,
            "the NUL should arrive as U+FFFD; events: {}",
            central.pg.psql(
                "SELECT kind, payload FROM sshgw.events WHERE router_id = 'rtr-a' ORDER BY seq"
            )?
        );
        Ok(())
    });
}
