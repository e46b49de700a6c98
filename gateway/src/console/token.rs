//! The console's access token: 32 random bytes in URL-safe base64, in
//! `<state_dir>/console.token` (0600), created at first start and never logged.

use std::{io::Read, path::Path};

use anyhow::{Context, Result, bail};
use base64::Engine;
use zeroize::Zeroizing;

use crate::util::fs::{self, Mode};

pub struct Token(Zeroizing<String>);

impl Token {
    /// Reads the token file, creating it (exclusively, 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Token> {
        if let Some(token) = Self::load(path)? {
            return Ok(token);
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::Rng::fill_bytes(&mut rand::rng(), bytes.as_mut());
        let text = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*bytes));
        match fs::link_new(path, text.as_bytes(), Mode::Private)? {
            Ok(()) => {
                eprintln!("sshgw console: created the access token {}", path.display());
                Ok(Token(text))
            }
            // Another console made it meanwhile: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path)?.with_context(|| format!("{} vanished", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    fn load(path: &Path) -> Result<Option<Token>> {
        let Some(mut file) = fs::open_private(path, "console token")? else {
            return Ok(None);
        };
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let token = Zeroizing::new(text.trim().to_string());
        if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "{}: not a console token (at least 32 printable characters); remove it to have \
                 a new one made",
                path.display()
            );
        }
        Ok(Some(Token(token)))
    }

    /// Whether an `Authorization` header value carries this token (constant time in the
    /// token's bytes).
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Some(given) = strip_bearer(authorization) else {
            return false;
        };
        let ours = self.0.as_bytes();
        if given.len() != ours.len() {
            return false;
        }
        given
            .iter()
            .zip(ours)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_is_made_once_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.token");
        let token = Token::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 43);
        assert!(token.accepts(format!("Bearer {text}").as_bytes()));
        assert!(token.accepts(format!("bearer  {text} ").as_bytes()));
        assert!(!token.accepts(text.as_bytes()));
        assert!(!token.accepts(format!("Bearer {}x", &text[1..]).as_bytes()));
        assert!(!token.accepts(b"Bearer "));
        let again = Token::load_or_create(&path).unwrap();
        assert!(again.accepts(format!("Bearer {text}").as_bytes()));
    }

    #[test]
    fn a_readable_or_short_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.token");
        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Token::load_or_create(&path).err().unwrap().to_string();
        assert!(err.contains("not a console token"), "{err}");
        std::fs::write(&path, "x".repeat(40)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", Token::load_or_create(&path).err().unwrap());
        assert!(err.contains("accessible by group or others"), "{err}");
    }
}
