//! Writing recordings: the synchronous file writer and the async [`Recorder`] handle.

use std::{
    fs::File,
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use hpke::{
    OpModeS, Serializable, aead::ChaCha20Poly1305, inout::InOutBuf, kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    format::{
        self, CODE_CLIENT_RESERVED_COLLISION, CODE_DATA, CODE_END, CODE_FILE_OP,
        CODE_FILE_OPS_OMITTED, CODE_RESIZE, ExitData, Metadata, PtyInfo, RESERVED_CODES,
        SOURCE_CLIENT, SOURCE_SERVER, SSHGW_FORMAT, SshgwInfo, WRITER_FLUSH_BYTES,
        WRITER_MAX_PACKET_DATA, WRITER_MAX_TRAILER_BYTES,
    },
    keys::RecordingKey,
};

type SenderCtx = hpke::aead::AeadCtxS<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>;

/// Placeholder for a chunk's length prefix at the start of the pending buffer.
const CHUNK_PREFIX: [u8; 4] = [0; 4];

/// Buffered data is sealed and written at the latest this long after it was recorded.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Events queued between the relay and the writer task (each usually one SSH packet of at
/// most 32 KiB): when the disk falls this far behind, [`Recorder::data`] waits.
const QUEUE_EVENTS: usize = 256;

/// What a recording is about. Known when the channel's shell, exec or subsystem request
/// is accepted, which is when the recorder is created: a pty-req always comes before it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMeta {
    pub session_id: String,
    pub channel: ChannelKind,
    pub pty: Option<PtyMeta>,
    pub user_email: Option<String>,
    pub device_id: Option<String>,
    /// The user name logged in as on the server.
    pub login: String,
    /// The server, e.g. `10.0.0.5:22`.
    pub destination: String,
    /// Environment variables the server accepted for the program (`env` requests).
    pub env: Vec<(String, String)>,
}

/// The channel's request.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelKind {
    Shell,
    Exec { command: String },
    Subsystem { name: String },
}

impl ChannelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::Shell => "shell",
            ChannelKind::Exec { .. } => "exec",
            ChannelKind::Subsystem { .. } => "subsystem",
        }
    }
}

/// The terminal from the pty-req (modes by name: see [`super::format::pty_modes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PtyMeta {
    pub term: String,
    pub width: u32,
    pub height: u32,
    pub modes: Vec<(String, u32)>,
}

/// How the channel ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Exit {
    /// exit-status.
    Status(u32),
    /// exit-signal, e.g. `TERM`.
    Signal { name: String, core_dumped: bool },
    /// The gateway ended the channel, e.g. the upstream connection failed.
    Error(String),
    /// The channel closed without either.
    None,
}

/// The SSH name of a signal, without the `SIG` prefix (`TERM`, `KILL`, …).
pub fn signal_name(sig: &russh::Sig) -> String {
    match sig {
        russh::Sig::ABRT => "ABRT",
        russh::Sig::ALRM => "ALRM",
        russh::Sig::FPE => "FPE",
        russh::Sig::HUP => "HUP",
        russh::Sig::ILL => "ILL",
        russh::Sig::INT => "INT",
        russh::Sig::KILL => "KILL",
        russh::Sig::PIPE => "PIPE",
        russh::Sig::QUIT => "QUIT",
        russh::Sig::SEGV => "SEGV",
        russh::Sig::TERM => "TERM",
        russh::Sig::USR1 => "USR1",
        russh::Sig::Custom(name) => name,
    }
    .to_string()
}

#[cfg(test)]
impl Exit {
    /// An exit-signal as russh reports it.
    pub fn signal(sig: &russh::Sig, core_dumped: bool) -> Exit {
        Exit::Signal {
            name: signal_name(sig),
            core_dumped,
        }
    }
}

/// Totals of a finished recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub chunks: u64,
    /// Packets including the end-of-recording record.
    pub packets: u64,
    /// Plaintext bytes of the packet stream (the header's `data_size`).
    pub bytes: u64,
    pub duration_us: u64,
    /// File-operation records in the trailer, and those left out of it.
    pub file_ops: u64,
    pub file_ops_omitted: u64,
}

