//! The node's gRPC control server (`switchboard.node.v1.NodeControl`) on `--control-listen`,
//! port [`switchboard_proto::CONTROL_PORT`] (9091) by default: plain HTTP/2 (h2c), because it
//! is reached only inside the pod network, from the operator. Securing it (mTLS or a
//! NetworkPolicy admitting only the operator) is the operator's deployment concern.
//!
//! - `ApplyConfig` follows the generation rules of the contract (see [`decide`]).
//! - `WatchState` reports what the node really knows: its name, its role, the running config
//!   generation, and for each seat whether the registrar holds a live contact for it.
//!   With the ACD, each seat's agent state (and since when, calls and talk time today) and
//!   each queue's live figures.
//!   Each queue also reports calls offered, average handle time and average speed of
//!   answer over the last 15 minutes; each trunk its channels and the traffic of its
//!   rolling window (see [`crate::call::trunks::TrafficMeter`]). The traffic figures move
//!   with time, so a node with trunks sends a new state at every registration poll.
//! - `SetAgentState` logs a seat in or out or changes its state (see [`crate::center`]).
//! - `ListCallRecords` serves the node's CDR lines as written (`docs/cdr.md`), read off the
//!   async runtime.
//! - `ListVoicemail` and `FetchVoicemail` serve the voicemail messages (metadata, and the WAV
//!   in 64 KiB chunks).
//! - `Drain` stops new calls and registrations (the active hands its Lease over); the calls
//!   up finish. SIGTERM does the same and then waits for them (up to the drain timeout).
//!
//! An applied config takes effect at once for what a running node can swap: the seats (the
//! registrar keeps the registrations of seats that stay), the entry points, and the trunks
//! (their busy channels carried over, the new limits in force). The settings the node reads
//! only at start (`NodeConfig::startup_changes`: SIP listeners and realm, RTP range, codecs,
//! recording, high availability) are recorded and the reply names them: the operator's pod
//! template carries their hash, so changing them rolls the nodes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::DateTime;
use parking_lot::Mutex;
use switchboard_proto::node::v1::apply_config_reply::Outcome;
use switchboard_proto::node::v1::node_control_server::{NodeControl, NodeControlServer};
use switchboard_proto::node::v1::{
    AgentState, ApplyConfigReply, ConfigSnapshot, DrainReply, DrainRequest, FetchVoicemailRequest,
    ListCallRecordsReply, ListCallRecordsRequest, ListVoicemailReply, ListVoicemailRequest,
    NodeRole, NodeState, QueueState, SeatState, SetAgentStateReply, SetAgentStateRequest,
    StandbyReadiness, TrunkState, VoicemailChunk, VoicemailMessage as WireVoicemail,
    WatchStateRequest,
};
use switchboard_proto::node_config::NodeConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::acd::{AgentError, AgentRequest};
use crate::center::{AgentRequestError, CallCenterRuntime};
use crate::http::NodeMetrics;
use crate::node::{parse_node_config, seat_extensions, sip_settings};
use crate::recording::cdr::read_records;
use crate::recording::voicemail::{MailboxError, Mailboxes, VoicemailMessage};
use crate::role::Role;
use crate::sip::SipServer;

/// How often a watcher's state is recomputed when no config change wakes it: registrations
/// come and go without notice from the registrar, so they are sampled.
const REGISTRATION_POLL: Duration = Duration::from_secs(2);

/// Call records served when the request names no limit.
pub const DEFAULT_RECORD_LIMIT: u32 = 1000;
/// The most call records one `ListCallRecords` serves (the reply stays a few MiB).
pub const MAX_RECORD_LIMIT: u32 = 10_000;
/// Bytes of WAV per `FetchVoicemail` chunk (well under gRPC's 4 MiB message limit).
pub const VOICEMAIL_CHUNK_BYTES: usize = 64 * 1024;

/// What `ApplyConfig` decided, before anything is changed.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Run this config from now on.
    Apply(Box<NodeConfig>),
    Unchanged,
    Stale(String),
    Rejected(String),
}

