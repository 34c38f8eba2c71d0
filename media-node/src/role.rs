//! Which node of a HotStandby call center serves: both compete for the center's Lease (named by
//! `SWITCHBOARD_LEASE_NAME`, timing from `spec.highAvailability`); the holder labels its own pod
//! `switchboard.dev/role=active`, which the center's SIP Service selects, so calls go to it. A
//! node that loses the Lease (or cannot renew it before it expires) removes the label and
//! reports STANDBY. Replicating live state to the standby, re-INVITing calls at takeover and
//! draining are the hot-standby work built on this.
//!
//! With `highAvailability.mode: None`, or outside a cluster, there is no election: the node is
//! the only one and serves (ACTIVE).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use switchboard_crds::callcenter::{HaMode, HighAvailabilitySpec};
use switchboard_lease::{
    LeaseTiming, acquire, holder_identity, holder_pod, keep, lease_api, release, try_acquire,
};
use switchboard_proto::{CONTROL_PORT, ROLE_ACTIVE, ROLE_LABEL};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::node::PodEnv;

/// What the node does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves calls (holds the Lease, or is the only node).
    Active,
    /// Waits for the Lease.
    Standby,
}

/// Where to elect: the pod's namespace and name and the Lease, when the node runs in a pod of
/// a HotStandby center; `None` when it serves alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    pub namespace: String,
    pub pod: String,
    pub lease: String,
    pub timing: LeaseTiming,
}

/// The election this node takes part in, from its environment and the center's spec.
pub fn election(env: &PodEnv, ha: &HighAvailabilitySpec) -> Option<Election> {
    if ha.mode != HaMode::HotStandby {
        return None;
    }
    Some(Election {
        namespace: env.pod_namespace.clone()?,
        pod: env.pod_name.clone()?,
        lease: env.lease_name.clone()?,
        timing: LeaseTiming {
            duration: Duration::from_secs(u64::from(ha.lease_duration_seconds)),
            renew_every: Duration::from_secs(u64::from(ha.renew_interval_seconds)),
        },
    })
}

/// The node's role as metrics: what the on-call alerts on "no active node", "standby not
/// ready" and "a failover happened" read.
#[derive(Clone)]
pub struct RoleMetrics {
    /// `switchboard_node_role{role}`: 1 for the role the node has, 0 for the other.
    pub role: IntGaugeVec,
    /// `switchboard_standby_ready`: 1 when this standby could take over live calls. A
    /// standby is ready only with live state replicated from the active; until that
    /// replication runs it stays 0, as the CallCenter's `StandbyReady=False` says.
    pub standby_ready: IntGauge,
    /// `switchboard_failovers_total`: times this node took the Lease over from another
    /// holder, or took over the calls of a draining node that died before they ended (not
    /// counting the first election or a Lease handed over on drain).
    pub failovers: IntCounter,
}

impl RoleMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            role: IntGaugeVec::new(
                Opts::new(
                    "switchboard_node_role",
                    "The node's role: 1 for the role it has (active serves calls, standby waits for the Lease), 0 for the other.",
                ),
                &["role"],
            )?,
            standby_ready: IntGauge::new(
                "switchboard_standby_ready",
                "1 when this standby node could take over live calls (state replicated from the active), else 0.",
            )?,
            failovers: IntCounter::new(
                "switchboard_failovers_total",
                "Times this node took over from a failed active node: its expired Lease, or the calls of a draining node that died before they ended.",
            )?,
        };
        registry.register(Box::new(metrics.role.clone()))?;
        registry.register(Box::new(metrics.standby_ready.clone()))?;
        registry.register(Box::new(metrics.failovers.clone()))?;
        Ok(metrics)
    }

    fn show(&self, role: Role) {
        let active = i64::from(role == Role::Active);
        self.role.with_label_values(&["active"]).set(active);
        self.role.with_label_values(&["standby"]).set(1 - active);
    }
}

/// Keeps the role metrics equal to the published role, for the life of the node.
pub async fn export(mut role: watch::Receiver<Role>, metrics: RoleMetrics) {
    loop {
        let now = *role.borrow_and_update();
        metrics.show(now);
        if role.changed().await.is_err() {
            return;
        }
    }
}

