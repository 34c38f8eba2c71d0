//! Live queue and agent statistics over rolling windows (pure).
//!
//! [`LiveStats`] takes the ACD's call and agent events, each with its wall-clock time, and
//! answers per queue and per seat over two windows: the last 15 minutes (90 buckets of
//! 10 seconds) and today (running totals that start again at midnight in the call center's
//! time zone). Nothing here reads a clock or does I/O; `docs/statistics.md` defines every
//! figure.

pub mod metrics;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use switchboard_crds::seat::AgentState;

use window::{Daily, Rolling, Tally, local_date, overlap_ms, slot_of, start_of_day, window_start};

pub use metrics::{AgentLive, QueueLive, StatsMetrics};

/// Service-level threshold of a queue nobody configured (the CRDs' default, 80 % in 20 s).
pub const DEFAULT_THRESHOLD: Duration = Duration::from_secs(20);

/// The period a figure covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// The last 15 minutes, in 10-second steps (see [`window::window_start`]).
    Last15Minutes,
    /// Since midnight in the call center's time zone.
    Today,
}

impl Window {
    /// Both windows, in label order.
    pub const ALL: [Window; 2] = [Window::Last15Minutes, Window::Today];

    /// The `window` label value of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Window::Last15Minutes => "15m",
            Window::Today => "today",
        }
    }
}

/// The states an agent spends working time in (LoggedOut is not counted).
pub const TIMED_STATES: [AgentState; 5] = [
    AgentState::Ready,
    AgentState::NotReady,
    AgentState::Ringing,
    AgentState::Busy,
    AgentState::WrapUp,
];

fn state_index(state: AgentState) -> Option<usize> {
    TIMED_STATES.iter().position(|s| *s == state)
}

/// Figures of one queue over one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueFigures {
    /// Calls that entered the queue.
    pub offered: u64,
    /// Of those, calls an agent answered.
    pub answered: u64,
    /// Of the answered calls, those answered after waiting no longer than the threshold.
    pub answered_within_threshold: u64,
    /// Of the offered calls, those that left the queue unanswered (hang-up or timeout).
    pub abandoned: u64,
    /// Of the abandoned calls, those that left after waiting no longer than the threshold
    /// ("short abandons").
    pub abandoned_within_threshold: u64,
    /// Calls whose wrap-up ended in the window.
    pub handled: u64,
    /// Definition 1 (Asterisk `ServicelevelPerf`): answered within threshold ÷ answered,
    /// percent.
    pub service_level_percent: Option<f64>,
    /// Definition 2 (Asterisk `ServicelevelPerf2`): (answered within threshold + abandoned
    /// within threshold) ÷ (answered + abandoned), percent.
    pub service_level_all_percent: Option<f64>,
    /// Abandoned ÷ offered, percent.
    pub abandon_rate_percent: Option<f64>,
    /// Average wait of the answered calls.
    pub average_speed_of_answer: Option<Duration>,
    /// Average talk + hold + wrap-up of the handled calls.
    pub average_handle_time: Option<Duration>,
    /// The threshold in force now.
    pub threshold: Duration,
}

/// Time an agent spent in each state over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateTimes {
    pub ready: Duration,
    pub not_ready: Duration,
    pub ringing: Duration,
    pub busy: Duration,
    pub wrap_up: Duration,
}

impl StateTimes {
    /// Time in `state` (zero for LoggedOut, which is not timed).
    pub fn get(&self, state: AgentState) -> Duration {
        match state {
            AgentState::Ready => self.ready,
            AgentState::NotReady => self.not_ready,
            AgentState::Ringing => self.ringing,
            AgentState::Busy => self.busy,
            AgentState::WrapUp => self.wrap_up,
            AgentState::LoggedOut => Duration::ZERO,
        }
    }
}

/// Figures of one seat over one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentFigures {
    /// Calls the agent answered.
    pub calls_answered: u64,
    /// Calls whose wrap-up ended.
    pub calls_handled: u64,
    /// Talk time of the handled calls.
    pub talk_time: Duration,
    /// Talk + hold + wrap-up of the handled calls.
    pub handle_time: Duration,
    /// Handle time ÷ handled calls.
    pub average_handle_time: Option<Duration>,
    /// (Busy + WrapUp) ÷ (Ready + Ringing + Busy + WrapUp) time, percent.
    pub occupancy_percent: Option<f64>,
    /// Time in each state, the current state included up to `now`.
    pub time_in_state: StateTimes,
}

