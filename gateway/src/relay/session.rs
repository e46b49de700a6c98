//! One relayed connection from start to end: open (limits, policy, session record),
//! handshake with the device, supervise until something ends it, teardown.

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use russh::server::{self, RunningSession};
use tokio::{net::TcpStream, time::Instant};

use super::{
    ConnectionInfo, Permissions, RelayContext, ServerSlot, SharedPermissions,
    device_side::DeviceSide, end::EndReason, limits, server_side::Bridge,
};
use crate::{
    intercept::admission::{Admission, Outcome, Readmission},
    intercept::listener::Intercepted,
    policy::model::Action,
    sessions::{SessionRecord, live::Tracker, now_micros},
};

/// A connection the relay took on, before its SSH handshake.
struct Opened {
    info: Arc<ConnectionInfo>,
    bridge: Arc<Bridge>,
    server: ServerSlot,
    config: Arc<server::Config>,
    handler: DeviceSide,
    stream: TcpStream,
}

/// The device's SSH session once its handshake began.
struct Running {
    session: RunningSession<DeviceSide>,
    /// A second handle on the device's socket, to close it when the session cannot be
    /// told anything (still in key exchange).
    socket: OwnedFd,
    started: Instant,
}

/// Relays one intercepted connection until either side ends it.
pub async fn serve(
    ctx: Arc<RelayContext>,
    conn: Intercepted,
    session_id: String,
    admission: Admission,
    ingress: Option<String>,
) {
    let Some(opened) = open(&ctx, conn, session_id, admission, ingress) else {
        return;
    };
    let (info, bridge, server) = (
        opened.info.clone(),
        opened.bridge.clone(),
        opened.server.clone(),
    );
    let grace = Duration::from_secs(ctx.limits.config().preauth_grace_secs);
    let Some(running) = handshake(opened, grace).await else {
        return;
    };
    let reason = supervise(&ctx, &info, &bridge, running, grace).await;
    teardown(&server, &info, reason).await;
}

/// Counts the connection against `[limits]`, judges it, and opens its session record.
/// `None` when it is dropped at once or its host certificate cannot be made.
fn open(
    ctx: &Arc<RelayContext>,
    conn: Intercepted,
    session_id: String,
    admission: Admission,
    ingress: Option<String>,
) -> Option<Opened> {
    let owner = match &admission.identity {
        Some(identity) => limits::Owner::Device(identity.device_id.clone()),
        None => limits::Owner::Address(conn.peer.ip()),
    };
    let (slot, over_limit) = match ctx.limits.admit(owner) {
        limits::Ticket::Admitted(slot) => (slot, None),
        limits::Ticket::Refused(slot, message) => (slot, Some(message)),
        limits::Ticket::Dropped(limit) => {
            dropped_over_limit(&session_id, conn.peer, limit);
            return None;
        }
    };
    let (permissions, refusal, policy_id) = judge(ctx, admission.outcome, over_limit);
    let identity = admission.identity;
    let record = SessionRecord {
        email: identity.as_ref().map(|i| i.email.clone()),
        device_id: identity.as_ref().map(|i| i.device_id.clone()),
        policy_id,
        policy_name: admission.policy_name,
        ..SessionRecord::new(
            session_id.clone(),
            conn.peer.to_string(),
            conn.original_dst.to_string(),
            if permissions.is_some() {
                Action::AuditSsh
            } else {
                Action::Block
            },
            now_micros(),
        )
    };
    let tracker = Arc::new(Tracker::open(record, ctx.store.clone(), ctx.live.clone()));
    let info = Arc::new(ConnectionInfo {
        id: session_id,
        peer: conn.peer,
        original_dst: conn.original_dst,
        identity,
        ingress,
        authenticated: AtomicBool::new(false),
        logged_in: tokio::sync::Notify::new(),
        permissions: SharedPermissions::new(permissions),
        tracker,
        failure: std::sync::Mutex::new(refusal.clone().map(EndReason::Failed)),
        aborted: Default::default(),
        ended_by_gateway: Default::default(),
    });
    prepare(ctx, info, conn.stream, Arc::new(slot), refusal)
}

/// What the connection may do: the permissions it is relayed with, or the refusal told
/// to the user (a `[limits]` refusal wins), and the deciding policy's id.
fn judge(
    ctx: &RelayContext,
    outcome: Outcome,
    over_limit: Option<String>,
) -> (Option<Permissions>, Option<String>, Option<String>) {
    match (outcome, over_limit) {
        (_, Some(message)) => (None, Some(message), None),
        (Outcome::Relay { policy }, None) => {
            let id = policy.id.clone();
            (Some(Permissions::new(policy, &ctx.config)), None, Some(id))
        }
        (Outcome::Refuse { message, policy_id }, None) => (None, Some(message), policy_id),
    }
}

