//! The operator's Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Every metric of the operator, registered in one registry that `/metrics` serves.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Admission reviews answered, by kind and verdict.
    pub admission_reviews: IntCounterVec,
    /// Reconciles, by kind and outcome (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles, by kind and error class.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration, by kind.
    pub reconcile_duration: HistogramVec,
    /// Config pushes to media nodes (`ApplyConfig`), by outcome.
    pub config_pushes: IntCounterVec,
    /// Time one push took, from connecting to the node's answer.
    pub config_push_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let admission_reviews = IntCounterVec::new(
            Opts::new(
                "switchboard_operator_admission_reviews_total",
                "Admission reviews answered by the validating webhook, by kind and verdict.",
            ),
            &["kind", "verdict"],
        )?;
        registry.register(Box::new(admission_reviews.clone()))?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "switchboard_operator_reconciles_total",
                "Reconciles, by kind and outcome.",
            ),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "switchboard_operator_reconcile_errors_total",
                "Failed reconciles, by kind and error class.",
            ),
            &["kind", "error"],
        )?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_operator_reconcile_duration_seconds",
                "Time one reconcile took, by kind.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["kind"],
        )?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        let config_pushes = IntCounterVec::new(
            Opts::new(
                "switchboard_operator_config_pushes_total",
                "Node configs pushed to media nodes over the control API, by outcome \
                 (applied, unchanged, stale, rejected, unreachable, no_address).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(config_pushes.clone()))?;
        let config_push_duration = Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_operator_config_push_duration_seconds",
                "Time one ApplyConfig push to a media node took, connection included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0,
            ]),
        )?;
        registry.register(Box::new(config_push_duration.clone()))?;
        Ok(Self {
            registry,
            admission_reviews,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            config_pushes,
            config_push_duration,
        })
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
