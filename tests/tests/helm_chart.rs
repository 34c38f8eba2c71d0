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
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams};
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
    // The operator's two alerts come first; the call centers' follow (checked with promtool).
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    ensure!(
        names.starts_with(&["SwitchboardOperatorDown", "SwitchboardReconcileErrors"]),
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
                "resources": ["callcenters", "callcenters/scale", "queues", "seats"],
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

/// Every `"switchboard_…"` metric name in the sources of the media node and the operator.
fn exported_metric_names() -> Result<BTreeSet<String>> {
    fn scan(dir: &std::path::Path, names: &mut BTreeSet<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                scan(&path, names)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                for (at, _) in text.match_indices("\"switchboard_") {
                    let name: String = text[at + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    // Only a whole string literal is a name (not a line of exposition text).
                    if text[at + 1 + name.len()..].starts_with('"') {
                        names.insert(name);
                    }
                }
            }
        }
        Ok(())
    }
    let mut names = BTreeSet::new();
    for dir in ["media-node/src", "operator/src"] {
        scan(&repo_root().join(dir), &mut names)?;
    }
    ensure!(
        names.contains("switchboard_queue_calls_waiting")
            && names.contains("switchboard_trunk_calls_blocked_total"),
        "the source scan found too little: {names:?}"
    );
    Ok(names)
}

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// label lists, ranges and Grafana variables that are neither functions nor keywords.
fn promql_metric_names(expr: &str) -> Result<BTreeSet<String>> {
    // Operators, and aggregations (which may take `by (…)` before their parenthesis).
    #[rustfmt::skip]
    const KEYWORDS: &[&str] = &[
        "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
        "bool", "offset", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
        "count_values", "bottomk", "topk", "quantile",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_next_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                ensure!(i < chars.len(), "unterminated string in {expr}");
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                // Label matchers and ranges hold no metric names; their strings may hold
                // anything, so step over strings inside too.
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += if chars[i] == '\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                ensure!(i < chars.len(), "unbalanced {c} in {expr}");
                i += 1;
            }
            '(' if skip_next_list => {
                skip_next_list = false;
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                // A Grafana variable such as $__rate_interval.
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let is_call = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    skip_next_list = is_call;
                } else if KEYWORDS.contains(&word.as_str()) || is_call {
                    // An operator keyword or a function.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    Ok(names)
}

#[test]
fn promql_metric_names_finds_only_the_selected_metrics() -> Result<()> {
    let names = promql_metric_names(
        r#"label_replace(max by (namespace, job) (rate(a_total{job=~"x{1,2}",q="}"}[5m])) / on (job) group_left (pod) b > 0 unless c offset 5m, "center", "$1", "job", "(.+)") * 60 + sum(d{x="$center"}[$__rate_interval]) and up"#,
    )?;
    let want: BTreeSet<String> = ["a_total", "b", "c", "d", "up"].map(String::from).into();
    ensure!(names == want, "found {names:?}, want {want:?}");
    Ok(())
}

/// A rule's annotation as Prometheus expands it for an alert with `labels` and `value` (the
/// value already formatted as the annotation's function formats it). Knows the template
/// actions the chart uses: `$labels.X`, `$value | F`, and `if eq $labels.X "V"`/`else`/`end`.
fn expand_annotation(text: &str, labels: &Value, value: &str) -> Result<String> {
    let mut out = String::new();
    // For each open `if`: whether its parent was output, and whether its condition held.
    let mut open: Vec<(bool, bool)> = Vec::new();
    let mut output = true;
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if output {
            out.push_str(&rest[..start]);
        }
        let end = start
            + rest[start..]
                .find("}}")
                .ok_or_else(|| anyhow!("unclosed action in {text}"))?;
        let action = rest[start + 2..end].trim();
        rest = &rest[end + 2..];
        if let Some(condition) = action.strip_prefix("if ") {
            let words: Vec<&str> = condition.split_whitespace().collect();
            let holds = match words.as_slice() {
                ["eq", label, want] => {
                    let name = label
                        .strip_prefix("$labels.")
                        .ok_or_else(|| anyhow!("unknown condition {condition}"))?;
                    labels[name].as_str().unwrap_or_default() == want.trim_matches('"')
                }
                _ => bail!("unknown condition {condition}"),
            };
            open.push((output, holds));
            output = output && holds;
        } else if action == "else" {
            let (parent, holds) = *open.last().ok_or_else(|| anyhow!("else without if"))?;
            output = parent && !holds;
        } else if action == "end" {
            output = open.pop().ok_or_else(|| anyhow!("end without if"))?.0;
        } else if let Some(name) = action.strip_prefix("$labels.") {
            if output {
                out.push_str(labels[name].as_str().unwrap_or_default());
            }
        } else if action.starts_with("$value") {
            if output {
                out.push_str(value);
            }
        } else {
            bail!("unknown template action {action:?} in {text}");
        }
    }
    ensure!(open.is_empty(), "unclosed if in {text}");
    if output {
        out.push_str(rest);
    }
    Ok(out)
}

