//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so the daemon is one file.
//! When the object is missing the build still succeeds (for `cargo check`, clippy and
//! unit tests) and the daemon refuses to start the datapath with a clear message.
//!
//! Likewise the console's files (`cargo xtask build-console`): the page from
//! `console/web/`, asciinema-player from `console/node_modules/` (npm, locked) and the
//! recording reader compiled to wasm32. Without the last two, `sshgw console` refuses to
//! start and says how to build them.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    ebpf(&manifest);
    console(&manifest);
}

fn target_dir(manifest: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target"))
}

fn ebpf(manifest: &Path) {
    let object = env::var_os("SSHGW_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir(manifest).join("bpfel-unknown-none/release/sshgw-datapath"));
    println!("cargo:rerun-if-env-changed=SSHGW_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());

    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("sshgw-datapath.bpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found: run `cargo xtask build-ebpf` first; \
                 this sshgw binary cannot attach the datapath",
                object.display()
            );
            fs::write(&out, []).unwrap();
        }
    }
}

/// Writes `console_assets.rs`: `FILES` (URL path, bytes) and `MISSING` (what to build).
fn console(manifest: &Path) {
    let web = manifest.join("../console/web");
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(&web)
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.is_file()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let url = if name == "index.html" {
            "/".to_string()
        } else {
            format!("/{name}")
        };
        files.push((url, path));
    }
    let player = manifest.join("../console/node_modules/asciinema-player/dist/bundle");
    let wasm = env::var_os("SSHGW_CONSOLE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            target_dir(manifest).join("wasm32-unknown-unknown/release/sshgw_console_wasm.wasm")
        });
    println!("cargo:rerun-if-env-changed=SSHGW_CONSOLE_WASM");
    let built = [
        (
            "/vendor/asciinema-player.min.js",
            player.join("asciinema-player.min.js"),
        ),
        (
            "/vendor/asciinema-player.css",
            player.join("asciinema-player.css"),
        ),
        ("/recording.wasm", wasm),
    ];
    let mut missing = Vec::new();
    for (url, path) in built {
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_file() {
            files.push((url.to_string(), path));
        } else {
            missing.push(path.display().to_string());
        }
    }
    if !missing.is_empty() {
        println!(
            "cargo:warning=console files missing ({}): run `cargo xtask build-console`; this sshgw binary cannot serve the console",
            missing.join(", ")
        );
    }
    let mut out = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for (url, path) in &files {
        let path = fs::canonicalize(path).unwrap();
        out += &format!(
            "    ({url:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        );
    }
    out += "];\npub static MISSING: &[&str] = &[\n";
    for path in &missing {
        out += &format!("    {path:?},\n");
    }
    out += "];\n";
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap()).join("console_assets.rs");
    fs::write(dest, out).unwrap();
}
