//! File-transfer audit integration tests: real `sftp -b`, `scp` (SFTP protocol, the default,
//! and legacy `scp -O`) and `rsync -e ssh` from the enrolled device through the gateway to
//! the audited server (203.0.113.10), logged in as `jdoe` into jdoe's home.
//!
//! The gateway parses the relayed `sftp` subsystem (SFTP v3 + OpenSSH extensions) and legacy
//! scp exec channels without altering the bytes, and logs each file operation in the session
//! log (`sshgw sessions show ID --json` → `file_ops`). The policy's `ssh.sftp`
//! (`allow` / `read_only` / `deny`) and `ssh.max_upload_bytes` restrict transfers.
//!
//! Every test builds its own lab (IPv4). Each client run is one SSH connection; its session
//! record is the one that appears in the log during the run, read once it is closed.
//!
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`), OpenSSH client/server, scp,
//! sftp and rsync:
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test file_audit -- --test-threads=2`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sshgw_tests::files;
use sshgw_tests::gateway::default_policies;
use sshgw_tests::gateway::str_field;
use sshgw_tests::recording::{self as rec, RecordingKey};
use sshgw_tests::{
    Family, Gateway, GatewayConfig, Lab, Ssh, SshOutput, Sshd, SshdConfig, lab_test,
};

const V4: Family = Family::V4;

/// Deadline for a session to show up in, and be closed in, the session log.
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of one scp/sftp/rsync run (debug builds of the daemon are slow at crypto).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// The id and name of the lab's audit policy (`default_policies`); denials name the policy.
const POLICY_ID: &str = "audit-lab";
const POLICY_NAME: &str = "Audit lab server";

/// The login on the server.
const LOGIN: &str = "jdoe";

/// The daemon's log line for a subsystem/exec refused by the transfer rules.
const TRANSFER_REFUSED: &str = "file transfer refused by policy";

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// The lab's audit policy with `ssh` settings (e.g. `{"sftp": "read_only"}`).
fn policies_with(ssh: Value) -> Result<Value> {
    let mut p = default_policies();
    let first = p["policies"]
        .get_mut(0)
        .and_then(Value::as_object_mut)
        .context("default_policies has no policy")?;
    ensure!(
        first.get("id").and_then(Value::as_str) == Some(POLICY_ID)
            && first.get("name").and_then(Value::as_str) == Some(POLICY_NAME),
        "default_policies changed: {p}"
    );
    first.insert("ssh".to_owned(), ssh);
    Ok(p)
}

/// The lab sshd (trusting the gateway CA), then the daemon with `policies`, started.
fn start(lab: &Lab, policies: Value) -> Result<(Sshd, Gateway<'_>)> {
    let sshd = lab.start_sshd_with(SshdConfig::gateway())?;
    let mut gw = lab.gateway_with(GatewayConfig::default().policies(policies))?;
    gw.start()?;
    Ok((sshd, gw))
}

/// `jdoe@203.0.113.10` from the enrolled device (relayed), with the transfer deadline.
fn relayed(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.audited())
        .bind(V4.enrolled())
        .user(LOGIN)
        .timeout(TRANSFER_TIMEOUT)
}

/// jdoe's home on the server, as the server resolves it (SFTP paths are absolute).
fn home(lab: &Lab) -> Result<PathBuf> {
    let home = lab.user_home(LOGIN);
    home.canonicalize()
        .with_context(|| format!("resolving {}", home.display()))
}

