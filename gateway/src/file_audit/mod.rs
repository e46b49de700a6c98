//! File-transfer audit and transfer rules for relayed SFTP channels (the `sftp` subsystem,
//! or an exec of an sftp-server binary) and legacy scp (`exec scp -t …` / `scp -f …`)
//! channels, and what an exec runs as far as the audit is concerned ([`exec`]).
//!
//! Pure logic: no I/O, no async, no clock, and nothing from the rest of the crate (the fuzz
//! crate in `gateway/fuzz` compiles this directory on its own through `#[path]`, so keep it
//! free of `crate::` references).
//!
//! # Use
//!
//! One auditor per channel: [`SftpAudit`] for an `sftp` subsystem or an exec that
//! [`exec::classify`] finds to be an sftp-server, [`ScpAudit`] for an exec whose command
//! [`scp::parse_command`] recognises. Every chunk of channel data goes through
//! it before it is forwarded, and each call returns a [`Filtered`]:
//!
//! - `from_client(data)` (client → server): send `forward` (in order) to the server, write
//!   `reply` to the client, log `events`. When `close` is set, `forward` is empty: write
//!   `reply` (if any) to the client, log the reason and close the channel; every later call
//!   returns `close` again.
//! - `from_server(data)` (server → client): write `forward` to the client (the server's bytes,
//!   never altered; for SFTP possibly with denial replies spliced in between two server
//!   packets), log `events`; `close` as above.
//! - `finish()` when the channel closes: operations that never got an answer, and SFTP file
//!   handles never closed (reported as `close` with no status), with their byte counts.
//!
//! Both directions share one state, so the relay serialises the calls (one lock around the
//! auditor) and keeps the client-bound stream in call order: whatever `from_server` returned
//! as `forward` and `from_client` returned as `reply` is written to the client in the order
//! the calls returned (e.g. enqueue onto the client-bound writer while holding the lock).
//! Injected SFTP replies are only ever handed out at a server packet boundary (held back
//! otherwise, and spliced in by the next `from_server`), so that order keeps the client's
//! stream well-formed. Each call must also happen before its bytes are forwarded: scp
//! follows the acknowledgements to know whether file data follows a `C` record.
//!
//! # Rules ([`TransferRules`])
//!
//! With `sftp = Allow` and no `max_upload_bytes` the auditor only observes: `from_client`
//! returns the input chunk itself, at once and unchanged. Otherwise it filters the client's
//! stream, holding back at most the packet currently being decided (its length, type, id and
//! the fields needed to decide; a WRITE's data is streamed, or dropped as it streams when the
//! write is denied).
//!
//! SFTP `read_only` answers every *modifying* request with `SSH_FX_PERMISSION_DENIED` and
//! the message `denied by policy <name>` (the request never reaches the server). Modifying:
//! OPEN with any flag other than READ (and EXCL, which alone changes nothing): WRITE,
//! APPEND, CREAT, TRUNC or unknown bits; WRITE; SETSTAT, FSETSTAT, `lsetstat@openssh.com`;
//! REMOVE; RENAME, `posix-rename@openssh.com`; MKDIR; RMDIR; SYMLINK;
//! `hardlink@openssh.com`; `copy-data`; and, failing closed, every extended request and
//! packet type this module does not know. Allowed: INIT, CLOSE, READ, (L/F)STAT, OPENDIR,
//! READDIR, REALPATH, READLINK, `statvfs`/`fstatvfs`, `limits`, `expand-path`,
//! `home-directory`, `users-groups-by-id@openssh.com` and `fsync@openssh.com` (it only
//! flushes: under `read_only` no handle can be open for writing).
//! `deny` refuses the subsystem (the relay does that at request time; an auditor built with
//! it anyway closes the channel on the first client byte).
//!
//! `max_upload_bytes` caps the WRITE data forwarded on the channel: a WRITE that would take
//! the total past the limit is denied with `SSH_FX_PERMISSION_DENIED` and
//! `upload limit of N bytes reached (policy <name>)` (later, smaller writes that still fit
//! pass). `copy-data` copies on the server and is not an upload.
//!
//! scp: `read_only` refuses uploads (`scp -t`) and `deny` everything; the relay refuses the
//! exec, and an auditor built with them anyway answers the client's first bytes with a
//! fatal `\x02scp: …` and `close`. `max_upload_bytes` counts the sizes `C` records announce:
//! a record that would exceed the limit is not forwarded, the client gets
//! `\x02scp: upload limit of N bytes reached (policy <name>)\n` and the channel must close.
//!
//! # Robustness
//!
//! Arbitrary bytes never panic. A stream that cannot be parsed (bad framing, malformed
//! request, SFTP version other than 3, broken scp record) is flagged ([`SftpAudit::unparseable`],
//! [`ScpAudit::unparseable`]): under plain `allow` it keeps flowing unchanged and unreported;
//! under `read_only` / `max_upload_bytes` it fails closed (`close` is set, nothing more is
//! forwarded). Memory per channel is bounded: [`sftp::MAX_BUFFERED`] bytes of packet prefix,
//! [`sftp::MAX_HANDLES`] handles, [`sftp::MAX_PENDING`] unanswered requests and
//! [`sftp::MAX_TRACKED_BYTES`] of their paths.
//!
//! # Integrity of the SFTP log
//!
//! Every request forwarded is followed until its reply, so the log can never attribute one
//! operation to another: a request reusing the id of one still awaiting its reply, a handle
//! the server returns while it is still open, a reply to no request (or a HANDLE or DATA
//! reply to the wrong kind of request) is a protocol violation. It is reported at once, as
//! an event with op `protocol violation` (path and target: the two requests or files
//! concerned; the status says what happened). Past a table cap, an event with op
//! `tracking stopped` names the cap. Either way, under `read_only` / `max_upload_bytes` the
//! channel is closed (`close`; nothing more is forwarded); under plain `allow` the stream
//! keeps flowing and nothing more is reported for the channel (never a wrong attribution).

