//! The local control API: HTTP/1.1 + JSON over a Unix socket.

mod admin_log;
pub mod api;
pub mod client;
mod context;
mod etag;
mod handlers;
mod reply;
pub mod routes;
pub mod server;

pub use context::Context;

/// Route prefix of every endpoint.
pub const API_PREFIX: &str = "/v1";
