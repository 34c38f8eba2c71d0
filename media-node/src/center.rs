//! The call-center runtime of a node: the ACD and the live statistics of the running config,
//! shared by the calls, the control API and `/metrics`.
//!
//! The ACD and the statistics are pure (they take the time as an argument); this is where the
//! clock is read, the config is turned into agents and queues, the seats' registrations are
//! followed (a seat whose phone is no longer registered is logged out), and agent-state
//! changes are passed to the statistics and wake the `WatchState` streams.
//!
//! Calls in a queue register here with a way to reach their session ([`CallerLine`]); after
//! every change of the ACD its offers are sent to the callers' sessions at once
//! ([`CenterCommand`]), and the sessions report back what their offers did.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use prometheus::Registry;
use switchboard_crds::QueueSpec;
use switchboard_crds::callcenter::{FeatureCodes, VoicemailSpec};
use switchboard_crds::seat::AgentState;
use switchboard_proto::node_config::NodeConfig;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::acd::{
    Acd, AgentConfig, AgentError, AgentRequest, AgentStatus, CallKey, CallerInfo, OfferFailure,
    QueueEvent, Refusal,
};
use crate::ivr::{BusinessHours, Ivr, IvrMetrics, IvrStep, PinSet};
use crate::sip::SipServer;
use crate::stats::{AgentLive, LiveStats, QueueLive, StatsMetrics, Window, center_time_zone};

/// How often wrap-ups end, registrations are checked and the metrics are refreshed when
/// nothing else happens.
pub const TICK: Duration = Duration::from_secs(1);

/// An agent's state as the control API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeatReport {
    pub state: AgentState,
    pub reason: Option<String>,
    /// When the state began (wall clock).
    pub since: DateTime<Utc>,
    pub calls_today: u32,
    pub talk_today: Duration,
}

/// A queue's live figures as the control API reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueReport {
    pub queue: String,
    pub waiting: u32,
    pub longest_wait: Duration,
    pub agents_ready: u32,
    /// Definition 1 (answered within the threshold ÷ answered), last 15 minutes.
    pub service_level_percent: Option<f64>,
    pub abandon_rate_percent: Option<f64>,
    /// Calls that entered the queue in the last 15 minutes.
    pub calls_offered: u64,
    /// Talk + hold + wrap-up of the calls handled in the last 15 minutes.
    pub average_handle_time: Option<Duration>,
    /// Wait of the calls answered in the last 15 minutes.
    pub average_speed_of_answer: Option<Duration>,
}

/// Why an agent-state request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentRequestError {
    #[error(transparent)]
    Acd(#[from] AgentError),
    #[error("seat {0} has no registered phone: it cannot log in")]
    NotRegistered(String),
}

/// What the ACD asks of a queued caller's call session.
#[derive(Debug, Clone, PartialEq)]
pub enum CenterCommand {
    /// Ring these seats (`(seat, extension)`; several for ring-all) for the caller. Report
    /// each with [`CallCenterRuntime::offer_answered`] or [`CallCenterRuntime::offer_failed`].
    Offer {
        queue: String,
        seats: Vec<(String, String)>,
        ring_timeout: Duration,
    },
    /// The seat's ring timeout ran out (the ACD already made it NotReady): stop ringing it,
    /// report nothing.
    StopRinging { seat: String },
    /// The caller left the queue for voicemail (an overflow step or the maximum wait).
    ToVoicemail { queue: String },
}

/// How the runtime reaches a queued caller's session: `false` when the session is gone.
pub type CallerLine = Box<dyn Fn(CenterCommand) -> bool + Send + Sync>;

/// The call-center part of the running config that call sessions follow: menus, queues,
/// seats, voicemail and feature codes. Replaced whole by a new config; a call keeps the plan
/// it started with.
#[derive(Debug, Default)]
pub struct CenterPlan {
    pub ivr: Ivr,
    pub queues: BTreeMap<String, QueueSpec>,
    /// Seat name → extension.
    pub extensions: BTreeMap<String, String>,
    /// Extension → seat name.
    pub seats: BTreeMap<String, String>,
    /// Seat name → its own wrap-up override.
    pub seat_wrap_up: BTreeMap<String, u32>,
    pub voicemail: VoicemailSpec,
    pub feature_codes: FeatureCodes,
}

