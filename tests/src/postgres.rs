//! A real PostgreSQL 15 for the central index tests: Debian's `postgresql-15`
//! (`/usr/lib/postgresql/15/bin`), run by the harness, never the system cluster.
//!
//! ```ignore
//! let mut pg = PgServer::start(lab.procs(), &lab.dir().join("pg"))?;
//! pg.create_login_role("sshgw_rtr1", "secret")?;
//! pg.psql("GRANT CREATE ON SCHEMA public TO sshgw_rtr1")?;
//! let url = pg.socket_url("sshgw_rtr1"); // reachable from any network namespace
//! let tls = pg.tcp_url("sshgw_rtr1", "require"); // host namespace only; CA: pg.ca_cert_path()
//! // ... sshgw writes its session index ...
//! assert_eq!(pg.psql("SELECT count(*) FROM sessions")?, "3");
//! let denied = pg.psql_as("sshgw_rtr1", "secret", "DELETE FROM sessions")?;
//! assert!(denied.unwrap_err().contains("permission denied"));
//! pg.kill()?;        // SIGKILL: a crash
//! pg.start_again()?; // same data directory and port
//! ```
//!
//! # The server
//!
//! `postgres -D DIR/data` runs directly as a child of the test (not through `pg_ctl`, which
//! daemonizes), registered in the [`Processes`] registry, as Debian's unprivileged `postgres`
//! system user (`Command::uid`/`gid`; supplementary groups dropped). Its backends notice the
//! postmaster's death and exit, so a panicking test (the registry SIGKILLs the postmaster)
//! leaves nothing behind. A fresh cluster is made by `initdb` in `DIR/data` (UTF8, locale
//! C, `--auth=scram-sha-256`, superuser `postgres` with a random password from
//! `--pwfile`), with database `sshgw` created after the first start.
//!
//! It listens on 127.0.0.1:PORT in the host network namespace (a free port below the
//! ephemeral range, kept by [`PgServer::start_again`]) and on the Unix socket
//! `DIR/run/.s.PGSQL.PORT` (mode 0777). A Unix socket is reached through the file system,
//! whatever network namespace the client is in, so the sshgw daemon in a lab namespace
//! connects with [`PgServer::socket_url`]. To let the `postgres` user (and a daemon running
//! as another user) reach `DIR`, `DIR` and each of its ancestors get the search bit for
//! others (`o+x`, never `o+r`) if they lack it: a test's temp dir is 0700.
//!
//! TLS is on (`ssl = on`): `DIR/tls` holds a test CA ([`PgServer::ca_cert_path`]) and a
//! server certificate for `IP:127.0.0.1, DNS:localhost` (EC P-256, made with the `openssl`
//! CLI); the server key is 0600 and owned by `postgres`. pg_hba allows, for every user and
//! database, `local ... scram-sha-256` and `host ... 127.0.0.1/32 scram-sha-256` (TLS or
//! not), nothing else.
//!
//! # Connection URLs
//!
//! * [`PgServer::tcp_url`] gives `postgres://ROLE@127.0.0.1:PORT/sshgw?sslmode=MODE`.
//!   tokio-postgres 0.7.18's `Config::from_str` knows only `disable`, `prefer` and `require`
//!   (`verify-full` fails with "invalid connection string") and has no `sslrootcert`: a
//!   client that verifies the server must load [`PgServer::ca_cert_path`] itself. libpq
//!   (`psql`) also takes `verify-ca`/`verify-full` and `&sslrootcert=PATH`.
//! * [`PgServer::socket_url`] gives `postgresql:///sshgw?host=DIR/run&port=PORT&user=ROLE`
//!   (the path percent-encoded where needed); tokio-postgres (a `host` starting with `/` is
//!   a socket directory) and libpq both parse it.
//!
//! Passwords are never in a URL: psql gets `PGPASSWORD`.
//!
//! Requirements: root, `postgresql-15`, `postgresql-client-15` and `openssl` (installed by
//! `cargo xtask prereqs` without a system cluster); missing binaries fail the test (never a
//! skip, with or without `CI=true`).

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};

