//! The store's access key: `[storage] credentials_file` (mode 0600, lines
//! `access_key_id=…` and `secret_access_key=…`, optionally `session_token=…`), else the
//! environment's `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
//! The secret is never logged: errors name the file and the line, never a value.

use std::{io::Read, path::Path};

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// From the file when one is configured, else from the environment.
pub fn load(file: Option<&Path>) -> Result<Credentials> {
    match file {
        Some(path) => from_file(path),
        None => from_env(|name| std::env::var(name).ok()),
    }
}

fn from_file(path: &Path) -> Result<Credentials> {
    let Some(mut file) = crate::util::fs::open_private(path, "storage credentials file")? else {
        bail!(
            "storage.credentials_file: {} does not exist",
            path.display()
        );
    };
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read storage credentials file {}", path.display()))?;
    parse(&text).with_context(|| format!("storage credentials file {}", path.display()))
}

fn parse(text: &str) -> Result<Credentials> {
    let (mut id, mut secret, mut token) = (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            bail!("line {}: expected name=value", n + 1);
        };
        let value = Zeroizing::new(value.trim().to_string());
        match name.trim() {
            "access_key_id" => id = Some(value.to_string()),
            "secret_access_key" => secret = Some(value),
            "session_token" => token = Some(value),
            other => bail!(
                "line {}: unknown name {other:?} (expected access_key_id, secret_access_key or session_token)",
                n + 1
            ),
        }
    }
    build(id, secret, token, "the file")
}

fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Credentials> {
    build(
        var("AWS_ACCESS_KEY_ID"),
        var("AWS_SECRET_ACCESS_KEY").map(Zeroizing::new),
        var("AWS_SESSION_TOKEN").map(Zeroizing::new),
        "[storage] credentials_file or the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
    )
}

fn build(
    id: Option<String>,
    secret: Option<Zeroizing<String>>,
    token: Option<Zeroizing<String>>,
    source: &str,
) -> Result<Credentials> {
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: token.filter(|t| !t.is_empty()),
        }),
        _ => bail!("no access key: {source} must give both access_key_id and secret_access_key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_gives_the_key_and_errors_never_show_the_secret() {
        let c = parse("# router key\naccess_key_id = AKID\nsecret_access_key=s3cr3t\n").unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key.as_str(), "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let err = format!(
            "{:#}",
            parse("access_key_id=A\nsecret=s3cr3t\n").unwrap_err()
        );
        assert!(err.contains("line 2: unknown name \"secret\""), "{err}");
        assert!(!err.contains("s3cr3t"));
        let err = format!("{:#}", parse("access_key_id=A\n").unwrap_err());
        assert!(err.contains("must give both"), "{err}");
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.credentials");
        std::fs::write(&path, "access_key_id=A\nsecret_access_key=B\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", load(Some(&path)).unwrap_err());
        assert!(err.contains("accessible by group or others"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(Some(&path)).unwrap().access_key_id, "A");
        let err = format!("{:#}", load(Some(&dir.path().join("none"))).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn the_environment_is_the_fallback() {
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("E".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("F".to_string()),
            _ => None,
        };
        assert_eq!(from_env(env).unwrap().access_key_id, "E");
        let err = format!("{:#}", from_env(|_| None).unwrap_err());
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
}
