//! The operator's Prometheus metrics.

use prometheus::{IntCounterVec, Opts, Registry};

/// Every metric of the operator, registered in one registry that `/metrics` serves.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Admission reviews answered, by kind and verdict.
    pub admission_reviews: IntCounterVec,
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
        Ok(Self {
            registry,
            admission_reviews,
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
