//! `sshgw console` beyond the browser test (issue 18): over the central index and object
//! storage, behind TLS with client certificates, and its API's refusals
//! (`tests/tests/console_remote.rs`).
//!
//! * [`RemoteConsole`] starts `sshgw console --config FILE --listen ADDR ARGS` in the host
//!   namespaces or in a lab namespace (`ip netns exec`, which execs: same PID), waits for its
//!   one stdout line `console: listening on URL` (http or https, any listen address) and
//!   SIGKILLs exactly that process when dropped, also on panic. [`crate::console::Console`]
//!   covers the plain loopback case in the host namespaces only.
//! * [`HttpClient`] is `curl` (installed by `cargo xtask prereqs`), run in the console's
//!   namespace, with `--path-as-is` (the request target is sent as written: `/../x` stays),
//!   optionally a CA (`--cacert`), a client certificate (`--cert`/`--key`) and a bearer
//!   token. A reply is the status, the headers and the body bytes; a failed transfer (a
//!   refused TLS handshake) is a [`Transport`] error with curl's exit code and message.
//! * [`Pki`] makes a test CA, a server certificate for `IP:127.0.0.1` (and any other IP
//!   SANs), a client certificate, and a second CA with its own client certificate, all EC
//!   P-256, with the `openssl` CLI.
//! * [`CentralIndex`] is a real PostgreSQL 15 ([`crate::postgres`]) migrated by
//!   `sshgw central migrate`, with a login role per router (granted `sshgw_router`, listed
//!   in `sshgw.routers`) and an auditor role (granted `sshgw_auditor`), all reached over the
//!   Unix socket, which any network namespace reaches.
//!
//! `curl` and `openssl` missing fail the test (never a skip, with or without `CI=true`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::central::{NsRef, require_tool};
use crate::console::listening_url;
use crate::gateway::{Gateway, sshgw_bin};
use crate::netns::Netns;
use crate::postgres::PgServer;
use crate::process::{Proc, Processes};
use crate::topology::Lab;
use crate::wait::poll_until;

/// The Content-Security-Policy every answer of the console carries (the contract,
/// /work/notes/console-spec.md and gateway/src/console/api.rs).
pub const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// Deadline of one curl request (`--max-time` is a little shorter).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one openssl run.
pub const OPENSSL_TIMEOUT: Duration = Duration::from_secs(60);
/// The curl the client runs.
pub const CURL: &str = "/usr/bin/curl";
/// The openssl the PKI runs.
pub const OPENSSL: &str = "/usr/bin/openssl";

/// Fails (never skips) unless curl and openssl are installed.
pub fn require_tools() -> Result<()> {
    require_tool(CURL, "curl")?;
    require_tool(OPENSSL, "openssl")
}

// ------------------------------------------------------------------------------------------
// The console process
// ------------------------------------------------------------------------------------------

/// A running `sshgw console`; dropping it SIGKILLs exactly that process (by its PID).
pub struct RemoteConsole {
    proc: Proc,
    ns: NsRef,
    url: String,
    port: u16,
}

impl RemoteConsole {
    /// `sshgw console --config CONFIG --listen LISTEN ARGS`, in `ns` (`ip netns exec`) or the
    /// host namespaces; returns once it printed `console: listening on URL`.
    pub fn start(
        lab: &Lab,
        ns: Option<&Netns>,
        config: &Path,
        listen: &str,
        args: &[&str],
    ) -> Result<Self> {
        let ns = NsRef::new(ns);
        let mut cmd = ns.command(sshgw_bin()?);
        cmd.arg("console")
            .arg("--config")
            .arg(config)
            .args(["--listen", listen])
            .args(args)
            .env("RUST_BACKTRACE", "1");
        let proc = lab
            .procs()
            .spawn(&format!("sshgw-console-{}", ns.label()), &mut cmd)?;
        // The guard owns the process from here on: an error below still kills it.
        let mut console = Self {
            proc,
            ns,
            url: String::new(),
            port: 0,
        };
        let (line, url) = listening_url(&console.proc)?;
        let port = url
            .strip_suffix('/')
            .and_then(|u| u.rsplit_once(':'))
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .with_context(|| {
                format!("`{line}` should end in `:PORT/` with the port picked for {listen}")
            })?;
        console.url = url;
        console.port = port;
        Ok(console)
    }

