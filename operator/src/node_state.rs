//! Live state from the media nodes: one `WatchState` stream per node, kept in an in-memory
//! index the reconcile reads (seats registered and ready, each seat's registration and agent
//! state). A node's report only wakes the reconcile of its center; the controller's debounce
//! turns a burst of reports (500 phones registering after a power cut) into one status write
//! per object that changed.
//!
//! The index and its aggregation are pure and tested without a cluster or a node; the
//! watchers are the only I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use switchboard_crds::CallCenter;
use switchboard_crds::seat::AgentState;
use switchboard_proto::node::v1::node_control_client::NodeControlClient;
use switchboard_proto::node::v1::{self as proto, NodeState, WatchStateRequest};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::nodes::NodeEndpoint;

/// Longest pause between attempts to reach a node's state stream.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Failed attempts in a row after which a watcher stops; the center's next reconcile starts a
/// new one if the pod is still there (and a deleted center's watchers end this way).
const MAX_FAILED_ATTEMPTS: u32 = 10;
/// Interval of the HTTP/2 pings on a state stream, and how long an answer may take.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(10);

/// What the nodes of one center say about one seat, merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeatView {
    /// Some node holds a live registration.
    pub registered: bool,
    /// The agent state, when some node tracks it (`None`: no node does yet).
    pub agent_state: Option<AgentState>,
    pub not_ready_reason: Option<String>,
}

/// What a node says about one queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueView {
    pub calls_waiting: u32,
    pub longest_wait_seconds: u32,
    pub agents_ready: u32,
    pub service_level_percent: Option<f64>,
    pub abandon_rate_percent: Option<f64>,
    /// Calls offered over the last 15 minutes and their average handle time (absent without
    /// calls), for staffing advice.
    pub calls_offered_15m: u32,
    pub average_handle_seconds: Option<f64>,
}

/// One trunk's channels and traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrunkView {
    pub name: String,
    pub limit: u32,
    pub busy: u32,
    pub blocked: u64,
    /// Offered traffic over the node's rolling window, in erlangs.
    pub offered_erlangs: f64,
    /// Calls offered and blocked in the rolling window.
    pub window_calls_offered: u64,
    pub window_calls_blocked: u64,
    /// Length of the rolling window; 0 while the node has no traffic figures yet.
    pub window_seconds: u32,
}

/// What the nodes of one center say, merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CenterView {
    /// Nodes with a live state stream.
    pub nodes_reporting: usize,
    /// By seat name.
    pub seats: BTreeMap<String, SeatView>,
    /// By queue name; only queues some node reports (nodes without the ACD report none).
    pub queues: BTreeMap<String, QueueView>,
    /// Each trunk's channels as the serving node counts them, in the node's order.
    pub trunks: Vec<TrunkView>,
    /// `trunks` come from a node that says it is active: only its traffic sizes trunks (a
    /// standby carries no calls, so its figures would shrink them).
    pub trunks_from_active: bool,
    /// The node (pod) that says it serves, and the one that says it stands by.
    pub active_node: Option<String>,
    pub standby_node: Option<String>,
    /// The standby's replication as it reports it (`None`: it does not report any).
    pub standby_readiness: Option<proto::StandbyReadiness>,
}

impl CenterView {
    pub fn seats_registered(&self) -> u32 {
        count(self.seats.values().filter(|s| s.registered))
    }

    pub fn seats_ready(&self) -> u32 {
        count(
            self.seats
                .values()
                .filter(|s| s.agent_state == Some(AgentState::Ready)),
        )
    }
}

fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

fn agent_state(state: proto::AgentState) -> Option<AgentState> {
    match state {
        proto::AgentState::Unspecified => None,
        proto::AgentState::LoggedOut => Some(AgentState::LoggedOut),
        proto::AgentState::Ready => Some(AgentState::Ready),
        proto::AgentState::NotReady => Some(AgentState::NotReady),
        proto::AgentState::Ringing => Some(AgentState::Ringing),
        proto::AgentState::Busy => Some(AgentState::Busy),
        proto::AgentState::WrapUp => Some(AgentState::WrapUp),
    }
}

