//! Values that must never be printed: connection URLs with passwords, and tokens.
//!
//! Invariant: `Display` and `Debug` of these types never show the secret part, so a
//! value that reaches a log line, an error, a status listing or the audit log by any
//! path is already redacted. Only `expose()` gives the real value, for the one call
//! that connects.

use std::fmt;

use serde::{Deserialize, Deserializer};

const MASK: &str = "***";

/// A connection URL (or libpq `key=value` string) whose password is hidden when shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The real URL, password included. Use only to connect.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password, if the URL carries one (used to scrub it from text we did not write).
    pub fn password(&self) -> Option<String> {
        match url::Url::parse(&self.0) {
            Ok(parsed) => parsed
                .password()
                .map(percent_decode)
                .filter(|p| !p.is_empty()),
            Err(_) => self
                .0
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix("password="))
                .map(|p| p.trim_matches('\'').to_string()),
        }
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) if parsed.password().is_some() => {
                // Setting a password only fails for URLs that cannot have one.
                let _ = parsed.set_password(Some(MASK));
                parsed.to_string()
            }
            Ok(_) => self.0.clone(),
            Err(_) => redact_key_value(&self.0),
        }
    }
}

/// `%40` → `@`: a URL's user or password as it is.
pub(crate) fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("p={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| text.to_string())
}

fn redact_key_value(text: &str) -> String {
    text.split(' ')
        .map(|pair| {
            if pair.starts_with("password=") {
                format!("password={MASK}")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretUrl)
    }
}

/// A token or password that is never shown.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_masked() {
        let url = SecretUrl::new("postgres://app:s3cr%40t@db.example:5432/app");
        assert_eq!(url.to_string(), "postgres://app:***@db.example:5432/app");
        assert!(!format!("{url:?}").contains("s3cr"));
        assert_eq!(url.password().as_deref(), Some("s3cr@t"));
    }

    #[test]
    fn url_without_password_is_unchanged() {
        let url = SecretUrl::new("postgres://postgres@127.0.0.1:5432/app");
        assert_eq!(url.to_string(), "postgres://postgres@127.0.0.1:5432/app");
        assert_eq!(url.password(), None);
    }

    #[test]
    fn key_value_password_is_masked() {
        let url = SecretUrl::new("host=db user=app password=hunter2 dbname=app");
        assert_eq!(url.to_string(), "host=db user=app password=*** dbname=app");
        assert_eq!(url.password().as_deref(), Some("hunter2"));
    }

    #[test]
    fn secret_never_shows() {
        let token: Secret = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(format!("{token} {token:?}"), "*** ***");
        assert_eq!(token.expose(), "abc");
    }
}
