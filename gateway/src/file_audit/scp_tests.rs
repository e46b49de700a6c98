use bytes::Bytes;
use proptest::prelude::*;

use super::{
    Filtered, ScpAudit, ScpDirection, SftpMode, TransferRules,
    scp::{COMPLETE_UNCONFIRMED, ScpCommand, parse_command},
    sftp_tests::{rules, summary, transcript},
};

const UPLOAD: &[u8] = include_bytes!("../../fuzz/corpus/scp/upload-recursive.bin");
const DOWNLOAD: &[u8] = include_bytes!("../../fuzz/corpus/scp/download.bin");
const DOWNLOAD_MISSING: &[u8] = include_bytes!("../../fuzz/corpus/scp/download-missing.bin");
const DOWNLOAD_RECURSIVE: &[u8] = include_bytes!("../../fuzz/corpus/scp/download-recursive.bin");

/// The commands OpenSSH's scp -O sent for the recorded sessions.
const UPLOAD_COMMAND: &str = "scp -r -p -d -t /tmp/scp-seed/remote";
const DOWNLOAD_COMMAND: &str = "scp -f /tmp/scp-seed/remote/photos/cat.jpg";
const DOWNLOAD_MISSING_COMMAND: &str = "scp -f /tmp/scp-seed/remote/nope.txt";
const DOWNLOAD_RECURSIVE_COMMAND: &str = "scp -r -f /tmp/scp-seed/remote/photos";

fn command(s: &str) -> ScpCommand {
    parse_command(s).expect("scp command")
}

#[test]
fn parses_scp_commands() {
    let cmd_d = |d, r, target_dir, p: &[&str]| {
        Some(ScpCommand {
            direction: d,
            recursive: r,
            target_dir,
            paths: p.iter().map(|s| s.to_string()).collect(),
        })
    };
    let cmd = |d, r, p: &[&str]| cmd_d(d, r, false, p);
    use ScpDirection::{Download, Upload};
    // What OpenSSH 9.2's scp -O sends.
    assert_eq!(
        parse_command(UPLOAD_COMMAND),
        cmd_d(Upload, true, true, &["/tmp/scp-seed/remote"])
    );
    assert_eq!(parse_command("scp -t ."), cmd(Upload, false, &["."]));
    assert_eq!(
        parse_command("scp -t -- -weird"),
        cmd(Upload, false, &["-weird"])
    );
    assert_eq!(
        parse_command("scp -d -f /tmp/a"),
        cmd_d(Download, false, true, &["/tmp/a"])
    );
    assert_eq!(
        parse_command("scp -r -f /tmp/*.txt"),
        cmd(Download, true, &["/tmp/*.txt"])
    );
    // The remote shell splits unquoted spaces.
    assert_eq!(
        parse_command("scp -t /tmp/with space/x"),
        cmd(Upload, false, &["/tmp/with", "space/x"])
    );
    // Quoting, combined flags, a path to the program, options after the path.
    assert_eq!(
        parse_command("/usr/bin/scp -prf 'a b' \"c\\\"d\" e\\ f"),
        cmd(Download, true, &["a b", "c\"d", "e f"])
    );
    assert_eq!(parse_command("scp /x -t"), cmd(Upload, false, &["/x"]));
    assert_eq!(
        parse_command("scp -l 100 -t /x"),
        cmd(Upload, false, &["/x"])
    );
    assert_eq!(
        parse_command("scp -l100 -t /x"),
        cmd(Upload, false, &["/x"])
    );
    // Not (only) scp.
    for not in [
        "",
        "scp",
        "scp -t",
        "scp /x",
        "scp -t -f /x",
        "scp -Z -t /x",
        "scp -t /x; rm -rf /",
        "scp -t /x && true",
        "scp -t /x | cat",
        "scp -t /x > /dev/null",
        "scp -t $HOME",
        "scp -t \"$HOME\"",
        "scp -t `id`",
        "scp -t 'unterminated",
        "scp -t /x # comment",
        "sftp -t /x",
        "rscp -t /x",
        "sh -c 'scp -t /x'",
        "scp -t /x\nrm /y",
        "scp -l",
    ] {
        assert_eq!(parse_command(not), None, "{not:?}");
    }
}