/// Whom a node follows: the Lease holder while it stands by (`active`, the replication
/// follower's endpoint), and while it is active the draining node it took a handed-over
/// Lease from (`predecessor`), until that one's calls are over.
pub struct Following {
    pub active: watch::Sender<Option<String>>,
    pub predecessor: watch::Sender<Option<String>>,
    /// Whether this node follows the active in sync (it could take over now).
    pub in_sync: Box<dyn Fn() -> bool + Send + Sync>,
    /// Told each time the stream from the followed node broke or could not be opened.
    pub stream_lost: std::sync::Arc<tokio::sync::Notify>,
    /// Told when this active took over the calls of the draining node it followed, which
    /// died before they ended: a failover the Lease's change of holder did not show.
    pub predecessor_died: std::sync::Arc<tokio::sync::Notify>,
    /// Told when the followed active, draining, gave its Lease up: take it now.
    pub lease_handed_over: std::sync::Arc<tokio::sync::Notify>,
}

/// How often a node that defers its first claim looks whether it follows the active in sync.
const SYNC_POLL: Duration = Duration::from_millis(100);

/// Runs the election for the life of the node, publishing the role on `role`.
pub async fn run(
    election: Election,
    role: watch::Sender<Role>,
    metrics: RoleMetrics,
    replication: std::sync::Arc<crate::replication::ReplicationHub>,
    Following {
        active,
        predecessor,
        in_sync,
        stream_lost,
        predecessor_died,
        lease_handed_over,
    }: Following,
    take_over: impl Fn(i64, bool),
    mut drain: watch::Receiver<bool>,
) {
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(error) => {
            // Without the API server the node cannot know whether the other one serves:
            // staying standby is the safe side (two actives must never be).
            warn!(%error, "no Kubernetes API: staying standby");
            role.send_replace(Role::Standby);
            return;
        }
    };
    let leases = lease_api(client.clone(), &election.namespace);
    let pods: Api<Pod> = Api::namespaced(client, &election.namespace);
    // The Lease names this process, not just its pod: a StatefulSet pod restarted under the
    // same name must not renew its dead predecessor's Lease as if it were its own (it has
    // none of the state that Lease stands for); it waits for the Lease to expire and takes
    // it over like any standby.
    let me = holder_identity(&election.pod, rand::random());
    let following = active.subscribe();
    tokio::spawn(track_active(
        leases.clone(),
        pods.clone(),
        election.clone(),
        role.subscribe(),
        active,
        predecessor.subscribe(),
    ));
    // A container restarted in the same pod keeps the pod's labels: drop a stale mark first.
    mark(&pods, &election.pod, false).await;
    role.send_replace(Role::Standby);
    // A node that starts while the Lease is in use (held by its own dead predecessor or the
    // other node, or just handed over by a draining one) has followed nobody yet: the standby
    // that has must win the Lease (a pod deleted with no grace drains, hands over, and is back
    // under its old name within a second). So it waits past the Lease's expiry first, unless
    // it is in sync with a live active before that (then it is that following standby).
    if let Ok(Some(lease)) = leases.get_opt(&election.lease).await
        && switchboard_lease::in_use(lease.spec.as_ref(), k8s_openapi::jiff::Timestamp::now())
    {
        let defer = election.timing.takeover_bound();
        info!(
            ?defer,
            "the Lease is in use: leaving the first claim to a following standby"
        );
        let until = tokio::time::Instant::now() + defer;
        while !in_sync() && tokio::time::Instant::now() < until {
            tokio::time::sleep(SYNC_POLL).await;
        }
    }
    loop {
        info!(lease = %election.lease, "standby: waiting for the Lease");
        let held = tokio::select! {
            held = acquire(&leases, &election.lease, &me, &election.timing) => held,
            held = take_from_dead_holder(&leases, &pods, &election, &me, &stream_lost) => held,
            held = take_handed_over(&leases, &election, &me, &lease_handed_over) => held,
            () = draining(&mut drain) => {
                info!("draining: no longer competing for the Lease");
                return hold_role(role).await;
            }
        };
        if let Some(previous) = &held.taken_from {
            metrics.failovers.inc();
            warn!(lease = %election.lease, %previous, transitions = held.transitions, "failover: took the Lease over");
        }
        info!(lease = %election.lease, transitions = held.transitions, "active: holding the Lease");
        // What this node replicates from now on belongs to its term.
        replication.set_term(i64::from(held.transitions));
        // A Lease handed over by a draining node: it still serves its calls. Follow it on
        // until they ended; the calls still up if its stream breaks first are taken over then.
        predecessor.send_replace(
            held.taken_from
                .is_none()
                .then(|| following.borrow().clone())
                .flatten(),
        );
        // Active before the takeover, so the calls taken over can send their re-INVITEs at
        // once; new calls arrive only once the pod is marked, after the previous active's
        // live state is installed.
        role.send_replace(Role::Active);
        take_over(i64::from(held.transitions), held.taken_from.is_some());
        // Renewals start while the pod is being marked: a slow API server must not let the
        // Lease lapse under a node that serves.
        let holding = async {
            let renewing = async {
                tokio::select! {
                    lost = keep(&leases, &election.lease, &me, &election.timing) => lost,
                    never = count_predecessor_deaths(&leases, &election.lease, &me, &predecessor_died) => match never {},
                }
            };
            let (lost, (), ()) = tokio::join!(
                renewing,
                mark(&pods, &election.pod, true),
                unmark_predecessor(&pods, &election.pod, held.taken_from.as_deref()),
            );
            lost
        };
        tokio::select! {
            lost = holding => {
                warn!(lease = %election.lease, reason = %lost, "lost the Lease: standby");
                role.send_replace(Role::Standby);
                mark(&pods, &election.pod, false).await;
            }
            () = draining(&mut drain) => {
                // Hand over: clear the Lease so the standby takes it at once, and keep the
                // pod's mark until the standby's pod carries it, so the SIP Service always
                // has a node (new calls reaching this one meanwhile get no answer and their
                // retransmissions reach the other).
                role.send_replace(Role::Standby);
                match release(&leases, &election.lease, &me).await {
                    Ok(true) => {
                        info!(lease = %election.lease, "draining: Lease handed over");
                        // The standby that follows takes it at once, not at its next try.
                        replication.hand_over();
                    }
                    Ok(false) => warn!(lease = %election.lease, "draining: the Lease was not ours any more"),
                    Err(error) => warn!(%error, "draining: cannot hand the Lease over; it expires"),
                }
                let limit = election.timing.takeover_bound();
                match successor_marked(&leases, &pods, &election.lease, &me, limit).await {
                    Some(successor) => info!(%successor, "draining: the SIP Service reaches the new active"),
                    None => warn!(?limit, "draining: no new active marked in time"),
                }
                mark(&pods, &election.pod, false).await;
                return hold_role(role).await;
            }
        }
    }
}

