//! The identity of the media nodes: ServiceAccount, Role and RoleBinding `<cc>-media`.
//!
//! The nodes need the API server only for high availability: the active node holds the Lease
//! `<cc>-active` and labels its own pod `switchboard.dev/role: active`; the standby watches
//! for its peer. The Role grants no more than that, by name wherever RBAC can:
//! - leases `get`, `update`, `patch`, `watch` only on `<cc>-active`;
//! - leases `create` on any name, because RBAC cannot limit `create` by `resourceNames` (the
//!   name is not known when the request is authorised);
//! - pods `get` and `patch` only on the StatefulSet's own pods (`<sts>-0`, `<sts>-1`);
//! - pods `list` and `watch` in the namespace, to see the peer's state (`resourceNames` would
//!   restrict those only for single-object field-selector requests).
//!
//! Trunk credentials are mounted as Secret volumes, so the nodes need no Secret access at all.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::Center;

fn rule(group: &str, resource: &str, names: Option<Vec<String>>, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: names,
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// The ServiceAccount the media-node pods run as.
pub fn service_account(center: &Center<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: center.meta(&center.names.service_account),
        ..ServiceAccount::default()
    }
}

/// The pod names of the StatefulSet, one per replica.
pub fn pod_names(center: &Center<'_>) -> Vec<String> {
    (0..center.replicas())
        .map(|i| format!("{}-{i}", center.names.stateful_set))
        .collect()
}

/// The Role of the media nodes.
pub fn role(center: &Center<'_>) -> Role {
    Role {
        metadata: center.meta(&center.names.role),
        rules: Some(vec![
            rule(
                "coordination.k8s.io",
                "leases",
                Some(vec![center.names.lease.clone()]),
                &["get", "update", "patch", "watch"],
            ),
            rule("coordination.k8s.io", "leases", None, &["create"]),
            rule("", "pods", Some(pod_names(center)), &["get", "patch"]),
            rule("", "pods", None, &["list", "watch"]),
        ]),
    }
}

/// Binds the Role to the ServiceAccount.
pub fn role_binding(center: &Center<'_>) -> RoleBinding {
    RoleBinding {
        metadata: center.meta(&center.names.role_binding),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "Role".to_string(),
            name: center.names.role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: center.names.service_account.clone(),
            namespace: Some(center.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::*;
    use switchboard_crds::callcenter::HaMode;

    fn rules(r: &Role) -> Vec<(String, String, Vec<String>, Vec<String>)> {
        r.rules
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.api_groups.unwrap_or_default().join(","),
                    p.resources.unwrap_or_default().join(","),
                    p.resource_names.unwrap_or_default(),
                    p.verbs,
                )
            })
            .collect()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_role_grants_the_lease_and_own_pods_by_name() {
        let cc = center("campus", HaMode::HotStandby);
        let r = role(&Center::new(&cc).expect("center"));
        assert_eq!(
            rules(&r),
            vec![
                (
                    "coordination.k8s.io".into(),
                    "leases".into(),
                    strings(&["campus-active"]),
                    strings(&["get", "update", "patch", "watch"])
                ),
                (
                    "coordination.k8s.io".into(),
                    "leases".into(),
                    vec![],
                    strings(&["create"])
                ),
                (
                    "".into(),
                    "pods".into(),
                    strings(&["campus-media-0", "campus-media-1"]),
                    strings(&["get", "patch"])
                ),
                (
                    "".into(),
                    "pods".into(),
                    vec![],
                    strings(&["list", "watch"])
                ),
            ]
        );
    }

    #[test]
    fn a_single_node_may_patch_only_its_own_pod() {
        let cc = center("campus", HaMode::None);
        let c = Center::new(&cc).expect("center");
        assert_eq!(pod_names(&c), ["campus-media-0"]);
        assert_eq!(rules(&role(&c))[2].2, strings(&["campus-media-0"]));
    }

    #[test]
    fn the_binding_ties_the_role_to_the_service_account() {
        let cc = center("campus", HaMode::HotStandby);
        let c = Center::new(&cc).expect("center");
        let b = role_binding(&c);
        assert_eq!(b.role_ref.kind, "Role");
        assert_eq!(b.role_ref.name, "campus-media");
        assert_eq!(
            b.role_ref.api_group.as_deref(),
            Some("rbac.authorization.k8s.io")
        );
        let subjects = b.subjects.expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(
            subjects[0].name,
            service_account(&c).metadata.name.expect("name")
        );
        assert_eq!(subjects[0].namespace.as_deref(), Some("college"));
    }
}