impl CenterPlan {
    /// The plan of `config`; menus with unusable business hours or PIN lists are logged and
    /// served without them (the config checks have reported them already).
    pub fn of(config: &NodeConfig) -> Self {
        let spec = &config.spec;
        let hours = spec
            .business_hours
            .as_ref()
            .and_then(|h| match BusinessHours::from_spec(h) {
                Ok(h) => Some(h),
                Err(error) => {
                    warn!(%error, "business hours unusable; menus treat the center as open");
                    None
                }
            });
        let pins = config
            .member_pins
            .iter()
            .filter_map(|m| match PinSet::from_hashes(&m.salt, &m.hashes) {
                Ok(set) => Some((m.menu.clone(), set)),
                Err(error) => {
                    warn!(menu = m.menu, %error, "member PIN list unusable; every PIN is refused");
                    None
                }
            })
            .collect();
        Self {
            ivr: Ivr::new(&spec.ivr_menus, hours, pins),
            queues: config
                .queues
                .iter()
                .map(|q| (q.name.clone(), q.spec.clone()))
                .collect(),
            extensions: config
                .seats
                .iter()
                .map(|s| (s.name.clone(), s.spec.extension.clone()))
                .collect(),
            seats: config
                .seats
                .iter()
                .map(|s| (s.spec.extension.clone(), s.name.clone()))
                .collect(),
            seat_wrap_up: config
                .seats
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.spec.wrap_up_seconds?)))
                .collect(),
            voicemail: spec.voicemail.clone(),
            feature_codes: spec.feature_codes.clone(),
        }
    }

    /// The after-call work a seat does after a call of `queue`.
    pub fn wrap_up(&self, seat: &str, queue: &str) -> Duration {
        let seconds = self
            .seat_wrap_up
            .get(seat)
            .copied()
            .or_else(|| self.queues.get(queue).map(|q| q.wrap_up_seconds))
            .unwrap_or(0);
        Duration::from_secs(seconds.into())
    }
}

/// A caller in a queue: how to reach the session and what the statistics need.
struct QueuedCaller {
    line: CallerLine,
    queue: String,
    since: Instant,
}

struct State {
    acd: Acd,
    /// Queued callers (waiting or being offered), by ACD key.
    callers: HashMap<CallKey, QueuedCaller>,
    next_key: CallKey,
    stats: LiveStats,
    /// Seat name → extension, for the registration check.
    extensions: BTreeMap<String, String>,
    /// The queues of the running config, by name.
    queues: Vec<String>,
}

/// The ACD and statistics of one node.
pub struct CallCenterRuntime {
    state: Mutex<State>,
    plan: RwLock<Arc<CenterPlan>>,
    metrics: Option<StatsMetrics>,
    ivr_metrics: Option<IvrMetrics>,
    /// Counts agent-state changes, so `WatchState` streams report them at once.
    changed: watch::Sender<u64>,
    /// The wall-clock time of `started`, to report `Instant`s as dates.
    started: (Instant, DateTime<Utc>),
    /// Where agent-state changes are replicated to the standby (HotStandby).
    replication: std::sync::OnceLock<Arc<crate::replication::ReplicationHub>>,
}

