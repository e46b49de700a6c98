//! Legacy scp (the rcp protocol: `scp -t` receives, `scp -f` sends) inside an exec channel.
//! See the module above for the contract.
//!
//! The source sends control records (`T` times, `C` file, `D` directory, `E` end of
//! directory, `\x01`/`\x02` error messages), each `C` followed by the file's data and one
//! status byte; the sink answers every record, and every file's data, with `\0` or an
//! error (`\x01msg\n`, fatal `\x02msg\n`), and starts with one `\0`. The source waits for
//! each answer, so the two streams are followed in lock-step: a `C` record's data only
//! follows a positive answer.

use std::{collections::VecDeque, mem};

use bytes::Bytes;

use super::{FileEvent, Filtered, ScpFile, ScpOpKind, SftpMode, TransferRules, forward::Forward};

/// Longest control record or error message (OpenSSH's own limit is 2 KiB).
const MAX_LINE: usize = 4096;
/// Records sent without an answer (the protocol allows one, plus the sink's first `\0`).
const MAX_UNANSWERED: usize = 16;
/// Bytes of the directory names the current path is under.
const MAX_DIR_BYTES: usize = 64 * 1024;

/// The status of a file whose data all went through when the channel closed before the
/// source's closing status byte (and so before the sink's answer).
pub const COMPLETE_UNCONFIRMED: &str =
    "complete (all data sent; the channel closed before the final status byte and answer)";

/// Which way the files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScpDirection {
    /// `scp -t`: the client sends files to the server.
    Upload,
    /// `scp -f`: the server sends files to the client.
    Download,
}

impl ScpDirection {
    pub const ALL: [ScpDirection; 2] = [ScpDirection::Upload, ScpDirection::Download];

    pub fn as_str(self) -> &'static str {
        match self {
            ScpDirection::Upload => "upload",
            ScpDirection::Download => "download",
        }
    }
}

/// A legacy scp invocation, as the client asked for it in an exec request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpCommand {
    pub direction: ScpDirection,
    /// `-r`.
    pub recursive: bool,
    /// `-d`: the target must be a directory (the client sends several files).
    pub target_dir: bool,
    /// The target (upload) or the sources (download), as the remote shell would split them.
    pub paths: Vec<String>,
}

