//! The stall watchdog: makes a frozen channel visible instead of silent.
//!
//! Every lane of every relayed channel registers a [`LaneWatch`]. A lane that holds data for
//! a peer whose window is open, and has passed nothing on for `[ssh] stall_warning_secs`, is
//! logged once with its state (queue depth, the destination's send window, the source's
//! outstanding window) and counted in `sshgw_relay_stalls_total`. A peer that simply reads
//! slowly closes its window and is not a stall.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use russh::{ChannelId, ChannelMsg, ChannelWriteHalf};

use super::credit::ChannelCredit;
use crate::metrics::METRICS;

/// The lanes of live channels.
static LANES: Mutex<Vec<Weak<LaneWatch>>> = Mutex::new(Vec::new());

/// Milliseconds since the first use: a clock the atomics can hold.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// How much a channel may be sent right now (the destination's window, capped by its
/// packet size): 0 means the peer is not reading, which is flow control, not a stall.
pub trait SendWindow: Send + Sync {
    fn writable(&self) -> Pin<Box<dyn Future<Output = usize> + Send + '_>>;
}

impl<S> SendWindow for ChannelWriteHalf<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    fn writable(&self) -> Pin<Box<dyn Future<Output = usize> + Send + '_>> {
        Box::pin(self.writable_packet_size())
    }
}

/// One direction of one relayed channel, as the watchdog sees it.
pub struct LaneWatch {
    pub session: String,
    pub channel: u32,
    /// `to_server` or `to_device`.
    pub direction: &'static str,
    destination: Arc<dyn SendWindow>,
    source: Arc<ChannelCredit>,
    queued_bytes: AtomicU64,
    queued_events: AtomicU64,
    /// When the writer last finished an event, or the lane last became busy.
    progress_ms: AtomicU64,
    reported: AtomicBool,
}

impl LaneWatch {
    /// Registers a lane with the watchdog (unregistered when the last reference goes).
    pub fn register(
        session: String,
        channel: u32,
        direction: &'static str,
        destination: Arc<dyn SendWindow>,
        source: Arc<ChannelCredit>,
    ) -> Arc<LaneWatch> {
        let watch = Arc::new(LaneWatch {
            session,
            channel,
            direction,
            destination,
            source,
            queued_bytes: AtomicU64::new(0),
            queued_events: AtomicU64::new(0),
            progress_ms: AtomicU64::new(now_ms()),
            reported: AtomicBool::new(false),
        });
        let mut lanes = LANES.lock().expect("lane registry poisoned");
        lanes.retain(|w| w.strong_count() > 0);
        lanes.push(Arc::downgrade(&watch));
        watch
    }

    /// An event of `bytes` entered the lane.
    pub fn queued(&self, bytes: u64) {
        if self.queued_events.fetch_add(1, Ordering::AcqRel) == 0 {
            // An idle lane's clock starts now, not at its last activity.
            self.progress_ms.store(now_ms(), Ordering::Release);
        }
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        METRICS
            .relay_queued_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// The writer finished an event of `bytes`.
    pub fn done(&self, bytes: u64) {
        self.queued_events.fetch_sub(1, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        METRICS
            .relay_queued_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
        self.progress_ms.store(now_ms(), Ordering::Release);
        if self.reported.swap(false, Ordering::AcqRel) {
            tracing::info!(session = %self.session, channel = self.channel, direction = self.direction, "relay channel moving again");
        }
    }

    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Checks this lane once; true when it was newly found stalled (and logged).
    async fn check(&self, stall_after: Duration) -> bool {
        let events = self.queued_events.load(Ordering::Acquire);
        let idle_ms = now_ms().saturating_sub(self.progress_ms.load(Ordering::Acquire));
        if events == 0
            || idle_ms < stall_after.as_millis() as u64
            || self.reported.load(Ordering::Acquire)
        {
            return false;
        }
        let window = self.destination.writable().await;
        if window == 0 || self.reported.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::warn!(
            session = %self.session,
            channel = self.channel,
            direction = self.direction,
            queued_events = events,
            queued_bytes = self.queued_bytes(),
            destination_window = window,
            source_outstanding = self.source.outstanding(),
            source_window = super::WINDOW_SIZE,
            idle_secs = idle_ms / 1000,
            "relay channel stalled: data is waiting for a peer whose window is open"
        );
        METRICS.relay_stalls.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Drop for LaneWatch {
    /// Events still queued when a channel ends are dropped with it: take them off the gauge.
    fn drop(&mut self) {
        METRICS
            .relay_queued_bytes
            .fetch_sub(*self.queued_bytes.get_mut(), Ordering::Relaxed);
    }
}

fn live_lanes() -> Vec<Arc<LaneWatch>> {
    let mut lanes = LANES.lock().expect("lane registry poisoned");
    lanes.retain(|w| w.strong_count() > 0);
    lanes.iter().filter_map(Weak::upgrade).collect()
}

/// Checks every lane once; returns how many were newly found stalled.
pub async fn sweep(stall_after: Duration) -> usize {
    let mut found = 0;
    for lane in live_lanes() {
        if lane.check(stall_after).await {
            found += 1;
        }
    }
    found
}

/// Runs the watchdog for the life of the daemon (it never returns).
pub async fn watch(stall_after: Duration) {
    let period = (stall_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep(stall_after).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination whose window is whatever the test sets.
    struct FixedWindow(std::sync::atomic::AtomicUsize);

    impl SendWindow for FixedWindow {
        fn writable(&self) -> Pin<Box<dyn Future<Output = usize> + Send + '_>> {
            let w = self.0.load(Ordering::Acquire);
            Box::pin(async move { w })
        }
    }

    fn lane(window: usize) -> (Arc<LaneWatch>, Arc<FixedWindow>) {
        let dest = Arc::new(FixedWindow(window.into()));
        let watch = LaneWatch::register(
            "s1".into(),
            2,
            "to_device",
            dest.clone(),
            Arc::new(ChannelCredit::default()),
        );
        (watch, dest)
    }

    #[tokio::test]
    async fn pending_data_with_an_open_window_is_reported_once() {
        let (watch, _dest) = lane(32 * 1024);
        watch.queued(100);
        // Not yet: the limit has not passed.
        assert!(!watch.check(Duration::from_secs(3600)).await);
        let before = METRICS.relay_stalls.load(Ordering::Relaxed);
        assert!(watch.check(Duration::ZERO).await);
        assert!(!watch.check(Duration::ZERO).await, "reported once");
        assert!(METRICS.relay_stalls.load(Ordering::Relaxed) > before);
        // Progress clears it, and a new stall is reported again.
        watch.done(100);
        watch.queued(10);
        assert!(watch.check(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_closed_window_or_an_empty_lane_is_no_stall() {
        let (watch, dest) = lane(0);
        assert!(!watch.check(Duration::ZERO).await, "empty lane");
        watch.queued(100);
        assert!(
            !watch.check(Duration::ZERO).await,
            "the peer is not reading"
        );
        dest.0.store(1, Ordering::Release);
        assert!(watch.check(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn queued_bytes_are_counted_per_lane_and_in_the_gauge() {
        let (watch, _dest) = lane(1);
        watch.queued(7000);
        assert_eq!(watch.queued_bytes(), 7000);
        assert!(METRICS.relay_queued_bytes.load(Ordering::Relaxed) >= 7000);
        watch.done(7000);
        assert_eq!(watch.queued_bytes(), 0);
    }
}
