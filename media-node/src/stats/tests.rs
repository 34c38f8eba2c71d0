//! Tests of the live statistics with a fixed clock.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use prometheus::{Encoder, Registry, TextEncoder};
use proptest::prelude::*;
use switchboard_crds::queue::AgentCounts;
use switchboard_crds::seat::AgentState;

use super::window::{local_date, start_of_day, window_start};
use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamps are RFC 3339")
        .with_timezone(&Utc)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn plus(at: DateTime<Utc>, s: u64) -> DateTime<Utc> {
    at + TimeDelta::seconds(i64::try_from(s).expect("small"))
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// The worked example of docs/statistics.md: threshold 20 s, ten calls.
fn worked_example(stats: &mut LiveStats, base: DateTime<Utc>) {
    stats.set_threshold("sales", secs(20));
    for i in 0..10 {
        stats.offered("sales", plus(base, i));
    }
    // Calls 0..=5 answered after 5, 10, 20, 25, 40 and 60 s.
    for (i, wait) in [(0, 5), (1, 10), (2, 20), (3, 25), (4, 40), (5, 60)] {
        stats.answered("sales", "1001", secs(wait), plus(base, i + wait));
    }
    // Calls 6..=8 abandoned after 3, 15 and 30 s; call 9 is still waiting.
    for (i, wait) in [(6, 3), (7, 15), (8, 30)] {
        stats.abandoned("sales", secs(wait), plus(base, i + wait));
    }
    // Two calls finished: 100 + 20 + 30 s and 200 + 0 + 10 s.
    stats.handled(
        "sales",
        "1001",
        secs(100),
        secs(20),
        secs(30),
        plus(base, 200),
    );
    stats.handled(
        "sales",
        "1001",
        secs(200),
        secs(0),
        secs(10),
        plus(base, 290),
    );
}

#[test]
fn worked_example_gives_every_queue_figure_in_both_windows() {
    let base = t("2026-05-04T10:00:00Z");
    let mut stats = LiveStats::new(Tz::UTC);
    worked_example(&mut stats, base);
    let now = plus(base, 300);
    for window in Window::ALL {
        let f = stats.queue("sales", window, now);
        assert_eq!(f.offered, 10, "{window:?}");
        assert_eq!(f.answered, 6);
        assert_eq!(
            f.answered_within_threshold, 3,
            "20 s is within a 20 s threshold"
        );
        assert_eq!(f.abandoned, 3);
        assert_eq!(f.abandoned_within_threshold, 2);
        assert_eq!(f.handled, 2);
        assert!(close(f.service_level_percent, 50.0), "{f:?}");
        assert!(close(f.service_level_all_percent, 500.0 / 9.0), "{f:?}");
        assert!(close(f.abandon_rate_percent, 30.0), "{f:?}");
        assert_eq!(
            f.average_speed_of_answer,
            Some(Duration::from_millis(26_666))
        );
        assert_eq!(f.average_handle_time, Some(secs(180)));
        assert_eq!(f.threshold, secs(20));
    }
}

#[test]
fn threshold_is_per_queue_and_defaults_to_twenty_seconds() {
    let at = t("2026-05-04T10:00:00Z");
    let mut stats = LiveStats::new(Tz::UTC);
    stats.set_threshold("support", secs(30));
    for queue in ["support", "sales"] {
        stats.offered(queue, at);
        stats.answered(queue, "1001", secs(25), plus(at, 25));
    }
    let now = plus(at, 60);
    let support = stats.queue("support", Window::Today, now);
    let sales = stats.queue("sales", Window::Today, now);
    assert_eq!(support.answered_within_threshold, 1);
    assert_eq!(sales.answered_within_threshold, 0);
    assert_eq!(sales.threshold, DEFAULT_THRESHOLD);
}

#[test]
fn nothing_to_divide_by_gives_none_not_zero() {
    let now = t("2026-05-04T10:00:00Z");
    let mut stats = LiveStats::new(Tz::UTC);
    let empty = stats.queue("sales", Window::Last15Minutes, now);
    assert_eq!(empty.offered, 0);
    assert_eq!(empty.service_level_percent, None);
    assert_eq!(empty.service_level_all_percent, None);
    assert_eq!(empty.abandon_rate_percent, None);
    assert_eq!(empty.average_speed_of_answer, None);
    assert_eq!(empty.average_handle_time, None);

    stats.offered("sales", now);
    let waiting = stats.queue("sales", Window::Last15Minutes, now);
    assert_eq!(waiting.abandon_rate_percent, Some(0.0));
    assert_eq!(waiting.service_level_percent, None);
    assert_eq!(waiting.service_level_all_percent, None);
    assert_eq!(waiting.average_speed_of_answer, None);

    // Only an abandon: definition 1 has nothing to divide by, definition 2 has.
    stats.abandoned("sales", secs(50), plus(now, 50));
    let abandoned = stats.queue("sales", Window::Today, plus(now, 60));
    assert_eq!(abandoned.service_level_percent, None);
    assert_eq!(abandoned.service_level_all_percent, Some(0.0));
    assert_eq!(abandoned.abandon_rate_percent, Some(100.0));

    assert_eq!(
        stats.agent("9999", Window::Today, now),
        AgentFigures::default()
    );
    stats.agent_state("1001", AgentState::NotReady, now);
    let paused = stats.agent("1001", Window::Today, plus(now, 60));
    assert_eq!(
        paused.occupancy_percent, None,
        "NotReady time is not in occupancy"
    );
    assert_eq!(paused.average_handle_time, None);
    assert_eq!(paused.time_in_state.not_ready, secs(60));
}

#[test]
fn the_window_slides_in_ten_second_steps_and_today_keeps_counting() {
    let at = t("2026-05-04T10:00:05Z");
    let mut stats = LiveStats::new(Tz::UTC);
    stats.offered("sales", at);
    let count = |now: &str, window| stats.queue("sales", window, t(now)).offered;
    assert_eq!(count("2026-05-04T10:14:00Z", Window::Last15Minutes), 1);
    // 14:54 old: its bucket (10:00:00–10:00:10) is still the oldest of the 90.
    assert_eq!(count("2026-05-04T10:14:59Z", Window::Last15Minutes), 1);
    assert_eq!(count("2026-05-04T10:15:00Z", Window::Last15Minutes), 0);
    assert_eq!(
        count("2026-05-04T10:16:05Z", Window::Last15Minutes),
        0,
        "16 minutes old"
    );
    assert_eq!(count("2026-05-04T10:16:05Z", Window::Today), 1);
    assert_eq!(
        window_start(t("2026-05-04T10:14:59Z")),
        t("2026-05-04T10:00:00Z")
    );
}

#[test]
fn answers_count_where_the_call_was_offered() {
    let at = t("2026-05-04T10:00:00Z");
    let mut stats = LiveStats::new(Tz::UTC);
    stats.offered("sales", at);
    // Answered 20 minutes later: the offer and the answer left the window together.
    stats.answered("sales", "1001", secs(1200), plus(at, 1200));
    let now = plus(at, 1210);
    let window = stats.queue("sales", Window::Last15Minutes, now);
    assert_eq!((window.offered, window.answered), (0, 0));
    let today = stats.queue("sales", Window::Today, now);
    assert_eq!((today.offered, today.answered), (1, 1));
    // The agent's answer counts when it happened.
    assert_eq!(
        stats
            .agent("1001", Window::Last15Minutes, now)
            .calls_answered,
        1
    );
}

#[test]
fn midnight_in_shanghai_starts_a_new_day() {
    let shanghai: Tz = "Asia/Shanghai".parse().expect("known zone");
    let mut stats = LiveStats::new(shanghai);
    // 23:59:50 and 00:00:10 local (UTC+8).
    stats.offered("sales", t("2026-05-04T15:59:50Z"));
    assert_eq!(
        stats
            .queue("sales", Window::Today, t("2026-05-04T15:59:55Z"))
            .offered,
        1
    );
    stats.offered("sales", t("2026-05-04T16:00:10Z"));
    // The first call is answered after midnight: it belongs to yesterday.
    stats.answered("sales", "1001", secs(20), t("2026-05-04T16:00:10Z"));
    let now = t("2026-05-04T16:00:20Z");
    let today = stats.queue("sales", Window::Today, now);
    assert_eq!((today.offered, today.answered), (1, 0));
    let window = stats.queue("sales", Window::Last15Minutes, now);
    assert_eq!((window.offered, window.answered), (2, 1));
    // Nothing new after midnight: today reads zero without an event to reset it.
    let mut quiet = LiveStats::new(shanghai);
    quiet.offered("sales", t("2026-05-04T15:00:00Z"));
    assert_eq!(
        quiet
            .queue("sales", Window::Today, t("2026-05-04T16:00:01Z"))
            .offered,
        0
    );

    // Time in state is cut at midnight too.
    stats.agent_state("1001", AgentState::Ready, t("2026-05-04T15:50:00Z"));
    let agent = |now: &str, window| stats.agent("1001", window, t(now)).time_in_state;
    assert_eq!(
        agent("2026-05-04T16:10:00Z", Window::Today).ready,
        secs(600)
    );
    assert_eq!(
        agent("2026-05-04T16:10:00Z", Window::Last15Minutes).ready,
        secs(890)
    );
    stats.agent_state("1001", AgentState::NotReady, t("2026-05-04T16:10:00Z"));
    let today = stats.agent("1001", Window::Today, t("2026-05-04T16:12:00Z"));
    assert_eq!(today.time_in_state.ready, secs(600));
    assert_eq!(today.time_in_state.not_ready, secs(120));
}

#[test]
fn midnight_in_new_york_follows_daylight_saving_time() {
    let new_york: Tz = "America/New_York".parse().expect("known zone");
    let day = |d| NaiveDate::from_ymd_opt(2026, 3, d).expect("valid date");
    // 8 March 2026 has 23 hours: EST midnight, then EDT midnight.
    assert_eq!(start_of_day(new_york, day(8)), t("2026-03-08T05:00:00Z"));
    assert_eq!(start_of_day(new_york, day(9)), t("2026-03-09T04:00:00Z"));

    let mut stats = LiveStats::new(new_york);
    stats.offered("sales", t("2026-03-09T03:59:00Z")); // 23:59 EDT, 8 March
    assert_eq!(
        stats
            .queue("sales", Window::Today, t("2026-03-09T03:59:30Z"))
            .offered,
        1
    );
    stats.offered("sales", t("2026-03-09T04:01:00Z")); // 00:01 EDT, 9 March
    assert_eq!(
        stats
            .queue("sales", Window::Today, t("2026-03-09T04:02:00Z"))
            .offered,
        1
    );

    // Ready from 23:00 EST on 7 March to 23:00 EDT on 8 March: 22 h of it on 8 March.
    stats.agent_state("1001", AgentState::Ready, t("2026-03-08T04:00:00Z"));
    stats.agent_state("1001", AgentState::NotReady, t("2026-03-09T03:00:00Z"));
    let today = stats.agent("1001", Window::Today, t("2026-03-09T03:30:00Z"));
    assert_eq!(today.time_in_state.ready, secs(22 * 3600));
    assert_eq!(today.time_in_state.not_ready, secs(1800));
    assert_eq!(today.occupancy_percent, Some(0.0));
}

#[test]
fn a_midnight_skipped_by_daylight_saving_starts_the_day_at_the_first_real_time() {
    // Chile moves its clocks forward at midnight: that day begins at 01:00.
    let santiago: Tz = "America/Santiago".parse().expect("known zone");
    let skipped: Vec<NaiveDate> = (0..366)
        .filter_map(|d| NaiveDate::from_ymd_opt(2026, 1, 1)?.checked_add_days(chrono::Days::new(d)))
        .filter(|d| {
            santiago
                .from_local_datetime(&d.and_time(NaiveTime::MIN))
                .earliest()
                .is_none()
        })
        .collect();
    assert!(
        !skipped.is_empty(),
        "the zone data has a skipped midnight in 2026"
    );
    for day in skipped {
        let start = start_of_day(santiago, day);
        assert_eq!(local_date(santiago, start), day);
        assert_eq!(
            start.with_timezone(&santiago).time(),
            NaiveTime::from_hms_opt(1, 0, 0).expect("valid")
        );
        assert!(local_date(santiago, start - TimeDelta::seconds(1)) < day);
    }
}

#[test]
fn late_events_of_yesterday_do_not_reopen_today() {
    let mut stats = LiveStats::new(Tz::UTC);
    stats.offered("sales", t("2026-05-05T00:00:05Z"));
    stats.offered("sales", t("2026-05-04T23:59:59Z"));
    let f = stats.queue("sales", Window::Today, t("2026-05-05T00:00:10Z"));
    assert_eq!(f.offered, 1);
    assert_eq!(
        stats
            .queue("sales", Window::Last15Minutes, t("2026-05-05T00:00:10Z"))
            .offered,
        2
    );
}

#[test]
fn agent_figures_time_in_state_and_occupancy() {
    let base = t("2026-05-04T10:00:00Z");
    let mut stats = LiveStats::new(Tz::UTC);
    let at = |s| plus(base, s);
    stats.agent_state("1001", AgentState::Ready, at(0));
    stats.agent_state("1001", AgentState::Ringing, at(60));
    stats.agent_state("1001", AgentState::Busy, at(70));
    stats.answered("sales", "1001", secs(30), at(70));
    stats.agent_state("1001", AgentState::WrapUp, at(310));
    stats.handled("sales", "1001", secs(200), secs(40), secs(60), at(370));
    stats.agent_state("1001", AgentState::Ready, at(370));
    stats.agent_state("1001", AgentState::NotReady, at(480));
    let now = at(600);
    for window in Window::ALL {
        let f = stats.agent("1001", window, now);
        assert_eq!(f.calls_answered, 1);
        assert_eq!(f.calls_handled, 1);
        assert_eq!(f.talk_time, secs(200));
        assert_eq!(f.handle_time, secs(300));
        assert_eq!(f.average_handle_time, Some(secs(300)));
        let s = f.time_in_state;
        assert_eq!(
            (s.ready, s.ringing, s.busy, s.wrap_up, s.not_ready),
            (secs(170), secs(10), secs(240), secs(60), secs(120)),
            "{window:?}"
        );
        // (240 + 60) / (170 + 10 + 240 + 60)
        assert!(close(f.occupancy_percent, 62.5), "{f:?}");
    }
    // Twenty minutes later only the NotReady time is inside the window.
    let later = stats.agent("1001", Window::Last15Minutes, at(1800));
    assert_eq!(later.calls_answered, 0);
    assert_eq!(later.time_in_state.ready, Duration::ZERO);
    assert_eq!(later.time_in_state.not_ready, secs(890));
    assert_eq!(later.occupancy_percent, None);
    assert_eq!(
        stats
            .agent("1001", Window::Today, at(1800))
            .time_in_state
            .not_ready,
        secs(1320)
    );
}

#[test]
fn memory_stays_bounded_and_forgotten_queues_are_gone() {
    let base = t("2026-05-04T08:00:00Z");
    let mut stats = LiveStats::new(Tz::UTC);
    for i in 0..(6 * 3600) {
        stats.offered("sales", plus(base, i));
    }
    assert!(stats.queue_buckets("sales") <= 90);
    let now = plus(base, 6 * 3600);
    assert_eq!(stats.queue("sales", Window::Today, now).offered, 6 * 3600);
    assert_eq!(
        stats.queue("sales", Window::Last15Minutes, now).offered,
        890
    );

    stats.set_threshold("sales", secs(5));
    stats.forget_queue("sales");
    assert_eq!(stats.queue("sales", Window::Today, now).offered, 0);
    assert_eq!(stats.threshold("sales"), DEFAULT_THRESHOLD);
    assert_eq!(stats.queue_names().count(), 0);
    stats.agent_state("1001", AgentState::Ready, now);
    stats.forget_seat("1001");
    assert_eq!(stats.seat_names().count(), 0);
}

#[test]
fn center_time_zone_defaults_to_utc() {
    assert_eq!(center_time_zone(None).expect("utc"), Tz::UTC);
    assert_eq!(
        center_time_zone(Some("Asia/Shanghai")).expect("known"),
        Tz::Asia__Shanghai
    );
    assert!(center_time_zone(Some("Mars/Olympus")).is_err());
}

// ---- property: the call life cycle never breaks the counts ----

#[derive(Clone, Debug)]
enum Outcome {
    Waiting,
    Abandoned {
        wait: u64,
    },
    Answered {
        wait: u64,
        talk: u64,
        hold: u64,
        wrap: u64,
    },
}

#[derive(Clone, Debug)]
enum Event {
    Offered(usize),
    Answered(usize, u64),
    Abandoned(usize, u64),
    Handled(usize, u64, u64, u64),
    Agent(AgentState),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Waiting),
        (0u64..1500).prop_map(|wait| Outcome::Abandoned { wait }),
        (0u64..1500, 0u64..900, 0u64..120, 0u64..300).prop_map(|(wait, talk, hold, wrap)| {
            Outcome::Answered {
                wait,
                talk,
                hold,
                wrap,
            }
        }),
    ]
}