/// Takes the Lease each time the followed active says it handed it over (a drain), instead
/// of at the next try; another node may have been quicker. Returns once this node holds it.
async fn take_handed_over(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    election: &Election,
    me: &str,
    lease_handed_over: &tokio::sync::Notify,
) -> switchboard_lease::Holding {
    loop {
        lease_handed_over.notified().await;
        match try_acquire(leases, &election.lease, me, &election.timing).await {
            Ok(Some(held)) => return held,
            Ok(None) => info!(lease = %election.lease, "the handed-over Lease is taken already"),
            Err(error) => warn!(%error, "cannot take the handed-over Lease"),
        }
    }
}

/// Counts on the Lease each failover `predecessor_died` tells of, for the operator's
/// `status.failoverCount`, for as long as this node holds the Lease.
async fn count_predecessor_deaths(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    lease: &str,
    me: &str,
    predecessor_died: &tokio::sync::Notify,
) -> std::convert::Infallible {
    loop {
        predecessor_died.notified().await;
        match switchboard_lease::count_failover(leases, lease, me).await {
            Ok(true) => info!(%lease, "the draining node's death counted as a failover"),
            Ok(false) => warn!(%lease, "the Lease is not ours: the failover is not counted"),
            Err(error) => warn!(%error, "cannot count the failover on the Lease"),
        }
    }
}