/// Recognises `scp [-dpqrv…] -t|-f [--] PATH…` (the program may be a path ending in
/// `/scp`). Words are split as a POSIX shell would (quotes, backslashes); `None` for
/// anything that is not a plain scp invocation: another program, both or neither of
/// `-t`/`-f`, no path, an unknown option, or shell syntax (`;`, `|`, `&`, redirections,
/// `$`, backquotes, comments) that would make it more than scp. Options are also looked for
/// after paths (as GNU getopt would), so `scp /x -t` is an upload.
pub fn parse_command(command: &str) -> Option<ScpCommand> {
    let words = shell_words(command)?;
    let (program, args) = words.split_first()?;
    if program != "scp" && !program.ends_with("/scp") {
        return None;
    }
    let mut direction = None;
    let mut recursive = false;
    let mut target_dir = false;
    let mut paths = Vec::new();
    let mut options_done = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if options_done || !arg.starts_with('-') || arg == "-" {
            paths.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        let letters = &arg[1..];
        for (i, letter) in letters.char_indices() {
            let set = match letter {
                't' => Some(ScpDirection::Upload),
                'f' => Some(ScpDirection::Download),
                'r' => {
                    recursive = true;
                    None
                }
                'd' => {
                    target_dir = true;
                    None
                }
                'p' | 'q' | 'v' | 'T' | 'C' | 'O' | 'A' | 'B' | '3' | '4' | '6' => None,
                // Options with an argument: the rest of the word, or the next word.
                'c' | 'D' | 'F' | 'i' | 'J' | 'l' | 'o' | 'P' | 'S' | 'X' => {
                    if i + 1 == letters.len() {
                        args.next()?;
                    }
                    break;
                }
                _ => return None,
            };
            if let Some(set) = set {
                if direction.is_some_and(|d| d != set) {
                    return None;
                }
                direction = Some(set);
            }
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(ScpCommand {
        direction: direction?,
        recursive,
        target_dir,
        paths,
    })
}

/// Splits a command line into words like a POSIX shell; `None` for anything beyond plain
/// words (operators, expansions, comments) and for unterminated quotes.
pub(super) fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('$' | '`' | '"' | '\\') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        '$' | '`' => return None,
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next()? {
                    '\n' => {}
                    c => word.push(c),
                }
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' | '\n' | '\r' => return None,
            '#' if !in_word => return None,
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// Audits one legacy scp channel.
pub struct ScpAudit {
    command: ScpCommand,
    rules: TransferRules,
    /// The client's stream is filtered (an upload with a limit, or a refused transfer).
    filtering: bool,
    /// The whole transfer is refused with this message.
    refusal: Option<String>,
    source: Source,
    /// The control record (or error message) being read from the source.
    line: Vec<u8>,
    sink: Sink,
    ack_message: Vec<u8>,
    /// What the sink's next answers are for, oldest first.
    unanswered: VecDeque<Record>,
    dirs: Vec<String>,
    dir_bytes: usize,
    file: Option<FileState>,
    uploaded: u64,
    broken: Option<String>,
    close: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Reading a control record.
    Line,
    /// A `C` record was sent: nothing may come before the sink's answer.
    WaitAck,
    Data {
        remaining: u64,
    },
    /// The status byte after a file's data.
    Trail,
    /// The error message that replaced that status byte.
    TrailMessage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Byte,
    Message { fatal: bool },
}

enum Record {
    Start,
    Times,
    File,
    FileData,
    Dir {
        path: String,
        name: String,
        mode: u32,
    },
    EndDir,
}

struct FileState {
    path: String,
    size: u64,
    mode: u32,
    bytes: u64,
    source_error: Option<String>,
}

impl ScpAudit {
    pub fn new(command: ScpCommand, rules: TransferRules) -> Self {
        let upload = command.direction == ScpDirection::Upload;
        let policy = &rules.policy_name;
        let refusal = match rules.sftp {
            SftpMode::Deny => Some(format!("denied by policy {policy}")),
            SftpMode::ReadOnly if upload => Some(format!("uploads denied by policy {policy}")),
            _ => None,
        };
        ScpAudit {
            filtering: refusal.is_some() || (upload && rules.max_upload_bytes.is_some()),
            refusal,
            command,
            rules,
            source: Source::Line,
            line: Vec::new(),
            sink: Sink::Byte,
            ack_message: Vec::new(),
            unanswered: VecDeque::from([Record::Start]),
            dirs: Vec::new(),
            dir_bytes: 0,
            file: None,
            uploaded: 0,
            broken: None,
            close: None,
        }
    }

    /// Client → server data. See the module documentation.
    #[allow(clippy::wrong_self_convention)] // the relay's vocabulary: data from the client
    pub fn from_client(&mut self, data: Bytes) -> Filtered {
        let mut out = Filtered::default();
        if let Some(reason) = &self.close {
            out.close = Some(reason.clone());
            return out;
        }
        if let Some(message) = self.refusal.clone() {
            out.reply = format!("\x02scp: {message}\n").into_bytes();
            out.events.push(FileEvent::Scp(ScpFile {
                denied: true,
                status_text: message.clone(),
                ..self.base(ScpOpKind::Refused, self.command.paths.join(" "))
            }));
            self.close = Some(format!(
                "scp {}: {message}",
                self.command.direction.as_str()
            ));
            out.close = self.close.clone();
            return out;
        }
        if !self.filtering {
            if !data.is_empty() {
                out.forward.push(data.clone());
            }
            if self.broken.is_none() {
                match self.command.direction {
                    ScpDirection::Upload => self.feed_source(&data, None, &mut out),
                    ScpDirection::Download => self.feed_sink(&data, &mut out.events),
                }
            }
            return out;
        }
        // Filtering is only ever an upload's: the client is the source.
        let mut forward = Forward::new(&data);
        self.feed_source(&data, Some(&mut forward), &mut out);
        out.forward = forward.finish();
        if self.close.is_some() {
            out.close = self.close.clone();
            out.forward.clear();
        }
        out
    }

    /// Server → client data: passed unchanged; the events are the transfers it completed.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_server(&mut self, data: Bytes) -> Filtered {
        let mut out = Filtered::default();
        if self.close.is_none() && self.broken.is_none() {
            match self.command.direction {
                ScpDirection::Upload => self.feed_sink(&data, &mut out.events),
                ScpDirection::Download => self.feed_source(&data, None, &mut out),
            }
        }
        if self.close.is_some() {
            out.close = self.close.clone();
        } else if !data.is_empty() {
            out.forward.push(data);
        }
        out
    }

    /// The channel closed: the file in flight and directories never answered.
    pub fn finish(&mut self) -> Vec<FileEvent> {
        let mut events = Vec::new();
        if let Some(f) = self.file.take() {
            let text = match self.source {
                // Every byte of the file went through; only the source's closing status
                // byte is missing. libssh2 (curl `scp://`) ends an upload like that: it
                // closes the channel after the data, so the sink never answers (OpenSSH's
                // scp then exits 1, the file written).
                Source::Trail => COMPLETE_UNCONFIRMED,
                Source::Data { .. } | Source::TrailMessage => "incomplete",
                Source::Line | Source::WaitAck => "no reply",
            };
            events.push(self.file(f, false, text.into()));
        }
        for record in mem::take(&mut self.unanswered) {
            if let Record::Dir { path, mode, .. } = record {
                events.push(self.dir(path, mode, false, "no reply".into()));
            }
        }
        events
    }

    /// Why the stream stopped being followed.
    pub fn unparseable(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn fail(&mut self, reason: &str) {
        if self.broken.is_some() {
            return;
        }
        self.broken = Some(reason.to_string());
        if self.filtering && self.close.is_none() {
            self.close = Some(format!(
                "unparseable scp stream under policy {}: {reason}",
                self.rules.policy_name
            ));
        }
    }

    fn stopped(&self) -> bool {
        self.broken.is_some() || self.close.is_some()
    }

    /// An event with nothing transferred and no status yet.
    fn base(&self, op: ScpOpKind, path: String) -> ScpFile {
        ScpFile {
            direction: self.command.direction,
            op,
            path,
            name: None,
            size: 0,
            mode: 0,
            bytes: 0,
            ok: false,
            denied: false,
            status_text: String::new(),
        }
    }

    /// An event for a file or directory at `rel` (under the `D` records it is in).
    fn entry(&self, op: ScpOpKind, rel: String) -> ScpFile {
        if self.command.direction == ScpDirection::Download {
            return self.base(op, rel);
        }
        let target = self.command.paths.join(" ");
        let surely_dir =
            self.command.target_dir || target == "." || target == ".." || target.ends_with('/');
        let path = if !surely_dir {
            target
        } else if target == "." {
            rel.clone()
        } else {
            format!("{}/{rel}", target.trim_end_matches('/'))
        };
        ScpFile {
            name: Some(rel),
            ..self.base(op, path)
        }
    }

    /// An error message a peer sent.
    fn error(&self, message: String) -> FileEvent {
        FileEvent::Scp(ScpFile {
            status_text: message,
            ..self.base(ScpOpKind::Error, String::new())
        })
    }

    fn file(&self, f: FileState, ok: bool, status_text: String) -> FileEvent {
        FileEvent::Scp(ScpFile {
            size: f.size,
            mode: f.mode,
            bytes: f.bytes,
            ok,
            status_text,
            ..self.entry(ScpOpKind::File, f.path)
        })
    }

    fn dir(&self, path: String, mode: u32, ok: bool, status_text: String) -> FileEvent {
        FileEvent::Scp(ScpFile {
            mode,
            ok,
            status_text,
            ..self.entry(ScpOpKind::Dir, path)
        })
    }

    /// The source's stream: records, file data, status bytes.
    fn feed_source(&mut self, data: &[u8], mut forward: Option<&mut Forward>, out: &mut Filtered) {
        let mut pos = 0;
        while pos < data.len() && !self.stopped() {
            let forward = forward.as_deref_mut();
            let next = match self.source {
                Source::Line => self.source_record(data, pos, forward, out),
                Source::WaitAck => {
                    self.fail("file data before the file was accepted");
                    None
                }
                Source::Data { remaining } => Some(self.source_data(data, pos, remaining, forward)),
                Source::Trail => self.source_trail(data, pos, forward),
                Source::TrailMessage => self.source_trail_message(data, pos, forward),
            };
            let Some(next) = next else { return };
            pos = next;
        }
    }

    /// A control record from `pos` (after what earlier chunks carried of it): where the
    /// rest of `data` starts, or `None` when the chunk is used up or the stream failed.
    fn source_record(
        &mut self,
        data: &[u8],
        pos: usize,
        forward: Option<&mut Forward>,
        out: &mut Filtered,
    ) -> Option<usize> {
        let carried = self.line.len();
        let Some(n) = data[pos..].iter().position(|&b| b == b'\n') else {
            self.line.extend_from_slice(&data[pos..]);
            if self.line.len() > MAX_LINE {
                self.fail("control record too long");
            }
            return None;
        };
        self.line.extend_from_slice(&data[pos..pos + n]);
        let next = pos + n + 1;
        if self.line.len() > MAX_LINE {
            self.fail("control record too long");
            return None;
        }
        let line = mem::take(&mut self.line);
        let keep = self.source_line(&line, out);
        if keep && let Some(forward) = forward {
            forward.keep_owned(line[..carried].to_vec());
            forward.keep(pos, next);
        }
        self.line = line;
        self.line.clear();
        Some(next)
    }

    /// File data from `pos`, `remaining` of it still due: where the rest starts.
    fn source_data(
        &mut self,
        data: &[u8],
        pos: usize,
        remaining: u64,
        forward: Option<&mut Forward>,
    ) -> usize {
        let n = remaining.min((data.len() - pos) as u64) as usize;
        if let Some(forward) = forward {
            forward.keep(pos, pos + n);
        }
        if let Some(f) = self.file.as_mut() {
            f.bytes += n as u64;
        }
        self.source = if remaining == n as u64 {
            Source::Trail
        } else {
            Source::Data {
                remaining: remaining - n as u64,
            }
        };
        pos + n
    }

    /// The status byte after a file's data.
    fn source_trail(
        &mut self,
        data: &[u8],
        pos: usize,
        forward: Option<&mut Forward>,
    ) -> Option<usize> {
        let byte = data[pos];
        if let Some(forward) = forward {
            forward.keep(pos, pos + 1);
        }
        match byte {
            0 => {
                self.source = Source::Line;
                self.expect(Record::FileData);
            }
            1 | 2 => self.source = Source::TrailMessage,
            _ => {
                self.fail("bad status byte after file data");
                return None;
            }
        }
        Some(pos + 1)
    }

    /// The message after a failing status byte, up to its newline.
    fn source_trail_message(
        &mut self,
        data: &[u8],
        pos: usize,
        forward: Option<&mut Forward>,
    ) -> Option<usize> {
        let end = data[pos..].iter().position(|&b| b == b'\n');
        let stop = end.map_or(data.len(), |n| pos + n);
        self.line.extend_from_slice(&data[pos..stop]);
        let next = end.map_or(data.len(), |_| stop + 1);
        if let Some(forward) = forward {
            forward.keep(pos, next);
        }
        if self.line.len() > MAX_LINE {
            self.fail("error message too long");
            return None;
        }
        if end.is_some() {
            let message = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if let Some(f) = self.file.as_mut() {
                f.source_error = Some(message);
            }
            self.source = Source::Line;
            self.expect(Record::FileData);
        }
        Some(next)
    }

    /// One control record from the source; whether it is forwarded.
    fn source_line(&mut self, line: &[u8], out: &mut Filtered) -> bool {
        match line.first() {
            Some(b'T') => {
                if !valid_times(&line[1..]) {
                    self.fail("malformed T record");
                    return false;
                }
                self.expect(Record::Times);
                true
            }
            Some(&kind @ (b'C' | b'D')) => self.source_header(kind, line, out),
            Some(b'E') => {
                if let Some(dir) = self.dirs.pop() {
                    self.dir_bytes -= dir.len() + 1;
                }
                self.expect(Record::EndDir);
                true
            }
            Some(1 | 2) => {
                let message = String::from_utf8_lossy(&line[1..]).into_owned();
                out.events.push(self.error(message));
                true
            }
            _ => {
                self.fail("expected a control record");
                false
            }
        }
    }

    /// A `C` (file) or `D` (directory) record from the source; whether it is forwarded.
    fn source_header(&mut self, kind: u8, line: &[u8], out: &mut Filtered) -> bool {
        let Some((mode, size, name)) = parse_header(&line[1..]) else {
            self.fail("malformed C/D record");
            return false;
        };
        let path = self.under_dirs(&name);
        if kind == b'D' {
            self.expect(Record::Dir { path, name, mode });
            return true;
        }
        if self.command.direction == ScpDirection::Upload {
            if let Some(limit) = self.rules.max_upload_bytes
                && self.uploaded.saturating_add(size) > limit
            {
                let message = format!(
                    "upload limit of {limit} bytes reached (policy {})",
                    self.rules.policy_name
                );
                out.reply
                    .extend_from_slice(format!("\x02scp: {message}\n").as_bytes());
                out.events.push(FileEvent::Scp(ScpFile {
                    size,
                    mode,
                    denied: true,
                    status_text: message.clone(),
                    ..self.entry(ScpOpKind::File, path)
                }));
                self.close = Some(format!("scp {message}"));
                return false;
            }
            self.uploaded = self.uploaded.saturating_add(size);
        }
        self.file = Some(FileState {
            path,
            size,
            mode,
            bytes: 0,
            source_error: None,
        });
        self.source = Source::WaitAck;
        self.expect(Record::File);
        true
    }

    fn expect(&mut self, record: Record) {
        if self.unanswered.len() >= MAX_UNANSWERED {
            return self.fail("records sent without waiting for answers");
        }
        self.unanswered.push_back(record);
    }

    fn under_dirs(&self, name: &str) -> String {
        let mut path = String::with_capacity(self.dir_bytes + name.len());
        for dir in &self.dirs {
            path.push_str(dir);
            path.push('/');
        }
        path.push_str(name);
        path
    }

    /// The sink's stream: answers.
    fn feed_sink(&mut self, data: &[u8], events: &mut Vec<FileEvent>) {
        let mut pos = 0;
        while pos < data.len() && !self.stopped() {
            match self.sink {
                Sink::Byte => {
                    let byte = data[pos];
                    pos += 1;
                    match byte {
                        0 => self.answered(Ok(()), events),
                        1 => self.sink = Sink::Message { fatal: false },
                        2 => self.sink = Sink::Message { fatal: true },
                        // scp takes any other byte as the start of a fatal message.
                        other => {
                            self.ack_message.push(other);
                            self.sink = Sink::Message { fatal: true };
                        }
                    }
                }
                Sink::Message { fatal } => {
                    let end = data[pos..].iter().position(|&b| b == b'\n');
                    let stop = end.map_or(data.len(), |n| pos + n);
                    self.ack_message.extend_from_slice(&data[pos..stop]);
                    pos = end.map_or(data.len(), |_| stop + 1);
                    if self.ack_message.len() > MAX_LINE {
                        return self.fail("error message too long");
                    }
                    if end.is_some() {
                        let message = String::from_utf8_lossy(&self.ack_message).into_owned();
                        self.ack_message.clear();
                        self.sink = Sink::Byte;
                        let message = if message.is_empty() {
                            if fatal { "fatal error" } else { "error" }.to_string()
                        } else {
                            message
                        };
                        self.answered(Err(message), events);
                    }
                }
            }
        }
    }

    /// The sink answered the oldest unanswered record.
    fn answered(&mut self, answer: Result<(), String>, events: &mut Vec<FileEvent>) {
        let Some(record) = self.unanswered.pop_front() else {
            return self.fail("answer to no record");
        };
        match record {
            Record::Start | Record::Times | Record::EndDir => {
                if let Err(message) = answer {
                    events.push(self.error(message));
                }
            }
            Record::File => {
                if self.source != Source::WaitAck {
                    return self.fail("answer to a file out of turn");
                }
                match answer {
                    Ok(()) => {
                        let size = self.file.as_ref().map_or(0, |f| f.size);
                        self.source = if size > 0 {
                            Source::Data { remaining: size }
                        } else {
                            Source::Trail
                        };
                    }
                    Err(message) => {
                        self.source = Source::Line;
                        if let Some(f) = self.file.take() {
                            if self.command.direction == ScpDirection::Upload {
                                self.uploaded = self.uploaded.saturating_sub(f.size);
                            }
                            events.push(self.file(f, false, message));
                        }
                    }
                }
            }
            Record::FileData => {
                if let Some(mut f) = self.file.take() {
                    let (ok, text) = match (f.source_error.take(), answer) {
                        (Some(e), _) | (None, Err(e)) => (false, e),
                        (None, Ok(())) => (true, "ok".to_string()),
                    };
                    events.push(self.file(f, ok, text));
                }
            }
            Record::Dir { path, name, mode } => match answer {
                Ok(()) => {
                    if self.dir_bytes + name.len() + 1 > MAX_DIR_BYTES {
                        return self.fail("directories nested too deep");
                    }
                    self.dir_bytes += name.len() + 1;
                    self.dirs.push(name);
                    events.push(self.dir(path, mode, true, "ok".into()));
                }
                Err(message) => {
                    events.push(self.dir(path, mode, false, message));
                }
            },
        }
    }
}

/// `T<mtime> <usec> <atime> <usec>`.
fn valid_times(rest: &[u8]) -> bool {
    let fields: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    fields.len() == 4
        && fields
            .iter()
            .all(|f| !f.is_empty() && f.len() <= 20 && f.iter().all(u8::is_ascii_digit))
}

/// `C`/`D` records: `<octal mode> <size> <name>`.
fn parse_header(rest: &[u8]) -> Option<(u32, u64, String)> {
    let mode_end = rest.iter().position(|&b| b == b' ')?;
    let mode = &rest[..mode_end];
    if mode.is_empty() || mode.len() > 6 || !mode.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    let mode = mode
        .iter()
        .fold(0u32, |m, b| (m << 3) | u32::from(b - b'0'));
    let rest = &rest[mode_end + 1..];
    let size_end = rest.iter().position(|&b| b == b' ')?;
    let size = &rest[..size_end];
    if size.is_empty() || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = size.iter().try_fold(0u64, |s, b| {
        s.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })?;
    let name = &rest[size_end + 1..];
    if name.is_empty() {
        return None;
    }
    Some((mode, size, String::from_utf8_lossy(name).into_owned()))
}
