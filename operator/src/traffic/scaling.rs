//! Trunk channel sizing with hysteresis: the channel limit follows the Erlang B requirement of
//! the offered traffic, within the trunk's `minChannels..=maxChannels`.
//!
//! Channels cost money and a refused call loses a customer, so growing is prompt and
//! shrinking is slow. The rules, in order:
//!
//! 1. Autoscaling off, or bounds that make no sense (`minChannels` 0 or above `maxChannels`,
//!    target blocking outside (0, 1)): keep the limit.
//! 2. A limit outside the bounds (the bounds were edited) is clamped into them at once.
//! 3. No report, a report older than [`ScalingPolicy::max_report_age`] (the node stopped
//!    reporting), one from the future beyond [`ScalingPolicy::max_clock_skew`], traffic that is
//!    NaN, infinite or negative, or more calls blocked than offered: keep the limit. Bad data
//!    never moves capacity.
//! 4. Grow at once to the requirement: the fewest channels whose Erlang B blocking is at most
//!    the target. More blocked calls than the target explains (beyond Poisson noise), in a
//!    window measured entirely at the current limit, prove the limit too small whatever the
//!    traffic estimate says: then the requirement is at least one channel more.
//! 5. Shrink only when the requirement has stayed at least [`ScalingPolicy::shrink_margin`]
//!    channels below the limit for [`ScalingPolicy::shrink_cooldown`], and the last change is
//!    that long ago too; then take one step toward the requirement (at most a quarter of the
//!    limit). Traffic oscillating around a boundary moves the requirement by one channel, less
//!    than the margin, so it never causes a shrink and thus never flaps.
//!
//! The function is pure: the caller passes `now` and keeps the returned [`ScalingHistory`]
//! (`last_change` is the trunk status's `lastChangeTime`; `shrink_wanted_since` may live in
//! memory, since losing it on restart only delays a shrink).

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
// The scale-request check lives with the API types so the webhook and the standalone loader
// refuse with the same message.
use switchboard_crds::callcenter::TrunkChannels;
pub use switchboard_crds::callcenter::{ScaleRefused, check_scale_request};

use super::erlang::channels_for_blocking;

/// Tuning of the trunk scaler. The defaults suit a node reporting every few seconds over a
/// 15-minute rolling window.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPolicy {
    /// A report older than this means the node stopped reporting.
    pub max_report_age: Duration,
    /// How far in the future a report's timestamp may be (clock skew between node and operator).
    pub max_clock_skew: Duration,
    /// How long the requirement must stay below the limit, and the last change be in the past,
    /// before a shrink.
    pub shrink_cooldown: Duration,
    /// Share of the limit the requirement must stay below it by before a shrink.
    pub shrink_margin_fraction: f64,
    /// The smallest shrink margin, in channels. At least 2, so a requirement that moves by one
    /// channel never shrinks the limit.
    pub min_shrink_margin: u32,
    /// Largest share of the limit one shrink may remove.
    pub max_shrink_fraction: f64,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        Self {
            max_report_age: Duration::from_secs(180),
            max_clock_skew: Duration::from_secs(30),
            shrink_cooldown: Duration::from_secs(600),
            shrink_margin_fraction: 0.1,
            min_shrink_margin: 2,
            max_shrink_fraction: 0.25,
        }
    }
}

impl ScalingPolicy {
    /// Channels the requirement must stay below `limit` by before a shrink.
    pub fn shrink_margin(&self, limit: u32) -> u32 {
        let share = (f64::from(limit) * self.shrink_margin_fraction).ceil();
        // `as` saturates; NaN (an absurd fraction) becomes 0 and the minimum applies.
        (share as u32).max(self.min_shrink_margin).max(1)
    }

    fn max_shrink_step(&self, limit: u32) -> u32 {
        let share = (f64::from(limit) * self.max_shrink_fraction).ceil();
        (share as u32).max(1)
    }
}

