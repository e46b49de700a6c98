//! The SSH clients people use, through sshgw: OpenSSH (ssh, scp, sftp, rsync, git), PuTTY
//! 0.78 (plink, pscp, psftp), Dropbear's dbclient, paramiko, asyncssh, libssh 0.12
//! (ansible-pylibssh) and libssh2 (curl). Each test logs in from the enrolled device to the
//! audited server, checks exit codes, the host key (the per-destination host certificate
//! where the client checks certificates, the per-destination plain pin where it cannot),
//! SFTP/scp where the client has it, and what the session log recorded.
//!
//! The clients are installed by `cargo xtask prereqs` (Debian packages, and a venv under the
//! target dir for the Python libraries); a missing one fails the test. docs/clients.md is
//! the compatibility table these tests back.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sshgw_tests::clients::{self, expect_code};
use sshgw_tests::files;
use sshgw_tests::{Family, Gateway, Lab, Sshd, lab_test};

const V4: Family = Family::V4;
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
const FILE_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of the transferred test file.
const PAYLOAD_LEN: u64 = 200_000;

/// sshd trusting the gateway (jdoe may log in as jdoe and root) and the daemon, started.
fn start(lab: &Lab) -> Result<(Sshd, Gateway<'_>)> {
    let sshd = lab.start_sshd_for_gateway()?;
    let mut gw = lab.gateway()?;
    gw.start()?;
    Ok((sshd, gw))
}

/// A random payload in a fresh directory of the lab; returns (dir, payload path).
fn payload(lab: &Lab) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = lab.new_subdir("client-files")?;
    let file = dir.join("payload.bin");
    files::random_file(lab, &file, PAYLOAD_LEN, FILE_TIMEOUT)?;
    Ok((dir, file))
}

/// Ids of the sessions in the log now.
fn session_ids(gw: &Gateway<'_>) -> Result<BTreeSet<String>> {
    Ok(gw
        .sessions(&[])?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect())
}

/// The sessions that appeared since `before`, each waited for until closed, oldest first.
fn closed_since(gw: &Gateway<'_>, before: &BTreeSet<String>) -> Result<Vec<Value>> {
    let mut ids: Vec<String> = session_ids(gw)?.difference(before).cloned().collect();
    ids.sort();
    ensure!(!ids.is_empty(), "no new session in the log");
    ids.iter()
        .map(|id| gw.wait_session_closed(id, SESSION_TIMEOUT))
        .collect()
}

/// Every session closed as a client close (a normal exit), none as an error.
fn all_client_closes(sessions: &[Value], what: &str) -> Result<()> {
    for s in sessions {
        ensure!(
            s["close_reason"] == "client",
            "{what}: session {} closed with {}, not \"client\": {s:#}",
            s["id"],
            s["close_reason"]
        );
    }
    Ok(())
}

/// The (kind, command, exit status) of every channel of `sessions`.
fn channels(sessions: &[Value]) -> Vec<(String, String, Option<u64>)> {
    sessions
        .iter()
        .flat_map(|s| s["channels"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or_default().to_owned(),
                c["command"].as_str().unwrap_or_default().to_owned(),
                c["exit_status"].as_u64(),
            )
        })
        .collect()
}

