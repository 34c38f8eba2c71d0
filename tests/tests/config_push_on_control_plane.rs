//! Config delivery against a real kube-apiserver and a real media-node process: the operator
//! pushes every new node-config generation to the node over the control API, the node
//! acknowledges it, and the CallCenter's status says which generation each node runs. A node
//! that does not answer shows as Unreachable (the center not Ready) and is retried with
//! backoff until it answers again. A phone registering on the node shows in the Seat's status
//! through the node's state stream.
//!
//! There is no kubelet on this control plane, so the node's pod is a Pod object the test
//! creates with the StatefulSet's labels, whose status (IP 127.0.0.1, Running) the test writes
//! and whose `control` container port is where the node process listens.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use switchboard_crds::callcenter::{NodeConfigState, NodeStatus};
use switchboard_crds::{CallCenter, Seat};
use switchboard_operator::builders::CONFIG_FILE;
use switchboard_operator::node_config::NodeConfig;
use switchboard_tests::node_process::{NodeProcess, create_node_pod};
use switchboard_tests::{
    TestNamespace, apply_yaml, control_plane, install_crds, repo_root, start_controller, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);
const POD: &str = "minimal-media-0";

/// The generation `switchboard_config_generation` on the node's `/metrics`.
fn node_generation(metrics: SocketAddr) -> Option<i64> {
    let mut s = TcpStream::connect_timeout(&metrics, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_config_generation "))
        .and_then(|v| v.trim().parse().ok())
}

/// Registers seat 1002 from a SIPp phone (digest with its password from the example).
fn register_1002(node: SocketAddr) -> Result<()> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let work = tempfile::tempdir()?;
    let status = std::process::Command::new("sipp")
        .arg(node.to_string())
        .arg("-sf")
        .arg(repo_root().join("tests/sip/call-register-1002.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1"])
        .args(["-key", "domain", "localhost"])
        .args(["-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin"])
        .current_dir(work.path())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running sipp (Debian package sip-tester; tests/run installs it)")?;
    anyhow::ensure!(status.success(), "sipp REGISTER of 1002 failed: {status}");
    Ok(())
}

async fn node_line(centers: &Api<CallCenter>) -> Option<(Option<i64>, NodeStatus)> {
    let status = centers.get("minimal").await.ok()?.status?;
    let node = status.nodes.into_iter().find(|n| n.name == POD)?;
    Some((status.config_generation, node))
}

/// Changes the Queue so the operator computes (and pushes) a new generation, and returns that
/// generation: the one of the first ConfigMap that carries the change. (Waiting for "the node
/// runs the center's current generation" alone could match the generation before the change,
/// when the controller has not seen the patch yet.)
async fn bump_queue(client: &Client, ns: &str, wrap_up: u32) -> Result<i64> {
    let queues: Api<switchboard_crds::Queue> = Api::namespaced(client.clone(), ns);
    queues
        .patch(
            "support",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"wrapUpSeconds": wrap_up}})),
        )
        .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    wait_for(
        WAIT,
        &format!("a node config with wrap-up {wrap_up} s"),
        || async {
            let cm = config_maps.get_opt("minimal-node-config").await.ok()??;
            let config: NodeConfig = serde_yaml::from_str(cm.data?.get(CONFIG_FILE)?).ok()?;
            let support = config.queues.iter().find(|q| q.name == "support")?;
            (support.spec.wrap_up_seconds == wrap_up).then_some(config.generation)
        },
    )
    .await
}

