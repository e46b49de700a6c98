//! Turning a decrypted packet stream into files: ssh-log-cli's zip, the scriptreplay
//! pair, asciicast v2, and live replay.

use std::{
    io::{Read, Seek, Write},
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;

use super::{
    format::{self, Kind, Metadata, SOURCE_CLIENT, SOURCE_SERVER},
    reader::{End, Reader, RecordingError},
};

/// Columns and rows assumed for recordings without a pty.
pub const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// A terminal size as players need it: RFC 4254 says a zero dimension is to be ignored
/// (a client may request a pty as 0×0), so a zero takes its default.
pub fn usable_size(width: u32, height: u32) -> (u32, u32) {
    (
        if width == 0 { DEFAULT_SIZE.0 } else { width },
        if height == 0 { DEFAULT_SIZE.1 } else { height },
    )
}

/// Events held back while a 0×0 pty waits for its first resize, at most this many bytes.
const SIZE_WAIT_MAX: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// scriptreplay (util-linux classic typescript + timing), as ssh-log-cli writes it.

/// The first line of `term_data.txt`.
pub fn term_data_header(meta: &Metadata) -> String {
    let (term, (width, height)) = match &meta.pty {
        Some(pty) => (
            pty.term.clone().unwrap_or_else(|| "unknown".into()),
            usable_size(pty.width, pty.height),
        ),
        None => ("unknown".into(), DEFAULT_SIZE),
    };
    format!(
        "Session started on {}+00 [TERM=\"{term}\" COLUMNS=\"{width}\" LINES=\"{height}\"]\n",
        format::format_utc(meta.started_at)
    )
}

/// The last line of `term_data.txt`, with its leading newline.
pub fn term_data_trailer(meta: &Metadata) -> String {
    let Some(exit) = &meta.exit_data else {
        return "\nSession has no termination data\n".into();
    };
    let date = format!("{}+00", format::format_utc(exit.timestamp));
    if let Some(message) = &exit.error_msg {
        format!("\nScript done on {date} [ERROR=\"{message}\"]\n")
    } else if exit.core_dumped {
        format!("\nScript done on {date} [CORE DUMPED]\n")
    } else {
        format!(
            "\nScript done on {date} [COMMAND_EXIT_CODE=\"{}\"]\n",
            exit.status.unwrap_or(0)
        )
    }
}

/// One `term_times.txt` line: the delay as ssh-log-cli computes it (an f32 division,
/// printed with six decimals) and the byte count.
pub fn timing_line(delay_us: u64, len: usize) -> String {
    format!("{:.6} {len}\n", delay_us as f32 / 1_000_000f32)
}

/// Writes the typescript (`data`) and/or timing (`times`) of the server output.
pub fn scriptreplay<R: Read>(
    reader: &mut Reader<R>,
    mut data: Option<&mut dyn Write>,
    mut times: Option<&mut dyn Write>,
) -> Result<End> {
    if let Some(out) = data.as_deref_mut() {
        out.write_all(term_data_header(reader.meta()).as_bytes())?;
    }
    let mut previous = 0u64;
    while let Some(packet) = reader.next_packet()? {
        if packet.source != SOURCE_SERVER {
            continue;
        }
        if let Some(out) = data.as_deref_mut() {
            out.write_all(&packet.data)?;
        }
        if let Some(out) = times.as_deref_mut() {
            let delay = packet.elapsed_us.saturating_sub(previous);
            out.write_all(timing_line(delay, packet.data.len()).as_bytes())?;
        }
        previous = packet.elapsed_us;
    }
    if let Some(out) = data {
        out.write_all(term_data_trailer(reader.meta()).as_bytes())?;
    }
    Ok(reader.end().expect("stream ended"))
}

/// Writes the concatenated client and/or server data (non-pty output).
pub fn raw_streams<'a, R: Read>(
    reader: &mut Reader<R>,
    mut client: Option<&'a mut dyn Write>,
    mut server: Option<&'a mut dyn Write>,
) -> Result<End> {
    while let Some(packet) = reader.next_packet()? {
        // ssh-log-cli never reads the trailer.
        if packet.kind.is_trailer_record() {
            continue;
        }
        let out = if packet.source == SOURCE_CLIENT {
            &mut client
        } else {
            &mut server
        };
        if let Some(out) = out {
            out.write_all(&packet.data)?;
        }
    }
    Ok(reader.end().expect("stream ended"))
}

// ---------------------------------------------------------------------------------------
// ssh-log-cli's zip.

/// The JSON lines of the trailer's file operations: one object per operation, then
/// `{"omitted":N}` if the trailer's limit left some out.
pub fn file_operations<R: Read>(reader: &mut Reader<R>, out: &mut dyn Write) -> Result<End> {
    while let Some(packet) = reader.next_packet()? {
        match packet.kind {
            Kind::FileOp => {
                out.write_all(&packet.data)?;
                out.write_all(b"\n")?;
            }
            Kind::FileOpsOmitted { count } => writeln!(out, "{{\"omitted\":{count}}}")?,
            _ => {}
        }
    }
    Ok(reader.end().expect("stream ended"))
}