/// File operations waiting for the trailer, which is written at finish behind an empty
/// chunk: ssh-log-cli stops reading there, so its output stays the channel's bytes.
/// Bounded by [`WRITER_MAX_TRAILER_BYTES`]; what does not fit is only counted.
#[derive(Debug, Default)]
pub(crate) struct Trailer {
    ops: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    omitted: u64,
}

impl Trailer {
    fn push(&mut self, elapsed_us: u64, json: Vec<u8>) {
        // Once one is left out, so are all later ones: the trailer is the first N.
        if self.omitted > 0 || self.bytes + json.len() > WRITER_MAX_TRAILER_BYTES {
            self.omitted += 1;
            return;
        }
        self.bytes += json.len();
        self.ops.push((elapsed_us, json));
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.omitted == 0
    }
}

// ---------------------------------------------------------------------------------------
// The synchronous writer.

/// Writes one recording file. Packets are buffered in memory and sealed into one chunk
/// per [`FileWriter::flush`]; after the first I/O error every call fails with it.
pub(crate) struct FileWriter {
    path: PathBuf,
    file: File,
    ctx: SenderCtx,
    meta: Metadata,
    header_json_len: usize,
    /// The next chunk's frame: 4 bytes for its length, then the packets buffered so far.
    /// Sealed in place, so a flush copies nothing.
    pending: Vec<u8>,
    last_elapsed: u64,
    stats: Summary,
    error: Option<String>,
    /// File operations for the trailer (the [`Recorder`] hands its own over at finish).
    trailer: Trailer,
    /// Keeps the file out of the uploader's reach until the writer is gone.
    _writing: super::spool::Writing,
}

/// The header of a new recording: the channel's facts, the HPKE encapsulated key (hex)
/// and the recipient's public key.
fn header_metadata(
    meta: &ChannelMeta,
    key: &RecordingKey,
    encapsulated_key: String,
    started_us: u64,
) -> Metadata {
    let (command, subsystem) = match &meta.channel {
        ChannelKind::Shell => (None, None),
        ChannelKind::Exec { command } => (Some(command.clone()), None),
        ChannelKind::Subsystem { name } => (None, Some(name.clone())),
    };
    Metadata {
        started_at: started_us / 1_000_000,
        data_size: 0,
        encapsulated_key,
        pty: meta.pty.as_ref().map(|pty| PtyInfo {
            term: Some(pty.term.clone()),
            width: pty.width,
            height: pty.height,
            modes: pty.modes.clone(),
        }),
        sshgw: Some(SshgwInfo {
            format: SSHGW_FORMAT,
            started_at_us: Some(started_us),
            session_id: meta.session_id.clone(),
            channel: meta.channel.as_str().to_string(),
            command,
            subsystem,
            user_email: meta.user_email.clone(),
            device_id: meta.device_id.clone(),
            login: Some(meta.login.clone()),
            destination: Some(meta.destination.clone()),
            env: meta.env.clone(),
            recipient: Some(key.to_base64()),
        }),
        exit_data: None,
    }
}

