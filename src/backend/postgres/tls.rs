//! TLS on PostgreSQL connections, with libpq's URL parameters and their meanings, so that
//! a URL that works with `psql` works here:
//!
//! | `sslmode` | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | no |
//! | `require` | always | no; as `verify-ca` when a root certificate file exists |
//! | `verify-ca` | always | signed by a trusted root |
//! | `verify-full` | always | signed by a trusted root, and names the host |
//!
//! `sslrootcert` is a PEM file of trusted roots (default `~/.postgresql/root.crt`), or
//! `system` for the Mozilla root set (then `sslmode` defaults to `verify-full`, and a
//! weaker one is refused, as in libpq). `sslcert` and `sslkey` are a client certificate
//! and its key (default `~/.postgresql/postgresql.crt` and `.key`; none is sent when
//! the certificate file does not exist). Unix-socket connections never use TLS.
//!
//! Query connections (tokio-postgres) and the replication stream (pgwire-replication)
//! take their settings from the one [`ConnectionSettings`] parsed here, so both check a
//! certificate the same way. Invariant: a handshake that fails, or a certificate that
//! is refused, is an [`Error::Tls`] naming the database, never retried.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// libpq's `sslmode`, in increasing order of what it checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first; switchyard does not
            // downgrade, so it is `prefer`.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn checks_chain(self) -> bool {
        self >= SslMode::VerifyCa
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla root set.
    System,
    /// No file at the default path, and none named.
    Missing(PathBuf),
}

/// How one database is connected to: the URL's other settings, and its TLS.
pub struct ConnectionSettings {
    /// Everything but the TLS parameters, which tokio-postgres does not know.
    pub config: tokio_postgres::Config,
    pub tls: TlsSettings,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    mode: SslMode,
    roots: Roots,
    /// A client certificate and its key.
    client: Option<(PathBuf, PathBuf)>,
}

impl ConnectionSettings {
    /// Parses `url` (of the configured database `database`). The TLS parameters are
    /// read from a `postgres://` URL's query; a `key=value` string goes to tokio-postgres
    /// as it is.
    pub fn parse(database: &str, url: &SecretUrl) -> Result<ConnectionSettings> {
        let invalid = |reason: String| Error::Config {
            file: format!("databases.{database}.url"),
            reason,
        };
        let (rest, tls_params) = split_tls_params(url.expose());
        let config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| invalid(format!("`{url}` is not a valid PostgreSQL URL: {e}")))?;
        let param = |name: &str| {
            tls_params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let named_mode = match param("sslmode") {
            Some(text) => Some(SslMode::parse(text).ok_or_else(|| {
                invalid(format!(
                    "invalid sslmode `{text}` (disable, prefer, require, verify-ca or verify-full)"
                ))
            })?),
            // A `key=value` string's own `sslmode` (tokio-postgres read it).
            None => match config.get_ssl_mode() {
                tokio_postgres::config::SslMode::Disable => Some(SslMode::Disable),
                tokio_postgres::config::SslMode::Require => Some(SslMode::Require),
                _ => None,
            },
        };
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let default_file = |name: &str| {
            home.as_deref()
                .unwrap_or(Path::new("~"))
                .join(".postgresql")
                .join(name)
        };
        let roots = match param("sslrootcert") {
            Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
            None => {
                let path = default_file("root.crt");
                if path.exists() {
                    Roots::File(path)
                } else {
                    Roots::Missing(path)
                }
            }
        };
        let mode = match (named_mode, &roots) {
            (None, Roots::System) => SslMode::VerifyFull,
            (Some(mode), Roots::System) if mode < SslMode::VerifyFull => {
                return Err(invalid(format!(
                    "weak sslmode `{}` may not be used with sslrootcert=system (use verify-full)",
                    mode.name()
                )))
            }
            // As libpq: `require` with a root certificate file checks the chain.
            (Some(SslMode::Require), Roots::File(path)) if path.exists() => SslMode::VerifyCa,
            (mode, _) => mode.unwrap_or(SslMode::Prefer),
        };
        let cert = param("sslcert").map_or_else(|| default_file("postgresql.crt"), PathBuf::from);
        let key = param("sslkey").map_or_else(|| default_file("postgresql.key"), PathBuf::from);
        let client = if cert.exists() {
            Some((cert, key))
        } else {
            if param("sslcert").is_some() {
                tracing::warn!(
                    database,
                    "sslcert {} does not exist: connecting without a client certificate",
                    cert.display()
                );
            }
            None
        };
        let only_sockets = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| matches!(host, Host::Unix(_)));
        let mode = if only_sockets { SslMode::Disable } else { mode };
        Ok(ConnectionSettings {
            config,
            tls: TlsSettings {
                mode,
                roots,
                client,
            },
        })
    }

    /// The host and port to reach, as the replication stream needs them.
    pub fn host_and_port(&self) -> (String, u16) {
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        };
        (host, port)
    }
}

