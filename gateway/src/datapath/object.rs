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

/// Short hash of the object: pinned maps live in a directory named after it, so a program
/// is never handed maps laid out for another build.
pub fn layout_id() -> Result<String> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes()?);
    Ok(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
}
