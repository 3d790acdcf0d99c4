//! Elasticsearch (and OpenSearch, which speaks the same REST API for everything used
//! here): the client, errors as users read them, and the migration target. One file per
//! concern:
//!
//! - [`migrations`]: the [`crate::migrate::MigrationTarget`] (history index, checksums,
//!   undo of a migration that failed midway)
//! - [`lease`]: lease records for the migration lock, in `switchyard-locks`
//! - [`operations`]: seed 003's operations applied
//! - [`reindex`]: a reindex job's indexes (the alias, the index it names, the new
//!   `<alias>_vN`) and its source and sink joined: [`source`] reads the index in
//!   point-in-time order ([`pit`]) and catches up by a watermark field, [`sink`] writes
//!   the new index with `_bulk` and moves the alias; [`checkpoints`] keeps the job's
//!   progress, [`digest`] compares the two indexes for verify
//! - [`copy`]: a copy of a table or a collection into a new index behind an alias, on the
//!   same sink: [`documents`] makes rows documents, [`verify_rows`] compares them
//!
//! The client is the `elasticsearch` crate's transport; requests are JSON over its
//! `send`, so that every call reads the server's status and error body the same way.
//! Credentials come from the URL (`https://user:password@host`) or the database's
//! `username`/`password` or `api_key`; `ca_file` names the CA that signed an `https://`
//! server's certificate. None of them is ever printed.

mod checkpoints;
mod copy;
mod digest;
mod documents;
pub mod erase;
mod lease;
mod migrations;
mod operations;
mod pit;
mod reindex;
mod server_copy;
mod sink;
mod source;
pub mod transfer;
mod verify_rows;

pub use copy::{open_job as open_copy_job, plan_job as plan_copy_job};
pub use migrations::ElasticMigrations;
pub use reindex::{open_job, plan_job};

use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use serde_json::Value;

use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::secret::{percent_decode, SecretUrl};

/// How long one request may take, unless it says otherwise (a reindex waits for the
/// server to finish).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a synchronous `_reindex` may take (a migration's `reindex`; a job's server
/// copy on a server without the tasks API).
const REINDEX_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// A configured Elasticsearch database.
#[derive(Clone)]
pub struct Es {
    name: String,
    url: SecretUrl,
    client: Elasticsearch,
}

/// A server's answer: its status and JSON body (`Null` when it sent none).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error's type (`resource_already_exists_exception`), when the server sent one.
    pub fn error_type(&self) -> Option<&str> {
        self.body["error"]["type"].as_str()
    }

    /// What went wrong, as the server put it.
    pub fn reason(&self) -> String {
        let error = &self.body["error"];
        match (error["type"].as_str(), error["reason"].as_str()) {
            (Some(kind), Some(reason)) => format!("{kind}: {reason} (HTTP {})", self.status),
            _ if error.is_string() => format!(
                "{} (HTTP {})",
                error.as_str().unwrap_or_default(),
                self.status
            ),
            _ => format!("HTTP {}: {}", self.status, self.body),
        }
    }
}

impl Es {
    /// A client for the database `name`. Nothing is sent until the first request.
    pub fn connect(name: &str, database: &DatabaseConfig) -> Result<Es> {
        let usage = |why: String| Error::Usage(format!("database `{name}`: {why}"));
        let mut url = Url::parse(database.url.expose())
            .map_err(|e| usage(format!("`{}` is not a URL: {e}", database.url.redacted())))?;
        let in_url = (!url.username().is_empty()).then(|| {
            (
                percent_decode(url.username()),
                url.password().map(percent_decode).unwrap_or_default(),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(REQUEST_TIMEOUT)
            .disable_proxy();
        let credentials = match (&database.api_key, &database.username, in_url) {
            (Some(key), _, _) => Some(Credentials::EncodedApiKey(key.expose().to_string())),
            (None, Some(user), _) => Some(Credentials::Basic(
                user.clone(),
                database
                    .password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            )),
            (None, None, Some((user, password))) => Some(Credentials::Basic(user, password)),
            (None, None, None) => None,
        };
        if let Some(credentials) = credentials {
            transport = transport.auth(credentials);
        }
        if let Some(ca_file) = &database.ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| Error::io(ca_file, e))?;
            let ca = Certificate::from_pem(&pem).map_err(|e| {
                usage(format!(
                    "ca_file {}: not a PEM certificate: {e}",
                    ca_file.display()
                ))
            })?;
            transport = transport.cert_validation(CertificateValidation::Full(ca));
        }
        let transport = transport
            .build()
            .map_err(|e| usage(format!("cannot create an Elasticsearch client: {e}")))?;
        Ok(Es {
            name: name.to_string(),
            url: database.url.clone(),
            client: Elasticsearch::new(transport),
        })
    }

    /// The configured name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one request; any answer the server gives is a [`Reply`], whatever its
    /// status. Not reaching the server is an error naming the database.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply> {
        self.call_with_timeout(method, path, body, None).await
    }

    /// [`Es::call`] with a timeout of its own (`Duration::MAX`: none).
    pub async fn call_with_timeout(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let body = body.map(|value| value.to_string());
        self.send(method, path, HeaderMap::new(), body, timeout)
            .await
    }

    /// A `_bulk` request: `lines` of newline-delimited JSON, each ending in `\n`.
    pub async fn bulk(&self, path: &str, lines: String) -> Result<Reply> {
        let mut headers = HeaderMap::new();
        headers.insert(
            elasticsearch::http::headers::CONTENT_TYPE,
            elasticsearch::http::headers::HeaderValue::from_static("application/x-ndjson"),
        );
        self.send(Method::Post, path, headers, Some(lines), None)
            .await
    }

