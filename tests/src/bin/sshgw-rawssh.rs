//! A deliberately unusual SSH client for attack tests: it does, over a real SSH connection
//! (russh), what OpenSSH's own tools never do, so the tests can show the gateway holds.
//!
//! `sshgw-rawssh HOST USER SCENARIO [ARGS...]`, run from the lab's device namespace; it
//! authenticates with `none` (the gateway asks for nothing) and prints one line per step.
//!
//! Scenarios:
//! * `second-program FIRST PATH`: on one session channel, request subsystem FIRST (expected to
//!   fail), then subsystem `sftp`, then upload 5 bytes to PATH over raw SFTP v3. Prints
//!   `subsystem FIRST: ok|failed`, `subsystem sftp: ok|failed`, `open: handle|status N`,
//!   `write: status N`, `close: status N`, or `channel closed` if the gateway ended it.
//! * `sftp-dup-id PATH1 PATH2`: subsystem `sftp`; OPEN PATH1 and OPEN PATH2 for writing with
//!   the same request id 7 before reading either reply, then write to the first handle.
//!   Prints each reply, or `channel closed`.
//! * `data-first COMMAND`: send data on a session channel before any program request, then
//!   exec COMMAND; prints its output and exit status.
//! * `exec-nul COMMAND`: exec COMMAND with each `\0` in it sent as a NUL byte (OpenSSH
//!   cannot send one); prints `exec: ok|failed` and the exit status, if any.
//! * `stuck-in-kex SECS`: over plain TCP, send an SSH banner and then nothing, as a client
//!   stuck in key exchange would; prints `closed by the gateway` when the connection ends
//!   within SECS, else `still open`. (USER is ignored.)
//! * `sftp-many-handles FILE COUNT UPLOAD`: subsystem `sftp`; opens FILE for reading COUNT
//!   times, pipelined, each time spelled as a different path of about 4,000 bytes
//!   (`DIR/././…/NAME`), and keeps every handle open. Prints `opened N` (the handles
//!   received), or `channel closed`. Then prints `waiting`, reads one line from stdin, and
//!   uploads 5 bytes to UPLOAD as `second-program` does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use russh::{ChannelMsg, client};
use sshgw_tests::load::client::LoadClient as Client;

/// Every step is bounded: the tests decide on outcomes, never wait forever.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The next message of the channel, bounded; `None` once it closed.
async fn next(ch: &mut russh::Channel<client::Msg>) -> Result<Option<ChannelMsg>> {
    tokio::time::timeout(STEP_TIMEOUT, ch.wait())
        .await
        .context("no answer from the gateway in time")
}

/// Waits for the reply to the request just sent: true for success. Anything else that
/// arrives first is printed (`early: ...`), never silently dropped.
async fn reply(ch: &mut russh::Channel<client::Msg>) -> Result<Option<bool>> {
    loop {
        match next(ch).await? {
            Some(ChannelMsg::Success) => return Ok(Some(true)),
            Some(ChannelMsg::Failure) => return Ok(Some(false)),
            Some(ChannelMsg::Close) | None => return Ok(None),
            Some(ChannelMsg::Data { data }) => {
                println!("early: {:?}", String::from_utf8_lossy(&data))
            }
            Some(other) => println!("early: {other:?}"),
        }
    }
}

fn word(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "ok",
        Some(false) => "failed",
        None => "channel closed",
    }
}

/// SFTP v3 packets (draft-ietf-secsh-filexfer-02).
mod sftp {
    pub const INIT: u8 = 1;
    pub const OPEN: u8 = 3;
    pub const READ_ONLY: u32 = 0x01;
    pub const CLOSE: u8 = 4;
    pub const WRITE: u8 = 6;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const WRITE_CREAT_TRUNC: u32 = 0x02 | 0x08 | 0x10;

    pub fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    pub fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(body);
        p
    }

    pub fn open(id: u32, path: &str) -> Vec<u8> {
        open_with(id, path, WRITE_CREAT_TRUNC)
    }

    pub fn open_with(id: u32, path: &str, pflags: u32) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        string(&mut b, path.as_bytes());
        b.extend_from_slice(&pflags.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes()); // no attributes
        packet(OPEN, &b)
    }

    pub fn write(id: u32, handle: &[u8], data: &[u8]) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        string(&mut b, handle);
        b.extend_from_slice(&0u64.to_be_bytes());
        string(&mut b, data);
        packet(WRITE, &b)
    }

    pub fn close(id: u32, handle: &[u8]) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        string(&mut b, handle);
        packet(CLOSE, &b)
    }
}

/// Reads SFTP packets off a channel's data.
struct SftpReader {
    buf: Vec<u8>,
}

