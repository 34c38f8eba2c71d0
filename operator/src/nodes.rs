//! Config delivery: the node config of a call center is pushed to each of its media nodes over
//! the control API (`NodeControl.ApplyConfig`, port [`CONTROL_PORT`]) and each node's answer
//! becomes a [`NodeStatus`]. The ConfigMap carries the same bytes for nodes that start while
//! the operator is away; the push is what makes a change reach running nodes at once.
//!
//! Split as the rest of the operator: which pods to reach ([`endpoints`]) and what an answer
//! means for status ([`node_status`]) are pure; only [`push`] does I/O.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use switchboard_crds::callcenter::{NodeConfigState, NodeStatus};
use switchboard_proto::CONTROL_PORT;
use switchboard_proto::node::v1::node_control_client::NodeControlClient;
use switchboard_proto::node::v1::{ApplyConfigReply, ConfigSnapshot, apply_config_reply::Outcome};

use switchboard_lease::control_url;

/// How long one node may take to connect and answer `ApplyConfig`. A node applies a config in
/// microseconds; anything slower is a node in trouble, shown as unreachable and retried.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// A media-node pod the operator should reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The pod name (the node's name in status).
    pub pod: String,
    /// `http://<pod IP>:<control port>`; `None` while the pod has no IP.
    pub uri: Option<String>,
}

/// The nodes among `pods` (already selected by the center's labels), by name. Pods on their
/// way out (deleted, or finished) are left out: they take no config and would only show as
/// unreachable.
pub fn endpoints(pods: &[Pod]) -> Vec<NodeEndpoint> {
    let mut nodes: Vec<NodeEndpoint> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .map(|p| NodeEndpoint {
            pod: p.name_any(),
            uri: control_url(p, CONTROL_PORT),
        })
        .collect();
    nodes.sort_by(|a, b| a.pod.cmp(&b.pod));
    nodes
}

/// What came back from one node.
#[derive(Debug, Clone, PartialEq)]
pub enum PushResult {
    /// The node answered.
    Answered(ApplyConfigReply),
    /// No answer (connection refused, timeout, transport error), with the reason.
    Unreachable(String),
    /// The pod has no address yet.
    NoAddress,
}

impl PushResult {
    /// The label of `switchboard_operator_config_pushes_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Answered(reply) => match reply.outcome() {
                Outcome::Applied => "applied",
                Outcome::Unchanged => "unchanged",
                Outcome::Stale => "stale",
                Outcome::Rejected => "rejected",
                Outcome::Unspecified => "unspecified",
            },
            Self::Unreachable(_) => "unreachable",
            Self::NoAddress => "no_address",
        }
    }
}

/// Sends `snapshot` to one node, bounded by `timeout`.
pub async fn push(
    endpoint: &NodeEndpoint,
    snapshot: ConfigSnapshot,
    timeout: Duration,
) -> PushResult {
    let Some(uri) = &endpoint.uri else {
        return PushResult::NoAddress;
    };
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("bad control address {uri}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {uri}: {}", error_chain(&e)))?;
        NodeControlClient::new(channel)
            .apply_config(snapshot)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                format!(
                    "ApplyConfig on {uri} failed: {} ({:?})",
                    s.message(),
                    s.code()
                )
            })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => PushResult::Answered(reply),
        Ok(Err(reason)) => PushResult::Unreachable(reason),
        Err(_) => PushResult::Unreachable(format!(
            "{uri} did not answer ApplyConfig within {} s",
            timeout.as_secs()
        )),
    }
}

/// The error and its sources, since tonic's transport error alone says only "transport error".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A node's status line after a push of `generation`. `previous` is what status said before,
/// so a node that cannot be reached keeps the generation it last acknowledged.
pub fn node_status(
    pod: &str,
    generation: i64,
    result: &PushResult,
    previous: Option<&NodeStatus>,
) -> NodeStatus {
    let known = previous.and_then(|p| p.config_generation);
    let (config_generation, config, message) = match result {
        PushResult::Answered(reply) => {
            let running = Some(reply.running_generation);
            match reply.outcome() {
                Outcome::Applied | Outcome::Unchanged if reply.running_generation == generation => {
                    (running, NodeConfigState::Current, None)
                }
                Outcome::Applied | Outcome::Unchanged => (
                    running,
                    NodeConfigState::Rejected,
                    Some(format!(
                        "acknowledged generation {generation} but runs {}",
                        reply.running_generation
                    )),
                ),
                Outcome::Stale => (
                    running,
                    NodeConfigState::Rejected,
                    Some(format!(
                        "the node runs a newer generation: {}",
                        reply.message
                    )),
                ),
                Outcome::Rejected | Outcome::Unspecified => (
                    running,
                    NodeConfigState::Rejected,
                    Some(reply.message.clone()),
                ),
            }
        }
        PushResult::Unreachable(reason) => {
            (known, NodeConfigState::Unreachable, Some(reason.clone()))
        }
        PushResult::NoAddress => (
            known,
            NodeConfigState::Pending,
            Some("the pod has no IP address yet".to_string()),
        ),
    };
    NodeStatus {
        name: pod.to_string(),
        config_generation,
        config,
        message,
    }
}

