//! Accepting connections: plain HTTP/1.1 on loopback, or TLS; bounded in number, with a
//! handshake and header deadline, closed when the peer stops reading ([`Stall`]); stops on
//! SIGTERM or SIGINT.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::Semaphore,
};

use super::{Console, api, stall::Stall};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 128;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    console: Arc<Console>,
) -> Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let slot = tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            slot = slots.clone().acquire_owned() => slot?,
        };
        let (stream, peer) = tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("sshgw console: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let console = console.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection(TokioIo::new(Stall::new(stream)), console, peer, false).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // A verified certificate was required in the handshake.
                            let by_cert = console.client_certs;
                            connection(TokioIo::new(Stall::new(tls)), console, peer, by_cert).await
                        }
                        Ok(Err(e)) => eprintln!("sshgw console: TLS handshake with {peer}: {e}"),
                        Err(_) => eprintln!("sshgw console: TLS handshake with {peer} timed out"),
                    }
                }
            }
        });
    }
}

async fn connection<I>(io: TokioIo<I>, console: Arc<Console>, peer: SocketAddr, by_cert: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let console = console.clone();
        async move { Ok::<_, Infallible>(api::handle(&console, req, peer, by_cert).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
        .await;
}
