use bytes::Bytes;
use proptest::prelude::*;

use super::{
    FileEvent, SftpAudit, SftpMode, SftpOp, TransferRules,
    sftp::{FX_PERMISSION_DENIED, MAX_HANDLES, MAX_PENDING, status_packet},
};

const SESSION_OPS: &[u8] = include_bytes!("../../fuzz/corpus/sftp/session-ops.bin");
const SESSION_READS: &[u8] = include_bytes!("../../fuzz/corpus/sftp/session-reads.bin");

/// Splits a recorded session (see gateway/fuzz/README.md): records of a tag (`C` client →
/// server, `S` server → client), a big-endian u32 length and the bytes.
pub(super) fn transcript(mut b: &[u8]) -> Vec<(bool, &[u8])> {
    let mut records = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let data = &b[5..5 + len];
        records.push((b[0] != b'S', data));
        b = &b[5 + len..];
    }
    assert!(b.is_empty(), "trailing bytes in transcript");
    records
}

pub(super) fn rules(sftp: SftpMode, max_upload_bytes: Option<u64>) -> TransferRules {
    TransferRules {
        sftp,
        max_upload_bytes,
        policy_name: "p".into(),
    }
}

/// Builds one SFTP packet.
struct P(Vec<u8>);

impl P {
    fn new(kind: u8) -> Self {
        P(vec![kind])
    }
    fn req(kind: u8, id: u32) -> Self {
        P::new(kind).u32(id)
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(self, v: impl AsRef<[u8]>) -> Self {
        let v = v.as_ref();
        let mut p = self.u32(v.len() as u32);
        p.0.extend_from_slice(v);
        p
    }
    fn done(self) -> Vec<u8> {
        let mut out = (self.0.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&self.0);
        out
    }
}

fn init() -> Vec<u8> {
    P::new(1).u32(3).done()
}
fn version() -> Vec<u8> {
    P::new(2).u32(3).s("posix-rename@openssh.com").s("1").done()
}
fn open(id: u32, path: &str, pflags: u32) -> Vec<u8> {
    P::req(3, id).s(path).u32(pflags).u32(4).u32(0o644).done()
}
fn close(id: u32, h: &[u8]) -> Vec<u8> {
    P::req(4, id).s(h).done()
}
fn read(id: u32, h: &[u8], off: u64, len: u32) -> Vec<u8> {
    P::req(5, id).s(h).u64(off).u32(len).done()
}
fn write(id: u32, h: &[u8], off: u64, data: &[u8]) -> Vec<u8> {
    P::req(6, id).s(h).u64(off).s(data).done()
}
fn status(id: u32, code: u32, msg: &str) -> Vec<u8> {
    P::req(101, id).u32(code).s(msg).s("").done()
}
fn handle(id: u32, h: &[u8]) -> Vec<u8> {
    P::req(102, id).s(h).done()
}
fn data(id: u32, d: &[u8]) -> Vec<u8> {
    P::req(103, id).s(d).done()
}
fn path_req(kind: u8, id: u32, path: &str) -> Vec<u8> {
    P::req(kind, id).s(path).done()
}
fn two_paths(kind: u8, id: u32, a: &str, b: &str) -> Vec<u8> {
    P::req(kind, id).s(a).s(b).done()
}
fn ext(id: u32, name: &str, args: impl FnOnce(P) -> P) -> Vec<u8> {
    args(P::req(200, id).s(name)).done()
}

const READ: u32 = 1;
const WRITE: u32 = 2;
const CREAT: u32 = 8;
const TRUNC: u32 = 0x10;

/// One line per event, for readable assertions.
pub(super) fn summary(events: &[FileEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            FileEvent::Sftp(op) => sftp_line(op),
            FileEvent::Scp(f) => format!(
                "{} {} {}{} size={} mode={:04o} bytes={} ok={} denied={} {}",
                f.direction.as_str(),
                f.op,
                f.path,
                f.name
                    .as_ref()
                    .map_or(String::new(), |n| format!(" <- {n}")),
                f.size,
                f.mode,
                f.bytes,
                f.ok,
                f.denied,
                f.status_text
            ),
        })
        .collect()
}

fn sftp_line(op: &SftpOp) -> String {
    let mut s = format!("{} {}", op.op, op.path);
    if let Some(t) = &op.target {
        s += &format!(" -> {t}");
    }
    if let Some(f) = &op.flags {
        s += &format!(" [{f}]");
    }
    if let Some(a) = &op.attrs {
        s += &format!(" {{{a}}}");
    }
    if op.op.as_str() == "close" {
        s += &format!(" r={} w={}", op.bytes_read, op.bytes_written);
    }
    match op.status {
        Some(code) => s += &format!(" = {code} {}", op.status_text),
        None => s += &format!(" = none {}", op.status_text),
    }
    if op.denied {
        s += " DENIED";
    }
    s
}

/// What went where.
#[derive(Default, Debug)]
struct Run {
    /// Client → server, as forwarded.
    to_server: Vec<u8>,
    /// Server → client, with injected replies, in call order.
    to_client: Vec<u8>,
    /// The replies alone.
    replies: Vec<u8>,
    events: Vec<FileEvent>,
    close: Option<String>,
}

impl Run {
    fn client(&mut self, audit: &mut SftpAudit, bytes: &[u8]) {
        let out = audit.from_client(Bytes::copy_from_slice(bytes));
        for part in &out.forward {
            self.to_server.extend_from_slice(part);
        }
        self.to_client.extend_from_slice(&out.reply);
        self.replies.extend_from_slice(&out.reply);
        self.events.extend(out.events);
        if out.close.is_some() {
            self.close = out.close;
        }
    }