/// Delay before the next push when some node is not current: doubles from 2 s with each
/// failed round, up to a minute.
pub fn retry_delay(failed_rounds: u32) -> Duration {
    Duration::from_secs(2u64.saturating_mul(1 << failed_rounds.min(5)).min(60))
}

#[cfg(test)]
mod tests {
    use crate::builders::stateful_set::{CONTAINER_NAME, CONTROL_PORT_NAME};
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn pod(name: &str, ip: Option<&str>, phase: &str, control: Option<i32>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: CONTAINER_NAME.into(),
                    ports: control.map(|port| {
                        vec![ContainerPort {
                            name: Some(CONTROL_PORT_NAME.into()),
                            container_port: port,
                            ..ContainerPort::default()
                        }]
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn endpoints_are_the_live_pods_by_name_on_their_control_port() {
        let mut leaving = pod("cc-media-2", Some("10.0.0.9"), "Running", None);
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let pods = [
            pod("cc-media-1", Some("10.0.0.2"), "Running", Some(19091)),
            pod("cc-media-0", Some("fd00::7"), "Running", None),
            pod("cc-media-3", None, "Pending", None),
            pod("cc-media-4", Some("10.0.0.4"), "Failed", None),
            leaving,
        ];
        assert_eq!(
            endpoints(&pods),
            [
                NodeEndpoint {
                    pod: "cc-media-0".into(),
                    uri: Some(format!("http://[fd00::7]:{CONTROL_PORT}")),
                },
                NodeEndpoint {
                    pod: "cc-media-1".into(),
                    uri: Some("http://10.0.0.2:19091".into()),
                },
                NodeEndpoint {
                    pod: "cc-media-3".into(),
                    uri: None,
                },
            ]
        );
    }

    fn reply(outcome: Outcome, running: i64, message: &str) -> PushResult {
        PushResult::Answered(ApplyConfigReply {
            outcome: outcome as i32,
            running_generation: running,
            message: message.into(),
        })
    }

    #[test]
    fn every_answer_maps_to_a_status_line() {
        let current = node_status("n", 4, &reply(Outcome::Applied, 4, ""), None);
        assert_eq!(current.config, NodeConfigState::Current);
        assert_eq!(current.config_generation, Some(4));
        assert_eq!(current.message, None);
        assert_eq!(
            node_status("n", 4, &reply(Outcome::Unchanged, 4, ""), None).config,
            NodeConfigState::Current
        );

        let rejected = node_status(
            "n",
            5,
            &reply(
                Outcome::Rejected,
                4,
                "node config, seats[0].ha1: must be hex",
            ),
            Some(&current),
        );
        assert_eq!(rejected.config, NodeConfigState::Rejected);
        assert_eq!(rejected.config_generation, Some(4), "keeps running 4");
        assert_eq!(
            rejected.message.as_deref(),
            Some("node config, seats[0].ha1: must be hex")
        );

        let stale = node_status("n", 5, &reply(Outcome::Stale, 9, "older than 9"), None);
        assert_eq!(stale.config, NodeConfigState::Rejected);
        assert_eq!(stale.config_generation, Some(9));

        let odd = node_status("n", 5, &reply(Outcome::Applied, 4, ""), None);
        assert_eq!(odd.config, NodeConfigState::Rejected);

        let gone = node_status(
            "n",
            5,
            &PushResult::Unreachable("connection refused".into()),
            Some(&current),
        );
        assert_eq!(gone.config, NodeConfigState::Unreachable);
        assert_eq!(gone.config_generation, Some(4), "the last acknowledged");
        assert_eq!(gone.message.as_deref(), Some("connection refused"));

        let starting = node_status("n", 5, &PushResult::NoAddress, None);
        assert_eq!(starting.config, NodeConfigState::Pending);
        assert_eq!(starting.config_generation, None);
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        let delays: Vec<u64> = (0..8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[tokio::test]
    async fn a_node_that_is_not_there_is_unreachable_with_the_reason() {
        // A port nothing listens on: bind, learn it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let endpoint = NodeEndpoint {
            pod: "cc-media-0".into(),
            uri: Some(format!("http://127.0.0.1:{port}")),
        };
        let snapshot = ConfigSnapshot::new(1, b"format: x\n".to_vec());
        match push(&endpoint, snapshot, Duration::from_secs(2)).await {
            PushResult::Unreachable(reason) => {
                assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }
}
