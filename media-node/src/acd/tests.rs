//! Unit tests of the routing rules, one scenario each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_crds::QueueSpec;
use switchboard_crds::queue::NoAgentsAction;
use switchboard_crds::seat::AgentState;

use super::*;

pub(super) fn spec(extra: serde_json::Value) -> QueueSpec {
    let mut v = json!({ "callCenter": "cc" });
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in more {
            obj.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("valid QueueSpec")
}

pub(super) fn agent(seat: &str, queues: &[(&str, u8)], skills: &[(&str, u8)]) -> AgentConfig {
    AgentConfig {
        seat: seat.to_string(),
        extension: seat.trim_start_matches("s").to_string(),
        queues: queues.iter().map(|(q, t)| (q.to_string(), *t)).collect(),
        skills: skills
            .iter()
            .map(|(s, p)| (s.to_string(), *p))
            .collect::<BTreeMap<_, _>>(),
        wrap_up_seconds: None,
    }
}

fn caller(number: &str) -> CallerInfo {
    CallerInfo {
        number: number.to_string(),
        priority_boost: 0,
    }
}

fn boosted(boost: u32) -> CallerInfo {
    CallerInfo {
        number: String::new(),
        priority_boost: boost,
    }
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An ACD with one queue `q` of `strategy` and the given seats, all logged in (Ready) in
/// order, one second apart (so `s1` has been idle longest).
fn setup(queue: serde_json::Value, agents: &[AgentConfig]) -> (Acd, Instant) {
    let t0 = Instant::now();
    let mut acd = Acd::new(7);
    let removed = acd.configure(&[("q".to_string(), spec(queue))], agents, t0);
    assert!(removed.is_empty());
    for (i, a) in agents.iter().enumerate() {
        acd.set_agent_state(&a.seat, AgentRequest::Login, t0 + s(i as u64))
            .unwrap();
    }
    (acd, t0 + s(100))
}

fn seats(n: usize, queue: &str) -> Vec<AgentConfig> {
    (1..=n)
        .map(|i| agent(&format!("s{i}"), &[(queue, 1)], &[]))
        .collect()
}

fn state(acd: &Acd, seat: &str) -> AgentState {
    acd.agent(seat).unwrap().state
}

/// Enqueues, routes and returns the seats offered for `call`.
fn route_one(acd: &mut Acd, call: CallKey, now: Instant) -> Vec<String> {
    acd.enqueue(call, "q", caller(""), now).unwrap();
    let offers = acd.next_offers(now);
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].call, call);
    offers[0].agents.clone()
}

/// Answers and ends the call at once with no wrap-up seconds configured by the caller of
/// this helper.
fn serve(acd: &mut Acd, call: CallKey, seat: &str, talk: Duration, now: Instant) {
    assert!(acd.offer_answered(call, seat, now).is_empty());
    acd.call_ended(seat, talk, now);
}

#[test]
fn agent_state_requests() {
    let t0 = Instant::now();
    let mut acd = Acd::new(1);
    acd.configure(
        &[("q".into(), spec(json!({})))],
        &[agent("s1", &[("q", 1)], &[])],
        t0,
    );
    assert_eq!(state(&acd, "s1"), AgentState::LoggedOut);
    assert_eq!(
        acd.set_agent_state("s1", AgentRequest::Ready, t0),
        Err(AgentError::NotLoggedIn("s1".into()))
    );
    assert_eq!(
        acd.set_agent_state("nope", AgentRequest::Login, t0),
        Err(AgentError::UnknownSeat("nope".into()))
    );
    let st = acd.set_agent_state("s1", AgentRequest::Login, t0).unwrap();
    assert_eq!(st.state, AgentState::Ready);
    let st = acd
        .set_agent_state("s1", AgentRequest::NotReady("break".into()), t0 + s(1))
        .unwrap();
    assert_eq!(
        (st.state, st.reason.as_deref(), st.since),
        (AgentState::NotReady, Some("break"), t0 + s(1))
    );
    let st = acd
        .set_agent_state("s1", AgentRequest::Ready, t0 + s(2))
        .unwrap();
    assert_eq!((st.state, st.reason), (AgentState::Ready, None));
    acd.registration_lost("s1", t0 + s(3));
    assert_eq!(state(&acd, "s1"), AgentState::LoggedOut);
    assert_eq!(acd.agents().count(), 1);
}

#[test]
fn requests_while_busy_apply_after_the_call() {
    let (mut acd, now) = setup(json!({ "wrapUpSeconds": 10 }), &seats(2, "q"));
    let seat = route_one(&mut acd, 1, now).remove(0);
    // NotReady while Ringing is remembered; the answered call goes on.
    acd.set_agent_state(&seat, AgentRequest::NotReady("lunch".into()), now)
        .unwrap();
    assert_eq!(state(&acd, &seat), AgentState::Ringing);
    acd.offer_answered(1, &seat, now);
    acd.call_ended(&seat, s(30), now + s(30));
    assert_eq!(state(&acd, &seat), AgentState::WrapUp);
    let events = acd.tick(now + s(40));
    assert_eq!(events, vec![QueueEvent::WrapUpEnded { seat: seat.clone() }]);
    let st = acd.agent(&seat).unwrap();
    assert_eq!(
        (st.state, st.reason.as_deref()),
        (AgentState::NotReady, Some("lunch"))
    );

    // Logout while Busy logs out at the end of the call, without wrap-up.
    let other = if seat == "s1" { "s2" } else { "s1" };
    let got = route_one(&mut acd, 2, now + s(50));
    assert_eq!(got, vec![other.to_string()]);
    acd.offer_answered(2, other, now + s(50));
    acd.set_agent_state(other, AgentRequest::Logout, now + s(51))
        .unwrap();
    assert_eq!(state(&acd, other), AgentState::Busy);
    acd.call_ended(other, s(10), now + s(60));
    assert_eq!(state(&acd, other), AgentState::LoggedOut);

    // Ready while Busy cancels a remembered NotReady.
    acd.set_agent_state(&seat, AgentRequest::Ready, now + s(61))
        .unwrap();
    route_one(&mut acd, 3, now + s(62));
    acd.offer_answered(3, &seat, now + s(62));
    acd.set_agent_state(&seat, AgentRequest::NotReady("x".into()), now + s(63))
        .unwrap();
    acd.set_agent_state(&seat, AgentRequest::Ready, now + s(64))
        .unwrap();
    acd.call_ended(&seat, s(1), now + s(65));
    acd.tick(now + s(75));
    assert_eq!(state(&acd, &seat), AgentState::Ready);
}