    fn server(&mut self, audit: &mut SftpAudit, bytes: &[u8]) {
        let out = audit.from_server(Bytes::copy_from_slice(bytes));
        for part in &out.forward {
            self.to_client.extend_from_slice(part);
        }
        self.events.extend(out.events);
        if out.close.is_some() {
            self.close = out.close;
        }
    }
}

/// Feeds a conversation, each message whole.
fn converse(audit: &mut SftpAudit, messages: &[(bool, Vec<u8>)]) -> Run {
    let mut run = Run::default();
    for (client, bytes) in messages {
        if *client {
            run.client(audit, bytes);
        } else {
            run.server(audit, bytes);
        }
    }
    run
}

fn c(b: Vec<u8>) -> (bool, Vec<u8>) {
    (true, b)
}
fn s(b: Vec<u8>) -> (bool, Vec<u8>) {
    (false, b)
}

const H1: &[u8] = b"\0\0\0\x01";
const H2: &[u8] = b"\0\0\0\x02";
const HD: &[u8] = b"dir-handle";

/// A session that exercises every reported operation, some replies out of order.
fn every_op_session() -> Vec<(bool, Vec<u8>)> {
    vec![
        c(init()),
        s(version()),
        c(open(1, "/up.txt", WRITE | CREAT | TRUNC)),
        s(handle(1, H1)),
        c(write(2, H1, 0, b"hello")),
        c(write(3, H1, 5, b" world")),
        c(write(4, H1, 11, b"!!")),
        s(status(3, 0, "Success")),
        s(status(2, 0, "Success")),
        s(status(4, 4, "Failure")),
        c(P::req(10, 5).s(H1).u32(4).u32(0o600).done()), // fsetstat
        s(status(5, 0, "")),
        c(close(6, H1)),
        s(status(6, 0, "Success")),
        c(open(7, "/up.txt", READ)),
        s(handle(7, H2)),
        c(read(8, H2, 0, 100)),
        c(read(9, H2, 11, 100)),
        s(data(8, b"hello world")),
        s(status(9, 1, "End of file")),
        c(open(10, "/missing", READ)),
        s(status(10, 2, "No such file")),
        c(path_req(13, 11, "/gone")),
        c(two_paths(18, 12, "/a", "/b")),
        s(status(12, 0, "Success")),
        s(status(11, 2, "No such file")),
        c(P::req(14, 13).s("/d").u32(4).u32(0o755).done()),
        s(status(13, 0, "Success")),
        c(path_req(15, 14, "/d")),
        s(status(14, 0, "Success")),
        c(P::req(9, 15).s("/b").u32(1 | 4).u64(0).u32(0o600).done()),
        s(status(15, 0, "Success")),
        c(ext(16, "lsetstat@openssh.com", |p| {
            p.s("/l").u32(2).u32(0).u32(0)
        })),
        s(status(16, 8, "Operation unsupported")),
        c(two_paths(20, 17, "b", "/l")),
        s(status(17, 0, "Success")),
        c(ext(18, "hardlink@openssh.com", |p| p.s("/b").s("/h"))),
        s(status(18, 0, "Success")),
        c(ext(19, "posix-rename@openssh.com", |p| p.s("/b").s("/c"))),
        s(status(19, 4, "Operation not permitted")),
        c(ext(20, "copy-data", |p| {
            p.s(H2).u64(0).u64(0).s(b"\0\0\0\x09").u64(0)
        })),
        s(status(20, 0, "Success")),
        c(path_req(11, 21, "/")),
        s(handle(21, HD)),
        c(P::req(12, 22).s(HD).done()),
        s(P::req(104, 22).u32(0).done()),
        c(close(23, HD)),
        s(status(23, 0, "Success")),
        c(path_req(17, 24, "/c")),
        s(P::req(105, 24).u32(0).done()),
        c(ext(25, "statvfs@openssh.com", |p| p.s("/"))),
        s(P::req(201, 25).u64(4096).done()),
        c(ext(26, "fsync@openssh.com", |p| p.s(H2))),
        s(status(26, 0, "Success")),
        c(ext(27, "foo@example.com", |p| p.s("x"))),
        s(status(27, 8, "Operation unsupported")),
        c(close(28, H2)),
        s(status(28, 0, "Success")),
    ]
}

#[test]
fn every_operation_reported_with_its_status() {
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    let session = every_op_session();
    let run = converse(&mut audit, &session);
    assert_eq!(
        summary(&run.events),
        [
            "open /up.txt [write,create,trunc] {mode=0644} = 0 ok",
            "fsetstat /up.txt {mode=0600} = 0 ok",
            "close /up.txt [write,create,trunc] r=0 w=11 = 0 Success",
            "open /up.txt [read] {mode=0644} = 0 ok",
            "open /missing [read] {mode=0644} = 2 No such file",
            "rename /a -> /b = 0 Success",
            "remove /gone = 2 No such file",
            "mkdir /d {mode=0755} = 0 Success",
            "rmdir /d = 0 Success",
            "setstat /b {size=0,mode=0600} = 0 Success",
            "lsetstat /l {uid=0,gid=0} = 8 Operation unsupported",
            "symlink /l -> b = 0 Success",
            "hardlink /h -> /b = 0 Success",
            "posix-rename /b -> /c = 4 Operation not permitted",
            "copy-data handle:00000009 -> /up.txt = 0 Success",
            "opendir / = 0 ok",
            "close /up.txt [read] r=11 w=0 = 0 Success",
        ]
    );
    assert_eq!(audit.unparseable(), None);
    assert!(audit.finish().is_empty());
    // Observing only: everything went through, in one piece per chunk.
    let client: Vec<u8> = session
        .iter()
        .filter(|m| m.0)
        .flat_map(|m| m.1.clone())
        .collect();
    let server: Vec<u8> = session
        .iter()
        .filter(|m| !m.0)
        .flat_map(|m| m.1.clone())
        .collect();
    assert_eq!(run.to_server, client);
    assert_eq!(run.to_client, server);
}