impl CallCenterRuntime {
    /// The runtime of `config`, exporting `switchboard_queue_*` and `switchboard_agent_*` to
    /// `registry` when given.
    pub fn new(
        config: &NodeConfig,
        registry: Option<&Registry>,
    ) -> Result<Self, prometheus::Error> {
        let metrics = registry.map(StatsMetrics::new).transpose()?;
        let ivr_metrics = registry.map(IvrMetrics::new).transpose()?;
        let now = Instant::now();
        let runtime = Self {
            plan: RwLock::new(Arc::new(CenterPlan::default())),
            ivr_metrics,
            state: Mutex::new(State {
                callers: HashMap::new(),
                next_key: 1,
                acd: Acd::new(rand::random()),
                stats: LiveStats::new(chrono_tz::UTC),
                extensions: BTreeMap::new(),
                queues: Vec::new(),
            }),
            metrics,
            changed: watch::channel(0).0,
            started: (now, Utc::now()),
            replication: std::sync::OnceLock::new(),
        };
        runtime.configure(config);
        Ok(runtime)
    }

    /// Takes the queues and seats of a new config; agents that stay keep their state and
    /// callers of queues that stay keep their place.
    pub fn configure(&self, config: &NodeConfig) {
        let now = Instant::now();
        let queues: Vec<_> = config
            .queues
            .iter()
            .map(|q| (q.name.clone(), q.spec.clone()))
            .collect();
        let agents: Vec<AgentConfig> = config.seats.iter().map(agent_config).collect();
        let center_threshold = config.spec.service_level.threshold_seconds;
        let tz = config
            .spec
            .business_hours
            .as_ref()
            .map(|h| h.time_zone.as_str());
        *self.plan.write() = Arc::new(CenterPlan::of(config));
        let mut state = self.state.lock();
        let orphans = state.acd.configure(&queues, &agents, now);
        if !orphans.is_empty() {
            // Their queue is gone: voicemail is the one place left that takes them.
            warn!(
                callers = orphans.len(),
                "queues removed with callers waiting; they go to voicemail"
            );
            for call in orphans {
                if let Some(caller) = state.callers.remove(&call) {
                    (caller.line)(CenterCommand::ToVoicemail {
                        queue: caller.queue,
                    });
                }
            }
        }
        match center_time_zone(tz) {
            Ok(tz) => state.stats.set_time_zone(tz),
            Err(e) => warn!(error = %e, "statistics keep their time zone"),
        }
        for q in &config.queues {
            let threshold = q
                .spec
                .service_level
                .as_ref()
                .map_or(center_threshold, |t| t.threshold_seconds);
            state
                .stats
                .set_threshold(&q.name, Duration::from_secs(threshold.into()));
        }
        let gone_queues: Vec<String> = state
            .stats
            .queue_names()
            .map(str::to_string)
            .chain(state.queues.iter().cloned())
            .filter(|q| !queues.iter().any(|(name, _)| name == q))
            .collect();
        for q in gone_queues {
            state.stats.forget_queue(&q);
        }
        let gone_seats: Vec<String> = state
            .stats
            .seat_names()
            .filter(|s| !agents.iter().any(|a| a.seat == *s))
            .map(str::to_string)
            .collect();
        for s in gone_seats {
            state.stats.forget_seat(&s);
        }
        state.queues = queues.iter().map(|(name, _)| name.clone()).collect();
        state.extensions = agents
            .iter()
            .map(|a| (a.seat.clone(), a.extension.clone()))
            .collect();
        self.dispatch(&mut state, now);
    }

    /// The plan new calls follow.
    pub fn plan(&self) -> Arc<CenterPlan> {
        Arc::clone(&self.plan.read())
    }

    /// Counts the IVR steps a caller took (`switchboard_ivr_paths_total`).
    pub fn count_ivr_steps(&self, steps: &[IvrStep]) {
        if let Some(m) = &self.ivr_metrics {
            m.count(steps);
        }
    }

