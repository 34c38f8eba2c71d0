//! What the end-to-end tests on the real single-node cluster (`tests/cluster/up`) share: the
//! built binaries imaged into the cluster, the Helm chart rendered and applied (the operator
//! pod), pod and Service waits, diagnostics for a failed wait, clean-up of cluster-scoped
//! objects, SIPp runs from this machine into the cluster, and the media node's metrics.
//!
//! The e2e tests are separate test binaries that nextest runs at the same time: each one uses
//! its own image tag, chart release, namespaces and cluster-scoped names, so two operators
//! never watch the same namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Endpoints, Event, PersistentVolume, Pod, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::{TEST_FIELD_MANAGER, apply_yaml, repo_root, wait_for, yaml_documents};

/// How long the operator pod may take to become Ready after the chart is applied.
pub const OPERATOR_READY_LIMIT: Duration = Duration::from_secs(180);

/// The cluster's kubeconfig and its state directory (which holds the kubeconfig, the
/// containerd socket and the bridge name). Starting the cluster takes a while, so the script
/// runs off the async workers.
pub async fn cluster_state() -> Result<(PathBuf, PathBuf)> {
    let kubeconfig: PathBuf = tokio::task::spawn_blocking(crate::cluster_kubeconfig).await??;
    let state_dir = kubeconfig
        .parent()
        .ok_or_else(|| anyhow!("kubeconfig {} has no directory", kubeconfig.display()))?
        .to_path_buf();
    Ok((kubeconfig, state_dir))
}

/// Where cargo put the workspace binaries: the profile directory the running test binary
/// lives under (`<target>/<profile>/deps/<test>-<hash>`).
pub fn binary_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no grandparent directory", exe.display()))
}

/// Images the already built operator and media-node binaries into the cluster's containerd
/// as `switchboard-operator:<tag>` and `switchboard-media-node:<tag>`; returns the two image
/// references (operator, media node). Each test uses its own tag, so one test re-importing
/// never touches the image another test's pods start from.
pub async fn import_images(
    state_dir: &Path,
    bin_dir: &Path,
    tag: &str,
) -> Result<(String, String)> {
    let script = repo_root().join("tests/images/build");
    let output = tokio::process::Command::new(&script)
        .args(["--no-build", "--tag", tag, "--bin-dir"])
        .arg(bin_dir)
        .env("SWITCHBOARD_CLUSTER_DIR", state_dir)
        .output()
        .await
        .with_context(|| format!("cannot run {}", script.display()))?;
    ensure!(
        output.status.success(),
        "{} failed ({}):\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let refs: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match refs.as_slice() {
        [operator, node] => Ok((operator.to_string(), node.to_string())),
        _ => bail!(
            "{} printed {refs:?}, want two image references",
            script.display()
        ),
    }
}

/// The chart rendered (`tests/helm/render`) as release `release` in `namespace`, with both
/// images at `tag` (never pulled) and the operator watching only `watch`.
pub fn render_chart(release: &str, namespace: &str, watch: &str, tag: &str) -> Result<String> {
    let renderer = repo_root().join("tests/helm/render");
    let sets = [
        format!("image.repository=switchboard-operator,image.tag={tag},image.pullPolicy=Never"),
        format!("mediaNode.image.repository=switchboard-media-node,mediaNode.image.tag={tag}"),
        format!("watchNamespace={watch}"),
        "logLevel=info,switchboard_operator=debug".replace(',', "\\,"),
    ];
    let mut cmd = std::process::Command::new(&renderer);
    cmd.arg("--chart")
        .arg(repo_root().join("charts/switchboard"))
        .args(["--release", release, "--namespace", namespace]);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", renderer.display()))?;
    ensure!(
        out.status.success(),
        "rendering the chart failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).context("rendered chart is not UTF-8")
}

/// Renders the chart (see [`render_chart`]), records its cluster-scoped objects in `cleanup`
/// (only ClusterRoles and ClusterRoleBindings are expected), applies it and waits for the
/// operator pod to be Ready; returns that pod.
pub async fn install_operator(
    client: &Client,
    release: &str,
    namespace: &str,
    watch: &str,
    tag: &str,
    cleanup: &mut Cleanup,
) -> Result<Pod> {
    let rendered = render_chart(release, namespace, watch, tag)?;
    let docs = yaml_documents(&rendered)?;
    let cluster_scoped: Vec<(String, String)> = docs
        .iter()
        .filter(|d| d.pointer("/metadata/namespace").is_none())
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let kinds: BTreeSet<&str> = cluster_scoped.iter().map(|(k, _)| k.as_str()).collect();
    ensure!(
        kinds
            .iter()
            .all(|k| ["ClusterRole", "ClusterRoleBinding"].contains(k)),
        "unexpected cluster-scoped objects in the chart: {kinds:?}"
    );
    cleanup.cluster_scoped.extend(cluster_scoped);
    apply_all(client, &rendered, namespace)
        .await
        .context("applying the chart")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = ListParams::default().labels("app.kubernetes.io/component=operator");
    wait_for(
        OPERATOR_READY_LIMIT,
        "the operator pod to be Ready",
        || async {
            let list = pods.list(&selector).await.ok()?;
            list.items.into_iter().find(pod_ready)
        },
    )
    .await
}

/// Running, with the Ready condition true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
}