/// `home/name` as the string the SFTP client sends.
fn remote_abs(home: &Path, name: &str) -> String {
    home.join(name).to_string_lossy().into_owned()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Writes `len` random bytes to `path` (`head -c LEN /dev/urandom`), mode 0644.
fn random_file(lab: &Lab, path: &Path, len: u64) -> Result<()> {
    files::random_file(lab, path, len, TRANSFER_TIMEOUT)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod 0644 {}", path.display()))
}

/// Nothing (not even a dangling symlink) is at `path`.
fn absent(path: &Path, what: &str) -> Result<()> {
    ensure!(
        fs::symlink_metadata(path).is_err(),
        "{what}: {} should not exist",
        path.display()
    );
    Ok(())
}

/// The run succeeded (with its output in the error otherwise).
fn ok(out: &SshOutput, what: &str) -> Result<()> {
    out.check().map(|_| ()).with_context(|| what.to_owned())
}

/// The run failed (non-zero exit) with `needle` on stderr.
fn failed_with(out: &SshOutput, needle: &str, what: &str) -> Result<()> {
    ensure!(!out.success(), "{what}: should fail: {out:?}");
    ensure!(
        out.stderr.contains(needle),
        "{what}: stderr should contain {needle:?}: {:?}",
        out.stderr
    );
    Ok(())
}

/// Runs `client` (one SSH connection from the enrolled device to the audited server) and
/// returns its output and its session record (`sessions show ID --json`) once the log has
/// closed it. Exactly one new session must appear.
fn with_session<T>(
    gw: &Gateway<'_>,
    what: &str,
    client: impl FnOnce() -> Result<T>,
) -> Result<(T, Value)> {
    let before = gw.session_ids()?;
    let out = client().with_context(|| what.to_owned())?;
    let dst = format!("{}:22", V4.audited());
    let src = format!("{}:", V4.enrolled());
    let new = gw.wait_for_session(&[], LOG_TIMEOUT, &format!("the session of {what}"), |s| {
        str_field(s, "id").is_some_and(|id| !before.contains(id))
            && str_field(s, "destination") == Some(dst.as_str())
            && str_field(s, "source").is_some_and(|x| x.starts_with(&src))
    })?;
    let id = str_field(&new, "id")
        .context("session without id")?
        .to_owned();
    let record = gw.wait_session_closed(&id, LOG_TIMEOUT)?;
    let after = gw.session_ids()?;
    let added: Vec<&String> = after.difference(&before).collect();
    ensure!(
        added.len() == 1,
        "{what}: one connection should add one session, got {added:?}"
    );
    Ok((out, record))
}

/// The session record's `file_ops` (absent = none).
fn file_ops(session: &Value) -> Vec<Value> {
    session["file_ops"].as_array().cloned().unwrap_or_default()
}

/// The session record's `channels` (absent = none).
fn channels(session: &Value) -> Vec<Value> {
    session["channels"].as_array().cloned().unwrap_or_default()
}

/// One line per file operation, for error messages.
fn describe_ops(session: &Value) -> String {
    let ops = file_ops(session);
    if ops.is_empty() {
        return format!("no file_ops; session record: {session:#}");
    }
    ops.iter()
        .map(|o| {
            format!(
                "ch{} {} {} path={} target={} flags={} read={} written={} status={:?} denied={}",
                o["channel"],
                str_field(o, "protocol").unwrap_or("?"),
                str_field(o, "op").unwrap_or("?"),
                str_field(o, "path").unwrap_or("?"),
                str_field(o, "target").unwrap_or("-"),
                str_field(o, "flags").unwrap_or("-"),
                o["bytes_read"],
                o["bytes_written"],
                str_field(o, "status").unwrap_or("?"),
                o["denied"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a file operation must look like; `None` fields are not checked.
#[derive(Default, Clone, Copy)]
struct Want<'a> {
    protocol: &'a str,
    op: &'a str,
    path: &'a str,
    target: Option<&'a str>,
    flags: Option<&'a str>,
    bytes_read: Option<u64>,
    bytes_written: Option<u64>,
    /// Exact status.
    status: Option<&'a str>,
    /// Substring of the status.
    status_has: Option<&'a str>,
    denied: bool,
}

impl<'a> Want<'a> {
    fn sftp(op: &'a str, path: &'a str) -> Self {
        Self {
            protocol: "sftp",
            op,
            path,
            ..Self::default()
        }
    }

    fn scp(op: &'a str, path: &'a str) -> Self {
        Self {
            protocol: "scp",
            op,
            path,
            ..Self::default()
        }
    }

    fn matches(&self, o: &Value) -> bool {
        let u64_is = |key: &str, want: Option<u64>| want.is_none_or(|w| o[key].as_u64() == Some(w));
        str_field(o, "protocol") == Some(self.protocol)
            && str_field(o, "op") == Some(self.op)
            && str_field(o, "path") == Some(self.path)
            && self
                .target
                .is_none_or(|t| str_field(o, "target") == Some(t))
            && self.flags.is_none_or(|f| str_field(o, "flags") == Some(f))
            && u64_is("bytes_read", self.bytes_read)
            && u64_is("bytes_written", self.bytes_written)
            && self
                .status
                .is_none_or(|s| str_field(o, "status") == Some(s))
            && self
                .status_has
                .is_none_or(|s| str_field(o, "status").is_some_and(|x| x.contains(s)))
            && o["denied"].as_bool() == Some(self.denied)
    }

    fn describe(&self) -> String {
        let mut s = format!("{} {} path={}", self.protocol, self.op, self.path);
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                s.push_str(&format!(" {k}={v}"));
            }
        };
        add("target", self.target.map(str::to_owned));
        add("flags", self.flags.map(str::to_owned));
        add("bytes_read", self.bytes_read.map(|b| b.to_string()));
        add("bytes_written", self.bytes_written.map(|b| b.to_string()));
        add("status", self.status.map(|x| format!("{x:?}")));
        add("status~", self.status_has.map(|x| format!("{x:?}")));
        s.push_str(&format!(" denied={}", self.denied));
        s
    }
}

/// The session log has exactly one file operation like `want`; returns it.
fn expect_op(session: &Value, want: Want<'_>, what: &str) -> Result<Value> {
    let found: Vec<Value> = file_ops(session)
        .into_iter()
        .filter(|o| want.matches(o))
        .collect();
    ensure!(
        found.len() == 1,
        "{what}: expected one file operation {}, found {}; the session's file_ops:\n{}",
        want.describe(),
        found.len(),
        describe_ops(session)
    );
    Ok(found.into_iter().next().expect("one"))
}

/// No file operation of the session has `op` on `path`.
fn expect_no_op(session: &Value, op: &str, path: &str, what: &str) -> Result<()> {
    ensure!(
        !file_ops(session)
            .iter()
            .any(|o| str_field(o, "op") == Some(op) && str_field(o, "path") == Some(path)),
        "{what}: there should be no {op} of {path}; the session's file_ops:\n{}",
        describe_ops(session)
    );
    Ok(())
}

/// The session ran a `kind` program whose command starts with `command_prefix`, and every
/// file operation is on its channel.
fn ops_on_channel(session: &Value, kind: &str, command_prefix: &str, what: &str) -> Result<()> {
    let chans = channels(session);
    let chan = chans
        .iter()
        .find(|c| {
            str_field(c, "kind") == Some(kind)
                && str_field(c, "command").is_some_and(|x| x.starts_with(command_prefix))
        })
        .with_context(|| {
            format!("{what}: no {kind} channel {command_prefix:?} in the session: {session:#}")
        })?;
    let ops = file_ops(session);
    ensure!(
        ops.iter().all(|o| o["channel"] == chan["channel"]),
        "{what}: every file operation should be on channel {}:\n{}",
        chan["channel"],
        describe_ops(session)
    );
    Ok(())
}

/// `denied by policy <name>`: the SFTP/scp denial status.
fn denied_by_policy() -> String {
    format!("denied by policy {POLICY_NAME}")
}

/// What the user sees when the relay refuses an sftp subsystem or scp exec.
fn refused_message(what: &str) -> String {
    format!("sshgw: {what} is denied by policy \"{POLICY_NAME}\" ({POLICY_ID})")
}

// ------------------------------------------------------------------------------------------
// 1. sftp -b: every operation in the session log
// ------------------------------------------------------------------------------------------

/// 1. put, get, mkdir, rename (posix and legacy), chmod, symlink, hardlink, rm and rmdir with
///    `sftp -b`: all appear in `sessions show --json` with the right paths and sizes, and the
///    files on the server match.
#[test]
fn sftp_batch_operations_are_logged() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, default_policies())?;
        let home = home(lab)?;
        let up = lab.dir().join("up.bin");
        let up_len = 300_000 + 17;
        random_file(lab, &up, up_len)?;
        let doomed = lab.dir().join("doomed.bin");
        let doomed_len = 1234;
        random_file(lab, &doomed, doomed_len)?;
        let down = lab.dir().join("down.bin");

        let batch = format!(
            "put {up} up.bin\n\
             get up.bin {down}\n\
             mkdir newdir\n\
             rename up.bin newdir/moved.bin\n\
             rename -l newdir/moved.bin newdir/final.bin\n\
             chmod 600 newdir/final.bin\n\
             ln -s newdir/final.bin link.bin\n\
             ln newdir/final.bin hard.bin\n\
             put {doomed} doomed.bin\n\
             rm doomed.bin\n\
             mkdir gone\n\
             rmdir gone\n",
            up = path_str(&up)?,
            down = path_str(&down)?,
            doomed = path_str(&doomed)?,
        );
        let (out, s) = with_session(&gw, "sftp -b", || relayed(lab).sftp_batch(&batch))?;
        ok(&out, "sftp -b")?;

        // The files on the server.
        let fin = home.join("newdir/final.bin");
        files::same_file(lab, &up, &fin, "uploaded, renamed twice", TRANSFER_TIMEOUT)?;
        files::same_file(lab, &up, &down, "downloaded", TRANSFER_TIMEOUT)?;
        let mode = fs::metadata(&fin)?.permissions().mode() & 0o7777;
        ensure!(mode == 0o600, "chmod 600: final.bin has mode {mode:o}");
        let link = fs::read_link(home.join("link.bin")).context("link.bin is not a symlink")?;
        ensure!(
            link == Path::new("newdir/final.bin"),
            "link.bin points to {}",
            link.display()
        );
        ensure!(
            fs::metadata(home.join("hard.bin"))?.ino() == fs::metadata(&fin)?.ino(),
            "hard.bin should be a hard link of newdir/final.bin"
        );
        for gone in ["up.bin", "newdir/moved.bin", "doomed.bin", "gone"] {
            absent(&home.join(gone), "after the batch")?;
        }

        // The session log.
        let p = |name: &str| remote_abs(&home, name);
        let (up_p, moved_p, fin_p) = (p("up.bin"), p("newdir/moved.bin"), p("newdir/final.bin"));
        let (doomed_p, link_p, hard_p) = (p("doomed.bin"), p("link.bin"), p("hard.bin"));
        let (newdir_p, gone_p) = (p("newdir"), p("gone"));
        let write = "write,create,trunc";
        let success = Some("Success");
        expect_op(
            &s,
            Want {
                flags: Some(write),
                status: Some("ok"),
                ..Want::sftp("open", &up_p)
            },
            "put: open for writing",
        )?;
        expect_op(
            &s,
            Want {
                flags: Some(write),
                bytes_read: Some(0),
                bytes_written: Some(up_len),
                status: success,
                ..Want::sftp("close", &up_p)
            },
            "put: close with the bytes written",
        )?;
        expect_op(
            &s,
            Want {
                flags: Some("read"),
                status: Some("ok"),
                ..Want::sftp("open", &up_p)
            },
            "get: open for reading",
        )?;
        expect_op(
            &s,
            Want {
                flags: Some("read"),
                bytes_read: Some(up_len),
                bytes_written: Some(0),
                status: success,
                ..Want::sftp("close", &up_p)
            },
            "get: close with the bytes read",
        )?;
        expect_op(
            &s,
            Want {
                status: success,
                ..Want::sftp("mkdir", &newdir_p)
            },
            "mkdir",
        )?;
        expect_op(
            &s,
            Want {
                target: Some(&moved_p),
                status: success,
                ..Want::sftp("posix-rename", &up_p)
            },
            "rename (posix-rename@openssh.com)",
        )?;
        expect_op(
            &s,
            Want {
                target: Some(&fin_p),
                status: success,
                ..Want::sftp("rename", &moved_p)
            },
            "rename -l (SSH_FXP_RENAME)",
        )?;
        expect_op(
            &s,
            Want {
                status: success,
                ..Want::sftp("setstat", &fin_p)
            },
            "chmod",
        )?;
        expect_op(
            &s,
            Want {
                target: Some("newdir/final.bin"),
                status: success,
                ..Want::sftp("symlink", &link_p)
            },
            "ln -s",
        )?;
        expect_op(
            &s,
            Want {
                target: Some(&fin_p),
                status: success,
                ..Want::sftp("hardlink", &hard_p)
            },
            "ln (hardlink@openssh.com)",
        )?;
        expect_op(
            &s,
            Want {
                bytes_written: Some(doomed_len),
                status: success,
                ..Want::sftp("close", &doomed_p)
            },
            "put doomed.bin: close",
        )?;
        expect_op(
            &s,
            Want {
                status: success,
                ..Want::sftp("remove", &doomed_p)
            },
            "rm",
        )?;
        expect_op(
            &s,
            Want {
                status: success,
                ..Want::sftp("mkdir", &gone_p)
            },
            "mkdir gone",
        )?;
        expect_op(
            &s,
            Want {
                status: success,
                ..Want::sftp("rmdir", &gone_p)
            },
            "rmdir",
        )?;
        ensure!(
            file_ops(&s)
                .iter()
                .all(|o| o["denied"] == json!(false) && str_field(o, "protocol") == Some("sftp")),
            "nothing should be denied under allow:\n{}",
            describe_ops(&s)
        );
        ops_on_channel(&s, "subsystem", "sftp", "sftp -b")?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 2. scp in both modes
// ------------------------------------------------------------------------------------------

/// 2. scp (SFTP protocol, the default) upload and download are logged as SFTP operations with
///    their sizes; `scp -O` (legacy) upload and download as scp `upload file` /
///    `download file` with size, mode and bytes; the files are byte-identical.
#[test]
fn scp_both_modes_are_logged() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, default_policies())?;
        let home = home(lab)?;
        let ssh = relayed(lab);

        // SFTP protocol.
        let local = lab.dir().join("scp-up.bin");
        let len = 200_000 + 3;
        random_file(lab, &local, len)?;
        let target = ssh.remote("scp-up.bin");
        let (out, s) = with_session(&gw, "scp upload (SFTP)", || {
            ssh.scp(&[path_str(&local)?, &target])
        })?;
        ok(&out, "scp upload (SFTP)")?;
        files::same_file(
            lab,
            &local,
            &home.join("scp-up.bin"),
            "scp upload (SFTP)",
            TRANSFER_TIMEOUT,
        )?;
        // scp sends the remote path as the user wrote it (relative to the login's home), and
        // writes in place: opens without truncating and sets the final size with fsetstat.
        let remote = "scp-up.bin";
        expect_op(
            &s,
            Want {
                flags: Some("write,create"),
                status: Some("ok"),
                ..Want::sftp("open", remote)
            },
            "scp upload (SFTP): open",
        )?;
        expect_op(
            &s,
            Want {
                bytes_written: Some(len),
                bytes_read: Some(0),
                status: Some("Success"),
                ..Want::sftp("close", remote)
            },
            "scp upload (SFTP): close",
        )?;
        ops_on_channel(&s, "subsystem", "sftp", "scp upload (SFTP)")?;

        let back = lab.dir().join("scp-back.bin");
        let (out, s) = with_session(&gw, "scp download (SFTP)", || {
            ssh.scp(&[&target, path_str(&back)?])
        })?;
        ok(&out, "scp download (SFTP)")?;
        files::same_file(lab, &local, &back, "scp download (SFTP)", TRANSFER_TIMEOUT)?;
        expect_op(
            &s,
            Want {
                flags: Some("read"),
                status: Some("ok"),
                ..Want::sftp("open", remote)
            },
            "scp download (SFTP): open",
        )?;
        expect_op(
            &s,
            Want {
                bytes_read: Some(len),
                bytes_written: Some(0),
                status: Some("Success"),
                ..Want::sftp("close", remote)
            },
            "scp download (SFTP): close",
        )?;

        // Legacy protocol: the C record names the file by its base name.
        let local = lab.dir().join("legacy-up.bin");
        let len = 150_000 + 11;
        random_file(lab, &local, len)?;
        let (out, s) = with_session(&gw, "scp -O upload", || {
            ssh.scp(&["-O", path_str(&local)?, &ssh.remote("legacy-up.bin")])
        })?;
        ok(&out, "scp -O upload")?;
        files::same_file(
            lab,
            &local,
            &home.join("legacy-up.bin"),
            "scp -O upload",
            TRANSFER_TIMEOUT,
        )?;
        let flags = format!("size={len},mode=0644");
        expect_op(
            &s,
            Want {
                flags: Some(&flags),
                bytes_written: Some(len),
                bytes_read: Some(0),
                status: Some("ok"),
                ..Want::scp("upload file", "legacy-up.bin")
            },
            "scp -O upload",
        )?;
        ops_on_channel(&s, "exec", "scp -t", "scp -O upload")?;

        // A file put on the server directly, mode 0644.
        let served = home.join("legacy-down.bin");
        let len = 123_457;
        random_file(lab, &served, len)?;
        let back = lab.dir().join("legacy-back.bin");
        let (out, s) = with_session(&gw, "scp -O download", || {
            ssh.scp(&["-O", &ssh.remote("legacy-down.bin"), path_str(&back)?])
        })?;
        ok(&out, "scp -O download")?;
        files::same_file(lab, &served, &back, "scp -O download", TRANSFER_TIMEOUT)?;
        let flags = format!("size={len},mode=0644");
        expect_op(
            &s,
            Want {
                flags: Some(&flags),
                bytes_read: Some(len),
                bytes_written: Some(0),
                status: Some("ok"),
                ..Want::scp("download file", "legacy-down.bin")
            },
            "scp -O download",
        )?;
        ops_on_channel(&s, "exec", "scp -f", "scp -O download")?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 3. rsync
// ------------------------------------------------------------------------------------------

/// 3. rsync over ssh works through the gateway; its exec is not scp, so nothing is parsed.
#[test]
fn rsync_is_relayed_unparsed() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, default_policies())?;
        let home = home(lab)?;
        let ssh = relayed(lab);
        let local = lab.dir().join("rsync.bin");
        random_file(lab, &local, 777_777)?;
        let (out, s) = with_session(&gw, "rsync upload", || {
            ssh.rsync(&["-a", path_str(&local)?, &ssh.remote("rsync.bin")])
        })?;
        ok(&out, "rsync upload")?;
        files::same_file(
            lab,
            &local,
            &home.join("rsync.bin"),
            "rsync upload",
            TRANSFER_TIMEOUT,
        )?;
        let chans = channels(&s);
        ensure!(
            chans.iter().any(|c| str_field(c, "kind") == Some("exec")
                && str_field(c, "command").is_some_and(|x| x.starts_with("rsync --server"))
                && c["exit_status"] == json!(0)),
            "the session should have the rsync exec channel (exit 0): {s:#}"
        );
        ensure!(
            file_ops(&s).is_empty(),
            "rsync is not parsed, so no file operations:\n{}",
            describe_ops(&s)
        );
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 4-6: transfer rules
// ------------------------------------------------------------------------------------------

