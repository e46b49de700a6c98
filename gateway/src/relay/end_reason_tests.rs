//! How a session ends, as the session log's `close_reason` and the message the user reads:
//! one table, each row produced by driving [`serve`] in-process over loopback TCP (a russh
//! client as the device, a russh server as the real server) and triggering the end the way
//! the daemon does (kill switch, state change, timeouts, refusals).

use std::{net::SocketAddr, sync::Arc};

use russh::{
    client,
    keys::{Algorithm, PrivateKey},
    server,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::{RelayContext, serve};
use crate::{
    config::Config,
    identity::devices::{Device, DeviceTable, User},
    intercept::{admission, listener::Intercepted},
    policy::model::{Action, Policy, PolicySet, SshSettings},
    sessions::{
        SessionRecord,
        health::ended_message,
        live::{KillReason, LiveSessions, Tracker},
        store::SessionStore,
    },
    state::{Expect, LiveState},
};

/// The real server: lets any certificate in and keeps each session's handle, so a test can
/// end it from the server side.
#[derive(Clone)]
struct Sshd(mpsc::UnboundedSender<server::Handle>);

impl server::Handler for Sshd {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<server::Auth, Self::Error> {
        Ok(server::Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut server::Session) -> Result<(), Self::Error> {
        let _ = self.0.send(session.handle());
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: russh::Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }
}

/// Starts the real server on loopback; its logged-in sessions arrive on the receiver.
async fn sshd() -> (SocketAddr, mpsc::UnboundedReceiver<server::Handle>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let config = Arc::new(server::Config {
        keys: vec![key],
        auth_rejection_time: std::time::Duration::ZERO,
        ..Default::default()
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (config, handler) = (config.clone(), Sshd(tx.clone()));
            tokio::spawn(async move {
                if let Ok(running) = server::run_stream(config, stream, handler).await {
                    let _ = running.await;
                }
            });
        }
    });
    (addr, rx)
}

/// The device's client: records the disconnect message the gateway sends.
struct DeviceClient(mpsc::UnboundedSender<String>);

impl client::Handler for DeviceClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        if let client::DisconnectReason::ReceivedDisconnect(info) = reason {
            let _ = self.0.send(info.message);
        }
        Ok(())
    }
}

const LAPTOP: &str = "100.96.0.7:40000";
const TABLET: &str = "100.96.0.8:40000";
const STRANGER: &str = "100.96.0.99:40000";

fn device(id: &str, address: &str) -> Device {
    Device {
        id: id.into(),
        addresses: vec![address.parse::<SocketAddr>().unwrap().ip()],
        interface: None,
        user: User {
            email: format!("{id}@example.com"),
            name: None,
            groups: vec![],
        },
        posture: vec![],
    }
}

/// A policy for one destination port of the real server (so each row picks its policy by
/// the port it connects to).
fn policy(id: &str, name: &str, port: u16, action: Action, ssh: SshSettings) -> Policy {
    Policy {
        id: id.into(),
        name: name.into(),
        precedence: i64::from(port),
        enabled: true,
        action,
        destinations: vec!["127.0.0.1".parse().unwrap()],
        ports: vec![port],
        identity: Default::default(),
        posture: vec![],
        ssh: SshSettings {
            usernames: vec!["root".into()],
            ..ssh
        },
    }
}

struct Gateway {
    _dir: tempfile::TempDir,
    ctx: Arc<RelayContext>,
    state: Arc<LiveState>,
    store: SessionStore,
    live: Arc<LiveSessions>,
}

/// A relay context as the daemon builds it, on a temporary state dir, without a datapath
/// and without a recording key; `limits` is the `[limits]` section's body.
fn gateway(limits: &str, policies: Vec<Policy>) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "state_dir = {:?}\n[datapath]\ninterfaces = [\"wg0\"]\n[limits]\n{limits}\n",
        dir.path()
    ))
    .unwrap();
    let devices = DeviceTable {
        devices: vec![device("laptop", LAPTOP), device("tablet", TABLET)],
    };
    let policies = PolicySet { policies };
    let state = Arc::new(LiveState::new(
        config.clone(),
        devices,
        policies,
        Default::default(),
    ));
    let live = Arc::new(LiveSessions::default());
    let store = SessionStore::open(&config.session_log_path()).unwrap();
    let ctx = RelayContext::for_tests(&config, &state, &store, &live);
    Gateway {
        _dir: dir,
        ctx,
        state,
        store,
        live,
    }
}

