//! What the page gets: the key's public half, and a recording as asciicast (and text for
//! channels without a pty), or a failure with its class and a message an auditor can act on.

use serde_json::{Value, json};
use sshgw_recording::{
    export,
    format::Metadata,
    keys::RecordingPrivateKey,
    reader::{End, Reader, RecordingError},
};

/// The largest recording the page decrypts in memory; beyond it, `sshgw recording export`
/// on a workstation.
pub const MAX_RECORDING_BYTES: usize = 256 << 20;

/// Why a recording cannot be shown.
struct Failure {
    /// `bad_key`, `wrong_key`, `tampered`, `truncated`, `not_a_recording`, `too_large`.
    class: &'static str,
    message: String,
}

impl Failure {
    fn new(class: &'static str, message: impl Into<String>) -> Self {
        Failure {
            class,
            message: message.into(),
        }
    }

    fn json(&self) -> Value {
        json!({ "ok": false, "class": self.class, "error": self.message })
    }
}

fn parse_key(key: &[u8]) -> Result<RecordingPrivateKey, Failure> {
    let text = std::str::from_utf8(key).map_err(|_| {
        Failure::new(
            "bad_key",
            "the key file is not text: expected 44 characters of base64",
        )
    })?;
    RecordingPrivateKey::parse(text).map_err(|e| Failure::new("bad_key", format!("{e:#}")))
}

/// `{"ok": true, "public_key": B64}` or a failure.
pub fn key_info(key: &[u8]) -> Value {
    match parse_key(key) {
        Ok(key) => json!({ "ok": true, "public_key": key.public().to_base64() }),
        Err(f) => f.json(),
    }
}

/// Decrypts and verifies a whole recording: see `console/web/recording.js` for the shape.
pub fn decrypt(key: &[u8], recording: &[u8]) -> Value {
    match show(key, recording) {
        Ok(value) => value,
        Err(f) => f.json(),
    }
}

fn show(key: &[u8], recording: &[u8]) -> Result<Value, Failure> {
    if recording.len() > MAX_RECORDING_BYTES {
        return Err(Failure::new(
            "too_large",
            format!(
                "the recording has {} MiB, more than the {} MiB the page decrypts: fetch it on a \
                 workstation and use `sshgw recording export`",
                recording.len() >> 20,
                MAX_RECORDING_BYTES >> 20
            ),
        ));
    }
    let private = parse_key(key)?;
    let mut reader = Reader::open(recording, &private).map_err(|e| classify(&e, None))?;
    let meta = reader.meta().clone();
    if is_the_public_key(key, &meta) {
        return Err(Failure::new(
            "wrong_key",
            "wrong key: this is the recording public key (the .pub file); open the private key",
        ));
    }
    let mut cast = Vec::new();
    let end = export::asciicast(&mut reader, &mut cast).map_err(|e| failed(&e, &meta))?;
    let text = match meta.pty {
        Some(_) => Value::Null,
        None => streams(recording, &private, &meta)?,
    };
    Ok(json!({
        "ok": true,
        "pty": meta.pty.is_some(),
        "cast": String::from_utf8_lossy(&cast),
        "text": text,
        "end": end_json(end),
        "meta": meta,
    }))
}

/// The client and server streams of a channel without a pty, as text.
fn streams(recording: &[u8], key: &RecordingPrivateKey, meta: &Metadata) -> Result<Value, Failure> {
    let mut reader = Reader::open(recording, key).map_err(|e| classify(&e, Some(meta)))?;
    let (mut input, mut output) = (Vec::new(), Vec::new());
    export::raw_streams(&mut reader, Some(&mut input), Some(&mut output))
        .map_err(|e| failed(&e, meta))?;
    Ok(json!({
        "output": String::from_utf8_lossy(&output),
        "input": String::from_utf8_lossy(&input),
    }))
}

fn end_json(end: End) -> Value {
    match end {
        End::Complete { .. } => json!({
            "complete": true,
            "message": "complete: the end-of-recording record is verified",
        }),
        End::Truncated(at) => json!({
            "complete": false,
            "message": format!(
                "the recording is truncated: {at}. What plays is verified up to there; the rest \
                 is missing (cut off, or the session is still running)"
            ),
        }),
    }
}

fn is_the_public_key(key: &[u8], meta: &Metadata) -> bool {
    let recipient = meta.sshgw.as_ref().and_then(|s| s.recipient.as_deref());
    let text = String::from_utf8_lossy(key);
    recipient.is_some_and(|r| r.trim_end_matches('=') == text.trim().trim_end_matches('='))
}

fn failed(e: &anyhow::Error, meta: &Metadata) -> Failure {
    match e.downcast_ref::<RecordingError>() {
        Some(e) => classify(e, Some(meta)),
        None => Failure::new("not_a_recording", format!("{e:#}")),
    }
}

/// Names the cause: a header naming another recipient means the wrong key; the right key
/// failing (on a later chunk, or with the header naming this key) means altered data.
fn classify(e: &RecordingError, meta: Option<&Metadata>) -> Failure {
    match e {
        RecordingError::AuthFailed {
            chunk: 0,
            hint: Some(hint),
            ..
        } => Failure::new(
            "wrong_key",
            format!("wrong key: this key does not open the recording ({hint})"),
        ),
        RecordingError::AuthFailed { chunk: 0, .. }
            if meta.is_none_or(|m| m.sshgw.as_ref().is_none_or(|s| s.recipient.is_none())) =>
        {
            Failure::new(
                "wrong_key",
                format!("wrong key, or the recording was altered: {e}"),
            )
        }
        RecordingError::AuthFailed { chunk, offset, .. } => Failure::new(
            "tampered",
            format!(
                "the recording was altered: chunk {chunk} (offset {offset}) fails authentication \
                 with the right key"
            ),
        ),
        RecordingError::Corrupt { chunk, reason } => Failure::new(
            "tampered",
            format!("the recording was altered or damaged at chunk {chunk}: {reason}"),
        ),
        RecordingError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Failure::new("truncated", format!("the recording is truncated: {e}"))
        }
        RecordingError::NotARecording(_) | RecordingError::Io(_) => {
            Failure::new("not_a_recording", e.to_string())
        }
    }
}

// Tested on the host against recordings the gateway writes:
// gateway/src/recording/console_view_tests.rs.
