//! Moves one channel's traffic between the device-side and server-side SSH channels.
//!
//! Each direction is a reader task that always drains its russh channel (an undrained
//! channel freezes the whole connection) into a bounded queue, and a writer task that
//! forwards with the peer's window as backpressure. Replies to channel requests that the
//! server sends back are handed to the waiting request callback in order.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, OnceLock, atomic::Ordering},
};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig, client, server};
use tokio::sync::{mpsc, oneshot};

use super::audit::ProgramTap;
use crate::{recording::writer::signal_name, sessions::live::ByteCounters};

/// Messages buffered per direction beyond russh's own channel buffer (each at most one
/// SSH packet, 32 KiB): a receiver that stops reading stalls its connection only after
/// this much has piled up.
const QUEUE_MESSAGES: usize = 256;

/// How a channel's program ended, as the server reported it.
#[derive(Debug, Clone, Default)]
pub struct ChannelExit {
    pub status: Option<u32>,
    pub signal: Option<(String, bool)>,
}

/// Watches a channel once its program (shell, exec, subsystem) has started: the session
/// log and the recorder hang off this.
type TapSlot = Arc<OnceLock<Arc<ProgramTap>>>;

/// The server-side half of a relayed channel, used by request callbacks.
#[derive(Clone)]
pub struct ChannelLink {
    pub upstream: Arc<ChannelWriteHalf<client::Msg>>,
    replies: Replies,
    tap: TapSlot,
}

impl ChannelLink {
    /// Starts watching the channel (once; later calls are ignored).
    pub fn attach(&self, tap: Arc<ProgramTap>) {
        let _ = self.tap.set(tap);
    }

    pub fn tap(&self) -> Option<&Arc<ProgramTap>> {
        self.tap.get()
    }

    /// Registers interest in the reply to the request about to be sent upstream.
    pub fn expect_reply(&self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.replies
            .lock()
            .expect("reply queue poisoned")
            .push_back(tx);
        rx
    }
}

enum Event {
    Data(Bytes),
    Extended(u32, Bytes),
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

/// What kind of channel is relayed, which decides how its end is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A session channel: its exit status must reach the client (see [`write_device`]).
    Session,
    /// A forwarded TCP or agent channel: EOF is a half-close and passes through at once.
    Stream,
}

/// Starts relaying between a device-side channel and a server-side channel.
pub fn start(
    kind: Kind,
    down: russh::Channel<server::Msg>,
    up: russh::Channel<client::Msg>,
    down_handle: server::Handle,
    traffic: Arc<ByteCounters>,
) -> ChannelLink {
    let (down_read, down_write) = down.split();
    let (up_read, up_write) = up.split();
    let upstream = Arc::new(up_write);
    let replies: Replies = Default::default();
    let tap: TapSlot = Default::default();

    let (to_server, from_device) = mpsc::channel(QUEUE_MESSAGES);
    let (to_device, from_server) = mpsc::channel(QUEUE_MESSAGES);
    tokio::spawn(read_side(
        down_read,
        to_server,
        Some(to_device.clone()),
        traffic.clone(),
        tap.clone(),
        true,
        None,
    ));
    tokio::spawn(write_server(from_device, upstream.clone()));
    tokio::spawn(read_side(
        up_read,
        to_device,
        None,
        traffic,
        tap.clone(),
        false,
        Some(replies.clone()),
    ));
    tokio::spawn(write_device(
        kind,
        from_server,
        down_write,
        down_handle,
        tap.clone(),
    ));
    ChannelLink {
        upstream,
        replies,
        tap,
    }
}

type Replies = Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>;

enum Flow {
    Continue,
    Stop,
}

/// Passes one chunk of an SFTP/scp channel through its auditor. The lock is held while
/// the results are queued, so what goes to the client (server data, injected denials)
/// keeps the order the auditor decided.
async fn audited(
    transfer: &tokio::sync::Mutex<super::audit::Transfer>,
    tap: &ProgramTap,
    from_client: bool,
    data: bytes::Bytes,
    queue: &mpsc::Sender<Event>,
    back: Option<&mpsc::Sender<Event>>,
) -> Flow {
    let mut auditor = transfer.lock().await;
    let result = if from_client {
        auditor.client_data(data)
    } else {
        auditor.server_data(data)
    };
    for chunk in result.forward {
        if queue.send(Event::Data(chunk)).await.is_err() {
            return Flow::Stop;
        }
    }
    if let Some(back) = back
        && !result.reply.is_empty()
    {
        let _ = back.send(Event::Data(result.reply.into())).await;
    }
    drop(auditor);
    tap.file_events(result.events);
    match result.close {
        None => Flow::Continue,
        Some(reason) => {
            tracing::warn!(session = %tap.info.id, channel = tap.channel, reason = %reason, "closing the file-transfer channel");
            let _ = queue.send(Event::Close).await;
            if let Some(back) = back {
                let _ = back.send(Event::Close).await;
            }
            Flow::Stop
        }
    }
}