/// What a media node reported for one trunk over its rolling window.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficReport {
    /// Offered traffic over the window, in erlangs.
    pub offered_erlangs: f64,
    /// Calls offered to the trunk in the window (carried and blocked).
    pub calls_offered: u64,
    /// Calls refused in the window because every channel was busy.
    pub calls_blocked: u64,
    /// Length of the rolling window.
    pub window: Duration,
    /// When the node took the measurement.
    pub reported_at: Timestamp,
}

/// What the scaler remembers between decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScalingHistory {
    /// When the limit last changed (the trunk status's `lastChangeTime`).
    pub last_change: Option<Timestamp>,
    /// Since when the requirement has stayed below the limit by the shrink margin.
    pub shrink_wanted_since: Option<Timestamp>,
}

/// One trunk's situation, as the scaler sees it.
#[derive(Debug, Clone, Copy)]
pub struct TrunkScaling<'a> {
    /// The trunk's channel settings: bounds, target blocking and whether autoscaling is on.
    pub channels: &'a TrunkChannels,
    /// The limit in force now.
    pub current_limit: u32,
    /// The node's latest traffic report for the trunk, if any.
    pub report: Option<&'a TrafficReport>,
    /// What the previous decisions left behind.
    pub history: ScalingHistory,
}

/// The scaler's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleDecision {
    /// Leave the limit as it is.
    Keep(KeepReason),
    /// Set the limit to `to`.
    Change {
        /// The limit in force now.
        from: u32,
        /// The new limit, always within the trunk's bounds.
        to: u32,
        /// Why.
        reason: ChangeReason,
    },
}

/// Why the limit stays.
#[derive(Debug, Clone, PartialEq)]
pub enum KeepReason {
    /// `autoscaling` is off for the trunk.
    AutoscalingOff,
    /// The trunk's bounds or target blocking make no sense.
    InvalidBounds {
        /// `minChannels`.
        min_channels: u32,
        /// `maxChannels`.
        max_channels: u32,
        /// `targetBlocking`.
        target_blocking: f64,
    },
    /// The node has not reported traffic for the trunk.
    NoReport,
    /// The last report is older than the staleness bound: the node stopped reporting.
    StaleReport {
        /// How old the report is.
        age: Duration,
    },
    /// The report's timestamp lies in the future beyond the allowed clock skew.
    ReportFromFuture {
        /// How far ahead.
        ahead: Duration,
    },
    /// The reported traffic is NaN, infinite or negative.
    InvalidTraffic {
        /// The reported value.
        offered_erlangs: f64,
    },
    /// More calls blocked than offered.
    InconsistentCounts {
        /// Calls offered in the window.
        calls_offered: u64,
        /// Calls blocked in the window.
        calls_blocked: u64,
    },
    /// The requirement is above `maxChannels` and the limit is already there.
    AtMaximum {
        /// Channels the traffic needs; `None` when more than `maxChannels`.
        required: Option<u32>,
    },
    /// The limit fits the requirement.
    Sufficient {
        /// Channels the traffic needs, within the bounds.
        required: u32,
    },
    /// The requirement is well below the limit, but not yet for the whole cooldown.
    ShrinkPending {
        /// Channels the traffic needs, within the bounds.
        required: u32,
        /// Time left before a shrink may happen.
        remaining: Duration,
    },
}

/// Why the limit changes.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeReason {
    /// The limit lay outside `minChannels..=maxChannels` and was clamped.
    OutsideBounds,
    /// The traffic needs more channels.
    Grow {
        /// Channels the traffic needs; `None` when more than `maxChannels`.
        required: Option<u32>,
        /// Calls were blocked beyond the target at the current limit.
        blocking_observed: bool,
    },
    /// The traffic has needed fewer channels for the whole cooldown.
    Shrink {
        /// Channels the traffic needs, within the bounds.
        required: u32,
    },
}

/// A decision and the history to pass to the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingOutcome {
    /// What to do with the limit.
    pub decision: ScaleDecision,
    /// Keep this for the next decision.
    pub history: ScalingHistory,
}

fn bounds_valid(channels: &TrunkChannels) -> bool {
    channels.min_channels >= 1
        && channels.min_channels <= channels.max_channels
        && channels.target_blocking > 0.0
        && channels.target_blocking < 1.0
}

