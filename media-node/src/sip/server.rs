//! The SIP server core: turns one inbound message into at most one immediate response. It owns
//! the registrar, the digest nonces and the non-INVITE server transactions, and does no I/O,
//! so the transport layer stays thin and every decision here is unit-tested with byte strings.
//!
//! Served: REGISTER (digest-authenticated against the seats' HA1) and OPTIONS. With calls on
//! ([`SipServer::with_calls`]): a new INVITE from a trunk's allowed source address is trusted
//! as that trunk; any other is challenged like REGISTER (407, the seat's HA1). It is then
//! routed (`crate::call::routing`), takes a trunk channel when a trunk is involved (503 and
//! counted as blocked at the limit) and is handed to the B2BUA, which answers 100 Trying here and
//! everything later through the transport's outbound queue; retransmitted INVITEs, ACKs and
//! responses go to their call; BYE and CANCEL are answered here (200, or 481 for no call) so
//! the Timer J cache absorbs their retransmissions. Without calls INVITE gets 501 and BYE and
//! CANCEL 481. Other methods get 405 with `Allow`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tracing::{debug, info, warn};

use crate::call::routing::{self, Caller, Destination, RouteDecision, SeatDirectory};
use crate::call::{
    CallEngine, CallSettings, CallSetup, CallSetupError, CallTarget, CenterSetup, OutboundLink,
    Refused,
};
use crate::recording::cdr::{CallDirection, CallOutcome};

use super::digest::{
    self, NonceCountCheck, NonceCounts, NonceIssuer, NonceStatus, parse_authorization,
};
use super::message::{
    self, BRANCH_MAGIC_COOKIE, Inbound, NameAddr, SipRequest, Transport, build_response,
    parse_contacts, parse_expires, random_tag, reason_phrase,
};
use super::registrar::Binding;
use super::registrar::{
    AuthFailureLimiter, RegisterOutcome, RegisterRequest, Registrar, RegistrarPolicy, SeatAccount,
};

/// Methods this node implements without calls (the `Allow` header).
pub const ALLOWED_METHODS: &str = "REGISTER, OPTIONS";
/// Methods with the B2BUA on.
pub const ALLOWED_METHODS_WITH_CALLS: &str = "INVITE, ACK, CANCEL, BYE, REGISTER, OPTIONS";

/// Timer J for UDP (64 × T1): how long a non-INVITE server transaction keeps its final
/// response to answer retransmissions (RFC 3261 §17.2.2).
pub const TIMER_J: Duration = Duration::from_secs(32);

/// Most transactions kept at once; beyond it new ones are simply not cached (a retransmission
/// is then processed again, which REGISTER and OPTIONS tolerate).
const MAX_TRANSACTIONS: usize = 100_000;

/// Most nonces tracked for replay protection.
const MAX_TRACKED_NONCES: usize = 100_000;

/// What the SIP service needs from the call center.
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// The digest realm: the CallCenter's `spec.sip.domain`.
    pub realm: String,
    pub seats: Vec<SeatAccount>,
    pub policy: RegistrarPolicy,
    pub nonce_lifetime: Duration,
}

/// A response to send: bytes and where (for UDP; TCP answers on the same connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub destination: SocketAddr,
}

/// The counters and gauges of the SIP layer.
#[derive(Clone)]
pub struct SipMetrics {
    pub requests: IntCounterVec,
    pub responses: IntCounterVec,
    pub dropped: IntCounterVec,
    pub retransmissions: IntCounter,
    pub auth_failures: IntCounter,
    pub auth_rate_limited: IntCounter,
    pub registered_seats: IntGauge,
    pub registered_contacts: IntGauge,
    /// Calls bridged by the B2BUA right now.
    pub calls_active: IntGauge,
    /// RTP/RTCP port pairs leased to calls right now.
    pub rtp_port_pairs_in_use: IntGauge,
    /// Prompts the running config uses that cannot be read.
    pub prompts_missing: IntGauge,
    /// Finished calls by outcome (answered, abandoned, busy, no_answer, failed, blocked).
    pub calls: IntCounterVec,
    /// RTP packets and bytes relayed, by direction (caller_to_callee, callee_to_caller).
    pub rtp_packets: IntCounterVec,
    pub rtp_bytes: IntCounterVec,
    /// RTCP packets passed between legs.
    pub rtcp_packets: IntCounter,
    /// Media datagrams dropped (malformed, unknown payload type, no destination).
    pub media_dropped: IntCounter,
    /// Calls to an entry point whose route (IVR menu, queue, voicemail) is not served yet.
    pub calls_not_served: IntCounterVec,
    /// Per-trunk channels busy, channel limits and blocked calls.
    pub trunks: crate::call::trunks::TrunkMetrics,
    /// Calls taken over from a failed active node, by outcome (resumed, lost).
    pub calls_taken_over: IntCounterVec,
    /// From taking a call over to both its legs accepting the re-INVITEs that move their
    /// media here.
    pub takeover_seconds: Histogram,
}

