//! Prometheus gauges of the live statistics (`switchboard_queue_*`, `switchboard_agent_*`).
//!
//! Ratios are 0..1 here (Prometheus convention) where the status and control API use
//! percent. A figure with nothing to divide by is not exported (its series is removed), and
//! the series of queues and seats that disappeared are removed too.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus::{GaugeVec, Opts, Registry};
use switchboard_crds::queue::AgentCounts;
use switchboard_crds::seat::AgentState;

use super::{LiveStats, TIMED_STATES, Window};

/// What the ACD knows about a queue right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueLive {
    pub queue: String,
    /// Callers waiting now.
    pub waiting: u32,
    /// The longest current wait (zero when nobody waits).
    pub longest_wait: Duration,
    /// Agents of this queue by state.
    pub agents_by_state: AgentCounts,
}

/// What the ACD knows about a seat right now.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentLive {
    pub seat: String,
    pub state: AgentState,
}

/// The `state` label value of an agent state.
pub fn state_label(state: AgentState) -> &'static str {
    match state {
        AgentState::LoggedOut => "logged_out",
        AgentState::Ready => "ready",
        AgentState::NotReady => "not_ready",
        AgentState::Ringing => "ringing",
        AgentState::Busy => "busy",
        AgentState::WrapUp => "wrap_up",
    }
}

const ALL_STATES: [AgentState; 6] = [
    AgentState::LoggedOut,
    AgentState::Ready,
    AgentState::NotReady,
    AgentState::Ringing,
    AgentState::Busy,
    AgentState::WrapUp,
];

/// `definition` label values of the service level.
const SL_ANSWERED: &str = "answered";
const SL_ANSWERED_AND_ABANDONED: &str = "answered_and_abandoned";

/// The gauges, registered once per registry.
pub struct StatsMetrics {
    queue_offered: GaugeVec,
    queue_answered: GaugeVec,
    queue_answered_within: GaugeVec,
    queue_abandoned: GaugeVec,
    queue_abandoned_within: GaugeVec,
    queue_handled: GaugeVec,
    queue_service_level: GaugeVec,
    queue_abandon: GaugeVec,
    queue_asa: GaugeVec,
    queue_aht: GaugeVec,
    queue_threshold: GaugeVec,
    queue_waiting: GaugeVec,
    queue_longest_wait: GaugeVec,
    queue_agents: GaugeVec,
    queue_agents_logged_in: GaugeVec,
    agent_answered: GaugeVec,
    agent_handled: GaugeVec,
    agent_talk: GaugeVec,
    agent_handle: GaugeVec,
    agent_aht: GaugeVec,
    agent_occupancy: GaugeVec,
    agent_state: GaugeVec,
    agent_state_seconds: GaugeVec,
    /// Queues and seats exported last time, to remove the series of those that went away.
    exported: Mutex<Exported>,
}

