//! The CallCenter controller against a real kube-apiserver: it creates every child with an
//! owner reference, writes status, pushes a new config generation when a Queue changes, and
//! reports a cross-object problem without stopping the rest of the center.
//! (There is no kubelet on this control plane: pods never run, so the center stays
//! Progressing; the end-to-end tests on the single-node cluster cover running nodes.)

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use switchboard_crds::CallCenter;
use switchboard_operator::builders::CONFIG_GENERATION_ANNOTATION;
use switchboard_tests::{
    TestNamespace, apply_yaml, control_plane, install_crds, repo_root, start_controller, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

async fn config_generation(config_maps: &Api<ConfigMap>) -> Option<String> {
    let cm = config_maps.get_opt("minimal-node-config").await.ok()??;
    cm.metadata
        .annotations?
        .get(CONFIG_GENERATION_ANNOTATION)
        .cloned()
}

#[tokio::test]
async fn reconcile_creates_children_and_follows_queue_changes() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator").await?;
    let controller = start_controller(&client, &ns.name).await?;
    let minimal = std::fs::read_to_string(repo_root().join("examples/minimal.yaml"))?;
    for a in apply_yaml(&client, &minimal, &ns.name).await? {
        a.result?;
    }

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let centers: Api<CallCenter> = Api::namespaced(client.clone(), &ns.name);
    // The objects arrive one by one, so the first generations may hold only some of them; wait
    // for the one that serves both seats. Status is written after every child is applied.
    let (generation, status) = wait_for(WAIT, "a config with both seats", || async {
        let cm = config_maps.get_opt("minimal-node-config").await.ok()??;
        let yaml = cm.data.as_ref()?.get("node-config.yaml")?.clone();
        let generation: i64 = cm
            .metadata
            .annotations?
            .get(CONFIG_GENERATION_ANNOTATION)?
            .parse()
            .ok()?;
        let status = centers.get("minimal").await.ok()?.status?;
        (yaml.contains("agent-1002")
            && yaml.contains("agent-1001")
            && status.config_generation == Some(generation))
        .then_some((generation, status))
    })
    .await?;
    assert!(generation >= 1);
    let center = centers.get("minimal").await?;
    let uid = center.uid().unwrap_or_default();
    let owned_by_center =
        |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.is_some_and(|r| r.iter().any(|o| o.uid == uid && o.controller == Some(true)))
        };
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns.name)
        .get("minimal-media")
        .await?;
    assert_eq!(sts.spec.replicas, Some(1));
    assert!(owned_by_center(sts.metadata.owner_references.as_ref()));
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    for name in [
        "minimal-sip",
        "minimal-media-headless",
        "minimal-media-metrics",
    ] {
        let svc = services.get(name).await?;
        assert!(
            owned_by_center(svc.metadata.owner_references.as_ref()),
            "{name}"
        );
    }
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .get("minimal-media")
        .await?;
    Api::<Role>::namespaced(client.clone(), &ns.name)
        .get("minimal-media")
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
        .get("minimal-media")
        .await?;
    let cm = config_maps.get("minimal-node-config").await?;
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("node-config.yaml"))
        .cloned()
        .unwrap_or_default();
    assert!(
        !yaml.contains("practice-1001"),
        "a seat password reached the node config"
    );

    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.status.clone())
    };
    assert_eq!(cond("Degraded").as_deref(), Some("False"));
    assert_eq!(
        cond("Progressing").as_deref(),
        Some("True"),
        "no kubelet here: the node never becomes ready"
    );

    // A Queue change is a new generation; nothing else needs to change.
    let queues: Api<switchboard_crds::Queue> = Api::namespaced(client.clone(), &ns.name);
    queues
        .patch(
            "support",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"strategy": "RingAll"}})),
        )
        .await?;
    let next = (generation + 1).to_string();
    wait_for(WAIT, "the next config generation", || async {
        (config_generation(&config_maps).await.as_deref() == Some(next.as_str())).then_some(())
    })
    .await?;
    let cm = config_maps.get("minimal-node-config").await?;
    assert!(
        cm.data
            .and_then(|d| d.get("node-config.yaml").cloned())
            .unwrap_or_default()
            .contains("RingAll")
    );

    // A rotated seat password is a new generation too (the Secret is watched), carrying the
    // new HA1. First let the reconciles that the Queue change set off (ConfigMap, status) die
    // down, so only the Secret's own event can bring the next generation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    secrets
        .patch(
            "minimal-seat-passwords",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"1001": "rotated-1001"}})),
        )
        .await?;
    let rotated = (generation + 2).to_string();
    wait_for(WAIT, "the generation after the password change", || async {
        (config_generation(&config_maps).await.as_deref() == Some(rotated.as_str())).then_some(())
    })
    .await?;

    // A duplicate extension is reported; the center keeps its config for the other seats.
    let duplicate = r#"