/// Has the container's process been started from the image at least once (running now, or
/// exited after it started)? A pod stuck on its image, its volumes or its security context
/// never gets this far.
pub fn container_started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                let now = c.state.as_ref();
                let last = c.last_state.as_ref();
                now.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    || last.is_some_and(|s| s.terminated.is_some())
            })
        })
}

/// Everything that helps to tell why a wait failed: each pod's status and the tail of its
/// logs, and the namespaces' Events.
pub async fn diagnose(client: &Client, namespaces: &[&str]) -> String {
    let mut out = String::new();
    for ns in namespaces {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        for pod in pods
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.as_ref().map(|s| {
                json!({
                    "phase": s.phase,
                    "conditions": s.conditions,
                    "containerStatuses": s.container_statuses,
                })
            });
            let _ = writeln!(
                out,
                "--- pod {ns}/{name}: {}",
                serde_json::to_string(&status).unwrap_or_default()
            );
            for previous in [false, true] {
                let lp = LogParams {
                    tail_lines: Some(40),
                    previous,
                    ..LogParams::default()
                };
                if let Ok(log) = pods.logs(&name, &lp).await
                    && !log.is_empty()
                {
                    let which = if previous { "previous" } else { "current" };
                    let _ = writeln!(out, "--- log of {ns}/{name} ({which}):\n{log}");
                }
            }
        }
        let events: Api<Event> = Api::namespaced(client.clone(), ns);
        for e in events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = writeln!(
                out,
                "--- event {ns}: {} {} {}: {}",
                e.type_.unwrap_or_default(),
                e.involved_object.name.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            );
        }
    }
    out
}

/// A static hostPath PersistentVolume reserved for one recording claim, since the cluster has
/// no provisioner.
pub fn recordings_volume(
    name: &str,
    class: &str,
    path: &Path,
    namespace: &str,
    claim: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"switchboard.dev/test": namespace}},
        "spec": {
            // Large enough for any example's claim (hostPath does not enforce it).
            "capacity": {"storage": "1Ti"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class,
            "hostPath": {"path": path.to_string_lossy(), "type": "Directory"},
            // Only this test's claim can bind it.
            "claimRef": {"namespace": namespace, "name": claim},
        },
    })
}

/// Creates [`recordings_volume`] and records it in `cleanup`.
pub async fn create_recordings_volume(
    client: &Client,
    cleanup: &mut Cleanup,
    name: &str,
    class: &str,
    path: &Path,
    namespace: &str,
    claim: &str,
) -> Result<()> {
    let pv = recordings_volume(name, class, path, namespace, claim);
    cleanup.volumes.push(name.to_string());
    Api::<PersistentVolume>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&pv),
        )
        .await
        .with_context(|| format!("creating PersistentVolume {name}"))?;
    Ok(())
}

/// Server-side applies every document of `yaml`; an error names every rejected one.
pub async fn apply_all(client: &Client, yaml: &str, namespace: &str) -> Result<()> {
    let applied = apply_yaml(client, yaml, namespace).await?;
    crate::ensure_all_applied(&applied)
}