/// One intercepted connection being relayed: its session id, the relay task and, once
/// connected, the device's client.
struct Session {
    id: String,
    relay: tokio::task::JoinHandle<()>,
    messages: mpsc::UnboundedReceiver<String>,
    device: Option<client::Handle<DeviceClient>>,
}

impl Gateway {
    /// Intercepts a connection from `peer` to `dst` and relays it, as the daemon does.
    async fn intercept(&self, peer: &str, dst: SocketAddr) -> (Session, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let device = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        let id = admission::new_session_id();
        let admission = admission::admit(&self.state.snapshot(), &id, peer, dst, None);
        let conn = Intercepted {
            stream,
            peer,
            original_dst: dst,
        };
        let relay = tokio::spawn(serve(self.ctx.clone(), conn, id.clone(), admission, None));
        let (_, messages) = mpsc::unbounded_channel();
        let session = Session {
            id,
            relay,
            messages,
            device: None,
        };
        (session, device)
    }

    /// [`Gateway::intercept`] with a russh client that logs in as `login`.
    async fn login(&self, peer: &str, dst: SocketAddr, login: &str) -> Session {
        let (mut session, stream) = self.intercept(peer, dst).await;
        let (tx, messages) = mpsc::unbounded_channel();
        let config = Arc::new(client::Config::default());
        let mut device = client::connect_stream(config, stream, DeviceClient(tx))
            .await
            .unwrap();
        let _ = device.authenticate_none(login).await;
        session.messages = messages;
        session.device = Some(device);
        session
    }

    /// Waits for the relay to finish; the stored close reason and the message the device
    /// was sent, if any.
    async fn ended(&self, mut session: Session) -> (String, Option<String>) {
        (&mut session.relay).await.unwrap();
        if let Some(device) = session.device.take() {
            // The device's session loop ends once the gateway closed the connection.
            let _ = device.await;
        }
        assert!(self.store.sync());
        let record = self.store.get(&session.id).unwrap().unwrap();
        let message = session.messages.try_recv().ok();
        (record.close_reason.unwrap(), message)
    }
}