/// The (protocol, op, path) of every file operation of `sessions`.
fn file_ops(sessions: &[Value]) -> Vec<(String, String, String)> {
    sessions
        .iter()
        .flat_map(|s| s["file_ops"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            (
                f["protocol"].as_str().unwrap_or_default().to_owned(),
                f["op"].as_str().unwrap_or_default().to_owned(),
                f["path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn has_op(sessions: &[Value], op: &str, path_suffix: &str) -> Result<()> {
    let ops = file_ops(sessions);
    ensure!(
        ops.iter()
            .any(|(_, o, p)| o == op && p.ends_with(path_suffix)),
        "no {op} of …{path_suffix} in the session log: {ops:?}"
    );
    Ok(())
}

/// The first line of `text` containing `needle` (for the kex and auth lines of -v output).
fn line_with<'t>(text: &'t str, needle: &str) -> Result<&'t str> {
    text.lines()
        .find(|l| l.contains(needle))
        .with_context(|| format!("no line with {needle:?} in:\n{text}"))
}

/// OpenSSH: logs in with `none` (with or without a key, in BatchMode too), checks the
/// destination's host certificate under StrictHostKeyChecking, a different host key per
/// destination matching its plain pin, and the -A/-X refusals told and logged.
#[test]
fn openssh_logs_in_and_checks_each_destination() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab)?;
        let ca = lab.sshgw_ca()?.clone();
        let kh = format!("UserKnownHostsFile={}", ca.known_hosts_file.display());
        let ssh = |fam: Family| {
            lab.ssh(fam.audited())
                .bind(fam.enrolled())
                .user("jdoe")
                .option("StrictHostKeyChecking=yes")
                .option(&kh)
                .arg("-v")
        };
        let out = ssh(V4).run("echo openssh-ok; exit 7")?;
        ensure!(out.code() == Some(7), "exit code relayed: {out:?}");
        ensure!(out.stdout.contains("openssh-ok"), "{out:?}");
        // OpenSSH keeps logging in with `none`: nothing to prove, nothing to prompt for.
        ensure!(
            line_with(&out.stderr, "Authenticated to 203.0.113.10")?.contains("using \"none\""),
            "{}",
            out.stderr
        );
        let cert_line = line_with(&out.stderr, "Server host certificate:")?;
        // Key exchange: OpenSSH 9.2's only post-quantum method is sntrup761x25519, which
        // sshgw's russh carries (third_party/russh): the device leg stays post-quantum,
        // as the direct connection is.
        let via = line_with(&out.stderr, "kex: algorithm:")?.to_owned();
        let direct = lab
            .ssh(V4.not_audited())
            .bind(V4.enrolled())
            .arg("-v")
            .run("true")?;
        direct.check()?;
        eprintln!(
            "kex: openssh via sshgw: {via}; direct: {}",
            line_with(&direct.stderr, "kex: algorithm:")?
        );
        ensure!(via.ends_with("sntrup761x25519-sha512"), "{via}");

        // No key at all under BatchMode (which turns off keyboard-interactive): still in.
        ssh(V4)
            .option("PubkeyAuthentication=no")
            .run("exit 0")?
            .check()?;

        // Each destination has its own key; the plain pins name the same keys.
        let out6 = ssh(Family::V6).run("true")?;
        out6.check()?;
        let cert6 = line_with(&out6.stderr, "Server host certificate:")?;
        let pins = clients::plain_pins(lab, &[V4.audited(), Family::V6.audited()])?;
        let (pin4, pin6) = (
            clients::fingerprint(lab, pins.lines().next().unwrap_or_default())?,
            clients::fingerprint(lab, pins.lines().nth(1).unwrap_or_default())?,
        );
        ensure!(pin4 != pin6, "one key for two destinations: {pins}");
        ensure!(cert_line.contains(&pin4), "{cert_line} vs pin {pin4}");
        ensure!(cert6.contains(&pin6), "{cert6} vs pin {pin6}");

        // A client that only has the plain pin (no CA line) verifies the plain key.
        let pin_file = lab.new_subdir("pins")?.join("known_hosts");
        fs::write(&pin_file, &pins)?;
        lab.ssh(V4.audited())
            .bind(V4.enrolled())
            .user("jdoe")
            .option("StrictHostKeyChecking=yes")
            .option(&format!("UserKnownHostsFile={}", pin_file.display()))
            .option("HostKeyAlgorithms=ssh-ed25519")
            .run("true")?
            .check()?;

        // -A and -X are refused; the user is told about -A, both are logged.
        let agent_dir = lab.new_subdir("agent")?;
        let sock = agent_dir.join("agent.sock");
        let mut agent = lab.dev.exec_command("ssh-agent");
        agent.arg("-D").arg("-a").arg(&sock);
        let _agent = lab.procs().spawn("ssh-agent", &mut agent)?;
        sshgw_tests::wait::poll_until(
            "the ssh-agent socket",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok(sock.exists().then_some(())),
        )?;
        let mut cmd = lab
            .ssh(V4.audited())
            .bind(V4.enrolled())
            .user("jdoe")
            .arg("-A")
            .arg("-X")
            .command("echo forwarded");
        cmd.env("SSH_AUTH_SOCK", &sock)
            .env("DISPLAY", "localhost:99");
        let out = lab.ssh(V4.audited()).run_command("ssh -A -X", &mut cmd)?;
        out.check()?;
        ensure!(
            out.stderr
                .contains("sshgw: agent forwarding (-A) is not allowed"),
            "the user is told about -A: {}",
            out.stderr
        );
        gw.wait_for_log("refused agent forwarding", SESSION_TIMEOUT)?;
        gw.wait_for_log("refused X11 forwarding (-X)", SESSION_TIMEOUT)?;
        Ok(())
    });
}

