//! SSH relay integration tests: the device runs plain OpenSSH `ssh` from the enrolled address
//! to the audited server; sshgw terminates SSH on the router and logs in to the real sshd with
//! a certificate from its user CA (principal = the email local part `jdoe`, source-address =
//! the router's upstream address). sshd is configured the ways Cloudflare's Audit SSH docs
//! describe (TrustedUserCAKeys, AuthorizedPrincipalsFile, AuthorizedPrincipalsCommand).
//!
//! IPv4 unless stated; every test builds its own lab. The direct path to the same sshd
//! (203.0.113.20, not audited) with the lab client key is the reference for behaviour that
//! must not change through the relay.
//!
//! Needs root, the sshgw binary (`SSHGW_BIN=/abs/path/sshgw`), OpenSSH client/server, scp,
//! sftp and rsync:
//! `SSHGW_BIN=$PWD/target/debug/sshgw cargo test -p sshgw-tests --test relay -- --test-threads=2`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sshgw_tests::files;
use sshgw_tests::ssh::PTY_EXPECT_TIMEOUT;
use sshgw_tests::{
    Family, Gateway, GatewayConfig, KeyPair, Lab, OTHER_TCP_PORT, PtySession, Ssh, SshConnection,
    SshOutput, Sshd, SshdConfig, host_port, lab_test,
};

const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// A refused relay must be reported well before any ssh-level timeout.
const PROMPT_FAILURE: Duration = Duration::from_secs(10);
/// Deadline of one 256 MiB transfer (debug builds of the daemon are slow at crypto).
const BULK_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline of one scp/sftp/rsync run.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

const V4: Family = Family::V4;

/// The daemon's log line after a successful upstream login.
const LOGGED_IN: &str = "logged in to the server";
/// What OpenSSH prints for the disconnect message sshgw sends.
const DISCONNECT: &str = "Received disconnect from";
const CERT_REFUSED: &str = "refused the sshgw certificate";

/// `ssh` from the enrolled device to the audited server (relayed).
fn relayed(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.audited()).bind(V4.enrolled())
}

/// `ssh` from the enrolled device to the non-audited address of the same sshd (direct, with
/// the lab client key).
fn direct(lab: &Lab) -> Ssh<'_> {
    lab.ssh(V4.not_audited()).bind(V4.enrolled())
}

/// sshd with `config`, then the daemon with `gw`, started.
fn start<'a>(lab: &'a Lab, config: SshdConfig, gw: GatewayConfig) -> Result<(Sshd, Gateway<'a>)> {
    let sshd = lab.start_sshd_with(config)?;
    let mut gateway = lab.gateway_with(gw)?;
    gateway.start()?;
    Ok((sshd, gateway))
}

/// stdout lines of a successful run.
fn lines(out: &SshOutput) -> Result<Vec<String>> {
    out.check()?;
    Ok(out.stdout.lines().map(str::to_owned).collect())
}

/// The run failed as ssh (exit 255) with every needle on stderr.
fn expect_ssh_failure(out: &SshOutput, needles: &[&str], what: &str) -> Result<()> {
    ensure!(
        out.code() == Some(255),
        "{what}: ssh should fail with exit code 255: {out:?}"
    );
    for needle in needles {
        ensure!(
            out.stderr.contains(needle),
            "{what}: ssh's stderr should contain {needle:?}: {:?}",
            out.stderr
        );
    }
    Ok(())
}

/// The daemon log line of the (first) upstream login for `login`.
fn login_line(gw: &Gateway<'_>, login: &str) -> Result<String> {
    let needle = format!("login={login:?}");
    gw.wait_for_log(&needle, LOG_TIMEOUT)?;
    gw.log()
        .lines()
        .find(|l| l.contains(LOGGED_IN) && l.contains(&needle))
        .map(str::to_owned)
        .with_context(|| format!("no '{LOGGED_IN}' line with {needle}:\n{}", gw.log()))
}

