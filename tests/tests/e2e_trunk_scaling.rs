//! End to end on the real single-node cluster (`tests/cluster/up`): trunk autoscaling with
//! real calls. The rendered chart installs the operator; a CallCenter gets one autoscaled trunk
//! that starts at 3 channels (bounds 3..=40, target blocking 1 %) and an entry point the node
//! answers itself (an IVR menu that waits a minute for a key, so a call lasts until the caller
//! hangs up). SIPp on this machine plays the carrier through the SIP Service's ClusterIP
//! (`tests/sip/trunk-uac-load.xml`): 120 calls, 2 a second, each held 8 s, about 16 erlangs
//! offered against 3 channels. The node refuses the calls beyond the limit with 503 (SIPp
//! counts them as failed calls, the node as `switchboard_trunk_calls_blocked_total`); the
//! operator sizes the trunk with Erlang B from the node's traffic report, writes the raised
//! limit into the CallCenter's status, emits a `TrunkScaled` Event and pushes the limit to the
//! node. The same load again is then carried in full: every SIPp call answered, the blocked
//! counters unchanged. Every limit seen stays within the trunk's bounds.
//!
//! The trunk is added to the running center shortly before the load, which starts
//! [`QUIET`] after the node took the trunk. The node's traffic window starts with the trunk and
//! is as long as the trunk has existed (up to 15 minutes), so the quiet time fixes how much the
//! first load's traffic is averaged down: long enough that the first 1.5 s of the load (3 calls,
//! at most 3 channel-seconds over ≥ 11.5 s, about 0.26 E) cannot make Erlang B ask for a 4th
//! channel (that takes 0.46 E at 1 %) before the 4th call is blocked, however fast the operator
//! reacts; short enough that by the end of the first load the measured traffic (about 12.5 E of
//! the 16 offered) sizes the trunk at about 20 channels, above the 17 calls the load holds at
//! once, so the second load fits. Without the wait, the pod's start-up time would decide both.
//! A trunk is a live config change (no restart), so this is also how an administrator adds one.
//!
//! The carrier's address: SIPp binds this machine's address on the cluster's pod bridge; a
//! datagram from it to the ClusterIP reaches the pod from that address (masqueraded or not, it
//! leaves through the bridge), so the trunk's `allowedSources` is that address.
//!
//! Isolation from the other e2e tests, which nextest runs at the same time: its own image tag,
//! chart release, namespaces and cluster-scoped names; everything is removed at the end.
//! Needs the workspace binaries built first (`cargo build --workspace --bins`, as `tests/run`
//! does). Waits are bounded loops with generous limits; nothing asserts on timing.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use switchboard_crds::CallCenter;
use switchboard_crds::callcenter::TrunkStatus;
use switchboard_operator::builders::ChildNames;
use switchboard_tests::cluster::{
    Cleanup, Sipp, SippStats, apply_all, binary_dir, bridge_address, clean_up, cluster_state,
    create_recordings_volume, diagnose, free_udp_port, import_images, install_operator,
    metric_value, pod_ready, scrape_metrics, service_ip_with_endpoint,
};
use switchboard_tests::{TestNamespace, install_crds, names, wait_for};

const CENTER: &str = "trunks";
const TRUNK: &str = "carrier";
/// The entry point the carrier dials: the node's own IVR menu.
const SERVICE_NUMBER: &str = "200";
/// Image tag of this test's images (e2e_operator uses `e2e`).
const TAG: &str = "e2e-trunks";
const SIP_PORT: u16 = 5060;
/// The media node's metrics port (`/metrics`), reached on the pod's IP.
const METRICS_PORT: u16 = 9090;
/// The trunk's limit at first, its lower bound too.
const START_LIMIT: u32 = 3;
const MAX_CHANNELS: u32 = 40;
/// The load: calls a second, how long each caller stays, calls per run.
const CALLS_PER_SECOND: u32 = 2;
const HOLD: Duration = Duration::from_secs(8);
const CALLS: u32 = 120;
/// How long the node has the trunk, idle, before the first load (see the module docs).
const QUIET: Duration = Duration::from_secs(10);
const NODE_LIMIT: Duration = Duration::from_secs(240);
/// How long the operator may take to raise the limit once the load has shown it too small.
const SCALE_LIMIT: Duration = Duration::from_secs(300);
const GC_LIMIT: Duration = Duration::from_secs(120);
const SIPP_RETRY_LIMIT: Duration = Duration::from_secs(120);