impl FileWriter {
    /// Creates `path` (0600, never overwriting) and writes the header.
    pub fn create(
        path: &Path,
        key: &RecordingKey,
        meta: &ChannelMeta,
        started: SystemTime,
    ) -> Result<FileWriter> {
        let (enc, ctx) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            key.kem(),
            b"",
        )
        .map_err(|e| anyhow!("cannot set up recording encryption: {e}"))?;
        let started_us = format::unix_micros(started);
        let header = header_metadata(meta, key, hex::encode(enc.to_bytes()), started_us);
        let json_len = serde_json::to_vec(&header)?.len();
        let header_json_len = format::header_json_len(json_len);
        let json = format::padded_header_json(&header, header_json_len).expect("header fits");
        let writing = super::spool::Writing::register(path);
        let mut file = crate::util::fs::create_new(path, crate::util::fs::Mode::Private)
            .with_context(|| format!("cannot create recording {}", path.display()))?;
        if let Err(e) = file.write_all(&format::encode_header(&json)) {
            let _ = std::fs::remove_file(path);
            return Err(e).with_context(|| format!("cannot write recording {}", path.display()));
        }
        Ok(FileWriter {
            path: path.to_owned(),
            file,
            ctx,
            meta: header,
            header_json_len,
            pending: CHUNK_PREFIX.to_vec(),
            last_elapsed: 0,
            stats: Summary::default(),
            error: None,
            trailer: Trailer::default(),
            _writing: writing,
        })
    }

    fn push(&mut self, source: u8, code: u32, elapsed_us: u64, data: &[u8]) {
        // Packet times never go backwards (ssh-log-cli prints `inf` delays otherwise).
        let elapsed = elapsed_us.max(self.last_elapsed);
        self.last_elapsed = elapsed;
        format::encode_packet(&mut self.pending, source, code, elapsed, data);
        self.stats.packets += 1;
    }

    /// Buffers channel data (split into packets of at most 1 MiB).
    pub fn data(&mut self, from_client: bool, ext: Option<u32>, elapsed_us: u64, data: &[u8]) {
        let (source, code) = if from_client {
            let code = match ext {
                None => CODE_DATA,
                Some(code) if RESERVED_CODES.contains(&code) => CODE_CLIENT_RESERVED_COLLISION,
                Some(code) => code,
            };
            (SOURCE_CLIENT, code)
        } else {
            (SOURCE_SERVER, ext.unwrap_or(CODE_DATA))
        };
        if data.is_empty() {
            self.push(source, code, elapsed_us, data);
        }
        for piece in data.chunks(WRITER_MAX_PACKET_DATA) {
            self.push(source, code, elapsed_us, piece);
        }
    }

    /// Buffers a resize record; ignored without a pty (it would end up in ssh-log-cli's
    /// `data_from_client.txt`).
    pub fn resize(&mut self, elapsed_us: u64, cols: u32, rows: u32) {
        if self.meta.pty.is_some() {
            self.push(
                SOURCE_CLIENT,
                CODE_RESIZE,
                elapsed_us,
                &format::resize_data(cols, rows),
            );
        }
    }

    /// Keeps a file operation (one JSON object) for the trailer.
    #[cfg(test)]
    pub fn file_op(&mut self, elapsed_us: u64, json: Vec<u8>) {
        self.trailer.push(elapsed_us, json);
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len() - CHUNK_PREFIX.len()
    }

    fn check(&self) -> Result<()> {
        match &self.error {
            Some(e) => Err(anyhow!("{e}")),
            None => Ok(()),
        }
    }

    fn fail(&mut self, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
        let message = format!("recording {}: {what}: {e}", self.path.display());
        self.error = Some(message.clone());
        anyhow!(message)
    }

    /// Seals everything buffered into one chunk and writes it (nothing when empty).
    pub fn flush(&mut self) -> Result<()> {
        self.check()?;
        if self.pending_len() == 0 {
            return Ok(());
        }
        self.seal_pending()
    }

    /// Seals the buffer as one chunk, even an empty one, and writes it.
    fn seal_pending(&mut self) -> Result<()> {
        let plaintext_len = self.pending_len();
        let body = &mut self.pending[CHUNK_PREFIX.len()..];
        let tag = match self.ctx.seal_inout_detached(InOutBuf::from(body), b"") {
            Ok(tag) => tag,
            Err(e) => return Err(self.fail("cannot encrypt", e)),
        };
        self.pending.extend_from_slice(&tag.to_bytes());
        let ciphertext_len = (plaintext_len + format::TAG_LEN) as u32;
        self.pending[..CHUNK_PREFIX.len()].copy_from_slice(&ciphertext_len.to_be_bytes());
        if let Err(e) = self.file.write_all(&self.pending) {
            return Err(self.fail("write failed", e));
        }
        self.stats.chunks += 1;
        self.stats.bytes += plaintext_len as u64;
        self.pending.clear();
        // Keep the buffer for the next chunk, unless a burst made it large.
        self.pending.shrink_to(2 * WRITER_FLUSH_BYTES);
        self.pending.extend_from_slice(&CHUNK_PREFIX);
        Ok(())
    }

    /// Writes the trailer (if there are file operations) and the end-of-recording record,
    /// rewrites the header with `exit_data` and `data_size`, and syncs the file to disk.
    pub fn finish(&mut self, exit: &Exit, end_elapsed_us: u64) -> Result<Summary> {
        self.check()?;
        let trailer = std::mem::take(&mut self.trailer);
        if !trailer.is_empty() {
            // The boundary: the channel's stream ends in its own chunk, then one empty
            // chunk, which ssh-log-cli reads as the end of the file.
            self.flush()?;
            self.seal_pending()?;
            for (elapsed_us, json) in &trailer.ops {
                self.push(SOURCE_CLIENT, CODE_FILE_OP, *elapsed_us, json);
                if self.pending_len() >= WRITER_FLUSH_BYTES {
                    self.flush()?;
                }
            }
            if trailer.omitted > 0 {
                let count = trailer.omitted.to_string();
                self.push(
                    SOURCE_CLIENT,
                    CODE_FILE_OPS_OMITTED,
                    end_elapsed_us,
                    count.as_bytes(),
                );
            }
            self.stats.file_ops = trailer.ops.len() as u64;
            self.stats.file_ops_omitted = trailer.omitted;
        }
        self.push(SOURCE_CLIENT, CODE_END, end_elapsed_us, b"");
        self.flush()?;
        // The encrypted data is on disk before the header is touched.
        if let Err(e) = self.file.sync_data() {
            return Err(self.fail("fdatasync failed", e));
        }
        let end_us = self
            .meta
            .sshgw
            .as_ref()
            .and_then(|s| s.started_at_us)
            .unwrap_or(0)
            + self.last_elapsed;
        let mut meta = self.meta.clone();
        meta.data_size = self.stats.bytes;
        meta.exit_data = exit_data(exit, end_us / 1_000_000);
        let json = fit_header(&mut meta, self.header_json_len);
        let header = format::encode_header(&json);
        if let Err(e) = self.file.write_all_at(&header[4..], 4) {
            return Err(self.fail("header rewrite failed", e));
        }
        if let Err(e) = self.file.sync_data() {
            return Err(self.fail("fdatasync failed", e));
        }
        self.meta = meta;
        self.stats.duration_us = self.last_elapsed;
        Ok(self.stats)
    }

    /// Test-only: seals the buffered stream as chunks cut at the given offsets, breaking
    /// the rule that chunks hold whole packets (readers must cope).
    #[cfg(test)]
    pub fn flush_split(&mut self, cuts: &[usize]) -> Result<()> {
        let stream = self.pending.split_off(CHUNK_PREFIX.len());
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            let cut = cut.clamp(start, stream.len());
            self.pending.extend_from_slice(&stream[start..cut]);
            self.seal_pending()?;
            start = cut;
        }
        Ok(())
    }

    /// Test-only: appends raw bytes to the buffered stream.
    #[cfg(test)]
    pub fn inject(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Test-only: appends the end record to the buffer without flushing.
    #[cfg(test)]
    pub fn push_end(&mut self, elapsed_us: u64) {
        self.push(SOURCE_CLIENT, CODE_END, elapsed_us, b"");
    }
}