/// ssh's stderr without the `Warning: Permanently added '<host>' ...` line (it names the
/// host, so it differs between the relayed and the direct address).
fn stderr_sans_known_hosts_warning(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with("Warning: Permanently added "))
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------------------------------
// 1-4: sshd configurations from the Cloudflare docs
// ------------------------------------------------------------------------------------------

/// 1. `TrustedUserCAKeys` only: the Unix user is the email prefix (`ssh jdoe@...`). A login
///    that is not the principal is refused with a clear message.
#[test]
fn ca_only_login_as_email_prefix() {
    lab_test(|lab| {
        let (sshd, gw) = start(
            lab,
            SshdConfig::default().trust_sshgw_ca(),
            GatewayConfig::default(),
        )?;
        let out = relayed(lab)
            .user("jdoe")
            .run("id -un; echo $SSH_CONNECTION")?;
        let l = lines(&out)?;
        ensure!(
            l.first().map(String::as_str) == Some("jdoe"),
            "id -un: {l:?}"
        );
        let conn = SshConnection::parse(l.get(1).context("no SSH_CONNECTION line")?)?;
        ensure!(
            conn.client == V4.router_wan() && conn.server == V4.audited(),
            "sshd should see the router's upstream address connecting to the audited address: {conn:?}"
        );

        let line = login_line(&gw, "jdoe")?;
        ensure!(
            line.contains("principal=jdoe") && line.contains("cert_serial="),
            "login log line: {line}"
        );
        gw.wait_for_log_line(&["exec", "command=", "id -un"], LOG_TIMEOUT)?;
        sshd.wait_for_log(
            &format!("Accepted publickey for jdoe from {}", V4.router_wan()),
            LOG_TIMEOUT,
        )?;
        ensure!(
            sshd.log().contains("ED25519-CERT"),
            "sshd should have accepted a certificate:\n{}",
            sshd.log()
        );

        // root is not the principal and there is no principals file.
        let out = relayed(lab).user("root").run("true")?;
        expect_ssh_failure(
            &out,
            &[
                DISCONNECT,
                "sshgw:",
                CERT_REFUSED,
                "login \"root\" (principal \"jdoe\")",
            ],
            "root without a principals entry",
        )
    });
}

/// 2. `AuthorizedPrincipalsFile` lets `jdoe` log in as `johndoe`; `vmuser` has no entry and is
///    refused with the clear message.
#[test]
fn principals_file_maps_login() {
    lab_test(|lab| {
        let (_sshd, gw) = start(
            lab,
            SshdConfig::default()
                .trust_sshgw_ca()
                .principals("johndoe", &["jdoe"]),
            GatewayConfig::default(),
        )?;
        let l = lines(&relayed(lab).user("johndoe").run("id -un")?)?;
        ensure!(l == ["johndoe"], "id -un as johndoe: {l:?}");
        let line = login_line(&gw, "johndoe")?;
        ensure!(line.contains("principal=jdoe"), "login log line: {line}");

        let started = Instant::now();
        let out = relayed(lab).user("vmuser").run("id -un")?;
        expect_ssh_failure(
            &out,
            &[
                DISCONNECT,
                "sshgw:",
                CERT_REFUSED,
                "login \"vmuser\" (principal \"jdoe\")",
                "TrustedUserCAKeys",
            ],
            "vmuser without a principals entry",
        )?;
        ensure!(
            started.elapsed() < PROMPT_FAILURE,
            "the refusal took {:?}",
            started.elapsed()
        );
        ensure!(out.stdout.is_empty(), "nothing should run: {out:?}");
        Ok(())
    });
}

/// 3. A principals file listing several users' prefixes for a shared account.
#[test]
fn principals_file_shared_account() {
    lab_test(|lab| {
        let (_sshd, gw) = start(
            lab,
            SshdConfig::default()
                .trust_sshgw_ca()
                .principals("vmuser", &["alice", "jdoe", "bob"]),
            GatewayConfig::default(),
        )?;
        let l = lines(&relayed(lab).user("vmuser").run("id -un; pwd")?)?;
        ensure!(
            l.first().map(String::as_str) == Some("vmuser"),
            "id -un: {l:?}"
        );
        ensure!(
            l.get(1).is_some_and(|p| p.ends_with("/home/vmuser")),
            "vmuser should start in its lab home: {l:?}"
        );
        login_line(&gw, "vmuser")?;
        Ok(())
    });
}

