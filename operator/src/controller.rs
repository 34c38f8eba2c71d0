//! The CallCenter controller. One reconcile per CallCenter, as a pipeline:
//! 1. gather the CallCenter's Queues, Seats and the Secrets of its namespace;
//! 2. build the node config and every child object (pure: [`crate::node_config`],
//!    [`crate::builders`]);
//! 3. apply the children with server-side apply under one field manager;
//! 4. write status (only when it changed) and an Event for every cross-object problem.
//!
//! Queues, Seats and Secrets are watched and mapped to the CallCenters they affect, so a change
//! to one Queue produces a new config generation without touching anything else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::controller::{self as runtime_controller, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use switchboard_crds::callcenter::{NodeConfigState, NodeStatus};
use switchboard_crds::common::{condition, conditions, set_condition};
use switchboard_crds::{CallCenter, CallCenterStatus, Queue, Seat};
use switchboard_proto::node::v1::ConfigSnapshot;
use tokio::sync::mpsc;

use crate::builders::{
    BuildError, BuildOptions, CONFIG_GENERATION_ANNOTATION, CONFIG_HASH_ANNOTATION, Children,
    PodDisruptionBudgetObject, build_children,
};
use crate::metrics::Metrics;
use crate::node_state::{CenterView, NodeStates};
use crate::nodes::{self, NodeEndpoint, PushResult};
use crate::traffic::ScalingPolicy;
use crate::trunks::{SCALE_REFUSED, ShrinkMemory, TRUNK_SCALED, TrunkPlan};
use switchboard_proto::node_config::{NodeConfigError, ObjectKind, Problem, build_node_config};

/// How long the controller waits for more events about a center before reconciling it.
pub const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(200);

/// The field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "switchboard-operator";

