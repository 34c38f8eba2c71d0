//! Trunk scaling against a real kube-apiserver: a node reporting heavy traffic on an autoscaled
//! trunk gets a larger channel limit (within its bounds) in the config the operator pushes, in
//! the CallCenter's status and in a `TrunkScaled` Event; absurd reports change nothing; the
//! scale subresource (what `kubectl scale` uses) sets the limit within the bounds, and the
//! operator's webhook refuses a request outside them.
//!
//! The node is a fake NodeControl server in this process: it records every config pushed to it
//! and streams whatever state the test sets, so the reports can be absurd on purpose. Its pod
//! is a Pod object with the StatefulSet's labels (there is no kubelet).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::Stream;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams};
use switchboard_crds::CallCenter;
use switchboard_crds::callcenter::TrunkStatus;
use switchboard_proto::node::v1::node_control_server::{NodeControl, NodeControlServer};
use switchboard_proto::node::v1::{
    ApplyConfigReply, ConfigSnapshot, DrainReply, DrainRequest, FetchVoicemailRequest,
    ListCallRecordsReply, ListCallRecordsRequest, ListVoicemailReply, ListVoicemailRequest,
    NodeRole, NodeState, SetAgentStateReply, SetAgentStateRequest, TrunkState, VoicemailChunk,
    WatchStateRequest, apply_config_reply::Outcome,
};
use switchboard_tests::node_process::create_node_pod;
use switchboard_tests::webhook::NamespaceWebhook;
use switchboard_tests::{
    TestNamespace, apply_yaml, control_plane, install_crds, start_controller, wait_for,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(60);
const CENTER: &str = "trunked";
const POD: &str = "trunked-media-0";

const CALL_CENTER: &str = r#"
apiVersion: switchboard.dev/v1alpha1
kind: CallCenter
metadata: {name: trunked}
spec:
  sip: {domain: cc.example.edu}
  trunks:
  - name: pstn
    peer: {host: 192.0.2.10}
    channels: {limit: 10, minChannels: 5, maxChannels: 60, autoscaling: true, targetBlocking: 0.01}
"#;

/// A media node that acknowledges every config and reports what the test sets.
#[derive(Clone)]
struct FakeNode {
    configs: Arc<Mutex<Vec<serde_yaml::Value>>>,
    state: watch::Receiver<NodeState>,
}

impl FakeNode {
    /// `spec.trunks[0].channels.limit` of the last config pushed.
    fn pushed_limit(&self) -> Option<u64> {
        let configs = self.configs.lock().ok()?;
        configs.last()?["spec"]["trunks"][0]["channels"]["limit"].as_u64()
    }
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeControl for FakeNode {
    async fn apply_config(
        &self,
        request: Request<ConfigSnapshot>,
    ) -> Result<Response<ApplyConfigReply>, Status> {
        let snapshot = request.into_inner();
        let config: serde_yaml::Value = serde_yaml::from_slice(&snapshot.config_yaml)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Ok(mut configs) = self.configs.lock() {
            configs.push(config);
        }
        Ok(Response::new(ApplyConfigReply {
            outcome: Outcome::Applied as i32,
            running_generation: snapshot.generation,
            message: String::new(),
        }))
    }

    type WatchStateStream = Stream_<NodeState>;

    async fn watch_state(
        &self,
        _: Request<WatchStateRequest>,
    ) -> Result<Response<Self::WatchStateStream>, Status> {
        let rx = self.state.clone();
        // The current state first, then every change (as a real node streams).
        let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let state = rx.borrow_and_update().clone();
            Some((Ok(state), (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn set_agent_state(
        &self,
        _: Request<SetAgentStateRequest>,
    ) -> Result<Response<SetAgentStateReply>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn drain(&self, _: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn list_call_records(
        &self,
        _: Request<ListCallRecordsRequest>,
    ) -> Result<Response<ListCallRecordsReply>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn list_voicemail(
        &self,
        _: Request<ListVoicemailRequest>,
    ) -> Result<Response<ListVoicemailReply>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    type FetchVoicemailStream = Stream_<VoicemailChunk>;

    async fn fetch_voicemail(
        &self,
        _: Request<FetchVoicemailRequest>,
    ) -> Result<Response<Self::FetchVoicemailStream>, Status> {
        Err(Status::unimplemented("fake node"))
    }
}

/// The active node's report of trunk `pstn`.
fn report(limit: u32, busy: u32, erlangs: f64, offered: u64, blocked: u64) -> NodeState {
    NodeState {
        node: POD.into(),
        role: NodeRole::Active as i32,
        config_generation: 1,
        trunks: vec![TrunkState {
            trunk: "pstn".into(),
            channel_limit: limit,
            channels_busy: busy,
            calls_blocked: 0,
            offered_erlangs: erlangs,
            window_calls_offered: offered,
            window_calls_blocked: blocked,
            window_seconds: 900,
        }],
        ..NodeState::default()
    }
}

async fn trunk_line(centers: &Api<CallCenter>) -> Option<(TrunkStatus, Option<u32>)> {
    let status = centers.get(CENTER).await.ok()?.status?;
    let line = status.trunks.into_iter().find(|t| t.name == "pstn")?;
    Some((line, status.trunk_channels))
}

#[tokio::test]
async fn traffic_and_scale_requests_size_the_trunk_within_its_bounds() -> Result<()> {
    let client = control_plane().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "trunks").await?;
    let webhook = NamespaceWebhook::start(&client, &ns.name).await?;
    let controller = start_controller(&client, &ns.name).await?;
    let centers: Api<CallCenter> = Api::namespaced(client.clone(), &ns.name);

    // The webhook needs a moment to be in force; until then an inverted RTP range is stored.
    let probe = r#"
apiVersion: switchboard.dev/v1alpha1
kind: CallCenter
metadata: {name: webhook-probe}
spec:
  sip: {domain: probe.example}
  rtp: {minPort: 20000, maxPort: 10000}
"#;
    wait_for(WAIT, "the webhook to be in force", || async {
        let applied = apply_yaml(&client, probe, &ns.name).await.ok()?;
        match &applied[0].result {
            Err(e) if e.to_string().contains("spec.rtp.maxPort") => Some(()),
            Ok(_) => {
                let _ = centers.delete("webhook-probe", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await?;

    for a in apply_yaml(&client, CALL_CENTER, &ns.name).await? {
        a.result?;
    }
    // Before any report the trunk runs its spec limit.
    let (line, channels) = wait_for(WAIT, "the trunk's first status line", || async {
        trunk_line(&centers).await
    })
    .await?;
    assert_eq!((line.limit, channels), (10, Some(10)), "{line:?}");
    assert_eq!(line.last_change_time, None);

    // The node: 20 E offered on a 10-channel trunk (1 % blocking needs 30 channels).
    let (state_tx, state_rx) = watch::channel(report(10, 10, 20.0, 400, 0));
    let node = FakeNode {
        configs: Arc::default(),
        state: state_rx,
    };
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?;
    let port = incoming.local_addr()?.port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeControlServer::new(node.clone()))
            .serve_with_incoming(incoming),
    );
    create_node_pod(&client, &ns.name, CENTER, POD, port).await?;

    let line = wait_for(WAIT, "the trunk raised to 30 channels", || async {
        let (line, channels) = trunk_line(&centers).await?;
        (line.limit == 30 && channels == Some(30)).then_some(line)
    })
    .await?;
    assert_eq!(line.busy, 10);
    assert_eq!(line.offered_erlangs, Some(20.0));
    assert!(line.last_change_time.is_some());
    assert_eq!(
        line.last_change_reason.as_deref(),
        Some("autoscaling: the traffic needs 30 channels (offered 20.0 E)")
    );
    wait_for(WAIT, "the node to be pushed the new limit", || async {
        (node.pushed_limit() == Some(30)).then_some(())
    })
    .await?;
    // The user's spec is untouched.
    let spec = centers.get(CENTER).await?.spec;
    assert_eq!(spec.trunks[0].channels.limit, 10);
    assert_eq!(spec.trunk_channels, None);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let note = wait_for(WAIT, "a TrunkScaled Event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("TrunkScaled"))
            .find_map(|e| e.note)
    })
    .await?;
    assert_eq!(
        note,
        "trunk pstn: channel limit 10 → 30: autoscaling: the traffic needs 30 channels \
         (offered 20.0 E)"
    );

    // Absurd reports change nothing. Each differs in `busy`, so once the status shows that
    // busy count the operator has decided on the report.
    let absurd = [
        (11, f64::NAN, 400, 0),
        (12, -5.0, 400, 0),
        (13, f64::INFINITY, 400, 0),
        // Heavy traffic, but more calls blocked than offered.
        (14, 200.0, 400, 500),
    ];
    for (busy, erlangs, offered, blocked) in absurd {
        state_tx.send(report(30, busy, erlangs, offered, blocked))?;
        let (line, channels) = wait_for(WAIT, "the absurd report to be seen", || async {
            let (line, channels) = trunk_line(&centers).await?;
            (line.busy == busy).then_some((line, channels))
        })
        .await?;
        assert_eq!(
            (line.limit, channels),
            (30, Some(30)),
            "{erlangs} E: {line:?}"
        );
        assert_eq!(node.pushed_limit(), Some(30));
    }

    // `kubectl scale callcenter/trunked --replicas=45`: within the bounds, it wins over the
    // autoscaler.
    let scale = |n: u32| serde_json::json!({"spec": {"replicas": n}});
    centers
        .patch_scale(CENTER, &PatchParams::default(), &Patch::Merge(scale(45)))
        .await
        .context("scaling to 45")?;
    wait_for(WAIT, "the trunk scaled to 45 channels", || async {
        let (line, channels) = trunk_line(&centers).await?;
        (line.limit == 45 && channels == Some(45)).then_some(())
    })
    .await?;
    wait_for(WAIT, "the node to be pushed 45 channels", || async {
        (node.pushed_limit() == Some(45)).then_some(())
    })
    .await?;
    let read = centers.get_scale(CENTER).await?;
    assert_eq!(read.spec.and_then(|s| s.replicas), Some(45));
    wait_for(WAIT, "the scale status to show 45", || async {
        let read = centers.get_scale(CENTER).await.ok()?;
        (read.status?.replicas == 45).then_some(())
    })
    .await?;

    // Outside the bounds: refused through the scale subresource and through the spec, with
    // the bounds in the message.
    for n in [61, 4] {
        let refused = centers
            .patch_scale(CENTER, &PatchParams::default(), &Patch::Merge(scale(n)))
            .await
            .expect_err("a scale request outside the bounds");
        assert!(
            refused
                .to_string()
                .contains("the limit must stay within minChannels 5 and maxChannels 60"),
            "{refused}"
        );
    }
    let refused = centers
        .patch(
            CENTER,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"trunkChannels": 61}})),
        )
        .await
        .expect_err("a spec.trunkChannels outside the bounds");
    assert!(
        refused.to_string().contains("spec.trunkChannels"),
        "{refused}"
    );
    assert_eq!(centers.get(CENTER).await?.spec.trunk_channels, Some(45));

    controller.abort();
    server.abort();
    webhook.stop().await?;
    ns.delete().await?;
    Ok(())
}