#[test]
fn allow_forwards_the_input_chunk_itself() {
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    let chunk = Bytes::from([init(), open(1, "/x", WRITE)].concat());
    let out = audit.from_client(chunk.clone());
    assert_eq!(out.forward.len(), 1);
    assert_eq!(out.forward[0].as_ptr(), chunk.as_ptr());
    assert_eq!(out.forward[0], chunk);
    assert!(out.reply.is_empty() && out.close.is_none());
    // Even a partial packet is not held back.
    let out = audit.from_client(Bytes::from_static(b"\0\0"));
    assert_eq!(out.forward, [Bytes::from_static(b"\0\0")]);
}

#[test]
fn finish_reports_unanswered_requests_and_unclosed_handles() {
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    converse(
        &mut audit,
        &[
            c(init()),
            s(version()),
            c(open(1, "/a", WRITE | CREAT)),
            s(handle(1, H1)),
            c(open(2, "/b", READ)),
            s(handle(2, H2)),
            c(write(3, H1, 0, b"abc")),
            s(status(3, 0, "")),
            c(read(4, H2, 0, 10)),
            s(data(4, b"0123456789")),
            c(close(5, H2)),
            c(path_req(13, 6, "/c")),
        ],
    );
    assert_eq!(
        summary(&audit.finish()),
        [
            "close /b [read] r=10 w=0 = none no reply",
            "remove /c = none no reply",
            "close /a [write,create] r=0 w=3 = none not closed",
        ]
    );
    assert!(audit.finish().is_empty());
}

#[test]
fn real_session_with_every_kind_of_change() {
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    let mut run = Run::default();
    for (client, bytes) in transcript(SESSION_OPS) {
        if client {
            run.client(&mut audit, bytes);
        } else {
            run.server(&mut audit, bytes);
        }
    }
    let r = "/tmp/sftp-seed/remote";
    let expected = [
        format!("open {r}/report.txt [write,create,trunc] {{mode=0644}} = 0 ok"),
        format!("close {r}/report.txt [write,create,trunc] r=0 w=1800 = 0 Success"),
        format!("open {r}/report.txt [read] = 0 ok"),
        format!("close {r}/report.txt [read] r=1800 w=0 = 0 Success"),
        format!("mkdir {r}/archive {{mode=0777}} = 0 Success"),
        format!("open {r}/archive/notes.txt [write,create,trunc] {{mode=0644}} = 0 ok"),
        format!("close {r}/archive/notes.txt [write,create,trunc] r=0 w=700 = 0 Success"),
        format!("setstat {r}/report.txt {{mode=0600}} = 0 Success"),
        format!("posix-rename {r}/report.txt -> {r}/final.txt = 0 Success"),
        format!("symlink {r}/latest.txt -> final.txt = 0 Success"),
        format!("hardlink {r}/hard.txt -> {r}/final.txt = 0 Success"),
        format!("opendir {r} = 0 ok"),
        format!("remove {r}/missing.txt = 2 No such file"),
        format!("remove {r}/latest.txt = 0 Success"),
        format!("remove {r}/hard.txt = 0 Success"),
        format!("remove {r}/archive/notes.txt = 0 Success"),
        format!("rmdir {r}/archive = 0 Success"),
    ];
    assert_eq!(summary(&run.events), expected);
    assert_eq!(audit.unparseable(), None);
    assert!(audit.finish().is_empty());
}

#[test]
fn real_session_of_reads() {
    for mode in [SftpMode::Allow, SftpMode::ReadOnly] {
        let mut audit = SftpAudit::new(rules(mode, None));
        let mut run = Run::default();
        let mut client = Vec::new();
        for (from_client, bytes) in transcript(SESSION_READS) {
            if from_client {
                client.extend_from_slice(bytes);
                run.client(&mut audit, bytes);
            } else {
                run.server(&mut audit, bytes);
            }
        }
        let f = "/tmp/sftp-seed/remote/final.txt";
        assert_eq!(
            summary(&run.events),
            [
                "opendir /tmp/sftp-seed/remote = 0 ok".to_string(),
                format!("open {f} [read] = 0 ok"),
                format!("close {f} [read] r=1800 w=0 = 0 Success"),
            ]
        );
        // Reads keep working under read_only: nothing was held or denied.
        assert_eq!(run.to_server, client);
        assert!(run.replies.is_empty() && run.close.is_none());
    }
}

