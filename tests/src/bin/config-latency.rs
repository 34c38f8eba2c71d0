//! Benchmark (numbers, not assertions): how long a Queue or Seat change takes to run on a media
//! node, and how long 1,000 Seats applied at once take to be live on it.
//!
//! Runs the real path: the test control plane's kube-apiserver, the CallCenter controller (in
//! this process, as the operator runs it), and a real `media-node` process on loopback that the
//! controller reaches through a Pod object (there is no kubelet on the control plane). The
//! clock starts when the API server accepts the change and stops when the node's `WatchState`
//! stream reports the new config generation (or the 1,000th seat).
//!
//! ```sh
//! cargo build --workspace --bins && cargo run -p switchboard-tests --bin config-latency [-- CHANGES]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use switchboard_proto::node::v1::node_control_client::NodeControlClient;
use switchboard_proto::node::v1::{NodeState, WatchStateRequest};
use switchboard_tests::node_process::{NodeProcess, create_node_pod};
use switchboard_tests::{
    TEST_FIELD_MANAGER, TestNamespace, apply_yaml, control_plane, install_crds, repo_root,
    start_controller, wait_for,
};

const POD: &str = "minimal-media-0";
const LIMIT: Duration = Duration::from_secs(120);
const SEATS: usize = 1000;

/// The node's state stream, read until `done` holds.
struct StateStream(tonic::Streaming<NodeState>);

impl StateStream {
    async fn until(&mut self, what: &str, done: impl Fn(&NodeState) -> bool) -> Result<NodeState> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.0.message())
                .await
                .with_context(|| format!("no {what} within {LIMIT:?}"))?
                .context("the state stream failed")?
                .context("the state stream ended")?;
            if done(&next) {
                return Ok(next);
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let changes: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("CHANGES must be a number")?
        .unwrap_or(100);
    let client = control_plane().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bench").await?;
    let result = run(&client, &ns.name, changes).await;
    ns.delete().await?;
    result
}

async fn run(client: &Client, ns: &str, changes: usize) -> Result<()> {
    let controller = start_controller(client, ns).await?;
    let minimal = std::fs::read_to_string(repo_root().join("examples/minimal.yaml"))?;
    for a in apply_yaml(client, &minimal, ns).await? {
        a.result?;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let yaml = wait_for(LIMIT, "the node config", || async {
        let cm = config_maps.get_opt("minimal-node-config").await.ok()??;
        let yaml = cm.data?.get("node-config.yaml")?.clone();
        yaml.contains("agent-1002").then_some(yaml)
    })
    .await?;
    let node = NodeProcess::start(&yaml, POD)?;
    create_node_pod(client, ns, "minimal", POD, node.control.port()).await?;
    let mut grpc = NodeControlClient::connect(format!("http://{}", node.control)).await?;
    let mut states = StateStream(grpc.watch_state(WatchStateRequest {}).await?.into_inner());
    let first = states.until("a first state", |_| true).await?;
    let mut generation = first.config_generation;

    // One change at a time: alternately a Queue's wrap-up and a Seat's display name.
    let queues: Api<switchboard_crds::Queue> = Api::namespaced(client.clone(), ns);
    let seats: Api<switchboard_crds::Seat> = Api::namespaced(client.clone(), ns);
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        let started = Instant::now();
        if i % 2 == 0 {
            let patch = serde_json::json!({"spec": {"wrapUpSeconds": 10 + (i % 100)}});
            queues
                .patch("support", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        } else {
            let patch = serde_json::json!({"spec": {"displayName": format!("Agent {i}")}});
            seats
                .patch("agent-1001", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let accepted = started.elapsed();
        let state = states
            .until("the new generation on the node", |s| {
                s.config_generation > generation
            })
            .await
            .with_context(|| format!("change {i}; node log:\n{}", node.log()))?;
        generation = state.config_generation;
        latencies.push(started.elapsed().saturating_sub(accepted));
    }
    latencies.sort();
    println!(
        "config latency: {changes} single changes (Queue and Seat alternately), from the API server accepting the change to the node running the new generation"
    );
    println!(
        "  p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 100.0))
    );

    // 1,000 Seats (and their Secret) applied at once, 32 requests in flight.
    let mut secret = String::from(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bench-passwords}\nstringData:\n",
    );
    for n in 0..SEATS {
        secret.push_str(&format!("  \"{}\": practice-{}\n", 3000 + n, 3000 + n));
    }
    for a in apply_yaml(client, &secret, ns).await? {
        a.result?;
    }
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..SEATS)
        .map(|n| {
            let seats = seats.clone();
            async move {
                let ext = 3000 + n;
                let seat: switchboard_crds::Seat = serde_json::from_value(serde_json::json!({
                    "apiVersion": "switchboard.dev/v1alpha1",
                    "kind": "Seat",
                    "metadata": {"name": format!("bench-{ext}")},
                    "spec": {
                        "callCenter": "minimal",
                        "extension": ext.to_string(),
                        "displayName": format!("Bench {ext}"),
                        "credentials": {"name": "bench-passwords", "key": ext.to_string()},
                    },
                }))?;
                seats
                    .patch(
                        &format!("bench-{ext}"),
                        &PatchParams::apply(TEST_FIELD_MANAGER),
                        &Patch::Apply(&seat),
                    )
                    .await
                    .with_context(|| format!("applying seat bench-{ext}"))?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let applied = started.elapsed();
    let total = SEATS + first.seats.len();
    let live = states
        .until("all seats on the node", |s| s.seats.len() >= total)
        .await
        .with_context(|| format!("node log:\n{}", node.log()))?;
    let elapsed = started.elapsed();
    println!(
        "1,000 Seats applied at once: all {} seats live on the node {:.2} s after the first apply (the API server accepted the last one at {:.2} s; node at config generation {})",
        live.seats.len(),
        elapsed.as_secs_f64(),
        applied.as_secs_f64(),
        live.config_generation
    );
    if live.seats.len() < total {
        bail!("only {} seats live", live.seats.len());
    }
    controller.abort();
    Ok(())
}
