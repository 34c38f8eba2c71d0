//! A media node run as a real process on loopback, from a node config, for tests that need a
//! node without a kubelet (the control plane has none): the operator's pushes, measured config
//! latency. Every listener is on 127.0.0.1 port 0; the node prints the addresses it got. The
//! process is killed when the handle is dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use switchboard_crds::callcenter::HaMode;
use switchboard_crds::{CallCenter, Queue, Seat};
use switchboard_operator::builders::selector_labels;
use switchboard_operator::builders::stateful_set::{CONTAINER_NAME, CONTROL_PORT_NAME};
use switchboard_proto::node_config::build_node_config;

use crate::repo_root;

/// Upper bound for the node to print its listener addresses.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// The `media-node` binary of this workspace. The README test command builds every binary
/// before the tests run; a missing binary fails the test with that instruction.
pub fn media_node_binary() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                repo_root().join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| repo_root().join("target"));
    let binary = target.join("debug/media-node");
    if !binary.is_file() {
        bail!(
            "{} is missing: build it first (`cargo build --workspace --bins`, as tests/run does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A running media node.
pub struct NodeProcess {
    child: Child,
    /// The gRPC control API.
    pub control: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: SocketAddr,
    /// SIP over UDP.
    pub sip_udp: SocketAddr,
    stderr: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts a node on `config_yaml` (a `node-config.yaml`) as pod `pod_name`.
    pub fn start(config_yaml: &str, pod_name: &str) -> Result<Self> {
        Self::start_with_env(config_yaml, pod_name, &[])
    }

    /// As [`NodeProcess::start`], with more environment (a HotStandby node's namespace,
    /// Lease name and kubeconfig).
    pub fn start_with_env(config_yaml: &str, pod_name: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for the node")?;
        let file = dir.path().join("node-config.yaml");
        std::fs::write(&file, config_yaml).context("writing the node config")?;
        // SIP and media on the pod's address (`POD_IP` in `env`, else 127.0.0.1).
        let address = env
            .iter()
            .find(|(name, _)| *name == "POD_IP")
            .map_or("127.0.0.1", |(_, value)| *value);
        let mut child = Command::new(media_node_binary()?)
            .arg("--config")
            .arg(&file)
            .args(["--sip-listen", address, "--sip-port", "0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--control-listen", "127.0.0.1:0"])
            .env("POD_NAME", pod_name)
            .env("POD_IP", address)
            .env("SWITCHBOARD_RECORDINGS_DIR", dir.path())
            // The prompts a pod's image carries: music on hold, announcements.
            .env(
                "SWITCHBOARD_PROMPTS_DIR",
                crate::repo_root().join("prompts"),
            )
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting media-node")?;
        // Readers on threads, so a silent child cannot block the test past its limit.
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().context("the node's stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().context("the node's stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut node = NodeProcess {
            child,
            control: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            sip_udp: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: err_rx,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_LIMIT;
        let (mut control, mut metrics, mut sip_udp) = (None, None, None);
        while control.is_none() || metrics.is_none() || sip_udp.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match out_rx.recv_timeout(left) {
                Ok(l) => l,
                Err(e) => bail!(
                    "no listener addresses from media-node ({e}):\n{}",
                    node.log()
                ),
            };
            if let Some(a) = line.strip_prefix("media-node: control API (gRPC, h2c) on ") {
                control = Some(a.parse().context("the control address")?);
            } else if let Some(a) =
                line.strip_prefix("media-node: metrics, /healthz and /readyz on http://")
            {
                metrics = Some(a.parse().context("the metrics address")?);
            } else if line.starts_with("media-node: SIP for domain") {
                let udp = line
                    .split(" on udp ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .context("the SIP UDP address")?;
                sip_udp = Some(udp.parse().context("the SIP UDP address")?);
            }
        }
        node.control = control.context("control address")?;
        node.metrics = metrics.context("metrics address")?;
        node.sip_udp = sip_udp.context("SIP UDP address")?;
        Ok(node)
    }

    /// What the node logged so far, for failure messages.
    pub fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// The process id (to stop it on purpose).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the node writes its recordings (and CDRs).
    pub fn recordings(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Stops the node (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stand-in for a pod of CallCenter `center`'s StatefulSet on a control plane without a
/// kubelet: the selector labels, the node container with its control port, and a status that
/// says it runs on 127.0.0.1 (where a [`NodeProcess`] listens on `control_port`).
pub async fn create_node_pod(
    client: &Client,
    namespace: &str,
    center: &str,
    pod_name: &str,
    control_port: u16,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "labels": selector_labels(center)},
        // The center's own ServiceAccount (there is no controller-manager to make `default`),
        // without a token (nor a token controller to make one).
        "spec": {
            "serviceAccountName": format!("{center}-media"),
            "automountServiceAccountToken": false,
            "containers": [{
                "name": CONTAINER_NAME,
                "image": "switchboard-media-node:test",
                "ports": [{"name": CONTROL_PORT_NAME, "containerPort": control_port, "protocol": "TCP"}],
            }]
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {pod_name}"))?;
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
    }});
    pods.patch_status(pod_name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("writing the status of pod {pod_name}"))?;
    Ok(())
}

/// `examples/minimal.yaml` as a HotStandby center's node config in `namespace` (Lease 6 s,
/// renewed every 2 s), after `tweak` changed the center and its queues.
pub fn hot_standby_config(
    namespace: &str,
    tweak: impl FnOnce(&mut CallCenter, &mut [Queue]),
) -> Result<String> {
    let text = std::fs::read_to_string(repo_root().join("examples/minimal.yaml"))?;
    let mut center: Option<CallCenter> = None;
    let (mut queues, mut seats) = (Vec::<Queue>::new(), Vec::<Seat>::new());
    let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        // As the API server holds them: in the test's namespace.
        value["metadata"]["namespace"] = namespace.into();
        match value["kind"].as_str() {
            Some("CallCenter") => center = Some(serde_yaml::from_value(value)?),
            Some("Queue") => queues.push(serde_yaml::from_value(value)?),
            Some("Seat") => seats.push(serde_yaml::from_value(value)?),
            Some("Secret") => {
                let name = value["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                secrets.insert(name, serde_yaml::from_value(value["stringData"].clone())?);
            }
            other => bail!("unexpected kind {other:?} in examples/minimal.yaml"),
        }
    }
    let mut center = center.context("no CallCenter in examples/minimal.yaml")?;
    center.spec.high_availability.mode = HaMode::HotStandby;
    center.spec.high_availability.lease_duration_seconds = 6;
    center.spec.high_availability.renew_interval_seconds = 2;
    tweak(&mut center, &mut queues);
    let (config, _) = build_node_config(&center, &queues, &seats, &secrets, 1)?;
    Ok(config.to_yaml()?)
}

/// One sample of a node's `/metrics`: the value of `series` (name and labels as exported).
pub async fn sample(node: &NodeProcess, series: &str) -> Option<f64> {
    let text = crate::cluster::scrape_metrics(node.metrics).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the node reports `role` (active, standby).
pub async fn role_is(node: &NodeProcess, role: &str) -> bool {
    sample(node, &format!("switchboard_node_role{{role=\"{role}\"}}")).await == Some(1.0)
}

/// Lease of the `minimal` center's HotStandby pair.
pub const MINIMAL_LEASE: &str = "minimal-media-active";

/// Gets `namespace` ready for the `minimal` center's HotStandby nodes: the center's
/// ServiceAccount, which the stand-in pods run as (the operator would create it).
pub async fn prepare_hot_standby(client: &Client, namespace: &str) -> Result<()> {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), namespace);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "minimal-media"}}))?,
        )
        .await
        .context("creating the center's ServiceAccount")?;
    Ok(())
}

