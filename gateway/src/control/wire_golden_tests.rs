//! Golden tests of the JSON sshgw writes: `policies.json`, `devices.json`, `sshgw status
//! --json` (the control API's `/v1/status`), a session record, and what `/v1/sessions` and
//! `/v1/sessions/{id}` answer. Every value sets every field (and each enum a non-default
//! variant somewhere), so a renamed field or a changed enum string fails here.
//! Regenerate with `SSHGW_BLESS=1` (see [`crate::util::golden`]).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::{
    cli::status,
    config::LogFailure,
    control::api::{self, Interface, Report},
    identity::devices::{Device, DeviceTable, User},
    policy::model::{
        Action, IdentityMatch, Policy, PolicySet, ProgramRule, SftpRule, SshSettings,
        UnrecordableRule,
    },
    sessions::{
        ChannelRecord, FileOpRecord, SessionRecord,
        health::HealthReport,
        live::{LiveSessions, Tracker, complete},
        store::{Filter, SessionStore, Write},
    },
    util::golden::assert_json_golden,
};

fn policies() -> PolicySet {
    let every_option = Policy {
        id: "prod-audit".into(),
        name: "Production (recorded)".into(),
        precedence: 10,
        enabled: true,
        action: Action::AuditSsh,
        destinations: vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        ],
        ports: vec![22, 2222],
        identity: IdentityMatch {
            emails: vec!["jdoe@example.com".into()],
            email_domains: vec!["example.org".into()],
            groups: vec!["sre".into()],
        },
        posture: vec!["disk-encrypted".into()],
        ssh: SshSettings {
            command_logging: true,
            usernames: vec!["root".into(), "deploy".into()],
            port_forwarding: Some(true),
            agent_forwarding: Some(false),
            max_duration: Some(Duration::from_secs(90 * 60)),
            sftp: SftpRule::ReadOnly,
            max_upload_bytes: Some(1_048_576),
            shell: ProgramRule::Deny,
            exec: ProgramRule::Deny,
            unrecordable_programs: UnrecordableRule::Allow,
        },
    };
    let defaults = Policy {
        id: "block-rest".into(),
        name: "Everything else".into(),
        precedence: 100,
        enabled: false,
        action: Action::Block,
        destinations: vec!["0.0.0.0/0".parse().unwrap()],
        ports: vec![22],
        identity: IdentityMatch::default(),
        posture: vec![],
        ssh: SshSettings {
            sftp: SftpRule::Deny,
            ..SshSettings::default()
        },
    };
    PolicySet {
        policies: vec![every_option, defaults],
    }
}

#[test]
fn policies_json_golden() {
    let set = policies();
    set.validate().unwrap();
    assert_json_golden("policies.json", &set);
}

#[test]
fn devices_json_golden() {
    let table = DeviceTable {
        devices: vec![
            Device {
                id: "laptop-42".into(),
                addresses: vec!["100.96.0.7".parse().unwrap(), "fd7a::7".parse().unwrap()],
                interface: Some("wg0".into()),
                user: User {
                    email: "jdoe@example.com".into(),
                    name: Some("Jane Doe".into()),
                    groups: vec!["sre".into()],
                },
                posture: vec!["disk-encrypted".into()],
            },
            Device {
                id: "phone".into(),
                addresses: vec!["100.96.0.8".parse().unwrap()],
                interface: None,
                user: User {
                    email: "ops@example.org".into(),
                    name: None,
                    groups: vec![],
                },
                posture: vec![],
            },
        ],
    };
    table.validate().unwrap();
    assert_json_golden("devices.json", &table);
}

