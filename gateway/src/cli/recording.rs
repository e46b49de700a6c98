//! `sshgw recording keygen|decrypt|export|replay|verify` (and `fetch`, in recording_fetch.rs): session recordings
//! (ssh-log-cli compatible; see docs/recording-format.md).

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use super::{
    Refused,
    escape::{escape, or_dash},
};
use crate::recording::{self, End, Kind, Reader, RecordingError, RecordingPrivateKey};
use crate::util::fs;

#[derive(Subcommand)]
pub enum RecordingCommand {
    /// Make the running daemon encrypt new recordings to FILE (a NAME.pub public key).
    SetKey {
        file: PathBuf,
        #[command(flatten)]
        target: super::Target,
    },
    /// Generate a key pair: NAME (private key, mode 0600) and NAME.pub (public key, for
    /// the gateway), as `ssh-log-cli generate-key-pair` does. Never overwrites.
    Keygen {
        #[arg(
            short,
            long = "output",
            visible_alias = "output-file-name",
            value_name = "NAME"
        )]
        output: PathBuf,
    },
    /// Decrypt a recording into the zip `ssh-log-cli decrypt` writes.
    Decrypt {
        #[command(flatten)]
        input: Input,
        /// Output zip (default: <input>-decrypted.zip).
        #[arg(
            short,
            long = "output",
            visible_alias = "output-file-name",
            value_name = "OUT.zip"
        )]
        output: Option<PathBuf>,
    },
    /// Export a recording as asciicast v2, a scriptreplay typescript + timing pair, or the
    /// file operations of an SFTP/scp channel as JSON lines.
    Export {
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file (asciicast, file-ops; default standard output) or OUT.data +
        /// OUT.times (scriptreplay; default <input>.data + <input>.times).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Play a recording's output in this terminal with its timing.
    Replay {
        #[command(flatten)]
        input: Input,
        /// Playback speed factor.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Cap pauses at this many seconds.
        #[arg(long, value_name = "SECONDS")]
        idle_limit: Option<f64>,
    },
    /// Check that a recording is complete: exit 0 if so, 3 if truncated or corrupt.
    Verify {
        #[command(flatten)]
        input: Input,
    },
    /// Download a session's recordings from object storage ([storage] in the config) by
    /// the keys and versions in the session log, checking each one's SHA-256.
    Fetch {
        /// The session id, looked up in the running gateway's session log.
        #[arg(long, required_unless_present = "record", conflicts_with = "record")]
        session: Option<String>,
        /// Or the session's record as a file: the `<session>.json` object from the bucket,
        /// or `sshgw sessions show ID --json` output (no gateway needed).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Directory to write `<session>-ch<N>.sshlog` into (never over an existing file).
        #[arg(short, long = "output", value_name = "DIR", default_value = ".")]
        output: PathBuf,
        /// An access key with read rights (same format as [storage] credentials_file);
        /// default: the config's credentials_file, else the environment.
        #[arg(long, value_name = "FILE")]
        credentials: Option<PathBuf>,
        #[command(flatten)]
        target: super::Target,
    },
}

#[derive(clap::Args)]
pub struct Input {
    /// The recording.
    #[arg(
        short,
        long = "input",
        visible_alias = "input-filename",
        value_name = "FILE"
    )]
    input: PathBuf,
    /// The private key file.
    #[arg(
        short,
        long = "key",
        visible_alias = "private-key-filename",
        value_name = "KEY"
    )]
    key: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Asciicast,
    Scriptreplay,
    /// One JSON object per SFTP/scp operation (the recording's trailer).
    FileOps,
}