/// The principals command: prints every principal of the certificate it is given (`%t %k`).
const PRINCIPALS_COMMAND: &str = r#"# $1 = login, $2 = certificate type (%t), $3 = base64 certificate (%k)
printf '%s %s\n' "$2" "$3" | ssh-keygen -L -f - |
    awk '/^[[:space:]]*Principals:/ { p = 1; next } p && /:/ { p = 0 } p { print $1 }'
"#;

/// 4. `AuthorizedPrincipalsCommand` accepting any principal on the certificate.
#[test]
fn principals_command_accepts_cert_principals() {
    lab_test(|lab| {
        let (sshd, gw) = start(
            lab,
            SshdConfig::default()
                .trust_sshgw_ca()
                .principals_command(PRINCIPALS_COMMAND),
            GatewayConfig::default(),
        )?;
        let out = relayed(lab).user("vmuser").run("id -un")?;
        let l = lines(&out).with_context(|| format!("sshd log:\n{}", sshd.log()))?;
        ensure!(l == ["vmuser"], "id -un as vmuser: {l:?}");
        let line = login_line(&gw, "vmuser")?;
        ensure!(line.contains("principal=jdoe"), "login log line: {line}");
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 5-8: sessions, exit status, bulk data, file transfer
// ------------------------------------------------------------------------------------------

/// Runs `stty size` in the pty shell (marker `r<n>:`) and returns (rows, cols).
fn stty_size(term: &mut PtySession, n: u32) -> Result<(u16, u16)> {
    // The echoed command line shows `r$((1000+n))`, never the expanded marker.
    term.send(&format!("echo \"r$((1000+{n})):$(stty size)\"\n"))?;
    term.expect(&format!("r{}:", 1000 + n), PTY_EXPECT_TIMEOUT)?;
    let rest = term.expect("\r\n", PTY_EXPECT_TIMEOUT)?;
    let mut it = rest.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(rows)), Some(Ok(cols))) => Ok((rows, cols)),
        _ => bail!("unexpected stty size output {rest:?}"),
    }
}

/// 5. An interactive shell on a real terminal: the initial size, a window change (SIGWINCH)
///    and a clean exit.
#[test]
fn pty_shell_window_change() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let mut term = relayed(lab).user("jdoe").pty_session(None, (24, 80))?;
        ensure!(
            stty_size(&mut term, 1)? == (24, 80),
            "initial terminal size"
        );

        term.resize(40, 132)?;
        // ssh forwards the size when it handles SIGWINCH; a command typed right after the
        // resize may in principle overtake it, so ask again (bounded) until the size shows.
        let deadline = Instant::now() + SESSION_TIMEOUT;
        let mut n = 2;
        loop {
            let size = stty_size(&mut term, n)?;
            if size == (40, 132) {
                break;
            }
            ensure!(
                size == (24, 80) && Instant::now() < deadline,
                "after resizing to 40x132, stty size says {size:?}"
            );
            n += 1;
        }

        term.send("exit\n")?;
        let status = term.wait_exit(SESSION_TIMEOUT)?;
        ensure!(
            status.success(),
            "ssh should exit 0 after `exit`: {status:?}; transcript: {:?}",
            term.transcript()
        );
        gw.wait_for_log_line(&["shell", "channel="], LOG_TIMEOUT)?;
        // The close record ("connection closed" / "session closed", with its reason).
        gw.wait_for_log_line(&["closed", "close_reason="], LOG_TIMEOUT)?;
        Ok(())
    });
}

