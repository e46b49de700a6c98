//! How many connections one device, and all devices together, may hold: so that one device
//! cannot exhaust the gateway's file descriptors, memory or the servers' `MaxStartups` for
//! everybody else (`[limits]`, docs/configuration.md).
//!
//! Every intercepted connection takes a [`Slot`] before anything else happens. Until it
//! has logged in, it also counts as pre-authentication. A connection over a limit is still
//! greeted, so that its user reads why (`sshgw: too many …`), but only a few such refusals run
//! at once per device and overall; past that, the socket is closed at once.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::config::LimitsConfig;
use crate::metrics::METRICS;

/// Refusals with a message that may run at once, overall and per device. Each holds a
/// connection for at most the pre-auth grace.
const REFUSALS: usize = 32;
const REFUSALS_PER_DEVICE: usize = 2;

/// Whom a connection counts against: the enrolled device, or the source address of a
/// connection that matched none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Device(String),
    Address(IpAddr),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Device(id) => write!(f, "device {id}"),
            Owner::Address(ip) => write!(f, "address {ip}"),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    open: usize,
    preauth: usize,
    refusing: usize,
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.open == 0 && self.preauth == 0 && self.refusing == 0
    }
}

#[derive(Default)]
struct State {
    all: Counts,
    by_owner: HashMap<Owner, Counts>,
}

/// The live counts, shared by every connection.
pub struct Limits {
    config: LimitsConfig,
    state: Mutex<State>,
}

/// What a new connection may do.
pub enum Ticket {
    /// Go ahead.
    Admitted(Slot),
    /// Over a limit: greet, log in, then disconnect with this message.
    Refused(Slot, String),
    /// Over a limit and over the refusal budget: close the socket now.
    Dropped(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Open,
    Refusal,
}

/// A connection's place in the counts, given back when it is dropped.
pub struct Slot {
    limits: Arc<Limits>,
    owner: Owner,
    kind: SlotKind,
    preauth: AtomicBool,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            state: Mutex::default(),
        })
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Which limit a new connection of `owner` would break, if any.
    fn over(&self, all: &Counts, mine: &Counts) -> Option<(&'static str, usize)> {
        let c = &self.config;
        [
            (mine.open >= c.max_connections_per_device)
                .then_some(("max_connections_per_device", c.max_connections_per_device)),
            (mine.preauth >= c.max_preauth_per_device)
                .then_some(("max_preauth_per_device", c.max_preauth_per_device)),
            (all.open >= c.max_connections).then_some(("max_connections", c.max_connections)),
            (all.preauth >= c.max_preauth).then_some(("max_preauth", c.max_preauth)),
        ]
        .into_iter()
        .flatten()
        .next()
    }

    /// Counts a new connection of `owner`.
    pub fn admit(self: &Arc<Self>, owner: Owner) -> Ticket {
        let mut state = self.state.lock().expect("limits lock poisoned");
        let State { all, by_owner } = &mut *state;
        let mine = by_owner.entry(owner.clone()).or_default();
        let Some((limit, value)) = self.over(all, mine) else {
            for c in [&mut *all, &mut *mine] {
                c.open += 1;
                c.preauth += 1;
            }
            return Ticket::Admitted(self.slot(owner, SlotKind::Open));
        };
        METRICS.limit_refused(limit);
        if all.refusing >= REFUSALS || mine.refusing >= REFUSALS_PER_DEVICE {
            if mine.is_zero() {
                by_owner.remove(&owner);
            }
            return Ticket::Dropped(limit);
        }
        all.refusing += 1;
        mine.refusing += 1;
        let scope = if limit.ends_with("_per_device") {
            format!("{owner}")
        } else {
            "all devices".to_string()
        };
        let message = format!(
            "sshgw: too many connections for {scope} ({limit} = {value}); close some and try again"
        );
        Ticket::Refused(self.slot(owner, SlotKind::Refusal), message)
    }

    fn slot(self: &Arc<Self>, owner: Owner, kind: SlotKind) -> Slot {
        Slot {
            limits: self.clone(),
            owner,
            kind,
            preauth: AtomicBool::new(kind == SlotKind::Open),
        }
    }

    fn release(&self, owner: &Owner, kind: SlotKind, preauth: bool) {
        let release = |c: &mut Counts| {
            match kind {
                SlotKind::Open => c.open -= 1,
                SlotKind::Refusal => c.refusing -= 1,
            }
            if preauth {
                c.preauth -= 1;
            }
        };
        let mut state = self.state.lock().expect("limits lock poisoned");
        release(&mut state.all);
        if let Some(mine) = state.by_owner.get_mut(owner) {
            release(mine);
            if mine.is_zero() {
                state.by_owner.remove(owner);
            }
        }
    }

    fn logged_in(&self, owner: &Owner) {
        let mut state = self.state.lock().expect("limits lock poisoned");
        let State { all, by_owner } = &mut *state;
        all.preauth -= 1;
        if let Some(mine) = by_owner.get_mut(owner) {
            mine.preauth -= 1;
        }
    }

    #[cfg(test)]
    fn counts(&self, owner: &Owner) -> (usize, usize, usize) {
        let state = self.state.lock().expect("limits lock poisoned");
        let c = state.by_owner.get(owner).copied().unwrap_or_default();
        (c.open, c.preauth, c.refusing)
    }
}

