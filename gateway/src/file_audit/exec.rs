//! What an `exec` request runs, as far as the audit is concerned: an sftp-server binary
//! (audited as SFTP, like the `sftp` subsystem), plain legacy scp (audited as scp), a
//! program that hands the session over to a channel sshgw cannot record, or anything else.

use super::scp::{self, ScpCommand, shell_words};

/// Programs that start a session of their own outside the SSH connection, so that nothing
/// of it passes through sshgw: `(program name, what it belongs to)`. The one list of them.
pub const UNRECORDABLE_PROGRAMS: &[(&str, &str)] = &[
    // mosh: the SSH exec only starts the server; the terminal session runs over UDP.
    ("mosh-server", "mosh"),
    // Eternal Terminal: the SSH exec hands a key to the server; the session runs over TCP.
    ("etterminal", "Eternal Terminal"),
];

/// What an exec command line runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecProgram {
    /// An sftp-server binary (`sftp -s /usr/lib/openssh/sftp-server`): the channel speaks
    /// SFTP.
    SftpServer,
    /// A plain legacy scp invocation ([`scp::parse_command`]).
    Scp(ScpCommand),
    /// A program of [`UNRECORDABLE_PROGRAMS`], by its name.
    Unrecordable(&'static str),
    Other,
}

/// Classifies an exec command line.
///
/// - SFTP: the program (the first word, split as a POSIX shell would, after an optional
///   `exec`) is a name or path ending in `sftp-server`, with any arguments. Shell syntax
///   around it (`;`, `|`, `$`, …) makes it something else.
/// - Unrecordable: any word of the command, wherever it stands (`a | etterminal`, quoted,
///   after a path), names a program of [`UNRECORDABLE_PROGRAMS`]. This errs towards
///   refusing: `which mosh-server` is taken for one too.
/// - Legacy scp as [`scp::parse_command`] recognises it.
pub fn classify(command: &str) -> ExecProgram {
    if let Some(name) = unrecordable(command) {
        return ExecProgram::Unrecordable(name);
    }
    if is_sftp_server(command) {
        return ExecProgram::SftpServer;
    }
    match scp::parse_command(command) {
        Some(cmd) => ExecProgram::Scp(cmd),
        None => ExecProgram::Other,
    }
}

fn is_sftp_server(command: &str) -> bool {
    let Some(words) = shell_words(command) else {
        return false;
    };
    let mut words = words.iter().map(String::as_str);
    let program = match words.next() {
        Some("exec") => words.next(),
        first => first,
    };
    program.is_some_and(|p| p.ends_with("sftp-server"))
}

/// The unrecordable program a command names anywhere, as a word or a path's last part.
fn unrecordable(command: &str) -> Option<&'static str> {
    let word_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    command
        .split(|c: char| !word_char(c))
        .filter_map(|word| word.rsplit('/').next())
        .find_map(|name| {
            UNRECORDABLE_PROGRAMS
                .iter()
                .find(|(program, _)| *program == name)
                .map(|(program, _)| *program)
        })
}

/// What a program of [`UNRECORDABLE_PROGRAMS`] belongs to (`mosh`), for messages.
pub fn unrecordable_origin(program: &str) -> &'static str {
    UNRECORDABLE_PROGRAMS
        .iter()
        .find(|(name, _)| *name == program)
        .map_or("an unrecordable program", |(_, origin)| *origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sftp_server_execs() {
        for command in [
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server -l DEBUG3 -f AUTH",
            "sftp-server",
            "'/opt/my dir/sftp-server' -R",
            "exec /usr/lib/sftp-server -e",
            "/usr/lib/gesftp/gesftp-sftp-server",
        ] {
            assert_eq!(classify(command), ExecProgram::SftpServer, "{command}");
        }
        for command in [
            "sftp-server; true",
            "sh -c /usr/lib/openssh/sftp-server",
            "ls /usr/lib/openssh/sftp-server",
            "/usr/lib/openssh/sftp-server.real",
            "FOO=1 sftp-server $HOME",
            "",
        ] {
            assert_ne!(classify(command), ExecProgram::SftpServer, "{command}");
        }
    }

    #[test]
    fn unrecordable_programs_anywhere_in_the_command() {
        for (command, program) in [
            // What mosh 1.4's client sends.
            (
                "mosh-server 'new' '-c' '256' '-s' '-l' 'LANG=C.UTF-8'",
                "mosh-server",
            ),
            ("/usr/local/bin/mosh-server new -p 60001", "mosh-server"),
            ("'mosh-server' new", "mosh-server"),
            // Eternal Terminal's bootstrap: a pipe into the server binary.
            (
                "echo 'abc/def_xterm-256color' | etterminal --verbose=0",
                "etterminal",
            ),
            ("env LANG=C mosh-server new", "mosh-server"),
            ("which mosh-server", "mosh-server"),
        ] {
            assert_eq!(
                classify(command),
                ExecProgram::Unrecordable(program),
                "{command}"
            );
        }
        for command in [
            "mosh",
            "apt-get install mosh",
            "mosh-server2",
            "cat notes-about-mosh-server.txt",
            "etterminal-docs",
        ] {
            assert!(
                !matches!(classify(command), ExecProgram::Unrecordable(_)),
                "{command}"
            );
        }
        assert_eq!(unrecordable_origin("mosh-server"), "mosh");
        assert_eq!(unrecordable_origin("etterminal"), "Eternal Terminal");
    }

    #[test]
    fn scp_and_everything_else() {
        assert!(matches!(classify("scp -t up.bin"), ExecProgram::Scp(_)));
        assert_eq!(classify("scp -t /x; rm -rf /"), ExecProgram::Other);
        assert_eq!(
            classify("rsync --server -logDtpre.iLsfxCIvu . x"),
            ExecProgram::Other
        );
        assert_eq!(classify("cat > f"), ExecProgram::Other);
    }
}
