//! The recording container: constants, the plaintext metadata header and the packets of
//! the encrypted stream. The one place where our extension records are defined.
//!
//! See `docs/recording-format.md` for the full description.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Packet codes.

/// `code` of ordinary channel data (SSH_MSG_CHANNEL_DATA).
pub const CODE_DATA: u32 = 0;
/// Extension record: end of recording. Source 0 (client), empty data, `elapsed` = the
/// end time. Always the last packet of a complete recording; its presence inside the
/// authenticated stream proves that nothing was cut off. ssh-log-cli skips it in pty
/// output and appends its (empty) data to `data_from_client.txt` otherwise.
pub const CODE_END: u32 = 0x7367_7200;
/// Extension record: terminal resize. Source 0 (client), data = ASCII `COLSxROWS`
/// (e.g. `132x43`). Written only for pty channels, so it never reaches ssh-log-cli's
/// non-pty `data_from_client.txt`.
pub const CODE_RESIZE: u32 = 0x7367_7201;
/// Extension record: one file operation of an SFTP or scp channel. Source 0, data = one
/// JSON object (the session log's file-operation fields). Only in the trailer, after the
/// boundary (an empty chunk), where ssh-log-cli stops reading: its output is unchanged.
pub const CODE_FILE_OP: u32 = 0x7367_7202;
/// Extension record: this many further file operations were not recorded (the trailer's
/// size limit); the session log has them all. Source 0, data = ASCII decimal count.
pub const CODE_FILE_OPS_OMITTED: u32 = 0x7367_7203;
/// Codes from `0x73677200` to `0x736772ff` (`"sgr"` followed by one byte) are reserved for
/// sshgw extension records sent with source 0.
pub const RESERVED_CODES: std::ops::RangeInclusive<u32> = 0x7367_7200..=0x7367_72ff;
/// Client extended data whose SSH type code falls into [`RESERVED_CODES`] is recorded
/// with this code instead, so a client cannot forge extension records.
pub const CODE_CLIENT_RESERVED_COLLISION: u32 = 0x7367_72ff;

/// Packet source byte: client (device → server: keystrokes, uploads).
pub const SOURCE_CLIENT: u8 = 0;
/// Packet source byte: server (server → device: output).
pub const SOURCE_SERVER: u8 = 1;

/// Bytes before the data in a packet, after its length prefix: source, code, elapsed.
pub const PACKET_FIXED_LEN: usize = 1 + 4 + 8;

// ---------------------------------------------------------------------------------------
// Limits.

/// Largest metadata header (base64 text) a reader accepts.
pub const MAX_HEADER_LEN: u32 = 16 * 1024 * 1024;
/// Largest chunk ciphertext a reader accepts.
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024 + TAG_LEN as u32;
/// Largest packet (length prefix value) a reader accepts.
pub const MAX_PACKET_LEN: u32 = 16 * 1024 * 1024;
/// ChaCha20-Poly1305 tag length: a chunk ciphertext is its plaintext plus this.
pub const TAG_LEN: usize = 16;

/// The writer splits channel data into packets of at most this many bytes.
pub const WRITER_MAX_PACKET_DATA: usize = 1024 * 1024;
/// The writer seals a chunk as soon as this much plaintext is buffered.
/// (Each flush is one hand-off to the blocking pool: fewer, larger chunks cost less CPU.)
pub const WRITER_FLUSH_BYTES: usize = 256 * 1024;
/// File-operation records kept per channel for the trailer (JSON bytes); the rest are
/// counted in a [`CODE_FILE_OPS_OMITTED`] record.
pub const WRITER_MAX_TRAILER_BYTES: usize = 1024 * 1024;
/// Smallest padded header JSON the writer emits (a multiple of 3, so its base64 has no
/// `=` padding and a fixed length).
pub const WRITER_HEADER_MIN: usize = 2049;
/// Room kept free in the padded header for what the rewrite at finish adds
/// (`data_size` digits and `exit_data`).
pub const WRITER_HEADER_RESERVE: usize = 1024;

/// Version of the sshgw extensions, in the header's `sshgw.format`.
pub const SSHGW_FORMAT: u32 = 1;

// ---------------------------------------------------------------------------------------
// Metadata header.

/// The plaintext JSON header (ssh-log-cli's fields plus our `sshgw` object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Recording start, Unix seconds.
    pub started_at: u64,
    /// Total plaintext bytes of the packet stream (known at finish; 0 before).
    pub data_size: u64,
    /// HPKE encapsulated key, 64 hex digits.
    pub encapsulated_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtyInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sshgw: Option<SshgwInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_data: Option<ExitData>,
}

/// The terminal of a pty channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PtyInfo {
    #[serde(default)]
    pub term: Option<String>,
    pub width: u32,
    pub height: u32,
    /// SSH terminal modes by RFC 4254 name, e.g. `[["ECHO",1]]`.
    pub modes: Vec<(String, u32)>,
}

/// How the channel's program ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitData {
    /// End time, Unix seconds.
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default)]
    pub core_dumped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<String>,
}

