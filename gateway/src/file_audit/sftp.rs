//! SFTP version 3 (draft-ietf-secsh-filexfer-02) with the OpenSSH extensions, inside an
//! `sftp` subsystem channel. See the module above for the contract.
//!
//! Each direction goes through a [`Framer`] that collects, per packet, only the prefix the
//! audit needs (a whole request for the small ones; type, id, handle, offset and length for
//! WRITE; type and id, or length, for most replies) and skips the rest as it streams by.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    mem,
};

use bytes::Bytes;

use super::{FileEvent, Filtered, SftpMode, SftpOp, SftpOpKind, TransferRules, forward::Forward};

const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_READLINK: u8 = 19;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_EXTENDED: u8 = 200;

const FXF_READ: u32 = 0x01;
const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;
const FXF_EXCL: u32 = 0x20;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// `SSH_FX_OK`.
pub const FX_OK: u32 = 0;
/// `SSH_FX_PERMISSION_DENIED`, the code of every denial.
pub const FX_PERMISSION_DENIED: u32 = 3;

/// Longest packet accepted (OpenSSH allows 256 KiB each way; more is taken as garbage).
pub const MAX_PACKET_LEN: usize = 4 * 1024 * 1024;
/// Most of one packet held in memory (and, when filtering, held back) while it is decided.
pub const MAX_BUFFERED: usize = 256 * 1024 + 1024;
/// Open handles followed per channel.
pub const MAX_HANDLES: usize = 1024;
/// Requests awaiting a reply followed per channel.
pub const MAX_PENDING: usize = 4096;
/// Bytes of paths and handles kept for the two tables above.
pub const MAX_TRACKED_BYTES: usize = 1024 * 1024;
/// Denial replies waiting for a server packet boundary.
const MAX_OUTBOX: usize = 256 * 1024;
/// Of a STATUS reply, only this much is read (the rest of a long message is skipped).
const STATUS_PREFIX: usize = 4096;
/// Longest handle recorded (the draft says 256).
const MAX_HANDLE_LEN: usize = 1024;
/// Per-entry overhead counted against `MAX_TRACKED_BYTES`.
const ENTRY_COST: usize = 64;

/// Extended requests whose whole body is read (they are reported); the others only need
/// their name.
const REPORTED_EXTENSIONS: [&[u8]; 4] = [
    b"posix-rename@openssh.com",
    b"hardlink@openssh.com",
    b"lsetstat@openssh.com",
    b"copy-data",
];

/// Audits one `sftp` subsystem channel.
pub struct SftpAudit {
    rules: TransferRules,
    filtering: bool,
    client: Framer,
    server: Framer,
    /// Client bytes of the undecided packet that came in earlier chunks (filtering only).
    held: Vec<u8>,
    /// Denial replies waiting for the server stream to reach a packet boundary.
    outbox: Vec<u8>,
    pending: BTreeMap<u32, Pending>,
    handles: HashMap<Vec<u8>, Handle>,
    next_seq: u64,
    tracked_bytes: usize,
    tracking: bool,
    client_version: Option<u32>,
    server_version: Option<u32>,
    uploaded: u64,
    broken: Option<String>,
    /// Under rules: why the channel must close (a protocol violation, a tracking cap).
    halted: Option<String>,
    /// Rows about the channel itself (a protocol violation, tracking stopped), handed out
    /// with the events of the call that found them.
    notices: Vec<FileEvent>,
}

impl SftpAudit {
    pub fn new(rules: TransferRules) -> Self {
        SftpAudit {
            filtering: rules.filtering(),
            rules,
            client: Framer::default(),
            server: Framer::default(),
            held: Vec::new(),
            outbox: Vec::new(),
            pending: BTreeMap::new(),
            handles: HashMap::new(),
            next_seq: 0,
            tracked_bytes: 0,
            tracking: true,
            client_version: None,
            server_version: None,
            uploaded: 0,
            broken: None,
            halted: None,
            notices: Vec::new(),
        }
    }

    /// Client → server data. See the module documentation.
    #[allow(clippy::wrong_self_convention)] // the relay's vocabulary: data from the client
    pub fn from_client(&mut self, data: Bytes) -> Filtered {
        let mut out = Filtered::default();
        if !self.filtering {
            if !data.is_empty() {
                out.forward.push(data.clone());
            }
            if self.broken.is_none() && self.tracking {
                self.parse_client(&data, None, &mut out);
            }
            out.events.append(&mut self.notices);
            return out;
        }
        if let Some(reason) = self.close_reason() {
            out.close = Some(reason);
            return out;
        }
        let mut forward = Forward::new(&data);
        self.parse_client(&data, Some(&mut forward), &mut out);
        out.forward = forward.finish();
        // Replies go to the client only between two server packets.
        if self.server.at_boundary() {
            if !self.outbox.is_empty() {
                let mut reply = mem::take(&mut self.outbox);
                reply.append(&mut out.reply);
                out.reply = reply;
            }
        } else if !out.reply.is_empty() {
            self.outbox.append(&mut out.reply);
            if self.outbox.len() > MAX_OUTBOX {
                self.fail(
                    "client",
                    "too many denied requests waiting for the server".into(),
                );
            }
        }
        if let Some(reason) = self.close_reason() {
            out.close = Some(reason);
            out.forward.clear();
            out.reply.clear();
        }
        out.events.append(&mut self.notices);
        out
    }

