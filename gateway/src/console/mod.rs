//! `sshgw console`: the auditor's web console. It serves the page (embedded at build time)
//! and a read-only JSON API over the session log or the central index, hands out recordings
//! exactly as stored (encrypted), and, with the daemon's control socket, lists live
//! sessions and kills one. It never holds the recording private key: the page decrypts in
//! the browser with sshgw's own reader compiled to wasm (crate `sshgw-console-wasm`).
//!
//! Access: a bearer token (`<state_dir>/console.token`, 0600, made at first start) on every
//! API request; with `[console] client_ca`, a client certificate instead. Any address but
//! loopback needs TLS. See docs/console.md.

mod api;
mod assets;
mod body;
mod chart;
mod query;
mod recordings;
mod serve;
mod source;
mod stall;
mod tls;
mod token;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};

use crate::config::Config;

/// Where the console listens when neither `--listen` nor `[console] listen` says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `sshgw console`'s arguments.
pub struct Options {
    pub config: PathBuf,
    pub central: bool,
    pub listen: Option<SocketAddr>,
}

/// What every request handler shares.
pub struct Console {
    pub source: source::Source,
    pub recordings: recordings::Recordings,
    pub token: token::Token,
    pub control_socket: PathBuf,
    /// Client certificates authenticate (`[console] client_ca`).
    pub client_certs: bool,
}

pub fn run(options: Options) -> Result<()> {
    assets::check()?;
    let config = Config::load(&options.config)?;
    let listen = options
        .listen
        .or(config.console.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a socket address"));
    let tls = tls::server_config(&config.console)?;
    if tls.is_none() && !listen.ip().is_loopback() {
        bail!(
            "--listen {listen}: a console reachable from other machines needs TLS: set \
             [console] tls_cert and tls_key (and client_ca for client certificates), or listen \
             on 127.0.0.1"
        );
    }
    warn_private_key_nearby(&config);
    let token = token::Token::load_or_create(&config.state_dir.join("console.token"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let source = if options.central {
            source::Source::central(&config).await?
        } else {
            source::Source::local(&config)?
        };
        let console = Arc::new(Console {
            source,
            recordings: recordings::Recordings::new(&config, options.central)?,
            token,
            control_socket: config.control_socket.clone(),
            client_certs: config.console.client_ca.is_some(),
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = match local {
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            SocketAddr::V4(a) => a.to_string(),
        };
        println!("console: listening on {scheme}://{host}/");
        use std::io::Write;
        std::io::stdout().flush()?;
        serve::serve(listener, tls, console).await
    })
}

/// The private key next to the configured public key (keygen's `NAME` beside `NAME.pub`)
/// does not belong on a router: say so (the console itself never reads it).
fn warn_private_key_nearby(config: &Config) {
    let Some(public) = &config.recording.public_key_file else {
        return;
    };
    let Some(private) = public.to_str().and_then(|p| p.strip_suffix(".pub")) else {
        return;
    };
    if std::path::Path::new(private).exists() {
        eprintln!(
            "sshgw console: warning: {private} looks like the recording private key, next to \
             the public key on this machine; the console does not need it (auditors open it in \
             their browser): move it off the router"
        );
    }
}