#[derive(Default)]
struct Run {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    replies: Vec<u8>,
    events: Vec<String>,
    close: Option<String>,
}

impl Run {
    fn take(&mut self, out: Filtered, client: bool) {
        for part in &out.forward {
            if client {
                self.to_server.extend_from_slice(part);
            } else {
                self.to_client.extend_from_slice(part);
            }
        }
        self.replies.extend_from_slice(&out.reply);
        self.to_client.extend_from_slice(&out.reply);
        self.events.extend(summary(&out.events));
        if out.close.is_some() {
            self.close = out.close;
        }
    }
}

/// Feeds a conversation in order, stopping when the channel is to be closed.
fn converse(audit: &mut ScpAudit, messages: &[(bool, &[u8])]) -> Run {
    let mut run = Run::default();
    for &(client, bytes) in messages {
        if run.close.is_some() {
            break;
        }
        let data = Bytes::copy_from_slice(bytes);
        let out = if client {
            audit.from_client(data)
        } else {
            audit.from_server(data)
        };
        run.take(out, client);
    }
    run.events.extend(summary(&audit.finish()));
    run
}

fn allow() -> TransferRules {
    rules(SftpMode::Allow, None)
}

#[test]
fn real_recursive_upload() {
    for rules in [allow(), rules(SftpMode::Allow, Some(1514))] {
        let mut audit = ScpAudit::new(command(UPLOAD_COMMAND), rules);
        let run = converse(&mut audit, &transcript(UPLOAD));
        assert_eq!(
            run.events,
            [
                // `-d`: the target is a directory, so the paths written are known.
                "upload file /tmp/scp-seed/remote/readme.txt <- readme.txt size=10 mode=0644 \
                 bytes=10 ok=true denied=false ok",
                "upload dir /tmp/scp-seed/remote/photos <- photos size=0 mode=0755 bytes=0 \
                 ok=true denied=false ok",
                "upload file /tmp/scp-seed/remote/photos/cat.jpg <- photos/cat.jpg size=1500 \
                 mode=0640 bytes=1500 ok=true denied=false ok",
                "upload dir /tmp/scp-seed/remote/photos/raw <- photos/raw size=0 mode=0755 \
                 bytes=0 ok=true denied=false ok",
                "upload file /tmp/scp-seed/remote/photos/raw/dog.raw <- photos/raw/dog.raw \
                 size=4 mode=0644 bytes=4 ok=true denied=false ok",
            ]
        );
        assert_eq!(audit.unparseable(), None);
        assert!(run.close.is_none() && run.replies.is_empty());
        let client: Vec<u8> = transcript(UPLOAD)
            .iter()
            .filter(|r| r.0)
            .flat_map(|r| r.1.to_vec())
            .collect();
        assert_eq!(run.to_server, client);
    }
}

#[test]
fn real_downloads() {
    let cases = [
        (
            DOWNLOAD_COMMAND,
            DOWNLOAD,
            vec!["download file cat.jpg size=1500 mode=0640 bytes=1500 ok=true denied=false ok"],
        ),
        (
            DOWNLOAD_MISSING_COMMAND,
            DOWNLOAD_MISSING,
            vec![
                "download error  size=0 mode=0000 bytes=0 ok=false denied=false \
                 scp: /tmp/scp-seed/remote/nope.txt: No such file or directory",
            ],
        ),
        (
            DOWNLOAD_RECURSIVE_COMMAND,
            DOWNLOAD_RECURSIVE,
            vec![
                "download dir photos size=0 mode=0755 bytes=0 ok=true denied=false ok",
                "download file photos/cat.jpg size=1500 mode=0640 bytes=1500 ok=true denied=false ok",
                "download dir photos/raw size=0 mode=0755 bytes=0 ok=true denied=false ok",
                "download file photos/raw/dog.raw size=4 mode=0644 bytes=4 ok=true denied=false ok",
            ],
        ),
    ];
    for (cmd, session, expected) in cases {
        // read_only and upload limits do not touch downloads.
        for rules in [
            allow(),
            rules(SftpMode::ReadOnly, None),
            rules(SftpMode::Allow, Some(0)),
        ] {
            let mut audit = ScpAudit::new(command(cmd), rules);
            let run = converse(&mut audit, &transcript(session));
            assert_eq!(run.events, expected, "{cmd}");
            assert!(run.close.is_none() && run.replies.is_empty());
            assert_eq!(audit.unparseable(), None);
        }
    }
}