#[derive(Default)]
struct Exported {
    queues: BTreeSet<String>,
    seats: BTreeSet<String>,
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let vec = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

/// Sets the series, or removes it when there is no value.
fn set_or_remove(vec: &GaugeVec, labels: &[&str], value: Option<f64>) {
    match value {
        Some(v) => vec.with_label_values(labels).set(v),
        // Absent already is fine: removing is idempotent for us.
        None => {
            let _ = vec.remove_label_values(labels);
        }
    }
}

fn remove(vec: &GaugeVec, labels: &[&str]) {
    let _ = vec.remove_label_values(labels);
}

impl StatsMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let qw = &["queue", "window"];
        let sw = &["seat", "window"];
        Ok(Self {
            queue_offered: gauge(
                registry,
                "switchboard_queue_calls_offered",
                "Calls that entered the queue in the window.",
                qw,
            )?,
            queue_answered: gauge(
                registry,
                "switchboard_queue_calls_answered",
                "Calls offered in the window and answered.",
                qw,
            )?,
            queue_answered_within: gauge(
                registry,
                "switchboard_queue_calls_answered_within_threshold",
                "Calls offered in the window and answered within the service-level threshold.",
                qw,
            )?,
            queue_abandoned: gauge(
                registry,
                "switchboard_queue_calls_abandoned",
                "Calls offered in the window that left the queue unanswered.",
                qw,
            )?,
            queue_abandoned_within: gauge(
                registry,
                "switchboard_queue_calls_abandoned_within_threshold",
                "Calls offered in the window that left unanswered within the service-level threshold.",
                qw,
            )?,
            queue_handled: gauge(
                registry,
                "switchboard_queue_calls_handled",
                "Calls whose wrap-up ended in the window.",
                qw,
            )?,
            queue_service_level: gauge(
                registry,
                "switchboard_queue_service_level_ratio",
                "Service level, 0..1: definition=answered is answered within threshold / answered (Asterisk ServicelevelPerf); definition=answered_and_abandoned adds the short abandons to both sides (ServicelevelPerf2).",
                &["queue", "window", "definition"],
            )?,
            queue_abandon: gauge(
                registry,
                "switchboard_queue_abandon_ratio",
                "Abandoned / offered calls, 0..1.",
                qw,
            )?,
            queue_asa: gauge(
                registry,
                "switchboard_queue_average_speed_of_answer_seconds",
                "Average wait of the answered calls.",
                qw,
            )?,
            queue_aht: gauge(
                registry,
                "switchboard_queue_average_handle_time_seconds",
                "Average talk + hold + wrap-up of the handled calls.",
                qw,
            )?,
            queue_threshold: gauge(
                registry,
                "switchboard_queue_service_level_threshold_seconds",
                "Service-level threshold of the queue.",
                &["queue"],
            )?,
            queue_waiting: gauge(
                registry,
                "switchboard_queue_calls_waiting",
                "Callers waiting now.",
                &["queue"],
            )?,
            queue_longest_wait: gauge(
                registry,
                "switchboard_queue_longest_wait_seconds",
                "Longest current wait (0 when nobody waits).",
                &["queue"],
            )?,
            queue_agents: gauge(
                registry,
                "switchboard_queue_agents",
                "Logged-in agents of the queue by state.",
                &["queue", "state"],
            )?,
            queue_agents_logged_in: gauge(
                registry,
                "switchboard_queue_agents_logged_in",
                "Logged-in agents of the queue.",
                &["queue"],
            )?,
            agent_answered: gauge(
                registry,
                "switchboard_agent_calls_answered",
                "Calls the agent answered in the window.",
                sw,
            )?,
            agent_handled: gauge(
                registry,
                "switchboard_agent_calls_handled",
                "Calls whose wrap-up ended in the window.",
                sw,
            )?,
            agent_talk: gauge(
                registry,
                "switchboard_agent_talk_seconds",
                "Talk time of the calls handled in the window.",
                sw,
            )?,
            agent_handle: gauge(
                registry,
                "switchboard_agent_handle_seconds",
                "Talk + hold + wrap-up of the calls handled in the window.",
                sw,
            )?,
            agent_aht: gauge(
                registry,
                "switchboard_agent_average_handle_time_seconds",
                "Average handle time of the calls handled in the window.",
                sw,
            )?,
            agent_occupancy: gauge(
                registry,
                "switchboard_agent_occupancy_ratio",
                "(Busy + WrapUp) / (Ready + Ringing + Busy + WrapUp) time, 0..1.",
                sw,
            )?,
            agent_state: gauge(
                registry,
                "switchboard_agent_state",
                "1 for the agent's current state, 0 for the others.",
                &["seat", "state"],
            )?,
            agent_state_seconds: gauge(
                registry,
                "switchboard_agent_state_seconds",
                "Time the agent spent in the state in the window.",
                &["seat", "window", "state"],
            )?,
            exported: Mutex::new(Exported::default()),
        })
    }

    /// Sets every gauge from `stats` and the ACD's live view, as seen at `now`. Exports the
    /// queues in `live` or with statistics, and the seats in `agents` or with statistics.
    pub fn export(
        &self,
        stats: &LiveStats,
        live: &[QueueLive],
        agents: &[AgentLive],
        now: DateTime<Utc>,
    ) {
        // One export at a time, so two exports cannot interleave their removals.
        let mut exported = self.exported.lock();
        let queues: BTreeSet<String> = live
            .iter()
            .map(|q| q.queue.clone())
            .chain(stats.queue_names().map(str::to_owned))
            .collect();
        let seats: BTreeSet<String> = agents
            .iter()
            .map(|a| a.seat.clone())
            .chain(stats.seat_names().map(str::to_owned))
            .collect();

        for queue in &queues {
            self.export_queue(stats, queue, live.iter().find(|q| &q.queue == queue), now);
        }
        for seat in &seats {
            let state = agents
                .iter()
                .find(|a| &a.seat == seat)
                .map(|a| a.state)
                .or_else(|| stats.current_state(seat));
            self.export_seat(stats, seat, state, now);
        }

        for gone in exported.queues.difference(&queues) {
            self.remove_queue(gone);
        }
        for gone in exported.seats.difference(&seats) {
            self.remove_seat(gone);
        }
        exported.queues = queues;
        exported.seats = seats;
    }

    fn export_queue(
        &self,
        stats: &LiveStats,
        queue: &str,
        live: Option<&QueueLive>,
        now: DateTime<Utc>,
    ) {
        for window in Window::ALL {
            let f = stats.queue(queue, window, now);
            let l = &[queue, window.label()];
            self.queue_offered
                .with_label_values(l)
                .set(f.offered as f64);
            self.queue_answered
                .with_label_values(l)
                .set(f.answered as f64);
            self.queue_answered_within
                .with_label_values(l)
                .set(f.answered_within_threshold as f64);
            self.queue_abandoned
                .with_label_values(l)
                .set(f.abandoned as f64);
            self.queue_abandoned_within
                .with_label_values(l)
                .set(f.abandoned_within_threshold as f64);
            self.queue_handled
                .with_label_values(l)
                .set(f.handled as f64);
            set_or_remove(
                &self.queue_service_level,
                &[queue, window.label(), SL_ANSWERED],
                f.service_level_percent.map(|p| p / 100.0),
            );
            set_or_remove(
                &self.queue_service_level,
                &[queue, window.label(), SL_ANSWERED_AND_ABANDONED],
                f.service_level_all_percent.map(|p| p / 100.0),
            );
            set_or_remove(
                &self.queue_abandon,
                l,
                f.abandon_rate_percent.map(|p| p / 100.0),
            );
            set_or_remove(
                &self.queue_asa,
                l,
                f.average_speed_of_answer.map(|d| d.as_secs_f64()),
            );
            set_or_remove(
                &self.queue_aht,
                l,
                f.average_handle_time.map(|d| d.as_secs_f64()),
            );
        }
        self.queue_threshold
            .with_label_values(&[queue])
            .set(stats.threshold(queue).as_secs_f64());
        let live = live.cloned().unwrap_or_else(|| QueueLive {
            queue: queue.to_owned(),
            ..QueueLive::default()
        });
        self.queue_waiting
            .with_label_values(&[queue])
            .set(f64::from(live.waiting));
        self.queue_longest_wait
            .with_label_values(&[queue])
            .set(live.longest_wait.as_secs_f64());
        let a = &live.agents_by_state;
        for (state, count) in [
            (AgentState::Ready, a.ready),
            (AgentState::NotReady, a.not_ready),
            (AgentState::Ringing, a.ringing),
            (AgentState::Busy, a.busy),
            (AgentState::WrapUp, a.wrap_up),
        ] {
            self.queue_agents
                .with_label_values(&[queue, state_label(state)])
                .set(f64::from(count));
        }
        self.queue_agents_logged_in
            .with_label_values(&[queue])
            .set(f64::from(a.logged_in));
    }

    fn export_seat(
        &self,
        stats: &LiveStats,
        seat: &str,
        state: Option<AgentState>,
        now: DateTime<Utc>,
    ) {
        for window in Window::ALL {
            let f = stats.agent(seat, window, now);
            let l = &[seat, window.label()];
            self.agent_answered
                .with_label_values(l)
                .set(f.calls_answered as f64);
            self.agent_handled
                .with_label_values(l)
                .set(f.calls_handled as f64);
            self.agent_talk
                .with_label_values(l)
                .set(f.talk_time.as_secs_f64());
            self.agent_handle
                .with_label_values(l)
                .set(f.handle_time.as_secs_f64());
            set_or_remove(
                &self.agent_aht,
                l,
                f.average_handle_time.map(|d| d.as_secs_f64()),
            );
            set_or_remove(
                &self.agent_occupancy,
                l,
                f.occupancy_percent.map(|p| p / 100.0),
            );
            for timed in TIMED_STATES {
                self.agent_state_seconds
                    .with_label_values(&[seat, window.label(), state_label(timed)])
                    .set(f.time_in_state.get(timed).as_secs_f64());
            }
        }
        let current = state.unwrap_or(AgentState::LoggedOut);
        for s in ALL_STATES {
            self.agent_state
                .with_label_values(&[seat, state_label(s)])
                .set(if s == current { 1.0 } else { 0.0 });
        }
    }

    fn remove_queue(&self, queue: &str) {
        for window in Window::ALL {
            let l = &[queue, window.label()];
            for vec in [
                &self.queue_offered,
                &self.queue_answered,
                &self.queue_answered_within,
                &self.queue_abandoned,
                &self.queue_abandoned_within,
                &self.queue_handled,
                &self.queue_abandon,
                &self.queue_asa,
                &self.queue_aht,
            ] {
                remove(vec, l);
            }
            for definition in [SL_ANSWERED, SL_ANSWERED_AND_ABANDONED] {
                remove(
                    &self.queue_service_level,
                    &[queue, window.label(), definition],
                );
            }
        }
        for vec in [
            &self.queue_threshold,
            &self.queue_waiting,
            &self.queue_longest_wait,
            &self.queue_agents_logged_in,
        ] {
            remove(vec, &[queue]);
        }
        for state in TIMED_STATES {
            remove(&self.queue_agents, &[queue, state_label(state)]);
        }
    }

    fn remove_seat(&self, seat: &str) {
        for window in Window::ALL {
            let l = &[seat, window.label()];
            for vec in [
                &self.agent_answered,
                &self.agent_handled,
                &self.agent_talk,
                &self.agent_handle,
                &self.agent_aht,
                &self.agent_occupancy,
            ] {
                remove(vec, l);
            }
            for state in TIMED_STATES {
                remove(
                    &self.agent_state_seconds,
                    &[seat, window.label(), state_label(state)],
                );
            }
        }
        for state in ALL_STATES {
            remove(&self.agent_state, &[seat, state_label(state)]);
        }
    }
}