    /// How many documents `index` (an index or an alias) has, as of its last refresh.
    pub async fn count(&self, index: &str) -> Result<u64> {
        let path = format!("/{}/_count", path_segment(index));
        let reply = self
            .expect(
                Method::Get,
                &path,
                None,
                &format!("cannot count the documents of `{index}`"),
            )
            .await?;
        Ok(reply["count"].as_u64().unwrap_or(0))
    }

    /// Deletes `index`, a job's old index, unless `alias` names it (a contract resumed
    /// after its checkpoints went sees the alias's index as the old one: the index
    /// applications use is never deleted).
    pub async fn delete_old_index(&self, alias: &str, index: &str) -> Result<()> {
        let path = format!("/_alias/{}", path_segment(alias));
        let named = self.call(Method::Get, &path, None).await?;
        if named.is_success() && named.body.get(index).is_some() {
            tracing::info!(index, "the alias names this index; contract keeps it");
            return Ok(());
        }
        let path = format!("/{}", path_segment(index));
        let reply = self.call(Method::Delete, &path, None).await?;
        if reply.is_success() || reply.status == 404 {
            Ok(())
        } else {
            Err(self.refused(&format!("cannot delete the old index `{index}`"), &reply))
        }
    }

    /// Whether the server is OpenSearch, whose point-in-time API lives under another
    /// path (`/_search/point_in_time`) than Elasticsearch's (`/_pit`).
    pub async fn is_opensearch(&self) -> Result<bool> {
        let root = self
            .expect(Method::Get, "/", None, "cannot read the server's version")
            .await?;
        Ok(root["version"]["distribution"] == "opensearch")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let mut sent = self
            .client
            .send::<String, ()>(method, path, headers.clone(), None, body.clone(), timeout)
            .await;
        if sent.as_ref().is_err_and(closed_while_idle) {
            // The server closed a kept-alive connection as the request went out on it,
            // so the request was never read: sent again on a new connection.
            sent = self
                .client
                .send::<String, ()>(method, path, headers, None, body, timeout)
                .await;
        }
        let sent = sent.map_err(|e| self.unreachable(path, &e))?;
        let status = sent.status_code().as_u16();
        let text = sent.text().await.map_err(|e| self.unreachable(path, &e))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply { status, body })
    }

    /// [`Es::call`] that must succeed: any other status is an error with `context`.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        context: &str,
    ) -> Result<Value> {
        let reply = self.call(method, path, body).await?;
        if reply.is_success() {
            Ok(reply.body)
        } else {
            Err(self.refused(context, &reply))
        }
    }

    /// An answer that is not what the request needed, as an error with `context`.
    pub fn refused(&self, context: &str, reply: &Reply) -> Error {
        Error::Store {
            database: self.name.clone(),
            context: context.to_string(),
            message: self.redact(reply.reason()),
            transient: reply.status == 429 || reply.status >= 502,
        }
    }

    fn unreachable(&self, path: &str, error: &elasticsearch::Error) -> Error {
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(error);
        while let Some(inner) = cause {
            // (a wrapper often prints its cause already)
            let text = inner.to_string();
            if !message.contains(&text) {
                message.push_str(&format!(": {text}"));
            }
            cause = inner.source();
        }
        let transient = !message_is_tls(&message);
        Error::Store {
            database: self.name.clone(),
            context: format!("cannot reach {} ({path})", self.url.redacted()),
            message: self.redact(message),
            transient,
        }
    }

    fn redact(&self, message: String) -> String {
        match self.url.password() {
            Some(password) if !password.is_empty() => message.replace(&password, "***"),
            _ => message,
        }
    }
}

/// Whether `error` is a kept-alive connection the server had closed (servers close idle
/// ones, Elasticsearch's and proxies' alike) before it read the request.
fn closed_while_idle(error: &elasticsearch::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(inner) = cause {
        if inner
            .to_string()
            .contains("connection closed before message completed")
        {
            return true;
        }
        cause = inner.source();
    }
    false
}

/// `name` as one segment of a request path (an index, alias or document id).
pub fn path_segment(name: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    percent_encoding::utf8_percent_encode(name, KEEP).to_string()
}

/// A refused certificate will not be accepted on the next try either.
fn message_is_tls(message: &str) -> bool {
    message.contains("certificate") || message.contains("InvalidCertificate")
}

/// The cluster's distribution and version (`GET /`), which also proves it answers.
pub async fn server_version(name: &str, database: &DatabaseConfig) -> Result<String> {
    let es = Es::connect(name, database)?;
    let reply = es.call(Method::Get, "/", None).await?;
    if !reply.is_success() {
        return Err(es.refused("cannot read the cluster's version", &reply));
    }
    let version = &reply.body["version"];
    let distribution = match version["distribution"].as_str() {
        Some("opensearch") => "OpenSearch",
        _ => "Elasticsearch",
    };
    Ok(format!(
        "{distribution} {}",
        version["number"].as_str().unwrap_or("of unknown version")
    ))
}

/// The indexes `alias` points at (none when there is no such alias).
pub async fn alias_indexes(
    name: &str,
    database: &DatabaseConfig,
    alias: &str,
) -> Result<Vec<String>> {
    let es = Es::connect(name, database)?;
    let reply = es
        .call(
            Method::Get,
            &format!("/_alias/{}", path_segment(alias)),
            None,
        )
        .await?;
    match reply.status {
        404 => Ok(Vec::new()),
        _ if reply.is_success() => Ok(reply
            .body
            .as_object()
            .map(|indexes| indexes.keys().cloned().collect())
            .unwrap_or_default()),
        _ => Err(es.refused("cannot read the alias", &reply)),
    }
}
