//! The SIP server core: turns one inbound message into at most one outbound response. It owns
//! the registrar, the digest nonces and the non-INVITE server transactions, and does no I/O,
//! so the transport layer stays thin and every decision here is unit-tested with byte strings.
//!
//! Served now: REGISTER (digest-authenticated against the seats' HA1) and OPTIONS. INVITE is
//! answered 501 until the B2BUA lands; BYE and CANCEL get 481 (no dialog or transaction can
//! exist yet); other methods 405 with `Allow`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tracing::{debug, info, warn};

use super::digest::{
    self, NonceCountCheck, NonceCounts, NonceIssuer, NonceStatus, parse_authorization,
};
use super::message::{
    self, BRANCH_MAGIC_COOKIE, Inbound, NameAddr, SipRequest, Transport, build_response,
    parse_contacts, parse_expires, random_tag, reason_phrase,
};
use super::registrar::{
    AuthFailureLimiter, RegisterOutcome, RegisterRequest, Registrar, RegistrarPolicy, SeatAccount,
};

/// Methods this node implements today (the `Allow` header).
pub const ALLOWED_METHODS: &str = "REGISTER, OPTIONS";

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
                "REGISTER digest responses that did not match the seat's credentials.",
            )?,
            auth_rate_limited: IntCounter::new(
                "switchboard_sip_auth_rate_limited_total",
                "REGISTERs refused without digest work because their source failed too often.",
            )?,
            registered_seats: IntGauge::new(
                "switchboard_registered_seats",
                "Seats with at least one registered contact.",
            )?,
            registered_contacts: IntGauge::new(
                "switchboard_registered_contacts",
                "Registered contacts over all seats.",
            )?,
        };
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
    registrar: Mutex<Registrar>,
    nonces: NonceIssuer,
    nonce_counts: Mutex<NonceCounts>,
    transactions: Mutex<Transactions>,
    metrics: SipMetrics,
}

impl SipServer {
    pub fn new(settings: SipSettings, metrics: SipMetrics, epoch: Instant) -> Self {
        Self {
            realm: settings.realm,
            registrar: Mutex::new(Registrar::new(
                settings.policy,
                settings.seats,
                AuthFailureLimiter::default(),
            )),
            nonces: NonceIssuer::new(epoch, settings.nonce_lifetime),
            nonce_counts: Mutex::new(NonceCounts::new(MAX_TRACKED_NONCES)),
            transactions: Mutex::new(Transactions {
                completed: HashMap::new(),
            }),
            metrics,
        }
    }

    pub fn metrics(&self) -> &SipMetrics {
        &self.metrics
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
            Ok(Inbound::Response { status }) => {
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
        if transport == Transport::Udp
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
            rsip::Method::Register => self.register(request, source, transport, now, &tag),
            rsip::Method::Options => simple(
                200,
                &[
                    ("Allow", ALLOWED_METHODS.to_string()),
                    ("Accept", "application/sdp".to_string()),
                    ("Accept-Encoding", "identity".to_string()),
                    ("Accept-Language", "en".to_string()),
                ],
            ),
            rsip::Method::Invite => simple(501, &[("Allow", ALLOWED_METHODS.to_string())]),
            rsip::Method::Bye | rsip::Method::Cancel => simple(481, &[]),
            _ => simple(405, &[("Allow", ALLOWED_METHODS.to_string())]),
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
        self.metrics
            .registered_seats
            .set(i64::try_from(registrar.registered_seats()).unwrap_or(i64::MAX));
        self.metrics
            .registered_contacts
            .set(i64::try_from(registrar.binding_count()).unwrap_or(i64::MAX));
        drop(registrar);
        match outcome {
            RegisterOutcome::Bindings(bindings) => {
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
            info!(extension, "seat registration expired");
        }
        gone
    }

    /// Counts a message the transport had to drop before it reached [`Self::handle`].
    pub fn count_dropped(&self, reason: &str) {
        self.metrics.dropped.with_label_values(&[reason]).inc();
    }
}

#[cfg(test)]
mod tests;