/// OpenSSH's file tools and the programs that use ssh: scp (SFTP mode), sftp -b, rsync and
/// git, with every transfer intact and logged.
#[test]
fn openssh_file_tools_rsync_and_git() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab)?;
        let (dir, file) = payload(lab)?;
        let home = lab.user_home("jdoe");
        let ssh = lab.ssh(V4.audited()).bind(V4.enrolled()).user("jdoe");
        let before = session_ids(&gw)?;
        let f = file.to_string_lossy();
        ssh.scp(&[&f, &ssh.remote("scp-up.bin")])?.check()?;
        files::same_file(lab, &file, &home.join("scp-up.bin"), "scp", FILE_TIMEOUT)?;
        let back = dir.join("sftp-down.bin");
        ssh.sftp_batch(&format!(
            "put {f} sftp-up.bin\nget sftp-up.bin {}\nrename sftp-up.bin sftp-moved.bin\nrm sftp-moved.bin\n",
            back.display()
        ))?
        .check()?;
        files::same_file(lab, &file, &back, "sftp", FILE_TIMEOUT)?;
        ssh.rsync(&["-a", &f, &ssh.remote("rsync-up.bin")])?
            .check()?;
        files::same_file(
            lab,
            &file,
            &home.join("rsync-up.bin"),
            "rsync",
            FILE_TIMEOUT,
        )?;

        // git over ssh: a bare repository on the server, clone, commit, push.
        ssh.run("git init -q --bare repo.git")?.check()?;
        let rsh = format!("ssh {}", ssh.common_args().join(" "));
        let git = |args: &[&str], cwd: &Path| -> Result<()> {
            let mut cmd = lab.dev.exec_command("git");
            cmd.args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(cwd)
                .env("GIT_SSH_COMMAND", &rsh);
            clients::run(lab, &format!("git {}", args[0]), &mut cmd)?.check("git")?;
            Ok(())
        };
        git(&["clone", "-q", &ssh.remote("repo.git"), "clone"], &dir)?;
        let clone = dir.join("clone");
        fs::write(clone.join("README"), "through sshgw\n")?;
        git(&["add", "README"], &clone)?;
        git(&["commit", "-qm", "first"], &clone)?;
        git(&["push", "-q", "origin", "HEAD"], &clone)?;

        let sessions = closed_since(&gw, &before)?;
        all_client_closes(&sessions, "openssh tools")?;
        has_op(&sessions, "open", "scp-up.bin")?;
        has_op(&sessions, "open", "sftp-up.bin")?;
        has_op(&sessions, "posix-rename", "sftp-up.bin")?;
        has_op(&sessions, "remove", "sftp-moved.bin")?;
        let chans = channels(&sessions);
        for needle in ["rsync --server", "git-upload-pack", "git-receive-pack"] {
            ensure!(
                chans
                    .iter()
                    .any(|(k, c, e)| k == "exec" && c.contains(needle) && *e == Some(0)),
                "no exec {needle} with exit 0: {chans:?}"
            );
        }
        Ok(())
    });
}