/// 4. `sftp: read_only`: an upload is refused with "Permission denied" and logged as denied,
///    a download works; `scp -O` uploads are refused, downloads work.
#[test]
fn read_only_refuses_writes_and_allows_reads() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, policies_with(json!({"sftp": "read_only"}))?)?;
        let home = home(lab)?;
        let ssh = relayed(lab);
        let local = lab.dir().join("ro-up.bin");
        random_file(lab, &local, 40_000)?;
        let served = home.join("ro-served.bin");
        random_file(lab, &served, 60_001)?;

        let batch = format!("put {} ro-up.bin\n", path_str(&local)?);
        let (out, s) = with_session(&gw, "sftp put (read_only)", || ssh.sftp_batch(&batch))?;
        failed_with(&out, "Permission denied", "sftp put under read_only")?;
        absent(&home.join("ro-up.bin"), "sftp put under read_only")?;
        let denial = denied_by_policy();
        let remote = remote_abs(&home, "ro-up.bin");
        expect_op(
            &s,
            Want {
                flags: Some("write,create,trunc"),
                status: Some(&denial),
                denied: true,
                ..Want::sftp("open", &remote)
            },
            "the denied open",
        )?;
        expect_no_op(&s, "close", &remote, "the denied open")?;

        let down = lab.dir().join("ro-down.bin");
        let batch = format!("get ro-served.bin {}\n", path_str(&down)?);
        let (out, s) = with_session(&gw, "sftp get (read_only)", || ssh.sftp_batch(&batch))?;
        ok(&out, "sftp get under read_only")?;
        files::same_file(
            lab,
            &served,
            &down,
            "sftp get under read_only",
            TRANSFER_TIMEOUT,
        )?;
        expect_op(
            &s,
            Want {
                bytes_read: Some(60_001),
                status: Some("Success"),
                ..Want::sftp("close", &remote_abs(&home, "ro-served.bin"))
            },
            "sftp get under read_only",
        )?;

        // Every other modifying request is denied too ('-': the batch goes on after errors).
        let batch = "-rm ro-served.bin\n\
                     -rename ro-served.bin renamed.bin\n\
                     -mkdir ro-dir\n\
                     -chmod 600 ro-served.bin\n\
                     -ln -s ro-served.bin ro-link.bin\n\
                     ls\n";
        let (out, s) = with_session(&gw, "sftp changes (read_only)", || ssh.sftp_batch(batch))?;
        ok(&out, "sftp batch of ignored failures under read_only")?;
        ensure!(
            out.stderr.matches("Permission denied").count() == 5,
            "each change should fail with Permission denied: {:?}",
            out.stderr
        );
        files::same_file(
            lab,
            &down,
            &served,
            "the served file after refused changes",
            TRANSFER_TIMEOUT,
        )?;
        let mode = fs::metadata(&served)?.permissions().mode() & 0o7777;
        ensure!(
            mode == 0o644,
            "the refused chmod changed the mode to {mode:o}"
        );
        for gone in ["renamed.bin", "ro-dir", "ro-link.bin"] {
            absent(&home.join(gone), "refused changes under read_only")?;
        }
        let served_p = remote_abs(&home, "ro-served.bin");
        let denied_op = |op| Want {
            status: Some(&denial),
            denied: true,
            ..Want::sftp(op, &served_p)
        };
        expect_op(&s, denied_op("remove"), "rm under read_only")?;
        expect_op(
            &s,
            Want {
                target: Some(&remote_abs(&home, "renamed.bin")),
                ..denied_op("posix-rename")
            },
            "rename under read_only",
        )?;
        expect_op(&s, denied_op("setstat"), "chmod under read_only")?;
        let dir_p = remote_abs(&home, "ro-dir");
        expect_op(
            &s,
            Want {
                status: Some(&denial),
                denied: true,
                ..Want::sftp("mkdir", &dir_p)
            },
            "mkdir under read_only",
        )?;
        let link_p = remote_abs(&home, "ro-link.bin");
        expect_op(
            &s,
            Want {
                target: Some("ro-served.bin"),
                status: Some(&denial),
                denied: true,
                ..Want::sftp("symlink", &link_p)
            },
            "ln -s under read_only",
        )?;
        // The listing is a read: it works.
        expect_op(
            &s,
            Want {
                status: Some("ok"),
                ..Want::sftp("opendir", &home.to_string_lossy())
            },
            "ls under read_only",
        )?;
        ensure!(
            out.stdout.contains("ro-served.bin"),
            "ls under read_only should list ro-served.bin: {:?}",
            out.stdout
        );
        ensure!(
            file_ops(&s)
                .iter()
                .all(|o| o["denied"] == json!(str_field(o, "op") != Some("opendir"))),
            "every change and nothing else should be denied:\n{}",
            describe_ops(&s)
        );

        let (out, s) = with_session(&gw, "scp -O upload (read_only)", || {
            ssh.scp(&["-O", path_str(&local)?, &ssh.remote("ro-up.bin")])
        })?;
        failed_with(
            &out,
            &refused_message("uploading with scp"),
            "scp -O upload under read_only",
        )?;
        absent(&home.join("ro-up.bin"), "scp -O upload under read_only")?;
        let id = str_field(&s, "id").context("no id")?;
        gw.wait_for_log_line(
            &[TRANSFER_REFUSED, id, &refused_message("uploading with scp")],
            LOG_TIMEOUT,
        )?;
        // The refusal is on record: the scp -t channel ended with exit status 1 and a
        // denied `refused` file operation names the command and the policy.
        ensure!(
            channels(&s).iter().any(|c| {
                str_field(c, "command").is_some_and(|x| x.starts_with("scp -t"))
                    && c.get("exit_status").and_then(Value::as_u64) == Some(1)
            }),
            "the refused scp -t should be logged as a channel with exit status 1: {s:#}"
        );
        ensure!(
            s.get("file_ops")
                .and_then(Value::as_array)
                .is_some_and(|ops| ops.iter().any(|op| {
                    str_field(op, "op") == Some("refused")
                        && op.get("denied").and_then(Value::as_bool) == Some(true)
                        && str_field(op, "status")
                            .is_some_and(|t| t.contains(&refused_message("uploading with scp")))
                })),
            "the refused scp -t should be logged as a denied file operation: {s:#}"
        );

        let back = lab.dir().join("ro-scp-back.bin");
        let (out, s) = with_session(&gw, "scp -O download (read_only)", || {
            ssh.scp(&["-O", &ssh.remote("ro-served.bin"), path_str(&back)?])
        })?;
        ok(&out, "scp -O download under read_only")?;
        files::same_file(
            lab,
            &served,
            &back,
            "scp -O download under read_only",
            TRANSFER_TIMEOUT,
        )?;
        expect_op(
            &s,
            Want {
                bytes_read: Some(60_001),
                status: Some("ok"),
                ..Want::scp("download file", "ro-served.bin")
            },
            "scp -O download under read_only",
        )?;
        Ok(())
    });
}