#[test]
fn upload_limit_stops_the_upload_at_the_record_that_exceeds_it() {
    let mut audit = ScpAudit::new(command(UPLOAD_COMMAND), rules(SftpMode::Allow, Some(1000)));
    let session = transcript(UPLOAD);
    let run = converse(&mut audit, &session);
    let message = "upload limit of 1000 bytes reached (policy p)";
    assert_eq!(run.replies, format!("\x02scp: {message}\n").into_bytes());
    assert_eq!(run.close.as_deref(), Some(&*format!("scp {message}")));
    assert_eq!(
        run.events,
        [
            "upload file /tmp/scp-seed/remote/readme.txt <- readme.txt size=10 mode=0644 \
             bytes=10 ok=true denied=false ok"
                .to_string(),
            "upload dir /tmp/scp-seed/remote/photos <- photos size=0 mode=0755 bytes=0 ok=true \
             denied=false ok"
                .to_string(),
            format!(
                "upload file /tmp/scp-seed/remote/photos/cat.jpg <- photos/cat.jpg size=1500 \
                 mode=0640 bytes=0 ok=false denied=true {message}"
            ),
        ]
    );
    // Everything up to the C record of cat.jpg went through, nothing from it on.
    let client: Vec<u8> = session
        .iter()
        .filter(|r| r.0)
        .flat_map(|r| r.1.to_vec())
        .collect();
    let cut = client
        .windows(5)
        .position(|w| w == b"C0640")
        .expect("cat.jpg record");
    assert_eq!(run.to_server, client[..cut]);
    // Later data still finds the channel closing.
    let out = audit.from_client(Bytes::from_static(b"ppp"));
    assert!(out.forward.is_empty() && out.close.is_some());
}

#[test]
fn refused_transfers() {
    for (rules, cmd, message) in [
        (
            rules(SftpMode::ReadOnly, None),
            UPLOAD_COMMAND,
            "uploads denied by policy p",
        ),
        (
            rules(SftpMode::Deny, None),
            DOWNLOAD_COMMAND,
            "denied by policy p",
        ),
    ] {
        let mut audit = ScpAudit::new(command(cmd), rules);
        // Whatever the client sends first (the record after the sink's \0, or its own \0).
        audit.from_server(Bytes::from_static(b"\0"));
        let out = audit.from_client(Bytes::from_static(b"T1 0 1 0\n"));
        assert!(out.forward.is_empty());
        assert_eq!(out.reply, format!("\x02scp: {message}\n").into_bytes());
        assert!(out.close.unwrap().ends_with(message));
        assert!(summary(&out.events)[0].contains("refused"));
    }
}

