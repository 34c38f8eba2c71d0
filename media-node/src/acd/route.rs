//! The routing decision: which Ready agents ring for which waiting callers.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::time::Instant;

use rand::Rng;
use switchboard_crds::queue::Strategy;
use switchboard_crds::seat::AgentState;

use super::{Acd, AgentIdx, CallKey, Offer, QueueIdx, ReadyKey, Timer, WaitKey, ix, secs};

/// The head caller of a queue in the cross-queue order: queue priority, then the caller's
/// boost, then the earliest enqueue time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Head {
    priority: u32,
    key: WaitKey,
    queue: QueueIdx,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: greater = served first.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.key.cmp(&self.key))
            .then_with(|| other.queue.cmp(&self.queue))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Acd {
    /// The routing decision: offers waiting callers to matching Ready agents and returns the
    /// offers; the chosen seats are Ringing until [`Acd::offer_answered`],
    /// [`Acd::offer_failed`], [`Acd::abandon`] or the ring timeout in [`Acd::tick`].
    ///
    /// Only queues where something changed since the last call are examined. Callers of
    /// those queues are taken in the cross-queue order (queue priority, caller boost,
    /// enqueue time) and each is given the best matching Ready agent of its queue by the
    /// queue's strategy (the sticky agent first); a caller already being offered waits for
    /// that offer's outcome.
    pub fn next_offers(&mut self, now: Instant) -> Vec<Offer> {
        let mut offers = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        let mut heap = BinaryHeap::with_capacity(dirty.len());
        for q in dirty {
            self.queues[ix(q)].dirty = false;
            if let Some(head) = self.head(q, None) {
                heap.push(head);
            }
        }
        while let Some(head) = heap.pop() {
            let q = head.queue;
            if self.queues[ix(q)].ready.is_empty() {
                continue;
            }
            let call = head.key.call;
            if self
                .callers
                .get(&call)
                .is_some_and(|c| c.ringing.is_empty())
            {
                let agents = self.pick(q, call, now);
                if !agents.is_empty() {
                    offers.push(self.make_offer(q, call, agents, now));
                }
            }
            if let Some(next) = self.head(q, Some(head.key)) {
                heap.push(next);
            }
        }
        offers
    }

    /// The queue's next caller after `after` (or its first).
    fn head(&self, q: QueueIdx, after: Option<WaitKey>) -> Option<Head> {
        let queue = &self.queues[ix(q)];
        if queue.ready.is_empty() {
            return None;
        }
        let key = match after {
            None => queue.waiting.first().copied(),
            Some(k) => queue
                .waiting
                .range((Bound::Excluded(k), Bound::Unbounded))
                .next()
                .copied(),
        }?;
        Some(Head {
            priority: queue.spec.priority,
            key,
            queue: q,
        })
    }

    /// The Ready agents of queue `q` to ring for `call` (empty: none matches).
    fn pick(&mut self, q: QueueIdx, call: CallKey, now: Instant) -> Vec<AgentIdx> {
        let Self {
            rng,
            queues,
            callers,
            agents,
            agent_index,
            ..
        } = self;
        let Some(c) = callers.get(&call) else {
            return Vec::new();
        };
        let queue = &queues[ix(q)];
        let fits = |pos: u32| -> Option<AgentIdx> {
            let m = queue.members.get(ix(pos))?;
            (m.ceiling >= c.skill_min && !c.declined.contains(&m.agent)).then_some(m.agent)
        };

        // Sticky agent: the one who last served this number in this queue, if Ready.
        let sticky_for = secs(queue.spec.sticky_agent_minutes.saturating_mul(60));
        if !sticky_for.is_zero()
            && !c.number.is_empty()
            && let Some((seat, at)) = queue.sticky.get(&c.number)
            && now.saturating_duration_since(*at) <= sticky_for
            && let Some(&a) = agent_index.get(seat)
        {
            let agent = &agents[ix(a)];
            if agent.status.state == AgentState::Ready
                && let Some(m) = agent.memberships.iter().find(|m| m.queue == q)
                && fits(m.pos).is_some()
            {
                return vec![a];
            }
        }

        match queue.spec.strategy {
            Strategy::RingAll | Strategy::Random => {
                // Every matching Ready agent of the best tier that has one.
                let mut tier = None;
                let mut found = Vec::new();
                for k in &queue.ready {
                    if tier.is_some_and(|t| t != k.tier) {
                        break;
                    }
                    if let Some(a) = fits(k.pos) {
                        tier = Some(k.tier);
                        found.push(a);
                    }
                }
                if queue.spec.strategy == Strategy::Random && found.len() > 1 {
                    let i = rng.random_range(0..found.len());
                    vec![found[i]]
                } else {
                    found
                }
            }
            Strategy::RoundRobin => {
                let Some(first) = queue.ready.iter().find(|k| fits(k.pos).is_some()) else {
                    return Vec::new();
                };
                let tier_end = ReadyKey {
                    tier: first.tier,
                    k1: u64::MAX,
                    k2: u64::MAX,
                    pos: u32::MAX,
                };
                // Continue after the last member offered, within the best tier, wrapping.
                let after = queue.rr_last.and_then(|last| {
                    let from = ReadyKey {
                        tier: first.tier,
                        k1: 0,
                        k2: 0,
                        pos: last.checked_add(1)?,
                    };
                    queue.ready.range(from..=tier_end).find_map(|k| fits(k.pos))
                });
                after.or_else(|| fits(first.pos)).into_iter().collect()
            }
            Strategy::LongestIdle
            | Strategy::FewestCalls
            | Strategy::LeastTalkTime
            | Strategy::Linear
            | Strategy::SkillWeighted => queue
                .ready
                .iter()
                .find_map(|k| fits(k.pos))
                .into_iter()
                .collect(),
        }
    }

    /// Rings `agents` for `call`.
    fn make_offer(
        &mut self,
        q: QueueIdx,
        call: CallKey,
        agents: Vec<AgentIdx>,
        now: Instant,
    ) -> Offer {
        let mut seats = Vec::with_capacity(agents.len());
        for &a in &agents {
            self.set_state(a, AgentState::Ringing, None, now);
            self.agents[ix(a)].ringing = Some(call);
            seats.push(self.agents[ix(a)].config.seat.clone());
        }
        let queue = &mut self.queues[ix(q)];
        if queue.spec.strategy == Strategy::RoundRobin
            && let Some(&a) = agents.first()
            && let Some(m) = self.agents[ix(a)].memberships.iter().find(|m| m.queue == q)
        {
            queue.rr_last = Some(m.pos);
        }
        let ring_timeout = secs(queue.spec.ring_timeout_seconds);
        let name = queue.name.clone();
        if let Some(c) = self.callers.get_mut(&call) {
            if let Some(at) = c.deadline.take() {
                self.timers.remove(&(at, Timer::Caller(call)));
            }
            let at = now + ring_timeout;
            c.ring_deadline = Some(at);
            c.ringing = agents;
            self.timers.insert((at, Timer::Ring(call)));
        }
        Offer {
            call,
            queue: name,
            agents: seats,
            ring_timeout,
        }
    }
}
