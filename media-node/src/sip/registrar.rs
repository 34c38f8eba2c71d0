//! The seat registrar (RFC 3261 §10.3), pure: no I/O and no clock of its own. The caller passes
//! `now` into every operation, so expiry, refresh and rate limiting are tested exhaustively
//! without sleeping.
//!
//! The address of record of a seat is its extension (`sip:1001@domain`); each seat may bind up to
//! its `maxContacts` contacts (a desk phone and a softphone, say). Authentication itself lives in
//! [`super::digest`]; this module holds the seat accounts (HA1 only) and the per-source limiter
//! that keeps a password-guessing flood from costing digest work.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::message::Transport;

/// Registration interval limits (seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarPolicy {
    /// Shorter non-zero intervals get 423 Interval Too Brief with this as `Min-Expires`.
    pub min_expires: u32,
    /// Longer intervals are shortened to this (the 200 OK tells the phone).
    pub max_expires: u32,
    /// Used when the request gives neither a Contact `expires` nor an `Expires` header.
    pub default_expires: u32,
    /// What to do when a seat already holds `maxContacts` bindings and a new one arrives.
    pub when_full: WhenFull,
}

impl Default for RegistrarPolicy {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            when_full: WhenFull::ReplaceOldest,
        }
    }
}

/// Behaviour when a seat is at its contact limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the binding refreshed longest ago. A desk phone that rebooted comes back with a new
    /// Contact (new port) while its old binding is still alive; refusing it would leave the
    /// agent unreachable for up to an hour.
    ReplaceOldest,
    /// Refuse the new contact (403).
    Reject,
}

/// A seat the node accepts registrations for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatAccount {
    /// The seat's extension: digest username and the user part of its address of record.
    pub extension: String,
    /// `MD5(extension:realm:password)`, lower-case hex.
    pub ha1: String,
    /// Most contacts bound at once (the Seat's `spec.maxContacts`).
    pub max_contacts: usize,
}

/// One Contact of a REGISTER request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedContact {
    /// The contact URI (without angle brackets or header parameters).
    pub uri: String,
    /// The Contact's own `expires` parameter, if any.
    pub expires: Option<u32>,
}

/// The Contact headers of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactUpdate {
    /// No Contact: a query for the current bindings.
    Query,
    /// `Contact: *`: remove every binding (only valid with `Expires: 0`).
    RemoveAll,
    /// Add, refresh or remove (expires 0) these contacts.
    Contacts(Vec<RequestedContact>),
}

/// An authenticated REGISTER, reduced to what the registrar needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    pub extension: String,
    pub update: ContactUpdate,
    /// The `Expires` header, if any.
    pub expires_header: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from (the phone's public address behind NAT).
    pub source: SocketAddr,
    pub transport: Transport,
}

/// A live binding of a contact to a seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub uri: String,
    pub expires_at: Instant,
    /// When it was last added or refreshed (the eviction order under [`WhenFull::ReplaceOldest`]).
    pub refreshed_at: Instant,
    pub call_id: String,
    pub cseq: u32,
    pub source: SocketAddr,
    pub transport: Transport,
}

impl Binding {
    /// Where requests to this contact go ([`super::message::request_destination`]).
    pub fn destination(&self) -> SocketAddr {
        super::message::request_destination(&self.uri, self.source)
    }

    /// Seconds left, rounded up so a live binding never reports 0.
    pub fn expires_in(&self, now: Instant) -> u32 {
        let left = self.expires_at.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

/// The registrar's answer to a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// 200 OK with all current bindings of the seat (possibly none).
    Bindings(Vec<Binding>),
    /// 423 Interval Too Brief with `Min-Expires`.
    IntervalTooBrief { min_expires: u32 },
    /// 403: more contacts than the seat may bind.
    TooManyContacts { max_contacts: usize },
    /// 404: no seat with this extension.
    UnknownSeat,
    /// 400: `Contact: *` with other contacts or a non-zero expiry.
    InvalidWildcard,
    /// 500: a CSeq not above the one that last updated a binding of the same Call-ID (RFC 3261
    /// §10.3 step 7: an old, reordered request must not undo a newer one).
    OutOfOrder,
}

/// Seat accounts and their bindings.
pub struct Registrar {
    policy: RegistrarPolicy,
    seats: HashMap<String, SeatAccount>,
    bindings: HashMap<String, Vec<Binding>>,
    limiter: AuthFailureLimiter,
}

impl Registrar {
    pub fn new(
        policy: RegistrarPolicy,
        seats: impl IntoIterator<Item = SeatAccount>,
        limiter: AuthFailureLimiter,
    ) -> Self {
        Self {
            policy,
            seats: seats
                .into_iter()
                .map(|s| (s.extension.clone(), s))
                .collect(),
            bindings: HashMap::new(),
            limiter,
        }
    }

