//! Moves one channel's traffic between the device-side and server-side SSH channels.
//!
//! Each direction is a reader task that drains its russh channel at once into a [`Lane`],
//! and a writer task that forwards with the destination's window as backpressure and then
//! reopens the source's window for what it passed on (see [`super::flow`]). No reader ever
//! waits for the other leg, so neither session loop can be blocked by the other, while the
//! data in flight per direction stays bounded by the window sshgw advertises. Replies to
//! channel requests that the server sends back go straight to the waiting request callback.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client, server};
use tokio::sync::oneshot;

use super::credit::ChannelCredit;
use super::flow::{self, Apply, Credit, Event, Lane, Origin, Releaser, Step};
use super::stall::LaneWatch;
use crate::{
    file_audit::{FileEvent, Filtered},
    recording::writer::signal_name,
    sessions::live::ByteCounters,
};

/// How a channel's program ended, as the server reported it.
#[derive(Debug, Clone, Default)]
pub struct ChannelExit {
    pub status: Option<u32>,
    pub signal: Option<(String, bool)>,
}

/// What watches a channel's program (shell, exec, subsystem): the session log, the
/// recorder and the file-transfer auditor ([`super::tap`] implements it). The pump knows
/// it only through this.
pub trait Tap: Send + Sync + 'static {
    /// The SFTP/scp auditor that a file-transfer channel's data passes through.
    type Filter: Filter;

    /// Channel data as relayed (`ext` = extended-data code, 1 for stderr).
    fn data(
        &self,
        from_client: bool,
        ext: Option<u32>,
        data: &Bytes,
    ) -> impl Future<Output = ()> + Send;

    /// The auditor of an SFTP/scp channel; both directions go through it, one at a time.
    fn filter(&self) -> Option<&tokio::sync::Mutex<Self::Filter>>;

    /// File operations the auditor completed.
    fn file_events(&self, events: Vec<FileEvent>);

    /// The server reported how the program ended (exit status or signal); called before
    /// the device is told. The channel itself closes later ([`Tap::closed`]).
    fn exited(&self, exit: &ChannelExit);

    /// The channel closed: `exit` is how its program ended.
    fn closed(&self, exit: ChannelExit) -> impl Future<Output = ()> + Send;

    /// The session, for log lines.
    fn session(&self) -> &str;

    /// The channel number, for log lines.
    fn channel(&self) -> u32;
}

/// A file-transfer auditor: what to forward, what to answer and whether to close, for each
/// chunk of a channel's data.
pub trait Filter: Send {
    fn client_data(&mut self, data: Bytes) -> Filtered;
    fn server_data(&mut self, data: Bytes) -> Filtered;
}

/// Watches a channel while its program (shell, exec, subsystem) is requested or running:
/// the session log, the recorder and the file-transfer auditor hang off this. Attached
/// before the request goes upstream, detached again if the server refuses it.
struct TapSlot<T>(Arc<RwLock<Option<Arc<T>>>>);

impl<T> Clone for TapSlot<T> {
    fn clone(&self) -> Self {
        TapSlot(self.0.clone())
    }
}

impl<T> Default for TapSlot<T> {
    fn default() -> Self {
        TapSlot(Default::default())
    }
}

impl<T> TapSlot<T> {
    fn get(&self) -> Option<Arc<T>> {
        self.0.read().expect("tap slot poisoned").clone()
    }
}

type Replies = Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>;

/// The server-side half of a relayed channel, used by request callbacks.
pub struct ChannelLink<T> {
    pub upstream: Arc<ChannelWriteHalf<client::Msg>>,
    replies: Replies,
    tap: TapSlot<T>,
    /// Set once the channel's last message went to the device: the channel is over,
    /// whichever side closed it first.
    closed: Arc<AtomicBool>,
}

impl<T> Clone for ChannelLink<T> {
    fn clone(&self) -> Self {
        ChannelLink {
            upstream: self.upstream.clone(),
            replies: self.replies.clone(),
            tap: self.tap.clone(),
            closed: self.closed.clone(),
        }
    }
}

impl<T> ChannelLink<T> {
    /// Starts watching the channel for a program about to be requested.
    pub fn attach(&self, tap: Arc<T>) {
        *self.tap.0.write().expect("tap slot poisoned") = Some(tap);
    }

    /// Stops watching (the program was refused): nothing more is recorded or audited.
    pub fn detach(&self) -> Option<Arc<T>> {
        self.tap.0.write().expect("tap slot poisoned").take()
    }

    pub fn tap(&self) -> Option<Arc<T>> {
        self.tap.get()
    }

