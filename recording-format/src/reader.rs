//! Reading recordings: a streaming packet reader over any chunking, with specific errors
//! and a verdict on completeness.

use std::{fmt, io::Read};

use base64::Engine;
use hpke::{
    Deserializable, OpModeR, aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256,
};

use crate::{
    format::{
        self, Kind, MAX_CHUNK_LEN, MAX_HEADER_LEN, MAX_PACKET_LEN, Metadata, PACKET_FIXED_LEN,
        Packet, SOURCE_CLIENT, SOURCE_SERVER, TAG_LEN,
    },
    keys::RecordingPrivateKey,
};

type ReceiverCtx = hpke::aead::AeadCtxR<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>;
type EncappedKey = <X25519HkdfSha256 as hpke::Kem>::EncappedKey;

/// Why a recording cannot be read. Chunks are numbered from 0 (the HPKE sequence number).
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("not an sshgw/ssh-log-cli recording: {0}")]
    NotARecording(String),
    #[error(
        "wrong key or corrupted data: authentication failed at chunk {chunk} (offset {offset}){}",
        hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default()
    )]
    AuthFailed {
        chunk: u64,
        offset: u64,
        hint: Option<String>,
    },
    #[error("corrupted recording at chunk {chunk}: {reason}")]
    Corrupt { chunk: u64, reason: String },
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How the packet stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The authenticated end-of-recording record was read, and nothing after it.
    Complete {
        end_elapsed_us: u64,
    },
    Truncated(Truncation),
}

/// Where a recording without an end-of-recording record stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// The file ends cleanly after `chunks` whole chunks (`inside_packet`: the stream
    /// stops in the middle of a packet).
    AfterChunk { chunks: u64, inside_packet: bool },
    /// The file ends inside chunk `chunk`, which starts at `offset`.
    InsideChunk { chunk: u64, offset: u64 },
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Truncation::AfterChunk { chunks: 0, .. } => {
                write!(
                    f,
                    "truncated after the header (no chunks): no end-of-recording record"
                )
            }
            Truncation::AfterChunk {
                chunks,
                inside_packet,
            } => write!(
                f,
                "truncated after chunk {}{}: no end-of-recording record",
                chunks - 1,
                if inside_packet {
                    ", inside a packet"
                } else {
                    ""
                }
            ),
            Truncation::InsideChunk { chunk, offset } => write!(
                f,
                "truncated inside chunk {chunk} (offset {offset}): no end-of-recording record"
            ),
        }
    }
}