    pub fn policy(&self) -> &RegistrarPolicy {
        &self.policy
    }

    pub fn seat(&self, extension: &str) -> Option<&SeatAccount> {
        self.seats.get(extension)
    }

    /// The live bindings of a seat (the contacts a call to the extension rings).
    pub fn bindings(&self, extension: &str, now: Instant) -> Vec<Binding> {
        self.bindings
            .get(extension)
            .map(|list| {
                list.iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Seats with at least one binding (expired ones count until the next [`Self::expire`]).
    pub fn registered_seats(&self) -> usize {
        self.bindings.len()
    }

    /// All bindings of all seats.
    pub fn binding_count(&self) -> usize {
        self.bindings.values().map(Vec::len).sum()
    }

    /// Takes a new config's seat accounts. A seat that stays (same extension) keeps its
    /// registrations, also when its password changed (the phone authenticates with the new
    /// one at its next refresh), down to its new contact limit (most recently refreshed
    /// first); a seat that is gone loses them. Returns the extensions that lost every contact.
    pub fn replace_seats(&mut self, seats: impl IntoIterator<Item = SeatAccount>) -> Vec<String> {
        self.seats = seats
            .into_iter()
            .map(|s| (s.extension.clone(), s))
            .collect();
        let mut gone = Vec::new();
        let seats = &self.seats;
        self.bindings
            .retain(|extension, list| match seats.get(extension) {
                Some(seat) => {
                    list.sort_by_key(|b| std::cmp::Reverse(b.refreshed_at));
                    list.truncate(seat.max_contacts.max(1));
                    true
                }
                None => {
                    gone.push(extension.clone());
                    false
                }
            });
        gone.sort();
        gone
    }

    /// Applies a REGISTER that already passed authentication. All-or-nothing: a request that
    /// fails leaves every binding as it was.
    /// Installs a binding the previous active node held (hot-standby takeover). Skipped when
    /// the seat is not configured here, the binding has expired, or the seat's phone
    /// registered with this node since (its own binding of that contact wins); `true` when
    /// installed.
    pub fn restore(&mut self, extension: &str, binding: Binding, now: Instant) -> bool {
        let Some(seat) = self.seats.get(extension) else {
            return false;
        };
        if binding.expires_at <= now {
            return false;
        }
        let list = self.bindings.entry(extension.to_string()).or_default();
        if list.iter().any(|b| same_contact(&b.uri, &binding.uri))
            || list.len() >= seat.max_contacts.max(1)
        {
            return false;
        }
        list.push(binding);
        true
    }

    pub fn register(&mut self, request: &RegisterRequest, now: Instant) -> RegisterOutcome {
        let Some(seat) = self.seats.get(&request.extension) else {
            return RegisterOutcome::UnknownSeat;
        };
        let max_contacts = seat.max_contacts;
        let contacts = match &request.update {
            ContactUpdate::Query => {
                return RegisterOutcome::Bindings(self.bindings(&request.extension, now));
            }
            ContactUpdate::RemoveAll => {
                if request.expires_header != Some(0) {
                    return RegisterOutcome::InvalidWildcard;
                }
                // Step 6: a wildcard from an older request of the same Call-ID is out of order.
                if self.out_of_order(&request.extension, |_| true, request) {
                    return RegisterOutcome::OutOfOrder;
                }
                self.bindings.remove(&request.extension);
                return RegisterOutcome::Bindings(Vec::new());
            }
            ContactUpdate::Contacts(contacts) => contacts,
        };

        // Phase 1: work out each contact's interval and refuse the whole request on any error.
        let mut wanted: Vec<(&RequestedContact, u32)> = Vec::with_capacity(contacts.len());
        for contact in contacts {
            let expires = contact
                .expires
                .or(request.expires_header)
                .unwrap_or(self.policy.default_expires);
            if expires != 0 && expires < self.policy.min_expires {
                return RegisterOutcome::IntervalTooBrief {
                    min_expires: self.policy.min_expires,
                };
            }
            wanted.push((contact, expires.min(self.policy.max_expires)));
        }
        if self.out_of_order(
            &request.extension,
            |b| contacts.iter().any(|c| same_contact(&c.uri, &b.uri)),
            request,
        ) {
            return RegisterOutcome::OutOfOrder;
        }

        // Phase 2: build the new binding list, then check the limit before committing.
        let mut list: Vec<Binding> = self
            .bindings
            .get(&request.extension)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        let mut touched = Vec::new();
        for (contact, expires) in wanted {
            list.retain(|b| !same_contact(&b.uri, &contact.uri));
            // The same contact twice in one request: the last one counts.
            touched.retain(|t: &String| !same_contact(t, &contact.uri));
            if expires == 0 {
                continue;
            }
            touched.push(contact.uri.clone());
            list.push(Binding {
                uri: contact.uri.clone(),
                expires_at: now + Duration::from_secs(u64::from(expires)),
                refreshed_at: now,
                call_id: request.call_id.clone(),
                cseq: request.cseq,
                source: request.source,
                transport: request.transport,
            });
        }
        if list.len() > max_contacts {
            if touched.len() > max_contacts || self.policy.when_full == WhenFull::Reject {
                return RegisterOutcome::TooManyContacts { max_contacts };
            }
            // Keep this request's contacts; evict the others refreshed longest ago.
            let mut others: Vec<Binding> = list
                .iter()
                .filter(|b| !touched.iter().any(|t| same_contact(t, &b.uri)))
                .cloned()
                .collect();
            others.sort_by_key(|b| std::cmp::Reverse(b.refreshed_at));
            others.truncate(max_contacts - touched.len());
            list.retain(|b| {
                touched.iter().any(|t| same_contact(t, &b.uri))
                    || others.iter().any(|o| same_contact(&o.uri, &b.uri))
            });
        }
        if list.is_empty() {
            self.bindings.remove(&request.extension);
        } else {
            self.bindings
                .insert(request.extension.clone(), list.clone());
        }
        RegisterOutcome::Bindings(list)
    }

    /// Whether an existing binding selected by `affected` has the request's Call-ID with a CSeq
    /// at or above the request's.
    fn out_of_order(
        &self,
        extension: &str,
        affected: impl Fn(&Binding) -> bool,
        request: &RegisterRequest,
    ) -> bool {
        self.bindings.get(extension).is_some_and(|list| {
            list.iter()
                .any(|b| affected(b) && b.call_id == request.call_id && b.cseq >= request.cseq)
        })
    }

    /// Removes bindings that expired by `now`; returns the extensions that lost their last one
    /// (their agents are now unreachable). Also ages the failure limiter.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.bindings.retain(|extension, list| {
            list.retain(|b| b.expires_at > now);
            if list.is_empty() {
                gone.push(extension.clone());
                false
            } else {
                true
            }
        });
        gone.sort();
        self.limiter.sweep(now);
        gone
    }