/// PuTTY 0.78: plink verifies the destination's host certificate (CA configured the PuTTY
/// way), relays the exit code, and with `-no-trivial-auth` logs in when it has a key (the
/// key is proven; with `none` accepted, PuTTY refused this as trivial). pscp (SFTP and
/// -scp) and psftp transfer intact files. Exits are client closes; no warning about
/// PuTTY's `simple@` request.
#[test]
fn putty_plink_pscp_psftp() {
    lab_test(|lab| {
        let (sshd, gw) = start(lab)?;
        let home = clients::putty_home(lab)?;
        let ppk = clients::ppk(lab, lab.client_key())?;
        let (dir, file) = payload(lab)?;
        let before = session_ids(&gw)?;
        let dst = V4.audited().to_string();
        let target = format!("jdoe@{dst}");

        let mut plink = clients::dev_command(lab, &home, "plink");
        plink.args(["-ssh", "-batch", "-v", &target, "echo plink-ok; exit 5"]);
        let out = clients::run(lab, "plink", &mut plink)?;
        expect_code(&out, 5, "plink")?;
        ensure!(out.stdout.contains("plink-ok"), "{out:?}");
        line_with(&out.stderr, "Accepted certificate")?;
        let kex = line_with(&out.stderr, "Doing ")?;
        eprintln!("kex: plink via sshgw: {kex}");
        ensure!(kex.contains("NTRU Prime"), "plink's key exchange: {kex}");

        let f = file.to_string_lossy();
        for (mode, name) in [("-sftp", "pscp-sftp.bin"), ("-scp", "pscp-scp.bin")] {
            let mut pscp = clients::dev_command(lab, &home, "pscp");
            pscp.args(["-batch", "-q", mode, &f, &format!("{target}:{name}")]);
            expect_code(&clients::run(lab, "pscp", &mut pscp)?, 0, "pscp")?;
            let copy = lab.user_home("jdoe").join(name);
            files::same_file(lab, &file, &copy, "pscp", FILE_TIMEOUT)?;
        }
        let back = dir.join("psftp-down.bin");
        let batch = dir.join("psftp.batch");
        fs::write(
            &batch,
            format!(
                "put {f} psftp-up.bin\nget psftp-up.bin {}\nmv psftp-up.bin psftp-moved.bin\nrm psftp-moved.bin\n",
                back.display()
            ),
        )?;
        let mut psftp = clients::dev_command(lab, &home, "psftp");
        psftp.args(["-batch", "-b"]).arg(&batch).arg(&target);
        expect_code(&clients::run(lab, "psftp", &mut psftp)?, 0, "psftp")?;
        files::same_file(lab, &file, &back, "psftp", FILE_TIMEOUT)?;

        let sessions = closed_since(&gw, &before)?;
        all_client_closes(&sessions, "PuTTY")?;
        ensure!(
            channels(&sessions)
                .iter()
                .any(|(k, c, e)| k == "exec" && c.starts_with("scp -t") && *e == Some(0)),
            "pscp -scp's channel: {:?}",
            channels(&sessions)
        );
        // Interactive plink (a terminal, no -batch) pauses after every login, through
        // sshgw as direct with a key: "Access granted. Press Return to begin session." is
        // PuTTY's own anti-spoofing defence (plink -no-antispoof turns it off), not a sign
        // of a trivial login.
        let typed = dir.join("typed");
        fs::write(&typed, "\necho first-line-$((6*7))\nexit\n")?;
        let direct_key = clients::fingerprint(lab, &fs::read_to_string(&sshd.host_key().public)?)?;
        for (what, command) in [
            ("via sshgw", format!("plink -ssh {target}")),
            (
                "direct, with a key",
                format!(
                    "plink -ssh -i {} -hostkey {direct_key} jdoe@{}",
                    ppk.display(),
                    V4.not_audited()
                ),
            ),
        ] {
            let mut term = clients::dev_command(lab, &home, "script");
            term.args(["-qec", &command, "/dev/null"]);
            let out =
                clients::on_terminal(lab, term, &typed, &format!("plink on a terminal, {what}"))?;
            ensure!(
                out.stdout.contains("Access granted. Press Return")
                    && out.stdout.contains("first-line-42"),
                "interactive plink {what}: {out:?}"
            );
        }

        // Last (the check that fails with `none` accepted): -no-trivial-auth with a key.
        let mut strict = clients::dev_command(lab, &home, "plink");
        strict.args(["-ssh", "-batch", "-no-trivial-auth", "-i"]);
        strict.arg(&ppk).args([&target, "exit 0"]);
        let out = clients::run(lab, "plink -no-trivial-auth", &mut strict)?;
        expect_code(&out, 0, "plink -no-trivial-auth with a key")?;
        // Without a key nothing PuTTY counts as non-trivial is left but a password or a
        // prompt: sshgw asks for neither, so this stays refused (docs/clients.md).
        let mut keyless = clients::dev_command(lab, &home, "plink");
        keyless.args(["-ssh", "-batch", "-no-trivial-auth", &target, "exit 0"]);
        let out = clients::run(lab, "plink -no-trivial-auth, no key", &mut keyless)?;
        ensure!(
            out.status.code() == Some(1) && out.stderr.contains("Authentication was trivial"),
            "plink -no-trivial-auth without a key: {out:?}"
        );

        ensure!(
            !gw.log().contains("simple@putty.projects.tartarus.org"),
            "warned about PuTTY's simple@ request:\n{}",
            gw.log()
        );
        // PuTTY pipelines its SFTP requests behind the subsystem request; every one of
        // them must still be in the log.
        has_op(&sessions, "open", "pscp-sftp.bin")?;
        has_op(&sessions, "rename", "psftp-up.bin")?;
        Ok(())
    });
}

