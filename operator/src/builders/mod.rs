//! Pure builders: the child objects of one CallCenter, computed from the CallCenter and its
//! [`NodeConfig`] without touching a cluster.
//!
//! Every child carries the same labels ([`labels`]) and a controller owner reference to the
//! CallCenter with `blockOwnerDeletion`, so server-side apply with one field manager can apply
//! them and deleting the CallCenter garbage-collects all of them. (The recording volumes the
//! StatefulSet's claim template creates are the exception Kubernetes makes for StatefulSets:
//! they outlive the CallCenter, so recordings are never lost to a mistaken delete.)
//!
//! Names are `<callcenter>-<suffix>` and always valid: a CallCenter name that is too long, or
//! is not a valid Service name (a dot, a leading digit), is shortened and made unique with a
//! hash of the full name ([`names::child_name`]).

pub mod config_map;
pub mod names;
pub mod pdb;
pub mod rbac;
pub mod services;
pub mod stateful_set;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use switchboard_crds::callcenter::HaMode;
use switchboard_crds::{CallCenter, CallCenterSpec};

pub use pdb::PodDisruptionBudgetObject;
use switchboard_proto::node_config::{NodeConfig, NodeConfigError};

/// `app.kubernetes.io/name` of every media-node object.
pub const APP_NAME: &str = "switchboard-media-node";
/// `app.kubernetes.io/component` of every media-node object.
pub const COMPONENT: &str = "media-node";
/// `app.kubernetes.io/managed-by` of everything the operator creates.
pub const MANAGED_BY: &str = "switchboard-operator";
/// Label naming the CallCenter an object belongs to.
pub const CALL_CENTER_LABEL: &str = "switchboard.dev/callcenter";
pub use switchboard_proto::{ROLE_ACTIVE, ROLE_LABEL};
/// ConfigMap annotation with the node config's content hash.
pub const CONFIG_HASH_ANNOTATION: &str = "switchboard.dev/node-config-hash";
/// Pod-template annotation with the hash of the settings a node reads only at start
/// (`NodeConfig::startup_hash`): changing them restarts the nodes, nothing else does.
pub const STARTUP_HASH_ANNOTATION: &str = "switchboard.dev/node-startup-hash";
/// ConfigMap annotation with the config generation it holds.
pub const CONFIG_GENERATION_ANNOTATION: &str = "switchboard.dev/node-config-generation";
/// Port of `/metrics`, `/healthz` and `/readyz` on every media node.
pub const METRICS_PORT: i32 = 9090;
/// Directory where the node config is mounted.
pub const CONFIG_DIR: &str = "/etc/switchboard";
/// File name of the node config, in the ConfigMap and in [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "node-config.yaml";
/// Where the recording volume is mounted.
pub const RECORDINGS_DIR: &str = "/var/lib/switchboard/recordings";

/// Settings of the operator itself that shape the children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// Media-node image used when a CallCenter does not set `spec.nodes.image`.
    pub default_image: String,
    /// Minor version of the API server (Kubernetes 1.x), which decides the PDB's API version.
    pub server_minor_version: u32,
}

/// Why the children of a CallCenter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the CallCenter has no metadata.{0}; it must come from the API server")]
    MissingMetadata(&'static str),
    #[error(transparent)]
    NodeConfig(#[from] NodeConfigError),
    #[error(
        "the node config of CallCenter {name} is {size} bytes, above the ConfigMap limit of {limit} bytes"
    )]
    ConfigMapTooLarge {
        name: String,
        size: usize,
        limit: usize,
    },
}

/// The names of a CallCenter's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    pub stateful_set: String,
    pub headless_service: String,
    pub sip_service: String,
    pub metrics_service: String,
    pub config_map: String,
    pub pod_disruption_budget: String,
    pub service_account: String,
    pub role: String,
    pub role_binding: String,
    /// The Lease the active node holds.
    pub lease: String,
}

impl ChildNames {
    /// Names for the CallCenter `center`.
    pub fn new(center: &str) -> Self {
        use names::{MAX_NAME, MAX_STATEFUL_SET_NAME, child_name};
        let media = child_name(center, "media", MAX_NAME);
        Self {
            stateful_set: child_name(center, "media", MAX_STATEFUL_SET_NAME),
            headless_service: child_name(center, "media-headless", MAX_NAME),
            sip_service: child_name(center, "sip", MAX_NAME),
            metrics_service: child_name(center, "media-metrics", MAX_NAME),
            config_map: child_name(center, "node-config", MAX_NAME),
            pod_disruption_budget: media.clone(),
            service_account: media.clone(),
            role: media.clone(),
            role_binding: media,
            lease: child_name(center, "active", MAX_NAME),
        }
    }
}

