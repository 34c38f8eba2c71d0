//! Trunk channel limits in the CallCenter reconcile: which limit each trunk gets, its status
//! line, and the node config that carries it.
//!
//! The limit in force is, in order: `spec.trunkChannels` for the first trunk (the scale
//! subresource, when within the trunk's bounds), else the autoscaler's decision for a trunk
//! with `channels.autoscaling`, else the spec's `channels.limit`. The user's spec is never
//! written: the operator puts the limit into the `channels.limit` of the spec copy it builds the
//! node config from, so the nodes take it like any other live config change.
//!
//! The scaler's memory is the trunk status (`limit`, `lastChangeTime`) plus, in memory, since
//! when the traffic has wanted a shrink; losing that on restart only delays a shrink.
//!
//! Reports: the serving (active) node's latest `TrunkState`. The node sends every change within
//! seconds and HTTP/2 pings end the stream of a node that stopped answering (its figures are
//! then forgotten), so the latest figures of an open stream are current: they are dated at the
//! reconcile. A node that stopped reporting thus leaves no report, and the limit stays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use switchboard_crds::CallCenter;
use switchboard_crds::callcenter::{TrunkSpec, TrunkStatus, check_scale_request};

use crate::node_state::{CenterView, TrunkView};
use crate::traffic::{ScaleDecision, ScalingHistory, ScalingPolicy, TrafficReport, TrunkScaling};

/// The Event reason of a changed trunk limit.
pub const TRUNK_SCALED: &str = "TrunkScaled";
/// The Event reason of a `spec.trunkChannels` the trunk's bounds do not allow.
pub const SCALE_REFUSED: &str = "ScaleRefused";

/// Since when each trunk's traffic has wanted a shrink, by center key and trunk name.
#[derive(Default)]
pub struct ShrinkMemory(Mutex<HashMap<(String, String), Timestamp>>);

impl ShrinkMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Timestamp>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shrink-wanted-since of every trunk of `center`.
    pub fn of(&self, center: &str) -> HashMap<String, Timestamp> {
        self.lock()
            .iter()
            .filter(|((c, _), _)| c == center)
            .map(|((_, trunk), since)| (trunk.clone(), *since))
            .collect()
    }

    /// Replaces what is remembered of `center` with the plans' outcome.
    pub fn keep(&self, center: &str, plans: &[TrunkPlan]) {
        let mut memory = self.lock();
        memory.retain(|(c, _), _| c != center);
        for plan in plans {
            if let Some(since) = plan.shrink_wanted_since {
                memory.insert((center.to_string(), plan.status.name.clone()), since);
            }
        }
    }
}

/// A trunk limit that changed, for the Event.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitChange {
    pub trunk: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

impl LimitChange {
    /// The Event's message.
    pub fn message(&self) -> String {
        format!(
            "trunk {}: channel limit {} → {}: {}",
            self.trunk, self.from, self.to, self.reason
        )
    }
}

/// What the reconcile does with one trunk.
#[derive(Debug, Clone, PartialEq)]
pub struct TrunkPlan {
    /// The trunk's new status line; `limit` is the limit in force.
    pub status: TrunkStatus,
    /// The limit changed (Event `TrunkScaled`).
    pub change: Option<LimitChange>,
    /// `spec.trunkChannels` was refused (Event `ScaleRefused`), with why.
    pub refused: Option<String>,
    /// Keep for the next decision.
    pub shrink_wanted_since: Option<Timestamp>,
}

/// The scaler's view of a node's trunk figures; `None` while the node has no traffic figures
/// (`window_seconds` 0). NaN or negative traffic passes through: the scaler refuses it.
pub fn traffic_report(trunk: &TrunkView, now: Timestamp) -> Option<TrafficReport> {
    if trunk.window_seconds == 0 {
        return None;
    }
    Some(TrafficReport {
        offered_erlangs: trunk.offered_erlangs,
        calls_offered: trunk.window_calls_offered,
        calls_blocked: trunk.window_calls_blocked,
        window: Duration::from_secs(u64::from(trunk.window_seconds)),
        reported_at: now,
    })
}