    /// Registers interest in the reply to the request about to be sent upstream. Requests
    /// of a connection are relayed one at a time, so at most one reply is awaited.
    pub fn expect_reply(&self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut replies = self.replies.lock().expect("reply queue poisoned");
        replies.clear();
        replies.push_back(tx);
        rx
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Gives up on the awaited reply (the request could not be sent, or went unanswered).
    pub fn forget_reply(&self) {
        self.replies.lock().expect("reply queue poisoned").clear();
    }
}

/// What kind of channel is relayed, which decides how its end is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A session channel: its exit status must reach the client (see [`write_device`]).
    Session,
    /// A forwarded TCP or agent channel: EOF is a half-close and passes through at once.
    Stream,
}

/// The two legs of a channel as the tasks share them.
struct Legs {
    device: Arc<ChannelWriteHalf<server::Msg>>,
    server: Arc<ChannelWriteHalf<client::Msg>>,
    device_credit: Arc<ChannelCredit>,
    server_credit: Arc<ChannelCredit>,
}

impl Legs {
    fn releaser(&self) -> Releaser {
        Releaser::new(
            self.device.clone(),
            self.server.clone(),
            self.device_credit.clone(),
            self.server_credit.clone(),
        )
    }
}

/// Starts relaying between a device-side channel and a server-side channel of session
/// `session`.
pub fn start<T: Tap>(
    kind: Kind,
    session: &str,
    down: russh::Channel<server::Msg>,
    up: russh::Channel<client::Msg>,
    down_handle: server::Handle,
    traffic: Arc<ByteCounters>,
) -> ChannelLink<T> {
    let shared = Shared {
        kind,
        session: session.to_string(),
        channel: u32::from(down.id()),
        traffic,
        tap: Default::default(),
    };
    let (down_read, down_write) = down.split();
    let (up_read, up_write) = up.split();
    let legs = Legs {
        device: Arc::new(down_write),
        server: Arc::new(up_write),
        device_credit: Default::default(),
        server_credit: Default::default(),
    };
    let replies: Replies = Default::default();
    let closed: Arc<AtomicBool> = Default::default();
    let to_server_watch = shared.watch("to_server", legs.server.clone(), &legs.device_credit);
    let to_device_watch = shared.watch("to_device", legs.device.clone(), &legs.server_credit);
    let (to_server, from_device) = Lane::new(to_server_watch.clone());
    let (to_device, from_server) = Lane::new(to_device_watch.clone());
    let (device_gone, device_gone_rx) = tokio::sync::watch::channel(false);
    let (server_gone, server_gone_rx) = tokio::sync::watch::channel(false);
    let device_reader = shared.reader(
        Origin::Device,
        (to_server.clone(), to_device.clone()),
        &legs.device_credit,
        None,
        device_gone,
    );
    let server_reader = shared.reader(
        Origin::Server,
        (to_device, to_server),
        &legs.server_credit,
        Some(replies.clone()),
        server_gone,
    );
    tokio::spawn(read_side(down_read, device_reader));
    tokio::spawn(read_side(up_read, server_reader));
    let upstream = legs.server.clone();
    let releaser = legs.releaser();
    tokio::spawn(write_server(
        from_device,
        to_server_watch,
        releaser,
        server_gone_rx,
    ));
    let tap = shared.tap;
    let device_end = (tap.clone(), closed.clone(), device_gone_rx);
    tokio::spawn(write_device(
        kind,
        from_server,
        to_device_watch,
        legs,
        down_handle,
        device_end,
    ));
    ChannelLink {
        upstream,
        replies,
        tap,
        closed,
    }
}

/// What both legs' tasks of one channel share.
struct Shared<T> {
    kind: Kind,
    session: String,
    channel: u32,
    traffic: Arc<ByteCounters>,
    tap: TapSlot<T>,
}

impl<T> Shared<T> {
    /// Registers the lane toward `destination` (named `direction`) with the stall watchdog;
    /// `source` is the credit of the leg it reads from.
    fn watch(
        &self,
        direction: &'static str,
        destination: Arc<dyn super::stall::SendWindow>,
        source: &Arc<ChannelCredit>,
    ) -> Arc<LaneWatch> {
        LaneWatch::register(
            self.session.clone(),
            self.channel,
            direction,
            destination,
            source.clone(),
        )
    }

