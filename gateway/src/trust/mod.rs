//! The keys the relay presents and accepts: the gateway's CAs and host certificates, and
//! the pinned host keys of the real servers.

pub mod ca;
pub mod upstream_keys;
