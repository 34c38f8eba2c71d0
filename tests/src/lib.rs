//! Harnesses shared by the workspace integration tests: a real control plane (etcd and
//! kube-apiserver), a real single-node cluster, and helpers to apply YAML the way
//! `kubectl apply --server-side` does.
//!
//! The shell scripts under `tests/controlplane` and `tests/cluster` own the processes; this
//! crate only asks them for a kubeconfig. They are idempotent and reuse what is already up, so
//! every test process (nextest runs one per test) can ask.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Api, Client, Config, Discovery, ResourceExt};

pub mod cluster;
pub mod digest_phone;
pub mod names;
pub mod node_process;
pub mod queued;
pub mod rtp;
pub mod webhook;

/// Field manager for everything the tests apply.
pub const TEST_FIELD_MANAGER: &str = "switchboard-tests";

/// The repository root (the workspace that holds this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs one of the harness scripts and returns the kubeconfig path it prints as
/// `export KUBECONFIG=...` on its last such line.
fn kubeconfig_from_script(script: &str) -> Result<PathBuf> {
    let path = repo_root().join(script);
    let output = Command::new(&path)
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}\n{}",
            path.display(),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .next_back()
        .map(|p| PathBuf::from(p.trim_matches('"').trim_matches('\'')))
        .ok_or_else(|| {
            anyhow!(
                "{} printed no `export KUBECONFIG=` line:\n{stdout}",
                path.display()
            )
        })
}

async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("building client config")?;
    Ok(Client::try_from(config)?)
}

/// A client for the shared test control plane (etcd + kube-apiserver, no nodes).
///
/// `SWITCHBOARD_KUBECONFIG` names an already running one; otherwise `tests/controlplane/up`
/// starts one or reuses the one it started before.
pub async fn control_plane() -> Result<Client> {
    client_for(&control_plane_kubeconfig()?).await
}

/// The kubeconfig path of the real single-node cluster (pods really run), from
/// `SWITCHBOARD_CLUSTER_KUBECONFIG` or `tests/cluster/up`.
pub fn cluster_kubeconfig() -> Result<PathBuf> {
    match std::env::var_os("SWITCHBOARD_CLUSTER_KUBECONFIG") {
        Some(p) => Ok(PathBuf::from(p)),
        None => kubeconfig_from_script("tests/cluster/up"),
    }
}

/// A client for the real single-node cluster.
pub async fn cluster() -> Result<Client> {
    client_for(&cluster_kubeconfig()?).await
}

