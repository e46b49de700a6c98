//! Per-channel session recordings, encrypted before anything touches the disk, in the
//! container that Cloudflare's `ssh-log-cli decrypt` reads (see `docs/recording-format.md`).
//!
//! # Format in brief
//!
//! `u32 BE M`, `M` bytes of base64 of a plaintext JSON header (padded with spaces to a
//! fixed size so it can be rewritten in place at finish), then chunks `u32 BE L` + `L`
//! bytes of HPKE ciphertext (Base mode, X25519-HKDF-SHA256, HKDF-SHA256,
//! ChaCha20-Poly1305, empty info and AAD, one context per file, sequence nonces). The
//! chunk plaintexts form one stream of packets `u32 BE len, u8 source, u32 BE code,
//! u64 BE elapsed_us, data`. Our extension records ([`format::CODE_END`],
//! [`format::CODE_RESIZE`]) are client packets that ssh-log-cli leaves out of its pty
//! output. File operations of SFTP/scp channels ([`format::CODE_FILE_OP`]) go in a
//! trailer behind an empty chunk, which ssh-log-cli reads as the end of the file.
//!
//! # Writer API (for the relay)
//!
//! Types: [`writer::Recorder`], [`writer::ChannelMeta`], [`writer::ChannelKind`],
//! [`writer::PtyMeta`], [`writer::Exit`], [`writer::Summary`], [`keys::RecordingKey`];
//! [`pty::pty_modes`] turns russh's `pty_request` modes into the names the header uses.
//!
//! ```ignore
//! let key = RecordingKey::from_file(path)?;            // or RecordingKey::parse(base64)
//! // When the channel's shell/exec/subsystem request is accepted (after any pty-req):
//! let rec = Recorder::create(&file, &key, ChannelMeta { .. }).await?;
//! rec.data(false, None, bytes).await;                   // server → client output
//! rec.data(false, Some(1), bytes).await;                // server stderr
//! rec.data(true, None, bytes).await;                    // client → server input
//! rec.resize(cols, rows).await;                         // window-change
//! rec.file_op(json);                                    // SFTP/scp operation (trailer)
//! if let Some(error) = rec.failed() { /* refuse or close per policy */ }
//! let summary = rec.finish(Exit::Status(0)).await?;     // or Exit::signal(&sig, core)
//! ```
//!
//! * [`writer::Recorder::create`] creates the file with mode 0600 and `O_EXCL`, writes the header
//!   and spawns a writer task; it fails on any I/O error. The pty (if any) is part of
//!   [`writer::ChannelMeta`]: create the recorder once the channel's request is known, which is
//!   after the pty-req.
//! * `data`/`resize` take the packet time when called and queue the event (bounded: they
//!   wait only when 256 events are queued, i.e. when the disk cannot keep up). The writer
//!   task seals one chunk of all whole packets buffered so far at least once a second and
//!   whenever 256 KiB are buffered, never an empty chunk; disk I/O runs on the blocking
//!   pool. Packet times are forced non-decreasing.
//! * [`writer::Recorder::failed`] returns the first write error; the recording stops there.
//! * [`writer::Recorder::file_op`] keeps the operation in memory (at most 1 MiB of JSON per
//!   channel; the rest are counted); [`writer::Recorder::finish`] writes them after an
//!   empty chunk. A crash loses them from the recording; the session log has them.
//! * [`writer::Recorder::finish`] writes the end-of-recording record, `fdatasync`s, rewrites the
//!   header with `exit_data` and `data_size`, and `fdatasync`s again. A recorder dropped
//!   without `finish` writes what it buffered and reads as truncated.
//!
//! Crash guarantees: a crash of the process loses at most the last second of data (the
//! unflushed buffer); the file then reads as truncated, with no `exit_data`. A power loss
//! can also lose what the kernel had not yet written back (only `finish` syncs).

pub mod export;
pub mod key_store;
pub mod keys;
pub mod pty;
pub mod spool;
pub mod writer;

// The format and its reader are shared with the console's wasm build.
pub use sshgw_recording::{format, reader};

#[cfg(test)]
mod console_view_tests;
#[cfg(test)]
mod tests;

pub use export::{asciicast, decrypted_zip, file_operations, replay, scriptreplay};
pub use format::{Kind, Metadata, format_secs, format_utc};
pub use keys::{RecordingPrivateKey, write_key_pair};
pub use reader::{End, Reader, RecordingError};
