//! What the central index and SIEM test servers share ([`crate::postgres`],
//! [`crate::syslog`], [`crate::otlp`]): TCP ports that stay valid across a restart, and
//! running a closure inside a network namespace.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

use crate::netns::Netns;

/// Ports for these servers come from here: below the kernel's ephemeral range (32768..), so
/// that no client's source port takes one while its server is stopped, and apart from the
/// S3 server's ports (20000..22768 and, for gRPC, 30000..32768; see [`crate::s3`]).
pub const PORT_RANGE: Range<u16> = 23000..29000;

/// Ports handed out in this process and not yet released.
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port reserved for one server of this process; released on drop.
#[derive(Debug)]
pub struct Port(u16);

impl Port {
    /// A port not reserved here and free on the host's loopback. The search starts at a
    /// place derived from the PID so that concurrent test processes rarely probe the same
    /// port.
    pub fn allocate() -> Result<Port> {
        let len = usize::from(PORT_RANGE.end - PORT_RANGE.start);
        let start = (std::process::id() as usize).wrapping_mul(131);
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..len {
            let port = PORT_RANGE.start + ((start + i) % len) as u16;
            if reserved.contains(&port) || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            reserved.insert(port);
            return Ok(Port(port));
        }
        bail!("no free TCP port in {PORT_RANGE:?} on 127.0.0.1")
    }

    pub fn get(&self) -> u16 {
        self.0
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        RESERVED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// Which network namespace a server lives in: a [`Netns`]'s name and path (not the
/// [`Netns`] itself, whose drop deletes the namespace), or the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsRef(Option<(String, PathBuf)>);

impl NsRef {
    pub fn new(netns: Option<&Netns>) -> NsRef {
        NsRef(netns.map(|ns| (ns.name().to_owned(), ns.path())))
    }

    /// The namespace's name, or `host`.
    pub fn label(&self) -> &str {
        self.0.as_ref().map_or("host", |(name, _)| name)
    }

    /// A command running `program` in the namespace (`ip netns exec NAME program`, which
    /// execs it: same PID), as [`Netns::exec_command`] builds it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.0 {
            Some((name, _)) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", name]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Runs `f` on a fresh thread that has entered the namespace (`setns(CLONE_NEWNET)` on
    /// `/run/netns/NAME`), or on a fresh thread in the host namespace. Sockets created there
    /// stay in that namespace wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.0.as_ref().map(|(_, path)| path);
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<T> {
                    if let Some(path) = path {
                        let file = File::open(path)
                            .with_context(|| format!("opening {}", path.display()))?;
                        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| {
                            format!("entering the network namespace {}", path.display())
                        })?;
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("the thread in the network namespace panicked"))?
        })
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port` in the namespace (the
    /// connection is closed again at once).
    pub fn accepts(&self, port: u16) -> Result<bool> {
        self.run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_secs(2),
            )
            .is_ok()
        })
    }

    /// Binds a listener on 127.0.0.1:`port` in the namespace (std sets `SO_REUSEADDR`, so a
    /// port whose previous listener just closed can be bound again at once).
    pub fn bind(&self, port: u16) -> Result<TcpListener> {
        self.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))?
            .with_context(|| format!("binding 127.0.0.1:{port} in namespace {}", self.label()))
    }

    /// Connects to 127.0.0.1:`port` in the namespace.
    pub fn connect(&self, port: u16) -> Result<TcpStream> {
        self.run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_secs(5),
            )
        })?
        .with_context(|| {
            format!(
                "connecting to 127.0.0.1:{port} in namespace {}",
                self.label()
            )
        })
    }
}

/// `n` random bytes from the kernel, hex-encoded (passwords of test roles).
pub fn random_hex(n: usize) -> Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Fails with a message naming `cargo xtask prereqs` unless `path` is an executable file.
/// Never a skip, with or without `CI=true`.
pub fn require_tool(path: &str, package: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let ok =
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !ok {
        let ci = if std::env::var("CI").as_deref() == Ok("true") {
            " (CI=true: these tests are never skipped)"
        } else {
            ""
        };
        bail!(
            "{path} is missing (Debian package {package}){ci}: run `cargo xtask prereqs` as \
             root (or `cargo xtask test`, which runs it)"
        );
    }
    Ok(())
}
