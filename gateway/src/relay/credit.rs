//! The window credit of one leg's channel: what its peer sent and what the relay handed
//! back. [`super::flow`] keeps it; [`super::stall`] reads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The window accounting of one leg's channel: what its peer sent, and what the relay
/// handed back. A compliant peer never has more than the advertised window outstanding.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    received: AtomicU64,
    released: AtomicU64,
    /// Set once the peer sent beyond its window (logged once).
    violated: AtomicBool,
}

impl ChannelCredit {
    /// Counts `bytes` received; false when the peer has now sent more than the window it
    /// was given (a protocol violation: RFC 4254, section 5.2).
    pub fn receive(&self, bytes: usize) -> bool {
        let received = self.received.fetch_add(bytes as u64, Ordering::AcqRel) + bytes as u64;
        received - self.released.load(Ordering::Acquire).min(received)
            <= u64::from(super::WINDOW_SIZE)
    }

    /// Bytes received and not yet handed back.
    pub fn outstanding(&self) -> u64 {
        let released = self.released.load(Ordering::Acquire);
        self.received
            .load(Ordering::Acquire)
            .saturating_sub(released)
    }

    /// Marks the violation; true the first time.
    pub fn first_violation(&self) -> bool {
        !self.violated.swap(true, Ordering::AcqRel)
    }

    /// Counted before the window adjustment goes out, so the reader never sees the peer
    /// use credit that is not yet counted as handed back.
    pub(super) fn release(&self, bytes: u32) {
        self.released.fetch_add(u64::from(bytes), Ordering::AcqRel);
    }
}