impl SipMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "switchboard_sip_requests_total",
                    "SIP requests received, by method.",
                ),
                &["method"],
            )?,
            responses: IntCounterVec::new(
                Opts::new(
                    "switchboard_sip_responses_total",
                    "SIP responses sent, by status code.",
                ),
                &["code"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "switchboard_sip_dropped_messages_total",
                    "SIP messages dropped without a response, by reason.",
                ),
                &["reason"],
            )?,
            retransmissions: IntCounter::new(
                "switchboard_sip_retransmissions_total",
                "Retransmitted requests answered from the transaction cache.",
            )?,
            auth_failures: IntCounter::new(
                "switchboard_sip_auth_failures_total",
                "REGISTER and INVITE digest responses that did not match the seat's credentials.",
            )?,
            auth_rate_limited: IntCounter::new(
                "switchboard_sip_auth_rate_limited_total",
                "REGISTERs and INVITEs refused without digest work because their source failed too often.",
            )?,
            registered_seats: IntGauge::new(
                "switchboard_registered_seats",
                "Seats with at least one registered contact.",
            )?,
            registered_contacts: IntGauge::new(
                "switchboard_registered_contacts",
                "Registered contacts over all seats.",
            )?,
            calls_active: IntGauge::new(
                "switchboard_calls_active",
                "Calls bridged by the node right now.",
            )?,
            calls: IntCounterVec::new(
                Opts::new("switchboard_calls_total", "Finished calls, by outcome."),
                &["outcome"],
            )?,
            rtp_packets: IntCounterVec::new(
                Opts::new(
                    "switchboard_rtp_packets_total",
                    "RTP packets relayed between call legs, by direction.",
                ),
                &["direction"],
            )?,
            rtp_bytes: IntCounterVec::new(
                Opts::new(
                    "switchboard_rtp_bytes_total",
                    "RTP bytes relayed between call legs, by direction.",
                ),
                &["direction"],
            )?,
            rtcp_packets: IntCounter::new(
                "switchboard_rtcp_packets_total",
                "RTCP packets passed between call legs.",
            )?,
            media_dropped: IntCounter::new(
                "switchboard_media_dropped_total",
                "Media datagrams dropped: malformed, unnegotiated payload type, or no destination.",
            )?,
            rtp_port_pairs_in_use: IntGauge::new(
                "switchboard_rtp_port_pairs_in_use",
                "RTP/RTCP port pairs leased to calls right now.",
            )?,
            prompts_missing: IntGauge::new(
                "switchboard_prompts_missing",
                "Prompts the running config uses (menus, announcements, music on hold, voicemail greeting, survey) that cannot be read: callers hear silence where they should play.",
            )?,
            calls_not_served: IntCounterVec::new(
                Opts::new(
                    "switchboard_calls_not_served_total",
                    "Calls to a call-center route (menu, queue, voicemail, feature code) on a node without the call-center runtime (refused with 480), by route.",
                ),
                &["action"],
            )?,
            trunks: crate::call::trunks::TrunkMetrics::new(registry)?,
            calls_taken_over: IntCounterVec::new(
                Opts::new(
                    "switchboard_calls_taken_over_total",
                    "Calls this node took over from a failed active node, by outcome: resumed (both legs accepted the re-INVITE moving their media here), lost (a leg refused it or never answered).",
                ),
                &["outcome"],
            )?,
            takeover_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_call_takeover_seconds",
                    "From taking a call over (after the Lease) to both its legs accepting the re-INVITEs that move their media to this node.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
        };
        registry.register(Box::new(metrics.calls_taken_over.clone()))?;
        registry.register(Box::new(metrics.takeover_seconds.clone()))?;
        registry.register(Box::new(metrics.calls_not_served.clone()))?;
        registry.register(Box::new(metrics.rtp_port_pairs_in_use.clone()))?;
        registry.register(Box::new(metrics.prompts_missing.clone()))?;
        registry.register(Box::new(metrics.rtp_packets.clone()))?;
        registry.register(Box::new(metrics.rtp_bytes.clone()))?;
        registry.register(Box::new(metrics.rtcp_packets.clone()))?;
        registry.register(Box::new(metrics.media_dropped.clone()))?;
        registry.register(Box::new(metrics.calls_active.clone()))?;
        registry.register(Box::new(metrics.calls.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.responses.clone()))?;
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.retransmissions.clone()))?;
        registry.register(Box::new(metrics.auth_failures.clone()))?;
        registry.register(Box::new(metrics.auth_rate_limited.clone()))?;
        registry.register(Box::new(metrics.registered_seats.clone()))?;
        registry.register(Box::new(metrics.registered_contacts.clone()))?;
        Ok(metrics)
    }
}

/// Identifies a server transaction (RFC 3261 §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TransactionKey {
    /// RFC 3261 branch: branch, sent-by and method.
    Branch {
        branch: String,
        sent_by: String,
        method: String,
    },
    /// RFC 2543 peers without the magic cookie: the request's identifying headers.
    Legacy {
        call_id: String,
        cseq: String,
        from_tag: String,
        top_via: String,
    },
}

impl TransactionKey {
    fn of(request: &SipRequest) -> Option<Self> {
        let via = request.top_via()?;
        let (_, method) = request.cseq()?;
        match via.branch() {
            Some(branch) if branch.starts_with(BRANCH_MAGIC_COOKIE) => Some(Self::Branch {
                branch: branch.to_string(),
                sent_by: via.sent_by().to_ascii_lowercase(),
                method: method.to_ascii_uppercase(),
            }),
            _ => Some(Self::Legacy {
                call_id: request.header("Call-ID")?.to_string(),
                cseq: request.header("CSeq")?.to_string(),
                from_tag: request
                    .header("From")
                    .and_then(NameAddr::parse)
                    .and_then(|f| f.tag().map(str::to_string))
                    .unwrap_or_default(),
                top_via: via.raw,
            }),
        }
    }
}

