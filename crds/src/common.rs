//! Types and patterns shared by the three kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Kubernetes object name (RFC 1123 label), used for references between objects.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A telephone number in E.164 form, as trunks present them: `+` and up to 15 digits.
pub const E164_PATTERN: &str = r"^\+[1-9][0-9]{1,14}$";
/// A dialed number: E.164, or a short internal/service number of 2 to 15 digits.
pub const DIALED_NUMBER_PATTERN: &str = r"^(\+[1-9][0-9]{1,14}|[0-9]{2,15})$";
/// A seat extension: 2 to 8 digits, not starting with 0 (the usual outside-line prefix) so the
/// dial plan stays unambiguous; `*` starts feature codes.
pub const EXTENSION_PATTERN: &str = r"^[1-9][0-9]{1,7}$";
/// A skill name such as `billing` or `mandarin`.
pub const SKILL_PATTERN: &str = r"^[a-z][a-z0-9-]{0,31}$";
/// One DTMF key.
pub const DTMF_DIGIT_PATTERN: &str = r"^[0-9*#]$";
/// A wall-clock time `HH:MM`; `24:00` is allowed as the end of a day.
pub const CLOCK_TIME_PATTERN: &str = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$";
/// A calendar date `YYYY-MM-DD`.
pub const DATE_PATTERN: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";
/// A prompt: a relative path of an 8 kHz WAV file in the node's prompt store.
pub const PROMPT_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*\.wav$";
/// A host name or an IPv4/IPv6 address.
pub const HOST_PATTERN: &str = r"^[A-Za-z0-9:]([A-Za-z0-9.:-]*[A-Za-z0-9])?$";

/// A key of a Secret in the object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key within the Secret whose value is used.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}

/// A service-level target: `targetPercent` of answered calls are answered within
/// `thresholdSeconds` (for example 80 % in 20 s).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLevelTarget {
    /// Share of calls, in percent, that should be answered within the threshold.
    #[serde(default = "default_sl_percent")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub target_percent: f64,
    /// Answer-time threshold in seconds.
    #[serde(default = "default_sl_threshold")]
    #[schemars(range(min = 1, max = 3600))]
    pub threshold_seconds: u32,
}

fn default_sl_percent() -> f64 {
    80.0
}
fn default_sl_threshold() -> u32 {
    20
}

impl Default for ServiceLevelTarget {
    fn default() -> Self {
        Self {
            target_percent: default_sl_percent(),
            threshold_seconds: default_sl_threshold(),
        }
    }
}

/// Condition types and reasons used in status.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    pub const STANDBY_READY: &str = "StandbyReady";
    /// Set on a Queue or Seat whose references to other objects resolve.
    pub const RESOLVED: &str = "Resolved";
}

/// Sets `condition` in `conditions`, keeping `lastTransitionTime` when the status did not
/// change (the Kubernetes convention), and reports whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            let transition = existing.status != condition.status;
            let changed = transition
                || existing.reason != condition.reason
                || existing.message != condition.message
                || existing.observed_generation != condition.observed_generation;
            if changed {
                let last = if transition {
                    condition.last_transition_time.clone()
                } else {
                    existing.last_transition_time.clone()
                };
                *existing = Condition {
                    last_transition_time: last,
                    ..condition
                };
            }
            changed
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// Builds a condition; `status` is `"True"`, `"False"` or `"Unknown"`.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = vec![];
        assert!(set_condition(
            &mut conds,
            condition("Ready", "True", "Up", "ok", Some(1), at(10))
        ));
        assert!(!set_condition(
            &mut conds,
            condition("Ready", "True", "Up", "ok", Some(1), at(20))
        ));
        assert!(set_condition(
            &mut conds,
            condition("Ready", "True", "Up", "still", Some(2), at(30))
        ));
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].message, "still");
        assert!(set_condition(
            &mut conds,
            condition("Ready", "False", "Down", "x", Some(2), at(40))
        ));
        assert_eq!(conds[0].last_transition_time, at(40));
        assert_eq!(conds.len(), 1);
    }
}
