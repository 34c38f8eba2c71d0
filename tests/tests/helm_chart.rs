//! The Helm chart in `charts/switchboard`: rendered with `tests/helm/render` (a faithful
//! `helm template` built from Debian's Go packages, since no Helm binary can be installed
//! here), checked document by document, rejected for invalid values, applied to a real
//! kube-apiserver, and its alert rules checked and unit-tested with `promtool`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Api, Client, Config, Discovery};
use serde_json::{Value, json};
use switchboard_tests::{
    TEST_FIELD_MANAGER, TestNamespace, apply_yaml, control_plane, control_plane_kubeconfig,
    install_crds, names, repo_root, wait_for, yaml_documents,
};

/// Release namespace for the render-only tests.
const NS: &str = "switchboard-system";
/// The object names with the default release name "switchboard" (the release name already
/// contains the chart name, so it is the full name).
const FULLNAME: &str = "switchboard";
/// The verbs the operator needs on the objects it owns.
const MANAGE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const RUNBOOKS: &str = "https://runbooks.example.invalid/switchboard";

// ---------------------------------------------------------------------------------------------
// Rendering helpers

fn chart_dir() -> PathBuf {
    repo_root().join("charts/switchboard")
}

/// Runs `tests/helm/render --chart charts/switchboard ARGS...`.
fn run_renderer(args: &[&str]) -> Result<Output> {
    let renderer = repo_root().join("tests/helm/render");
    Command::new(&renderer)
        .arg("--chart")
        .arg(chart_dir())
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", renderer.display()))
}

/// Renders the chart and returns the YAML stream; fails with the renderer's stderr.
fn render(args: &[&str]) -> Result<String> {
    let out = run_renderer(args)?;
    if !out.status.success() {
        bail!(
            "rendering with {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("rendered chart is not UTF-8")
}

/// Renders the chart expecting a failure; returns the renderer's stderr.
fn render_failure(args: &[&str]) -> Result<String> {
    let out = run_renderer(args)?;
    ensure!(
        !out.status.success(),
        "rendering with {args:?} should have failed, but printed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        out.stdout.is_empty(),
        "a failed render printed manifests:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every document parsed, checked to be a Kubernetes object with the chart's labels.
fn documents(yaml: &str) -> Result<Vec<Value>> {
    let docs = yaml_documents(yaml).context("rendered chart is not valid YAML")?;
    ensure!(!docs.is_empty(), "the chart rendered no documents");
    for doc in &docs {
        let kind = str_at(doc, "/kind")?;
        let name = str_at(doc, "/metadata/name")?;
        ensure!(
            !str_at(doc, "/apiVersion")?.is_empty(),
            "{kind} {name} has no apiVersion"
        );
        ensure!(!name.is_empty(), "a {kind} has no name");
        if kind == "CustomResourceDefinition" {
            continue; // copied verbatim from crds/, not templated
        }
        for (label, want) in [
            ("app.kubernetes.io/managed-by", Some("Helm")),
            ("app.kubernetes.io/name", Some("switchboard")),
            ("app.kubernetes.io/instance", None),
            ("app.kubernetes.io/version", Some("0.1.0")),
            ("helm.sh/chart", Some("switchboard-0.1.0")),
        ] {
            let got = doc
                .pointer("/metadata/labels")
                .and_then(|l| l.get(label))
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("{kind} {name} lacks the label {label}"))?;
            if let Some(want) = want {
                ensure!(
                    got == want,
                    "{kind} {name}: label {label} is {got:?}, want {want:?}"
                );
            }
        }
    }
    Ok(docs)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d.get("kind").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The one document of `kind`.
fn only<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    let mut found = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind));
    let doc = found.next().ok_or_else(|| anyhow!("no {kind} rendered"))?;
    ensure!(found.next().is_none(), "more than one {kind} rendered");
    Ok(doc)
}

fn at<'a>(doc: &'a Value, pointer: &str) -> Result<&'a Value> {
    doc.pointer(pointer).ok_or_else(|| {
        anyhow!(
            "{} {}: nothing at {pointer}",
            doc.get("kind").and_then(Value::as_str).unwrap_or("?"),
            doc.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
        )
    })
}

fn str_at<'a>(doc: &'a Value, pointer: &str) -> Result<&'a str> {
    at(doc, pointer)?
        .as_str()
        .ok_or_else(|| anyhow!("{pointer} is not a string"))
}

/// The operator container of the Deployment.
fn operator_container(docs: &[Value]) -> Result<&Value> {
    let deployment = only(docs, "Deployment")?;
    let containers = at(deployment, "/spec/template/spec/containers")?
        .as_array()
        .ok_or_else(|| anyhow!("containers is not a list"))?;
    ensure!(
        containers.len() == 1,
        "the operator pod has {} containers",
        containers.len()
    );
    Ok(&containers[0])
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
}

/// Does a ClusterRole's rule list grant `verb` on `resource` of `group`?
fn allows(rules: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    let has = |rule: &Value, key: &str, want: &str| {
        rule.get(key).and_then(Value::as_array).is_some_and(|v| {
            v.iter()
                .any(|x| x.as_str() == Some(want) || x.as_str() == Some("*"))
        })
    };
    rules.iter().any(|r| {
        has(r, "apiGroups", group) && has(r, "resources", resource) && has(r, "verbs", verb)
    })
}

