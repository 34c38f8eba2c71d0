//! Property tests: random agent/caller histories keep the routing invariants.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;
use switchboard_crds::seat::AgentState;

use super::tests::{agent, spec};
use super::*;

const QUEUES: [&str; 3] = ["qa", "qb", "qc"];
const STRATEGIES: [&str; 8] = [
    "RingAll",
    "LongestIdle",
    "RoundRobin",
    "FewestCalls",
    "LeastTalkTime",
    "Random",
    "Linear",
    "SkillWeighted",
];

#[derive(Clone, Debug)]
enum Op {
    Login(usize),
    Ready(usize),
    NotReady(usize),
    Logout(usize),
    Enqueue {
        queue: usize,
        boost: u32,
        number: u8,
    },
    Abandon(usize),
    Answer(usize),
    Fail(usize, u8),
    End(usize, u16),
    Advance(u16),
    Reconfigure,
    DirectStart(usize),
    DirectEnd(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8usize).prop_map(Op::Login),
        2 => (0..8usize).prop_map(Op::Ready),
        1 => (0..8usize).prop_map(Op::NotReady),
        1 => (0..8usize).prop_map(Op::Logout),
        4 => (0..3usize, 0..3u32, 0..4u8)
            .prop_map(|(queue, boost, number)| Op::Enqueue { queue, boost, number }),
        1 => (0..64usize).prop_map(Op::Abandon),
        3 => (0..64usize).prop_map(Op::Answer),
        2 => (0..64usize, 0..3u8).prop_map(|(i, k)| Op::Fail(i, k)),
        3 => (0..8usize, 0..300u16).prop_map(|(i, t)| Op::End(i, t)),
        2 => (1..120u16).prop_map(Op::Advance),
        1 => Just(Op::Reconfigure),
        1 => (0..8usize).prop_map(Op::DirectStart),
        1 => (0..8usize).prop_map(Op::DirectEnd),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    strategies: [usize; 3],
    priorities: [u32; 3],
    /// Per agent: per queue tier (0 = not a member), skill proficiencies of x and y.
    agents: Vec<([u8; 3], u8, u8)>,
    wrap: [u32; 3],
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        [0..8usize, 0..8usize, 0..8usize],
        [0..3u32, 0..3u32, 0..3u32],
        proptest::collection::vec(([0..3u8, 0..3u8, 0..3u8], 0..6u8, 0..6u8), 8),
        [0..30u32, 0..30u32, 0..30u32],
    )
        .prop_map(|(strategies, priorities, agents, wrap)| Setup {
            strategies,
            priorities,
            agents,
            wrap,
        })
}

fn build(s: &Setup) -> (Vec<(String, QueueSpec)>, Vec<AgentConfig>) {
    let queues = QUEUES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let next = QUEUES[(i + 1) % 3];
            let q = spec(json!({
                "strategy": STRATEGIES[s.strategies[i]],
                "priority": s.priorities[i],
                "wrapUpSeconds": s.wrap[i],
                "ringTimeoutSeconds": 15,
                "maxWaitSeconds": 400,
                "maxLength": 6,
                "stickyAgentMinutes": if i == 0 { 5 } else { 0 },
                "requiredSkills": match i {
                    0 => json!([{ "name": "x", "minProficiency": 3 }]),
                    1 => json!([{ "name": "x", "minProficiency": 2 }, { "name": "y", "minProficiency": 4 }]),
                    _ => json!([]),
                },
                "overflow": [
                    { "afterSeconds": 60, "action": "RelaxSkills", "minProficiency": 1 },
                    { "afterSeconds": 120, "action": "Queue", "queue": next },
                    { "afterSeconds": 200, "action": "RelaxSkills" },
                ],
            }));
            (name.to_string(), q)
        })
        .collect();
    let agents = s
        .agents
        .iter()
        .enumerate()
        .map(|(i, (tiers, x, y))| {
            let member: Vec<(&str, u8)> = QUEUES
                .iter()
                .zip(tiers)
                .filter(|(_, t)| **t > 0)
                .map(|(q, t)| (*q, *t))
                .collect();
            let mut skills = Vec::new();
            if *x > 0 {
                skills.push(("x", *x));
            }
            if *y > 0 {
                skills.push(("y", *y));
            }
            agent(&format!("s{i}"), &member, &skills)
        })
        .collect();
    (queues, agents)
}

