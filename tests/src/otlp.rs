//! An OTLP/HTTP logs sink in the test process, for the SIEM tests: what an OpenTelemetry
//! Collector's `otlphttp` receiver does with logs, decoded with the official protobuf types
//! (`opentelemetry-proto`). The Collector itself is not installable here (no Debian
//! package; its release binaries are not on the registries the tests may use).
//!
//! ```ignore
//! let mut sink = OtlpSink::start(Some(&lab.rtr))?;
//! // ... sshgw in rtr exports to sink.endpoint() (http://127.0.0.1:PORT, path /v1/logs) ...
//! let records = sink.wait_for_records(2, Duration::from_secs(30))?;
//! assert_eq!(records[0].attributes["sshgw.session.id"], "rtr1:1");
//! sink.stop()?;        // connections are refused from now on
//! sink.start_again()?; // same port
//! ```
//!
//! # The server
//!
//! A small HTTP/1.1 server on std threads: the listener is bound on 127.0.0.1:PORT from a
//! thread that entered the given network namespace (`setns(CLONE_NEWNET)`), so it listens
//! there; the port is free and below the ephemeral range, and kept by
//! [`OtlpSink::start_again`]. Connections are kept alive (HTTP/1.1 default; `Connection:
//! close` and HTTP/1.0 honoured), bodies come with `Content-Length` or chunked, and
//! `Expect: 100-continue` is answered.
//!
//! `POST /v1/logs` with `Content-Type: application/x-protobuf` is decoded as an
//! `ExportLogsServiceRequest` with `prost`; every log record is stored flattened
//! ([`OtlpRecord`]) and the answer is `200` with an encoded, empty
//! `ExportLogsServiceResponse` (full success). Everything else is refused and noted in
//! [`OtlpSink::rejected`]: another path (404), another method (405), JSON or another
//! content type (415), a `Content-Encoding` such as gzip (415), a body that does not decode
//! (400). [`OtlpSink::fail_with`] makes it answer every export with a given status
//! instead (503, 429: a SIEM in trouble).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;

use crate::central::{NsRef, Port};
use crate::netns::Netns;
use crate::wait::{POLL_INTERVAL, poll_until};

/// The OTLP/HTTP path for logs.
pub const LOGS_PATH: &str = "/v1/logs";
/// The largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// How often the acceptor looks at its stop flag while no connection comes.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// One log record, flattened with its resource and scope. Values that are not strings are
/// rendered: integers, doubles and booleans as Rust prints them, bytes as lower-case hex,
/// arrays and maps as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpRecord {
    /// The resource's attributes (`service.name`, ...).
    pub resource: BTreeMap<String, String>,
    pub scope_name: String,
    pub scope_version: String,
    pub attributes: BTreeMap<String, String>,
    /// The body; empty if there is none.
    pub body: String,
    pub severity_number: i32,
    pub severity_text: String,
    pub event_name: String,
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    /// Hex; empty if none.
    pub trace_id: String,
    /// Hex; empty if none.
    pub span_id: String,
}