    /// The reader of the `origin` leg, feeding `lanes` (toward the other leg, back toward
    /// this one); only the server's reader takes the replies to channel requests.
    fn reader(
        &self,
        origin: Origin,
        (forward, back): (Lane, Lane),
        credit: &Arc<ChannelCredit>,
        replies: Option<Replies>,
        gone: tokio::sync::watch::Sender<bool>,
    ) -> Reader<T> {
        Reader {
            origin,
            forward,
            back,
            session_channel: self.kind == Kind::Session,
            program_requested: false,
            orphan_data_logged: AtomicBool::new(false),
            unsolicited_logged: AtomicBool::new(false),
            credit: credit.clone(),
            traffic: self.traffic.clone(),
            tap: self.tap.clone(),
            replies,
            session: self.session.clone(),
            channel: self.channel,
            gone,
        }
    }
}

/// One leg's reader: where its channel's events go.
struct Reader<T> {
    origin: Origin,
    /// Toward the other leg.
    forward: Lane,
    /// Toward this leg (an auditor's replies to it).
    back: Lane,
    /// A session channel: the device's data goes only to a program that was requested.
    session_channel: bool,
    /// The device asked for a program on this channel (in message order: the request
    /// reaches this reader before any data sent after it).
    program_requested: bool,
    /// Logged once: the device sent data with no program to take it.
    orphan_data_logged: AtomicBool,
    /// Logged once: the server sent a reply nobody asked for.
    unsolicited_logged: AtomicBool,
    credit: Arc<ChannelCredit>,
    traffic: Arc<ByteCounters>,
    tap: TapSlot<T>,
    replies: Option<Replies>,
    session: String,
    channel: u32,
    /// Turned true when this leg's channel is gone, for the writer toward this leg.
    gone: tokio::sync::watch::Sender<bool>,
}

enum Flow {
    Continue,
    Stop,
}

impl<T: Tap> Reader<T> {
    fn is_device(&self) -> bool {
        self.origin == Origin::Device
    }

    /// Counts received channel data; a peer that sends beyond its window is cut off
    /// (its data is never buffered beyond what sshgw advertised).
    fn within_window(&self, len: usize) -> bool {
        let counter = if self.is_device() {
            &self.traffic.from_client
        } else {
            &self.traffic.from_server
        };
        counter.fetch_add(len as u64, Ordering::Relaxed);
        if self.credit.receive(len) {
            return true;
        }
        if self.credit.first_violation() {
            tracing::warn!(
                session = %self.session,
                channel = self.channel,
                peer = if self.is_device() { "device" } else { "server" },
                outstanding = self.credit.outstanding(),
                window = super::WINDOW_SIZE,
                "peer sent more than its channel window allows (protocol violation); closing the channel"
            );
            crate::metrics::METRICS
                .window_violations
                .fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    async fn data(&self, ext: Option<u32>, data: Bytes) -> Flow {
        if !self.within_window(data.len()) {
            self.forward.push(Event::Close);
            self.back.push(Event::Close);
            return Flow::Stop;
        }
        let credit = Credit::new(self.origin, data.len());
        // The device's data counts only after its program request (in message order); the
        // server's follows whatever program is attached.
        let before_program = self.is_device() && self.session_channel && !self.program_requested;
        let tap = self.tap.get().filter(|_| !before_program);
        match &tap {
            Some(tap) => {
                tap.data(self.is_device(), ext, &data).await;
                if ext.is_none()
                    && let Some(transfer) = tap.filter()
                {
                    return self.audited(transfer, tap, data).await;
                }
            }
            None if self.session_channel && self.is_device() => {
                // No program was requested yet, or it was refused: sshd would buffer this
                // for the next program, which must never get bytes that were not recorded
                // and audited as its own.
                self.log_orphan_data(data.len());
                self.forward.push(Event::Release(credit));
                return Flow::Continue;
            }
            None => {}
        }
        self.forward.push(Event::Data {
            data,
            ext,
            credit: Some(credit),
        });
        Flow::Continue
    }

    fn log_orphan_data(&self, len: usize) {
        if !self.orphan_data_logged.swap(true, Ordering::AcqRel) {
            tracing::info!(session = %self.session, channel = self.channel, bytes = len, "discarding data the device sent on a channel with no program running");
        }
    }

    /// Passes one chunk of an SFTP/scp channel through its auditor. The lock is held while
    /// the results are queued, so what goes to the client (server data, injected denials)
    /// keeps the order the auditor decided. The chunk's window credit goes with the last
    /// thing written because of it, so a client whose requests are refused cannot pile up
    /// replies faster than it reads them.
    async fn audited(
        &self,
        transfer: &tokio::sync::Mutex<T::Filter>,
        tap: &T,
        data: Bytes,
    ) -> Flow {
        let mut credit = Some(Credit::new(self.origin, data.len()));
        let mut auditor = transfer.lock().await;
        let result = if self.is_device() {
            auditor.client_data(data)
        } else {
            auditor.server_data(data)
        };
        let replies = !result.reply.is_empty();
        let count = result.forward.len();
        for (i, chunk) in result.forward.into_iter().enumerate() {
            let last = i + 1 == count && !replies;
            let credit = if last { credit.take() } else { None };
            self.forward.push(Event::Data {
                data: chunk,
                ext: None,
                credit,
            });
        }
        if replies {
            self.back.push(Event::Data {
                data: result.reply.into(),
                ext: None,
                credit: credit.take(),
            });
        }
        if let Some(credit) = credit {
            self.forward.push(Event::Release(credit));
        }
        drop(auditor);
        tap.file_events(result.events);
        match result.close {
            None => Flow::Continue,
            Some(reason) => {
                tracing::warn!(session = %tap.session(), channel = tap.channel(), reason = %reason, "closing the file-transfer channel");
                self.forward.push(Event::Close);
                self.back.push(Event::Close);
                Flow::Stop
            }
        }
    }

    /// A server reply goes to the one request awaiting it; a reply nobody awaits is a
    /// protocol violation by the server, ignored (it must never answer a later request).
    fn reply(&self, success: bool) {
        let waiter = self
            .replies
            .as_ref()
            .and_then(|r| r.lock().expect("reply queue poisoned").pop_front());
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(success);
            }
            None if !self.unsolicited_logged.swap(true, Ordering::AcqRel) => {
                tracing::warn!(session = %self.session, channel = self.channel, success, "the server sent a channel reply nobody asked for (ignored)");
            }
            None => {}
        }
    }
}

