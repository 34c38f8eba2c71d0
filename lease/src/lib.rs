//! Leader election through a coordination.k8s.io Lease: of two operator replicas only one
//! reconciles, and of the two media nodes of a HotStandby call center only one serves. The
//! holder renews the Lease; another candidate takes it over only after it expired. A holder
//! that cannot renew in time gives up before the Lease can expire, so two holders never
//! overlap.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Lease timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease is valid after its last renewal.
    pub duration: Duration,
    /// How often the leader renews, and how often a follower retries.
    pub renew_every: Duration,
}

impl LeaseTiming {
    /// How long until a Lease nobody renews any more has surely been taken by a candidate
    /// trying every renew interval: its duration plus two renew intervals.
    pub fn takeover_bound(&self) -> Duration {
        self.duration + self.renew_every * 2
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// What the Lease should become for `me` at `now`, or `None` when another holder's Lease is
/// still valid. Pure, so every case is tested without a server.
pub fn claim(
    current: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    timing: &LeaseTiming,
) -> Option<LeaseSpec> {
    let seconds = i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX);
    let fresh = |transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(spec) = current else {
        return Some(fresh(0));
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Some(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds),
            ..spec.clone()
        }),
        None | Some("") => Some(fresh(transitions + 1)),
        Some(_) => {
            let renewed = spec.renew_time.as_ref().map(|t| t.0)?;
            let valid_for = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(seconds),
            ));
            let expired = renewed
                .checked_add(valid_for)
                .map(|end| end < now)
                .unwrap_or(true);
            expired.then(|| fresh(transitions + 1))
        }
    }
}

/// What the Lease becomes when `me` takes it from `dead`, a holder known to have died (its
/// process is gone), before it expires; `None` unless `dead` still holds it. Pure.
pub fn claim_from_dead(
    current: &LeaseSpec,
    me: &str,
    dead: &str,
    now: Timestamp,
    timing: &LeaseTiming,
) -> Option<LeaseSpec> {
    if current.holder_identity.as_deref() != Some(dead) || dead == me {
        return None;
    }
    let transitions = current.lease_transitions.unwrap_or(0);
    let mut taken = claim(None, me, now, timing)?;
    taken.lease_transitions = Some(transitions + 1);
    Some(taken)
}

/// How long a candidate that did not get the Lease waits before trying again: until the
/// holder's Lease expires (a moment after, against rounding), so a failed holder is replaced
/// as soon as that is safe, but never longer than `timing.renew_every` (the holder may give
/// the Lease up or renew it meanwhile).
pub fn retry_in(current: Option<&LeaseSpec>, now: Timestamp, timing: &LeaseTiming) -> Duration {
    const AFTER_EXPIRY: Duration = Duration::from_millis(20);
    let expires = current.and_then(|spec| {
        let renewed = spec.renew_time.as_ref()?.0;
        let valid = spec.lease_duration_seconds?;
        renewed
            .checked_add(SignedDuration::from_secs(i64::from(valid)))
            .ok()
    });
    let Some(expires) = expires else {
        return timing.renew_every;
    };
    let left = now
        .duration_until(expires)
        .try_into()
        .unwrap_or(Duration::ZERO);
    (left + AFTER_EXPIRY).min(timing.renew_every)
}

/// The Lease as `me` holds it after taking or renewing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The Lease's `leaseTransitions`: grows with every change of holder, so state stamped
    /// with an older count comes from an earlier holder's term.
    pub transitions: i32,
    /// Who held the Lease before `me` took it over (a failover), if it had a holder.
    pub taken_from: Option<String>,
}

/// What holding `spec` means for `me`, who wrote it over `before`.
fn holding(before: Option<&LeaseSpec>, spec: &LeaseSpec, me: &str) -> Holding {
    Holding {
        transitions: spec.lease_transitions.unwrap_or(0),
        taken_from: before
            .and_then(|b| b.holder_identity.clone())
            .filter(|h| !h.is_empty() && h != me),
    }
}

