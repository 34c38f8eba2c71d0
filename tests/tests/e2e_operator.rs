//! End to end on the real single-node cluster (`tests/cluster/up`): the operator and media-node
//! binaries become images (`tests/images/build --no-build`), the rendered Helm chart installs
//! the operator, a CallCenter from `examples/minimal.yaml` becomes a running media-node pod
//! with its recording volume, and deleting the CallCenter garbage-collects what it owned.
//!
//! Needs the workspace binaries built first (`cargo build --workspace --bins`, as `tests/run`
//! does): cargo cannot run inside `cargo test`, whose build-directory lock it would wait for.
//!
//! Isolation: the release lives in one fresh namespace, the CallCenter in a second one that
//! the operator is told to watch (`watchNamespace`), so this operator never touches other
//! tests' objects. Cluster-scoped objects (ClusterRole, ClusterRoleBinding, the hostPath
//! PersistentVolume) carry unique names and are deleted at the end, pass or fail.
//!
//! The media node must become Ready (it runs from the operator's node-config.yaml and serves
//! `/readyz` on 9090), and seat 1001 of the example must register with SIPp (digest
//! authentication, `tests/sip/register.xml`) over UDP through the SIP Service's ClusterIP, from
//! this machine into the cluster's in-machine service network. Then seat 1002 registers and
//! answers from this machine's address on the pod bridge, and seat 1001 calls it through the
//! ClusterIP with audio both ways; the CallCenter's status counts the registered seat. Then
//! `examples/campus.yaml` (HotStandby): both nodes Ready, exactly one holds the Lease and is
//! the SIP Service's only endpoint, a call between two campus seats through the ClusterIP, the
//! status names the active and the standby node, and `kubectl get queues` shows its columns.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, PersistentVolume, PersistentVolumeClaim, Pod, Service,
    ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use switchboard_crds::CallCenter;
use switchboard_operator::builders::ChildNames;
use switchboard_tests::{
    TEST_FIELD_MANAGER, TestNamespace, apply_yaml, install_crds, names, repo_root, wait_for,
    yaml_documents,
};

/// The CallCenter of `examples/minimal.yaml`.
const CENTER: &str = "minimal";
/// Its SIP port (the CRD's default; minimal.yaml does not set one).
const SIP_PORT: u16 = 5060;
/// Image tag `tests/images/build` gives both images.
const TAG: &str = "e2e";
const OPERATOR_READY_LIMIT: Duration = Duration::from_secs(180);
const NODE_LIMIT: Duration = Duration::from_secs(240);
const GC_LIMIT: Duration = Duration::from_secs(120);
const SIPP_LIMIT: Duration = Duration::from_secs(60);

/// Where cargo put the workspace binaries: the profile directory this test binary runs from
/// (`<target>/<profile>/deps/e2e_operator-<hash>`).
fn binary_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no grandparent directory", exe.display()))
}