fn lock(trailer: &Mutex<Trailer>) -> std::sync::MutexGuard<'_, Trailer> {
    trailer.lock().expect("recording trailer poisoned")
}

fn exit_data(exit: &Exit, timestamp: u64) -> Option<ExitData> {
    let base = ExitData {
        timestamp,
        status: None,
        signal: None,
        core_dumped: false,
        error_msg: None,
    };
    match exit {
        Exit::Status(status) => Some(ExitData {
            status: Some(*status),
            ..base
        }),
        Exit::Signal { name, core_dumped } => Some(ExitData {
            signal: Some(name.clone()),
            core_dumped: *core_dumped,
            ..base
        }),
        Exit::Error(message) => Some(ExitData {
            error_msg: Some(message.clone()),
            ..base
        }),
        Exit::None => None,
    }
}

/// The padded header JSON, shortening the free-text exit fields until it fits.
fn fit_header(meta: &mut Metadata, len: usize) -> Vec<u8> {
    loop {
        if let Some(json) = format::padded_header_json(meta, len) {
            return json;
        }
        let exit = meta
            .exit_data
            .as_mut()
            .expect("the header without exit data fits");
        let longest = [&mut exit.error_msg, &mut exit.signal]
            .into_iter()
            .flatten()
            .max_by_key(|s| s.len())
            .expect("the header without exit strings fits");
        let mut keep = longest.len() / 2;
        while !longest.is_char_boundary(keep) {
            keep -= 1;
        }
        longest.truncate(keep);
        longest.push('…');
        if keep == 0 {
            longest.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The async handle.

enum Command {
    Data {
        from_client: bool,
        ext: Option<u32>,
        elapsed_us: u64,
        data: Bytes,
    },
    Resize {
        elapsed_us: u64,
        cols: u32,
        rows: u32,
    },
    Finish(Finish),
}

/// The last command: how the program ended, and where to send the summary.
struct Finish {
    exit: Exit,
    elapsed_us: u64,
    trailer: Trailer,
    reply: oneshot::Sender<Result<Summary>>,
}

/// Records one channel. Events go over a bounded queue to a writer task that buffers
/// them, seals and writes a chunk at least once a second (and per 256 KiB), and does all
/// disk I/O on tokio's blocking pool. Packet times are taken when an event is submitted.
pub struct Recorder {
    tx: mpsc::Sender<Command>,
    failed: Arc<Mutex<Option<String>>>,
    start: Instant,
    /// File operations, kept here (not queued) until finish hands them to the writer.
    trailer: Mutex<Trailer>,
}

impl Recorder {
    /// Creates the recording file (0600, never overwriting an existing file), writes its
    /// header and starts the writer task. Fails on any I/O error. Must be called inside a
    /// tokio runtime.
    pub async fn create(path: &Path, key: &RecordingKey, meta: ChannelMeta) -> Result<Recorder> {
        let path = path.to_owned();
        let key = key.clone();
        let start = Instant::now();
        let writer = tokio::task::spawn_blocking(move || {
            FileWriter::create(&path, &key, &meta, SystemTime::now())
        })
        .await??;
        Ok(Recorder::start(writer, start))
    }

    fn start(writer: FileWriter, start: Instant) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
        let failed = Arc::new(Mutex::new(None));
        tokio::spawn(run_writer(writer, rx, failed.clone()));
        Recorder {
            tx,
            failed,
            start,
            trailer: Mutex::default(),
        }
    }

    fn elapsed_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records channel data (`ext` = the SSH extended data type, 1 for stderr). Waits
    /// only when the queue to the writer is full; does nothing once the recording failed.
    pub async fn data(&self, from_client: bool, ext: Option<u32>, data: Bytes) {
        if self.failed().is_some() {
            return;
        }
        let elapsed_us = self.elapsed_us();
        let _ = self
            .tx
            .send(Command::Data {
                from_client,
                ext,
                elapsed_us,
                data,
            })
            .await;
    }

    /// Records a window-change (ignored for channels without a pty).
    pub async fn resize(&self, cols: u32, rows: u32) {
        if self.failed().is_some() {
            return;
        }
        let elapsed_us = self.elapsed_us();
        let _ = self
            .tx
            .send(Command::Resize {
                elapsed_us,
                cols,
                rows,
            })
            .await;
    }

    /// Records a file operation (one JSON object) of an SFTP or scp channel. It is kept in
    /// memory (bounded) and written in the trailer at [`Recorder::finish`].
    pub fn file_op(&self, json: Vec<u8>) {
        if self.failed().is_none() {
            lock(&self.trailer).push(self.elapsed_us(), json);
        }
    }

    /// Ends the recording: writes what is buffered and the end-of-recording record,
    /// rewrites the header with the exit data and syncs the file.
    pub async fn finish(&self, exit: Exit) -> Result<Summary> {
        let elapsed_us = self.elapsed_us();
        let trailer = std::mem::take(&mut *lock(&self.trailer));
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tx
            .send(Command::Finish(Finish {
                exit,
                elapsed_us,
                trailer,
                reply,
            }))
            .await;
        match (sent, answer.await) {
            (Ok(()), Ok(result)) => result,
            _ => Err(anyhow!(
                "{}",
                self.failed()
                    .unwrap_or_else(|| "recording writer stopped".to_string())
            )),
        }
    }

    /// The first write error, if any: the recording is incomplete from then on.
    pub fn failed(&self) -> Option<String> {
        self.failed.lock().expect("recorder state poisoned").clone()
    }
}

/// Runs `f` on the blocking pool with the writer, handing the writer back.
async fn blocking<T: Send + 'static>(
    mut writer: FileWriter,
    f: impl FnOnce(&mut FileWriter) -> T + Send + 'static,
) -> Option<(FileWriter, T)> {
    tokio::task::spawn_blocking(move || {
        let out = f(&mut writer);
        (writer, out)
    })
    .await
    .ok()
}

async fn run_writer(
    writer: FileWriter,
    mut rx: mpsc::Receiver<Command>,
    failed: Arc<Mutex<Option<String>>>,
) {
    let set_failed = |e: &anyhow::Error| {
        let mut slot = failed.lock().expect("recorder state poisoned");
        if slot.is_none() {
            tracing::warn!("{e:#}");
            *slot = Some(format!("{e:#}"));
        }
    };
    let mut writer = Some(writer);
    // When the oldest buffered packet must be written.
    let mut deadline: Option<Instant> = None;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let command = tokio::select! {
            command = rx.recv() => command,
            () = timer.as_mut(), if deadline.is_some() => {
                deadline = None;
                flush(&mut writer, &set_failed).await;
                continue;
            }
        };
        let Some(command) = command else {
            return abandon(&mut writer, &set_failed).await;
        };
        let Some(w) = writer.as_mut() else {
            // Failed earlier: drain the queue so senders never wait.
            if let Command::Finish(finish) = command {
                reply_failed(finish.reply, &failed);
                return;
            }
            continue;
        };
        match command {
            Command::Data {
                from_client,
                ext,
                elapsed_us,
                data,
            } => w.data(from_client, ext, elapsed_us, &data),
            Command::Resize {
                elapsed_us,
                cols,
                rows,
            } => w.resize(elapsed_us, cols, rows),
            Command::Finish(finish) => {
                let w = writer.take().expect("writer present");
                return finish_writer(w, finish, &set_failed).await;
            }
        }
        if schedule(&writer, &mut deadline, timer.as_mut()) {
            flush(&mut writer, &set_failed).await;
        }
    }
}