/// 5. `sftp: deny`: the sftp subsystem and scp (both modes) are refused with a clear message
///    and nothing is transferred; a plain exec still works.
#[test]
fn deny_refuses_sftp_and_scp() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, policies_with(json!({"sftp": "deny"}))?)?;
        let home = home(lab)?;
        let ssh = relayed(lab);
        let local = lab.dir().join("deny-up.bin");
        random_file(lab, &local, 10_000)?;
        let served = home.join("deny-served.bin");
        random_file(lab, &served, 10_001)?;

        let batch = format!("put {} deny-up.bin\n", path_str(&local)?);
        let (out, s) = with_session(&gw, "sftp (deny)", || ssh.sftp_batch(&batch))?;
        failed_with(&out, &refused_message("sftp"), "sftp under deny")?;
        absent(&home.join("deny-up.bin"), "sftp under deny")?;
        let id = str_field(&s, "id").context("no id")?;
        gw.wait_for_log_line(
            &[TRANSFER_REFUSED, id, &refused_message("sftp")],
            LOG_TIMEOUT,
        )?;
        ensure!(
            !channels(&s)
                .iter()
                .any(|c| str_field(c, "command") == Some("sftp") && c["exit_status"] == json!(0)),
            "the refused subsystem should not be logged as a program that ran: {s:#}"
        );
        ensure!(
            file_ops(&s).iter().all(|o| o["denied"] == json!(true)),
            "nothing should have been done over the refused sftp:\n{}",
            describe_ops(&s)
        );

        let (out, _) = with_session(&gw, "scp upload, SFTP protocol (deny)", || {
            ssh.scp(&[path_str(&local)?, &ssh.remote("deny-up.bin")])
        })?;
        failed_with(&out, &refused_message("sftp"), "scp (SFTP) under deny")?;
        absent(&home.join("deny-up.bin"), "scp (SFTP) under deny")?;

        let (out, s) = with_session(&gw, "scp -O upload (deny)", || {
            ssh.scp(&["-O", path_str(&local)?, &ssh.remote("deny-up.bin")])
        })?;
        failed_with(&out, &refused_message("scp"), "scp -O upload under deny")?;
        absent(&home.join("deny-up.bin"), "scp -O upload under deny")?;
        let id = str_field(&s, "id").context("no id")?;
        gw.wait_for_log_line(
            &[TRANSFER_REFUSED, id, &refused_message("scp")],
            LOG_TIMEOUT,
        )?;

        let back = lab.dir().join("deny-back.bin");
        let (out, _) = with_session(&gw, "scp -O download (deny)", || {
            ssh.scp(&["-O", &ssh.remote("deny-served.bin"), path_str(&back)?])
        })?;
        failed_with(&out, &refused_message("scp"), "scp -O download under deny")?;
        absent(&back, "scp -O download under deny")?;

        let (out, s) = with_session(&gw, "plain exec (deny)", || ssh.run("echo still-works"))?;
        ok(&out, "plain exec under deny")?;
        ensure!(
            out.stdout.trim() == "still-works",
            "plain exec under deny printed {:?}",
            out.stdout
        );
        ensure!(
            channels(&s)
                .iter()
                .any(|c| str_field(c, "kind") == Some("exec") && c["exit_status"] == json!(0)),
            "the plain exec should be logged: {s:#}"
        );
        Ok(())
    });
}