    /// Server → client data: its bytes pass unchanged (with held-back denial replies
    /// spliced in at a packet boundary); the events are the operations it answered.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_server(&mut self, data: Bytes) -> Filtered {
        let mut out = Filtered::default();
        if self.broken.is_some() || (!self.tracking && !self.filtering) {
            if !data.is_empty() {
                out.forward.push(data);
            }
            out.close = self.close_reason();
            if out.close.is_some() {
                out.forward.clear();
            }
            return out;
        }
        let mut splice = (!self.outbox.is_empty()).then(|| Forward::new(&data));
        if splice.is_none() && !data.is_empty() {
            out.forward.push(data.clone());
        }
        let (mut pos, mut last) = (0, 0);
        loop {
            match self.server.next(&data, &mut pos, server_want) {
                Item::Done => break,
                Item::Packet { .. } => {
                    let prefix = mem::take(&mut self.server.prefix);
                    let result = self.server_packet(&prefix, self.server.body_len, &mut out.events);
                    self.server.prefix = prefix;
                    self.server.decided(true);
                    if let Err(e) = result {
                        self.fail("server", e);
                        break;
                    }
                }
                Item::Rest { .. } => {}
                Item::Error(e) => {
                    self.fail("server", e);
                    break;
                }
            }
            if let Some(splice) = splice.as_mut()
                && self.server.at_boundary()
                && !self.outbox.is_empty()
            {
                splice.keep(last, pos);
                splice.keep_owned(mem::take(&mut self.outbox));
                last = pos;
            }
        }
        if let Some(mut splice) = splice {
            splice.keep(last, data.len());
            out.forward = splice.finish();
        }
        out.close = self.close_reason();
        if out.close.is_some() {
            out.forward.clear();
        }
        out.events.append(&mut self.notices);
        out
    }

    /// The channel closed: requests left unanswered and file handles never closed.
    pub fn finish(&mut self) -> Vec<FileEvent> {
        let mut events = Vec::new();
        for (_, pending) in mem::take(&mut self.pending) {
            match pending {
                Pending::Open { info, .. } | Pending::Op(info) => {
                    events.push(op_event(info, None, "no reply".into(), false));
                }
                Pending::Close { handle } => {
                    if let Some(h) = self.handles.remove(&handle)
                        && !h.dir
                    {
                        events.push(close_event(h, None, "no reply".into()));
                    }
                }
                Pending::Read { .. } | Pending::Write { .. } | Pending::Quiet { .. } => {}
            }
        }
        let mut open: Vec<Handle> = self
            .handles
            .drain()
            .map(|(_, h)| h)
            .filter(|h| !h.dir)
            .collect();
        open.sort_by_key(|h| h.seq);
        events.extend(
            open.into_iter()
                .map(|h| close_event(h, None, "not closed".into())),
        );
        self.tracked_bytes = 0;
        events
    }

    /// Why the stream could not be parsed. (Protocol violations and tracking caps are
    /// reported as they happen, as `protocol violation` / `tracking stopped` events.)
    pub fn unparseable(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn close_reason(&self) -> Option<String> {
        if !self.filtering {
            return None;
        }
        let policy = &self.rules.policy_name;
        if self.rules.sftp == SftpMode::Deny {
            return Some(format!("sftp denied by policy {policy}"));
        }
        if let Some(reason) = &self.halted {
            return Some(reason.clone());
        }
        self.broken
            .as_ref()
            .map(|e| format!("unparseable SFTP stream under policy {policy}: {e}"))
    }

    fn fail(&mut self, side: &str, reason: String) {
        if self.broken.is_none() {
            self.broken = Some(format!("{side}: {reason}"));
        }
        self.held = Vec::new();
        self.outbox = Vec::new();
        self.drop_tables();
    }

    /// A table reached its cap: under rules the channel closes (what it does could no
    /// longer be told apart); under `allow` the log says so at once and tracking stops.
    fn cap_reached(&mut self, what: String) {
        let status = if self.filtering {
            format!(
                "{what}; the channel is closed (policy {})",
                self.rules.policy_name
            )
        } else {
            format!("{what}; later operations on this channel are not logged")
        };
        self.notice(
            SftpOpKind::TrackingStopped,
            String::new(),
            None,
            status.clone(),
        );
        self.end_tracking(format!("SFTP tracking stopped: {status}"));
    }

    /// The stream breaks the protocol in a way that would make the log lie (a reused
    /// request id, a reused handle, a reply to no request): logged at once; under rules
    /// the channel closes, under `allow` tracking stops (never a wrong attribution).
    fn violation(&mut self, side: &str, what: String, path: String, target: Option<String>) {
        let status = if self.filtering {
            format!(
                "{side}: {what}; the channel is closed (policy {})",
                self.rules.policy_name
            )
        } else {
            format!("{side}: {what}; later operations on this channel are not logged")
        };
        self.notice(SftpOpKind::ProtocolViolation, path, target, status.clone());
        self.end_tracking(format!("SFTP protocol violation: {status}"));
    }

    fn end_tracking(&mut self, reason: String) {
        self.tracking = false;
        if self.filtering && self.halted.is_none() {
            self.halted = Some(reason);
            self.held = Vec::new();
            self.outbox = Vec::new();
        }
        self.drop_tables();
    }

    fn notice(&mut self, op: SftpOpKind, path: String, target: Option<String>, status: String) {
        let info = OpInfo {
            target,
            ..OpInfo::new(op, path)
        };
        self.notices.push(op_event(info, None, status, false));
    }

    fn drop_tables(&mut self) {
        self.pending = BTreeMap::new();
        self.handles = HashMap::new();
        self.tracked_bytes = 0;
    }

    fn parse_client(&mut self, data: &[u8], mut forward: Option<&mut Forward>, out: &mut Filtered) {
        let mut pos = 0;
        // Start of the current packet's bytes in this chunk that are not yet decided.
        let mut from = 0;
        loop {
            if self.client.at_boundary() {
                from = pos;
            }
            match self.client.next(data, &mut pos, client_want) {
                Item::Done => {
                    if forward.is_some() && self.client.undecided() {
                        self.held.extend_from_slice(&data[from..]);
                    }
                    return;
                }
                Item::Packet { end } => {
                    let prefix = mem::take(&mut self.client.prefix);
                    let result = self.client_packet(&prefix, self.client.body_len, out);
                    self.client.prefix = prefix;
                    let keep = match result {
                        Ok(keep) => keep,
                        Err(e) => return self.fail("client", e),
                    };
                    if let Some(forward) = forward.as_deref_mut() {
                        let held = mem::take(&mut self.held);
                        if keep {
                            forward.keep_owned(held);
                            forward.keep(from, end);
                        }
                    }
                    self.client.decided(keep);
                }
                Item::Rest { start, end, keep } => {
                    if keep && let Some(forward) = forward.as_deref_mut() {
                        forward.keep(start, end);
                    }
                }
                Item::Error(e) => return self.fail("client", e),
            }
        }
    }

    /// Decodes one request (its prefix), applies the rules and records what to match the
    /// reply with. Returns whether the packet is forwarded.
    fn client_packet(
        &mut self,
        p: &[u8],
        body_len: usize,
        out: &mut Filtered,
    ) -> Result<bool, String> {
        let mut c = Cursor::new(p);
        let kind = c.u8().map_err(String::from)?;
        if kind == FXP_INIT {
            let version = c.u32().map_err(|_| "truncated INIT".to_string())?;
            self.client_version = Some(version);
            return Ok(true);
        }
        let id = c
            .u32()
            .map_err(|_| format!("truncated {} request", type_name(kind)))?;
        if self.filtering
            && self.server_version.is_none()
            && self.client_version.is_some_and(|v| v > 3)
        {
            return Err("request sent before the server chose the protocol version".into());
        }
        let request = self
            .decode_request(kind, &mut c, body_len)
            .map_err(|e| format!("malformed {} request: {e}", type_name(kind)))?;

        if self.tracking && self.pending.contains_key(&id) {
            self.reused_id(id, kind, &request);
            if self.filtering {
                return Ok(false);
            }
        }
        if let Some(message) = self.denial(&request) {
            self.deny(id, kind, request, message, out);
            return Ok(false);
        }

        if let Request::Write { len, .. } = &request {
            self.uploaded = self.uploaded.saturating_add(*len);
        }
        if self.tracking {
            // Every forwarded request is followed, the quiet ones too: a reply to no
            // request, or a reused id, must be noticed.
            self.insert_pending(id, Pending::awaiting(request, kind));
        }
        Ok(true)
    }

    /// Answers a request the rules refuse with PERMISSION_DENIED and `message`, and logs it.
    fn deny(&self, id: u32, kind: u8, request: Request, message: String, out: &mut Filtered) {
        out.reply
            .extend_from_slice(&status_packet(id, FX_PERMISSION_DENIED, &message));
        let info = match request {
            Request::Open { info, .. }
            | Request::OpenDir { info }
            | Request::Op(info)
            | Request::Unknown(info) => info,
            Request::Write { handle, .. } => {
                OpInfo::new(SftpOpKind::Write, self.handle_path(&handle))
            }
            Request::Close { handle } | Request::Read { handle } => {
                OpInfo::new(SftpOpKind::Unknown, self.handle_path(&handle))
            }
            Request::Quiet => OpInfo::new(SftpOpKind::Unknown, format!("type {kind}")),
        };
        out.events
            .push(op_event(info, Some(FX_PERMISSION_DENIED), message, true));
    }

    /// Why the rules refuse a request, if they do.
    fn denial(&self, request: &Request) -> Option<String> {
        let policy = &self.rules.policy_name;
        if self.rules.sftp != SftpMode::Allow && request.modifying() {
            Some(format!("denied by policy {policy}"))
        } else if let (Request::Write { len, .. }, Some(limit)) =
            (request, self.rules.max_upload_bytes)
            && self.uploaded.saturating_add(*len) > limit
        {
            Some(format!(
                "upload limit of {limit} bytes reached (policy {policy})"
            ))
        } else {
            None
        }
    }

    /// A request reuses the id of one still awaiting its reply: the server would answer
    /// both with that id, and which answer is whose could no longer be told.
    fn reused_id(&mut self, id: u32, kind: u8, request: &Request) {
        let (before, before_path) = match self.pending.get(&id) {
            Some(p) => self.pending_subject(p),
            None => (String::new(), String::new()),
        };
        let (now, now_path) = self.request_subject(kind, request);
        self.violation(
            "client",
            format!("request id {id} reused while it awaits a reply ({before}, then {now})"),
            before_path,
            Some(now_path),
        );
    }

    /// What a request is (`open /a`) and the path it is about.
    fn request_subject(&self, kind: u8, request: &Request) -> (String, String) {
        let path = match request {
            Request::Open { info, .. }
            | Request::OpenDir { info }
            | Request::Op(info)
            | Request::Unknown(info) => return subject(info.op.as_str(), &info.path),
            Request::Close { handle } | Request::Read { handle } => self.handle_path(handle),
            Request::Write { handle, .. } => self.handle_path(handle),
            Request::Quiet => String::new(),
        };
        subject(&type_name(kind).to_lowercase(), &path)
    }

    fn pending_subject(&self, pending: &Pending) -> (String, String) {
        match pending {
            Pending::Open { info, .. } | Pending::Op(info) => subject(info.op.as_str(), &info.path),
            Pending::Close { handle } => subject("close", &self.handle_path(handle)),
            Pending::Read { handle } => subject("read", &self.handle_path(handle)),
            Pending::Write { handle, .. } => subject("write", &self.handle_path(handle)),
            Pending::Quiet { kind } => subject(&type_name(*kind).to_lowercase(), ""),
        }
    }

    fn decode_request(&self, kind: u8, c: &mut Cursor, body_len: usize) -> Parse<Request> {
        Ok(match kind {
            FXP_OPEN => decode_open(c)?,
            FXP_CLOSE | FXP_READ | FXP_WRITE => decode_handle_io(kind, c, body_len)?,
            FXP_SETSTAT | FXP_FSETSTAT | FXP_MKDIR => self.decode_with_attrs(kind, c)?,
            FXP_OPENDIR => Request::OpenDir {
                info: OpInfo::new(SftpOpKind::Opendir, c.text()?),
            },
            FXP_REMOVE => Request::Op(OpInfo::new(SftpOpKind::Remove, c.text()?)),
            FXP_RMDIR => Request::Op(OpInfo::new(SftpOpKind::Rmdir, c.text()?)),
            FXP_RENAME | FXP_SYMLINK => decode_two_paths(kind, c)?,
            FXP_LSTAT | FXP_FSTAT | FXP_READDIR | FXP_REALPATH | FXP_STAT | FXP_READLINK => {
                Request::Quiet
            }
            FXP_EXTENDED => self.decode_extended(c)?,
            other => Request::Unknown(OpInfo::new(SftpOpKind::Unknown, format!("type {other}"))),
        })
    }

    /// SETSTAT, FSETSTAT and MKDIR: a path (a handle for FSETSTAT), then attributes.
    fn decode_with_attrs(&self, kind: u8, c: &mut Cursor) -> Parse<Request> {
        let (op, path) = match kind {
            FXP_FSETSTAT => (SftpOpKind::Fsetstat, self.handle_path(c.string()?)),
            FXP_MKDIR => (SftpOpKind::Mkdir, c.text()?),
            _ => (SftpOpKind::Setstat, c.text()?),
        };
        let attrs = c.attrs()?;
        Ok(Request::Op(OpInfo {
            attrs,
            ..OpInfo::new(op, path)
        }))
    }

    /// An EXTENDED request, by its name: the modifying ones this module knows, the quiet
    /// queries, and the rest (unknown).
    fn decode_extended(&self, c: &mut Cursor) -> Parse<Request> {
        let name = c.string()?;
        let (op, path, target) = match name {
            b"posix-rename@openssh.com" => {
                let old = c.text()?;
                (SftpOpKind::PosixRename, old, Some(c.text()?))
            }
            b"hardlink@openssh.com" => {
                let old = c.text()?;
                (SftpOpKind::Hardlink, c.text()?, Some(old))
            }
            b"lsetstat@openssh.com" => {
                let path = c.text()?;
                let attrs = c.attrs()?;
                return Ok(Request::Op(OpInfo {
                    attrs,
                    ..OpInfo::new(SftpOpKind::Lsetstat, path)
                }));
            }
            b"copy-data" => {
                let from = c.string()?;
                c.u64()?;
                c.u64()?;
                let to = c.string()?;
                c.u64()?;
                let from = self.handle_path(from);
                (SftpOpKind::CopyData, self.handle_path(to), Some(from))
            }
            b"statvfs@openssh.com"
            | b"fstatvfs@openssh.com"
            | b"fsync@openssh.com"
            | b"limits@openssh.com"
            | b"expand-path@openssh.com"
            | b"home-directory"
            | b"users-groups-by-id@openssh.com" => return Ok(Request::Quiet),
            other => {
                let info = OpInfo::new(SftpOpKind::Extended, lossy(other));
                return Ok(Request::Unknown(info));
            }
        };
        Ok(Request::Op(OpInfo {
            target,
            ..OpInfo::new(op, path)
        }))
    }

    fn server_packet(
        &mut self,
        p: &[u8],
        body_len: usize,
        events: &mut Vec<FileEvent>,
    ) -> Result<(), String> {
        let mut c = Cursor::new(p);
        let kind = c.u8().map_err(String::from)?;
        if kind == FXP_VERSION {
            let version = c.u32().map_err(|_| "truncated VERSION".to_string())?;
            self.server_version = Some(version);
            if version != 3 {
                return Err(format!("SFTP version {version} is not supported"));
            }
            return Ok(());
        }
        let id = c
            .u32()
            .map_err(|_| format!("truncated reply (type {kind})"))?;
        if !self.tracking {
            return Ok(());
        }
        let Some(pending) = self.take_pending(id) else {
            self.violation(
                "server",
                format!(
                    "{} reply to id {id}, which no request awaits",
                    type_name(kind)
                ),
                String::new(),
                None,
            );
            return Ok(());
        };
        match (kind, pending) {
            (FXP_STATUS, pending) => {
                let code = c.u32().map_err(|_| "truncated STATUS".to_string())?;
                let message = c.lossy_prefix();
                let text = if message.is_empty() {
                    status_name(code).into_owned()
                } else {
                    message
                };
                self.status_reply(pending, code, text, events);
            }
            (FXP_HANDLE, Pending::Open { info, dir }) => {
                // A handle longer than the prefix read is not followed.
                let handle = c.string().ok().map(<[u8]>::to_vec);
                self.opened(info, dir, handle, events);
            }
            (FXP_DATA, Pending::Read { handle }) => {
                let len = c.u32().map_err(|_| "truncated DATA".to_string())? as usize;
                let len = len.min(body_len - c.pos) as u64;
                if let Some(h) = self.handles.get_mut(&handle) {
                    h.bytes_read = h.bytes_read.saturating_add(len);
                }
            }
            // Extensions may answer as they like.
            (_, Pending::Quiet { kind: FXP_EXTENDED }) => {}
            (FXP_HANDLE | FXP_DATA, pending) => {
                let (what, path) = self.pending_subject(&pending);
                self.violation(
                    "server",
                    format!("{} reply to id {id}, which is for: {what}", type_name(kind)),
                    path,
                    None,
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// A HANDLE reply to an OPEN or OPENDIR.
    fn opened(
        &mut self,
        info: OpInfo,
        dir: bool,
        handle: Option<Vec<u8>>,
        events: &mut Vec<FileEvent>,
    ) {
        let h = Handle {
            path: info.path.clone(),
            flags: info.flags.clone(),
            dir,
            seq: 0,
            bytes_read: 0,
            bytes_written: 0,
        };
        events.push(op_event(info, Some(FX_OK), "ok".into(), false));
        if let Some(handle) = handle {
            self.insert_handle(handle, h);
        }
    }

    /// A STATUS reply: the end of the operation it answers.
    fn status_reply(
        &mut self,
        pending: Pending,
        code: u32,
        text: String,
        events: &mut Vec<FileEvent>,
    ) {
        match pending {
            Pending::Open { info, .. } | Pending::Op(info) => {
                events.push(op_event(info, Some(code), text, false));
            }
            Pending::Close { handle } => {
                if let Some(h) = self.take_handle(&handle)
                    && !h.dir
                {
                    events.push(close_event(h, Some(code), text));
                }
            }
            Pending::Write { handle, len } => {
                if code == FX_OK
                    && let Some(h) = self.handles.get_mut(&handle)
                {
                    h.bytes_written = h.bytes_written.saturating_add(len);
                }
            }
            Pending::Read { .. } | Pending::Quiet { .. } => {}
        }
    }

    fn handle_path(&self, handle: &[u8]) -> String {
        match self.handles.get(handle) {
            Some(h) => h.path.clone(),
            None => format!("handle:{}", hex(handle)),
        }
    }

    fn insert_pending(&mut self, id: u32, pending: Pending) {
        if self.pending.len() >= MAX_PENDING {
            return self.cap_reached(format!(
                "tracking cap: more than {MAX_PENDING} requests awaiting a reply"
            ));
        }
        let cost = pending.cost();
        if self.tracked_bytes + cost > MAX_TRACKED_BYTES {
            return self.cap_reached(tracked_bytes_cap());
        }
        self.tracked_bytes += cost;
        // Never replaces one: a reused id is a protocol violation, found before.
        self.pending.insert(id, pending);
    }

    fn take_pending(&mut self, id: u32) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        self.tracked_bytes -= pending.cost();
        Some(pending)
    }

    fn insert_handle(&mut self, handle: Vec<u8>, mut h: Handle) {
        if handle.len() > MAX_HANDLE_LEN {
            return;
        }
        if let Some(open) = self.handles.get(&handle) {
            // Two files behind one handle: which one a WRITE goes to could not be told.
            let what = format!(
                "handle {} returned for {} while it is still open for {}",
                hex(&handle),
                h.path,
                open.path
            );
            let path = open.path.clone();
            return self.violation("server", what, path, Some(h.path));
        }
        if self.handles.len() >= MAX_HANDLES {
            return self.cap_reached(format!(
                "tracking cap: more than {MAX_HANDLES} open handles"
            ));
        }
        let cost = h.cost(&handle);
        if self.tracked_bytes + cost > MAX_TRACKED_BYTES {
            return self.cap_reached(tracked_bytes_cap());
        }
        h.seq = self.next_seq;
        self.next_seq += 1;
        self.tracked_bytes += cost;
        self.handles.insert(handle, h);
    }

    fn take_handle(&mut self, handle: &[u8]) -> Option<Handle> {
        let h = self.handles.remove(handle)?;
        self.tracked_bytes -= h.cost(handle);
        Some(h)
    }
}

/// What an operation is reported as.
struct OpInfo {
    op: SftpOpKind,
    path: String,
    target: Option<String>,
    flags: Option<String>,
    attrs: Option<String>,
}

impl OpInfo {
    fn new(op: SftpOpKind, path: String) -> Self {
        OpInfo {
            op,
            path,
            target: None,
            flags: None,
            attrs: None,
        }
    }

    fn cost(&self) -> usize {
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        ENTRY_COST + self.path.len() + len(&self.target) + len(&self.flags) + len(&self.attrs)
    }
}

enum Request {
    /// Reads and queries: neither reported nor restricted.
    Quiet,
    Open {
        info: OpInfo,
        pflags: u32,
    },
    OpenDir {
        info: OpInfo,
    },
    Close {
        handle: Vec<u8>,
    },
    Read {
        handle: Vec<u8>,
    },
    Write {
        handle: Vec<u8>,
        len: u64,
    },
    /// Reported with the server's status; modifying.
    Op(OpInfo),
    /// Not known here: passed when everything is allowed, denied under `read_only`.
    Unknown(OpInfo),
}

impl Request {
    fn modifying(&self) -> bool {
        match self {
            Request::Open { pflags, .. } => pflags & !(FXF_READ | FXF_EXCL) != 0,
            Request::Write { .. } | Request::Op(_) | Request::Unknown(_) => true,
            Request::Quiet
            | Request::OpenDir { .. }
            | Request::Close { .. }
            | Request::Read { .. } => false,
        }
    }
}

/// A forwarded request awaiting its reply.
enum Pending {
    Open {
        info: OpInfo,
        dir: bool,
    },
    Close {
        handle: Vec<u8>,
    },
    Read {
        handle: Vec<u8>,
    },
    Write {
        handle: Vec<u8>,
        len: u64,
    },
    Op(OpInfo),
    /// A query or an unknown request (its packet type): only its reply is expected.
    Quiet {
        kind: u8,
    },
}

impl Pending {
    /// What a forwarded request (of packet type `kind`) waits for.
    fn awaiting(request: Request, kind: u8) -> Pending {
        match request {
            Request::Quiet | Request::Unknown(_) => Pending::Quiet { kind },
            Request::Open { info, .. } => Pending::Open { info, dir: false },
            Request::OpenDir { info } => Pending::Open { info, dir: true },
            Request::Close { handle } => Pending::Close { handle },
            Request::Read { handle } => Pending::Read { handle },
            Request::Write { handle, len } => Pending::Write { handle, len },
            Request::Op(info) => Pending::Op(info),
        }
    }

    fn cost(&self) -> usize {
        match self {
            Pending::Open { info, .. } | Pending::Op(info) => info.cost(),
            Pending::Close { handle }
            | Pending::Read { handle }
            | Pending::Write { handle, .. } => ENTRY_COST + handle.len(),
            Pending::Quiet { .. } => ENTRY_COST,
        }
    }
}

/// An open handle.
struct Handle {
    path: String,
    flags: Option<String>,
    dir: bool,
    seq: u64,
    bytes_read: u64,
    bytes_written: u64,
}

impl Handle {
    fn cost(&self, handle: &[u8]) -> usize {
        ENTRY_COST + handle.len() + self.path.len() + self.flags.as_ref().map_or(0, String::len)
    }
}

/// OPEN: path, pflags, attributes.
fn decode_open(c: &mut Cursor) -> Parse<Request> {
    let path = c.text()?;
    let pflags = c.u32()?;
    let attrs = c.attrs()?;
    Ok(Request::Open {
        info: OpInfo {
            flags: Some(describe_pflags(pflags)),
            attrs,
            ..OpInfo::new(SftpOpKind::Open, path)
        },
        pflags,
    })
}

/// CLOSE, READ and WRITE: a handle, and for READ and WRITE an offset and a length (a
/// WRITE's data must fit in the packet's `body_len`).
fn decode_handle_io(kind: u8, c: &mut Cursor, body_len: usize) -> Parse<Request> {
    let handle = c.string()?.to_vec();
    if kind == FXP_CLOSE {
        return Ok(Request::Close { handle });
    }
    c.u64()?;
    if kind == FXP_READ {
        c.u32()?;
        return Ok(Request::Read { handle });
    }
    let len = c.u32()? as usize;
    if len > body_len - c.pos {
        return Err("data longer than the packet");
    }
    Ok(Request::Write {
        handle,
        len: len as u64,
    })
}

/// RENAME (old, new) and SYMLINK. OpenSSH (and the clients that follow it) send a
/// symlink's target first: the draft's order was inadvertently reversed in sftp-server
/// and kept for compatibility.
fn decode_two_paths(kind: u8, c: &mut Cursor) -> Parse<Request> {
    let first = c.text()?;
    let second = c.text()?;
    let (op, path, target) = if kind == FXP_SYMLINK {
        (SftpOpKind::Symlink, second, first)
    } else {
        (SftpOpKind::Rename, first, second)
    };
    Ok(Request::Op(OpInfo {
        target: Some(target),
        ..OpInfo::new(op, path)
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tracked_bytes_cap() -> String {
    format!("tracking cap: more than {MAX_TRACKED_BYTES} bytes of paths and handles followed")
}

/// `open /a`, and the path alone.
fn subject(op: &str, path: &str) -> (String, String) {
    let what = if path.is_empty() {
        op.to_string()
    } else {
        format!("{op} {path}")
    };
    (what, path.to_string())
}

fn op_event(info: OpInfo, status: Option<u32>, status_text: String, denied: bool) -> FileEvent {
    FileEvent::Sftp(SftpOp {
        op: info.op,
        path: info.path,
        target: info.target,
        flags: info.flags,
        attrs: info.attrs,
        bytes_read: 0,
        bytes_written: 0,
        status,
        status_text,
        denied,
    })
}

fn close_event(h: Handle, status: Option<u32>, status_text: String) -> FileEvent {
    FileEvent::Sftp(SftpOp {
        op: SftpOpKind::Close,
        path: h.path,
        target: None,
        flags: h.flags,
        attrs: None,
        bytes_read: h.bytes_read,
        bytes_written: h.bytes_written,
        status,
        status_text,
        denied: false,
    })
}

/// An `SSH_FXP_STATUS` reply (language tag empty).
pub fn status_packet(id: u32, code: u32, message: &str) -> Vec<u8> {
    let body_len = 1 + 4 + 4 + 4 + message.len() + 4;
    let mut p = Vec::with_capacity(4 + body_len);
    p.extend_from_slice(&(body_len as u32).to_be_bytes());
    p.push(FXP_STATUS);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&(message.len() as u32).to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p
}

fn status_name(code: u32) -> Cow<'static, str> {
    Cow::Borrowed(match code {
        0 => "ok",
        1 => "end of file",
        2 => "no such file",
        3 => "permission denied",
        4 => "failure",
        5 => "bad message",
        6 => "no connection",
        7 => "connection lost",
        8 => "operation unsupported",
        other => return Cow::Owned(format!("status {other}")),
    })
}

fn type_name(kind: u8) -> Cow<'static, str> {
    Cow::Borrowed(match kind {
        FXP_OPEN => "OPEN",
        FXP_CLOSE => "CLOSE",
        FXP_READ => "READ",
        FXP_WRITE => "WRITE",
        FXP_SETSTAT => "SETSTAT",
        FXP_FSETSTAT => "FSETSTAT",
        FXP_OPENDIR => "OPENDIR",
        FXP_REMOVE => "REMOVE",
        FXP_MKDIR => "MKDIR",
        FXP_RMDIR => "RMDIR",
        FXP_RENAME => "RENAME",
        FXP_SYMLINK => "SYMLINK",
        FXP_LSTAT => "LSTAT",
        FXP_FSTAT => "FSTAT",
        FXP_READDIR => "READDIR",
        FXP_REALPATH => "REALPATH",
        FXP_STAT => "STAT",
        FXP_READLINK => "READLINK",
        FXP_EXTENDED => "EXTENDED",
        FXP_STATUS => "STATUS",
        FXP_HANDLE => "HANDLE",
        FXP_DATA => "DATA",
        other => return Cow::Owned(format!("type {other}")),
    })
}

fn describe_pflags(pflags: u32) -> String {
    const NAMES: [(u32, &str); 6] = [
        (FXF_READ, "read"),
        (FXF_WRITE, "write"),
        (FXF_APPEND, "append"),
        (FXF_CREAT, "create"),
        (FXF_TRUNC, "trunc"),
        (FXF_EXCL, "excl"),
    ];
    let mut parts: Vec<Cow<str>> = NAMES
        .iter()
        .filter(|(bit, _)| pflags & bit != 0)
        .map(|(_, name)| Cow::Borrowed(*name))
        .collect();
    let unknown = pflags & !0x3f;
    if unknown != 0 {
        parts.push(Cow::Owned(format!("{unknown:#x}")));
    }
    parts.join(",")
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How much of a request's body is needed to decide on it and report it.
fn client_want(p: &[u8], body_len: usize) -> Result<usize, String> {
    let Some(&kind) = p.first() else {
        return Ok(1);
    };
    let want = match kind {
        FXP_INIT => 5,
        // Type, id, handle, offset and data length: the data streams by.
        FXP_WRITE if p.len() < 9 => 9,
        FXP_WRITE => 9usize.saturating_add(be32(&p[5..9])).saturating_add(12),
        FXP_EXTENDED if p.len() < 9 => 9,
        FXP_EXTENDED => {
            let name_end = 9usize.saturating_add(be32(&p[5..9])).min(body_len);
            if p.len() < name_end {
                name_end
            } else if REPORTED_EXTENSIONS.contains(&&p[9..name_end]) {
                body_len
            } else {
                name_end
            }
        }
        FXP_OPEN | FXP_CLOSE | FXP_READ | FXP_SETSTAT | FXP_FSETSTAT | FXP_OPENDIR | FXP_REMOVE
        | FXP_MKDIR | FXP_RMDIR | FXP_RENAME | FXP_SYMLINK => body_len,
        _ => 5,
    };
    let want = want.min(body_len);
    if want > MAX_BUFFERED {
        return Err(format!(
            "{} request of {body_len} bytes is over the {MAX_BUFFERED}-byte inspection limit",
            type_name(kind)
        ));
    }
    Ok(want)
}

/// How much of a reply's body is needed: the id, the status and its message, the handle,
/// or the data length.
fn server_want(p: &[u8], body_len: usize) -> Result<usize, String> {
    let Some(&kind) = p.first() else {
        return Ok(1);
    };
    let want = match kind {
        FXP_STATUS => STATUS_PREFIX,
        FXP_HANDLE => 9 + MAX_HANDLE_LEN,
        FXP_DATA => 9,
        _ => 5,
    };
    Ok(want.min(body_len))
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Splits one direction's stream into packets.
#[derive(Default)]
struct Framer {
    header: [u8; 4],
    header_len: usize,
    body_len: usize,
    prefix: Vec<u8>,
    phase: Phase,
}

#[derive(Default, Clone, Copy)]
enum Phase {
    /// Reading the 4-byte length (`header_len` of them so far).
    #[default]
    Header,
    /// Collecting the body prefix.
    Prefix,
    /// The rest of the body streams by.
    Rest { remaining: usize, keep: bool },
}

enum Item {
    /// The input is used up.
    Done,
    /// A packet's prefix is complete (the input up to `end` is consumed); call `decided`.
    Packet {
        end: usize,
    },
    /// Input `start..end` belongs to the current packet's remainder.
    Rest {
        start: usize,
        end: usize,
        keep: bool,
    },
    Error(String),
}

impl Framer {
    fn at_boundary(&self) -> bool {
        matches!(self.phase, Phase::Header) && self.header_len == 0
    }

    /// In a packet that is not decided yet.
    fn undecided(&self) -> bool {
        match self.phase {
            Phase::Header => self.header_len > 0,
            Phase::Prefix => true,
            Phase::Rest { .. } => false,
        }
    }

    fn next(
        &mut self,
        data: &[u8],
        pos: &mut usize,
        want: fn(&[u8], usize) -> Result<usize, String>,
    ) -> Item {
        loop {
            match self.phase {
                Phase::Header => {
                    if *pos == data.len() {
                        return Item::Done;
                    }
                    let n = (4 - self.header_len).min(data.len() - *pos);
                    self.header[self.header_len..self.header_len + n]
                        .copy_from_slice(&data[*pos..*pos + n]);
                    self.header_len += n;
                    *pos += n;
                    if self.header_len == 4 {
                        let len = u32::from_be_bytes(self.header) as usize;
                        if len == 0 {
                            return Item::Error("empty packet".into());
                        }
                        if len > MAX_PACKET_LEN {
                            return Item::Error(format!(
                                "packet length {len} is over the {MAX_PACKET_LEN}-byte limit"
                            ));
                        }
                        self.body_len = len;
                        self.prefix.clear();
                        self.phase = Phase::Prefix;
                    }
                }
                Phase::Prefix => {
                    let want = match want(&self.prefix, self.body_len) {
                        Ok(want) => want,
                        Err(e) => return Item::Error(e),
                    };
                    if self.prefix.len() >= want {
                        return Item::Packet { end: *pos };
                    }
                    if *pos == data.len() {
                        return Item::Done;
                    }
                    let n = (want - self.prefix.len()).min(data.len() - *pos);
                    self.prefix.extend_from_slice(&data[*pos..*pos + n]);
                    *pos += n;
                }
                Phase::Rest { remaining, keep } => {
                    if *pos == data.len() {
                        return Item::Done;
                    }
                    let n = remaining.min(data.len() - *pos);
                    let start = *pos;
                    *pos += n;
                    self.phase = if n == remaining {
                        Phase::Header
                    } else {
                        Phase::Rest {
                            remaining: remaining - n,
                            keep,
                        }
                    };
                    return Item::Rest {
                        start,
                        end: *pos,
                        keep,
                    };
                }
            }
        }
    }

    /// After [`Item::Packet`]: whether the rest of the packet is kept.
    fn decided(&mut self, keep: bool) {
        let remaining = self.body_len - self.prefix.len();
        self.header_len = 0;
        if self.prefix.capacity() > 64 * 1024 {
            self.prefix = Vec::new();
        }
        self.phase = if remaining == 0 {
            Phase::Header
        } else {
            Phase::Rest { remaining, keep }
        };
    }
}

type Parse<T> = Result<T, &'static str>;

/// Reads SFTP wire types from a packet prefix.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or("truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Parse<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Parse<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Parse<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    fn string(&mut self) -> Parse<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Parse<String> {
        Ok(lossy(self.string()?))
    }

    /// A string that may have been cut by the prefix limit: what there is of it.
    fn lossy_prefix(&mut self) -> String {
        let Ok(n) = self.u32() else {
            return String::new();
        };
        let n = (n as usize).min(self.buf.len() - self.pos);
        self.take(n).map(lossy).unwrap_or_default()
    }

    /// ATTRS, described (`None` when it carries nothing).
    fn attrs(&mut self) -> Parse<Option<String>> {
        let flags = self.u32()?;
        let mut parts = Vec::new();
        if flags & ATTR_SIZE != 0 {
            parts.push(format!("size={}", self.u64()?));
        }
        if flags & ATTR_UIDGID != 0 {
            let uid = self.u32()?;
            let gid = self.u32()?;
            parts.push(format!("uid={uid},gid={gid}"));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            parts.push(format!("mode={:04o}", self.u32()? & 0o7777));
        }
        if flags & ATTR_ACMODTIME != 0 {
            let atime = self.u32()?;
            let mtime = self.u32()?;
            parts.push(format!("atime={atime},mtime={mtime}"));
        }
        if flags & ATTR_EXTENDED != 0 {
            let count = self.u32()?;
            for _ in 0..count {
                let name = self.string()?;
                self.string()?;
                parts.push(format!("ext={}", lossy(name)));
            }
        }
        Ok((!parts.is_empty()).then(|| parts.join(",")))
    }
}