pub fn run(what: RecordingCommand) -> Result<()> {
    match what {
        RecordingCommand::SetKey { file, target } => set_key(&file, &target),
        RecordingCommand::Keygen { output } => keygen(&output),
        RecordingCommand::Decrypt { input, output } => decrypt(&input, output),
        RecordingCommand::Export {
            input,
            format,
            output,
        } => export(&input, format, output),
        RecordingCommand::Replay {
            input,
            speed,
            idle_limit,
        } => replay(&input, speed, idle_limit),
        RecordingCommand::Verify { input } => verify(&input),
        RecordingCommand::Fetch {
            session,
            record,
            output,
            credentials,
            target,
        } => {
            let source = match (session, record) {
                (Some(id), _) => super::recording_fetch::Source::Session(id),
                (None, Some(file)) => super::recording_fetch::Source::Record(file),
                (None, None) => unreachable!("clap requires --session or --record"),
            };
            super::recording_fetch::fetch(&source, &output, credentials.as_deref(), &target)
        }
    }
}

fn set_key(file: &Path, target: &super::Target) -> Result<()> {
    let text = super::read_input(file)?;
    // Refuse a malformed key locally, before anything reaches the daemon.
    recording::keys::RecordingKey::parse(text.trim())
        .map_err(|e| Refused(format!("{}: {e:#}", file.display())))?;
    super::ask(
        target,
        |c| async move { c.set_recording_key(text.trim()).await },
    )?;
    println!(
        "recording key replaced; new sessions are encrypted to {}",
        escape(&file.display().to_string())
    );
    Ok(())
}

fn keygen(name: &Path) -> Result<()> {
    let public = recording::write_key_pair(name).map_err(|e| Refused(format!("{e:#}")))?;
    eprintln!(
        "private key: {} (keep it offline; it decrypts every recording)\npublic key:  {} (for the gateway)",
        name.display(),
        public.display()
    );
    Ok(())
}

/// Bad input (not a recording, wrong key, corrupt) → exit code 3; I/O errors stay 1.
fn refuse(file: &Path, e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<RecordingError>() {
        Some(RecordingError::Io(_)) | None => e.context(file.display().to_string()),
        Some(error) => Refused(format!("{}: {error}", file.display())).into(),
    }
}

impl Input {
    fn key(&self) -> Result<RecordingPrivateKey> {
        let text = std::fs::read_to_string(&self.key)
            .with_context(|| format!("cannot read private key {}", self.key.display()))?;
        RecordingPrivateKey::parse(&text)
            .map_err(|e| Refused(format!("{}: {e:#}", self.key.display())).into())
    }

    fn open(&self, key: &RecordingPrivateKey) -> Result<Reader<BufReader<File>>> {
        let file = File::open(&self.input)
            .with_context(|| format!("cannot open {}", self.input.display()))?;
        let reader = Reader::open(BufReader::with_capacity(256 * 1024, file), key)
            .map_err(|e| refuse(&self.input, e.into()))?;
        // A public key parses as a private key too: name the mix-up.
        let recipient = reader
            .meta()
            .sshgw
            .as_ref()
            .and_then(|s| s.recipient.as_deref());
        if let (Some(recipient), Ok(text)) = (recipient, std::fs::read_to_string(&self.key))
            && text.trim().trim_end_matches('=') == recipient.trim_end_matches('=')
        {
            return Err(Refused(format!(
                "{}: this is the public key {} was encrypted to; decrypting needs its private key",
                self.key.display(),
                self.input.display()
            ))
            .into());
        }
        Ok(reader)
    }

    /// Tells about a truncated recording after its output was written.
    fn warn(&self, end: End) {
        if let End::Truncated(truncation) = end {
            eprintln!(
                "sshgw: warning: {}: {truncation}; the output holds what was recorded",
                self.input.display()
            );
        }
    }
}