    /// Queues a caller who entered their first queue at `since` (now, or before a takeover:
    /// the order the ACD keeps); returns their ACD key and 1-based position. The session hears
    /// of offers through `line` from now on, maybe before this returns.
    pub fn enqueue(
        &self,
        queue: &str,
        caller: CallerInfo,
        line: CallerLine,
        since: Instant,
    ) -> Result<(CallKey, usize), Refusal> {
        let now = Instant::now();
        let since = since.min(now);
        let mut state = self.state.lock();
        let key = state.next_key;
        state.next_key += 1;
        let position = state.acd.enqueue(key, queue, caller, since)?;
        state.stats.offered(queue, Utc::now());
        state.callers.insert(
            key,
            QueuedCaller {
                line,
                queue: queue.to_string(),
                since,
            },
        );
        info!(key, queue, position, "caller queued");
        self.dispatch(&mut state, now);
        Ok((key, position))
    }

    /// The caller's queue, 1-based position and estimated wait.
    pub fn queue_position(&self, key: CallKey) -> Option<(String, usize, Duration)> {
        let state = self.state.lock();
        let now = Instant::now();
        let (queue, position) = state.acd.position(key)?;
        let wait = state.acd.estimated_wait(key, now).unwrap_or_default();
        Some((queue, position, wait))
    }

    /// The caller hung up while queued (waiting or ringing agents): counted as abandoned;
    /// seats ringing for them are Ready again.
    pub fn abandon(&self, key: CallKey) {
        let now = Instant::now();
        let mut state = self.state.lock();
        let Some(caller) = state.callers.remove(&key) else {
            return;
        };
        state.acd.abandon(key, now);
        let waited = now.saturating_duration_since(caller.since);
        state.stats.abandoned(&caller.queue, waited, Utc::now());
        info!(
            key,
            queue = caller.queue,
            waited_ms = waited.as_millis() as u64,
            "caller abandoned"
        );
        self.dispatch(&mut state, now);
    }