/// Final responses of recent non-INVITE (and rejected INVITE) server transactions.
struct Transactions {
    completed: HashMap<TransactionKey, (Vec<u8>, Instant)>,
}

/// The SIP service.
pub struct SipServer {
    realm: String,
    registrar: Arc<Mutex<Registrar>>,
    nonces: NonceIssuer,
    nonce_counts: Mutex<NonceCounts>,
    transactions: Mutex<Transactions>,
    metrics: SipMetrics,
    /// The B2BUA; `None` until [`SipServer::with_calls`] turns calls on.
    calls: Option<Arc<CallEngine>>,
    /// Where registration changes are replicated to the standby (HotStandby).
    replication: std::sync::OnceLock<Arc<crate::replication::ReplicationHub>>,
    /// Whether this node takes new calls and registrations (it is the active one, not
    /// draining).
    serving: Arc<std::sync::atomic::AtomicBool>,
    /// [`ServingMode::HandingOver`]: new calls and registrations are left unanswered.
    handing_over: std::sync::atomic::AtomicBool,
    /// Whether its calls may send in-dialog requests (active or draining; not a standby or
    /// a fenced active).
    sending: Arc<std::sync::atomic::AtomicBool>,
}

/// What a node does with SIP, by its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingMode {
    /// The active node: new calls, registrations, its calls' requests.
    Active,
    /// Stopping: no new call or registration, its established calls go on to their end.
    Draining,
    /// Stopping after handing the Lease over (HotStandby): as `Draining`, but new calls and
    /// registrations get no answer at all. A 503 would end the phone's attempt; unanswered, it
    /// retransmits, and the retransmission reaches the node that took over once the SIP
    /// Service has moved to it.
    HandingOver,
    /// A standby or a fenced active: nothing new, and no request of its own either (another
    /// node may serve these dialogs now).
    Standby,
}