/// Dropbear 2022.83 checks plain host keys only: it verifies the destination's own pin, logs
/// in with a key or without one, relays the exit code, and copies with `scp -S dbclient`.
#[test]
fn dropbear_dbclient_with_the_plain_pin() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab)?;
        let pins = clients::plain_pins(lab, &[V4.audited()])?;
        let home = clients::pinned_home(lab, "dropbear", &pins)?;
        let key = clients::dropbear_key(lab, lab.client_key())?;
        let (_dir, file) = payload(lab)?;
        let before = session_ids(&gw)?;
        let target = format!("jdoe@{}", V4.audited());

        let mut db = clients::dev_command(lab, &home, "dbclient");
        db.arg("-i")
            .arg(&key)
            .args([&target, "echo dbclient-ok; exit 4"]);
        let out = clients::run(lab, "dbclient", &mut db)?;
        expect_code(&out, 4, "dbclient")?;
        ensure!(out.stdout.contains("dbclient-ok"), "{out:?}");

        let mut nokey = clients::dev_command(lab, &home, "dbclient");
        nokey.args([&target, "exit 0"]);
        expect_code(
            &clients::run(lab, "dbclient (no key)", &mut nokey)?,
            0,
            "dbclient without a key",
        )?;

        let mut scp = clients::dev_command(lab, &home, "scp");
        scp.args(["-O", "-S", "dbclient", "-i"])
            .arg(&key)
            .args([&*file.to_string_lossy(), &format!("{target}:db-scp.bin")]);
        expect_code(
            &clients::run(lab, "scp -S dbclient", &mut scp)?,
            0,
            "scp -S dbclient",
        )?;
        files::same_file(
            lab,
            &file,
            &lab.user_home("jdoe").join("db-scp.bin"),
            "dbclient scp",
            FILE_TIMEOUT,
        )?;

        let sessions = closed_since(&gw, &before)?;
        all_client_closes(&sessions, "dbclient")?;

        // The pin of another destination (the IPv6 server's key, filed under this one's
        // address) is refused: every destination answers with its own key.
        let other = clients::plain_pins(lab, &[Family::V6.audited()])?;
        let (_, key_part) = other.split_once(' ').context("a pin line")?;
        let wrong = clients::pinned_home(
            lab,
            "dropbear-wrong",
            &format!("{} {key_part}", V4.audited()),
        )?;
        let mut db = clients::dev_command(lab, &wrong, "dbclient");
        db.arg("-i").arg(&key).args([&target, "exit 0"]);
        let out = clients::run(lab, "dbclient, wrong pin", &mut db)?;
        ensure!(
            out.status.code() != Some(0) && out.stderr.contains("host key mismatch"),
            "dbclient with another destination's pin: {out:?}"
        );
        Ok(())
    });
}

