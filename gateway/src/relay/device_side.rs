//! The device-facing SSH server: russh's callbacks for one device connection. The device
//! is not asked for credentials (its identity comes from the tunnel address); everything it
//! does on the connection is relayed to the real server. Programs it starts are handled in
//! `program.rs`.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use russh::{
    ChannelId, ChannelOpenFailure, ChannelWriteHalf, Disconnect, Pty, Sig, client,
    server::{self, Auth, Msg, Session},
};

use super::{
    ConnectionInfo, EndReason, Permissions, RelayContext, ServerSlot,
    channel::{self, ChannelLink},
    server_side::{self, Bridge},
    tap::ProgramTap,
};
use crate::{
    identity::Identity,
    recording::{
        pty::pty_modes,
        writer::{ChannelKind, PtyMeta},
    },
};

/// Environment variables kept per channel for its records (a server that accepts any
/// number of them cannot make the records grow without end).
const MAX_ENV_PER_CHANNEL: usize = 64;

/// What the user sees (on stderr) the first time a connection asks for agent forwarding
/// that the policy does not allow.
const AGENT_REFUSED: &str =
    "sshgw: agent forwarding (-A) is not allowed to this server; no agent is forwarded\r\n";

/// Longest wait for the server's answer to a channel request before failing it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DeviceSide {
    pub(super) ctx: Arc<RelayContext>,
    pub(super) info: Arc<ConnectionInfo>,
    pub(super) bridge: Arc<Bridge>,
    /// This connection's place in the `[limits]` counts.
    slot: Arc<super::limits::Slot>,
    server: ServerSlot,
    /// Why the connection cannot be relayed; told to the user right after auth.
    failure: Option<String>,
    pub(super) channels: HashMap<ChannelId, ChannelLink<ProgramTap>>,
    /// The pty each channel asked for, for its recording.
    pub(super) ptys: HashMap<ChannelId, PtyMeta>,
    /// Channels whose program (shell, exec, subsystem) the server started.
    pub(super) programs: std::collections::HashSet<ChannelId>,
    /// Environment variables the server accepted per channel, for the program's records.
    pub(super) envs: HashMap<ChannelId, Vec<(String, String)>>,
    /// The Unix login, once authorized.
    pub(super) login: Option<String>,
    /// Whether a recording of this session was opened: the spool limit refuses new
    /// recorded sessions, never a further channel of one already recorded.
    pub(super) recorded: bool,
    /// Whether the user was told that agent forwarding is refused (once per connection).
    agent_refusal_told: bool,
    /// Whether this client gets `publickey`/`keyboard-interactive` instead of `none`.
    refuse_none: bool,
}

impl DeviceSide {
    pub(super) fn new(
        ctx: Arc<RelayContext>,
        info: Arc<ConnectionInfo>,
        bridge: Arc<Bridge>,
        slot: Arc<super::limits::Slot>,
        refusal: Option<String>,
        server: ServerSlot,
    ) -> Self {
        DeviceSide {
            ctx,
            info,
            bridge,
            slot,
            server,
            failure: refusal,
            channels: HashMap::new(),
            ptys: HashMap::new(),
            programs: Default::default(),
            recorded: false,
            envs: HashMap::new(),
            login: None,
            agent_refusal_told: false,
            refuse_none: false,
        }
    }

    /// Logs in to the real server as `login`. The device itself is always "accepted":
    /// a failure is explained to the user by a disconnect message right after.
    ///
    /// Callers box this future (and `bridge_channel`'s, and `prepare_program`'s): russh's
    /// session task embeds every handler future it awaits, so the space of a one-time
    /// login would otherwise stay reserved in every session for its whole life.
    async fn authorize(&mut self, login: &str) -> Auth {
        if self.server.get().is_some() || self.failure.is_some() {
            return Auth::Accept;
        }
        self.info.tracker.login_attempted(login);
        let (identity, permissions) = match self.login_permitted(login) {
            Ok(allowed) => allowed,
            Err(message) => {
                self.fail(message);
                return Auth::Accept;
            }
        };
        // Only now, with a login the policy allows, does the server see a connection: a
        // device cannot make the gateway hold server connections (and the servers'
        // MaxStartups and penalties) by opening TCP connections. Ends with this callback, so
        // a device that goes away cancels it.
        let mut conn = match server_side::connect(
            self.ctx.clone(),
            self.info.original_dst,
            self.bridge.clone(),
        )
        .await
        {
            Ok(conn) => conn,
            Err(e) => {
                self.fail(e.to_string());
                return Auth::Accept;
            }
        };
        match server_side::authenticate(
            &self.ctx,
            &mut conn,
            &identity,
            &permissions,
            login,
            &self.info.id,
        )
        .await
        {
            Ok(minted) => {
                tracing::info!(
                    session = %self.info.id,
                    email = %identity.email,
                    device = %identity.device_id,
                    peer = %self.info.peer,
                    orig_dst = %self.info.original_dst,
                    login,
                    policy = %permissions.policy.id,
                    principal = %identity.principal,
                    cert_serial = minted.serial,
                    upstream_host_key = %conn.host_key_fingerprint,
                    "logged in to the server"
                );
                self.info
                    .tracker
                    .logged_in(login, minted.serial, &conn.host_key_fingerprint);
                let _ = self.server.set(Arc::new(conn.handle));
                self.login = Some(login.to_string());
            }
            Err(e) => self.fail(e.to_string()),
        }
        Auth::Accept
    }