/// Writes the output `path`. A regular file (or a new one) is written through a temporary
/// file in its directory and renamed over it on success, so a failed export never leaves
/// half a file; through a symlink, the file it points to is replaced and the link stays.
/// A character device, FIFO or socket (`-o /dev/stdout`, a pty, a pipe) is written
/// directly: renaming over it would replace the device node or link with a regular file.
/// Anything else (a directory, a dangling symlink) is refused.
fn write_atomically<T>(path: &Path, f: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
    use std::os::unix::fs::FileTypeExt;
    let target = match std::fs::metadata(path) {
        Ok(meta) => {
            let kind = meta.file_type();
            if kind.is_char_device() || kind.is_fifo() || kind.is_socket() {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                return f(&mut file);
            }
            if !kind.is_file() {
                return Err(Refused(format!(
                    "{}: not a regular file, character device or pipe",
                    path.display()
                ))
                .into());
            }
            // Through a symlink, replace the file it points to, never the link.
            path.canonicalize()
                .with_context(|| format!("cannot resolve {}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(Refused(format!(
                    "{}: a symbolic link to nothing; refusing to replace it",
                    path.display()
                ))
                .into());
            }
            path.to_owned()
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    replace_file(&target, f)
}

/// Writes the regular file `path` through a temporary file renamed over it on success
/// (created as `open(2)` would: 0666 less the umask).
fn replace_file<T>(path: &Path, f: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
    path.file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let temp = fs::temp_beside(path)?;
    let mut staged = fs::Staged::create(path, temp.clone(), fs::Mode::Umask(0o666))
        .with_context(|| format!("cannot create {}", temp.display()))?;
    let value = f(staged.file())?;
    staged
        .install()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(value)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut os = path.as_os_str().to_owned();
    os.push(suffix);
    PathBuf::from(os)
}

fn decrypt(input: &Input, output: Option<PathBuf>) -> Result<()> {
    let output = output.unwrap_or_else(|| with_suffix(&input.input, "-decrypted.zip"));
    if !output.to_string_lossy().ends_with(".zip") {
        return Err(Refused(format!(
            "{}: the output file name must end in .zip",
            output.display()
        ))
        .into());
    }
    let key = input.key()?;
    // Checks the header and the key before creating the output.
    input.open(&key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let end = write_atomically(&output, |file| {
        recording::decrypted_zip(
            || {
                let file = File::open(&input.input).map_err(RecordingError::Io)?;
                Reader::open(BufReader::with_capacity(256 * 1024, file), &key)
            },
            BufWriter::new(file),
            now,
        )
        .map_err(|e| refuse(&input.input, e))
    })?;
    input.warn(end);
    eprintln!("wrote {}", output.display());
    Ok(())
}

fn export(input: &Input, format: ExportFormat, output: Option<PathBuf>) -> Result<()> {
    let key = input.key()?;
    let mut reader = input.open(&key)?;
    type Writer = fn(&mut Reader<BufReader<File>>, &mut dyn Write) -> Result<End>;
    let single: Option<Writer> = match format {
        ExportFormat::Asciicast => Some(recording::asciicast),
        ExportFormat::FileOps => Some(recording::file_operations),
        ExportFormat::Scriptreplay => None,
    };
    let end = match (single, output) {
        (Some(write), None) => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            let end = write(&mut reader, &mut out).map_err(|e| refuse(&input.input, e))?;
            out.flush()?;
            end
        }
        (Some(write), Some(path)) => write_atomically(&path, |file| {
            let mut out = BufWriter::new(file);
            let end = write(&mut reader, &mut out).map_err(|e| refuse(&input.input, e))?;
            out.flush()?;
            Ok(end)
        })?,
        (None, output) => {
            let base = output.unwrap_or_else(|| input.input.clone());
            let (data_path, times_path) =
                (with_suffix(&base, ".data"), with_suffix(&base, ".times"));
            let end = write_atomically(&data_path, |data| {
                write_atomically(&times_path, |times| {
                    let mut data = BufWriter::new(data);
                    let mut times = BufWriter::new(times);
                    let end =
                        recording::scriptreplay(&mut reader, Some(&mut data), Some(&mut times))
                            .map_err(|e| refuse(&input.input, e))?;
                    data.flush()?;
                    times.flush()?;
                    Ok(end)
                })
            })?;
            eprintln!(
                "wrote {} and {} (play with: scriptreplay --timing {} {})",
                data_path.display(),
                times_path.display(),
                times_path.display(),
                data_path.display()
            );
            end
        }
    };
    input.warn(end);
    Ok(())
}