pub mod exec;
mod forward;
pub mod scp;
pub mod sftp;

#[cfg(test)]
mod scp_tests;
#[cfg(test)]
mod sftp_tests;

pub use scp::{ScpAudit, ScpDirection};
pub use sftp::SftpAudit;

/// What a policy allows on SFTP (and legacy scp) channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SftpMode {
    #[default]
    Allow,
    /// Reads work; writes, removes, renames and every other modifying request are denied.
    ReadOnly,
    /// The subsystem (and scp) is refused.
    Deny,
}

/// The transfer rules of the policy that admitted the session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferRules {
    pub sftp: SftpMode,
    /// Bytes a channel may upload (SFTP WRITE data, scp file sizes), cumulative.
    pub max_upload_bytes: Option<u64>,
    /// Named in denial messages.
    pub policy_name: String,
}

impl TransferRules {
    /// Whether the client's stream is filtered (otherwise it is only observed).
    fn filtering(&self) -> bool {
        self.sftp != SftpMode::Allow || self.max_upload_bytes.is_some()
    }
}

/// One completed (or denied, or abandoned) file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    Sftp(SftpOp),
    Scp(ScpFile),
}

/// An SFTP operation and the server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpOp {
    /// What was done (see [`SftpOpKind`]).
    pub op: SftpOpKind,
    /// The path operated on: for `symlink`/`hardlink` the link created, for `rename` the old
    /// name, for handle operations the path the handle was opened with (`handle:<hex>` when
    /// unknown).
    pub path: String,
    /// `rename`: the new name; `symlink`/`hardlink`: what the link points to; `copy-data`:
    /// the source handle's path.
    pub target: Option<String>,
    /// `open`/`close`: the open flags, e.g. `write,create,trunc`.
    pub flags: Option<String>,
    /// Attributes sent with `open`, `mkdir` and the setstat family, e.g. `mode=0644,size=0`.
    pub attrs: Option<String>,
    /// `close`: data the server returned for READs on the handle.
    pub bytes_read: u64,
    /// `close`: data of the WRITEs on the handle the server acknowledged.
    pub bytes_written: u64,
    /// The SFTP status code (`Some(0)` when the server answered with a handle); `None` when
    /// the channel closed first.
    pub status: Option<u32>,
    /// The server's message, or the status' name when it sent none (`ok`, `no such file`,
    /// …); for denials the message sent to the client; `no reply` / `not closed` when the
    /// channel closed first.
    pub status_text: String,
    /// Refused by the gateway (never reached the server).
    pub denied: bool,
}

