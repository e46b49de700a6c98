//! The endpoints' handlers, one function per route of [`super::routes`], grouped by what
//! they touch: the state documents, the session log, and the daemon itself.

pub mod sessions;
pub mod state;
pub mod system;

use bytes::Bytes;
use hyper::StatusCode;

use super::{
    admin_log::Evidence,
    reply::{Reply, error},
};
use crate::state::Expect;

/// What a handler gets: the parts of the request the route table has already read.
pub struct Request<'a> {
    /// The `{id}` segment of the path, when the route has one.
    pub id: &'a str,
    pub query: Option<&'a str>,
    /// The `If-Match` precondition (parsed before routing).
    pub expect: &'a Expect,
    pub body: &'a Bytes,
}

/// A handler's answer and, for changes, what they left in force (for the admin log).
pub type Outcome = (Reply, Evidence);

/// An answer that changed nothing worth logging beyond its status.
pub fn plain(reply: Reply) -> Outcome {
    (reply, Evidence::default())
}

/// `400 Bad Request` with `message`.
pub fn bad_request(message: String) -> Outcome {
    plain(error(StatusCode::BAD_REQUEST, message))
}