/// sshgw's own header fields (ignored by ssh-log-cli). Plaintext: reveals who connected
/// where and which command ran, not what was typed or shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SshgwInfo {
    /// [`SSHGW_FORMAT`]: the file follows the sshgw writer rules and ends with an
    /// end-of-recording record when complete.
    #[serde(default)]
    pub format: u32,
    /// Recording start, Unix microseconds (`started_at` has only seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_us: Option<u64>,
    #[serde(default)]
    pub session_id: String,
    /// `shell`, `exec` or `subsystem`.
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Environment variables set for the program (`env` requests the server accepted):
    /// what ran is the command in this environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// The recipient public key (base64), so a reader can name a wrong key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

/// Base64 for the header and key files: standard alphabet, writes padding, reads with or
/// without it.
pub fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

/// Serializes the header JSON padded with spaces to exactly `len` bytes; `None` if it
/// does not fit.
pub fn padded_header_json(meta: &Metadata, len: usize) -> Option<Vec<u8>> {
    let mut json = serde_json::to_vec(meta).expect("metadata serializes");
    if json.len() > len {
        return None;
    }
    json.resize(len, b' ');
    Some(json)
}

/// The padded header JSON length for a header whose unpadded JSON is `json_len` bytes.
pub fn header_json_len(json_len: usize) -> usize {
    (json_len + WRITER_HEADER_RESERVE)
        .max(WRITER_HEADER_MIN)
        .div_ceil(3)
        * 3
}

/// The on-disk header: u32 BE length, then base64 of `json`.
pub fn encode_header(json: &[u8]) -> Vec<u8> {
    let text = base64_engine().encode(json);
    let mut out = Vec::with_capacity(4 + text.len());
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

// ---------------------------------------------------------------------------------------
// Packets.

/// What a packet means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Channel data from the server (source 1, any code; code 1 is stderr).
    Output,
    /// Channel data from the client (source 0, not an extension record).
    Input,
    /// Terminal resize extension record.
    Resize { cols: u32, rows: u32 },
    /// End-of-recording extension record.
    End,
    /// File-operation extension record (a JSON object in the packet's data).
    FileOp,
    /// Count of file operations left out of the trailer.
    FileOpsOmitted { count: u64 },
}

impl Kind {
    /// Whether this kind belongs in the trailer (after the boundary) rather than the
    /// channel's stream.
    pub fn is_trailer_record(self) -> bool {
        matches!(self, Kind::FileOp | Kind::FileOpsOmitted { .. })
    }
}

/// One decoded packet of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub source: u8,
    pub code: u32,
    /// Microseconds since the start of the recording.
    pub elapsed_us: u64,
    pub data: Vec<u8>,
    pub kind: Kind,
}

/// Classifies a packet; `Err` for a malformed extension record.
pub fn classify(source: u8, code: u32, data: &[u8]) -> Result<Kind, String> {
    if source == SOURCE_SERVER {
        return Ok(Kind::Output);
    }
    match code {
        CODE_END if data.is_empty() => Ok(Kind::End),
        CODE_END => Err(format!(
            "end-of-recording record carries {} bytes of data",
            data.len()
        )),
        CODE_RESIZE => parse_resize(data)
            .map(|(cols, rows)| Kind::Resize { cols, rows })
            .ok_or_else(|| {
                format!(
                    "malformed resize record {:?}",
                    String::from_utf8_lossy(data)
                )
            }),
        CODE_FILE_OP => match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(serde_json::Value::Object(_)) => Ok(Kind::FileOp),
            _ => Err(format!(
                "file-operation record is not a JSON object: {:?}",
                String::from_utf8_lossy(&data[..data.len().min(80)])
            )),
        },
        CODE_FILE_OPS_OMITTED => std::str::from_utf8(data)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(|count| Kind::FileOpsOmitted { count })
            .ok_or_else(|| {
                format!(
                    "malformed omitted-file-operations record {:?}",
                    String::from_utf8_lossy(data)
                )
            }),
        _ => Ok(Kind::Input),
    }
}

fn parse_resize(data: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(data).ok()?;
    let (cols, rows) = text.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(cols) || !digits(rows) {
        return None;
    }
    Some((cols.parse().ok()?, rows.parse().ok()?))
}

/// The data of a resize record.
pub fn resize_data(cols: u32, rows: u32) -> Vec<u8> {
    format!("{cols}x{rows}").into_bytes()
}

/// Appends one encoded packet (length prefix included) to `out`.
pub fn encode_packet(out: &mut Vec<u8>, source: u8, code: u32, elapsed_us: u64, data: &[u8]) {
    let len = PACKET_FIXED_LEN + data.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(source);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&elapsed_us.to_be_bytes());
    out.extend_from_slice(data);
}

// ---------------------------------------------------------------------------------------
// Terminal modes.

