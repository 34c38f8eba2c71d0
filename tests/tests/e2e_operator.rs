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
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolumeClaim, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use switchboard_crds::CallCenter;
use switchboard_crds::callcenter::NodeConfigState;
use switchboard_operator::builders::ChildNames;
use switchboard_tests::cluster::{
    Cleanup, Sipp, SippRun, apply_all, binary_dir, bridge_address, clean_up, cluster_state,
    container_started, create_recordings_volume, diagnose, free_udp_port, import_images,
    install_operator, metric_value, pod_ready,
};
use switchboard_tests::rtp::RtpEar;
use switchboard_tests::{TestNamespace, install_crds, names, repo_root, wait_for, yaml_documents};

/// The CallCenter of `examples/minimal.yaml`.
const CENTER: &str = "minimal";
/// The campus example's CallCenter and its SIP domain.
const CAMPUS: &str = "campus";
const CAMPUS_DOMAIN: &str = "callcenter.campus.example.edu";
/// Its SIP port (the CRD's default; minimal.yaml does not set one).
const SIP_PORT: u16 = 5060;
/// Image tag `tests/images/build` gives both images (the other e2e tests use their own).
const TAG: &str = "e2e";
const NODE_LIMIT: Duration = Duration::from_secs(240);
const GC_LIMIT: Duration = Duration::from_secs(120);
const SIPP_LIMIT: Duration = Duration::from_secs(60);

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

/// SIPp REGISTER of seat 1001 (digest auth, then un-register) against `target` over UDP.
async fn sipp_register(target: IpAddr) -> Result<()> {
    sipp::<&str>(target, "localhost", "register.xml", &[])
        .await?
        .finish()
        .await
}

/// A SIPp call of `scenario` against the SIP port of `target`, as one of `domain`'s phones.
async fn sipp<S: AsRef<str>>(
    target: IpAddr,
    domain: &str,
    scenario: &str,
    extra: &[S],
) -> Result<SippRun> {
    Sipp::new(SocketAddr::new(target, SIP_PORT), scenario)
        .key("domain", domain)
        .key("pcap", "/usr/share/sip-tester/g711a.pcap")
        .args(extra)
        .spawn()
        .await
}

/// The campus seats' phones on this machine: 2001's (registered from `phone_2001`) answers
/// and echoes the audio, 2002's calls 2001 through the SIP Service.
struct CampusPhones<'a> {
    target: SocketAddr,
    host: IpAddr,
    phone_2001: u16,
    seat_2001: &'a SeatLogin<'a>,
    seat_2002: &'a SeatLogin<'a>,
}

impl CampusPhones<'_> {
    /// Starts 2001's phone with the `answering` scenario, then 2002's placing `calls` calls
    /// with the `calling` one (and `load`: rate, limit, hold time).
    async fn calls(
        &self,
        (answering, calling): (&str, &str),
        calls: u32,
        limit: Duration,
        load: &[&str],
    ) -> Result<(SippRun, SippRun)> {
        let ip = self.host.to_string();
        let callee_media = free_udp_port(self.host)?.to_string();
        let caller_media = free_udp_port(self.host)?.to_string();
        let with_login = |seat: &SeatLogin<'_>, more: &[&str]| -> Vec<String> {
            login(seat)
                .into_iter()
                .chain(more.iter().map(ToString::to_string))
                .collect()
        };
        let answer = Sipp::new(self.target, answering)
            .calls(calls)
            .limit(limit)
            .key("domain", CAMPUS_DOMAIN)
            .key("rtp_port", &callee_media)
            .args(with_login(
                self.seat_2001,
                &[
                    "-i",
                    &ip,
                    "-p",
                    &self.phone_2001.to_string(),
                    "-mi",
                    &ip,
                    "-mp",
                    &callee_media,
                    "-rtp_echo",
                ],
            ))
            .spawn()
            .await?
            .listening(SocketAddr::new(self.host, self.phone_2001))
            .await?;
        let call = Sipp::new(self.target, calling)
            .calls(calls)
            .limit(limit)
            .key("domain", CAMPUS_DOMAIN)
            .key("pcap", "/usr/share/sip-tester/g711a.pcap")
            .args(with_login(
                self.seat_2002,
                &["-i", &ip, "-s", "2001", "-mi", &ip, "-mp", &caller_media],
            ))
            .args(load)
            .spawn()
            .await?;
        Ok((answer, call))
    }
}

/// A seat: extension and password.
struct SeatLogin<'a> {
    extension: &'a str,
    password: &'a str,
}

