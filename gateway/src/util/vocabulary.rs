//! Closed sets of names (a decision, a channel kind, a file operation, …) written as fixed
//! texts in the session log and the API's JSON. Reading a text back accepts only a name of
//! the set, and says which ones it expected otherwise.

/// A text that names no member of the set it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?} (expected one of: {})", .expected.join(", "))]
pub struct UnknownName {
    /// What the set is, e.g. `file protocol`.
    pub what: &'static str,
    pub text: String,
    pub expected: Vec<&'static str>,
}

/// The member of `all` that `name` writes as `text`.
pub fn parse_name<T: Copy>(
    what: &'static str,
    all: impl IntoIterator<Item = T>,
    name: impl Fn(T) -> &'static str,
    text: &str,
) -> Result<T, UnknownName> {
    let mut expected = Vec::new();
    for member in all {
        if name(member) == text {
            return Ok(member);
        }
        expected.push(name(member));
    }
    Err(UnknownName {
        what,
        text: text.to_string(),
        expected,
    })
}

/// `Display` and `FromStr` (with [`UnknownName`]) for a type with `as_str(self)` and
/// `all()`; with `serde`, also `Serialize` and `Deserialize` as that text.
macro_rules! text_names {
    ($ty:ty, $what:literal) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::util::vocabulary::UnknownName;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                $crate::util::vocabulary::parse_name($what, <$ty>::all(), <$ty>::as_str, text)
            }
        }
    };
    ($ty:ty, $what:literal, serde) => {
        $crate::util::vocabulary::text_names!($ty, $what);

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use text_names;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_text_is_named_with_the_expected_ones() {
        let found = parse_name("color", ["red", "blue"], |c| c, "blue");
        assert_eq!(found, Ok("blue"));
        let err = parse_name("color", ["red", "blue"], |c| c, "green").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown color "green" (expected one of: red, blue)"#
        );
    }
}
