//! Traffic engineering: Erlang B and C, trunk channel sizing and queue staffing advice.
//!
//! Pure functions only (no I/O, the clock is an argument), so the controllers stay thin and
//! every rule is tested without a cluster.

pub mod erlang;
pub mod scaling;
pub mod staffing;

pub use erlang::TrafficError;
pub use scaling::{
    ChangeReason, KeepReason, ScaleDecision, ScaleRefused, ScalingHistory, ScalingOutcome,
    ScalingPolicy, TrafficReport, TrunkScaling, check_scale_request,
};
pub use staffing::StaffingAdvice;