use crate::central::{Port, random_hex, require_tool};
use crate::process::{Proc, Processes};
use crate::wait::{POLL_INTERVAL, poll_until};

/// Debian's PostgreSQL 15 server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The unprivileged system user the server runs as (created by postgresql-common).
pub const PG_USER: &str = "postgres";
/// The superuser role (its password: [`PgServer::superuser_password`]).
pub const SUPERUSER: &str = "postgres";
/// The database created for the tests.
pub const DATABASE: &str = "sshgw";

/// Deadline for `initdb` (≈2 s here).
pub const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for the server to accept connections (≈0.3 s; crash recovery takes longer).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for a fast shutdown.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one psql or openssl run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL 15 server of the harness (see the module docs). Stopped (fast shutdown,
/// SIGKILL if that hangs) when dropped.
pub struct PgServer {
    procs: Processes,
    dir: PathBuf,
    port: Port,
    uid: Uid,
    gid: Gid,
    password: String,
    proc: Option<Proc>,
    generation: u32,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("dir", &self.dir)
            .field("port", &self.port.get())
            .finish_non_exhaustive()
    }
}

fn bin(name: &str) -> String {
    format!("{PG_BIN}/{name}")
}

/// Percent-encodes everything but `A-Za-z0-9 / . _ -` (for paths and names in URLs).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `name` as an SQL identifier (`"..."`, quotes doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal (`'...'`, quotes doubled; standard_conforming_strings is
/// on, so backslashes are literal).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Adds the search bit for others to `dir` and each of its ancestors that lack it.
fn make_traversable(dir: &Path) -> Result<()> {
    for d in dir.ancestors() {
        let meta = fs::metadata(d).with_context(|| format!("reading {}", d.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(d, fs::Permissions::from_mode((mode & 0o7777) | 0o001))
                .with_context(|| format!("adding o+x to {}", d.display()))?;
        }
    }
    Ok(())
}

impl PgServer {
    /// Creates a fresh cluster in `dir` (which must not hold one yet; created if missing),
    /// its TLS files, and starts the server (see the module docs).
    pub fn start(procs: &Processes, dir: &Path) -> Result<PgServer> {
        for tool in ["initdb", "postgres", "pg_isready"] {
            require_tool(&bin(tool), "postgresql-15")?;
        }
        require_tool(&bin("psql"), "postgresql-client-15")?;
        require_tool("/usr/bin/openssl", "openssl")?;
        let user = User::from_name(PG_USER)
            .context("looking up the postgres user")?
            .with_context(|| {
                format!("no {PG_USER} user: the postgresql-common package creates it")
            })?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        if dir.join("data").exists() {
            bail!("{} already holds a cluster (data/)", dir.display());
        }
        make_traversable(&dir)?;
        let server = PgServer {
            procs: procs.clone(),
            dir,
            port: Port::allocate()?,
            uid: user.uid,
            gid: user.gid,
            password: random_hex(16)?,
            proc: None,
            generation: 0,
        };
        let socket = server
            .socket_dir()
            .join(format!(".s.PGSQL.{}", server.port()));
        // sun_path holds 107 bytes and a NUL.
        if socket.as_os_str().len() > 107 {
            bail!(
                "the Unix socket path {} is longer than 107 bytes: give PgServer a shorter dir",
                socket.display()
            );
        }
        let mut server = server;
        server.make_tls()?;
        server.initdb()?;
        server.spawn()?;
        server
            .run_psql(
                &server.url_for_db("postgres", SUPERUSER),
                &server.password,
                &format!("CREATE DATABASE {}", quote_ident(DATABASE)),
            )?
            .map_err(|e| anyhow::anyhow!("creating database {DATABASE}: {e}"))?;
        Ok(server)
    }

    /// The directory given to [`PgServer::start`] (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/data`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The TCP port on 127.0.0.1 (host namespace); also the number in the socket's name.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    /// `DIR/run`: the Unix socket directory (socket `.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The test CA's certificate (PEM) that signed the server certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    /// The superuser's (`postgres`) password.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// `postgres://ROLE@127.0.0.1:PORT/sshgw?sslmode=MODE` (see the module docs for which
    /// modes tokio-postgres accepts).
    pub fn tcp_url(&self, role: &str, sslmode: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{DATABASE}?sslmode={}",
            url_encode(role),
            self.port(),
            url_encode(sslmode)
        )
    }

    /// `postgresql:///sshgw?host=DIR/run&port=PORT&user=ROLE`: the Unix socket, from any
    /// network namespace.
    pub fn socket_url(&self, role: &str) -> String {
        self.url_for_db(DATABASE, role)
    }

    fn url_for_db(&self, db: &str, role: &str) -> String {
        format!(
            "postgresql:///{db}?host={}&port={}&user={}",
            url_encode(&self.socket_dir().to_string_lossy()),
            self.port(),
            url_encode(role)
        )
    }

    /// The postmaster, while started.
    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    /// Runs `sql` with psql as the superuser on database `sshgw` (Unix socket;
    /// `-X -q -A -t -v ON_ERROR_STOP=1`): its stdout without the final newline (rows one a
    /// line, columns separated by `|`). An SQL error is an error.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.run_psql(&self.socket_url(SUPERUSER), &self.password, sql)?
            .map_err(|stderr| anyhow::anyhow!("psql as {SUPERUSER} failed on {sql:?}: {stderr}"))
    }

    /// Runs `sql` as `role` with `password` on database `sshgw` (Unix socket): stdout as in
    /// [`PgServer::psql`], or `Err(stderr)` if psql failed (a refused login, `permission
    /// denied`, any SQL error).
    pub fn psql_as(
        &self,
        role: &str,
        password: &str,
        sql: &str,
    ) -> Result<std::result::Result<String, String>> {
        self.run_psql(&self.socket_url(role), password, sql)
    }

    /// Runs `sql` with psql on any connection string `url` (for example
    /// `tcp_url(role, "verify-full") + "&sslrootcert=" + ca`), `password` in `PGPASSWORD`:
    /// stdout as in [`PgServer::psql`], or `Err(stderr)` if psql failed.
    pub fn psql_url(
        &self,
        url: &str,
        password: &str,
        sql: &str,
    ) -> Result<std::result::Result<String, String>> {
        self.run_psql(url, password, sql)
    }

    /// `CREATE ROLE name LOGIN PASSWORD 'password'` (SCRAM-SHA-256), nothing granted beyond
    /// PUBLIC's defaults (CONNECT on `sshgw`; in PostgreSQL 15 no CREATE on `public`).
    pub fn create_login_role(&self, name: &str, password: &str) -> Result<()> {
        self.psql(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        ))
        .with_context(|| format!("creating login role {name}"))?;
        Ok(())
    }

    /// Fast shutdown (SIGINT to the postmaster, what `pg_ctl stop -m fast` sends): open
    /// sessions are ended, then a checkpoint. Waits (bounded) for the exit; SIGKILL and an
    /// error on timeout.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(proc) = self.proc.take()
            && proc.try_status()?.is_none()
        {
            proc.signal(Signal::SIGINT)?;
            if let Err(err) = proc.wait_exit(STOP_TIMEOUT) {
                self.kill_proc(&proc)?;
                return Err(err.context("PostgreSQL ignored a fast shutdown; SIGKILLed it"));
            }
        }
        Ok(())
    }

    /// SIGKILL to the postmaster, as a crash would leave it (the next start runs crash
    /// recovery); returns once its backends have exited too.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(proc) = self.proc.take() {
            self.kill_proc(&proc)?;
        }
        Ok(())
    }

    fn kill_proc(&self, proc: &Proc) -> Result<()> {
        let children = children_of(proc.pid());
        proc.kill()?;
        // Backends hold the shared memory the next postmaster checks; they exit on their
        // own once they see the postmaster gone.
        poll_until(
            "PostgreSQL's backends to exit after the postmaster was killed",
            STOP_TIMEOUT,
            POLL_INTERVAL,
            || Ok(children.iter().all(|&pid| !alive(pid)).then_some(())),
        )
    }

    /// Starts the server again on the same data directory and port (after [`PgServer::stop`]
    /// or [`PgServer::kill`]; a running server is stopped first).
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn as_pg_user(&self, cmd: &mut Command) {
        cmd.uid(self.uid.as_raw())
            .gid(self.gid.as_raw())
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("LC_ALL", "C");
    }

    fn chown_to_pg(&self, path: &Path) -> Result<()> {
        chown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw()))
            .with_context(|| format!("chown {PG_USER} {}", path.display()))
    }

    /// The test CA and the server certificate (see the module docs).
    fn make_tls(&self) -> Result<()> {
        let tls = self.dir.join("tls");
        fs::create_dir_all(&tls).with_context(|| format!("creating {}", tls.display()))?;
        fs::set_permissions(&tls, fs::Permissions::from_mode(0o755))?;
        fs::write(
            tls.join("server.ext"),
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid, issuer\n",
        )?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let steps: [(&str, Vec<&str>); 3] = [
            (
                "openssl: test CA",
                [
                    &["req", "-x509"][..],
                    &ec,
                    &["-keyout", "ca.key", "-out", "ca.crt", "-days", "3650"],
                    &["-subj", "/CN=sshgw test PostgreSQL CA"],
                    &["-addext", "basicConstraints=critical,CA:TRUE"],
                    &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                ]
                .concat(),
            ),
            (
                "openssl: server CSR",
                [
                    &["req", "-new"][..],
                    &ec,
                    &["-keyout", "server.key", "-out", "server.csr"],
                    &["-subj", "/CN=localhost"],
                ]
                .concat(),
            ),
            (
                "openssl: server certificate",
                vec![
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "3650",
                    "-extfile",
                    "server.ext",
                    "-out",
                    "server.crt",
                ],
            ),
        ];
        for (what, args) in steps {
            self.procs
                .run_quiet(
                    what,
                    Command::new("openssl").args(&args).current_dir(&tls),
                    CLIENT_TIMEOUT,
                )?
                .check(what)?;
        }
        let key = tls.join("server.key");
        self.chown_to_pg(&key)?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        fs::set_permissions(tls.join("ca.key"), fs::Permissions::from_mode(0o600))?;
        for public in ["ca.crt", "server.crt"] {
            fs::set_permissions(tls.join(public), fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// `initdb` as the postgres user, then the server's settings and pg_hba.
    fn initdb(&self) -> Result<()> {
        let run = self.socket_dir();
        fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        self.chown_to_pg(&run)?;
        fs::set_permissions(&run, fs::Permissions::from_mode(0o755))?;
        // initdb fills an empty data directory its user owns (DIR itself stays root's).
        let data = self.data_dir();
        fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        self.chown_to_pg(&data)?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;

        let pwfile = self.dir.join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.password))
            .with_context(|| format!("writing {}", pwfile.display()))?;
        self.chown_to_pg(&pwfile)?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        let mut cmd = Command::new(bin("initdb"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        self.as_pg_user(&mut cmd);
        let result = self
            .procs
            .run_quiet("initdb", &mut cmd, INITDB_TIMEOUT)
            .and_then(|f| f.check("initdb"));
        let _ = fs::remove_file(&pwfile);
        result?;

        let tls = self.dir.join("tls");
        let settings = format!(
            "\n# sshgw test harness (tests/src/postgres.rs)\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = {run}\n\
             unix_socket_permissions = 0777\n\
             ssl = on\n\
             ssl_cert_file = {cert}\n\
             ssl_key_file = {key}\n\
             ssl_ca_file = {ca}\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             log_connections = on\n\
             log_disconnections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = self.port(),
            run = quote_literal(&run.to_string_lossy()),
            cert = quote_literal(&tls.join("server.crt").to_string_lossy()),
            key = quote_literal(&tls.join("server.key").to_string_lossy()),
            ca = quote_literal(&tls.join("ca.crt").to_string_lossy()),
        );
        let conf = data.join("postgresql.conf");
        let mut text =
            fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
        text.push_str(&settings);
        fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let hba = data.join("pg_hba.conf");
        fs::write(
            &hba,
            "# sshgw test harness (tests/src/postgres.rs): passwords only, SCRAM only\n\
             local all all scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .with_context(|| format!("writing {}", hba.display()))?;
        Ok(())
    }

    /// Spawns the postmaster and waits (bounded) until it accepts connections.
    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin("postgres"));
        cmd.arg("-D").arg(self.data_dir());
        self.as_pg_user(&mut cmd);
        self.generation += 1;
        let proc = self.procs.spawn(
            &format!("postgres-{}-{}", self.port(), self.generation),
            &mut cmd,
        )?;
        self.proc = Some(proc.clone());
        let pidfile = self.data_dir().join("postmaster.pid");
        // pg_ctl's own test: postmaster.pid names this PID and its status line says `ready`.
        poll_until(
            &format!("PostgreSQL on port {} to accept connections", self.port()),
            START_TIMEOUT,
            POLL_INTERVAL,
            || {
                if let Some(status) = proc.try_status()? {
                    bail!(
                        "postgres exited ({status}) while starting:\n{}",
                        proc.log_text().trim_end()
                    );
                }
                let text = fs::read_to_string(&pidfile).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let ours = lines
                    .first()
                    .is_some_and(|l| l.trim() == proc.pid().to_string());
                Ok((ours && lines.get(7).is_some_and(|l| l.trim() == "ready")).then_some(()))
            },
        )
        .with_context(|| format!("log so far:\n{}", proc.log_text().trim_end()))?;
        let mut isready = Command::new(bin("pg_isready"));
        isready.arg("-h").arg(self.socket_dir()).args([
            "-p",
            &self.port().to_string(),
            "-d",
            "postgres",
            "-t",
            "10",
        ]);
        self.procs
            .run_quiet("pg_isready", &mut isready, CLIENT_TIMEOUT)?
            .check("pg_isready after postmaster.pid said ready")?;
        Ok(())
    }

    fn run_psql(
        &self,
        url: &str,
        password: &str,
        sql: &str,
    ) -> Result<std::result::Result<String, String>> {
        let mut cmd = Command::new(bin("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "sshgw-tests")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .env_remove("PGHOST")
        .env_remove("PGPORT");
        let out = self.procs.run_quiet("psql", &mut cmd, CLIENT_TIMEOUT)?;
        if out.status.success() {
            Ok(Ok(out
                .stdout
                .strip_suffix('\n')
                .unwrap_or(&out.stdout)
                .to_owned()))
        } else {
            Ok(Err(out.stderr.trim_end().to_owned()))
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.take() {
            let graceful = proc.try_status().is_ok_and(|s| s.is_none())
                && proc.signal(Signal::SIGINT).is_ok()
                && proc.wait_exit(STOP_TIMEOUT).is_ok();
            if !graceful && let Err(err) = self.kill_proc(&proc) {
                eprintln!("warning: stopping PostgreSQL: {err:#}");
            }
        }
    }
}

/// PIDs whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat_field(child, 1).and_then(|p| p.parse().ok()) == Some(pid))
        .collect()
}

/// Field `n` after the `(comm)` of /proc/PID/stat (0: state, 1: ppid).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z")
}
