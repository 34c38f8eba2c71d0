//! The PodDisruptionBudget `<cc>-media`.
//!
//! **API version.** `policy/v1` exists from Kubernetes 1.21; a 1.20 API server (the oldest we
//! support) serves only `policy/v1beta1`, which k8s-openapi with `latest` no longer has. The
//! builder therefore takes the server's minor version and returns either the typed `policy/v1`
//! object or the same object as a `policy/v1beta1` [`DynamicObject`] (identical fields for
//! what we set; the selector is never empty, where the two versions differ).
//!
//! **Budget: `maxUnavailable: 1` in both modes.**
//! - `HotStandby`: a voluntary disruption (node drain, cluster upgrade) may take one of the
//!   two nodes at a time, never both. Losing the active one is a planned failover: it drains
//!   and the standby takes the Lease and the calls.
//! - `None`: there is one node, so any eviction interrupts service. Blocking evictions
//!   (`minAvailable: 1`) would make every `kubectl drain` of that host hang until someone
//!   deletes the pod by hand, which is worse on a campus cluster than a planned restart; the
//!   pod's termination grace period (`drainTimeoutSeconds` plus a margin) lets established
//!   calls finish. Availability through host maintenance is what `HotStandby` is for.
//!
//! The same budget in both modes also means switching modes changes no PDB field.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicObject};

use super::Center;

/// First Kubernetes minor version that serves `policy/v1` PodDisruptionBudgets.
pub const POLICY_V1_MINOR: u32 = 21;

/// A PodDisruptionBudget in the API version the server serves.
#[derive(Clone, Debug, PartialEq)]
pub enum PodDisruptionBudgetObject {
    /// `policy/v1` (Kubernetes 1.21 and later).
    V1(PodDisruptionBudget),
    /// `policy/v1beta1` (Kubernetes 1.20).
    V1beta1(DynamicObject),
}

impl PodDisruptionBudgetObject {
    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::V1(p) => &p.metadata,
            Self::V1beta1(d) => &d.metadata,
        }
    }
}

/// The `policy/v1beta1` API resource, for applying [`PodDisruptionBudgetObject::V1beta1`].
pub fn policy_v1beta1_resource() -> ApiResource {
    ApiResource {
        group: "policy".to_string(),
        version: "v1beta1".to_string(),
        api_version: "policy/v1beta1".to_string(),
        kind: "PodDisruptionBudget".to_string(),
        plural: "poddisruptionbudgets".to_string(),
    }
}

/// The minor version of a server's `/version` answer; providers append to it (`"20+"`).
pub fn parse_minor_version(minor: &str) -> Option<u32> {
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The budget for `center` on a server of Kubernetes 1.`server_minor_version`.
pub fn pod_disruption_budget(
    center: &Center<'_>,
    server_minor_version: u32,
) -> PodDisruptionBudgetObject {
    let spec = PodDisruptionBudgetSpec {
        max_unavailable: Some(IntOrString::Int(1)),
        selector: Some(LabelSelector {
            match_labels: Some(center.selector()),
            ..LabelSelector::default()
        }),
        ..PodDisruptionBudgetSpec::default()
    };
    let metadata = center.meta(&center.names.pod_disruption_budget);
    if server_minor_version >= POLICY_V1_MINOR {
        return PodDisruptionBudgetObject::V1(PodDisruptionBudget {
            metadata,
            spec: Some(spec),
            ..PodDisruptionBudget::default()
        });
    }
    let mut object = DynamicObject::new(
        &center.names.pod_disruption_budget,
        &policy_v1beta1_resource(),
    )
    .within(&center.namespace)
    .data(serde_json::json!({ "spec": spec }));
    object.metadata = metadata;
    PodDisruptionBudgetObject::V1beta1(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::*;
    use switchboard_crds::callcenter::HaMode;

    #[test]
    fn servers_from_1_21_get_a_policy_v1_budget_of_one_unavailable_pod() {
        for mode in [HaMode::None, HaMode::HotStandby] {
            let cc = center("campus", mode);
            let c = Center::new(&cc).expect("center");
            let PodDisruptionBudgetObject::V1(pdb) = pod_disruption_budget(&c, 21) else {
                panic!("expected policy/v1");
            };
            let spec = pdb.spec.expect("spec");
            assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
            assert_eq!(spec.min_available, None);
            assert_eq!(
                spec.selector.and_then(|s| s.match_labels),
                Some(c.selector())
            );
        }
    }

    #[test]
    fn a_1_20_server_gets_the_same_budget_as_policy_v1beta1() {
        let cc = center("campus", HaMode::HotStandby);
        let c = Center::new(&cc).expect("center");
        let PodDisruptionBudgetObject::V1beta1(obj) = pod_disruption_budget(&c, 20) else {
            panic!("expected policy/v1beta1");
        };
        let json = serde_json::to_value(&obj).expect("serialises");
        assert_eq!(json["apiVersion"], "policy/v1beta1");
        assert_eq!(json["kind"], "PodDisruptionBudget");
        assert_eq!(json["metadata"]["name"], "campus-media");
        assert_eq!(json["metadata"]["namespace"], "college");
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "CallCenter");
        assert_eq!(json["spec"]["maxUnavailable"], 1);
        assert_eq!(
            json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "campus"
        );
    }

    #[test]
    fn provider_minor_versions_are_parsed() {
        assert_eq!(parse_minor_version("20"), Some(20));
        assert_eq!(parse_minor_version("20+"), Some(20));
        assert_eq!(parse_minor_version("33+gke"), Some(33));
        assert_eq!(parse_minor_version(""), None);
        assert_eq!(parse_minor_version("x"), None);
    }
}