#[test]
fn ready_during_wrap_up_ends_it_early() {
    let (mut acd, now) = setup(json!({ "wrapUpSeconds": 60 }), &seats(1, "q"));
    route_one(&mut acd, 1, now);
    serve(&mut acd, 1, "s1", s(5), now);
    assert_eq!(state(&acd, "s1"), AgentState::WrapUp);
    assert_eq!(acd.next_wake(), Some(now + s(60)));
    acd.set_agent_state("s1", AgentRequest::Ready, now + s(3))
        .unwrap();
    assert_eq!(state(&acd, "s1"), AgentState::Ready);
    assert_eq!(acd.next_wake(), None, "the wrap-up timer is gone");
}

#[test]
fn wrap_up_then_next_offer_and_seat_override() {
    let mut agents = seats(2, "q");
    agents[1].wrap_up_seconds = Some(0);
    let (mut acd, now) = setup(json!({ "wrapUpSeconds": 20 }), &agents);
    // s1 (idle longest) takes call 1 and wraps up 20 s; s2 (override 0) is Ready at once.
    assert_eq!(route_one(&mut acd, 1, now), vec!["s1"]);
    serve(&mut acd, 1, "s1", s(5), now);
    assert_eq!(route_one(&mut acd, 2, now), vec!["s2"]);
    serve(&mut acd, 2, "s2", s(5), now);
    assert_eq!(state(&acd, "s2"), AgentState::Ready);
    // Call 3 goes to s2 although s1 was idle longer before: s1 is still wrapping up.
    assert_eq!(route_one(&mut acd, 3, now + s(1)), vec!["s2"]);
    acd.enqueue(4, "q", caller(""), now + s(2)).unwrap();
    assert!(acd.next_offers(now + s(2)).is_empty());
    assert!(acd.tick(now + s(19)).is_empty());
    assert_eq!(
        acd.tick(now + s(20)),
        vec![QueueEvent::WrapUpEnded { seat: "s1".into() }]
    );
    let offers = acd.next_offers(now + s(20));
    assert_eq!(
        (offers[0].call, offers[0].agents.clone()),
        (4, vec!["s1".into()])
    );
}

#[test]
fn enqueue_refusals() {
    let t0 = Instant::now();
    let mut acd = Acd::new(1);
    acd.configure(
        &[
            ("wait".into(), spec(json!({ "maxLength": 2 }))),
            ("reject".into(), spec(json!({ "whenNoAgents": "Reject" }))),
            ("vm".into(), spec(json!({ "whenNoAgents": "Voicemail" }))),
        ],
        &[agent("s1", &[("reject", 1), ("vm", 1)], &[])],
        t0,
    );
    assert_eq!(
        acd.enqueue(1, "nope", caller(""), t0),
        Err(Refusal::UnknownQueue("nope".into()))
    );
    assert_eq!(acd.enqueue(1, "wait", caller(""), t0), Ok(1));
    assert_eq!(
        acd.enqueue(1, "wait", caller(""), t0),
        Err(Refusal::AlreadyQueued(1))
    );
    assert_eq!(acd.enqueue(2, "wait", caller(""), t0), Ok(2));
    assert_eq!(
        acd.enqueue(3, "wait", caller(""), t0),
        Err(Refusal::Full("wait".into()))
    );
    assert_eq!(
        acd.enqueue(4, "reject", caller(""), t0),
        Err(Refusal::NoAgentsLoggedIn(NoAgentsAction::Reject))
    );
    assert_eq!(
        acd.enqueue(4, "vm", caller(""), t0),
        Err(Refusal::NoAgentsLoggedIn(NoAgentsAction::Voicemail))
    );
    // Logged in but NotReady counts as logged in.
    acd.set_agent_state("s1", AgentRequest::Login, t0).unwrap();
    acd.set_agent_state("s1", AgentRequest::NotReady("break".into()), t0)
        .unwrap();
    assert_eq!(acd.enqueue(4, "reject", caller(""), t0), Ok(1));
    assert!(acd.next_offers(t0).is_empty());
}

#[test]
fn ring_all_rings_the_best_tier_and_cancels_the_others() {
    let agents = vec![
        agent("s1", &[("q", 1)], &[]),
        agent("s2", &[("q", 2)], &[]),
        agent("s3", &[("q", 1)], &[]),
    ];
    let (mut acd, now) = setup(json!({ "strategy": "RingAll" }), &agents);
    let mut got = route_one(&mut acd, 1, now);
    got.sort();
    assert_eq!(got, vec!["s1", "s3"]);
    assert_eq!(state(&acd, "s2"), AgentState::Ready);
    // A second caller gets the next tier.
    assert_eq!(route_one(&mut acd, 2, now), vec!["s2"]);
    assert_eq!(
        acd.offer_answered(1, "s3", now + s(1)),
        vec!["s1".to_string()]
    );
    assert_eq!(state(&acd, "s3"), AgentState::Busy);
    assert_eq!(state(&acd, "s1"), AgentState::Ready);
    // Call 2 still rings s2; s1 is free but call 2 is being offered already.
    assert!(acd.next_offers(now + s(1)).is_empty());
}