/// The generation rules, as a pure function of the running config and a snapshot:
/// 1. a snapshot whose hash does not match its bytes is REJECTED (torn or corrupted);
/// 2. an older generation is STALE (a late retry from before a newer push);
/// 3. a snapshot that does not parse or check is REJECTED, naming the field;
/// 4. the running generation is UNCHANGED if the content is the same, and REJECTED if it is
///    not (one generation must always mean one content, or status would lie);
/// 5. anything newer is applied.
///
/// On every outcome but the last the running config stays as it is.
pub fn decide(running: &NodeConfig, snapshot: &ConfigSnapshot) -> Decision {
    if !snapshot.is_intact() {
        return Decision::Rejected(format!(
            "config_hash {:?} does not match the MD5 of config_yaml ({} bytes): the snapshot \
             is truncated or corrupted",
            snapshot.config_hash,
            snapshot.config_yaml.len()
        ));
    }
    if snapshot.generation < running.generation {
        return Decision::Stale(format!(
            "generation {} is older than the running generation {}",
            snapshot.generation, running.generation
        ));
    }
    let config = match parse_node_config(&snapshot.config_yaml) {
        Ok(c) => c,
        Err(e) => return Decision::Rejected(e.to_string()),
    };
    if config.generation != snapshot.generation {
        return Decision::Rejected(format!(
            "generation: config_yaml says {} but the snapshot says {}",
            config.generation, snapshot.generation
        ));
    }
    if snapshot.generation == running.generation {
        return if config == *running {
            Decision::Unchanged
        } else {
            Decision::Rejected(format!(
                "generation {} already runs with different content; a changed config needs a \
                 new generation",
                running.generation
            ))
        };
    }
    Decision::Apply(Box::new(config))
}

struct Inner {
    node_name: String,
    /// The running config. Replaced whole, under the lock, so decisions never interleave.
    running: Mutex<Arc<NodeConfig>>,
    /// The config the process started with: its startup settings stay in force.
    started: Arc<NodeConfig>,
    sip: Arc<SipServer>,
    metrics: NodeMetrics,
    /// Wakes `WatchState` streams when the running config changes.
    changed: watch::Sender<i64>,
    /// Active or standby (see [`crate::role`]).
    role: watch::Receiver<Role>,
    /// The ACD and live statistics.
    center: Arc<CallCenterRuntime>,
    /// Set to drain the node (no new calls; see `Drain`).
    drain: std::sync::OnceLock<watch::Sender<bool>>,
    /// What a standby follows of the active node (HotStandby).
    follower: std::sync::OnceLock<Arc<Mutex<crate::replication::Follower>>>,
}