fn dummy_ca_bundle() -> String {
    base64::engine::general_purpose::STANDARD.encode(
        "-----BEGIN CERTIFICATE-----\nZHVtbXkgQ0EgZm9yIHRlc3Rz\n-----END CERTIFICATE-----\n",
    )
}

// ---------------------------------------------------------------------------------------------
// (a) Defaults

#[test]
fn default_values_render_the_operator_and_nothing_optional() -> Result<()> {
    let yaml = render(&["--namespace", NS])?;
    for file in ["serviceaccount", "rbac", "service", "deployment"] {
        ensure!(
            yaml.contains(&format!("# Source: switchboard/templates/{file}.yaml\n")),
            "no document from templates/{file}.yaml:\n{yaml}"
        );
    }
    let docs = documents(&yaml)?;
    let want: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    .map(String::from)
    .into();
    ensure!(
        kinds(&docs) == want,
        "kinds {:?}, want exactly {want:?}",
        kinds(&docs)
    );
    ensure!(
        docs.len() == want.len(),
        "{} documents for {} kinds",
        docs.len(),
        want.len()
    );

    // Namespaced objects go to the release namespace, cluster-scoped ones have none.
    for doc in &docs {
        let kind = str_at(doc, "/kind")?;
        let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str);
        match kind {
            "ClusterRole" | "ClusterRoleBinding" => ensure!(ns.is_none(), "{kind} has a namespace"),
            _ => ensure!(ns == Some(NS), "{kind} is in namespace {ns:?}, want {NS}"),
        }
        ensure!(
            str_at(doc, "/metadata/name")? == FULLNAME,
            "{kind} is not named {FULLNAME}"
        );
    }

    // The Deployment.
    let deployment = only(&docs, "Deployment")?;
    ensure!(at(deployment, "/spec/replicas")? == &json!(1));
    let selector = at(deployment, "/spec/selector/matchLabels")?;
    let pod_labels = at(deployment, "/spec/template/metadata/labels")?;
    for (k, v) in selector
        .as_object()
        .ok_or_else(|| anyhow!("matchLabels is not a map"))?
    {
        ensure!(
            pod_labels.get(k) == Some(v),
            "pod labels lack selector label {k}={v}"
        );
    }
    ensure!(
        str_at(deployment, "/spec/template/spec/serviceAccountName")? == FULLNAME,
        "the pod does not run as the chart's ServiceAccount"
    );
    let pod_security = at(deployment, "/spec/template/spec/securityContext")?;
    ensure!(
        pod_security["runAsNonRoot"] == json!(true),
        "pod may run as root"
    );
    ensure!(pod_security["seccompProfile"]["type"] == json!("RuntimeDefault"));
    ensure!(
        deployment.pointer("/spec/template/spec/volumes").is_none(),
        "volumes without the webhook"
    );

    let c = operator_container(&docs)?;
    ensure!(
        c["image"] == json!("switchboard-operator:0.1.0"),
        "image {}",
        c["image"]
    );
    ensure!(c["imagePullPolicy"] == json!("IfNotPresent"));
    ensure!(
        c["args"] == json!(["run", "--metrics-listen", "0.0.0.0:8080"]),
        "args {} (no webhook flags without the webhook)",
        c["args"]
    );
    ensure!(
        env_value(c, "RUST_LOG") == Some("info"),
        "RUST_LOG is not the default level"
    );
    ensure!(
        env_value(c, "SWITCHBOARD_MEDIA_NODE_IMAGE") == Some("switchboard-media-node:0.1.0"),
        "SWITCHBOARD_MEDIA_NODE_IMAGE is not the default media-node image at the appVersion"
    );
    ensure!(
        !c["env"].as_array().is_some_and(|e| e
            .iter()
            .any(|v| v["name"] == json!("SWITCHBOARD_WATCH_NAMESPACE"))),
        "SWITCHBOARD_WATCH_NAMESPACE set without watchNamespace: the operator must watch all namespaces"
    );
    ensure!(
        c["ports"] == json!([{"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    ensure!(c["livenessProbe"]["httpGet"] == json!({"path": "/healthz", "port": "http-metrics"}));
    ensure!(c["readinessProbe"]["httpGet"] == json!({"path": "/readyz", "port": "http-metrics"}));
    ensure!(
        c["resources"]["requests"]["memory"] == json!("64Mi"),
        "resources {}",
        c["resources"]
    );
    let sc = &c["securityContext"];
    ensure!(
        sc["runAsNonRoot"] == json!(true),
        "container may run as root"
    );
    ensure!(
        sc["readOnlyRootFilesystem"] == json!(true),
        "writable root filesystem"
    );
    ensure!(
        sc["allowPrivilegeEscalation"] == json!(false),
        "privilege escalation allowed"
    );
    ensure!(
        sc["capabilities"]["drop"] == json!(["ALL"]),
        "capabilities not dropped"
    );
    ensure!(
        sc["seccompProfile"]["type"] == json!("RuntimeDefault"),
        "no RuntimeDefault seccomp"
    );
    ensure!(
        c.get("volumeMounts").is_none(),
        "volume mounts without the webhook"
    );

    // The Service selects the operator pods and only exposes metrics.
    let service = only(&docs, "Service")?;
    ensure!(
        at(service, "/spec/selector")? == selector,
        "Service selector differs from the Deployment's"
    );
    ensure!(
        at(service, "/spec/ports")?
            == &json!([{"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}]),
        "Service ports {}",
        at(service, "/spec/ports")?
    );

    // RBAC: bound to the ServiceAccount, least privilege.
    let binding = only(&docs, "ClusterRoleBinding")?;
    ensure!(
        at(binding, "/roleRef")?
            == &json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME})
    );
    ensure!(
        at(binding, "/subjects")?
            == &json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}])
    );
    let role = only(&docs, "ClusterRole")?;
    let rules = at(role, "/rules")?
        .as_array()
        .ok_or_else(|| anyhow!("rules is not a list"))?;
    for rule in rules {
        for key in ["apiGroups", "resources", "verbs"] {
            ensure!(
                !rule[key]
                    .as_array()
                    .is_some_and(|v| v.contains(&json!("*"))),
                "wildcard {key} in {rule}"
            );
        }
        for verb in ["bind", "escalate", "impersonate", "deletecollection"] {
            ensure!(
                !rule["verbs"]
                    .as_array()
                    .is_some_and(|v| v.contains(&json!(verb))),
                "{verb} granted: {rule}"
            );
        }
    }
    let must = [
        (
            "switchboard.dev",
            "callcenters",
            &["get", "list", "watch", "patch"][..],
        ),
        (
            "switchboard.dev",
            "queues",
            &["get", "list", "watch", "patch"],
        ),
        (
            "switchboard.dev",
            "seats",
            &["get", "list", "watch", "patch"],
        ),
        (
            "switchboard.dev",
            "callcenters/status",
            &["get", "patch", "update"],
        ),
        (
            "switchboard.dev",
            "queues/status",
            &["get", "patch", "update"],
        ),
        (
            "switchboard.dev",
            "seats/status",
            &["get", "patch", "update"],
        ),
        (
            "switchboard.dev",
            "callcenters/scale",
            &["get", "patch", "update"],
        ),
        ("apps", "statefulsets", MANAGE),
        ("", "services", MANAGE),
        ("", "configmaps", MANAGE),
        ("", "serviceaccounts", MANAGE),
        ("policy", "poddisruptionbudgets", MANAGE),
        ("rbac.authorization.k8s.io", "roles", MANAGE),
        ("rbac.authorization.k8s.io", "rolebindings", MANAGE),
        ("", "secrets", &["get", "list", "watch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        // Its own leader election, and everything the media nodes' Role grants.
        (
            "coordination.k8s.io",
            "leases",
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        ("", "pods", &["get", "list", "watch", "patch"]),
    ];
    for (group, resource, verbs) in must {
        for verb in verbs {
            ensure!(
                allows(rules, group, resource, verb),
                "ClusterRole lacks {verb} on {group}/{resource}"
            );
        }
    }
    let must_not = [
        ("", "secrets", "create"),
        ("", "secrets", "update"),
        ("", "secrets", "patch"),
        ("", "secrets", "delete"),
        ("switchboard.dev", "callcenters", "create"),
        ("switchboard.dev", "callcenters", "delete"),
        ("", "pods", "create"),
        ("", "pods", "delete"),
        ("", "nodes", "get"),
        ("coordination.k8s.io", "leases", "delete"),
        ("rbac.authorization.k8s.io", "clusterroles", "create"),
        ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
    ];
    for (group, resource, verb) in must_not {
        ensure!(
            !allows(rules, group, resource, verb),
            "ClusterRole grants {verb} on {group}/{resource}"
        );
    }
    Ok(())
}

#[test]
fn include_crds_prints_the_chart_crds_first() -> Result<()> {
    let crd_files: Vec<_> = std::fs::read_dir(chart_dir().join("crds"))?
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
        })
        .collect();
    let yaml = render(&["--include-crds"])?;
    let docs = documents(&yaml)?;
    let crds: Vec<&str> = docs
        .iter()
        .take_while(|d| d["kind"] == json!("CustomResourceDefinition"))
        .map(|d| d["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    ensure!(
        docs.iter()
            .filter(|d| d["kind"] == json!("CustomResourceDefinition"))
            .count()
            == crds.len(),
        "CRDs are not all printed first"
    );
    if crd_files.is_empty() {
        return Ok(()); // nothing generated into crds/ yet
    }
    for name in [
        "callcenters.switchboard.dev",
        "queues.switchboard.dev",
        "seats.switchboard.dev",
    ] {
        ensure!(
            crds.contains(&name),
            "--include-crds printed {crds:?}, without {name}"
        );
    }
    ensure!(
        yaml.contains("# Source: switchboard/crds/"),
        "no crds/ source comments"
    );
    // Without the flag the CRDs stay out, as with `helm template`.
    ensure!(!kinds(&documents(&render(&[])?)?).contains("CustomResourceDefinition"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (b) Opt-ins

/// --set flags that turn every opt-in on.
fn opt_in_sets(ca: &str) -> Vec<String> {
    [
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "alerts.enabled=true",
        &format!("alerts.runbookBaseUrl={RUNBOOKS}/"),
        "alerts.additionalRuleLabels.team=telephony",
        "alerts.labels.role=alert-rules",
        "webhook.enabled=true",
        &format!("webhook.caBundle={ca}"),
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.to_string()])
    .collect()
}

#[test]
fn opt_ins_render_when_enabled() -> Result<()> {
    let ca = dummy_ca_bundle();
    let mut args: Vec<String> = vec!["--namespace".into(), NS.into()];
    args.extend(opt_in_sets(&ca));
    args.extend(
        [
            "--set",
            "replicas=2",
            "--set",
            r"logLevel=debug\,switchboard_operator=trace",
            "--set",
            "mediaNode.image.repository=registry.example.com:5000/telephony/media-node",
            "--set",
            "mediaNode.image.tag=1.2.3",
            "--set",
            "watchNamespace=call-centers",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let yaml = render(&args)?;
    let docs = documents(&yaml)?;
    let want: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "ValidatingWebhookConfiguration",
    ]
    .map(String::from)
    .into();
    ensure!(
        kinds(&docs) == want,
        "kinds {:?}, want {want:?}",
        kinds(&docs)
    );

    // Deployment: webhook flags, the certificate Secret at /certs, values passed through.
    let deployment = only(&docs, "Deployment")?;
    ensure!(at(deployment, "/spec/replicas")? == &json!(2));
    let c = operator_container(&docs)?;
    ensure!(
        c["args"]
            == json!([
                "run",
                "--metrics-listen",
                "0.0.0.0:8080",
                "--webhook-listen",
                "0.0.0.0:8443",
                "--webhook-cert",
                "/certs/tls.crt",
                "--webhook-key",
                "/certs/tls.key"
            ]),
        "args {}",
        c["args"]
    );
    ensure!(env_value(c, "RUST_LOG") == Some("debug,switchboard_operator=trace"));
    ensure!(
        env_value(c, "SWITCHBOARD_MEDIA_NODE_IMAGE")
            == Some("registry.example.com:5000/telephony/media-node:1.2.3"),
        "SWITCHBOARD_MEDIA_NODE_IMAGE {:?}",
        env_value(c, "SWITCHBOARD_MEDIA_NODE_IMAGE")
    );
    ensure!(
        env_value(c, "SWITCHBOARD_WATCH_NAMESPACE") == Some("call-centers"),
        "SWITCHBOARD_WATCH_NAMESPACE {:?}",
        env_value(c, "SWITCHBOARD_WATCH_NAMESPACE")
    );
    ensure!(
        c["ports"].as_array().is_some_and(|p| p
            .contains(&json!({"name": "https-webhook", "containerPort": 8443, "protocol": "TCP"}))),
        "no webhook container port: {}",
        c["ports"]
    );
    ensure!(
        c["volumeMounts"]
            == json!([{"name": "webhook-certs", "mountPath": "/certs", "readOnly": true}])
    );
    ensure!(
        at(deployment, "/spec/template/spec/volumes")?
            == &json!([{"name": "webhook-certs", "secret": {"secretName": format!("{FULLNAME}-webhook-tls")}}])
    );

    // Service: metrics plus the webhook's 443 → 8443.
    let service = only(&docs, "Service")?;
    ensure!(
        at(service, "/spec/ports")?
            == &json!([
                {"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"},
                {"name": "https-webhook", "port": 443, "targetPort": "https-webhook", "protocol": "TCP"}
            ]),
        "Service ports {}",
        at(service, "/spec/ports")?
    );

    // ServiceMonitor: scrapes the Service's metrics port, labels and interval from values.
    let sm = only(&docs, "ServiceMonitor")?;
    ensure!(str_at(sm, "/apiVersion")? == "monitoring.coreos.com/v1");
    ensure!(str_at(sm, "/metadata/labels/release")? == "kube-prometheus-stack");
    ensure!(at(sm, "/spec/selector/matchLabels")? == at(service, "/spec/selector")?);
    ensure!(at(sm, "/spec/namespaceSelector")? == &json!({"matchNames": [NS]}));
    ensure!(str_at(sm, "/spec/endpoints/0/port")? == "http-metrics");
    ensure!(str_at(sm, "/spec/endpoints/0/path")? == "/metrics");
    ensure!(str_at(sm, "/spec/endpoints/0/interval")? == "15s");
    for (label, value) in service["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if let Some(sel) = sm
            .pointer("/spec/selector/matchLabels")
            .and_then(|m| m.get(label))
        {
            ensure!(
                sel == value,
                "ServiceMonitor selects {label}={sel}, Service has {value}"
            );
        }
    }

    // PrometheusRule: the two alerts, severities, runbook links and extra labels.
    let pr = only(&docs, "PrometheusRule")?;
    ensure!(str_at(pr, "/apiVersion")? == "monitoring.coreos.com/v1");
    ensure!(str_at(pr, "/metadata/labels/role")? == "alert-rules");
    let rules: Vec<&Value> = at(pr, "/spec/groups")?
        .as_array()
        .ok_or_else(|| anyhow!("groups is not a list"))?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    ensure!(
        names == ["SwitchboardOperatorDown", "SwitchboardReconcileErrors"],
        "alerts {names:?}"
    );
    for (rule, severity, runbook) in [
        (rules[0], "critical", "switchboardoperatordown.md"),
        (rules[1], "warning", "switchboardreconcileerrors.md"),
    ] {
        let alert = rule["alert"].as_str().unwrap_or_default();
        ensure!(
            rule["labels"]["severity"] == json!(severity),
            "{alert}: severity {}",
            rule["labels"]
        );
        ensure!(
            rule["labels"]["team"] == json!("telephony"),
            "{alert}: extra labels missing"
        );
        ensure!(
            rule["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{alert}: no summary"
        );
        ensure!(
            rule["annotations"]["description"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{alert}: no description"
        );
        ensure!(
            rule["annotations"]["runbook_url"] == json!(format!("{RUNBOOKS}/{runbook}")),
            "{alert}: runbook_url {}",
            rule["annotations"]["runbook_url"]
        );
        ensure!(
            rule["expr"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("namespace=\"{NS}\"")))
        );
    }
    ensure!(rules[0]["for"] == json!("5m") && rules[1]["for"] == json!("15m"));
    ensure!(
        rules[1]["expr"]
            .as_str()
            .is_some_and(|e| e.contains("rate(switchboard_operator_reconcile_errors_total")),
        "reconcile error alert does not use the error counter: {}",
        rules[1]["expr"]
    );

    // The validating webhook.
    let vwc = only(&docs, "ValidatingWebhookConfiguration")?;
    ensure!(str_at(vwc, "/apiVersion")? == "admissionregistration.k8s.io/v1");
    ensure!(
        vwc.pointer("/metadata/namespace").is_none(),
        "the webhook configuration is cluster-scoped"
    );
    let hooks = at(vwc, "/webhooks")?
        .as_array()
        .ok_or_else(|| anyhow!("webhooks is not a list"))?;
    ensure!(hooks.len() == 1, "{} webhooks", hooks.len());
    let hook = &hooks[0];
    ensure!(hook["name"] == json!("validate.switchboard.dev"));
    ensure!(
        hook["clientConfig"]
            == json!({
                "service": {"name": FULLNAME, "namespace": NS, "path": "/validate", "port": 443},
                "caBundle": ca
            }),
        "clientConfig {}",
        hook["clientConfig"]
    );
    ensure!(hook["sideEffects"] == json!("None"));
    ensure!(hook["admissionReviewVersions"] == json!(["v1"]));
    ensure!(hook["failurePolicy"] == json!("Fail"));
    ensure!(hook["timeoutSeconds"] == json!(5));
    ensure!(
        hook["rules"]
            == json!([{
                "apiGroups": ["switchboard.dev"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["callcenters", "queues", "seats"],
                "scope": "Namespaced"
            }]),
        "rules {}",
        hook["rules"]
    );

    // Overrides of the webhook's Secret and failure policy.
    let more = render(&[
        "--set",
        "webhook.enabled=true",
        "--set",
        &format!("webhook.caBundle={ca}"),
        "--set",
        "webhook.certSecret=operator-tls,webhook.failurePolicy=Ignore",
    ])?;
    let more = documents(&more)?;
    ensure!(
        only(&more, "Deployment")?.pointer("/spec/template/spec/volumes/0/secret/secretName")
            == Some(&json!("operator-tls"))
    );
    ensure!(
        only(&more, "ValidatingWebhookConfiguration")?.pointer("/webhooks/0/failurePolicy")
            == Some(&json!("Ignore"))
    );
    ensure!(!kinds(&more).contains("ServiceMonitor") && !kinds(&more).contains("PrometheusRule"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (c) Invalid values

#[test]
fn invalid_values_are_rejected_by_the_schema_naming_the_field() -> Result<()> {
    let cases: &[(&str, &[&str])] = &[
        // (what must be named, --set arguments)
        ("replicas: Invalid type", &["replicas=two"]),
        (
            "replicas: Must be greater than or equal to 0",
            &["replicas=-1"],
        ),
        (
            "Additional property imagee is not allowed",
            &["imagee.tag=1.0"],
        ),
        (
            "image: Additional property tagg is not allowed",
            &["image.tagg=1.0"],
        ),
        ("image.pullPolicy", &["image.pullPolicy=Sometimes"]),
        ("logLevel", &["logLevel=verbose"]),
        ("webhook.failurePolicy", &["webhook.failurePolicy=Maybe"]),
        ("webhook.enabled: Invalid type", &["webhook.enabled=yes"]),
        ("resources.limits.memory", &["resources.limits.memory=lots"]),
        (
            "metrics.serviceMonitor.interval",
            &["metrics.serviceMonitor.interval=30"],
        ),
        (
            "securityContext.runAsUser",
            &["securityContext.runAsUser=0"],
        ),
        ("webhook.caBundle", &["webhook.caBundle=not base64!"]),
        ("alerts.runbookBaseUrl", &["alerts.runbookBaseUrl=ftp://x"]),
        (
            "mediaNode.image.repository",
            &["mediaNode.image.repository=Media Node"],
        ),
        ("mediaNode.image.tag", &["mediaNode.image.tag=:bad"]),
        (
            "mediaNode.image: Additional property pullPolicy is not allowed",
            &["mediaNode.image.pullPolicy=Never"],
        ),
        ("watchNamespace", &["watchNamespace=Not_A_Namespace"]),
    ];
    let mut failures = Vec::new();
    for (needle, sets) in cases {
        let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", *s]).collect();
        let stderr = render_failure(&args)?;
        if !stderr.contains("values don't meet the specifications of the schema")
            || !stderr.contains(needle)
        {
            failures.push(format!(
                "{sets:?}: expected a schema error naming {needle:?}, got:\n{stderr}"
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));

    // Every violation is listed, not only the first; a values file is checked the same way.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "replicas: -3\nimage:\n  pullPolicy: Sometimes\nwebhook:\n  enable: true\n",
    )?;
    let stderr = render_failure(&["--values", file.to_str().ok_or_else(|| anyhow!("path"))?])?;
    for needle in [
        "replicas",
        "image.pullPolicy",
        "Additional property enable is not allowed",
    ] {
        ensure!(
            stderr.contains(needle),
            "{needle:?} not reported:\n{stderr}"
        );
    }
    Ok(())
}

#[test]
fn webhook_without_ca_bundle_fails_naming_it() -> Result<()> {
    let stderr = render_failure(&["--set", "webhook.enabled=true"])?;
    ensure!(
        stderr.contains("webhook.caBundle"),
        "error does not name webhook.caBundle:\n{stderr}"
    );
    ensure!(
        stderr.contains("switchboard/templates/validatingwebhook.yaml"),
        "error does not name the template:\n{stderr}"
    );
    Ok(())
}

#[test]
fn values_files_merge_deeply_over_the_defaults() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("values.yaml");
    // Only the tag: the repository and pull policy keep their defaults. A null deletes a
    // default (here the pod's fixed UID, as on platforms that assign one).
    std::fs::write(
        &file,
        "image:\n  tag: \"1.2.3\"\nsecurityContext:\n  runAsUser: null\n",
    )?;
    let path = file.to_str().ok_or_else(|| anyhow!("path"))?;
    let docs = documents(&render(&[
        "--values",
        path,
        "--set",
        "image.pullPolicy=Never",
    ])?)?;
    let c = operator_container(&docs)?;
    ensure!(
        c["image"] == json!("switchboard-operator:1.2.3"),
        "image {}",
        c["image"]
    );
    ensure!(c["imagePullPolicy"] == json!("Never"));
    let pod_security = at(
        only(&docs, "Deployment")?,
        "/spec/template/spec/securityContext",
    )?;
    ensure!(
        pod_security.get("runAsUser").is_none(),
        "null did not remove runAsUser: {pod_security}"
    );
    ensure!(pod_security["runAsGroup"] == json!(65532));
    ensure!(pod_security["runAsNonRoot"] == json!(true));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (e) promtool

#[test]
fn prometheus_rules_pass_promtool() -> Result<()> {
    let yaml = render(&[
        "--namespace",
        "telephony",
        "--release",
        "sb",
        "--set",
        "alerts.enabled=true",
        "--set",
        "alerts.additionalRuleLabels.team=telephony",
    ])?;
    let docs = documents(&yaml)?;
    let groups = at(only(&docs, "PrometheusRule")?, "/spec/groups")?;
    let dir = tempfile::tempdir()?;
    let rules_file = dir.path().join("rules.yaml");
    std::fs::write(
        &rules_file,
        serde_yaml::to_string(&json!({"groups": groups}))?,
    )?;

    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .context("cannot run promtool (Debian package prometheus, in the helm set of tests/k8s/install-packages)")?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    ensure!(
        check.status.success(),
        "promtool check rules failed:\n{out}"
    );
    ensure!(
        out.contains("SUCCESS: 2 rules found"),
        "promtool output:\n{out}"
    );

    // The alerts fire when they should, for this release only: a unit test of the rules.
    let rules: Vec<&Value> = groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let expanded = |alert: &str, value: &str| -> Result<Value> {
        let rule = rules
            .iter()
            .find(|r| r["alert"] == json!(alert))
            .ok_or_else(|| anyhow!("no {alert}"))?;
        let mut annotations = serde_json::Map::new();
        for (k, v) in rule["annotations"].as_object().into_iter().flatten() {
            let text = v.as_str().unwrap_or_default();
            let text = text
                .replace("{{ $labels.job }}", "sb-switchboard")
                .replace("{{ $labels.namespace }}", "telephony")
                .replace("{{ $value | humanize }}", value);
            annotations.insert(k.clone(), Value::String(text));
        }
        Ok(Value::Object(annotations))
    };
    let labels = |severity: &str| json!({"severity": severity, "team": "telephony", "job": "sb-switchboard", "namespace": "telephony"});
    let test = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                // The operator is up for 5 minutes, then down.
                {"series": "up{job=\"sb-switchboard\",namespace=\"telephony\",instance=\"a\",pod=\"p\"}", "values": "1x5 0x40"},
                // Another release's operator stays up: it must not hide this one's outage.
                {"series": "up{job=\"other-switchboard\",namespace=\"telephony\",instance=\"b\",pod=\"q\"}", "values": "1x45"},
                // One reconcile error a second throughout.
                {"series": "switchboard_operator_reconcile_errors_total{job=\"sb-switchboard\",namespace=\"telephony\",instance=\"a\",pod=\"p\"}", "values": "0+60x45"},
                {"series": "switchboard_operator_reconcile_errors_total{job=\"other-switchboard\",namespace=\"telephony\",instance=\"b\",pod=\"q\"}", "values": "0x45"}
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "SwitchboardOperatorDown", "exp_alerts": []},
                {"eval_time": "8m", "alertname": "SwitchboardOperatorDown", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "SwitchboardOperatorDown", "exp_alerts": [{
                    "exp_labels": labels("critical"),
                    "exp_annotations": expanded("SwitchboardOperatorDown", "")?
                }]},
                {"eval_time": "10m", "alertname": "SwitchboardReconcileErrors", "exp_alerts": []},
                {"eval_time": "25m", "alertname": "SwitchboardReconcileErrors", "exp_alerts": [{
                    "exp_labels": labels("warning"),
                    "exp_annotations": expanded("SwitchboardReconcileErrors", "1")?
                }]}
            ]
        }, {
            // Never scraped at all (only another release is): absent() fires.
            "interval": "1m",
            "input_series": [
                {"series": "up{job=\"other-switchboard\",namespace=\"telephony\",instance=\"b\"}", "values": "1x20"}
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "SwitchboardOperatorDown", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "SwitchboardOperatorDown", "exp_alerts": [{
                    "exp_labels": labels("critical"),
                    "exp_annotations": expanded("SwitchboardOperatorDown", "")?
                }]},
                {"eval_time": "10m", "alertname": "SwitchboardReconcileErrors", "exp_alerts": []}
            ]
        }, {
            // Two replicas, one down: the other still serves, nothing fires.
            "interval": "1m",
            "input_series": [
                {"series": "up{job=\"sb-switchboard\",namespace=\"telephony\",instance=\"a\"}", "values": "1x2 0x20"},
                {"series": "up{job=\"sb-switchboard\",namespace=\"telephony\",instance=\"c\"}", "values": "1x22"},
                {"series": "switchboard_operator_reconcile_errors_total{job=\"sb-switchboard\",namespace=\"telephony\",instance=\"c\"}", "values": "5x22"}
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "SwitchboardOperatorDown", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "SwitchboardReconcileErrors", "exp_alerts": []}
            ]
        }]
    });
    let test_file = dir.path().join("rules_test.yaml");
    std::fs::write(&test_file, serde_yaml::to_string(&test)?)?;
    let unit = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test_file)
        .current_dir(dir.path())
        .output()
        .context("cannot run promtool")?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&unit.stdout),
        String::from_utf8_lossy(&unit.stderr)
    );
    ensure!(unit.status.success(), "promtool test rules failed:\n{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (d) A real API server

async fn impersonating(user: &str) -> Result<Client> {
    let kc = Kubeconfig::read_from(control_plane_kubeconfig()?)?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(user.to_string());
    Ok(Client::try_from(config)?)
}

/// Applies the stand-in monitoring.coreos.com CRDs and waits until the API serves the kinds.
/// Like the chart's CRDs they are shared by every test and stay installed.
async fn install_monitoring_stand_ins(client: &Client) -> Result<()> {
    let path = repo_root().join("tests/fixtures/monitoring-crds.yaml");
    let yaml =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for applied in apply_yaml(client, &yaml, "default").await? {
        applied
            .result
            .with_context(|| format!("applying CRD {}", applied.name))?;
        let name = applied.name;
        wait_for(
            Duration::from_secs(60),
            &format!("CRD {name} Established"),
            || async {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await?;
    }
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind);
        wait_for(
            Duration::from_secs(60),
            &format!("discovery of {kind}"),
            || async {
                let discovery = Discovery::new(client.clone())
                    .filter(&["monitoring.coreos.com"])
                    .run()
                    .await
                    .ok()?;
                discovery.resolve_gvk(&gvk).map(|_| ())
            },
        )
        .await?;
    }
    Ok(())
}

/// Deletes the cluster-scoped objects a release created (ignoring ones already gone).
async fn delete_cluster_scoped(client: &Client, objects: &[(String, String)]) -> Result<()> {
    let mut errors = Vec::new();
    for (kind, name) in objects {
        let dp = DeleteParams::default();
        let result = match kind.as_str() {
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
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => errors.push(format!("deleting {kind} {name}: {e}")),
        }
    }
    ensure!(errors.is_empty(), "{}", errors.join("\n"));
    Ok(())
}

fn apply_params() -> PatchParams {
    PatchParams::apply(TEST_FIELD_MANAGER).force()
}

/// Acting as the operator's ServiceAccount: it can create the media nodes' Role and RoleBinding
/// without `bind`/`escalate`, and cannot write Secrets or grant itself more.
async fn check_operator_rbac(ns: &str, service_account: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let operator = impersonating(&format!("system:serviceaccount:{ns}:{service_account}")).await?;
    let roles: Api<Role> = Api::namespaced(operator.clone(), ns);
    let node_role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "media-node"},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["get", "list", "watch", "create", "update", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]}
        ]
    }))?;
    // The authorizer learns about the new ClusterRoleBinding from a watch: allow it a moment.
    let last = std::cell::RefCell::new(String::new());
    let (last_ref, roles_ref, role_ref) = (&last, &roles, &node_role);
    let created = wait_for(
        Duration::from_secs(30),
        "the operator creating the media-node Role",
        || async move {
            match roles_ref
                .patch("media-node", &apply_params(), &Patch::Apply(role_ref))
                .await
            {
                Ok(_) => Some(()),
                Err(e) => {
                    *last_ref.borrow_mut() = e.to_string();
                    None
                }
            }
        },
    )
    .await;
    created.with_context(|| format!("last error: {}", last.borrow()))?;

    let bindings: Api<RoleBinding> = Api::namespaced(operator.clone(), ns);
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "media-node"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "media-node"},
        "subjects": [{"kind": "ServiceAccount", "name": "media-node", "namespace": ns}]
    }))?;
    bindings
        .patch("media-node", &apply_params(), &Patch::Apply(&binding))
        .await
        .context("the operator cannot bind the media-node Role")?;

    let forbidden = |what: &str, result: Result<(), kube::Error>| -> Result<()> {
        match result {
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
            Err(e) => bail!("{what}: expected 403 Forbidden, got {e}"),
            Ok(()) => bail!("{what}: the operator was allowed to"),
        }
    };
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-allowed"},
        "stringData": {"x": "y"}
    }))?;
    forbidden(
        "creating a Secret",
        Api::<Secret>::namespaced(operator.clone(), ns)
            .patch("not-allowed", &apply_params(), &Patch::Apply(&secret))
            .await
            .map(|_| ()),
    )?;
    let greedy: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "greedy"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    }))?;
    forbidden(
        "creating a Role with more than it holds",
        roles
            .patch("greedy", &apply_params(), &Patch::Apply(&greedy))
            .await
            .map(|_| ()),
    )?;
    Ok(())
}