#[test]
fn longest_idle() {
    let (mut acd, now) = setup(
        json!({ "strategy": "LongestIdle", "wrapUpSeconds": 0 }),
        &seats(3, "q"),
    );
    assert_eq!(route_one(&mut acd, 1, now), vec!["s1"]);
    serve(&mut acd, 1, "s1", s(1), now + s(1));
    assert_eq!(route_one(&mut acd, 2, now + s(2)), vec!["s2"]);
    // s3 went NotReady and back: its idle time restarts.
    acd.set_agent_state("s3", AgentRequest::NotReady("b".into()), now + s(3))
        .unwrap();
    acd.set_agent_state("s3", AgentRequest::Ready, now + s(4))
        .unwrap();
    assert_eq!(route_one(&mut acd, 3, now + s(5)), vec!["s1"]);
}

#[test]
fn round_robin_continues_after_the_last_offered() {
    let (mut acd, now) = setup(
        json!({ "strategy": "RoundRobin", "wrapUpSeconds": 0 }),
        &seats(3, "q"),
    );
    let mut order = Vec::new();
    for call in 1..=5 {
        let seat = route_one(&mut acd, call, now).remove(0);
        serve(&mut acd, call, &seat, s(1), now);
        order.push(seat);
    }
    assert_eq!(order, vec!["s1", "s2", "s3", "s1", "s2"]);
    // s3 busy: the turn skips it and wraps around.
    let seat = route_one(&mut acd, 6, now);
    assert_eq!(seat, vec!["s3"]);
    acd.offer_answered(6, "s3", now);
    assert_eq!(route_one(&mut acd, 7, now), vec!["s1"]);
}

#[test]
fn fewest_calls_and_least_talk_time() {
    for (strategy, expect) in [("FewestCalls", "s2"), ("LeastTalkTime", "s1")] {
        let (mut acd, now) = setup(
            json!({ "strategy": strategy, "wrapUpSeconds": 0 }),
            &seats(2, "q"),
        );
        // s1 takes two short calls, s2 one long call.
        let a = route_one(&mut acd, 1, now);
        assert_eq!(a, vec!["s1"]);
        serve(&mut acd, 1, "s1", s(10), now);
        let b = route_one(&mut acd, 2, now);
        assert_eq!(b, vec!["s2"]);
        serve(&mut acd, 2, "s2", s(500), now);
        let c = route_one(&mut acd, 3, now);
        assert_eq!(c, vec!["s1"]);
        serve(&mut acd, 3, "s1", s(10), now);
        assert_eq!(route_one(&mut acd, 4, now), vec![expect], "{strategy}");
        let st = acd.agent("s1").unwrap();
        assert_eq!((st.calls_today, st.talk_time_today), (2, s(20)));
        acd.reset_daily_counters();
        assert_eq!(acd.agent("s1").unwrap().calls_today, 0);
    }
}

#[test]
fn fewest_calls_counts_calls_of_this_queue_only() {
    let agents = vec![
        agent("s1", &[("q", 1), ("other", 1)], &[]),
        agent("s2", &[("q", 1)], &[]),
    ];
    let t0 = Instant::now();
    let mut acd = Acd::new(3);
    acd.configure(
        &[
            (
                "q".into(),
                spec(json!({ "strategy": "FewestCalls", "wrapUpSeconds": 0 })),
            ),
            ("other".into(), spec(json!({ "wrapUpSeconds": 0 }))),
        ],
        &agents,
        t0,
    );
    acd.set_agent_state("s2", AgentRequest::Login, t0).unwrap();
    acd.set_agent_state("s1", AgentRequest::Login, t0).unwrap();
    // s1 serves two calls of "other".
    for call in [10, 11] {
        acd.enqueue(call, "other", caller(""), t0).unwrap();
        let o = acd.next_offers(t0);
        assert_eq!(o[0].agents, vec!["s1"]);
        serve(&mut acd, call, "s1", s(1), t0);
    }
    // s2 serves one call of q.
    assert_eq!(route_one(&mut acd, 1, t0), vec!["s2"]);
    serve(&mut acd, 1, "s2", s(1), t0);
    assert_eq!(route_one(&mut acd, 2, t0), vec!["s1"]);
}

#[test]
fn random_is_seeded_and_stays_in_the_best_tier() {
    let mut agents = seats(6, "q");
    agents.push(agent("low", &[("q", 2)], &[]));
    let run = |seed: u64| {
        let (mut acd, now) = setup(json!({ "strategy": "Random", "wrapUpSeconds": 0 }), &agents);
        acd.rng = StdRng::seed_from_u64(seed);
        let mut picks = Vec::new();
        for call in 1..=30 {
            let seat = route_one(&mut acd, call, now).remove(0);
            serve(&mut acd, call, &seat, s(1), now);
            picks.push(seat);
        }
        picks
    };
    let a = run(42);
    assert_eq!(a, run(42), "same seed, same picks");
    assert!(
        !a.contains(&"low".to_string()),
        "tier 2 never while tier 1 is Ready"
    );
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert!(distinct.len() > 2, "random spreads calls: {a:?}");
}

