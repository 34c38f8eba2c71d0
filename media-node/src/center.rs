//! The call-center runtime of a node: the ACD and the live statistics of the running config,
//! shared by the calls, the control API and `/metrics`.
//!
//! The ACD and the statistics are pure (they take the time as an argument); this is where the
//! clock is read, the config is turned into agents and queues, the seats' registrations are
//! followed (a seat whose phone is no longer registered is logged out), and agent-state
//! changes are passed to the statistics and wake the `WatchState` streams.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus::Registry;
use switchboard_crds::seat::AgentState;
use switchboard_proto::node_config::NodeConfig;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::acd::{Acd, AgentConfig, AgentError, AgentRequest, AgentStatus};
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
}

/// Why an agent-state request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentRequestError {
    #[error(transparent)]
    Acd(#[from] AgentError),
    #[error("seat {0} has no registered phone: it cannot log in")]
    NotRegistered(String),
}

struct State {
    acd: Acd,
    stats: LiveStats,
    /// Seat name → extension, for the registration check.
    extensions: BTreeMap<String, String>,
    /// The queues of the running config, by name.
    queues: Vec<String>,
}

/// The ACD and statistics of one node.
pub struct CallCenterRuntime {
    state: Mutex<State>,
    metrics: Option<StatsMetrics>,
    /// Counts agent-state changes, so `WatchState` streams report them at once.
    changed: watch::Sender<u64>,
    /// The wall-clock time of `started`, to report `Instant`s as dates.
    started: (Instant, DateTime<Utc>),
}

impl CallCenterRuntime {
    /// The runtime of `config`, exporting `switchboard_queue_*` and `switchboard_agent_*` to
    /// `registry` when given.
    pub fn new(
        config: &NodeConfig,
        registry: Option<&Registry>,
    ) -> Result<Self, prometheus::Error> {
        let metrics = registry.map(StatsMetrics::new).transpose()?;
        let now = Instant::now();
        let runtime = Self {
            state: Mutex::new(State {
                acd: Acd::new(rand::random()),
                stats: LiveStats::new(chrono_tz::UTC),
                extensions: BTreeMap::new(),
                queues: Vec::new(),
            }),
            metrics,
            changed: watch::channel(0).0,
            started: (now, Utc::now()),
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
        let mut state = self.state.lock();
        let orphans = state.acd.configure(&queues, &agents, now);
        if !orphans.is_empty() {
            // Calls keep running; their sessions learn it when they next ask the ACD.
            warn!(
                callers = orphans.len(),
                "queues removed with callers waiting"
            );
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
        self.settle(&mut state);
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
        self.settle(&mut state);
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
        for event in state.acd.tick(now) {
            info!(?event, "queue event");
        }
        self.settle(&mut state);
        self.export(&state);
    }

    /// Passes agent changes to the statistics and wakes the watchers.
    fn settle(&self, state: &mut State) {
        let changed = state.acd.take_changed_agents();
        if changed.is_empty() {
            return;
        }
        let at = Utc::now();
        for seat in &changed {
            if let Some(status) = state.acd.agent(seat).map(|s| s.state) {
                state.stats.agent_state(seat, status, at);
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