/// Images the already built binaries into the cluster's containerd; returns
/// (operator, media node) image references.
async fn import_images(state_dir: &Path, bin_dir: &Path) -> Result<(String, String)> {
    let script = repo_root().join("tests/images/build");
    let output = tokio::process::Command::new(&script)
        .args(["--no-build", "--tag", TAG, "--bin-dir"])
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

fn render_chart(release: &str, namespace: &str, watch: &str) -> Result<String> {
    let renderer = repo_root().join("tests/helm/render");
    let sets = [
        format!("image.repository=switchboard-operator,image.tag={TAG},image.pullPolicy=Never"),
        format!("mediaNode.image.repository=switchboard-media-node,mediaNode.image.tag={TAG}"),
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

fn pod_ready(pod: &Pod) -> bool {
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
fn container_started(pod: &Pod) -> bool {
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

/// Everything that helps to tell why a wait failed.
async fn diagnose(client: &Client, namespaces: &[&str]) -> String {
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

/// A static hostPath PersistentVolume reserved for the recording claim of node 0, since the
/// cluster has no provisioner.
fn recordings_volume(name: &str, class: &str, path: &Path, namespace: &str, claim: &str) -> Value {
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

/// `examples/minimal.yaml` with the recordings on `class`.
fn minimal_example(class: &str) -> Result<String> {
    example("minimal.yaml", CENTER, class)
}

/// An example file, checked to hold CallCenter `center`, with its recordings on `class`.
fn example(file: &str, center: &str, class: &str) -> Result<String> {
    let path = repo_root().join("examples").join(file);
    let yaml =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::new();
    let mut found = false;
    for mut doc in yaml_documents(&yaml)? {
        if doc["kind"] == json!("CallCenter") {
            ensure!(
                doc["metadata"]["name"] == json!(center),
                "{path:?}: CallCenter is not {center}"
            );
            doc["spec"]["recording"]["storageClassName"] = json!(class);
            found = true;
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    ensure!(found, "{} has no CallCenter", path.display());
    Ok(out)
}

async fn apply_all(client: &Client, yaml: &str, namespace: &str) -> Result<()> {
    let applied = apply_yaml(client, yaml, namespace).await?;
    let rejected: Vec<String> = applied
        .iter()
        .filter_map(|a| {
            a.result
                .as_ref()
                .err()
                .map(|e| format!("{} {}: {e}", a.kind, a.name))
        })
        .collect();
    ensure!(
        rejected.is_empty(),
        "the API server rejected:\n{}",
        rejected.join("\n")
    );
    Ok(())
}

/// SIPp REGISTER of seat 1001 (digest auth, then un-register) against `target` over UDP.
async fn sipp_register(target: IpAddr) -> Result<()> {
    sipp::<&str>(target, "localhost", "register.xml", &[])
        .await?
        .finish()
        .await
}

/// A SIPp process playing `scenario` against `target` over UDP.
struct SippRun {
    child: tokio::process::Child,
    work: tempfile::TempDir,
    what: String,
}

async fn sipp<S: AsRef<str>>(
    target: IpAddr,
    domain: &str,
    scenario: &str,
    extra: &[S],
) -> Result<SippRun> {
    let extra: Vec<&str> = extra.iter().map(AsRef::as_ref).collect();
    let work = tempfile::tempdir()?;
    let child = tokio::process::Command::new("sipp")
        .arg(format!("{target}:{SIP_PORT}"))
        .arg("-sf")
        .arg(repo_root().join("tests/sip").join(scenario))
        .args(["-t", "u1", "-key", "domain", domain])
        .args(["-key", "pcap", "/usr/share/sip-tester/g711a.pcap"])
        .args(["-m", "1", "-timeout", "30s", "-timeout_error"])
        .args(["-nostdin", "-trace_err"])
        .args(&extra)
        .current_dir(work.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start sipp (Debian package sip-tester)")?;
    Ok(SippRun {
        child,
        work,
        what: format!(
            "sipp {scenario} {} against {target}:{SIP_PORT}/udp",
            extra.join(" ")
        ),
    })
}

impl SippRun {
    /// Waits (bounded) for SIPp; an error carries everything it logged.
    async fn finish(mut self) -> Result<()> {
        let status = match tokio::time::timeout(SIPP_LIMIT, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.child.kill().await.ok();
                bail!("{} did not finish within {SIPP_LIMIT:?}", self.what);
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut output = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt as _;
            let _ = err.read_to_string(&mut output).await;
        }
        for entry in std::fs::read_dir(self.work.path())?.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                let _ = write!(output, "\n--- {}\n{text}", entry.path().display());
            }
        }
        bail!("{} failed with {status}:\n{output}", self.what)
    }
}

/// The host's address on the cluster's pod bridge: where pods reach this machine directly,
/// so the media node can send SIP and RTP to SIPp seats running here.
fn bridge_address(state_dir: &Path) -> Result<IpAddr> {
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
fn free_udp_port(ip: IpAddr) -> Result<u16> {
    Ok(std::net::UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// A seat: extension and password.
struct SeatLogin<'a> {
    extension: &'a str,
    password: &'a str,
}

/// `callee` registers through the ClusterIP from this machine's bridge address and answers;
/// `caller` calls it through the ClusterIP, plays audio for 3 s and hangs up. Both sides must
/// complete their scenarios: the call went through the media node in its pod.
async fn call_through_the_cluster(
    sip: IpAddr,
    host: IpAddr,
    domain: &str,
    caller: &SeatLogin<'_>,
    callee: &SeatLogin<'_>,
) -> Result<()> {
    let ip = host.to_string();
    let callee_port = free_udp_port(host)?.to_string();
    let callee_media = free_udp_port(host)?.to_string();
    let caller_media = free_udp_port(host)?.to_string();
    let login = |seat: &SeatLogin<'_>| {
        [
            "-key".to_string(),
            "ext".to_string(),
            seat.extension.to_string(),
            "-au".to_string(),
            seat.extension.to_string(),
            "-ap".to_string(),
            seat.password.to_string(),
        ]
    };
    let (callee_login, caller_login) = (login(callee), login(caller));
    let with = |login: &[String; 7], more: &[&str]| -> Vec<String> {
        login
            .iter()
            .cloned()
            .chain(more.iter().map(ToString::to_string))
            .collect()
    };
    let register = with(&callee_login, &["-i", &ip, "-p", &callee_port]);
    sipp(sip, domain, "seat-register.xml", &register)
        .await?
        .finish()
        .await
        .with_context(|| format!("seat {} registering", callee.extension))?;
    let answer = with(
        &callee_login,
        &[
            "-i",
            &ip,
            "-p",
            &callee_port,
            "-mi",
            &ip,
            "-mp",
            &callee_media,
            "-rtp_echo",
        ],
    );
    let answering = sipp(sip, domain, "seat-uas-answer.xml", &answer).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let call = with(
        &caller_login,
        &[
            "-i",
            &ip,
            "-s",
            callee.extension,
            "-mi",
            &ip,
            "-mp",
            &caller_media,
        ],
    );
    let calling = sipp(sip, domain, "seat-uac-bye.xml", &call).await?;
    calling
        .finish()
        .await
        .with_context(|| format!("seat {} calling {}", caller.extension, callee.extension))?;
    answering
        .finish()
        .await
        .with_context(|| format!("seat {} answering", callee.extension))?;
    Ok(())
}

/// The children of the CallCenter this test checks, as (kind, name).
fn children(names: &ChildNames) -> Vec<(&'static str, String)> {
    vec![
        ("StatefulSet", names.stateful_set.clone()),
        ("Service", names.sip_service.clone()),
        ("Service", names.headless_service.clone()),
        ("Service", names.metrics_service.clone()),
        ("ConfigMap", names.config_map.clone()),
        ("ServiceAccount", names.service_account.clone()),
        ("Role", names.role.clone()),
        ("RoleBinding", names.role_binding.clone()),
    ]
}

/// Which of `children` exist in `namespace`.
async fn children_present(
    client: &Client,
    namespace: &str,
    children: &[(&'static str, String)],
) -> Result<Vec<String>> {
    let mut present = Vec::new();
    for (kind, name) in children {
        let c = client.clone();
        let found = match *kind {
            "StatefulSet" => Api::<StatefulSet>::namespaced(c, namespace)
                .get_opt(name)
                .await?
                .is_some(),
            "Service" => Api::<Service>::namespaced(c, namespace)
                .get_opt(name)
                .await?
                .is_some(),
            "ConfigMap" => Api::<ConfigMap>::namespaced(c, namespace)
                .get_opt(name)
                .await?
                .is_some(),
            "ServiceAccount" => Api::<ServiceAccount>::namespaced(c, namespace)
                .get_opt(name)
                .await?
                .is_some(),
            "Role" => Api::<Role>::namespaced(c, namespace)
                .get_opt(name)
                .await?
                .is_some(),
            "RoleBinding" => Api::<RoleBinding>::namespaced(c, namespace)
                .get_opt(name)
                .await?
                .is_some(),
            other => bail!("no lookup for {other}"),
        };
        if found {
            present.push(format!("{kind} {name}"));
        }
    }
    Ok(present)
}

struct Cleanup {
    cluster_scoped: Vec<(String, String)>,
    volumes: Vec<String>,
}

async fn clean_up(client: &Client, what: &Cleanup) -> Result<()> {
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

async fn run(
    client: &Client,
    op_ns: &str,
    cc_ns: &str,
    cleanup: &mut Cleanup,
    volume_dir: &Path,
    state_dir: &Path,
) -> Result<()> {
    let names = ChildNames::new(CENTER);

    // The operator, from the rendered chart.
    let release = names::unique("sbe2e");
    let rendered = render_chart(&release, op_ns, cc_ns)?;
    let docs = yaml_documents(&rendered)?;
    cleanup.cluster_scoped = docs
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
    let kinds: BTreeSet<&str> = cleanup
        .cluster_scoped
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    ensure!(
        kinds
            .iter()
            .all(|k| ["ClusterRole", "ClusterRoleBinding"].contains(k)),
        "unexpected cluster-scoped objects in the chart: {kinds:?}"
    );
    let started = Instant::now();
    apply_all(client, &rendered, op_ns)
        .await
        .context("applying the chart")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), op_ns);
    let selector = ListParams::default().labels("app.kubernetes.io/component=operator");
    let operator = wait_for(
        OPERATOR_READY_LIMIT,
        "the operator pod to be Ready",
        || async {
            let list = pods.list(&selector).await.ok()?;
            list.items.into_iter().find(pod_ready)
        },
    )
    .await?;
    eprintln!(
        "operator pod {} Ready {:.1}s after the chart was applied",
        operator.metadata.name.as_deref().unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );
    // It runs the chart's image as the chart's non-root user.
    let spec = operator
        .spec
        .as_ref()
        .ok_or_else(|| anyhow!("operator pod without spec"))?;
    ensure!(
        spec.containers.first().and_then(|c| c.image.as_deref())
            == Some(&format!("switchboard-operator:{TAG}")[..]),
        "operator image {:?}",
        spec.containers.first().and_then(|c| c.image.clone())
    );

    // Recording storage: one static volume for node 0, on a class of this test.
    let class = names::unique("sb-e2e-recordings");
    let claim = format!("recordings-{}-0", names.stateful_set);
    let pv_name = names::unique("sb-e2e-rec");
    let pv = recordings_volume(&pv_name, &class, volume_dir, cc_ns, &claim);
    cleanup.volumes.push(pv_name.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    pvs.patch(
        &pv_name,
        &PatchParams::apply(TEST_FIELD_MANAGER).force(),
        &Patch::Apply(&pv),
    )
    .await
    .with_context(|| format!("creating PersistentVolume {pv_name}"))?;

    // The call center.
    let started = Instant::now();
    apply_all(client, &minimal_example(&class)?, cc_ns)
        .await
        .context("applying examples/minimal.yaml")?;

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), cc_ns);
    let set = wait_for(NODE_LIMIT, "the media-node StatefulSet", || async {
        sets.get_opt(&names.stateful_set).await.ok().flatten()
    })
    .await?;
    let container = set
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .ok_or_else(|| anyhow!("StatefulSet without a container"))?;
    // The chart's mediaNode.image reached the operator (SWITCHBOARD_MEDIA_NODE_IMAGE).
    ensure!(
        container.image.as_deref() == Some(&format!("switchboard-media-node:{TAG}")[..]),
        "media-node image {:?}, want the chart's mediaNode.image",
        container.image
    );

    let node_pod = format!("{}-0", names.stateful_set);
    let node_pods: Api<Pod> = Api::namespaced(client.clone(), cc_ns);
    wait_for(NODE_LIMIT, "the media-node container to start", || async {
        let pod = node_pods.get_opt(&node_pod).await.ok().flatten()?;
        container_started(&pod).then_some(())
    })
    .await?;
    eprintln!(
        "media-node container of {node_pod} started {:.1}s after the CallCenter was applied",
        started.elapsed().as_secs_f64()
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), cc_ns);
    let bound = claims
        .get(&claim)
        .await
        .with_context(|| format!("claim {claim}"))?;
    ensure!(
        bound.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            && bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(&pv_name[..]),
        "claim {claim} is not bound to {pv_name}: {:?}",
        bound.status
    );

    // The CallCenter's status.
    let centers: Api<CallCenter> = Api::namespaced(client.clone(), cc_ns);
    wait_for(
        NODE_LIMIT,
        "CallCenter status with configGeneration and Ready/Progressing conditions",
        || async {
            let status = centers.get(CENTER).await.ok()?.status?;
            let generation = status.config_generation?;
            let types: BTreeSet<String> =
                status.conditions.iter().map(|c| c.type_.clone()).collect();
            (generation >= 1 && types.contains("Ready") && types.contains("Progressing"))
                .then_some(())
        },
    )
    .await?;

    // The media node serving calls.
    wait_for(NODE_LIMIT, "the media-node pod to be Ready", || async {
        let pod = node_pods.get_opt(&node_pod).await.ok().flatten()?;
        pod_ready(&pod).then_some(())
    })
    .await?;
    eprintln!(
        "media-node pod {node_pod} Ready {:.1}s after the CallCenter was applied",
        started.elapsed().as_secs_f64()
    );
    let services: Api<Service> = Api::namespaced(client.clone(), cc_ns);
    let sip = services.get(&names.sip_service).await?;
    let ip: IpAddr = sip
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .ok_or_else(|| anyhow!("SIP Service without a clusterIP"))?
        .parse()?;
    // The Service's endpoint first, then kube-proxy writes its rules a moment later
    // (until then the kernel refuses the datagram with EPERM): retry whole scenarios
    // until a deadline.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), cc_ns);
    wait_for(NODE_LIMIT, "the SIP Service's endpoint", || async {
        let ep = endpoints.get_opt(&names.sip_service).await.ok().flatten()?;
        ep.subsets?
            .iter()
            .any(|s| s.addresses.as_ref().is_some_and(|a| !a.is_empty()))
            .then_some(())
    })
    .await?;
    let deadline = Instant::now() + SIPP_LIMIT * 2;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sipp_register(ip).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "SIPp REGISTER through the SIP Service's ClusterIP, {attempts} attempt(s)"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    eprintln!(
        "SIPp REGISTER of seat 1001 via {ip}:{SIP_PORT}/udp succeeded after {attempts} attempt(s)"
    );
    let host = bridge_address(state_dir)?;
    call_through_the_cluster(
        ip,
        host,
        "localhost",
        &SeatLogin {
            extension: "1001",
            password: "practice-1001",
        },
        &SeatLogin {
            extension: "1002",
            password: "practice-1002",
        },
    )
    .await?;
    eprintln!("a call from seat 1001 to seat 1002 through {ip}:{SIP_PORT}/udp (SIPp on {host})");
    // The node's live state reaches the CallCenter: seat 1002 stays registered.
    wait_for(
        NODE_LIMIT,
        "seat 1002 registered in the CallCenter's status",
        || async {
            let status = centers.get(CENTER).await.ok()?.status?;
            (status.seats_registered >= 1).then_some(())
        },
    )
    .await?;

    // Garbage collection of everything the CallCenter owned: first every child is there...
    let all = children(&names);
    let present = children_present(client, cc_ns, &all).await?;
    ensure!(
        present.len() == all.len(),
        "before deleting the CallCenter only {present:?} of {all:?} exist"
    );
    centers
        .delete(CENTER, &DeleteParams::default())
        .await
        .context("deleting the CallCenter")?;
    // ... then none.
    let started = Instant::now();
    let left = std::cell::RefCell::new(Vec::new());
    let waited = wait_for(
        GC_LIMIT,
        "the CallCenter's children to be garbage-collected",
        || async {
            let now = children_present(client, cc_ns, &all).await.ok()?;
            let done = now.is_empty();
            *left.borrow_mut() = now;
            done.then_some(())
        },
    )
    .await;
    waited.with_context(|| format!("still there: {:?}", left.borrow()))?;
    eprintln!(
        "children garbage-collected {:.1}s after the CallCenter was deleted",
        started.elapsed().as_secs_f64()
    );

    campus(client, cc_ns, cleanup, state_dir).await
}

/// The campus example (HotStandby: two media nodes) in the same namespace: both nodes become
/// Ready, exactly one holds the Lease and carries the active label the SIP Service selects, a
/// call between two campus seats goes through the ClusterIP, the status names the active and
/// the standby node, and `kubectl get queues` shows the live columns.
async fn campus(
    client: &Client,
    cc_ns: &str,
    cleanup: &mut Cleanup,
    state_dir: &Path,
) -> Result<()> {
    const CAMPUS: &str = "campus";
    let names = ChildNames::new(CAMPUS);
    // Two static volumes, one per node, on a class of this test.
    let class = names::unique("sb-e2e-campus");
    let mut dirs = Vec::new();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for ordinal in 0..2 {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-e2e-campus.")
            .tempdir()?;
        std::os::unix::fs::chown(dir.path(), Some(65532), Some(65532))?;
        let claim = format!("recordings-{}-{ordinal}", names.stateful_set);
        let pv_name = names::unique("sb-e2e-campus");
        let pv = recordings_volume(&pv_name, &class, dir.path(), cc_ns, &claim);
        cleanup.volumes.push(pv_name.clone());
        pvs.patch(
            &pv_name,
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&pv),
        )
        .await
        .with_context(|| format!("creating PersistentVolume {pv_name}"))?;
        dirs.push(dir);
    }
    let yaml = example("campus.yaml", CAMPUS, &class)?;
    let started = Instant::now();
    apply_all(client, &yaml, cc_ns)
        .await
        .context("applying examples/campus.yaml")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), cc_ns);
    let node_names = [
        format!("{}-0", names.stateful_set),
        format!("{}-1", names.stateful_set),
    ];
    wait_for(NODE_LIMIT, "both campus media-node pods Ready", || async {
        for name in &node_names {
            let pod = pods.get_opt(name).await.ok().flatten()?;
            if !pod_ready(&pod) {
                return None;
            }
        }
        Some(())
    })
    .await?;
    eprintln!(
        "campus: both media-node pods Ready {:.1}s after the CallCenter was applied",
        started.elapsed().as_secs_f64()
    );
    let active_selector = ListParams::default().labels(&format!(
        "{}={},app.kubernetes.io/instance={CAMPUS}",
        switchboard_operator::builders::ROLE_LABEL,
        switchboard_operator::builders::ROLE_ACTIVE
    ));
    let active = wait_for(NODE_LIMIT, "one campus node marked active", || async {
        let list = pods.list(&active_selector).await.ok()?;
        (list.items.len() == 1).then(|| list.items[0].metadata.name.clone())?
    })
    .await?;
    let standby = node_names
        .iter()
        .find(|n| **n != active)
        .cloned()
        .unwrap_or_default();
    eprintln!(
        "campus: {active} holds the Lease {:.1}s after the CallCenter was applied",
        started.elapsed().as_secs_f64()
    );

    // The SIP Service reaches the active node only.
    let services: Api<Service> = Api::namespaced(client.clone(), cc_ns);
    let sip: IpAddr = services
        .get(&names.sip_service)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or_else(|| anyhow!("campus SIP Service without a clusterIP"))?
        .parse()?;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), cc_ns);
    let active_ip = pods
        .get(&active)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .unwrap_or_default();
    wait_for(
        NODE_LIMIT,
        "the campus SIP Service's one endpoint",
        || async {
            let ep = endpoints.get_opt(&names.sip_service).await.ok().flatten()?;
            let addresses: Vec<String> = ep
                .subsets?
                .iter()
                .flat_map(|s| s.addresses.clone().unwrap_or_default())
                .map(|a| a.ip)
                .collect();
            (addresses == [active_ip.clone()]).then_some(())
        },
    )
    .await?;

    // Seats 2002 and 2001 of the example, with their passwords from its Secret.
    let password = |extension: &str| -> Result<String> {
        yaml_documents(&yaml)?
            .into_iter()
            .find(|d| {
                d["kind"] == json!("Secret")
                    && d["metadata"]["name"] == json!("campus-seat-passwords")
            })
            .and_then(|d| d["stringData"][extension].as_str().map(str::to_string))
            .with_context(|| format!("no password for seat {extension} in campus.yaml"))
    };
    let (p2001, p2002) = (password("2001")?, password("2002")?);
    let host = bridge_address(state_dir)?;
    let deadline = Instant::now() + SIPP_LIMIT * 2;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let call = call_through_the_cluster(
            sip,
            host,
            "callcenter.campus.example.edu",
            &SeatLogin {
                extension: "2002",
                password: &p2002,
            },
            &SeatLogin {
                extension: "2001",
                password: &p2001,
            },
        )
        .await;
        match call {
            Ok(()) => break,
            // kube-proxy may not have written the Service's rules yet.
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("campus call, {attempts} attempt(s)")));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    eprintln!(
        "campus: seat 2002 called seat 2001 through {sip}:{SIP_PORT}/udp, served by {active}"
    );

    // Status: the active and standby nodes, the registered seat, the trunk's channels as the
    // active node counts them, both nodes on the config.
    let centers: Api<CallCenter> = Api::namespaced(client.clone(), cc_ns);
    let status = wait_for(NODE_LIMIT, "campus status naming both nodes", || async {
        let status = centers.get(CAMPUS).await.ok()?.status?;
        (status.active_node.as_deref() == Some(active.as_str())
            && status.standby_node.as_deref() == Some(standby.as_str())
            && status.seats_registered >= 1
            && status
                .trunks
                .iter()
                .any(|t| t.name == "campus-pstn" && t.limit == 30 && t.busy == 0)
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "StandbyReady" && c.reason == "NoReplication")
            && status.nodes.len() == 2
            && status
                .nodes
                .iter()
                .all(|n| n.config == switchboard_crds::callcenter::NodeConfigState::Current))
        .then_some(status)
    })
    .await?;
    eprintln!(
        "campus status: active {active}, standby {standby}, {} seat(s) registered, config generation {:?}",
        status.seats_registered, status.config_generation
    );

    // `kubectl get queues` shows the live columns.
    let kubeconfig = switchboard_tests::cluster_kubeconfig()?;
    let out = std::process::Command::new(switchboard_tests::kubectl()?)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "queues", "-n", cc_ns])
        .output()
        .context("running kubectl get queues")?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "kubectl get queues: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = table.lines().next().unwrap_or_default();
    for column in ["CENTER", "WAITING", "LONGEST", "READY", "SL%"] {
        ensure!(header.contains(column), "no {column} column in:\n{table}");
    }
    ensure!(
        table.contains("inbound-service") && table.contains("outbound-sales"),
        "the campus queues are missing:\n{table}"
    );
    eprintln!("{table}");

    // Remove the center before its volumes' directories go.
    centers.delete(CAMPUS, &DeleteParams::default()).await?;
    wait_for(GC_LIMIT, "the campus pods gone", || async {
        for name in &node_names {
            if pods.get_opt(name).await.ok()?.is_some() {
                return None;
            }
        }
        Some(())
    })
    .await?;
    drop(dirs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_the_operator_which_runs_a_call_center() -> Result<()> {
    let bin_dir = binary_dir()?;
    // Starting the cluster takes a while: keep it off the async workers.
    let kubeconfig: PathBuf =
        tokio::task::spawn_blocking(switchboard_tests::cluster_kubeconfig).await??;
    let state_dir = kubeconfig
        .parent()
        .ok_or_else(|| anyhow!("kubeconfig {} has no directory", kubeconfig.display()))?;
    let started = Instant::now();
    let (operator_image, node_image) = import_images(state_dir, &bin_dir).await?;
    eprintln!(
        "imported {operator_image} and {node_image} in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let client = switchboard_tests::cluster().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, "e2e-op").await?;
    let cc_ns = TestNamespace::create(&client, "e2e-cc").await?;
    // The hostPath behind the recording volume: writable by the node's UID 65532.
    let volume_dir = tempfile::Builder::new()
        .prefix("switchboard-e2e-recordings.")
        .tempdir()?;
    std::os::unix::fs::chown(volume_dir.path(), Some(65532), Some(65532))?;

    let mut cleanup = Cleanup {
        cluster_scoped: Vec::new(),
        volumes: Vec::new(),
    };
    let result = run(
        &client,
        &op_ns.name,
        &cc_ns.name,
        &mut cleanup,
        volume_dir.path(),
        state_dir,
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
