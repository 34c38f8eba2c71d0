//! The API on a real kube-apiserver: the CRDs install by server-side apply, every example
//! applies cleanly, and invalid manifests are rejected with a message that names the field,
//! by the OpenAPI schema or by the operator's admission webhook.

use std::time::Duration;

use anyhow::Result;
use switchboard_tests::webhook::NamespaceWebhook;
use switchboard_tests::{
    TestNamespace, apply_yaml, control_plane, control_plane_kubeconfig, install_crds, kubectl,
    repo_root, wait_for, yaml_documents,
};

fn example(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples").join(name)).expect("example exists")
}

/// Waits until the API server routes the namespace's requests through the new webhook: the
/// API server learns about webhook configurations a moment after they are created.
async fn webhook_in_force(client: &kube::Client, ns: &str) -> Result<()> {
    let probe = r#"
apiVersion: switchboard.dev/v1alpha1
kind: CallCenter
metadata: {name: webhook-probe}
spec:
  sip: {domain: probe.example}
  rtp: {minPort: 20000, maxPort: 10000}
"#;
    wait_for(
        Duration::from_secs(30),
        "the webhook to be in force",
        || async {
            let applied = apply_yaml(client, probe, ns).await.ok()?;
            match &applied[0].result {
                Err(e) if e.to_string().contains("spec.rtp.maxPort") => Some(()),
                Ok(_) => {
                    // Accepted before the webhook was in force: remove it and try again.
                    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
                        client.clone(),
                        ns,
                        &kube::discovery::ApiResource::erase::<switchboard_crds::CallCenter>(&()),
                    );
                    let _ = api.delete("webhook-probe", &Default::default()).await;
                    None
                }
                Err(_) => None,
            }
        },
    )
    .await
}

#[tokio::test]
async fn crds_install_and_are_served_with_names_and_category() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    let discovery = kube::Discovery::new(client.clone())
        .filter(&["switchboard.dev"])
        .run()
        .await?;
    let group = discovery.get("switchboard.dev").expect("group served");
    let mut kinds: Vec<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(ar, _)| ar.kind)
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec!["CallCenter", "Queue", "Seat"]);
    // Applying the same CRDs again is a no-op, not a conflict.
    install_crds(&client).await?;
    Ok(())
}

#[tokio::test]
async fn every_example_applies_cleanly_with_the_webhook_in_force() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    for name in ["minimal.yaml", "campus.yaml"] {
        let ns = TestNamespace::create(&client, "example").await?;
        let webhook = NamespaceWebhook::start(&client, &ns.name).await?;
        webhook_in_force(&client, &ns.name).await?;
        let yaml = example(name);
        let applied = apply_yaml(&client, &yaml, &ns.name).await?;
        assert_eq!(applied.len(), yaml_documents(&yaml)?.len());
        for a in &applied {
            if let Err(e) = &a.result {
                panic!("{name}: {} {:?} rejected: {e}", a.kind, a.name);
            }
        }
        // The API server filled in the schema's defaults.
        let center = applied
            .iter()
            .find(|a| a.kind == "CallCenter")
            .expect("a CallCenter");
        let stored = center.result.as_ref().expect("applied");
        assert!(stored.data["spec"]["sip"]["udpPort"].as_u64().is_some());
        assert!(
            stored.data["spec"]["recording"]["retentionDays"]
                .as_u64()
                .is_some()
        );
        webhook.stop().await?;
        ns.delete().await?;
    }
    Ok(())
}

