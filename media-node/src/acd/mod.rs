//! ACD: queues, agents and the routing core (pure: no I/O, the clock is passed in).
//!
//! The call session owns one [`Acd`] (behind a mutex) and drives it:
//! - after any change ([`Acd::enqueue`], [`Acd::set_agent_state`], [`Acd::offer_failed`],
//!   [`Acd::call_ended`], [`Acd::tick`], [`Acd::configure`] ...) it calls [`Acd::next_offers`]
//!   and rings the seats of each [`Offer`];
//! - it calls [`Acd::tick`] at [`Acd::next_wake`] and acts on the [`QueueEvent`]s.
//!
//! Routing is incremental: only queues where something changed (a caller arrived, moved or
//! was relaxed, an agent became Ready) are looked at, through per-queue indexes of waiting
//! callers and Ready agents. After `next_offers` no waiting caller (not already being
//! offered) and Ready agent of its queue that match are both left idle.
//!
//! Rules, in short (details on each method):
//! - Callers are served in this order across all queues that share the free agents: queue
//!   `priority` (higher first), the caller's `priority_boost` (higher first), then the
//!   original enqueue time (a caller moved by overflow keeps it).
//! - Among matching Ready agents, lower tiers come first for every strategy (ring-all rings
//!   only the best tier that has a matching Ready agent; linear is top-down by tier anyway);
//!   within the tier the strategy decides: longest-idle (longest in Ready), round-robin (the
//!   next member after the last one offered a call of the queue, in membership order, wrapping
//!   around), fewest-calls and least-talk-time (answered calls / talk time in this queue since
//!   [`Acd::reset_daily_counters`], ties to the longest idle), random (seeded), linear
//!   (membership order, always from the top), skill-weighted (highest sum of proficiencies in
//!   the queue's required skills, ties to the longest idle).
//! - An agent matches a caller when for every required skill its proficiency is at least
//!   the requirement, lowered to the caller's relaxed minimum after a `RelaxSkills` step (no
//!   requirement at all when the step has no `minProficiency`).
//! - Sticky agent: a caller whose number was served in this queue by an agent within
//!   `stickyAgentMinutes` (counted from the end of that call) is offered first to that agent
//!   if it is Ready and matches.

mod route;
mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use switchboard_crds::QueueSpec;
use switchboard_crds::queue::{AgentCounts, NoAgentsAction, OverflowAction, SkillRequirement};
use switchboard_crds::seat::AgentState;
use switchboard_crds::validate::NO_ANSWER_REASON;

pub use types::{
    AgentConfig, AgentError, AgentRequest, AgentStatus, CallKey, CallerInfo, DEFAULT_HANDLE_TIME,
    Offer, OfferFailure, QueueEvent, QueueSnapshot, Refusal, UNREACHABLE_REASON,
};

/// Index of an agent in [`Acd::agents`] (rebuilt by `configure`).
type AgentIdx = u32;
/// Index of a queue in [`Acd::queues`] (rebuilt by `configure`).
type QueueIdx = u32;

/// The caller's skill minimum before any `RelaxSkills` step: the queue's own requirement.
const BASE_SKILL_MIN: u8 = u8::MAX;
/// Bound on overflow steps taken in one go (guards against `after_seconds: 0` loops).
const MAX_STEPS_AT_ONCE: usize = 64;

/// Order of a queue's Ready agents: tier first, then the strategy's keys, then membership
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ReadyKey {
    tier: u8,
    k1: u64,
    k2: u64,
    pos: u32,
}

/// Order of a queue's callers: priority boost (higher first), original enqueue time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct WaitKey {
    boost: Reverse<u32>,
    since: Instant,
    seq: u64,
    call: CallKey,
}

/// A pending deadline for [`Acd::tick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    WrapUp(AgentIdx),
    Ring(CallKey),
    Caller(CallKey),
}

/// One queue membership of an agent.
#[derive(Clone, Debug)]
struct Membership {
    queue: QueueIdx,
    tier: u8,
    /// Position in the queue's membership order.
    pos: u32,
    /// Sum of proficiencies in the queue's required skills (skill-weighted).
    score: u32,
    /// Calls answered from this queue (fewest-calls).
    calls: u32,
    /// Talk time of this queue's calls (least-talk-time).
    talk: Duration,
    /// The key in the queue's Ready index while the agent is Ready.
    key: ReadyKey,
}

/// The queue call an agent is on, for wrap-up, statistics and the sticky agent.
#[derive(Clone, Debug)]
struct CurrentCall {
    queue: String,
    wrap_up_seconds: u32,
    number: String,
}

#[derive(Clone, Debug)]
struct Agent {
    config: AgentConfig,
    status: AgentStatus,
    /// A Logout or NotReady asked for while Ringing/Busy (a Ready request clears it).
    pending: Option<AgentRequest>,
    memberships: Vec<Membership>,
    /// The caller this agent's phone rings for.
    ringing: Option<CallKey>,
    current: Option<CurrentCall>,
    wrap_up_until: Option<Instant>,
    /// Order of becoming Ready (longest-idle: lower is idle longer).
    ready_seq: u64,
    /// Calls the seat's phone is on that no queue offered (seat to seat, outbound, direct
    /// calls): while there are any the agent is Busy instead of Ready, so no queue call is
    /// offered to a phone in use.
    direct_calls: u32,
    /// Listed in [`Acd::changed`] since the last [`Acd::take_changed_agents`].
    changed: bool,
}

/// A member of a queue, in membership order.
#[derive(Clone, Copy, Debug)]
struct Member {
    agent: AgentIdx,
    ceiling: u8,
}

#[derive(Clone, Debug)]
struct Queue {
    name: String,
    spec: QueueSpec,
    members: Vec<Member>,
    waiting: BTreeSet<WaitKey>,
    ready: BTreeSet<ReadyKey>,
    /// Members by state (index: [`state_slot`]).
    counts: [u32; 6],
    /// Membership position of the last agent offered a call (round-robin).
    rr_last: Option<u32>,
    /// Caller number -> (seat, end of that call) for the sticky agent.
    sticky: HashMap<String, (String, Instant)>,
    sticky_prune_at: usize,
    /// Moving average of handle time (talk and wrap-up).
    aht: Option<Duration>,
    dirty: bool,
}