/// Starts pod `pod` of the `minimal` HotStandby center in `namespace` (after
/// [`prepare_hot_standby`]): a node process on `config_yaml` electing through the control
/// plane's Lease, and its stand-in pod (replaced, when one is left from an earlier process).
pub async fn start_hot_standby_node(
    client: &Client,
    namespace: &str,
    config_yaml: &str,
    pod: &str,
) -> Result<NodeProcess> {
    let kubeconfig = crate::control_plane_kubeconfig()?.display().to_string();
    // Each node its own address for SIP and media, as pods have their own IPs: RTP that
    // phones still send to a dead node's ports must not reach the other node's sockets just
    // because both share 127.0.0.1 (the control API and metrics stay on 127.0.0.1, where the
    // stand-in pod says the node is).
    let media = if pod.ends_with("-1") {
        "127.0.0.2"
    } else {
        "127.0.0.1"
    };
    let env = [
        ("POD_NAMESPACE", namespace),
        ("SWITCHBOARD_LEASE_NAME", MINIMAL_LEASE),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("POD_IP", media),
    ];
    let node = NodeProcess::start_with_env(config_yaml, pod, &env)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if pods.get_opt(pod).await?.is_some() {
        pods.delete(pod, &kube::api::DeleteParams::default().grace_period(0))
            .await?;
        crate::wait_for(STARTUP_LIMIT, "the old stand-in pod gone", || async {
            matches!(pods.get_opt(pod).await, Ok(None)).then_some(())
        })
        .await?;
    }
    create_node_pod(client, namespace, "minimal", pod, node.control.port()).await?;
    Ok(node)
}