#[test]
fn answers_and_errors_are_matched_to_files() {
    let mut audit = ScpAudit::new(command("scp -t /dst"), rules(SftpMode::Allow, Some(10)));
    let run = converse(
        &mut audit,
        &[
            (false, b"\0"),
            // Refused by the sink: its size no longer counts against the limit.
            (true, b"C0600 8 secret\n"),
            (false, b"\x01scp: /dst/secret: Permission denied\n"),
            (true, b"C0644 8 a\n"),
            (false, b"\0"),
            // The source failed reading: error instead of the end-of-data \0.
            (true, b"12345678\x01scp: a: read error\n"),
            (false, b"\0"),
            // Empty file.
            (true, b"C0644 0 empty\n"),
            (false, b"\0"),
            (true, b"\0"),
            (false, b"\x01scp: empty: disk full\n"),
            (true, b"D0755 0 d\n"),
            (false, b"\x01scp: d: exists\n"),
            (true, b"C0644 2 b\n"),
            (false, b"\0"),
            (true, b"h"),
        ],
    );
    assert_eq!(
        run.events,
        [
            // Without `-d`, /dst may be the file written or the directory it is written in.
            "upload file /dst <- secret size=8 mode=0600 bytes=0 ok=false denied=false scp: /dst/secret: Permission denied",
            "upload file /dst <- a size=8 mode=0644 bytes=8 ok=false denied=false scp: a: read error",
            "upload file /dst <- empty size=0 mode=0644 bytes=0 ok=false denied=false scp: empty: disk full",
            "upload dir /dst <- d size=0 mode=0755 bytes=0 ok=false denied=false scp: d: exists",
            // The channel closed in the middle of the last one's data.
            "upload file /dst <- b size=2 mode=0644 bytes=1 ok=false denied=false incomplete",
        ]
    );
    assert!(run.close.is_none());
    assert_eq!(audit.unparseable(), None);
}

#[test]
fn unparseable_streams() {
    let garbage: &[u8] = b"\x00\x00\x01\x07not scp\n";
    // Observed: passes unchanged, flagged.
    let mut audit = ScpAudit::new(command("scp -t /x"), allow());
    let out = audit.from_client(Bytes::from_static(garbage));
    assert_eq!(out.forward, [Bytes::from_static(garbage)]);
    assert!(audit.unparseable().is_some());
    let out = audit.from_client(Bytes::from_static(b"C0644 1 a\n"));
    assert_eq!(out.forward.len(), 1);
    assert!(out.events.is_empty());

    // Under an upload limit: fails closed.
    let mut audit = ScpAudit::new(command("scp -t /x"), rules(SftpMode::Allow, Some(10)));
    audit.from_server(Bytes::from_static(b"\0"));
    let out = audit.from_client(Bytes::from_static(b"X1 2 3\n"));
    assert!(out.forward.is_empty());
    assert!(
        out.close
            .unwrap()
            .starts_with("unparseable scp stream under policy p")
    );

    // Data before the sink accepted the file.
    let mut audit = ScpAudit::new(command("scp -t /x"), rules(SftpMode::Allow, Some(10)));
    audit.from_server(Bytes::from_static(b"\0"));
    let out = audit.from_client(Bytes::from_static(b"C0644 1 a\nz"));
    assert!(out.close.is_some());
    assert!(
        audit
            .unparseable()
            .unwrap()
            .contains("before the file was accepted")
    );

    // An answer to nothing, from the server of a download.
    let mut audit = ScpAudit::new(command("scp -f /x"), allow());
    audit.from_client(Bytes::from_static(b"\0\0"));
    assert!(audit.unparseable().unwrap().contains("answer to no record"));

    // A record too long.
    let mut audit = ScpAudit::new(command("scp -f /x"), allow());
    audit.from_client(Bytes::from_static(b"\0"));
    let out = audit.from_server(Bytes::from(vec![b'C'; 5000]));
    assert_eq!(out.forward.len(), 1);
    assert!(audit.unparseable().unwrap().contains("too long"));
}