/// Why a reconcile failed; the label goes on `switchboard_operator_reconcile_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building the children: {0}")]
    Build(#[from] BuildError),
    #[error("the CallCenter cannot be served: {0}")]
    InvalidCallCenter(#[from] NodeConfigError),
    #[error("serialising {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl ReconcileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "kube",
            ReconcileError::Build(_) => "build",
            ReconcileError::InvalidCallCenter(_) => "invalid",
            ReconcileError::Serialize { .. } => "serialize",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub options: BuildOptions,
    pub metrics: Metrics,
    /// One recorder for the process: it remembers recent Events and turns repeats into a
    /// series instead of new objects.
    pub recorder: Recorder,
    /// Watch only this namespace (`--watch-namespace`); `None` watches every namespace.
    pub watch_namespace: Option<String>,
    /// Consecutive reconciles (by `namespace/name`) after which some node was still not
    /// running the pushed config: the retry backs off with them.
    push_failures: Mutex<HashMap<String, u32>>,
    /// What the media nodes report, by center.
    pub node_states: Arc<NodeStates>,
    /// Since when each autoscaled trunk's traffic has wanted fewer channels.
    trunk_memory: ShrinkMemory,
    /// How trunks follow their traffic.
    pub scaling_policy: ScalingPolicy,
    /// A node report wakes its center's reconcile through this channel.
    wake: mpsc::UnboundedSender<ObjectRef<CallCenter>>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<CallCenter>>>>,
}

impl Context {
    pub fn new(
        client: Client,
        options: BuildOptions,
        metrics: Metrics,
        watch_namespace: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let (wake, woken) = mpsc::unbounded_channel();
        Self {
            client,
            options,
            metrics,
            recorder,
            watch_namespace,
            push_failures: Mutex::new(HashMap::new()),
            node_states: Arc::new(NodeStates::default()),
            trunk_memory: ShrinkMemory::default(),
            scaling_policy: ScalingPolicy::default(),
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }

    /// Records how a round of pushes to a center's nodes went; returns the failed rounds in a
    /// row so far (0 when every node is current).
    fn note_push_round(&self, center: &str, all_current: bool) -> u32 {
        let mut failures = self
            .push_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all_current {
            failures.remove(center);
            return 0;
        }
        let n = failures.entry(center.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
}

/// Runs the CallCenter, Queue and Seat controllers until shutdown.
pub async fn run(ctx: Arc<Context>) {
    tokio::join!(
        run_call_centers(Arc::clone(&ctx)),
        crate::members::run::<Queue>(Arc::clone(&ctx)),
        crate::members::run::<Seat>(ctx),
    );
}

/// Runs the CallCenter controller until the stream ends (shutdown).
async fn run_call_centers(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let ns = &ctx.watch_namespace;
    let centers: Api<CallCenter> = scoped(&client, ns);
    let to_center = |namespace: Option<String>, center: &str| {
        namespace.map(|ns| ObjectRef::<CallCenter>::new(center).within(&ns))
    };
    // Node reports wake their center; the debounce folds a burst of events (node reports, a
    // thousand Seats applied at once) into one reconcile, short enough that a single change
    // still reaches the nodes well within a second.
    let woken = ctx
        .woken
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let woken = futures::stream::unfold(woken, |rx| async move {
        let mut rx = rx?;
        let center = rx.recv().await?;
        Some((center, Some(rx)))
    });
    let controller = Controller::new(centers, watcher::Config::default());
    let known_centers = controller.store();
    controller
        .with_config(runtime_controller::Config::default().debounce(RECONCILE_DEBOUNCE))
        .reconcile_on(woken)
        // A Secret holds seat passwords, trunk credentials or member PINs of the centers in its
        // namespace: a rotated password must reach the nodes (as a new HA1) without waiting for
        // a resync.
        .watches(
            scoped::<Secret>(&client, ns),
            watcher::Config::default(),
            move |secret| {
                let namespace = secret.namespace();
                known_centers
                    .state()
                    .into_iter()
                    .filter(|c| c.namespace() == namespace)
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .owns(
            scoped::<StatefulSet>(&client, ns),
            watcher::Config::default(),
        )
        .owns(scoped::<ConfigMap>(&client, ns), watcher::Config::default())
        .owns(scoped::<Service>(&client, ns), watcher::Config::default())
        .watches(
            scoped::<Queue>(&client, ns),
            watcher::Config::default(),
            move |q| to_center(q.namespace(), &q.spec.call_center),
        )
        .watches(
            scoped::<Seat>(&client, ns),
            watcher::Config::default(),
            move |s| to_center(s.namespace(), &s.spec.call_center),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(callcenter = %object, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// An Api over one namespace, or over all of them.
pub(crate) fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn reconcile(center: Arc<CallCenter>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_center(&center, &ctx).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&["CallCenter", outcome])
        .inc();
    ctx.metrics
        .reconcile_duration
        .with_label_values(&["CallCenter"])
        .observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(center: Arc<CallCenter>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["CallCenter", error.metric_label()])
        .inc();
    tracing::warn!(callcenter = %center.name_any(), error = %error, "reconcile failed; retrying");
    // Backoff: the controller also requeues on any watched change.
    Action::requeue(Duration::from_secs(30))
}

async fn reconcile_center(center: &CallCenter, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = center.namespace().unwrap_or_default();
    let client = &ctx.client;
    let lp = ListParams::default();
    let queues = Api::<Queue>::namespaced(client.clone(), &namespace)
        .list(&lp)
        .await?
        .items;
    let seats = Api::<Seat>::namespaced(client.clone(), &namespace)
        .list(&lp)
        .await?
        .items;
    let secrets: BTreeMap<String, Secret> = Api::<Secret>::namespaced(client.clone(), &namespace)
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();

    // The generation goes up only when the content changes: compare with the ConfigMap the
    // nodes run.
    let previous_generation = center
        .status
        .as_ref()
        .and_then(|s| s.config_generation)
        .unwrap_or(0);
    let recorder = &ctx.recorder;
    // Trunk limits first: the node config carries them.
    let key = center_key(center);
    let live = ctx.node_states.view(&key);
    let now = k8s_openapi::jiff::Timestamp::now();
    let trunk_plans = crate::trunks::plan_trunks(
        center,
        &live,
        &ctx.trunk_memory.of(&key),
        &ctx.scaling_policy,
        now,
    );
    let served = crate::trunks::served_center(center, &trunk_plans);
    let (config, problems) =
        match build_node_config(&served, &queues, &seats, &secrets, previous_generation) {
            Ok(built) => built,
            Err(e) => {
                publish_on(
                    recorder,
                    &center.object_ref(&()),
                    "InvalidCallCenter",
                    &e.to_string(),
                )
                .await;
                write_status(client, center, |status, now| {
                    mark(
                        status,
                        center,
                        conditions::READY,
                        "False",
                        "InvalidCallCenter",
                        &e.to_string(),
                        now,
                    );
                    mark(
                        status,
                        center,
                        conditions::DEGRADED,
                        "True",
                        "InvalidCallCenter",
                        &e.to_string(),
                        now,
                    );
                })
                .await?;
                return Err(e.into());
            }
        };
    let rendered = config.render().map_err(BuildError::from)?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let names = crate::builders::ChildNames::new(&center.name_any());
    let running = config_maps.get_opt(&names.config_map).await?;
    let running_hash = running.as_ref().and_then(|cm| {
        cm.metadata
            .annotations
            .as_ref()?
            .get(CONFIG_HASH_ANNOTATION)
            .cloned()
    });
    let generation = if running_hash.as_deref() == Some(rendered.hash.as_str()) {
        running
            .as_ref()
            .and_then(|cm| {
                cm.metadata
                    .annotations
                    .as_ref()?
                    .get(CONFIG_GENERATION_ANNOTATION)?
                    .parse()
                    .ok()
            })
            .unwrap_or(previous_generation.max(1))
    } else {
        previous_generation + 1
    };
    let config = crate::node_config::NodeConfig {
        generation,
        ..config
    };
    let children = build_children(center, &config, &ctx.options)?;
    apply_children(client, &namespace, &children).await?;
    let node_statuses = push_config(ctx, center, &config).await?;

    for problem in &problems {
        publish_on(
            recorder,
            &center.object_ref(&()),
            problem.reason.as_str(),
            &problem.to_string(),
        )
        .await;
    }
    mark_members(client, recorder, center, &queues, &seats, &problems, &live).await?;
    let ready_replicas = Api::<StatefulSet>::namespaced(client.clone(), &namespace)
        .get_opt(&names.stateful_set)
        .await?
        .and_then(|s| s.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let wanted = children.stateful_set.spec.replicas.unwrap_or(1);
    let all_current = node_statuses
        .iter()
        .all(|n| n.config == NodeConfigState::Current);
    let failed_rounds = ctx.note_push_round(&center_key(center), all_current);
    let lease =
        if center.spec.high_availability.mode == switchboard_crds::callcenter::HaMode::HotStandby {
            Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &namespace)
                .get_opt(&names.lease)
                .await?
        } else {
            None
        };
    let change = active_node_change(center.status.as_ref(), lease.as_ref());
    if let Some(change) = &change {
        let regarding = center.object_ref(&());
        if let Some(message) = &change.failover {
            tracing::warn!(center = %key, %message, "failover");
            publish(recorder, &regarding, EventType::Warning, FAILOVER, message).await;
        }
        if let Some(message) = &change.handover {
            tracing::info!(center = %key, %message, "handover");
            publish(recorder, &regarding, EventType::Normal, HANDOVER, message).await;
        }
    }
    write_status(client, center, |status, now| {
        if let Some(change) = change.as_ref().filter(|c| c.failovers > 0) {
            status.failover_count = status.failover_count.saturating_add(change.failovers);
            status.last_failover_time = Some(now.clone());
        }
        if let Some(lease) = &lease {
            if let Some(transitions) = lease.spec.as_ref().and_then(|l| l.lease_transitions) {
                status.active_lease_transitions = Some(transitions);
            }
            status.active_lease_failovers = Some(switchboard_lease::failovers(lease));
        }
        status.config_generation = Some(generation);
        status.nodes = node_statuses.clone();
        status.seats_registered = live.seats_registered();
        status.seats_ready = live.seats_ready();
        status.active_node = live.active_node.clone();
        status.standby_node = live.standby_node.clone();
        status.trunks = trunk_plans.iter().map(|p| p.status.clone()).collect();
        status.trunk_channels = trunk_plans.first().map(|p| p.status.limit);
        let mut degraded = Vec::new();
        if !problems.is_empty() {
            degraded.push(("ObjectsLeftOut", summarize(&problems)));
        }
        let rejected: Vec<String> = node_statuses
            .iter()
            .filter(|n| n.config == NodeConfigState::Rejected)
            .map(|n| {
                format!(
                    "node {} refused config generation {generation} and keeps running {}: {}",
                    n.name,
                    n.config_generation
                        .map_or_else(|| "its previous one".to_string(), |g| g.to_string()),
                    n.message.as_deref().unwrap_or("no reason given")
                )
            })
            .collect();
        if !rejected.is_empty() {
            degraded.push(("ConfigRejected", rejected.join("; ")));
        }
        match degraded.as_slice() {
            [] => mark(
                status,
                center,
                conditions::DEGRADED,
                "False",
                "NoProblems",
                "every Queue and Seat resolves and every node runs the config",
                now,
            ),
            [(reason, message), rest @ ..] => {
                let mut text = message.clone();
                for (_, more) in rest {
                    text.push_str("; ");
                    text.push_str(more);
                }
                mark(
                    status,
                    center,
                    conditions::DEGRADED,
                    "True",
                    reason,
                    &text,
                    now,
                );
            }
        }
        let lagging: Vec<String> = node_statuses
            .iter()
            .filter(|n| n.config != NodeConfigState::Current)
            .map(|n| match &n.message {
                Some(m) => format!("{} ({:?}: {m})", n.name, n.config),
                None => format!("{} ({:?})", n.name, n.config),
            })
            .collect();
        let serving = format!(
            "{ready_replicas} of {wanted} media node(s) ready, config generation {generation}"
        );
        let (progressing, ready) = if ready_replicas < wanted {
            (
                ("True", "WaitingForNodes", serving.clone()),
                ("False", "WaitingForNodes"),
            )
        } else if !lagging.is_empty() {
            (
                (
                    "True",
                    "ConfigPending",
                    format!("{serving}; not running it yet: {}", lagging.join(", ")),
                ),
                ("False", "ConfigPending"),
            )
        } else {
            (
                ("False", "RolledOut", serving.clone()),
                ("True", "NodesReady"),
            )
        };
        let (value, reason, message) = progressing;
        mark(
            status,
            center,
            conditions::PROGRESSING,
            value,
            reason,
            &message,
            now,
        );
        mark(
            status,
            center,
            conditions::READY,
            ready.0,
            ready.1,
            &message,
            now,
        );
        let available = if ready_replicas > 0 { "True" } else { "False" };
        let available_reason = if ready_replicas > 0 {
            "NodesReady"
        } else {
            "WaitingForNodes"
        };
        mark(
            status,
            center,
            conditions::AVAILABLE,
            available,
            available_reason,
            &serving,
            now,
        );
        let (value, reason, message) = standby_readiness(center, &live, &node_statuses);
        mark(
            status,
            center,
            conditions::STANDBY_READY,
            value,
            reason,
            &message,
            now,
        );
    })
    .await?;
    // After the status holds the new limits (the scaler's memory), so a failed write repeats
    // the decision rather than losing it.
    ctx.trunk_memory.keep(&key, &trunk_plans);
    publish_trunk_events(recorder, center, &trunk_plans).await;
    if !all_current {
        // Nodes that could not take the config are retried sooner than the periodic resync.
        return Ok(Action::requeue(nodes::retry_delay(
            failed_rounds.saturating_sub(1),
        )));
    }
    if center.spec.trunks.iter().any(|t| t.channels.autoscaling) {
        // A quiet node sends nothing, yet a pending shrink needs a look once its cooldown ends.
        return Ok(Action::requeue(AUTOSCALING_RESYNC));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// How often a center with autoscaled trunks is reconciled without any event.
const AUTOSCALING_RESYNC: Duration = Duration::from_secs(60);

/// A Normal `TrunkScaled` Event for every changed limit and a Warning `ScaleRefused` for a
/// `spec.trunkChannels` outside its trunk's bounds.
async fn publish_trunk_events(recorder: &Recorder, center: &CallCenter, plans: &[TrunkPlan]) {
    let regarding = center.object_ref(&());
    for plan in plans {
        if let Some(change) = &plan.change {
            tracing::info!(
                callcenter = %center.name_any(), trunk = %change.trunk, from = change.from,
                to = change.to, reason = %change.reason, "trunk channel limit changed"
            );
            publish(
                recorder,
                &regarding,
                EventType::Normal,
                TRUNK_SCALED,
                &change.message(),
            )
            .await;
        }
        if let Some(refused) = &plan.refused {
            publish(
                recorder,
                &regarding,
                EventType::Warning,
                SCALE_REFUSED,
                refused,
            )
            .await;
        }
    }
}

/// The Event reason of a failover: a standby took over from a failed active node.
pub const FAILOVER: &str = "Failover";
/// The Event reason of a handover: a draining active node gave the Lease up to the standby.
pub const HANDOVER: &str = "Handover";

/// Changes of the active media node the operator has not counted yet, with their Events'
/// messages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ActiveNodeChange {
    /// Failovers since the operator last looked (usually 0 or 1).
    failovers: u32,
    failover: Option<String>,
    handover: Option<String>,
}

/// What the media nodes' Lease shows against what the status recorded: a rise of its
/// `leaseTransitions` is a change of holder; a rise of its failover count (kept by the nodes,
/// [`switchboard_lease::failovers`]) says how many were failovers, the rest were handovers.
/// The first sighting of a Lease only records it; a Lease recreated with fewer transitions
/// is no change.
fn active_node_change(
    status: Option<&CallCenterStatus>,
    lease: Option<&k8s_openapi::api::coordination::v1::Lease>,
) -> Option<ActiveNodeChange> {
    let status = status?;
    let seen = status.active_lease_transitions?;
    let lease = lease?;
    let spec = lease.spec.as_ref()?;
    let changes = u32::try_from(spec.lease_transitions?.checked_sub(seen)?).ok()?;
    // A failover need not change the holder (the calls of a draining node that died).
    let failovers = switchboard_lease::failovers(lease)
        .saturating_sub(status.active_lease_failovers.unwrap_or(0));
    let handovers = changes.saturating_sub(failovers);
    if failovers == 0 && handovers == 0 {
        return None;
    }
    let holder = spec
        .holder_identity
        .as_deref()
        .map(switchboard_lease::holder_pod)
        .filter(|h| !h.is_empty());
    // The Lease names the node it was last taken from or handed over by; the status's active
    // node is often gone already when the operator looks.
    let previous = switchboard_lease::previous_holder(lease).or(status.active_node.as_deref());
    let since = |n: u32, what: &str| {
        if n > 1 {
            format!(" ({n} {what} since the last look)")
        } else {
            String::new()
        }
    };
    let failover = (failovers > 0).then(|| {
        let what = match (previous, holder) {
            (Some(from), Some(to)) if from != to => {
                format!("media node {to} took over from {from}, which failed")
            }
            (_, Some(to)) => {
                format!("media node {to} took over the live calls of an active node that failed")
            }
            (_, None) => "the active media node failed; none holds the Lease yet".to_string(),
        };
        what + &since(failovers, "failovers")
    });
    let handover = (handovers > 0).then(|| {
        let what = match (previous, holder) {
            (Some(from), Some(to)) if from != to => {
                format!("media node {from} handed the active role over to {to}")
            }
            (_, Some(to)) => format!("media node {to} became the active node"),
            (_, None) => "the active media node gave up the Lease; none holds it yet".to_string(),
        };
        what + &since(handovers, "handovers")
    });
    Some(ActiveNodeChange {
        failovers,
        failover,
        handover,
    })
}

/// `StandbyReady`: whether a standby could take over: it runs the current config and
/// follows the active node's live state in sync (registrations, agent states, queued callers,
/// established calls), as it reports itself.
fn standby_readiness(
    center: &CallCenter,
    live: &CenterView,
    nodes: &[NodeStatus],
) -> (&'static str, &'static str, String) {
    use switchboard_crds::callcenter::HaMode;
    if center.spec.high_availability.mode == HaMode::None {
        return (
            "False",
            "NotConfigured",
            "highAvailability.mode is None: one media node, no standby".to_string(),
        );
    }
    let Some(standby) = &live.standby_node else {
        return (
            "False",
            "NoStandby",
            "no media node reports as standby".to_string(),
        );
    };
    let current = nodes
        .iter()
        .any(|n| &n.name == standby && n.config == NodeConfigState::Current);
    if !current {
        return (
            "False",
            "StandbyConfigPending",
            format!("standby {standby} does not run the current config yet"),
        );
    }
    match &live.standby_readiness {
        Some(r) if r.ready => (
            "True",
            "InSync",
            format!(
                "{standby} stands by on the current config and {}",
                r.message
            ),
        ),
        Some(r) => (
            "False",
            match r.reason.as_str() {
                "ReplicationLost" => "ReplicationLost",
                "ReplicationLagging" => "ReplicationLagging",
                _ => "NoReplication",
            },
            format!("{standby}: {}", r.message),
        ),
        None => (
            "False",
            "NoReplication",
            format!("{standby} does not report following the active node"),
        ),
    }
}

/// The key of a center in the operator's in-memory indexes.
fn center_key(center: &CallCenter) -> String {
    format!(
        "{}/{}",
        center.namespace().unwrap_or_default(),
        center.name_any()
    )
}

/// Pushes the center's node config to each of its media-node pods, all at once, and returns
/// each node's status line. Every reconcile pushes: a node that already runs the generation
/// answers UNCHANGED at once, and one that restarted from an older ConfigMap catches up.
async fn push_config(
    ctx: &Context,
    center: &CallCenter,
    config: &crate::node_config::NodeConfig,
) -> Result<Vec<NodeStatus>, ReconcileError> {
    let namespace = center.namespace().unwrap_or_default();
    let selector = crate::builders::selector_labels(&center.name_any())
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let targets = nodes::endpoints(&pods);
    ctx.node_states.watch(
        &center_key(center),
        &ObjectRef::from_obj(center),
        &targets,
        &ctx.wake,
    );
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let yaml = config.to_yaml().map_err(BuildError::from)?.into_bytes();
    let generation = config.generation;
    let pushes = targets.iter().map(|target: &NodeEndpoint| {
        let snapshot = ConfigSnapshot::new(generation, yaml.clone());
        async move {
            let started = Instant::now();
            let result = nodes::push(target, snapshot, nodes::PUSH_TIMEOUT).await;
            if !matches!(result, PushResult::NoAddress) {
                ctx.metrics
                    .config_push_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            ctx.metrics
                .config_pushes
                .with_label_values(&[result.metric_label()])
                .inc();
            match &result {
                PushResult::Answered(reply) => tracing::debug!(
                    node = %target.pod, generation, outcome = result.metric_label(),
                    running = reply.running_generation, "config pushed"
                ),
                PushResult::Unreachable(reason) => tracing::warn!(
                    node = %target.pod, generation, %reason, "media node unreachable"
                ),
                PushResult::NoAddress => {}
            }
            result
        }
    });
    let results = futures::future::join_all(pushes).await;
    let previous = center
        .status
        .as_ref()
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default();
    Ok(targets
        .iter()
        .zip(&results)
        .map(|(target, result)| {
            let before = previous.iter().find(|n| n.name == target.pod);
            nodes::node_status(&target.pod, generation, result, before)
        })
        .collect())
}

/// Sets `Resolved` on every Queue and Seat of the center — False with the problems that name
/// it (and an Event on it), True otherwise — and each Seat's registration and agent state as
/// its nodes report them, and each Queue's live figures when a node reports that queue,
/// writing only objects whose status changed.
async fn mark_members(
    client: &Client,
    recorder: &Recorder,
    center: &CallCenter,
    queues: &[Queue],
    seats: &[Seat],
    problems: &[Problem],
    live: &CenterView,
) -> Result<(), ReconcileError> {
    let center_name = center.name_any();
    let namespace = center.namespace().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let resolved = |kind: ObjectKind, name: &str, generation: Option<i64>| {
        let mine: Vec<&Problem> = problems
            .iter()
            .filter(|p| p.kind == kind && p.name == name)
            .collect();
        match mine.first() {
            None => condition(
                conditions::RESOLVED,
                "True",
                "Resolved",
                format!("served by CallCenter {center_name}"),
                generation,
                now.clone(),
            ),
            Some(first) => condition(
                conditions::RESOLVED,
                "False",
                first.reason.as_str(),
                mine.iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
                generation,
                now.clone(),
            ),
        }
    };
    let queues_api: Api<Queue> = Api::namespaced(client.clone(), &namespace);
    for queue in queues.iter().filter(|q| q.spec.call_center == center_name) {
        let mut conds = queue
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let cond = resolved(
            ObjectKind::Queue,
            &queue.name_any(),
            queue.metadata.generation,
        );
        let condition_changed = set_condition(&mut conds, cond.clone());
        let before = queue.status.clone().unwrap_or_default();
        let mut after = before.clone();
        after.conditions = conds;
        // Live figures only from a node that runs this queue's ACD; none report them yet
        // when the node has no ACD, and then the status keeps its defaults.
        let stats = live.queues.get(&queue.name_any());
        if let Some(stats) = stats {
            after.calls_waiting = stats.calls_waiting;
            after.longest_wait_seconds = stats.longest_wait_seconds;
            after.agents.ready = stats.agents_ready;
            after.service_level_percent = stats.service_level_percent;
            after.abandon_rate_percent = stats.abandon_rate_percent;
        }
        // Advice only from measured traffic: absent without a report or without calls.
        let target = queue
            .spec
            .service_level
            .as_ref()
            .unwrap_or(&center.spec.service_level);
        after.agents_required = stats.and_then(|s| crate::advice::agents_required(s, target));
        if after != before {
            let patch = serde_json::json!({"status": {
                "conditions": after.conditions,
                "callsWaiting": after.calls_waiting,
                "longestWaitSeconds": after.longest_wait_seconds,
                "agents": after.agents,
                "serviceLevelPercent": after.service_level_percent,
                "abandonRatePercent": after.abandon_rate_percent,
                "agentsRequired": after.agents_required,
            }});
            let event = condition_changed.then_some(&cond);
            patch_member_status(&queues_api, recorder, queue, &patch, event).await?;
        }
    }
    let seats_api: Api<Seat> = Api::namespaced(client.clone(), &namespace);
    for seat in seats.iter().filter(|s| s.spec.call_center == center_name) {
        let before = seat.status.clone().unwrap_or_default();
        let mut after = before.clone();
        let cond = resolved(ObjectKind::Seat, &seat.name_any(), seat.metadata.generation);
        let condition_changed = set_condition(&mut after.conditions, cond.clone());
        let view = live
            .seats
            .get(&seat.name_any())
            .cloned()
            .unwrap_or_default();
        after.registered = view.registered;
        if let Some(state) = view.agent_state {
            if after.agent_state != state {
                after.state_since = Some(now.clone());
            }
            after.agent_state = state;
            after.not_ready_reason = view.not_ready_reason;
        }
        if after == before {
            continue;
        }
        let patch = serde_json::json!({"status": {
            "conditions": after.conditions,
            "registered": after.registered,
            "agentState": after.agent_state,
            "notReadyReason": after.not_ready_reason,
            "stateSince": after.state_since,
        }});
        let event = condition_changed.then_some(&cond);
        patch_member_status(&seats_api, recorder, seat, &patch, event).await?;
    }
    Ok(())
}

/// Merge-patches a Queue's or Seat's status; with a condition that just changed to False,
/// also an Event saying why the object was left out.
pub(crate) async fn patch_member_status<K>(
    api: &Api<K>,
    recorder: &Recorder,
    object: &K,
    patch: &serde_json::Value,
    changed: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    if let Some(cond) = changed.filter(|c| c.status == "False") {
        publish_on(
            recorder,
            &object.object_ref(&()),
            &cond.reason,
            &cond.message,
        )
        .await;
    }
    Ok(())
}

async fn publish_on(
    recorder: &Recorder,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    note: &str,
) {
    publish(recorder, regarding, EventType::Warning, reason, note).await;
}

async fn publish(
    recorder: &Recorder,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, regarding).await {
        tracing::warn!(error = %e, "cannot publish an Event");
    }
}

fn summarize(problems: &[crate::node_config::Problem]) -> String {
    let shown: Vec<String> = problems.iter().take(5).map(ToString::to_string).collect();
    let more = problems.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{}; and {more} more", shown.join("; "))
    } else {
        shown.join("; ")
    }
}

fn mark(
    status: &mut CallCenterStatus,
    center: &CallCenter,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let generation = center.metadata.generation;
    set_condition(
        &mut status.conditions,
        condition(type_, value, reason, message, generation, now.clone()),
    );
}

/// Applies `edit` to the current status and patches it only when something changed, so a busy
/// center does not write status on every requeue.
async fn write_status(
    client: &Client,
    center: &CallCenter,
    edit: impl FnOnce(&mut CallCenterStatus, &Time),
) -> Result<(), ReconcileError> {
    let before = center.status.clone().unwrap_or_default();
    let mut after = before.clone();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    edit(&mut after, &now);
    after.observed_generation = center.metadata.generation;
    if after == before {
        return Ok(());
    }
    let api: Api<CallCenter> =
        Api::namespaced(client.clone(), &center.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": CallCenter::api_version(&()),
        "kind": CallCenter::kind(&()),
        "status": after,
    });
    api.patch_status(
        &center.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn apply_children(
    client: &Client,
    namespace: &str,
    children: &Children,
) -> Result<(), ReconcileError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    apply(client, namespace, &children.service_account, &params).await?;
    apply(client, namespace, &children.role, &params).await?;
    apply(client, namespace, &children.role_binding, &params).await?;
    apply(client, namespace, &children.config_map, &params).await?;
    for service in [
        &children.headless_service,
        &children.sip_service,
        &children.metrics_service,
    ] {
        apply(client, namespace, service, &params).await?;
    }
    apply(client, namespace, &children.stateful_set, &params).await?;
    match &children.pod_disruption_budget {
        PodDisruptionBudgetObject::V1(pdb) => apply(client, namespace, pdb, &params).await?,
        PodDisruptionBudgetObject::V1beta1(pdb) => {
            let ar = ApiResource {
                group: "policy".into(),
                version: "v1beta1".into(),
                api_version: "policy/v1beta1".into(),
                kind: "PodDisruptionBudget".into(),
                plural: "poddisruptionbudgets".into(),
            };
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar);
            api.patch(&pdb.name_any(), &params, &Patch::Apply(pdb))
                .await?;
        }
    }
    Ok(())
}

async fn apply<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    params: &PatchParams,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    // Server-side apply needs apiVersion and kind in the body; typed objects omit them.
    let mut body = serde_json::to_value(object).map_err(|source| ReconcileError::Serialize {
        what: "a child object",
        source,
    })?;
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(&object.name_any(), params, &Patch::Apply(&body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lease_tells_failovers_from_handovers() {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        use switchboard_lease::FAILOVERS_ANNOTATION;
        let status = |seen: Option<(i32, Option<u32>)>, active: Option<&str>| CallCenterStatus {
            active_lease_transitions: seen.map(|s| s.0),
            active_lease_failovers: seen.and_then(|s| s.1),
            active_node: active.map(str::to_string),
            ..CallCenterStatus::default()
        };
        let lease = |transitions: i32, failovers: Option<u32>, holder: &str| Lease {
            metadata: kube::api::ObjectMeta {
                annotations: failovers
                    .map(|n| [(FAILOVERS_ANNOTATION.to_string(), n.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(transitions),
                holder_identity: Some(holder.to_string()),
                ..LeaseSpec::default()
            }),
        };
        let change = |seen, active, lease: Lease| {
            super::active_node_change(Some(&status(seen, active)), Some(&lease))
        };
        // A failover: the holder changed and the nodes counted it.
        let took = change(
            Some((3, Some(1))),
            Some("campus-media-1"),
            lease(4, Some(2), "campus-media-0_0badf00d"),
        )
        .expect("a failover");
        assert_eq!(took.failovers, 1);
        assert_eq!(
            took.failover.as_deref(),
            Some("media node campus-media-0 took over from campus-media-1, which failed")
        );
        assert_eq!(took.handover, None);
        // A handover: the holder changed, no failover counted.
        let handed = change(
            Some((3, Some(1))),
            Some("campus-media-1"),
            lease(4, Some(1), "campus-media-0_0badf00d"),
        )
        .expect("a handover");
        assert_eq!((handed.failovers, handed.failover.as_deref()), (0, None));
        assert_eq!(
            handed.handover.as_deref(),
            Some("media node campus-media-1 handed the active role over to campus-media-0")
        );
        // A draining node that died after handing over: one change, one failover; the Lease
        // names the node it came from when the status no longer does.
        let mut handed_by_1 = lease(4, Some(2), "campus-media-0_0badf00d");
        handed_by_1
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                switchboard_lease::PREVIOUS_HOLDER_ANNOTATION.to_string(),
                "campus-media-1".to_string(),
            );
        let died = change(Some((3, Some(1))), None, handed_by_1).expect("a failover");
        assert_eq!((died.failovers, died.handover.as_deref()), (1, None));
        assert_eq!(
            died.failover.as_deref(),
            Some("media node campus-media-0 took over from campus-media-1, which failed")
        );
        // Its calls taken over after the handover was seen: a failover without a new holder.
        let calls = change(
            Some((4, Some(1))),
            Some("campus-media-0"),
            lease(4, Some(2), "campus-media-0_0badf00d"),
        )
        .expect("a failover");
        assert_eq!(calls.failovers, 1);
        // Several since the last look; a status written before the count existed.
        let many = change(Some((3, None)), None, lease(6, Some(2), "b_1")).expect("changes");
        assert_eq!(many.failovers, 2);
        assert!(
            many.failover
                .as_deref()
                .is_some_and(|m| m.ends_with("(2 failovers since the last look)")),
            "{many:?}"
        );
        assert_eq!(
            many.handover.as_deref(),
            Some("media node b became the active node")
        );
        // Nothing to compare with, no change, a recreated Lease, no Lease: nothing.
        assert_eq!(change(None, None, lease(4, Some(9), "a_1")), None);
        assert_eq!(
            change(Some((4, Some(2))), None, lease(4, Some(2), "a_1")),
            None
        );
        assert_eq!(
            change(Some((4, Some(2))), None, lease(0, None, "a_1")),
            None
        );
        assert_eq!(
            super::active_node_change(Some(&status(Some((4, None)), None)), None),
            None
        );
        assert_eq!(
            super::active_node_change(None, Some(&lease(4, None, "a_1"))),
            None
        );
    }

    use super::*;

    #[test]
    fn a_standby_is_never_ready_to_take_live_calls_without_replication() {
        let center = |mode: &str| -> CallCenter {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "switchboard.dev/v1alpha1",
                "kind": "CallCenter",
                "metadata": {"name": "campus", "namespace": "college"},
                "spec": {"sip": {"domain": "cc.example.edu"}, "highAvailability": {"mode": mode}}
            }))
            .expect("a center")
        };
        let line = |config| NodeStatus {
            name: "campus-media-0".into(),
            config_generation: Some(3),
            config,
            message: None,
        };
        let standby = CenterView {
            standby_node: Some("campus-media-0".into()),
            ..CenterView::default()
        };
        let reason = |c: &CallCenter, live: &CenterView, nodes: &[NodeStatus]| {
            let (value, reason, _) = standby_readiness(c, live, nodes);
            (value, reason)
        };
        assert_eq!(
            reason(&center("None"), &standby, &[]),
            ("False", "NotConfigured")
        );
        let hot = center("HotStandby");
        assert_eq!(
            reason(&hot, &CenterView::default(), &[]),
            ("False", "NoStandby")
        );
        assert_eq!(
            reason(&hot, &standby, &[line(NodeConfigState::Unreachable)]),
            ("False", "StandbyConfigPending")
        );
        assert_eq!(
            reason(&hot, &standby, &[line(NodeConfigState::Current)]),
            ("False", "NoReplication")
        );
        let reporting = |ready: bool, why: &str| CenterView {
            standby_readiness: Some(switchboard_proto::node::v1::StandbyReadiness {
                ready,
                reason: why.into(),
                message: "detail".into(),
            }),
            ..standby.clone()
        };
        let current = [line(NodeConfigState::Current)];
        assert_eq!(
            reason(&hot, &reporting(true, "InSync"), &current),
            ("True", "InSync")
        );
        assert_eq!(
            reason(&hot, &reporting(false, "ReplicationLagging"), &current),
            ("False", "ReplicationLagging")
        );
        assert_eq!(
            reason(&hot, &reporting(false, "ReplicationLost"), &current),
            ("False", "ReplicationLost")
        );
        assert_eq!(
            reason(&hot, &reporting(false, "anything else"), &current),
            ("False", "NoReplication")
        );
    }
}
