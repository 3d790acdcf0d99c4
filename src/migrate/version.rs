//! Migration versions: semver (`1.2.0`) or plain numbers (`3`, `003`). One folder uses
//! one style; versions compare by value, so `003` and `3` are the same version.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStyle {
    Semver,
    Number,
}

impl fmt::Display for VersionStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionStyle::Semver => "semver (like 1.2.0)",
            VersionStyle::Number => "a plain number (like 3)",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Number(u64),
    Semver(semver::Version),
}

/// A version as written in a file, ordered by its value.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    key: Key,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, String> {
        let text = text.trim();
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

    pub fn style(&self) -> VersionStyle {
        match self.key {
            Key::Number(_) => VersionStyle::Number,
            Key::Semver(_) => VersionStyle::Semver,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `0` and `0.0.0`: the version before every migration.
    pub fn is_zero(&self) -> bool {
        match &self.key {
            Key::Number(n) => *n == 0,
            Key::Semver(v) => *v == semver::Version::new(0, 0, 0),
        }
    }

    /// The version `create` gives the next migration: the next number, or the next minor
    /// semver version (1.2.3 → 1.3.0).
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
        }
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
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
    fn garbage_is_refused() {
        assert!(Version::parse("1.2").is_err());
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