#[test]
fn linear_always_from_the_top() {
    let agents = vec![
        agent("s1", &[("q", 2)], &[]),
        agent("s2", &[("q", 1)], &[]),
        agent("s3", &[("q", 1)], &[]),
    ];
    let (mut acd, now) = setup(json!({ "strategy": "Linear", "wrapUpSeconds": 0 }), &agents);
    for call in 1..=3 {
        assert_eq!(route_one(&mut acd, call, now), vec!["s2"]);
        serve(&mut acd, call, "s2", s(1), now);
    }
    acd.enqueue(4, "q", caller(""), now).unwrap();
    acd.enqueue(5, "q", caller(""), now).unwrap();
    acd.enqueue(6, "q", caller(""), now).unwrap();
    let offers = acd.next_offers(now);
    let got: Vec<_> = offers
        .iter()
        .map(|o| (o.call, o.agents[0].as_str()))
        .collect();
    assert_eq!(got, vec![(4, "s2"), (5, "s3"), (6, "s1")]);
}

#[test]
fn skill_weighted_prefers_the_best_proficiency() {
    let agents = vec![
        agent("s1", &[("q", 1)], &[("billing", 2), ("mandarin", 2)]),
        agent("s2", &[("q", 1)], &[("billing", 5), ("mandarin", 3)]),
        agent("s3", &[("q", 1)], &[("billing", 4), ("mandarin", 3)]),
        agent("s4", &[("q", 2)], &[("billing", 5), ("mandarin", 5)]),
    ];
    let queue = json!({
        "strategy": "SkillWeighted",
        "wrapUpSeconds": 0,
        "requiredSkills": [{ "name": "billing" }, { "name": "mandarin" }],
    });
    let (mut acd, now) = setup(queue, &agents);
    acd.enqueue(1, "q", caller(""), now).unwrap();
    acd.enqueue(2, "q", caller(""), now).unwrap();
    acd.enqueue(3, "q", caller(""), now).unwrap();
    acd.enqueue(4, "q", caller(""), now).unwrap();
    let got: Vec<_> = acd
        .next_offers(now)
        .into_iter()
        .map(|o| o.agents[0].clone())
        .collect();
    // Tier first (s4 is the best but tier 2), then the score 8 > 7 > 4.
    assert_eq!(got, vec!["s2", "s3", "s1", "s4"]);
}

#[test]
fn tiers_come_first_for_longest_idle() {
    let agents = vec![agent("s1", &[("q", 2)], &[]), agent("s2", &[("q", 1)], &[])];
    let (mut acd, now) = setup(json!({}), &agents);
    // s1 is idle longest but tier 2.
    assert_eq!(route_one(&mut acd, 1, now), vec!["s2"]);
    assert_eq!(route_one(&mut acd, 2, now), vec!["s1"]);
}

#[test]
fn required_skills_and_relax_steps() {
    let agents = vec![
        agent("novice", &[("q", 1)], &[("billing", 2)]),
        agent("none", &[("q", 1)], &[]),
    ];
    let queue = json!({
        "requiredSkills": [{ "name": "billing", "minProficiency": 4 }],
        "overflow": [
            { "afterSeconds": 30, "action": "RelaxSkills", "minProficiency": 2 },
            { "afterSeconds": 60, "action": "RelaxSkills" },
        ],
        "maxWaitSeconds": 600,
    });
    let (mut acd, now) = setup(queue, &agents);
    acd.enqueue(1, "q", caller(""), now).unwrap();
    assert!(acd.next_offers(now).is_empty(), "nobody has billing 4");
    assert_eq!(acd.next_wake(), Some(now + s(30)));
    assert_eq!(
        acd.tick(now + s(30)),
        vec![QueueEvent::SkillsRelaxed {
            call: 1,
            queue: "q".into(),
            min_proficiency: Some(2)
        }]
    );
    let offers = acd.next_offers(now + s(30));
    assert_eq!(offers[0].agents, vec!["novice"]);
    // Declined: the caller keeps waiting; at 60 s the requirement is dropped.
    acd.offer_failed(1, "novice", OfferFailure::Declined, now + s(31));
    assert_eq!(state(&acd, "novice"), AgentState::Ready);
    assert!(
        acd.next_offers(now + s(31)).is_empty(),
        "not re-offered to who declined"
    );
    assert_eq!(
        acd.tick(now + s(60)),
        vec![QueueEvent::SkillsRelaxed {
            call: 1,
            queue: "q".into(),
            min_proficiency: None
        }]
    );
    let offers = acd.next_offers(now + s(60));
    assert_eq!(offers[0].agents, vec!["none"]);
    // A new caller still needs billing 4.
    acd.enqueue(2, "q", caller(""), now + s(61)).unwrap();
    assert!(acd.next_offers(now + s(61)).is_empty());
}

#[test]
fn queue_priority_then_boost_then_wait() {
    let t0 = Instant::now();
    let mut acd = Acd::new(1);
    acd.configure(
        &[
            (
                "low".into(),
                spec(json!({ "priority": 1, "wrapUpSeconds": 0 })),
            ),
            (
                "high".into(),
                spec(json!({ "priority": 9, "wrapUpSeconds": 0 })),
            ),
        ],
        &[agent("s1", &[("low", 1), ("high", 1)], &[])],
        t0,
    );
    acd.enqueue(1, "low", caller(""), t0).unwrap();
    acd.enqueue(2, "high", caller(""), t0 + s(1)).unwrap();
    acd.enqueue(3, "high", boosted(5), t0 + s(2)).unwrap();
    acd.enqueue(4, "low", boosted(50), t0 + s(3)).unwrap();
    assert_eq!(acd.position(3), Some(("high".into(), 1)));
    assert_eq!(acd.position(2), Some(("high".into(), 2)));
    acd.set_agent_state("s1", AgentRequest::Login, t0 + s(5))
        .unwrap();
    let mut order = Vec::new();
    for i in 0..4 {
        let now = t0 + s(10 + i);
        let offers = acd.next_offers(now);
        assert_eq!(offers.len(), 1);
        order.push(offers[0].call);
        serve(&mut acd, offers[0].call, "s1", s(1), now);
    }
    assert_eq!(order, vec![3, 2, 4, 1]);
}

