//! Test files on the host: random content of a given size, and byte-for-byte comparison
//! (`sha256sum`), for transfers through the gateway.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::topology::Lab;

/// Writes `len` random bytes to `path` (`head -c LEN /dev/urandom`); fails unless the file
/// then has exactly `len` bytes.
pub fn random_file(lab: &Lab, path: &Path, len: u64, timeout: Duration) -> Result<()> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("head -c \"$1\" /dev/urandom > \"$2\"")
        .arg("random-file")
        .arg(len.to_string())
        .arg(path);
    lab.procs()
        .run_quiet("random file", &mut cmd, timeout)?
        .check("writing a random file")?;
    let got = std::fs::metadata(path)?.len();
    ensure!(
        got == len,
        "{} has {got} bytes, wanted {len}",
        path.display()
    );
    Ok(())
}

/// `sha256sum FILE` (the hex digest).
pub fn sha256(lab: &Lab, path: &Path, timeout: Duration) -> Result<String> {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(path);
    let out = lab
        .procs()
        .run_quiet("sha256sum", &mut cmd, timeout)?
        .check("sha256sum")?;
    digest(&out.stdout)
}

/// The digest at the start of `sha256sum` output.
pub fn digest(output: &str) -> Result<String> {
    let d = output.split_whitespace().next().unwrap_or_default();
    ensure!(
        d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()),
        "not sha256sum output: {output:?}"
    );
    Ok(d.to_owned())
}

/// Both files exist and are byte-identical (sha256).
pub fn same_file(lab: &Lab, a: &Path, b: &Path, what: &str, timeout: Duration) -> Result<()> {
    ensure!(a.is_file(), "{what}: {} does not exist", a.display());
    ensure!(b.is_file(), "{what}: {} does not exist", b.display());
    let (da, db) = (sha256(lab, a, timeout)?, sha256(lab, b, timeout)?);
    ensure!(
        da == db,
        "{what}: {} ({da}) and {} ({db}) differ",
        a.display(),
        b.display()
    );
    Ok(())
}