#[tokio::test]
async fn every_generation_is_pushed_and_acknowledged_and_an_absent_node_is_shown() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "push").await?;
    let controller = start_controller(&client, &ns.name).await?;
    let minimal = std::fs::read_to_string(repo_root().join("examples/minimal.yaml"))?;
    for a in apply_yaml(&client, &minimal, &ns.name).await? {
        a.result?;
    }

    // The node starts from the ConfigMap, as a pod would.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let yaml = wait_for(WAIT, "a node config with both seats", || async {
        let cm = config_maps.get_opt("minimal-node-config").await.ok()??;
        let yaml = cm.data?.get(CONFIG_FILE)?.clone();
        (yaml.contains("agent-1001") && yaml.contains("agent-1002")).then_some(yaml)
    })
    .await?;
    let mut node = NodeProcess::start(&yaml, POD)?;
    create_node_pod(&client, &ns.name, "minimal", POD, node.control.port()).await?;

    // A Queue change: a new generation, pushed, acknowledged, and running on the node.
    let generation = bump_queue(&client, &ns.name, 20).await?;
    let centers: Api<CallCenter> = Api::namespaced(client.clone(), &ns.name);
    let line = wait_for(
        WAIT,
        &format!("the node acknowledging generation {generation}"),
        || async {
            let (current, line) = node_line(&centers).await?;
            (line.config == NodeConfigState::Current
                && current == Some(generation)
                && line.config_generation == Some(generation))
            .then_some(line)
        },
    )
    .await
    .with_context(|| format!("node log:\n{}", node.log()))?;
    assert_eq!(line.message, None, "{line:?}");
    assert_eq!(node_generation(node.metrics), Some(generation));
    let center = centers.get("minimal").await?;
    let condition = |t: &str| {
        center
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned())
            .with_context(|| format!("no {t} condition"))
    };
    // No kubelet: the StatefulSet never reports ready replicas, so the center still waits
    // for its nodes; but nothing is degraded and the node's config is current.
    assert_eq!(condition("Degraded")?.status, "False");
    assert_eq!(condition("Progressing")?.reason, "WaitingForNodes");

    // A phone registers seat 1002 on the node: the node's state stream reaches the operator,
    // which writes the Seat's registration and the center's count.
    register_1002(node.sip_udp)?;
    let seats: Api<Seat> = Api::namespaced(client.clone(), &ns.name);
    wait_for(WAIT, "agent-1002 registered in its status", || async {
        let status = seats.get("agent-1002").await.ok()?.status?;
        status.registered.then_some(())
    })
    .await?;
    wait_for(
        WAIT,
        "one seat registered in the center's status",
        || async {
            let status = centers.get("minimal").await.ok()?.status?;
            (status.seats_registered == 1).then_some(())
        },
    )
    .await?;
    let other = seats.get("agent-1001").await?.status.unwrap_or_default();
    assert!(!other.registered, "agent-1001 has no phone");

    // The node goes away: the next generation cannot be delivered, and status says so.
    node.kill();
    let missed = bump_queue(&client, &ns.name, 25).await?;
    assert!(missed > generation);
    let line = wait_for(WAIT, "the node shown as unreachable", || async {
        let (current, line) = node_line(&centers).await?;
        (line.config == NodeConfigState::Unreachable && current == Some(missed)).then_some(line)
    })
    .await?;
    assert_eq!(
        line.config_generation,
        Some(generation),
        "the last generation it acknowledged"
    );
    let reason = line.message.unwrap_or_default();
    assert!(
        reason.contains(&format!("127.0.0.1:{}", node.control.port())),
        "{reason}"
    );

    // It comes back on the same address (as a restarted pod keeps its control port) from the
    // ConfigMap of the missed generation; the operator's retry finds it current.
    let cm = config_maps.get("minimal-node-config").await?;
    let yaml = cm
        .data
        .and_then(|d| d.get(CONFIG_FILE).cloned())
        .context("node config")?;
    let restarted = NodeProcess::start(&yaml, POD)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let port = restarted.control.port();
    pods.delete(POD, &Default::default()).await?;
    wait_for(WAIT, "the old pod object gone", || async {
        pods.get_opt(POD).await.ok()?.is_none().then_some(())
    })
    .await?;
    create_node_pod(&client, &ns.name, "minimal", POD, port).await?;
    // A pod change alone does not trigger the controller; the backoff retry does.
    let (_, line) = wait_for(WAIT, "the retried push acknowledged", || async {
        let (generation, line) = node_line(&centers).await?;
        (line.config == NodeConfigState::Current && line.config_generation == generation)
            .then_some((generation, line))
    })
    .await
    .with_context(|| format!("node log:\n{}", restarted.log()))?;
    assert_eq!(line.config_generation, Some(missed));
    assert_eq!(node_generation(restarted.metrics), Some(missed));

    controller.abort();
    ns.delete().await?;
    Ok(())
}