/// The `NodeControl` service. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// `config` is the config the node started with, the one `sip` was built from.
    pub fn new(
        node_name: String,
        config: NodeConfig,
        sip: Arc<SipServer>,
        metrics: NodeMetrics,
        role: watch::Receiver<Role>,
        center: Arc<CallCenterRuntime>,
    ) -> Self {
        metrics.config_generation.set(config.generation);
        let (changed, _) = watch::channel(config.generation);
        let config = Arc::new(config);
        Self {
            inner: Arc::new(Inner {
                node_name,
                running: Mutex::new(Arc::clone(&config)),
                started: config,
                sip,
                metrics,
                changed,
                role,
                center,
                drain: std::sync::OnceLock::new(),
                follower: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The switch `Drain` turns on (the same one SIGTERM does).
    pub fn with_drain(self, drain: watch::Sender<bool>) -> Self {
        let _ = self.inner.drain.set(drain);
        self
    }

    /// Reports the replication a standby follows in `WatchState` (HotStandby).
    pub fn with_follower(self, follower: Arc<Mutex<crate::replication::Follower>>) -> Self {
        let _ = self.inner.follower.set(follower);
        self
    }

    /// While standing by: whether the replicated state would let this node take over now.
    fn standby_readiness(&self) -> Option<StandbyReadiness> {
        if *self.inner.role.borrow() != Role::Standby {
            return None;
        }
        let follower = self.inner.follower.get()?;
        Some(
            match crate::replication::stream::readiness_now(&follower.lock()) {
                crate::replication::Readiness::Ready => StandbyReadiness {
                    ready: true,
                    reason: "InSync".to_string(),
                    message: "follows the active node's registrations, agent states, queued \
                              callers and established calls"
                        .to_string(),
                },
                crate::replication::Readiness::NotReady { reason, detail } => StandbyReadiness {
                    ready: false,
                    reason: reason.to_string(),
                    message: detail,
                },
            },
        )
    }

    /// The running config.
    pub fn running(&self) -> Arc<NodeConfig> {
        Arc::clone(&self.inner.running.lock())
    }

    /// Applies a snapshot by the rules of [`decide`].
    pub fn apply(&self, snapshot: &ConfigSnapshot) -> ApplyConfigReply {
        let mut running = self.inner.running.lock();
        let (outcome, message) = match decide(&running, snapshot) {
            Decision::Apply(config) => {
                let message = self.take_live(&config);
                *running = Arc::from(config);
                self.inner.metrics.config_generation.set(running.generation);
                self.inner.changed.send_replace(running.generation);
                (Outcome::Applied, message)
            }
            Decision::Unchanged => (Outcome::Unchanged, String::new()),
            Decision::Stale(m) => (Outcome::Stale, m),
            Decision::Rejected(m) => (Outcome::Rejected, m),
        };
        let label = outcome.as_str_name().to_ascii_lowercase();
        self.inner
            .metrics
            .config_applies
            .with_label_values(&[label.as_str()])
            .inc();
        let reply = ApplyConfigReply {
            outcome: outcome as i32,
            running_generation: running.generation,
            message,
        };
        match outcome {
            Outcome::Applied => info!(
                generation = snapshot.generation,
                outcome = %label,
                note = %reply.message,
                "config snapshot"
            ),
            // The operator pushes on every reconcile (each node report wakes one).
            Outcome::Unchanged => debug!(
                generation = snapshot.generation,
                outcome = %label,
                "config snapshot"
            ),
            _ => warn!(
                generation = snapshot.generation,
                running = running.generation,
                outcome = %label,
                reason = %reply.message,
                "config snapshot refused"
            ),
        }
        reply
    }

    /// Swaps in what a running node can take from `config`; returns a note naming the
    /// startup settings that wait for a restart (empty when there are none).
    fn take_live(&self, config: &NodeConfig) -> String {
        let sip = &self.inner.sip;
        let waiting = self.inner.started.startup_changes(config);
        let settings = sip_settings(config);
        if settings.realm == sip.realm() {
            sip.replace_seats(settings.seats);
        }
        // Else the seats' HA1 values are for a realm the registrar does not serve yet: the
        // old accounts stay until the restart that brings the new realm.
        self.inner.center.configure(config);
        if let Some(calls) = sip.calls() {
            calls.reconfigure(
                config.spec.entry_points.clone(),
                seat_extensions(config),
                config.spec.feature_codes.clone(),
                &config.spec.trunks,
                &config.trunk_secrets,
            );
            calls.check_prompts(crate::node::prompts_used(config));
        }
        if waiting.is_empty() {
            return String::new();
        }
        format!(
            "applied; {} of generation {} stay in force until the node restarts",
            waiting.join(", "),
            self.inner.started.generation
        )
    }

    /// The node's state now: seat registration from the registrar, agent states and queue
    /// figures from the ACD and the statistics.
    pub fn state(&self) -> NodeState {
        let config = self.running();
        let now = Instant::now();
        let agents = self.inner.center.seats();
        NodeState {
            node: self.inner.node_name.clone(),
            role: match *self.inner.role.borrow() {
                _ if self.inner.drain.get().is_some_and(|d| *d.borrow()) => NodeRole::Draining,
                Role::Active => NodeRole::Active,
                Role::Standby => NodeRole::Standby,
            } as i32,
            config_generation: config.generation,
            standby: self.standby_readiness(),
            seats: config
                .seats
                .iter()
                .map(|s| {
                    let registered = self.inner.sip.is_registered(&s.spec.extension, now);
                    match agents.get(&s.name) {
                        Some(agent) => SeatState {
                            seat: s.name.clone(),
                            registered,
                            agent_state: agent_state_to_wire(agent.state) as i32,
                            not_ready_reason: agent.reason.clone().unwrap_or_default(),
                            state_since_unix: agent.since.timestamp(),
                            calls_today: agent.calls_today,
                            talk_seconds_today: agent.talk_today.as_secs(),
                        },
                        None => SeatState {
                            seat: s.name.clone(),
                            registered,
                            agent_state: AgentState::Unspecified as i32,
                            ..SeatState::default()
                        },
                    }
                })
                .collect(),
            queues: self
                .inner
                .center
                .queues()
                .into_iter()
                .map(|q| QueueState {
                    queue: q.queue,
                    calls_waiting: q.waiting,
                    longest_wait_seconds: u32::try_from(q.longest_wait.as_secs())
                        .unwrap_or(u32::MAX),
                    agents_ready: q.agents_ready,
                    service_level_percent: q.service_level_percent,
                    abandon_rate_percent: q.abandon_rate_percent,
                    calls_offered_15m: u32::try_from(q.calls_offered).unwrap_or(u32::MAX),
                    average_handle_seconds: q.average_handle_time.map(|d| d.as_secs_f64()),
                    average_speed_of_answer_seconds: q
                        .average_speed_of_answer
                        .map(|d| d.as_secs_f64()),
                })
                .collect(),
            trunks: self.trunk_states(),
        }
    }
}

impl Control {
    /// Each trunk's channels now and its traffic over the rolling window.
    fn trunk_states(&self) -> Vec<TrunkState> {
        let Some(calls) = self.inner.sip.calls() else {
            return Vec::new();
        };
        let now = Instant::now();
        calls
            .routing()
            .trunks
            .all()
            .iter()
            .map(|t| {
                let traffic = t.traffic(now);
                TrunkState {
                    trunk: t.name().to_string(),
                    channel_limit: t.limit(),
                    channels_busy: t.busy(),
                    calls_blocked: t.blocked(),
                    offered_erlangs: traffic.offered_erlangs,
                    window_calls_offered: traffic.calls_offered,
                    window_calls_blocked: traffic.calls_blocked,
                    window_seconds: u32::try_from(traffic.window.as_secs()).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    /// The node's voicemail directory; refused when the node keeps no voicemail.
    fn mailboxes(&self) -> Result<Mailboxes, Status> {
        self.inner
            .sip
            .calls()
            .and_then(|calls| calls.voicemail_dir())
            .map(Mailboxes::new)
            .ok_or_else(|| {
                Status::failed_precondition(
                    "voicemail is off on this node: it has no voicemail directory",
                )
            })
    }
}

/// Runs file reading off the async runtime.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        warn!(%error, what, "file reader task failed");
        Status::internal(format!("{what}: the reader task failed: {error}"))
    })
}

/// A mailbox error as a gRPC status.
fn mailbox_status(error: MailboxError) -> Status {
    match error {
        MailboxError::InvalidName(_) => Status::invalid_argument(error.to_string()),
        MailboxError::NotFound { .. } => Status::not_found(error.to_string()),
        MailboxError::Recording(_) | MailboxError::Io { .. } => {
            warn!(%error, "voicemail unreadable");
            Status::internal(error.to_string())
        }
    }
}

fn voicemail_to_wire(message: &VoicemailMessage) -> WireVoicemail {
    WireVoicemail {
        id: message.id.clone(),
        mailbox: message.mailbox.clone(),
        from: message.from.clone(),
        queue: message.queue.clone().unwrap_or_default(),
        call_id: message.call_id.clone(),
        received_unix: message.received_at.timestamp(),
        duration_seconds: message.duration_seconds,
    }
}

/// A message as `FetchVoicemail` chunks: the metadata in the first, the WAV in slices of
/// [`VOICEMAIL_CHUNK_BYTES`] (one chunk, with no bytes, for an empty file).
fn voicemail_chunks(message: &VoicemailMessage, wav: &[u8]) -> Vec<VoicemailChunk> {
    let mut slices: Vec<&[u8]> = wav.chunks(VOICEMAIL_CHUNK_BYTES).collect();
    if slices.is_empty() {
        slices.push(&[]);
    }
    slices
        .into_iter()
        .enumerate()
        .map(|(i, slice)| VoicemailChunk {
            message: (i == 0).then(|| voicemail_to_wire(message)),
            wav: slice.to_vec(),
        })
        .collect()
}

/// The API's agent state as the wire enum.
fn agent_state_to_wire(state: switchboard_crds::seat::AgentState) -> AgentState {
    use switchboard_crds::seat::AgentState as Api;
    match state {
        Api::LoggedOut => AgentState::LoggedOut,
        Api::Ready => AgentState::Ready,
        Api::NotReady => AgentState::NotReady,
        Api::Ringing => AgentState::Ringing,
        Api::Busy => AgentState::Busy,
        Api::WrapUp => AgentState::WrapUp,
    }
}

type StateStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<NodeState, Status>> + Send>>;

#[tonic::async_trait]
impl NodeControl for Control {
    async fn apply_config(
        &self,
        request: Request<ConfigSnapshot>,
    ) -> Result<Response<ApplyConfigReply>, Status> {
        Ok(Response::new(self.apply(request.get_ref())))
    }

    type WatchStateStream = StateStream;

    async fn watch_state(
        &self,
        _: Request<WatchStateRequest>,
    ) -> Result<Response<Self::WatchStateStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let control = self.clone();
        let mut changed = self.inner.changed.subscribe();
        let mut role = self.inner.role.clone();
        let mut role_open = true;
        let mut agents = self.inner.center.subscribe();
        tokio::spawn(async move {
            let mut last: Option<NodeState> = None;
            let mut poll = tokio::time::interval(REGISTRATION_POLL);
            loop {
                let state = control.state();
                // Only changes are sent, after one full report.
                if last.as_ref() != Some(&state) {
                    if tx.send(Ok(state.clone())).await.is_err() {
                        return;
                    }
                    last = Some(state);
                }
                tokio::select! {
                    () = tx.closed() => return,
                    r = changed.changed() => if r.is_err() { return },
                    // An election that ended (no API server) leaves the role as it is.
                    r = role.changed(), if role_open => role_open = r.is_ok(),
                    r = agents.changed() => if r.is_err() { return },
                    _ = poll.tick() => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn set_agent_state(
        &self,
        request: Request<SetAgentStateRequest>,
    ) -> Result<Response<SetAgentStateReply>, Status> {
        let request = request.into_inner();
        let wanted = match AgentState::try_from(request.state) {
            Ok(AgentState::LoggedOut) => AgentRequest::Logout,
            Ok(AgentState::Ready) => AgentRequest::Ready,
            Ok(AgentState::NotReady) => {
                let reason = request.not_ready_reason.trim();
                if reason.is_empty() {
                    return Err(Status::invalid_argument(
                        "not_ready_reason: NOT_READY needs a reason",
                    ));
                }
                AgentRequest::NotReady(reason.to_string())
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "state: {} cannot be requested; ask for LOGGED_OUT, READY or NOT_READY \
                     (ringing, busy and wrap-up follow the calls)",
                    request.state
                )));
            }
        };
        let sip = &self.inner.sip;
        let now = Instant::now();
        let result = self
            .inner
            .center
            .request(&request.seat, wanted, |extension| {
                sip.is_registered(extension, now)
            });
        match result {
            Ok(status) => Ok(Response::new(SetAgentStateReply {
                state: agent_state_to_wire(status.state) as i32,
            })),
            Err(AgentRequestError::Acd(AgentError::UnknownSeat(seat))) => Err(Status::not_found(
                format!("seat {seat:?} is not in the running config"),
            )),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn list_call_records(
        &self,
        request: Request<ListCallRecordsRequest>,
    ) -> Result<Response<ListCallRecordsReply>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_RECORD_LIMIT,
            n if n > MAX_RECORD_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit: {n} is more than the {MAX_RECORD_LIMIT} records one reply serves; \
                     page with since_unix"
                )));
            }
            n => n,
        };
        let since = DateTime::from_timestamp(request.since_unix, 0).ok_or_else(|| {
            Status::invalid_argument(format!(
                "since_unix: {} is not a representable time",
                request.since_unix
            ))
        })?;
        let Some(path) = self
            .inner
            .sip
            .calls()
            .and_then(|calls| calls.cdr_path())
            .map(std::path::Path::to_path_buf)
        else {
            // This node writes no CDRs.
            return Ok(Response::new(ListCallRecordsReply::default()));
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let read_from = path.clone();
        let page = blocking("ListCallRecords", move || {
            read_records(&read_from, since, limit)
        })
        .await?
        .map_err(|error| {
            warn!(%error, "cannot read the CDR file");
            Status::internal(error.to_string())
        })?;
        if page.skipped > 0 {
            warn!(
                path = %path.display(),
                skipped = page.skipped,
                "CDR lines that are not a readable record were skipped"
            );
        }
        Ok(Response::new(ListCallRecordsReply {
            records_json: page.records,
            truncated: page.truncated,
        }))
    }

    async fn list_voicemail(
        &self,
        request: Request<ListVoicemailRequest>,
    ) -> Result<Response<ListVoicemailReply>, Status> {
        let mailbox = request.into_inner().mailbox;
        let boxes = self.mailboxes()?;
        let messages = blocking("ListVoicemail", move || boxes.list(&mailbox))
            .await?
            .map_err(mailbox_status)?;
        Ok(Response::new(ListVoicemailReply {
            messages: messages.iter().map(voicemail_to_wire).collect(),
        }))
    }

    type FetchVoicemailStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<VoicemailChunk, Status>> + Send>>;

    async fn fetch_voicemail(
        &self,
        request: Request<FetchVoicemailRequest>,
    ) -> Result<Response<Self::FetchVoicemailStream>, Status> {
        let FetchVoicemailRequest { mailbox, id } = request.into_inner();
        let boxes = self.mailboxes()?;
        let (message, wav) = blocking("FetchVoicemail", move || boxes.read(&mailbox, &id))
            .await?
            .map_err(mailbox_status)?;
        let chunks = voicemail_chunks(&message, &wav);
        Ok(Response::new(Box::pin(tokio_stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    /// Stops taking new calls and registrations (an active node hands its Lease to the
    /// standby); established calls go on. The process keeps running: SIGTERM ends it once
    /// its calls are over or the drain timeout has passed.
    async fn drain(&self, _: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        let Some(drain) = self.inner.drain.get() else {
            return Err(Status::unavailable("this node cannot drain"));
        };
        if !drain.send_replace(true) {
            info!("drain asked for over the control API");
        }
        let calls_remaining = self
            .inner
            .sip
            .calls()
            .map_or(0, |c| u32::try_from(c.calls_up()).unwrap_or(u32::MAX));
        Ok(Response::new(DrainReply { calls_remaining }))
    }
}

/// Why the control server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen for the control API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the local address of the control listener: {0}")]
    LocalAddr(std::io::Error),
    #[error("the control API server failed: {0}")]
    Serve(tonic::transport::Error),
    #[error("the control API server stopped")]
    Stopped,
}

impl ControlError {
    /// Whether binding failed because the port is taken.
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, Self::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

/// A bound control listener, so the caller learns the address (port 0) before serving.
pub struct ControlListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl ControlListener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, ControlError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ControlError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(ControlError::LocalAddr)?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the future is dropped.
    /// Serves the control API and, for a standby following this node, replication.
    pub async fn serve(
        self,
        control: Control,
        replication: crate::replication::stream::ReplicationService,
    ) -> ControlError {
        use switchboard_proto::replication::v1::replication_server::ReplicationServer;
        let result = tonic::transport::Server::builder()
            .add_service(NodeControlServer::new(control))
            .add_service(ReplicationServer::new(replication))
            .serve_with_incoming(TcpListenerStream::new(self.listener))
            .await;
        match result {
            Ok(()) => ControlError::Stopped,
            Err(e) => ControlError::Serve(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;
    use switchboard_proto::node::v1::ConfigSnapshot;

    use super::*;
    use crate::sip::SipMetrics;

    fn minimal() -> NodeConfig {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/minimal.yaml");
        crate::node::load(&path).expect("minimal loads").config
    }

    fn snapshot(config: &NodeConfig) -> ConfigSnapshot {
        ConfigSnapshot::new(
            config.generation,
            config.to_yaml().expect("yaml").into_bytes(),
        )
    }

    fn with_generation(mut config: NodeConfig, generation: i64) -> NodeConfig {
        config.generation = generation;
        config
    }

    fn control(config: NodeConfig) -> (Control, Registry) {
        let registry = Registry::new();
        let sip_metrics = SipMetrics::new(&registry).expect("sip metrics");
        let sip = Arc::new(SipServer::new(
            sip_settings(&config),
            sip_metrics,
            Instant::now(),
        ));
        let metrics = NodeMetrics::new(&registry).expect("node metrics");
        let center = Arc::new(CallCenterRuntime::new(&config, Some(&registry)).expect("center"));
        (
            Control::new(
                "node-a".into(),
                config,
                sip,
                metrics,
                watch::channel(Role::Active).1,
                center,
            ),
            registry,
        )
    }

    #[test]
    fn the_generation_rules() {
        let running = with_generation(minimal(), 5);
        let newer = with_generation(minimal(), 6);
        assert_eq!(
            decide(&running, &snapshot(&newer)),
            Decision::Apply(Box::new(newer.clone()))
        );
        assert_eq!(decide(&running, &snapshot(&running)), Decision::Unchanged);
        let older = with_generation(minimal(), 4);
        assert!(matches!(
            decide(&running, &snapshot(&older)),
            Decision::Stale(m) if m == "generation 4 is older than the running generation 5"
        ));

        let mut torn = snapshot(&newer);
        torn.config_yaml.truncate(10);
        assert!(matches!(
            decide(&running, &torn),
            Decision::Rejected(m) if m.contains("truncated or corrupted")
        ));

        let mut same_generation = running.clone();
        same_generation.queues[0].spec.wrap_up_seconds += 1;
        assert!(matches!(
            decide(&running, &snapshot(&same_generation)),
            Decision::Rejected(m) if m.contains("different content")
        ));

        let mut mislabelled = snapshot(&newer);
        mislabelled.generation = 7;
        assert!(matches!(
            decide(&running, &mislabelled),
            Decision::Rejected(m) if m == "generation: config_yaml says 6 but the snapshot says 7"
        ));

        let mut broken = newer.clone();
        broken.seats[0].ha1 = "plain".into();
        assert!(matches!(
            decide(&running, &snapshot(&broken)),
            Decision::Rejected(m) if m.contains("seats[0].ha1")
        ));
        let unknown = ConfigSnapshot::new(9, b"format: something/else\n".to_vec());
        assert!(matches!(
            decide(&running, &unknown),
            Decision::Rejected(m) if m.contains("unknown node-config format")
        ));
    }

    #[test]
    fn a_rejected_snapshot_keeps_the_running_config_and_everything_is_counted() {
        let (control, registry) = control(minimal());
        let mut next = with_generation(minimal(), 2);
        next.seats[0].ha1 = "nope".into();
        let reply = control.apply(&snapshot(&next));
        assert_eq!(reply.outcome(), Outcome::Rejected);
        assert_eq!(reply.running_generation, 1);
        assert_eq!(control.running().generation, 1);

        let reply = control.apply(&snapshot(&with_generation(minimal(), 2)));
        assert_eq!(reply.outcome(), Outcome::Applied);
        assert_eq!(reply.message, "", "the registrar's inputs did not change");
        assert_eq!(control.running().generation, 2);
        assert_eq!(control.state().config_generation, 2);

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        assert!(text.contains("switchboard_config_generation 2"), "{text}");
        assert!(text.contains("switchboard_config_applies_total{outcome=\"applied\"} 1"));
        assert!(text.contains("switchboard_config_applies_total{outcome=\"rejected\"} 1"));
    }

    #[test]
    fn seats_are_swapped_live_and_startup_settings_wait_for_a_restart() {
        let (control, _) = control(minimal());
        let mut next = with_generation(minimal(), 2);
        next.seats[0].ha1 = "0123456789abcdef0123456789abcdef".into();
        next.seats.pop();
        let reply = control.apply(&snapshot(&next));
        assert_eq!(reply.outcome(), Outcome::Applied);
        assert_eq!(reply.running_generation, 2);
        assert_eq!(reply.message, "", "seats are taken live");
        let seats: Vec<_> = control.state().seats.into_iter().map(|s| s.seat).collect();
        assert_eq!(seats, ["agent-1001"]);

        let mut next = with_generation(next, 3);
        next.spec.rtp.max_port -= 2;
        let reply = control.apply(&snapshot(&next));
        assert_eq!(reply.outcome(), Outcome::Applied);
        assert_eq!(
            reply.message,
            "applied; spec.rtp of generation 1 stay in force until the node restarts"
        );
    }

    #[test]
    fn a_voicemail_is_fetched_in_chunks_with_the_metadata_first() {
        let message = VoicemailMessage {
            id: "20260101t090000000z-0000abcd".into(),
            mailbox: "general".into(),
            from: "+4930111".into(),
            queue: Some("support".into()),
            call_id: "c1".into(),
            received_at: DateTime::from_timestamp(1_767_258_000, 0).expect("time"),
            duration_seconds: 4.5,
            file: "20260101t090000000z-0000abcd.wav".into(),
        };
        let wav: Vec<u8> = (0..2 * VOICEMAIL_CHUNK_BYTES + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        let chunks = voicemail_chunks(&message, &wav);
        let sizes: Vec<_> = chunks.iter().map(|c| c.wav.len()).collect();
        assert_eq!(sizes, [VOICEMAIL_CHUNK_BYTES, VOICEMAIL_CHUNK_BYTES, 10]);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.wav.iter().copied()).collect();
        assert_eq!(joined, wav);
        let first = chunks[0].message.as_ref().expect("metadata first");
        assert_eq!(
            (
                first.queue.as_str(),
                first.received_unix,
                first.duration_seconds
            ),
            ("support", 1_767_258_000, 4.5)
        );
        assert!(chunks[1..].iter().all(|c| c.message.is_none()));
        let empty = voicemail_chunks(&message, &[]);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].message.is_some() && empty[0].wav.is_empty());
    }

    #[tokio::test]
    async fn a_node_without_calls_has_no_records_and_no_voicemail() {
        let (control, _) = control(minimal());
        let records = control
            .list_call_records(Request::new(ListCallRecordsRequest::default()))
            .await
            .expect("no CDR file: no records")
            .into_inner();
        assert_eq!(records, ListCallRecordsReply::default());
        let refused = control
            .list_call_records(Request::new(ListCallRecordsRequest {
                since_unix: 0,
                limit: MAX_RECORD_LIMIT + 1,
            }))
            .await
            .expect_err("limit too large");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let refused = control
            .list_voicemail(Request::new(ListVoicemailRequest {
                mailbox: "general".into(),
            }))
            .await
            .expect_err("voicemail off");
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        let refused = control
            .fetch_voicemail(Request::new(FetchVoicemailRequest {
                mailbox: "general".into(),
                id: "x".into(),
            }))
            .await
            .err()
            .expect("voicemail off");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn the_state_names_the_node_and_its_unregistered_seats() {
        let (control, _) = control(minimal());
        let state = control.state();
        assert_eq!(state.node, "node-a");
        assert_eq!(state.role(), NodeRole::Active);
        assert_eq!(state.config_generation, 1);
        let seats: Vec<_> = state
            .seats
            .iter()
            .map(|s| (s.seat.as_str(), s.registered))
            .collect();
        assert_eq!(seats, [("agent-1001", false), ("agent-1002", false)]);
        assert!(
            state
                .seats
                .iter()
                .all(|s| s.agent_state() == AgentState::LoggedOut),
            "nobody has logged in"
        );
        let queues: Vec<_> = state
            .queues
            .iter()
            .map(|q| (q.queue.as_str(), q.calls_waiting, q.agents_ready))
            .collect();
        assert_eq!(queues, [("support", 0, 0)]);
        let support = &state.queues[0];
        assert_eq!(
            (
                support.calls_offered_15m,
                support.average_handle_seconds,
                support.average_speed_of_answer_seconds
            ),
            (0, None, None),
            "no calls yet"
        );
        assert!(state.trunks.is_empty());
    }
}