/// paramiko 5.0 and ansible-pylibssh (libssh 0.12) check the plain pin, asyncssh 2.24 the
/// host certificate; each runs a command (exit code relayed), an SFTP round trip, and a
/// second login without a key (keyboard-interactive, no prompt).
#[test]
fn python_paramiko_asyncssh_pylibssh() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab)?;
        let ca = lab.sshgw_ca()?.clone();
        let pins = lab.new_subdir("pins")?.join("known_hosts");
        fs::write(&pins, clients::plain_pins(lab, &[V4.audited()])?)?;
        let (dir, file) = payload(lab)?;
        let key = lab.client_key().private.clone();
        let before = session_ids(&gw)?;
        for (client, known_hosts) in [
            ("paramiko", &pins),
            ("asyncssh", &ca.known_hosts_file),
            ("pylibssh", &pins),
        ] {
            let summary =
                clients::python(lab, client, V4.audited(), known_hosts, "jdoe", &key, &dir)?;
            ensure!(summary["exit"] == 6, "{client}: {summary}");
            ensure!(summary["interactive_exit"] == 3, "{client}: {summary}");
            ensure!(
                summary["stdout"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("{client}-ok")),
                "{client}: {summary}"
            );
            let down = dir.join(format!("{client}-down.bin"));
            files::same_file(lab, &file, &down, client, FILE_TIMEOUT)?;
        }
        let sessions = closed_since(&gw, &before)?;
        all_client_closes(&sessions, "python clients")?;
        for client in ["paramiko", "asyncssh", "pylibssh"] {
            has_op(&sessions, "open", &format!("{client}-up.bin"))?;
        }
        Ok(())
    });
}

