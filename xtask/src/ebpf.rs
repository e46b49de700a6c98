//! `cargo xtask build-ebpf`: builds the TC program with nightly for `bpfel-unknown-none`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::prereqs::Prereqs;
use crate::util;

const PACKAGE: &str = "gateway-ebpf";
const BIN: &str = "sshgw-datapath";
/// An empty TC program, built alongside for the benchmark's hook-cost baseline.
const EMPTY_BIN: &str = "sshgw-datapath-empty";
const TARGET: &str = "bpfel-unknown-none";

/// Where the release eBPF object ends up.
pub fn object_path(target_dir: &Path) -> PathBuf {
    target_dir.join(TARGET).join("release").join(BIN)
}

/// Where the empty program's object ends up (`sshgw-bench` looks for it there).
pub fn empty_object_path(target_dir: &Path) -> PathBuf {
    target_dir.join(TARGET).join("release").join(EMPTY_BIN)
}

/// The `bpf_target_arch` cfg for the host, which is also where the program will run.
pub fn bpf_target_arch() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("x86_64"),
        "aarch64" => Ok("aarch64"),
        other => bail!("unsupported host architecture {other:?} for the eBPF build"),
    }
}

/// `CARGO_ENCODED_RUSTFLAGS` value (flags separated by 0x1f) for the eBPF build.
pub fn encoded_rustflags(arch: &str) -> String {
    [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f")
}

/// Builds the eBPF object and returns its path. Prerequisites must already be ensured.
pub fn build(root: &Path, prereqs: &Prereqs) -> Result<PathBuf> {
    let arch = bpf_target_arch()?;
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build"])
        .args(["--package", PACKAGE, "--bins", "--release"])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .current_dir(root)
        // Drop what the outer (stable) cargo/rustup set so nightly's own tools are used.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env("CARGO_ENCODED_RUSTFLAGS", encoded_rustflags(arch));
    // rustc invokes the linker by name, so make sure bpf-linker's directory is on PATH.
    if let Some(dir) = prereqs.bpf_linker.parent() {
        cmd.env("PATH", util::path_with(dir)?);
    }
    println!("[build-ebpf] building {PACKAGE} for {TARGET} (bpf_target_arch={arch})");
    util::run(&mut cmd)?;

    let target_dir = util::target_dir(root);
    let object = object_path(&target_dir);
    for (path, bin) in [(&object, BIN), (&empty_object_path(&target_dir), EMPTY_BIN)] {
        let size = std::fs::metadata(path)
            .with_context(|| {
                format!(
                    "the eBPF build finished but {} is missing (was the `{bin}` bin renamed?)",
                    path.display()
                )
            })?
            .len();
        println!(
            "[build-ebpf] {} ({size} bytes, {:.1} KiB)",
            path.display(),
            size as f64 / 1024.0
        );
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustflags_are_unit_separated() {
        let flags = encoded_rustflags("x86_64");
        let parts: Vec<&str> = flags.split('\x1f').collect();
        assert_eq!(
            parts,
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf"
            ]
        );
    }

    #[test]
    fn object_lives_under_bpf_target() {
        assert_eq!(
            object_path(Path::new("/w/target")),
            Path::new("/w/target/bpfel-unknown-none/release/sshgw-datapath")
        );
        assert_eq!(
            empty_object_path(Path::new("/w/target")),
            Path::new("/w/target/bpfel-unknown-none/release/sshgw-datapath-empty")
        );
    }

    #[test]
    fn host_arch_is_supported_on_ci_hosts() {
        if matches!(std::env::consts::ARCH, "x86_64" | "aarch64") {
            assert_eq!(bpf_target_arch().ok(), Some(std::env::consts::ARCH));
        }
    }
}