impl TlsSettings {
    /// The `sslmode` as tokio-postgres knows it (it checks no certificate itself; the
    /// connector from [`TlsSettings::connector`] does).
    pub fn wire_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The TLS connector for query connections.
    pub fn connector(&self, database: &str) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.failed(database, format!("cannot set up TLS: {e}")))?;
        let chain = if self.mode.checks_chain() {
            let roots = Arc::new(self.root_store(database)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| self.failed(database, format!("cannot set up TLS: {e}")))?;
            Some(webpki)
        } else {
            None
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CertificateCheck {
                chain,
                names: self.mode == SslMode::VerifyFull,
                provider,
            }));
        let config = match &self.client {
            Some((cert, key)) => {
                let chain = self.certificates(database, "sslcert", cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    self.failed(
                        database,
                        format!("cannot read sslkey {}: {e}", key.display()),
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| self.failed(database, format!("invalid sslcert/sslkey: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// The same settings for the replication stream of `host`.
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::config::SslMode as Wire;
        let mode = match self.mode {
            SslMode::Disable => Wire::Disable,
            SslMode::Prefer => Wire::Prefer,
            SslMode::Require => Wire::Require,
            SslMode::VerifyCa => Wire::VerifyCa,
            SslMode::VerifyFull => Wire::VerifyFull,
        };
        pgwire_replication::TlsConfig {
            mode,
            // `None` is the Mozilla root set there too; a mode that checks no chain
            // reads no file.
            ca_pem_path: match &self.roots {
                Roots::File(path) | Roots::Missing(path) if self.mode.checks_chain() => {
                    Some(path.clone())
                }
                _ => None,
            },
            // The host itself, an IP address included (its certificate's IP names
            // are checked as libpq does).
            sni_hostname: Some(host.to_string()),
            client_cert_pem_path: self.client.as_ref().map(|(cert, _)| cert.clone()),
            client_key_pem_path: self.client.as_ref().map(|(_, key)| key.clone()),
        }
    }

    fn root_store(&self, database: &str) -> Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            Roots::System => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::Missing(path) => {
                return Err(self.failed(
                    database,
                    format!(
                        "root certificate file {} does not exist: name one with sslrootcert=FILE, \
                         use sslrootcert=system, or use an sslmode that checks no certificate",
                        path.display()
                    ),
                ))
            }
            Roots::File(path) => {
                let certs = self.certificates(database, "sslrootcert", path)?;
                let (_, rejected) = store.add_parsable_certificates(certs);
                if store.is_empty() {
                    return Err(self.failed(
                        database,
                        format!(
                            "sslrootcert {} holds no usable certificate ({rejected} rejected)",
                            path.display()
                        ),
                    ));
                }
            }
        }
        Ok(store)
    }

    /// The certificates of the PEM file `path`, named by the parameter `param`.
    fn certificates(
        &self,
        database: &str,
        param: &str,
        path: &Path,
    ) -> Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| {
                self.failed(
                    database,
                    format!("cannot read {param} {}: {e}", path.display()),
                )
            })
    }

    fn failed(&self, database: &str, message: String) -> Error {
        Error::Tls {
            database: database.to_string(),
            message: format!("{message} (sslmode={})", self.mode.name()),
        }
    }

    /// The error for a connection that failed, when TLS is why: the handshake broke or
    /// the server's certificate was refused.
    pub fn refusal(&self, database: &str, error: &tokio_postgres::Error) -> Option<Error> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = cause {
            let rustls = current.downcast_ref::<rustls::Error>().or_else(|| {
                current
                    .downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(rustls) = rustls {
                let message = match rustls {
                    rustls::Error::InvalidCertificate(reason) => format!(
                        "the server's certificate was refused: {}",
                        certificate_problem(reason)
                    ),
                    other => format!("the TLS handshake failed: {other}"),
                };
                return Some(self.failed(database, message));
            }
            cause = current.source();
        }
        None
    }
}

/// Why a certificate was refused, in words.
fn certificate_problem(reason: &CertificateError) -> String {
    match reason {
        CertificateError::UnknownIssuer => {
            "no root certificate in sslrootcert signed it (UnknownIssuer)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it does not name the host connected to (use the name it was issued for, or sslmode=verify-ca)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".into()
        }
        other => format!("{other:?}"),
    }
}

/// Splits the TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) from a
/// `postgres://` URL's query; any other text is returned as it is.
fn split_tls_params(text: &str) -> (String, Vec<(String, String)>) {
    const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
    let Some((base, query)) = text
        .split_once('?')
        .filter(|_| text.starts_with("postgres://") || text.starts_with("postgresql://"))
    else {
        return (text.to_string(), Vec::new());
    };
    let mut kept = url::form_urlencoded::Serializer::new(String::new());
    let mut tls = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if TLS_PARAMS.contains(&key.as_ref()) {
            tls.push((key.into_owned(), value.into_owned()));
        } else {
            kept.append_pair(&key, &value);
        }
    }
    let kept = kept.finish();
    if kept.is_empty() {
        (base.to_string(), tls)
    } else {
        (format!("{base}?{kept}"), tls)
    }
}