/// The ClusterIP of Service `name`, once the Service has a ready endpoint. kube-proxy writes
/// its rules a moment after that (until then the kernel refuses a datagram with EPERM): the
/// first exchange through the address still needs retrying.
pub async fn service_ip_with_endpoint(
    client: &Client,
    namespace: &str,
    name: &str,
    limit: Duration,
) -> Result<IpAddr> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let ip = wait_for(
        limit,
        &format!("Service {name} with a clusterIP"),
        || async {
            services
                .get_opt(name)
                .await
                .ok()
                .flatten()?
                .spec?
                .cluster_ip
                .filter(|ip| !ip.is_empty() && ip != "None")
        },
    )
    .await?;
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("clusterIP {ip} of Service {name}"))?;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    wait_for(limit, &format!("an endpoint of Service {name}"), || async {
        let ep = endpoints.get_opt(name).await.ok().flatten()?;
        ep.subsets?
            .iter()
            .any(|s| s.addresses.as_ref().is_some_and(|a| !a.is_empty()))
            .then_some(())
    })
    .await?;
    Ok(ip)
}

/// The host's address on the cluster's pod bridge: where pods reach this machine directly,
/// and the source address a pod sees for what this machine sends to a ClusterIP from it.
pub fn bridge_address(state_dir: &Path) -> Result<IpAddr> {
    let bridge = std::fs::read_to_string(state_dir.join("host/bridge"))
        .context("the cluster's bridge name (host/bridge in its state directory)")?;
    let bridge = bridge.trim();
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", bridge])
        .output()
        .context("running ip addr")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("no IPv4 address on bridge {bridge}: {text}"))
}

/// A free UDP port on `ip`.
pub fn free_udp_port(ip: IpAddr) -> Result<u16> {
    Ok(std::net::UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// Cluster-scoped objects a test created, deleted by [`clean_up`] pass or fail.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// (kind, name): ClusterRoles, ClusterRoleBindings and ValidatingWebhookConfigurations of
    /// the chart.
    pub cluster_scoped: Vec<(String, String)>,
    /// PersistentVolumes.
    pub volumes: Vec<String>,
}

/// Deletes what `what` lists; objects already gone are fine.
pub async fn clean_up(client: &Client, what: &Cleanup) -> Result<()> {
    let dp = DeleteParams::default();
    let mut errors = Vec::new();
    let mut deletions = Vec::new();
    for (kind, name) in &what.cluster_scoped {
        let r = match kind.as_str() {
            "ClusterRole" => Api::<ClusterRole>::all(client.clone())
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(client.clone())
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "ValidatingWebhookConfiguration" => {
                Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .delete(name, &dp)
                    .await
                    .map(|_| ())
            }
            other => {
                errors.push(format!("no clean-up for cluster-scoped {other} {name}"));
                continue;
            }
        };
        deletions.push((format!("{kind} {name}"), r));
    }
    for name in &what.volumes {
        let r = Api::<PersistentVolume>::all(client.clone())
            .delete(name, &dp)
            .await
            .map(|_| ());
        deletions.push((format!("PersistentVolume {name}"), r));
    }
    for (what, r) in deletions {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => errors.push(format!("deleting {what}: {e}")),
        }
    }
    ensure!(errors.is_empty(), "clean-up failed:\n{}", errors.join("\n"));
    Ok(())
}

/// A SIPp run (Debian package sip-tester) of a scenario in `tests/sip/` against `target` over
/// UDP from one socket (`-t u1`), in a fresh working directory. SIPp stops itself after
/// `limit` (`-timeout`, an error); the test gives up waiting 30 s later.
#[derive(Debug, Clone)]
pub struct Sipp {
    target: SocketAddr,
    scenario: String,
    calls: u32,
    limit: Duration,
    args: Vec<String>,
}

/// Name of the statistics file SIPp writes in its working directory (`-trace_stat`).
const SIPP_STATS: &str = "stats.csv";

impl Sipp {
    /// One call of `scenario` within 30 s.
    pub fn new(target: SocketAddr, scenario: &str) -> Self {
        Self {
            target,
            scenario: scenario.to_string(),
            calls: 1,
            limit: Duration::from_secs(30),
            args: Vec::new(),
        }
    }

    /// How many calls SIPp places before it exits (`-m`).
    pub fn calls(mut self, calls: u32) -> Self {
        self.calls = calls;
        self
    }

    /// How long the whole run may take.
    pub fn limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// `-key name value`: a scenario keyword.
    pub fn key(self, name: &str, value: &str) -> Self {
        self.args(["-key", name, value])
    }