/// Merges the reports of a center's nodes. A seat is registered when any node holds its
/// registration (the standby may hold replicated ones too); its agent state and each queue's
/// statistics come from the active node when one reports them, else from the first node that
/// does.
pub fn merge<'a>(states: impl IntoIterator<Item = &'a NodeState>) -> CenterView {
    let mut states: Vec<&NodeState> = states.into_iter().collect();
    // Active first, so its agent states win.
    states.sort_by_key(|s| s.role() != proto::NodeRole::Active);
    let mut view = CenterView {
        nodes_reporting: states.len(),
        ..CenterView::default()
    };
    for state in &states {
        match state.role() {
            proto::NodeRole::Active if view.active_node.is_none() => {
                view.active_node = Some(state.node.clone());
            }
            proto::NodeRole::Standby if view.standby_node.is_none() => {
                view.standby_node = Some(state.node.clone());
                view.standby_readiness = state.standby.clone();
            }
            _ => {}
        }
    }
    // Trunk channels are counted where calls are served: the first node in order (the active
    // one when one reports) that has trunks.
    if let Some(state) = states.iter().find(|s| !s.trunks.is_empty()) {
        view.trunks_from_active = state.role() == proto::NodeRole::Active;
        view.trunks = state
            .trunks
            .iter()
            .map(|t| TrunkView {
                name: t.trunk.clone(),
                limit: t.channel_limit,
                busy: t.channels_busy,
                blocked: t.calls_blocked,
                offered_erlangs: t.offered_erlangs,
                window_calls_offered: t.window_calls_offered,
                window_calls_blocked: t.window_calls_blocked,
                window_seconds: t.window_seconds,
            })
            .collect();
    }
    for state in states {
        for queue in &state.queues {
            view.queues
                .entry(queue.queue.clone())
                .or_insert_with(|| QueueView {
                    calls_waiting: queue.calls_waiting,
                    longest_wait_seconds: queue.longest_wait_seconds,
                    agents_ready: queue.agents_ready,
                    service_level_percent: queue.service_level_percent,
                    abandon_rate_percent: queue.abandon_rate_percent,
                    calls_offered_15m: queue.calls_offered_15m,
                    average_handle_seconds: queue.average_handle_seconds,
                });
        }
        for seat in &state.seats {
            let entry = view.seats.entry(seat.seat.clone()).or_default();
            entry.registered |= seat.registered;
            if entry.agent_state.is_none() {
                entry.agent_state = agent_state(seat.agent_state());
                entry.not_ready_reason = Some(seat.not_ready_reason.clone())
                    .filter(|r| !r.is_empty() && entry.agent_state == Some(AgentState::NotReady));
            }
        }
    }
    view
}

/// The latest report of every watched node, by center (`namespace/name`) and pod.
#[derive(Default)]
pub struct NodeStates {
    reports: Mutex<HashMap<String, BTreeMap<String, NodeState>>>,
    watchers: Mutex<HashMap<(String, String), Watcher>>,
}