/// libssh2 1.10 (curl 7.88): the destination's plain key by SHA-256 (`--hostpubsha256`),
/// SFTP upload and download and an scp upload, with a user name and no key or password.
#[test]
fn curl_libssh2_sftp_and_scp() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab)?;
        let pins = clients::plain_pins(lab, &[V4.audited()])?;
        let sha = clients::fingerprint(lab, &pins)?;
        let sha = sha.trim_start_matches("SHA256:").to_owned();
        let home = clients::client_home(lab, "curl")?;
        let (dir, file) = payload(lab)?;
        let before = session_ids(&gw)?;
        let base = format!("{}/~/", V4.audited());
        let curl = |label: &str, args: &[&str]| -> Result<()> {
            let mut cmd = clients::dev_command(lab, &home, "curl");
            cmd.args(["-sS", "-u", "jdoe:", "--hostpubsha256", &sha])
                .args(args);
            expect_code(&clients::run(lab, label, &mut cmd)?, 0, label)
        };
        let f = file.to_string_lossy();
        curl(
            "curl sftp put",
            &["-T", &f, &format!("sftp://{base}curl-up.bin")],
        )?;
        let back = dir.join("curl-down.bin");
        curl(
            "curl sftp get",
            &[
                &format!("sftp://{base}curl-up.bin"),
                "-o",
                &back.to_string_lossy(),
            ],
        )?;
        files::same_file(lab, &file, &back, "curl sftp", FILE_TIMEOUT)?;
        curl(
            "curl scp put",
            &["-T", &f, &format!("scp://{base}curl-scp.bin")],
        )?;
        files::same_file(
            lab,
            &file,
            &lab.user_home("jdoe").join("curl-scp.bin"),
            "curl scp",
            FILE_TIMEOUT,
        )?;

        // A wrong pin is refused by curl: the key it saw is not the destination's.
        let mut wrong = clients::dev_command(lab, &home, "curl");
        wrong
            .args([
                "-sS",
                "-u",
                "jdoe:",
                "--hostpubsha256",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ])
            .arg(format!("sftp://{base}curl-up.bin"));
        let out = clients::run(lab, "curl wrong pin", &mut wrong)?;
        ensure!(
            out.status.code() == Some(60),
            "curl with a wrong pin: {out:?}"
        );

        let sessions = closed_since(&gw, &before)?;
        has_op(&sessions, "open", "curl-up.bin")?;
        Ok(())
    });
}

/// yafc 1.3.7 (libssh 0.10.6) ignores a `none` success and then failed with
/// "Authentication failed: "; with `none` refused for libssh ≤ 0.10 it logs in with
/// keyboard-interactive (no key, no prompt), checks the plain pin and uploads over SFTP.
#[test]
fn yafc_libssh_0_10_over_sftp() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab)?;
        let pins = clients::plain_pins(lab, &[V4.audited()])?;
        let home = clients::pinned_home(lab, "yafc", &pins)?;
        let (dir, file) = payload(lab)?;
        let before = session_ids(&gw)?;
        let commands = dir.join("yafc-commands");
        fs::write(
            &commands,
            format!("put -o yafc-up.bin {}\nquit\n", file.display()),
        )?;
        // libssh 0.10 finds known_hosts through the passwd entry, not $HOME: the client's
        // home is bind-mounted over /root in a mount namespace of its own.
        let mut term = clients::dev_command(lab, &home, "unshare");
        term.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$HOME\" /root && exec script -qec \"$1\" /dev/null",
            "yafc",
            &format!("yafc -n -q sftp://jdoe@{}/", V4.audited()),
        ]);
        let out = clients::on_terminal(lab, term, &commands, "yafc on a terminal")?;
        ensure!(
            !out.stdout.contains("Authentication failed"),
            "yafc: {out:?}"
        );
        files::same_file(
            lab,
            &file,
            &lab.user_home("jdoe").join("yafc-up.bin"),
            "yafc",
            FILE_TIMEOUT,
        )?;
        let sessions = closed_since(&gw, &before)?;
        all_client_closes(&sessions, "yafc")?;
        Ok(())
    });
}

/// A client that dies while its program runs (no channel close, no disconnect) is still an
/// error in the session log, unlike a client that closes after its channels ended.
#[test]
fn abrupt_close_mid_session_is_an_error() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab)?;
        let before = session_ids(&gw)?;
        let ssh = lab.ssh(V4.audited()).bind(V4.enrolled()).user("jdoe");
        let client = ssh.spawn("echo started; sleep 600")?;
        gw.wait_for_session(&["--active"], SESSION_TIMEOUT, "a live exec channel", |s| {
            s["channels"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["kind"] == "exec"))
        })?;
        client.kill()?;
        let sessions = closed_since(&gw, &before)?;
        ensure!(
            sessions.len() == 1
                && sessions[0]["close_reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("error: ")),
            "a client killed mid-session: {sessions:#?}"
        );
        Ok(())
    });
}
