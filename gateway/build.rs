//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so the daemon is one file.
//! When the object is missing the build still succeeds (for `cargo check`, clippy and
//! unit tests) and the daemon refuses to start the datapath with a clear message.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = env::var_os("SSHGW_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("../target"));
            target.join("bpfel-unknown-none/release/sshgw-datapath")
        });
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