    /// `seat` answered the caller: the agent is Busy and the caller leaves the queue.
    /// Returns the queue and how long the caller waited; `None` when the ACD no longer
    /// offers this caller to that seat (its ring timeout ran out first, the caller left):
    /// the session must hang that phone up.
    pub fn offer_answered(&self, key: CallKey, seat: &str) -> Option<(String, Duration)> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if !state.acd.is_ringing_for(seat, key) {
            return None;
        }
        let caller = state.callers.remove(&key)?;
        state.acd.offer_answered(key, seat, now);
        let waited = now.saturating_duration_since(caller.since);
        state
            .stats
            .answered(&caller.queue, seat, waited, Utc::now());
        info!(
            key,
            seat,
            queue = caller.queue,
            waited_ms = waited.as_millis() as u64,
            "offer answered"
        );
        self.dispatch(&mut state, now);
        Some((caller.queue, waited))
    }

    /// An offered seat did not take the caller (see [`OfferFailure`]).
    pub fn offer_failed(&self, key: CallKey, seat: &str, failure: OfferFailure) {
        let now = Instant::now();
        let mut state = self.state.lock();
        info!(key, seat, ?failure, "offer failed");
        state.acd.offer_failed(key, seat, failure, now);
        self.dispatch(&mut state, now);
    }

    /// A queue call the seat answered has ended after `talk`: wrap-up, then Ready.
    pub fn queue_call_ended(&self, seat: &str, queue: &str, talk: Duration) {
        let now = Instant::now();
        let wrap_up = self.plan().wrap_up(seat, queue);
        let mut state = self.state.lock();
        state.acd.call_ended(seat, talk, now);
        state
            .stats
            .handled(queue, seat, talk, Duration::ZERO, wrap_up, Utc::now());
        self.dispatch(&mut state, now);
    }

    /// Replicates agent-state changes to `hub` from now on, starting with every agent's
    /// state now.
    pub fn attach_replication(&self, hub: Arc<crate::replication::ReplicationHub>) {
        let state = self.state.lock();
        for (seat, status) in state.acd.agents() {
            hub.agent_now(seat, status, state.acd.wrap_up_until(seat));
        }
        let _ = self.replication.set(hub);
    }

    /// Takes over the agents' states the previous active node held (hot standby), in the
    /// order given (see [`crate::replication::takeover::agents`]).
    pub fn restore_agents(&self, agents: &[crate::replication::takeover::AgentRestore]) -> usize {
        let now = Instant::now();
        let mut state = self.state.lock();
        let mut restored = 0;
        for a in agents {
            if state.acd.agent(&a.seat).is_none() {
                continue;
            }
            state.acd.restore_agent(
                &a.seat,
                a.state,
                a.reason.clone(),
                a.since,
                a.wrap_up_until,
                (a.calls_today, a.talk_today),
                now,
            );
            restored += 1;
        }
        self.dispatch(&mut state, now);
        restored
    }

    /// The agent at `seat` is on a queue call taken over from the previous active node: Busy
    /// on it again, as after their answer (wrap-up follows its end).
    pub fn resume_queue_call(&self, seat: &str, queue: &str, number: &str) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.acd.resume_queue_call(seat, queue, number, now);
        self.dispatch(&mut state, now);
    }

    /// The seat's phone took a call no queue offered (seat to seat, outbound, rung
    /// directly): the agent is kept from queue calls until [`Self::direct_call_ended`].
    pub fn direct_call_started(&self, seat: &str) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.acd.direct_call_started(seat, now);
        self.dispatch(&mut state, now);
    }

    /// A call of [`Self::direct_call_started`] ended.
    pub fn direct_call_ended(&self, seat: &str) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.acd.direct_call_ended(seat, now);
        self.dispatch(&mut state, now);
    }

    /// The seat of an extension, if it is one of this center's.
    pub fn seat_of(&self, extension: &str) -> Option<String> {
        self.plan().seats.get(extension).cloned()
    }

    /// Sends the ACD's offers to their callers' sessions; a caller whose session is gone
    /// leaves the queue (its seats are Ready again, and may be offered to the next caller).
    fn dispatch(&self, state: &mut State, now: Instant) {
        // Each round either delivers every offer or removes a caller, so this ends; the bound
        // only keeps a lock holder from looping on a broken invariant.
        for _ in 0..64 {
            let offers = state.acd.next_offers(now);
            if offers.is_empty() {
                break;
            }
            let mut gone = Vec::new();
            for offer in offers {
                let seats = offer
                    .agents
                    .iter()
                    .map(|seat| {
                        let extension = state.extensions.get(seat).cloned().unwrap_or_default();
                        (seat.clone(), extension)
                    })
                    .collect();
                let command = CenterCommand::Offer {
                    queue: offer.queue.clone(),
                    seats,
                    ring_timeout: offer.ring_timeout,
                };
                let delivered = state
                    .callers
                    .get(&offer.call)
                    .is_some_and(|c| (c.line)(command));
                if !delivered {
                    gone.push(offer.call);
                }
            }
            if gone.is_empty() {
                break;
            }
            for key in gone {
                warn!(key, "queued caller's call is gone; it leaves the queue");
                state.callers.remove(&key);
                state.acd.abandon(key, now);
            }
        }
        self.settle(state);
    }

    /// Acts on what the ACD's timers did: stops ringing that timed out, sends callers to
    /// voicemail, follows callers moved to another queue.
    fn follow_queue_events(&self, state: &mut State, events: Vec<QueueEvent>) {
        for event in events {
            info!(?event, "queue event");
            match event {
                QueueEvent::RingNoAnswer { call, seat } => {
                    if let Some(c) = state.callers.get(&call) {
                        (c.line)(CenterCommand::StopRinging { seat });
                    }
                }
                QueueEvent::ToVoicemail { call, queue }
                | QueueEvent::MaxWaitReached { call, queue } => {
                    if let Some(c) = state.callers.remove(&call) {
                        (c.line)(CenterCommand::ToVoicemail { queue });
                    }
                }
                QueueEvent::Overflowed { call, to, .. } => {
                    if let Some(c) = state.callers.get_mut(&call) {
                        c.queue = to;
                    }
                }
                QueueEvent::WrapUpEnded { .. } | QueueEvent::SkillsRelaxed { .. } => {}
            }
        }
    }

    /// A change of agent state asked for by the control API (or a feature code); `Ready` for
    /// a logged-out seat logs it in. Logging in needs a registered phone: a logged-in agent
    /// without one would only ever ring out.
    pub fn request(
        &self,
        seat: &str,
        request: AgentRequest,
        registered: impl Fn(&str) -> bool,
    ) -> Result<AgentStatus, AgentRequestError> {
        let mut state = self.state.lock();
        if matches!(request, AgentRequest::Login | AgentRequest::Ready) {
            let extension = state
                .extensions
                .get(seat)
                .ok_or_else(|| AgentError::UnknownSeat(seat.to_string()))?;
            if !registered(extension) {
                return Err(AgentRequestError::NotRegistered(seat.to_string()));
            }
        }
        // The control API has no separate login: READY for a logged-out seat logs it in.
        let logged_out = state
            .acd
            .agent(seat)
            .is_some_and(|s| s.state == AgentState::LoggedOut);
        let request = match request {
            AgentRequest::Ready if logged_out => AgentRequest::Login,
            other => other,
        };
        let status = state
            .acd
            .set_agent_state(seat, request.clone(), Instant::now())?;
        info!(seat, ?request, state = ?status.state, "agent state requested");
        self.dispatch(&mut state, Instant::now());
        Ok(status)
    }

    /// Ends wrap-ups and ring timeouts that are due and logs out seats whose phone is no
    /// longer registered; then refreshes the metrics.
    pub fn tick(&self, registered: impl Fn(&str) -> bool) {
        let now = Instant::now();
        let mut state = self.state.lock();
        let lost: Vec<String> = state
            .acd
            .agents()
            .filter(|(_, s)| s.state != AgentState::LoggedOut)
            .filter_map(|(seat, _)| {
                let extension = state.extensions.get(seat)?;
                (!registered(extension)).then(|| seat.to_string())
            })
            .collect();
        for seat in lost {
            info!(seat, "seat's registration ended: agent logged out");
            state.acd.registration_lost(&seat, now);
        }
        let events = state.acd.tick(now);
        self.follow_queue_events(&mut state, events);
        self.dispatch(&mut state, now);
        self.export(&state);
    }

    /// Passes agent changes to the statistics and wakes the watchers.
    fn settle(&self, state: &mut State) {
        let changed = state.acd.take_changed_agents();
        if changed.is_empty() {
            return;
        }
        let at = Utc::now();
        let hub = self.replication.get();
        for seat in &changed {
            if let Some(status) = state.acd.agent(seat) {
                state.stats.agent_state(seat, status.state, at);
                if let Some(hub) = hub {
                    hub.agent_now(seat, status, state.acd.wrap_up_until(seat));
                }
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn export(&self, state: &State) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let now = Instant::now();
        let queues: Vec<QueueLive> = state
            .queues
            .iter()
            .filter_map(|q| {
                let snapshot = state.acd.queue_snapshot(q, now)?;
                Some(QueueLive {
                    queue: q.clone(),
                    waiting: snapshot.waiting,
                    longest_wait: snapshot.longest_wait,
                    agents_by_state: snapshot.agents,
                })
            })
            .collect();
        let agents: Vec<AgentLive> = state
            .acd
            .agents()
            .map(|(seat, s)| AgentLive {
                seat: seat.to_string(),
                state: s.state,
            })
            .collect();
        metrics.export(&state.stats, &queues, &agents, Utc::now());
    }

    /// Each seat's agent state.
    pub fn seats(&self) -> BTreeMap<String, SeatReport> {
        let state = self.state.lock();
        state
            .acd
            .agents()
            .map(|(seat, s)| {
                (
                    seat.to_string(),
                    SeatReport {
                        state: s.state,
                        reason: s.reason.clone(),
                        since: self.wall_clock(s.since),
                        calls_today: s.calls_today,
                        talk_today: s.talk_time_today,
                    },
                )
            })
            .collect()
    }

    /// Each queue's live figures.
    pub fn queues(&self) -> Vec<QueueReport> {
        let state = self.state.lock();
        let now = Instant::now();
        let wall = Utc::now();
        state
            .queues
            .iter()
            .filter_map(|q| {
                let snapshot = state.acd.queue_snapshot(q, now)?;
                let figures = state.stats.queue(q, Window::Last15Minutes, wall);
                Some(QueueReport {
                    waiting: snapshot.waiting,
                    longest_wait: snapshot.longest_wait,
                    agents_ready: snapshot.agents.ready,
                    service_level_percent: figures.service_level_percent,
                    abandon_rate_percent: figures.abandon_rate_percent,
                    calls_offered: figures.offered,
                    average_handle_time: figures.average_handle_time,
                    average_speed_of_answer: figures.average_speed_of_answer,
                    queue: q.clone(),
                })
            })
            .collect()
    }

    /// Wakes on every agent-state change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn wall_clock(&self, at: Instant) -> DateTime<Utc> {
        let (started, wall) = self.started;
        match at.checked_duration_since(started) {
            Some(after) => wall + after,
            None => wall - started.duration_since(at),
        }
    }
}