/// The client stream of a session mixing reads and every modifying request, and which of
/// its packets are modifying.
fn mixed_requests() -> Vec<(Vec<u8>, bool)> {
    vec![
        (init(), false),
        (open(1, "/r", READ), false),
        (open(2, "/w", WRITE), true),
        (open(3, "/c", READ | CREAT), true),
        (open(4, "/t", READ | TRUNC), true),
        (open(5, "/a", READ | 4), true),
        (open(6, "/x", READ | 0x20), false),
        (open(7, "/u", READ | 0x100), true),
        (read(8, H1, 0, 1024), false),
        (write(9, H1, 0, &[7u8; 3000]), true),
        (P::req(10, 10).s(H1).u32(4).u32(0o777).done(), true),
        (P::req(9, 11).s("/r").u32(4).u32(0o777).done(), true),
        (ext(12, "lsetstat@openssh.com", |p| p.s("/r").u32(0)), true),
        (path_req(13, 13, "/r"), true),
        (two_paths(18, 14, "/r", "/s"), true),
        (
            ext(15, "posix-rename@openssh.com", |p| p.s("/r").s("/s")),
            true,
        ),
        (P::req(14, 16).s("/d").u32(0).done(), true),
        (path_req(15, 17, "/d"), true),
        (two_paths(20, 18, "/r", "/l"), true),
        (ext(19, "hardlink@openssh.com", |p| p.s("/r").s("/h")), true),
        (
            ext(20, "copy-data", |p| p.s(H1).u64(0).u64(0).s(H2).u64(0)),
            true,
        ),
        (ext(21, "fsync@openssh.com", |p| p.s(H1)), false),
        (ext(22, "statvfs@openssh.com", |p| p.s("/")), false),
        (ext(23, "fstatvfs@openssh.com", |p| p.s(H1)), false),
        (ext(24, "limits@openssh.com", |p| p), false),
        (ext(25, "expand-path@openssh.com", |p| p.s("~")), false),
        (ext(26, "home-directory", |p| p.s("u")), false),
        (
            ext(27, "users-groups-by-id@openssh.com", |p| p.s("").s("")),
            false,
        ),
        (ext(28, "unknown@example.com", |p| p.s("/r")), true),
        (path_req(7, 29, "/r"), false),
        (P::req(8, 30).s(H1).done(), false),
        (path_req(11, 31, "/"), false),
        (P::req(12, 32).s(HD).done(), false),
        (path_req(16, 33, "."), false),
        (path_req(17, 34, "/r"), false),
        (path_req(19, 35, "/l"), false),
        (close(36, H1), false),
        (P::req(99, 37).s("?").done(), true),
    ]
}

#[test]
fn read_only_denies_modifying_requests_and_only_those() {
    let packets = mixed_requests();
    let stream: Vec<u8> = packets.iter().flat_map(|p| p.0.clone()).collect();
    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    audit.from_server(Bytes::from(version()));
    let out = audit.from_client(Bytes::from(stream));
    assert!(out.close.is_none());
    let forwarded: Vec<u8> = out.forward.iter().flat_map(|b| b.to_vec()).collect();
    let allowed: Vec<u8> = packets
        .iter()
        .filter(|p| !p.1)
        .flat_map(|p| p.0.clone())
        .collect();
    assert_eq!(forwarded, allowed);
    // One PERMISSION_DENIED status per denied request, with its id, in order.
    let denied_ids: Vec<u32> = packets
        .iter()
        .filter(|p| p.1)
        .map(|p| u32::from_be_bytes(p.0[5..9].try_into().unwrap()))
        .collect();
    let expected: Vec<u8> = denied_ids
        .iter()
        .flat_map(|&id| status_packet(id, FX_PERMISSION_DENIED, "denied by policy p"))
        .collect();
    assert_eq!(out.reply, expected);
    // Byte for byte: length 35, STATUS, id 2, code 3, message, empty language tag.
    assert_eq!(
        &out.reply[..39],
        b"\0\0\0\x23\x65\0\0\0\x02\0\0\0\x03\0\0\0\x12denied by policy p\0\0\0\0"
    );
    assert_eq!(
        summary(&out.events),
        [
            "open /w [write] {mode=0644} = 3 denied by policy p DENIED",
            "open /c [read,create] {mode=0644} = 3 denied by policy p DENIED",
            "open /t [read,trunc] {mode=0644} = 3 denied by policy p DENIED",
            "open /a [read,append] {mode=0644} = 3 denied by policy p DENIED",
            "open /u [read,0x100] {mode=0644} = 3 denied by policy p DENIED",
            "write handle:00000001 = 3 denied by policy p DENIED",
            "fsetstat handle:00000001 {mode=0777} = 3 denied by policy p DENIED",
            "setstat /r {mode=0777} = 3 denied by policy p DENIED",
            "lsetstat /r = 3 denied by policy p DENIED",
            "remove /r = 3 denied by policy p DENIED",
            "rename /r -> /s = 3 denied by policy p DENIED",
            "posix-rename /r -> /s = 3 denied by policy p DENIED",
            "mkdir /d = 3 denied by policy p DENIED",
            "rmdir /d = 3 denied by policy p DENIED",
            "symlink /l -> /r = 3 denied by policy p DENIED",
            "hardlink /h -> /r = 3 denied by policy p DENIED",
            "copy-data handle:00000002 -> handle:00000001 = 3 denied by policy p DENIED",
            "extended unknown@example.com = 3 denied by policy p DENIED",
            "unknown type 99 = 3 denied by policy p DENIED",
        ]
    );
}

#[test]
fn read_only_reports_denials_with_known_paths_and_keeps_reads_working() {
    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    let run = converse(
        &mut audit,
        &[
            c(init()),
            s(version()),
            c(open(1, "/etc/motd", READ)),
            s(handle(1, H1)),
            c(write(2, H1, 0, b"x")),
            c(read(3, H1, 0, 4)),
            s(data(3, b"motd")),
            c(close(4, H1)),
            s(status(4, 0, "Success")),
        ],
    );
    assert_eq!(
        summary(&run.events),
        [
            "open /etc/motd [read] {mode=0644} = 0 ok",
            "write /etc/motd = 3 denied by policy p DENIED",
            "close /etc/motd [read] r=4 w=0 = 0 Success",
        ]
    );
}