    /// Who logs in and under which permissions, or why the policy in force refuses `login`.
    fn login_permitted(&self, login: &str) -> Result<(Arc<Identity>, Permissions), String> {
        let (Some(identity), Some(permissions)) =
            (self.info.identity.clone(), self.info.permissions.get())
        else {
            return Err("sshgw: internal error: connection was not admitted".into());
        };
        if !permissions.login_allowed(login) {
            return Err(format!(
                "sshgw: login {login:?} is not allowed by policy {:?} ({}); allowed: {}",
                permissions.policy.name,
                permissions.policy.id,
                permissions.policy.ssh.usernames.join(", ")
            ));
        }
        Ok((identity, permissions))
    }

    fn fail(&mut self, message: String) {
        tracing::warn!(session = %self.info.id, peer = %self.info.peer, orig_dst = %self.info.original_dst, reason = %message, "relay refused");
        self.info.fail(EndReason::Failed(message.clone()));
        self.failure = Some(message);
    }

    /// Sends a channel request upstream and answers the device with the server's reply.
    /// Answering inside the callback keeps russh's per-channel reply flag correct.
    pub(super) async fn relay_request<F, Fut>(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        send: F,
    ) -> bool
    where
        F: FnOnce(Arc<ChannelWriteHalf<client::Msg>>) -> Fut,
        Fut: Future<Output = Result<(), russh::Error>>,
    {
        let ok = match self.channels.get(&channel) {
            Some(link) => {
                let reply = link.expect_reply();
                if send(link.upstream.clone()).await.is_err() {
                    link.forget_reply();
                    false
                } else {
                    match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
                        Ok(answer) => matches!(answer, Ok(true)),
                        Err(_) => {
                            // A late answer could be taken for the next request's: this
                            // channel's requests and replies are out of step for good.
                            tracing::warn!(session = %self.info.id, channel = %channel, "the server did not answer a channel request in time; closing the channel");
                            link.forget_reply();
                            let _ = link.upstream.close().await;
                            let _ = session.close(channel);
                            false
                        }
                    }
                }
            }
            None => false,
        };
        let _ = if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        };
        ok
    }

    /// Confirms a device channel once its server side opened (never before, so no data
    /// can be lost), and starts relaying between the two.
    async fn bridge_channel(
        &mut self,
        kind: channel::Kind,
        channel: russh::Channel<Msg>,
        opened: Result<russh::Channel<client::Msg>, russh::Error>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) {
        match opened {
            Ok(up) => {
                let id = channel.id();
                reply.accept().await;
                let link = channel::start(
                    kind,
                    &self.info.id,
                    channel,
                    up,
                    session.handle(),
                    self.bridge.traffic.clone(),
                );
                self.channels.insert(id, link);
                self.info.tracker.device_channel_opened(u32::from(id));
            }
            Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
    }

    /// Forgets channels that are over. russh reports a close only when the device closes
    /// first, so links are also pruned once their pump has finished.
    fn prune_closed(&mut self) {
        let closed: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, link)| link.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.forget(id);
        }
    }

    fn forget(&mut self, channel: ChannelId) {
        if self.channels.remove(&channel).is_some() {
            self.info.tracker.device_channel_closed(u32::from(channel));
        }
        self.ptys.remove(&channel);
        self.programs.remove(&channel);
        self.envs.remove(&channel);
    }

    /// Whether one more channel would break `[limits] max_channels_per_connection`.
    fn too_many_channels(&mut self, what: &str) -> bool {
        self.prune_closed();
        let max = self.ctx.limits.config().max_channels_per_connection;
        if self.channels.len() < max {
            return false;
        }
        crate::metrics::METRICS.limit_refused("max_channels_per_connection");
        tracing::warn!(session = %self.info.id, max, what, "refused a channel: max_channels_per_connection reached");
        true
    }

    fn link(&self, channel: ChannelId) -> Option<Arc<ChannelWriteHalf<client::Msg>>> {
        self.channels.get(&channel).map(|l| l.upstream.clone())
    }
}