/// 6. Exit codes and death by signal look the same relayed and direct.
#[test]
fn exit_status_matches_direct() {
    lab_test(|lab| {
        let (_sshd, _gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        for (cmd, expected) in [
            ("exit 0", Some(0)),
            ("exit 1", Some(1)),
            ("exit 255", Some(255)),
            ("echo out; echo err >&2; exit 3", Some(3)),
            ("kill -TERM $$", None),
            ("sh -c 'kill -KILL $$'", None),
        ] {
            let d = direct(lab).run(cmd)?;
            let r = relayed(lab).run(cmd)?;
            eprintln!(
                "`{cmd}`: direct {:?} stderr {:?}; relayed {:?} stderr {:?}",
                d.status, d.stderr, r.status, r.stderr
            );
            match expected {
                Some(code) => ensure!(d.code() == Some(code), "direct `{cmd}`: {d:?}"),
                None => {
                    // OpenSSH reports a remote death by signal as exit code 255 and says
                    // nothing at the default log level; at debug level it shows the
                    // exit-signal request, which must come through the relay too.
                    ensure!(d.code() == Some(255), "direct `{cmd}`: {d:?}");
                    for (what, ssh) in [("direct", direct(lab)), ("relayed", relayed(lab))] {
                        let v = ssh.arg("-v").run(cmd)?;
                        ensure!(
                            v.code() == Some(255) && v.stderr.contains("rtype exit-signal"),
                            "{what} `{cmd}` with -v should show the exit-signal request: {v:?}"
                        );
                    }
                }
            }
            ensure!(
                r.code() == d.code() && r.status == d.status,
                "`{cmd}`: relayed exit {:?}, direct {:?}\nrelayed: {r:?}\ndirect: {d:?}",
                r.status,
                d.status
            );
            ensure!(
                r.stdout == d.stdout
                    && stderr_sans_known_hosts_warning(&r.stderr)
                        == stderr_sans_known_hosts_warning(&d.stderr),
                "`{cmd}`: output differs\nrelayed: {r:?}\ndirect: {d:?}"
            );
        }
        Ok(())
    });
}

/// 7. 256 MiB each way through stdin/stdout, byte-exact.
#[test]
fn bulk_256mib_each_way() {
    lab_test(|lab| {
        const LEN: u64 = 256 * 1024 * 1024;
        let (_sshd, _gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let home = lab.user_home("jdoe");
        let ssh = relayed(lab).user("jdoe").timeout(BULK_TIMEOUT);

        let local = lab.dir().join("upload.bin");
        files::random_file(lab, &local, LEN, BULK_TIMEOUT)?;
        let want = files::sha256(lab, &local, BULK_TIMEOUT)?;
        let started = Instant::now();
        let out = ssh
            .clone()
            .stdin_file(&local)
            .run("tee up.bin | sha256sum")?;
        let up = started.elapsed();
        out.check()?;
        ensure!(
            files::digest(&out.stdout)? == want,
            "upload: the server hashed {:?}, the local file is {want}",
            out.stdout
        );
        ensure!(
            files::sha256(lab, &home.join("up.bin"), BULK_TIMEOUT)? == want,
            "upload: the file the server wrote differs"
        );
        fs::remove_file(home.join("up.bin"))?;

        let down = lab.dir().join("download.bin");
        let started = Instant::now();
        let out = ssh
            .clone()
            .stdout_file(&down)
            .run(&format!("head -c {LEN} /dev/urandom | tee down.bin"))?;
        let down_time = started.elapsed();
        out.check()?;
        ensure!(
            fs::metadata(&down)?.len() == LEN,
            "download: got {} bytes",
            fs::metadata(&down)?.len()
        );
        files::same_file(lab, &home.join("down.bin"), &down, "download", BULK_TIMEOUT)?;
        eprintln!(
            "256 MiB upload {up:?} ({:.1} MiB/s), download {down_time:?} ({:.1} MiB/s)",
            256.0 / up.as_secs_f64(),
            256.0 / down_time.as_secs_f64()
        );
        Ok(())
    });
}

/// 8. scp (SFTP mode and legacy `-O`), `sftp -b` and `rsync -e ssh`, both directions.
#[test]
fn scp_sftp_rsync() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let home = lab.user_home("jdoe");
        let ssh = relayed(lab).user("jdoe").timeout(TRANSFER_TIMEOUT);
        let local = lab.dir().join("payload.bin");
        files::random_file(lab, &local, 5 * 1024 * 1024 + 12345, BULK_TIMEOUT)?;
        let local_s = local.to_str().context("path")?;

        for (mode, flags) in [("scp-sftp", &[][..]), ("scp-legacy", &["-O"][..])] {
            let remote = format!("{mode}.bin");
            let mut args: Vec<&str> = flags.to_vec();
            let target = ssh.remote(&remote);
            args.extend([local_s, target.as_str()]);
            ssh.scp(&args)?
                .check()
                .with_context(|| format!("{mode} upload"))?;
            files::same_file(
                lab,
                &local,
                &home.join(&remote),
                &format!("{mode} upload"),
                BULK_TIMEOUT,
            )?;

            let back = lab.dir().join(format!("{mode}.down"));
            let mut args: Vec<&str> = flags.to_vec();
            args.extend([target.as_str(), back.to_str().context("path")?]);
            ssh.scp(&args)?
                .check()
                .with_context(|| format!("{mode} download"))?;
            files::same_file(
                lab,
                &local,
                &back,
                &format!("{mode} download"),
                BULK_TIMEOUT,
            )?;
        }

        let back = lab.dir().join("sftp.down");
        let out = ssh.sftp_batch(&format!(
            "put {local_s} sftp.bin\nget sftp.bin {}\nls -l\nrename sftp.bin sftp-renamed.bin\nls\nrm sftp-renamed.bin\nls\n",
            back.display()
        ))?;
        out.check().context("sftp -b")?;
        files::same_file(lab, &local, &back, "sftp get", BULK_TIMEOUT)?;
        ensure!(
            out.stdout.contains("sftp-renamed.bin"),
            "sftp ls after rename should list sftp-renamed.bin: {}",
            out.stdout
        );
        ensure!(
            !home.join("sftp.bin").exists() && !home.join("sftp-renamed.bin").exists(),
            "sftp rename + rm should leave neither file"
        );

        let target = ssh.remote("rsync.bin");
        ssh.rsync(&["-a", local_s, &target])?
            .check()
            .context("rsync upload")?;
        files::same_file(
            lab,
            &local,
            &home.join("rsync.bin"),
            "rsync upload",
            BULK_TIMEOUT,
        )?;
        let back = lab.dir().join("rsync.down");
        ssh.rsync(&["-a", &target, back.to_str().context("path")?])?
            .check()
            .context("rsync download")?;
        files::same_file(lab, &local, &back, "rsync download", BULK_TIMEOUT)?;

        gw.wait_for_log_line(&["subsystem", "sftp"], LOG_TIMEOUT)?;
        gw.wait_for_log_line(&["exec", "command=", "scp -t"], LOG_TIMEOUT)?;
        gw.wait_for_log_line(&["exec", "command=", "rsync --server"], LOG_TIMEOUT)?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------
// 9-11: trust failures and host keys
// ------------------------------------------------------------------------------------------

/// 9. A server that does not trust the sshgw CA: prompt, clear failure.
#[test]
fn server_without_ca_trust_is_reported() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::default(), GatewayConfig::default())?;
        let started = Instant::now();
        let out = relayed(lab).run("true")?;
        let took = started.elapsed();
        expect_ssh_failure(
            &out,
            &[DISCONNECT, "sshgw:", CERT_REFUSED],
            "server without TrustedUserCAKeys",
        )?;
        ensure!(took < PROMPT_FAILURE, "the refusal took {took:?}");
        gw.wait_for_log("relay refused", LOG_TIMEOUT)?;
        Ok(())
    });
}