#[derive(Clone, Debug, Default)]
struct QueueTally {
    offered: u64,
    answered: u64,
    answered_within_threshold: u64,
    abandoned: u64,
    abandoned_within_threshold: u64,
    answer_wait_ms: u64,
    handled: u64,
    handle_ms: u64,
}

impl Tally for QueueTally {
    fn add(&mut self, o: &Self) {
        self.offered = self.offered.saturating_add(o.offered);
        self.answered = self.answered.saturating_add(o.answered);
        self.answered_within_threshold = self
            .answered_within_threshold
            .saturating_add(o.answered_within_threshold);
        self.abandoned = self.abandoned.saturating_add(o.abandoned);
        self.abandoned_within_threshold = self
            .abandoned_within_threshold
            .saturating_add(o.abandoned_within_threshold);
        self.answer_wait_ms = self.answer_wait_ms.saturating_add(o.answer_wait_ms);
        self.handled = self.handled.saturating_add(o.handled);
        self.handle_ms = self.handle_ms.saturating_add(o.handle_ms);
    }
}

#[derive(Clone, Debug, Default)]
struct SeatTally {
    answered: u64,
    handled: u64,
    talk_ms: u64,
    handle_ms: u64,
    state_ms: [u64; 5],
}

impl Tally for SeatTally {
    fn add(&mut self, o: &Self) {
        self.answered = self.answered.saturating_add(o.answered);
        self.handled = self.handled.saturating_add(o.handled);
        self.talk_ms = self.talk_ms.saturating_add(o.talk_ms);
        self.handle_ms = self.handle_ms.saturating_add(o.handle_ms);
        for (mine, theirs) in self.state_ms.iter_mut().zip(o.state_ms) {
            *mine = mine.saturating_add(theirs);
        }
    }
}

#[derive(Debug, Default)]
struct QueueStats {
    window: Rolling<QueueTally>,
    today: Daily<QueueTally>,
}

#[derive(Debug, Default)]
struct SeatStats {
    window: Rolling<SeatTally>,
    today: Daily<SeatTally>,
    /// The current state and since when.
    state: Option<(AgentState, DateTime<Utc>)>,
}

/// The live statistics of one media node.
#[derive(Debug)]
pub struct LiveStats {
    tz: Tz,
    thresholds: HashMap<String, Duration>,
    queues: HashMap<String, QueueStats>,
    seats: HashMap<String, SeatStats>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    // u64 → f64 loses precision only beyond 2^53 calls.
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

fn average(sum_ms: u64, count: u64) -> Option<Duration> {
    (count > 0).then(|| Duration::from_millis(sum_ms / count))
}

/// When a call that waited `waited` until `at` entered the queue; `None` for a wait too long
/// to be real.
fn entered_at(at: DateTime<Utc>, waited: Duration) -> Option<DateTime<Utc>> {
    at.checked_sub_signed(TimeDelta::from_std(waited).ok()?)
}

impl LiveStats {
    /// Statistics whose "today" starts at midnight in `tz` (UTC for a center without
    /// business hours).
    pub fn new(tz: Tz) -> Self {
        Self {
            tz,
            thresholds: HashMap::new(),
            queues: HashMap::new(),
            seats: HashMap::new(),
        }
    }

    /// The call center's time zone.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// Changes the time zone (the center's business hours changed); today's totals keep
    /// the day they began until the next event of a later local date.
    pub fn set_time_zone(&mut self, tz: Tz) {
        self.tz = tz;
    }

    /// The service-level threshold of `queue` (from `Queue.spec.serviceLevel` or the
    /// CallCenter's). Applies to calls answered or abandoned from now on.
    pub fn set_threshold(&mut self, queue: &str, threshold: Duration) {
        self.thresholds.insert(queue.to_owned(), threshold);
    }

    /// The threshold of `queue` ([`DEFAULT_THRESHOLD`] unless set).
    pub fn threshold(&self, queue: &str) -> Duration {
        self.thresholds
            .get(queue)
            .copied()
            .unwrap_or(DEFAULT_THRESHOLD)
    }