/// Offered traffic for the status: finite, not negative, to a tenth of an erlang (so the
/// status is not rewritten for every hundredth).
fn shown_erlangs(trunk: &TrunkView) -> Option<f64> {
    let e = trunk.offered_erlangs;
    (trunk.window_seconds > 0 && e.is_finite() && e >= 0.0).then(|| (e * 10.0).round() / 10.0)
}

/// Plans every trunk of `center` from its previous status, the nodes' reports and the
/// remembered shrink times (by trunk name).
pub fn plan_trunks(
    center: &CallCenter,
    live: &CenterView,
    shrink_since: &HashMap<String, Timestamp>,
    policy: &ScalingPolicy,
    now: Timestamp,
) -> Vec<TrunkPlan> {
    let before = center
        .status
        .as_ref()
        .map(|s| s.trunks.as_slice())
        .unwrap_or_default();
    center
        .spec
        .trunks
        .iter()
        .enumerate()
        .map(|(i, trunk)| {
            let wanted = if i == 0 {
                center.spec.trunk_channels
            } else {
                None
            };
            plan_trunk(
                i,
                trunk,
                wanted,
                before.iter().find(|b| b.name == trunk.name),
                live,
                shrink_since.get(&trunk.name).copied(),
                policy,
                now,
            )
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn plan_trunk(
    index: usize,
    trunk: &TrunkSpec,
    wanted: Option<u32>,
    before: Option<&TrunkStatus>,
    live: &CenterView,
    shrink_since: Option<Timestamp>,
    policy: &ScalingPolicy,
    now: Timestamp,
) -> TrunkPlan {
    let channels = &trunk.channels;
    let seen = live.trunks.iter().find(|t| t.name == trunk.name);
    let current = before.map_or(channels.limit, |b| b.limit);
    let mut refused = None;
    let mut shrink_wanted_since = None;
    let requested = wanted.and_then(|n| match check_scale_request(n, channels) {
        Ok(n) => Some(n),
        Err(e) => {
            refused = Some(format!("spec.trunkChannels: {e} of trunk {}", trunk.name));
            None
        }
    });
    let (limit, reason) = if let Some(n) = requested {
        (
            n,
            format!("spec.trunkChannels asks for {n} (scale subresource)"),
        )
    } else if channels.autoscaling {
        let report = seen
            .filter(|_| live.trunks_from_active)
            .and_then(|t| traffic_report(t, now));
        let outcome = crate::traffic::scaling::decide(
            policy,
            &TrunkScaling {
                channels,
                current_limit: current,
                report: report.as_ref(),
                history: ScalingHistory {
                    last_change: before
                        .and_then(|b| b.last_change_time.as_ref())
                        .map(|t| t.0),
                    shrink_wanted_since: shrink_since,
                },
            },
            now,
        );
        shrink_wanted_since = outcome.history.shrink_wanted_since;
        match outcome.decision {
            ScaleDecision::Change { to, reason, .. } => {
                let traffic = report
                    .as_ref()
                    .filter(|r| r.offered_erlangs.is_finite())
                    .map(|r| format!(" (offered {:.1} E)", r.offered_erlangs))
                    .unwrap_or_default();
                (to, format!("autoscaling: {reason}{traffic}"))
            }
            ScaleDecision::Keep(_) => (current, String::new()),
        }
    } else {
        // The webhook keeps the limit within the bounds; a spec that bypassed it is clamped.
        let limit = if channels.min_channels >= 1 && channels.min_channels <= channels.max_channels
        {
            channels
                .limit
                .clamp(channels.min_channels, channels.max_channels)
        } else {
            channels.limit
        };
        (limit, format!("spec.trunks[{index}].channels.limit"))
    };
    let change = (limit != current).then(|| LimitChange {
        trunk: trunk.name.clone(),
        from: current,
        to: limit,
        reason,
    });
    let (last_change_time, last_change_reason) = match &change {
        Some(c) => (Some(Time(now)), Some(c.reason.clone())),
        None => (
            before.and_then(|b| b.last_change_time.clone()),
            before.and_then(|b| b.last_change_reason.clone()),
        ),
    };
    TrunkPlan {
        status: TrunkStatus {
            name: trunk.name.clone(),
            limit,
            busy: seen.map_or(0, |t| t.busy),
            blocked: seen.map_or(0, |t| t.blocked),
            offered_erlangs: seen.and_then(shown_erlangs),
            last_change_time,
            last_change_reason,
        },
        change,
        refused,
        shrink_wanted_since,
    }
}

/// The center as the nodes should serve it: each trunk's `channels.limit` is the planned limit
/// and `trunkChannels` is folded into it. The user's object is left as it is.
pub fn served_center(center: &CallCenter, plans: &[TrunkPlan]) -> CallCenter {
    let mut served = center.clone();
    served.spec.trunk_channels = None;
    for trunk in &mut served.spec.trunks {
        if let Some(plan) = plans.iter().find(|p| p.status.name == trunk.name) {
            trunk.channels.limit = plan.status.limit;
        }
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("in range")
    }

    fn center(channels: serde_json::Value, trunk_channels: Option<u32>) -> CallCenter {
        let mut spec = json!({
            "sip": {"domain": "cc.example.edu"},
            "trunks": [
                {"name": "pstn", "peer": {"host": "192.0.2.10"}, "channels": channels},
                {"name": "pbx", "peer": {"host": "192.0.2.20"}, "channels": {"limit": 8, "maxChannels": 10}}
            ]
        });
        if let Some(n) = trunk_channels {
            spec["trunkChannels"] = json!(n);
        }
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "CallCenter",
            "metadata": {"name": "campus", "namespace": "college"},
            "spec": spec
        }))
        .expect("a center")
    }

    fn autoscaled() -> serde_json::Value {
        json!({"limit": 10, "minChannels": 5, "maxChannels": 60, "autoscaling": true})
    }

    fn with_status(mut c: CallCenter, limit: u32, changed: Option<i64>) -> CallCenter {
        c.status = Some(switchboard_crds::CallCenterStatus {
            trunks: vec![TrunkStatus {
                name: "pstn".into(),
                limit,
                last_change_time: changed.map(|s| Time(at(s))),
                last_change_reason: changed.map(|_| "earlier".into()),
                ..TrunkStatus::default()
            }],
            ..Default::default()
        });
        c
    }

    fn live(erlangs: f64, window_seconds: u32, active: bool) -> CenterView {
        CenterView {
            trunks: vec![TrunkView {
                name: "pstn".into(),
                limit: 10,
                busy: 9,
                blocked: 3,
                offered_erlangs: erlangs,
                window_calls_offered: 400,
                window_calls_blocked: 0,
                window_seconds,
            }],
            trunks_from_active: active,
            ..CenterView::default()
        }
    }

    fn plan(c: &CallCenter, view: &CenterView) -> Vec<TrunkPlan> {
        plan_trunks(c, view, &HashMap::new(), &ScalingPolicy::default(), at(0))
    }

    #[test]
    fn heavy_traffic_raises_the_limit_with_status_and_message() {
        let c = with_status(center(autoscaled(), None), 10, None);
        let plans = plan(&c, &live(20.0, 900, true));
        let p = &plans[0];
        // 20 E at 1 % blocking needs 30 channels.
        assert_eq!(p.status.limit, 30);
        assert_eq!(p.status.busy, 9);
        assert_eq!(p.status.blocked, 3);
        assert_eq!(p.status.offered_erlangs, Some(20.0));
        assert_eq!(p.status.last_change_time, Some(Time(at(0))));
        let change = p.change.as_ref().expect("a change");
        assert_eq!((change.from, change.to), (10, 30));
        assert_eq!(
            change.message(),
            "trunk pstn: channel limit 10 → 30: autoscaling: the traffic needs 30 channels \
             (offered 20.0 E)"
        );
        assert_eq!(
            p.status.last_change_reason.as_deref(),
            Some(change.reason.as_str())
        );
        // The second trunk keeps its spec limit, unchanged, without an Event.
        assert_eq!(plans[1].status.limit, 8);
        assert_eq!(plans[1].change, None);
        assert_eq!(plans[1].status.offered_erlangs, None);
    }

    #[test]
    fn absurd_missing_or_standby_reports_keep_the_limit() {
        let c = with_status(center(autoscaled(), None), 10, Some(-60));
        for view in [
            live(f64::NAN, 900, true),
            live(-4.0, 900, true),
            live(f64::INFINITY, 900, true),
            // No figures yet.
            live(80.0, 0, true),
            // A standby's figures never size a trunk.
            live(80.0, 900, false),
            // The node stopped reporting: its figures were forgotten.
            CenterView::default(),
        ] {
            let p = &plan(&c, &view)[0];
            assert_eq!(p.status.limit, 10, "{view:?}");
            assert_eq!(p.change, None, "{view:?}");
            assert_eq!(p.status.last_change_time, Some(Time(at(-60))));
            assert_eq!(p.status.last_change_reason.as_deref(), Some("earlier"));
        }
        // NaN traffic is not shown either.
        assert_eq!(
            plan(&c, &live(f64::NAN, 900, true))[0]
                .status
                .offered_erlangs,
            None
        );
        // Inconsistent counts: more blocked than offered.
        let mut view = live(80.0, 900, true);
        view.trunks[0].window_calls_blocked = 500;
        assert_eq!(plan(&c, &view)[0].change, None);
    }

    #[test]
    fn a_scale_request_overrides_the_autoscaler_within_bounds_only() {
        let c = with_status(center(autoscaled(), Some(45)), 10, None);
        let p = &plan(&c, &live(1.0, 900, true))[0];
        assert_eq!(p.status.limit, 45);
        assert_eq!(p.refused, None);
        assert_eq!(
            p.change.as_ref().map(LimitChange::message).as_deref(),
            Some(
                "trunk pstn: channel limit 10 → 45: spec.trunkChannels asks for 45 (scale subresource)"
            )
        );
        // Outside the bounds: refused with the bounds named, and the autoscaler decides.
        let c = with_status(center(autoscaled(), Some(61)), 10, None);
        let p = &plan(&c, &live(20.0, 900, true))[0];
        assert_eq!(p.status.limit, 30);
        assert_eq!(
            p.refused.as_deref(),
            Some(
                "spec.trunkChannels: cannot set the trunk to 61 channels: the limit must stay \
                 within minChannels 5 and maxChannels 60 of trunk pstn"
            )
        );
    }

    #[test]
    fn without_autoscaling_the_spec_limit_rules_and_a_first_status_is_no_change() {
        let c = center(json!({"limit": 12, "maxChannels": 30}), None);
        let p = &plan(&c, &live(80.0, 900, true))[0];
        assert_eq!(p.status.limit, 12);
        assert_eq!(p.change, None, "no previous status: nothing changed");
        let c = with_status(c, 10, None);
        let p = &plan(&c, &live(80.0, 900, true))[0];
        assert_eq!(
            p.change.as_ref().map(|c| (c.from, c.to, c.reason.as_str())),
            Some((10, 12, "spec.trunks[0].channels.limit"))
        );
    }

    #[test]
    fn the_served_center_carries_the_limits_and_the_users_spec_stays() {
        let c = with_status(center(autoscaled(), Some(45)), 10, None);
        let plans = plan(&c, &CenterView::default());
        let served = served_center(&c, &plans);
        assert_eq!(served.spec.trunks[0].channels.limit, 45);
        assert_eq!(served.spec.trunks[1].channels.limit, 8);
        assert_eq!(served.spec.trunk_channels, None);
        assert!(switchboard_crds::validate::call_center(&served.spec).is_empty());
        assert_eq!(c.spec.trunks[0].channels.limit, 10);
        assert_eq!(c.spec.trunk_channels, Some(45));
    }

    #[test]
    fn shrink_memory_is_per_center_and_trunk() {
        let memory = ShrinkMemory::default();
        let plan_with = |since| TrunkPlan {
            status: TrunkStatus {
                name: "pstn".into(),
                ..TrunkStatus::default()
            },
            change: None,
            refused: None,
            shrink_wanted_since: since,
        };
        memory.keep("college/campus", &[plan_with(Some(at(-30)))]);
        memory.keep("college/other", &[plan_with(Some(at(-90)))]);
        assert_eq!(memory.of("college/campus")["pstn"], at(-30));
        memory.keep("college/campus", &[plan_with(None)]);
        assert!(memory.of("college/campus").is_empty());
        assert_eq!(memory.of("college/other").len(), 1);
    }
}