/// Runs kubectl v1.20.2 against the test control plane and returns its standard output.
fn run_kubectl(args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(kubectl()?)
        .env("KUBECONFIG", control_plane_kubeconfig()?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn kubectl_explains_fields_and_shows_the_columns() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    // The API server publishes each new CRD's OpenAPI a moment after it is established.
    let explain = |field: &'static str, want: &'static [&'static str]| {
        wait_for(Duration::from_secs(60), field, move || async move {
            let out = run_kubectl(&["explain", field]).ok()?;
            want.iter().all(|w| out.contains(w)).then_some(out)
        })
    };
    explain(
        "callcenters.spec.rtp.minPort",
        &["Lowest RTP port", "integer"],
    )
    .await?;
    explain("seat.spec.role", &["Supervisor", "team-leader"]).await?;
    explain("queue.spec.strategy", &["How the next agent is chosen"]).await?;

    let ns = TestNamespace::create(&client, "kubectl").await?;
    for a in apply_yaml(&client, &example("minimal.yaml"), &ns.name).await? {
        a.result?;
    }
    let queues = run_kubectl(&["get", "queues", "-n", &ns.name])?;
    let header = queues.lines().next().unwrap_or_default();
    for column in [
        "NAME", "CENTER", "WAITING", "LONGEST", "READY", "SL%", "AGE",
    ] {
        assert!(
            header.contains(column),
            "kubectl get queues lacks {column}: {queues}"
        );
    }
    assert!(queues.contains("support"), "{queues}");
    let seats = run_kubectl(&["get", "st", "-n", &ns.name])?;
    for column in ["EXTENSION", "ROLE", "STATE", "REGISTERED"] {
        assert!(
            seats.lines().next().unwrap_or_default().contains(column),
            "{seats}"
        );
    }
    let all = run_kubectl(&["get", "switchboard", "-n", &ns.name, "-o", "name"])?;
    for object in [
        "callcenter.switchboard.dev/minimal",
        "queue.switchboard.dev/support",
        "seat.switchboard.dev/agent-1001",
    ] {
        assert!(
            all.contains(object),
            "the switchboard category lacks {object}: {all}"
        );
    }
    ns.delete().await?;
    Ok(())
}

/// One invalid manifest: what it breaks, the YAML, and the text the rejection must contain.
/// The 1.20 API server names schema errors inside lists without the index
/// (`spec.skills.proficiency`); the webhook names them with it (`spec.queues[1].name`).
struct Invalid {
    what: &'static str,
    yaml: String,
    expect: &'static [&'static str],
}

fn center(spec: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: CallCenter\nmetadata: {{name: bad}}\nspec:\n{spec}"
    )
}
fn queue(spec: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: Queue\nmetadata: {{name: bad-queue}}\nspec:\n  callCenter: campus\n{spec}"
    )
}
fn seat(spec: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: Seat\nmetadata: {{name: bad-seat}}\nspec:\n  callCenter: campus\n  displayName: A\n  credentials: {{name: pw}}\n{spec}"
    )
}