/// The alerting rules of a rendered PrometheusRule's groups.
fn alert_rules(groups: &Value) -> Vec<&Value> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect()
}

/// An `exp_alerts` entry: the alert's labels (with its severity and the release's extra label)
/// and its annotations expanded for them.
fn expected_alert(rules: &[&Value], alert: &str, labels: Value, value: &str) -> Result<Value> {
    let rule = rules
        .iter()
        .find(|r| r["alert"] == json!(alert))
        .ok_or_else(|| anyhow!("no {alert}"))?;
    let mut labels = labels;
    let map = labels
        .as_object_mut()
        .ok_or_else(|| anyhow!("labels is not a map"))?;
    map.insert("severity".into(), rule["labels"]["severity"].clone());
    map.insert("team".into(), json!("telephony"));
    let mut annotations = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_object().into_iter().flatten() {
        let text = expand_annotation(v.as_str().unwrap_or_default(), &labels, value)?;
        annotations.insert(k.clone(), Value::String(text));
    }
    Ok(json!({"exp_labels": labels, "exp_annotations": annotations}))
}

/// The alerts, each with its severity, what its summary must name, and its runbook.
const ALERTS: &[(&str, &str, &[&str])] = &[
    ("SwitchboardOperatorDown", "critical", &[]),
    ("SwitchboardReconcileErrors", "warning", &[]),
    (
        "SwitchboardServiceLevelLow",
        "warning",
        &["center", "queue"],
    ),
    (
        "SwitchboardAbandonRateHigh",
        "warning",
        &["center", "queue"],
    ),
    (
        "SwitchboardCallersWaitingWithNoAgent",
        "critical",
        &["center", "queue"],
    ),
    (
        "SwitchboardTrunkNearChannelLimit",
        "warning",
        &["center", "trunk"],
    ),
    (
        "SwitchboardTrunkCallsBlocked",
        "critical",
        &["center", "trunk"],
    ),
    (
        "SwitchboardRecordingFailures",
        "critical",
        &["center", "pod"],
    ),
    ("SwitchboardCallCenterDown", "critical", &["center"]),
    ("SwitchboardMediaNodeDown", "warning", &["center", "pod"]),
    ("SwitchboardNoActiveMediaNode", "critical", &["center"]),
    ("SwitchboardStandbyNotReady", "warning", &["center", "pod"]),
    (
        "SwitchboardReplicationLagging",
        "warning",
        &["center", "pod"],
    ),
    ("SwitchboardFailover", "warning", &["center", "pod"]),
];