impl SipServer {
    pub fn new(settings: SipSettings, metrics: SipMetrics, epoch: Instant) -> Self {
        Self {
            realm: settings.realm,
            registrar: Arc::new(Mutex::new(Registrar::new(
                settings.policy,
                settings.seats,
                AuthFailureLimiter::default(),
            ))),
            nonces: NonceIssuer::new(epoch, settings.nonce_lifetime),
            nonce_counts: Mutex::new(NonceCounts::new(MAX_TRACKED_NONCES)),
            transactions: Mutex::new(Transactions {
                completed: HashMap::new(),
            }),
            metrics,
            calls: None,
            replication: std::sync::OnceLock::new(),
            serving: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            sending: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            handing_over: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn set_mode(&self, mode: ServingMode) {
        use std::sync::atomic::Ordering::Relaxed;
        self.serving.store(mode == ServingMode::Active, Relaxed);
        self.sending.store(mode != ServingMode::Standby, Relaxed);
        self.handing_over
            .store(mode == ServingMode::HandingOver, Relaxed);
    }

    fn serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replicates registration changes (and the nonce key) to `hub` from now on.
    pub fn attach_replication(&self, hub: Arc<crate::replication::ReplicationHub>) {
        hub.set_nonce_key(self.nonces.key());
        let _ = self.replication.set(hub);
    }

    /// Issues and accepts digest nonces with the center's key from now on (a node taking
    /// over adopts its predecessor's, so phones challenged there authenticate here), still
    /// accepting its own earlier ones; its own standby is given the key too.
    pub fn adopt_nonce_key(&self, key: digest::NonceKey) {
        self.nonces.adopt(key);
        if let Some(hub) = self.replication.get() {
            hub.set_nonce_key(key);
        }
    }

    /// Installs the registrations the previous active node held (hot-standby takeover), so
    /// the seats' phones are rung without registering again; returns how many were taken.
    pub fn restore_registrations(
        &self,
        records: &[switchboard_proto::replication::v1::Registration],
        clock: crate::replication::WallClock,
        now: Instant,
    ) -> usize {
        let mut registrar = self.registrar.lock();
        let mut restored = Vec::new();
        for record in records {
            if let Some(binding) = crate::replication::takeover::binding(record, clock, now)
                && registrar.restore(&record.extension, binding, now)
            {
                restored.push(record.extension.clone());
            }
        }
        self.count_registrations(&registrar);
        let now_bound: Vec<(String, Vec<super::registrar::Binding>)> = restored
            .iter()
            .map(|ext| (ext.clone(), registrar.bindings(ext, now)))
            .collect();
        drop(registrar);
        // This node's own standby follows them from now on.
        for (extension, bindings) in &now_bound {
            self.replicate_registrations(extension, bindings);
        }
        restored.len()
    }

    /// Tells the replication the seat's contacts now.
    fn replicate_registrations(&self, extension: &str, bindings: &[super::registrar::Binding]) {
        if let Some(hub) = self.replication.get() {
            hub.registrations_now(extension, bindings);
        }
    }

    /// Turns calls on (INVITE served by the B2BUA) when `settings.ports` is set; without
    /// ports INVITE keeps getting 501.
    pub fn with_calls(mut self, settings: CallSettings) -> Result<Self, CallSetupError> {
        self.calls = CallEngine::new(settings, self.realm.clone(), Some(self.metrics.clone()))?;
        if let Some(calls) = &self.calls {
            calls.attach_registrar(Arc::clone(&self.registrar));
            calls.share_serving(Arc::clone(&self.sending));
        }
        Ok(self)
    }

    /// The B2BUA, when calls are on.
    pub fn calls(&self) -> Option<&Arc<CallEngine>> {
        self.calls.as_ref()
    }

    /// Connects the B2BUA to the transport's sender (called by the transport on start).
    pub fn attach_outbound(&self, link: OutboundLink) {
        if let Some(calls) = &self.calls {
            calls.attach(link);
        }
    }

    pub fn metrics(&self) -> &SipMetrics {
        &self.metrics
    }

    /// The realm seats authenticate in (fixed for the life of the process).
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Takes a new config's seat accounts without a restart (see
    /// [`super::registrar::Registrar::replace_seats`]); returns the extensions that lost their
    /// registrations because their seat is gone.
    pub fn replace_seats(&self, seats: Vec<SeatAccount>) -> Vec<String> {
        let mut registrar = self.registrar.lock();
        let gone = registrar.replace_seats(seats);
        self.count_registrations(&registrar);
        drop(registrar);
        for extension in &gone {
            self.replicate_registrations(extension, &[]);
        }
        if !gone.is_empty() {
            tracing::info!(extensions = ?gone, "registrations dropped: their seats left the config");
        }
        gone
    }

    fn count_registrations(&self, registrar: &Registrar) {
        self.metrics
            .registered_seats
            .set(i64::try_from(registrar.registered_seats()).unwrap_or(i64::MAX));
        self.metrics
            .registered_contacts
            .set(i64::try_from(registrar.binding_count()).unwrap_or(i64::MAX));
    }

    /// The live contacts of a seat (what a call to the extension will ring).
    pub fn contacts(&self, extension: &str, now: Instant) -> Vec<String> {
        self.registrar
            .lock()
            .bindings(extension, now)
            .into_iter()
            .map(|b| b.uri)
            .collect()
    }

    /// Whether a seat has a live registered contact (its phone can be rung).
    pub fn is_registered(&self, extension: &str, now: Instant) -> bool {
        !self.registrar.lock().bindings(extension, now).is_empty()
    }

    /// Handles one complete message from `source`. Never panics on any input.
    pub fn handle(
        &self,
        bytes: &[u8],
        source: SocketAddr,
        transport: Transport,
        now: Instant,
    ) -> Option<Outgoing> {
        let request = match message::parse(bytes) {
            Ok(Inbound::Request(request)) => request,
            Ok(Inbound::Response(response)) => {
                let status = response.status;
                if let Some(calls) = &self.calls
                    && calls.deliver_response(response)
                {
                    return None;
                }
                debug!(%source, status, "response without a client transaction dropped");
                self.metrics
                    .dropped
                    .with_label_values(&["stray_response"])
                    .inc();
                return None;
            }
            Err(error) => {
                debug!(%source, %error, "unparsable message dropped");
                self.metrics
                    .dropped
                    .with_label_values(&["unparsable"])
                    .inc();
                return None;
            }
        };
        self.metrics
            .requests
            .with_label_values(&[&request.method.to_string()])
            .inc();
        if request.method == rsip::Method::Ack {
            if let Some(calls) = &self.calls {
                calls.deliver_request(&request, source, transport);
            }
            // ACK is never answered (RFC 3261 §17.2.1): it ends an INVITE transaction whose
            // non-2xx final response we sent, or it is malformed and simply dropped.
            return None;
        }
        let Some(via) = request.top_via() else {
            // Without a Via there is no address a response could be sent back to.
            debug!(%source, "request without a usable Via dropped");
            self.metrics.dropped.with_label_values(&["no_via"]).inc();
            return None;
        };
        let destination = match transport {
            Transport::Udp => via.response_destination(source),
            Transport::Tcp => source,
        };
        let missing = request.missing_mandatory_headers();
        if !missing.is_empty() {
            debug!(%source, ?missing, "request without mandatory headers");
            let reason = format!("Missing or Malformed {}", missing.join(", "));
            let bytes = build_response(&request, 400, &reason, source, Some(&random_tag()), &[]);
            self.metrics.responses.with_label_values(&["400"]).inc();
            return Some(Outgoing { bytes, destination });
        }

        if request.method == rsip::Method::Invite
            && let Some(calls) = &self.calls
            && calls.deliver_request(&request, source, transport)
        {
            // A retransmitted INVITE or a re-INVITE: its call answers it.
            return None;
        }
        if matches!(
            request.method,
            rsip::Method::Invite | rsip::Method::Register
        ) && self.handing_over.load(std::sync::atomic::Ordering::Relaxed)
        {
            debug!(%source, method = %request.method, "handed over: left to the new active");
            self.metrics
                .dropped
                .with_label_values(&["handing_over"])
                .inc();
            return None;
        }

        let key = TransactionKey::of(&request);
        if let Some(key) = &key {
            let transactions = self.transactions.lock();
            if let Some((cached, expires)) = transactions.completed.get(key)
                && *expires > now
            {
                self.metrics.retransmissions.inc();
                return Some(Outgoing {
                    bytes: cached.clone(),
                    destination,
                });
            }
        }

        let (status, bytes) = self.respond(&request, source, transport, now);
        self.metrics
            .responses
            .with_label_values(&[&status.to_string()])
            .inc();
        // Over TCP nothing is retransmitted (Timer J is zero); over UDP keep the answer.
        // A 100 Trying is no final answer: the call answers retransmissions itself.
        if transport == Transport::Udp
            && status >= 200
            && let Some(key) = key
        {
            let mut transactions = self.transactions.lock();
            if transactions.completed.len() >= MAX_TRANSACTIONS {
                transactions
                    .completed
                    .retain(|_, (_, expires)| *expires > now);
            }
            if transactions.completed.len() < MAX_TRANSACTIONS {
                transactions
                    .completed
                    .insert(key, (bytes.clone(), now + TIMER_J));
            }
        }
        Some(Outgoing { bytes, destination })
    }

    /// The final response to a well-formed request, with its status code.
    fn respond(
        &self,
        request: &SipRequest,
        source: SocketAddr,
        transport: Transport,
        now: Instant,
    ) -> (u16, Vec<u8>) {
        let tag = random_tag();
        let simple = |status: u16, extra: &[(&str, String)]| {
            (
                status,
                build_response(
                    request,
                    status,
                    reason_phrase(status),
                    source,
                    Some(&tag),
                    extra,
                ),
            )
        };
        if let Some(require) = request.header("Require")
            && !require.trim().is_empty()
            && request.method != rsip::Method::Cancel
        {
            // We support no option tags yet (RFC 3261 §8.2.2.3).
            return simple(420, &[("Unsupported", require.to_string())]);
        }
        match request.method {
            // Not the active node: the phone or carrier retries, and the SIP Service takes it to
            // the node that serves.
            rsip::Method::Register | rsip::Method::Invite if !self.serving() => {
                debug!(%source, method = %request.method, "not the active node: refused");
                simple(503, &[("Retry-After", "1".to_string())])
            }
            rsip::Method::Register => self.register(request, source, transport, now, &tag),
            rsip::Method::Options => simple(
                200,
                &[
                    ("Allow", self.allowed_methods().to_string()),
                    ("Accept", "application/sdp".to_string()),
                    ("Accept-Encoding", "identity".to_string()),
                    ("Accept-Language", "en".to_string()),
                ],
            ),
            rsip::Method::Invite => match &self.calls {
                Some(calls) => self.invite(calls, request, source, transport, now, &tag),
                None => simple(501, &[("Allow", self.allowed_methods().to_string())]),
            },
            rsip::Method::Bye | rsip::Method::Cancel => {
                // The call acts on it; the answer comes from here so the Timer J cache
                // absorbs retransmissions. CANCEL after the final response is still 200.
                match &self.calls {
                    Some(calls) if calls.deliver_request(request, source, transport) => {
                        simple(200, &[])
                    }
                    _ => simple(481, &[]),
                }
            }
            _ => simple(405, &[("Allow", self.allowed_methods().to_string())]),
        }
    }

    fn challenge(
        &self,
        request: &SipRequest,
        source: SocketAddr,
        now: Instant,
        stale: bool,
        tag: &str,
    ) -> (u16, Vec<u8>) {
        let nonce = self.nonces.issue(now);
        let header = digest::challenge(&self.realm, &nonce, stale);
        (
            401,
            build_response(
                request,
                401,
                "Unauthorized",
                source,
                Some(tag),
                &[("WWW-Authenticate", header)],
            ),
        )
    }

    fn register(
        &self,
        request: &SipRequest,
        source: SocketAddr,
        transport: Transport,
        now: Instant,
        tag: &str,
    ) -> (u16, Vec<u8>) {
        let reply = |status: u16, reason: &str, extra: &[(&str, String)]| {
            (
                status,
                build_response(request, status, reason, source, Some(tag), extra),
            )
        };
        // A source that keeps failing is refused before any parsing or hashing.
        if !self.registrar.lock().auth_allowed(source.ip(), now) {
            self.metrics.auth_rate_limited.inc();
            return reply(
                403,
                "Too Many Failed Authentications",
                &[("Retry-After", "60".into())],
            );
        }
        let Some(extension) = request
            .header("To")
            .and_then(NameAddr::parse)
            .and_then(|to| to.user().map(str::to_string))
        else {
            return reply(404, "Not Found", &[]);
        };
        // A request may carry credentials for several realms (RFC 3261 §22.3): use ours.
        let mut ours = None;
        let mut malformed = None;
        let mut any = false;
        for value in request.header_values("Authorization") {
            any = true;
            match parse_authorization(value) {
                Ok(c) if c.realm == self.realm => {
                    ours = Some(c);
                    break;
                }
                Ok(_) => {}
                Err(error) => malformed = Some(error),
            }
        }
        let credentials = match (ours, malformed) {
            (Some(c), _) => c,
            (None, Some(error)) => {
                debug!(%source, %error, "unusable Authorization");
                return reply(400, "Malformed Authorization", &[]);
            }
            // No credentials, or only for other realms (a phone set up for another server):
            // a challenge tells it which realm we want.
            (None, None) => {
                if any {
                    debug!(%source, "Authorization for another realm");
                }
                return self.challenge(request, source, now, false, tag);
            }
        };
        match self.nonces.check(&credentials.nonce, now) {
            NonceStatus::Valid => {}
            NonceStatus::Stale => return self.challenge(request, source, now, true, tag),
            NonceStatus::Forged => return self.challenge(request, source, now, false, tag),
        }
        let Some(ha1) = self
            .registrar
            .lock()
            .seat(&extension)
            .map(|s| s.ha1.clone())
        else {
            return reply(404, "Not Found", &[]);
        };
        if credentials.username != extension
            || !digest::verify_response(&credentials, &request.method.to_string(), &ha1)
        {
            self.registrar.lock().auth_failed(source.ip(), now);
            self.metrics.auth_failures.inc();
            warn!(%source, extension, username = credentials.username, "REGISTER with wrong credentials");
            return reply(403, "Forbidden", &[]);
        }
        if let Some(nc) = credentials.nc {
            let nonce_expires = now + self.nonces.lifetime();
            match self
                .nonce_counts
                .lock()
                .accept(&credentials.nonce, nc, nonce_expires, now)
            {
                NonceCountCheck::Fresh => {}
                NonceCountCheck::Replayed => {
                    warn!(%source, extension, nc, "replayed nonce-count refused");
                    return self.challenge(request, source, now, false, tag);
                }
                NonceCountCheck::Full => return self.challenge(request, source, now, true, tag),
            }
        }

        let update = match parse_contacts(request.header_values("Contact")) {
            Ok(update) => update,
            Err(error) => {
                // The reason phrase stays fixed: echoing the peer's text into it helps nobody.
                debug!(%source, %error, "unusable Contact");
                return reply(400, "Bad Request (Malformed Contact)", &[]);
            }
        };
        let expires_header = match request.header("Expires").map(parse_expires).transpose() {
            Ok(e) => e,
            Err(error) => {
                debug!(%source, %error, "unusable Expires");
                return reply(400, "Bad Request (Malformed Expires)", &[]);
            }
        };
        let Some((cseq, _)) = request.cseq() else {
            return reply(400, "Bad Request", &[]);
        };
        let register = RegisterRequest {
            extension: extension.clone(),
            update,
            expires_header,
            call_id: request.header("Call-ID").unwrap_or_default().to_string(),
            cseq,
            source,
            transport,
        };
        let mut registrar = self.registrar.lock();
        let before = registrar.bindings(&extension, now).len();
        let outcome = registrar.register(&register, now);
        self.count_registrations(&registrar);
        drop(registrar);
        match outcome {
            RegisterOutcome::Bindings(bindings) => {
                self.replicate_registrations(&extension, &bindings);
                if bindings.len() != before {
                    info!(extension, %source, %transport, contacts = bindings.len(), "seat registration changed");
                }
                let contacts: Vec<(&str, String)> = bindings
                    .iter()
                    .map(|b| {
                        (
                            "Contact",
                            format!("<{}>;expires={}", b.uri, b.expires_in(now)),
                        )
                    })
                    .collect();
                let mut extra = contacts;
                extra.push((
                    "Date",
                    chrono::Utc::now()
                        .format("%a, %d %b %Y %H:%M:%S GMT")
                        .to_string(),
                ));
                reply(200, "OK", &extra)
            }
            RegisterOutcome::IntervalTooBrief { min_expires } => reply(
                423,
                "Interval Too Brief",
                &[("Min-Expires", min_expires.to_string())],
            ),
            RegisterOutcome::TooManyContacts { max_contacts } => reply(
                403,
                &format!("Too Many Contacts (at most {max_contacts})"),
                &[],
            ),
            RegisterOutcome::UnknownSeat => reply(404, "Not Found", &[]),
            RegisterOutcome::InvalidWildcard => {
                reply(400, "Bad Request (Contact: * needs Expires: 0)", &[])
            }
            RegisterOutcome::OutOfOrder => {
                reply(500, "Out of Order CSeq", &[("Retry-After", "1".into())])
            }
        }
    }

    fn allowed_methods(&self) -> &'static str {
        if self.calls.is_some() {
            ALLOWED_METHODS_WITH_CALLS
        } else {
            ALLOWED_METHODS
        }
    }

    /// A new INVITE: a source address listed for a trunk is trusted as that trunk; anyone
    /// else is a seat and authenticates (the REGISTER challenge flow, as a proxy challenge).
    /// Then the call is routed, a trunk channel taken when a trunk is involved, and the call
    /// started.
    fn invite(
        &self,
        calls: &Arc<CallEngine>,
        request: &SipRequest,
        source: SocketAddr,
        transport: Transport,
        now: Instant,
        tag: &str,
    ) -> (u16, Vec<u8>) {
        let reply = |status: u16, reason: &str| {
            (
                status,
                build_response(request, status, reason, source, Some(tag), &[]),
            )
        };
        let has_to_tag = request
            .header("To")
            .and_then(NameAddr::parse)
            .is_some_and(|t| t.tag().is_some());
        if has_to_tag {
            // In-dialog INVITE for a call we do not know (ended, or never ours).
            return reply(481, reason_phrase(481));
        }
        let routing = calls.routing();
        let from_trunk = routing.trunks.by_source(source.ip()).cloned();
        let caller = match &from_trunk {
            Some(_) => request
                .header("From")
                .and_then(NameAddr::parse)
                .and_then(|f| f.user().map(str::to_string))
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "anonymous".to_string()),
            None => match self.authenticate_caller(request, source, now, tag) {
                Ok(caller) => caller,
                Err(refusal) => return refusal,
            },
        };
        let dialed = NameAddr::parse(&format!("<{}>", request.uri))
            .and_then(|u| u.user().map(str::to_string))
            .unwrap_or_default();
        let directory = Directory {
            registrar: &self.registrar,
            now,
        };
        let who = match &from_trunk {
            Some(trunk) => Caller::Trunk(trunk.name()),
            None => Caller::Seat(&caller),
        };
        let decision = routing::route(who, &dialed, &routing.dial_plan(), &directory);
        let call_id = request.header("Call-ID").unwrap_or_default();
        let refuse = |status: u16, reason: &str, direction, trunk: Option<&str>, outcome| {
            calls.record_refused(Refused {
                call_id,
                caller: &caller,
                dialed: &dialed,
                status,
                direction,
                trunk,
                outcome,
            });
            reply(status, reason)
        };
        let inbound_direction = if from_trunk.is_some() {
            CallDirection::Inbound
        } else {
            CallDirection::Internal
        };
        let inbound_trunk = from_trunk.as_ref().map(|t| t.name().to_string());
        if let RouteDecision::Center(route) = &decision
            && let Some(center) = calls.center()
        {
            let setup = CenterSetup {
                invite: request,
                source,
                transport,
                caller: caller.clone(),
                dialed: dialed.clone(),
                direction: inbound_direction,
                route: route.clone(),
                center: Arc::clone(center),
            };
            let channel = match &from_trunk {
                Some(trunk) => match routing.trunks.acquire(trunk) {
                    Some(channel) => Some(channel),
                    None => {
                        warn!(%source, caller, dialed, trunk = trunk.name(), limit = trunk.limit(), "trunk channels all busy; call blocked");
                        return refuse(
                            503,
                            "Service Unavailable (trunk channel limit reached)",
                            inbound_direction,
                            Some(trunk.name()),
                            CallOutcome::Blocked,
                        );
                    }
                },
                None => None,
            };
            return match calls.start_center_call(setup, channel) {
                Ok(trying) => (100, trying),
                Err(error) => {
                    let status = error.status();
                    warn!(%source, caller, dialed, %error, status, "call refused");
                    refuse(
                        status,
                        reason_phrase(status),
                        inbound_direction,
                        inbound_trunk.as_deref(),
                        CallOutcome::Failed,
                    )
                }
            };
        }
        let RouteDecision::Ring(destination) = decision else {
            let status = decision.rejection_status().unwrap_or(500);
            let reason = decision
                .rejection_reason()
                .unwrap_or_else(|| reason_phrase(status).to_string());
            if let RouteDecision::Center(route) = &decision {
                self.metrics
                    .calls_not_served
                    .with_label_values(&[route.label()])
                    .inc();
                warn!(%source, caller, dialed, route = route.label(), "call-center route without the call-center runtime; call refused with 480");
            } else {
                info!(%source, caller, dialed, status, trunk = inbound_trunk, "call refused by routing");
            }
            return refuse(
                status,
                &reason,
                inbound_direction,
                inbound_trunk.as_deref(),
                CallOutcome::Failed,
            );
        };
        let (callee, target, direction, trunk) = match destination {
            Destination::Seat { extension, contact } => (
                extension,
                CallTarget::Seat(contact),
                inbound_direction,
                from_trunk,
            ),
            Destination::Trunk { trunk, number } => {
                let Some(trunk) = routing.trunks.get(&trunk).cloned() else {
                    return refuse(
                        404,
                        reason_phrase(404),
                        CallDirection::Outbound,
                        None,
                        CallOutcome::Failed,
                    );
                };
                let Some(peer) = trunk.peer_address() else {
                    warn!(
                        trunk = trunk.name(),
                        host = trunk.spec.peer.host,
                        "trunk peer cannot be resolved; outbound call refused"
                    );
                    return refuse(
                        503,
                        reason_phrase(503),
                        CallDirection::Outbound,
                        Some(trunk.name()),
                        CallOutcome::Failed,
                    );
                };
                (
                    number,
                    CallTarget::Trunk {
                        trunk: Arc::clone(&trunk),
                        destination: peer,
                    },
                    CallDirection::Outbound,
                    Some(trunk),
                )
            }
        };
        let channel = match &trunk {
            Some(trunk) => match routing.trunks.acquire(trunk) {
                Some(channel) => Some(channel),
                None => {
                    warn!(%source, caller, dialed, trunk = trunk.name(), limit = trunk.limit(), "trunk channels all busy; call blocked");
                    return refuse(
                        503,
                        "Service Unavailable (trunk channel limit reached)",
                        direction,
                        Some(trunk.name()),
                        CallOutcome::Blocked,
                    );
                }
            },
            None => None,
        };
        let setup = CallSetup {
            invite: request,
            source,
            transport,
            caller: caller.clone(),
            callee,
            target,
            direction,
            channel,
        };
        match calls.start_call(setup) {
            Ok(trying) => (100, trying),
            Err(error) => {
                // The setup (and its channel) is dropped: the channel is free again.
                let status = error.status();
                warn!(%source, caller, dialed, %error, status, "call refused");
                let trunk_name = trunk.as_ref().map(|t| t.name());
                refuse(
                    status,
                    reason_phrase(status),
                    direction,
                    trunk_name,
                    CallOutcome::Failed,
                )
            }
        }
    }

