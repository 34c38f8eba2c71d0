//! The generated client and server talk to each other over a real loopback connection, so a
//! change in the contract or in tonic's transport shows up here and not in a cluster.

use std::pin::Pin;

use switchboard_proto::node::v1::node_control_client::NodeControlClient;
use switchboard_proto::node::v1::node_control_server::{NodeControl, NodeControlServer};
use switchboard_proto::node::v1::*;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

/// A node that keeps only the generation rules of `ApplyConfig`, enough to exercise the wire.
#[derive(Default)]
struct GenerationKeeper {
    running: Mutex<i64>,
}

#[tonic::async_trait]
impl NodeControl for GenerationKeeper {
    async fn apply_config(
        &self,
        req: Request<ConfigSnapshot>,
    ) -> Result<Response<ApplyConfigReply>, Status> {
        let snap = req.into_inner();
        let mut running = self.running.lock().await;
        let (outcome, message) = if !snap.is_intact() {
            (
                apply_config_reply::Outcome::Rejected,
                "config_hash does not match config_yaml".to_string(),
            )
        } else if snap.generation < *running {
            (
                apply_config_reply::Outcome::Stale,
                format!("running generation {}", *running),
            )
        } else if snap.generation == *running {
            (apply_config_reply::Outcome::Unchanged, String::new())
        } else {
            *running = snap.generation;
            (apply_config_reply::Outcome::Applied, String::new())
        };
        Ok(Response::new(ApplyConfigReply {
            outcome: outcome as i32,
            running_generation: *running,
            message,
        }))
    }

    type WatchStateStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<NodeState, Status>> + Send>>;

    async fn watch_state(
        &self,
        _: Request<WatchStateRequest>,
    ) -> Result<Response<Self::WatchStateStream>, Status> {
        let running = *self.running.lock().await;
        let state = NodeState {
            node: "campus-media-0".into(),
            role: NodeRole::Active as i32,
            config_generation: running,
            ..Default::default()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(state)]))))
    }

    async fn set_agent_state(
        &self,
        req: Request<SetAgentStateRequest>,
    ) -> Result<Response<SetAgentStateReply>, Status> {
        Ok(Response::new(SetAgentStateReply {
            state: req.into_inner().state,
        }))
    }

    async fn drain(&self, _: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        Ok(Response::new(DrainReply { calls_remaining: 0 }))
    }

    // Records and voicemail are not part of what this round trip exercises.
    async fn list_call_records(
        &self,
        _: Request<ListCallRecordsRequest>,
    ) -> Result<Response<ListCallRecordsReply>, Status> {
        Err(Status::unimplemented("not in this test node"))
    }

    async fn list_voicemail(
        &self,
        _: Request<ListVoicemailRequest>,
    ) -> Result<Response<ListVoicemailReply>, Status> {
        Err(Status::unimplemented("not in this test node"))
    }

    type FetchVoicemailStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<VoicemailChunk, Status>> + Send>>;

    async fn fetch_voicemail(
        &self,
        _: Request<FetchVoicemailRequest>,
    ) -> Result<Response<Self::FetchVoicemailStream>, Status> {
        Err(Status::unimplemented("not in this test node"))
    }
}

#[tokio::test]
async fn apply_config_and_watch_state_over_loopback() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeControlServer::new(GenerationKeeper::default()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = NodeControlClient::connect(format!("http://{addr}")).await?;

    let outcome = |r: ApplyConfigReply| apply_config_reply::Outcome::try_from(r.outcome);
    let applied = client
        .apply_config(ConfigSnapshot::new(2, b"a".to_vec()))
        .await?
        .into_inner();
    assert_eq!(
        outcome(applied.clone())?,
        apply_config_reply::Outcome::Applied
    );
    assert_eq!(applied.running_generation, 2);
    let again = client
        .apply_config(ConfigSnapshot::new(2, b"a".to_vec()))
        .await?
        .into_inner();
    assert_eq!(outcome(again)?, apply_config_reply::Outcome::Unchanged);
    let stale = client
        .apply_config(ConfigSnapshot::new(1, b"old".to_vec()))
        .await?
        .into_inner();
    assert_eq!(outcome(stale.clone())?, apply_config_reply::Outcome::Stale);
    assert_eq!(stale.running_generation, 2);
    let mut torn = ConfigSnapshot::new(3, b"abc".to_vec());
    torn.config_yaml.pop();
    let rejected = client.apply_config(torn).await?.into_inner();
    assert_eq!(outcome(rejected)?, apply_config_reply::Outcome::Rejected);

    let mut states = client.watch_state(WatchStateRequest {}).await?.into_inner();
    let first = states.message().await?.ok_or("no state")?;
    assert_eq!(first.config_generation, 2);
    assert_eq!(NodeRole::try_from(first.role)?, NodeRole::Active);

    server.abort();
    Ok(())
}