/// `callee` registers through the ClusterIP from this machine's bridge address and answers;
/// `caller` calls it through the ClusterIP, plays audio for 3 s and hangs up. Both sides must
/// complete their scenarios: the call went through the media node in its pod. Returns the
/// port the callee's phone registered from.
async fn call_through_the_cluster(
    sip: IpAddr,
    host: IpAddr,
    domain: &str,
    caller: &SeatLogin<'_>,
    callee: &SeatLogin<'_>,
) -> Result<u16> {
    let callee_port = free_udp_port(host)?;
    let register = login(callee)
        .into_iter()
        .chain(["-i".to_string(), host.to_string()])
        .chain(["-p".to_string(), callee_port.to_string()])
        .collect::<Vec<_>>();
    sipp(sip, domain, "seat-register.xml", &register)
        .await?
        .finish()
        .await
        .with_context(|| format!("seat {} registering", callee.extension))?;
    call_registered(sip, host, domain, caller, callee, callee_port).await?;
    Ok(callee_port)
}

/// The SIPp arguments of a seat's login.
fn login(seat: &SeatLogin<'_>) -> [String; 7] {
    [
        "-key".to_string(),
        "ext".to_string(),
        seat.extension.to_string(),
        "-au".to_string(),
        seat.extension.to_string(),
        "-ap".to_string(),
        seat.password.to_string(),
    ]
}

/// As [`call_through_the_cluster`] for a callee whose phone registered from `callee_port`
/// before (it does not register again).
async fn call_registered(
    sip: IpAddr,
    host: IpAddr,
    domain: &str,
    caller: &SeatLogin<'_>,
    callee: &SeatLogin<'_>,
    callee_port: u16,
) -> Result<()> {
    let (answering, calling) =
        start_call(sip, host, domain, caller, callee, callee_port, None).await?;
    finish_call(answering, calling, caller, callee).await
}