/// 6. `max_upload_bytes = 50000`: a 40,000-byte SFTP put works, a second one in the same
///    session is denied (upload limit in the log), and a 100,000-byte `scp -O` upload is
///    stopped with the limit on stderr.
#[test]
fn upload_limit_is_enforced() {
    lab_test(|lab| {
        let limit = 50_000;
        let (_sshd, gw) = start(lab, policies_with(json!({"max_upload_bytes": limit}))?)?;
        let home = home(lab)?;
        let ssh = relayed(lab);
        let (first, second) = (lab.dir().join("first.bin"), lab.dir().join("second.bin"));
        random_file(lab, &first, 40_000)?;
        random_file(lab, &second, 40_000)?;
        let message = format!("upload limit of {limit} bytes reached (policy {POLICY_NAME})");

        let batch = format!(
            "put {} first.bin\nput {} second.bin\n",
            path_str(&first)?,
            path_str(&second)?
        );
        let (out, s) = with_session(&gw, "sftp two puts (limit)", || ssh.sftp_batch(&batch))?;
        failed_with(&out, "Permission denied", "the second put over the limit")?;
        ensure!(
            out.stdout.contains("second.bin"),
            "the batch should have reached the second put: {out:?}"
        );
        files::same_file(
            lab,
            &first,
            &home.join("first.bin"),
            "the first put",
            TRANSFER_TIMEOUT,
        )?;
        let second_remote = home.join("second.bin");
        ensure!(
            !second_remote.exists()
                || files::sha256(lab, &second_remote, TRANSFER_TIMEOUT)?
                    != files::sha256(lab, &second, TRANSFER_TIMEOUT)?,
            "the second put should not arrive complete"
        );
        expect_op(
            &s,
            Want {
                bytes_written: Some(40_000),
                status: Some("Success"),
                ..Want::sftp("close", &remote_abs(&home, "first.bin"))
            },
            "the first put",
        )?;
        let second_p = remote_abs(&home, "second.bin");
        let denied: Vec<Value> = file_ops(&s)
            .into_iter()
            .filter(|o| {
                str_field(o, "op") == Some("write")
                    && str_field(o, "path") == Some(second_p.as_str())
                    && o["denied"] == json!(true)
                    && str_field(o, "status") == Some(message.as_str())
            })
            .collect();
        ensure!(
            !denied.is_empty(),
            "a denied write of second.bin with {message:?} should be logged:\n{}",
            describe_ops(&s)
        );
        let uploaded: u64 = file_ops(&s)
            .iter()
            .filter(|o| str_field(o, "op") == Some("close"))
            .filter_map(|o| o["bytes_written"].as_u64())
            .sum();
        ensure!(
            uploaded <= limit,
            "at most {limit} bytes may have been written, the closes say {uploaded}:\n{}",
            describe_ops(&s)
        );

        let big = lab.dir().join("big.bin");
        random_file(lab, &big, 100_000)?;
        let (out, s) = with_session(&gw, "scp -O upload over the limit", || {
            ssh.scp(&["-O", path_str(&big)?, &ssh.remote("big.bin")])
        })?;
        failed_with(
            &out,
            &format!("scp: {message}"),
            "scp -O upload over the limit",
        )?;
        absent(&home.join("big.bin"), "scp -O upload over the limit")?;
        expect_op(
            &s,
            Want {
                flags: Some("size=100000,mode=0644"),
                bytes_written: Some(0),
                status: Some(&message),
                denied: true,
                ..Want::scp("upload file", "big.bin")
            },
            "scp -O upload over the limit",
        )?;
        Ok(())
    });
}

