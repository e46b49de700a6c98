//! Object keys: `<prefix>/<router_id>/<yyyy>/<mm>/<dd>/<file>`, dated by the session's
//! start (UTC) so that a session's recordings and record sit side by side.

/// Where this router's objects go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
    router_id: String,
}

impl Layout {
    pub fn new(prefix: &str, router_id: &str) -> Layout {
        Layout {
            prefix: prefix.trim_matches('/').to_string(),
            router_id: router_id.to_string(),
        }
    }

    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    /// The key of a recording file (`<session>-ch<N>.sshlog`) of a session that started
    /// at `started_at` (µs since the epoch).
    pub fn recording(&self, started_at: i64, file_name: &str) -> String {
        self.key(started_at, file_name)
    }

    /// The key of a session's record.
    pub fn session(&self, started_at: i64, session_id: &str) -> String {
        self.key(started_at, &format!("{session_id}.json"))
    }

    fn key(&self, started_at: i64, name: &str) -> String {
        let day = &crate::sessions::format_time(started_at)[..10];
        let date = day.replace('-', "/");
        match self.prefix.as_str() {
            "" => format!("{}/{date}/{name}", self.router_id),
            prefix => format!("{prefix}/{}/{date}/{name}", self.router_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_by_router_and_day() {
        // 2026-12-05T00:30:00Z
        let at = 1_796_430_600 * 1_000_000;
        let layout = Layout::new("recordings", "rtr-1");
        assert_eq!(
            layout.recording(at, "0193a-ch0.sshlog"),
            "recordings/rtr-1/2026/12/05/0193a-ch0.sshlog"
        );
        assert_eq!(
            Layout::new("", "rtr-1").session(at, "0193a"),
            "rtr-1/2026/12/05/0193a.json"
        );
    }
}