/// Starts a call from `caller` to the registered `callee` (answering on `callee_port`): 3 s
/// of audio, then the caller hangs up, or after `hold_ms`. Returns the callee's and the
/// caller's SIPp.
async fn start_call(
    sip: IpAddr,
    host: IpAddr,
    domain: &str,
    caller: &SeatLogin<'_>,
    callee: &SeatLogin<'_>,
    callee_port: u16,
    hold_ms: Option<u32>,
) -> Result<(SippRun, SippRun)> {
    let ip = host.to_string();
    let callee_port = callee_port.to_string();
    let callee_media = free_udp_port(host)?.to_string();
    let caller_media = free_udp_port(host)?.to_string();
    let with = |login: [String; 7], more: &[&str]| -> Vec<String> {
        login
            .into_iter()
            .chain(more.iter().map(ToString::to_string))
            .collect()
    };
    let answer = with(
        login(callee),
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
    let answering = sipp(sip, domain, "seat-uas-answer.xml", &answer)
        .await?
        .listening(SocketAddr::new(host, callee_port.parse()?))
        .await?;
    let hold = hold_ms.map(|ms| ms.to_string());
    let mut more = vec![
        "-i",
        &ip,
        "-s",
        callee.extension,
        "-mi",
        &ip,
        "-mp",
        &caller_media,
    ];
    let scenario = match &hold {
        Some(ms) => {
            more.extend(["-d", ms.as_str()]);
            "seat-uac-hold-bye.xml"
        }
        None => "seat-uac-bye.xml",
    };
    let calling = sipp(sip, domain, scenario, &with(login(caller), &more)).await?;
    Ok((answering, calling))
}

/// Waits for both sides of a call to complete their scenarios.
async fn finish_call(
    answering: SippRun,
    calling: SippRun,
    caller: &SeatLogin<'_>,
    callee: &SeatLogin<'_>,
) -> Result<()> {
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
    let started = Instant::now();
    let operator = install_operator(client, &release, op_ns, cc_ns, TAG, cleanup).await?;
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
    create_recordings_volume(client, cleanup, &pv_name, &class, volume_dir, cc_ns, &claim).await?;

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
    let names = ChildNames::new(CAMPUS);
    // Two static volumes, one per node, on a class of this test.
    let class = names::unique("sb-e2e-campus");
    let mut dirs = Vec::new();
    for ordinal in 0..2 {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-e2e-campus.")
            .tempdir()?;
        std::os::unix::fs::chown(dir.path(), Some(65532), Some(65532))?;
        let claim = format!("recordings-{}-{ordinal}", names.stateful_set);
        let pv_name = names::unique("sb-e2e-campus");
        create_recordings_volume(client, cleanup, &pv_name, &class, dir.path(), cc_ns, &claim)
            .await?;
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
    // The SIP Service's only endpoint is `pod`.
    let only_endpoint = |pod: String, what: &'static str| {
        let (pods, endpoints, service) =
            (pods.clone(), endpoints.clone(), names.sip_service.clone());
        async move {
            let ip = pods
                .get(&pod)
                .await?
                .status
                .and_then(|s| s.pod_ip)
                .unwrap_or_default();
            wait_for(NODE_LIMIT, what, || async {
                let ep = endpoints.get_opt(&service).await.ok().flatten()?;
                let addresses: Vec<String> = ep
                    .subsets?
                    .iter()
                    .flat_map(|s| s.addresses.clone().unwrap_or_default())
                    .map(|a| a.ip)
                    .collect();
                (addresses == [ip.clone()]).then_some(())
            })
            .await
        }
    };
    only_endpoint(active.clone(), "the campus SIP Service's one endpoint").await?;

    // Seats 2002 and 2001 of the example, with their passwords from its Secret.
    let (p2001, p2002) = (seat_password(&yaml, "2001")?, seat_password(&yaml, "2002")?);
    let host = bridge_address(state_dir)?;
    let deadline = Instant::now() + SIPP_LIMIT * 2;
    let mut attempts = 0;
    let (seat_2001, seat_2002) = (
        SeatLogin {
            extension: "2001",
            password: &p2001,
        },
        SeatLogin {
            extension: "2002",
            password: &p2002,
        },
    );
    let phone_2001 = loop {
        attempts += 1;
        let call = call_through_the_cluster(sip, host, CAMPUS_DOMAIN, &seat_2002, &seat_2001).await;
        match call {
            Ok(port) => break port,
            // kube-proxy may not have written the Service's rules yet.
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("campus call, {attempts} attempt(s)")));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    eprintln!(
        "campus: seat 2002 called seat 2001 through {sip}:{SIP_PORT}/udp, served by {active}"
    );

    // Status: the active and standby nodes, the standby in sync, the registered seat, the
    // trunk's channels as the active node counts them, both nodes on the config.
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
                .any(|c| c.type_ == "StandbyReady" && c.status == "True" && c.reason == "InSync")
            && status.nodes.len() == 2
            && status
                .nodes
                .iter()
                .all(|n| n.config == NodeConfigState::Current))
        .then_some(status)
    })
    .await?;
    eprintln!(
        "campus status: active {active}, standby {standby}, {} seat(s) registered, config generation {:?}",
        status.seats_registered, status.config_generation
    );

    // The standby follows the active's live state (the Lease holder's pod, found through the
    // API), holds the registered seat, and is ready; the active carries the prompt set.
    let pod_metrics = |name: String| {
        let pods = pods.clone();
        async move { node_metrics(&pods, &name).await }
    };
    let standby_metrics = wait_for(
        NODE_LIMIT,
        "the campus standby following the active",
        || {
            let fetch = pod_metrics(standby.clone());
            async move {
                let text = fetch.await?;
                (metric_value(&text, "switchboard_standby_ready", "") == Some(1.0)
                    && metric_value(
                        &text,
                        "switchboard_replication_records",
                        "kind=\"registrations\"",
                    )
                    .is_some_and(|n| n >= 1.0))
                .then_some(text)
            }
        },
    )
    .await?;
    let active_metrics = pod_metrics(active.clone())
        .await
        .ok_or_else(|| anyhow!("no metrics from the active node {active}"))?;
    ensure!(
        metric_value(&active_metrics, "switchboard_replication_followers", "") == Some(1.0),
        "the active {active} does not count its standby as a follower"
    );
    ensure!(
        metric_value(&active_metrics, "switchboard_prompts_missing", "") == Some(0.0),
        "the active {active} misses prompts: the image must carry the default set"
    );
    eprintln!(
        "campus: standby {standby} follows {active}, {:.3} s behind",
        metric_value(&standby_metrics, "switchboard_replication_lag_seconds", "")
            .unwrap_or(f64::NAN)
    );

    // Seat 2002 calls seat 2001 at the phone it registered before, retried while kube-proxy
    // may not have moved the Service's rules to a new endpoint yet; returns the attempts.
    let call_2001 = |after: &'static str| {
        let (seat_2001, seat_2002) = (&seat_2001, &seat_2002);
        async move {
            let deadline = Instant::now() + SIPP_LIMIT * 2;
            let mut attempts = 0;
            loop {
                attempts += 1;
                let call =
                    call_registered(sip, host, CAMPUS_DOMAIN, seat_2002, seat_2001, phone_2001)
                        .await;
                match call {
                    Ok(()) => return Ok(attempts),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(
                            e.context(format!("campus call {after}, {attempts} attempt(s)"))
                        );
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    };

    // Failover: with 50 calls up (seat 2002 calling seat 2001, audio both ways, recorded),
    // the active node's container is killed (SIGKILL, no drain). The standby, whose stream
    // broke and whose probe of the dead node's control port is refused, takes the Lease and
    // moves every call to itself (re-INVITE on both legs): both phones complete every call,
    // the caller's BYE going to the new node; it relays audio both ways and records each call
    // on in a segment linked to the dead node's. It becomes the SIP Service's endpoint and
    // rings seat 2001 at the contact it registered with the old active (it does not register
    // again); the container, restarted in the same pod, comes back as the standby and follows
    // the new active.
    const CALLS: u32 = 50;
    let target = SocketAddr::new(sip, SIP_PORT);
    let campus = Campus {
        pods: pods.clone(),
        centers: centers.clone(),
        target,
        host,
        yaml: &yaml,
        dirs: &dirs,
        caller: &seat_2002,
    };
    let phones = CampusPhones {
        target,
        host,
        phone_2001,
        seat_2001: &seat_2001,
        seat_2002: &seat_2002,
    };
    let (answering, calling) = phones
        .calls(
            ("takeover-seat-uas.xml", "takeover-seat-uac.xml"),
            CALLS,
            SIPP_LIMIT * 2,
            &["-l", &CALLS.to_string(), "-r", "25", "-d", "3000"],
        )
        .await?;
    // The standby holds every call.
    campus
        .until_metric(
            &standby,
            "switchboard_replication_records",
            "kind=\"calls\"",
            f64::from(CALLS),
        )
        .await?;
    let killed_at = Instant::now();
    campus.kill_container(&active).await?;
    let new_active = standby.clone();
    wait_for(NODE_LIMIT, "the campus standby taking over", || {
        let fetch = pod_metrics(new_active.clone());
        async move {
            let text = fetch.await?;
            (metric_value(&text, "switchboard_node_role", "role=\"active\"") == Some(1.0)
                && metric_value(&text, "switchboard_failovers_total", "") == Some(1.0))
            .then_some(())
        }
    })
    .await?;
    let took_over = killed_at.elapsed();
    calling
        .finish()
        .await
        .context("the calling phone across the failover")?;
    answering
        .finish()
        .await
        .context("the answering phone across the failover")?;
    let moved = killed_at.elapsed();
    let text = pod_metrics(new_active.clone())
        .await
        .ok_or_else(|| anyhow!("no metrics from the new active {new_active}"))?;
    let resumed = metric_value(
        &text,
        "switchboard_calls_taken_over_total",
        "outcome=\"resumed\"",
    );
    ensure!(
        resumed == Some(f64::from(CALLS)),
        "{new_active} resumed {resumed:?} of {CALLS} calls"
    );
    for direction in ["caller_to_callee", "callee_to_caller"] {
        let relayed = metric_value(
            &text,
            "switchboard_rtp_packets_total",
            &format!("direction=\"{direction}\""),
        );
        ensure!(
            relayed.is_some_and(|n| n > 0.0),
            "{new_active} relayed {relayed:?} RTP packets {direction}"
        );
    }
    let ordinal = pod_ordinal(&new_active)?;
    let mut linked = 0;
    for entry in std::fs::read_dir(dirs[ordinal].path())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(sidecar) =
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&path)?)
        else {
            continue;
        };
        let segments = sidecar["segments"].as_array().map_or(0, Vec::len);
        if segments == 2 && sidecar["segments"][0]["node"] == active.as_str() {
            linked += 1;
        }
    }
    ensure!(
        linked == CALLS,
        "{linked} recordings on {new_active} continue one of {active}'s ({CALLS} calls)"
    );
    eprintln!(
        "campus: {CALLS} calls up when {active}'s container was killed: every one moved to {new_active} \
         (re-INVITEs answered, audio both ways, recordings linked) and ended normally {:.1} s \
         after the kill",
        moved.as_secs_f64()
    );
    only_endpoint(
        new_active.clone(),
        "the SIP Service following the new active",
    )
    .await?;
    let attempts = call_2001("after the failover").await?;
    eprintln!(
        "campus: {active} killed; {new_active} active after {:.1} s, seat 2001 (registered with \
         {active} only) answered a call through it after {:.1} s ({attempts} attempt(s))",
        took_over.as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );
    // The operator counts the failover in the status and says so in an Event.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), cc_ns);
    let counted = wait_for(
        NODE_LIMIT,
        "the failover in the campus status, with its Event",
        || async {
            let status = centers.get(CAMPUS).await.ok()?.status?;
            let event = campus_events(&events, switchboard_operator::controller::FAILOVER)
                .await?
                .into_iter()
                .next()?;
            (status.failover_count == 1
                && status.last_failover_time.is_some()
                && status.active_node.as_deref() == Some(new_active.as_str()))
            .then(|| event.message.unwrap_or_default())
        },
    )
    .await?;
    eprintln!("campus: Failover Event: {counted}");
    wait_for(
        NODE_LIMIT,
        "the restarted pod following the new active",
        || {
            let fetch = pod_metrics(active.clone());
            async move {
                let text = fetch.await?;
                (metric_value(&text, "switchboard_node_role", "role=\"standby\"") == Some(1.0)
                    && metric_value(&text, "switchboard_standby_ready", "") == Some(1.0)
                    && metric_value(
                        &text,
                        "switchboard_replication_records",
                        "kind=\"registrations\"",
                    )
                    .is_some_and(|n| n >= 1.0))
                .then_some(())
            }
        },
    )
    .await?;
    eprintln!(
        "campus: {active} restarted in place, back as the standby, resynchronised {:.1} s after \
         the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // Failovers repeat: the node that took over has its pod deleted with no grace in turn,
    // with callers queued.
    queued_callers_across_a_failover(&campus, &new_active, &active).await?;

    // A rolling update's stop: the active pod is deleted with its grace period (SIGTERM).
    // It hands the Lease over at once and takes no new call, while the call it carries goes
    // on to its end; the other node serves the next call.
    let (drained, successor) = (active.clone(), new_active.clone());
    let (answering, calling) = start_call(
        sip,
        host,
        CAMPUS_DOMAIN,
        &seat_2002,
        &seat_2001,
        phone_2001,
        Some(8_000),
    )
    .await?;
    // The long call is up on the active node.
    campus
        .until_metric(&drained, "switchboard_calls_active", "", 1.0)
        .await?;
    let drained_at = Instant::now();
    let drained_wall = k8s_openapi::jiff::Timestamp::now();
    pods.delete(&drained, &DeleteParams::default()).await?;
    // The Lease handed over to the standby.
    campus
        .until_metric(&successor, "switchboard_node_role", "role=\"active\"", 1.0)
        .await?;
    let handed_over = drained_at.elapsed();
    finish_call(answering, calling, &seat_2002, &seat_2001)
        .await
        .context("the call carried across the drain")?;
    eprintln!(
        "campus: {drained} drained (SIGTERM): {successor} active {:.1} s later, the 8 s call \
         on {drained} completed with its BYE",
        handed_over.as_secs_f64()
    );
    only_endpoint(
        successor.clone(),
        "the SIP Service on the node the Lease was handed to",
    )
    .await?;
    call_2001("after the drain").await?;
    // A handover, not a failover: a Handover Event (the first failover, a pod deleted with
    // no grace, may have handed over before it died: only an Event since the drain counts),
    // the failover count unchanged.
    let handover = wait_for(NODE_LIMIT, "the handover's Event", || async {
        campus_events(&events, switchboard_operator::controller::HANDOVER)
            .await?
            .into_iter()
            .find(|e| {
                let last_seen = e
                    .series
                    .as_ref()
                    .and_then(|s| s.last_observed_time.as_ref())
                    .or(e.event_time.as_ref())
                    .map(|t| t.0);
                last_seen.is_some_and(|t| t >= drained_wall)
            })
            .map(|e| e.message.unwrap_or_default())
    })
    .await?;
    let counted = centers.get(CAMPUS).await?.status.map(|s| s.failover_count);
    ensure!(
        counted == Some(2),
        "{counted:?} failovers counted after two failovers and a handover"
    );
    eprintln!("campus: Handover Event: {handover}");

    // A rolling update under load: seat 2002 calls seat 2001 twice a second, each call 6 s
    // long, for as long as the update takes, while a change of the CallCenter's pod
    // annotations makes the operator update the StatefulSet's pod template. The StatefulSet
    // replaces both pods, one after the other, each stopped with its grace period; the active
    // one drains (hands the Lease over, its calls go on to their end) and each new pod comes
    // back as the standby. Every call completes: none dropped, none refused.
    wait_for(
        NODE_LIMIT,
        "the drained pod back as the standby in sync",
        || async {
            let status = centers.get(CAMPUS).await.ok()?.status?;
            pair_in_sync(&status, &successor, &drained).then_some(())
        },
    )
    .await?;
    // More than the load places: it is stopped once the update is over.
    const LOAD_CALLS: u32 = 10_000;
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), cc_ns);
    let revision = |set: &StatefulSet| {
        let status = set.status.clone().unwrap_or_default();
        (status.current_revision, status.update_revision)
    };
    let (before, _) = revision(&stateful_sets.get(&names.stateful_set).await?);
    let (answering, calling) = phones
        .calls(
            ("seat-uas-answer.xml", "seat-uac-hold-bye.xml"),
            LOAD_CALLS,
            NODE_LIMIT * 2,
            &["-r", "2", "-l", "30", "-d", "6000"],
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rolling_at = Instant::now();
    centers
        .patch(
            CAMPUS,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({
                "spec": {"nodes": {"podAnnotations": {"campus.example.edu/rollout": "1"}}}
            })),
        )
        .await?;
    let rolled = wait_for(
        NODE_LIMIT,
        "the StatefulSet rolled to the new template",
        || async {
            let set = stateful_sets.get(&names.stateful_set).await.ok()?;
            let (current, update) = revision(&set);
            let status = set.status?;
            (update.is_some()
                && update != before
                && current == update
                && status.updated_replicas == Some(2)
                && status.ready_replicas == Some(2))
            .then(|| rolling_at.elapsed())
        },
    )
    .await?;
    // A few calls more on the updated pair, then the load stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    calling.stop_placing_calls()?;
    let placed = calling
        .finish_with_stats()
        .await
        .context("the calling phone across the rolling update")?;
    answering.stop_placing_calls()?;
    let answered = answering
        .finish_with_stats()
        .await
        .context("the answering phone across the rolling update")?;
    ensure!(
        placed.successful > 0
            && placed.failed == 0
            && answered.failed == 0
            && answered.successful == placed.successful,
        "calls across the rolling update: placed {} successful, {} failed {:?}, answered {} \
         successful, {} failed {:?}\ncalling phone's errors:\n{}\nanswering phone's errors:\n{}",
        placed.successful,
        placed.failed,
        placed.failed_by,
        answered.successful,
        answered.failed,
        answered.failed_by,
        placed.errors,
        answered.errors,
    );
    let status = wait_for(
        NODE_LIMIT,
        "one active, one standby in sync after the update",
        || async {
            let status = centers.get(CAMPUS).await.ok()?.status?;
            (status.active_node.is_some()
                && status.standby_node.is_some()
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "StandbyReady" && c.status == "True"))
            .then_some(status)
        },
    )
    .await?;
    ensure!(
        status.failover_count == 2,
        "a rolling update hands over, it does not fail over: {} failovers counted",
        status.failover_count
    );
    eprintln!(
        "campus: rolling update under load: both pods replaced {:.1} s after the template \
         changed; all {} calls (2 per second, 6 s each) completed; active {}, standby {} in \
         sync, no failover counted",
        rolled.as_secs_f64(),
        placed.successful,
        status.active_node.unwrap_or_default(),
        status.standby_node.unwrap_or_default(),
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
    let (_, state_dir) = cluster_state().await?;
    let state_dir = state_dir.as_path();
    let started = Instant::now();
    let (operator_image, node_image) = import_images(state_dir, &bin_dir, TAG).await?;
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

    let mut cleanup = Cleanup::default();
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

/// The metrics of the node in pod `name`, scraped at its pod address; `None` while it cannot
/// be reached.
async fn node_metrics(pods: &Api<Pod>, name: &str) -> Option<String> {
    let ip: IpAddr = pods.get(name).await.ok()?.status?.pod_ip?.parse().ok()?;
    switchboard_tests::cluster::scrape_metrics(SocketAddr::new(ip, 9090))
        .await
        .ok()
}

/// Whether the status shows `active` serving and `standby` in sync with it.
fn pair_in_sync(
    status: &switchboard_crds::callcenter::CallCenterStatus,
    active: &str,
    standby: &str,
) -> bool {
    status.active_node.as_deref() == Some(active)
        && status.standby_node.as_deref() == Some(standby)
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "StandbyReady" && c.status == "True")
}