/// A recorded SFTP channel: the session log and the recording's trailer list the same
/// operations, and the recording's ssh-log-cli view (`data_from_client.txt`) is exactly the
/// SFTP bytes the client sent.
#[test]
fn recorded_sftp_carries_file_ops_in_its_trailer() {
    lab_test(|lab| {
        let key = RecordingKey::generate(lab, "fileops")?;
        let sshd = lab.start_sshd_with(SshdConfig::gateway())?;
        let mut cfg =
            GatewayConfig::default().policies(policies_with(json!({"command_logging": true}))?);
        cfg.extra_toml = rec::recording_toml(Some(&key.public), None, &[]);
        let mut gw = lab.gateway_with(cfg)?;
        gw.start()?;
        let home = home(lab)?;
        let up = lab.dir().join("rec-up.bin");
        let up_len = 100_000 + 3;
        random_file(lab, &up, up_len)?;
        let batch = format!(
            "put {} rec-up.bin\nrename rec-up.bin rec-moved.bin\nrm rec-moved.bin\n",
            path_str(&up)?
        );
        let (out, s) = with_session(&gw, "recorded sftp -b", || relayed(lab).sftp_batch(&batch))?;
        ok(&out, "recorded sftp -b")?;
        // The recording is finished (trailer written) when its channel is closed in the log.
        let id = str_field(&s, "id").context("session without id")?;
        let (s, channel, recording) = rec::closed_recorded_channel(&gw, id, LOG_TIMEOUT)?;
        ensure!(
            str_field(&channel, "command") == Some("sftp"),
            "the recorded channel should be the sftp subsystem: {channel}"
        );

        let verified = rec::verify(lab, &recording, &key.private)?;
        ensure!(
            verified.success() && verified.stdout.contains("file ops:"),
            "verify should pass and count the file operations: {verified:?}"
        );

        // The trailer holds the session log's operations, in the same order.
        let logged: Vec<(String, String)> = file_ops(&s)
            .iter()
            .map(|o| {
                (
                    str_field(o, "op").unwrap_or_default().to_owned(),
                    str_field(o, "path").unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let lines = rec::export_file_ops(lab, &recording, &key.private)?;
        let recorded: Vec<(String, String)> = lines
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).with_context(|| format!("line {l:?}"))?;
                Ok((
                    str_field(&v, "op").unwrap_or_default().to_owned(),
                    str_field(&v, "path").unwrap_or_default().to_owned(),
                ))
            })
            .collect::<Result<_>>()?;
        ensure!(
            recorded == logged,
            "the trailer should list the logged operations:\ntrailer: {recorded:?}\nlog: {logged:?}"
        );
        let (up_p, moved_p) = (
            remote_abs(&home, "rec-up.bin"),
            remote_abs(&home, "rec-moved.bin"),
        );
        for (op, path) in [
            ("close", &up_p),
            ("posix-rename", &up_p),
            ("remove", &moved_p),
        ] {
            ensure!(
                recorded.iter().any(|(o, p)| o == op && p == path),
                "no {op} {path} in the trailer: {recorded:?}"
            );
        }

        // What ssh-log-cli shows: the raw SFTP stream, starting with SSH_FXP_INIT, and as
        // many client bytes as the session relayed.
        let zip = rec::decrypt(lab, &recording, &key.private)?;
        ensure!(
            zip.names()
                == [
                    "data_from_client.txt",
                    "data_from_server.txt",
                    "file_operations.jsonl"
                ],
            "zip members: {:?}",
            zip.names()
        );
        let client = &zip.members["data_from_client.txt"];
        ensure!(
            client.get(4) == Some(&1),
            "data_from_client.txt should start with SSH_FXP_INIT, got {:?}",
            &client[..client.len().min(16)]
        );
        ensure!(
            s["bytes_from_client"].as_u64() == Some(client.len() as u64),
            "data_from_client.txt has {} bytes, the session relayed {}",
            client.len(),
            s["bytes_from_client"]
        );
        ensure!(
            zip.member_text("file_operations.jsonl")? == lines,
            "the zip's file_operations.jsonl should match the export"
        );
        drop(sshd);
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 7-9: transfer rules as a boundary, scp fidelity
// ------------------------------------------------------------------------------------------

/// Debian's sftp-server, which `sftp -s PATH` runs by an exec (not a subsystem request).
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// 7. `sftp -s /usr/lib/openssh/sftp-server` is an exec of the sftp-server binary: it is
///    audited as SFTP, under the same rules and log as the subsystem (review F3). Under
///    `read_only` an upload is denied and a download works and is logged; under `deny` it
///    is refused with the message.
#[test]
fn sftp_server_exec_is_audited_as_sftp() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, policies_with(json!({"sftp": "read_only"}))?)?;
        let home = home(lab)?;
        let via_exec = || relayed(lab).arg("-s").arg(SFTP_SERVER);
        let local = lab.dir().join("exec-up.bin");
        random_file(lab, &local, 30_000)?;
        let served = home.join("exec-served.bin");
        random_file(lab, &served, 20_001)?;

        let batch = format!("put {} exec-up.bin\n", path_str(&local)?);
        let (out, s) = with_session(&gw, "sftp -s sftp-server put (read_only)", || {
            via_exec().sftp_batch(&batch)
        })?;
        failed_with(&out, "Permission denied", "sftp -s sftp-server put")?;
        absent(&home.join("exec-up.bin"), "sftp -s sftp-server put")?;
        expect_op(
            &s,
            Want {
                flags: Some("write,create,trunc"),
                status: Some(&denied_by_policy()),
                denied: true,
                ..Want::sftp("open", &remote_abs(&home, "exec-up.bin"))
            },
            "the denied open over the sftp-server exec",
        )?;
        ops_on_channel(&s, "exec", SFTP_SERVER, "sftp -s sftp-server put")?;

        let down = lab.dir().join("exec-down.bin");
        let batch = format!("get exec-served.bin {}\n", path_str(&down)?);
        let (out, s) = with_session(&gw, "sftp -s sftp-server get (read_only)", || {
            via_exec().sftp_batch(&batch)
        })?;
        ok(&out, "sftp -s sftp-server get")?;
        files::same_file(lab, &served, &down, "the download", TRANSFER_TIMEOUT)?;
        expect_op(
            &s,
            Want {
                bytes_read: Some(20_001),
                status: Some("Success"),
                ..Want::sftp("close", &remote_abs(&home, "exec-served.bin"))
            },
            "the download over the sftp-server exec",
        )?;

        gw.push_policies(&policies_with(json!({"sftp": "deny"}))?)?;
        let batch = format!("put {} exec-up.bin\n", path_str(&local)?);
        let (out, s) = with_session(&gw, "sftp -s sftp-server (deny)", || {
            via_exec().sftp_batch(&batch)
        })?;
        failed_with(
            &out,
            &refused_message("sftp"),
            "sftp -s sftp-server under deny",
        )?;
        absent(&home.join("exec-up.bin"), "sftp -s sftp-server under deny")?;
        expect_op(
            &s,
            Want {
                status_has: Some(&refused_message("sftp")),
                denied: true,
                ..Want::sftp("refused", SFTP_SERVER)
            },
            "the refused sftp-server exec",
        )?;
        Ok(())
    });
}

