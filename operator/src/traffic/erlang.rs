//! Erlang B (blocked calls cleared: trunk channels) and Erlang C (blocked calls wait: agents).
//!
//! Everything goes through the recurrence `B(0) = 1, B(k) = A·B(k−1) / (k + A·B(k−1))`: every
//! term lies in [0, 1], so it neither overflows nor loses precision at thousands of channels,
//! where the textbook factorial formula gives `inf / inf`. Erlang C comes from B with
//! `C = n·B / (n − A·(1 − B))`. Invalid inputs are errors, never panics or NaN results.

use std::time::Duration;

/// Why a traffic calculation refused its inputs.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum TrafficError {
    /// Offered traffic must be a finite number of erlangs, zero or more.
    #[error("offered traffic must be finite and not negative, got {0} erlangs")]
    InvalidTraffic(f64),
    /// A call arrival rate must be finite, zero or more.
    #[error("call arrival rate must be finite and not negative, got {0} calls per hour")]
    InvalidArrivalRate(f64),
    /// Probabilities and service-level targets must lie in (0, 1].
    #[error("{name} must be above 0 and at most 1, got {value}")]
    InvalidProbability {
        /// Which argument, in telephony terms.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// The average handle time must be above zero.
    #[error("average handle time must be above zero")]
    ZeroHandleTime,
}

fn check_traffic(traffic_erlangs: f64) -> Result<f64, TrafficError> {
    if traffic_erlangs.is_finite() && traffic_erlangs >= 0.0 {
        Ok(traffic_erlangs)
    } else {
        Err(TrafficError::InvalidTraffic(traffic_erlangs))
    }
}

fn check_probability(name: &'static str, value: f64) -> Result<f64, TrafficError> {
    // `!(value > 0.0)` also rejects NaN.
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(TrafficError::InvalidProbability { name, value })
    }
}

fn check_handle_time(average_handle: Duration) -> Result<f64, TrafficError> {
    if average_handle.is_zero() {
        Err(TrafficError::ZeroHandleTime)
    } else {
        Ok(average_handle.as_secs_f64())
    }
}

/// One step of the Erlang B recurrence: `B(k)` from `B(k − 1)`.
fn next_b(traffic: f64, k: u32, previous: f64) -> f64 {
    let a_b = traffic * previous;
    // k ≥ 1, so the denominator is ≥ 1.
    a_b / (f64::from(k) + a_b)
}

/// Erlang C from Erlang B at the same `n` and `A`.
fn c_from_b(traffic: f64, agents: u32, b: f64) -> f64 {
    let n = f64::from(agents);
    if traffic >= n {
        // No steady state: the queue grows without bound, every call waits.
        return 1.0;
    }
    let c = n * b / (n - traffic * (1.0 - b));
    c.clamp(0.0, 1.0)
}

/// Probability that a call finds all `channels` busy and is refused (grade of service), for
/// `traffic_erlangs` of offered traffic.
pub fn erlang_b(traffic_erlangs: f64, channels: u32) -> Result<f64, TrafficError> {
    let traffic = check_traffic(traffic_erlangs)?;
    let mut b = 1.0;
    for k in 1..=channels {
        b = next_b(traffic, k, b);
        if b == 0.0 {
            break;
        }
    }
    Ok(b)
}

/// Probability that a call has to wait for one of `agents` (Erlang C), for `traffic_erlangs`
/// of offered traffic. 1 when the agents cannot keep up (`A ≥ n`).
pub fn erlang_c(traffic_erlangs: f64, agents: u32) -> Result<f64, TrafficError> {
    let b = erlang_b(traffic_erlangs, agents)?;
    Ok(c_from_b(traffic_erlangs, agents, b))
}

