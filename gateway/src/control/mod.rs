//! The local control API: HTTP/1.1 + JSON over a Unix socket.

mod admin_log;
pub mod api;
pub mod client;
mod context;
mod etag;
mod handlers;
mod reply;
pub mod routes;
#[cfg(test)]
mod routes_tests;
pub mod server;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod sessions_tests;
#[cfg(test)]
mod test_context;

pub use context::Context;

/// Route prefix of every endpoint.
pub const API_PREFIX: &str = "/v1";
#[cfg(test)]
mod wire_golden_tests;
