//! The session log's rows as SQLite holds them: operators query `sessions.db` directly, so
//! the strings (and storage classes) of `decision`, `kind`, `protocol`, `op`, `status`,
//! `close_reason` and the rest are a file format. Records are built as the relay builds
//! them today, written through the real [`SessionStore`], and read back raw.

use rusqlite::types::Value::{self, Integer, Null, Text};

use super::{
    ChannelRecord, FileOpRecord, SessionRecord,
    store::{SessionStore, Write},
};

fn text(s: &str) -> Value {
    Text(s.into())
}

fn channel(channel: u32, kind: &str, command: Option<&str>, at: i64) -> ChannelRecord {
    ChannelRecord {
        channel,
        kind: kind.parse().unwrap(),
        command: command.map(Into::into),
        started_at: at,
        ended_at: None,
        exit_status: None,
        exit_signal: None,
        recording: None,
        recording_object: None,
        env: vec![],
    }
}

fn file_op(channel: u32, protocol: &str, op: &str, path: &str, status: &str) -> FileOpRecord {
    FileOpRecord {
        channel,
        at: 1_000_500,
        protocol: protocol.parse().unwrap(),
        op: op.parse().unwrap(),
        path: path.into(),
        target: None,
        flags: None,
        bytes_read: 0,
        bytes_written: 0,
        status: status.into(),
        denied: false,
    }
}

/// What the relay writes for the audited session: a shell, an exec with its environment
/// and recording, the SFTP subsystem and a refused scp upload, and their file operations.
fn audited_session(store: &SessionStore) {
    let id = "s-audit".to_string();
    store.write(Write::Open(Box::new(SessionRecord::new(
        id.clone(),
        "100.96.0.7:40000".into(),
        "203.0.113.10:22".into(),
        "audit_ssh".parse().unwrap(),
        1_000_000,
    ))));
    store.write(Write::LoggedIn {
        id: id.clone(),
        login: "root".into(),
        cert_serial: "18446744073709551615".into(),
        upstream_host_key: "SHA256:abc".into(),
    });
    let exec = ChannelRecord {
        recording: Some("/rec/s-audit-ch1.sshlog".into()),
        recording_object: None,
        env: vec![("LANG".into(), "C.UTF-8".into())],
        ..channel(1, "exec", Some("uptime"), 1_000_200)
    };
    let channels = [
        channel(0, "shell", None, 1_000_100),
        exec,
        channel(2, "subsystem", Some("sftp"), 1_000_300),
        // A refused program: the relay logs it as a channel that exits 1.
        channel(3, "exec", Some("scp -t /etc"), 1_000_400),
    ];
    for record in channels {
        let session_id = id.clone();
        store.write(Write::ChannelOpen { session_id, record });
    }
    let ops = [
        FileOpRecord {
            flags: Some("read".into()),
            bytes_read: 4096,
            ..file_op(2, "sftp", "open", "/etc/hosts", "ok")
        },
        FileOpRecord {
            target: Some("/tmp/b".into()),
            ..file_op(2, "sftp", "rename", "/tmp/a", "Permission denied")
        },
        FileOpRecord {
            target: Some("f.txt".into()),
            flags: Some("size=3,mode=0644".into()),
            bytes_written: 3,
            ..file_op(2, "scp", "upload file", "/tmp", "ok")
        },
        FileOpRecord {
            denied: true,
            ..file_op(3, "scp", "refused", "scp -t /etc", "sshgw: scp is denied")
        },
        file_op(2, "sftp/scp", "unparseable", "", "packet too long"),
        file_op(
            1,
            "ssh",
            "unaudited handoff",
            "mosh-server new",
            "unrecorded",
        ),
    ];
    for record in ops {
        let session_id = id.clone();
        store.write(Write::FileOp { session_id, record });
    }
    for (channel, exit_status, exit_signal) in [(1, Some(0), None), (3, Some(1), None)]
        .into_iter()
        .chain([(0, None, Some("KILL".to_string()))])
    {
        store.write(Write::ChannelClose {
            session_id: id.clone(),
            channel,
            ended_at: 1_900_000,
            exit_status,
            exit_signal,
        });
    }
    store.write(Write::Close {
        id,
        ended_at: 2_000_000,
        duration_ms: 1000,
        bytes_from_client: 10,
        bytes_from_server: 20,
        close_reason: "client".into(),
    });
}