/// After a command: arms the timer when the first packet was buffered, and says whether
/// enough is buffered to write a chunk at once.
fn schedule(
    writer: &Option<FileWriter>,
    deadline: &mut Option<Instant>,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
) -> bool {
    let pending = writer.as_ref().map_or(0, FileWriter::pending_len);
    if deadline.is_none() && pending > 0 {
        let at = Instant::now() + FLUSH_INTERVAL;
        *deadline = Some(at);
        timer.reset(at);
    }
    if pending >= WRITER_FLUSH_BYTES {
        *deadline = None;
        return true;
    }
    false
}

/// The recorder was dropped without finish: keep what was recorded; it reads as truncated.
async fn abandon(writer: &mut Option<FileWriter>, set_failed: &impl Fn(&anyhow::Error)) {
    if let Some(w) = writer {
        tracing::warn!(
            "recording {} dropped without finish: it will read as truncated",
            w.path.display()
        );
    }
    flush(writer, set_failed).await;
}

/// `Finish` after the writer failed: the first error, or a generic one.
fn reply_failed(reply: oneshot::Sender<Result<Summary>>, failed: &Mutex<Option<String>>) {
    let message = failed.lock().expect("recorder state poisoned").clone();
    let _ = reply.send(Err(anyhow!(
        "{}",
        message.unwrap_or_else(|| "recording writer failed".into())
    )));
}