apiVersion: switchboard.dev/v1alpha1
kind: Seat
metadata: {name: zz-agent-copy}
spec:
  callCenter: minimal
  extension: "1001"
  displayName: Copy
  credentials: {name: minimal-seat-passwords, key: "1001"}
"#;
    for a in apply_yaml(&client, duplicate, &ns.name).await? {
        a.result?;
    }
    let degraded = wait_for(WAIT, "Degraded=True", || async {
        let s = centers.get("minimal").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
    })
    .await?;
    assert!(
        degraded.message.contains("zz-agent-copy"),
        "{}",
        degraded.message
    );
    assert!(
        degraded.message.contains("extension"),
        "{}",
        degraded.message
    );
    // The seat left out says why; the others say they are served.
    let seats: Api<switchboard_crds::Seat> = Api::namespaced(client.clone(), &ns.name);
    let resolved = |name: &'static str| {
        let seats = seats.clone();
        async move {
            let status = seats.get(name).await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Resolved")
        }
    };
    let left_out = wait_for(WAIT, "Resolved=False on the copy", || async {
        resolved("zz-agent-copy")
            .await
            .filter(|c| c.status == "False")
    })
    .await?;
    assert_eq!(left_out.reason, "DuplicateExtension");
    assert!(
        left_out.message.contains("spec.extension"),
        "{}",
        left_out.message
    );
    let served = wait_for(WAIT, "Resolved=True on agent-1001", || async {
        resolved("agent-1001").await.filter(|c| c.status == "True")
    })
    .await?;
    assert!(served.message.contains("minimal"), "{}", served.message);

    // HotStandby runs two media nodes.
    centers
        .patch(
            "minimal",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"highAvailability": {"mode": "HotStandby"}}}),
            ),
        )
        .await?;
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    wait_for(WAIT, "two replicas", || async {
        (statefulsets.get("minimal-media").await.ok()?.spec.replicas == Some(2)).then_some(())
    })
    .await?;

    controller.abort();
    ns.delete().await?;
    Ok(())
}

#[tokio::test]
async fn members_of_a_missing_call_center_are_reported_and_follow_it() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "members").await?;
    let controller = start_controller(&client, &ns.name).await?;
    // A Seat and a Queue that name a center with a typo.
    let orphans = r#"
apiVersion: switchboard.dev/v1alpha1
kind: Queue
metadata: {name: orphan-queue}
spec: {callCenter: minimall, strategy: RingAll}
---
apiVersion: switchboard.dev/v1alpha1
kind: Seat
metadata: {name: orphan-seat}
spec:
  callCenter: minimall
  extension: "1009"
  displayName: Orphan
  credentials: {name: minimal-seat-passwords, key: "1001"}
"#;
    for a in apply_yaml(&client, orphans, &ns.name).await? {
        a.result?;
    }
    let seats: Api<switchboard_crds::Seat> = Api::namespaced(client.clone(), &ns.name);
    let queues: Api<switchboard_crds::Queue> = Api::namespaced(client.clone(), &ns.name);
    let seat_resolved = || async {
        let status = seats.get("orphan-seat").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Resolved")
    };
    let missing = wait_for(WAIT, "the orphan seat marked", || async {
        seat_resolved()
            .await
            .filter(|c| c.reason == "CallCenterNotFound")
    })
    .await?;
    assert_eq!(missing.status, "False");
    assert!(
        missing.message.contains("\"minimall\"") && missing.message.contains(&ns.name),
        "{}",
        missing.message
    );
    wait_for(WAIT, "the orphan queue marked", || async {
        let status = queues.get("orphan-queue").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Resolved" && c.reason == "CallCenterNotFound")
    })
    .await?;

    // The center appears (the user fixes the typo by creating it): its reconcile resolves them.
    let minimal = std::fs::read_to_string(repo_root().join("examples/minimal.yaml"))?
        .replace("name: minimal\n", "name: minimall\n");
    for a in apply_yaml(&client, &minimal, &ns.name).await? {
        a.result?;
    }
    wait_for(WAIT, "the seat served by the new center", || async {
        seat_resolved().await.filter(|c| c.status == "True")
    })
    .await?;

    // The center is deleted: its members say so again.
    let centers: Api<CallCenter> = Api::namespaced(client.clone(), &ns.name);
    centers.delete("minimall", &Default::default()).await?;
    wait_for(WAIT, "the seat marked again after the delete", || async {
        seat_resolved()
            .await
            .filter(|c| c.reason == "CallCenterNotFound")
    })
    .await?;

    controller.abort();
    ns.delete().await?;
    Ok(())
}