/// Splits a multi-document YAML stream into JSON values, skipping empty documents.
pub fn yaml_documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value: serde_json::Value = serde::Deserialize::deserialize(de)
            .with_context(|| format!("YAML document {}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// What the API server answered for one applied document.
#[derive(Debug)]
pub struct Applied {
    pub kind: String,
    pub name: String,
    pub result: Result<DynamicObject, kube::Error>,
}

/// Fails naming every document the API server rejected.
pub fn ensure_all_applied(applied: &[Applied]) -> Result<()> {
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

/// Finds the API resource that serves a document's apiVersion and kind.
async fn resource_for(
    client: &Client,
    gvk: &GroupVersionKind,
) -> Result<(ApiResource, ApiCapabilities)> {
    // Discovery is cheap against a local server; doing it per document keeps CRDs that were
    // applied a moment ago visible.
    let discovery = Discovery::new(client.clone())
        .filter(&[gvk.group.as_str()])
        .run()
        .await
        .context("API discovery")?;
    discovery
        .resolve_gvk(gvk)
        .ok_or_else(|| anyhow!("the API server does not serve {gvk:?}"))
}

/// Server-side applies every document of a YAML stream, in order. Namespaced objects without a
/// namespace go to `namespace`. Returns one entry per document with the server's answer, so a
/// test can assert on rejections; an error here means the document could not be sent at all.
pub async fn apply_yaml(client: &Client, yaml: &str, namespace: &str) -> Result<Vec<Applied>> {
    let mut out = Vec::new();
    for doc in yaml_documents(yaml)? {
        out.push(apply_value(client, doc, namespace).await?);
    }
    Ok(out)
}

/// Server-side applies one object given as JSON.
pub async fn apply_value(
    client: &Client,
    doc: serde_json::Value,
    namespace: &str,
) -> Result<Applied> {
    let obj: DynamicObject = serde_json::from_value(doc).context("document is not an object")?;
    let types = obj
        .types
        .clone()
        .ok_or_else(|| anyhow!("document without apiVersion/kind"))?;
    let gvk = GroupVersionKind::try_from(&types).map_err(|e| anyhow!("{e}"))?;
    let name = obj.name_any();
    let (ar, caps) = resource_for(client, &gvk).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj.namespace().unwrap_or_else(|| namespace.to_string());
            Api::namespaced_with(client.clone(), &ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let params = PatchParams::apply(TEST_FIELD_MANAGER).force();
    let result = api.patch(&name, &params, &Patch::Apply(&obj)).await;
    Ok(Applied {
        kind: gvk.kind,
        name,
        result,
    })
}

/// Applies the committed CRDs from the chart and waits until the API server serves them.
pub async fn install_crds(client: &Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let dir = repo_root().join("charts/switchboard/crds");
    let mut names = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let yaml = std::fs::read_to_string(entry.path())?;
        for applied in apply_yaml(client, &yaml, "default").await? {
            applied
                .result
                .with_context(|| format!("applying CRD {}", applied.name))?;
            names.push(applied.name);
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        let crd = wait_for(
            Duration::from_secs(60),
            &format!("CRD {name} Established"),
            || async {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(crd)
            },
        )
        .await?;
        // Established comes a moment before discovery lists the new resource; tests resolve
        // kinds through discovery, so wait for that too.
        let version = crd
            .spec
            .versions
            .first()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let gvk = GroupVersionKind::gvk(&crd.spec.group, &version, &crd.spec.names.kind);
        wait_for(
            Duration::from_secs(60),
            &format!("discovery to serve {name}"),
            || async { resource_for(client, &gvk).await.ok().map(|_| ()) },
        )
        .await?;
    }
    Ok(())
}

/// Polls `probe` every 200 ms until it yields a value or `limit` passes. A bounded wait for the
/// API server's eventual consistency, not a timing assertion.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the CallCenter controller in this process, watching only `namespace`, as the
/// operator's `run` does once it leads.
pub async fn start_controller(
    client: &Client,
    namespace: &str,
) -> Result<tokio::task::JoinHandle<()>> {
    use switchboard_operator::builders::BuildOptions;
    use switchboard_operator::controller::{self, Context as ControllerContext};
    let version = client.apiserver_version().await?;
    let options = BuildOptions {
        default_image: "switchboard-media-node:test".into(),
        server_minor_version: version.minor.trim_end_matches('+').parse()?,
    };
    let ctx = std::sync::Arc::new(ControllerContext::new(
        client.clone(),
        options,
        switchboard_operator::metrics::Metrics::new()?,
        Some(namespace.to_string()),
    ));
    Ok(tokio::spawn(controller::run(ctx)))
}

/// A namespace of one test, deleted by [`TestNamespace::delete`].
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a namespace with a unique name that starts with `prefix`, labelled
    /// `switchboard.dev/test=<name>` so a webhook can select it.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        use k8s_openapi::api::core::v1::Namespace;
        let name = names::unique(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"switchboard.dev/test": name}},
        }))?;
        let api: Api<Namespace> = Api::all(client.clone());
        api.patch(
            &name,
            &PatchParams::apply(TEST_FIELD_MANAGER),
            &Patch::Apply(&ns),
        )
        .await
        .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    pub async fn delete(self) -> Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.delete(&self.name, &Default::default())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }
}

/// The kubectl v1.20.2 built with the test Kubernetes (`tests/k8s/build-kubernetes`).
pub fn kubectl() -> Result<PathBuf> {
    let script = repo_root().join("tests/k8s/build-kubernetes");
    let output = Command::new(&script)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .last()
        .ok_or_else(|| anyhow!("{} printed no directory", script.display()))?;
    Ok(PathBuf::from(dir.trim()).join("kubectl"))
}

/// The kubeconfig of the shared test control plane, as [`control_plane`] finds it.
pub fn control_plane_kubeconfig() -> Result<PathBuf> {
    match std::env::var_os("SWITCHBOARD_KUBECONFIG") {
        Some(p) => Ok(PathBuf::from(p)),
        None => kubeconfig_from_script("tests/controlplane/up"),
    }
}
