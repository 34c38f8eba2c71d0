//! The active's replication hub: the node's parts report their changes here, the journal
//! keeps the replicated state, and every connected standby's `Follow` stream gets the
//! snapshot and then the deltas in order.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use switchboard_crds::seat::AgentState as ApiAgentState;
use switchboard_proto::replication::v1::{
    AgentRecord, AgentState, Delta, Registration, Snapshot, Transport as WireTransport, delta,
};
use tokio::sync::broadcast;
use tracing::warn;

use super::{Journal, registration_removed};
use crate::acd::AgentStatus;
use crate::sip::Transport;
use crate::sip::registrar::Binding;

/// Deltas a slow follower may be behind before its stream is ended (it resynchronises from
/// a fresh snapshot).
const FOLLOWER_BACKLOG: usize = 4096;

/// Turns the monotonic instants the node keeps into the wall-clock milliseconds replicated
/// records carry, from one fixed pair, so the same instant always gives the same number (a
/// record that did not change is not sent again).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix_ms: i64,
}

impl WallClock {
    pub fn now() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            at: Instant::now(),
            unix_ms,
        }
    }

    /// The instant of a replicated time (the inverse of [`WallClock::unix_ms`] on this node;
    /// across nodes as exact as their clocks agree). Times before this process started are
    /// clamped to the earliest instant the platform can express.
    pub fn instant(&self, unix_ms: i64) -> Instant {
        let delta = Duration::from_millis(unix_ms.abs_diff(self.unix_ms));
        if unix_ms >= self.unix_ms {
            self.at.checked_add(delta).unwrap_or(self.at)
        } else {
            self.at.checked_sub(delta).unwrap_or(self.at)
        }
    }

    pub fn unix_ms(&self, instant: Instant) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if instant >= self.at {
            self.unix_ms.saturating_add(ms(instant - self.at))
        } else {
            self.unix_ms.saturating_sub(ms(self.at - instant))
        }
    }
}

/// Milliseconds since the Unix epoch now.
pub fn unix_now_ms() -> i64 {
    WallClock::now().unix_ms
}

pub struct ReplicationHub {
    journal: Mutex<Journal>,
    deltas: broadcast::Sender<Delta>,
    clock: WallClock,
    /// The term the node serves in (the Lease's transitions when it became active).
    term: AtomicI64,
    /// Whether this node, draining, gave its Lease up (told to every follower).
    handed_over: tokio::sync::watch::Sender<bool>,
}

impl Default for ReplicationHub {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplicationHub {
    pub fn new() -> Self {
        Self {
            journal: Mutex::new(Journal::default()),
            deltas: broadcast::channel(FOLLOWER_BACKLOG).0,
            clock: WallClock::now(),
            term: AtomicI64::new(0),
            handed_over: tokio::sync::watch::channel(false).0,
        }
    }

    pub fn clock(&self) -> WallClock {
        self.clock
    }

    pub fn term(&self) -> i64 {
        self.term.load(Ordering::Relaxed)
    }

    pub fn set_term(&self, term: i64) {
        self.term.store(term, Ordering::Relaxed);
    }

    pub fn set_config_generation(&self, generation: i64) {
        self.journal.lock().set_config_generation(generation);
    }

    /// The key the node's digest nonces are issued with: streams opened from now on carry it.
    pub fn set_nonce_key(&self, key: crate::sip::digest::NonceKey) {
        self.journal.lock().set_nonce_key(key);
    }

    /// Takes a change into the journal and sends it to the followers.
    pub fn record(&self, change: delta::Change) {
        let mut journal = self.journal.lock();
        match journal.record(change) {
            // No follower connected is fine: the journal has the change for the next snapshot.
            Ok(Some(delta)) => drop(self.deltas.send(delta)),
            Ok(None) => {}
            Err(error) => warn!(%error, "change not replicated"),
        }
    }

    /// A stream's start: the snapshot and the deltas after it, taken under one lock so no
    /// change falls between them.
    pub fn open(&self) -> (Snapshot, broadcast::Receiver<Delta>) {
        let journal = self.journal.lock();
        (journal.snapshot(), self.deltas.subscribe())
    }

    /// This node gave its Lease up (a drain): every follower hears it at once.
    pub fn hand_over(&self) {
        self.handed_over.send_replace(true);
    }

    /// Whether this node handed its Lease over, and when it does.
    pub fn handed_over(&self) -> tokio::sync::watch::Receiver<bool> {
        self.handed_over.subscribe()
    }

    /// Standbys following now.
    pub fn followers(&self) -> usize {
        self.deltas.receiver_count()
    }

    /// The seat's contacts are now `bindings` (after a REGISTER, an expiry or a removed seat).
    pub fn registrations_now(&self, extension: &str, bindings: &[Binding]) {
        let records: Vec<Registration> = bindings
            .iter()
            .map(|b| Registration {
                extension: extension.to_string(),
                contact_uri: b.uri.clone(),
                expires_at_unix_ms: self.clock.unix_ms(b.expires_at),
                call_id: b.call_id.clone(),
                cseq: b.cseq,
                source: b.source.to_string(),
                transport: wire_transport(b.transport) as i32,
            })
            .collect();
        let gone: Vec<String> = self
            .journal
            .lock()
            .state()
            .registrations
            .range((extension.to_string(), String::new())..)
            .take_while(|((ext, _), _)| ext == extension)
            .filter(|((_, contact), _)| !records.iter().any(|r| &r.contact_uri == contact))
            .map(|((_, contact), _)| contact.clone())
            .collect();
        for contact in gone {
            self.record(registration_removed(extension, &contact));
        }
        for record in records {
            self.record(delta::Change::Registration(record));
        }
    }

    /// An agent's state as the ACD holds it now.
    pub fn agent_now(&self, seat: &str, status: &AgentStatus, wrap_up_until: Option<Instant>) {
        self.record(delta::Change::Agent(AgentRecord {
            seat: seat.to_string(),
            state: wire_agent_state(status.state) as i32,
            reason: status.reason.clone().unwrap_or_default(),
            since_unix_ms: self.clock.unix_ms(status.since),
            calls_today: status.calls_today,
            talk_ms_today: u64::try_from(status.talk_time_today.as_millis()).unwrap_or(u64::MAX),
            wrap_up_until_unix_ms: wrap_up_until.map_or(0, |t| self.clock.unix_ms(t)),
        }));
    }
}

fn wire_agent_state(state: ApiAgentState) -> AgentState {
    match state {
        ApiAgentState::LoggedOut => AgentState::LoggedOut,
        ApiAgentState::Ready => AgentState::Ready,
        ApiAgentState::NotReady => AgentState::NotReady,
        ApiAgentState::Ringing => AgentState::Ringing,
        ApiAgentState::Busy => AgentState::Busy,
        ApiAgentState::WrapUp => AgentState::WrapUp,
    }
}

/// A SIP transport as replicated.
pub(crate) fn wire_transport(transport: Transport) -> WireTransport {
    match transport {
        Transport::Udp => WireTransport::Udp,
        Transport::Tcp => WireTransport::Tcp,
    }
}

/// A replicated SIP transport back; `None` for a value that is none.
pub(crate) fn sip_transport(wire: i32) -> Option<Transport> {
    match WireTransport::try_from(wire).ok()? {
        WireTransport::Udp => Some(Transport::Udp),
        WireTransport::Tcp => Some(Transport::Tcp),
        WireTransport::Unspecified => None,
    }
}