/// Whether a client (by its identification string) must not be logged in with `none`:
/// PuTTY and the programs built on it (WinSCP, FileZilla) call such a login "trivial" (a
/// spoofing risk: `-no-trivial-auth` refuses it, and interactive plink pauses with "Access
/// granted. Press Return to begin session."); Dropbear's `DisableTrivialAuth` refuses it;
/// libssh before 0.11 is used by programs that ignore a `none` success (yafc).
pub(super) fn refuses_none(id: &[u8]) -> bool {
    let id = String::from_utf8_lossy(id);
    let software = id
        .strip_prefix("SSH-2.0-")
        .or_else(|| id.strip_prefix("SSH-1.99-"))
        .unwrap_or_default()
        .split(' ')
        .next()
        .unwrap_or_default();
    let trivial_checkers = ["PuTTY", "WinSCP", "FileZilla", "dropbear"];
    if trivial_checkers.iter().any(|p| software.starts_with(p)) {
        return true;
    }
    // "libssh_0.10.6", "libssh-0.6.3": minor versions before 11.
    let Some(version) = software
        .strip_prefix("libssh_")
        .or_else(|| software.strip_prefix("libssh-"))
    else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(0)), Some(Some(minor))) if minor < 11)
}

/// The methods offered to devices whose `none` is refused, in the order clients try them:
/// `publickey` (any key the client can sign with, from an agent or a key file), then
/// `keyboard-interactive` (accepted at once, no prompt).
pub(super) fn device_auth_methods() -> russh::MethodSet {
    russh::MethodSet::from(
        &[
            russh::MethodKind::PublicKey,
            russh::MethodKind::KeyboardInteractive,
        ][..],
    )
}

impl server::Handler for DeviceSide {
    type Error = russh::Error;

    fn client_identified(&mut self, id: &[u8]) {
        self.refuse_none = refuses_none(id);
        tracing::debug!(session = %self.info.id, client = %String::from_utf8_lossy(id), refuse_none = self.refuse_none, "device client identified");
    }