fn invalid_manifests() -> Vec<Invalid> {
    let sip = "  sip: {domain: cc.example.edu}\n";
    vec![
        Invalid { what: "missing required sip", yaml: center("  codecs: [PCMU]\n"), expect: &["spec.sip", "Required value"] },
        Invalid { what: "wrong HA enum", yaml: center(&format!("{sip}  highAvailability: {{mode: Active}}\n")), expect: &["spec.highAvailability.mode", "Unsupported value"] },
        Invalid { what: "unknown codec", yaml: center(&format!("{sip}  codecs: [G729]\n")), expect: &["spec.codecs", "Unsupported value"] },
        Invalid { what: "port out of range", yaml: center("  sip: {domain: cc.example.edu, udpPort: 70000}\n"), expect: &["spec.sip.udpPort", "65535"] },
        Invalid { what: "inverted RTP range", yaml: center(&format!("{sip}  rtp: {{minPort: 20000, maxPort: 10000}}\n")), expect: &["spec.rtp.maxPort", "must be above spec.rtp.minPort"] },
        Invalid { what: "RTP range below 1024", yaml: center(&format!("{sip}  rtp: {{minPort: 80, maxPort: 10000}}\n")), expect: &["spec.rtp.minPort", "1024"] },
        Invalid { what: "bad inbound E.164 number", yaml: center(&format!("{sip}  trunks:\n  - name: pstn\n    peer: {{host: 192.0.2.1}}\n    inboundNumbers: [\"02150000000\"]\n")), expect: &["spec.trunks.inboundNumbers", "should match"] },
        Invalid { what: "channel limit above maximum", yaml: center(&format!("{sip}  trunks:\n  - name: pstn\n    peer: {{host: 192.0.2.1}}\n    channels: {{limit: 40, maxChannels: 30}}\n")), expect: &["spec.trunks[0].channels.limit", "minChannels..maxChannels"] },
        Invalid { what: "menu route to a missing menu", yaml: center(&format!("{sip}  entryPoints:\n  - number: \"8000\"\n    route: {{action: Menu, target: nowhere}}\n")), expect: &["spec.entryPoints[0].route.target", "not one of spec.ivrMenus"] },
        Invalid { what: "bad DTMF digit", yaml: center(&format!("{sip}  ivrMenus:\n  - name: main\n    prompt: welcome.wav\n    options:\n    - digit: \"12\"\n      route: {{action: Hangup}}\n")), expect: &["spec.ivrMenus.options.digit", "should match"] },
        Invalid { what: "unknown time zone", yaml: center(&format!("{sip}  businessHours:\n    timeZone: Mars/Olympus\n    weekly: [{{days: [Monday], open: \"08:00\", close: \"17:00\"}}]\n")), expect: &["spec.businessHours.timeZone", "IANA"] },
        Invalid { what: "closing before opening", yaml: center(&format!("{sip}  businessHours:\n    timeZone: Asia/Shanghai\n    weekly: [{{days: [Monday], open: \"18:00\", close: \"08:00\"}}]\n")), expect: &["spec.businessHours.weekly[0].close", "must be after open"] },
        Invalid { what: "bad clock time", yaml: center(&format!("{sip}  businessHours:\n    timeZone: Asia/Shanghai\n    weekly: [{{days: [Monday], open: \"8am\", close: \"17:00\"}}]\n")), expect: &["spec.businessHours.weekly.open", "should match"] },
        Invalid { what: "renew not below lease", yaml: center(&format!("{sip}  highAvailability: {{mode: HotStandby, leaseDurationSeconds: 5, renewIntervalSeconds: 5}}\n")), expect: &["spec.highAvailability.renewIntervalSeconds", "must be below"] },
        Invalid { what: "wrong strategy enum", yaml: queue("  strategy: Loudest\n"), expect: &["spec.strategy", "Unsupported value"] },
        Invalid { what: "queue missing callCenter", yaml: "apiVersion: switchboard.dev/v1alpha1\nkind: Queue\nmetadata: {name: q}\nspec:\n  strategy: RingAll\n".to_string(), expect: &["spec.callCenter", "Required value"] },
        Invalid { what: "ring timeout out of range", yaml: queue("  ringTimeoutSeconds: 1\n"), expect: &["spec.ringTimeoutSeconds", "5"] },
        Invalid { what: "skill proficiency out of range", yaml: queue("  requiredSkills: [{name: billing, minProficiency: 9}]\n"), expect: &["spec.requiredSkills.minProficiency", "less than or equal to 5"] },
        Invalid { what: "overflow steps out of order", yaml: queue("  overflow:\n  - {afterSeconds: 60, action: Voicemail}\n  - {afterSeconds: 30, action: Voicemail}\n"), expect: &["spec.overflow[1].afterSeconds", "increasing"] },
        Invalid { what: "overflow to a queue without a name", yaml: queue("  overflow:\n  - {afterSeconds: 60, action: Queue}\n"), expect: &["spec.overflow[0].queue", "Required value"] },
        Invalid { what: "extension with a leading zero", yaml: seat("  extension: \"0101\"\n"), expect: &["spec.extension", "should match"] },
        Invalid { what: "extension too long", yaml: seat("  extension: \"123456789\"\n"), expect: &["spec.extension", "should match"] },
        Invalid { what: "wrong role enum", yaml: seat("  extension: \"2001\"\n  role: Boss\n"), expect: &["spec.role", "Unsupported value"] },
        Invalid { what: "seat missing credentials", yaml: "apiVersion: switchboard.dev/v1alpha1\nkind: Seat\nmetadata: {name: s}\nspec:\n  callCenter: campus\n  extension: \"2001\"\n  displayName: A\n".to_string(), expect: &["spec.credentials", "Required value"] },
        Invalid { what: "agent skill proficiency zero", yaml: seat("  extension: \"2001\"\n  skills: [{name: billing, proficiency: 0}]\n"), expect: &["spec.skills.proficiency", "greater than or equal to 1"] },
        Invalid { what: "duplicate queue membership", yaml: seat("  extension: \"2001\"\n  queues: [{name: service}, {name: service}]\n"), expect: &["spec.queues[1].name", "Duplicate value"] },
    ]
}

#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "invalid").await?;
    let webhook = NamespaceWebhook::start(&client, &ns.name).await?;
    webhook_in_force(&client, &ns.name).await?;
    let cases = invalid_manifests();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &cases {
        let applied = apply_yaml(&client, &case.yaml, &ns.name).await?;
        match &applied[0].result {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(e) => {
                let message = e.to_string();
                for want in case.expect {
                    if !message.contains(want) {
                        failures.push(format!(
                            "{}: rejection lacks {want:?}: {message}",
                            case.what
                        ));
                    }
                }
            }
        }
    }
    webhook.stop().await?;
    ns.delete().await?;
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}
