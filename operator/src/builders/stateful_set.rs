//! The StatefulSet `<cc>-media`: one media node, or an active and a hot standby.
//!
//! Choices and why:
//! - A StatefulSet, for stable pod names (the Lease holder and the status name them) and a
//!   recording volume per node that survives restarts.
//! - `podManagementPolicy: Parallel`: the standby must not wait for the active node to be
//!   Ready (nor the other way round after a failover); the nodes sort out their roles through
//!   the Lease.
//! - `updateStrategy: RollingUpdate`: one node at a time, highest ordinal first, so with
//!   `HotStandby` one node always serves while the other drains and restarts.
//! - `terminationGracePeriodSeconds` = `drainTimeoutSeconds` + [`TERMINATION_MARGIN_SECONDS`]:
//!   a terminating node stops taking new INVITEs, lets established calls finish for the drain
//!   timeout, then needs a moment to flush recordings and CDRs before the kubelet kills it.
//! - The pod template carries the hash of the settings a node reads only at start
//!   ([`STARTUP_HASH_ANNOTATION`]: SIP listeners and realm, RTP range, codecs, recording, high
//!   availability, trunk Secret mounts), so changing one of them rolls the nodes (one at a
//!   time, calls drained). Every other change (seats, queues, trunk limits, entry points,
//!   menus) reaches running nodes over the control API without a restart.
//! - Preferred anti-affinity by host name between the two nodes of a center: a host failure
//!   should not take both, but a small cluster may still run them on one host. (With
//!   `hostNetwork`, the declared host ports already keep them apart.)
//! - Non-root, no privilege escalation, read-only root file system, every capability dropped.
//!   A SIP port below 1024 is opened with the namespaced sysctl
//!   `net.ipv4.ip_unprivileged_port_start` (a "safe" sysctl from Kubernetes 1.22; older
//!   kubelets must allow it with `--allowed-unsafe-sysctls`), not with a capability: a non-root
//!   process never holds an added capability, and no-new-privileges ignores file capabilities.
//!   With hostNetwork the pod cannot set it, so validation requires ports of 1024 or above.
//! - The recording volume claim template is sized and classed from `spec.recording`. A
//!   StatefulSet's claim templates cannot change after creation: a new size applies to new
//!   volumes only.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Sysctl, Volume,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::services::{METRICS_PORT_NAME, SIP_TCP_PORT_NAME, SIP_UDP_PORT_NAME};
use super::{
    BuildOptions, CONFIG_DIR, CONFIG_FILE, Center, METRICS_PORT, RECORDINGS_DIR,
    STARTUP_HASH_ANNOTATION,
};
use switchboard_proto::node_config::{NodeConfig, TRUNK_PASSWORD_FILE, TRUNK_USERNAME_FILE};

/// Name of the media-node container.
pub const CONTAINER_NAME: &str = "media-node";
/// Name of the container port of the node's gRPC control API, which the operator pushes
/// config to.
pub use switchboard_lease::CONTROL_PORT_NAME;
/// Name of the recording volume and its claim template.
pub const RECORDINGS_VOLUME: &str = "recordings";
/// Seconds a node gets beyond the drain timeout to flush recordings and exit.
pub const TERMINATION_MARGIN_SECONDS: i64 = 30;
/// User and group the node runs as (the distroless `nonroot` user).
pub const RUN_AS_USER: i64 = 65532;

const CONFIG_VOLUME: &str = "node-config";
const TMP_VOLUME: &str = "tmp";

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(METRICS_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Secret volumes holding each trunk's credentials, mounted where [`NodeConfig`] says. They are
/// optional, so a Secret deleted later cannot keep a node from starting; the node reports the
/// missing files when the trunk challenges it.
fn trunk_volumes(config: &NodeConfig) -> Vec<(Volume, VolumeMount)> {
    config
        .trunk_secrets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // Trunk names may be 63 characters long; an index keeps the volume name short.
            let name = format!("trunk-{i}");
            let volume = Volume {
                name: name.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(t.secret_name.clone()),
                    items: Some(vec![
                        KeyToPath {
                            key: t.username_key.clone(),
                            path: TRUNK_USERNAME_FILE.to_string(),
                            ..KeyToPath::default()
                        },
                        KeyToPath {
                            key: t.password_key.clone(),
                            path: TRUNK_PASSWORD_FILE.to_string(),
                            ..KeyToPath::default()
                        },
                    ]),
                    default_mode: Some(0o440),
                    optional: Some(true),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            };
            let mount = VolumeMount {
                name,
                mount_path: t.mount_path.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            };
            (volume, mount)
        })
        .collect()
}

