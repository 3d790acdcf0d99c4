//! Migration versions: semver (`1.2.0`), plain numbers (`3`, `003`, sqlx's timestamps) or
//! dotted numbers (Flyway's `1.2`, `2.0.1.5`). One folder uses one style; versions compare
//! by value, so `003` and `3` are the same version, as are Flyway's `1` and `1.0`.
//!
//! A repeatable migration (Flyway's `R__name.sql`) has no number: its "version" is its
//! name, written `R__name`, and it orders after every numbered version.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStyle {
    Semver,
    Number,
    Dotted,
    Repeatable,
}

impl fmt::Display for VersionStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionStyle::Semver => "semver (like 1.2.0)",
            VersionStyle::Number => "a plain number (like 3)",
            VersionStyle::Dotted => "dotted numbers (like 1.2)",
            VersionStyle::Repeatable => "repeatable (R__name)",
        })
    }
}

#[derive(Debug, Clone)]
enum Key {
    Number(u64),
    Semver(semver::Version),
    /// Flyway's versions, every part a number.
    Dotted(Vec<u64>),
    Repeatable(String),
}

impl Key {
    /// The numeric parts, trailing zeros dropped, for comparing across styles.
    fn parts(&self) -> Vec<u64> {
        let mut parts = match self {
            Key::Number(n) => vec![*n],
            Key::Semver(v) => vec![v.major, v.minor, v.patch],
            Key::Dotted(parts) => parts.clone(),
            Key::Repeatable(_) => Vec::new(),
        };
        while parts.last() == Some(&0) {
            parts.pop();
        }
        parts
    }
}

/// The prefix of a repeatable migration's version text.
pub const REPEATABLE_PREFIX: &str = "R__";

/// A version as written in a file, ordered by its value.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    key: Key,
}

impl Version {
    /// Any version a history row or a dependency may name: [`Version::parse`]'s, and
    /// Flyway's dotted ones (`1.1`).
    pub fn parse_any(text: &str) -> Result<Version, String> {
        let text = text.trim();
        match parse_dotted(text) {
            Some(dotted) if text.contains('.') && semver::Version::parse(text).is_err() => dotted,
            _ => Version::parse(text),
        }
    }