/// Whether agent `a` may be offered `call` now, computed from first principles.
fn fits(acd: &Acd, a: AgentIdx, call: CallKey) -> bool {
    let c = &acd.callers[&call];
    let q = &acd.queues[ix(c.queue)];
    let agent = &acd.agents[ix(a)];
    agent.memberships.iter().any(|m| m.queue == c.queue)
        && !c.declined.contains(&a)
        && q.spec.required_skills.iter().all(|r| {
            agent.config.skills.get(&r.name).copied().unwrap_or(0)
                >= r.min_proficiency.min(c.skill_min)
        })
}

fn check(acd: &Acd, before: &HashMap<String, AgentState>, offers: &[Offer]) {
    // A phone on a direct call is never Ready (so never offered a queue call).
    for a in &acd.agents {
        assert!(
            a.direct_calls == 0 || a.status.state != AgentState::Ready,
            "{} Ready while on a direct call",
            a.config.seat
        );
    }
    // Offers: only agents that were Ready, each in one offer, each fitting the caller.
    let mut offered = BTreeSet::new();
    for o in offers {
        assert!(!o.agents.is_empty());
        for seat in &o.agents {
            assert_eq!(
                before.get(seat),
                Some(&AgentState::Ready),
                "{seat} offered while not Ready"
            );
            assert!(offered.insert(seat.clone()), "{seat} offered twice");
            let a = acd.agent_index[seat];
            assert!(
                fits(acd, a, o.call),
                "{seat} lacks what call {} needs",
                o.call
            );
        }
    }
    // Lower tiers first: no agent still Ready that fits the caller has a better tier than
    // the one offered (the sticky queue "qa" may prefer a tier-2 agent).
    for o in offers {
        let q = acd.callers[&o.call].queue;
        if o.queue == "qa" {
            continue;
        }
        let tier = |a: AgentIdx| {
            acd.agents[ix(a)]
                .memberships
                .iter()
                .find(|m| m.queue == q)
                .map(|m| m.tier)
        };
        let offered = o
            .agents
            .iter()
            .filter_map(|s| tier(acd.agent_index[s]))
            .max();
        for (i, agent) in acd.agents.iter().enumerate() {
            if agent.status.state == AgentState::Ready && fits(acd, to_idx(i), o.call) {
                assert!(tier(to_idx(i)) >= offered, "a better tier was left Ready");
            }
        }
    }
    // Ringing agents and ringing callers agree; an agent rings for one caller at most.
    let mut ringing_seen = BTreeSet::new();
    for (call, c) in &acd.callers {
        for &a in &c.ringing {
            assert!(ringing_seen.insert(a), "agent rings for two callers");
            assert_eq!(acd.agents[ix(a)].ringing, Some(*call));
            assert_eq!(acd.agents[ix(a)].status.state, AgentState::Ringing);
        }
    }
    for (i, agent) in acd.agents.iter().enumerate() {
        assert_eq!(
            agent.status.state == AgentState::Ringing,
            ringing_seen.contains(&to_idx(i)),
            "{} ringing state mismatch",
            agent.config.seat
        );
    }
    // No matching Ready agent and waiting caller left idle.
    for (call, c) in &acd.callers {
        if !c.ringing.is_empty() {
            continue;
        }
        for (i, agent) in acd.agents.iter().enumerate() {
            if agent.status.state == AgentState::Ready {
                assert!(
                    !fits(acd, to_idx(i), *call),
                    "{} Ready and call {call} waiting idle",
                    agent.config.seat
                );
            }
        }
    }
    // Positions are a permutation of 1..n; indexes and counts match the agents.
    for (qi, q) in acd.queues.iter().enumerate() {
        let mut positions: Vec<usize> = q
            .waiting
            .iter()
            .map(|k| acd.position(k.call).expect("queued").1)
            .collect();
        positions.sort_unstable();
        assert_eq!(positions, (1..=q.waiting.len()).collect::<Vec<_>>());
        for k in &q.waiting {
            assert_eq!(ix(acd.callers[&k.call].queue), qi);
        }
        let mut counts = [0u32; 6];
        for m in &q.members {
            counts[state_slot(acd.agents[ix(m.agent)].status.state)] += 1;
        }
        assert_eq!(counts, q.counts, "counts of {}", q.name);
        assert_eq!(q.ready.len(), counts[1] as usize);
    }
    assert_eq!(
        acd.callers.len(),
        acd.queues.iter().map(|q| q.waiting.len()).sum::<usize>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn routing_invariants(s in setup(), ops in proptest::collection::vec(op(), 1..80)) {
        let (queues, agents) = build(&s);
        let t0 = Instant::now();
        let mut now = t0;
        let mut acd = Acd::new(9);
        acd.configure(&queues, &agents, now);
        let mut next_call: CallKey = 1;
        let seat = |i: usize| format!("s{i}");
        for op in ops {
            match op {
                Op::Login(i) => { let _ = acd.set_agent_state(&seat(i), AgentRequest::Login, now); }
                Op::Ready(i) => { let _ = acd.set_agent_state(&seat(i), AgentRequest::Ready, now); }
                Op::NotReady(i) => { let _ = acd.set_agent_state(&seat(i), AgentRequest::NotReady("b".into()), now); }
                Op::Logout(i) => { let _ = acd.set_agent_state(&seat(i), AgentRequest::Logout, now); }
                Op::Enqueue { queue, boost, number } => {
                    let info = CallerInfo { number: format!("+1{number}"), priority_boost: boost };
                    if let Ok(pos) = acd.enqueue(next_call, QUEUES[queue], info, now) {
                        prop_assert_eq!(acd.position(next_call).map(|p| p.1), Some(pos));
                    }
                    next_call += 1;
                }
                Op::Abandon(i) => {
                    let calls: Vec<CallKey> = acd.callers.keys().copied().collect();
                    if !calls.is_empty() {
                        let mut calls = calls;
                        calls.sort_unstable();
                        let call = calls[i % calls.len()];
                        for s in acd.abandon(call, now) {
                            prop_assert_ne!(acd.agent(&s).map(|a| a.state), Some(AgentState::Ringing));
                        }
                    }
                }
                Op::Answer(i) | Op::Fail(i, _) => {
                    let mut ringing: Vec<(String, CallKey)> = acd
                        .agents
                        .iter()
                        .filter_map(|a| a.ringing.map(|c| (a.config.seat.clone(), c)))
                        .collect();
                    ringing.sort();
                    if !ringing.is_empty() {
                        let (seat, call) = ringing[i % ringing.len()].clone();
                        match op {
                            Op::Answer(_) => {
                                acd.offer_answered(call, &seat, now);
                                prop_assert_eq!(acd.agent(&seat).map(|a| a.state), Some(AgentState::Busy));
                                prop_assert!(acd.position(call).is_none());
                            }
                            Op::Fail(_, k) => {
                                let failure = [OfferFailure::NoAnswer, OfferFailure::Declined, OfferFailure::Unreachable][k as usize % 3];
                                acd.offer_failed(call, &seat, failure, now);
                            }
                            _ => {}
                        }
                    }
                }
                Op::End(i, talk) => acd.call_ended(&seat(i), Duration::from_secs(u64::from(talk)), now),
                Op::Advance(secs) => {
                    now += Duration::from_secs(u64::from(secs));
                    if let Some(wake) = acd.next_wake() {
                        // next_wake never lies about due work.
                        if wake > now {
                            prop_assert!(acd.clone_timers_due(now) == 0);
                        }
                    }
                    acd.tick(now);
                    prop_assert!(acd.next_wake().is_none_or(|w| w > now));
                }
                Op::Reconfigure => {
                    let removed = acd.configure(&queues, &agents, now);
                    prop_assert!(removed.is_empty());
                }
                Op::DirectStart(i) => acd.direct_call_started(&seat(i), now),
                Op::DirectEnd(i) => acd.direct_call_ended(&seat(i), now),
            }
            let before: HashMap<String, AgentState> =
                acd.agents().map(|(s, st)| (s.to_string(), st.state)).collect();
            let offers = acd.next_offers(now);
            check(&acd, &before, &offers);
        }
    }
}

impl Acd {
    fn clone_timers_due(&self, now: Instant) -> usize {
        self.timers.iter().take_while(|(at, _)| *at <= now).count()
    }
}