/// The check of the server's certificate that `sslmode` asks for: none (`prefer`,
/// `require`: any certificate is taken, as libpq does), the chain (`verify-ca`), or the
/// chain and the name (`verify-full`). The handshake's signatures are checked always.
#[derive(Debug)]
struct CertificateCheck {
    /// The roots' verifier, when the chain is checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CertificateCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // The name is checked after the chain: the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<ConnectionSettings> {
        ConnectionSettings::parse("main", &SecretUrl::new(url))
    }

    #[test]
    fn tls_parameters_are_taken_out_of_the_url_and_the_rest_kept() {
        let parsed = settings(
            "postgres://app@db.example:6432/shop?sslmode=verify-full&application_name=x&sslrootcert=ca.pem",
        )
        .unwrap();
        assert_eq!(parsed.tls.mode, SslMode::VerifyFull);
        assert_eq!(parsed.tls.roots, Roots::File("ca.pem".into()));
        assert_eq!(parsed.config.get_application_name(), Some("x"));
        assert_eq!(parsed.host_and_port(), ("db.example".to_string(), 6432));
    }

    #[test]
    fn sslmode_follows_libpq() {
        assert_eq!(
            settings("postgres://h/d").unwrap().tls.mode,
            SslMode::Prefer
        );
        assert_eq!(
            settings("postgres://h/d?sslrootcert=system")
                .unwrap()
                .tls
                .mode,
            SslMode::VerifyFull
        );
        let weak = settings("postgres://h/d?sslmode=require&sslrootcert=system")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            weak,
            "databases.main.url: weak sslmode `require` may not be used with sslrootcert=system (use verify-full)"
        );
        let bad = settings("postgres://h/d?sslmode=verify")
            .err()
            .unwrap()
            .to_string();
        assert!(bad.contains("invalid sslmode `verify`"), "{bad}");
        // No TLS over a Unix socket, whatever the mode.
        assert_eq!(
            settings("postgres:///d?host=/run/postgresql&sslmode=require")
                .unwrap()
                .tls
                .mode,
            SslMode::Disable
        );
    }

    #[test]
    fn require_with_a_root_certificate_file_checks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").unwrap();
        let url = format!(
            "postgres://h/d?sslmode=require&sslrootcert={}",
            ca.display()
        );
        assert_eq!(settings(&url).unwrap().tls.mode, SslMode::VerifyCa);
    }

    #[test]
    fn a_key_value_string_is_left_to_tokio_postgres() {
        let parsed = settings("host=h dbname=d sslmode=require").unwrap();
        assert_eq!(parsed.tls.mode, SslMode::Require);
        assert_eq!(parsed.config.get_dbname(), Some("d"));
    }
}