/// Tries once to take or renew the Lease; `Ok(Some(_))` when `me` holds it afterwards.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    timing: &LeaseTiming,
) -> Result<Option<Holding>, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(name).await? {
        None => {
            let spec = claim(None, me, now, timing);
            let held = spec.as_ref().map(|s| holding(None, s, me));
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec,
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(held),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(e),
            }
        }
        Some(lease) => match claim(lease.spec.as_ref(), me, now, timing) {
            None => Ok(None),
            Some(spec) => write_claim(api, name, lease, spec, me).await,
        },
    }
}

/// The Lease annotation that counts failovers: takeovers from a holder that failed (its
/// Lease expired, or its process was proven dead), and the calls of a node that died while it
/// drained taken over ([`count_failover`]). A Lease handed over on drain (released, then
/// taken) is a change of holder, in `leaseTransitions`, but not a failover; only the holders
/// know which was which.
pub const FAILOVERS_ANNOTATION: &str = "switchboard.dev/failovers";

/// The Lease annotation that names the pod of the holder before the current one: the one a
/// failover took the Lease from, or the one that handed it over. The Lease's spec forgets it.
pub const PREVIOUS_HOLDER_ANNOTATION: &str = "switchboard.dev/previous-holder";

/// The pod of the Lease's previous holder ([`PREVIOUS_HOLDER_ANNOTATION`]), if known.
pub fn previous_holder(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(PREVIOUS_HOLDER_ANNOTATION)
        .map(String::as_str)
        .filter(|p| !p.is_empty())
}

fn set_previous_holder(lease: &mut Lease, identity: &str) {
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            PREVIOUS_HOLDER_ANNOTATION.to_string(),
            holder_pod(identity).to_string(),
        );
}

/// The Lease's failover count ([`FAILOVERS_ANNOTATION`]); 0 when absent or unreadable.
pub fn failovers(lease: &Lease) -> u32 {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FAILOVERS_ANNOTATION))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Adds one to the Lease's failover count, in the object about to be written.
fn add_failover(lease: &mut Lease) {
    let count = failovers(lease).saturating_add(1);
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(FAILOVERS_ANNOTATION.to_string(), count.to_string());
}

/// The Lease `me` writes to hold `spec`, made of `lease` as read, and what holding it means.
/// A takeover from another holder counts as a failover. Pure.
fn claimed(mut lease: Lease, spec: LeaseSpec, me: &str) -> (Lease, Holding) {
    let held = holding(lease.spec.as_ref(), &spec, me);
    if let Some(previous) = &held.taken_from {
        add_failover(&mut lease);
        set_previous_holder(&mut lease, previous);
    }
    lease.spec = Some(spec);
    (lease, held)
}

/// Writes `spec`, which `me` made of `lease` as read, back over it. The resourceVersion in
/// `lease` makes this a compare-and-swap: if another replica wrote the Lease since, this one
/// gets 409 and holds nothing (`Ok(None)`); a failover is counted in the same write.
async fn write_claim(
    api: &Api<Lease>,
    name: &str,
    lease: Lease,
    spec: LeaseSpec,
    me: &str,
) -> Result<Option<Holding>, kube::Error> {
    let (lease, held) = claimed(lease, spec, me);
    Ok(write_if_unchanged(api, name, &lease).await?.then_some(held))
}