/// 10a. A pre-seeded, different host key for the server: refused, and known_hosts untouched.
#[test]
fn upstream_host_key_mismatch() {
    lab_test(|lab| {
        let sshd = lab.start_sshd_for_gateway()?;
        let mut gw = lab.gateway()?;
        let other = KeyPair::generate(lab.procs(), &lab.dir().join("other_host_key"), "other")?;
        let seeded = format!("{} {}\n", V4.audited(), other.public_line()?);
        fs::write(gw.known_hosts_path(), &seeded)?;
        gw.start()?;

        let out = relayed(lab).run("true")?;
        expect_ssh_failure(
            &out,
            &[
                DISCONNECT,
                "sshgw:",
                &format!("host key of {}", host_port(V4.audited(), 22)),
                "does not match the key pinned by the gateway",
            ],
            "mismatching upstream host key",
        )?;
        let now = fs::read_to_string(gw.known_hosts_path())?;
        ensure!(
            now == seeded,
            "known_hosts changed:\nbefore: {seeded:?}\nafter: {now:?}"
        );
        ensure!(
            !sshd.log().contains("Accepted"),
            "nothing may log in to the server:\n{}",
            sshd.log()
        );
        Ok(())
    });
}

/// 10b. TOFU: the first connection pins the server's real key; later ones are accepted.
#[test]
fn upstream_host_key_tofu() {
    lab_test(|lab| {
        let (sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        ensure!(
            !gw.known_hosts_path().exists()
                || fs::read_to_string(gw.known_hosts_path())?.trim().is_empty(),
            "known_hosts should start empty"
        );
        relayed(lab).run("true")?.check()?;
        let key = sshd.host_key().public_line()?;
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        let text = fs::read_to_string(gw.known_hosts_path())?;
        let pinned = text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3
                && f[0].split(',').any(|h| h == V4.audited().to_string())
                && f[1..3] == key[..]
        });
        ensure!(
            pinned,
            "known_hosts should pin {} {}: {text:?}",
            V4.audited(),
            key.join(" ")
        );
        relayed(lab)
            .run("true")?
            .check()
            .context("second connection")?;
        ensure!(
            fs::read_to_string(gw.known_hosts_path())? == text,
            "a trusted key must not be appended again"
        );
        Ok(())
    });
}