    /// Digest-authenticates the seat placing a call, as REGISTER does but with 407 and
    /// Proxy-Authorization (what phones answer for INVITE). The digest username must be the
    /// seat in From. `Ok(extension)` or the response refusing the INVITE.
    fn authenticate_caller(
        &self,
        request: &SipRequest,
        source: SocketAddr,
        now: Instant,
        tag: &str,
    ) -> Result<String, (u16, Vec<u8>)> {
        let reply = |status: u16, reason: &str, extra: &[(&str, String)]| {
            (
                status,
                build_response(request, status, reason, source, Some(tag), extra),
            )
        };
        let challenge = |stale: bool| {
            let nonce = self.nonces.issue(now);
            reply(
                407,
                "Proxy Authentication Required",
                &[(
                    "Proxy-Authenticate",
                    digest::challenge(&self.realm, &nonce, stale),
                )],
            )
        };
        if !self.registrar.lock().auth_allowed(source.ip(), now) {
            self.metrics.auth_rate_limited.inc();
            return Err(reply(
                403,
                "Too Many Failed Authentications",
                &[("Retry-After", "60".into())],
            ));
        }
        let mut credentials = None;
        let mut malformed = false;
        for value in request
            .header_values("Proxy-Authorization")
            .chain(request.header_values("Authorization"))
        {
            match parse_authorization(value) {
                Ok(c) if c.realm == self.realm => {
                    credentials = Some(c);
                    break;
                }
                Ok(_) => {}
                Err(_) => malformed = true,
            }
        }
        let Some(credentials) = credentials else {
            if malformed {
                return Err(reply(400, "Malformed Authorization", &[]));
            }
            return Err(challenge(false));
        };
        match self.nonces.check(&credentials.nonce, now) {
            NonceStatus::Valid => {}
            NonceStatus::Stale => return Err(challenge(true)),
            NonceStatus::Forged => return Err(challenge(false)),
        }
        let from_user = request
            .header("From")
            .and_then(NameAddr::parse)
            .and_then(|f| f.user().map(str::to_string))
            .unwrap_or_default();
        let ha1 = self
            .registrar
            .lock()
            .seat(&credentials.username)
            .map(|s| s.ha1.clone());
        let verified = ha1.is_some_and(|ha1| {
            digest::verify_response(&credentials, &request.method.to_string(), &ha1)
        });
        if !verified {
            self.registrar.lock().auth_failed(source.ip(), now);
            self.metrics.auth_failures.inc();
            warn!(%source, username = credentials.username, "INVITE with wrong credentials");
            return Err(reply(403, "Forbidden", &[]));
        }
        if credentials.username != from_user {
            warn!(%source, username = credentials.username, from_user, "INVITE From is not the authenticated seat");
            return Err(reply(
                403,
                "Forbidden (From is not the authenticated seat)",
                &[],
            ));
        }
        if let Some(nc) = credentials.nc {
            let nonce_expires = now + self.nonces.lifetime();
            match self
                .nonce_counts
                .lock()
                .accept(&credentials.nonce, nc, nonce_expires, now)
            {
                NonceCountCheck::Fresh => {}
                NonceCountCheck::Replayed => {
                    warn!(%source, nc, "replayed nonce-count refused");
                    return Err(challenge(false));
                }
                NonceCountCheck::Full => return Err(challenge(true)),
            }
        }
        Ok(credentials.username)
    }