fn rows(conn: &rusqlite::Connection, sql: &str) -> Vec<Vec<Value>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let width = stmt.column_count();
    stmt.query_map([], |r| (0..width).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn session_log_rows_keep_todays_strings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let store = SessionStore::open(&path).unwrap();
    audited_session(&store);
    // A blocked connection, and one a previous daemon never closed.
    let blocked = SessionRecord::new(
        "s-block".into(),
        "a:1".into(),
        "b:22".into(),
        "block".parse().unwrap(),
        3,
    );
    store.write(Write::Open(Box::new(blocked)));
    store.write(Write::Close {
        id: "s-block".into(),
        ended_at: 5,
        duration_ms: 0,
        bytes_from_client: 0,
        bytes_from_server: 0,
        close_reason: "sshgw: no policy allows this connection".into(),
    });
    let open = SessionRecord::new(
        "s-open".into(),
        "a:2".into(),
        "b:22".into(),
        "audit_ssh".parse().unwrap(),
        4,
    );
    store.write(Write::Open(Box::new(open)));
    assert!(store.sync());
    drop(store);
    drop(SessionStore::open(&path).unwrap());

    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(
        rows(
            &conn,
            "SELECT id, decision, login, cert_serial, started_at, ended_at, duration_ms, \
             bytes_from_client, close_reason FROM sessions ORDER BY id"
        ),
        [
            vec![
                text("s-audit"),
                text("audit_ssh"),
                text("root"),
                text("18446744073709551615"),
                Integer(1_000_000),
                Integer(2_000_000),
                Integer(1000),
                Integer(10),
                text("client"),
            ],
            vec![
                text("s-block"),
                text("block"),
                Null,
                Null,
                Integer(3),
                Integer(5),
                Integer(0),
                Integer(0),
                text("sshgw: no policy allows this connection"),
            ],
            vec![
                text("s-open"),
                text("audit_ssh"),
                Null,
                Null,
                Integer(4),
                Null,
                Null,
                Integer(0),
                text("interrupted: sshgw stopped"),
            ],
        ]
    );
    assert_eq!(
        rows(
            &conn,
            "SELECT channel, kind, command, ended_at, exit_status, exit_signal, recording, env \
             FROM channels ORDER BY channel"
        ),
        [
            vec![
                Integer(0),
                text("shell"),
                Null,
                Integer(1_900_000),
                Null,
                text("KILL"),
                Null,
                Null,
            ],
            vec![
                Integer(1),
                text("exec"),
                text("uptime"),
                Integer(1_900_000),
                Integer(0),
                Null,
                text("/rec/s-audit-ch1.sshlog"),
                text(r#"[["LANG","C.UTF-8"]]"#),
            ],
            vec![
                Integer(2),
                text("subsystem"),
                text("sftp"),
                Null,
                Null,
                Null,
                Null,
                Null,
            ],
            vec![
                Integer(3),
                text("exec"),
                text("scp -t /etc"),
                Integer(1_900_000),
                Integer(1),
                Null,
                Null,
                Null,
            ],
        ]
    );
    assert_eq!(
        rows(
            &conn,
            "SELECT channel, at, protocol, op, path, target, flags, bytes_read, bytes_written, \
             status, denied FROM file_ops ORDER BY rowid"
        ),
        [
            row(
                2,
                "sftp",
                "open",
                "/etc/hosts",
                None,
                Some("read"),
                (4096, 0),
                "ok",
                0
            ),
            row(
                2,
                "sftp",
                "rename",
                "/tmp/a",
                Some("/tmp/b"),
                None,
                (0, 0),
                "Permission denied",
                0
            ),
            row(
                2,
                "scp",
                "upload file",
                "/tmp",
                Some("f.txt"),
                Some("size=3,mode=0644"),
                (0, 3),
                "ok",
                0
            ),
            row(
                3,
                "scp",
                "refused",
                "scp -t /etc",
                None,
                None,
                (0, 0),
                "sshgw: scp is denied",
                1
            ),
            row(
                2,
                "sftp/scp",
                "unparseable",
                "",
                None,
                None,
                (0, 0),
                "packet too long",
                0
            ),
            row(
                1,
                "ssh",
                "unaudited handoff",
                "mosh-server new",
                None,
                None,
                (0, 0),
                "unrecorded",
                0
            ),
        ]
    );
}

/// A `file_ops` row as SQLite returns it.
#[allow(clippy::too_many_arguments)]
fn row(
    channel: i64,
    protocol: &str,
    op: &str,
    path: &str,
    target: Option<&str>,
    flags: Option<&str>,
    (read, written): (i64, i64),
    status: &str,
    denied: i64,
) -> Vec<Value> {
    let opt = |v: Option<&str>| v.map_or(Null, text);
    vec![
        Integer(channel),
        Integer(1_000_500),
        text(protocol),
        text(op),
        text(path),
        opt(target),
        opt(flags),
        Integer(read),
        Integer(written),
        text(status),
        Integer(denied),
    ]
}