/// 11. The device trusts the gateway's host CA: StrictHostKeyChecking=yes passes with the
///     `@cert-authority` line and fails without it.
#[test]
fn device_trusts_gateway_host_ca() {
    lab_test(|lab| {
        let (_sshd, _gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let ca = lab.sshgw_ca()?;
        ensure!(
            ca.known_hosts_line
                .starts_with("@cert-authority * ssh-ed25519 "),
            "sshgw ca known-hosts: {:?}",
            ca.known_hosts_line
        );
        let strict = |known_hosts: &Path| {
            relayed(lab)
                .option("StrictHostKeyChecking=yes")
                .option(&format!("UserKnownHostsFile={}", known_hosts.display()))
                .option("GlobalKnownHostsFile=/dev/null")
        };
        let out = strict(&ca.known_hosts_file).run("echo ok")?;
        ensure!(lines(&out)? == ["ok"], "{out:?}");
        ensure!(
            !out.stderr.contains("Permanently added"),
            "nothing should be added to known_hosts: {:?}",
            out.stderr
        );

        let empty = lab.dir().join("empty_known_hosts");
        fs::write(&empty, "")?;
        let out = strict(&empty).run("echo ok")?;
        expect_ssh_failure(
            &out,
            &["Host key verification failed"],
            "without the CA line",
        )
    });
}

// ------------------------------------------------------------------------------------------
// 12-14: forwarding, IPv6, several channels
// ------------------------------------------------------------------------------------------

/// `-W` target: the server's own sshd on the other port (answers with its banner at once).
fn w_target() -> String {
    host_port(V4.audited(), OTHER_TCP_PORT)
}

/// 12a. Port forwarding is refused by default (-W and -R).
#[test]
fn forwarding_refused_by_default() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let out = relayed(lab).arg("-W").arg(&w_target()).run("")?;
        ensure!(
            out.code() == Some(255)
                && (out.stderr.contains("administratively prohibited")
                    || out.stderr.contains("open failed")),
            "ssh -W should be refused: {out:?}"
        );
        ensure!(
            !out.stdout.contains("SSH-2.0-"),
            "no banner may come through: {out:?}"
        );

        let out = relayed(lab)
            .option("ExitOnForwardFailure=yes")
            .arg("-R")
            .arg("0:127.0.0.1:9")
            .run("true")?;
        expect_ssh_failure(
            &out,
            &["remote port forwarding failed"],
            "ssh -R with forwarding disabled",
        )?;
        gw.wait_for_log("refused port forwarding", LOG_TIMEOUT)?;
        gw.wait_for_log("refused remote forwarding", LOG_TIMEOUT)?;
        Ok(())
    });
}