impl Slot {
    /// The connection logged in: it no longer counts as pre-authentication.
    pub fn logged_in(&self) {
        if self.preauth.swap(false, Ordering::AcqRel) {
            self.limits.logged_in(&self.owner);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let preauth = self.preauth.load(Ordering::Acquire);
        self.limits.release(&self.owner, self.kind, preauth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<Limits> {
        Limits::new(LimitsConfig {
            max_connections: 10,
            max_connections_per_device: 3,
            max_preauth: 5,
            max_preauth_per_device: 2,
            ..LimitsConfig::default()
        })
    }

    fn device(id: &str) -> Owner {
        Owner::Device(id.into())
    }

    #[test]
    fn preauth_per_device_then_refusals_then_drops() {
        let l = limits();
        let a = device("a");
        let (s1, s2) = match (l.admit(a.clone()), l.admit(a.clone())) {
            (Ticket::Admitted(s1), Ticket::Admitted(s2)) => (s1, s2),
            _ => panic!("the first two are admitted"),
        };
        // Third pre-auth connection: refused with a message, twice, then dropped.
        let mut refusals = Vec::new();
        for _ in 0..REFUSALS_PER_DEVICE {
            match l.admit(a.clone()) {
                Ticket::Refused(slot, message) => {
                    assert!(message.contains("max_preauth_per_device = 2"), "{message}");
                    assert!(message.contains("device a"), "{message}");
                    refusals.push(slot);
                }
                _ => panic!("refused with a message"),
            }
        }
        assert!(matches!(
            l.admit(a.clone()),
            Ticket::Dropped("max_preauth_per_device")
        ));
        // Another device is not affected.
        assert!(matches!(l.admit(device("b")), Ticket::Admitted(_)));
        // Logging in frees the pre-auth place, not the connection.
        s1.logged_in();
        assert_eq!(l.counts(&a), (2, 1, 2));
        let s3 = match l.admit(a.clone()) {
            Ticket::Admitted(s) => s,
            _ => panic!("a pre-auth place is free again"),
        };
        s2.logged_in();
        s3.logged_in();
        // Three open: the per-device connection limit now.
        assert!(matches!(
            l.admit(a.clone()),
            Ticket::Dropped("max_connections_per_device")
        ));
        drop((s1, s2, s3, refusals));
        assert_eq!(l.counts(&a), (0, 0, 0));
    }

    #[test]
    fn global_preauth_limit_names_all_devices() {
        let l = limits();
        let mut held = Vec::new();
        for i in 0..5 {
            match l.admit(device(&format!("d{i}"))) {
                Ticket::Admitted(s) => held.push(s),
                _ => panic!("admitted"),
            }
        }
        match l.admit(device("late")) {
            Ticket::Refused(_, message) => {
                assert!(
                    message.contains("all devices (max_preauth = 5)"),
                    "{message}"
                )
            }
            _ => panic!("refused with a message"),
        }
    }
}