/// A draining node's role stays as it is until the process ends: the role's sender is kept,
/// so what watches the role (the replication stream a draining node still feeds) does not
/// take its closing for a change.
async fn hold_role(role: watch::Sender<Role>) {
    std::future::pending::<()>().await;
    drop(role);
}

/// Returns once a drain was asked for (never, if the drain switch is gone).
async fn draining(drain: &mut watch::Receiver<bool>) {
    if drain.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// While this node stands by, keeps `active` naming the control URL of the node that holds
/// the Lease (its pod's IP and control port), so the standby follows it; while it is active,
/// the draining node it took a handed-over Lease from (`predecessor`), else `None`.
async fn track_active(
    leases: Api<k8s_openapi::api::coordination::v1::Lease>,
    pods: Api<Pod>,
    election: Election,
    mut role: watch::Receiver<Role>,
    active: watch::Sender<Option<String>>,
    mut predecessor: watch::Receiver<Option<String>>,
) {
    loop {
        let url = if *role.borrow_and_update() == Role::Standby {
            // A Lease without a holder (handed over, or never taken) changes nothing: the
            // node followed until now may be the draining one this node is about to relieve.
            match holder_url(&leases, &pods, &election).await {
                Some(url) => Some(url),
                None => active.borrow().clone(),
            }
        } else {
            // Active: the draining node it took the Lease from, while that one has calls.
            predecessor.borrow_and_update().clone()
        };
        active.send_if_modified(|now| {
            let changed = *now != url;
            if changed {
                info!(active = ?url, "the active node to follow");
                *now = url;
            }
            changed
        });
        // Look again after a renew interval, or at once when the role changes.
        tokio::select! {
            () = tokio::time::sleep(election.timing.renew_every) => {}
            changed = role.changed() => if changed.is_err() { return },
            changed = predecessor.changed() => if changed.is_err() { return },
        }
    }
}

/// The control URL of the Lease holder's pod, unless that is this node or it has no IP yet.
async fn holder_url(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    pods: &Api<Pod>,
    election: &Election,
) -> Option<String> {
    let lease = match leases.get_opt(&election.lease).await {
        Ok(l) => l?,
        Err(error) => {
            warn!(%error, "cannot read the Lease to find the active node");
            return None;
        }
    };
    let holder = lease.spec?.holder_identity.filter(|h| !h.is_empty())?;
    let holder = holder_pod(&holder);
    if holder == election.pod {
        return None;
    }
    switchboard_lease::control_url(&active_pod(pods, holder).await?, CONTROL_PORT)
}

/// The pod of the (last known) active node, if it can be read.
async fn active_pod(pods: &Api<Pod>, name: &str) -> Option<Pod> {
    match pods.get_opt(name).await {
        Ok(pod) => pod,
        Err(error) => {
            warn!(%error, pod = name, "cannot read the active node's pod");
            None
        }
    }
}

/// The Lease's holder, if it has one other than `me` (and the Lease can be read).
async fn other_holder(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    lease: &str,
    me: &str,
) -> Option<String> {
    leases
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty() && h != me)
}

/// How long a standby waits for the holder's control port to accept or refuse.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Waits for proof that the Lease holder's process is gone, and takes its Lease then, before
/// it expires: after the stream from it broke (`stream_lost`), the holder's pod refuses
/// connections on its control port (the pod's network answers, no process listens; the node
/// exits when its control server stops). A holder merely out of reach (its pod deleted, a
/// partition) gives no such proof: its Lease must expire. A holder that was not dead after
/// all keeps its Lease: the takeover is a compare-and-swap against its renewals.
async fn take_from_dead_holder(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    pods: &Api<Pod>,
    election: &Election,
    me: &str,
    stream_lost: &tokio::sync::Notify,
) -> switchboard_lease::Holding {
    loop {
        stream_lost.notified().await;
        let Some(holder) = other_holder(leases, &election.lease, me).await else {
            continue;
        };
        let Some(address) = active_pod(pods, holder_pod(&holder))
            .await
            .and_then(|pod| switchboard_lease::control_address(&pod, CONTROL_PORT))
        else {
            continue;
        };
        let refused = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
        );
        if !refused {
            continue;
        }
        match switchboard_lease::take_from_dead(
            leases,
            &election.lease,
            me,
            &holder,
            &election.timing,
        )
        .await
        {
            Ok(Some(held)) => {
                warn!(%holder, %address, "the active node's process is gone (its control port refuses): took its Lease before it expired");
                return held;
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "cannot take the Lease from the dead active node"),
        }
    }
}