/// The Events with `reason` about the campus CallCenter; `None` while they cannot be listed.
async fn campus_events(
    events: &Api<k8s_openapi::api::core::v1::Event>,
    reason: &str,
) -> Option<Vec<k8s_openapi::api::core::v1::Event>> {
    let list = events.list(&ListParams::default()).await.ok()?;
    Some(
        list.items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.name.as_deref() == Some(CAMPUS)
            })
            .collect(),
    )
}

/// A StatefulSet pod's ordinal (`campus-media-1` is 1).
fn pod_ordinal(pod: &str) -> Result<usize> {
    pod.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no ordinal in the pod name {pod}"))
}

/// A seat's password from the campus example's Secret.
fn seat_password(yaml: &str, extension: &str) -> Result<String> {
    yaml_documents(yaml)?
        .into_iter()
        .find(|d| {
            d["kind"] == json!("Secret") && d["metadata"]["name"] == json!("campus-seat-passwords")
        })
        .and_then(|d| d["stringData"][extension].as_str().map(str::to_string))
        .with_context(|| format!("no password for seat {extension} in campus.yaml"))
}

/// What the campus test's failover steps share.
struct Campus<'a> {
    pods: Api<Pod>,
    centers: Api<CallCenter>,
    /// The SIP Service.
    target: SocketAddr,
    /// This machine's address on the cluster's bridge, where the phones run.
    host: IpAddr,
    /// The campus example as applied (its seat passwords).
    yaml: &'a str,
    /// Each node's recordings directory, by ordinal.
    dirs: &'a [tempfile::TempDir],
    /// Seat 2002, the caller.
    caller: &'a SeatLogin<'a>,
}

