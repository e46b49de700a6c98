//! What the relay reports about a running program (shell, exec, subsystem): its channel
//! record in the session log.

use std::sync::Arc;

use bytes::Bytes;

use super::pump::{ChannelExit, ChannelTap};
use crate::sessions::live::Tracker;

pub struct ProgramTap {
    pub tracker: Arc<Tracker>,
    pub channel: u32,
}

impl ChannelTap for ProgramTap {
    fn data(&self, _from_client: bool, _ext: Option<u32>, _data: &Bytes) {}

    fn closed(&self, exit: ChannelExit) {
        self.tracker
            .channel_closed(self.channel, exit.status, exit.signal.map(|(name, _)| name));
    }
}