    /// More command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    pub async fn spawn(self) -> Result<SippRun> {
        let work = tempfile::tempdir()?;
        let child = tokio::process::Command::new("sipp")
            .arg(self.target.to_string())
            .arg("-sf")
            .arg(repo_root().join("tests/sip").join(&self.scenario))
            .args(["-t", "u1"])
            .arg("-m")
            .arg(self.calls.to_string())
            .arg("-timeout")
            .arg(format!("{}s", self.limit.as_secs().max(1)))
            .args(["-timeout_error", "-nostdin", "-trace_err"])
            .args(["-trace_stat", "-stf", SIPP_STATS])
            .args(&self.args)
            .current_dir(work.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start sipp (Debian package sip-tester)")?;
        Ok(SippRun {
            child,
            work,
            wait: self.limit + Duration::from_secs(30),
            what: format!(
                "sipp {} -m {} {} against {}/udp",
                self.scenario,
                self.calls,
                self.args.join(" "),
                self.target
            ),
        })
    }
}

/// A running SIPp process.
pub struct SippRun {
    child: tokio::process::Child,
    work: tempfile::TempDir,
    wait: Duration,
    what: String,
}

/// SIPp's cumulative call counts at the end of a run (`-trace_stat`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SippStats {
    /// Calls that reached the end of the scenario.
    pub successful: u64,
    /// Calls that failed, for any reason.
    pub failed: u64,
    /// The non-zero `Failed…` counters by reason (`TimeoutOnRecv`, `MaxUDPRetrans`, …).
    pub failed_by: BTreeMap<String, u64>,
    /// SIPp's error log (`-trace_err`: which message of which call timed out or was
    /// unexpected), empty when no call failed.
    pub errors: String,
}

impl SippRun {
    /// Waits (bounded) for SIPp, which must succeed (every call completed its scenario); an
    /// error carries everything it logged.
    pub async fn finish(mut self) -> Result<()> {
        let status = self.wait_exit().await?;
        if status.success() {
            return Ok(());
        }
        let output = self.output().await;
        bail!("{} failed with {status}:\n{output}", self.what)
    }

    /// Waits (bounded) until SIPp's UDP socket on `sip` is bound, so that a phone answering
    /// calls listens before anyone dials it (the kernel's socket table, `/proc/net/udp`).
    pub async fn listening(mut self, sip: SocketAddr) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !udp_bound(sip)? {
            if let Some(status) = self.child.try_wait()? {
                let output = self.output().await;
                bail!(
                    "{} exited with {status} before it listened:\n{output}",
                    self.what
                );
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{} did not bind {sip} within 30 s",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self)
    }

    /// Makes SIPp place no new call and exit once the calls up have ended (SIGUSR1, its soft
    /// exit): a load that lasts as long as something else does.
    pub fn stop_placing_calls(&self) -> Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("{} has exited already", self.what))?;
        let status = std::process::Command::new("kill")
            .args(["-USR1", &pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -USR1 {pid}: {status}");
        Ok(())
    }

    /// Waits (bounded) for SIPp and returns its call counts. A run in which some calls failed
    /// (exit status 1) or one ended by [`SippRun::stop_placing_calls`] (97) is an answer, not
    /// an error; SIPp failing as a whole is an error.
    pub async fn finish_with_stats(mut self) -> Result<SippStats> {
        let status = self.wait_exit().await?;
        if !matches!(status.code(), Some(0 | 1 | 97)) {
            let output = self.output().await;
            bail!("{} failed with {status}:\n{output}", self.what);
        }
        let path = self.work.path().join(SIPP_STATS);
        match std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|text| parse_sipp_stats(&text))
        {
            Ok(mut stats) => {
                if stats.failed > 0 {
                    stats.errors = self.error_log();
                }
                Ok(stats)
            }
            Err(e) => {
                let output = self.output().await;
                Err(e.context(format!("{}:\n{output}", self.what)))
            }
        }
    }

    async fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        match tokio::time::timeout(self.wait, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await.ok();
                let output = self.output().await;
                bail!(
                    "{} did not finish within {:?}:\n{output}",
                    self.what,
                    self.wait
                );
            }
        }
    }

    /// The text of SIPp's `-trace_err` files (`<scenario>_<pid>_errors.log`).
    fn error_log(&self) -> String {
        let Ok(entries) = std::fs::read_dir(self.work.path()) else {
            return String::new();
        };
        let mut log = String::new();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with("_errors.log")
                && let Ok(text) = std::fs::read_to_string(entry.path())
            {
                log.push_str(&text);
            }
        }
        log
    }

    /// What SIPp wrote to stderr and to its log files (the statistics file is summarised).
    async fn output(&mut self) -> String {
        let mut output = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt as _;
            let _ = err.read_to_string(&mut output).await;
        }
        let Ok(entries) = std::fs::read_dir(self.work.path()) else {
            return output;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if entry.file_name() == SIPP_STATS {
                if let Ok(stats) = parse_sipp_stats(&text) {
                    let _ = write!(output, "\n--- call counts: {stats:?}");
                }
            } else {
                let _ = write!(output, "\n--- {}\n{text}", entry.path().display());
            }
        }
        output
    }
}