    /// Queues with statistics.
    pub fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.queues.keys().map(String::as_str)
    }

    /// Seats with statistics.
    pub fn seat_names(&self) -> impl Iterator<Item = &str> {
        self.seats.keys().map(String::as_str)
    }

    /// Adds to the counters of `queue` for the call that entered the queue at `cohort`.
    fn count_queue(&mut self, queue: &str, cohort: DateTime<Utc>, add: impl Fn(&mut QueueTally)) {
        let day = local_date(self.tz, cohort);
        let stats = self.queues.entry(queue.to_owned()).or_default();
        if let Some(bucket) = stats.window.bucket_mut(slot_of(cohort)) {
            add(bucket);
        }
        if let Some(totals) = stats.today.on_mut(day) {
            add(totals);
        }
    }

    fn count_seat(&mut self, seat: &str, at: DateTime<Utc>, add: impl Fn(&mut SeatTally)) {
        let day = local_date(self.tz, at);
        let stats = self.seats.entry(seat.to_owned()).or_default();
        if let Some(bucket) = stats.window.bucket_mut(slot_of(at)) {
            add(bucket);
        }
        if let Some(totals) = stats.today.on_mut(day) {
            add(totals);
        }
    }

    /// A call entered `queue`.
    pub fn offered(&mut self, queue: &str, at: DateTime<Utc>) {
        self.count_queue(queue, at, |t| t.offered += 1);
    }

    /// `seat` answered a call of `queue` that had waited `waited` (`at` − the instant of
    /// [`offered`](Self::offered)). The call counts in the window and day it entered the
    /// queue, so a window never holds more answers than offers.
    pub fn answered(&mut self, queue: &str, seat: &str, waited: Duration, at: DateTime<Utc>) {
        let within = waited <= self.threshold(queue);
        let wait_ms = millis(waited);
        if let Some(entered) = entered_at(at, waited) {
            self.count_queue(queue, entered, |t| {
                t.answered += 1;
                t.answered_within_threshold += u64::from(within);
                t.answer_wait_ms = t.answer_wait_ms.saturating_add(wait_ms);
            });
        }
        self.count_seat(seat, at, |t| t.answered += 1);
    }

    /// A caller left `queue` unanswered after waiting `waited` (hung up, timed out, or the
    /// queue closed). Counted, like answers, where the call entered the queue.
    pub fn abandoned(&mut self, queue: &str, waited: Duration, at: DateTime<Utc>) {
        let within = waited <= self.threshold(queue);
        if let Some(entered) = entered_at(at, waited) {
            self.count_queue(queue, entered, |t| {
                t.abandoned += 1;
                t.abandoned_within_threshold += u64::from(within);
            });
        }
    }

    /// `seat` finished a call of `queue` (its wrap-up ended at `at`).
    pub fn handled(
        &mut self,
        queue: &str,
        seat: &str,
        talk: Duration,
        hold: Duration,
        wrap_up: Duration,
        at: DateTime<Utc>,
    ) {
        let talk_ms = millis(talk);
        let handle_ms = talk_ms
            .saturating_add(millis(hold))
            .saturating_add(millis(wrap_up));
        self.count_queue(queue, at, |t| {
            t.handled += 1;
            t.handle_ms = t.handle_ms.saturating_add(handle_ms);
        });
        self.count_seat(seat, at, |t| {
            t.handled += 1;
            t.talk_ms = t.talk_ms.saturating_add(talk_ms);
            t.handle_ms = t.handle_ms.saturating_add(handle_ms);
        });
    }

    /// The agent at `seat` entered `state` at `at`; the time in the previous state is
    /// booked into the window buckets and today's totals it spans.
    pub fn agent_state(&mut self, seat: &str, state: AgentState, at: DateTime<Utc>) {
        let tz = self.tz;
        let stats = self.seats.entry(seat.to_owned()).or_default();
        if let Some((previous, since)) = stats.state
            && let Some(index) = state_index(previous)
            && since < at
        {
            stats.window.spread(since, at, |t, ms| {
                t.state_ms[index] = t.state_ms[index].saturating_add(ms)
            });
            let day = local_date(tz, at);
            let ms = overlap_ms(since, at, start_of_day(tz, day), at);
            if let Some(totals) = stats.today.on_mut(day) {
                totals.state_ms[index] = totals.state_ms[index].saturating_add(ms);
            }
        }
        stats.state = Some((state, at));
    }