/// Reads packets from a recording.
pub struct Reader<R> {
    input: R,
    offset: u64,
    meta: Metadata,
    ctx: ReceiverCtx,
    hint: Option<String>,
    chunks: u64,
    buf: Vec<u8>,
    pos: usize,
    packets: u64,
    end_record: Option<u64>,
    end: Option<End>,
    /// The empty chunk that starts the trailer was read (ssh-log-cli stops there).
    in_trailer: bool,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header; the key is checked by the first chunk.
    pub fn open(mut input: R, key: &RecordingPrivateKey) -> Result<Self, RecordingError> {
        let not = |s: String| RecordingError::NotARecording(s);
        let (len, meta) = read_header(&mut input)?;
        let enc = hex::decode(meta.encapsulated_key.trim())
            .map_err(|e| not(format!("encapsulated_key is not hex ({e})")))?;
        let enc = EncappedKey::from_bytes(&enc).map_err(|_| {
            not(format!(
                "encapsulated_key has {} bytes, expected 32",
                enc.len()
            ))
        })?;
        let ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &key.0,
            &enc,
            b"",
        )
        .map_err(|e| not(format!("invalid encapsulated_key ({e})")))?;
        let hint = recipient_hint(&meta, key);
        Ok(Reader {
            input,
            offset: 4 + u64::from(len),
            meta,
            ctx,
            hint,
            chunks: 0,
            buf: Vec::new(),
            pos: 0,
            packets: 0,
            end_record: None,
            end: None,
            in_trailer: false,
        })
    }

    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// Whole chunks read so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Packets read so far (including the end-of-recording record).
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// How the stream ended, once [`Reader::next_packet`] returned `None`.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// The next packet, the end-of-recording record included; `None` at the end of the
    /// stream (see [`Reader::end`]).
    pub fn next_packet(&mut self) -> Result<Option<Packet>, RecordingError> {
        loop {
            if self.end.is_some() {
                return Ok(None);
            }
            if let Some(packet) = self.parse_packet()? {
                return Ok(Some(packet));
            }
            if !self.read_chunk()? {
                return Ok(None);
            }
        }
    }

    fn corrupt(&self, reason: String) -> RecordingError {
        RecordingError::Corrupt {
            chunk: self.chunks.saturating_sub(1),
            reason,
        }
    }

    fn parse_packet(&mut self) -> Result<Option<Packet>, RecordingError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 4 {
            return Ok(None);
        }
        if self.end_record.is_some() {
            return Err(self.corrupt("data after the end-of-recording record".into()));
        }
        let len = u32::from_be_bytes(avail[..4].try_into().expect("4 bytes"));
        self.check_packet_len(len)?;
        if avail.len() < 4 + len as usize {
            return Ok(None);
        }
        let body = &avail[4..4 + len as usize];
        let source = body[0];
        if source != SOURCE_CLIENT && source != SOURCE_SERVER {
            return Err(self.corrupt(format!(
                "packet {} has source {source}, expected 0 or 1",
                self.packets
            )));
        }
        let code = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes"));
        let elapsed_us = u64::from_be_bytes(body[5..13].try_into().expect("8 bytes"));
        let data = body[13..].to_vec();
        let kind = format::classify(source, code, &data)
            .map_err(|reason| self.corrupt(format!("packet {}: {reason}", self.packets)))?;
        self.check_trailer_order(kind)?;
        self.pos += 4 + len as usize;
        self.packets += 1;
        if kind == Kind::End {
            self.end_record = Some(elapsed_us);
        }
        Ok(Some(Packet {
            source,
            code,
            elapsed_us,
            data,
            kind,
        }))
    }

    /// A packet's length field must cover the fixed fields and stay under the limit.
    fn check_packet_len(&self, len: u32) -> Result<(), RecordingError> {
        if (len as usize) < PACKET_FIXED_LEN {
            return Err(self.corrupt(format!(
                "packet {} has length {len}, less than {PACKET_FIXED_LEN}",
                self.packets
            )));
        }
        if len > MAX_PACKET_LEN {
            return Err(self.corrupt(format!(
                "packet {} has length {len}, over the {} MiB limit",
                self.packets,
                MAX_PACKET_LEN >> 20
            )));
        }
        Ok(())
    }

    /// File-operation records only after the trailer's empty chunk, channel data only
    /// before it.
    fn check_trailer_order(&self, kind: Kind) -> Result<(), RecordingError> {
        // Both readers must see the same channel bytes: ours reads on past the boundary,
        // ssh-log-cli does not.
        if kind.is_trailer_record() && !self.in_trailer {
            return Err(self.corrupt(format!(
                "packet {}: a file-operation record before the trailer's empty chunk",
                self.packets
            )));
        }
        if self.in_trailer && !kind.is_trailer_record() && kind != Kind::End {
            return Err(self.corrupt(format!(
                "packet {}: channel data after the trailer's empty chunk",
                self.packets
            )));
        }
        Ok(())
    }

    /// Reads and decrypts the next chunk into the buffer; `false` at the end of the file
    /// (with [`Reader::end`] set).
    fn read_chunk(&mut self) -> Result<bool, RecordingError> {
        let chunk = self.chunks;
        let start = self.offset;
        let mut len = [0u8; 4];
        let got = read_full(&mut self.input, &mut len)?;
        if got == 0 {
            return self.end_of_file(chunk);
        }
        if got < 4 {
            return self.truncated_inside(chunk, start);
        }
        let len = u32::from_be_bytes(len);
        check_chunk_len(chunk, start, len)?;
        let mut ciphertext = vec![0u8; len as usize];
        let got = read_full(&mut self.input, &mut ciphertext)?;
        if got < ciphertext.len() {
            return self.truncated_inside(chunk, start);
        }
        let plaintext =
            self.ctx
                .open(&ciphertext, b"")
                .map_err(|_| RecordingError::AuthFailed {
                    chunk,
                    offset: start,
                    hint: self.hint.clone(),
                })?;
        self.offset += 4 + u64::from(len);
        self.chunks += 1;
        if plaintext.is_empty() {
            self.enter_trailer(start)?;
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(&plaintext);
        Ok(true)
    }

    /// The file ends cleanly between chunks: complete if the end-of-recording record was
    /// read, truncated otherwise.
    fn end_of_file(&mut self, chunk: u64) -> Result<bool, RecordingError> {
        let leftover = self.buf.len() - self.pos;
        if self.end_record.is_some() && leftover > 0 {
            return Err(self.corrupt("data after the end-of-recording record".into()));
        }
        self.end = Some(match self.end_record {
            Some(end_elapsed_us) => End::Complete { end_elapsed_us },
            None => End::Truncated(Truncation::AfterChunk {
                chunks: chunk,
                inside_packet: leftover > 0,
            }),
        });
        Ok(false)
    }

    /// The file ends inside chunk `chunk` (starting at `start`): stray bytes after the
    /// end-of-recording record, or a truncated recording.
    fn truncated_inside(&mut self, chunk: u64, start: u64) -> Result<bool, RecordingError> {
        if self.end_record.is_some() {
            return Err(RecordingError::Corrupt {
                chunk,
                reason: format!("stray bytes after the end-of-recording record at offset {start}"),
            });
        }
        self.end = Some(End::Truncated(Truncation::InsideChunk {
            chunk,
            offset: start,
        }));
        Ok(false)
    }

    /// An empty chunk (read at `start`) starts the trailer; anywhere else it is corrupt.
    fn enter_trailer(&mut self, start: u64) -> Result<(), RecordingError> {
        let reason = if self.in_trailer {
            Some("a second empty chunk")
        } else if self.end_record.is_some() {
            Some("an empty chunk after the end-of-recording record")
        } else if self.pos < self.buf.len() {
            Some("an empty chunk inside a packet")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(self.corrupt(format!("{reason} (offset {start})")));
        }
        self.in_trailer = true;
        Ok(())
    }
}

