//! Interim relay: splices an intercepted connection to its original destination as plain
//! TCP from the router's own address. The SSH relay replaces this.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use tokio::net::TcpStream;

use crate::listener::Intercepted;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn relay(conn: Intercepted) -> Result<(u64, u64)> {
    let Intercepted {
        mut stream,
        original_dst,
        ..
    } = conn;
    let mut upstream = connect(original_dst).await?;
    let (up, down) = tokio::io::copy_bidirectional(&mut stream, &mut upstream)
        .await
        .context("relay interrupted")?;
    Ok((up, down))
}

async fn connect(dst: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst))
        .await
        .with_context(|| format!("connecting to {dst} timed out"))?
        .with_context(|| format!("cannot connect to {dst}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
