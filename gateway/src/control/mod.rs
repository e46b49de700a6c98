//! The local control API: HTTP/1.1 + JSON over a Unix socket.

pub mod client;
pub mod routes;
pub mod server;
mod sessions;

/// Route prefix of every endpoint.
pub const API_PREFIX: &str = "/v1";