#[test]
fn overflow_steps_in_order_keep_the_wait_time() {
    let t0 = Instant::now();
    let mut acd = Acd::new(1);
    let first = spec(json!({
        "maxWaitSeconds": 300,
        "overflow": [
            { "afterSeconds": 20, "action": "RelaxSkills", "minProficiency": 1 },
            { "afterSeconds": 40, "action": "Queue", "queue": "backup" },
        ],
    }));
    let backup = spec(json!({
        "maxWaitSeconds": 100,
        "overflow": [{ "afterSeconds": 50, "action": "Voicemail" }],
    }));
    acd.configure(
        &[("first".into(), first), ("backup".into(), backup)],
        &[agent("b1", &[("backup", 1)], &[])],
        t0,
    );
    acd.set_agent_state("b1", AgentRequest::Login, t0).unwrap();
    acd.set_agent_state("b1", AgentRequest::NotReady("b".into()), t0)
        .unwrap();
    // A caller already waiting in backup since t0+30.
    acd.enqueue(2, "backup", caller(""), t0 + s(30)).unwrap();
    acd.enqueue(1, "first", caller(""), t0).unwrap();
    assert!(matches!(
        acd.tick(t0 + s(20))[..],
        [QueueEvent::SkillsRelaxed { call: 1, .. }]
    ));
    assert_eq!(
        acd.tick(t0 + s(40)),
        vec![QueueEvent::Overflowed {
            call: 1,
            from: "first".into(),
            to: "backup".into()
        }]
    );
    // Call 1 keeps its enqueue time t0: ahead of call 2.
    assert_eq!(acd.position(1), Some(("backup".into(), 1)));
    assert_eq!(acd.position(2), Some(("backup".into(), 2)));
    // Backup's steps count from the move: voicemail at 40+50 for call 1, 30+50 for call 2.
    assert_eq!(
        acd.tick(t0 + s(80)),
        vec![QueueEvent::ToVoicemail {
            call: 2,
            queue: "backup".into()
        }]
    );
    assert_eq!(
        acd.tick(t0 + s(90)),
        vec![QueueEvent::ToVoicemail {
            call: 1,
            queue: "backup".into()
        }]
    );
    assert_eq!(acd.position(1), None);
    assert_eq!(acd.next_wake(), None);
}

#[test]
fn max_wait() {
    let t0 = Instant::now();
    let mut acd = Acd::new(1);
    acd.configure(
        &[
            ("plain".into(), spec(json!({ "maxWaitSeconds": 60 }))),
            (
                "tovm".into(),
                spec(json!({
                    "maxWaitSeconds": 60,
                    "overflow": [
                        { "afterSeconds": 10, "action": "RelaxSkills" },
                        { "afterSeconds": 600, "action": "Voicemail" },
                    ],
                })),
            ),
        ],
        &[],
        t0,
    );
    acd.enqueue(1, "plain", caller(""), t0).unwrap();
    acd.enqueue(2, "tovm", caller(""), t0).unwrap();
    assert_eq!(acd.tick(t0 + s(10)).len(), 1);
    assert!(acd.tick(t0 + s(59)).is_empty());
    let mut events = acd.tick(t0 + s(60));
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        events,
        vec![
            QueueEvent::MaxWaitReached {
                call: 1,
                queue: "plain".into()
            },
            QueueEvent::ToVoicemail {
                call: 2,
                queue: "tovm".into()
            },
        ]
    );
}

#[test]
fn ring_timeout_and_offer_failures() {
    let (mut acd, now) = setup(
        json!({ "ringTimeoutSeconds": 15, "wrapUpSeconds": 0 }),
        &seats(4, "q"),
    );
    let offer = {
        acd.enqueue(1, "q", caller(""), now).unwrap();
        acd.next_offers(now).remove(0)
    };
    assert_eq!(
        (offer.agents.clone(), offer.ring_timeout),
        (vec!["s1".into()], s(15))
    );
    assert_eq!(acd.next_wake(), Some(now + s(15)));
    // Ring timeout in tick: NotReady("no-answer"), the caller goes to the next agent.
    assert_eq!(
        acd.tick(now + s(15)),
        vec![QueueEvent::RingNoAnswer {
            call: 1,
            seat: "s1".into()
        }]
    );
    let st = acd.agent("s1").unwrap();
    assert_eq!(
        (st.state, st.reason.as_deref()),
        (AgentState::NotReady, Some(NO_ANSWER_REASON))
    );
    assert_eq!(acd.next_offers(now + s(15))[0].agents, vec!["s2"]);
    // 480 from the phone: same, via offer_failed; a late duplicate report is ignored.
    acd.offer_failed(1, "s2", OfferFailure::NoAnswer, now + s(16));
    acd.offer_failed(1, "s2", OfferFailure::Unreachable, now + s(16));
    assert_eq!(
        acd.agent("s2").unwrap().reason.as_deref(),
        Some(NO_ANSWER_REASON)
    );
    assert_eq!(acd.next_offers(now + s(16))[0].agents, vec!["s3"]);
    acd.offer_failed(1, "s3", OfferFailure::Unreachable, now + s(17));
    let st = acd.agent("s3").unwrap();
    assert_eq!(
        (st.state, st.reason.as_deref()),
        (AgentState::NotReady, Some(UNREACHABLE_REASON))
    );
    assert_eq!(acd.next_offers(now + s(17))[0].agents, vec!["s4"]);
    // The caller kept its place all along.
    assert_eq!(acd.position(1), Some(("q".into(), 1)));
    assert!(acd.offer_answered(1, "s4", now + s(18)).is_empty());
    assert_eq!(acd.position(1), None);
    // Only the overflow/max-wait timers of nobody and no ring timer remain.
    assert_eq!(acd.next_wake(), None);
}

