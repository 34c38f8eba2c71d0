//! Replication over the network: the active serves `Replication/Follow` from its
//! [`ReplicationHub`]; the standby follows it with a [`Follower`], reconnecting for a fresh
//! snapshot whenever the stream breaks, and exports how far behind it is.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use switchboard_proto::replication::v1::replication_client::ReplicationClient;
use switchboard_proto::replication::v1::replication_server::Replication;
use switchboard_proto::replication::v1::{FollowRequest, ReplicationMessage, replication_message};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{Follower, FollowerStream, Readiness, ReplicationHub, unix_now_ms};
use crate::role::Role;

/// How often the active sends a heartbeat on an idle stream.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A standby further behind than this is not ready to take over.
pub const MAX_LAG: Duration = Duration::from_secs(5);
/// How long a standby waits before reconnecting after the stream broke.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// How long a connection to the active may take: pods reach each other in milliseconds, and a
/// dead pod's address does not answer at all (without a bound the attempt hangs for half a
/// minute, and a node following a killed draining node would take its calls over that late).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A stream silent this long (three heartbeats) is broken: an active whose pod vanished sends
/// no reset.
const SILENCE_LIMIT: Duration = HEARTBEAT_EVERY.saturating_mul(3);

/// Replication metrics of both sides.
#[derive(Clone)]
pub struct ReplicationMetrics {
    /// Standby: seconds behind the active (sender time of the last message accepted).
    pub lag_seconds: Gauge,
    /// Active: standbys following now.
    pub followers: IntGauge,
    /// Standby: streams given up, by reason (`disconnected`, `refused`).
    pub resyncs: IntCounterVec,
    /// Standby: records held, by kind (`registrations`, `agents`, `calls`).
    pub records: IntGaugeVec,
}

impl ReplicationMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            lag_seconds: Gauge::new(
                "switchboard_replication_lag_seconds",
                "How far the standby's replicated state is behind the active (seconds since the active sent the last message the standby applied).",
            )?,
            followers: IntGauge::new(
                "switchboard_replication_followers",
                "Standby nodes following this active node's replication stream.",
            )?,
            resyncs: IntCounterVec::new(
                Opts::new(
                    "switchboard_replication_resyncs_total",
                    "Replication streams the standby gave up and restarted from a fresh snapshot, by reason (disconnected, refused).",
                ),
                &["reason"],
            )?,
            records: IntGaugeVec::new(
                Opts::new(
                    "switchboard_replication_records",
                    "Records the standby holds from the active, by kind (registrations, agents, calls).",
                ),
                &["kind"],
            )?,
        };
        registry.register(Box::new(metrics.lag_seconds.clone()))?;
        registry.register(Box::new(metrics.followers.clone()))?;
        registry.register(Box::new(metrics.resyncs.clone()))?;
        registry.register(Box::new(metrics.records.clone()))?;
        Ok(metrics)
    }
}

/// The active's side of `Replication/Follow`, served while the node is active and while it
/// drains (the node that took the Lease over follows it until its last call ended).
pub struct ReplicationService {
    hub: Arc<ReplicationHub>,
    role: watch::Receiver<Role>,
    drain: watch::Receiver<bool>,
    metrics: ReplicationMetrics,
}

impl ReplicationService {
    pub fn new(
        hub: Arc<ReplicationHub>,
        role: watch::Receiver<Role>,
        drain: watch::Receiver<bool>,
        metrics: ReplicationMetrics,
    ) -> Self {
        Self {
            hub,
            role,
            drain,
            metrics,
        }
    }
}

/// Whether a node may feed followers: while active, and while it drains its calls.
fn feeds(role: &watch::Receiver<Role>, drain: &watch::Receiver<bool>) -> bool {
    *role.borrow() == Role::Active || *drain.borrow()
}

type MessageStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ReplicationMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type FollowStream = MessageStream;

    async fn follow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        if !feeds(&self.role, &self.drain) {
            return Err(Status::failed_precondition(
                "this node is not active: follow the active node",
            ));
        }
        let standby = request.into_inner().standby;
        let (snapshot, mut deltas) = self.hub.open();
        let (mut stream, first) = FollowerStream::open(snapshot, self.hub.term(), unix_now_ms());
        let (tx, rx) = mpsc::channel(64);
        let mut role = self.role.clone();
        let drain = self.drain.clone();
        let followers = self.metrics.followers.clone();
        let mut handed_over = self.hub.handed_over();
        info!(standby, "standby following");
        tokio::spawn(async move {
            followers.inc();
            let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
            heartbeat.reset();
            let mut next = Some(first);
            // A standby that connects after the handover hears of it right after the snapshot.
            let mut tell_handover = *handed_over.borrow_and_update();
            let end = loop {
                if let Some(message) = next.take()
                    && tx.send(Ok(message)).await.is_err()
                {
                    break "the standby went away".to_string();
                }
                if std::mem::take(&mut tell_handover) {
                    next = Some(stream.handed_over(unix_now_ms()));
                    continue;
                }
                tokio::select! {
                    Ok(()) = handed_over.changed() => {
                        tell_handover = *handed_over.borrow_and_update();
                    }
                    delta = deltas.recv() => match delta {
                        Ok(d) => next = Some(stream.delta(d, unix_now_ms())),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx
                                .send(Err(Status::resource_exhausted(format!(
                                    "the standby fell {n} changes behind: resynchronise"
                                ))))
                                .await;
                            break format!("{n} changes behind");
                        }
                        Err(broadcast::error::RecvError::Closed) => break "node stopping".to_string(),
                    },
                    _ = heartbeat.tick() => next = Some(stream.heartbeat(unix_now_ms())),
                    changed = role.changed() => {
                        if changed.is_err() || !feeds(&role, &drain) {
                            // A node that is no longer active must not feed a standby.
                            break "no longer active".to_string();
                        }
                    }
                }
            };
            followers.dec();
            info!(standby, reason = %end, "standby stream ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The standby's side, for the life of the node: follows the active whose control URL
/// `active` names (none: nothing to follow, e.g. while this node is the active one),
/// reconnecting for a fresh snapshot when the stream breaks or the active changes, and keeps
/// `follower` current and the readiness and lag metrics true. `stream_lost` hears of every
/// stream that ended or could not be opened, before the reconnection; `lease_handed_over` of
/// the active giving its Lease up (a drain).
pub async fn follow(
    mut active: watch::Receiver<Option<String>>,
    me: String,
    follower: Arc<Mutex<Follower>>,
    metrics: ReplicationMetrics,
    standby_ready: IntGauge,
    stream_lost: impl Fn() + Send + 'static,
    lease_handed_over: impl Fn() + Send + Sync + 'static,
) {
    {
        let follower = Arc::clone(&follower);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                every.tick().await;
                show(&follower.lock(), &metrics, &standby_ready);
            }
        });
    }
    loop {
        let endpoint = active.borrow_and_update().clone();
        let Some(endpoint) = endpoint else {
            follower.lock().resync("no active node to follow");
            if active.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            result = follow_once(&endpoint, &me, &follower, &metrics, &lease_handed_over) => {
                let reason = result.err().unwrap_or("disconnected");
                metrics.resyncs.with_label_values(&[reason]).inc();
                stream_lost();
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
            changed = active.changed() => {
                follower.lock().resync("the active node changed");
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// One stream, until it ends or a message is refused.
async fn follow_once(
    endpoint: &str,
    me: &str,
    follower: &Mutex<Follower>,
    metrics: &ReplicationMetrics,
    lease_handed_over: &(dyn Fn() + Send + Sync),
) -> Result<(), &'static str> {
    let channel = match tonic::transport::Endpoint::from_shared(endpoint.to_string()) {
        Ok(e) => e.connect_timeout(CONNECT_TIMEOUT).connect().await,
        Err(error) => Err(error),
    };
    let mut client = match channel {
        Ok(c) => ReplicationClient::new(c),
        Err(error) => {
            warn!(endpoint, %error, "cannot reach the active node to follow it");
            follower
                .lock()
                .resync(format!("cannot reach the active: {error}"));
            return Ok(());
        }
    };
    let request = FollowRequest {
        standby: me.to_string(),
    };
    // A hung active accepts the connection (its kernel does) and never answers.
    let Ok(opened) = tokio::time::timeout(SILENCE_LIMIT, client.follow(request)).await else {
        warn!(endpoint, "the active did not open the replication stream");
        follower.lock().resync("the active does not answer");
        return Ok(());
    };
    let mut stream = match opened {
        Ok(r) => r.into_inner(),
        Err(status) => {
            warn!(endpoint, %status, "the active refused the replication stream");
            follower
                .lock()
                .resync(format!("refused: {}", status.message()));
            return Ok(());
        }
    };
    follower.lock().resync("connecting");
    loop {
        let Ok(next) = tokio::time::timeout(SILENCE_LIMIT, stream.message()).await else {
            warn!(endpoint, silent = ?SILENCE_LIMIT, "replication stream silent: broken");
            follower.lock().resync("the stream went silent");
            return Ok(());
        };
        match next {
            Ok(Some(message)) => {
                let mut f = follower.lock();
                if let Err(error) = f.receive(&message) {
                    warn!(%error, "replication message refused: resynchronising");
                    f.resync(error.to_string());
                    return Err("refused");
                }
                if matches!(message.body, Some(replication_message::Body::HandedOver(_))) {
                    info!(endpoint, "the active handed its Lease over");
                    lease_handed_over();
                }
                if let Some(state) = f.state() {
                    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                    let records = &metrics.records;
                    records
                        .with_label_values(&["registrations"])
                        .set(count(state.registrations.len()));
                    records
                        .with_label_values(&["agents"])
                        .set(count(state.agents.len()));
                    records
                        .with_label_values(&["calls"])
                        .set(count(state.calls.len()));
                }
            }
            Ok(None) => {
                follower.lock().resync("the active ended the stream");
                return Ok(());
            }
            Err(status) => {
                // An undecodable message surfaces here too: never applied, resynchronise.
                warn!(%status, "replication stream broke");
                follower
                    .lock()
                    .resync(format!("stream broke: {}", status.message()));
                return Ok(());
            }
        }
    }
}

fn show(follower: &Follower, metrics: &ReplicationMetrics, standby_ready: &IntGauge) {
    if let Some(lag) = follower.lag(unix_now_ms()) {
        metrics.lag_seconds.set(lag.as_secs_f64());
    }
    standby_ready.set(i64::from(readiness_now(follower) == Readiness::Ready));
}

/// Whether the standby could take over now (its stream live, at most [`MAX_LAG`] behind).
pub fn readiness_now(follower: &Follower) -> Readiness {
    follower.readiness(unix_now_ms(), MAX_LAG)
}