/// How often a draining node looks whether the node it handed the Lease to is marked.
const SUCCESSOR_POLL: Duration = Duration::from_millis(100);

/// After a handover: waits (at most `limit`) until another node holds the Lease and its pod
/// carries the active mark; returns that pod.
async fn successor_marked(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    pods: &Api<Pod>,
    lease: &str,
    me: &str,
    limit: Duration,
) -> Option<String> {
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        if let Some(holder) = other_holder(leases, lease, me).await {
            let pod = holder_pod(&holder);
            let marked = pods.get_opt(pod).await.ok().flatten().is_some_and(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ROLE_LABEL))
                    .is_some_and(|v| v == ROLE_ACTIVE)
            });
            if marked {
                return Some(pod.to_string());
            }
        }
        tokio::time::sleep(SUCCESSOR_POLL).await;
    }
    None
}

/// After a failover: removes the active mark from the failed holder's pod, which could not
/// (its container killed while the pod stays, or cut off from the API server), so the SIP
/// Service sends nothing more there.
async fn unmark_predecessor(pods: &Api<Pod>, me: &str, predecessor: Option<&str>) {
    if let Some(pod) = predecessor.map(holder_pod).filter(|p| *p != me) {
        mark(pods, pod, false).await;
    }
}

/// Sets or removes the active mark on `pod` (the node's own, or its failed predecessor's),
/// retrying a few times: a pod that keeps a stale mark would draw calls it no longer serves.
async fn mark(pods: &Api<Pod>, pod: &str, active: bool) {
    let value = if active {
        serde_json::Value::from(ROLE_ACTIVE)
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {ROLE_LABEL: value}}});
    for attempt in 1..=5u32 {
        match pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            // A deleted pod (a node draining after its pod was deleted) carries no mark, nor
            // does the node run in one (a node process on its own).
            Err(kube::Error::Api(e)) if e.code == 404 => {
                debug!(pod, active, "no pod to mark");
                return;
            }
            Err(error) => {
                warn!(pod, active, attempt, %error, "cannot mark the pod");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_role_metrics_follow_the_role() {
        let registry = Registry::new();
        let metrics = RoleMetrics::new(&registry).expect("metrics");
        let (tx, rx) = watch::channel(Role::Standby);
        let task = tokio::spawn(export(rx, metrics.clone()));
        let seen = |role: &str| metrics.role.with_label_values(&[role]).get();
        for _ in 0..100 {
            if seen("standby") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((seen("active"), seen("standby")), (0, 1));
        tx.send_replace(Role::Active);
        for _ in 0..100 {
            if seen("active") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((seen("active"), seen("standby")), (1, 0));
        assert_eq!(metrics.standby_ready.get(), 0);
        assert_eq!(metrics.failovers.get(), 0);
        drop(tx);
        task.await.expect("the exporter ends with the role channel");
    }

    fn env() -> PodEnv {
        PodEnv {
            pod_name: Some("campus-media-1".into()),
            pod_namespace: Some("college".into()),
            lease_name: Some("campus-active".into()),
            ..PodEnv::default()
        }
    }

    #[test]
    fn only_a_hot_standby_pod_elects_with_the_centers_timing() {
        let ha: HighAvailabilitySpec = serde_json::from_value(serde_json::json!({
            "mode": "HotStandby", "leaseDurationSeconds": 6, "renewIntervalSeconds": 2
        }))
        .expect("valid");
        assert_eq!(
            election(&env(), &ha),
            Some(Election {
                namespace: "college".into(),
                pod: "campus-media-1".into(),
                lease: "campus-active".into(),
                timing: LeaseTiming {
                    duration: Duration::from_secs(6),
                    renew_every: Duration::from_secs(2),
                },
            })
        );
        let alone = HighAvailabilitySpec {
            mode: HaMode::None,
            ..ha.clone()
        };
        assert_eq!(election(&env(), &alone), None);
        assert_eq!(election(&PodEnv::default(), &ha), None, "standalone");
    }
}