/// The device leg's server config and handler for an opened connection.
fn prepare(
    ctx: &Arc<RelayContext>,
    info: Arc<ConnectionInfo>,
    stream: TcpStream,
    slot: Arc<limits::Slot>,
    refusal: Option<String>,
) -> Option<Opened> {
    let bridge = Arc::new(Bridge {
        device: Default::default(),
        permissions: info.permissions.clone(),
        agent_requested: AtomicBool::new(false),
        traffic: info.tracker.bytes(),
        server_closed: Default::default(),
        session: info.id.clone(),
    });
    let config = match ctx.server_config(info.original_dst.ip()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(session = %info.id, error = %format!("{e:#}"), "cannot prepare the host certificate");
            return None;
        }
    };
    let server: ServerSlot = Default::default();
    let handler = DeviceSide::new(
        ctx.clone(),
        info.clone(),
        bridge.clone(),
        slot,
        refusal,
        server.clone(),
    );
    Some(Opened {
        info,
        bridge,
        server,
        config,
        handler,
        stream,
    })
}

/// Starts the device's SSH session; its banner must come within `grace`. `None` (the
/// session closed) when it does not, or the handshake fails.
async fn handshake(opened: Opened, grace: Duration) -> Option<Running> {
    let Opened {
        info,
        config,
        handler,
        stream,
        ..
    } = opened;
    let started = Instant::now();
    // russh runs the session in a task of its own; a duplicate of the socket lets the relay
    // close it even when the session cannot be told anything (still in key exchange).
    let socket = match std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            finish(&info, EndReason::SocketDup(e.to_string()));
            return None;
        }
    };
    match tokio::time::timeout(grace, server::run_stream(config, stream, handler)).await {
        Ok(Ok(session)) => Some(Running {
            session,
            socket,
            started,
        }),
        Ok(Err(e)) => {
            finish(&info, EndReason::Handshake(e.to_string()));
            None
        }
        Err(_) => {
            finish(&info, EndReason::NoBanner);
            None
        }
    }
}

/// Waits until the device, the server or the gateway ends the session, ends the device
/// leg with the gateway's message when it is the gateway, and says why it ended.
async fn supervise(
    ctx: &Arc<RelayContext>,
    info: &Arc<ConnectionInfo>,
    bridge: &Bridge,
    running: Running,
    grace: Duration,
) -> EndReason {
    let Running {
        session,
        socket,
        started,
    } = running;
    let device = session.handle();
    let login_deadline = login_deadline(info.clone(), started + grace, socket);
    let expiry = expiry(max_duration(info));
    let revoked = revocation(ctx.clone(), info.clone());
    let kill = info.tracker.kill_switch();
    tokio::pin!(session, login_deadline, expiry, revoked);
    let reason = tokio::select! {
        result = &mut session => return match result {
            Ok(()) => EndReason::Client,
            Err(e) => EndReason::Error(e.to_string()),
        },
        socket = &mut login_deadline => {
            tracing::info!(session = %info.id, peer = %info.peer, grace_secs = grace.as_secs(), "no login within the pre-auth grace; closing");
            close_before_login(&device, &socket).await;
            let _ = session.as_mut().await;
            return EndReason::LoginTimeout;
        }
        _ = bridge.server_closed.notified() => EndReason::Server,
        reason = &mut expiry => {
            tracing::info!(session = %info.id, "maximum session duration reached");
            reason
        }
        () = info.aborted.notified() => info
            .failure
            .lock()
            .expect("failure lock poisoned")
            .clone()
            .unwrap_or(EndReason::Failed(String::new())),
        message = &mut revoked => {
            tracing::info!(session = %info.id, reason = %message, "session revoked by a device or policy change");
            EndReason::Revoked(message)
        }
        () = kill.notified() => {
            let kill = info.tracker.kill_reason();
            tracing::info!(session = %info.id, reason = %kill.user_message(), "session killed");
            EndReason::Killed(kill)
        }
    };
    end_device_leg(info, &device, &reason).await;
    let _ = session.as_mut().await;
    reason
}

/// Resolves at `deadline` unless the device logged in by then, with `socket` (the
/// duplicate of the device's socket) to close. At login the duplicate is let go, so a
/// logged-in session holds two descriptors, not three.
async fn login_deadline(info: Arc<ConnectionInfo>, deadline: Instant, socket: OwnedFd) -> OwnedFd {
    // Banner, key exchange and login must all fit in the grace: a client stuck in key
    // exchange cannot be told anything, so its connection is simply closed.
    tokio::select! {
        () = tokio::time::sleep_until(deadline) => {}
        () = info.logged_in.notified() => {}
    }
    if info.authenticated.load(Ordering::Acquire) {
        drop(socket);
        return std::future::pending().await;
    }
    socket
}

/// How the admitting policy's `max_duration` would end the session, if it has one.
fn max_duration(info: &ConnectionInfo) -> Option<EndReason> {
    info.permissions.get().and_then(|p| {
        p.policy
            .ssh
            .max_duration
            .map(|limit| EndReason::MaxDuration {
                policy_name: p.policy.name.clone(),
                policy_id: p.policy.id.clone(),
                limit,
            })
    })
}

