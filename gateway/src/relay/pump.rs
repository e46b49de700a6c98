//! Moves one channel's traffic between the device-side and server-side SSH channels.
//!
//! Each direction is a reader task that always drains its russh channel (an undrained
//! channel freezes the whole connection) into a bounded queue, and a writer task that
//! forwards with the peer's window as backpressure. Replies to channel requests that the
//! server sends back are handed to the waiting request callback in order.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig, client, server};
use tokio::sync::{mpsc, oneshot};

/// Messages buffered per direction beyond russh's own channel buffer (each at most one
/// SSH packet, 32 KiB): a receiver that stops reading stalls its connection only after
/// this much has piled up.
const QUEUE_MESSAGES: usize = 256;

/// Byte counters of one connection, both directions.
#[derive(Debug, Default)]
pub struct Traffic {
    pub from_client: AtomicU64,
    pub from_server: AtomicU64,
}

/// The server-side half of a relayed channel, used by request callbacks.
#[derive(Clone)]
pub struct ChannelLink {
    pub upstream: Arc<ChannelWriteHalf<client::Msg>>,
    replies: Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>,
}

impl ChannelLink {
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

/// Starts relaying between a device-side channel and a server-side channel.
pub fn start(
    down: russh::Channel<server::Msg>,
    up: russh::Channel<client::Msg>,
    down_handle: server::Handle,
    traffic: Arc<Traffic>,
) -> ChannelLink {
    let (down_read, down_write) = down.split();
    let (up_read, up_write) = up.split();
    let upstream = Arc::new(up_write);
    let replies: Arc<Mutex<VecDeque<oneshot::Sender<bool>>>> = Default::default();

    let (to_server, from_device) = mpsc::channel(QUEUE_MESSAGES);
    let (to_device, from_server) = mpsc::channel(QUEUE_MESSAGES);
    tokio::spawn(read_device(down_read, to_server, traffic.clone()));
    tokio::spawn(write_server(from_device, upstream.clone()));
    tokio::spawn(read_server(up_read, to_device, replies.clone(), traffic));
    tokio::spawn(write_device(from_server, down_write, down_handle));
    ChannelLink { upstream, replies }
}

async fn read_device(mut read: ChannelReadHalf, queue: mpsc::Sender<Event>, traffic: Arc<Traffic>) {
    while let Some(msg) = read.wait().await {
        let event = match msg {
            ChannelMsg::Data { data } => {
                traffic
                    .from_client
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Event::Data(data)
            }
            ChannelMsg::ExtendedData { data, ext } => {
                traffic
                    .from_client
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Event::Extended(ext, data)
            }
            ChannelMsg::Eof => Event::Eof,
            ChannelMsg::Close => Event::Close,
            // Requests are relayed by the handler callbacks, which must answer them.
            _ => continue,
        };
        let close = matches!(event, Event::Close);
        if queue.send(event).await.is_err() || close {
            return;
        }
    }
    let _ = queue.send(Event::Close).await;
}

async fn read_server(
    mut read: ChannelReadHalf,
    queue: mpsc::Sender<Event>,
    replies: Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>,
    traffic: Arc<Traffic>,
) {
    while let Some(msg) = read.wait().await {
        let event = match msg {
            ChannelMsg::Data { data } => {
                traffic
                    .from_server
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Event::Data(data)
            }
            ChannelMsg::ExtendedData { data, ext } => {
                traffic
                    .from_server
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
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
                let ok = matches!(reply, ChannelMsg::Success);
                if let Some(waiter) = replies.lock().expect("reply queue poisoned").pop_front() {
                    let _ = waiter.send(ok);
                }
                continue;
            }
            _ => continue,
        };
        let close = matches!(event, Event::Close);
        if queue.send(event).await.is_err() || close {
            break;
        }
    }
    // Wake any request callback still waiting: the channel is gone.
    replies.lock().expect("reply queue poisoned").clear();
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

async fn write_device(
    mut queue: mpsc::Receiver<Event>,
    down: ChannelWriteHalf<server::Msg>,
    handle: server::Handle,
) {
    while let Some(event) = queue.recv().await {
        let result = match event {
            Event::Data(data) => down.data_bytes(data).await,
            Event::Extended(ext, data) => down.extended_data_bytes(ext, data).await,
            Event::Eof => down.eof().await,
            Event::ExitStatus(code) => down.exit_status(code).await,
            Event::ExitSignal {
                signal,
                core_dumped,
                message,
                lang,
            } => handle
                .exit_signal_request(down.id(), signal, core_dumped, message, lang)
                .await
                .map_err(|_| russh::Error::SendError),
            Event::Close => {
                let _ = down.close().await;
                return;
            }
        };
        if result.is_err() {
            return;
        }
    }
}
