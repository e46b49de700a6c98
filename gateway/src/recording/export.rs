//! Turning a decrypted packet stream into files: ssh-log-cli's zip, the scriptreplay
//! pair, and live replay. asciicast v2 and the raw streams live in `sshgw_recording::export`
//! (the console replays with the same code in the browser).

use std::{
    io::{Read, Seek, Write},
    time::Duration,
};

use anyhow::Result;

use super::{
    format::{self, Kind, Metadata, SOURCE_SERVER},
    reader::{End, Reader, RecordingError},
};

pub use sshgw_recording::export::{DEFAULT_SIZE, asciicast, raw_streams, usable_size};

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