/// What every builder needs to know about the CallCenter.
#[derive(Clone, Debug)]
pub struct Center<'a> {
    pub name: String,
    pub namespace: String,
    pub spec: &'a CallCenterSpec,
    pub names: ChildNames,
    owner: OwnerReference,
}

impl<'a> Center<'a> {
    /// Reads name, namespace and uid; all three are set on any object the API server served.
    pub fn new(cc: &'a CallCenter) -> Result<Self, BuildError> {
        let meta = &cc.metadata;
        let name = meta
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?;
        let namespace = meta
            .namespace
            .clone()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let uid = meta.uid.clone().ok_or(BuildError::MissingMetadata("uid"))?;
        let owner = OwnerReference {
            api_version: CallCenter::api_version(&()).into_owned(),
            kind: CallCenter::kind(&()).into_owned(),
            name: name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        Ok(Self {
            names: ChildNames::new(&name),
            name,
            namespace,
            spec: &cc.spec,
            owner,
        })
    }

    /// Media nodes to run: one, or an active and a standby.
    pub fn replicas(&self) -> i32 {
        match self.spec.high_availability.mode {
            HaMode::None => 1,
            HaMode::HotStandby => 2,
        }
    }

    /// The labels every child carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        labels(&self.name)
    }

    /// The labels that select this center's media-node pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        selector_labels(&self.name)
    }

    /// Metadata of a child: name, namespace, labels and the owner reference.
    pub fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The five labels of every child of CallCenter `center`.
pub fn labels(center: &str) -> BTreeMap<String, String> {
    let value = names::label_value(center);
    let mut l = selector_labels(center);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert(CALL_CENTER_LABEL.into(), value);
    l
}

/// The labels that select the media-node pods of CallCenter `center`. Kept to the three
/// `app.kubernetes.io` labels because a StatefulSet's selector can never change.
pub fn selector_labels(center: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            names::label_value(center),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT.to_string(),
        ),
    ])
}

/// Every child of one CallCenter.
#[derive(Clone, Debug)]
pub struct Children {
    pub config_map: ConfigMap,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub headless_service: Service,
    pub sip_service: Service,
    pub metrics_service: Service,
    pub stateful_set: StatefulSet,
    pub pod_disruption_budget: PodDisruptionBudgetObject,
}

