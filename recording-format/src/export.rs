//! Decrypted packet streams as players read them: asciicast v2 (pty channels) and the raw
//! client and server streams (the rest). Shared by the gateway's `recording export` and the
//! console's in-browser replay, so both show the same thing.

use std::io::{Read, Write};

use anyhow::Result;
use serde::Serialize;

use crate::{
    format::{self, Kind, Metadata, SOURCE_CLIENT},
    reader::{End, Reader},
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

/// The largest terminal an asciicast names. A client may request any size (a pty or window
/// change of 60000×60000); players allocate the whole screen and fail on such sizes, so
/// the export caps each dimension. What the program printed is kept as it was.
pub const MAX_SIZE: (u32, u32) = (1000, 500);

/// A size as the asciicast gives it: each dimension at most [`MAX_SIZE`].
pub fn playable_size((width, height): (u32, u32)) -> (u32, u32) {
    (width.min(MAX_SIZE.0), height.min(MAX_SIZE.1))
}

/// Events held back while a 0×0 pty waits for its first resize, at most this many bytes.
const SIZE_WAIT_MAX: usize = 1 << 20;

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
            Some((w, h)) if w > 0 && h > 0 => Some(playable_size((w, h))),
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
                let (cols, rows) = playable_size((cols, rows));
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
    let known = playable_size(usable_size(w, h));
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