async fn apply_chart(client: &Client, ns: &str, rendered: &str, docs: &[Value]) -> Result<()> {
    let applied = apply_yaml(client, rendered, ns).await?;
    ensure!(
        applied.len() == docs.len(),
        "{} of {} documents applied",
        applied.len(),
        docs.len()
    );
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
    let accepted: BTreeSet<String> = applied.iter().map(|a| a.kind.clone()).collect();
    ensure!(accepted == kinds(docs), "accepted {accepted:?}");

    // What the server stored is what was rendered (spot checks through the dynamic API).
    for a in &applied {
        let obj: &DynamicObject = a.result.as_ref().map_err(|e| anyhow!("{e}"))?;
        ensure!(
            obj.metadata.uid.is_some(),
            "{} {} has no uid",
            a.kind,
            a.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn rendered_chart_is_accepted_by_a_real_api_server() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    install_monitoring_stand_ins(&client).await?;

    let ns = TestNamespace::create(&client, "helm").await?;
    // A unique release name gives the cluster-scoped objects unique names.
    let release = names::unique("sbhelm");
    let fullname = format!("{release}-switchboard");
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("values.yaml");
    // JSON is YAML. The webhook only sees this test's namespace, so other tests sharing the
    // control plane never call it (its Service has no pods here).
    std::fs::write(
        &values,
        serde_json::to_string_pretty(&json!({
            "replicas": 2,
            "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}}},
            "alerts": {"enabled": true, "additionalRuleLabels": {"team": "telephony"}},
            "webhook": {
                "enabled": true,
                "caBundle": dummy_ca_bundle(),
                "namespaceSelector": {"matchLabels": {"switchboard.dev/test": ns.name}}
            }
        }))?,
    )?;
    let rendered = render(&[
        "--release",
        &release,
        "--namespace",
        &ns.name,
        "--values",
        values.to_str().ok_or_else(|| anyhow!("path"))?,
    ]);
    let outcome = async {
        let rendered = rendered?;
        let docs = documents(&rendered)?;
        ensure!(
            kinds(&docs).len() == 8,
            "not every opt-in rendered: {:?}",
            kinds(&docs)
        );
        let cluster_scoped: Vec<(String, String)> = docs
            .iter()
            .filter(|d| d.pointer("/metadata/namespace").is_none())
            .map(|d| {
                Ok((
                    str_at(d, "/kind")?.to_string(),
                    str_at(d, "/metadata/name")?.to_string(),
                ))
            })
            .collect::<Result<_>>()?;
        for (kind, name) in &cluster_scoped {
            ensure!(
                name == &fullname,
                "cluster-scoped {kind} {name} is not named after the release"
            );
        }
        let result = async {
            apply_chart(&client, &ns.name, &rendered, &docs).await?;
            check_operator_rbac(&ns.name, &fullname).await
        }
        .await;
        let cleaned = delete_cluster_scoped(&client, &cluster_scoped).await;
        result.and(cleaned)
    }
    .await;
    let deleted = ns.delete().await;
    outcome?;
    deleted
}