/// Whether a UDP socket is bound to `addr` (or to its port on every address), from
/// `/proc/net/udp`: `local_address` is `HEXIP:HEXPORT`, the IPv4 address in the kernel's byte
/// order (little-endian here).
fn udp_bound(addr: SocketAddr) -> Result<bool> {
    let IpAddr::V4(ip) = addr.ip() else {
        bail!("{addr}: only IPv4 is looked up");
    };
    let port = addr.port();
    let local = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    let any = format!("00000000:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/udp").context("reading /proc/net/udp")?;
    Ok(table.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(1)
            .is_some_and(|address| address == local || address == any)
    }))
}

/// The last line of a SIPp `-trace_stat` file, against its header line (`;`-separated).
fn parse_sipp_stats(text: &str) -> Result<SippStats> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| anyhow!("empty SIPp statistics"))?;
    let last = lines
        .next_back()
        .ok_or_else(|| anyhow!("SIPp statistics without a line of values"))?;
    let mut stats = SippStats::default();
    for (name, value) in header.split(';').zip(last.split(';')) {
        // Cumulative counters end in (C), the last period's in (P).
        let Some(name) = name.trim().strip_suffix("(C)") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        match name {
            "SuccessfulCall" => stats.successful = value,
            "FailedCall" => stats.failed = value,
            _ => {
                if let Some(reason) = name.strip_prefix("Failed")
                    && value > 0
                {
                    stats.failed_by.insert(reason.to_string(), value);
                }
            }
        }
    }
    ensure!(
        header.contains("SuccessfulCall(C)") && header.contains("FailedCall(C)"),
        "SIPp statistics without call counts: {header}"
    );
    Ok(stats)
}

/// The Prometheus text a media node serves on `addr` (`GET /metrics`, plain HTTP/1.0).
pub async fn scrape_metrics(addr: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: media-node\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow!("no answer from http://{addr}/metrics within 10 s"))?
        .with_context(|| format!("GET http://{addr}/metrics"))?;
    let text = String::from_utf8(response).context("metrics are not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer from {addr}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "GET http://{addr}/metrics: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}

/// The value of the sample `name{labels}` in Prometheus text, `labels` given exactly as
/// written (`trunk="carrier"`; empty for a metric without labels).
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipp_statistics_give_the_last_cumulative_counts() {
        let text = "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);\
                    FailedTimeoutOnRecv(C);FailedMaxUDPRetrans(C);\n\
                    x;1;1;0;0;0;0;\n\
                    x;3;40;2;12;12;0;\n";
        let stats = parse_sipp_stats(text).expect("stats");
        assert_eq!(stats.successful, 40);
        assert_eq!(stats.failed, 12);
        assert_eq!(
            stats.failed_by,
            BTreeMap::from([("TimeoutOnRecv".to_string(), 12)])
        );
        assert!(parse_sipp_stats("StartTime;\n").is_err());
    }

    #[test]
    fn metric_values_are_found_by_name_and_labels() {
        let text = "# HELP switchboard_trunk_channel_limit x\n\
                    switchboard_trunk_channel_limit{trunk=\"carrier\"} 24\n\
                    switchboard_trunk_calls_blocked_total{trunk=\"carrier\"} 31\n\
                    switchboard_trunk_calls_blocked_total{trunk=\"other\"} 2\n";
        assert_eq!(
            metric_value(
                text,
                "switchboard_trunk_calls_blocked_total",
                "trunk=\"carrier\""
            ),
            Some(31.0)
        );
        assert_eq!(
            metric_value(text, "switchboard_trunk_channel_limit", "trunk=\"carrier\""),
            Some(24.0)
        );
        assert_eq!(
            metric_value(text, "switchboard_trunk_channels_busy", "trunk=\"carrier\""),
            None
        );
    }
}