    /// Parses a version of a switchyard folder: semver or a plain number (or a
    /// repeatable migration's `R__name`).
    pub fn parse(text: &str) -> Result<Version, String> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix(REPEATABLE_PREFIX) {
            return Ok(Version::repeatable(name));
        }
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            let number = text
                .parse::<u64>()
                .map_err(|_| format!("version `{text}` is too large"))?;
            return Ok(Version {
                text: text.to_string(),
                key: Key::Number(number),
            });
        }
        semver::Version::parse(text)
            .map(|v| Version {
                text: text.to_string(),
                key: Key::Semver(v),
            })
            .map_err(|e| {
                format!("version `{text}` is neither semver (1.2.0) nor a plain number: {e}")
            })
    }

    /// A Flyway version (`1`, `1.1`, `1_1`: `_` separates parts as `.` does), always
    /// dotted so that one folder keeps one style.
    pub fn parse_flyway(text: &str) -> Result<Version, String> {
        let text = text.replace('_', ".");
        parse_dotted(&text).unwrap_or_else(|| {
            Err(format!(
                "version `{text}` is not a Flyway version (numbers separated by `.` or `_`)"
            ))
        })
    }

    /// The version of the repeatable migration `name`.
    pub fn repeatable(name: &str) -> Version {
        Version {
            text: format!("{REPEATABLE_PREFIX}{name}"),
            key: Key::Repeatable(name.to_string()),
        }
    }

    pub fn is_repeatable(&self) -> bool {
        matches!(self.key, Key::Repeatable(_))
    }

    pub fn style(&self) -> VersionStyle {
        match self.key {
            Key::Number(_) => VersionStyle::Number,
            Key::Semver(_) => VersionStyle::Semver,
            Key::Dotted(_) => VersionStyle::Dotted,
            Key::Repeatable(_) => VersionStyle::Repeatable,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `0` and `0.0.0`: the version before every migration.
    pub fn is_zero(&self) -> bool {
        !self.is_repeatable() && self.key.parts().is_empty()
    }

    /// The version `create` gives the next migration: the next number, or the next minor
    /// semver version (1.2.3 → 1.3.0), the last dotted part plus one (1.2 → 1.3).
    pub fn next(&self) -> Version {
        match &self.key {
            Key::Number(n) => {
                let text = format!("{:0width$}", n + 1, width = self.text.len());
                Version {
                    text,
                    key: Key::Number(n + 1),
                }
            }
            Key::Semver(v) => {
                let next = semver::Version::new(v.major, v.minor + 1, 0);
                Version {
                    text: next.to_string(),
                    key: Key::Semver(next),
                }
            }
            Key::Dotted(parts) => {
                let mut next = parts.clone();
                *next.last_mut().expect("a dotted version has parts") += 1;
                Version {
                    text: dotted_text(&next),
                    key: Key::Dotted(next),
                }
            }
            Key::Repeatable(_) => self.clone(),
        }
    }
}

fn parse_dotted(text: &str) -> Option<Result<Version, String>> {
    let pieces: Vec<&str> = text.split('.').collect();
    if !pieces
        .iter()
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let parts: Result<Vec<u64>, _> = pieces.iter().map(|p| p.parse::<u64>()).collect();
    Some(
        parts
            .map(|parts| Version {
                text: text.to_string(),
                key: Key::Dotted(parts),
            })
            .map_err(|_| format!("version `{text}` has a part too large")),
    )
}

fn dotted_text(parts: &[u64]) -> String {
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    /// Repeatables last (by name); semver by semver's rules; otherwise by numeric parts,
    /// so styles compare by value (`1` = `1.0` = `1.0.0`).
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.key, &other.key) {
            (Key::Repeatable(a), Key::Repeatable(b)) => a.cmp(b),
            (Key::Repeatable(_), _) => Ordering::Greater,
            (_, Key::Repeatable(_)) => Ordering::Less,
            (Key::Semver(a), Key::Semver(b)) => a.cmp(b),
            (a, b) => a.parts().cmp(&b.parts()),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value() {
        let a = Version::parse("003").unwrap();
        assert_eq!(a, Version::parse("3").unwrap());
        assert!(Version::parse("10").unwrap() > Version::parse("9").unwrap());
        assert_eq!(a.style(), VersionStyle::Number);
        assert_eq!(a.next().as_str(), "004");
    }

    #[test]
    fn semver_orders_and_bumps_minor() {
        let a = Version::parse("1.10.0").unwrap();
        assert!(a > Version::parse("1.9.3").unwrap());
        assert_eq!(a.next().as_str(), "1.11.0");
        assert_eq!(a.style(), VersionStyle::Semver);
    }

    #[test]
    fn flyway_versions_are_dotted_and_compare_by_value() {
        let a = Version::parse_flyway("1_1").unwrap();
        assert_eq!(a.as_str(), "1.1");
        assert_eq!(a.style(), VersionStyle::Dotted);
        assert_eq!(a, Version::parse_any("1.1").unwrap());
        assert!(Version::parse("1.1").is_err());
        assert!(Version::parse_flyway("1.10").unwrap() > Version::parse_flyway("1.9").unwrap());
        assert_eq!(
            Version::parse_flyway("2").unwrap(),
            Version::parse_any("2.0").unwrap()
        );
        assert_eq!(
            Version::parse_flyway("2").unwrap().style(),
            VersionStyle::Dotted
        );
        assert_eq!(a.next().as_str(), "1.2");
        assert!(Version::parse_flyway("1a").is_err());
    }

    #[test]
    fn repeatables_order_last_by_name() {
        let r = Version::parse("R__views").unwrap();
        assert!(r.is_repeatable());
        assert_eq!(r, Version::repeatable("views"));
        assert!(r > Version::parse("99999999999999").unwrap());
        assert!(r < Version::repeatable("zz"));
        assert!(!r.is_zero());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Version::parse("1.2").is_err());
        assert!(Version::parse_any("1..2").is_err());
        assert!(Version::parse("v1").is_err());
        assert!(Version::parse("").is_err());
    }

    #[test]
    fn zero_is_before_everything() {
        assert!(Version::parse("0").unwrap().is_zero());
        assert!(Version::parse("0.0.0").unwrap().is_zero());
        assert!(!Version::parse("0.1.0").unwrap().is_zero());
    }
}
