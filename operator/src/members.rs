//! The Queue and Seat controllers: one reconcile per kind. A member whose CallCenter exists is
//! resolved by that center's reconcile (it sees every member at once, so it can tell a
//! duplicate extension). What no center can see is a member naming a CallCenter that does not
//! exist: these controllers give it `Resolved=False` (`CallCenterNotFound`) and an Event. They
//! also watch CallCenters, so deleting a center marks its members, and creating it hands them
//! back to its reconcile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use switchboard_crds::common::{condition, conditions, set_condition};
use switchboard_crds::{CallCenter, Queue, Seat};

use crate::controller::{Context, ReconcileError, patch_member_status, scoped};

/// Reason of `Resolved=False` on a member whose CallCenter does not exist.
pub const CALL_CENTER_NOT_FOUND: &str = "CallCenterNotFound";

/// What the two member kinds share.
pub trait Member:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn call_center(&self) -> &str;
    fn conditions(&self) -> Vec<Condition>;
}

impl Member for Queue {
    const KIND: &'static str = "Queue";
    fn call_center(&self) -> &str {
        &self.spec.call_center
    }
    fn conditions(&self) -> Vec<Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

impl Member for Seat {
    const KIND: &'static str = "Seat";
    fn call_center(&self) -> &str {
        &self.spec.call_center
    }
    fn conditions(&self) -> Vec<Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

/// The `Resolved` condition of a member whose CallCenter is missing.
pub fn center_missing<K: Member>(member: &K, now: Time) -> Condition {
    condition(
        conditions::RESOLVED,
        "False",
        CALL_CENTER_NOT_FOUND,
        format!(
            "spec.callCenter: CallCenter {:?} does not exist in namespace {:?}; this {} is not served",
            member.call_center(),
            member.namespace().unwrap_or_default(),
            K::KIND,
        ),
        member.meta().generation,
        now,
    )
}

/// Runs the controller of one member kind until shutdown.
pub async fn run<K: Member>(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let members: Api<K> = scoped(&client, &ctx.watch_namespace);
    let controller = Controller::new(members, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            scoped::<CallCenter>(&client, &ctx.watch_namespace),
            watcher::Config::default(),
            move |center| {
                let namespace = center.namespace();
                let name = center.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|m| m.namespace() == namespace && m.call_center() == name)
                    .map(|m| ObjectRef::from_obj(&*m))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(kind = K::KIND, error = %e, "reconcile failed");
            }
        })
        .await;
}

async fn reconcile<K: Member>(member: Arc<K>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = resolve(member.as_ref(), &ctx).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&[K::KIND, outcome])
        .inc();
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[K::KIND])
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn resolve<K: Member>(member: &K, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = member.namespace().unwrap_or_default();
    let centers: Api<CallCenter> = Api::namespaced(ctx.client.clone(), &namespace);
    if centers.get_opt(member.call_center()).await?.is_some() {
        // Its center's reconcile owns its status.
        return Ok(Action::await_change());
    }
    let mut conds = member.conditions();
    let cond = center_missing(member, Time(k8s_openapi::jiff::Timestamp::now()));
    if set_condition(&mut conds, cond.clone()) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({"status": {"conditions": conds}});
        patch_member_status(&api, &ctx.recorder, member, &patch, Some(&cond)).await?;
    }
    Ok(Action::await_change())
}

fn error_policy<K: Member>(member: Arc<K>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[K::KIND, error.metric_label()])
        .inc();
    tracing::warn!(kind = K::KIND, name = %member.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_without_its_center_says_which_center_and_where() {
        let seat: Seat = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "Seat",
            "metadata": {"name": "agent-9", "namespace": "college", "generation": 2},
            "spec": {
                "callCenter": "campsu",
                "extension": "2009",
                "displayName": "Agent 9",
                "credentials": {"name": "pw", "key": "2009"}
            }
        }))
        .expect("a seat");
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let c = center_missing(&seat, now);
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Resolved", "False"));
        assert_eq!(c.reason, CALL_CENTER_NOT_FOUND);
        assert_eq!(
            c.message,
            "spec.callCenter: CallCenter \"campsu\" does not exist in namespace \"college\"; this Seat is not served"
        );
        assert_eq!(c.observed_generation, Some(2));
    }
}