/// RFC 4254 §8 terminal mode names by opcode.
const PTY_MODE_NAMES: &[(u8, &str)] = &[
    (1, "VINTR"),
    (2, "VQUIT"),
    (3, "VERASE"),
    (4, "VKILL"),
    (5, "VEOF"),
    (6, "VEOL"),
    (7, "VEOL2"),
    (8, "VSTART"),
    (9, "VSTOP"),
    (10, "VSUSP"),
    (11, "VDSUSP"),
    (12, "VREPRINT"),
    (13, "VWERASE"),
    (14, "VLNEXT"),
    (15, "VFLUSH"),
    (16, "VSWTCH"),
    (17, "VSTATUS"),
    (18, "VDISCARD"),
    (30, "IGNPAR"),
    (31, "PARMRK"),
    (32, "INPCK"),
    (33, "ISTRIP"),
    (34, "INLCR"),
    (35, "IGNCR"),
    (36, "ICRNL"),
    (37, "IUCLC"),
    (38, "IXON"),
    (39, "IXANY"),
    (40, "IXOFF"),
    (41, "IMAXBEL"),
    (42, "IUTF8"),
    (50, "ISIG"),
    (51, "ICANON"),
    (52, "XCASE"),
    (53, "ECHO"),
    (54, "ECHOE"),
    (55, "ECHOK"),
    (56, "ECHONL"),
    (57, "NOFLSH"),
    (58, "TOSTOP"),
    (59, "IEXTEN"),
    (60, "ECHOCTL"),
    (61, "ECHOKE"),
    (62, "PENDIN"),
    (70, "OPOST"),
    (71, "OLCUC"),
    (72, "ONLCR"),
    (73, "OCRNL"),
    (74, "ONOCR"),
    (75, "ONLRET"),
    (90, "CS7"),
    (91, "CS8"),
    (92, "PARENB"),
    (93, "PARODD"),
    (128, "TTY_OP_ISPEED"),
    (129, "TTY_OP_OSPEED"),
];

/// The RFC 4254 name of a terminal mode opcode.
pub fn pty_mode_name(opcode: u8) -> Option<&'static str> {
    PTY_MODE_NAMES
        .iter()
        .find(|(code, _)| *code == opcode)
        .map(|(_, name)| *name)
}

// ---------------------------------------------------------------------------------------
// Time.

/// Unix time now, in microseconds.
pub fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for Unix seconds.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Seconds with six decimals for microseconds, e.g. `1.010000`.
pub fn format_secs(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31 23:59:59");
    }

    #[test]
    fn header_length_is_fixed_and_parses_with_padding() {
        let meta = Metadata {
            started_at: 1,
            data_size: 0,
            encapsulated_key: "00".repeat(32),
            pty: None,
            sshgw: None,
            exit_data: None,
        };
        let json = serde_json::to_vec(&meta).unwrap();
        let len = header_json_len(json.len());
        assert_eq!(len % 3, 0);
        assert!(len >= WRITER_HEADER_MIN);
        let padded = padded_header_json(&meta, len).unwrap();
        assert_eq!(padded.len(), len);
        let back: Metadata = serde_json::from_slice(&padded).unwrap();
        assert_eq!(back, meta);
        let header = encode_header(&padded);
        assert_eq!(header.len(), 4 + len / 3 * 4);
        assert!(!header.ends_with(b"="));
    }

    #[test]
    fn resize_and_end_records() {
        assert_eq!(
            classify(0, CODE_RESIZE, b"132x43"),
            Ok(Kind::Resize {
                cols: 132,
                rows: 43
            })
        );
        assert!(classify(0, CODE_RESIZE, b"132x").is_err());
        assert!(classify(0, CODE_RESIZE, b"+1x2").is_err());
        assert_eq!(classify(0, CODE_END, b""), Ok(Kind::End));
        assert!(classify(0, CODE_END, b"x").is_err());
        assert_eq!(classify(1, CODE_END, b"x"), Ok(Kind::Output));
        assert_eq!(classify(0, 1, b"x"), Ok(Kind::Input));
        assert!(RESERVED_CODES.contains(&CODE_END));
        assert!(RESERVED_CODES.contains(&CODE_RESIZE));
        assert!(RESERVED_CODES.contains(&CODE_CLIENT_RESERVED_COLLISION));
        assert!(RESERVED_CODES.contains(&CODE_FILE_OP));
        assert!(RESERVED_CODES.contains(&CODE_FILE_OPS_OMITTED));
    }

    #[test]
    fn file_operation_records() {
        assert_eq!(
            classify(0, CODE_FILE_OP, br#"{"op":"open"}"#),
            Ok(Kind::FileOp)
        );
        assert!(classify(0, CODE_FILE_OP, b"[1]").is_err());
        assert!(classify(0, CODE_FILE_OP, b"{").is_err());
        assert_eq!(
            classify(0, CODE_FILE_OPS_OMITTED, b"12"),
            Ok(Kind::FileOpsOmitted { count: 12 })
        );
        assert!(classify(0, CODE_FILE_OPS_OMITTED, b"").is_err());
        assert!(classify(0, CODE_FILE_OPS_OMITTED, b"-1").is_err());
        // Server data is never an extension record.
        assert_eq!(classify(1, CODE_FILE_OP, b"x"), Ok(Kind::Output));
    }

    #[test]
    fn pty_mode_names() {
        assert_eq!(pty_mode_name(53), Some("ECHO"));
        assert_eq!(pty_mode_name(0), None);
    }
}
