//! End-to-end smoke test of the real single-node cluster (`tests/cluster/up`): a locally built
//! binary becomes an image, runs as a pod, and a UDP ClusterIP Service routes a datagram from
//! this test process to it and back (the path SIP signalling takes).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use switchboard_tests::{TestNamespace, repo_root, wait_for};

const PORT: u16 = 5060;
const IMAGE_NAME: &str = "switchboard-e2e/udp-echo:smoke";

/// Images the udp-echo binary into the cluster's containerd and returns the image reference.
async fn import_udp_echo(kubeconfig: &std::path::Path) -> Result<String> {
    // The cluster's state directory holds its kubeconfig; tests/cluster/image finds the
    // containerd socket there.
    let state_dir = kubeconfig.parent().ok_or_else(|| {
        anyhow!(
            "kubeconfig {} has no parent directory",
            kubeconfig.display()
        )
    })?;
    let script = repo_root().join("tests/cluster/image");
    let output = tokio::process::Command::new(&script)
        .arg(env!("CARGO_BIN_EXE_udp-echo"))
        .arg(IMAGE_NAME)
        .env("SWITCHBOARD_CLUSTER_DIR", state_dir)
        .output()
        .await
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("{} printed no image reference", script.display()))
}

fn pod_is_ready(pod: &Pod) -> bool {
    let status = match &pod.status {
        Some(s) => s,
        None => return false,
    };
    status.phase.as_deref() == Some("Running")
        && status
            .container_statuses
            .as_ref()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

/// Sends a datagram to `target` and waits for the echo. Every attempt uses a fresh socket (a
/// fresh source port), so a conntrack entry made before kube-proxy wrote its rules cannot pin
/// later attempts to the un-translated address.
async fn udp_round_trip(target: SocketAddr, attempts: u32) -> Result<()> {
    let mut last_error = String::from("no attempt made");
    for attempt in 1..=attempts {
        let socket = tokio::net::UdpSocket::bind(("0.0.0.0", 0))
            .await
            .context("binding a local UDP socket")?;
        let payload = format!("switchboard e2e smoke {} #{attempt}", std::process::id());
        if let Err(e) = socket.send_to(payload.as_bytes(), target).await {
            last_error = format!("send to {target}: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut buf = [0u8; 2048];
        match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await {
            Ok(Ok((len, from))) => {
                let got = buf.get(..len).unwrap_or_default();
                if got == payload.as_bytes() {
                    eprintln!("echo from {from} after {attempt} attempt(s)");
                    return Ok(());
                }
                last_error = format!(
                    "unexpected answer from {from}: {:?}",
                    String::from_utf8_lossy(got)
                );
            }
            Ok(Err(e)) => {
                last_error = format!("receive: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => last_error = "no answer within 1s".to_string(),
        }
    }
    bail!("no UDP echo from {target} after {attempts} attempts; last: {last_error}")
}

async fn run(client: &Client, namespace: &str, image: &str) -> Result<()> {
    // The controller-manager creates the namespace's default service account a moment after
    // the namespace; the apiserver refuses pods until then.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait_for(
        Duration::from_secs(60),
        "the default service account",
        || async { accounts.get_opt("default").await.ok().flatten() },
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "udp-echo", "labels": {"app": "udp-echo"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "udp-echo",
                "image": image,
                "imagePullPolicy": "Never",
                "args": [PORT.to_string()],
                "ports": [{"name": "sip", "containerPort": PORT, "protocol": "UDP"}],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating the udp-echo pod")?;

    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "udp-echo"},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": "udp-echo"},
            "ports": [{"name": "sip", "protocol": "UDP", "port": PORT, "targetPort": PORT}],
        },
    }))?;
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .context("creating the udp-echo service")?;
    let cluster_ip: IpAddr = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .ok_or_else(|| anyhow!("service udp-echo got no clusterIP"))?
        .parse()
        .context("parsing the clusterIP")?;

    let ready = wait_for(Duration::from_secs(120), "pod udp-echo to run", || async {
        let pod = pods.get("udp-echo").await.ok()?;
        pod_is_ready(&pod).then_some(pod)
    })
    .await;
    if let Err(e) = ready {
        let status = pods
            .get("udp-echo")
            .await
            .ok()
            .and_then(|p| p.status)
            .map(|s| format!("{s:?}"))
            .unwrap_or_default();
        return Err(e.context(format!("pod status: {status}")));
    }

    // kube-proxy writes the Service's rules a moment after the endpoint appears.
    udp_round_trip(SocketAddr::new(cluster_ip, PORT), 60).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_cluster_ip_service_echoes_through_a_pod() -> Result<()> {
    // Starting the cluster takes a while: keep it off the async workers.
    let kubeconfig: PathBuf =
        tokio::task::spawn_blocking(switchboard_tests::cluster_kubeconfig).await??;
    let image = import_udp_echo(&kubeconfig).await?;
    let client = switchboard_tests::cluster().await?;

    let ns = TestNamespace::create(&client, "e2e-smoke").await?;
    let result = run(&client, &ns.name, &image).await;
    let deleted = ns.delete().await;
    result?;
    deleted
}