fn replay(input: &Input, speed: f64, idle_limit: Option<f64>) -> Result<()> {
    if !(speed.is_finite() && speed > 0.0) {
        return Err(Refused(format!("--speed {speed}: must be a positive number")).into());
    }
    if let Some(limit) = idle_limit
        && !(limit.is_finite() && limit >= 0.0)
    {
        return Err(Refused(format!("--idle-limit {limit}: must be a number of seconds")).into());
    }
    let key = input.key()?;
    let mut reader = input.open(&key)?;
    if let Some(pty) = &reader.meta().pty {
        eprintln!(
            "replaying {} (recorded on a {}x{} {} terminal)",
            escape(&input.input.display().to_string()),
            pty.width,
            pty.height,
            escape(pty.term.as_deref().unwrap_or("unknown"))
        );
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let end = recording::replay(
        &mut reader,
        &mut out,
        speed,
        idle_limit,
        &mut std::thread::sleep,
    )
    .map_err(|e| refuse(&input.input, e))?;
    input.warn(end);
    Ok(())
}

/// What `verify` counts while reading a recording's packets.
#[derive(Default)]
struct Tally {
    inputs: u64,
    outputs: u64,
    resizes: u64,
    ends: u64,
    file_ops: u64,
    file_ops_omitted: u64,
    /// The latest packet time seen.
    last: u64,
    /// The first packet whose time is before an earlier one's.
    backwards: Option<u64>,
}

impl Tally {
    /// Reads every packet of `reader`; a damaged one refuses the recording.
    fn read(reader: &mut Reader<BufReader<File>>, input: &Path) -> Result<Tally> {
        let mut t = Tally::default();
        loop {
            let packet = match reader.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(t),
                Err(e) => return Err(refuse(input, e.into())),
            };
            if packet.elapsed_us < t.last && t.backwards.is_none() {
                t.backwards = Some(reader.packets() - 1);
            }
            t.last = t.last.max(packet.elapsed_us);
            match packet.kind {
                Kind::Input => t.inputs += 1,
                Kind::Output => t.outputs += 1,
                Kind::Resize { .. } => t.resizes += 1,
                Kind::End => t.ends += 1,
                Kind::FileOp => t.file_ops += 1,
                Kind::FileOpsOmitted { count } => t.file_ops_omitted += count,
            }
        }
    }

    fn has_file_ops(&self) -> bool {
        self.file_ops + self.file_ops_omitted > 0
    }
}

fn verify(input: &Input) -> Result<()> {
    let key = input.key()?;
    let mut reader = input.open(&key)?;
    let tally = Tally::read(&mut reader, &input.input)?;
    let end = reader.end().expect("stream ended");
    let meta = reader.meta();
    // Header fields come from the audited user (command, login, terminal): escaped.
    let mut report = format!("{}:\n", escape(&input.input.display().to_string()));
    report += &header_lines(meta);
    let duration = match end {
        End::Complete { end_elapsed_us } => end_elapsed_us.max(tally.last),
        End::Truncated(_) => tally.last,
    };
    report += &format!("  duration: {} s\n", recording::format_secs(duration));
    report += &content_lines(&tally, &reader);
    report += &format!("  exit:     {}\n", describe_exit(meta));
    match end {
        End::Complete { .. } => {
            report += "  status:   complete (authenticated end-of-recording record)\n"
        }
        End::Truncated(t) => report += &format!("  status:   {t}\n"),
    }
    print!("{report}");
    verdict(&input.input, &tally, end, meta)
}

