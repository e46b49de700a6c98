//! A tiny std-only HTTP/1.1 client for the daemon's control socket (a Unix stream socket).
//!
//! One request per connection (`Connection: close`). The request body is written from a
//! second thread while the reply is read, so a server that answers early (413 for an
//! oversized body) is seen instead of blocking on a full socket buffer. Replies are read up
//! to their `Content-Length` (or to EOF, or de-chunked).
//!
//! ```ignore
//! let reply = control::request(gw.control_socket(), "GET", "/v1/status", None, API_TIMEOUT)?;
//! assert_eq!(reply.status, 200);
//! let status = reply.json()?;
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// One HTTP reply.
#[derive(Debug, Clone)]
pub struct ApiReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ApiReply {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "HTTP {} reply body is not JSON: {:?}",
                self.status, self.body
            )
        })
    }

    /// The `error` string of an error reply (`{"error": "…"}`), if there is one.
    pub fn error(&self) -> Option<String> {
        self.json().ok()?.get("error")?.as_str().map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `body` (if any) to the Unix socket `socket` and returns the reply.
/// Every read and write is bounded by `timeout`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<ApiReply> {
    request_with(socket, method, path, &[], body, timeout, &mut || ())
}

/// [`request`] with extra header lines (e.g. `("If-Match", "\"…\"")`); `sent` runs once the
/// request header is on the wire (e.g. to signal the daemon while it handles the request).
pub fn request_with(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
    sent: &mut dyn FnMut(),
) -> Result<ApiReply> {
    let what = format!("{method} {path} on {}", socket.display());
    let mut stream = UnixStream::connect(socket).with_context(|| format!("{what}: connecting"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sshgw\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .with_context(|| format!("{what}: writing the request header"))?;
    sent();

    let reply = thread::scope(|scope| -> Result<ApiReply> {
        let writer = if body.is_empty() {
            None
        } else {
            let mut w = stream.try_clone().context("cloning the control stream")?;
            Some(scope.spawn(move || w.write_all(body).and_then(|()| w.flush())))
        };
        let reply = read_reply(&mut stream).with_context(|| format!("{what}: reading the reply"));
        // Unblocks a writer the server stopped reading from (it has answered already).
        let _ = stream.shutdown(std::net::Shutdown::Both);
        if let Some(w) = writer {
            let written = w.join().map_err(|_| anyhow!("the body writer panicked"))?;
            // A server that answers before reading the whole body (413) makes the write
            // fail with EPIPE/ECONNRESET: only an error when there is no reply either.
            if let (Err(e), Err(r)) = (&written, &reply) {
                bail!("{what}: writing the body failed ({e}) and {r:#}");
            }
        }
        reply
    })?;
    Ok(reply)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_reply(stream: &mut UnixStream) -> Result<ApiReply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        let n = stream
            .read(&mut chunk)
            .context("reading the reply header")?;
        if n == 0 {
            bail!(
                "the connection closed before a complete reply header: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = buf[header_end + 4..].to_vec();
    if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .with_context(|| format!("bad Content-Length {len:?}"))?;
        while body.len() < len {
            let n = stream.read(&mut chunk).context("reading the reply body")?;
            if n == 0 {
                bail!("the reply body ended after {} of {len} bytes", body.len());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else {
        loop {
            let n = stream.read(&mut chunk).context("reading the reply body")?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            body = dechunk(&body)?;
        }
    }
    Ok(ApiReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