#[test]
fn denial_reply_waits_for_a_server_packet_boundary() {
    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    let mut run = Run::default();
    run.client(&mut audit, &init());
    run.server(&mut audit, &version());
    run.client(&mut audit, &open(1, "/f", READ));
    run.server(&mut audit, &handle(1, H1));
    run.client(&mut audit, &read(2, H1, 0, 4000));
    run.client(&mut audit, &path_req(17, 9, "/f"));
    let reply = data(2, &[9u8; 4000]);
    // The server is in the middle of a DATA packet when a denied request comes in.
    run.server(&mut audit, &reply[..100]);
    run.client(&mut audit, &path_req(13, 3, "/f"));
    assert!(run.replies.is_empty());
    // The rest of the DATA packet and the next one: the reply goes in between.
    let next = status(9, 0, "");
    let out = audit.from_server(Bytes::from([&reply[100..], &next[..]].concat()));
    let denial = status_packet(3, FX_PERMISSION_DENIED, "denied by policy p");
    assert_eq!(out.forward.len(), 3);
    assert_eq!(out.forward[0], Bytes::copy_from_slice(&reply[100..]));
    assert_eq!(out.forward[1], Bytes::from(denial.clone()));
    assert_eq!(out.forward[2], Bytes::from(next));
    // At a boundary, the reply comes at once.
    let out = audit.from_client(Bytes::from(path_req(13, 4, "/f")));
    assert_eq!(
        out.reply,
        status_packet(4, FX_PERMISSION_DENIED, "denied by policy p")
    );
}

#[test]
fn upload_limit_denies_writes_past_it() {
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, Some(10)));
    let w1 = write(2, H1, 0, b"123456");
    let w2 = write(3, H1, 6, b"789012");
    let w3 = write(4, H1, 6, b"7890");
    let w4 = write(5, H1, 10, b"1");
    let run = converse(
        &mut audit,
        &[
            c(init()),
            s(version()),
            c(open(1, "/up", WRITE | CREAT)),
            s(handle(1, H1)),
            c([w1.clone(), w2].concat()),
            c([w3.clone(), w4].concat()),
            s(status(2, 0, "")),
            s(status(4, 0, "")),
            // Removes and renames are not limited.
            c(path_req(13, 6, "/old")),
            s(status(6, 0, "")),
            c(close(7, H1)),
            s(status(7, 0, "")),
        ],
    );
    let message = "upload limit of 10 bytes reached (policy p)";
    assert_eq!(
        run.replies,
        [
            status_packet(3, FX_PERMISSION_DENIED, message),
            status_packet(5, FX_PERMISSION_DENIED, message)
        ]
        .concat()
    );
    assert_eq!(
        run.to_server,
        [
            init(),
            open(1, "/up", WRITE | CREAT),
            w1,
            w3,
            path_req(13, 6, "/old"),
            close(7, H1)
        ]
        .concat()
    );
    assert_eq!(
        summary(&run.events),
        [
            "open /up [write,create] {mode=0644} = 0 ok".to_string(),
            format!("write /up = 3 {message} DENIED"),
            format!("write /up = 3 {message} DENIED"),
            "remove /old = 0 ok".to_string(),
            "close /up [write,create] r=0 w=10 = 0 ok".to_string(),
        ]
    );
}

#[test]
fn allowed_write_streams_and_denied_write_is_dropped_as_it_streams() {
    let big = vec![0x5a; 200_000];
    for (mode, limit, allowed) in [
        (SftpMode::Allow, Some(1_000_000), true),
        (SftpMode::ReadOnly, None, false),
    ] {
        let mut audit = SftpAudit::new(rules(mode, limit));
        audit.from_client(Bytes::from(init()));
        audit.from_server(Bytes::from(version()));
        let w = write(1, H1, 0, &big);
        let header = 4 + 1 + 4 + 8 + 8 + 4; // length, type, id, handle, offset, data length
        // Less than the header: held back.
        let out = audit.from_client(Bytes::copy_from_slice(&w[..10]));
        assert!(out.forward.is_empty());
        // The header completes: decided, then the data passes as it comes.
        let out = audit.from_client(Bytes::copy_from_slice(&w[10..header + 5000]));
        let sent: usize = out.forward.iter().map(Bytes::len).sum();
        assert_eq!(sent, if allowed { header + 5000 } else { 0 });
        assert_eq!(out.reply.is_empty(), allowed);
        let out = audit.from_client(Bytes::copy_from_slice(&w[header + 5000..150_000]));
        let sent: usize = out.forward.iter().map(Bytes::len).sum();
        assert_eq!(sent, if allowed { 150_000 - header - 5000 } else { 0 });
        assert!(out.reply.is_empty() && out.events.is_empty());
        // The end of the write and the next request in one chunk.
        let next = read(2, H1, 0, 10);
        let out = audit.from_client(Bytes::from([&w[150_000..], &next[..]].concat()));
        let sent: Vec<u8> = out.forward.iter().flat_map(|b| b.to_vec()).collect();
        if allowed {
            assert_eq!(sent, [&w[150_000..], &next[..]].concat());
            // A zero-copy slice of the input.
            assert_eq!(out.forward.len(), 1);
        } else {
            assert_eq!(sent, next);
        }
        assert!(out.reply.is_empty() && out.close.is_none());
    }
}

