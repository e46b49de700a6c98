//! The open-file limit: each relayed connection holds two descriptors (device and server
//! socket), so the common default soft limit of 1024 caps the gateway near 500
//! connections. At start the daemon raises its soft `RLIMIT_NOFILE` to the hard limit
//! (which the unit's `LimitNOFILE=` sets) and logs both.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The open-file limits before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. glibc's `setrlimit()` uses the
/// `prlimit64` system call, which the unit's `SystemCallFilter=` allows.
pub fn raise_nofile() -> nix::Result<NofileLimits> {
    let (soft_before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft_before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NofileLimits {
        soft_before,
        soft,
        hard,
    })
}

/// [`raise_nofile`], logged: the limits, or why they could not be raised.
pub fn raise_nofile_logged() {
    match raise_nofile() {
        Ok(l) => tracing::info!(
            soft_before = l.soft_before,
            soft = l.soft,
            hard = l.hard,
            max_connections = l.soft.saturating_sub(BASELINE_FDS) / 2,
            "open-file limit (RLIMIT_NOFILE)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot raise the open-file limit (RLIMIT_NOFILE); set LimitNOFILE= in the unit"
        ),
    }
}

/// Descriptors the daemon holds with no connection (maps, programs, session log,
/// listeners, control socket); measured at about 30.
const BASELINE_FDS: u64 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowers this test process's soft limit (to at most 1024, the usual default), then
    /// raises it again the way the daemon does.
    #[test]
    fn soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let low = (hard / 2).clamp(64, 1024);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
        let limits = raise_nofile().unwrap();
        assert_eq!(limits.soft_before, low);
        assert_eq!(limits.soft, hard);
        assert_eq!(limits.hard, hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