/// Builds every child of `cc` serving `config`.
pub fn build_children(
    cc: &CallCenter,
    config: &NodeConfig,
    options: &BuildOptions,
) -> Result<Children, BuildError> {
    let center = Center::new(cc)?;
    let rendered = config.render()?;
    Ok(Children {
        config_map: config_map::config_map(&center, config, &rendered)?,
        service_account: rbac::service_account(&center),
        role: rbac::role(&center),
        role_binding: rbac::role_binding(&center),
        headless_service: services::headless_service(&center),
        sip_service: services::sip_service(&center),
        metrics_service: services::metrics_service(&center),
        stateful_set: stateful_set::stateful_set(&center, config, &config.startup_hash()?, options),
        pod_disruption_budget: pdb::pod_disruption_budget(&center, options.server_minor_version),
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    use switchboard_crds::CallCenter;
    use switchboard_crds::callcenter::HaMode;

    use super::BuildOptions;
    use switchboard_proto::node_config::{NodeConfig, build_node_config};

    pub fn center(name: &str, mode: HaMode) -> CallCenter {
        let mut cc: CallCenter = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "CallCenter",
            "metadata": {
                "name": name,
                "namespace": "college",
                "uid": "c0ffee00-0000-4000-8000-000000000001"
            },
            "spec": {
                "sip": {"domain": "callcenter.campus.example.edu", "udpPort": 5060, "tcpPort": 5070},
                "trunks": [{
                    "name": "campus-pstn",
                    "peer": {"host": "192.0.2.10"},
                    "credentials": {"secretName": "campus-trunk", "passwordKey": "secret"}
                }],
                "recording": {"storageSize": "50Gi", "storageClassName": "local-path"},
                "highAvailability": {"drainTimeoutSeconds": 900}
            }
        }))
        .expect("valid CallCenter");
        cc.spec.high_availability.mode = mode;
        cc
    }

    pub fn config(cc: &CallCenter) -> NodeConfig {
        let secrets = BTreeMap::from([(
            "campus-trunk".to_string(),
            BTreeMap::from([
                ("username".to_string(), "campus-cc".to_string()),
                ("secret".to_string(), "hxKKUgrRSND5PN8Z".to_string()),
            ]),
        )]);
        let (config, problems) =
            build_node_config(cc, &[], &[], &secrets, 3).expect("config builds");
        assert!(problems.is_empty(), "{problems:?}");
        config
    }

    pub fn options() -> BuildOptions {
        BuildOptions {
            default_image: "ghcr.io/switchboard-dev/media-node:0.1.0".to_string(),
            server_minor_version: 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use kube::ResourceExt;

    fn all_metadata(c: &Children) -> Vec<ObjectMeta> {
        vec![
            c.config_map.metadata.clone(),
            c.service_account.metadata.clone(),
            c.role.metadata.clone(),
            c.role_binding.metadata.clone(),
            c.headless_service.metadata.clone(),
            c.sip_service.metadata.clone(),
            c.metrics_service.metadata.clone(),
            c.stateful_set.metadata.clone(),
            c.pod_disruption_budget.metadata().clone(),
        ]
    }

    #[test]
    fn every_child_is_labelled_and_owned_by_the_call_center() {
        let cc = center("campus", HaMode::HotStandby);
        let children = build_children(&cc, &config(&cc), &options()).expect("builds");
        let expected_labels = BTreeMap::from([
            (
                "app.kubernetes.io/name".to_string(),
                "switchboard-media-node".to_string(),
            ),
            (
                "app.kubernetes.io/instance".to_string(),
                "campus".to_string(),
            ),
            (
                "app.kubernetes.io/component".to_string(),
                "media-node".to_string(),
            ),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "switchboard-operator".to_string(),
            ),
            (
                "switchboard.dev/callcenter".to_string(),
                "campus".to_string(),
            ),
        ]);
        for meta in all_metadata(&children) {
            let name = meta.name.clone().unwrap_or_default();
            assert_eq!(meta.namespace.as_deref(), Some("college"), "{name}");
            assert_eq!(meta.labels.as_ref(), Some(&expected_labels), "{name}");
            let owners = meta.owner_references.clone().unwrap_or_default();
            assert_eq!(
                owners,
                vec![OwnerReference {
                    api_version: "switchboard.dev/v1alpha1".into(),
                    kind: "CallCenter".into(),
                    name: "campus".into(),
                    uid: "c0ffee00-0000-4000-8000-000000000001".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }],
                "{name}"
            );
        }
    }

    #[test]
    fn children_have_the_documented_names() {
        let cc = center("campus", HaMode::None);
        let c = build_children(&cc, &config(&cc), &options()).expect("builds");
        assert_eq!(c.stateful_set.name_any(), "campus-media");
        assert_eq!(c.headless_service.name_any(), "campus-media-headless");
        assert_eq!(c.sip_service.name_any(), "campus-sip");
        assert_eq!(c.metrics_service.name_any(), "campus-media-metrics");
        assert_eq!(c.config_map.name_any(), "campus-node-config");
        assert_eq!(c.service_account.name_any(), "campus-media");
        assert_eq!(c.role.name_any(), "campus-media");
        assert_eq!(c.role_binding.name_any(), "campus-media");
        assert_eq!(
            c.pod_disruption_budget.metadata().name.as_deref(),
            Some("campus-media")
        );
        assert_eq!(ChildNames::new("campus").lease, "campus-active");
    }

    #[test]
    fn a_long_call_center_name_gives_valid_short_names_and_labels() {
        let long = format!(
            "{}-training-center",
            "college-of-continuing-education".repeat(3)
        );
        let cc = center(&long, HaMode::HotStandby);
        let c = build_children(&cc, &config(&cc), &options()).expect("builds");
        for meta in all_metadata(&c) {
            let name = meta.name.clone().unwrap_or_default();
            assert!(name.len() <= 63, "{name}");
            for value in meta.labels.clone().unwrap_or_default().values() {
                assert!(value.len() <= 63, "{value}");
            }
        }
        assert!(c.stateful_set.name_any().len() <= 52);
        // The owner reference keeps the full name.
        let owner = &c
            .stateful_set
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default()[0];
        assert_eq!(owner.name, long);
    }

    #[test]
    fn a_call_center_without_uid_cannot_own_children() {
        let mut cc = center("campus", HaMode::None);
        let config = config(&cc);
        cc.metadata.uid = None;
        let err = build_children(&cc, &config, &options()).expect_err("no uid");
        assert_eq!(
            err.to_string(),
            "the CallCenter has no metadata.uid; it must come from the API server"
        );
    }
}
