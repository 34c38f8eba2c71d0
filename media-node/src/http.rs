//! The node's HTTP endpoint (`--metrics-listen`, 9090 by default, the port the operator's
//! StatefulSet probes):
//! - `/metrics`: Prometheus text from the node's one registry (SIP, recording, node metrics);
//! - `/healthz`: the process is alive and its runtime answers (the liveness probe);
//! - `/readyz`: 200 once the config is loaded and the SIP listeners are bound and, for a
//!   HotStandby node standing by, while it follows the active in sync; otherwise 503 with the
//!   reason (the readiness probe: the SIP Service sends traffic only to ready pods, and a
//!   rolling update waits for each new pod to be ready before it stops the next).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

/// What readiness waits for. Each flag is set once, by the step that achieves it.
#[derive(Default)]
pub struct Readiness {
    config_loaded: AtomicBool,
    sip_bound: AtomicBool,
    standby: std::sync::OnceLock<StandbyCheck>,
}

/// Why a standby could not take over now (`None`: it could, or the node is not a standby).
type StandbyCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

impl Readiness {
    pub fn config_loaded(&self) {
        self.config_loaded.store(true, Ordering::Release);
    }

    pub fn sip_bound(&self) {
        self.sip_bound.store(true, Ordering::Release);
    }

    /// A HotStandby node: while it stands by it is ready only when it could take over, so a
    /// rolling update (which waits for each new pod to be ready) never stops the active
    /// before the new standby follows it in sync.
    pub fn standby_must_follow(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        let _ = self.standby.set(Box::new(check));
    }

    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.config_loaded.load(Ordering::Acquire) {
            Some("the configuration is not loaded yet".to_string())
        } else if !self.sip_bound.load(Ordering::Acquire) {
            Some("the SIP listeners are not bound yet".to_string())
        } else {
            self.standby.get().and_then(|check| check())
        }
    }
}

/// The node's own metrics (the SIP and recording modules register theirs).
#[derive(Clone)]
pub struct NodeMetrics {
    /// Generation of the running config.
    pub config_generation: IntGauge,
    /// `ApplyConfig` calls by outcome (applied, unchanged, stale, rejected).
    pub config_applies: IntCounterVec,
    /// When the process started, as Unix seconds (restarts show as jumps).
    pub start_time_seconds: IntGauge,
}

impl NodeMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            config_generation: IntGauge::new(
                "switchboard_config_generation",
                "Generation of the node config this node runs.",
            )?,
            config_applies: IntCounterVec::new(
                Opts::new(
                    "switchboard_config_applies_total",
                    "Config snapshots received over the control API, by outcome.",
                ),
                &["outcome"],
            )?,
            start_time_seconds: IntGauge::new(
                "switchboard_node_start_time_seconds",
                "Start time of the media-node process since the Unix epoch, in seconds.",
            )?,
        };
        registry.register(Box::new(metrics.config_generation.clone()))?;
        registry.register(Box::new(metrics.config_applies.clone()))?;
        registry.register(Box::new(metrics.start_time_seconds.clone()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        metrics.start_time_seconds.set(now);
        Ok(metrics)
    }
}

/// Why the HTTP endpoint stopped.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for metrics and probes on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the local address of the metrics listener: {0}")]
    LocalAddr(std::io::Error),
    #[error("the metrics and probe server failed: {0}")]
    Serve(std::io::Error),
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    readiness: Arc<Readiness>,
}

/// The routes, separate from the listener so tests can drive them directly.
pub fn router(registry: Registry, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            readiness,
        })
}

impl HttpError {
    /// Whether binding failed because the port is taken.
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, Self::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

/// A bound HTTP listener, so the caller learns the address (port 0) before serving.
pub struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpListener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(HttpError::LocalAddr)?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the future is dropped.
    pub async fn serve(self, registry: Registry, readiness: Arc<Readiness>) -> HttpError {
        match axum::serve(self.listener, router(registry, readiness)).await {
            Ok(()) => HttpError::Serve(std::io::Error::other("the server returned")),
            Err(e) => HttpError::Serve(e),
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.not_ready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 GET against a real listener: status code and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (code, body)
    }

    #[tokio::test]
    async fn readiness_follows_config_then_sip_and_metrics_are_prometheus_text() {
        let registry = Registry::new();
        let node = NodeMetrics::new(&registry).expect("metrics");
        node.config_generation.set(4);
        crate::recording::register_metrics(&registry).expect("recording metrics");
        let readiness = Arc::new(Readiness::default());
        let listener = HttpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr();
        let server = tokio::spawn(listener.serve(registry, Arc::clone(&readiness)));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("configuration is not loaded"), "{body}");
        readiness.config_loaded();
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("SIP listeners"), "{body}");
        readiness.sip_bound();
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        // A standby is ready only while it could take over.
        let in_sync = Arc::new(AtomicBool::new(false));
        let check = Arc::clone(&in_sync);
        readiness.standby_must_follow(move || {
            (!check.load(Ordering::Acquire)).then(|| "standing by, lagging".to_string())
        });
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: standing by, lagging\n".into())
        );
        in_sync.store(true, Ordering::Release);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("switchboard_config_generation 4"), "{body}");
        assert!(body.contains("# TYPE switchboard_recording_failures_total counter"));
        assert!(body.contains("switchboard_node_start_time_seconds"));
        assert_eq!(get(addr, "/nope").await.0, 404);
        server.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_as_in_use() {
        let first = HttpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let err = HttpListener::bind(first.local_addr())
            .await
            .err()
            .expect("the port is taken");
        assert!(err.is_address_in_use(), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot listen for metrics and probes on 127.0.0.1:")
        );
    }
}