/// Seconds from `since` to `now`; negative when `since` is later.
fn seconds_between(since: Timestamp, now: Timestamp) -> f64 {
    now.duration_since(since).as_secs_f64()
}

fn to_duration(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

/// More blocked calls than `target` blocking explains: above the expected count plus two
/// standard deviations of a Poisson count, plus one so a lone blocked call is never proof.
fn blocking_beyond_target(calls_offered: u64, calls_blocked: u64, target: f64) -> bool {
    let expected = calls_offered as f64 * target;
    calls_blocked as f64 > expected + 2.0 * expected.sqrt() + 1.0
}

/// Decides the trunk's channel limit from its latest traffic report. See the module docs for
/// the rules.
pub fn decide(policy: &ScalingPolicy, trunk: &TrunkScaling<'_>, now: Timestamp) -> ScalingOutcome {
    let channels = trunk.channels;
    let limit = trunk.current_limit;
    // Anything that is not "below the limit by the margin" restarts the shrink cooldown.
    let keep = |reason| ScalingOutcome {
        decision: ScaleDecision::Keep(reason),
        history: ScalingHistory {
            shrink_wanted_since: None,
            ..trunk.history
        },
    };
    let change = |to, reason| ScalingOutcome {
        decision: ScaleDecision::Change {
            from: limit,
            to,
            reason,
        },
        history: ScalingHistory {
            last_change: Some(now),
            shrink_wanted_since: None,
        },
    };

    if !channels.autoscaling {
        return keep(KeepReason::AutoscalingOff);
    }
    if !bounds_valid(channels) {
        return keep(KeepReason::InvalidBounds {
            min_channels: channels.min_channels,
            max_channels: channels.max_channels,
            target_blocking: channels.target_blocking,
        });
    }
    let (min, max) = (channels.min_channels, channels.max_channels);
    if !(min..=max).contains(&limit) {
        return change(limit.clamp(min, max), ChangeReason::OutsideBounds);
    }

    let Some(report) = trunk.report else {
        return keep(KeepReason::NoReport);
    };
    let age = seconds_between(report.reported_at, now);
    if -age > policy.max_clock_skew.as_secs_f64() {
        return keep(KeepReason::ReportFromFuture {
            ahead: to_duration(-age),
        });
    }
    if age > policy.max_report_age.as_secs_f64() {
        return keep(KeepReason::StaleReport {
            age: to_duration(age),
        });
    }
    let traffic = report.offered_erlangs;
    if !(traffic.is_finite() && traffic >= 0.0) {
        return keep(KeepReason::InvalidTraffic {
            offered_erlangs: traffic,
        });
    }
    if report.calls_blocked > report.calls_offered {
        return keep(KeepReason::InconsistentCounts {
            calls_offered: report.calls_offered,
            calls_blocked: report.calls_blocked,
        });
    }

    let target = channels.target_blocking;
    // Bounds and traffic are valid, so this cannot fail; treat a failure as "needs more".
    let erlang_requirement = channels_for_blocking(traffic, target, max).unwrap_or(None);
    // Blocked calls say something about the current limit only when the whole window ran with
    // it; earlier blocking was at a smaller limit and would ratchet the limit up.
    let window_at_current_limit = match trunk.history.last_change {
        None => true,
        Some(changed) => {
            seconds_between(changed, report.reported_at) >= report.window.as_secs_f64()
        }
    };
    let blocking_observed = window_at_current_limit
        && blocking_beyond_target(report.calls_offered, report.calls_blocked, target);
    let required = if blocking_observed {
        // Saturating: `None` (above max) stays above max.
        erlang_requirement.map(|n| n.max(limit.saturating_add(1)))
    } else {
        erlang_requirement
    };
    let required_within = required.map_or(max, |n| n.clamp(min, max));

    if required_within > limit {
        return change(
            required_within,
            ChangeReason::Grow {
                required: required.filter(|n| *n <= max),
                blocking_observed,
            },
        );
    }
    if required.is_none_or(|n| n > max) {
        return keep(KeepReason::AtMaximum { required: None });
    }

    if limit - required_within < policy.shrink_margin(limit) {
        return keep(KeepReason::Sufficient {
            required: required_within,
        });
    }
    let since = trunk.history.shrink_wanted_since.unwrap_or(now);
    let cooldown = policy.shrink_cooldown.as_secs_f64();
    let below_for = seconds_between(since, now);
    let since_change = trunk
        .history
        .last_change
        .map_or(f64::INFINITY, |changed| seconds_between(changed, now));
    if below_for >= cooldown && since_change >= cooldown {
        let to = required_within.max(limit - policy.max_shrink_step(limit).min(limit - min));
        let mut outcome = change(
            to,
            ChangeReason::Shrink {
                required: required_within,
            },
        );
        // Still well above the requirement: the next step's cooldown runs from now.
        if to - required_within >= policy.shrink_margin(to) {
            outcome.history.shrink_wanted_since = Some(now);
        }
        return outcome;
    }
    ScalingOutcome {
        decision: ScaleDecision::Keep(KeepReason::ShrinkPending {
            required: required_within,
            remaining: to_duration(cooldown - below_for.min(since_change)),
        }),
        history: ScalingHistory {
            shrink_wanted_since: Some(since),
            ..trunk.history
        },
    }
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AutoscalingOff => write!(f, "autoscaling is off"),
            Self::InvalidBounds {
                min_channels,
                max_channels,
                target_blocking,
            } => write!(
                f,
                "invalid bounds: minChannels {min_channels}, maxChannels {max_channels}, \
                 targetBlocking {target_blocking}"
            ),
            Self::NoReport => write!(f, "no traffic report from the node"),
            Self::StaleReport { age } => write!(
                f,
                "the node's last traffic report is {} s old",
                age.as_secs()
            ),
            Self::ReportFromFuture { ahead } => write!(
                f,
                "the node's traffic report is {} s in the future (clock skew)",
                ahead.as_secs()
            ),
            Self::InvalidTraffic { offered_erlangs } => {
                write!(f, "invalid offered traffic {offered_erlangs} erlangs")
            }
            Self::InconsistentCounts {
                calls_offered,
                calls_blocked,
            } => write!(
                f,
                "{calls_blocked} calls blocked but only {calls_offered} offered"
            ),
            Self::AtMaximum { .. } => {
                write!(f, "the traffic needs more than maxChannels allows")
            }
            Self::Sufficient { required } => {
                write!(
                    f,
                    "the limit fits the {required} channels the traffic needs"
                )
            }
            Self::ShrinkPending {
                required,
                remaining,
            } => write!(
                f,
                "the traffic needs {required} channels; shrinking in {} s if it stays low",
                remaining.as_secs()
            ),
        }
    }
}