/// Zip member with the file operations, besides ssh-log-cli's two (only when the
/// recording has a trailer).
pub const FILE_OPERATIONS_MEMBER: &str = "file_operations.jsonl";

/// Member names of the zip for a recording: pty → typescript and timing, otherwise the
/// two directions.
pub fn zip_members(meta: &Metadata) -> [&'static str; 2] {
    if meta.pty.is_some() {
        ["term_data.txt", "term_times.txt"]
    } else {
        ["data_from_client.txt", "data_from_server.txt"]
    }
}

/// Writes the zip `ssh-log-cli decrypt` writes (same members, same contents; Stored),
/// plus [`FILE_OPERATIONS_MEMBER`] when the recording has file operations.
/// `open` is called once per pass: a first pass checks the whole stream before anything
/// is written, then one pass per member keeps memory use flat.
pub fn decrypted_zip<R: Read, W: Write + Seek>(
    open: impl Fn() -> Result<Reader<R>, RecordingError>,
    out: W,
    now_unix: u64,
) -> Result<End> {
    let mut reader = open()?;
    let mut total = 0u64;
    let mut trailer = false;
    while let Some(packet) = reader.next_packet()? {
        total += packet.data.len() as u64 + 64;
        trailer |= packet.kind.is_trailer_record();
    }
    let end = reader.end().expect("stream ended");
    let members = zip_members(reader.meta());
    let pty = reader.meta().pty.is_some();

    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644)
        .last_modified_time(zip_time(now_unix))
        .large_file(total + 4096 >= u64::from(u32::MAX));
    let mut zip = zip::ZipWriter::new(out);
    for (index, name) in members.into_iter().enumerate() {
        zip.start_file(name, options)?;
        let mut reader = open()?;
        match (pty, index) {
            (true, 0) => scriptreplay(&mut reader, Some(&mut zip), None)?,
            (true, _) => scriptreplay(&mut reader, None, Some(&mut zip))?,
            (false, 0) => raw_streams(&mut reader, Some(&mut zip), None)?,
            (false, _) => raw_streams(&mut reader, None, Some(&mut zip))?,
        };
    }
    if trailer {
        zip.start_file(FILE_OPERATIONS_MEMBER, options)?;
        file_operations(&mut open()?, &mut zip)?;
    }
    zip.finish()?;
    Ok(end)
}

fn zip_time(unix: u64) -> zip::DateTime {
    let (y, m, d) = format::civil_from_days((unix / 86_400) as i64);
    let rem = unix % 86_400;
    zip::DateTime::from_date_and_time(
        y.clamp(1980, 2107) as u16,
        m as u8,
        d as u8,
        (rem / 3600) as u8,
        (rem / 60 % 60) as u8,
        (rem % 60) as u8,
    )
    .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// asciicast v2.

#[derive(Serialize)]
struct CastHeader {
    version: u32,
    width: u32,
    height: u32,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    env: CastEnv,
}

#[derive(Serialize)]
struct CastEnv {
    #[serde(rename = "TERM", skip_serializing_if = "Option::is_none")]
    term: Option<String>,
}

/// Decodes a byte stream as UTF-8 across packet boundaries (invalid bytes become U+FFFD).
#[derive(Default)]
struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest = &self.carry[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("valid prefix"));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &after[bad..];
                        }
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.carry = rest.to_vec();
        out
    }

    fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        out
    }
}

fn cast_event(out: &mut dyn Write, elapsed_us: u64, code: &str, text: &str) -> Result<()> {
    writeln!(
        out,
        "[{}, \"{code}\", {}]",
        format::format_secs(elapsed_us),
        serde_json::to_string(text)?
    )?;
    Ok(())
}

/// The header's size, and the events a 0×0 pty holds back until it is known.
struct CastSize {
    /// `None` while a 0×0 (or 0×N) pty waits for its first real size.
    known: Option<(u32, u32)>,
    held: Vec<u8>,
}

impl CastSize {
    fn new(pty: Option<(u32, u32)>) -> Self {
        let known = match pty {
            None => Some(DEFAULT_SIZE),
            Some((w, h)) if w > 0 && h > 0 => Some((w, h)),
            Some(_) => None,
        };
        CastSize {
            known,
            held: Vec::new(),
        }
    }
}