/// Splits each message at the given (cycled) sizes.
fn rechunk<'a>(messages: &[(bool, &'a [u8])], sizes: &[usize]) -> Vec<(bool, &'a [u8])> {
    let mut out = Vec::new();
    let mut k = 0;
    for &(client, bytes) in messages {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = sizes[k % sizes.len()].min(rest.len());
            k += 1;
            out.push((client, &rest[..n]));
            rest = &rest[n..];
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_split_gives_the_same_result(
        sizes in prop::collection::vec(1usize..300, 1..30),
        limit in prop::option::of(0u64..2000),
    ) {
        let sessions = [
            (UPLOAD_COMMAND, UPLOAD),
            (DOWNLOAD_COMMAND, DOWNLOAD),
            (DOWNLOAD_MISSING_COMMAND, DOWNLOAD_MISSING),
            (DOWNLOAD_RECURSIVE_COMMAND, DOWNLOAD_RECURSIVE),
        ];
        let rules = rules(SftpMode::Allow, limit);
        for (cmd, session) in sessions {
            let messages = transcript(session);
            let mut whole = ScpAudit::new(command(cmd), rules.clone());
            let expected = converse(&mut whole, &messages);
            let mut chunked = ScpAudit::new(command(cmd), rules.clone());
            let got = converse(&mut chunked, &rechunk(&messages, &sizes));
            prop_assert_eq!(&got.events, &expected.events);
            prop_assert_eq!(&got.to_server, &expected.to_server);
            prop_assert_eq!(&got.to_client, &expected.to_client);
            prop_assert_eq!(&got.close, &expected.close);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        messages in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)), 0..12),
        upload in any::<bool>(),
        limit in prop::option::of(0u64..100),
    ) {
        let cmd = if upload { "scp -t /x" } else { "scp -f /x" };
        let mut audit = ScpAudit::new(command(cmd), rules(SftpMode::Allow, limit));
        let mut sent = 0;
        let mut input = 0;
        for (client, bytes) in messages {
            let out = if client {
                input += bytes.len();
                audit.from_client(Bytes::from(bytes))
            } else {
                audit.from_server(Bytes::from(bytes))
            };
            if client {
                sent += out.forward.iter().map(Bytes::len).sum::<usize>();
            }
        }
        prop_assert!(sent <= input);
        audit.finish();
    }
}

/// One file `payload.bin` of 5 bytes sent to `scp -t TARGET`, answered in full.
fn upload_of_payload(target: &str) -> Vec<String> {
    let mut audit = ScpAudit::new(command(&format!("scp -t {target}")), allow());
    let run = converse(
        &mut audit,
        &[
            (false, b"\0"),
            (true, b"C0644 5 payload.bin\n"),
            (false, b"\0"),
            (true, b"hello\0"),
            (false, b"\0"),
        ],
    );
    run.events
}

#[test]
fn uploads_name_the_target_and_the_source_name() {
    let line = |path: &str| {
        format!(
            "upload file {path} <- payload.bin size=5 mode=0644 bytes=5 ok=true denied=false ok"
        )
    };
    // `scp -O payload.bin host:up.bin`: the server writes up.bin (unless it is a directory).
    assert_eq!(upload_of_payload("up.bin"), [line("up.bin")]);
    assert_eq!(upload_of_payload("/srv/in"), [line("/srv/in")]);
    // Surely directories: the file written is known.
    assert_eq!(upload_of_payload("."), [line("payload.bin")]);
    assert_eq!(upload_of_payload("in/"), [line("in/payload.bin")]);
    assert_eq!(upload_of_payload("/"), [line("/payload.bin")]);
    assert_eq!(
        upload_of_payload("-d /srv/in"),
        [line("/srv/in/payload.bin")]
    );
}

/// libssh2 (curl `-T f scp://…`) closes the channel right after the file's data: no closing
/// status byte, so no answer from the sink. All the data went through: the file is complete.
#[test]
fn an_upload_ended_after_all_its_data_is_complete() {
    let mut audit = ScpAudit::new(command("scp -t /srv/up.bin"), allow());
    let run = converse(
        &mut audit,
        &[
            (false, b"\0"),
            (true, b"C0644 5 payload.bin\n"),
            (false, b"\0"),
            (true, b"hello"),
        ],
    );
    assert_eq!(
        run.events,
        [format!(
            "upload file /srv/up.bin <- payload.bin size=5 mode=0644 bytes=5 ok=false \
             denied=false {COMPLETE_UNCONFIRMED}"
        )]
    );
    assert!(COMPLETE_UNCONFIRMED.starts_with("complete"));
    assert!(run.close.is_none());
}