    /// Whether a source may attempt authentication now (see [`AuthFailureLimiter::allows`]).
    pub fn auth_allowed(&mut self, source: IpAddr, now: Instant) -> bool {
        self.limiter.allows(source, now)
    }

    /// Records a failed authentication from a source.
    pub fn auth_failed(&mut self, source: IpAddr, now: Instant) {
        self.limiter.record_failure(source, now);
    }

    pub fn limiter(&self) -> &AuthFailureLimiter {
        &self.limiter
    }
}

/// Contact URIs are compared case-insensitively: phones never send two contacts that differ
/// only in case, and host names and parameter names are case-insensitive anyway.
fn same_contact(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Token bucket per source IP for failed authentications. Each wrong password takes a token;
/// tokens come back at `refill_per_minute`. A source with no token left is refused before any
/// digest work (so a guessing flood costs a hash-map lookup), while a phone that mistyped its
/// password once or twice is unaffected. Seats behind the same NAT share a bucket, which is why
/// only failures (never challenges or successes) take tokens.
pub struct AuthFailureLimiter {
    burst: f64,
    refill_per_sec: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    rejected: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl AuthFailureLimiter {
    /// `burst` failures in a row are allowed, then `refill_per_minute` per minute.
    /// `max_sources` bounds memory under a flood from many addresses.
    pub fn new(burst: u32, refill_per_minute: u32, max_sources: usize) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            refill_per_sec: f64::from(refill_per_minute) / 60.0,
            max_sources,
            buckets: HashMap::new(),
            rejected: 0,
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.refill_per_sec).min(self.burst)
    }

    /// Whether `source` still has a token; counts a rejection when it has not.
    pub fn allows(&mut self, source: IpAddr, now: Instant) -> bool {
        let allowed = match self.buckets.get(&source) {
            None => true,
            Some(bucket) => self.refilled(*bucket, now) >= 1.0,
        };
        if !allowed {
            self.rejected += 1;
        }
        allowed
    }

    /// Takes a token from `source`.
    pub fn record_failure(&mut self, source: IpAddr, now: Instant) {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            self.sweep(now);
            if self.buckets.len() >= self.max_sources {
                // Still full of misbehaving sources: forget the one idle longest rather than
                // growing without bound.
                if let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, b)| b.updated)
                    .map(|(ip, _)| *ip)
                {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let tokens = match self.buckets.get(&source) {
            Some(bucket) => self.refilled(*bucket, now),
            None => self.burst,
        };
        self.buckets.insert(
            source,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                updated: now,
            },
        );
    }