impl fmt::Display for ChangeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsideBounds => write!(f, "the limit was outside minChannels..maxChannels"),
            Self::Grow {
                required: None,
                blocking_observed: _,
            } => write!(f, "the traffic needs more than maxChannels"),
            Self::Grow {
                required: Some(required),
                blocking_observed,
            } => {
                write!(f, "the traffic needs {required} channels")?;
                if *blocking_observed {
                    write!(f, " (calls blocked beyond the target)")?;
                }
                Ok(())
            }
            Self::Shrink { required } => write!(
                f,
                "the traffic has needed only {required} channels for the whole cooldown"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(900);

    type ExpectedKeep = fn(&KeepReason) -> bool;

    fn channels(min: u32, max: u32, target: f64) -> TrunkChannels {
        TrunkChannels {
            limit: min,
            min_channels: min,
            max_channels: max,
            autoscaling: true,
            target_blocking: target,
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("in range")
    }

    fn report(erlangs: f64, at_time: Timestamp) -> TrafficReport {
        TrafficReport {
            offered_erlangs: erlangs,
            calls_offered: 0,
            calls_blocked: 0,
            window: WINDOW,
            reported_at: at_time,
        }
    }

    fn decide_once(
        channels: &TrunkChannels,
        limit: u32,
        report: Option<&TrafficReport>,
        history: ScalingHistory,
        now: Timestamp,
    ) -> ScalingOutcome {
        decide(
            &ScalingPolicy::default(),
            &TrunkScaling {
                channels,
                current_limit: limit,
                report,
                history,
            },
            now,
        )
    }

    /// Runs the scaler once a minute for `minutes` with the traffic `erlangs(minute)` and
    /// returns every change made and the final limit.
    fn simulate(
        channels: &TrunkChannels,
        start_limit: u32,
        minutes: i64,
        erlangs: impl Fn(i64) -> f64,
    ) -> (Vec<(i64, u32, u32)>, u32) {
        let policy = ScalingPolicy::default();
        let mut limit = start_limit;
        let mut history = ScalingHistory::default();
        let mut changes = Vec::new();
        for minute in 0..minutes {
            let now = at(minute * 60);
            let r = report(erlangs(minute), now);
            let outcome = decide(
                &policy,
                &TrunkScaling {
                    channels,
                    current_limit: limit,
                    report: Some(&r),
                    history,
                },
                now,
            );
            if let ScaleDecision::Change { from, to, .. } = outcome.decision {
                assert_eq!(from, limit);
                assert!((channels.min_channels..=channels.max_channels).contains(&to));
                changes.push((minute, from, to));
                limit = to;
            }
            history = outcome.history;
        }
        (changes, limit)
    }

    #[test]
    fn grows_at_once_to_the_erlang_b_requirement() {
        let c = channels(1, 100, 0.01);
        // 20.4 E at 1 % needs 31 channels (the Erlang B table gives 20.337 E for 30).
        let r = report(20.4, at(0));
        let out = decide_once(&c, 30, Some(&r), ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Change {
                from: 30,
                to: 31,
                reason: ChangeReason::Grow {
                    required: Some(31),
                    blocking_observed: false
                }
            }
        );
        assert_eq!(out.history.last_change, Some(at(0)));
        // Growth ignores the cooldown: a change a second ago does not hold it back.
        let history = ScalingHistory {
            last_change: Some(at(-1)),
            shrink_wanted_since: None,
        };
        let r = report(40.0, at(0));
        let out = decide_once(&c, 31, Some(&r), history, at(0));
        assert!(matches!(
            out.decision,
            ScaleDecision::Change { from: 31, to, .. } if to > 31
        ));
    }

    #[test]
    fn growth_stops_at_max_channels() {
        let c = channels(1, 30, 0.01);
        let r = report(50.0, at(0));
        let out = decide_once(&c, 20, Some(&r), ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Change {
                from: 20,
                to: 30,
                reason: ChangeReason::Grow {
                    required: None,
                    blocking_observed: false
                }
            }
        );
        let out = decide_once(&c, 30, Some(&r), ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Keep(KeepReason::AtMaximum { required: None })
        );
    }

    #[test]
    fn never_below_min_channels() {
        let c = channels(10, 100, 0.01);
        let r = report(0.0, at(0));
        let out = decide_once(&c, 10, Some(&r), ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Keep(KeepReason::Sufficient { required: 10 })
        );
    }

    #[test]
    fn limit_outside_bounds_is_clamped() {
        let c = channels(5, 30, 0.01);
        let out = decide_once(&c, 60, None, ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Change {
                from: 60,
                to: 30,
                reason: ChangeReason::OutsideBounds
            }
        );
        let out = decide_once(&c, 2, None, ScalingHistory::default(), at(0));
        assert!(matches!(
            out.decision,
            ScaleDecision::Change { from: 2, to: 5, .. }
        ));
    }

    #[test]
    fn bad_or_missing_reports_never_change_the_limit() {
        let c = channels(1, 100, 0.01);
        let history = ScalingHistory {
            last_change: None,
            shrink_wanted_since: Some(at(-3600)),
        };
        let now = at(0);
        let cases: Vec<(Option<TrafficReport>, ExpectedKeep)> = vec![
            (None, |r| matches!(r, KeepReason::NoReport)),
            (Some(report(f64::NAN, now)), |r| {
                matches!(r, KeepReason::InvalidTraffic { .. })
            }),
            (Some(report(f64::INFINITY, now)), |r| {
                matches!(r, KeepReason::InvalidTraffic { .. })
            }),
            (Some(report(-3.0, now)), |r| {
                matches!(r, KeepReason::InvalidTraffic { .. })
            }),
            // The node stopped reporting 4 minutes ago (bound: 3).
            (
                Some(report(80.0, at(-240))),
                |r| matches!(r, KeepReason::StaleReport { age } if age.as_secs() == 240),
            ),
            (
                Some(report(80.0, at(120))),
                |r| matches!(r, KeepReason::ReportFromFuture { ahead } if ahead.as_secs() == 120),
            ),
            (
                Some(TrafficReport {
                    calls_offered: 3,
                    calls_blocked: 9,
                    ..report(80.0, now)
                }),
                |r| matches!(r, KeepReason::InconsistentCounts { .. }),
            ),
        ];
        for (r, expected) in cases {
            // Heavy traffic would grow, no traffic would shrink: neither may happen.
            for limit in [2, 50] {
                let out = decide_once(&c, limit, r.as_ref(), history, now);
                match &out.decision {
                    ScaleDecision::Keep(reason) => assert!(expected(reason), "{reason:?}"),
                    other => panic!("changed on {r:?}: {other:?}"),
                }
                // Bad data also restarts the shrink cooldown.
                assert_eq!(out.history.shrink_wanted_since, None);
            }
        }
        // A little skew is tolerated.
        let r = report(80.0, at(10));
        assert!(matches!(
            decide_once(&c, 50, Some(&r), history, now).decision,
            ScaleDecision::Change { .. }
        ));
    }

    #[test]
    fn autoscaling_off_or_invalid_bounds_keep_the_limit() {
        let mut c = channels(1, 100, 0.01);
        c.autoscaling = false;
        let r = report(80.0, at(0));
        let out = decide_once(&c, 30, Some(&r), ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Keep(KeepReason::AutoscalingOff)
        );
        for bad in [
            channels(0, 100, 0.01),
            channels(50, 10, 0.01),
            channels(1, 100, f64::NAN),
            channels(1, 100, 0.0),
            channels(1, 100, 1.0),
        ] {
            let out = decide_once(&bad, 30, Some(&r), ScalingHistory::default(), at(0));
            assert!(
                matches!(
                    out.decision,
                    ScaleDecision::Keep(KeepReason::InvalidBounds { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn blocked_calls_beyond_target_grow_the_limit() {
        let c = channels(1, 100, 0.01);
        // The estimate says 30 channels suffice (20 E), yet 40 of 1,000 calls were refused:
        // 4 %, far beyond what 1 % explains (about 10 ± 6).
        let r = TrafficReport {
            calls_offered: 1000,
            calls_blocked: 40,
            ..report(20.0, at(0))
        };
        let out = decide_once(&c, 30, Some(&r), ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Change {
                from: 30,
                to: 31,
                reason: ChangeReason::Grow {
                    required: Some(31),
                    blocking_observed: true
                }
            }
        );
        // Blocking the target explains (12 of 1,000 at 1 %) is no evidence.
        let r = TrafficReport {
            calls_blocked: 12,
            ..r.clone()
        };
        let out = decide_once(&c, 30, Some(&r), ScalingHistory::default(), at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Keep(KeepReason::Sufficient { required: 30 })
        );
        // Nor is blocking from a window that began before the last change: it happened at
        // the old, smaller limit.
        let r = TrafficReport {
            calls_blocked: 40,
            ..r
        };
        let history = ScalingHistory {
            last_change: Some(at(-600)),
            shrink_wanted_since: None,
        };
        let out = decide_once(&c, 30, Some(&r), history, at(0));
        assert_eq!(
            out.decision,
            ScaleDecision::Keep(KeepReason::Sufficient { required: 30 })
        );
        let history = ScalingHistory {
            last_change: Some(at(-900)),
            shrink_wanted_since: None,
        };
        let out = decide_once(&c, 30, Some(&r), history, at(0));
        assert!(matches!(
            out.decision,
            ScaleDecision::Change {
                from: 30,
                to: 31,
                ..
            }
        ));
        // One lone blocked call among few is never proof.
        let r = TrafficReport {
            calls_offered: 5,
            calls_blocked: 1,
            ..report(1.0, at(0))
        };
        let out = decide_once(&c, 5, Some(&r), ScalingHistory::default(), at(0));
        assert!(matches!(out.decision, ScaleDecision::Keep(_)));
    }

    #[test]
    fn shrinks_only_after_the_cooldown_one_step_at_a_time() {
        let c = channels(1, 100, 0.01);
        // 20 E needs 30 channels; then traffic falls to 2 E (needs 7).
        let (changes, limit) = simulate(&c, 30, 120, |m| if m < 10 { 20.0 } else { 2.0 });
        // First shrink: the requirement has been low since minute 10, so at minute 20; each
        // later step waits another full cooldown and removes at most a quarter of the limit.
        assert_eq!(changes[0], (20, 30, 22));
        for pair in changes.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 10, "{changes:?}");
        }
        for (_, from, to) in &changes {
            assert!(to < from && from - to <= from.div_ceil(4), "{changes:?}");
        }
        assert_eq!(limit, 7, "{changes:?}");
        assert_eq!(
            changes,
            vec![
                (20, 30, 22),
                (30, 22, 16),
                (40, 16, 12),
                (50, 12, 9),
                (60, 9, 7)
            ]
        );
    }

    #[test]
    fn a_short_dip_does_not_shrink() {
        let c = channels(1, 100, 0.01);
        // Nine quiet minutes in every ten: never a full cooldown of low traffic.
        let (changes, limit) = simulate(&c, 30, 180, |m| if m % 10 == 9 { 20.0 } else { 2.0 });
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(limit, 30);
    }

    #[test]
    fn traffic_oscillating_around_a_boundary_does_not_flap() {
        let c = channels(1, 100, 0.01);
        // 20.3 E needs 30 channels and 20.4 E needs 31. Alternate every minute, every
        // 7 minutes and every 40 minutes for six hours: one change (the first growth), then
        // never again, whatever the period.
        for period in [1, 7, 40] {
            let (changes, limit) =
                simulate(
                    &c,
                    30,
                    360,
                    |m| {
                        if (m / period) % 2 == 0 { 20.4 } else { 20.3 }
                    },
                );
            assert_eq!(changes, vec![(0, 30, 31)], "period {period}");
            assert_eq!(limit, 31);
        }
    }

    #[test]
    fn noisy_traffic_changes_rarely() {
        let c = channels(1, 200, 0.01);
        // 50 E ± 5 % with a fast wobble and a slower one, for a day: the limit only grows, as
        // new peaks come, to the requirement of the highest peak, and never shrinks (the
        // troughs stay within the shrink margin).
        let traffic = |m: i64| {
            let m = m as f64;
            50.0 + 1.5 * (m * 0.9).sin() + 1.0 * (m / 17.0).sin()
        };
        let (changes, limit) = simulate(&c, 1, 24 * 60, traffic);
        assert!(changes.len() <= 5, "{changes:?}");
        assert!(changes.iter().all(|(_, from, to)| to > from), "{changes:?}");
        let peak = (0..24 * 60).map(traffic).fold(0.0, f64::max);
        assert_eq!(
            Some(limit),
            channels_for_blocking(peak, 0.01, 200).expect("valid"),
            "{changes:?}"
        );
    }

    #[test]
    fn scale_requests_outside_bounds_are_refused_with_the_bounds() {
        let c = channels(5, 30, 0.01);
        assert_eq!(check_scale_request(5, &c), Ok(5));
        assert_eq!(check_scale_request(30, &c), Ok(30));
        let err = check_scale_request(31, &c).expect_err("above max");
        assert_eq!(
            err.to_string(),
            "cannot set the trunk to 31 channels: the limit must stay within minChannels 5 \
             and maxChannels 30"
        );
        assert!(check_scale_request(4, &c).is_err());
        assert!(check_scale_request(0, &c).is_err());
        assert!(matches!(
            check_scale_request(10, &channels(20, 10, 0.01)),
            Err(ScaleRefused::InvalidBounds { .. })
        ));
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            ChangeReason::Grow {
                required: Some(31),
                blocking_observed: true
            }
            .to_string(),
            "the traffic needs 31 channels (calls blocked beyond the target)"
        );
        assert_eq!(
            KeepReason::StaleReport {
                age: Duration::from_secs(240)
            }
            .to_string(),
            "the node's last traffic report is 240 s old"
        );
    }

    fn valid_channels() -> impl Strategy<Value = TrunkChannels> {
        (1u32..200, 0u32..300, 0.0001..0.5f64)
            .prop_map(|(min, extra, target)| channels(min, min + extra, target))
    }

    fn any_report() -> impl Strategy<Value = Option<TrafficReport>> {
        let erlangs = prop_oneof![
            0.0..600.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-1.0),
            any::<f64>(),
        ];
        proptest::option::of((erlangs, 0u64..5000, 0u64..5000, -1200i64..1200).prop_map(
            |(erlangs, offered, blocked, age)| TrafficReport {
                calls_offered: offered,
                calls_blocked: blocked,
                ..report(erlangs, at(-age))
            },
        ))
    }

    fn any_history() -> impl Strategy<Value = ScalingHistory> {
        (
            proptest::option::of(-7200i64..60),
            proptest::option::of(-7200i64..60),
        )
            .prop_map(|(last, since)| ScalingHistory {
                last_change: last.map(at),
                shrink_wanted_since: since.map(at),
            })
    }

    proptest! {
        #[test]
        fn result_always_within_bounds(
            c in valid_channels(),
            limit in 0u32..600,
            r in any_report(),
            history in any_history(),
        ) {
            let out = decide_once(&c, limit, r.as_ref(), history, at(0));
            let result = match out.decision {
                ScaleDecision::Keep(_) => limit,
                ScaleDecision::Change { from, to, .. } => {
                    prop_assert_eq!(from, limit);
                    prop_assert_ne!(from, to);
                    to
                }
            };
            prop_assert!((c.min_channels..=c.max_channels).contains(&result));
        }

        #[test]
        fn invalid_traffic_never_changes_a_limit_within_bounds(
            c in valid_channels(),
            pick in 0u32..1000,
            erlangs in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), -1e9..-1e-9f64],
            age in prop_oneof![-1200i64..1200, 181i64..100_000, -100_000i64..-31],
            history in any_history(),
        ) {
            let limit = c.min_channels + pick % (c.max_channels - c.min_channels + 1);
            let r = report(erlangs, at(-age));
            let out = decide_once(&c, limit, Some(&r), history, at(0));
            prop_assert!(matches!(out.decision, ScaleDecision::Keep(_)), "{:?}", out.decision);
            // A stale or future report of good traffic is kept too.
            if !(-30..=180).contains(&age) {
                let r = report(100.0, at(-age));
                let out = decide_once(&c, limit, Some(&r), history, at(0));
                prop_assert!(matches!(out.decision, ScaleDecision::Keep(_)), "{:?}", out.decision);
            }
            let out = decide_once(&c, limit, None, history, at(0));
            prop_assert!(matches!(out.decision, ScaleDecision::Keep(KeepReason::NoReport)));
        }

        #[test]
        fn never_shrinks_within_the_cooldown_of_a_change(
            c in valid_channels(),
            pick in 0u32..1000,
            erlangs in 0.0..600.0f64,
            ago in 0i64..600,
            since in proptest::option::of(-7200i64..0),
        ) {
            let limit = c.min_channels + pick % (c.max_channels - c.min_channels + 1);
            let r = report(erlangs, at(0));
            let history = ScalingHistory {
                last_change: Some(at(-ago)),
                shrink_wanted_since: since.map(at),
            };
            let out = decide_once(&c, limit, Some(&r), history, at(0));
            if let ScaleDecision::Change { to, .. } = out.decision {
                prop_assert!(to > limit, "shrank {limit} → {to} {ago} s after a change");
            }
        }
    }
}
