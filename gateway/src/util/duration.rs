//! Durations as people write them: `"90s"`, `"30m"`, `"8h"`, `"1h30m"`, `"2d"`. One parser
//! for every field that takes one, each caller naming its field, its limit and what a
//! zero should have been instead.

use std::{fmt, time::Duration};

pub const MINUTE: u64 = 60;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;
const UNITS: [(char, u64); 4] = [('d', DAY), ('h', HOUR), ('m', MINUTE), ('s', 1)];
const HINT: &str = "write a duration such as \"30m\", \"8h\" or \"1h30m\"";

/// A field that takes a duration.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// Its name, as the operator writes it (`max_duration`, `since`).
    pub name: &'static str,
    /// The longest duration it accepts.
    pub max: Duration,
    /// What to write instead of zero, appended to the "is zero" error.
    pub zero: &'static str,
}

/// A duration text that `field` does not accept. Displays as `FIELD: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub field: &'static str,
    /// What is wrong, without the field's name (for callers whose context names it).
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Error {}

/// Parses numbers with units from largest to smallest, each unit at most once. Zero and
/// anything above `field.max` are refused.
pub fn parse(text: &str, field: &Field) -> Result<Duration, Error> {
    parse_secs(text, field)
        .map(Duration::from_secs)
        .map_err(|message| Error {
            field: field.name,
            message,
        })
}

fn parse_secs(text: &str, field: &Field) -> Result<u64, String> {
    if text.is_empty() {
        return Err(format!("must not be empty; {HINT}"));
    }
    let too_long = || {
        format!(
            "{text:?} is longer than the maximum of {}",
            format(field.max)
        )
    };
    let mut total: u64 = 0;
    let mut rest = text;
    // Index into UNITS of the next unit allowed: units must get smaller.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let (number, unit, after) = split_term(text, rest)?;
        let Some(pos) = UNITS.iter().position(|&(u, _)| u == unit) else {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use d, h, m or s); {HINT}"
            ));
        };
        if pos < next_unit {
            return Err(format!(
                "{text:?}: units must go from largest to smallest (d, h, m, s), each at most once"
            ));
        }
        next_unit = pos + 1;
        let n: u64 = number.parse().map_err(|_| too_long())?;
        total = n
            .checked_mul(UNITS[pos].1)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(too_long)?;
        rest = after;
    }
    if total == 0 {
        return Err(format!("{text:?} is zero; {}", field.zero));
    }
    if Duration::from_secs(total) > field.max {
        return Err(too_long());
    }
    Ok(total)
}

/// Splits the next `NUMBER UNIT` off `rest` (a tail of `text`): the digits, the unit
/// character and what follows it.
fn split_term<'a>(text: &str, rest: &'a str) -> Result<(&'a str, char, &'a str), String> {
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (number, after) = rest.split_at(digits);
    let Some(unit) = after.chars().next() else {
        return Err(format!(
            "{text:?}: {number:?} has no unit (use d, h, m or s); {HINT}"
        ));
    };
    if number.is_empty() {
        return Err(format!(
            "{text:?}: expected a number before {unit:?}; {HINT}"
        ));
    }
    Ok((number, unit, &after[unit.len_utf8()..]))
}

/// The canonical text of a duration, whole seconds: `5400s` → `"1h30m"`, `90s` → `"1m30s"`.
pub fn format(duration: Duration) -> String {
    Text(duration).to_string()
}

/// Displays a duration as [`format`] writes it.
pub struct Text(pub Duration);

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in UNITS {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINCE: Field = Field {
        name: "since",
        max: Duration::from_secs(7 * DAY),
        zero: "leave it out for all",
    };

    #[test]
    fn errors_name_the_field_and_its_limit() {
        let e = parse("0s", &SINCE).unwrap_err();
        assert_eq!(e.to_string(), "since: \"0s\" is zero; leave it out for all");
        let e = parse("8d", &SINCE).unwrap_err();
        assert_eq!(e.message, "\"8d\" is longer than the maximum of 7d");
        assert_eq!(parse("7d", &SINCE).unwrap(), Duration::from_secs(7 * DAY));
    }
}