/// The CallCenter: the IVR entry point, and with `trunk` the autoscaled carrier trunk that
/// trusts `carrier` as its source.
fn call_center(class: &str, carrier: Option<IpAddr>) -> Value {
    let trunks: Vec<Value> = carrier
        .map(|ip| {
            json!({
                "name": TRUNK,
                "peer": {"host": ip.to_string()},
                "allowedSources": [format!("{ip}/32")],
                "channels": {
                    "limit": START_LIMIT,
                    "minChannels": START_LIMIT,
                    "maxChannels": MAX_CHANNELS,
                    "autoscaling": true,
                    "targetBlocking": 0.01,
                },
            })
        })
        .into_iter()
        .collect();
    json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "CallCenter",
        "metadata": {"name": CENTER},
        "spec": {
            "sip": {"domain": "localhost"},
            "recording": {"storageClassName": class},
            "entryPoints": [
                {"number": SERVICE_NUMBER, "route": {"action": "Menu", "target": "main"}},
            ],
            // The prompt is not in the image: the node plays nothing and waits a minute for a
            // key, longer than any caller of the load stays.
            "ivrMenus": [
                {"name": "main", "prompt": "trunks/welcome.wav", "timeoutSeconds": 60, "maxRetries": 0},
            ],
            "trunks": trunks,
        },
    })
}

/// The trunk's line in the CallCenter's status.
async fn trunk_status(centers: &Api<CallCenter>) -> Option<TrunkStatus> {
    centers
        .get(CENTER)
        .await
        .ok()?
        .status?
        .trunks
        .into_iter()
        .find(|t| t.name == TRUNK)
}

/// The trunk's figures as the node's metrics give them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct NodeTrunk {
    limit: f64,
    busy: f64,
    blocked: f64,
}

async fn node_trunk(metrics: SocketAddr) -> Result<NodeTrunk> {
    let text = scrape_metrics(metrics).await?;
    let label = format!("trunk=\"{TRUNK}\"");
    let value = |name: &str| {
        metric_value(&text, name, &label)
            .ok_or_else(|| anyhow!("no {name}{{{label}}} in the node's metrics"))
    };
    Ok(NodeTrunk {
        limit: value("switchboard_trunk_channel_limit")?,
        busy: value("switchboard_trunk_channels_busy")?,
        blocked: value("switchboard_trunk_calls_blocked_total")?,
    })
}

/// What the status showed while a load ran.
#[derive(Debug, Default)]
struct Observed {
    /// Every limit the status showed.
    limits: BTreeSet<u32>,
    /// When the limit first went above [`START_LIMIT`], after the load started.
    first_raise: Option<Duration>,
    /// Most channels busy at once.
    most_busy: u32,
}