/// The channel, session, terminal and start lines of `verify`.
fn header_lines(meta: &recording::Metadata) -> String {
    let mut lines = String::new();
    if let Some(s) = &meta.sshgw {
        let what = match (s.command.as_deref(), s.subsystem.as_deref()) {
            (Some(command), _) => format!("exec \"{}\"", escape(command)),
            (None, Some(name)) => format!("subsystem {}", escape(name)),
            (None, None) => escape(&s.channel).into_owned(),
        };
        lines += &format!("  channel:  {what}\n");
        lines += &format!(
            "  session:  {} by {} (device {}) as {}@{}\n",
            escape(&s.session_id),
            or_dash(s.user_email.as_deref()),
            or_dash(s.device_id.as_deref()),
            or_dash(s.login.as_deref()),
            or_dash(s.destination.as_deref()),
        );
    }
    if let Some(pty) = &meta.pty {
        lines += &format!(
            "  pty:      {} {}x{}\n",
            escape(pty.term.as_deref().unwrap_or("unknown")),
            pty.width,
            pty.height
        );
    }
    lines += &format!(
        "  started:  {} UTC\n",
        recording::format_utc(meta.started_at)
    );
    lines
}

/// The content and file-operation lines of `verify`.
fn content_lines(t: &Tally, reader: &Reader<BufReader<File>>) -> String {
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut lines = format!(
        "  content:  {} ({} output, {} input, {} resize, {} end{}) in {}\n",
        plural(reader.packets(), "packet"),
        t.outputs,
        t.inputs,
        t.resizes,
        t.ends,
        if t.has_file_ops() {
            format!(
                ", {} file op",
                t.file_ops + u64::from(t.file_ops_omitted > 0)
            )
        } else {
            String::new()
        },
        plural(reader.chunks(), "chunk")
    );
    if t.has_file_ops() {
        lines += &format!(
            "  file ops: {}{} (trailer; export with --format file-ops)\n",
            plural(t.file_ops, "operation"),
            if t.file_ops_omitted > 0 {
                format!(
                    ", {} more omitted (see the session log)",
                    t.file_ops_omitted
                )
            } else {
                String::new()
            }
        );
    }
    lines
}

/// `verify`'s exit: refused (3) when packet times go backwards or the end is not proven.
fn verdict(input: &Path, t: &Tally, end: End, meta: &recording::Metadata) -> Result<()> {
    if let Some(packet) = t.backwards {
        return Err(Refused(format!(
            "{}: packet times go backwards at packet {packet}",
            input.display()
        ))
        .into());
    }
    match end {
        End::Complete { .. } => Ok(()),
        End::Truncated(truncation) => {
            let note = if meta.sshgw.is_none() {
                " (not written by sshgw: ssh-log-cli recordings have no end-of-recording record, so completeness cannot be proven)"
            } else {
                ""
            };
            Err(Refused(format!("{}: {truncation}{note}", input.display())).into())
        }
    }
}