/// Writes `lease` back over the one it was read from: a compare-and-swap on its
/// resourceVersion. `Ok(false)` when someone wrote the Lease since (409).
async fn write_if_unchanged(
    api: &Api<Lease>,
    name: &str,
    lease: &Lease,
) -> Result<bool, kube::Error> {
    match api.replace(name, &PostParams::default(), lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes the Lease from `dead`, a holder whose process is known to be gone, without waiting
/// for its Lease to expire ([`claim_from_dead`]). A compare-and-swap on the Lease read: a
/// holder that renewed meanwhile (so was not dead) keeps it (`Ok(None)`).
pub async fn take_from_dead(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    dead: &str,
    timing: &LeaseTiming,
) -> Result<Option<Holding>, kube::Error> {
    let Some(lease) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let Some(spec) = lease
        .spec
        .as_ref()
        .and_then(|s| claim_from_dead(s, me, dead, Timestamp::now(), timing))
    else {
        return Ok(None);
    };
    write_claim(api, name, lease, spec, me).await
}

/// Waits until this replica leads: tries again when the holder's Lease expires, or after a
/// renew interval, whichever comes first ([`retry_in`]).
pub async fn acquire(api: &Api<Lease>, name: &str, me: &str, timing: &LeaseTiming) -> Holding {
    loop {
        let wait = match try_acquire(api, name, me, timing).await {
            Ok(Some(held)) => return held,
            Ok(None) => {
                tracing::debug!(lease = name, "another replica leads; waiting");
                match api.get_opt(name).await {
                    Ok(lease) => retry_in(
                        lease.as_ref().and_then(|l| l.spec.as_ref()),
                        Timestamp::now(),
                        timing,
                    ),
                    Err(_) => timing.renew_every,
                }
            }
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "cannot read the leader Lease");
                timing.renew_every
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Renews the Lease until a renewal fails for longer than the Lease is valid; then returns,
/// and the caller stops leading.
pub async fn keep(api: &Api<Lease>, name: &str, me: &str, timing: &LeaseTiming) -> String {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(timing.renew_every).await;
        match try_acquire(api, name, me, timing).await {
            Ok(Some(_)) => last_renewal = tokio::time::Instant::now(),
            Ok(None) => return format!("Lease {name} was taken by another replica"),
            Err(e) => tracing::warn!(lease = name, error = %e, "cannot renew the leader Lease"),
        }
        // Give up before the Lease can expire, so a new leader never overlaps with us.
        if last_renewal.elapsed() + timing.renew_every >= timing.duration {
            return format!("Lease {name} not renewed for {:?}", last_renewal.elapsed());
        }
    }
}

/// Hands the Lease over: clears the holder when `me` holds it, so another candidate takes
/// it at once instead of waiting for it to expire (a graceful stop). `Ok(false)` when `me`
/// did not hold it.
pub async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(false);
    };
    if spec.holder_identity.as_deref() != Some(me) {
        return Ok(false);
    }
    spec.holder_identity = None;
    // The moment it was given up: a node starting now sees that a standby may be about to
    // take it ([`in_use`]).
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    set_previous_holder(&mut lease, me);
    write_if_unchanged(api, name, &lease).await
}

/// Counts a failover the Lease's change of holder did not show: `me`, which took the Lease
/// handed over by a draining node, took over that node's calls because it died before they
/// ended. `Ok(false)` when `me` does not hold the Lease. Retries its compare-and-swap against
/// `me`'s own renewals.
pub async fn count_failover(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let Some(mut lease) = api.get_opt(name).await? else {
            return Ok(false);
        };
        if lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            != Some(me)
        {
            return Ok(false);
        }
        add_failover(&mut lease);
        if write_if_unchanged(api, name, &lease).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the Lease has a holder, or was given up less than a Lease duration ago: either
/// way a standby that follows the node which held it may be about to take it, and a node that
/// just started (and follows nobody yet) should leave it the first claim.
pub fn in_use(current: Option<&LeaseSpec>, now: Timestamp) -> bool {
    let Some(spec) = current else {
        return false;
    };
    if spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty())
    {
        return true;
    }
    let (Some(renewed), Some(valid)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return false;
    };
    renewed
        .0
        .checked_add(SignedDuration::from_secs(i64::from(valid)))
        .is_ok_and(|end| now < end)
}

/// The holder identity of one process in `pod`: the pod's name and an instance number, so a
/// pod restarted under the same name is another holder.
pub fn holder_identity(pod: &str, instance: u32) -> String {
    format!("{pod}_{instance:08x}")
}

/// The pod of a holder identity (pod names have no `_`; an identity without one is a pod).
pub fn holder_pod(identity: &str) -> &str {
    identity.split_once('_').map_or(identity, |(pod, _)| pod)
}

/// Name of the media-node container's port for its control API (gRPC), in the pods the
/// operator builds.
pub const CONTROL_PORT_NAME: &str = "control";

/// The control API URL of a media-node pod ([`control_address`]). The operator pushes config
/// there; a standby follows the active node there.
pub fn control_url(pod: &Pod, default_port: u16) -> Option<String> {
    control_address(pod, default_port).map(|address| format!("http://{address}"))
}

/// The control API address of a media-node pod: its IP and its container port named
/// [`CONTROL_PORT_NAME`], else `default_port`. `None` while the pod has no IP.
pub fn control_address(pod: &Pod, default_port: u16) -> Option<std::net::SocketAddr> {
    let ip: std::net::IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let port = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(CONTROL_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(default_port);
    Some(std::net::SocketAddr::new(ip, port))
}

/// The Lease API of a namespace.
pub fn lease_api(client: Client, namespace: &str) -> Api<Lease> {
    Api::namespaced(client, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_candidate_tries_again_when_the_lease_expires_or_after_a_renew_interval() {
        let timing = LeaseTiming {
            duration: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
        };
        let lease = |renewed: i64, valid: i32| LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(valid),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        };
        let ms = Duration::from_millis;
        // Renewed 2.5 s ago, valid 3 s: expires in 0.5 s.
        let now = at(10)
            .checked_add(SignedDuration::from_millis(2500))
            .expect("time");
        assert_eq!(retry_in(Some(&lease(10, 3)), now, &timing), ms(520));
        // Just renewed: not before the next renew interval.
        assert_eq!(retry_in(Some(&lease(10, 3)), at(10), &timing), ms(1000));
        // Expired already, or no Lease, or nobody renewed it: at once, or a renew interval.
        assert_eq!(retry_in(Some(&lease(0, 3)), at(10), &timing), ms(20));
        assert_eq!(retry_in(None, at(10), &timing), ms(1000));
        assert_eq!(
            retry_in(Some(&LeaseSpec::default()), at(10), &timing),
            ms(1000)
        );
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(0))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_restarted_pod_is_another_lease_holder() {
        let first = holder_identity("campus-media-1", 1);
        let restarted = holder_identity("campus-media-1", 2);
        assert_ne!(first, restarted);
        assert_eq!(holder_pod(&first), "campus-media-1");
        assert_eq!(
            holder_pod("campus-media-1"),
            "campus-media-1",
            "an old identity"
        );
    }

    #[test]
    fn taking_over_names_the_previous_holder_and_the_new_term() {
        let before = held_by("a", 0);
        let timing = LeaseTiming::default();
        let taken = claim(Some(&before), "b", at(20), &timing).expect("expired");
        assert_eq!(
            holding(Some(&before), &taken, "b"),
            Holding {
                transitions: 4,
                taken_from: Some("a".into())
            }
        );
        let renewed = claim(Some(&taken), "b", at(25), &timing).expect("renewed");
        assert_eq!(holding(Some(&taken), &renewed, "b").taken_from, None);
        let released = LeaseSpec {
            holder_identity: None,
            ..before.clone()
        };
        let after_release = claim(Some(&released), "b", at(1), &timing).expect("free");
        assert_eq!(
            holding(Some(&released), &after_release, "b").taken_from,
            None
        );
        let first = claim(None, "a", at(0), &timing).expect("new");
        assert_eq!(
            holding(None, &first, "a"),
            Holding {
                transitions: 0,
                taken_from: None
            }
        );
    }

    #[test]
    fn a_missing_lease_is_taken() {
        let spec = claim(None, "a", at(0), &LeaseTiming::default()).expect("taken");
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn the_holder_renews_without_a_transition() {
        let spec =
            claim(Some(&held_by("a", 0)), "a", at(5), &LeaseTiming::default()).expect("renewed");
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn a_valid_lease_of_another_replica_is_left_alone() {
        assert_eq!(
            claim(Some(&held_by("a", 0)), "b", at(15), &LeaseTiming::default()),
            None
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_with_a_transition() {
        let spec =
            claim(Some(&held_by("a", 0)), "b", at(16), &LeaseTiming::default()).expect("taken");
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(16))));
    }

    #[test]
    fn a_lease_is_in_use_while_held_or_just_given_up() {
        let held = held_by("a", 0);
        assert!(in_use(Some(&held), at(5)));
        assert!(in_use(Some(&held), at(100)), "held, even if expired");
        let released = LeaseSpec {
            holder_identity: None,
            ..held.clone()
        };
        assert!(
            in_use(Some(&released), at(14)),
            "given up 14 s ago, valid 15 s"
        );
        assert!(!in_use(Some(&released), at(15)));
        let emptied = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held
        };
        assert!(!in_use(Some(&emptied), at(20)));
        assert!(!in_use(None, at(0)));
        assert!(!in_use(Some(&LeaseSpec::default()), at(0)));
    }

    #[test]
    fn only_the_dead_holder_s_lease_is_taken_before_it_expires() {
        let timing = LeaseTiming::default();
        let held = held_by("a_1", 10);
        let taken = claim_from_dead(&held, "b_2", "a_1", at(11), &timing).expect("a is dead");
        assert_eq!(taken.holder_identity.as_deref(), Some("b_2"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.renew_time, Some(MicroTime(at(11))));
        assert_eq!(
            holding(Some(&held), &taken, "b_2").taken_from.as_deref(),
            Some("a_1")
        );
        // Another holder by now (a restarted process of the same pod included), nobody, or me.
        assert_eq!(
            claim_from_dead(&held_by("a_3", 10), "b_2", "a_1", at(11), &timing),
            None
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..held.clone()
        };
        assert_eq!(
            claim_from_dead(&released, "b_2", "a_1", at(11), &timing),
            None
        );
        assert_eq!(
            claim_from_dead(&held_by("b_2", 10), "b_2", "b_2", at(11), &timing),
            None
        );
    }

    #[test]
    fn only_a_takeover_from_another_holder_counts_as_a_failover() {
        let timing = LeaseTiming::default();
        let lease = |spec: LeaseSpec| Lease {
            metadata: ObjectMeta::default(),
            spec: Some(spec),
        };
        let take = |before: Lease, me: &str, now: i64| {
            let spec = claim(before.spec.as_ref(), me, at(now), &timing).expect("a claim");
            claimed(before, spec, me).0
        };
        // b takes a's expired Lease: one failover; then b renews: still one.
        let taken = take(lease(held_by("a", 0)), "b", 100);
        assert_eq!(failovers(&taken), 1);
        let renewed = take(taken, "b", 101);
        assert_eq!(failovers(&renewed), 1);
        // a takes it back from b, proven dead: two.
        let spec = claim_from_dead(
            renewed.spec.as_ref().expect("a spec"),
            "a",
            "b",
            at(102),
            &timing,
        )
        .expect("taken from the dead holder");
        let (back, held) = claimed(renewed, spec, "a");
        assert_eq!(held.taken_from.as_deref(), Some("b"));
        assert_eq!(failovers(&back), 2);
        assert_eq!(previous_holder(&back), Some("b"));
        // a hands it over (released: no holder); b takes it: a handover, no failover.
        let mut released = back;
        if let Some(spec) = released.spec.as_mut() {
            spec.holder_identity = None;
        }
        let handed = take(released, "b", 103);
        assert_eq!(failovers(&handed), 2);
        // The first holder of a new Lease, and an unreadable count.
        assert_eq!(failovers(&take(lease(LeaseSpec::default()), "a", 0)), 0);
        let mut garbled = lease(held_by("a", 0));
        garbled.metadata.annotations =
            Some([(FAILOVERS_ANNOTATION.to_string(), "many".to_string())].into());
        assert_eq!(failovers(&garbled), 0);
        assert_eq!(failovers(&take(garbled, "b", 100)), 1);
    }

    #[test]
    fn a_released_lease_is_taken() {
        let mut released = held_by("a", 0);
        released.holder_identity = None;
        assert!(claim(Some(&released), "b", at(1), &LeaseTiming::default()).is_some());
    }
}
