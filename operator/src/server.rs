//! HTTP servers: `/metrics`, `/healthz` and `/readyz` in plain HTTP, and the admission
//! webhook over TLS (the API server only calls webhooks over HTTPS).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;

use crate::metrics::Metrics;
use crate::webhook;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the webhook certificate {cert} / key {key}: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
    #[error("server stopped: {0}")]
    Serve(std::io::Error),
}

/// Routes of the plain-HTTP server.
pub fn health_router(metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move { m.render() }),
        )
        .with_state(metrics)
}

/// What the webhook's handler needs.
#[derive(Clone)]
struct WebhookState {
    metrics: Metrics,
    /// Reads a CallCenter for a `callcenters/scale` review; `None`: no API access, and scale
    /// requests are refused.
    client: Option<kube::Client>,
}

/// Routes of the webhook server.
pub fn webhook_router(metrics: Metrics, client: Option<kube::Client>) -> Router {
    Router::new()
        .route(webhook::PATH, post(admit))
        .with_state(WebhookState { metrics, client })
}

async fn admit(
    State(WebhookState { metrics, client }): State<WebhookState>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let kind = review
        .request
        .as_ref()
        .map(|r| r.kind.kind.clone())
        .unwrap_or_default();
    let (answer, verdict) = match webhook::scale_target(&review) {
        Some((namespace, name)) => {
            let center = match client {
                Some(client) => {
                    kube::Api::<switchboard_crds::CallCenter>::namespaced(client, &namespace)
                        .get(&name)
                        .await
                        .map_err(|e| format!("reading CallCenter {namespace}/{name}: {e}"))
                }
                None => Err("the webhook has no access to the Kubernetes API".to_string()),
            };
            webhook::review_scale(review, center)
        }
        None => webhook::review(review),
    };
    metrics
        .admission_reviews
        .with_label_values(&[kind.as_str(), verdict.label()])
        .inc();
    if verdict != webhook::Verdict::Allowed {
        let message = answer
            .response
            .as_ref()
            .map(|r| r.result.message.as_str())
            .unwrap_or("");
        tracing::info!(%kind, verdict = verdict.label(), %message, "admission review");
    }
    Json(answer)
}

/// Serves the health and metrics routes until the task is dropped.
pub async fn serve_health(addr: SocketAddr, metrics: Metrics) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    axum::serve(listener, health_router(metrics))
        .await
        .map_err(ServerError::Serve)
}

/// Binds the webhook server with a PEM certificate and key, and returns the bound address
/// and the serving future (so a caller on port 0 learns the port before serving).
pub async fn bind_webhook(
    addr: SocketAddr,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    metrics: Metrics,
    client: Option<kube::Client>,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServerError>>), ServerError> {
    install_crypto_provider();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem(cert_pem, key_pem)
        .await
        .map_err(|source| ServerError::Tls {
            cert: "<pem>".into(),
            key: "<pem>".into(),
            source,
        })?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Listen { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })?;
    let server = axum_server::from_tcp_rustls(listener, config);
    let app = webhook_router(metrics, client);
    Ok((bound, async move {
        server
            .serve(app.into_make_service())
            .await
            .map_err(ServerError::Serve)
    }))
}

/// Reads the certificate and key files and serves the webhook until the task is dropped.
pub async fn serve_webhook(
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    metrics: Metrics,
    client: Option<kube::Client>,
) -> Result<(), ServerError> {
    let tls_err = |source| ServerError::Tls {
        cert: cert.clone(),
        key: key.clone(),
        source,
    };
    let cert_pem = std::fs::read(&cert).map_err(tls_err)?;
    let key_pem = std::fs::read(&key).map_err(tls_err)?;
    let (_, serve) = bind_webhook(addr, cert_pem, key_pem, metrics, client).await?;
    serve.await
}

fn install_crypto_provider() {
    // A second install (tests start several servers) is harmless and returns Err.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