/// What an SFTP operation is reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SftpOpKind {
    Open,
    Opendir,
    /// A file handle closed.
    Close,
    Remove,
    Rename,
    PosixRename,
    Mkdir,
    Rmdir,
    Setstat,
    Fsetstat,
    Lsetstat,
    /// The path is the link created.
    Symlink,
    /// The path is the link created.
    Hardlink,
    CopyData,
    /// Only when denied.
    Write,
    /// Only when denied; the path is the request's name.
    Extended,
    /// Only when denied; the path is `type N`.
    Unknown,
    /// The stream broke the protocol in a way that would make the log lie.
    ProtocolViolation,
    /// A table reached its cap.
    TrackingStopped,
}

impl SftpOpKind {
    pub const ALL: [SftpOpKind; 19] = {
        use SftpOpKind::*;
        [
            Open,
            Opendir,
            Close,
            Remove,
            Rename,
            PosixRename,
            Mkdir,
            Rmdir,
            Setstat,
            Fsetstat,
            Lsetstat,
            Symlink,
            Hardlink,
            CopyData,
            Write,
            Extended,
            Unknown,
            ProtocolViolation,
            TrackingStopped,
        ]
    };

    /// The name in the session log and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SftpOpKind::Open => "open",
            SftpOpKind::Opendir => "opendir",
            SftpOpKind::Close => "close",
            SftpOpKind::Remove => "remove",
            SftpOpKind::Rename => "rename",
            SftpOpKind::PosixRename => "posix-rename",
            SftpOpKind::Mkdir => "mkdir",
            SftpOpKind::Rmdir => "rmdir",
            SftpOpKind::Setstat => "setstat",
            SftpOpKind::Fsetstat => "fsetstat",
            SftpOpKind::Lsetstat => "lsetstat",
            SftpOpKind::Symlink => "symlink",
            SftpOpKind::Hardlink => "hardlink",
            SftpOpKind::CopyData => "copy-data",
            SftpOpKind::Write => "write",
            SftpOpKind::Extended => "extended",
            SftpOpKind::Unknown => "unknown",
            SftpOpKind::ProtocolViolation => "protocol violation",
            SftpOpKind::TrackingStopped => "tracking stopped",
        }
    }
}

impl std::fmt::Display for SftpOpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a legacy scp event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScpOpKind {
    File,
    Dir,
    /// A message sent instead of a file or acknowledgement (in `status_text`).
    Error,
    /// The whole transfer was refused by the rules.
    Refused,
}

impl ScpOpKind {
    pub const ALL: [ScpOpKind; 4] = [
        ScpOpKind::File,
        ScpOpKind::Dir,
        ScpOpKind::Error,
        ScpOpKind::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScpOpKind::File => "file",
            ScpOpKind::Dir => "dir",
            ScpOpKind::Error => "error",
            ScpOpKind::Refused => "refused",
        }
    }
}

impl std::fmt::Display for ScpOpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file or directory sent over legacy scp, or an error a peer reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpFile {
    pub direction: ScpDirection,
    /// What went (see [`ScpOpKind`]).
    pub op: ScpOpKind,
    /// Downloads: the name the protocol carries, under the directories (`D` records) it is
    /// in, relative to the command's path (see [`scp::ScpCommand::paths`]). Uploads: what
    /// the server writes, as far as the gateway can tell: `TARGET/name` when the target
    /// (`scp -t TARGET`) is surely a directory (`-d`, `.`, a trailing `/`), otherwise
    /// `TARGET` as given (the server writes there, or to `TARGET/name` when it is an
    /// existing directory: only the server knows).
    pub path: String,
    /// Uploads: the name the client's record carries (the source's name), under the
    /// directories it is in. `None` for downloads.
    pub name: Option<String>,
    /// The size the record announced.
    pub size: u64,
    /// The permission bits the record announced.
    pub mode: u32,
    /// File data that went through.
    pub bytes: u64,
    /// Both sides reported success.
    pub ok: bool,
    pub denied: bool,
    /// `ok`, the peer's error message, the denial, or `no reply` / `incomplete` when the
    /// channel closed first.
    pub status_text: String,
}

/// What to do with one chunk of channel data.
#[derive(Debug, Default)]
pub struct Filtered {
    /// Bytes to pass on, in order: the input itself, or zero-copy slices of it and of bytes
    /// held back from earlier chunks (for the server → client direction, possibly with
    /// injected replies between server packets).
    pub forward: Vec<bytes::Bytes>,
    /// Bytes to write back to the client (from `from_client` only), after anything written
    /// to the client before this call.
    pub reply: Vec<u8>,
    pub events: Vec<FileEvent>,
    /// The channel must be closed, for this reason; `forward` is then empty.
    pub close: Option<String>,
}