#[derive(Clone, Debug)]
struct Caller {
    key: WaitKey,
    queue: QueueIdx,
    number: String,
    /// Start of the overflow and max-wait clock in the current queue (reset by a move).
    clock_start: Instant,
    /// Next overflow step of the current queue.
    step: usize,
    /// Skill minimum after `RelaxSkills` steps ([`BASE_SKILL_MIN`]: the queue's own).
    skill_min: u8,
    /// Seats ringing for this caller now.
    ringing: Vec<AgentIdx>,
    /// Seats that declined this caller.
    declined: Vec<AgentIdx>,
    deadline: Option<Instant>,
    ring_deadline: Option<Instant>,
}

/// The automatic call distributor of one node: agents, queues, waiting callers and the
/// routing decision. Pure: time comes in as `now`, randomness from the seeded RNG.
#[derive(Debug)]
pub struct Acd {
    rng: StdRng,
    agents: Vec<Agent>,
    agent_index: HashMap<String, AgentIdx>,
    queues: Vec<Queue>,
    queue_index: HashMap<String, QueueIdx>,
    callers: HashMap<CallKey, Caller>,
    timers: BTreeSet<(Instant, Timer)>,
    /// Queues to look at in the next `next_offers`.
    dirty: Vec<QueueIdx>,
    /// Agents whose status changed, for batched Seat status updates.
    changed: Vec<AgentIdx>,
    seq: u64,
    ready_seq: u64,
}