    /// Forgets a queue the configuration no longer has.
    pub fn forget_queue(&mut self, queue: &str) {
        self.queues.remove(queue);
        self.thresholds.remove(queue);
    }

    /// Forgets a seat the configuration no longer has.
    pub fn forget_seat(&mut self, seat: &str) {
        self.seats.remove(seat);
    }

    /// Figures of `queue` over `window` as seen at `now`.
    pub fn queue(&self, queue: &str, window: Window, now: DateTime<Utc>) -> QueueFigures {
        let tally = self
            .queues
            .get(queue)
            .map(|stats| match window {
                Window::Last15Minutes => stats.window.sum(now),
                Window::Today => stats.today.on(local_date(self.tz, now)),
            })
            .unwrap_or_default();
        QueueFigures {
            offered: tally.offered,
            answered: tally.answered,
            answered_within_threshold: tally.answered_within_threshold,
            abandoned: tally.abandoned,
            abandoned_within_threshold: tally.abandoned_within_threshold,
            handled: tally.handled,
            service_level_percent: percent(tally.answered_within_threshold, tally.answered),
            service_level_all_percent: percent(
                tally
                    .answered_within_threshold
                    .saturating_add(tally.abandoned_within_threshold),
                tally.answered.saturating_add(tally.abandoned),
            ),
            abandon_rate_percent: percent(tally.abandoned, tally.offered),
            average_speed_of_answer: average(tally.answer_wait_ms, tally.answered),
            average_handle_time: average(tally.handle_ms, tally.handled),
            threshold: self.threshold(queue),
        }
    }

    /// Figures of `seat` over `window` as seen at `now`.
    pub fn agent(&self, seat: &str, window: Window, now: DateTime<Utc>) -> AgentFigures {
        let Some(stats) = self.seats.get(seat) else {
            return AgentFigures::default();
        };
        let (mut tally, from) = match window {
            Window::Last15Minutes => (stats.window.sum(now), window_start(now)),
            Window::Today => {
                let day = local_date(self.tz, now);
                (stats.today.on(day), start_of_day(self.tz, day))
            }
        };
        // The current state counts up to `now`.
        if let Some((state, since)) = stats.state
            && let Some(index) = state_index(state)
        {
            tally.state_ms[index] =
                tally.state_ms[index].saturating_add(overlap_ms(since, now, from, now));
        }
        let [ready, not_ready, ringing, busy, wrap_up] = tally.state_ms;
        let working = busy.saturating_add(wrap_up);
        let available = ready.saturating_add(ringing);
        AgentFigures {
            calls_answered: tally.answered,
            calls_handled: tally.handled,
            talk_time: Duration::from_millis(tally.talk_ms),
            handle_time: Duration::from_millis(tally.handle_ms),
            average_handle_time: average(tally.handle_ms, tally.handled),
            occupancy_percent: percent(working, working.saturating_add(available)),
            time_in_state: StateTimes {
                ready: Duration::from_millis(ready),
                not_ready: Duration::from_millis(not_ready),
                ringing: Duration::from_millis(ringing),
                busy: Duration::from_millis(busy),
                wrap_up: Duration::from_millis(wrap_up),
            },
        }
    }

    /// The state the statistics last saw for `seat`.
    pub fn current_state(&self, seat: &str) -> Option<AgentState> {
        self.seats
            .get(seat)
            .and_then(|s| s.state.map(|(state, _)| state))
    }

    /// Buckets held for `queue` (memory bound in tests).
    #[cfg(test)]
    fn queue_buckets(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |s| s.window.len())
    }
}

/// The time zone "today" follows: the center's business-hours zone, UTC without one.
pub fn center_time_zone(business_hours_time_zone: Option<&str>) -> Result<Tz, StatsError> {
    match business_hours_time_zone {
        None => Ok(Tz::UTC),
        Some(name) => name
            .parse::<Tz>()
            .map_err(|_| StatsError::UnknownTimeZone(name.to_owned())),
    }
}

/// Errors of the statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("unknown time zone {0:?} in the call center's business hours")]
    UnknownTimeZone(String),
}
