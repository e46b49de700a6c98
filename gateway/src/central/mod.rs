//! The central index: every router ships its session log's outbox to one PostgreSQL
//! (docs/many-routers.md). Each router stays autonomous: it admits and records whether or
//! not PostgreSQL answers, and the outbox waits in its SQLite log until it does.

pub mod apply;
pub mod connect;
pub mod schema;
pub mod search;
pub mod shipper;