    /// `none` logs in clients that handle it (OpenSSH, whose BatchMode turns off every
    /// other method a keyless user has; asyncssh, paramiko, libssh2, libssh ≥ 0.11). It is
    /// refused for clients that take a `none` success for a "trivial" login or mishandle
    /// it (see [`refuses_none`]): immediately (`auth_rejection_time_initial`), listing the
    /// methods below, which they complete without asking their user for anything.
    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if self.refuse_none {
            return Ok(Auth::Reject {
                proceed_with_methods: Some(device_auth_methods()),
                partial_success: false,
            });
        }
        Ok(Box::pin(self.authorize(user)).await)
    }

    /// Not offered (it would make clients prompt), but a client that sends one anyway
    /// (paramiko with a dummy password) is let in; the password is discarded unread.
    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(Box::pin(self.authorize(user)).await)
    }

    /// Any key is welcome to be proven: the key is not an identity (that comes from the
    /// tunnel address), but a signature makes the login non-trivial for the client.
    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    /// Called once russh verified the client's signature with the offered key.
    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        tracing::debug!(session = %self.info.id, key = %key.public_key.fingerprint(russh::keys::HashAlg::Sha256), "device proved a key (not used as identity)");
        Ok(Box::pin(self.authorize(user)).await)
    }

    /// A user certificate the client proved it holds the key of; like a plain key, it
    /// only shows that the client signed (its CA and principals are not checked).
    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(Box::pin(self.authorize(user)).await)
    }

    /// Clients without a key end here: accepted at once, with no prompt and no text.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(Box::pin(self.authorize(user)).await)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.slot.logged_in();
        let _ = self.bridge.device.set(session.handle());
        self.info
            .authenticated
            .store(true, std::sync::atomic::Ordering::Release);
        self.info.logged_in.notify_one();
        if let Some(message) = self.failure.take() {
            session.disconnect(Disconnect::ByApplication, &message, "en")?;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: russh::Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(server) = self.server.get().cloned() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if self.too_many_channels("session") {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let opened = server.channel_open_session().await;
        if let Err(e) = &opened {
            tracing::warn!(session = %self.info.id, error = %e, "server refused a session channel");
        }
        Box::pin(self.bridge_channel(channel::Kind::Session, channel, opened, reply, session))
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: russh::Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let server = match self.server.get().cloned() {
            Some(s) if self.bridge.permissions.port_forwarding() => s,
            _ => {
                tracing::info!(session = %self.info.id, target = %format!("{host_to_connect}:{port_to_connect}"), "refused port forwarding (-L): disabled");
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
        };
        if self.too_many_channels("direct-tcpip") {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let opened = server
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await;
        Box::pin(self.bridge_channel(channel::Kind::Stream, channel, opened, reply, session)).await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: russh::Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: russh::Channel<Msg>,
        _socket_path: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.forget(channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.ptys.insert(
            channel,
            PtyMeta {
                term: term.to_string(),
                width: col_width,
                height: row_height,
                modes: pty_modes(modes),
            },
        );
        let (term, modes) = (term.to_string(), modes.to_vec());
        self.relay_request(channel, session, |up| async move {
            up.request_pty(
                true, &term, col_width, row_height, pix_width, pix_height, &modes,
            )
            .await
        })
        .await;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(session = %self.info.id, channel = %channel, "refused X11 forwarding (-X): always refused");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.ctx.config.env_denied(variable_name) {
            tracing::warn!(session = %self.info.id, channel = %channel, variable = variable_name, "refused an env request: [ssh] deny_env");
            session.channel_failure(channel)?;
            return Ok(());
        }
        let (k, v) = (variable_name.to_string(), variable_value.to_string());
        let accepted = self
            .relay_request(channel, session, |up| async move {
                up.set_env(true, k, v).await
            })
            .await;
        tracing::info!(session = %self.info.id, channel = %channel, variable = variable_name, accepted, "env");
        if accepted {
            let env = self.envs.entry(channel).or_default();
            if env.len() < MAX_ENV_PER_CHANNEL {
                env.push((variable_name.to_string(), variable_value.to_string()));
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(session = %self.info.id, channel = %channel, "shell");
        self.start_program(channel, ChannelKind::Shell, session, |up| async move {
            up.request_shell(true).await
        })
        .await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        tracing::info!(session = %self.info.id, channel = %channel, command = %command, "exec");
        let bytes = data.to_vec();
        self.start_program(
            channel,
            ChannelKind::Exec { command },
            session,
            |up| async move { up.exec(true, bytes).await },
        )
        .await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(session = %self.info.id, channel = %channel, subsystem = name, "subsystem");
        let subsystem = name.to_string();
        self.start_program(
            channel,
            ChannelKind::Subsystem {
                name: name.to_string(),
            },
            session,
            |up| async move { up.request_subsystem(true, subsystem).await },
        )
        .await;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(link) = self.channels.get(&channel) {
            let _ = link
                .upstream
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
            if let Some(tap) = link.tap() {
                tap.resize(col_width, row_height).await;
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(up) = self.link(channel) {
            let _ = up.signal(signal).await;
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.bridge.permissions.agent_forwarding() {
            tracing::info!(session = %self.info.id, "refused agent forwarding: disabled");
            // OpenSSH asks without wanting a reply and prints nothing on a refusal: one
            // line on the channel's stderr tells the user why `ssh-add -l` finds no agent.
            if !self.agent_refusal_told {
                self.agent_refusal_told = true;
                let _ = session.extended_data(channel, 1, AGENT_REFUSED.as_bytes().to_vec());
            }
            return Ok(false);
        }
        let Some(link) = self.channels.get(&channel) else {
            return Ok(false);
        };
        self.bridge
            .agent_requested
            .store(true, std::sync::atomic::Ordering::Release);
        let reply = link.expect_reply();
        if link.upstream.agent_forward(true).await.is_err() {
            return Ok(false);
        }
        Ok(matches!(
            tokio::time::timeout(REPLY_TIMEOUT, reply).await,
            Ok(Ok(true))
        ))
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let server = match self.server.get() {
            Some(s) if self.bridge.permissions.port_forwarding() => s,
            _ => {
                tracing::info!(session = %self.info.id, listen = %format!("{address}:{port}"), "refused remote forwarding (-R): disabled");
                return Ok(false);
            }
        };
        match server.tcpip_forward(address, *port).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match self.server.get() {
            Some(s) if self.bridge.permissions.port_forwarding() => {
                Ok(s.cancel_tcpip_forward(address, port).await.is_ok())
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refuses_none;

    #[test]
    fn none_is_refused_only_for_trivial_auth_checkers_and_old_libssh() {
        for id in [
            "SSH-2.0-PuTTY_Release_0.78",
            "SSH-2.0-PuTTY_Local:_Dec_4_2026",
            "SSH-2.0-WinSCP_release_6.3.5",
            "SSH-2.0-FileZilla_3.67.0",
            "SSH-2.0-dropbear_2022.83",
            "SSH-2.0-libssh_0.10.6",
            "SSH-2.0-libssh-0.6.3",
        ] {
            assert!(refuses_none(id.as_bytes()), "{id}");
        }
        for id in [
            "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10",
            "SSH-2.0-AsyncSSH_2.24.1",
            "SSH-2.0-paramiko_5.0.0",
            "SSH-2.0-libssh2_1.10.0",
            "SSH-2.0-libssh_0.12.0",
            "SSH-2.0-Go",
            "SSH-2.0-",
            "garbage",
        ] {
            assert!(!refuses_none(id.as_bytes()), "{id}");
        }
    }
}