#[test]
fn unparseable_stream_passes_under_allow_and_closes_under_rules() {
    let garbage: &[u8] = b"SSH-2.0-not sftp at all\r\n";
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    let out = audit.from_client(Bytes::from_static(garbage));
    assert_eq!(out.forward, [Bytes::from_static(garbage)]);
    assert!(out.close.is_none());
    assert!(audit.unparseable().unwrap().contains("packet length"));
    // It keeps flowing, unreported.
    let out = audit.from_client(Bytes::from(open(1, "/x", WRITE)));
    assert_eq!(out.forward.len(), 1);
    assert!(out.events.is_empty());
    let out = audit.from_server(Bytes::from(handle(1, H1)));
    assert_eq!(out.forward.len(), 1);
    assert!(out.events.is_empty());

    for rules in [
        rules(SftpMode::ReadOnly, None),
        rules(SftpMode::Allow, Some(100)),
    ] {
        let mut audit = SftpAudit::new(rules);
        let out = audit.from_client(Bytes::from(init()));
        assert_eq!(out.forward.len(), 1);
        // A valid packet, then garbage, in one chunk: nothing of it is forwarded.
        let out = audit.from_client(Bytes::from([&open(1, "/r", READ)[..], garbage].concat()));
        assert!(out.forward.is_empty());
        let reason = out.close.expect("closes");
        assert!(reason.starts_with("unparseable SFTP stream under policy p: client:"));
        let out = audit.from_client(Bytes::from(open(2, "/r", READ)));
        assert!(out.forward.is_empty() && out.close.is_some());
    }
}

#[test]
fn malformed_requests_are_unparseable() {
    let cases: Vec<Vec<u8>> = vec![
        // A string longer than its packet.
        P::req(3, 1).u32(100).done(),
        // WRITE data longer than its packet.
        P::req(6, 1).s(H1).u64(0).u32(1000).done(),
        // No id.
        P::new(13).done(),
        // Empty packet.
        vec![0, 0, 0, 0],
    ];
    for case in cases {
        let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
        audit.from_server(Bytes::from(version()));
        let out = audit.from_client(Bytes::from(case.clone()));
        assert!(out.close.is_some(), "{case:?}");
        assert!(audit.unparseable().is_some());
    }
    // A request too big to inspect.
    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    let mut huge = P::req(3, 1).s(vec![b'a'; 300_000]).u32(1).u32(0).done();
    huge.truncate(1000);
    let out = audit.from_client(Bytes::from(huge));
    assert!(out.close.unwrap().contains("inspection limit"));
}

#[test]
fn other_protocol_versions_are_unparseable() {
    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    audit.from_client(Bytes::from(P::new(1).u32(6).done()));
    // A request before the server chose the version, when the client asked for more than 3.
    let out = audit.from_client(Bytes::from(open(1, "/r", READ)));
    assert!(out.close.unwrap().contains("before the server chose"));

    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    audit.from_client(Bytes::from(P::new(1).u32(6).done()));
    let out = audit.from_server(Bytes::from(P::new(2).u32(6).done()));
    assert!(
        out.close
            .unwrap()
            .contains("SFTP version 6 is not supported")
    );

    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    let out = audit.from_server(Bytes::from(P::new(2).u32(4).done()));
    assert!(out.close.is_none());
    assert_eq!(out.forward.len(), 1);
    assert!(audit.unparseable().unwrap().contains("version 4"));
}

#[test]
fn deny_closes_at_once() {
    let mut audit = SftpAudit::new(rules(SftpMode::Deny, None));
    let out = audit.from_client(Bytes::from(init()));
    assert!(out.forward.is_empty());
    assert_eq!(out.close.as_deref(), Some("sftp denied by policy p"));
}

/// `MAX_PENDING + 1` READs sent before any reply.
fn too_many_reads() -> Vec<u8> {
    (0..=MAX_PENDING as u32)
        .flat_map(|id| read(id, H1, 0, 10))
        .collect()
}

#[test]
fn table_caps_under_allow_say_so_at_once() {
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    converse(&mut audit, &[c(init()), s(version())]);
    let reads = too_many_reads();
    let out = audit.from_client(Bytes::from(reads.clone()));
    assert_eq!(out.forward, [Bytes::from(reads)]);
    assert_eq!(
        summary(&out.events),
        [format!(
            "tracking stopped  = none tracking cap: more than {MAX_PENDING} requests awaiting \
             a reply; later operations on this channel are not logged"
        )]
    );
    assert!(out.close.is_none());
    // Nothing more is followed (or reported twice); the stream flows on.
    let more = [open(9000, "/after", WRITE | CREAT), close(9001, H1)].concat();
    let out = audit.from_client(Bytes::from(more.clone()));
    assert!(out.events.is_empty() && out.forward == [Bytes::from(more)]);
    assert!(
        audit
            .from_server(Bytes::from(handle(9000, H2)))
            .events
            .is_empty()
    );
    assert_eq!(audit.unparseable(), None);
    assert!(audit.finish().is_empty());

    // Handles never closed.
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    let mut events = Vec::new();
    for id in 0..=MAX_HANDLES as u32 {
        audit.from_client(Bytes::from(open(id, "/f", READ)));
        let out = audit.from_server(Bytes::from(handle(id, &id.to_be_bytes())));
        events.extend(out.events);
    }
    assert_eq!(events.len(), MAX_HANDLES + 2);
    assert!(summary(&events[MAX_HANDLES + 1..])[0].starts_with(&format!(
        "tracking stopped  = none tracking cap: more than {MAX_HANDLES} open handles"
    )));
    assert!(audit.finish().is_empty());
}