#[test]
fn status_json_golden() {
    // Every datapath counter, under the name the status report and metrics use.
    let counters: crate::datapath::Counters = gateway_common::Counter::ALL
        .iter()
        .zip(1..)
        .map(|(c, n)| (c.name(), n))
        .collect();
    let running = Report {
        daemon: "running".into(),
        pin_dir: PathBuf::from("/sys/fs/bpf/sshgw"),
        pinned: true,
        interfaces: vec![Interface {
            name: "wg0".into(),
            link_id: 7,
            program_id: 42,
        }],
        listeners: vec![
            "127.0.0.1:2222".parse::<SocketAddr>().unwrap(),
            "[::1]:2222".parse().unwrap(),
        ],
        counters: api::counters_owned(counters),
        session_log: Some(HealthReport {
            state: "failing".into(),
            on_failure: LogFailure::Allow,
            error: Some("disk I/O error".into()),
            since: Some(1_700_000_000_123_456),
            write_failures: 3,
            lost: 1,
            queued: 5,
            queue_waits: 2,
        }),
        storage: Some(crate::control::api::StorageReport {
            backlog_files: 2,
            backlog_bytes: 3 << 20,
            oldest_pending_secs: 41,
            max_spool_mb: 1024,
            spool_full: false,
            last_error: Some("cannot upload k: connection refused".into()),
        }),
        central: None,
        export: Default::default(),
    }
    .with_outbox(vec![
        (
            "central",
            crate::sessions::outbox::ConsumerReport {
                outbox_rows: 12,
                lag_secs: 3,
                last_error: None,
            },
        ),
        (
            "syslog",
            crate::sessions::outbox::ConsumerReport {
                outbox_rows: 40,
                lag_secs: 95,
                last_error: Some("syslog 127.0.0.1:6514: connection refused".into()),
            },
        ),
    ]);
    assert_json_golden("status_running.json", &running);
    // What `sshgw status --json` prints when no daemon answers and nothing is pinned.
    let stopped = status::from_pins(PathBuf::from("/nonexistent/sshgw-golden-pins")).unwrap();
    assert_json_golden("status_stopped.json", &stopped);
}

/// A session with every field set, one channel and one file operation.
fn full_record() -> SessionRecord {
    SessionRecord {
        id: "0190b8e2-7c1d-7a3e-9f00-00000000beef".into(),
        email: Some("jdoe@example.com".into()),
        device_id: Some("laptop-42".into()),
        source: "100.96.0.7:40022".into(),
        destination: "203.0.113.10:22".into(),
        login: Some("root".into()),
        policy_id: Some("prod-audit".into()),
        policy_name: Some("Production (recorded)".into()),
        decision: "audit_ssh".parse().unwrap(),
        started_at: 1_700_000_000_000_001,
        ended_at: Some(1_700_000_090_500_000),
        duration_ms: Some(90_499),
        bytes_from_client: 1234,
        bytes_from_server: 56789,
        close_reason: Some("client".into()),
        cert_serial: Some("18446744073709551615".into()),
        upstream_host_key: Some("SHA256:Kq0vP1bM5yqf7o2b0yJ3Xl0s3sWmJk8Yb8Cq3e8cE1c".into()),
        channels: vec![ChannelRecord {
            channel: 0,
            kind: "exec".parse().unwrap(),
            command: Some("tar czf - /etc".into()),
            started_at: 1_700_000_001_000_000,
            ended_at: Some(1_700_000_002_000_000),
            exit_status: Some(0),
            exit_signal: Some("TERM".into()),
            recording: Some("/var/lib/sshgw/recordings/s-ch0.sshlog".into()),
            recording_object: Some(crate::sessions::uploads::StoredObject {
                key: "recordings/rtr-1/2026/12/05/s-ch0.sshlog".into(),
                version_id: Some("v1".into()),
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            }),
            env: vec![("LANG".into(), "C.UTF-8".into())],
        }],
        file_ops: vec![FileOpRecord {
            channel: 0,
            at: 1_700_000_001_500_000,
            protocol: "sftp".parse().unwrap(),
            op: "rename".parse().unwrap(),
            path: "/tmp/a".into(),
            target: Some("/tmp/b".into()),
            flags: Some("write,create".into()),
            bytes_read: 10,
            bytes_written: 20,
            status: "ok".into(),
            denied: true,
        }],
    }
}