/// Drains one leg's channel into the lane toward the other leg, at once: the russh session
/// loop of this leg never waits for the other leg. Replies to requests (only the server
/// sends them) go straight to the waiting callback.
async fn read_side<T: Tap>(mut read: ChannelReadHalf, mut reader: Reader<T>) {
    // True when the relay stopped reading by its own decision (an auditor or a window
    // violation closes the channel): the channel itself is not gone yet, and the writer
    // toward this leg must still deliver the close.
    let mut stopped = false;
    while let Some(msg) = read.wait().await {
        let event = match msg {
            ChannelMsg::Data { data } => match reader.data(None, data).await {
                Flow::Continue => continue,
                Flow::Stop => {
                    stopped = true;
                    break;
                }
            },
            ChannelMsg::ExtendedData { data, ext } => match reader.data(Some(ext), data).await {
                Flow::Continue => continue,
                Flow::Stop => {
                    stopped = true;
                    break;
                }
            },
            ChannelMsg::Eof => Event::Eof,
            ChannelMsg::Close => Event::Close,
            ChannelMsg::ExitStatus { exit_status } => Event::ExitStatus(exit_status),
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => Event::ExitSignal {
                signal: signal_name,
                core_dumped,
                message: error_message,
                lang: lang_tag,
            },
            reply @ (ChannelMsg::Success | ChannelMsg::Failure) => {
                reader.reply(matches!(reply, ChannelMsg::Success));
                continue;
            }
            ChannelMsg::RequestShell { .. }
            | ChannelMsg::Exec { .. }
            | ChannelMsg::RequestSubsystem { .. } => {
                reader.program_requested = true;
                continue;
            }
            // Device-side requests are relayed by the handler callbacks, which must answer them.
            _ => continue,
        };
        let close = matches!(event, Event::Close);
        if !reader.forward.push(event) || close {
            break;
        }
    }
    if let Some(replies) = &reader.replies {
        // Wake any request callback still waiting: the channel is gone.
        replies.lock().expect("reply queue poisoned").clear();
    }
    if !stopped {
        reader.gone.send_replace(true);
    }
    reader.forward.push(Event::Close);
}

/// Writes the device's side of a channel to the server.
async fn write_server(
    queue: tokio::sync::mpsc::UnboundedReceiver<Event>,
    watch: Arc<LaneWatch>,
    releaser: Releaser,
    server_gone: tokio::sync::watch::Receiver<bool>,
) {
    let mut writer = ServerWriter {
        up: releaser.server.clone(),
    };
    flow::drain(queue, watch, releaser, &mut writer, server_gone).await;
}

struct ServerWriter {
    up: Arc<ChannelWriteHalf<client::Msg>>,
}

