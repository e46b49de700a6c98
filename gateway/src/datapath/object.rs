//! The TC program's object file, embedded at build time (see build.rs).

use anyhow::{Result, bail};

static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sshgw-datapath.bpf.o"));

pub fn bytes() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!(
            "this sshgw binary was built without its eBPF object; run `cargo xtask build-ebpf` \
             and rebuild sshgw"
        );
    }
    Ok(OBJECT)
}