/// Writes asciicast v2: output as "o", client input as "i", resizes as "r" events.
///
/// A pty requested with a zero dimension gets, in the header, the first resize that has
/// both; until then its events are held (at most [`SIZE_WAIT_MAX`] bytes), and without
/// one it gets [`usable_size`]. Resizes to a zero dimension are left out.
pub fn asciicast<R: Read>(reader: &mut Reader<R>, out: &mut dyn Write) -> Result<End> {
    let meta = reader.meta();
    let pty = meta.pty.as_ref().map(|pty| (pty.width, pty.height));
    let mut size = CastSize::new(pty);
    let header = cast_header(meta);
    if let Some(known) = size.known {
        write_cast_header(out, &header, known)?;
    }
    let mut output = Utf8Stream::default();
    let mut input = Utf8Stream::default();
    let mut last = 0;
    while let Some(packet) = reader.next_packet()? {
        last = last.max(packet.elapsed_us);
        let mut event = Vec::new();
        match packet.kind {
            Kind::Output => {
                let text = output.push(&packet.data);
                if !text.is_empty() {
                    cast_event(&mut event, last, "o", &text)?;
                }
            }
            Kind::Input => {
                let text = input.push(&packet.data);
                if !text.is_empty() {
                    cast_event(&mut event, last, "i", &text)?;
                }
            }
            Kind::Resize { cols, rows } if cols > 0 && rows > 0 => {
                if size.known.is_none() {
                    size.known = Some((cols, rows));
                    write_cast_header(out, &header, (cols, rows))?;
                    out.write_all(&std::mem::take(&mut size.held))?;
                }
                cast_event(&mut event, last, "r", &format!("{cols}x{rows}"))?;
            }
            Kind::Resize { .. } | Kind::End | Kind::FileOp | Kind::FileOpsOmitted { .. } => {}
        }
        emit(out, &mut size, &header, pty, &event)?;
    }
    let mut tail = Vec::new();
    for (stream, code) in [(&mut output, "o"), (&mut input, "i")] {
        let text = stream.finish();
        if !text.is_empty() {
            cast_event(&mut tail, last, code, &text)?;
        }
    }
    if size.known.is_none() {
        settle(out, &mut size, &header, pty)?;
    }
    out.write_all(&tail)?;
    Ok(reader.end().expect("stream ended"))
}

/// Writes `event`, or holds it while the size is unknown (settling on the default once the
/// held events grow past [`SIZE_WAIT_MAX`]).
fn emit(
    out: &mut dyn Write,
    size: &mut CastSize,
    header: &CastHeader,
    pty: Option<(u32, u32)>,
    event: &[u8],
) -> Result<()> {
    if size.known.is_some() {
        out.write_all(event)?;
        return Ok(());
    }
    size.held.extend_from_slice(event);
    if size.held.len() > SIZE_WAIT_MAX {
        settle(out, size, header, pty)?;
    }
    Ok(())
}

/// No usable resize came: the header gets the pty's size with defaults for its zeros.
fn settle(
    out: &mut dyn Write,
    size: &mut CastSize,
    header: &CastHeader,
    pty: Option<(u32, u32)>,
) -> Result<()> {
    let (w, h) = pty.unwrap_or(DEFAULT_SIZE);
    let known = usable_size(w, h);
    size.known = Some(known);
    write_cast_header(out, header, known)?;
    out.write_all(&std::mem::take(&mut size.held))?;
    Ok(())
}

/// The header without its size.
fn cast_header(meta: &Metadata) -> CastHeader {
    let title = meta.sshgw.as_ref().map(|s| {
        let what = match (s.command.as_deref(), s.subsystem.as_deref()) {
            (Some(command), _) => format!("exec {command}"),
            (None, Some(name)) => format!("subsystem {name}"),
            (None, None) => s.channel.clone(),
        };
        format!(
            "{}@{}: {what}",
            s.login.as_deref().unwrap_or("?"),
            s.destination.as_deref().unwrap_or("?")
        )
    });
    CastHeader {
        version: 2,
        width: 0,
        height: 0,
        timestamp: meta.started_at,
        title,
        env: CastEnv {
            term: meta.pty.as_ref().and_then(|pty| pty.term.clone()),
        },
    }
}

fn write_cast_header(out: &mut dyn Write, header: &CastHeader, (w, h): (u32, u32)) -> Result<()> {
    let header = CastHeader {
        width: w,
        height: h,
        title: header.title.clone(),
        env: CastEnv {
            term: header.env.term.clone(),
        },
        ..*header
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Replay.

/// Writes the server output to `out` with its timing: each recorded gap is capped at
/// `idle_limit` seconds, then divided by `speed`.
pub fn replay<R: Read>(
    reader: &mut Reader<R>,
    out: &mut dyn Write,
    speed: f64,
    idle_limit: Option<f64>,
    sleep: &mut dyn FnMut(Duration),
) -> Result<End> {
    let mut previous: Option<u64> = None;
    while let Some(packet) = reader.next_packet()? {
        if packet.kind != Kind::Output {
            continue;
        }
        let gap_us = previous.map_or(packet.elapsed_us, |p| packet.elapsed_us.saturating_sub(p));
        previous = Some(packet.elapsed_us);
        let mut gap = gap_us as f64 / 1e6;
        if let Some(limit) = idle_limit {
            gap = gap.min(limit);
        }
        let wait = gap / speed;
        if wait > 0.0 {
            out.flush()?;
            sleep(Duration::from_secs_f64(wait));
        }
        out.write_all(&packet.data)?;
    }
    out.flush()?;
    Ok(reader.end().expect("stream ended"))
}