/// A port on loopback where nothing listens.
async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One way a session ends: (path, (close reason, message to the user)).
type Row = (&'static str, (String, Option<String>));

fn audit(port: u16) -> Policy {
    policy("audit", "Audit", port, Action::AuditSsh, Default::default())
}

/// Ends while logged in, and refusals, under an `audit` policy for a real server of its
/// own (it ends one of its sessions) and a `block` policy for `blocked`.
async fn ends_of_a_session(blocked: SocketAddr) -> Vec<Row> {
    let (server, mut server_sessions) = sshd().await;
    let block = policy(
        "block",
        "Block",
        blocked.port(),
        Action::Block,
        Default::default(),
    );
    let gw = gateway("", vec![audit(server.port()), block]);
    let mut rows = Vec::new();

    // The device logs out.
    let s = gw.login(LAPTOP, server, "root").await;
    let device = s.device.as_ref().unwrap();
    device
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await
        .unwrap();
    rows.push(("client", gw.ended(s).await));

    // The server ends the connection.
    while server_sessions.try_recv().is_ok() {}
    let s = gw.login(LAPTOP, server, "root").await;
    let upstream = server_sessions.recv().await.unwrap();
    let bye = upstream.disconnect(russh::Disconnect::ByApplication, "bye".into(), "en".into());
    bye.await.unwrap();
    rows.push(("server", gw.ended(s).await));

    // An administrator kills it (`POST /v1/sessions/{id}/kill`).
    let s = gw.login(LAPTOP, server, "root").await;
    assert!(gw.live.kill(&s.id, KillReason::Admin));
    rows.push(("admin kill", gw.ended(s).await));

    // The daemon stops, or restarts after an internal error (daemon.rs `kill_all` texts).
    for (reason, text) in [
        (KillReason::Shutdown, "sshgw: the gateway is shutting down"),
        (
            KillReason::Restart,
            "sshgw: the gateway hit an internal error and is restarting",
        ),
    ] {
        assert_eq!(reason.user_message(), text);
        let s = gw.login(LAPTOP, server, "root").await;
        assert_eq!(gw.live.kill_all(reason), 1);
        rows.push(("gateway shutdown", gw.ended(s).await));
    }

    // The session log cannot take its records (`on_log_failure = "refuse"`).
    let s = gw.login(LAPTOP, server, "root").await;
    (gw.live.unwritable_hook())(&s.id, &ended_message("disk I/O error"));
    rows.push(("session log failure", gw.ended(s).await));

    // Its device leaves the device table.
    let s = gw.login(TABLET, server, "root").await;
    let deleted = gw.state.delete_device("tablet", &Expect::Anything).await;
    assert!(deleted.is_ok());
    rows.push(("revoked", gw.ended(s).await));

    // Refusals: not enrolled, a blocking policy, a login the policy does not allow.
    for (path, peer, dst, login) in [
        ("not enrolled", STRANGER, server, "root"),
        ("blocked", LAPTOP, blocked, "root"),
        ("login refused", LAPTOP, server, "nobody"),
    ] {
        rows.push((path, gw.ended(gw.login(peer, dst, login).await).await));
    }
    rows
}

/// The server cannot be reached; a program's recording cannot be opened (no key) under
/// `on_recording_failure = "refuse"`.
async fn refused_by_the_relay(server: SocketAddr, unreachable: SocketAddr) -> Vec<Row> {
    let recorded = SshSettings {
        command_logging: true,
        ..Default::default()
    };
    let recorded = policy(
        "recorded",
        "Recorded",
        server.port(),
        Action::AuditSsh,
        recorded,
    );
    let gw = gateway("", vec![recorded, audit(unreachable.port())]);
    let s = gw.login(LAPTOP, unreachable, "root").await;
    let mut rows = vec![("server unreachable", gw.ended(s).await)];
    let s = gw.login(LAPTOP, server, "root").await;
    let channel = s.device.as_ref().unwrap().channel_open_session().await;
    let _ = channel.unwrap().exec(true, "uptime").await;
    rows.push(("recording failure", gw.ended(s).await));
    rows
}

/// A device over `[limits] max_connections_per_device`.
async fn over_a_limit(server: SocketAddr) -> Vec<Row> {
    let gw = gateway("max_connections_per_device = 1", vec![audit(server.port())]);
    let first = gw.login(LAPTOP, server, "root").await;
    let rows = vec![(
        "over a limit",
        gw.ended(gw.login(LAPTOP, server, "root").await).await,
    )];
    let device = first.device.as_ref().unwrap();
    device
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await
        .unwrap();
    gw.ended(first).await;
    rows
}

/// The policy's `max_duration` runs out.
async fn max_duration(server: SocketAddr) -> Vec<Row> {
    let short = SshSettings {
        max_duration: Some(std::time::Duration::from_secs(2)),
        ..Default::default()
    };
    let gw = gateway(
        "",
        vec![policy(
            "short",
            "Short",
            server.port(),
            Action::AuditSsh,
            short,
        )],
    );
    vec![(
        "max duration",
        gw.ended(gw.login(LAPTOP, server, "root").await).await,
    )]
}

/// The pre-auth grace (1 s here) runs out: before the banner, and before a login.
async fn preauth_grace(server: SocketAddr) -> Vec<Row> {
    let gw = gateway("preauth_grace_secs = 1", vec![audit(server.port())]);
    let (s, _silent) = gw.intercept(LAPTOP, server).await;
    let mut rows = vec![("no banner", gw.ended(s).await)];
    let (mut s, stream) = gw.intercept(LAPTOP, server).await;
    let (tx, messages) = mpsc::unbounded_channel();
    let device = client::connect_stream(Default::default(), stream, DeviceClient(tx)).await;
    (s.messages, s.device) = (messages, Some(device.unwrap()));
    // "sshgw: login took too long" is sent, but the socket is shut right after it: whether
    // it reaches the client is a race, so only the close reason is pinned.
    let (reason, _) = gw.ended(s).await;
    rows.push(("no login", (reason, None)));
    rows
}

/// Ends the relay never reaches: its task went away (the tracker is dropped), the daemon
/// died (the next start closes what it left open).
fn ends_outside_the_relay() -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let store = SessionStore::open(&path).unwrap();
    let live = Arc::new(LiveSessions::default());
    let record = |id: &str| {
        SessionRecord::new(
            id.into(),
            "a:1".into(),
            "b:22".into(),
            "audit_ssh".parse().unwrap(),
            1,
        )
    };
    drop(Tracker::open(
        record("dropped"),
        store.clone(),
        live.clone(),
    ));
    std::mem::forget(Tracker::open(record("crashed"), store.clone(), live));
    assert!(store.sync());
    drop(store);
    let store = SessionStore::open(&path).unwrap();
    let reason = |id| store.get(id).unwrap().unwrap().close_reason.unwrap();
    vec![
        ("tracker dropped", (reason("dropped"), None)),
        ("daemon died", (reason("crashed"), None)),
    ]
}