    /// Forgets sources whose bucket has refilled completely.
    pub fn sweep(&mut self, now: Instant) {
        let burst = self.burst;
        let rate = self.refill_per_sec;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
    }

    /// Requests refused without digest work since start (for the metrics).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Sources currently holding fewer tokens than the burst.
    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }
}

impl Default for AuthFailureLimiter {
    /// Five wrong passwords in a row, then one more every 12 s, for up to 10 000 sources.
    fn default() -> Self {
        Self::new(5, 5, 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: &str = "192.0.2.10:5060";

    fn seat(extension: &str, max_contacts: usize) -> SeatAccount {
        SeatAccount {
            extension: extension.into(),
            ha1: "00".repeat(16),
            max_contacts,
        }
    }

    fn registrar(policy: RegistrarPolicy) -> Registrar {
        Registrar::new(
            policy,
            [seat("1001", 2), seat("1002", 1)],
            AuthFailureLimiter::default(),
        )
    }

    fn contact(uri: &str, expires: Option<u32>) -> RequestedContact {
        RequestedContact {
            uri: uri.into(),
            expires,
        }
    }

    fn request(
        extension: &str,
        update: ContactUpdate,
        expires: Option<u32>,
        cseq: u32,
    ) -> RegisterRequest {
        RegisterRequest {
            extension: extension.into(),
            update,
            expires_header: expires,
            call_id: "call-1".into(),
            cseq,
            source: PHONE.parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn register(
        r: &mut Registrar,
        extension: &str,
        contacts: &[(&str, Option<u32>)],
        expires: Option<u32>,
        cseq: u32,
        now: Instant,
    ) -> RegisterOutcome {
        let update =
            ContactUpdate::Contacts(contacts.iter().map(|(u, e)| contact(u, *e)).collect());
        r.register(&request(extension, update, expires, cseq), now)
    }

    fn uris(outcome: &RegisterOutcome) -> Vec<String> {
        match outcome {
            RegisterOutcome::Bindings(list) => {
                let mut v: Vec<String> = list.iter().map(|b| b.uri.clone()).collect();
                v.sort();
                v
            }
            other => panic!("expected bindings, got {other:?}"),
        }
    }

    #[test]
    fn a_new_seat_list_keeps_staying_seats_registrations_and_drops_the_rest() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        register(&mut r, "1001", &[("sip:a@192.0.2.1", None)], None, 1, now);
        register(&mut r, "1001", &[("sip:b@192.0.2.2", None)], None, 2, later);
        register(&mut r, "1002", &[("sip:c@192.0.2.3", None)], None, 3, now);
        // 1001 stays with one contact allowed and a new password; 1002 is gone; 1003 is new.
        let mut changed = seat("1001", 1);
        changed.ha1 = "11".repeat(16);
        let gone = r.replace_seats([changed.clone(), seat("1003", 1)]);
        assert_eq!(gone, ["1002"]);
        let kept: Vec<String> = r
            .bindings("1001", later)
            .into_iter()
            .map(|b| b.uri)
            .collect();
        assert_eq!(
            kept,
            ["sip:b@192.0.2.2"],
            "the most recently refreshed contact"
        );
        assert_eq!(r.seat("1001"), Some(&changed));
        assert!(r.bindings("1002", later).is_empty());
        assert_eq!(
            register(&mut r, "1002", &[("sip:c@192.0.2.3", None)], None, 4, later),
            RegisterOutcome::UnknownSeat
        );
        assert_eq!(
            uris(&register(
                &mut r,
                "1003",
                &[("sip:d@192.0.2.4", None)],
                None,
                5,
                later
            )),
            ["sip:d@192.0.2.4"]
        );
    }

    #[test]
    fn unknown_extension_is_not_found() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        assert_eq!(
            register(&mut r, "9999", &[("sip:x@h", None)], None, 1, now),
            RegisterOutcome::UnknownSeat
        );
        assert_eq!(
            r.register(&request("9999", ContactUpdate::Query, None, 1), now),
            RegisterOutcome::UnknownSeat
        );
    }

    #[test]
    fn binds_with_default_expiry_and_query_lists_it() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        let out = register(
            &mut r,
            "1001",
            &[("sip:1001@192.0.2.10:5060", None)],
            None,
            1,
            now,
        );
        let RegisterOutcome::Bindings(list) = &out else {
            panic!("{out:?}")
        };
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].expires_in(now), 3600);
        assert_eq!(list[0].source, PHONE.parse().unwrap());
        assert_eq!(r.registered_seats(), 1);
        let query = r.register(&request("1001", ContactUpdate::Query, None, 2), now);
        assert_eq!(uris(&query), vec!["sip:1001@192.0.2.10:5060"]);
    }

    #[test]
    fn contact_expires_param_wins_over_header_and_is_clamped() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        let out = register(
            &mut r,
            "1001",
            &[("sip:a@h", Some(120)), ("sip:b@h", None)],
            Some(99_999),
            1,
            now,
        );
        let RegisterOutcome::Bindings(list) = out else {
            panic!()
        };
        let a = list.iter().find(|b| b.uri == "sip:a@h").unwrap();
        let b = list.iter().find(|b| b.uri == "sip:b@h").unwrap();
        assert_eq!(a.expires_in(now), 120);
        assert_eq!(b.expires_in(now), 3600, "clamped to max_expires");
    }

    #[test]
    fn too_brief_interval_gets_423_and_changes_nothing() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        register(&mut r, "1001", &[("sip:a@h", None)], None, 1, now);
        let out = register(
            &mut r,
            "1001",
            &[("sip:b@h", None), ("sip:a@h", Some(0))],
            Some(30),
            2,
            now,
        );
        assert_eq!(out, RegisterOutcome::IntervalTooBrief { min_expires: 60 });
        assert_eq!(r.bindings("1001", now).len(), 1, "all-or-nothing");
        // Exactly the minimum is fine.
        let out = register(&mut r, "1001", &[("sip:b@h", Some(60))], None, 3, now);
        assert_eq!(uris(&out), vec!["sip:a@h", "sip:b@h"]);
    }

    #[test]
    fn refresh_extends_the_binding() {
        let mut r = registrar(RegistrarPolicy::default());
        let t0 = Instant::now();
        register(&mut r, "1001", &[("sip:a@h", None)], Some(300), 1, t0);
        let t1 = t0 + Duration::from_secs(200);
        let out = register(&mut r, "1001", &[("SIP:A@H", None)], Some(300), 2, t1);
        let RegisterOutcome::Bindings(list) = out else {
            panic!()
        };
        assert_eq!(
            list.len(),
            1,
            "same contact (case-insensitive) refreshed, not added"
        );
        assert_eq!(list[0].expires_in(t1), 300);
        assert!(r.expire(t0 + Duration::from_secs(400)).is_empty());
        assert_eq!(
            r.expire(t1 + Duration::from_secs(300)),
            vec!["1001".to_string()]
        );
    }

    #[test]
    fn unregister_with_expires_zero() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        register(
            &mut r,
            "1001",
            &[("sip:a@h", None), ("sip:b@h", None)],
            None,
            1,
            now,
        );
        let out = register(&mut r, "1001", &[("sip:a@h", None)], Some(0), 2, now);
        assert_eq!(uris(&out), vec!["sip:b@h"]);
        let out = register(&mut r, "1001", &[("sip:b@h", Some(0))], Some(3600), 3, now);
        assert_eq!(uris(&out), Vec::<String>::new());
        assert_eq!(r.registered_seats(), 0);
    }

    #[test]
    fn wildcard_removes_everything_only_with_expires_zero() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        register(
            &mut r,
            "1001",
            &[("sip:a@h", None), ("sip:b@h", None)],
            None,
            1,
            now,
        );
        let wildcard = |expires, cseq| request("1001", ContactUpdate::RemoveAll, expires, cseq);
        assert_eq!(
            r.register(&wildcard(None, 2), now),
            RegisterOutcome::InvalidWildcard
        );
        assert_eq!(
            r.register(&wildcard(Some(60), 2), now),
            RegisterOutcome::InvalidWildcard
        );
        assert_eq!(r.binding_count(), 2);
        assert_eq!(
            r.register(&wildcard(Some(0), 1), now),
            RegisterOutcome::OutOfOrder
        );
        assert_eq!(
            r.register(&wildcard(Some(0), 2), now),
            RegisterOutcome::Bindings(vec![])
        );
        assert_eq!(r.binding_count(), 0);
    }

    #[test]
    fn old_cseq_of_same_call_id_is_out_of_order() {
        let mut r = registrar(RegistrarPolicy::default());
        let now = Instant::now();
        register(&mut r, "1001", &[("sip:a@h", None)], None, 5, now);
        assert_eq!(
            register(&mut r, "1001", &[("sip:a@h", Some(0))], None, 5, now),
            RegisterOutcome::OutOfOrder
        );
        assert_eq!(
            register(&mut r, "1001", &[("sip:a@h", Some(0))], None, 4, now),
            RegisterOutcome::OutOfOrder
        );
        assert_eq!(r.binding_count(), 1);
        // A different Call-ID (phone rebooted) may update regardless of CSeq.
        let mut other = request(
            "1001",
            ContactUpdate::Contacts(vec![contact("sip:a@h", Some(0))]),
            None,
            1,
        );
        other.call_id = "call-2".into();
        assert_eq!(r.register(&other, now), RegisterOutcome::Bindings(vec![]));
    }

    #[test]
    fn contact_limit_replaces_oldest_by_default() {
        let mut r = registrar(RegistrarPolicy::default());
        let t0 = Instant::now();
        register(&mut r, "1001", &[("sip:a@h", None)], None, 1, t0);
        register(
            &mut r,
            "1001",
            &[("sip:b@h", None)],
            None,
            2,
            t0 + Duration::from_secs(1),
        );
        let out = register(
            &mut r,
            "1001",
            &[("sip:c@h", None)],
            None,
            3,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(
            uris(&out),
            vec!["sip:b@h", "sip:c@h"],
            "a was refreshed longest ago"
        );
        // More contacts in one request than the seat may hold: refused.
        let out = register(
            &mut r,
            "1001",
            &[("sip:x@h", None), ("sip:y@h", None), ("sip:z@h", None)],
            None,
            4,
            t0,
        );
        assert_eq!(out, RegisterOutcome::TooManyContacts { max_contacts: 2 });
        assert_eq!(r.binding_count(), 2);
    }

    #[test]
    fn contact_limit_rejects_when_configured() {
        let mut r = registrar(RegistrarPolicy {
            when_full: WhenFull::Reject,
            ..RegistrarPolicy::default()
        });
        let now = Instant::now();
        register(&mut r, "1002", &[("sip:a@h", None)], None, 1, now);
        assert_eq!(
            register(&mut r, "1002", &[("sip:b@h", None)], None, 2, now),
            RegisterOutcome::TooManyContacts { max_contacts: 1 }
        );
        // Refreshing the existing one is fine, and so is replacing it in one request.
        assert_eq!(
            uris(&register(
                &mut r,
                "1002",
                &[("sip:a@h", None)],
                None,
                3,
                now
            )),
            vec!["sip:a@h"]
        );
        assert_eq!(
            uris(&register(
                &mut r,
                "1002",
                &[("sip:a@h", Some(0)), ("sip:b@h", None)],
                None,
                4,
                now
            )),
            vec!["sip:b@h"]
        );
    }

    #[test]
    fn expired_bindings_do_not_count_and_sweep_reports_seats() {
        let mut r = registrar(RegistrarPolicy::default());
        let t0 = Instant::now();
        register(&mut r, "1001", &[("sip:a@h", Some(60))], None, 1, t0);
        register(&mut r, "1001", &[("sip:b@h", Some(600))], None, 2, t0);
        register(&mut r, "1002", &[("sip:c@h", Some(60))], None, 1, t0);
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(
            uris(&RegisterOutcome::Bindings(r.bindings("1001", t1))),
            vec!["sip:b@h"]
        );
        assert!(r.bindings("1002", t1).is_empty());
        assert_eq!(r.expire(t1), vec!["1002".to_string()]);
        assert_eq!(r.binding_count(), 1);
        assert_eq!(r.expire(t1), Vec::<String>::new(), "reported once");
        assert_eq!(
            r.expire(t0 + Duration::from_secs(600)),
            vec!["1001".to_string()]
        );
        assert_eq!(r.registered_seats(), 0);
    }

    #[test]
    fn expires_in_rounds_up() {
        let now = Instant::now();
        let b = Binding {
            uri: "sip:a@h".into(),
            expires_at: now + Duration::from_millis(1500),
            refreshed_at: now,
            call_id: "c".into(),
            cseq: 1,
            source: PHONE.parse().unwrap(),
            transport: Transport::Tcp,
        };
        assert_eq!(b.expires_in(now), 2);
        assert_eq!(b.expires_in(now + Duration::from_secs(5)), 0);
    }

    #[test]
    fn limiter_blocks_a_flood_and_recovers() {
        let mut limiter = AuthFailureLimiter::new(3, 6, 100);
        let t0 = Instant::now();
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let phone: IpAddr = "192.0.2.10".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.allows(attacker, t0));
            limiter.record_failure(attacker, t0);
        }
        assert!(!limiter.allows(attacker, t0));
        assert!(!limiter.allows(attacker, t0));
        assert_eq!(limiter.rejected(), 2);
        assert!(limiter.allows(phone, t0), "other sources unaffected");
        // 6 per minute: one token after 10 s.
        assert!(!limiter.allows(attacker, t0 + Duration::from_secs(9)));
        assert!(limiter.allows(attacker, t0 + Duration::from_secs(10)));
        assert_eq!(limiter.tracked_sources(), 1);
        limiter.sweep(t0 + Duration::from_secs(29));
        assert_eq!(limiter.tracked_sources(), 1);
        limiter.sweep(t0 + Duration::from_secs(30));
        assert_eq!(
            limiter.tracked_sources(),
            0,
            "fully refilled buckets are forgotten"
        );
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let mut limiter = AuthFailureLimiter::new(1, 1, 3);
        let t0 = Instant::now();
        for i in 0..10u8 {
            limiter.record_failure(
                IpAddr::from([203, 0, 113, i]),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(limiter.tracked_sources(), 3);
        assert!(!limiter.allows(IpAddr::from([203, 0, 113, 9]), t0));
    }

    #[test]
    fn registrar_exposes_limiter() {
        let mut r = Registrar::new(
            RegistrarPolicy::default(),
            [seat("1001", 1)],
            AuthFailureLimiter::new(1, 1, 10),
        );
        let now = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(r.auth_allowed(ip, now));
        r.auth_failed(ip, now);
        assert!(!r.auth_allowed(ip, now));
        assert_eq!(r.limiter().rejected(), 1);
        assert_eq!(r.seat("1001").map(|s| s.max_contacts), Some(1));
        assert!(r.seat("1002").is_none());
        assert_eq!(r.policy().min_expires, 60);
    }
}