#[test]
fn table_caps_under_rules_close_the_channel() {
    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    converse(&mut audit, &[c(init()), s(version())]);
    let out = audit.from_client(Bytes::from(too_many_reads()));
    assert!(out.forward.is_empty());
    let reason = out.close.expect("closed");
    assert!(
        reason.contains(&format!(
            "more than {MAX_PENDING} requests awaiting a reply"
        )),
        "{reason}"
    );
    assert_eq!(
        summary(&out.events),
        [format!(
            "tracking stopped  = none tracking cap: more than {MAX_PENDING} requests awaiting \
             a reply; the channel is closed (policy p)"
        )]
    );
    let out = audit.from_client(Bytes::from(read(1, H1, 0, 10)));
    assert!(out.forward.is_empty() && out.close.is_some());
    assert!(
        audit
            .from_server(Bytes::from(status(1, 0, "")))
            .close
            .is_some()
    );

    // 1 MiB of paths of open handles, under an upload limit.
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, Some(100)));
    converse(&mut audit, &[c(init()), s(version())]);
    let long = format!("/{}", "x/".repeat(2000));
    let mut closed = None;
    for id in 0..1000u32 {
        let mut run = Run::default();
        run.client(&mut audit, &open(id, &long, READ));
        run.server(&mut audit, &handle(id, &id.to_be_bytes()));
        if run.close.is_some() {
            assert!(summary(&run.events).last().unwrap().starts_with(
                "tracking stopped  = none tracking cap: more than 1048576 bytes of paths"
            ));
            closed = Some(id);
            break;
        }
    }
    assert!(closed.is_some_and(|id| id > 200), "{closed:?}");
}

/// OPEN id 7 twice before the replies: the reply to the first would be taken for the
/// second, and its writes logged under the wrong path (security review F4).
fn reused_id_session() -> Vec<(bool, Vec<u8>)> {
    vec![
        c(init()),
        s(version()),
        c([
            open(7, "/home/u/.ssh/authorized_keys", WRITE | CREAT | TRUNC),
            open(7, "/tmp/innocent", WRITE | CREAT | TRUNC),
        ]
        .concat()),
        s(handle(7, H1)),
        s(handle(7, H2)),
        c(write(8, H1, 0, b"ssh-ed25519 AAAA attacker")),
        s(status(8, 0, "")),
        c(close(9, H1)),
        s(status(9, 0, "")),
    ]
}

#[test]
fn a_reused_request_id_is_a_violation_never_a_wrong_path() {
    let violation = "protocol violation /home/u/.ssh/authorized_keys -> /tmp/innocent = none \
                     client: request id 7 reused while it awaits a reply \
                     (open /home/u/.ssh/authorized_keys, then open /tmp/innocent)";
    // allow: logged at once, then nothing more (nothing attributed to /tmp/innocent).
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
    let run = converse(&mut audit, &reused_id_session());
    assert_eq!(
        summary(&run.events),
        [format!(
            "{violation}; later operations on this channel are not logged"
        )]
    );
    assert!(run.close.is_none());
    assert!(audit.finish().is_empty());

    // Under rules: the channel closes before either OPEN reaches the server.
    let mut audit = SftpAudit::new(rules(SftpMode::Allow, Some(1000)));
    let run = converse(&mut audit, &reused_id_session()[..3]);
    assert_eq!(
        summary(&run.events),
        [format!("{violation}; the channel is closed (policy p)")]
    );
    assert_eq!(run.to_server, [init()].concat());
    assert!(
        run.close
            .unwrap()
            .starts_with("SFTP protocol violation: client:")
    );
}

#[test]
fn an_id_may_be_used_again_once_answered() {
    let mut audit = SftpAudit::new(rules(SftpMode::ReadOnly, None));
    let run = converse(
        &mut audit,
        &[
            c(init()),
            s(version()),
            c(open(1, "/a", READ)),
            s(handle(1, H1)),
            c(open(1, "/b", READ)),
            s(handle(1, H2)),
            c(close(1, H1)),
            s(status(1, 0, "")),
        ],
    );
    assert_eq!(
        summary(&run.events),
        [
            "open /a [read] {mode=0644} = 0 ok",
            "open /b [read] {mode=0644} = 0 ok",
            "close /a [read] r=0 w=0 = 0 ok",
        ]
    );
    assert!(run.close.is_none());
}

/// What a malicious server can do to the log: hand out one handle twice, answer a request
/// nobody sent, answer a READ with a HANDLE.
#[test]
fn server_violations_stop_the_log_or_close_the_channel() {
    let open_two = [
        c(init()),
        s(version()),
        c(open(1, "/secret", WRITE | CREAT)),
        s(handle(1, H1)),
        c(open(2, "/innocent", WRITE | CREAT)),
        s(handle(2, H1)),
        c(write(3, H1, 0, b"data")),
        s(status(3, 0, "")),
        c(close(4, H1)),
        s(status(4, 0, "")),
    ];
    /// A conversation, the violation it must bring, the event just before it (if any).
    type Case<'a> = (&'a [(bool, Vec<u8>)], &'a str, &'a str);
    let cases: [Case; 3] = [
        (
            &open_two,
            "protocol violation /secret -> /innocent = none server: handle 00000001 returned \
             for /innocent while it is still open for /secret",
            "open /innocent [write,create] {mode=0644} = 0 ok",
        ),
        (
            &[c(init()), s(version()), s(status(5, 0, ""))],
            "protocol violation  = none server: STATUS reply to id 5, which no request awaits",
            "",
        ),
        (
            &[
                c(init()),
                s(version()),
                c(read(6, H1, 0, 10)),
                s(handle(6, H2)),
            ],
            "protocol violation handle:00000001 = none server: HANDLE reply to id 6, which is \
             for: read handle:00000001",
            "",
        ),
    ];
    for (session, violation, before) in cases {
        let mut audit = SftpAudit::new(rules(SftpMode::Allow, None));
        let run = converse(&mut audit, session);
        let events = summary(&run.events);
        let at = events
            .iter()
            .position(|e| e.starts_with("protocol violation"))
            .unwrap_or_else(|| panic!("{events:?}"));
        assert_eq!(
            events[at],
            format!("{violation}; later operations on this channel are not logged")
        );
        // Nothing after it: no close or write logged under a path the server chose.
        assert_eq!(at, events.len() - 1, "{events:?}");
        if !before.is_empty() {
            assert_eq!(events[at - 1], before);
        }
        assert!(run.close.is_none() && audit.finish().is_empty());

        // Under rules (an upload limit these writes stay under), the channel closes.
        let mut audit = SftpAudit::new(rules(SftpMode::Allow, Some(100)));
        let run = converse(&mut audit, session);
        let events = summary(&run.events);
        assert_eq!(
            events.last().unwrap(),
            &format!("{violation}; the channel is closed (policy p)")
        );
        assert!(
            run.close
                .unwrap()
                .starts_with("SFTP protocol violation: server:")
        );
    }
}