/// 8. With `shell` and `exec` denied, `read_only` is a boundary: uploads by sftp, by
///    `sftp -s sftp-server`, by `scp -O`, by `ssh host 'cat > f'` and by rsync all fail,
///    a shell is refused with a message, and an sftp download works (review F3).
#[test]
fn files_only_policy_makes_read_only_a_boundary() {
    lab_test(|lab| {
        let policy = json!({"shell": "deny", "exec": "deny", "sftp": "read_only"});
        let (_sshd, gw) = start(lab, policies_with(policy)?)?;
        let home = home(lab)?;
        let local = lab.dir().join("fo-up.bin");
        random_file(lab, &local, 10_000)?;
        let target = home.join("fo-up.bin");
        let exec_denied = format!(
            "sshgw: exec is denied by policy \"{POLICY_NAME}\" ({POLICY_ID}): ssh.exec = \"deny\""
        );
        let batch = format!("put {} fo-up.bin\n", path_str(&local)?);

        let out = relayed(lab).sftp_batch(&batch)?;
        failed_with(&out, "Permission denied", "sftp put")?;
        let out = relayed(lab).arg("-s").arg(SFTP_SERVER).sftp_batch(&batch)?;
        failed_with(&out, "Permission denied", "sftp -s sftp-server put")?;
        let ssh = relayed(lab);
        let out = ssh.scp(&["-O", path_str(&local)?, &ssh.remote("fo-up.bin")])?;
        failed_with(
            &out,
            &refused_message("uploading with scp"),
            "scp -O upload",
        )?;
        let (out, s) = with_session(&gw, "ssh 'cat > f'", || {
            relayed(lab).stdin_file(&local).run("cat > fo-up.bin")
        })?;
        failed_with(&out, &exec_denied, "ssh host 'cat > f'")?;
        ensure!(
            channels(&s).iter().any(|c| {
                str_field(c, "command") == Some("cat > fo-up.bin")
                    && c["exit_status"].as_u64() == Some(1)
            }),
            "the refused exec is a channel with exit status 1: {s:#}"
        );
        expect_op(
            &s,
            Want {
                status: Some(&exec_denied),
                denied: true,
                ..Want {
                    protocol: "ssh",
                    op: "refused",
                    path: "cat > fo-up.bin",
                    ..Want::default()
                }
            },
            "the refused exec",
        )?;
        let ssh = relayed(lab);
        let out = ssh.rsync(&[path_str(&local)?, &ssh.remote("fo-up.bin")])?;
        failed_with(&out, &exec_denied, "rsync upload")?;
        absent(&target, "every upload under a files-only read_only policy")?;

        let out = relayed(lab).run("")?;
        failed_with(
            &out,
            &format!(
                "sshgw: a shell is denied by policy \"{POLICY_NAME}\" ({POLICY_ID}): \
                 ssh.shell = \"deny\""
            ),
            "a shell",
        )?;

        let served = home.join("fo-served.bin");
        random_file(lab, &served, 12_345)?;
        let down = lab.dir().join("fo-down.bin");
        let out = relayed(lab).sftp_batch(&format!("get fo-served.bin {}\n", path_str(&down)?))?;
        ok(&out, "sftp get under a files-only policy")?;
        files::same_file(lab, &served, &down, "the download", TRANSFER_TIMEOUT)?;
        Ok(())
    });
}