impl Apply for ServerWriter {
    async fn apply(&mut self, event: Event) -> Step {
        let result = match event {
            Event::Data {
                data, ext: None, ..
            } => self.up.data_bytes(data).await,
            Event::Data {
                data,
                ext: Some(ext),
                ..
            } => self.up.extended_data_bytes(ext, data).await,
            Event::Eof => self.up.eof().await,
            Event::Close => {
                let _ = self.up.close().await;
                return Step::Stop;
            }
            // Only servers send exit status; a client sending one is ignored.
            Event::ExitStatus(_) | Event::ExitSignal { .. } | Event::Release(_) => Ok(()),
        };
        match result {
            Ok(()) => Step::Continue,
            Err(_) => Step::Stop,
        }
    }
}

/// Writes the server's side of a channel to the device.
///
/// On session channels the server's EOF is held back until its exit status, exit signal
/// or close arrives, and then sent after the exit status. An OpenSSH client whose stdin is
/// already at EOF (a multiplexing master always is) answers EOF with CLOSE at once; russh
/// then forgets the channel and would drop an exit status that follows, turning exit 3
/// into 255. RFC 4254 allows exit-status before EOF.
async fn write_device<T: Tap>(
    kind: Kind,
    queue: tokio::sync::mpsc::UnboundedReceiver<Event>,
    watch: Arc<LaneWatch>,
    legs: Legs,
    handle: server::Handle,
    (tap, closed, device_gone): (
        TapSlot<T>,
        Arc<AtomicBool>,
        tokio::sync::watch::Receiver<bool>,
    ),
) {
    let releaser = legs.releaser();
    let mut writer = DeviceWriter {
        kind,
        down: legs.device,
        handle,
        exit: ChannelExit::default(),
        eof_held: false,
        tap,
        program_ended: false,
        close_pending: false,
    };
    flow::drain(queue, watch, releaser, &mut writer, device_gone).await;
    closed.store(true, Ordering::Release);
    // Outside the drain, which cancels a write once the device is gone: the channel's
    // record and recording are complete before the device learns of the end, so a client
    // that answers CLOSE by closing TCP at once (Dropbear) finds its channel ended.
    writer.end_program().await;
    if writer.close_pending {
        let _ = writer.down.close().await;
    }
}

struct DeviceWriter<T> {
    kind: Kind,
    down: Arc<ChannelWriteHalf<server::Msg>>,
    handle: server::Handle,
    exit: ChannelExit,
    eof_held: bool,
    tap: TapSlot<T>,
    /// Whether the tap has been told how the program ended.
    program_ended: bool,
    /// The server closed the channel: the device is sent CLOSE once the tap has been told.
    close_pending: bool,
}

impl<T: Tap> Apply for DeviceWriter<T> {
    async fn apply(&mut self, event: Event) -> Step {
        let result = match event {
            Event::Data {
                data, ext: None, ..
            } => self.down.data_bytes(data).await,
            Event::Data {
                data,
                ext: Some(ext),
                ..
            } => self.down.extended_data_bytes(ext, data).await,
            Event::Release(_) => Ok(()),
            Event::Eof if self.kind == Kind::Session => {
                self.eof_held = true;
                Ok(())
            }
            Event::Eof => self.down.eof().await,
            Event::ExitStatus(code) => {
                self.exit.status = Some(code);
                self.program_exited();
                let sent = self.down.exit_status(code).await;
                self.release_eof().await;
                sent
            }
            Event::ExitSignal {
                signal,
                core_dumped,
                message,
                lang,
            } => {
                self.exit.signal = Some((signal_name(&signal), core_dumped));
                self.program_exited();
                let sent = self
                    .handle
                    .exit_signal_request(self.down.id(), signal, core_dumped, message, lang)
                    .await
                    .map_err(|_| russh::Error::SendError);
                self.release_eof().await;
                sent
            }
            Event::Close => {
                self.release_eof().await;
                self.close_pending = true;
                return Step::Stop;
            }
        };
        match result {
            Ok(()) => Step::Continue,
            Err(_) => Step::Stop,
        }
    }
}

impl<T: Tap> DeviceWriter<T> {
    /// Tells the tap, once, how the channel's program ended: it closes the channel's
    /// record and finishes its recording and file audit.
    async fn end_program(&mut self) {
        if std::mem::replace(&mut self.program_ended, true) {
            return;
        }
        if let Some(tap) = self.tap.get() {
            tap.closed(self.exit.clone()).await;
        }
    }

    /// Notes the program's exit before the device hears of it: a client that closes TCP as
    /// soon as it has the exit status must find its program ended when the session closes.
    fn program_exited(&self) {
        if let Some(tap) = self.tap.get() {
            tap.exited(&self.exit);
        }
    }

    /// Sends the EOF held back for an exit status, if any.
    async fn release_eof(&mut self) {
        if std::mem::take(&mut self.eof_held) {
            let _ = self.down.eof().await;
        }
    }
}
