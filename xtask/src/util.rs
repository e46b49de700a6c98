//! Process, path and privilege helpers shared by the subcommands.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Root of the cargo workspace: the parent of this crate's manifest directory.
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent (cannot locate the workspace root)")
}

/// Cargo's target directory for builds run in `root` (honours `CARGO_TARGET_DIR`).
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        // `join` with an absolute path replaces `root`, matching cargo's own resolution
        // (relative values are taken relative to the cwd, which is `root` for our builds).
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// A `Command` for the cargo that is running us (the stable toolchain), falling back to `cargo`.
pub fn host_cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// Human-readable rendering of a command line, for progress and error messages.
pub fn describe(cmd: &Command) -> String {
    let program = cmd.get_program().to_string_lossy();
    // Show the bare program name for absolute cargo paths etc.; the args carry the meaning.
    let program = Path::new(program.as_ref())
        .file_name()
        .map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned());
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| quote(&a.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("{arg:?}")
    }
}

/// Runs `cmd` with inherited stdio; fails with an error naming the command if it cannot be
/// started or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let desc = describe(cmd);
    println!("$ {desc}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{desc}` (is it installed and on PATH?)"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; on failure the error names the command and
/// includes its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{desc}` (is it installed and on PATH?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{desc}` failed ({}): {}", out.status, stderr.trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{desc}` printed non-UTF-8 output"))
}

/// Whether `path` is a regular file with an execute bit set.
pub fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Looks `name` up on `PATH`, then in `extra_dirs`.
pub fn find_executable(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .chain(extra_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// `$CARGO_HOME/bin`, defaulting to `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home).join("bin")),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo").join("bin")),
    }
}

/// `PATH` with `dir` prepended unless it is already present.
pub fn path_with(dir: &Path) -> Result<OsString> {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if !dirs.iter().any(|d| d == dir) {
        dirs.insert(0, dir.to_path_buf());
    }
    std::env::join_paths(dirs).context("cannot build PATH (a directory contains ':')")
}

/// The effective user id, read from `/proc/self/status` (falling back to `id -u`).
pub fn effective_uid() -> Result<u32> {
    if let Some(uid) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_effective_uid(&status))
    {
        return Ok(uid);
    }
    let out = output(Command::new("id").arg("-u"))?;
    out.trim()
        .parse()
        .with_context(|| format!("unexpected `id -u` output: {out:?}"))
}

/// Extracts the effective uid (second field) from the `Uid:` line of `/proc/<pid>/status`.
fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

pub fn is_root() -> Result<bool> {
    Ok(effective_uid()? == 0)
}

/// Compact duration for summaries: `4.2s`, `3m07s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_second_field() {
        let status = "Name:\tcat\nUid:\t1000\t0\t1000\t1000\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tcat\n"), None);
    }

    #[test]
    fn describe_quotes_only_when_needed() {
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.args([
            "build",
            "-Z",
            "build-std=core",
            "two words",
            "--cfg=a=\"b\"",
        ]);
        assert_eq!(
            describe(&cmd),
            r#"cargo build -Z build-std=core "two words" "--cfg=a=\"b\"""#
        );
    }

    #[test]
    fn run_errors_name_the_command() {
        let err = run(Command::new("false").arg("--flag")).expect_err("`false` fails");
        assert_eq!(err.to_string(), "`false --flag` failed (exit status: 1)");
        let err = run(&mut Command::new("xtask-no-such-program")).expect_err("not found");
        assert!(err.to_string().contains("`xtask-no-such-program`"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(4210)), "4.2s");
        assert_eq!(format_duration(Duration::from_secs(187)), "3m07s");
    }

    #[test]
    fn path_with_prepends_once() {
        let dir = Path::new("/nonexistent/xtask-test-bin");
        let path = path_with(dir).expect("PATH is joinable");
        let dirs: Vec<_> = std::env::split_paths(&path).collect();
        assert_eq!(dirs[0], dir);
        assert_eq!(dirs.iter().filter(|d| *d == dir).count(), 1);
    }
}