/// Drains one side's channel into the queue towards the other side. Replies to requests
/// (only the server sends them) go straight to the waiting callback.
async fn read_side(
    mut read: ChannelReadHalf,
    queue: mpsc::Sender<Event>,
    // Toward the side this task reads from: where an auditor's replies go.
    back: Option<mpsc::Sender<Event>>,
    traffic: Arc<ByteCounters>,
    tap: TapSlot,
    from_client: bool,
    replies: Option<Replies>,
) {
    let counter = if from_client {
        &traffic.from_client
    } else {
        &traffic.from_server
    };
    while let Some(msg) = read.wait().await {
        let event = match msg {
            ChannelMsg::Data { data } => {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(tap) = tap.get() {
                    tap.data(from_client, None, &data).await;
                    if let Some(transfer) = &tap.transfer {
                        match audited(transfer, tap, from_client, data, &queue, back.as_ref()).await
                        {
                            Flow::Continue => continue,
                            Flow::Stop => break,
                        }
                    }
                }
                Event::Data(data)
            }
            ChannelMsg::ExtendedData { data, ext } => {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(tap) = tap.get() {
                    tap.data(from_client, Some(ext), &data).await;
                }
                Event::Extended(ext, data)
            }
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
                let waiter = replies
                    .as_ref()
                    .and_then(|r| r.lock().expect("reply queue poisoned").pop_front());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(matches!(reply, ChannelMsg::Success));
                }
                continue;
            }
            // Device-side requests are relayed by the handler callbacks, which must answer them.
            _ => continue,
        };
        let close = matches!(event, Event::Close);
        if queue.send(event).await.is_err() || close {
            break;
        }
    }
    if let Some(replies) = replies {
        // Wake any request callback still waiting: the channel is gone.
        replies.lock().expect("reply queue poisoned").clear();
    }
    let _ = queue.send(Event::Close).await;
}

async fn write_server(mut queue: mpsc::Receiver<Event>, up: Arc<ChannelWriteHalf<client::Msg>>) {
    while let Some(event) = queue.recv().await {
        let result = match event {
            Event::Data(data) => up.data_bytes(data).await,
            Event::Extended(ext, data) => up.extended_data_bytes(ext, data).await,
            Event::Eof => up.eof().await,
            Event::Close => {
                let _ = up.close().await;
                return;
            }
            // Only servers send exit status; a client sending one is ignored.
            Event::ExitStatus(_) | Event::ExitSignal { .. } => Ok(()),
        };
        if result.is_err() {
            return;
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
async fn write_device(
    kind: Kind,
    mut queue: mpsc::Receiver<Event>,
    down: ChannelWriteHalf<server::Msg>,
    handle: server::Handle,
    tap: TapSlot,
) {
    let mut exit = ChannelExit::default();
    let mut eof_held = false;
    while let Some(event) = queue.recv().await {
        let result = match event {
            Event::Data(data) => down.data_bytes(data).await,
            Event::Extended(ext, data) => down.extended_data_bytes(ext, data).await,
            Event::Eof if kind == Kind::Session => {
                eof_held = true;
                Ok(())
            }
            Event::Eof => down.eof().await,
            Event::ExitStatus(code) => {
                exit.status = Some(code);
                let sent = down.exit_status(code).await;
                if std::mem::take(&mut eof_held) {
                    let _ = down.eof().await;
                }
                sent
            }
            Event::ExitSignal {
                signal,
                core_dumped,
                message,
                lang,
            } => {
                exit.signal = Some((signal_name(&signal), core_dumped));
                let sent = handle
                    .exit_signal_request(down.id(), signal, core_dumped, message, lang)
                    .await
                    .map_err(|_| russh::Error::SendError);
                if std::mem::take(&mut eof_held) {
                    let _ = down.eof().await;
                }
                sent
            }
            Event::Close => {
                if eof_held {
                    let _ = down.eof().await;
                }
                let _ = down.close().await;
                break;
            }
        };
        if result.is_err() {
            break;
        }
    }
    if let Some(tap) = tap.get() {
        tap.closed(exit).await;
    }
}