/// Runs one load of [`CALLS`] calls through `sip` from `host`, watching the trunk's status
/// while it runs; returns SIPp's call counts and what the status showed.
async fn load(
    centers: &Api<CallCenter>,
    sip: IpAddr,
    host: IpAddr,
) -> Result<(SippStats, Observed)> {
    let ip = host.to_string();
    let run = Sipp::new(SocketAddr::new(sip, SIP_PORT), "trunk-uac-load.xml")
        .calls(CALLS)
        .limit(Duration::from_secs(u64::from(CALLS / CALLS_PER_SECOND)) + HOLD * 2)
        .args(["-s", SERVICE_NUMBER, "-i", &ip, "-mi", &ip])
        .args(["-p", &free_udp_port(host)?.to_string()])
        .args(["-mp", &free_udp_port(host)?.to_string()])
        .args(["-d", &HOLD.as_millis().to_string()])
        .args(["-r", &CALLS_PER_SECOND.to_string(), "-rp", "1000"])
        // A blocked call fails in the scenario after its ACK; no BYE for it.
        .args(["-default_behaviors", "all,-bye"])
        .spawn()
        .await?;
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let sipp = async {
        let stats = run.finish_with_stats().await;
        done.store(true, Ordering::SeqCst);
        stats
    };
    let watch = async {
        let mut seen = Observed::default();
        while !done.load(Ordering::SeqCst) {
            if let Some(t) = trunk_status(centers).await {
                seen.limits.insert(t.limit);
                seen.most_busy = seen.most_busy.max(t.busy);
                if t.limit > START_LIMIT && seen.first_raise.is_none() {
                    seen.first_raise = Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        seen
    };
    let (stats, seen) = tokio::join!(sipp, watch);
    Ok((stats?, seen))
}

/// The `TrunkScaled` Events of the center, as their messages.
async fn trunk_scaled_events(client: &Client, namespace: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(switchboard_operator::trunks::TRUNK_SCALED)
                && e.involved_object.name.as_deref() == Some(CENTER)
        })
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

fn within_bounds(limit: u32) -> bool {
    (START_LIMIT..=MAX_CHANNELS).contains(&limit)
}

async fn run(
    client: &Client,
    op_ns: &str,
    cc_ns: &str,
    cleanup: &mut Cleanup,
    volume_dir: &Path,
    state_dir: &Path,
) -> Result<()> {
    let names = ChildNames::new(CENTER);
    let release = names::unique("sbtrunks");
    let started = Instant::now();
    let operator = install_operator(client, &release, op_ns, cc_ns, TAG, cleanup).await?;
    eprintln!(
        "operator pod {} Ready {:.1}s after the chart was applied",
        operator.metadata.name.as_deref().unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );

    // The center without its trunk first; its recording volume on a class of this test.
    let class = names::unique("sb-e2e-trunks");
    let claim = format!("recordings-{}-0", names.stateful_set);
    let pv_name = names::unique("sb-e2e-trunks");
    create_recordings_volume(client, cleanup, &pv_name, &class, volume_dir, cc_ns, &claim).await?;
    let center_yaml = |carrier| serde_yaml::to_string(&call_center(&class, carrier));
    apply_all(client, &center_yaml(None)?, cc_ns)
        .await
        .context("applying the CallCenter")?;
    let node_pod = format!("{}-0", names.stateful_set);
    let pods: Api<Pod> = Api::namespaced(client.clone(), cc_ns);
    let pod = wait_for(NODE_LIMIT, "the media-node pod to be Ready", || async {
        pods.get_opt(&node_pod)
            .await
            .ok()
            .flatten()
            .filter(pod_ready)
    })
    .await?;
    let pod_ip: IpAddr = pod
        .status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| anyhow!("{node_pod} has no IP"))?
        .parse()?;
    let metrics = SocketAddr::new(pod_ip, METRICS_PORT);
    let sip = service_ip_with_endpoint(client, cc_ns, &names.sip_service, NODE_LIMIT).await?;
    let host = bridge_address(state_dir)?;
    eprintln!(
        "media node {node_pod} Ready {:.1}s after the CallCenter was applied; SIP at {sip}:{SIP_PORT}, carrier at {host}",
        started.elapsed().as_secs_f64()
    );
    // kube-proxy writes the Service's rules a moment after the endpoint appears.
    let deadline = Instant::now() + SIPP_RETRY_LIMIT;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let ping = Sipp::new(SocketAddr::new(sip, SIP_PORT), "options.xml")
            .key("domain", "localhost")
            .args(["-i", &host.to_string()])
            .spawn()
            .await?
            .finish()
            .await;
        match ping {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "SIP OPTIONS through the ClusterIP, {attempts} attempt(s)"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }

    // The trunk, added live; the node runs with its limit before the load starts.
    apply_all(client, &center_yaml(Some(host))?, cc_ns)
        .await
        .context("adding the trunk to the CallCenter")?;
    let centers: Api<CallCenter> = Api::namespaced(client.clone(), cc_ns);
    wait_for(NODE_LIMIT, "the node to run the trunk", || async {
        let node = node_trunk(metrics).await.ok()?;
        (node.limit == f64::from(START_LIMIT)).then_some(())
    })
    .await?;
    let trunk_seen = Instant::now();
    let initial = wait_for(NODE_LIMIT, "the trunk in the CallCenter's status", || {
        trunk_status(&centers)
    })
    .await?;
    ensure!(
        initial.limit == START_LIMIT && initial.blocked == 0,
        "the trunk starts as {initial:?}, want limit {START_LIMIT} and nothing blocked"
    );

    // The first load, far above 3 channels: calls are blocked, and the operator raises the
    // limit while it runs or once it has ended.
    tokio::time::sleep_until((trunk_seen + QUIET).into()).await;
    let load_started = Instant::now();
    eprintln!(
        "first load starts {:.1}s after the node took the trunk",
        (load_started - trunk_seen).as_secs_f64()
    );
    let (first, seen_first) = load(&centers, sip, host).await?;
    eprintln!(
        "first load: {} of {CALLS} calls answered, {} failed {:?}; limits in status during the load {:?}, at most {} channels busy",
        first.successful, first.failed, first.failed_by, seen_first.limits, seen_first.most_busy
    );
    ensure!(
        first.successful + first.failed == u64::from(CALLS),
        "SIPp placed {} calls, want {CALLS}",
        first.successful + first.failed
    );
    ensure!(
        first.failed > 0,
        "no call was blocked with {CALLS_PER_SECOND} calls/s held {HOLD:?} against {START_LIMIT} channels \
         (the limit went {:?} during the load)",
        seen_first.limits
    );
    // A blocked call ends in the scenario's wait after the ACK of the 503 (TimeoutOnRecv);
    // any other failure is not a refusal at the channel limit.
    ensure!(
        first.failed_by.keys().all(|k| k == "TimeoutOnRecv"),
        "calls failed for other reasons than a refusal: {:?}",
        first.failed_by
    );
    let node_after_first = node_trunk(metrics).await?;
    ensure!(
        node_after_first.blocked >= first.failed as f64,
        "the node counts {} blocked calls, SIPp saw {} refused",
        node_after_first.blocked,
        first.failed
    );

    // The raised limit in the status, within the bounds, with its Event.
    let raised = wait_for(
        SCALE_LIMIT,
        "the CallCenter's status to show the trunk's limit raised, with a TrunkScaled Event",
        || async {
            let t = trunk_status(&centers).await?;
            if t.limit <= START_LIMIT || t.blocked == 0 {
                return None;
            }
            let events = trunk_scaled_events(client, cc_ns).await;
            (!events.is_empty()).then_some((t, events))
        },
    )
    .await;
    let (raised, events) =
        raised.with_context(|| format!("limits seen {:?}", seen_first.limits))?;
    let raised_after = seen_first
        .first_raise
        .unwrap_or_else(|| load_started.elapsed());
    eprintln!(
        "limit {START_LIMIT} → {} ({}), first raised {:.1}s after the first load started; {} blocked in status; events: {events:?}",
        raised.limit,
        raised.last_change_reason.as_deref().unwrap_or("?"),
        raised_after.as_secs_f64(),
        raised.blocked
    );
    ensure!(
        within_bounds(raised.limit),
        "limit {} outside {START_LIMIT}..={MAX_CHANNELS}",
        raised.limit
    );
    ensure!(
        raised.blocked >= first.failed,
        "status counts {} blocked, SIPp saw {} refused",
        raised.blocked,
        first.failed
    );

    // The node runs with the limit the status shows, and the first load's calls are gone.
    let before_second = wait_for(
        NODE_LIMIT,
        "the node to run the raised limit with no call up",
        || async {
            let t = trunk_status(&centers).await?;
            let node = node_trunk(metrics).await.ok()?;
            (node.limit == f64::from(t.limit) && node.busy == 0.0).then_some((t, node))
        },
    )
    .await?;
    let (status_before, node_before) = before_second;
    ensure!(
        within_bounds(status_before.limit),
        "limit {} outside {START_LIMIT}..={MAX_CHANNELS}",
        status_before.limit
    );

    // The same load again: carried in full.
    let (second, seen_second) = load(&centers, sip, host).await?;
    eprintln!(
        "second load at limit {}: {} of {CALLS} calls answered, {} failed {:?}; limits in status during the load {:?}, at most {} channels busy",
        status_before.limit,
        second.successful,
        second.failed,
        second.failed_by,
        seen_second.limits,
        seen_second.most_busy
    );
    let node_after = wait_for(NODE_LIMIT, "the second load's calls to end", || async {
        let node = node_trunk(metrics).await.ok()?;
        (node.busy == 0.0).then_some(node)
    })
    .await?;
    ensure!(
        second.failed == 0 && second.successful == u64::from(CALLS),
        "the second load still lost calls: {second:?} (limit {} before it, {:?} during it)",
        status_before.limit,
        seen_second.limits
    );
    ensure!(
        node_after.blocked == node_before.blocked,
        "the node blocked {} more calls in the second load",
        node_after.blocked - node_before.blocked
    );
    // The status follows the node: once it shows the calls ended, its blocked count is the
    // node's, unchanged.
    let status_after = wait_for(NODE_LIMIT, "the status to show no call up", || async {
        let t = trunk_status(&centers).await?;
        (t.busy == 0).then_some(t)
    })
    .await?;
    ensure!(
        status_after.blocked == status_before.blocked,
        "blocked calls in the status went {} → {} in the second load",
        status_before.blocked,
        status_after.blocked
    );

    // Bounds: every limit seen, in the status and on the node.
    let all_limits: BTreeSet<u32> = seen_first
        .limits
        .iter()
        .chain(&seen_second.limits)
        .chain([&raised.limit, &status_before.limit, &status_after.limit])
        .copied()
        .collect();
    ensure!(
        all_limits.iter().all(|l| within_bounds(*l)),
        "limits outside {START_LIMIT}..={MAX_CHANNELS}: {all_limits:?}"
    );
    ensure!(
        node_after.limit >= f64::from(START_LIMIT) && node_after.limit <= f64::from(MAX_CHANNELS),
        "the node's limit {} is outside {START_LIMIT}..={MAX_CHANNELS}",
        node_after.limit
    );
    eprintln!(
        "trunk scaling: {} of {CALLS} calls blocked at {START_LIMIT} channels; limit raised to {} \
         {:.1}s after the load started ({} by the second load's end); the same load then lost no call; \
         limits seen {all_limits:?}",
        first.failed,
        raised.limit,
        raised_after.as_secs_f64(),
        status_after.limit
    );

    // The center goes before its volume's directory.
    centers.delete(CENTER, &DeleteParams::default()).await?;
    wait_for(GC_LIMIT, "the media-node pod gone", || async {
        pods.get_opt(&node_pod).await.ok()?.is_none().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_calls_raise_the_trunk_limit_until_the_load_is_carried() -> Result<()> {
    let bin_dir = binary_dir()?;
    let (_, state_dir) = cluster_state().await?;
    let started = Instant::now();
    let (operator_image, node_image) = import_images(&state_dir, &bin_dir, TAG).await?;
    eprintln!(
        "imported {operator_image} and {node_image} in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let client = switchboard_tests::cluster().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, "e2e-trunks-op").await?;
    let cc_ns = TestNamespace::create(&client, "e2e-trunks-cc").await?;
    // The hostPath behind the recording volume: writable by the node's UID 65532.
    let volume_dir = tempfile::Builder::new()
        .prefix("switchboard-e2e-trunks.")
        .tempdir()?;
    std::os::unix::fs::chown(volume_dir.path(), Some(65532), Some(65532))?;

    let mut cleanup = Cleanup::default();
    let result = run(
        &client,
        &op_ns.name,
        &cc_ns.name,
        &mut cleanup,
        volume_dir.path(),
        &state_dir,
    )
    .await;
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let why = diagnose(&client, &[&op_ns.name, &cc_ns.name]).await;
            Err(e.context(format!("diagnostics:\n{why}")))
        }
    };
    // Namespaces first (their pods release the volume), then the cluster-scoped objects.
    let deleted_cc = cc_ns.delete().await;
    let deleted_op = op_ns.delete().await;
    let cleaned = clean_up(&client, &cleanup).await;
    result?;
    deleted_cc?;
    deleted_op?;
    cleaned
}