struct Watcher {
    uri: String,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NodeStates {
    /// Records a node's report; returns whether it differs from the last one.
    pub fn record(&self, center: &str, pod: &str, state: NodeState) -> bool {
        let mut reports = lock(&self.reports);
        let nodes = reports.entry(center.to_string()).or_default();
        if nodes.get(pod) == Some(&state) {
            return false;
        }
        nodes.insert(pod.to_string(), state);
        true
    }

    /// Forgets a node's report (its stream ended: what it said may no longer hold).
    pub fn forget(&self, center: &str, pod: &str) -> bool {
        let mut reports = lock(&self.reports);
        let Some(nodes) = reports.get_mut(center) else {
            return false;
        };
        let removed = nodes.remove(pod).is_some();
        if nodes.is_empty() {
            reports.remove(center);
        }
        removed
    }

    /// The merged view of a center's nodes.
    pub fn view(&self, center: &str) -> CenterView {
        let reports = lock(&self.reports);
        match reports.get(center) {
            Some(nodes) => merge(nodes.values()),
            None => CenterView::default(),
        }
    }

    /// Keeps exactly one state watcher per node of `center` that has an address: starts the
    /// missing ones, restarts those whose address changed, stops those of pods that are gone.
    /// Every changed report sends `trigger` on `wake`.
    pub fn watch(
        self: &Arc<Self>,
        center: &str,
        trigger: &ObjectRef<CallCenter>,
        targets: &[NodeEndpoint],
        wake: &mpsc::UnboundedSender<ObjectRef<CallCenter>>,
    ) {
        let mut watchers = lock(&self.watchers);
        let wanted: BTreeMap<&str, &str> = targets
            .iter()
            .filter_map(|t| Some((t.pod.as_str(), t.uri.as_deref()?)))
            .collect();
        let gone: Vec<(String, String)> = watchers
            .iter()
            .filter(|((c, pod), w)| {
                c == center && wanted.get(pod.as_str()) != Some(&w.uri.as_str())
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            watchers.remove(&key);
            self.forget(&key.0, &key.1);
        }
        for (pod, uri) in wanted {
            let key = (center.to_string(), pod.to_string());
            if watchers.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(watch_node(
                Arc::clone(self),
                center.to_string(),
                pod.to_string(),
                uri.to_string(),
                trigger.clone(),
                wake.clone(),
            ));
            watchers.insert(
                key,
                Watcher {
                    uri: uri.to_string(),
                    task,
                },
            );
        }
    }

    /// Stops every watcher of a center (it was deleted) and forgets its reports.
    pub fn stop(&self, center: &str) {
        lock(&self.watchers).retain(|(c, _), _| c != center);
        lock(&self.reports).remove(center);
    }
}

/// Follows one node's `WatchState` until the task is aborted, reconnecting with backoff.
async fn watch_node(
    states: Arc<NodeStates>,
    center: String,
    pod: String,
    uri: String,
    trigger: ObjectRef<CallCenter>,
    wake: mpsc::UnboundedSender<ObjectRef<CallCenter>>,
) {
    let mut delay = Duration::from_secs(1);
    let mut failed = 0;
    loop {
        let mut streamed = false;
        match stream_states(&states, &center, &pod, &uri, &trigger, &wake, &mut streamed).await {
            Ok(()) => tracing::debug!(node = %pod, "state stream ended"),
            Err(reason) => tracing::debug!(node = %pod, %reason, "state stream failed"),
        }
        if states.forget(&center, &pod) {
            let _ = wake.send(trigger.clone());
        }
        if streamed {
            delay = Duration::from_secs(1);
            failed = 0;
        } else {
            failed += 1;
            if failed >= MAX_FAILED_ATTEMPTS {
                tracing::debug!(node = %pod, "giving up on the state stream until the next reconcile");
                let mut watchers = lock(&states.watchers);
                let key = (center, pod);
                if watchers.get(&key).is_some_and(|w| w.uri == uri) {
                    // Dropping our own handle aborts this task at its next await; there is none.
                    watchers.remove(&key);
                }
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

async fn stream_states(
    states: &NodeStates,
    center: &str,
    pod: &str,
    uri: &str,
    trigger: &ObjectRef<CallCenter>,
    wake: &mpsc::UnboundedSender<ObjectRef<CallCenter>>,
    streamed: &mut bool,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(uri.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(crate::nodes::PUSH_TIMEOUT)
        // The node sends only changes, so a quiet stream means "unchanged"; HTTP/2 pings end
        // the stream of a node that hangs or vanishes, and its figures are then forgotten
        // (the trunk scaler then keeps every limit).
        .http2_keep_alive_interval(STREAM_KEEPALIVE)
        .keep_alive_timeout(STREAM_KEEPALIVE)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
    let mut stream = NodeControlClient::new(channel)
        .watch_state(WatchStateRequest {})
        .await
        .map_err(|s| format!("WatchState on {uri}: {}", s.message()))?
        .into_inner();
    while let Some(state) = stream
        .message()
        .await
        .map_err(|s| format!("WatchState on {uri}: {}", s.message()))?
    {
        *streamed = true;
        if states.record(center, pod, state) && wake.send(trigger.clone()).is_err() {
            // The controller is gone (shutdown).
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proto::{NodeRole, SeatState};

    use super::*;

    fn seat(name: &str, registered: bool, agent: proto::AgentState, reason: &str) -> SeatState {
        SeatState {
            seat: name.into(),
            registered,
            agent_state: agent as i32,
            not_ready_reason: reason.into(),
            ..SeatState::default()
        }
    }

    fn node(name: &str, role: NodeRole, seats: Vec<SeatState>) -> NodeState {
        NodeState {
            node: name.into(),
            role: role as i32,
            config_generation: 3,
            seats,
            ..NodeState::default()
        }
    }

    #[test]
    fn registration_is_any_node_and_agent_state_the_active_nodes() {
        let active = node(
            "cc-media-1",
            NodeRole::Active,
            vec![
                seat("a", false, proto::AgentState::Ready, ""),
                seat("b", true, proto::AgentState::NotReady, "break"),
                seat("c", false, proto::AgentState::Unspecified, ""),
            ],
        );
        let standby = node(
            "cc-media-0",
            NodeRole::Standby,
            vec![
                seat("a", true, proto::AgentState::NotReady, "stale"),
                seat("c", true, proto::AgentState::Busy, ""),
            ],
        );
        let mut standby = standby;
        standby.queues.push(proto::QueueState {
            queue: "support".into(),
            calls_waiting: 9,
            ..proto::QueueState::default()
        });
        let mut active = active;
        active.trunks.push(proto::TrunkState {
            trunk: "pstn".into(),
            channel_limit: 30,
            channels_busy: 4,
            calls_blocked: 1,
            offered_erlangs: 2.5,
            window_calls_offered: 40,
            window_calls_blocked: 1,
            window_seconds: 900,
        });
        standby.trunks.push(proto::TrunkState {
            trunk: "pstn".into(),
            channel_limit: 30,
            ..proto::TrunkState::default()
        });
        active.queues.push(proto::QueueState {
            queue: "support".into(),
            calls_waiting: 3,
            longest_wait_seconds: 41,
            agents_ready: 2,
            service_level_percent: Some(87.5),
            abandon_rate_percent: None,
            calls_offered_15m: 30,
            average_handle_seconds: Some(180.0),
            ..proto::QueueState::default()
        });
        let view = merge([&standby, &active]);
        assert_eq!(view.nodes_reporting, 2);
        assert_eq!(view.active_node.as_deref(), Some("cc-media-1"));
        assert_eq!(
            view.trunks,
            [TrunkView {
                name: "pstn".into(),
                limit: 30,
                busy: 4,
                blocked: 1,
                offered_erlangs: 2.5,
                window_calls_offered: 40,
                window_calls_blocked: 1,
                window_seconds: 900,
            }],
            "the serving node's channels"
        );
        assert!(view.trunks_from_active);
        assert_eq!(view.standby_node.as_deref(), Some("cc-media-0"));
        assert_eq!(
            view.queues["support"],
            QueueView {
                calls_waiting: 3,
                longest_wait_seconds: 41,
                agents_ready: 2,
                service_level_percent: Some(87.5),
                abandon_rate_percent: None,
                calls_offered_15m: 30,
                average_handle_seconds: Some(180.0),
            },
            "the active node's queue statistics"
        );
        assert_eq!(
            view.seats["a"],
            SeatView {
                registered: true,
                agent_state: Some(AgentState::Ready),
                not_ready_reason: None,
            }
        );
        assert_eq!(view.seats["b"].not_ready_reason.as_deref(), Some("break"));
        // The active node does not track c; the standby does.
        assert_eq!(view.seats["c"].agent_state, Some(AgentState::Busy));
        assert_eq!(view.seats_registered(), 3);
        assert_eq!(view.seats_ready(), 1);
    }

    #[test]
    fn nodes_without_an_acd_leave_agent_states_unknown() {
        let view = merge([&node(
            "n",
            NodeRole::Active,
            vec![seat("a", true, proto::AgentState::Unspecified, "")],
        )]);
        assert_eq!(view.seats["a"].agent_state, None);
        assert_eq!(view.seats_ready(), 0);
        assert_eq!(view.seats_registered(), 1);
    }

    #[test]
    fn the_index_reports_changes_only_and_forgets_silent_nodes() {
        let states = NodeStates::default();
        let report = node(
            "n",
            NodeRole::Active,
            vec![seat("a", true, proto::AgentState::Unspecified, "")],
        );
        assert!(states.record("ns/cc", "n", report.clone()));
        assert!(!states.record("ns/cc", "n", report), "same report");
        assert_eq!(states.view("ns/cc").seats_registered(), 1);
        assert_eq!(states.view("ns/other"), CenterView::default());
        assert!(states.forget("ns/cc", "n"));
        assert!(!states.forget("ns/cc", "n"));
        assert_eq!(states.view("ns/cc"), CenterView::default());
    }
}