fn agent_config(seat: &switchboard_proto::node_config::NodeSeat) -> AgentConfig {
    AgentConfig {
        seat: seat.name.clone(),
        extension: seat.spec.extension.clone(),
        queues: seat
            .spec
            .queues
            .iter()
            .map(|m| (m.name.clone(), m.tier))
            .collect(),
        skills: seat
            .spec
            .skills
            .iter()
            .map(|s| (s.name.clone(), s.proficiency))
            .collect(),
        wrap_up_seconds: seat.spec.wrap_up_seconds,
    }
}

/// Ticks the runtime every [`TICK`] for as long as the node runs.
pub async fn run(center: std::sync::Arc<CallCenterRuntime>, sip: std::sync::Arc<SipServer>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        center.tick(|extension| sip.is_registered(extension, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> NodeConfig {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/minimal.yaml");
        crate::node::load(&path).expect("minimal loads").config
    }

    #[test]
    fn a_seat_whose_phone_goes_away_is_logged_out() {
        let registry = Registry::new();
        let center = CallCenterRuntime::new(&minimal(), Some(&registry)).expect("runtime");
        let mut changes = center.subscribe();
        let refused = center.request("agent-1001", AgentRequest::Login, |_| false);
        assert!(matches!(refused, Err(AgentRequestError::NotRegistered(_))));
        let status = center
            .request("agent-1001", AgentRequest::Login, |_| true)
            .expect("login");
        assert_eq!(status.state, AgentState::Ready);
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();

        // Still registered: nothing changes.
        center.tick(|_| true);
        assert_eq!(center.seats()["agent-1001"].state, AgentState::Ready);
        assert!(!changes.has_changed().expect("open"));
        assert_eq!(center.queues()[0].agents_ready, 1);

        center.tick(|extension| extension != "1001");
        assert_eq!(center.seats()["agent-1001"].state, AgentState::LoggedOut);
        assert!(changes.has_changed().expect("open"));
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        assert!(
            text.contains(r#"switchboard_agent_state{seat="agent-1001",state="logged_out"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_new_config_keeps_agents_that_stay_and_forgets_the_others() {
        let center = CallCenterRuntime::new(&minimal(), None).expect("runtime");
        center
            .request("agent-1002", AgentRequest::Login, |_| true)
            .expect("login");
        let mut next = minimal();
        next.seats.retain(|s| s.name == "agent-1002");
        center.configure(&next);
        let seats = center.seats();
        assert_eq!(seats.keys().collect::<Vec<_>>(), ["agent-1002"]);
        assert_eq!(seats["agent-1002"].state, AgentState::Ready);
        assert!(matches!(
            center.request("agent-1001", AgentRequest::Login, |_| true),
            Err(AgentRequestError::Acd(AgentError::UnknownSeat(_)))
        ));
    }
}