fn container(
    center: &Center<'_>,
    options: &BuildOptions,
    trunk_mounts: Vec<VolumeMount>,
) -> Container {
    let nodes = &center.spec.nodes;
    let sip = &center.spec.sip;
    let host_network = nodes.host_network;
    let port = |name: &str, protocol: &str, number: i32| ContainerPort {
        name: Some(name.to_string()),
        protocol: Some(protocol.to_string()),
        container_port: number,
        // With hostNetwork the API server sets hostPort = containerPort anyway; saying so keeps
        // server-side apply free of defaulted fields and lets the scheduler see the ports.
        host_port: host_network.then_some(number),
        ..ContainerPort::default()
    };
    let capabilities = Capabilities {
        drop: Some(vec!["ALL".to_string()]),
        ..Capabilities::default()
    };
    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.to_string(),
            mount_path: CONFIG_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: RECORDINGS_VOLUME.to_string(),
            mount_path: RECORDINGS_DIR.to_string(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: TMP_VOLUME.to_string(),
            mount_path: "/tmp".to_string(),
            ..VolumeMount::default()
        },
    ];
    mounts.extend(trunk_mounts);
    Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(
            nodes
                .image
                .clone()
                .unwrap_or_else(|| options.default_image.clone()),
        ),
        image_pull_policy: Some(nodes.image_pull_policy.as_str().to_string()),
        args: Some(vec![
            "--config".to_string(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // The address written into SDP unless spec.sip.advertisedAddress is set; with
            // hostNetwork it is the host's address.
            field_env("POD_IP", "status.podIP"),
            field_env("NODE_IP", "status.hostIP"),
            value_env("SWITCHBOARD_CALL_CENTER", &center.name),
            value_env("SWITCHBOARD_LEASE_NAME", &center.names.lease),
            value_env("SWITCHBOARD_RECORDINGS_DIR", RECORDINGS_DIR),
        ]),
        ports: Some(vec![
            port(SIP_UDP_PORT_NAME, "UDP", i32::from(sip.udp_port)),
            port(SIP_TCP_PORT_NAME, "TCP", i32::from(sip.tcp_port)),
            port(METRICS_PORT_NAME, "TCP", METRICS_PORT),
            port(
                CONTROL_PORT_NAME,
                "TCP",
                i32::from(switchboard_proto::CONTROL_PORT),
            ),
        ]),
        readiness_probe: Some(http_probe("/readyz", 5, 0)),
        liveness_probe: Some(http_probe("/healthz", 10, 10)),
        resources: nodes.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(capabilities),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// Lets the non-root node bind a SIP port below 1024 inside its own network namespace.
fn privileged_port_sysctl(sip: &switchboard_crds::callcenter::SipSpec) -> Option<Vec<Sysctl>> {
    let lowest = sip.udp_port.min(sip.tcp_port);
    (lowest < 1024).then(|| {
        vec![Sysctl {
            name: "net.ipv4.ip_unprivileged_port_start".to_string(),
            value: lowest.to_string(),
        }]
    })
}

fn anti_affinity(center: &Center<'_>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(center.selector()),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn recordings_claim(center: &Center<'_>) -> PersistentVolumeClaim {
    let recording = &center.spec.recording;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(RECORDINGS_VOLUME.to_string()),
            labels: Some(center.labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: recording.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    recording.storage_size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The StatefulSet running `config`, whose startup settings hash to `startup_hash`.
pub fn stateful_set(
    center: &Center<'_>,
    config: &NodeConfig,
    startup_hash: &str,
    options: &BuildOptions,
) -> StatefulSet {
    let nodes = &center.spec.nodes;
    let (trunk_volumes, trunk_mounts): (Vec<_>, Vec<_>) = trunk_volumes(config).into_iter().unzip();
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: center.names.config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: CONFIG_FILE.to_string(),
                    path: CONFIG_FILE.to_string(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    volumes.extend(trunk_volumes);

    // User annotations first, so the operator's own keys win.
    let mut annotations = nodes.pod_annotations.clone();
    annotations.insert(
        STARTUP_HASH_ANNOTATION.to_string(),
        startup_hash.to_string(),
    );

    let replicas = center.replicas();
    let grace =
        i64::from(center.spec.high_availability.drain_timeout_seconds) + TERMINATION_MARGIN_SECONDS;
    let pod = PodSpec {
        service_account_name: Some(center.names.service_account.clone()),
        automount_service_account_token: Some(true),
        host_network: nodes.host_network.then_some(true),
        // Without this a hostNetwork pod resolves with the host's DNS and cannot find the
        // API server or its peer by Service name.
        dns_policy: nodes
            .host_network
            .then(|| "ClusterFirstWithHostNet".to_string()),
        node_selector: (!nodes.node_selector.is_empty()).then(|| nodes.node_selector.clone()),
        tolerations: (!nodes.tolerations.is_empty()).then(|| nodes.tolerations.clone()),
        affinity: (replicas > 1).then(|| anti_affinity(center)),
        termination_grace_period_seconds: Some(grace),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            // Makes the recording volume writable by the node's group.
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..SeccompProfile::default()
            }),
            sysctls: privileged_port_sysctl(&center.spec.sip),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(center, options, trunk_mounts)],
        volumes: Some(volumes),
        ..PodSpec::default()
    };

    StatefulSet {
        metadata: center.meta(&center.names.stateful_set),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(center.names.headless_service.clone()),
            selector: LabelSelector {
                match_labels: Some(center.selector()),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(center.labels()),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![recordings_claim(center)]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::*;
    use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use switchboard_crds::CallCenter;
    use switchboard_crds::callcenter::{HaMode, ImagePullPolicy};

    fn build(cc: &CallCenter) -> StatefulSet {
        let config = config(cc);
        let hash = config.startup_hash().expect("hash");
        stateful_set(
            &Center::new(cc).expect("center"),
            &config,
            &hash,
            &options(),
        )
    }

    fn spec(s: &StatefulSet) -> StatefulSetSpec {
        s.spec.clone()
    }

    fn pod(s: &StatefulSet) -> PodSpec {
        spec(s).template.spec.expect("pod spec")
    }

    fn media_container(s: &StatefulSet) -> Container {
        let containers = pod(s).containers;
        assert_eq!(containers.len(), 1);
        containers[0].clone()
    }

    fn template_annotations(s: &StatefulSet) -> BTreeMap<String, String> {
        spec(s)
            .template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default()
    }

    #[test]
    fn replicas_follow_the_ha_mode() {
        assert_eq!(
            spec(&build(&center("campus", HaMode::None))).replicas,
            Some(1)
        );
        assert_eq!(
            spec(&build(&center("campus", HaMode::HotStandby))).replicas,
            Some(2)
        );
    }

    #[test]
    fn the_stateful_set_is_governed_by_the_headless_service_and_selects_its_pods() {
        let cc = center("campus", HaMode::HotStandby);
        let s = spec(&build(&cc));
        let c = Center::new(&cc).expect("center");
        assert_eq!(s.service_name.as_deref(), Some("campus-media-headless"));
        assert_eq!(s.selector.match_labels, Some(c.selector()));
        let template_labels = s.template.metadata.and_then(|m| m.labels).expect("labels");
        for (k, v) in c.selector() {
            assert_eq!(template_labels.get(&k), Some(&v), "{k}");
        }
        assert_eq!(template_labels, c.labels());
        assert_eq!(s.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            s.update_strategy.and_then(|u| u.type_).as_deref(),
            Some("RollingUpdate")
        );
    }

    #[test]
    fn the_container_runs_the_node_config_with_its_identity_from_the_downward_api() {
        let c = media_container(&build(&center("campus", HaMode::None)));
        assert_eq!(c.name, "media-node");
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/switchboard-dev/media-node:0.1.0")
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.args,
            Some(vec![
                "--config".to_string(),
                "/etc/switchboard/node-config.yaml".to_string()
            ])
        );
        let env: BTreeMap<String, EnvVar> = c
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let field = |name: &str| {
            env[name]
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
        assert_eq!(
            field("POD_NAMESPACE").as_deref(),
            Some("metadata.namespace")
        );
        assert_eq!(field("POD_IP").as_deref(), Some("status.podIP"));
        assert_eq!(
            env["SWITCHBOARD_LEASE_NAME"].value.as_deref(),
            Some("campus-active")
        );
        assert_eq!(
            env["SWITCHBOARD_CALL_CENTER"].value.as_deref(),
            Some("campus")
        );
    }

    #[test]
    fn the_image_and_pull_policy_can_be_overridden() {
        let mut cc = center("campus", HaMode::None);
        cc.spec.nodes.image = Some("registry.campus.example.edu/media-node:dev".into());
        cc.spec.nodes.image_pull_policy = ImagePullPolicy::Never;
        let c = media_container(&build(&cc));
        assert_eq!(
            c.image.as_deref(),
            Some("registry.campus.example.edu/media-node:dev")
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn ports_are_sip_udp_tcp_metrics_and_control_and_probes_use_the_metrics_port() {
        let c = media_container(&build(&center("campus", HaMode::None)));
        let ports: Vec<_> = c
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.name.unwrap_or_default(),
                    p.protocol.unwrap_or_default(),
                    p.container_port,
                    p.host_port,
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                ("sip-udp".into(), "UDP".into(), 5060, None),
                ("sip-tcp".into(), "TCP".into(), 5070, None),
                ("metrics".into(), "TCP".into(), 9090, None),
                ("control".into(), "TCP".into(), 9091, None),
            ]
        );
        let get = |p: Option<Probe>| {
            let h = p.and_then(|p| p.http_get).expect("http probe");
            (h.path.unwrap_or_default(), h.port)
        };
        assert_eq!(
            get(c.readiness_probe),
            ("/readyz".into(), IntOrString::String("metrics".into()))
        );
        assert_eq!(
            get(c.liveness_probe),
            ("/healthz".into(), IntOrString::String("metrics".into()))
        );
    }

    #[test]
    fn pod_networking_is_the_default() {
        let p = pod(&build(&center("campus", HaMode::None)));
        assert_eq!(p.host_network, None);
        assert_eq!(p.dns_policy, None);
    }

    #[test]
    fn host_network_opens_the_ports_on_the_host_and_keeps_cluster_dns() {
        let mut cc = center("campus", HaMode::HotStandby);
        cc.spec.nodes.host_network = true;
        let s = build(&cc);
        let p = pod(&s);
        assert_eq!(p.host_network, Some(true));
        assert_eq!(p.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        let host_ports: Vec<_> = media_container(&s)
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.host_port)
            .collect();
        assert_eq!(host_ports, [Some(5060), Some(5070), Some(9090), Some(9091)]);
    }

    #[test]
    fn volumes_hold_config_recordings_tmp_and_trunk_secrets() {
        let cc = center("campus", HaMode::None);
        let s = build(&cc);
        let p = pod(&s);
        let volumes = p.volumes.clone().unwrap_or_default();
        let names: Vec<_> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["node-config", "tmp", "trunk-0"]);
        let cm = volumes[0].config_map.clone().expect("config map volume");
        assert_eq!(cm.name, "campus-node-config");
        let secret = volumes[2].secret.clone().expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("campus-trunk"));
        assert_eq!(secret.optional, Some(true));
        let items: Vec<_> = secret
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.key, i.path))
            .collect();
        assert_eq!(
            items,
            vec![
                ("username".to_string(), "username".to_string()),
                ("secret".to_string(), "password".to_string())
            ]
        );
        let mounts: Vec<_> = media_container(&s)
            .volume_mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.name, m.mount_path, m.read_only))
            .collect();
        assert_eq!(
            mounts,
            vec![
                ("node-config".into(), "/etc/switchboard".into(), Some(true)),
                (
                    "recordings".into(),
                    "/var/lib/switchboard/recordings".into(),
                    None
                ),
                ("tmp".into(), "/tmp".into(), None),
                (
                    "trunk-0".into(),
                    "/etc/switchboard/trunks/campus-pstn".into(),
                    Some(true)
                ),
            ]
        );
    }

    #[test]
    fn the_recording_claim_is_sized_and_classed_from_the_spec() {
        let s = spec(&build(&center("campus", HaMode::None)));
        let claims = s.volume_claim_templates.expect("claim templates");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("recordings"));
        let claim = claims[0].spec.clone().expect("claim spec");
        assert_eq!(claim.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(claim.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
        assert_eq!(
            claim.resources.and_then(|r| r.requests).expect("requests")["storage"],
            Quantity("50Gi".into())
        );
    }

    #[test]
    fn the_pod_runs_as_non_root_with_the_media_service_account() {
        let s = build(&center("campus", HaMode::None));
        let p = pod(&s);
        assert_eq!(p.service_account_name.as_deref(), Some("campus-media"));
        let psc = p.security_context.clone().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(RUN_AS_USER));
        assert_eq!(psc.fs_group, Some(RUN_AS_USER));
        let sc = media_container(&s)
            .security_context
            .expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, None);
    }

    #[test]
    fn a_privileged_sip_port_is_opened_by_sysctl_not_by_a_capability() {
        let mut cc = center("campus", HaMode::None);
        cc.spec.sip.udp_port = 506;
        let built = build(&cc);
        let sc = media_container(&built)
            .security_context
            .expect("security context");
        assert_eq!(sc.capabilities.and_then(|c| c.add), None);
        let sysctls = pod(&built)
            .security_context
            .and_then(|p| p.sysctls)
            .expect("sysctls");
        assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
        assert_eq!(sysctls[0].value, "506");
        assert_eq!(
            pod(&build(&center("campus", HaMode::None)))
                .security_context
                .and_then(|p| p.sysctls),
            None
        );
    }

    #[test]
    fn the_grace_period_covers_the_drain_timeout() {
        let p = pod(&build(&center("campus", HaMode::HotStandby)));
        assert_eq!(p.termination_grace_period_seconds, Some(900 + 30));
    }

    #[test]
    fn the_two_ha_pods_prefer_different_hosts() {
        let cc = center("campus", HaMode::HotStandby);
        let p = pod(&build(&cc));
        let terms = p
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
            .expect("preferred anti-affinity");
        assert_eq!(terms.len(), 1);
        assert_eq!(
            terms[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert_eq!(
            terms[0]
                .pod_affinity_term
                .label_selector
                .clone()
                .and_then(|s| s.match_labels),
            Some(Center::new(&cc).expect("center").selector())
        );
        assert!(
            pod(&build(&center("campus", HaMode::None)))
                .affinity
                .is_none()
        );
    }

    #[test]
    fn scheduling_and_resources_come_from_spec_nodes() {
        let mut cc = center("campus", HaMode::None);
        cc.spec.nodes.node_selector =
            BTreeMap::from([("campus.example.edu/voice-vlan".into(), "true".into())]);
        cc.spec.nodes.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("voice".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }];
        cc.spec.nodes.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("500m".into()))])),
            ..ResourceRequirements::default()
        });
        let s = build(&cc);
        let p = pod(&s);
        assert_eq!(p.node_selector, Some(cc.spec.nodes.node_selector.clone()));
        assert_eq!(p.tolerations, Some(cc.spec.nodes.tolerations.clone()));
        assert_eq!(media_container(&s).resources, cc.spec.nodes.resources);
    }

    #[test]
    fn pod_annotations_are_kept_but_the_startup_hash_is_the_operators() {
        let mut cc = center("campus", HaMode::None);
        cc.spec.nodes.pod_annotations = BTreeMap::from([
            ("k8s.v1.cni.cncf.io/networks".into(), "voice-vlan".into()),
            (STARTUP_HASH_ANNOTATION.into(), "forged".into()),
        ]);
        let hash = config(&cc).startup_hash().expect("hash");
        let a = template_annotations(&build(&cc));
        assert_eq!(a["k8s.v1.cni.cncf.io/networks"], "voice-vlan");
        assert_eq!(a[STARTUP_HASH_ANNOTATION], hash);
    }

    #[test]
    fn only_a_startup_setting_changes_the_pod_template() {
        let cc = center("campus", HaMode::HotStandby);
        let first = template_annotations(&build(&cc))[STARTUP_HASH_ANNOTATION].clone();
        assert_eq!(
            template_annotations(&build(&cc))[STARTUP_HASH_ANNOTATION],
            first,
            "same inputs, same hash"
        );
        // A pod setting is not node config (it changes the template by itself).
        let mut image_only = cc.clone();
        image_only.spec.nodes.image = Some("other:1".into());
        assert_eq!(
            template_annotations(&build(&image_only))[STARTUP_HASH_ANNOTATION],
            first
        );
        // Routing and trunk limits are pushed to running nodes: no restart.
        let mut live = cc.clone();
        live.spec.entry_points.clear();
        for trunk in &mut live.spec.trunks {
            trunk.channels.limit = trunk.channels.limit.saturating_sub(1).max(1);
        }
        assert_eq!(
            template_annotations(&build(&live))[STARTUP_HASH_ANNOTATION],
            first
        );
        // The recording settings are read at start: the nodes roll.
        let mut changed = cc.clone();
        changed.spec.recording.retention_days = 30;
        assert_ne!(
            template_annotations(&build(&changed))[STARTUP_HASH_ANNOTATION],
            first
        );
    }
}