/// Runs promtool with `args` in `dir`; fails with its output.
fn promtool(dir: &std::path::Path, args: &[&str]) -> Result<String> {
    let result = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run promtool (Debian package prometheus, in the helm set of tests/k8s/install-packages)")?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    ensure!(result.status.success(), "promtool {args:?} failed:\n{out}");
    Ok(out)
}

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
        "--set",
        "alerts.serviceLevel.queueTargets.emergency=0.95",
    ])?;
    let docs = documents(&yaml)?;
    let groups = at(only(&docs, "PrometheusRule")?, "/spec/groups")?;
    let rules = alert_rules(groups);

    // Every alert is there once, labelled, described, and linked to a runbook page that exists
    // and has the runbooks' sections.
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    let want: Vec<&str> = ALERTS.iter().map(|(name, _, _)| *name).collect();
    ensure!(names == want, "alerts {names:?}, want {want:?}");
    let exported = exported_metric_names()?;
    for (rule, (alert, severity, named)) in rules.iter().zip(ALERTS) {
        ensure!(
            rule["labels"]["severity"] == json!(severity),
            "{alert}: severity {}",
            rule["labels"]
        );
        ensure!(
            rule["labels"]["team"] == json!("telephony"),
            "{alert}: extra labels missing"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap_or_default();
        for label in *named {
            ensure!(
                summary.contains(&format!("{{{{ $labels.{label} }}}}")),
                "{alert}: the summary does not name the {label}: {summary}"
            );
        }
        ensure!(
            rule["annotations"]["description"]
                .as_str()
                .is_some_and(|s| s.len() > 40),
            "{alert}: no description"
        );
        let page = format!("{}.md", alert.to_lowercase());
        ensure!(
            rule["annotations"]["runbook_url"]
                == json!(format!(
                    "https://github.com/switchboard-dev/switchboard/blob/main/docs/runbooks/{page}"
                )),
            "{alert}: runbook_url {}",
            rule["annotations"]["runbook_url"]
        );
        let runbook = std::fs::read_to_string(repo_root().join("docs/runbooks").join(&page))
            .with_context(|| format!("{alert}: no runbook docs/runbooks/{page}"))?;
        for part in [
            format!("# {alert}\n"),
            format!("**Severity:** {severity}\n"),
            "## What it means\n".to_string(),
            "## How to confirm\n".to_string(),
            "## What to do\n".to_string(),
        ] {
            ensure!(
                runbook.contains(&part),
                "docs/runbooks/{page} lacks {part:?}"
            );
        }
        // Only metrics that exist (or are to, for high availability), and Prometheus' `up`.
        let expr = rule["expr"].as_str().unwrap_or_default();
        for name in promql_metric_names(expr)? {
            ensure!(
                exported.contains(&name) || name == "up",
                "{alert} uses {name}, which no code exports"
            );
        }
    }

    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&json!({"groups": groups}))?,
    )?;
    let out = promtool(dir.path(), &["check", "rules", "rules.yaml"])?;
    ensure!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "promtool output:\n{out}"
    );

    // The alerts fire when they should, for this release only: a unit test of the rules.
    let expect =
        |alert: &str, labels: Value, value: &str| expected_alert(&rules, alert, labels, value);
    let operator = |severity: &str| json!({"severity": severity, "job": "sb-switchboard", "namespace": "telephony"});
    let operator_tests = json!([{
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
            {"eval_time": "15m", "alertname": "SwitchboardOperatorDown", "exp_alerts": [
                expect("SwitchboardOperatorDown", operator("critical"), "")?
            ]},
            {"eval_time": "10m", "alertname": "SwitchboardReconcileErrors", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "SwitchboardReconcileErrors", "exp_alerts": [
                expect("SwitchboardReconcileErrors", operator("warning"), "1")?
            ]}
        ]
    }, {
        // Never scraped at all (only another release is): absent() fires.
        "interval": "1m",
        "input_series": [
            {"series": "up{job=\"other-switchboard\",namespace=\"telephony\",instance=\"b\"}", "values": "1x20"}
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "SwitchboardOperatorDown", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "SwitchboardOperatorDown", "exp_alerts": [
                expect("SwitchboardOperatorDown", operator("critical"), "")?
            ]},
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
    }]);

    // The call centers, as scraped through their `<center>-media-metrics` Services. Node 0 of
    // each center is the active one, node 1 the standby. Every alert has a case that fires and
    // near misses that must not: an exp_alerts list is the complete set of firing alerts.
    let node = |center: &str, n: u32| {
        format!(
            "namespace=\"college\",job=\"{center}-media-metrics\",instance=\"{center}-{n}:9090\",pod=\"{center}-media-{n}\""
        )
    };
    let series = |metric: &str, center: &str, n: u32, extra: &str, values: &str| {
        let sep = if extra.is_empty() { "" } else { "," };
        json!({"series": format!("{metric}{{{}{sep}{extra}}}", node(center, n)), "values": values})
    };
    let center_labels = |center: &str| json!({"namespace": "college", "job": format!("{center}-media-metrics"), "center": center});
    let with = |center: &str, key: &str, value: &str| {
        let mut labels = center_labels(center);
        labels[key] = json!(value);
        labels
    };
    let node_labels = |center: &str, n: u32| {
        let mut labels = center_labels(center);
        labels["instance"] = json!(format!("{center}-{n}:9090"));
        labels["pod"] = json!(format!("{center}-media-{n}"));
        labels
    };
    let sl =
        |queue: &str, def: &str| format!("queue=\"{queue}\",window=\"15m\",definition=\"{def}\"");
    let q15 = |queue: &str| format!("queue=\"{queue}\",window=\"15m\"");
    let q = |queue: &str| format!("queue=\"{queue}\"");
    let agents = |queue: &str, state: &str| format!("queue=\"{queue}\",state=\"{state}\"");
    let t = |trunk: &str| format!("trunk=\"{trunk}\"");
    let role = |r: &str| format!("role=\"{r}\"");
    const N: &str = "0x40"; // a series that stays 0 for the whole test
    let none = String::new;
    // (metric without its switchboard_ prefix, center, node, extra labels, values)
    let rows: Vec<(&str, &str, u32, String, &str)> = vec![
        // Service level: sales is below 80 % with 20 calls; emergency below its own 95 %;
        // support is below but had only 9 calls; billing meets the target; the
        // answered_and_abandoned figure of billing is low but not the one compared.
        (
            "queue_service_level_ratio",
            "campus",
            0,
            sl("sales", "answered"),
            "0.6x40",
        ),
        ("queue_calls_offered", "campus", 0, q15("sales"), "20x40"),
        (
            "queue_service_level_ratio",
            "campus",
            0,
            sl("emergency", "answered"),
            "0.9x40",
        ),
        (
            "queue_calls_offered",
            "campus",
            0,
            q15("emergency"),
            "20x40",
        ),
        (
            "queue_service_level_ratio",
            "campus",
            0,
            sl("support", "answered"),
            "0.5x40",
        ),
        ("queue_calls_offered", "campus", 0, q15("support"), "9x40"),
        (
            "queue_service_level_ratio",
            "campus",
            0,
            sl("billing", "answered"),
            "0.81x40",
        ),
        (
            "queue_service_level_ratio",
            "campus",
            0,
            sl("billing", "answered_and_abandoned"),
            "0.5x40",
        ),
        ("queue_calls_offered", "campus", 0, q15("billing"), "50x40"),
        // The standby's idle view of sales: no calls offered, no service level.
        ("queue_calls_offered", "campus", 1, q15("sales"), N),
        // Abandon rate: sales 25 %; support 50 % of 9 calls; billing exactly 10 %.
        ("queue_abandon_ratio", "campus", 0, q15("sales"), "0.25x40"),
        ("queue_abandon_ratio", "campus", 0, q15("support"), "0.5x40"),
        ("queue_abandon_ratio", "campus", 0, q15("billing"), "0.1x40"),
        // Waiting callers: sales has 3 and every agent NotReady; billing has 2 and every
        // agent Busy (normal queueing); support has nobody waiting and no agent. The
        // standby's replicated view of sales shows a Ready agent: it must not hide the
        // active node's view.
        ("queue_calls_waiting", "campus", 0, q("sales"), "3x40"),
        ("queue_agents", "campus", 0, agents("sales", "ready"), N),
        (
            "queue_agents",
            "campus",
            0,
            agents("sales", "not_ready"),
            "2x40",
        ),
        ("queue_agents", "campus", 0, agents("sales", "busy"), N),
        ("queue_agents", "campus", 0, agents("sales", "ringing"), N),
        ("queue_agents", "campus", 0, agents("sales", "wrap_up"), N),
        ("queue_calls_waiting", "campus", 0, q("billing"), "2x40"),
        ("queue_agents", "campus", 0, agents("billing", "ready"), N),
        (
            "queue_agents",
            "campus",
            0,
            agents("billing", "busy"),
            "2x40",
        ),
        ("queue_calls_waiting", "campus", 0, q("support"), N),
        ("queue_agents", "campus", 0, agents("support", "ready"), N),
        ("queue_calls_waiting", "campus", 1, q("sales"), N),
        (
            "queue_agents",
            "campus",
            1,
            agents("sales", "ready"),
            "1x40",
        ),
        // Trunks: pstn has 28 of 30 channels busy and blocks a call a minute; backup has 26
        // of 30 busy and blocked 4 calls in the last 15 minutes; spare has a
        // limit of 0, which is no utilization.
        ("trunk_channels_busy", "campus", 0, t("pstn"), "28x40"),
        ("trunk_channel_limit", "campus", 0, t("pstn"), "30x40"),
        (
            "trunk_calls_blocked_total",
            "campus",
            0,
            t("pstn"),
            "0+1x40",
        ),
        ("trunk_channels_busy", "campus", 0, t("backup"), "26x40"),
        ("trunk_channel_limit", "campus", 0, t("backup"), "30x40"),
        (
            "trunk_calls_blocked_total",
            "campus",
            0,
            t("backup"),
            "0x20 1 2 3 4x16",
        ),
        ("trunk_channels_busy", "campus", 0, t("spare"), "1x40"),
        ("trunk_channel_limit", "campus", 0, t("spare"), N),
        ("trunk_channels_busy", "campus", 1, t("pstn"), N),
        ("trunk_channel_limit", "campus", 1, t("pstn"), "30x40"),
        ("trunk_calls_blocked_total", "campus", 1, t("pstn"), N),
        // Recording: node 0 fails one write at 25m; node 1 failed long ago.
        ("recording_failures_total", "campus", 0, none(), "0x25 1x15"),
        ("recording_failures_total", "campus", 1, none(), "3x40"),
        // Roles: campus is healthy (its standby 3 s behind, briefly 9 s), depot has no
        // active node, plant's standby is not ready and lags 12 s (its active node reports
        // figures of its own that mean nothing there).
        ("node_role", "campus", 0, role("active"), "1x40"),
        ("node_role", "campus", 0, role("standby"), N),
        ("node_role", "campus", 1, role("active"), N),
        ("node_role", "campus", 1, role("standby"), "1x40"),
        ("standby_ready", "campus", 1, none(), "1x40"),
        (
            "replication_lag_seconds",
            "campus",
            1,
            none(),
            "3x20 9x3 3x16",
        ),
        ("node_role", "depot", 0, role("active"), N),
        ("node_role", "depot", 0, role("standby"), "1x40"),
        ("node_role", "depot", 1, role("active"), N),
        ("node_role", "depot", 1, role("standby"), "1x40"),
        ("node_role", "plant", 0, role("active"), "1x40"),
        ("node_role", "plant", 0, role("standby"), N),
        ("standby_ready", "plant", 0, none(), N),
        ("replication_lag_seconds", "plant", 0, none(), "30x40"),
        ("node_role", "plant", 1, role("active"), N),
        ("node_role", "plant", 1, role("standby"), "1x40"),
        ("standby_ready", "plant", 1, none(), N),
        ("replication_lag_seconds", "plant", 1, none(), "12x40"),
        // Failovers: campus node 0 took over at 21m; plant node 0 did so long ago.
        ("failovers_total", "campus", 0, none(), "0x20 1x20"),
        ("failovers_total", "campus", 1, none(), N),
        ("failovers_total", "plant", 0, none(), "2x40"),
        // Up: campus, depot and plant are up; clinic has lost node 1; ward has lost both;
        // annex's pods vanished at 10m (Pending pods have no endpoint to scrape).
        ("up", "campus", 0, none(), "1x40"),
        ("up", "campus", 1, none(), "1x40"),
        ("up", "depot", 0, none(), "1x40"),
        ("up", "depot", 1, none(), "1x40"),
        ("up", "plant", 0, none(), "1x40"),
        ("up", "plant", 1, none(), "1x40"),
        ("up", "clinic", 0, none(), "1x40"),
        ("up", "clinic", 1, none(), "1x5 0x35"),
        ("up", "ward", 0, none(), "1x5 0x35"),
        ("up", "ward", 1, none(), "1x5 0x35"),
        ("up", "annex", 0, none(), "1x10"),
        ("up", "annex", 1, none(), "1x10"),
    ];
    let mut input: Vec<Value> = rows
        .into_iter()
        .map(|(metric, center, n, extra, values)| {
            let metric = if metric == "up" {
                metric.to_string()
            } else {
                format!("switchboard_{metric}")
            };
            series(&metric, center, n, &extra, values)
        })
        .collect();
    // The operator is up, so its alerts stay out of the way.
    input.push(json!({"series": "up{job=\"sb-switchboard\",namespace=\"telephony\",instance=\"a\"}", "values": "1x40"}));
    // Another Prometheus job that happens to export queue figures is not a media node.
    input.push(json!({"series": "switchboard_queue_calls_waiting{namespace=\"college\",job=\"campus-media\",instance=\"x\",queue=\"sales\"}", "values": "9x40"}));
    let fires = |time: &str, alert: &str, alerts: Vec<Value>| json!({"eval_time": time, "alertname": alert, "exp_alerts": alerts});
    let call_center_tests = json!([{
        "interval": "1m",
        "input_series": input,
        "alert_rule_test": [
            fires("10m", "SwitchboardServiceLevelLow", vec![]),
            fires("20m", "SwitchboardServiceLevelLow", vec![
                expect("SwitchboardServiceLevelLow", with("campus", "queue", "emergency"), "90%")?,
                expect("SwitchboardServiceLevelLow", with("campus", "queue", "sales"), "60%")?,
            ]),
            fires("10m", "SwitchboardAbandonRateHigh", vec![]),
            fires("20m", "SwitchboardAbandonRateHigh", vec![
                expect("SwitchboardAbandonRateHigh", with("campus", "queue", "sales"), "25%")?,
            ]),
            fires("1m", "SwitchboardCallersWaitingWithNoAgent", vec![]),
            fires("5m", "SwitchboardCallersWaitingWithNoAgent", vec![
                expect("SwitchboardCallersWaitingWithNoAgent", with("campus", "queue", "sales"), "3")?,
            ]),
            fires("5m", "SwitchboardTrunkNearChannelLimit", vec![]),
            fires("15m", "SwitchboardTrunkNearChannelLimit", vec![
                expect("SwitchboardTrunkNearChannelLimit", with("campus", "trunk", "pstn"), "93.33%")?,
            ]),
            fires("30m", "SwitchboardTrunkCallsBlocked", vec![
                expect("SwitchboardTrunkCallsBlocked", with("campus", "trunk", "pstn"), "15")?,
            ]),
            fires("20m", "SwitchboardRecordingFailures", vec![]),
            fires("30m", "SwitchboardRecordingFailures", vec![
                expect("SwitchboardRecordingFailures", node_labels("campus", 0), "1")?,
            ]),
            fires("40m", "SwitchboardRecordingFailures", vec![]),
            fires("6m", "SwitchboardCallCenterDown", vec![]),
            fires("30m", "SwitchboardCallCenterDown", vec![
                expect("SwitchboardCallCenterDown", center_labels("annex"), "0")?,
                expect("SwitchboardCallCenterDown", center_labels("ward"), "0")?,
            ]),
            fires("8m", "SwitchboardMediaNodeDown", vec![]),
            fires("30m", "SwitchboardMediaNodeDown", vec![
                expect("SwitchboardMediaNodeDown", node_labels("clinic", 1), "0")?,
            ]),
            fires("30m", "SwitchboardNoActiveMediaNode", vec![
                expect("SwitchboardNoActiveMediaNode", center_labels("depot"), "0")?,
            ]),
            fires("5m", "SwitchboardStandbyNotReady", vec![]),
            fires("30m", "SwitchboardStandbyNotReady", vec![
                expect("SwitchboardStandbyNotReady", node_labels("plant", 1), "0")?,
            ]),
            fires("25m", "SwitchboardReplicationLagging", vec![
                expect("SwitchboardReplicationLagging", node_labels("plant", 1), "12s")?,
            ]),
            fires("15m", "SwitchboardFailover", vec![]),
            fires("30m", "SwitchboardFailover", vec![
                expect("SwitchboardFailover", node_labels("campus", 0), "1")?,
            ]),
            fires("40m", "SwitchboardFailover", vec![]),
        ]
    }]);

    let mut tests = operator_tests
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("tests"))?;
    tests.extend(call_center_tests.as_array().cloned().into_iter().flatten());
    let test = json!({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests});
    std::fs::write(
        dir.path().join("rules_test.yaml"),
        serde_yaml::to_string(&test)?,
    )?;
    promtool(dir.path(), &["test", "rules", "rules_test.yaml"])?;

    // Thresholds are checked by the schema.
    for (needle, set) in [
        (
            "alerts.serviceLevel.target",
            "alerts.serviceLevel.target=1.5",
        ),
        (
            "alerts.serviceLevel.definition",
            "alerts.serviceLevel.definition=all",
        ),
        ("alerts.trunks.utilization", "alerts.trunks.utilization=0"),
        ("alerts.callersWaiting.for", "alerts.callersWaiting.for=2"),
        (
            "emergency",
            "alerts.serviceLevel.queueTargets.emergency=high",
        ),
    ] {
        let stderr = render_failure(&["--set", set])?;
        ensure!(
            stderr.contains(needle),
            "{set}: the schema error does not name {needle}:\n{stderr}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (f) Grafana dashboard

#[test]
fn grafana_dashboard_is_opt_in_and_uses_only_exported_metrics() -> Result<()> {
    // Absent by default.
    let docs = documents(&render(&["--namespace", NS])?)?;
    ensure!(
        !kinds(&docs).contains("ConfigMap"),
        "a dashboard ConfigMap rendered by default"
    );

    let yaml = render(&[
        "--namespace",
        NS,
        "--set",
        "dashboards.enabled=true",
        "--set",
        "dashboards.annotations.grafana_folder=Telephony",
    ])?;
    ensure!(yaml.contains("# Source: switchboard/templates/dashboard.yaml\n"));
    let docs = documents(&yaml)?;
    let cm = only(&docs, "ConfigMap")?;
    ensure!(str_at(cm, "/metadata/name")? == format!("{FULLNAME}-dashboards"));
    ensure!(str_at(cm, "/metadata/namespace")? == NS);
    ensure!(
        str_at(cm, "/metadata/labels/grafana_dashboard")? == "1",
        "no sidecar label: {}",
        cm["metadata"]
    );
    ensure!(str_at(cm, "/metadata/annotations/grafana_folder")? == "Telephony");

    // Every dashboard file of the chart is in the ConfigMap.
    let files: BTreeSet<String> = std::fs::read_dir(chart_dir().join("dashboards"))?
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.ends_with(".json"))
        .collect();
    let data = at(cm, "/data")?
        .as_object()
        .ok_or_else(|| anyhow!("data is not a map"))?;
    let keys: BTreeSet<String> = data.keys().cloned().collect();
    ensure!(
        keys == files && !files.is_empty(),
        "ConfigMap holds {keys:?}, the chart has {files:?}"
    );

    let exported = exported_metric_names()?;
    let mut used = BTreeSet::new();
    for (file, text) in data {
        let dashboard: Value = serde_json::from_str(text.as_str().unwrap_or_default())
            .with_context(|| format!("{file} is not JSON"))?;
        ensure!(
            dashboard["uid"].as_str().is_some_and(|u| !u.is_empty())
                && dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: no uid or title"
        );
        // Templated on the data source, the namespace and the call center.
        let variables = dashboard
            .pointer("/templating/list")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("{file}: no template variables"))?;
        let variable = |name: &str| variables.iter().find(|v| v["name"] == json!(name));
        ensure!(
            variable("datasource").is_some_and(
                |v| v["type"] == json!("datasource") && v["query"] == json!("prometheus")
            ),
            "{file}: no Prometheus datasource variable"
        );
        for name in ["namespace", "center"] {
            ensure!(
                variable(name).is_some_and(|v| v["type"] == json!("query")),
                "{file}: no {name} variable"
            );
        }
        let panels = dashboard["panels"]
            .as_array()
            .ok_or_else(|| anyhow!("{file}: no panels"))?;
        let mut queries = 0;
        for panel in panels.iter().filter(|p| p["type"] != json!("row")) {
            let title = panel["title"].as_str().unwrap_or("?");
            ensure!(
                panel.pointer("/datasource/uid") == Some(&json!("${datasource}")),
                "{file}: panel {title:?} does not use the datasource variable"
            );
            let targets = panel["targets"]
                .as_array()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| anyhow!("{file}: panel {title:?} has no queries"))?;
            for target in targets {
                let expr = target["expr"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{file}: panel {title:?} has a query without expr"))?;
                ensure!(
                    expr.contains("namespace=~\"$namespace\"") && expr.contains("$center"),
                    "{file}: panel {title:?} ignores the namespace or center variable: {expr}"
                );
                let names = promql_metric_names(expr)?;
                ensure!(
                    !names.is_empty(),
                    "{file}: panel {title:?} selects no metric: {expr}"
                );
                for name in names {
                    ensure!(
                        exported.contains(&name),
                        "{file}: panel {title:?} uses {name}, which no code exports"
                    );
                    used.insert(name);
                }
                queries += 1;
            }
        }
        ensure!(queries > 0, "{file}: no queries");
    }
    // What the on-call staff look for is on it.
    for name in [
        "switchboard_queue_service_level_ratio",
        "switchboard_queue_calls_waiting",
        "switchboard_agent_state",
        "switchboard_queue_agents",
        "switchboard_trunk_channels_busy",
        "switchboard_trunk_channel_limit",
        "switchboard_trunk_calls_blocked_total",
        "switchboard_node_role",
    ] {
        ensure!(used.contains(name), "no panel shows {name}");
    }

    // Another sidecar label, and Grafana's namespace.
    let docs = documents(&render(&[
        "--namespace",
        NS,
        "--set",
        "dashboards.enabled=true,dashboards.label=dashboards,dashboards.labelValue=switchboard,dashboards.namespace=monitoring",
    ])?)?;
    let cm = only(&docs, "ConfigMap")?;
    ensure!(str_at(cm, "/metadata/namespace")? == "monitoring");
    ensure!(str_at(cm, "/metadata/labels/dashboards")? == "switchboard");
    ensure!(
        cm.pointer("/metadata/labels/grafana_dashboard").is_none(),
        "the default sidecar label is still set"
    );
    ensure!(cm.pointer("/metadata/annotations").is_none());
    let stderr = render_failure(&["--set", "dashboards.enabled=true,dashboards.namespace=Mon"])?;
    ensure!(
        stderr.contains("dashboards.namespace"),
        "the schema error does not name dashboards.namespace:\n{stderr}"
    );
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
    switchboard_tests::ensure_all_applied(&applied)?;
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
        let cleaned = switchboard_tests::cluster::clean_up(
            &client,
            &switchboard_tests::cluster::Cleanup {
                cluster_scoped,
                volumes: Vec::new(),
            },
        )
        .await;
        result.and(cleaned)
    }
    .await;
    let deleted = ns.delete().await;
    outcome?;
    deleted
}