/// The header: its length field and the metadata it holds (no key needed: it is plaintext).
pub fn read_header(input: &mut impl Read) -> Result<(u32, Metadata), RecordingError> {
    let not = |s: String| RecordingError::NotARecording(s);
    let mut len = [0u8; 4];
    let got = read_full(input, &mut len)?;
    if got == 0 {
        return Err(not("the file is empty".into()));
    }
    if got < 4 {
        return Err(not(format!("the file has only {got} bytes")));
    }
    let len = u32::from_be_bytes(len);
    if len == 0 {
        return Err(not("the header length is 0".into()));
    }
    if len > MAX_HEADER_LEN {
        return Err(not(format!(
            "the header length {len} exceeds the {} MiB limit",
            MAX_HEADER_LEN >> 20
        )));
    }
    let mut text = vec![0u8; len as usize];
    let got = read_full(input, &mut text)?;
    if got < text.len() {
        return Err(not(format!(
            "the file ends inside the header ({got} of {len} bytes)"
        )));
    }
    let json = format::base64_engine()
        .decode(&text)
        .map_err(|e| not(format!("the header is not base64 ({e})")))?;
    let meta: Metadata = serde_json::from_slice(&json)
        .map_err(|e| not(format!("the header is not recording metadata JSON ({e})")))?;
    Ok((len, meta))
}

/// When the header names a recipient other than `key`'s public key: a hint for an
/// authentication failure.
fn recipient_hint(meta: &Metadata, key: &RecordingPrivateKey) -> Option<String> {
    let ours = key.public().to_base64();
    meta.sshgw
        .as_ref()
        .and_then(|s| s.recipient.as_deref())
        .filter(|recipient| recipient.trim_end_matches('=') != ours.trim_end_matches('='))
        .map(|recipient| {
            format!(
                "the header names recipient public key {recipient}, this private key's public key is {ours}"
            )
        })
}

/// A chunk's length field must cover the tag and stay under the limit.
fn check_chunk_len(chunk: u64, start: u64, len: u32) -> Result<(), RecordingError> {
    if (len as usize) < TAG_LEN {
        return Err(RecordingError::Corrupt {
            chunk,
            reason: format!(
                "chunk length {len} at offset {start} is shorter than the {TAG_LEN}-byte tag"
            ),
        });
    }
    if len > MAX_CHUNK_LEN {
        return Err(RecordingError::Corrupt {
            chunk,
            reason: format!(
                "chunk length {len} at offset {start} exceeds the {} MiB limit",
                MAX_CHUNK_LEN >> 20
            ),
        });
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