#[test]
fn declined_agent_takes_the_next_caller() {
    let (mut acd, now) = setup(json!({}), &seats(1, "q"));
    acd.enqueue(1, "q", caller(""), now).unwrap();
    acd.enqueue(2, "q", caller(""), now + s(1)).unwrap();
    assert_eq!(acd.next_offers(now + s(1))[0].call, 1);
    acd.offer_failed(1, "s1", OfferFailure::Declined, now + s(2));
    let offers = acd.next_offers(now + s(2));
    assert_eq!(
        (offers[0].call, offers[0].agents.clone()),
        (2, vec!["s1".into()])
    );
}

#[test]
fn abandon_while_ringing_releases_the_agents() {
    let (mut acd, now) = setup(json!({ "strategy": "RingAll" }), &seats(2, "q"));
    route_one(&mut acd, 1, now);
    let mut stopped = acd.abandon(1, now + s(1));
    stopped.sort();
    assert_eq!(stopped, vec!["s1", "s2"]);
    assert_eq!(state(&acd, "s1"), AgentState::Ready);
    assert_eq!(acd.next_wake(), None);
    assert!(acd.abandon(1, now).is_empty());
    // Abandon while waiting.
    acd.set_agent_state("s1", AgentRequest::NotReady("b".into()), now)
        .unwrap();
    acd.set_agent_state("s2", AgentRequest::NotReady("b".into()), now)
        .unwrap();
    acd.enqueue(2, "q", caller(""), now).unwrap();
    assert!(acd.abandon(2, now).is_empty());
    assert_eq!(acd.queue_snapshot("q", now).unwrap().waiting, 0);
}

#[test]
fn sticky_agent() {
    let queue = json!({ "stickyAgentMinutes": 10, "wrapUpSeconds": 0 });
    let (mut acd, now) = setup(queue, &seats(3, "q"));
    acd.enqueue(1, "q", caller("+15550001"), now).unwrap();
    assert_eq!(acd.next_offers(now)[0].agents, vec!["s1"]);
    serve(&mut acd, 1, "s1", s(60), now + s(60));
    // Within 10 minutes the same number goes to s1 although s2 is idle longer.
    acd.enqueue(2, "q", caller("+15550001"), now + s(120))
        .unwrap();
    assert_eq!(acd.next_offers(now + s(120))[0].agents, vec!["s1"]);
    serve(&mut acd, 2, "s1", s(10), now + s(130));
    // Another number: normal routing.
    acd.enqueue(3, "q", caller("+15550002"), now + s(131))
        .unwrap();
    assert_eq!(acd.next_offers(now + s(131))[0].agents, vec!["s2"]);
    // s1 not Ready: normal routing.
    acd.set_agent_state("s1", AgentRequest::NotReady("b".into()), now + s(132))
        .unwrap();
    acd.enqueue(4, "q", caller("+15550001"), now + s(133))
        .unwrap();
    assert_eq!(acd.next_offers(now + s(133))[0].agents, vec!["s3"]);
    // After 10 minutes the memory is gone.
    acd.set_agent_state("s1", AgentRequest::Ready, now + s(134))
        .unwrap();
    acd.set_agent_state("s3", AgentRequest::NotReady("b".into()), now + s(134))
        .unwrap();
    acd.offer_answered(3, "s2", now + s(134));
    acd.abandon(4, now + s(134));
    acd.set_agent_state("s3", AgentRequest::Ready, now + s(135))
        .unwrap();
    acd.call_ended("s2", s(1), now + s(136));
    acd.enqueue(5, "q", caller("+15550001"), now + s(130 + 601))
        .unwrap();
    assert_eq!(
        acd.next_offers(now + s(130 + 601))[0].agents,
        vec!["s1"],
        "longest idle now"
    );
    // s1 is longest idle there anyway; here the expired memory is what matters:
    serve(&mut acd, 5, "s1", s(1), now + s(732));
    acd.enqueue(6, "q", caller("+15550001"), now + s(732 + 601))
        .unwrap();
    assert_eq!(acd.next_offers(now + s(732 + 601))[0].agents, vec!["s3"]);
}