/// Splits each message of a conversation at the given (cycled) sizes.
fn rechunk(messages: &[(bool, Vec<u8>)], sizes: &[usize]) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut k = 0;
    for (client, bytes) in messages {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = sizes[k % sizes.len()].min(rest.len());
            k += 1;
            out.push((*client, rest[..n].to_vec()));
            rest = &rest[n..];
        }
    }
    out
}

/// Splits a client-bound stream into packets.
fn packets(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = 4 + u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        out.push(b[..len].to_vec());
        b = &b[len..];
    }
    out
}

/// The session as it would go through a gateway with `rules`: the server's replies to the
/// requests the rules deny (which never reach a server behind the gateway) left out.
fn behind_gateway(messages: &[(bool, Vec<u8>)], rules: &TransferRules) -> Vec<(bool, Vec<u8>)> {
    let mut audit = SftpAudit::new(rules.clone());
    let mut denied = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (client, bytes) in messages {
        if *client {
            let run = audit.from_client(Bytes::copy_from_slice(bytes));
            denied.extend(packets(&run.reply).iter().map(|p| id_of(p)));
            out.push((true, bytes.clone()));
            continue;
        }
        let kept: Vec<u8> = packets(bytes)
            .into_iter()
            .filter(|p| !denied.contains(&id_of(p)))
            .flatten()
            .collect();
        audit.from_server(Bytes::from(kept.clone()));
        if !kept.is_empty() {
            out.push((false, kept));
        }
    }
    out
}

fn id_of(packet: &[u8]) -> u32 {
    u32::from_be_bytes(packet[5..9].try_into().unwrap())
}

fn check_rechunked(messages: &[(bool, Vec<u8>)], rules: &TransferRules, sizes: &[usize]) {
    let messages = &behind_gateway(messages, rules);
    let mut whole = SftpAudit::new(rules.clone());
    let expected = converse(&mut whole, messages);
    let expected_finish = whole.finish();
    let mut chunked = SftpAudit::new(rules.clone());
    let got = converse(&mut chunked, &rechunk(messages, sizes));
    assert_eq!(summary(&got.events), summary(&expected.events));
    assert_eq!(got.to_server, expected.to_server);
    assert_eq!(got.close, expected.close);
    assert_eq!(summary(&chunked.finish()), summary(&expected_finish));
    assert!(
        !summary(&expected.events)
            .iter()
            .any(|e| e.starts_with("protocol violation") || e.starts_with("tracking stopped")),
        "{:?}",
        summary(&expected.events)
    );
    // The client gets the server's packets, unchanged and in order, with the replies in
    // between them.
    let server: Vec<u8> = messages
        .iter()
        .filter(|m| !m.0)
        .flat_map(|m| m.1.clone())
        .collect();
    let replies = packets(&expected.replies);
    let received = packets(&got.to_client);
    let (injected, passed): (Vec<_>, Vec<_>) = received
        .into_iter()
        .partition(|p| p.len() > 17 && p[4] == 101 && p[13..].windows(7).any(|w| w == b"policy "));
    assert_eq!(passed.concat(), server);
    assert_eq!(injected, replies);
}

fn sessions() -> Vec<Vec<(bool, Vec<u8>)>> {
    let real = |t| {
        transcript(t)
            .into_iter()
            .map(|(c, b)| (c, b.to_vec()))
            .collect()
    };
    let mut mixed = vec![c(init()), s(version())];
    for (p, _) in mixed_requests().into_iter().skip(1) {
        mixed.push(c(p));
    }
    mixed.push(s(data(8, &[1u8; 1000])));
    mixed.push(s(status(1, 0, "ok")));
    vec![
        real(SESSION_OPS),
        real(SESSION_READS),
        every_op_session(),
        mixed,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_split_gives_the_same_result(
        sizes in prop::collection::vec(1usize..600, 1..40),
        mode in 0usize..4,
    ) {
        let rules = match mode {
            0 => rules(SftpMode::Allow, None),
            1 => rules(SftpMode::ReadOnly, None),
            2 => rules(SftpMode::Allow, Some(2000)),
            _ => rules(SftpMode::ReadOnly, Some(1)),
        };
        for session in sessions() {
            check_rechunked(&session, &rules, &sizes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        client in prop::collection::vec(any::<u8>(), 0..300),
        server in prop::collection::vec(any::<u8>(), 0..300),
        mode in 0usize..3,
    ) {
        let rules = match mode {
            0 => rules(SftpMode::Allow, None),
            1 => rules(SftpMode::ReadOnly, None),
            _ => rules(SftpMode::Allow, Some(5)),
        };
        let mut audit = SftpAudit::new(rules);
        let out = audit.from_client(Bytes::from([init(), client.clone()].concat()));
        let forwarded: Vec<u8> = out.forward.iter().flat_map(|b| b.to_vec()).collect();
        prop_assert!(forwarded.len() <= client.len() + 9);
        audit.from_server(Bytes::from(server));
        audit.finish();
    }
}
