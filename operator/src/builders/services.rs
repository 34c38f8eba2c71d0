//! The Services of a CallCenter's media nodes, and how RTP reaches them.
//!
//! - `<cc>-media-headless`: the StatefulSet's governing Service. It gives each node a stable
//!   DNS name (`<cc>-media-0.<cc>-media-headless`) that the standby uses to follow the active
//!   node's replication stream, and it publishes pods before they are Ready because a standby
//!   must find its peer before it can become Ready.
//! - `<cc>-sip`: SIP over UDP and TCP on `spec.sip` ports. With `HotStandby` it selects only the
//!   pod labelled `switchboard.dev/role: active` (set by the node that holds the Lease), so
//!   new SIP traffic follows a failover within one endpoint update; with `None` it selects the
//!   one media pod.
//! - `<cc>-media-metrics`: port 9090 of every node, for Prometheus.
//!
//! # RTP exposure
//!
//! RTP is deliberately not behind a Service. A call leg takes two ports from
//! `spec.rtp` (about 10,000 ports by default), and a Service with thousands of ports is slow for
//! kube-proxy and the API server and would NAT media through one virtual IP while SDP has to
//! name the address packets really arrive at. Instead the node writes into SDP an address
//! peers can reach directly:
//!
//! - **Pod networking (default).** The node advertises its pod IP (`POD_IP`, from the
//!   downward API): in-cluster peers such as SIPp, a PBX or a gateway pod send RTP straight
//!   to the pod, and a failover's re-INVITE moves media to the new active pod's IP. Peers
//!   outside the cluster need a routable pod network or `hostNetwork`.
//! - **`spec.nodes.hostNetwork` (campus clusters).** The node shares the host's network
//!   namespace, so SIP and the whole RTP range are opened on the host's own address, which is
//!   what the node advertises (the pod IP equals the host IP). Phones on the campus LAN and
//!   the PBX reach it without NAT. The ports are declared as host ports, so the scheduler
//!   never puts two nodes that need the same ports on one host.
//!
//! `spec.sip.advertisedAddress`, when set, overrides both (for example a LoadBalancer or NAT
//! address in front of the node).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchboard_crds::callcenter::HaMode;

use super::{Center, METRICS_PORT, ROLE_ACTIVE, ROLE_LABEL};

/// Name of the SIP/UDP port on containers and Services.
pub const SIP_UDP_PORT_NAME: &str = "sip-udp";
/// Name of the SIP/TCP port on containers and Services.
pub const SIP_TCP_PORT_NAME: &str = "sip-tcp";
/// Name of the metrics port on containers and Services.
pub const METRICS_PORT_NAME: &str = "metrics";

fn port(name: &str, protocol: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        protocol: Some(protocol.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        ..ServicePort::default()
    }
}

fn sip_ports(center: &Center<'_>) -> Vec<ServicePort> {
    vec![
        port(
            SIP_UDP_PORT_NAME,
            "UDP",
            i32::from(center.spec.sip.udp_port),
        ),
        port(
            SIP_TCP_PORT_NAME,
            "TCP",
            i32::from(center.spec.sip.tcp_port),
        ),
    ]
}

fn metrics_port() -> ServicePort {
    port(METRICS_PORT_NAME, "TCP", METRICS_PORT)
}

/// The headless governing Service `<cc>-media-headless`.
pub fn headless_service(center: &Center<'_>) -> Service {
    let mut ports = sip_ports(center);
    ports.push(metrics_port());
    Service {
        metadata: center.meta(&center.names.headless_service),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(center.selector()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The SIP Service `<cc>-sip`: only the active pod with `HotStandby`.
pub fn sip_service(center: &Center<'_>) -> Service {
    let mut selector = center.selector();
    let hot_standby = center.spec.high_availability.mode == HaMode::HotStandby;
    if hot_standby {
        selector.insert(ROLE_LABEL.to_string(), ROLE_ACTIVE.to_string());
    }
    Service {
        metadata: center.meta(&center.names.sip_service),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector),
            ports: Some(sip_ports(center)),
            // With HotStandby the active mark alone decides: a draining active keeps it (and
            // stays reachable though its pod is terminating) until the node it handed the
            // Lease to carries it too, so the Service is never without a node.
            publish_not_ready_addresses: hot_standby.then_some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The metrics Service `<cc>-media-metrics`, selecting every media node.
pub fn metrics_service(center: &Center<'_>) -> Service {
    Service {
        metadata: center.meta(&center.names.metrics_service),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(center.selector()),
            ports: Some(vec![metrics_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::*;
    use std::collections::BTreeMap;

    fn ports(s: &Service) -> Vec<(String, String, i32, IntOrString)> {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.name.unwrap_or_default(),
                    p.protocol.unwrap_or_default(),
                    p.port,
                    p.target_port.unwrap_or(IntOrString::Int(0)),
                )
            })
            .collect()
    }

    fn selector(s: &Service) -> BTreeMap<String, String> {
        s.spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default()
    }

    fn media_selector() -> BTreeMap<String, String> {
        BTreeMap::from([
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
        ])
    }

    #[test]
    fn the_sip_service_selects_only_the_active_pod_with_hot_standby() {
        let cc = center("campus", HaMode::HotStandby);
        let svc = sip_service(&Center::new(&cc).expect("center"));
        let mut expected = media_selector();
        expected.insert("switchboard.dev/role".into(), "active".into());
        assert_eq!(selector(&svc), expected);
        assert_eq!(
            svc.spec.and_then(|s| s.publish_not_ready_addresses),
            Some(true),
            "the mark decides, not readiness nor termination"
        );
    }

    #[test]
    fn the_sip_service_selects_the_single_pod_without_ha() {
        let cc = center("campus", HaMode::None);
        let svc = sip_service(&Center::new(&cc).expect("center"));
        assert_eq!(selector(&svc), media_selector());
        assert_eq!(svc.spec.and_then(|s| s.publish_not_ready_addresses), None);
    }

    #[test]
    fn the_sip_service_carries_udp_and_tcp_on_the_spec_ports() {
        let cc = center("campus", HaMode::HotStandby);
        let svc = sip_service(&Center::new(&cc).expect("center"));
        assert_eq!(
            ports(&svc),
            vec![
                (
                    "sip-udp".into(),
                    "UDP".into(),
                    5060,
                    IntOrString::String("sip-udp".into())
                ),
                (
                    "sip-tcp".into(),
                    "TCP".into(),
                    5070,
                    IntOrString::String("sip-tcp".into())
                ),
            ]
        );
        assert_eq!(svc.spec.and_then(|s| s.type_).as_deref(), Some("ClusterIP"));
    }

    #[test]
    fn the_headless_service_governs_every_pod_and_publishes_unready_ones() {
        let cc = center("campus", HaMode::HotStandby);
        let svc = headless_service(&Center::new(&cc).expect("center"));
        assert_eq!(selector(&svc), media_selector());
        let names: Vec<_> = ports(&svc).into_iter().map(|p| p.0).collect();
        assert_eq!(names, ["sip-udp", "sip-tcp", "metrics"]);
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
    }

    #[test]
    fn the_metrics_service_exposes_port_9090_of_every_node() {
        let cc = center("campus", HaMode::HotStandby);
        let svc = metrics_service(&Center::new(&cc).expect("center"));
        assert_eq!(selector(&svc), media_selector());
        assert_eq!(
            ports(&svc),
            vec![(
                "metrics".into(),
                "TCP".into(),
                9090,
                IntOrString::String("metrics".into())
            )]
        );
    }
}
