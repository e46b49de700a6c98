//! `cargo xtask build-console`: the console's built files, which `cargo build -p sshgw`
//! then embeds (gateway/build.rs): asciinema-player from npm (`npm ci` against
//! console/package-lock.json) and the recording reader compiled to wasm32.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{prereqs, util};

pub const WASM_PACKAGE: &str = "sshgw-console-wasm";

/// Where the wasm module lands (gateway/build.rs reads the same path).
pub fn wasm_path(root: &Path) -> PathBuf {
    util::target_dir(root).join("wasm32-unknown-unknown/release/sshgw_console_wasm.wasm")
}

/// Builds both; a warm tree does nothing (npm ci is skipped while node_modules is current,
/// cargo rebuilds nothing).
pub fn build(root: &Path) -> Result<()> {
    prereqs::npm_ci(&root.join("console"))?;
    let player =
        root.join("console/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js");
    if !player.is_file() {
        bail!(
            "npm ci in console/ finished but {} is missing",
            player.display()
        );
    }
    util::run(
        util::host_cargo()
            .args(["build", "--release", "--package", WASM_PACKAGE])
            .args(["--target", prereqs::WASM_TARGET])
            .current_dir(root),
    )?;
    let wasm = wasm_path(root);
    if !wasm.is_file() {
        bail!("the wasm build finished but {} is missing", wasm.display());
    }
    Ok(())
}
