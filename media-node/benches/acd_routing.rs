//! Routing decision time of the ACD core with 10,000 seats and 1,000 queues.
//!
//! Each seat serves 3 random queues (tier 1 or 2) and has random skills; queues mix all
//! strategies, priorities and skill requirements. Most agents are Busy and about 3 callers
//! wait per queue. Measured, each many times:
//! - "agent free": a Busy agent's call ends (no wrap-up) and `next_offers` decides;
//! - "new caller": a caller is queued and `next_offers` decides.
//!
//! Run: `cargo bench -j 1 -p media-node --bench acd_routing`. Prints p50/p99/max.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use media_node::acd::{Acd, AgentConfig, AgentRequest, CallKey, CallerInfo, Offer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchboard_crds::QueueSpec;
use switchboard_crds::seat::AgentState;

const SEATS: usize = 10_000;
const QUEUES: usize = 1_000;
const QUEUES_PER_SEAT: usize = 3;
const WAITING_PER_QUEUE: usize = 3;
const ROUNDS: usize = 50_000;

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
const SKILLS: [&str; 6] = ["billing", "tech", "sales", "mandarin", "spanish", "vip"];

fn queue_spec(i: usize) -> QueueSpec {
    // Ring-all is rare in big centers; keep it to a few queues.
    let strategy = if i.is_multiple_of(50) {
        "RingAll"
    } else {
        STRATEGIES[1 + i % 7]
    };
    let required = if i.is_multiple_of(3) {
        serde_json::json!([{ "name": SKILLS[i % SKILLS.len()], "minProficiency": 2 }])
    } else {
        serde_json::json!([])
    };
    serde_json::from_value(serde_json::json!({
        "callCenter": "bench",
        "strategy": strategy,
        "priority": i % 5,
        "requiredSkills": required,
        "wrapUpSeconds": 0,
        "maxLength": 50,
        "maxWaitSeconds": 3600,
        "stickyAgentMinutes": if i.is_multiple_of(4) { 30 } else { 0 },
        "overflow": [{ "afterSeconds": 120, "action": "RelaxSkills", "minProficiency": 1 }],
    }))
    .expect("valid queue spec")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    println!(
        "{name:<34} n={:<7} p50={:>9.2?} p99={:>9.2?} p99.9={:>9.2?} max={:>9.2?} mean={:>9.2?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        samples.last().copied().unwrap_or_default(),
        mean,
    );
}

fn answer_all(acd: &mut Acd, offers: &[Offer], now: Instant) {
    for o in offers {
        // The first seat answers; ring-all's others are cancelled by the ACD.
        black_box(acd.offer_answered(o.call, &o.agents[0], now));
    }
}

