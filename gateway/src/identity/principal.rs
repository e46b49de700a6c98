//! Certificate principals: the one name a user's certificate carries to the real servers,
//! derived from the email in the device table (`[ssh] principal`).
//!
//! The email syntax accepted here is deliberately narrow, because the principal is
//! compared by sshd against logins and `AuthorizedPrincipalsFile` lines, and the email
//! ends up in the certificate's key id and in the servers' logs: local part `A-Z a-z 0-9
//! . _ + -` (no leading, trailing or double dot, at most 64 characters), one `@`, and a
//! DNS domain (labels of `A-Z a-z 0-9 -`, at most 253 characters).

use anyhow::{Result, bail};

use crate::config::PrincipalMode;

const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 253;
const MAX_LABEL: usize = 63;

/// Splits a syntactically valid email into its local part and domain; the error says what
/// is wrong with it.
pub fn split_email(email: &str) -> Result<(&str, &str)> {
    let Some((local, domain)) = email.split_once('@') else {
        bail!("{email:?} is not an email address (local@domain)");
    };
    if local.is_empty() || domain.is_empty() {
        bail!("{email:?} is not an email address (local@domain)");
    }
    if domain.contains('@') {
        bail!("{email:?} has more than one @");
    }
    check_local_part(email, local)?;
    check_domain(email, domain)?;
    Ok((local, domain))
}

fn check_local_part(email: &str, local: &str) -> Result<()> {
    if local.len() > MAX_LOCAL_PART {
        bail!("{email:?}: the local part is longer than {MAX_LOCAL_PART} characters");
    }
    if let Some(c) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        bail!(
            "{email:?}: the local part may hold only letters, digits and . _ + - (not {})",
            describe(c)
        );
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        bail!("{email:?}: the local part has a leading, trailing or double dot");
    }
    Ok(())
}

fn check_domain(email: &str, domain: &str) -> Result<()> {
    if domain.len() > MAX_DOMAIN {
        bail!("{email:?}: the domain is longer than {MAX_DOMAIN} characters");
    }
    for label in domain.split('.') {
        let valid = !label.is_empty()
            && label.len() <= MAX_LABEL
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            bail!(
                "{email:?}: the domain must be DNS labels of letters, digits and inner hyphens, \
                 separated by single dots"
            );
        }
    }
    Ok(())
}

/// A character for an error message, escaped when it would not print plainly.
fn describe(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("{c:?}")
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

/// The certificate principal for `email` under `mode`.
pub fn derive(email: &str, mode: PrincipalMode) -> Result<String> {
    let (local, _) = split_email(email)?;
    Ok(match mode {
        PrincipalMode::LocalPart => local.to_owned(),
        PrincipalMode::Email => email.to_owned(),
    })
}

/// Whether `principal` is on the reserved list (ASCII case ignored: a server-side principals
/// command or a case-folding directory may not tell `Root` from `root`).
pub fn is_reserved(principal: &str, reserved: &[String]) -> bool {
    reserved.iter().any(|r| r.eq_ignore_ascii_case(principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_syntax() {
        assert_eq!(
            split_email("jdoe@example.com").unwrap(),
            ("jdoe", "example.com")
        );
        assert_eq!(
            split_email("j.doe+ops_1-x@corp").unwrap(),
            ("j.doe+ops_1-x", "corp")
        );
        for (bad, why) in [
            ("jdoe", "not an email address"),
            ("", "not an email address"),
            ("@example.com", "not an email address"),
            ("jdoe@", "not an email address"),
            ("a@b@example.com", "more than one @"),
            ("j doe@example.com", "(not U+0020)"),
            ("j,doe@example.com", "(not ',')"),
            ("jdoe\u{1b}@example.com", "(not U+001B)"),
            ("jdo\u{202e}e@example.com", "(not U+202E)"),
            ("jdoé@example.com", "(not U+00E9)"),
            ("j:doe@example.com", "(not ':')"),
            ("*@example.com", "(not '*')"),
            (".jdoe@example.com", "double dot"),
            ("j..doe@example.com", "double dot"),
            ("jdoe@example..com", "DNS labels"),
            ("jdoe@-example.com", "DNS labels"),
            ("jdoe@exa_mple.com", "DNS labels"),
            ("jdoe@example.com.", "DNS labels"),
        ] {
            let e = split_email(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(split_email(&long).unwrap_err().to_string().contains("64"));
    }

    #[test]
    fn principals_by_mode() {
        assert_eq!(
            derive("jdoe@example.com", PrincipalMode::LocalPart).unwrap(),
            "jdoe"
        );
        assert_eq!(
            derive("jdoe@example.com", PrincipalMode::Email).unwrap(),
            "jdoe@example.com"
        );
        assert!(derive("a@b@c", PrincipalMode::Email).is_err());
        let reserved = vec!["root".to_owned(), "ec2-user".to_owned()];
        assert!(is_reserved("root", &reserved));
        assert!(is_reserved("ROOT", &reserved));
        assert!(is_reserved("ec2-user", &reserved));
        assert!(!is_reserved("root@example.com", &reserved));
        assert!(!is_reserved("jdoe", &reserved));
    }
}