#[derive(Default)]
struct Shared {
    records: Mutex<Vec<OtlpRecord>>,
    /// The headers (names lower-case) of each accepted export, in order.
    requests: Mutex<Vec<BTreeMap<String, String>>>,
    rejected: Mutex<Vec<String>>,
    fail_status: Mutex<Option<u16>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every accepted connection (a clone, to shut it down on stop) and its thread.
type Connections = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// The listener and its threads while the sink runs.
struct Running {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
    connections: Connections,
}

/// An OTLP/HTTP logs receiver (see the module docs). Stopped when dropped.
pub struct OtlpSink {
    netns: NsRef,
    port: Port,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink")
            .field("netns", &self.netns.label())
            .field("port", &self.port.get())
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl OtlpSink {
    /// Listens on 127.0.0.1 (a free port) in `netns` or the host's namespace.
    pub fn start(netns: Option<&Netns>) -> Result<OtlpSink> {
        let mut sink = OtlpSink {
            netns: NsRef::new(netns),
            port: Port::allocate()?,
            shared: Arc::default(),
            running: None,
        };
        sink.listen()?;
        Ok(sink)
    }

    /// `http://127.0.0.1:PORT` (the exporter adds `/v1/logs`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// `http://127.0.0.1:PORT/v1/logs`.
    pub fn logs_url(&self) -> String {
        format!("{}{LOGS_PATH}", self.endpoint())
    }

    pub fn port(&self) -> u16 {
        self.port.get()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Every log record received so far (across restarts), in order.
    pub fn records(&self) -> Vec<OtlpRecord> {
        lock(&self.shared.records).clone()
    }

    /// How many exports were answered 200.
    pub fn requests(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// The headers (names lower-case) of each export answered 200, in order.
    pub fn request_headers(&self) -> Vec<BTreeMap<String, String>> {
        lock(&self.shared.requests).clone()
    }

    /// Why each refused request was refused (`METHOD PATH: status reason`), in order.
    pub fn rejected(&self) -> Vec<String> {
        lock(&self.shared.rejected).clone()
    }

    /// From now on answer every `POST /v1/logs` with `status` (and store nothing), or go
    /// back to normal with `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        *lock(&self.shared.fail_status) = status;
    }

    /// Waits (bounded) until at least `count` records have arrived; returns all of them.
    pub fn wait_for_records(&self, count: usize, timeout: Duration) -> Result<Vec<OtlpRecord>> {
        poll_until(
            &format!("{count} OTLP log record(s) at {}", self.endpoint()),
            timeout,
            POLL_INTERVAL,
            || {
                let got = self.records();
                Ok((got.len() >= count).then_some(got))
            },
        )
        .with_context(|| {
            format!(
                "received so far: {:#?}; refused requests: {:#?}",
                self.records(),
                self.rejected()
            )
        })
    }

    /// Closes the listener and every open connection: new connections are refused until
    /// [`OtlpSink::start_again`].
    pub fn stop(&mut self) -> Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        running.stop.store(true, Ordering::SeqCst);
        running
            .acceptor
            .join()
            .map_err(|_| anyhow!("the OTLP sink's acceptor thread panicked"))?;
        let connections = std::mem::take(&mut *lock(&running.connections));
        let mut panicked = 0;
        for (stream, handle) in connections {
            let _ = stream.shutdown(Shutdown::Both);
            if handle.join().is_err() {
                panicked += 1;
            }
        }
        if panicked > 0 {
            bail!("{panicked} OTLP sink connection thread(s) panicked");
        }
        Ok(())
    }

    /// Listens again on the same port (records are kept).
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        self.listen()
    }

    fn listen(&mut self) -> Result<()> {
        let listener = self.netns.bind(self.port())?;
        listener
            .set_nonblocking(true)
            .context("making the OTLP listener non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, connections, shared) =
                (stop.clone(), connections.clone(), self.shared.clone());
            std::thread::Builder::new()
                .name(format!("otlp-sink-{}", self.port()))
                .spawn(move || accept_loop(&listener, &stop, &connections, &shared))
                .context("spawning the OTLP sink's acceptor thread")?
        };
        self.running = Some(Running {
            stop,
            acceptor,
            connections,
        });
        Ok(())
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("warning: stopping the OTLP sink: {err:#}");
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    connections: &Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
    shared: &Arc<Shared>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let shared = shared.clone();
                if let Ok(handle) = std::thread::Builder::new()
                    .name("otlp-sink-conn".into())
                    .spawn(move || serve(stream, &shared))
                {
                    lock(connections).push((clone, handle));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Serves requests on one connection until the client closes it, asks to, or errs.
fn serve(stream: TcpStream, shared: &Shared) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader, &mut writer) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(err) => {
                lock(&shared.rejected).push(format!("malformed request: {err:#}"));
                let _ = respond(
                    &mut writer,
                    400,
                    "text/plain",
                    err.to_string().as_bytes(),
                    false,
                );
                return;
            }
        };
        let (status, content_type, body) = handle(&request, shared);
        if respond(&mut writer, status, content_type, &body, request.keep_alive).is_err()
            || !request.keep_alive
        {
            return;
        }
    }
}

