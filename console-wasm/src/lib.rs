//! The console's in-browser recording reader: [`sshgw_recording`] compiled to
//! `wasm32-unknown-unknown`, so the browser decrypts with the gateway's own implementation of
//! the format and the private key never leaves the auditor's tab.
//!
//! The ABI is plain C over the module's memory, driven by `console/web/recording.js`:
//! - `sshgw_alloc(len) -> ptr` reserves an input buffer the caller fills;
//! - `sshgw_key_info(key_ptr, key_len)` and `sshgw_decrypt(key_ptr, key_len, rec_ptr,
//!   rec_len)` take ownership of their input buffers (the key's is zeroed before it is
//!   freed) and return a result buffer: 4 bytes of little-endian length, then that many
//!   bytes of UTF-8 JSON ([`key_info`], [`decrypt`]);
//! - `sshgw_free(ptr, len)` releases a result buffer (`len` = 4 + the JSON length).
//!
//! No JavaScript imports: the module needs no randomness (decrypting is deterministic) and
//! no glue generator.

mod abi;
mod view;

pub use view::{MAX_RECORDING_BYTES, decrypt, key_info};