impl SftpReader {
    /// The next packet `(type, id, rest)`, or None when the channel closed.
    async fn next(
        &mut self,
        ch: &mut russh::Channel<client::Msg>,
    ) -> Result<Option<(u8, u32, Vec<u8>)>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into()?) as usize;
                if self.buf.len() >= 4 + len {
                    let body: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    let id = u32::from_be_bytes(body[1..5].try_into()?);
                    return Ok(Some((body[0], id, body[5..].to_vec())));
                }
            }
            match next(ch).await? {
                Some(ChannelMsg::Data { data }) => self.buf.extend_from_slice(&data),
                Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => return Ok(None),
                Some(_) => {}
            }
        }
    }
}

/// Describes a reply: `handle` or `status N`.
fn describe(kind: u8, rest: &[u8]) -> String {
    match kind {
        sftp::HANDLE => "handle".to_owned(),
        sftp::STATUS if rest.len() >= 4 => {
            format!(
                "status {}",
                u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]])
            )
        }
        other => format!("type {other}"),
    }
}

/// The handle in a HANDLE reply's body.
fn handle_of(rest: &[u8]) -> Vec<u8> {
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    rest[4..4 + len].to_vec()
}

/// SFTP INIT/VERSION on a channel whose subsystem is running.
async fn sftp_init(ch: &mut russh::Channel<client::Msg>, reader: &mut SftpReader) -> Result<bool> {
    ch.data_bytes(sftp::packet(sftp::INIT, &3u32.to_be_bytes()))
        .await?;
    Ok(reader.next(ch).await?.is_some())
}

/// Starts the `sftp` subsystem and SFTP on the channel; `None` (after printing `channel
/// closed`) if the gateway closed it.
async fn start_sftp(ch: &mut russh::Channel<client::Msg>) -> Result<Option<SftpReader>> {
    ch.request_subsystem(true, "sftp").await?;
    if reply(ch).await? != Some(true) {
        bail!("the sftp subsystem was refused");
    }
    let mut reader = SftpReader { buf: Vec::new() };
    if !sftp_init(ch, &mut reader).await? {
        println!("channel closed");
        return Ok(None);
    }
    Ok(Some(reader))
}

async fn second_program(
    ch: &mut russh::Channel<client::Msg>,
    first: &str,
    path: &str,
) -> Result<()> {
    ch.request_subsystem(true, first).await?;
    println!("subsystem {first}: {}", word(reply(ch).await?));
    ch.request_subsystem(true, "sftp").await?;
    let second = reply(ch).await?;
    println!("subsystem sftp: {}", word(second));
    if second != Some(true) {
        return Ok(());
    }
    let mut reader = SftpReader { buf: Vec::new() };
    if !sftp_init(ch, &mut reader).await? {
        println!("channel closed");
        return Ok(());
    }
    upload(ch, &mut reader, path, 1).await
}

async fn sftp_dup_id(
    ch: &mut russh::Channel<client::Msg>,
    first: &str,
    second: &str,
) -> Result<()> {
    let Some(mut reader) = start_sftp(ch).await? else {
        return Ok(());
    };
    let mut both = sftp::open(7, first);
    both.extend_from_slice(&sftp::open(7, second));
    ch.data_bytes(both).await?;
    let mut handles = Vec::new();
    for n in 1..=2 {
        match reader.next(ch).await? {
            Some((kind, id, rest)) => {
                println!("reply {n}: id {id} {}", describe(kind, &rest));
                if kind == sftp::HANDLE {
                    handles.push(handle_of(&rest));
                }
            }
            None => {
                println!("channel closed");
                return Ok(());
            }
        }
    }
    if let Some(handle) = handles.first() {
        ch.data_bytes(sftp::write(8, handle, b"forged\n")).await?;
        match reader.next(ch).await? {
            Some((kind, _, rest)) => println!("write: {}", describe(kind, &rest)),
            None => println!("channel closed"),
        }
    }
    Ok(())
}

/// `DIR/./././…/NAME`, `n` dots long in all: the same file under another spelling.
fn long_spelling(path: &str, n: usize) -> Result<String> {
    let (dir, name) = path
        .rsplit_once('/')
        .context("the file must be an absolute path")?;
    Ok(format!("{dir}/{}{name}", "./".repeat(n)))
}