    /// The URL it printed (`http://127.0.0.1:PORT/`, `https://0.0.0.0:PORT/`, …).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &NsRef {
        &self.ns
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// `SCHEME://127.0.0.1:PORT` (no slash): where a client in its namespace reaches it.
    pub fn loopback_base(&self) -> String {
        let scheme = self.url.split_once("://").map_or("http", |(s, _)| s);
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Waits (bounded) until its stderr has `n` lines containing `needle`.
    pub fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        poll_until(
            &format!("sshgw console to log {needle:?} {n} times"),
            timeout,
            Duration::from_millis(20),
            || Ok((self.proc.log_text().matches(needle).count() >= n).then_some(())),
        )
        .with_context(|| format!("console log:\n{}", self.proc.log_text().trim_end()))
    }
}

impl Drop for RemoteConsole {
    fn drop(&mut self) {
        if let Err(err) = self.proc.kill() {
            eprintln!(
                "warning: killing sshgw console (pid {}): {err:#}",
                self.proc.pid()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// The HTTP client (curl)
// ------------------------------------------------------------------------------------------

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {}: the body is not JSON: {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// A request that got no HTTP answer (a refused TLS handshake, a reset).
#[derive(Debug, Clone)]
pub struct Transport {
    /// curl's exit code (35: TLS connect error, 56: receive failure, …).
    pub code: Option<i32>,
    /// `%{http_code}`: `000` when no answer came.
    pub http_code: String,
    pub stderr: String,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "curl exit code {:?}, http_code {}: {}",
            self.code,
            self.http_code,
            self.stderr.trim_end()
        )
    }
}

/// curl against one console (see the module docs). Cheap to clone and change.
#[derive(Clone)]
pub struct HttpClient {
    procs: Processes,
    dir: PathBuf,
    ns: NsRef,
    base: String,
    cacert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    token: Option<String>,
}

static REQUEST_SEQ: AtomicUsize = AtomicUsize::new(0);

impl HttpClient {
    /// A client of `base` (`http://127.0.0.1:PORT`, no trailing slash needed) run in `ns`.
    pub fn new(lab: &Lab, ns: &NsRef, base: &str) -> Result<Self> {
        Ok(Self {
            procs: lab.procs().clone(),
            dir: lab.new_subdir("curl")?,
            ns: ns.clone(),
            base: base.trim_end_matches('/').to_owned(),
            cacert: None,
            client_cert: None,
            token: None,
        })
    }

    /// A client of `console`, in its namespace, at its loopback address.
    pub fn of(lab: &Lab, console: &RemoteConsole) -> Result<Self> {
        Self::new(lab, console.ns(), &console.loopback_base())
    }

    /// Trusts `ca` for the server's certificate.
    pub fn cacert(mut self, ca: &Path) -> Self {
        self.cacert = Some(ca.to_owned());
        self
    }

    /// Presents this client certificate.
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> Self {
        self.client_cert = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// Sends `Authorization: Bearer TOKEN`.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// The same client without a token.
    pub fn without_token(mut self) -> Self {
        self.token = None;
        self
    }

    /// The same client on another base URL (another console, another address).
    pub fn base(mut self, base: &str) -> Self {
        self.base = base.trim_end_matches('/').to_owned();
        self
    }

    /// The same client in another namespace.
    pub fn in_ns(mut self, ns: &NsRef) -> Self {
        self.ns = ns.clone();
        self
    }

    /// `GET path` that must get an HTTP answer.
    pub fn get(&self, path: &str) -> Result<Reply> {
        self.send("GET", path)
    }

    /// `METHOD path` that must get an HTTP answer.
    pub fn send(&self, method: &str, path: &str) -> Result<Reply> {
        self.request(method, path)?
            .map_err(|t| anyhow::anyhow!("{method} {}{path}: no HTTP answer: {t}", self.base))
    }

    /// `METHOD path`: the answer, or the transfer's failure.
    pub fn request(&self, method: &str, path: &str) -> Result<Result<Reply, Transport>> {
        let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
        let head = self.dir.join(format!("{n}.headers"));
        let body = self.dir.join(format!("{n}.body"));
        let mut cmd = self.ns.command(CURL);
        cmd.args(["-sS", "--path-as-is", "--http1.1", "-X", method])
            .args(["--max-time", "45", "-w", "%{http_code}"])
            .arg("-D")
            .arg(&head)
            .arg("-o")
            .arg(&body);
        if let Some(ca) = &self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some((cert, key)) = &self.client_cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(token) = &self.token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
        }
        cmd.arg(format!("{}{path}", self.base));
        let out =
            self.procs
                .run_quiet(&format!("curl {method} {path}"), &mut cmd, REQUEST_TIMEOUT)?;
        let http_code = out.stdout.trim().to_owned();
        if !out.success() || http_code == "000" {
            return Ok(Err(Transport {
                code: out.status.code(),
                http_code,
                stderr: out.stderr,
            }));
        }
        let status: u16 = http_code
            .parse()
            .with_context(|| format!("curl printed no status: {:?}", out.stdout))?;
        let head_text = fs::read_to_string(&head).unwrap_or_default();
        // Only the last header block (after any 1xx).
        let last_block = head_text
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()
            .unwrap_or_default();
        let headers = last_block
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = fs::read(&body).unwrap_or_default();
        Ok(Ok(Reply {
            status,
            headers,
            body,
        }))
    }
}

// ------------------------------------------------------------------------------------------
// Certificates
// ------------------------------------------------------------------------------------------

/// A test CA and the certificates it signed for the console (see the module docs).
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second CA, unknown to the console, and a client certificate it signed.
    pub other_ca_cert: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

impl Pki {
    /// Makes everything in a fresh lab subdirectory; the server certificate names
    /// `IP:127.0.0.1` and each of `extra_ips`.
    pub fn make(lab: &Lab, extra_ips: &[&str]) -> Result<Self> {
        let dir = lab.new_subdir("console-pki")?;
        let procs = lab.procs();
        let mut sans = vec!["IP:127.0.0.1".to_owned()];
        sans.extend(extra_ips.iter().map(|ip| format!("IP:{ip}")));
        fs::write(
            dir.join("server.ext"),
            format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectAltName = {}\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid, issuer\n",
                sans.join(", ")
            ),
        )?;
        fs::write(
            dir.join("client.ext"),
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid, issuer\n",
        )?;
        make_ca(procs, &dir, "ca", "sshgw console test CA")?;
        make_ca(procs, &dir, "other-ca", "another CA")?;
        make_leaf(procs, &dir, "server", "127.0.0.1", "ca", "server.ext")?;
        make_leaf(
            procs,
            &dir,
            "client",
            "auditor@example.com",
            "ca",
            "client.ext",
        )?;
        make_leaf(
            procs,
            &dir,
            "other-client",
            "auditor@example.com",
            "other-ca",
            "client.ext",
        )?;
        for key in [
            "ca.key",
            "other-ca.key",
            "server.key",
            "client.key",
            "other-client.key",
        ] {
            fs::set_permissions(dir.join(key), fs::Permissions::from_mode(0o600))?;
        }
        Ok(Self {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca_cert: dir.join("other-ca.crt"),
            other_client_cert: dir.join("other-client.crt"),
            other_client_key: dir.join("other-client.key"),
            dir,
        })
    }
}

fn openssl(procs: &Processes, dir: &Path, what: &str, args: &[&str]) -> Result<()> {
    procs
        .run_quiet(
            what,
            Command::new(OPENSSL).args(args).current_dir(dir),
            OPENSSL_TIMEOUT,
        )?
        .check(what)?;
    Ok(())
}

/// `NAME.key` and the self-signed `NAME.crt` of a CA.
fn make_ca(procs: &Processes, dir: &Path, name: &str, cn: &str) -> Result<()> {
    let (key, crt, subj) = (
        format!("{name}.key"),
        format!("{name}.crt"),
        format!("/CN={cn}"),
    );
    let args = [
        &["req", "-x509"][..],
        &EC,
        &["-keyout", &key, "-out", &crt, "-days", "30", "-subj", &subj],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat();
    openssl(procs, dir, &format!("openssl: {name}"), &args)
}

/// `NAME.key` and `NAME.crt` signed by the CA `ca` with the extensions of `ext`.
fn make_leaf(
    procs: &Processes,
    dir: &Path,
    name: &str,
    cn: &str,
    ca: &str,
    ext: &str,
) -> Result<()> {
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    let subj = format!("/CN={cn}");
    let req = [
        &["req", "-new"][..],
        &EC,
        &["-keyout", &key, "-out", &csr, "-subj", &subj],
    ]
    .concat();
    openssl(procs, dir, &format!("openssl: {name} CSR"), &req)?;
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let sign = [
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        ext,
        "-out",
        &crt,
    ];
    openssl(procs, dir, &format!("openssl: {name} certificate"), &sign)
}

// ------------------------------------------------------------------------------------------
// The central index
// ------------------------------------------------------------------------------------------

/// PostgreSQL with sshgw's schema, router roles and an auditor role (see the module docs).
pub struct CentralIndex {
    pub pg: PgServer,
    pub dir: PathBuf,
    /// The password of every role made here (0600 file).
    pub password_file: PathBuf,
}

/// The role that may only read the index.
pub const AUDITOR_ROLE: &str = "auditor";

impl CentralIndex {
    /// Starts PostgreSQL, runs `sshgw central migrate`, and makes a login role per
    /// `(router_id, role)` and [`AUDITOR_ROLE`].
    pub fn start(lab: &Lab, routers: &[(&str, &str)]) -> Result<Self> {
        let dir = lab.new_subdir("central")?;
        let pg = PgServer::start(lab.procs(), &dir)?;
        let password = crate::central::random_hex(12)?;
        let password_file = secret_file(&dir, "roles.pw", &password)?;
        let index = Self {
            pg,
            dir,
            password_file,
        };
        index.migrate(lab)?;
        for (router, role) in routers {
            index.pg.create_login_role(role, &password)?;
            index.pg.psql(&format!(
                "INSERT INTO sshgw.routers (router_id, role) VALUES ('{router}', '{role}');
                 GRANT sshgw_router TO {role};"
            ))?;
        }
        index.pg.create_login_role(AUDITOR_ROLE, &password)?;
        index
            .pg
            .psql(&format!("GRANT sshgw_auditor TO {AUDITOR_ROLE};"))?;
        Ok(index)
    }

    /// `sshgw central migrate --url` as the superuser, over TLS with `verify-full`.
    fn migrate(&self, lab: &Lab) -> Result<()> {
        let pw = secret_file(&self.dir, "postgres.pw", self.pg.superuser_password())?;
        let url = format!(
            "{}&sslrootcert={}",
            self.pg.tcp_url("postgres", "verify-full"),
            self.pg.ca_cert_path().display()
        );
        let mut cmd = Command::new(sshgw_bin()?);
        cmd.args(["central", "migrate", "--url", &url, "--password-file"])
            .arg(&pw);
        lab.procs()
            .run_quiet("sshgw central migrate", &mut cmd, Duration::from_secs(120))?
            .check("sshgw central migrate")?;
        Ok(())
    }

    /// `[central]` for `role` over the Unix socket (reached from any namespace).
    pub fn central_toml(&self, role: &str) -> String {
        format!(
            "[central]\npostgres = {}\npassword_file = {}\n",
            toml_str(&self.pg.socket_url(role)),
            toml_str(&self.password_file.to_string_lossy())
        )
    }
}

/// A 0600 file holding `text` and a newline.
pub fn secret_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Waits (bounded) until the daemon's outbox is shipped to the central index (no rows
/// left, no error) and returns `status --json`'s `central` object.
pub fn wait_shipped(gw: &Gateway<'_>, timeout: Duration) -> Result<Value> {
    let mut last = Value::Null;
    poll_until(
        "the outbox to be shipped to the central index",
        timeout,
        Duration::from_millis(200),
        || {
            last = gw.status_json()?["central"].clone();
            let done = last["outbox_rows"] == 0 && last.get("last_error").is_none();
            Ok(done.then(|| last.clone()))
        },
    )
    .with_context(|| format!("status central last: {last:#}"))
}

/// Fails unless `reply` has `status` and the console's Content-Security-Policy.
pub fn expect_reply(reply: &Reply, status: u16, what: &str) -> Result<()> {
    ensure!(
        reply.status == status,
        "{what}: expected HTTP {status}, got {} with {:?}",
        reply.status,
        reply.text()
    );
    match reply.header("content-security-policy") {
        Some(csp) if csp == CSP => Ok(()),
        Some(csp) => bail!("{what}: Content-Security-Policy {csp:?}, expected {CSP:?}"),
        None => bail!(
            "{what}: HTTP {} without a Content-Security-Policy header: {:?}",
            reply.status,
            reply.headers
        ),
    }
}

/// Describes a refused transfer for messages.
pub fn describe_transport(r: &Result<Reply, Transport>) -> String {
    match r {
        Ok(reply) => format!("HTTP {} {:?}", reply.status, reply.text()),
        Err(t) => t.to_string(),
    }
}