/// 12b. With `[ssh] port_forwarding = true`, -W reaches port 2222 and -R is granted.
#[test]
fn forwarding_relayed_when_enabled() {
    lab_test(|lab| {
        let (_sshd, _gw) = start(
            lab,
            SshdConfig::gateway(),
            GatewayConfig::default().ssh("port_forwarding = true"),
        )?;
        let session = relayed(lab).arg("-W").arg(&w_target()).session("")?;
        let banner = session.read_line(SESSION_TIMEOUT)?;
        ensure!(
            banner.starts_with("SSH-2.0-OpenSSH"),
            "ssh -W {} should read the sshd banner, got {banner:?}",
            w_target()
        );
        session.close(SESSION_TIMEOUT)?;

        let out = relayed(lab)
            .option("ExitOnForwardFailure=yes")
            .arg("-R")
            .arg("0:127.0.0.1:9")
            .run("true")?;
        out.check().context("ssh -R with forwarding enabled")?;
        ensure!(
            out.stderr.contains("Allocated port"),
            "ssh should report the allocated port: {:?}",
            out.stderr
        );
        Ok(())
    });
}

/// 13. IPv6: a relayed exec from fd00:96::7 to 2001:db8:1::10.
#[test]
fn ipv6_relayed_exec() {
    lab_test(|lab| {
        let fam = Family::V6;
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let out = lab
            .ssh(fam.audited())
            .bind(fam.enrolled())
            .run("id -un; echo $SSH_CONNECTION")?;
        let l = lines(&out)?;
        ensure!(l.first().map(String::as_str) == Some("root"), "{l:?}");
        let conn = SshConnection::parse(l.get(1).context("no SSH_CONNECTION")?)?;
        ensure!(
            conn.client == fam.router_wan() && conn.server == fam.audited(),
            "{conn:?}"
        );
        gw.wait_for_intercept(fam.audited(), 22, LOG_TIMEOUT)?;
        let line = login_line(&gw, "root")?;
        ensure!(
            line.contains(&format!("orig_dst={}", host_port(fam.audited(), 22))),
            "{line}"
        );
        Ok(())
    });
}

