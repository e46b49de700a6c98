//! How a relayed session ends: the one place that names the session log's close reasons
//! and what the gateway tells the user when it is the one ending the session.

use std::time::Duration;

use crate::sessions::live::KillReason;

/// How the session loop reports a device that closed TCP without a disconnect message:
/// an orderly close, a close with unread data in the socket (a reset), and a close met
/// while the gateway was still writing (its answering CLOSE, a window adjustment).
const SOCKET_CLOSED: &[&str] = &[
    "early eof",
    "Connection reset by peer (os error 104)",
    "Broken pipe (os error 32)",
];

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The device ended it.
    Client,
    /// The server closed its leg.
    Server,
    /// The policy's `max_duration` elapsed.
    MaxDuration {
        policy_name: String,
        policy_id: String,
        limit: Duration,
    },
    /// The live session was killed (see [`KillReason`]).
    Killed(KillReason),
    /// A device or policy change no longer allows it; the message says why.
    Revoked(String),
    /// The relay refused the connection or ended it itself (a refusal, a program it
    /// could not start, a failed recording): the message told to the user is also the
    /// close reason.
    Failed(String),
    /// A recording failed while unrecorded sessions are refused; the error says how. Its
    /// message is also the close reason.
    RecordingFailed(String),
    /// No login within the pre-auth grace.
    LoginTimeout,
    /// The device's banner did not come within the pre-auth grace.
    NoBanner,
    /// The device's SSH handshake failed.
    Handshake(String),
    /// The relay could not take a second handle on the device's socket.
    SocketDup(String),
    /// The device's SSH session ended with this error.
    Error(String),
}

impl EndReason {
    /// What the session log's `close_reason` says.
    pub fn close_reason(&self) -> String {
        match self {
            EndReason::Client => "client".into(),
            EndReason::Server => "server".into(),
            EndReason::MaxDuration { .. } => "max duration".into(),
            EndReason::Killed(KillReason::Admin) => "admin kill".into(),
            EndReason::Killed(KillReason::Shutdown | KillReason::Restart) => {
                "gateway shutdown".into()
            }
            // Ended by the gateway for a reason of its own (its log cannot be written).
            EndReason::Killed(kill @ KillReason::LogUnwritable(_)) => {
                let message = kill.user_message();
                format!(
                    "error: {}",
                    message.strip_prefix("sshgw: ").unwrap_or(&message)
                )
            }
            EndReason::Revoked(_) => "revoked".into(),
            EndReason::Failed(message) => message.clone(),
            EndReason::RecordingFailed(_) => self.user_message().unwrap_or_default(),
            EndReason::LoginTimeout => "error: no login within the pre-auth grace".into(),
            EndReason::NoBanner => "error: device sent no SSH banner in time".into(),
            EndReason::Handshake(e) => format!("error: device handshake failed: {e}"),
            EndReason::SocketDup(e) => format!("error: cannot duplicate the socket: {e}"),
            EndReason::Error(e) => format!("error: {e}"),
        }
    }

    /// What the gateway tells the user when it ends the session; `None` when it does
    /// not end it (the device, or an error on the device's connection, did).
    pub fn user_message(&self) -> Option<String> {
        match self {
            EndReason::Server => Some("sshgw: the server closed the connection".into()),
            EndReason::MaxDuration {
                policy_name,
                policy_id,
                limit,
            } => Some(format!(
                "sshgw: session ended: policy {policy_name:?} ({policy_id}) allows at most {}",
                crate::util::duration::format(*limit)
            )),
            EndReason::Killed(kill) => Some(kill.user_message()),
            EndReason::Revoked(message) | EndReason::Failed(message) => Some(message.clone()),
            EndReason::RecordingFailed(error) => Some(format!(
                "sshgw: session ended: its recording failed ({error})"
            )),
            EndReason::LoginTimeout => Some("sshgw: login took too long".into()),
            EndReason::Client
            | EndReason::NoBanner
            | EndReason::Handshake(_)
            | EndReason::SocketDup(_)
            | EndReason::Error(_) => None,
        }
    }

    /// The device closed (or reset) TCP without an SSH disconnect message.
    pub fn is_socket_closed(&self) -> bool {
        matches!(self, EndReason::Error(e) if SOCKET_CLOSED.contains(&e.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every close reason and message as the session log and the user have seen them.
    #[test]
    fn close_reasons_and_messages_keep_their_text() {
        let log_error = crate::sessions::health::ended_message("disk full");
        let cases: Vec<(EndReason, &str, Option<&str>)> = vec![
            (EndReason::Client, "client", None),
            (
                EndReason::Server,
                "server",
                Some("sshgw: the server closed the connection"),
            ),
            (
                EndReason::MaxDuration {
                    policy_name: "ops".into(),
                    policy_id: "p1".into(),
                    limit: Duration::from_secs(300),
                },
                "max duration",
                Some("sshgw: session ended: policy \"ops\" (p1) allows at most 5m"),
            ),
            (
                EndReason::Killed(KillReason::Admin),
                "admin kill",
                Some("sshgw: session terminated by an administrator"),
            ),
            (
                EndReason::Killed(KillReason::Shutdown),
                "gateway shutdown",
                Some("sshgw: the gateway is shutting down"),
            ),
            (
                EndReason::Killed(KillReason::Restart),
                "gateway shutdown",
                Some("sshgw: the gateway hit an internal error and is restarting"),
            ),
            (
                EndReason::Killed(KillReason::LogUnwritable(log_error.clone())),
                "error: session ended: the gateway cannot write its session log (disk full)",
                Some(log_error.as_str()),
            ),
            (
                EndReason::Revoked("sshgw: session ended: gone".into()),
                "revoked",
                Some("sshgw: session ended: gone"),
            ),
            (
                EndReason::Failed("sshgw: no policy allows this connection".into()),
                "sshgw: no policy allows this connection",
                Some("sshgw: no policy allows this connection"),
            ),
            (
                EndReason::RecordingFailed("disk full".into()),
                "sshgw: session ended: its recording failed (disk full)",
                Some("sshgw: session ended: its recording failed (disk full)"),
            ),
            (
                EndReason::LoginTimeout,
                "error: no login within the pre-auth grace",
                Some("sshgw: login took too long"),
            ),
            (
                EndReason::NoBanner,
                "error: device sent no SSH banner in time",
                None,
            ),
            (
                EndReason::Handshake("kex".into()),
                "error: device handshake failed: kex",
                None,
            ),
            (
                EndReason::SocketDup("EMFILE".into()),
                "error: cannot duplicate the socket: EMFILE",
                None,
            ),
            (
                EndReason::Error("early eof".into()),
                "error: early eof",
                None,
            ),
        ];
        for (reason, close, message) in cases {
            assert_eq!(reason.close_reason(), close, "{reason:?}");
            assert_eq!(reason.user_message().as_deref(), message, "{reason:?}");
        }
    }

    #[test]
    fn only_a_bare_socket_close_counts_as_one() {
        assert!(EndReason::Error("early eof".into()).is_socket_closed());
        assert!(
            EndReason::Error("Connection reset by peer (os error 104)".into()).is_socket_closed()
        );
        assert!(!EndReason::Handshake("early eof".into()).is_socket_closed());
        assert!(!EndReason::Error("Broken pipe".into()).is_socket_closed());
        assert!(EndReason::Error("Broken pipe (os error 32)".into()).is_socket_closed());
    }
}