fn state_slot(state: AgentState) -> usize {
    match state {
        AgentState::LoggedOut => 0,
        AgentState::Ready => 1,
        AgentState::NotReady => 2,
        AgentState::Ringing => 3,
        AgentState::Busy => 4,
        AgentState::WrapUp => 5,
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

fn ix(i: u32) -> usize {
    i as usize
}

fn to_idx(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// How an agent's skills fit a queue's requirements: `(ceiling, score)`.
///
/// The agent matches a caller whose skill minimum is `m` (`u8::MAX`: the requirement as
/// written; lower after `RelaxSkills`; 0: none) iff `ceiling >= m`: for each required skill
/// the proficiency `p` must be at least `min(required, m)`, which holds for every `m` when
/// `p >= required` and for `m <= p` otherwise.
fn skill_fit(
    required: &[SkillRequirement],
    skills: &std::collections::BTreeMap<String, u8>,
) -> (u8, u32) {
    let mut ceiling = u8::MAX;
    let mut score = 0u32;
    for r in required {
        let p = skills.get(&r.name).copied().unwrap_or(0);
        score += u32::from(p);
        if p < r.min_proficiency {
            ceiling = ceiling.min(p);
        }
    }
    (ceiling, score)
}

fn ready_key(strategy: switchboard_crds::queue::Strategy, m: &Membership, seq: u64) -> ReadyKey {
    use switchboard_crds::queue::Strategy as S;
    let (k1, k2) = match strategy {
        S::RingAll | S::Random | S::Linear | S::RoundRobin => (0, 0),
        S::LongestIdle => (seq, 0),
        S::FewestCalls => (u64::from(m.calls), seq),
        S::LeastTalkTime => (u64::try_from(m.talk.as_millis()).unwrap_or(u64::MAX), seq),
        S::SkillWeighted => (u64::MAX - u64::from(m.score), seq),
    };
    ReadyKey {
        tier: m.tier,
        k1,
        k2,
        pos: m.pos,
    }
}

impl Queue {
    fn new(name: &str, spec: QueueSpec) -> Self {
        Self {
            name: name.to_string(),
            spec,
            members: Vec::new(),
            waiting: BTreeSet::new(),
            ready: BTreeSet::new(),
            counts: [0; 6],
            rr_last: None,
            sticky: HashMap::new(),
            sticky_prune_at: 256,
            aht: None,
            dirty: false,
        }
    }

    fn logged_in(&self) -> u32 {
        self.counts.iter().skip(1).sum()
    }
}

impl Acd {
    /// An empty ACD whose random strategy draws from an RNG seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            agents: Vec::new(),
            agent_index: HashMap::new(),
            queues: Vec::new(),
            queue_index: HashMap::new(),
            callers: HashMap::new(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            changed: Vec::new(),
            seq: 0,
            ready_seq: 0,
        }
    }

    /// Sets the queues and seats (live reconfiguration).
    ///
    /// Seats that stay keep their state, pending request, counters and current call; queues
    /// that stay keep their callers (in order, with their wait and overflow progress), the
    /// round-robin position, sticky-agent memory and handle-time average. New seats start
    /// LoggedOut. The order of `agents` is each queue's membership order. Duplicate names
    /// are ignored after the first.
    ///
    /// Returns the callers whose queue disappeared: they left the ACD and the session must
    /// handle them (and cancel any seat still ringing for them; such seats are Ready again).
    /// A seat that disappears while ringing is simply forgotten (its caller is routed again).
    pub fn configure(
        &mut self,
        queues: &[(String, QueueSpec)],
        agents: &[AgentConfig],
        now: Instant,
    ) -> Vec<CallKey> {
        let mut old_queues = std::mem::take(&mut self.queues);
        let old_agents = std::mem::take(&mut self.agents);
        let old_callers = std::mem::take(&mut self.callers);
        self.queue_index.clear();
        self.agent_index.clear();
        self.timers.clear();
        self.dirty.clear();
        self.changed.clear();

        let old_queue_by_name: HashMap<String, usize> = old_queues
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.clone(), i))
            .collect();
        for (name, spec) in queues {
            if self.queue_index.contains_key(name) {
                tracing::warn!(queue = %name, "duplicate queue ignored by the ACD");
                continue;
            }
            let mut q = Queue::new(name, spec.clone());
            if let Some(&old) = old_queue_by_name.get(name) {
                q.sticky = std::mem::take(&mut old_queues[old].sticky);
                q.sticky_prune_at = old_queues[old].sticky_prune_at;
                q.aht = old_queues[old].aht;
            }
            self.queue_index
                .insert(name.clone(), to_idx(self.queues.len()));
            self.queues.push(q);
        }

        let old_agent_by_name: HashMap<&str, usize> = old_agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.config.seat.as_str(), i))
            .collect();
        for cfg in agents {
            if self.agent_index.contains_key(&cfg.seat) {
                tracing::warn!(seat = %cfg.seat, "duplicate seat ignored by the ACD");
                continue;
            }
            let idx = to_idx(self.agents.len());
            let old = old_agent_by_name
                .get(cfg.seat.as_str())
                .map(|&i| &old_agents[i]);
            let mut agent = match old {
                Some(o) => Agent {
                    config: cfg.clone(),
                    status: o.status.clone(),
                    pending: o.pending.clone(),
                    memberships: Vec::new(),
                    ringing: o.ringing,
                    current: o.current.clone(),
                    wrap_up_until: o.wrap_up_until,
                    ready_seq: o.ready_seq,
                    direct_calls: o.direct_calls,
                    changed: false,
                },
                None => Agent {
                    config: cfg.clone(),
                    status: AgentStatus {
                        state: AgentState::LoggedOut,
                        reason: None,
                        since: now,
                        calls_today: 0,
                        talk_time_today: Duration::ZERO,
                    },
                    pending: None,
                    memberships: Vec::new(),
                    ringing: None,
                    current: None,
                    wrap_up_until: None,
                    ready_seq: 0,
                    direct_calls: 0,
                    changed: false,
                },
            };
            for (qname, tier) in &cfg.queues {
                let Some(&q) = self.queue_index.get(qname) else {
                    continue;
                };
                if agent.memberships.iter().any(|m| m.queue == q) {
                    continue;
                }
                let queue = &mut self.queues[ix(q)];
                let (ceiling, score) = skill_fit(&queue.spec.required_skills, &cfg.skills);
                let (calls, talk) = old
                    .and_then(|o| {
                        o.memberships
                            .iter()
                            .find(|m| old_queues[ix(m.queue)].name == *qname)
                    })
                    .map_or((0, Duration::ZERO), |m| (m.calls, m.talk));
                let pos = to_idx(queue.members.len());
                queue.members.push(Member {
                    agent: idx,
                    ceiling,
                });
                agent.memberships.push(Membership {
                    queue: q,
                    tier: *tier,
                    pos,
                    score,
                    calls,
                    talk,
                    key: ReadyKey {
                        tier: *tier,
                        k1: 0,
                        k2: 0,
                        pos,
                    },
                });
            }
            self.agent_index.insert(cfg.seat.clone(), idx);
            self.agents.push(agent);
        }

        // Round-robin continues after the same seat, if it is still a member.
        for (qi, q) in self.queues.iter_mut().enumerate() {
            let Some(&old) = old_queue_by_name.get(&q.name) else {
                continue;
            };
            let old_q = &old_queues[old];
            q.rr_last = old_q.rr_last.and_then(|p| {
                let seat = &old_agents[ix(old_q.members.get(ix(p))?.agent)].config.seat;
                let a = *self.agent_index.get(seat)?;
                self.agents[ix(a)]
                    .memberships
                    .iter()
                    .find(|m| ix(m.queue) == qi)
                    .map(|m| m.pos)
            });
        }

        let remap = |list: &[AgentIdx]| -> Vec<AgentIdx> {
            list.iter()
                .filter_map(|&o| {
                    self.agent_index
                        .get(&old_agents[ix(o)].config.seat)
                        .copied()
                })
                .collect()
        };
        let mut removed = Vec::new();
        let mut kept = HashMap::with_capacity(old_callers.len());
        for (call, mut c) in old_callers {
            let qname = &old_queues[ix(c.queue)].name;
            c.ringing = remap(&c.ringing);
            c.declined = remap(&c.declined);
            match self.queue_index.get(qname) {
                Some(&q) => {
                    c.queue = q;
                    c.step = c.step.min(self.queues[ix(q)].spec.overflow.len());
                    c.deadline = None;
                    if c.ringing.is_empty() {
                        c.ring_deadline = None;
                    }
                    kept.insert(call, c);
                }
                None => removed.push(call),
            }
        }
        self.callers = kept;

        // Settle agents whose ringing call is gone or no longer rings them.
        for (i, agent) in self.agents.iter_mut().enumerate() {
            let still_rings = agent.ringing.is_some_and(|call| {
                self.callers
                    .get(&call)
                    .is_some_and(|c| c.ringing.contains(&to_idx(i)))
            });
            if agent.status.state == AgentState::Ringing && !still_rings {
                agent.ringing = None;
                let (state, reason) = settled(&mut agent.pending);
                agent.status.state = state;
                agent.status.reason = reason;
                agent.status.since = now;
                self.ready_seq += 1;
                agent.ready_seq = self.ready_seq;
            } else if agent.status.state != AgentState::Ringing {
                agent.ringing = None;
            }
        }

        // Rebuild the indexes and timers.
        for ai in 0..self.agents.len() {
            let agent = &mut self.agents[ai];
            let slot = state_slot(agent.status.state);
            for m in &mut agent.memberships {
                let q = &mut self.queues[ix(m.queue)];
                q.counts[slot] += 1;
                if agent.status.state == AgentState::Ready {
                    m.key = ready_key(q.spec.strategy, m, agent.ready_seq);
                    q.ready.insert(m.key);
                }
            }
            if agent.status.state == AgentState::WrapUp {
                let until = agent.wrap_up_until.unwrap_or(now);
                agent.wrap_up_until = Some(until);
                self.timers.insert((until, Timer::WrapUp(to_idx(ai))));
            } else {
                agent.wrap_up_until = None;
            }
        }
        let calls: Vec<CallKey> = self.callers.keys().copied().collect();
        for call in calls {
            let Some(c) = self.callers.get(&call) else {
                continue;
            };
            self.queues[ix(c.queue)].waiting.insert(c.key);
            if let Some(at) = c.ring_deadline {
                self.timers.insert((at, Timer::Ring(call)));
            }
            self.arm_caller(call);
        }
        for q in 0..self.queues.len() {
            self.mark_dirty(to_idx(q));
        }
        // Every seat is reported once after a reconfiguration.
        for (i, agent) in self.agents.iter_mut().enumerate() {
            agent.changed = true;
            self.changed.push(to_idx(i));
        }
        removed.sort_unstable();
        removed
    }

    /// The state of a seat, if configured.
    pub fn agent(&self, seat: &str) -> Option<&AgentStatus> {
        let a = *self.agent_index.get(seat)?;
        Some(&self.agents[ix(a)].status)
    }

    /// When the seat's wrap-up ends, while it is in WrapUp.
    pub fn wrap_up_until(&self, seat: &str) -> Option<Instant> {
        let a = *self.agent_index.get(seat)?;
        self.agents[ix(a)].wrap_up_until
    }

    /// All configured seats and their states, in configuration order.
    pub fn agents(&self) -> impl Iterator<Item = (&str, &AgentStatus)> {
        self.agents
            .iter()
            .map(|a| (a.config.seat.as_str(), &a.status))
    }

    /// Applies an agent's request and returns the resulting state.
    ///
    /// - LoggedOut: `Login` makes the agent Ready; `Logout` does nothing; `Ready` and
    ///   `NotReady` are refused ([`AgentError::NotLoggedIn`]).
    /// - Ready/NotReady: applied at once (`Login` counts as `Ready`; a new NotReady reason
    ///   replaces the old one).
    /// - Ringing/Busy: remembered and applied when the call ends: `Logout` logs out at the
    ///   end of the call (no wrap-up), `NotReady` takes effect after the wrap-up instead of
    ///   Ready, `Ready`/`Login` cancel a remembered request. If the ringing offer fails the
    ///   remembered request applies at once.
    /// - WrapUp: applied at once, ending the after-call work early (`Ready` is how an agent
    ///   finishes wrap-up before the timer).
    pub fn set_agent_state(
        &mut self,
        seat: &str,
        request: AgentRequest,
        now: Instant,
    ) -> Result<AgentStatus, AgentError> {
        let a = *self
            .agent_index
            .get(seat)
            .ok_or_else(|| AgentError::UnknownSeat(seat.to_string()))?;
        let state = self.agents[ix(a)].status.state;
        match (state, request) {
            (AgentState::LoggedOut, AgentRequest::Login) => {
                self.set_state(a, AgentState::Ready, None, now);
            }
            (AgentState::LoggedOut, AgentRequest::Logout) => {}
            (AgentState::LoggedOut, AgentRequest::Ready | AgentRequest::NotReady(_)) => {
                return Err(AgentError::NotLoggedIn(seat.to_string()));
            }
            (AgentState::Ringing | AgentState::Busy, AgentRequest::Login | AgentRequest::Ready) => {
                self.agents[ix(a)].pending = None;
            }
            (AgentState::Ringing | AgentState::Busy, request) => {
                self.agents[ix(a)].pending = Some(request);
            }
            (AgentState::Ready, AgentRequest::Login | AgentRequest::Ready) => {}
            (_, AgentRequest::Login | AgentRequest::Ready) => {
                self.set_state(a, AgentState::Ready, None, now);
            }
            (_, AgentRequest::NotReady(reason)) => {
                self.set_state(a, AgentState::NotReady, Some(reason), now);
            }
            (_, AgentRequest::Logout) => {
                self.set_state(a, AgentState::LoggedOut, None, now);
            }
        }
        Ok(self.agents[ix(a)].status.clone())
    }

    /// The seats whose status changed since the last call (every seat after
    /// [`Acd::configure`]), for batched Seat status updates; each seat once.
    pub fn take_changed_agents(&mut self) -> Vec<String> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|a| {
                let agent = &mut self.agents[ix(a)];
                agent.changed = false;
                agent.config.seat.clone()
            })
            .collect()
    }

    /// A seat's registration expired: it is logged out like a `Logout` request (at once, or
    /// at the end of the call it is on). Unknown seats are ignored.
    pub fn registration_lost(&mut self, seat: &str, now: Instant) {
        if let Err(err) = self.set_agent_state(seat, AgentRequest::Logout, now) {
            tracing::debug!(%err, "registration lost for a seat the ACD does not know");
        }
    }

    /// Clears the "today" counters (calls and talk time per seat and per queue membership)
    /// that fewest-calls and least-talk-time use; the session calls it at midnight.
    pub fn reset_daily_counters(&mut self) {
        let Self { agents, queues, .. } = self;
        for agent in agents.iter_mut() {
            agent.status.calls_today = 0;
            agent.status.talk_time_today = Duration::ZERO;
            let ready = agent.status.state == AgentState::Ready;
            for m in &mut agent.memberships {
                m.calls = 0;
                m.talk = Duration::ZERO;
                if ready {
                    let q = &mut queues[ix(m.queue)];
                    q.ready.remove(&m.key);
                    m.key = ready_key(q.spec.strategy, m, agent.ready_seq);
                    q.ready.insert(m.key);
                }
            }
        }
    }

    /// Queues a caller and returns their 1-based position.
    ///
    /// Refused when the queue is unknown, the key is already queued, no member agent is
    /// logged in (any state but LoggedOut counts) and `whenNoAgents` is `Reject` or
    /// `Voicemail` (`Wait` accepts), or `maxLength` callers are waiting.
    pub fn enqueue(
        &mut self,
        call: CallKey,
        queue: &str,
        caller: CallerInfo,
        now: Instant,
    ) -> Result<usize, Refusal> {
        let q = *self
            .queue_index
            .get(queue)
            .ok_or_else(|| Refusal::UnknownQueue(queue.to_string()))?;
        if self.callers.contains_key(&call) {
            return Err(Refusal::AlreadyQueued(call));
        }
        let qu = &self.queues[ix(q)];
        if qu.logged_in() == 0 && qu.spec.when_no_agents != NoAgentsAction::Wait {
            return Err(Refusal::NoAgentsLoggedIn(qu.spec.when_no_agents));
        }
        if qu.waiting.len() >= qu.spec.max_length as usize {
            return Err(Refusal::Full(queue.to_string()));
        }
        self.seq += 1;
        let key = WaitKey {
            boost: Reverse(caller.priority_boost),
            since: now,
            seq: self.seq,
            call,
        };
        self.queues[ix(q)].waiting.insert(key);
        self.callers.insert(
            call,
            Caller {
                key,
                queue: q,
                number: caller.number,
                clock_start: now,
                step: 0,
                skill_min: BASE_SKILL_MIN,
                ringing: Vec::new(),
                declined: Vec::new(),
                deadline: None,
                ring_deadline: None,
            },
        );
        self.arm_caller(call);
        self.mark_dirty(q);
        Ok(self.queues[ix(q)].waiting.range(..key).count() + 1)
    }

    /// The caller hung up (waiting, or while seats ring for them): they leave the queue.
    /// Returns the seats whose ringing must stop; they are Ready again (no penalty) or take
    /// their remembered request.
    pub fn abandon(&mut self, call: CallKey, now: Instant) -> Vec<String> {
        let Some(c) = self.remove_caller(call) else {
            return Vec::new();
        };
        let mut seats = Vec::with_capacity(c.ringing.len());
        for a in c.ringing {
            self.agents[ix(a)].ringing = None;
            self.settle(a, now);
            seats.push(self.agents[ix(a)].config.seat.clone());
        }
        seats
    }

    /// Whether `seat` is ringing for `call` now (an answer would be taken).
    pub fn is_ringing_for(&self, seat: &str, call: CallKey) -> bool {
        self.agent_index
            .get(seat)
            .is_some_and(|&a| self.agents[ix(a)].ringing == Some(call))
            && self.callers.contains_key(&call)
    }

    /// `seat` answered `call`: the agent is Busy, the caller leaves the queue. Returns the
    /// other seats still ringing for the caller (ring-all), which must be cancelled; they
    /// are Ready again. Ignored (empty) when the seat was not ringing for that caller.
    pub fn offer_answered(&mut self, call: CallKey, seat: &str, now: Instant) -> Vec<String> {
        let Some(&a) = self.agent_index.get(seat) else {
            return Vec::new();
        };
        if self.agents[ix(a)].ringing != Some(call) || !self.callers.contains_key(&call) {
            return Vec::new();
        }
        let Some(c) = self.remove_caller(call) else {
            return Vec::new();
        };
        let mut others = Vec::new();
        for &o in &c.ringing {
            if o != a {
                self.agents[ix(o)].ringing = None;
                self.settle(o, now);
                others.push(self.agents[ix(o)].config.seat.clone());
            }
        }
        let queue = &self.queues[ix(c.queue)];
        let current = CurrentCall {
            queue: queue.name.clone(),
            wrap_up_seconds: queue.spec.wrap_up_seconds,
            number: c.number,
        };
        let agent = &mut self.agents[ix(a)];
        agent.ringing = None;
        agent.current = Some(current);
        agent.status.calls_today += 1;
        if let Some(m) = agent.memberships.iter_mut().find(|m| m.queue == c.queue) {
            m.calls += 1;
        }
        self.set_state(a, AgentState::Busy, None, now);
        others
    }

    /// An offered seat did not take the call; the caller keeps their place and goes to the
    /// next agent. `NoAnswer` makes the agent NotReady(`no-answer`), `Unreachable`
    /// NotReady(`unreachable`) (a remembered request takes precedence over both);
    /// `Declined` leaves the agent Ready but never offered this caller again. Ignored when
    /// the seat was not ringing for that caller (e.g. already timed out in [`Acd::tick`]).
    pub fn offer_failed(&mut self, call: CallKey, seat: &str, failure: OfferFailure, now: Instant) {
        let Some(&a) = self.agent_index.get(seat) else {
            return;
        };
        if self.agents[ix(a)].ringing != Some(call) {
            return;
        }
        let Some(c) = self.callers.get_mut(&call) else {
            return;
        };
        c.ringing.retain(|&o| o != a);
        if failure == OfferFailure::Declined && !c.declined.contains(&a) {
            c.declined.push(a);
        }
        let ring_over = c.ringing.is_empty();
        self.agents[ix(a)].ringing = None;
        self.fail_agent(a, failure, now);
        if ring_over {
            self.ring_over(call);
        }
    }

    /// The seat's queue call ended after `talk`: the agent goes to WrapUp for the seat's
    /// `wrapUpSeconds`, else the call's queue's (0: at once Ready, or the remembered
    /// NotReady); a remembered Logout logs out now. Ignored unless the agent is Busy.
    pub fn call_ended(&mut self, seat: &str, talk: Duration, now: Instant) {
        let Some(&a) = self.agent_index.get(seat) else {
            return;
        };
        let agent = &mut self.agents[ix(a)];
        if agent.status.state != AgentState::Busy || agent.current.is_none() {
            // Not on a queue call (a direct call's end is `direct_call_ended`).
            return;
        }
        let current = agent.current.take();
        agent.status.talk_time_today += talk;
        let wrap = agent
            .config
            .wrap_up_seconds
            .or(current.as_ref().map(|c| c.wrap_up_seconds))
            .unwrap_or(0);
        if let Some(cur) = current
            && let Some(&q) = self.queue_index.get(&cur.queue)
        {
            if let Some(m) = agent.memberships.iter_mut().find(|m| m.queue == q) {
                m.talk += talk;
            }
            let queue = &mut self.queues[ix(q)];
            let handle = talk + secs(wrap);
            queue.aht = Some(match queue.aht {
                // A moving average over roughly the last eight calls.
                Some(avg) => (avg * 7 + handle) / 8,
                None => handle,
            });
            let sticky = secs(queue.spec.sticky_agent_minutes.saturating_mul(60));
            if !sticky.is_zero() && !cur.number.is_empty() {
                queue
                    .sticky
                    .insert(cur.number, (agent.config.seat.clone(), now));
                if queue.sticky.len() > queue.sticky_prune_at {
                    queue
                        .sticky
                        .retain(|_, (_, at)| now.saturating_duration_since(*at) <= sticky);
                    queue.sticky_prune_at = (queue.sticky.len() * 2).max(256);
                }
            }
        }
        if agent.pending == Some(AgentRequest::Logout) {
            agent.pending = None;
            self.set_state(a, AgentState::LoggedOut, None, now);
        } else if wrap == 0 {
            self.settle(a, now);
        } else {
            self.set_state(a, AgentState::WrapUp, None, now);
            let until = now + secs(wrap);
            self.agents[ix(a)].wrap_up_until = Some(until);
            self.timers.insert((until, Timer::WrapUp(a)));
        }
    }

    /// Takes over an agent's state from the previous active node (hot standby): LoggedOut,
    /// Ready, NotReady (with its reason) and WrapUp (until `wrap_up_until`) as they were,
    /// since `since`; Ringing and Busy become Ready, since the offer or call they were on
    /// belonged to the other node (a call taken over makes its agent Busy again). Restore
    /// Ready agents in the order they became Ready, so longest-idle keeps its order. Unknown
    /// seats are ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn restore_agent(
        &mut self,
        seat: &str,
        state: AgentState,
        reason: Option<String>,
        since: Instant,
        wrap_up_until: Option<Instant>,
        today: (u32, Duration),
        now: Instant,
    ) {
        let Some(&a) = self.agent_index.get(seat) else {
            return;
        };
        let (state, reason) = match state {
            AgentState::Ringing | AgentState::Busy => (AgentState::Ready, None),
            AgentState::WrapUp if wrap_up_until.is_none_or(|until| until <= now) => {
                (AgentState::Ready, None)
            }
            AgentState::NotReady => (AgentState::NotReady, reason),
            other => (other, None),
        };
        self.agents[ix(a)].pending = None;
        self.set_state(a, state, reason, now);
        let agent = &mut self.agents[ix(a)];
        agent.status.since = since.min(now);
        agent.status.calls_today = today.0;
        agent.status.talk_time_today = today.1;
        if state == AgentState::WrapUp
            && let Some(until) = wrap_up_until
        {
            agent.wrap_up_until = Some(until);
            self.timers.insert((until, Timer::WrapUp(a)));
        }
    }

    /// Takes over a queue call the agent at `seat` is on (hot standby, after
    /// [`Acd::restore_agent`]): Busy on it as after [`Acd::offer_answered`] (the call is
    /// already in today's count), so its end brings wrap-up. Unknown seats and queues are
    /// ignored.
    pub fn resume_queue_call(&mut self, seat: &str, queue: &str, number: &str, now: Instant) {
        let (Some(&a), Some(&q)) = (self.agent_index.get(seat), self.queue_index.get(queue)) else {
            return;
        };
        let queue = &self.queues[ix(q)];
        let current = CurrentCall {
            queue: queue.name.clone(),
            wrap_up_seconds: queue.spec.wrap_up_seconds,
            number: number.to_string(),
        };
        let agent = &mut self.agents[ix(a)];
        agent.ringing = None;
        agent.pending = None;
        agent.current = Some(current);
        self.set_state(a, AgentState::Busy, None, now);
    }

    /// The seat's phone began a call no queue offered (seat to seat, outbound, a direct
    /// call): a Ready agent becomes Busy until [`Acd::direct_call_ended`]; in any other state
    /// the call only keeps the agent from becoming Ready until it ends. Unknown seats are
    /// ignored.
    pub fn direct_call_started(&mut self, seat: &str, now: Instant) {
        let Some(&a) = self.agent_index.get(seat) else {
            return;
        };
        let agent = &mut self.agents[ix(a)];
        agent.direct_calls = agent.direct_calls.saturating_add(1);
        if agent.status.state == AgentState::Ready {
            self.set_state(a, AgentState::Busy, None, now);
        }
    }

    /// A call of [`Acd::direct_call_started`] ended: after the last one an agent that is Busy
    /// only because of them is Ready again (or takes its remembered request) without
    /// wrap-up, which is for queue calls.
    pub fn direct_call_ended(&mut self, seat: &str, now: Instant) {
        let Some(&a) = self.agent_index.get(seat) else {
            return;
        };
        let agent = &mut self.agents[ix(a)];
        agent.direct_calls = agent.direct_calls.saturating_sub(1);
        if agent.direct_calls == 0
            && agent.status.state == AgentState::Busy
            && agent.current.is_none()
        {
            self.settle(a, now);
        }
    }

    /// Does what is due at `now`: ends wrap-ups, times out ringing offers (the agents become
    /// NotReady(`no-answer`)), applies overflow steps in the order the queue lists them as
    /// the caller's wait in the queue grows, and the max wait. Call [`Acd::next_offers`]
    /// afterwards.
    ///
    /// Overflow and max wait of a caller are deferred while seats ring for them (the ring
    /// timeout bounds the delay). `RelaxSkills` lowers the caller's skill minimum; `Queue`
    /// moves the caller to the target queue (skipped when unknown or full), where they keep
    /// their original enqueue time for ordering but the target's overflow steps and max wait
    /// count from the move; `Voicemail` sends the caller to voicemail. At `maxWaitSeconds`
    /// the queue's last step is taken if it is a `Queue` or `Voicemail` step not taken yet,
    /// otherwise the caller leaves with [`QueueEvent::MaxWaitReached`].
    pub fn tick(&mut self, now: Instant) -> Vec<QueueEvent> {
        let mut events = Vec::new();
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::WrapUp(a) => {
                    let agent = &mut self.agents[ix(a)];
                    agent.wrap_up_until = None;
                    if agent.status.state == AgentState::WrapUp {
                        self.settle(a, now);
                        events.push(QueueEvent::WrapUpEnded {
                            seat: self.agents[ix(a)].config.seat.clone(),
                        });
                    }
                }
                Timer::Ring(call) => {
                    let Some(c) = self.callers.get_mut(&call) else {
                        continue;
                    };
                    c.ring_deadline = None;
                    let ringing = std::mem::take(&mut c.ringing);
                    for a in ringing {
                        self.agents[ix(a)].ringing = None;
                        self.fail_agent(a, OfferFailure::NoAnswer, now);
                        events.push(QueueEvent::RingNoAnswer {
                            call,
                            seat: self.agents[ix(a)].config.seat.clone(),
                        });
                    }
                    self.ring_over(call);
                }
                Timer::Caller(call) => {
                    if let Some(c) = self.callers.get_mut(&call) {
                        c.deadline = None;
                        self.run_overflow(call, now, &mut events);
                    }
                }
            }
        }
        events
    }

    /// The earliest time [`Acd::tick`] has something to do.
    pub fn next_wake(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The caller's queue and 1-based position (callers being offered count too).
    pub fn position(&self, call: CallKey) -> Option<(String, usize)> {
        let c = self.callers.get(&call)?;
        let q = &self.queues[ix(c.queue)];
        Some((q.name.clone(), q.waiting.range(..c.key).count() + 1))
    }

    /// Estimated wait of a caller: position × the queue's recent average handle time (talk
    /// and wrap-up; [`DEFAULT_HANDLE_TIME`] before any call ended) ÷ the member agents who
    /// work (Ready, Ringing, Busy or WrapUp; at least 1).
    pub fn estimated_wait(&self, call: CallKey, _now: Instant) -> Option<Duration> {
        let c = self.callers.get(&call)?;
        let q = &self.queues[ix(c.queue)];
        let position = q.waiting.range(..c.key).count() + 1;
        let working = q.logged_in() - q.counts[state_slot(AgentState::NotReady)];
        let aht = q.aht.unwrap_or(DEFAULT_HANDLE_TIME);
        Some(aht * to_idx(position) / working.max(1))
    }

    /// Live numbers of a queue, for statistics.
    pub fn queue_snapshot(&self, queue: &str, now: Instant) -> Option<QueueSnapshot> {
        let q = &self.queues[ix(*self.queue_index.get(queue)?)];
        let mut longest = Duration::ZERO;
        let mut offering = 0;
        for k in &q.waiting {
            longest = longest.max(now.saturating_duration_since(k.since));
            if self
                .callers
                .get(&k.call)
                .is_some_and(|c| !c.ringing.is_empty())
            {
                offering += 1;
            }
        }
        let n = |s: AgentState| q.counts[state_slot(s)];
        Some(QueueSnapshot {
            waiting: to_idx(q.waiting.len()),
            offering,
            longest_wait: longest,
            agents: AgentCounts {
                logged_in: q.logged_in(),
                ready: n(AgentState::Ready),
                not_ready: n(AgentState::NotReady),
                ringing: n(AgentState::Ringing),
                busy: n(AgentState::Busy),
                wrap_up: n(AgentState::WrapUp),
            },
            average_handle_time: q.aht,
        })
    }

    /// Callers waiting in a queue, in the order they are served.
    pub fn waiting(&self, queue: &str) -> impl Iterator<Item = CallKey> + '_ {
        self.queue_index
            .get(queue)
            .into_iter()
            .flat_map(|&q| self.queues[ix(q)].waiting.iter().map(|k| k.call))
    }

    // ---- internals ----

    fn mark_dirty(&mut self, q: QueueIdx) {
        let queue = &mut self.queues[ix(q)];
        if !queue.dirty {
            queue.dirty = true;
            self.dirty.push(q);
        }
    }

    /// Changes an agent's state, keeping the per-queue counts and Ready indexes right.
    fn set_state(&mut self, a: AgentIdx, state: AgentState, reason: Option<String>, now: Instant) {
        let Self {
            agents,
            queues,
            timers,
            dirty,
            changed,
            ready_seq,
            ..
        } = self;
        let agent = &mut agents[ix(a)];
        // A phone on a direct call is not free for queue calls.
        let state = if state == AgentState::Ready && agent.direct_calls > 0 {
            AgentState::Busy
        } else {
            state
        };
        if !agent.changed {
            agent.changed = true;
            changed.push(a);
        }
        let old = agent.status.state;
        if old == AgentState::Ready {
            for m in &agent.memberships {
                queues[ix(m.queue)].ready.remove(&m.key);
            }
        }
        if old == AgentState::WrapUp
            && let Some(until) = agent.wrap_up_until.take()
        {
            timers.remove(&(until, Timer::WrapUp(a)));
        }
        for m in &agent.memberships {
            let q = &mut queues[ix(m.queue)];
            q.counts[state_slot(old)] -= 1;
            q.counts[state_slot(state)] += 1;
        }
        agent.status.state = state;
        agent.status.reason = reason;
        agent.status.since = now;
        if state == AgentState::Ready {
            *ready_seq += 1;
            agent.ready_seq = *ready_seq;
            for m in &mut agent.memberships {
                let q = &mut queues[ix(m.queue)];
                m.key = ready_key(q.spec.strategy, m, agent.ready_seq);
                q.ready.insert(m.key);
                if !q.dirty {
                    q.dirty = true;
                    dirty.push(m.queue);
                }
            }
        }
    }

    /// The agent is free again (ring released, wrap-up over): Ready, or its remembered
    /// request.
    fn settle(&mut self, a: AgentIdx, now: Instant) {
        let (state, reason) = settled(&mut self.agents[ix(a)].pending);
        self.set_state(a, state, reason, now);
    }

    /// The agent's ringing failed.
    fn fail_agent(&mut self, a: AgentIdx, failure: OfferFailure, now: Instant) {
        let agent = &mut self.agents[ix(a)];
        match (failure, agent.pending.is_some()) {
            (OfferFailure::Declined, _) | (_, true) => self.settle(a, now),
            (OfferFailure::NoAnswer, false) => self.set_state(
                a,
                AgentState::NotReady,
                Some(NO_ANSWER_REASON.to_string()),
                now,
            ),
            (OfferFailure::Unreachable, false) => self.set_state(
                a,
                AgentState::NotReady,
                Some(UNREACHABLE_REASON.to_string()),
                now,
            ),
        }
    }

    /// No seat rings for the caller any more: they are routed again.
    fn ring_over(&mut self, call: CallKey) {
        let Some(c) = self.callers.get_mut(&call) else {
            return;
        };
        if let Some(at) = c.ring_deadline.take() {
            self.timers.remove(&(at, Timer::Ring(call)));
        }
        let q = c.queue;
        self.arm_caller(call);
        self.mark_dirty(q);
    }

    /// Sets the caller's overflow/max-wait timer (none while seats ring for them).
    fn arm_caller(&mut self, call: CallKey) {
        let Some(c) = self.callers.get_mut(&call) else {
            return;
        };
        if let Some(at) = c.deadline.take() {
            self.timers.remove(&(at, Timer::Caller(call)));
        }
        if !c.ringing.is_empty() {
            return;
        }
        let spec = &self.queues[ix(c.queue)].spec;
        let max_at = c.clock_start + secs(spec.max_wait_seconds);
        let at = spec.overflow.get(c.step).map_or(max_at, |s| {
            max_at.min(c.clock_start + secs(s.after_seconds))
        });
        c.deadline = Some(at);
        self.timers.insert((at, Timer::Caller(call)));
    }

    /// Removes a caller from the ACD (queue, timers), leaving its ringing seats as they are.
    fn remove_caller(&mut self, call: CallKey) -> Option<Caller> {
        let c = self.callers.remove(&call)?;
        self.queues[ix(c.queue)].waiting.remove(&c.key);
        if let Some(at) = c.deadline {
            self.timers.remove(&(at, Timer::Caller(call)));
        }
        if let Some(at) = c.ring_deadline {
            self.timers.remove(&(at, Timer::Ring(call)));
        }
        Some(c)
    }

    /// Applies the caller's due overflow steps and max wait.
    fn run_overflow(&mut self, call: CallKey, now: Instant, events: &mut Vec<QueueEvent>) {
        for _ in 0..MAX_STEPS_AT_ONCE {
            let Some(c) = self.callers.get(&call) else {
                return;
            };
            if !c.ringing.is_empty() {
                return;
            }
            let q = &self.queues[ix(c.queue)];
            let from = q.name.clone();
            let max_at = c.clock_start + secs(q.spec.max_wait_seconds);
            let step = q.spec.overflow.get(c.step).cloned();
            let due = step
                .as_ref()
                .map(|s| c.clock_start + secs(s.after_seconds))
                .filter(|&at| at <= now && at <= max_at);
            if let (Some(step), Some(_)) = (step, due) {
                match step.action {
                    OverflowAction::RelaxSkills => {
                        let Some(c) = self.callers.get_mut(&call) else {
                            return;
                        };
                        c.step += 1;
                        c.skill_min = c.skill_min.min(step.min_proficiency.unwrap_or(0));
                        let min_proficiency = Some(c.skill_min).filter(|&m| m > 0);
                        let q = c.queue;
                        events.push(QueueEvent::SkillsRelaxed {
                            call,
                            queue: from,
                            min_proficiency,
                        });
                        self.mark_dirty(q);
                    }
                    OverflowAction::Queue => {
                        if let Some(c) = self.callers.get_mut(&call) {
                            c.step += 1;
                        }
                        let to = step.queue.unwrap_or_default();
                        if self.move_caller(call, &to, now) {
                            events.push(QueueEvent::Overflowed { call, from, to });
                        }
                    }
                    OverflowAction::Voicemail => {
                        self.remove_caller(call);
                        events.push(QueueEvent::ToVoicemail { call, queue: from });
                        return;
                    }
                }
                continue;
            }
            if now < max_at {
                self.arm_caller(call);
                return;
            }
            // Max wait: the last step is the destination, if not taken yet.
            let last = (c.step < q.spec.overflow.len())
                .then(|| q.spec.overflow.last().cloned())
                .flatten();
            match last {
                Some(s) if s.action == OverflowAction::Voicemail => {
                    self.remove_caller(call);
                    events.push(QueueEvent::ToVoicemail { call, queue: from });
                    return;
                }
                Some(s) if s.action == OverflowAction::Queue => {
                    let to = s.queue.unwrap_or_default();
                    if self.move_caller(call, &to, now) {
                        events.push(QueueEvent::Overflowed { call, from, to });
                        continue;
                    }
                }
                _ => {}
            }
            self.remove_caller(call);
            events.push(QueueEvent::MaxWaitReached { call, queue: from });
            return;
        }
        // Steps keep firing at once (zero delays looping between queues): give up waiting.
        if let Some(c) = self.remove_caller(call) {
            events.push(QueueEvent::MaxWaitReached {
                call,
                queue: self.queues[ix(c.queue)].name.clone(),
            });
        }
    }

    /// Moves a waiting caller to another queue (overflow). False when the target is unknown,
    /// the same queue, or full.
    fn move_caller(&mut self, call: CallKey, to: &str, now: Instant) -> bool {
        let Some(&t) = self.queue_index.get(to) else {
            tracing::warn!(
                call,
                queue = to,
                "overflow target queue unknown; step skipped"
            );
            return false;
        };
        let Some(c) = self.callers.get_mut(&call) else {
            return false;
        };
        let target = &self.queues[ix(t)];
        if c.queue == t || target.waiting.len() >= target.spec.max_length as usize {
            tracing::info!(
                call,
                queue = to,
                "overflow target full or the same queue; step skipped"
            );
            return false;
        }
        self.queues[ix(c.queue)].waiting.remove(&c.key);
        c.queue = t;
        c.clock_start = now;
        c.step = 0;
        c.skill_min = BASE_SKILL_MIN;
        self.queues[ix(t)].waiting.insert(c.key);
        self.arm_caller(call);
        self.mark_dirty(t);
        true
    }
}

/// What a free agent becomes: its remembered request, else Ready.
fn settled(pending: &mut Option<AgentRequest>) -> (AgentState, Option<String>) {
    match pending.take() {
        Some(AgentRequest::Logout) => (AgentState::LoggedOut, None),
        Some(AgentRequest::NotReady(reason)) => (AgentState::NotReady, Some(reason)),
        Some(AgentRequest::Login | AgentRequest::Ready) | None => (AgentState::Ready, None),
    }
}
