//! Recording key files: `keygen` writes a pair in ssh-log-cli's key file format (the key
//! types themselves are in the `sshgw-recording` crate, re-exported here).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub use sshgw_recording::keys::*;

use crate::util::fs;

/// `keygen -o NAME`: writes NAME (private, 0600) and NAME.pub (public, 0644), never
/// overwriting an existing file. Returns the public key file's path.
pub fn write_key_pair(name: &Path) -> Result<PathBuf> {
    let public_path = {
        let mut os = name.as_os_str().to_owned();
        os.push(".pub");
        PathBuf::from(os)
    };
    for path in [name, public_path.as_path()] {
        if path.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; refusing to overwrite a key file",
                path.display()
            );
        }
    }
    let (private, public) = generate();
    write_new(name, &private.to_base64(), fs::Mode::Private)?;
    if let Err(e) = write_new(&public_path, &public.to_base64(), fs::Mode::Umask(0o644)) {
        // We created the private key file just now: do not leave half a pair behind.
        let _ = std::fs::remove_file(name);
        return Err(e);
    }
    Ok(public_path)
}

fn write_new(path: &Path, text: &str, mode: fs::Mode) -> Result<()> {
    fs::write_new(path, text.as_bytes(), mode).map_err(|e| {
        let exists = e
            .root_cause()
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists);
        if exists {
            anyhow::anyhow!(
                "{} already exists; refusing to overwrite a key file",
                path.display()
            )
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use base64::Engine as _;

    use super::*;

    #[test]
    fn generated_keys_have_the_ssh_log_cli_format() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("rec");
        let public_path = write_key_pair(&name).unwrap();
        assert_eq!(public_path, dir.path().join("rec.pub"));
        let private_text = std::fs::read_to_string(&name).unwrap();
        let public_text = std::fs::read_to_string(&public_path).unwrap();
        for text in [&private_text, &public_text] {
            assert_eq!(text.len(), 44, "{text:?}");
            assert!(text.ends_with('='));
            assert!(!text.contains('\n'));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&private_text)
            .unwrap();
        // x25519 clamping, as ssh-log-cli's keys have it.
        assert_eq!(raw[0] & 7, 0);
        assert_eq!(raw[31] & 0x80, 0);
        assert_eq!(raw[31] & 0x40, 0x40);
        let mode = std::fs::metadata(&name).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let private = RecordingPrivateKey::parse(&private_text).unwrap();
        assert_eq!(
            private.public(),
            RecordingKey::from_file(&public_path).unwrap()
        );

        // Never overwrite.
        let err = write_key_pair(&name).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&name).unwrap(), private_text);
    }

    #[test]
    fn key_parsing_is_lenient_about_whitespace_and_padding() {
        let private = "SMDInoNDfDYWNdYgyv47aWzvgdl7T1djmwpP+k/9CUg=";
        let public = "6UMFAjnFDI7mdBkTOS/3aTmfCQP0XBWe9yxn6vR3LlQ=";
        let key = RecordingPrivateKey::parse(&format!("  {private}\n")).unwrap();
        assert_eq!(key.public().to_base64(), public);
        let unpadded = RecordingKey::parse(public.trim_end_matches('=')).unwrap();
        assert_eq!(unpadded.to_base64(), public);
        let err = RecordingKey::parse("AAAA").unwrap_err().to_string();
        assert!(err.contains("3 bytes, expected 32"), "{err}");
        let err = RecordingKey::parse("not base64!").unwrap_err().to_string();
        assert!(err.contains("not base64"), "{err}");
    }
}