fn describe_exit(meta: &recording::Metadata) -> String {
    let Some(exit) = &meta.exit_data else {
        return "no termination data".into();
    };
    let at = recording::format_utc(exit.timestamp);
    if let Some(message) = &exit.error_msg {
        format!("error \"{}\" at {at} UTC", escape(message))
    } else if let Some(signal) = &exit.signal {
        format!(
            "signal {}{} at {at} UTC",
            escape(signal),
            if exit.core_dumped {
                " (core dumped)"
            } else {
                ""
            }
        )
    } else {
        match exit.status {
            Some(status) => format!("status {status} at {at} UTC"),
            None => format!("ended at {at} UTC (no status)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::recording::{
        keys::RecordingKey,
        writer::{ChannelKind, ChannelMeta, Exit, FileWriter},
    };

    /// A complete exec recording with three chunks, and its key pair.
    fn sample(dir: &Path) -> (PathBuf, PathBuf) {
        let key = dir.join("key");
        recording::write_key_pair(&key).unwrap();
        let public =
            RecordingKey::parse(&std::fs::read_to_string(dir.join("key.pub")).unwrap()).unwrap();
        let meta = ChannelMeta {
            session_id: "s-9".into(),
            channel: ChannelKind::Exec {
                command: "id".into(),
            },
            pty: None,
            user_email: None,
            device_id: None,
            login: "root".into(),
            destination: "10.0.0.5:22".into(),
            env: Vec::new(),
        };
        let rec = dir.join("rec");
        let mut writer = FileWriter::create(&rec, &public, &meta, SystemTime::now()).unwrap();
        writer.data(true, None, 10, b"input");
        writer.flush().unwrap();
        writer.data(false, None, 20, b"uid=0(root)\n");
        writer.flush().unwrap();
        writer.finish(&Exit::Status(0), 30).unwrap();
        (rec, key)
    }

    fn input(input: &Path, key: &Path) -> Input {
        Input {
            input: input.to_owned(),
            key: key.to_owned(),
        }
    }

    fn refused(result: Result<()>) -> String {
        let e = result.unwrap_err();
        assert!(e.downcast_ref::<Refused>().is_some(), "not refused: {e:#}");
        e.to_string()
    }

    #[test]
    fn recording_verify_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let (rec, key) = sample(dir.path());
        verify(&input(&rec, &key)).unwrap();

        let bytes = std::fs::read(&rec).unwrap();
        let truncated = dir.path().join("truncated");
        // Drop the last chunk (the end record alone: 4 + 13 + 4 + 16 bytes).
        std::fs::write(&truncated, &bytes[..bytes.len() - 37]).unwrap();
        let message = refused(verify(&input(&truncated, &key)));
        assert!(
            message.ends_with("truncated after chunk 1: no end-of-recording record"),
            "{message}"
        );

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&truncated, &flipped).unwrap();
        let message = refused(verify(&input(&truncated, &key)));
        assert!(
            message.contains("authentication failed at chunk 2"),
            "{message}"
        );

        let other = dir.path().join("other");
        recording::write_key_pair(&other).unwrap();
        let message = refused(verify(&input(&rec, &other)));
        assert!(message.contains("wrong key"), "{message}");
        let message = refused(verify(&input(&rec, &dir.path().join("key.pub"))));
        assert!(message.contains("this is the public key"), "{message}");
        let message = refused(verify(&input(&key, &key)));
        assert!(
            message.contains("not an sshgw/ssh-log-cli recording"),
            "{message}"
        );

        let e = verify(&input(&dir.path().join("missing"), &key)).unwrap_err();
        assert!(e.downcast_ref::<Refused>().is_none());
        let message = refused(keygen(&key));
        assert!(message.contains("already exists"), "{message}");
    }

    #[test]
    fn recording_decrypt_and_export_write_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let (rec, key) = sample(dir.path());
        decrypt(&input(&rec, &key), None).unwrap();
        let zip = std::fs::read(dir.path().join("rec-decrypted.zip")).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let mut client = String::new();
        std::io::Read::read_to_string(
            &mut archive.by_name("data_from_client.txt").unwrap(),
            &mut client,
        )
        .unwrap();
        assert_eq!(client, "input");

        let message = refused(decrypt(
            &input(&rec, &key),
            Some(dir.path().join("out.txt")),
        ));
        assert!(message.contains("must end in .zip"), "{message}");

        let base = dir.path().join("out");
        export(
            &input(&rec, &key),
            ExportFormat::Scriptreplay,
            Some(base.clone()),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.times")).unwrap(),
            "0.000020 12\n"
        );
        let cast = dir.path().join("out.cast");
        cast_to(&rec, &key, &cast);
        assert!(
            std::fs::read_to_string(&cast)
                .unwrap()
                .starts_with("{\"version\":2,")
        );

        // Only the outputs: no temporary files left behind.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "key",
                "key.pub",
                "out.cast",
                "out.data",
                "out.times",
                "rec",
                "rec-decrypted.zip"
            ]
        );
    }

    /// `recording export --format asciicast -o out` of the sample; must succeed.
    fn cast_to(rec: &Path, key: &Path, out: &Path) {
        export(
            &input(rec, key),
            ExportFormat::Asciicast,
            Some(out.to_owned()),
        )
        .unwrap();
    }

    fn is_link(path: &Path) -> bool {
        std::fs::symlink_metadata(path)
            .unwrap()
            .file_type()
            .is_symlink()
    }

    /// The asciicast export of the sample recording, as written to a regular file.
    fn cast_text(dir: &Path, rec: &Path, key: &Path) -> String {
        let out = dir.join("reference.cast");
        cast_to(rec, key, &out);
        std::fs::read_to_string(out).unwrap()
    }

    #[test]
    fn export_through_a_symlink_keeps_the_link() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let (rec, key) = sample(dir.path());
        // `-o /dev/null` through a link of our own: the link stays, /dev/null too.
        let null_link = dir.path().join("null");
        std::os::unix::fs::symlink("/dev/null", &null_link).unwrap();
        cast_to(&rec, &key, &null_link);
        assert!(is_link(&null_link));
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );

        // A link to a regular file: the file gets the export, the link stays a link.
        let file = dir.path().join("real.cast");
        std::fs::write(&file, "old").unwrap();
        let link = dir.path().join("link.cast");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        cast_to(&rec, &key, &link);
        assert!(is_link(&link));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            cast_text(dir.path(), &rec, &key)
        );

        // A dangling link or a directory is refused and left alone.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("missing"), &dangling).unwrap();
        let message = refused(export(
            &input(&rec, &key),
            ExportFormat::Asciicast,
            Some(dangling.clone()),
        ));
        assert!(message.contains("a symbolic link to nothing"), "{message}");
        assert!(is_link(&dangling));
        let message = refused(export(
            &input(&rec, &key),
            ExportFormat::Asciicast,
            Some(dir.path().to_owned()),
        ));
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    #[allow(unsafe_code)] // reason: test: mkfifo(3) has no std wrapper
    fn export_to_a_fifo_writes_into_it() {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let dir = tempfile::tempdir().unwrap();
        let (rec, key) = sample(dir.path());
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        // The read end, open first (non-blocking) so the export's writer never waits and
        // the test never hangs; the sample's export fits in the pipe buffer.
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        cast_to(&rec, &key, &fifo);
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let mut got = String::new();
        std::io::Read::read_to_string(&mut reader, &mut got).unwrap();
        assert_eq!(got, cast_text(dir.path(), &rec, &key));
    }

    #[test]
    #[allow(unsafe_code)] // reason: test: openpty(3) has no std wrapper
    fn export_to_a_pty_writes_to_the_terminal() {
        use std::io::Read;
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let (rec, key) = sample(dir.path());
        let (mut master_fd, mut slave_fd) = (-1, -1);
        // SAFETY: openpty writes two fds into the out-pointers; the rest may be NULL.
        let rc = unsafe {
            libc::openpty(
                &mut master_fd,
                &mut slave_fd,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: openpty succeeded: both fds are open and owned by nobody else.
        let (mut master, slave_end) = unsafe {
            (
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(master_fd),
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(slave_fd),
            )
        };
        let slave = std::fs::read_link(format!("/proc/self/fd/{slave_fd}")).unwrap();
        // Like /dev/stdout: a link to the terminal.
        let link = dir.path().join("stdout");
        std::os::unix::fs::symlink(&slave, &link).unwrap();
        let expected = cast_text(dir.path(), &rec, &key);
        cast_to(&rec, &key, &link);
        assert!(is_link(&link));
        assert!(
            std::fs::metadata(&slave)
                .unwrap()
                .file_type()
                .is_char_device()
        );
        drop(slave_end);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // The terminal turns "\n" into "\r\n"; read until the whole export arrived.
        while String::from_utf8_lossy(&got).replace("\r\n", "\n").len() < expected.len() {
            let n = master.read(&mut chunk).unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(
            String::from_utf8_lossy(&got).replace("\r\n", "\n"),
            expected
        );
    }
}