/// 9. A legacy scp upload to a named target logs the file the server writes, with the
///    source's name as the target (`scp -O payload.bin host:up.bin`), and a libssh2 upload
///    (`curl -T f scp://…`, which closes the channel right after the data) is logged
///    complete (issue 14, clients A2).
#[test]
fn scp_uploads_log_the_file_written() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, default_policies())?;
        let home = home(lab)?;
        let local = lab.dir().join("payload.bin");
        let len = 20_000;
        random_file(lab, &local, len)?;
        let flags = format!("size={len},mode=0644");

        let ssh = relayed(lab);
        let (out, s) = with_session(&gw, "scp -O payload.bin host:up.bin", || {
            ssh.scp(&["-O", path_str(&local)?, &ssh.remote("up.bin")])
        })?;
        ok(&out, "scp -O to a named target")?;
        files::same_file(
            lab,
            &local,
            &home.join("up.bin"),
            "scp -O",
            TRANSFER_TIMEOUT,
        )?;
        expect_op(
            &s,
            Want {
                target: Some("payload.bin"),
                flags: Some(&flags),
                bytes_written: Some(len),
                status: Some("ok"),
                ..Want::scp("upload file", "up.bin")
            },
            "scp -O to a named target",
        )?;

        let remote = remote_abs(&home, "curl-up.bin");
        let (out, s) = with_session(&gw, "curl -T payload.bin scp://…", || {
            let mut cmd = lab.dev.exec_command("curl");
            cmd.args(["-sS", "-k", "-u", &format!("{LOGIN}:"), "--interface"])
                .arg(V4.enrolled().to_string())
                .arg("-T")
                .arg(&local)
                .arg(format!("scp://{}{remote}", V4.audited()));
            lab.procs()
                .run("curl scp upload", &mut cmd, TRANSFER_TIMEOUT)
        })?;
        ensure!(out.success(), "curl scp upload: {out:?}");
        files::same_file(
            lab,
            &local,
            &home.join("curl-up.bin"),
            "curl",
            TRANSFER_TIMEOUT,
        )?;
        // libssh2 names the file in its record after the remote path, not the local one.
        expect_op(
            &s,
            Want {
                target: Some("curl-up.bin"),
                flags: Some(&flags),
                bytes_written: Some(len),
                status_has: Some("complete (all data sent"),
                ..Want::scp("upload file", &remote)
            },
            "a libssh2 scp upload",
        )?;
        // The server's scp never got the final status byte: it exits 1, relayed as is.
        ensure!(
            channels(&s).iter().any(|c| {
                str_field(c, "command").is_some_and(|x| x.starts_with("scp -t"))
                    && c["exit_status"].as_u64() == Some(1)
            }),
            "the scp -t channel of curl's upload: {s:#}"
        );
        Ok(())
    });
}