    /// Periodic upkeep: expires registrations, forgets completed transactions and old nonces.
    /// Returns the extensions whose last contact just expired.
    pub fn housekeeping(&self, now: Instant) -> Vec<String> {
        let mut registrar = self.registrar.lock();
        let gone = registrar.expire(now);
        self.metrics
            .registered_seats
            .set(i64::try_from(registrar.registered_seats()).unwrap_or(i64::MAX));
        self.metrics
            .registered_contacts
            .set(i64::try_from(registrar.binding_count()).unwrap_or(i64::MAX));
        drop(registrar);
        self.transactions
            .lock()
            .completed
            .retain(|_, (_, expires)| *expires > now);
        self.nonce_counts.lock().sweep(now);
        for extension in &gone {
            // A contact that expires while the seat keeps others stays in the replicated
            // state until the seat's next REGISTER; a takeover skips expired contacts.
            self.replicate_registrations(extension, &[]);
            info!(extension, "seat registration expired");
        }
        gone
    }

    /// Counts a message the transport had to drop before it reached [`Self::handle`].
    pub fn count_dropped(&self, reason: &str) {
        self.metrics.dropped.with_label_values(&[reason]).inc();
    }
}

/// The registrar as the routing core sees it.
struct Directory<'a> {
    registrar: &'a Mutex<Registrar>,
    now: Instant,
}

impl SeatDirectory for Directory<'_> {
    fn seat_exists(&self, extension: &str) -> bool {
        self.registrar.lock().seat(extension).is_some()
    }
    fn contacts(&self, extension: &str) -> Vec<Binding> {
        self.registrar.lock().bindings(extension, self.now)
    }
}

#[cfg(test)]
mod tests;
