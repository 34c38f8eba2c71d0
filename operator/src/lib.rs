//! The Switchboard operator: controllers for CallCenter, Queue and Seat, and the validating
//! admission webhook that enforces the API's cross-field rules on clusters whose API server
//! does not run the CEL rules of the CRDs.

pub mod advice;
pub mod builders;
pub mod controller;
/// Leader election (shared with the media nodes).
pub use switchboard_lease as leader;
pub mod members;
pub mod metrics;
pub mod node_state;
pub mod nodes;
// The node config moved to the proto crate (both sides use it); re-exported so
// `switchboard_operator::node_config` paths keep working.
pub use switchboard_proto::node_config;
pub mod server;
pub mod traffic;
pub mod trunks;
pub mod webhook;
