//! Flow control for relayed channels: the queues between the two legs and the window
//! credit handed back to each leg's peer.
//!
//! Both russh sessions run with [`russh::WindowRefill::OnRelease`]: a peer may send only
//! what its window allows, and the window reopens only for bytes the relay has passed on
//! (written to the other leg, or consumed by an auditor). Readers therefore drain their
//! russh channels at once into unbounded [`Lane`]s, which never blocks a session loop,
//! while the data held in a lane stays bounded by the window sshgw advertised
//! ([`super::WINDOW_SIZE`]). See docs/relay.md, "Flow control".

use std::sync::Arc;

use bytes::Bytes;
use russh::{ChannelWriteHalf, Sig, client, server};
use tokio::sync::mpsc;

use super::{credit::ChannelCredit, stall::LaneWatch};

/// Window credit is handed back in batches of at least this many bytes, or as soon as the
/// lane runs empty: far fewer window adjustments than one per packet, and never a peer
/// waiting for credit the relay holds back.
const RELEASE_BATCH: u32 = super::WINDOW_SIZE / 8;

/// Which leg a piece of data came from, and so whose window its credit reopens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Device,
    Server,
}

/// Bytes received from `origin` that reopen its window once the event carrying them is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub origin: Origin,
    pub bytes: u32,
}

impl Credit {
    pub fn new(origin: Origin, bytes: usize) -> Self {
        Credit {
            origin,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        }
    }
}

/// What travels from one leg's reader to the other leg's writer.
pub enum Event {
    Data {
        data: Bytes,
        /// Extended-data code (1 = stderr), `None` for plain data.
        ext: Option<u32>,
        credit: Option<Credit>,
    },
    /// Bytes consumed with nothing to write (an auditor kept them back).
    Release(Credit),
    Eof,
    ExitStatus(u32),
    ExitSignal {
        signal: Sig,
        core_dumped: bool,
        message: String,
        lang: String,
    },
    Close,
}

impl Event {
    fn queued_bytes(&self) -> u64 {
        match self {
            Event::Data { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    fn credit(&self) -> Option<Credit> {
        match self {
            Event::Data { credit, .. } => *credit,
            Event::Release(credit) => Some(*credit),
            _ => None,
        }
    }
}

/// One direction of a relayed channel: reader → writer, unbounded in messages, bounded in
/// bytes by the source's window.
#[derive(Clone)]
pub struct Lane {
    tx: mpsc::UnboundedSender<Event>,
    watch: Arc<LaneWatch>,
}

impl Lane {
    pub fn new(watch: Arc<LaneWatch>) -> (Lane, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Lane { tx, watch }, rx)
    }

    /// Queues `event`; false once the writer is gone (the event is dropped).
    pub fn push(&self, event: Event) -> bool {
        let bytes = event.queued_bytes();
        self.watch.queued(bytes);
        if self.tx.send(event).is_ok() {
            true
        } else {
            self.watch.done(bytes);
            false
        }
    }
}

/// The channels whose windows a writer reopens, with the credit it still owes each.
pub struct Releaser {
    pub device: Arc<ChannelWriteHalf<server::Msg>>,
    pub server: Arc<ChannelWriteHalf<client::Msg>>,
    pub device_credit: Arc<ChannelCredit>,
    pub server_credit: Arc<ChannelCredit>,
    pending_device: u32,
    pending_server: u32,
}

impl Releaser {
    pub fn new(
        device: Arc<ChannelWriteHalf<server::Msg>>,
        server: Arc<ChannelWriteHalf<client::Msg>>,
        device_credit: Arc<ChannelCredit>,
        server_credit: Arc<ChannelCredit>,
    ) -> Self {
        Releaser {
            device,
            server,
            device_credit,
            server_credit,
            pending_device: 0,
            pending_server: 0,
        }
    }

    fn add(&mut self, credit: Credit) {
        let pending = match credit.origin {
            Origin::Device => &mut self.pending_device,
            Origin::Server => &mut self.pending_server,
        };
        *pending = pending.saturating_add(credit.bytes);
    }

    /// Hands back what is owed to a leg once it reaches `at_least` bytes (0: anything).
    async fn flush(&mut self, at_least: u32) {
        let threshold = at_least.max(1);
        if self.pending_device >= threshold {
            let bytes = std::mem::take(&mut self.pending_device);
            self.device_credit.release(bytes);
            let _ = self.device.release_window(bytes).await;
        }
        if self.pending_server >= threshold {
            let bytes = std::mem::take(&mut self.pending_server);
            self.server_credit.release(bytes);
            let _ = self.server.release_window(bytes).await;
        }
    }
}

/// What a writer does after one event.
pub enum Step {
    Continue,
    Stop,
}

/// A lane's writer: puts one event on the destination leg.
pub trait Apply {
    fn apply(&mut self, event: Event) -> impl std::future::Future<Output = Step> + Send;
}

/// Runs a lane's writer: hands each event to `writer` (which puts it on the destination
/// leg), then reopens the source's window for it. Credit is batched, and everything owed is
/// handed back whenever the lane runs empty. Stops once `destination_gone` turns true: a
/// write waiting for the window of a channel that no longer exists would wait forever.
pub async fn drain(
    mut rx: mpsc::UnboundedReceiver<Event>,
    watch: Arc<LaneWatch>,
    mut releaser: Releaser,
    writer: &mut impl Apply,
    mut destination_gone: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let event = match rx.try_recv() {
            Ok(event) => event,
            Err(mpsc::error::TryRecvError::Empty) => {
                releaser.flush(0).await;
                match rx.recv().await {
                    Some(event) => event,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let (bytes, credit) = (event.queued_bytes(), event.credit());
        let step = tokio::select! {
            step = writer.apply(event) => step,
            Ok(_) = destination_gone.wait_for(|gone| *gone) => Step::Stop,
        };
        watch.done(bytes);
        if let Some(credit) = credit {
            releaser.add(credit);
        }
        releaser.flush(RELEASE_BATCH).await;
        if let Step::Stop = step {
            break;
        }
    }
    releaser.flush(0).await;
}