fn main() {
    let mut rng = StdRng::seed_from_u64(2024);
    let t0 = Instant::now();
    let queues: Vec<(String, QueueSpec)> = (0..QUEUES)
        .map(|i| (format!("queue-{i}"), queue_spec(i)))
        .collect();
    let agents: Vec<AgentConfig> = (0..SEATS)
        .map(|i| {
            let mut qs: Vec<(String, u8)> = Vec::new();
            while qs.len() < QUEUES_PER_SEAT {
                let q = format!("queue-{}", rng.random_range(0..QUEUES));
                if !qs.iter().any(|(n, _)| *n == q) {
                    qs.push((q, rng.random_range(1..=2)));
                }
            }
            let mut skills = BTreeMap::new();
            for s in SKILLS {
                if rng.random_bool(0.5) {
                    skills.insert(s.to_string(), rng.random_range(1..=5u8));
                }
            }
            AgentConfig {
                seat: format!("seat-{i}"),
                extension: format!("{}", 10_000 + i),
                queues: qs,
                skills,
                wrap_up_seconds: None,
            }
        })
        .collect();

    let mut acd = Acd::new(1);
    let started = Instant::now();
    acd.configure(&queues, &agents, t0);
    println!(
        "configure: {} seats, {} queues in {:.2?}",
        SEATS,
        QUEUES,
        started.elapsed()
    );
    for a in &agents {
        acd.set_agent_state(&a.seat, AgentRequest::Login, t0)
            .expect("configured seat");
    }

    // Fill: callers until nearly every agent is Busy, then a backlog of waiting callers.
    let mut now = t0;
    let mut next_call: CallKey = 1;
    let mut enqueue = |acd: &mut Acd, rng: &mut StdRng, now: Instant| {
        let q = rng.random_range(0..QUEUES);
        let caller = CallerInfo {
            number: format!("+1555{:07}", rng.random_range(0..200_000)),
            priority_boost: if rng.random_bool(0.05) { 10 } else { 0 },
        };
        let _ = acd.enqueue(next_call, &queues[q].0, caller, now);
        next_call += 1;
    };
    for i in 0..SEATS {
        enqueue(&mut acd, &mut rng, now);
        if i.is_multiple_of(64) {
            let offers = acd.next_offers(now);
            answer_all(&mut acd, &offers, now);
        }
    }
    let offers = acd.next_offers(now);
    answer_all(&mut acd, &offers, now);
    for _ in 0..QUEUES * WAITING_PER_QUEUE {
        enqueue(&mut acd, &mut rng, now);
    }
    let offers = acd.next_offers(now);
    answer_all(&mut acd, &offers, now);
    let count = |acd: &Acd, s: AgentState| acd.agents().filter(|(_, st)| st.state == s).count();
    let waiting: u32 = queues
        .iter()
        .filter_map(|(q, _)| acd.queue_snapshot(q, now))
        .map(|s| s.waiting)
        .sum();
    println!(
        "start: busy={} ready={} waiting callers={}",
        count(&acd, AgentState::Busy),
        count(&acd, AgentState::Ready),
        waiting
    );

    let mut agent_free = Vec::with_capacity(ROUNDS);
    let mut agent_free_total = Vec::with_capacity(ROUNDS);
    let mut new_caller = Vec::with_capacity(ROUNDS);
    let mut offers_made = 0usize;
    let seats: Vec<String> = agents.iter().map(|a| a.seat.clone()).collect();
    for round in 0..ROUNDS {
        now += Duration::from_millis(50);
        // One Busy agent finishes its call.
        let Some(seat) = (0..SEATS).find_map(|_| {
            let s = &seats[rng.random_range(0..SEATS)];
            (acd.agent(s).map(|st| st.state) == Some(AgentState::Busy)).then_some(s)
        }) else {
            break;
        };
        let started = Instant::now();
        acd.call_ended(seat, Duration::from_secs(120), now);
        let decided = Instant::now();
        let offers = acd.next_offers(now);
        let done = Instant::now();
        agent_free.push(done - decided);
        agent_free_total.push(done - started);
        offers_made += offers.len();
        answer_all(&mut acd, &offers, now);

        // A new caller arrives.
        let started = Instant::now();
        enqueue(&mut acd, &mut rng, now);
        let offers = acd.next_offers(now);
        new_caller.push(started.elapsed());
        offers_made += offers.len();
        answer_all(&mut acd, &offers, now);

        if round.is_multiple_of(100) {
            black_box(acd.tick(now));
            let offers = acd.next_offers(now);
            answer_all(&mut acd, &offers, now);
        }
    }
    let waiting: u32 = queues
        .iter()
        .filter_map(|(q, _)| acd.queue_snapshot(q, now))
        .map(|s| s.waiting)
        .sum();
    println!(
        "end: busy={} ready={} waiting callers={} offers made={}",
        count(&acd, AgentState::Busy),
        count(&acd, AgentState::Ready),
        waiting,
        offers_made
    );
    // Live reconfiguration with the same objects: every queue is looked at again.
    let mut reconfigure = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        black_box(acd.configure(&queues, &agents, now));
        let offers = acd.next_offers(now);
        reconfigure.push(started.elapsed());
        answer_all(&mut acd, &offers, now);
    }
    report("agent free: next_offers", agent_free);
    report("agent free: call_ended+next_offers", agent_free_total);
    report("new caller: enqueue+next_offers", new_caller);
    report("reconfigure: configure+next_offers", reconfigure);
}
