//! Evidence off the box: finished recordings and ended sessions' records are uploaded to
//! S3-compatible object storage, create-only, under `<prefix>/<router_id>/<yyyy>/<mm>/<dd>/`.
//!
//! The local recording directory stays the spool: a recording is written there exactly as
//! without storage (so crash behaviour and ssh-log-cli compatibility are unchanged) and is
//! uploaded once its writer is gone. What is pending lives in the session log
//! ([`crate::sessions::uploads`]), so a restart resumes it; a crash's truncated recording is
//! uploaded as the verifiable prefix it is. See docs/architecture.md and docs/operations.md.

pub mod bucket;
pub mod credentials;
pub mod keys;
pub mod orphans;
pub mod uploader;
