//! The session log: one record per intercepted connection (allowed or blocked) and one per
//! channel, kept in SQLite, plus the registry of live sessions that can be listed and killed.

mod change;
pub mod health;
pub mod live;
pub mod outbox;
mod record;
pub mod retention;
pub mod store;
pub mod uploads;
mod writer;

#[cfg(test)]
mod log_rows_tests;

pub use record::{
    ChannelRecord, FileOpRecord, FileOperation, FileProtocol, ProgramKind, SessionRecord,
};
// The time columns' JSON form, shared with the health report.
use record::{deserialize_opt_time, serialize_opt_time};

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: how times are stored.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// RFC 3339 with microseconds, UTC.
pub fn format_time(micros: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

/// A `--destination` filter as (exact, LIKE pattern): `HOST:PORT` matches itself; an
/// address alone matches it on any port (`[v6]:port` for IPv6).
pub fn destination_match(text: &str) -> Result<(String, String), String> {
    use std::net::{IpAddr, SocketAddr};
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.to_string(), addr.to_string()));
    }
    match text.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok((ip.to_string(), format!("{ip}:%"))),
        Ok(IpAddr::V6(ip)) => Ok((ip.to_string(), format!("[{ip}]:%"))),
        Err(_) => Err(format!(
            "destination: {text:?} is not an address or address:port"
        )),
    }
}