#[test]
fn configure_keeps_states_and_callers() {
    let t0 = Instant::now();
    let mut acd = Acd::new(1);
    let queues = vec![
        ("a".to_string(), spec(json!({}))),
        ("b".to_string(), spec(json!({}))),
    ];
    acd.configure(
        &queues,
        &[agent("s1", &[("a", 1)], &[]), agent("s2", &[("b", 1)], &[])],
        t0,
    );
    acd.set_agent_state("s1", AgentRequest::Login, t0).unwrap();
    acd.set_agent_state("s1", AgentRequest::NotReady("b".into()), t0)
        .unwrap();
    acd.set_agent_state("s2", AgentRequest::Login, t0).unwrap();
    acd.enqueue(1, "a", caller(""), t0).unwrap();
    acd.enqueue(2, "a", caller(""), t0 + s(1)).unwrap();
    acd.enqueue(3, "b", caller(""), t0 + s(2)).unwrap();
    assert_eq!(acd.next_offers(t0 + s(2))[0].agents, vec!["s2"]);
    // Queue b goes away (its ringing caller 3 leaves, s2 is Ready again); s2 joins a.
    let removed = acd.configure(
        &queues[..1],
        &[
            agent("s1", &[("a", 1)], &[]),
            agent("s2", &[("a", 1)], &[]),
            agent("s3", &[("a", 1)], &[]),
        ],
        t0 + s(3),
    );
    assert_eq!(removed, vec![3]);
    assert_eq!(state(&acd, "s1"), AgentState::NotReady);
    assert_eq!(state(&acd, "s2"), AgentState::Ready);
    assert_eq!(state(&acd, "s3"), AgentState::LoggedOut);
    assert_eq!(acd.position(2), Some(("a".into(), 2)));
    let offers = acd.next_offers(t0 + s(3));
    assert_eq!(
        (offers[0].call, offers[0].agents.clone()),
        (1, vec!["s2".into()])
    );
    let snap = acd.queue_snapshot("a", t0 + s(10)).unwrap();
    assert_eq!(snap.waiting, 2);
    assert_eq!(snap.offering, 1);
    assert_eq!(snap.longest_wait, s(10));
    assert_eq!(
        (
            snap.agents.logged_in,
            snap.agents.ringing,
            snap.agents.not_ready,
            snap.agents.ready
        ),
        (2, 1, 1, 0)
    );
    assert!(acd.queue_snapshot("b", t0).is_none());
}

#[test]
fn estimated_wait_uses_handle_time() {
    let (mut acd, now) = setup(json!({ "wrapUpSeconds": 0 }), &seats(2, "q"));
    route_one(&mut acd, 1, now);
    route_one(&mut acd, 2, now);
    acd.enqueue(3, "q", caller(""), now).unwrap();
    acd.enqueue(4, "q", caller(""), now).unwrap();
    // Default handle time, 2 working agents, call 4 is 4th (callers being offered count).
    assert_eq!(acd.estimated_wait(4, now), Some(DEFAULT_HANDLE_TIME * 2));
    acd.offer_answered(1, "s1", now);
    acd.call_ended("s1", s(100), now);
    assert_eq!(acd.snapshot_aht("q"), Some(s(100)));
    // s1 took call 3 at once; call 4 is 3rd now: 3 × 100 s ÷ 2.
    acd.next_offers(now);
    assert_eq!(acd.position(4), Some(("q".into(), 3)));
    assert_eq!(acd.estimated_wait(4, now), Some(s(150)));
    assert_eq!(acd.estimated_wait(99, now), None);
}

impl Acd {
    fn snapshot_aht(&self, queue: &str) -> Option<Duration> {
        self.queue_snapshot(queue, Instant::now())?
            .average_handle_time
    }
}

#[test]
fn logout_while_ringing_applies_when_the_offer_fails() {
    let (mut acd, now) = setup(json!({}), &seats(2, "q"));
    assert_eq!(route_one(&mut acd, 1, now), vec!["s1"]);
    acd.registration_lost("s1", now + s(1));
    assert_eq!(state(&acd, "s1"), AgentState::Ringing);
    acd.offer_failed(1, "s1", OfferFailure::Unreachable, now + s(2));
    assert_eq!(state(&acd, "s1"), AgentState::LoggedOut);
    // The caller goes on to s2; registration lost while Busy logs out after the call.
    assert_eq!(acd.next_offers(now + s(2))[0].agents, vec!["s2"]);
    acd.offer_answered(1, "s2", now + s(3));
    acd.registration_lost("s2", now + s(4));
    assert_eq!(state(&acd, "s2"), AgentState::Busy);
    acd.call_ended("s2", s(1), now + s(5));
    assert_eq!(state(&acd, "s2"), AgentState::LoggedOut);
}

#[test]
fn next_wake_follows_the_earliest_deadline() {
    let queue = json!({
        "maxWaitSeconds": 90,
        "ringTimeoutSeconds": 20,
        "overflow": [{ "afterSeconds": 45, "action": "RelaxSkills", "minProficiency": 1 }],
    });
    let (mut acd, now) = setup(queue, &seats(1, "q"));
    acd.set_agent_state("s1", AgentRequest::NotReady("b".into()), now)
        .unwrap();
    assert_eq!(acd.next_wake(), None);
    acd.enqueue(1, "q", caller(""), now).unwrap();
    assert_eq!(acd.next_wake(), Some(now + s(45)));
    // While ringing only the ring timeout counts; overflow waits for the outcome.
    acd.set_agent_state("s1", AgentRequest::Ready, now + s(40))
        .unwrap();
    assert_eq!(acd.next_offers(now + s(40)).len(), 1);
    assert_eq!(acd.next_wake(), Some(now + s(60)));
    acd.offer_failed(1, "s1", OfferFailure::Declined, now + s(50));
    assert_eq!(
        acd.next_wake(),
        Some(now + s(45)),
        "overdue step: tick at once"
    );
    assert_eq!(acd.tick(now + s(50)).len(), 1);
    assert_eq!(acd.next_wake(), Some(now + s(90)));
}

#[test]
fn changed_agents_are_reported_once() {
    let (mut acd, now) = setup(json!({}), &seats(3, "q"));
    let mut all = acd.take_changed_agents();
    all.sort();
    assert_eq!(all, vec!["s1", "s2", "s3"]);
    assert!(acd.take_changed_agents().is_empty());
    route_one(&mut acd, 1, now);
    acd.offer_answered(1, "s1", now);
    assert_eq!(acd.take_changed_agents(), vec!["s1"]);
    acd.configure(&[("q".into(), spec(json!({})))], &seats(3, "q"), now);
    assert_eq!(acd.take_changed_agents().len(), 3);
    assert_eq!(state(&acd, "s1"), AgentState::Busy);
}