/// Resolves with `deadline` once its time has passed; never without one.
async fn expiry(deadline: Option<EndReason>) -> EndReason {
    match deadline {
        Some(reason @ EndReason::MaxDuration { limit, .. }) => {
            tokio::time::sleep(limit).await;
            reason
        }
        _ => std::future::pending().await,
    }
}

/// Tells a device that did not log in in time, if it still listens, and closes its socket.
async fn close_before_login(device: &server::Handle, socket: &OwnedFd) {
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        device.disconnect(
            russh::Disconnect::ByApplication,
            EndReason::LoginTimeout.user_message().unwrap_or_default(),
            "en".into(),
        ),
    )
    .await;
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(socket),
        nix::sys::socket::Shutdown::Both,
    );
}

/// Ends the device leg with the gateway's message for `reason`, noted for the recordings.
async fn end_device_leg(info: &ConnectionInfo, device: &server::Handle, reason: &EndReason) {
    let message = reason.user_message().unwrap_or_default();
    *info.ended_by_gateway.lock().expect("end reason poisoned") = Some(message.clone());
    let _ = device
        .disconnect(russh::Disconnect::ByApplication, message, "en".into())
        .await;
}

/// Closes the server leg too, whoever ended the session, and closes the session record.
async fn teardown(server: &ServerSlot, info: &ConnectionInfo, reason: EndReason) {
    if let Some(server) = server.get() {
        let _ = server
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    finish(info, reason);
}

/// Judges a relayed session again whenever the device table or policies change. Returns
/// the message to end it with once they no longer allow it (its device is gone, or the
/// decision became a block); until then, keeps the session's permissions current, so each
/// new channel follows the policy in force.
async fn revocation(ctx: Arc<RelayContext>, info: Arc<ConnectionInfo>) -> String {
    let (Some(identity), Some(_)) = (info.identity.clone(), info.permissions.get()) else {
        // Refused connections end on their own.
        return std::future::pending().await;
    };
    let mut changes = ctx.snapshots.clone();
    loop {
        let snapshot = changes.borrow_and_update().clone();
        let verdict = crate::intercept::admission::readmit(
            &snapshot,
            &identity,
            info.peer,
            info.original_dst,
            info.ingress.as_deref(),
        );
        match verdict {
            Readmission::End(message) => return message,
            Readmission::Unchanged => {}
            Readmission::Keep(policy) => {
                let current = info.permissions.get().map(|p| p.policy);
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &policy)) {
                    tracing::info!(session = %info.id, policy = %policy.id, "session now follows the current policy");
                    info.permissions.set(Permissions::new(policy, &ctx.config));
                }
            }
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// A connection over a limit and over the refusal budget: closed at once, with no session
/// record (a flood must not fill the log). Logged at most once a second.
fn dropped_over_limit(session: &str, peer: SocketAddr, limit: &'static str) {
    static LAST_LOG_SECS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = now_micros() / 1_000_000;
    if LAST_LOG_SECS.swap(now, Ordering::AcqRel) != now {
        tracing::warn!(session, %peer, limit, "connection closed: over a [limits] limit (logged at most once a second)");
    }
}

/// Closes the session record (a refusal's reason wins over how the socket ended) and
/// emits it as the structured `session closed` event.
fn finish(info: &ConnectionInfo, reason: EndReason) {
    let failure = info.failure.lock().expect("failure lock poisoned").clone();
    // PuTTY, Dropbear, paramiko and libssh end a session by closing (or resetting) the
    // TCP connection after their channels closed, without SSH_MSG_DISCONNECT: that is the
    // client's normal exit. Only the same while the device has a channel open is an error.
    let reason = if reason.is_socket_closed() && !info.tracker.has_open_device_channel() {
        EndReason::Client
    } else {
        reason
    };
    let record = info
        .tracker
        .close(&failure.unwrap_or(reason).close_reason());
    crate::metrics::METRICS.session_closed(record.bytes_from_client, record.bytes_from_server);
    tracing::info!(
        session = %record.id,
        email = record.email.as_deref().unwrap_or("-"),
        device = record.device_id.as_deref().unwrap_or("-"),
        source = %record.source,
        orig_dst = %record.destination,
        login = record.login.as_deref().unwrap_or("-"),
        policy = record.policy_id.as_deref().unwrap_or("-"),
        decision = %record.decision,
        duration_ms = record.duration_ms.unwrap_or_default(),
        bytes_from_client = record.bytes_from_client,
        bytes_from_server = record.bytes_from_server,
        close_reason = record.close_reason.as_deref().unwrap_or("-"),
        cert_serial = record.cert_serial.as_deref().unwrap_or("-"),
        upstream_host_key = record.upstream_host_key.as_deref().unwrap_or("-"),
        channels = record.channels.len(),
        "session closed"
    );
}