/// Writes 5 bytes to `path` over SFTP with request ids from `id` on, printing each reply
/// (`open: handle|status N`, `write: …`, `close: …`), or `channel closed`.
async fn upload(
    ch: &mut russh::Channel<client::Msg>,
    reader: &mut SftpReader,
    path: &str,
    id: u32,
) -> Result<()> {
    ch.data_bytes(sftp::open(id, path)).await?;
    let Some((kind, _, rest)) = reader.next(ch).await? else {
        println!("channel closed");
        return Ok(());
    };
    println!("open: {}", describe(kind, &rest));
    if kind != sftp::HANDLE {
        return Ok(());
    }
    let handle = handle_of(&rest);
    for (label, packet) in [
        ("write", sftp::write(id + 1, &handle, b"owned")),
        ("close", sftp::close(id + 2, &handle)),
    ] {
        ch.data_bytes(packet).await?;
        match reader.next(ch).await? {
            Some((kind, _, rest)) => println!("{label}: {}", describe(kind, &rest)),
            None => {
                println!("channel closed");
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn sftp_many_handles(
    ch: &mut russh::Channel<client::Msg>,
    file: &str,
    count: usize,
    upload_path: &str,
) -> Result<()> {
    let Some(mut reader) = start_sftp(ch).await? else {
        return Ok(());
    };
    let mut opens = Vec::new();
    for i in 0..count {
        let path = long_spelling(file, 1900 + i % 50)?;
        opens.extend(sftp::open_with(i as u32, &path, sftp::READ_ONLY));
    }
    ch.data_bytes(opens).await?;
    let mut opened = 0;
    for _ in 0..count {
        match reader.next(ch).await? {
            Some((sftp::HANDLE, _, _)) => opened += 1,
            Some(_) => {}
            None => {
                println!("channel closed");
                return Ok(());
            }
        }
    }
    println!("opened {opened}");
    println!("waiting");
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
    upload(ch, &mut reader, upload_path, count as u32).await
}

async fn data_first(ch: &mut russh::Channel<client::Msg>, command: &str) -> Result<()> {
    ch.data_bytes(&b"typed-before-the-program\n"[..]).await?;
    ch.exec(true, command).await?;
    println!("exec: {}", word(reply(ch).await?));
    ch.eof().await?;
    loop {
        match next(ch).await? {
            Some(ChannelMsg::Data { data }) => print!("{}", String::from_utf8_lossy(&data)),
            Some(ChannelMsg::ExitStatus { exit_status }) => println!("exit {exit_status}"),
            Some(ChannelMsg::Close) | None => return Ok(()),
            Some(_) => {}
        }
    }
}

/// An exec request whose command holds NUL bytes.
async fn exec_nul(ch: &mut russh::Channel<client::Msg>, command: &str) -> Result<()> {
    let bytes = command.replace("\\0", "\0").into_bytes();
    ch.exec(true, bytes).await?;
    let accepted = reply(ch).await?;
    println!("exec: {}", word(accepted));
    if accepted != Some(true) {
        return Ok(());
    }
    ch.eof().await?;
    loop {
        match next(ch).await? {
            Some(ChannelMsg::ExitStatus { exit_status }) => println!("exit {exit_status}"),
            Some(ChannelMsg::Close) | None => return Ok(()),
            Some(_) => {}
        }
    }
}

/// Holds a connection that never gets past the banner exchange.
async fn stuck_in_kex(host: &str, secs: u64) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((host, 22)).await?;
    stream.write_all(b"SSH-2.0-stuck_client\r\n").await?;
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(secs), read_all).await {
        Ok(()) => println!("closed by the gateway"),
        Err(_) => println!("still open"),
    }
    Ok(())
}

async fn run(args: &[String]) -> Result<()> {
    let [host, user, scenario, rest @ ..] = args else {
        bail!("usage: sshgw-rawssh HOST USER SCENARIO [ARGS...]");
    };
    if let ("stuck-in-kex", [secs]) = (scenario.as_str(), rest) {
        return stuck_in_kex(host, secs.parse()?).await;
    }
    let config = Arc::new(client::Config::default());
    let mut session = tokio::time::timeout(
        STEP_TIMEOUT,
        client::connect(config, (host.as_str(), 22), Client),
    )
    .await
    .context("connect timed out")??;
    let auth = session.authenticate_none(user).await?;
    if !auth.success() {
        bail!("authentication as {user} failed");
    }
    let mut ch = session.channel_open_session().await?;
    match (scenario.as_str(), rest) {
        ("second-program", [first, path]) => second_program(&mut ch, first, path).await?,
        ("sftp-dup-id", [a, b]) => sftp_dup_id(&mut ch, a, b).await?,
        ("data-first", [command]) => data_first(&mut ch, command).await?,
        ("exec-nul", [command]) => exec_nul(&mut ch, command).await?,
        ("sftp-many-handles", [file, count, upload_path]) => {
            sftp_many_handles(&mut ch, file, count.parse()?, upload_path).await?
        }
        _ => bail!("unknown scenario or arguments: {scenario} {rest:?}"),
    }
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args).await {
        eprintln!("sshgw-rawssh: {e:#}");
        std::process::exit(1);
    }
}
