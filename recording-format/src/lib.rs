//! sshgw's recording format, on its own so that the gateway and the auditor's console
//! (compiled to wasm32) share one implementation: the container Cloudflare's
//! `ssh-log-cli decrypt` reads ([`format`]), the streaming reader that verifies it
//! ([`reader`]), and the X25519 keys ([`keys`]). Writing recordings (async, on disk) stays
//! in the gateway. See the gateway's `recording` module and docs/recording-format.md.

pub mod export;
pub mod format;
pub mod keys;
pub mod reader;