/// 14. Several channels on one connection (OpenSSH multiplexing): two sessions open at the
///     same time over one relayed connection.
#[test]
fn multiplexed_channels() {
    lab_test(|lab| {
        let (_sshd, gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let control = lab.dir().join("cm.sock");
        let (master, mux) = relayed(lab).control_master(&control)?;

        // A holds its channel open (waiting on stdin) while B runs to completion.
        let mut a = mux().session("echo A-start; read x; echo A-got-$x")?;
        ensure!(a.read_line(SESSION_TIMEOUT)? == "A-start");
        // B's stdin is /dev/null, so the master sends CLOSE right after B's EOF; the exit
        // status must still come through (OpenSSH's sshd sends it after a client CLOSE).
        let b = mux().run("echo B-done")?;
        ensure!(
            b.success() && b.stdout == "B-done\n",
            "command B over the shared connection should print B-done and exit 0 \
             (exit 255 with the output = its exit status was lost): {b:?}"
        );
        a.send_line("hello")?;
        ensure!(a.read_line(SESSION_TIMEOUT)? == "A-got-hello");
        ensure!(a.close(SESSION_TIMEOUT)?.success(), "session A failed");

        let log = gw.log();
        let logins = log.lines().filter(|l| l.contains(LOGGED_IN)).count();
        ensure!(
            logins == 1,
            "both sessions should share one relayed connection, saw {logins} logins:\n{log}"
        );
        let execs = log.lines().filter(|l| l.contains(" exec ")).count();
        ensure!(execs >= 2, "expected two exec requests in the log:\n{log}");

        mux().arg("-O").arg("exit").run("")?.check()?;
        master.wait_exit(SESSION_TIMEOUT)?;
        Ok(())
    });
}

/// 14b. The exit status must survive a client that closes its channel first. An OpenSSH
///      control master whose client's stdin is at EOF sends CHANNEL_CLOSE as soon as the
///      server's EOF arrives; sshd still sends exit-status afterwards. A command that closes
///      its output a second before it exits makes that order certain. Compared with the direct
///      path to the same sshd.
#[test]
fn exit_status_after_client_close() {
    lab_test(|lab| {
        let (_sshd, _gw) = start(lab, SshdConfig::gateway(), GatewayConfig::default())?;
        let cmd = "echo out; exec >&- 2>&-; sleep 1; exit 3";
        let mut results = Vec::new();
        for (what, ssh) in [("direct", direct(lab)), ("relayed", relayed(lab))] {
            let control = lab.dir().join(format!("cm-{what}.sock"));
            let (master, client) = ssh.control_master(&control)?;
            let out = client().run(cmd)?;
            eprintln!("{what}: {out:?}");
            results.push((what, out));
            client().arg("-O").arg("exit").run("")?.check()?;
            master.wait_exit(SESSION_TIMEOUT)?;
        }
        let (d, r) = (&results[0].1, &results[1].1);
        ensure!(
            d.code() == Some(3) && d.stdout == "out\n",
            "direct (reference): {d:?}"
        );
        ensure!(
            r.code() == Some(3) && r.stdout == "out\n",
            "relayed: the exit status 3 was lost (ssh exit {:?}); the client's CHANNEL_CLOSE \
             arrived before the server's exit-status: {r:?}",
            r.code()
        );
        Ok(())
    });
}

/// `[ssh] device_ciphers` limits the device leg: with AES-GCM only, OpenSSH picks it and a
/// ChaCha20-only client is refused. The server leg prefers AES-GCM by default.
#[test]
fn cipher_lists_apply_per_leg() {
    lab_test(|lab| {
        // sshd logs the negotiated cipher at DEBUG1 (its first LogLevel line wins).
        let base = sshgw_tests::sshd::BASE_LINES
            .iter()
            .map(|l| {
                if l.starts_with("LogLevel") {
                    "LogLevel DEBUG1".to_owned()
                } else {
                    (*l).to_owned()
                }
            })
            .collect();
        let (sshd, _gw) = start(
            lab,
            SshdConfig::default().trust_sshgw_ca().replace_base(base),
            GatewayConfig::default()
                .ssh(r#"device_ciphers = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]"#),
        )?;
        let out = relayed(lab)
            .user("jdoe")
            .option("LogLevel=DEBUG1")
            .run("echo relayed")?;
        ensure!(lines(&out)? == ["relayed"], "{out:?}");
        ensure!(
            out.stderr
                .contains("kex: server->client cipher: aes128-gcm@openssh.com"),
            "the device leg should negotiate aes128-gcm: {}",
            out.stderr
        );
        sshd.wait_for_log(
            "kex: client->server cipher: aes128-gcm@openssh.com",
            LOG_TIMEOUT,
        )?;

        let out = relayed(lab)
            .user("jdoe")
            .option("Ciphers=chacha20-poly1305@openssh.com")
            .run("true")?;
        expect_ssh_failure(&out, &["no matching cipher"], "a ChaCha20-only client")
    });
}