fn agent_state() -> impl Strategy<Value = AgentState> {
    prop_oneof![
        Just(AgentState::LoggedOut),
        Just(AgentState::Ready),
        Just(AgentState::NotReady),
        Just(AgentState::Ringing),
        Just(AgentState::Busy),
        Just(AgentState::WrapUp),
    ]
}

fn check(stats: &LiveStats, now: DateTime<Utc>) -> Result<(), TestCaseError> {
    let in_range = |p: Option<f64>| p.is_none_or(|p| (0.0..=100.0).contains(&p));
    for queue in ["sales", "support"] {
        for window in Window::ALL {
            let f = stats.queue(queue, window, now);
            prop_assert!(
                f.offered >= f.answered + f.abandoned,
                "{queue} {window:?} {f:?}"
            );
            prop_assert!(f.answered_within_threshold <= f.answered);
            prop_assert!(f.abandoned_within_threshold <= f.abandoned);
            prop_assert!(in_range(f.service_level_percent), "{f:?}");
            prop_assert!(in_range(f.service_level_all_percent), "{f:?}");
            prop_assert!(in_range(f.abandon_rate_percent), "{f:?}");
        }
    }
    for window in Window::ALL {
        let a = stats.agent("1001", window, now);
        prop_assert!(in_range(a.occupancy_percent), "{a:?}");
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_call_life_cycle_keeps_offered_at_least_answered_plus_abandoned(
        calls in prop::collection::vec((0u64..14_400, 0usize..2, outcome()), 0..60),
        states in prop::collection::vec((0u64..14_400, agent_state()), 0..30),
        zone in prop_oneof![Just(Tz::Asia__Shanghai), Just(Tz::America__New_York), Just(Tz::UTC)],
        threshold in 0u64..60,
        tail in 0u64..3600,
    ) {
        // Two hours either side of midnight in Shanghai, and across a DST change.
        let base = t("2026-03-08T14:00:00Z");
        let mut events: Vec<(u64, Event)> = Vec::new();
        for (start, queue, outcome) in &calls {
            events.push((*start, Event::Offered(*queue)));
            match *outcome {
                Outcome::Waiting => {}
                Outcome::Abandoned { wait } => events.push((start + wait, Event::Abandoned(*queue, wait))),
                Outcome::Answered { wait, talk, hold, wrap } => {
                    events.push((start + wait, Event::Answered(*queue, wait)));
                    events.push((start + wait + talk + hold + wrap, Event::Handled(*queue, talk, hold, wrap)));
                }
            }
        }
        for (at, state) in &states {
            events.push((*at, Event::Agent(*state)));
        }
        // The ACD reports in time order; a stable sort keeps each call's own order.
        events.sort_by_key(|(at, _)| *at);

        let queues = ["sales", "support"];
        let mut stats = LiveStats::new(zone);
        stats.set_threshold("support", secs(threshold));
        let mut last = base;
        for (offset, event) in events {
            let at = plus(base, offset);
            match event {
                Event::Offered(q) => stats.offered(queues[q], at),
                Event::Answered(q, wait) => stats.answered(queues[q], "1001", secs(wait), at),
                Event::Abandoned(q, wait) => stats.abandoned(queues[q], secs(wait), at),
                Event::Handled(q, talk, hold, wrap) => {
                    stats.handled(queues[q], "1001", secs(talk), secs(hold), secs(wrap), at)
                }
                Event::Agent(state) => stats.agent_state("1001", state, at),
            }
            check(&stats, at)?;
            last = at;
        }
        check(&stats, plus(last, tail))?;
    }
}

// ---- metrics ----

fn exposition(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding");
    String::from_utf8(buffer).expect("utf-8")
}

#[test]
fn export_writes_the_text_exposition_and_removes_what_went_away() {
    let registry = Registry::new();
    let metrics = StatsMetrics::new(&registry).expect("register");
    let base = t("2026-05-04T10:00:00Z");
    let mut stats = LiveStats::new(Tz::UTC);
    worked_example(&mut stats, base);
    stats.offered("support", base);
    stats.agent_state("1001", AgentState::Busy, base);
    let now = plus(base, 300);
    let live = [QueueLive {
        queue: "sales".into(),
        waiting: 1,
        longest_wait: secs(291),
        agents_by_state: AgentCounts {
            logged_in: 2,
            ready: 1,
            busy: 1,
            ..AgentCounts::default()
        },
    }];
    let agents = [
        AgentLive {
            seat: "1001".into(),
            state: AgentState::Busy,
        },
        AgentLive {
            seat: "1002".into(),
            state: AgentState::Ready,
        },
    ];
    metrics.export(&stats, &live, &agents, now);
    let text = exposition(&registry);
    for line in [
        r#"switchboard_queue_calls_offered{queue="sales",window="15m"} 10"#,
        r#"switchboard_queue_calls_offered{queue="sales",window="today"} 10"#,
        r#"switchboard_queue_calls_answered{queue="sales",window="15m"} 6"#,
        r#"switchboard_queue_calls_answered_within_threshold{queue="sales",window="15m"} 3"#,
        r#"switchboard_queue_calls_abandoned{queue="sales",window="15m"} 3"#,
        r#"switchboard_queue_calls_abandoned_within_threshold{queue="sales",window="15m"} 2"#,
        r#"switchboard_queue_calls_handled{queue="sales",window="today"} 2"#,
        r#"switchboard_queue_service_level_ratio{definition="answered",queue="sales",window="15m"} 0.5"#,
        r#"switchboard_queue_abandon_ratio{queue="sales",window="15m"} 0.3"#,
        r#"switchboard_queue_average_speed_of_answer_seconds{queue="sales",window="15m"} 26.666"#,
        r#"switchboard_queue_average_handle_time_seconds{queue="sales",window="15m"} 180"#,
        r#"switchboard_queue_service_level_threshold_seconds{queue="sales"} 20"#,
        r#"switchboard_queue_calls_waiting{queue="sales"} 1"#,
        r#"switchboard_queue_longest_wait_seconds{queue="sales"} 291"#,
        r#"switchboard_queue_agents{queue="sales",state="busy"} 1"#,
        r#"switchboard_queue_agents{queue="sales",state="wrap_up"} 0"#,
        r#"switchboard_queue_agents_logged_in{queue="sales"} 2"#,
        r#"switchboard_queue_calls_offered{queue="support",window="15m"} 1"#,
        r#"switchboard_queue_calls_waiting{queue="support"} 0"#,
        r#"switchboard_agent_calls_answered{seat="1001",window="15m"} 6"#,
        r#"switchboard_agent_handle_seconds{seat="1001",window="today"} 360"#,
        r#"switchboard_agent_occupancy_ratio{seat="1001",window="15m"} 1"#,
        r#"switchboard_agent_state{seat="1001",state="busy"} 1"#,
        r#"switchboard_agent_state{seat="1001",state="ready"} 0"#,
        r#"switchboard_agent_state{seat="1002",state="ready"} 1"#,
        r#"switchboard_agent_state_seconds{seat="1001",state="busy",window="15m"} 300"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    let sl2 = text
        .lines()
        .find(|l| l.starts_with(r#"switchboard_queue_service_level_ratio{definition="answered_and_abandoned",queue="sales",window="15m"}"#))
        .expect("definition 2 exported");
    let value: f64 = sl2
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!((value - 5.0 / 9.0).abs() < 1e-9, "{sl2}");
    // Nothing answered in "support": no service level, no ASA, no 0 or NaN in their place.
    for absent in [
        r#"switchboard_queue_service_level_ratio{definition="answered",queue="support""#,
        r#"switchboard_queue_average_speed_of_answer_seconds{queue="support""#,
        r#"switchboard_agent_occupancy_ratio{seat="1002""#,
    ] {
        assert!(!text.contains(absent), "unexpected {absent}\n{text}");
    }
    assert!(!text.contains("NaN"));

    // The configuration drops "support" and seat 1002.
    stats.forget_queue("support");
    metrics.export(&stats, &live, &agents[..1], now);
    let text = exposition(&registry);
    assert!(!text.contains(r#"queue="support""#), "{text}");
    assert!(!text.contains(r#"seat="1002""#), "{text}");
    assert!(text.contains(r#"queue="sales""#));

    // A figure that loses its divisor loses its series: 20 minutes on, the window is empty.
    metrics.export(&stats, &live, &agents[..1], plus(now, 1200));
    let text = exposition(&registry);
    assert!(
        !text.contains(r#"switchboard_queue_abandon_ratio{queue="sales",window="15m"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchboard_queue_abandon_ratio{queue="sales",window="today"} 0.3"#),
        "{text}"
    );
}
