//! The HTTP side: `/metrics`, `/healthz`, `/readyz`, and for `serve` the jobs API.
//! Binds where it is told; the configuration's default is loopback, and `serve`
//! refuses to listen anywhere else without `server.token` (see
//! [`crate::config::ServerConfig::check_exposure`]). With `server.token` set, every
//! endpoint that changes something needs `Authorization: Bearer <token>`, compared in
//! constant time. With `server.tls_cert` and `server.tls_key`, `serve` speaks HTTPS
//! only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::config::{Config, ServerConfig};
use crate::engine::{self, JobRecord, Request};
use crate::error::{Error, FileProblem, Result};
use crate::job;
use crate::metrics::Metrics;
use crate::state::StateStore;

async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {listen}: {e}")))
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until the process ends.
fn spawn(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> Result<SocketAddr> {
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Usage(format!("cannot listen: {e}")))?;
    match tls {
        None => {
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::error!(%error, "the HTTP server stopped");
                }
            });
        }
        Some(tls) => {
            let server = listener
                .into_std()
                .and_then(|std| axum_server::tls_rustls::from_tcp_rustls(std, tls))
                .map_err(|e| Error::Usage(format!("cannot listen on {bound}: {e}")))?;
            tokio::spawn(async move {
                if let Err(error) = server.serve(app.into_make_service()).await {
                    tracing::error!(%error, "the HTTP server stopped");
                }
            });
        }
    }
    Ok(bound)
}

/// The HTTPS settings, when `server.tls_cert` and `server.tls_key` are set.
fn tls_config(server: &ServerConfig) -> Result<Option<axum_server::tls_rustls::RustlsConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) else {
        return Ok(None);
    };
    let invalid = |field: &str, reason: String| Error::Config {
        file: format!("server.{field}"),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| invalid("tls_cert", format!("cannot read {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid("tls_key", format!("cannot read {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| {
            invalid(
                "tls_cert",
                format!("cannot use the certificate and key: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(config),
    )))
}

fn metrics_routes(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves `/metrics` and `/healthz` on `listen` until the process ends; returns the
/// address bound (useful with port 0).
pub async fn serve_metrics(listen: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    spawn(bind(listen).await?, metrics_routes(metrics), None)
}

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub store: Arc<dyn StateStore>,
    pub metrics: Arc<Metrics>,
}

/// Serves the jobs API, `/readyz`, `/metrics` and `/healthz` on `server.listen` (over
/// TLS when configured).
pub async fn serve_api(state: ApiState) -> Result<SocketAddr> {
    let server = &state.config.server;
    server.check_exposure()?;
    let tls = tls_config(server)?;
    let listen = server.listen;
    let api = Router::new()
        .route("/readyz", get(ready))
        .route("/jobs", get(list_jobs).post(submit_job))
        .route("/jobs/{name}", get(show_job).patch(throttle_job))
        .route("/jobs/{name}/{action}", post(act_on_job))
        .with_state(state.clone());
    spawn(
        bind(listen).await?,
        api.merge(metrics_routes(state.metrics)),
        tls,
    )
}

/// An error as the API answers it: a status and `{"error": "…"}`.
struct ApiError(StatusCode, String);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Usage(_) => StatusCode::BAD_REQUEST,
            Error::Refused(_) => StatusCode::CONFLICT,
            Error::InvalidFiles(_) | Error::Config { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = std::result::Result<Response, ApiError>;

/// Refuses a changing request without the configured bearer token.
fn authorize(state: &ApiState, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
    let Some(token) = &state.config.server.token else {
        return Ok(());
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let matches = given.is_some_and(|given| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            token.expose().as_bytes(),
        ))
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <server.token>`".into(),
        ))
    }
}

async fn ready(State(state): State<ApiState>) -> Response {
    match state.store.jobs().await {
        Ok(_) => "ready\n".into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        )
            .into_response(),
    }
}

async fn list_jobs(State(state): State<ApiState>) -> ApiResult {
    let mut statuses = Vec::new();
    for record in JobRecord::load_all(state.store.as_ref()).await? {
        statuses.push(record.status(state.store.as_ref()).await?);
    }
    Ok(Json(statuses).into_response())
}

async fn show_job(State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    let record = JobRecord::load(state.store.as_ref(), &name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no job named `{name}`")))?;
    Ok(Json(record.status(state.store.as_ref()).await?).into_response())
}

/// `POST /jobs` with a job file's TOML: checked, then written to the jobs folder,
/// where the scheduler picks it up.
async fn submit_job(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&state, &headers)?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| Error::Usage("the body must be a job file's TOML (UTF-8)".into()))?;
    let problem = |reason: String| {
        Error::InvalidFiles(vec![FileProblem {
            file: "request body".into(),
            reason,
        }])
    };
    let spec = job::parse(&text).map_err(problem)?;
    spec.validate(&state.config).map_err(problem)?;
    let dir = &state.config.jobs.dir;
    let file = dir.join(format!("{}.toml", spec.name));
    if file.exists() {
        return Err(Error::Refused(format!(
            "{} exists already; a job's file is not replaced over the API",
            file.display()
        ))
        .into());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    std::fs::write(&file, text).map_err(|e| Error::io(&file, e))?;
    let body = serde_json::json!({ "name": spec.name, "file": file.display().to_string() });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn act_on_job(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult {
    authorize(&state, &headers)?;
    let request = match action.as_str() {
        "pause" => Request::Pause,
        "resume" => Request::Resume,
        "cutover" => Request::Cutover,
        "contract" => Request::Contract,
        "abort" => Request::Abort,
        other => {
            return Err(Error::NotFound(format!(
                "no action `{other}` (pause, resume, cutover, contract, abort)"
            ))
            .into())
        }
    };
    let record = engine::request(state.store.as_ref(), &name, request).await?;
    Ok(Json(record.status(state.store.as_ref()).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Throttle {
    rows_per_second: u64,
}

async fn throttle_job(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    authorize(&state, &headers)?;
    let throttle: Throttle = serde_json::from_slice(&body)
        .map_err(|e| Error::Usage(format!("the body must be {{\"rows_per_second\": N}}: {e}")))?;
    let record = engine::request(
        state.store.as_ref(),
        &name,
        Request::Throttle(throttle.rows_per_second),
    )
    .await?;
    Ok(Json(record.status(state.store.as_ref()).await?).into_response())
}