/// Writes `record` to `store` as the relay's tracker does: open, login, channel, file
/// operation, channel close, session close.
fn store_record(store: &SessionStore, record: &SessionRecord) {
    let id = record.id.clone();
    store.write(Write::Open(Box::new(SessionRecord {
        channels: vec![],
        file_ops: vec![],
        ..record.clone()
    })));
    store.write(Write::LoggedIn {
        id: id.clone(),
        login: record.login.clone().unwrap(),
        cert_serial: record.cert_serial.clone().unwrap(),
        upstream_host_key: record.upstream_host_key.clone().unwrap(),
    });
    for c in &record.channels {
        store.write(Write::ChannelOpen {
            session_id: id.clone(),
            record: ChannelRecord {
                ended_at: None,
                exit_status: None,
                exit_signal: None,
                ..c.clone()
            },
        });
    }
    for f in &record.file_ops {
        store.write(Write::FileOp {
            session_id: id.clone(),
            record: f.clone(),
        });
    }
    for c in &record.channels {
        store.write(Write::ChannelClose {
            session_id: id.clone(),
            channel: c.channel,
            ended_at: c.ended_at.unwrap(),
            exit_status: c.exit_status,
            exit_signal: c.exit_signal.clone(),
        });
        // The uploader's result: what `recording_object` is read back from.
        if let (Some(path), Some(object)) = (&c.recording, &c.recording_object) {
            store.write(Write::Upload(Box::new(
                crate::sessions::uploads::UploadResult {
                    session_id: id.clone(),
                    channel: Some(c.channel),
                    path: Some(path.clone()),
                    key: object.key.clone(),
                    outcome: crate::sessions::uploads::UploadOutcome::Uploaded {
                        size: 1,
                        object: object.clone(),
                        at: 1,
                    },
                },
            )));
        }
    }
    store.write(Write::Close {
        id,
        ended_at: record.ended_at.unwrap(),
        duration_ms: record.duration_ms.unwrap(),
        bytes_from_client: record.bytes_from_client,
        bytes_from_server: record.bytes_from_server,
        close_reason: record.close_reason.clone().unwrap(),
    });
    assert!(store.sync());
}

#[test]
fn session_record_json_golden_survives_the_session_log() {
    let record = full_record();
    assert_json_golden("session_record.json", &record);
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(&dir.path().join("sessions.db")).unwrap();
    store_record(&store, &record);
    // `GET /v1/sessions/{id}` of an ended session answers the stored record.
    let stored = store.get(&record.id).unwrap().unwrap();
    assert_json_golden("session_record.json", &stored);
}

/// A session still running: its live record (one open shell, one refused upload).
fn live_session(store: &SessionStore, live: &Arc<LiveSessions>) -> Tracker {
    let tracker = Tracker::open(
        SessionRecord {
            email: Some("ops@example.org".into()),
            device_id: Some("phone".into()),
            policy_id: Some("prod-audit".into()),
            policy_name: Some("Production (recorded)".into()),
            ..SessionRecord::new(
                "0190b8e2-7c1d-7a3e-9f00-00000000cafe".into(),
                "[fd7a::7]:50000".into(),
                "[2001:db8::10]:22".into(),
                "audit_ssh".parse().unwrap(),
                1_700_000_100_000_000,
            )
        },
        store.clone(),
        live.clone(),
    );
    tracker.channel_opened(ChannelRecord {
        channel: 1,
        kind: "shell".parse().unwrap(),
        command: None,
        started_at: 1_700_000_100_200_000,
        ended_at: None,
        exit_status: None,
        exit_signal: None,
        recording: None,
        recording_object: None,
        env: vec![],
    });
    tracker.file_op(FileOpRecord {
        channel: 2,
        at: 1_700_000_100_300_000,
        protocol: "scp".parse().unwrap(),
        op: "refused".parse().unwrap(),
        path: "scp -t /etc".into(),
        target: None,
        flags: None,
        bytes_read: 0,
        bytes_written: 0,
        status: "sshgw: scp upload is denied by policy \"Production (recorded)\" (prod-audit): ssh.sftp = \"read_only\"".into(),
        denied: true,
    });
    tracker
}

#[test]
fn session_list_and_show_json_golden() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(&dir.path().join("sessions.db")).unwrap();
    let live = Arc::new(LiveSessions::default());
    store_record(&store, &full_record());
    let tracker = live_session(&store, &live);
    assert!(store.sync());

    // `GET /v1/sessions`: the log's records, live ones as their live summary.
    let sessions: Vec<SessionRecord> = store
        .list(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|s| live.summary(&s.id).unwrap_or(s))
        .collect();
    assert_json_golden(
        "sessions_list.json",
        &serde_json::json!({ "sessions": sessions }),
    );
    // `GET /v1/sessions?active=true`.
    assert_json_golden(
        "sessions_list_active.json",
        &serde_json::json!({ "sessions": live.list() }),
    );
    // `GET /v1/sessions/{id}` of a live session: the live record completed from the log.
    let id = "0190b8e2-7c1d-7a3e-9f00-00000000cafe";
    let shown = complete(live.get(id).unwrap(), store.get(id).unwrap());
    assert_json_golden("session_show_live.json", &shown);
    drop(tracker);
}
