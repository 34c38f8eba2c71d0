//! The Switchboard operator: controllers for CallCenter, Queue and Seat, and the validating
//! admission webhook that enforces the API's cross-field rules on clusters whose API server
//! does not run the CEL rules of the CRDs.

pub mod builders;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod node_config;
pub mod server;
pub mod webhook;
