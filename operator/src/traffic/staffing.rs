//! Queue staffing advice: how many agents a queue needs to meet its service-level target at
//! the measured load (Erlang C), for the queue status's `agentsRequired`.
//!
//! Inputs come straight from node measurements (calls in a window, handle time in seconds), so
//! anything absurd yields `None` rather than advice built on garbage, and so does a queue with
//! no calls: "0 agents required" would read as a recommendation to close it.

use std::time::Duration;

use switchboard_crds::common::ServiceLevelTarget;

use super::erlang::{
    agents_for_service_level, average_speed_of_answer, offered_erlangs, service_level,
};

/// What a queue needs to meet its target at the current load.
#[derive(Debug, Clone, PartialEq)]
pub struct StaffingAdvice {
    /// The fewest agents that meet the service-level target.
    pub agents_required: u32,
    /// Offered traffic, in erlangs (agents kept busy on average).
    pub offered_erlangs: f64,
    /// Share of calls answered within the threshold with `agents_required` agents.
    pub service_level: f64,
    /// Mean wait before an agent answers with `agents_required` agents.
    pub average_speed_of_answer: Duration,
    /// Share of their time the agents spend handling calls.
    pub occupancy: f64,
}

/// Call arrival rate, in calls per hour, of `calls_offered` calls in `window`. `None` for an
/// empty window.
pub fn calls_per_hour(calls_offered: u64, window: Duration) -> Option<f64> {
    if window.is_zero() {
        return None;
    }
    Some(calls_offered as f64 * 3600.0 / window.as_secs_f64())
}

/// Staffing advice for `calls_per_hour` calls of `average_handle_seconds` each (talk, hold and
/// wrap-up) against `target`, or `None` when there is no traffic, an input is absurd, or more
/// than `max_agents` would be needed.
pub fn advise(
    calls_per_hour: f64,
    average_handle_seconds: f64,
    target: &ServiceLevelTarget,
    max_agents: u32,
) -> Option<StaffingAdvice> {
    // Rejects NaN, infinite and negative handle times.
    let average_handle = Duration::try_from_secs_f64(average_handle_seconds).ok()?;
    let target_percent = target.target_percent;
    if !(target_percent > 0.0 && target_percent <= 100.0) {
        return None;
    }
    let answer_within = Duration::from_secs(u64::from(target.threshold_seconds));
    let traffic = offered_erlangs(calls_per_hour, average_handle).ok()?;
    if traffic == 0.0 {
        return None;
    }
    let agents = agents_for_service_level(
        calls_per_hour,
        average_handle,
        target_percent / 100.0,
        answer_within,
        max_agents,
    )
    .ok()??;
    Some(StaffingAdvice {
        agents_required: agents,
        offered_erlangs: traffic,
        service_level: service_level(traffic, agents, answer_within, average_handle).ok()?,
        // Meeting a target means the queue is stable (agents > traffic), so the wait is finite.
        average_speed_of_answer: average_speed_of_answer(traffic, agents, average_handle)
            .ok()??,
        occupancy: traffic / f64::from(agents),
    })
}

/// [`advise`] for `calls_offered` calls in a rolling `window`.
pub fn advise_for_window(
    calls_offered: u64,
    window: Duration,
    average_handle_seconds: f64,
    target: &ServiceLevelTarget,
    max_agents: u32,
) -> Option<StaffingAdvice> {
    advise(
        calls_per_hour(calls_offered, window)?,
        average_handle_seconds,
        target,
        max_agents,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(percent: f64, seconds: u32) -> ServiceLevelTarget {
        ServiceLevelTarget {
            target_percent: percent,
            threshold_seconds: seconds,
        }
    }

    #[test]
    fn worked_example_needs_fourteen_agents() {
        // The classic Erlang C example: 100 calls in 30 minutes, 180 s handle time, 80 % in
        // 20 s → 10 E, 14 agents, 88.8 % answered in time, ASA 7.8 s, occupancy 71 %.
        let advice = advise_for_window(
            100,
            Duration::from_secs(1800),
            180.0,
            &target(80.0, 20),
            500,
        )
        .expect("advice");
        assert_eq!(advice.agents_required, 14);
        assert!((advice.offered_erlangs - 10.0).abs() < 1e-9);
        assert!((advice.service_level - 0.8884).abs() < 0.0005);
        assert!((advice.average_speed_of_answer.as_secs_f64() - 7.84).abs() < 0.01);
        assert!((advice.occupancy - 10.0 / 14.0).abs() < 1e-9);
        // The center's default target (80/20) is the same as above.
        assert_eq!(
            advise(200.0, 180.0, &ServiceLevelTarget::default(), 500).map(|a| a.agents_required),
            Some(14)
        );
        // A stricter target needs more agents, a looser one fewer.
        let strict = advise(200.0, 180.0, &target(90.0, 10), 500).expect("advice");
        let loose = advise(200.0, 180.0, &target(50.0, 60), 500).expect("advice");
        assert!(strict.agents_required > 14 && loose.agents_required < 14);
    }

    #[test]
    fn no_traffic_or_absurd_inputs_give_no_advice() {
        let t = ServiceLevelTarget::default();
        assert_eq!(advise(0.0, 180.0, &t, 500), None);
        assert_eq!(
            advise_for_window(0, Duration::from_secs(900), 180.0, &t, 500),
            None
        );
        assert_eq!(advise_for_window(10, Duration::ZERO, 180.0, &t, 500), None);
        for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            assert_eq!(advise(200.0, bad, &t, 500), None, "handle time {bad}");
        }
        for bad in [f64::NAN, f64::INFINITY, -5.0] {
            assert_eq!(advise(bad, 180.0, &t, 500), None, "calls per hour {bad}");
        }
        for bad in [f64::NAN, 0.0, -10.0, 100.5] {
            assert_eq!(
                advise(200.0, 180.0, &target(bad, 20), 500),
                None,
                "target {bad}"
            );
        }
        // More agents than the cap allows.
        assert_eq!(advise(200.0, 180.0, &t, 13), None);
    }

    proptest! {
        #[test]
        fn advice_meets_the_target_with_the_fewest_agents(
            calls in 1u64..5000,
            window_s in 60u64..3600,
            aht in 5.0..1200.0f64,
            percent in 1.0..99.0f64,
            seconds in 1u32..600,
        ) {
            let t = target(percent, seconds);
            let window = Duration::from_secs(window_s);
            let advice = advise_for_window(calls, window, aht, &t, 100_000).expect("advice");
            let n = advice.agents_required;
            prop_assert!(advice.service_level >= percent / 100.0);
            prop_assert!(f64::from(n) > advice.offered_erlangs);
            prop_assert!(advice.occupancy > 0.0 && advice.occupancy < 1.0);
            let fewer = service_level(
                advice.offered_erlangs,
                n - 1,
                Duration::from_secs(u64::from(seconds)),
                Duration::from_secs_f64(aht),
            ).expect("valid");
            prop_assert!(fewer < percent / 100.0);
        }
    }
}