#[test]
fn a_phone_on_a_direct_call_gets_no_queue_call() {
    let (mut acd, now) = setup(json!({ "wrapUpSeconds": 30 }), &seats(2, "q"));
    // s1 (idle longest) takes a call from a colleague: Busy, so the caller goes to s2.
    acd.direct_call_started("s1", now);
    assert_eq!(state(&acd, "s1"), AgentState::Busy);
    assert_eq!(route_one(&mut acd, 1, now), vec!["s2"]);
    // A second direct call (a consultation) and the end of the first keep s1 Busy.
    acd.direct_call_started("s1", now);
    acd.direct_call_ended("s1", now + s(5));
    assert_eq!(state(&acd, "s1"), AgentState::Busy);
    // The end of a queue call is not the end of a direct one, and vice versa.
    acd.call_ended("s1", s(5), now + s(5));
    assert_eq!(state(&acd, "s1"), AgentState::Busy);
    // The last direct call ends: Ready at once (no wrap-up) and offered the next caller.
    acd.direct_call_ended("s1", now + s(10));
    assert_eq!(state(&acd, "s1"), AgentState::Ready);
    assert_eq!(route_one(&mut acd, 2, now + s(10)), vec!["s1"]);

    // A queue call's agent who also makes a direct call stays Busy after the queue call's
    // wrap-up until the direct call ends.
    assert!(acd.offer_answered(2, "s1", now + s(11)).is_empty());
    acd.direct_call_started("s1", now + s(12));
    acd.direct_call_ended("s1", now + s(13));
    assert_eq!(
        state(&acd, "s1"),
        AgentState::Busy,
        "the queue call goes on"
    );
    acd.direct_call_started("s1", now + s(14));
    acd.call_ended("s1", s(5), now + s(15));
    assert_eq!(state(&acd, "s1"), AgentState::WrapUp);
    acd.tick(now + s(45));
    assert_eq!(
        state(&acd, "s1"),
        AgentState::Busy,
        "wrap-up over, still on the phone"
    );
    acd.direct_call_ended("s1", now + s(50));
    assert_eq!(state(&acd, "s1"), AgentState::Ready);

    // A NotReady agent's direct call changes nothing, but Ready during it means Busy.
    acd.set_agent_state("s2", AgentRequest::NotReady("break".into()), now + s(60))
        .unwrap();
    acd.direct_call_started("s2", now + s(61));
    assert_eq!(state(&acd, "s2"), AgentState::NotReady);
    acd.set_agent_state("s2", AgentRequest::Ready, now + s(62))
        .unwrap();
    assert_eq!(state(&acd, "s2"), AgentState::Busy);
    acd.direct_call_ended("s2", now + s(63));
    assert_eq!(state(&acd, "s2"), AgentState::Ready);
    // Unknown seats and unmatched ends are ignored.
    acd.direct_call_started("nobody", now);
    acd.direct_call_ended("s2", now + s(64));
    assert_eq!(state(&acd, "s2"), AgentState::Ready);
}

#[test]
fn a_takeover_restores_agent_states_and_the_longest_idle_order() {
    let t0 = Instant::now();
    let mut acd = Acd::new(3);
    acd.configure(&[("q".into(), spec(json!({})))], &seats(5, "q"), t0);
    let now = t0 + s(600);
    // As the old active had them: s2 Ready longest, then s1; s3 paused; s4 on a call; s5
    // wrapping up for 20 s more.
    acd.restore_agent(
        "s2",
        AgentState::Ready,
        None,
        t0 + s(10),
        None,
        (4, s(300)),
        now,
    );
    acd.restore_agent(
        "s1",
        AgentState::Ready,
        None,
        t0 + s(20),
        None,
        (0, s(0)),
        now,
    );
    acd.restore_agent(
        "s3",
        AgentState::NotReady,
        Some("meal".into()),
        t0 + s(30),
        None,
        (0, s(0)),
        now,
    );
    acd.restore_agent(
        "s4",
        AgentState::Busy,
        None,
        t0 + s(40),
        None,
        (0, s(0)),
        now,
    );
    acd.restore_agent(
        "s5",
        AgentState::WrapUp,
        None,
        t0 + s(590),
        Some(now + s(20)),
        (0, s(0)),
        now,
    );
    acd.restore_agent("nobody", AgentState::Ready, None, t0, None, (0, s(0)), now);
    let s2 = acd.agent("s2").unwrap();
    assert_eq!(
        (s2.state, s2.since, s2.calls_today),
        (AgentState::Ready, t0 + s(10), 4)
    );
    let s3 = acd.agent("s3").unwrap();
    assert_eq!(
        (s3.state, s3.reason.as_deref()),
        (AgentState::NotReady, Some("meal"))
    );
    assert_eq!(
        state(&acd, "s4"),
        AgentState::Ready,
        "its call was the old node's"
    );
    assert_eq!(state(&acd, "s5"), AgentState::WrapUp);
    assert_eq!(acd.next_wake(), Some(now + s(20)));
    // Longest idle first: s2, then s1, then s4.
    assert_eq!(route_one(&mut acd, 1, now), vec!["s2"]);
    assert_eq!(route_one(&mut acd, 2, now), vec!["s1"]);
    assert_eq!(route_one(&mut acd, 3, now), vec!["s4"]);
    acd.tick(now + s(20));
    assert_eq!(
        state(&acd, "s5"),
        AgentState::Ready,
        "the wrap-up ends on time"
    );
}