impl Campus<'_> {
    /// A SIPp run of `scenario` through the SIP Service as `seat`'s phone, with its own media
    /// port.
    fn phone(&self, scenario: &str, seat: &SeatLogin<'_>) -> Result<Sipp> {
        let ip = self.host.to_string();
        Ok(Sipp::new(self.target, scenario)
            .key("domain", CAMPUS_DOMAIN)
            .args(login(seat))
            .args(["-i", &ip, "-mi", &ip])
            .args(["-mp", &free_udp_port(self.host)?.to_string()]))
    }

    /// `seat` dials a feature code and hears the node's confirmation.
    async fn feature_code(&self, seat: &SeatLogin<'_>, code: &str) -> Result<()> {
        self.phone("agent-feature-code.xml", seat)?
            .args(["-s", code])
            .spawn()
            .await?
            .finish()
            .await
            .with_context(|| format!("seat {} dialing {code}", seat.extension))
    }

    /// Waits until the node in pod `name` shows `metric{labels}` at `value`.
    async fn until_metric(&self, name: &str, metric: &str, labels: &str, value: f64) -> Result<()> {
        wait_for(
            NODE_LIMIT,
            &format!("{metric}{{{labels}}} = {value} on {name}"),
            || async {
                let text = node_metrics(&self.pods, name).await?;
                (metric_value(&text, metric, labels) == Some(value)).then_some(())
            },
        )
        .await
    }

    /// Kills the media-node process in pod `name`'s container with SIGKILL, as the kernel's
    /// OOM killer would: the kubelet restarts the container in the same pod, at the same
    /// address. The process is found on this machine (the cluster's only node) by its
    /// container's ID in `/proc/<pid>/cgroup`.
    async fn kill_container(&self, name: &str) -> Result<u32> {
        use switchboard_operator::builders::stateful_set::CONTAINER_NAME;
        let pod = self.pods.get(name).await?;
        let id = pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == CONTAINER_NAME)
            .and_then(|c| c.container_id)
            .with_context(|| format!("pod {name} has no running {CONTAINER_NAME} container"))?;
        let id = id.rsplit("://").next().unwrap_or_default().to_string();
        ensure!(!id.is_empty(), "pod {name}: an empty container ID");
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            // The image's binary (`tests/images/build`).
            let media_node = std::fs::read_link(entry.path().join("exe"))
                .is_ok_and(|exe| exe.ends_with("switchboard-media-node"));
            if media_node
                && std::fs::read_to_string(entry.path().join("cgroup"))
                    .is_ok_and(|c| c.contains(&id))
            {
                found.push(pid);
            }
        }
        let [pid] = found[..] else {
            bail!("media-node processes of container {id} (pod {name}): {found:?}");
        };
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -KILL {pid}: {status}");
        Ok(pid)
    }

    async fn pod_ip(&self, name: &str) -> Result<IpAddr> {
        self.pods
            .get(name)
            .await?
            .status
            .and_then(|s| s.pod_ip)
            .with_context(|| format!("pod {name} has no IP"))?
            .parse()
            .context("a pod IP")
    }
}