/// Reads one request; `None` on a clean EOF before it.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("bad request line {line:?}");
    };
    let (method, version) = (method.to_owned(), version.to_owned());
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    let mut header_bytes = 0;
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h)?;
        header_bytes += n;
        if n == 0 {
            bail!("connection closed inside the headers");
        }
        if header_bytes > 64 * 1024 {
            bail!("headers longer than 64 KiB");
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("bad header line {h:?}"))?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let connection = headers
        .get("connection")
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_default();
    let keep_alive = if version == "HTTP/1.0" {
        connection == "keep-alive"
    } else {
        connection != "close"
    };
    if headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let len: usize = match headers.get("content-length") {
            Some(v) => v
                .parse()
                .with_context(|| format!("bad Content-Length {v:?}"))?,
            None => 0,
        };
        if len > MAX_BODY {
            bail!("body of {len} bytes is over the {MAX_BODY}-byte limit");
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).context("reading the body")?;
        body
    };
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
        keep_alive,
    }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let hex = size.trim().split(';').next().unwrap_or_default();
        let n =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {size:?}"))?;
        if body.len() + n > MAX_BODY {
            bail!("chunked body over the {MAX_BODY}-byte limit");
        }
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + n, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            bail!("chunk not followed by CRLF");
        }
    }
}

/// The answer to one request: status, content type, body.
fn handle(request: &Request, shared: &Shared) -> (u16, &'static str, Vec<u8>) {
    let refuse = |status: u16, why: String| {
        lock(&shared.rejected).push(format!(
            "{} {}: {status} {why}",
            request.method, request.path
        ));
        (status, "text/plain", why.into_bytes())
    };
    if request.path != LOGS_PATH {
        return refuse(404, format!("only {LOGS_PATH} is served"));
    }
    if request.method != "POST" {
        return refuse(405, "only POST".into());
    }
    let content_type = request
        .headers
        .get("content-type")
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if content_type != "application/x-protobuf" {
        return refuse(
            415,
            format!("Content-Type {content_type:?}: only application/x-protobuf"),
        );
    }
    if let Some(encoding) = request
        .headers
        .get("content-encoding")
        .filter(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return refuse(
            415,
            format!("Content-Encoding {encoding:?} is not supported"),
        );
    }
    if let Some(status) = *lock(&shared.fail_status) {
        return refuse(status, "failing on purpose (fail_with)".into());
    }
    let export = match ExportLogsServiceRequest::decode(request.body.as_slice()) {
        Ok(e) => e,
        Err(err) => return refuse(400, format!("not an ExportLogsServiceRequest: {err}")),
    };
    lock(&shared.records).extend(flatten(&export));
    lock(&shared.requests).push(request.headers.clone());
    (
        200,
        "application/x-protobuf",
        ExportLogsServiceResponse::default().encode_to_vec(),
    )
}

fn respond(
    w: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Every log record of `export`, flattened.
pub fn flatten(export: &ExportLogsServiceRequest) -> Vec<OtlpRecord> {
    let mut out = Vec::new();
    for rl in &export.resource_logs {
        let resource = rl
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for sl in &rl.scope_logs {
            let (scope_name, scope_version) = sl
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for r in &sl.log_records {
                out.push(OtlpRecord {
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    attributes: attributes(&r.attributes),
                    body: r.body.as_ref().map(render).unwrap_or_default(),
                    severity_number: r.severity_number,
                    severity_text: r.severity_text.clone(),
                    event_name: r.event_name.clone(),
                    time_unix_nano: r.time_unix_nano,
                    observed_time_unix_nano: r.observed_time_unix_nano,
                    trace_id: hex(&r.trace_id),
                    span_id: hex(&r.span_id),
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(render).unwrap_or_default(),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value as a string (see [`OtlpRecord`]).
fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(_) => to_json(value).to_string(),
        None => String::new(),
    }
}

fn to_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.value {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => J::from(*d),
        Some(Value::BytesValue(b)) => J::String(hex(b)),
        Some(Value::ArrayValue(a)) => J::Array(a.values.iter().map(to_json).collect()),
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map(to_json).unwrap_or(J::Null),
                    )
                })
                .collect(),
        ),
        // Types newer OTLP versions add (`string_value_strindex`) render as null.
        #[allow(unreachable_patterns)]
        Some(_) => J::Null,
    }
}