/// The fewest channels whose blocking probability is at most `target_blocking`, or `None` when
/// more than `max_channels` would be needed.
pub fn channels_for_blocking(
    traffic_erlangs: f64,
    target_blocking: f64,
    max_channels: u32,
) -> Result<Option<u32>, TrafficError> {
    let traffic = check_traffic(traffic_erlangs)?;
    let target = check_probability("target blocking probability", target_blocking)?;
    let mut b = 1.0;
    for n in 0..=max_channels {
        if n > 0 {
            b = next_b(traffic, n, b);
        }
        if b <= target {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Share of calls answered within `answer_within` by `agents` (Erlang C):
/// `1 − C·e^{−(n − A)·t / AHT}`; 0 when the agents cannot keep up.
pub fn service_level(
    traffic_erlangs: f64,
    agents: u32,
    answer_within: Duration,
    average_handle: Duration,
) -> Result<f64, TrafficError> {
    let aht = check_handle_time(average_handle)?;
    let c = erlang_c(traffic_erlangs, agents)?;
    Ok(service_level_from_c(
        traffic_erlangs,
        agents,
        c,
        answer_within.as_secs_f64(),
        aht,
    ))
}

fn service_level_from_c(traffic: f64, agents: u32, c: f64, within: f64, aht: f64) -> f64 {
    let n = f64::from(agents);
    if traffic >= n {
        return 0.0;
    }
    (1.0 - c * (-(n - traffic) * within / aht).exp()).clamp(0.0, 1.0)
}

/// Mean wait before an agent answers (ASA), over all calls: `C·AHT / (n − A)`. `None` when the
/// agents cannot keep up and the wait grows without bound.
pub fn average_speed_of_answer(
    traffic_erlangs: f64,
    agents: u32,
    average_handle: Duration,
) -> Result<Option<Duration>, TrafficError> {
    let aht = check_handle_time(average_handle)?;
    let c = erlang_c(traffic_erlangs, agents)?;
    let n = f64::from(agents);
    if traffic_erlangs >= n {
        return Ok(None);
    }
    Ok(Duration::try_from_secs_f64(c * aht / (n - traffic_erlangs)).ok())
}

/// Offered traffic in erlangs of `calls_per_hour` calls lasting `average_handle` each.
pub fn offered_erlangs(calls_per_hour: f64, average_handle: Duration) -> Result<f64, TrafficError> {
    if !(calls_per_hour.is_finite() && calls_per_hour >= 0.0) {
        return Err(TrafficError::InvalidArrivalRate(calls_per_hour));
    }
    let aht = check_handle_time(average_handle)?;
    check_traffic(calls_per_hour * aht / 3600.0)
}

/// The fewest agents that answer at least `target_fraction` of calls within `answer_within`
/// (for example 0.8 within 20 s), or `None` when more than `max_agents` would be needed.
pub fn agents_for_service_level(
    calls_per_hour: f64,
    average_handle: Duration,
    target_fraction: f64,
    answer_within: Duration,
    max_agents: u32,
) -> Result<Option<u32>, TrafficError> {
    let traffic = offered_erlangs(calls_per_hour, average_handle)?;
    let target = check_probability("service-level target", target_fraction)?;
    let aht = check_handle_time(average_handle)?;
    let within = answer_within.as_secs_f64();
    let mut b = 1.0;
    for n in 0..=max_agents {
        if n > 0 {
            b = next_b(traffic, n, b);
        }
        let c = c_from_b(traffic, n, b);
        if service_level_from_c(traffic, n, c, within, aht) >= target {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Erlang B by direct summation, `(Aⁿ/n!) / Σₖ Aᵏ/k!`, as an independent check for small n.
    fn erlang_b_direct(a: f64, n: u32) -> f64 {
        let mut term = 1.0;
        let mut sum = 1.0;
        for k in 1..=n {
            term *= a / f64::from(k);
            sum += term;
        }
        term / sum
    }

    /// Erlang C by its textbook formula with direct sums, for small n.
    fn erlang_c_direct(a: f64, n: u32) -> f64 {
        let mut term = 1.0;
        let mut sum = 0.0;
        for k in 0..n {
            if k > 0 {
                term *= a / f64::from(k);
            }
            sum += term;
        }
        let top = term * a / f64::from(n) * f64::from(n) / (f64::from(n) - a);
        top / (sum + top)
    }

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance
    }

    #[test]
    fn erlang_b_matches_published_tables() {
        // Erlang B table (traffic in erlangs for a grade of service, by number of channels),
        // as printed in the ITU-T teletraffic engineering handbook and the usual Erlang B
        // tables: 1 % blocking at 5 channels = 1.361 E, 10 = 4.461 E, 20 = 12.031 E,
        // 30 = 20.337 E, 50 = 37.901 E, 100 = 84.064 E; 2 % at 10 channels = 5.084 E.
        for (traffic, channels, gos) in [
            (1.361, 5, 0.01),
            (4.461, 10, 0.01),
            (12.031, 20, 0.01),
            (20.337, 30, 0.01),
            (37.901, 50, 0.01),
            (84.064, 100, 0.01),
            (5.084, 10, 0.02),
        ] {
            let b = erlang_b(traffic, channels).expect("valid");
            assert!(
                close(b, gos, 0.0002),
                "B({traffic}, {channels}) = {b}, table says {gos}"
            );
        }
        // Worked examples: 2 E on 5 channels blocks 3.67 %, 10 E on 15 channels 3.65 %.
        assert!(close(erlang_b(2.0, 5).expect("valid"), 0.0367, 0.00005));
        assert!(close(erlang_b(10.0, 15).expect("valid"), 0.0365, 0.00005));
        // 100 E on 117 channels: 0.98 % (the 1 % column lists 117 channels for 100 E).
        assert!(close(erlang_b(100.0, 117).expect("valid"), 0.0098, 0.00005));
    }

    #[test]
    fn erlang_b_matches_direct_summation() {
        for n in 0..=60 {
            for a in [0.0, 0.1, 0.5, 1.0, 2.5, 7.0, 15.0, 30.0, 55.0] {
                let b = erlang_b(a, n).expect("valid");
                let direct = erlang_b_direct(a, n);
                assert!(
                    close(b, direct, 1e-12),
                    "B({a}, {n}) = {b}, direct {direct}"
                );
            }
        }
    }

    #[test]
    fn erlang_c_matches_published_example() {
        // The standard worked example (10 E offered, e.g. 200 calls an hour of 3 minutes):
        // probability of waiting with 11..14 agents.
        for (agents, expected) in [(11, 0.6821), (12, 0.4494), (13, 0.2853), (14, 0.1741)] {
            let c = erlang_c(10.0, agents).expect("valid");
            assert!(
                close(c, expected, 0.00005),
                "C(10, {agents}) = {c}, published {expected}"
            );
            assert!(close(c, erlang_c_direct(10.0, agents), 1e-12));
        }
    }

    #[test]
    fn service_level_and_speed_of_answer_match_worked_example() {
        // Same example with 180 s handle time and an 80/20 target: 11 agents answer 39.0 %
        // within 20 s, 12 → 64.0 %, 13 → 79.6 %, 14 → 88.8 %, so 14 agents meet 80/20 with an
        // ASA of 7.8 s (the figures the worked example publishes).
        let aht = Duration::from_secs(180);
        let within = Duration::from_secs(20);
        for (agents, expected) in [(11, 0.3896), (12, 0.6402), (13, 0.7956), (14, 0.8884)] {
            let sl = service_level(10.0, agents, within, aht).expect("valid");
            assert!(
                close(sl, expected, 0.0005),
                "SL(10 E, {agents}) = {sl}, expected {expected}"
            );
        }
        let asa = average_speed_of_answer(10.0, 14, aht)
            .expect("valid")
            .expect("stable queue");
        assert!(close(asa.as_secs_f64(), 7.8, 0.05), "ASA {asa:?}");
        // 200 calls an hour of 180 s = 10 E; 80 % within 20 s needs 14 agents.
        assert_eq!(
            agents_for_service_level(200.0, aht, 0.8, within, 100),
            Ok(Some(14))
        );
        assert_eq!(
            agents_for_service_level(200.0, aht, 0.8, within, 13),
            Ok(None)
        );
    }

    #[test]
    fn overloaded_queue_never_answers() {
        let aht = Duration::from_secs(60);
        assert_eq!(erlang_c(10.0, 10), Ok(1.0));
        assert_eq!(erlang_c(12.0, 10), Ok(1.0));
        assert_eq!(
            service_level(12.0, 10, Duration::from_secs(20), aht),
            Ok(0.0)
        );
        assert_eq!(average_speed_of_answer(10.0, 10, aht), Ok(None));
    }

    #[test]
    fn channels_for_blocking_uses_table_values() {
        // 20.337 E at 1 % needs 30 channels (one E1); a little more traffic needs 31.
        assert_eq!(channels_for_blocking(20.3, 0.01, 1000), Ok(Some(30)));
        assert_eq!(channels_for_blocking(20.4, 0.01, 1000), Ok(Some(31)));
        assert_eq!(channels_for_blocking(20.4, 0.01, 30), Ok(None));
        // No traffic: one channel already blocks nothing.
        assert_eq!(channels_for_blocking(0.0, 0.01, 10), Ok(Some(1)));
    }

    #[test]
    fn absurd_inputs_are_errors() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.0001] {
            // NaN ≠ NaN: match the variant rather than compare.
            assert!(matches!(
                erlang_b(bad, 5),
                Err(TrafficError::InvalidTraffic(_))
            ));
            assert!(erlang_c(bad, 5).is_err());
            assert!(channels_for_blocking(bad, 0.01, 10).is_err());
            assert!(channels_for_blocking(1.0, bad, 10).is_err());
            assert!(
                service_level(bad, 5, Duration::from_secs(20), Duration::from_secs(60)).is_err()
            );
            assert!(average_speed_of_answer(bad, 5, Duration::from_secs(60)).is_err());
            assert!(
                agents_for_service_level(bad, Duration::from_secs(60), 0.8, Duration::ZERO, 10)
                    .is_err()
            );
            assert!(
                agents_for_service_level(10.0, Duration::from_secs(60), bad, Duration::ZERO, 10)
                    .is_err()
            );
        }
        assert!(channels_for_blocking(1.0, 0.0, 10).is_err());
        assert!(channels_for_blocking(1.0, 1.5, 10).is_err());
        assert_eq!(
            service_level(1.0, 5, Duration::from_secs(20), Duration::ZERO),
            Err(TrafficError::ZeroHandleTime)
        );
        // Huge arrival rates overflow to infinite traffic: refused, not a hang or a panic.
        assert!(offered_erlangs(f64::MAX, Duration::from_secs(u64::MAX)).is_err());
    }

    #[test]
    fn large_trunks_stay_finite() {
        let b = erlang_b(9000.0, 10_000).expect("valid");
        assert!(b.is_finite() && (0.0..=1.0).contains(&b));
        let c = erlang_c(9000.0, 10_000).expect("valid");
        assert!(c.is_finite() && (0.0..=1.0).contains(&c));
        // At this load blocking falls off steeply around n ≈ A: 1 % needs 8,978 channels.
        let n = channels_for_blocking(9000.0, 0.01, 10_000)
            .expect("valid")
            .expect("within bounds");
        assert_eq!(n, 8978);
    }

    fn traffic() -> impl Strategy<Value = f64> {
        0.0..9000.0f64
    }

    proptest! {
        #[test]
        fn erlang_b_is_a_probability_decreasing_in_channels(a in traffic(), n in 0u32..2000) {
            let b = erlang_b(a, n).expect("valid");
            let b_next = erlang_b(a, n + 1).expect("valid");
            prop_assert!((0.0..=1.0).contains(&b));
            prop_assert!(b_next <= b);
        }

        #[test]
        fn erlang_b_increases_with_traffic(a in traffic(), more in 0.0..100.0f64, n in 0u32..2000) {
            let b = erlang_b(a, n).expect("valid");
            let b_more = erlang_b(a + more, n).expect("valid");
            prop_assert!(b_more >= b * (1.0 - 1e-12), "B({a},{n})={b} > B({},{n})={b_more}", a + more);
        }

        #[test]
        fn erlang_c_at_least_erlang_b(a in traffic(), n in 0u32..10_000) {
            let b = erlang_b(a, n).expect("valid");
            let c = erlang_c(a, n).expect("valid");
            prop_assert!((0.0..=1.0).contains(&c));
            prop_assert!(c >= b * (1.0 - 1e-12), "C={c} < B={b}");
        }

        #[test]
        fn stable_up_to_ten_thousand_channels(a in traffic(), n in 0u32..=10_000) {
            let b = erlang_b(a, n).expect("valid");
            let c = erlang_c(a, n).expect("valid");
            prop_assert!(b.is_finite() && (0.0..=1.0).contains(&b));
            prop_assert!(c.is_finite() && (0.0..=1.0).contains(&c));
            let sl = service_level(a, n, Duration::from_secs(20), Duration::from_secs(180))
                .expect("valid");
            prop_assert!(sl.is_finite() && (0.0..=1.0).contains(&sl));
        }

        #[test]
        fn channels_for_blocking_is_minimal(a in 0.0..500.0f64, target in 0.0001..0.5f64) {
            let n = channels_for_blocking(a, target, 10_000).expect("valid").expect("enough");
            prop_assert!(erlang_b(a, n).expect("valid") <= target);
            if n > 0 {
                prop_assert!(erlang_b(a, n - 1).expect("valid") > target);
            }
        }

        #[test]
        fn agents_for_service_level_is_minimal(
            calls_per_hour in 0.0..3000.0f64,
            aht_s in 10u64..900,
            target in 0.05..0.99f64,
            within_s in 0u64..120,
        ) {
            let aht = Duration::from_secs(aht_s);
            let within = Duration::from_secs(within_s);
            let n = agents_for_service_level(calls_per_hour, aht, target, within, 10_000)
                .expect("valid").expect("enough");
            let a = offered_erlangs(calls_per_hour, aht).expect("valid");
            prop_assert!(service_level(a, n, within, aht).expect("valid") >= target);
            if n > 0 {
                prop_assert!(service_level(a, n - 1, within, aht).expect("valid") < target);
            }
        }
    }
}