/// `Finish`: writes the trailer, the end record and the final header off the async
/// threads, then answers.
async fn finish_writer(w: FileWriter, command: Finish, set_failed: &impl Fn(&anyhow::Error)) {
    let Finish {
        exit,
        elapsed_us,
        trailer,
        reply,
    } = command;
    let finish = move |w: &mut FileWriter| {
        w.trailer = trailer;
        w.finish(&exit, elapsed_us)
    };
    let result = match blocking(w, finish).await {
        Some((_, result)) => result,
        None => Err(anyhow!("recording writer panicked")),
    };
    if let Err(e) = &result {
        set_failed(e);
    }
    let _ = reply.send(result);
}

async fn flush(writer: &mut Option<FileWriter>, set_failed: &impl Fn(&anyhow::Error)) {
    let Some(w) = writer.take() else { return };
    if w.pending_len() == 0 {
        *writer = Some(w);
        return;
    }
    match blocking(w, FileWriter::flush).await {
        Some((w, Ok(()))) => *writer = Some(w),
        Some((_, Err(e))) => set_failed(&e),
        None => set_failed(&anyhow!("recording writer panicked")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::keys;
    use std::fs::OpenOptions;

    fn full_disk_writer() -> (tempfile::TempDir, FileWriter) {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = keys::generate();
        let meta = ChannelMeta {
            session_id: "s".into(),
            channel: ChannelKind::Subsystem {
                name: "sftp".into(),
            },
            pty: None,
            user_email: None,
            device_id: None,
            login: "root".into(),
            destination: "10.0.0.5:22".into(),
            env: Vec::new(),
        };
        let mut writer =
            FileWriter::create(&dir.path().join("rec"), &public, &meta, SystemTime::now()).unwrap();
        assert_eq!(
            writer.meta.sshgw.as_ref().unwrap().subsystem.as_deref(),
            Some("sftp")
        );
        writer.file = OpenOptions::new().write(true).open("/dev/full").unwrap();
        (dir, writer)
    }

    #[test]
    fn write_errors_are_reported_and_sticky() {
        let (_dir, mut writer) = full_disk_writer();
        writer.data(false, None, 0, b"x");
        let err = writer.flush().unwrap_err().to_string();
        assert!(
            err.contains("write failed") && err.contains("No space left"),
            "{err}"
        );
        writer.data(false, None, 1, b"y");
        assert_eq!(writer.flush().unwrap_err().to_string(), err);
        assert_eq!(
            writer.finish(&Exit::Status(0), 2).unwrap_err().to_string(),
            err
        );
    }

    #[tokio::test(start_paused = true)]
    async fn recorder_reports_the_first_failure() {
        let (_dir, writer) = full_disk_writer();
        let recorder = Recorder::start(writer, Instant::now());
        recorder.data(false, None, Bytes::from_static(b"x")).await;
        assert_eq!(recorder.failed(), None);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let failed = recorder.failed().expect("flush failed");
        assert!(failed.contains("No space left"), "{failed}");
        // Events after a failure are dropped without waiting.
        for _ in 0..2 * QUEUE_EVENTS {
            recorder.data(false, None, Bytes::from_static(b"x")).await;
        }
        let err = recorder
            .finish(Exit::Status(0))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, failed);
    }
}