/// Today's close reasons and user messages, path by path.
fn expected(unreachable: SocketAddr) -> Vec<Row> {
    let told = |r: &str, m: &str| (r.to_string(), Some(m.to_string()));
    let refused = |m: &str| told(m, m);
    let silent = |r: &str| (r.to_string(), None);
    let log = "session ended: the gateway cannot write its session log (disk I/O error)";
    vec![
        ("client", silent("client")),
        (
            "server",
            told("server", "sshgw: the server closed the connection"),
        ),
        (
            "admin kill",
            told(
                "admin kill",
                "sshgw: session terminated by an administrator",
            ),
        ),
        (
            "gateway shutdown",
            told("gateway shutdown", "sshgw: the gateway is shutting down"),
        ),
        (
            "gateway shutdown",
            told(
                "gateway shutdown",
                "sshgw: the gateway hit an internal error and is restarting",
            ),
        ),
        (
            "session log failure",
            told(&format!("error: {log}"), &format!("sshgw: {log}")),
        ),
        (
            "revoked",
            told(
                "revoked",
                "sshgw: session ended: 100.96.0.8 is not an enrolled device",
            ),
        ),
        (
            "not enrolled",
            refused("sshgw: 100.96.0.99 is not an enrolled device"),
        ),
        (
            "blocked",
            refused("sshgw: blocked by policy \"Block\" (block)"),
        ),
        (
            "login refused",
            refused(
                "sshgw: login \"nobody\" is not allowed by policy \"Audit\" (audit); allowed: root",
            ),
        ),
        (
            "server unreachable",
            refused(&format!(
                "sshgw: cannot reach {unreachable}: connection refused"
            )),
        ),
        (
            "recording failure",
            refused(
                "sshgw: session refused: policy \"Recorded\" requires a recording, and it cannot be \
                 written (no recording key is configured ([recording] public_key_file or `sshgw \
                 recording set-key`))",
            ),
        ),
        (
            "over a limit",
            refused(
                "sshgw: too many connections for device laptop (max_connections_per_device = 1); \
                 close some and try again",
            ),
        ),
        (
            "max duration",
            told(
                "max duration",
                "sshgw: session ended: policy \"Short\" (short) allows at most 2s",
            ),
        ),
        (
            "no banner",
            silent("error: device sent no SSH banner in time"),
        ),
        (
            "no login",
            silent("error: no login within the pre-auth grace"),
        ),
        ("tracker dropped", silent("error: relay ended unexpectedly")),
        ("daemon died", silent("interrupted: sshgw stopped")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reasons_and_user_messages() {
    let (server, _) = sshd().await;
    let unreachable = closed_port().await;
    // The waits (max duration, pre-auth grace) run beside the rest.
    let (mut table, refused, limited, timed, grace) = tokio::join!(
        ends_of_a_session(unreachable),
        refused_by_the_relay(server, unreachable),
        over_a_limit(server),
        max_duration(server),
        preauth_grace(server),
    );
    table.extend(refused.into_iter().chain(limited).chain(timed).chain(grace));
    table.extend(ends_outside_the_relay());
    let expected = expected(unreachable);
    for (got, want) in table.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    assert_eq!(table.len(), expected.len());
}