/// A second failover, the other way round, with callers waiting in a queue: agent 2003 of
/// student services is logged in but on a break, so three callers wait, in turn, hearing
/// music on hold from `serving`. Its pod is deleted with no grace: the kubelet's SIGTERM makes
/// it hand the Lease over to `taking_over`, which takes its calls over when it is killed a
/// moment later: it re-INVITEs each caller and plays them music on hold again; the agent's
/// state and phone registration are its too. When the agent is ready again (dialed from the
/// phone, through the Service, now to `taking_over`), the callers are answered one after the
/// other in the order they called, each wait counted from its first enqueue. The pod, created
/// again, comes back as the standby.
async fn queued_callers_across_a_failover(
    campus: &Campus<'_>,
    serving: &str,
    taking_over: &str,
) -> Result<()> {
    const CALLERS: usize = 3;
    const QUEUE: &str = "inbound-service";
    const AGENT_SEAT: &str = "inbound-03";
    // The main menu routes by the campus's business hours; a number straight to the queue
    // keeps the test independent of the time of day. Both nodes get the new plan.
    const QUEUE_NUMBER: &str = "7100";
    let center = campus.centers.get(CAMPUS).await?;
    let generation = center
        .status
        .as_ref()
        .and_then(|s| s.config_generation)
        .unwrap_or(0);
    let mut entry_points = serde_json::to_value(&center.spec.entry_points)?;
    entry_points
        .as_array_mut()
        .context("the campus entry points")?
        .push(json!({"number": QUEUE_NUMBER, "route": {"action": "Queue", "target": QUEUE}}));
    campus
        .centers
        .patch(
            CAMPUS,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"entryPoints": entry_points}})),
        )
        .await?;
    wait_for(
        NODE_LIMIT,
        "both campus nodes on the plan with the queue's number",
        || async {
            let status = campus.centers.get(CAMPUS).await.ok()?.status?;
            (status.config_generation > Some(generation)
                && status.nodes.len() == 2
                && status
                    .nodes
                    .iter()
                    .all(|n| n.config == NodeConfigState::Current))
            .then_some(())
        },
    )
    .await?;

    // Agent 2003's phone registers; the agent logs in and takes a break (`*24` reason 1).
    let password = seat_password(campus.yaml, "2003")?;
    let agent = SeatLogin {
        extension: "2003",
        password: &password,
    };
    let agent_phone = free_udp_port(campus.host)?.to_string();
    campus
        .phone("seat-register.xml", &agent)?
        .args(["-p", &agent_phone])
        .spawn()
        .await?
        .finish()
        .await
        .context("seat 2003 registering")?;
    for code in ["*21", "*241"] {
        campus.feature_code(&agent, code).await?;
    }
    let agent_state = |state: &str| format!("seat=\"{AGENT_SEAT}\",state=\"{state}\"");
    campus
        .until_metric(
            serving,
            "switchboard_agent_state",
            &agent_state("not_ready"),
            1.0,
        )
        .await?;

    // The callers, one after the other, each replicated as queued before the next calls.
    let waiting = format!("queue=\"{QUEUE}\"");
    let mut callers = Vec::new();
    let mut ears = Vec::new();
    let mut queued_at = Vec::new();
    for i in 0..CALLERS {
        let ear = RtpEar::bind(campus.host, NODE_LIMIT * 2).await?;
        callers.push(
            campus
                .phone("takeover-queued-caller.xml", campus.caller)?
                .key("rtp_port", &ear.port().to_string())
                .args(["-s", QUEUE_NUMBER])
                .args(["-cid_str", &format!("caller{i}-%u-%p@%s")])
                .limit(NODE_LIMIT * 2)
                .spawn()
                .await?,
        );
        campus
            .until_metric(
                serving,
                "switchboard_queue_calls_waiting",
                &waiting,
                (i + 1) as f64,
            )
            .await?;
        campus
            .until_metric(
                taking_over,
                "switchboard_replication_records",
                "kind=\"calls\"",
                (i + 1) as f64,
            )
            .await?;
        queued_at.push(Instant::now());
        ears.push(ear);
    }
    // Long enough in the queue that a wait counted afresh after the takeover would be shorter.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (old_ip, new_ip) = (
        campus.pod_ip(serving).await?,
        campus.pod_ip(taking_over).await?,
    );
    let killed = Instant::now();
    campus
        .pods
        .delete(
            serving,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await?;
    // Restarted fresh after the first failover, this is its first.
    campus
        .until_metric(taking_over, "switchboard_failovers_total", "", 1.0)
        .await?;
    let took_over = killed.elapsed();
    campus
        .until_metric(
            taking_over,
            "switchboard_calls_taken_over_total",
            "outcome=\"resumed\"",
            CALLERS as f64,
        )
        .await?;
    for (i, ear) in ears.iter().enumerate() {
        ensure!(
            ear.heard_from(old_ip)
                .is_some_and(|h| h.packets > 0 && h.first < killed),
            "caller {i} heard no music on hold from {serving} ({old_ip}) while it waited: {:?}",
            ear.heard()
        );
        wait_for(NODE_LIMIT, "music on hold from the new active", || async {
            ear.heard_from(new_ip)
                .is_some_and(|h| h.packets >= 10)
                .then_some(())
        })
        .await
        .with_context(|| format!("caller {i} heard {:?}", ear.heard()))?;
    }
    // The agent is still on a break, and still reachable, on the new active.
    campus
        .until_metric(
            taking_over,
            "switchboard_agent_state",
            &agent_state("not_ready"),
            1.0,
        )
        .await?;
    eprintln!(
        "campus: {serving} deleted with {CALLERS} callers queued: {taking_over} active after \
         {:.1} s, every caller re-INVITEd and hearing music on hold from it {:.1} s after the kill",
        took_over.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );

    // The agent's phone answers each offer and hangs up after 3 s; the agent is ready again
    // after each call (ending the 30 s wrap-up early).
    let answering = Sipp::new(campus.target, "call-uas-hangup.xml")
        .calls(CALLERS as u32)
        .limit(NODE_LIMIT * 2)
        .key("domain", CAMPUS_DOMAIN)
        .args(["-i", &campus.host.to_string(), "-p", &agent_phone])
        .args(["-mi", &campus.host.to_string()])
        .args(["-mp", &free_udp_port(campus.host)?.to_string(), "-rtp_echo"])
        .spawn()
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..CALLERS {
        // The Service may still lead to the deleted pod for a moment: the code is retried.
        let deadline = Instant::now() + SIPP_LIMIT;
        while let Err(e) = campus.feature_code(&agent, "*23").await {
            ensure!(Instant::now() < deadline, "{e:#}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        campus
            .until_metric(
                taking_over,
                "switchboard_queue_calls_waiting",
                &waiting,
                (CALLERS - 1 - i) as f64,
            )
            .await?;
        campus
            .until_metric(
                taking_over,
                "switchboard_agent_state",
                &agent_state("wrap_up"),
                1.0,
            )
            .await?;
    }
    answering
        .finish()
        .await
        .context("agent 2003's phone answering the queued callers")?;
    for (i, caller) in callers.into_iter().enumerate() {
        caller
            .finish()
            .await
            .with_context(|| format!("queued caller {i}"))?;
    }

    // The new active's CDRs: answered in the order they called, each wait counted from the
    // first enqueue (before the kill).
    let waits = switchboard_tests::queued::answered_in_order(
        &campus.dirs[pod_ordinal(taking_over)?]
            .path()
            .join("cdr.jsonl"),
        &queued_at,
        killed,
        NODE_LIMIT,
    )
    .await?;
    eprintln!(
        "campus: the queued callers answered by agent 2003 on {taking_over} in the order they \
         called, waits {waits:?} s"
    );
    // The agent logs out; the deleted pod is back as the standby, in sync; the operator
    // counted the second failover.
    campus.feature_code(&agent, "*22").await?;
    wait_for(
        NODE_LIMIT,
        "the restarted pod back as the standby in sync, two failovers counted",
        || async {
            let status = campus.centers.get(CAMPUS).await.ok()?.status?;
            (status.failover_count == 2 && pair_in_sync(&status, taking_over, serving))
                .then_some(())
        },
    )
    .await?;
    eprintln!(
        "campus: {serving} created again, back as the standby in sync (seen {:.1} s after the \
         deletion, once the callers were served)",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}
