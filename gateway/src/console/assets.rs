//! The page's files, embedded by build.rs from `console/web/`, npm's asciinema-player and
//! the wasm recording reader.

use anyhow::{Result, bail};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));
}

/// Refuses to run a binary built without the console's files.
pub fn check() -> Result<()> {
    if !embedded::MISSING.is_empty() {
        bail!(
            "this sshgw was built without the console's files ({}): build them with `cargo \
             xtask build-console`, then build sshgw again",
            embedded::MISSING.join(", ")
        );
    }
    Ok(())
}

/// The file served at `path`, with its content type.
pub fn find(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = if path == "/index.html" { "/" } else { path };
    let (name, bytes) = embedded::FILES.iter().find(|(name, _)| *name == path)?;
    Some((bytes, content_type(name)))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        _ if name == "/" => "text/html; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("/"), "text/html; charset=utf-8");
        assert_eq!(content_type("/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("/recording.wasm"), "application/wasm");
        assert_eq!(
            content_type("/vendor/asciinema-player.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("/LICENSE"), "application/octet-stream");
    }
}