/// Starts the `minimal` center's HotStandby pair in `namespace` (after
/// [`prepare_hot_standby`]): pod 0 until it is active, then pod 1 until it is a standby in
/// sync with it. Returns (active, standby).
pub async fn start_hot_standby_pair(
    client: &Client,
    namespace: &str,
    config_yaml: &str,
) -> Result<(NodeProcess, NodeProcess)> {
    let limit = Duration::from_secs(60);
    let a = start_hot_standby_node(client, namespace, config_yaml, "minimal-media-0").await?;
    crate::wait_for(limit, "node A active", || async {
        role_is(&a, "active").await.then_some(())
    })
    .await
    .with_context(|| a.log())?;
    let b = start_hot_standby_node(client, namespace, config_yaml, "minimal-media-1").await?;
    crate::wait_for(limit, "node B a ready standby", || async {
        (role_is(&b, "standby").await && sample(&b, "switchboard_standby_ready").await == Some(1.0))
            .then_some(())
    })
    .await
    .with_context(|| b.log())?;
    Ok((a, b))
}

/// Seat 1001's phone of the `minimal` center: SIPp on 127.0.0.1:`phone` (the port its
/// registration names) running `scenario` against the node at `node`, with its credentials.
pub fn minimal_seat_1001(node: SocketAddr, phone: &str, scenario: &str) -> crate::cluster::Sipp {
    crate::cluster::Sipp::new(node, scenario)
        .key("domain", "localhost")
        .key("ext", "1001")
        .args(["-au", "1001", "-ap", "practice-1001"])
        .args(["-i", "127.0.0.1", "-p", phone])
}

/// Seat 1002 of the `minimal` center calling `dialed` through the node at `node` with
/// `scenario`, playing A-law audio from SIPp's media port `media` on 127.0.0.1.
pub fn minimal_seat_1002_calls(
    node: SocketAddr,
    scenario: &str,
    dialed: &str,
    media: &str,
) -> crate::cluster::Sipp {
    crate::cluster::Sipp::new(node, scenario)
        .key("domain", "localhost")
        .key("ext", "1002")
        .key("pcap", "/usr/share/sip-tester/g711a.pcap")
        .args(["-au", "1002", "-ap", "practice-1002", "-s", dialed])
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp", media])
}
