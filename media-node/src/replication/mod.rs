//! Hot-standby replication, the pure core: the state the active streams to the standby
//! ([`ReplicatedState`]: registrations, agent states, established and queued calls), the
//! active's side ([`Journal`], one [`FollowerStream`] per connected standby) and the standby's
//! ([`Follower`]). No I/O and no clock: every message and check takes the time it needs, so
//! the rules below are tested without a network.
//!
//! The rules (docs/high-availability.md):
//! - A stream opens with a snapshot (sequence 1) and continues with deltas and heartbeats,
//!   each one sequence number more. A gap, a repeat, a stream that does not open with a
//!   snapshot, a message that cannot be decoded or a record that makes no sense is refused
//!   whole: the follower's state stays as it was after the last good message (never applied
//!   half-way) and the follower must resynchronise from a fresh snapshot.
//! - Every message carries the sender's term (the Lease's `leaseTransitions` when it became
//!   active). A message from a term older than one the follower already saw is refused: a
//!   deposed active must not overwrite its successor's state.
//! - A standby that takes the Lease acts only on state of the term just before its own
//!   ([`Follower::takeover`]); older state (it missed a term) is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;

use crate::sip::digest::NonceKey;
use switchboard_proto::replication::v1::{
    AgentRecord, AgentState, CallRecord, Delta, Dialog, HandedOver, Heartbeat, Media, Registration,
    RegistrationKey, ReplicationMessage, Snapshot, Transport, delta, replication_message,
};

pub mod hub;
pub mod stream;
pub mod takeover;
#[cfg(test)]
mod tests;

pub use hub::{ReplicationHub, WallClock, unix_now_ms};

/// Why a follower refused a message. Each one means: drop the stream, resynchronise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error("undecodable replication message: {0}")]
    Undecodable(String),
    #[error("replication message {got} out of order: expected {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("replication stream did not open with a snapshot (message {0})")]
    NoSnapshot(u64),
    #[error("replication message of term {got} is older than term {seen} already seen")]
    StaleTerm { got: i64, seen: i64 },
    #[error("replication message without a body (message {0})")]
    Empty(u64),
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> ReplicationError {
    ReplicationError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// The live state a standby needs to take over, keyed for replacement of whole records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicatedState {
    pub config_generation: i64,
    /// By (extension, contact URI).
    pub registrations: BTreeMap<(String, String), Registration>,
    /// By seat name.
    pub agents: BTreeMap<String, AgentRecord>,
    /// By call id (the caller leg's Call-ID).
    pub calls: BTreeMap<String, CallRecord>,
    /// The key of the center's digest nonces, when the active shares it.
    pub nonce_key: Option<NonceKey>,
}

impl ReplicatedState {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            config_generation: self.config_generation,
            registrations: self.registrations.values().cloned().collect(),
            agents: self.agents.values().cloned().collect(),
            calls: self.calls.values().cloned().collect(),
            nonce_key: self.nonce_key.map(|k| k.0.to_vec()).unwrap_or_default(),
        }
    }

    /// The state a snapshot describes, or why it cannot be used (nothing is half-built).
    fn from_snapshot(snapshot: &Snapshot) -> Result<Self, ReplicationError> {
        let nonce_key = match snapshot.nonce_key.as_slice() {
            [] => None,
            bytes => Some(NonceKey::from_slice(bytes).ok_or_else(|| {
                invalid(
                    "snapshot",
                    format!("nonce key of {} bytes, not 64", bytes.len()),
                )
            })?),
        };
        let mut state = Self {
            config_generation: snapshot.config_generation,
            nonce_key,
            ..Self::default()
        };
        for r in &snapshot.registrations {
            check_registration(r)?;
            let key = (r.extension.clone(), r.contact_uri.clone());
            if state.registrations.insert(key, r.clone()).is_some() {
                return Err(invalid(
                    "snapshot",
                    format!("registration {}/{} twice", r.extension, r.contact_uri),
                ));
            }
        }
        for a in &snapshot.agents {
            check_agent(a)?;
            if state.agents.insert(a.seat.clone(), a.clone()).is_some() {
                return Err(invalid("snapshot", format!("agent {} twice", a.seat)));
            }
        }
        for c in &snapshot.calls {
            check_call(c)?;
            if state.calls.insert(c.id.clone(), c.clone()).is_some() {
                return Err(invalid("snapshot", format!("call {} twice", c.id)));
            }
        }
        Ok(state)
    }

    /// Applies one change after checking it whole. Removing what is not there is no error:
    /// the follower's state is a set of records, and the removal's intent holds.
    fn apply(&mut self, change: &delta::Change) -> Result<(), ReplicationError> {
        match change {
            delta::Change::Registration(r) => {
                check_registration(r)?;
                self.registrations
                    .insert((r.extension.clone(), r.contact_uri.clone()), r.clone());
            }
            delta::Change::RegistrationRemoved(k) => {
                self.registrations
                    .remove(&(k.extension.clone(), k.contact_uri.clone()));
            }
            delta::Change::Agent(a) => {
                check_agent(a)?;
                self.agents.insert(a.seat.clone(), a.clone());
            }
            delta::Change::Call(c) => {
                check_call(c)?;
                self.calls.insert(c.id.clone(), c.clone());
            }
            delta::Change::CallEnded(id) => {
                self.calls.remove(id);
            }
        }
        Ok(())
    }

    /// Whether `change` would leave the state as it is (the journal sends no such delta).
    fn unchanged_by(&self, change: &delta::Change) -> bool {
        match change {
            delta::Change::Registration(r) => {
                self.registrations
                    .get(&(r.extension.clone(), r.contact_uri.clone()))
                    == Some(r)
            }
            delta::Change::RegistrationRemoved(k) => !self
                .registrations
                .contains_key(&(k.extension.clone(), k.contact_uri.clone())),
            delta::Change::Agent(a) => self.agents.get(&a.seat) == Some(a),
            delta::Change::Call(c) => self.calls.get(&c.id) == Some(c),
            delta::Change::CallEnded(id) => !self.calls.contains_key(id),
        }
    }
}

fn socket_addr(what: &str, text: &str) -> Result<SocketAddr, ReplicationError> {
    text.parse()
        .map_err(|_| invalid(what, format!("{text:?} is not an ip:port address")))
}

fn check_registration(r: &Registration) -> Result<(), ReplicationError> {
    let what = format!("registration of {:?}", r.extension);
    if r.extension.is_empty() || r.contact_uri.is_empty() {
        return Err(invalid(what, "extension and contact are required"));
    }
    socket_addr(&what, &r.source)?;
    if Transport::try_from(r.transport).unwrap_or_default() == Transport::Unspecified {
        return Err(invalid(what, "no transport"));
    }
    Ok(())
}

fn check_agent(a: &AgentRecord) -> Result<(), ReplicationError> {
    if a.seat.is_empty() {
        return Err(invalid("agent record", "no seat"));
    }
    if AgentState::try_from(a.state).unwrap_or_default() == AgentState::Unspecified {
        return Err(invalid(format!("agent {:?}", a.seat), "no state"));
    }
    Ok(())
}

fn check_dialog(what: &str, d: &Dialog) -> Result<(), ReplicationError> {
    if d.call_id.is_empty() || d.local.is_empty() || d.remote.is_empty() {
        return Err(invalid(what, "Call-ID, local and remote are required"));
    }
    if d.remote_target.is_empty() {
        return Err(invalid(what, "no remote target"));
    }
    socket_addr(what, &d.destination)?;
    if Transport::try_from(d.transport).unwrap_or_default() == Transport::Unspecified {
        return Err(invalid(what, "no transport"));
    }
    Ok(())
}

fn check_media(what: &str, m: &Media) -> Result<(), ReplicationError> {
    socket_addr(what, &m.remote_rtp)?;
    if !matches!(m.codec.as_str(), "PCMU" | "PCMA") {
        return Err(invalid(what, format!("codec {:?}", m.codec)));
    }
    if m.payload_type > 127 || m.telephone_event > 127 {
        return Err(invalid(what, "payload type above 127"));
    }
    Ok(())
}

fn check_call(c: &CallRecord) -> Result<(), ReplicationError> {
    if c.id.is_empty() {
        return Err(invalid("call record", "no id"));
    }
    let what = |part: &str| format!("call {:?} {part}", c.id);
    let caller = c
        .caller
        .as_ref()
        .ok_or_else(|| invalid(what(""), "no caller dialog"))?;
    check_dialog(&what("caller dialog"), caller)?;
    let media = c
        .caller_media
        .as_ref()
        .ok_or_else(|| invalid(what(""), "no caller media"))?;
    check_media(&what("caller media"), media)?;
    match (&c.callee, &c.callee_media, &c.queued) {
        (Some(d), Some(m), None) => {
            check_dialog(&what("callee dialog"), d)?;
            check_media(&what("callee media"), m)?;
        }
        (None, None, Some(q)) => {
            if q.queue.is_empty() {
                return Err(invalid(what("queue place"), "no queue"));
            }
        }
        _ => {
            return Err(invalid(
                what(""),
                "must be either established (callee dialog and media) or queued",
            ));
        }
    }
    Ok(())
}

/// The active's side: the state as replicated so far. The node's parts report every change
/// with [`Journal::record`]; each connected standby has a [`FollowerStream`] that opens with
/// [`Journal::snapshot`] and then carries the deltas `record` returns.
#[derive(Debug, Default)]
pub struct Journal {
    state: ReplicatedState,
}

impl Journal {
    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }

    pub fn set_config_generation(&mut self, generation: i64) {
        self.state.config_generation = generation;
    }

    /// The nonce key the node issues with, for the next snapshots.
    pub fn set_nonce_key(&mut self, key: NonceKey) {
        self.state.nonce_key = Some(key);
    }

    /// Takes a change into the journal; returns the delta to send the followers, or `None`
    /// when it changes nothing. A change the journal's own check refuses is a bug of the
    /// reporting part: it is returned as the error and not replicated (a follower would
    /// refuse it anyway).
    pub fn record(&mut self, change: delta::Change) -> Result<Option<Delta>, ReplicationError> {
        if self.state.unchanged_by(&change) {
            return Ok(None);
        }
        self.state.apply(&change)?;
        Ok(Some(Delta {
            change: Some(change),
        }))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.snapshot()
    }
}

/// One standby's stream on the active: numbers the messages and stamps the term and time.
/// (The journal and the deltas after its snapshot come from [`ReplicationHub::open`].)
#[derive(Debug)]
pub struct FollowerStream {
    term: i64,
    sent: u64,
}

impl FollowerStream {
    /// Opens a stream of `term` with a snapshot of the journal (sequence 1).
    pub fn open(snapshot: Snapshot, term: i64, now_unix_ms: i64) -> (Self, ReplicationMessage) {
        let mut stream = Self { term, sent: 0 };
        let first = stream.message(replication_message::Body::Snapshot(snapshot), now_unix_ms);
        (stream, first)
    }

    pub fn delta(&mut self, delta: Delta, now_unix_ms: i64) -> ReplicationMessage {
        self.message(replication_message::Body::Delta(delta), now_unix_ms)
    }

    pub fn heartbeat(&mut self, now_unix_ms: i64) -> ReplicationMessage {
        self.message(
            replication_message::Body::Heartbeat(Heartbeat {}),
            now_unix_ms,
        )
    }

    pub fn handed_over(&mut self, now_unix_ms: i64) -> ReplicationMessage {
        self.message(
            replication_message::Body::HandedOver(HandedOver {}),
            now_unix_ms,
        )
    }

    fn message(&mut self, body: replication_message::Body, now_unix_ms: i64) -> ReplicationMessage {
        self.sent += 1;
        ReplicationMessage {
            sequence: self.sent,
            term: self.term,
            sent_at_unix_ms: now_unix_ms,
            body: Some(body),
        }
    }
}

/// What a follower's state is good for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// In sync with a live stream: able to take over.
    Ready,
    /// Not able to take over, with the reason `StandbyReady=False` reports.
    NotReady {
        reason: &'static str,
        detail: String,
    },
}

/// The standby's side: the state of the active as last received in good order.
#[derive(Debug, Default)]
pub struct Follower {
    /// `None` until the first snapshot.
    state: Option<ReplicatedState>,
    /// The term of `state`.
    state_term: i64,
    /// The highest term any accepted message carried.
    seen_term: i64,
    /// The sequence the next message must have; 1 expects a snapshot.
    next_sequence: u64,
    /// Sender time of the last accepted message.
    last_sent_at_unix_ms: Option<i64>,
    /// Why the stream was last given up, until a fresh snapshot arrives.
    broken: Option<String>,
}

impl Follower {
    pub fn new() -> Self {
        Self {
            next_sequence: 1,
            ..Self::default()
        }
    }

    /// A new stream is about to begin (the standby (re)connected): the next message must
    /// be a snapshot. The state received so far stays until that snapshot replaces it.
    pub fn resync(&mut self, why: impl Into<String>) {
        self.next_sequence = 1;
        self.broken = Some(why.into());
    }

    /// Decodes and applies one message as it came off the wire.
    pub fn receive_bytes(&mut self, bytes: &[u8]) -> Result<(), ReplicationError> {
        let message = ReplicationMessage::decode(bytes)
            .map_err(|e| ReplicationError::Undecodable(e.to_string()))?;
        self.receive(&message)
    }

    /// Applies one message, or refuses it whole (then call [`Follower::resync`] and
    /// reconnect).
    pub fn receive(&mut self, message: &ReplicationMessage) -> Result<(), ReplicationError> {
        if message.term < self.seen_term {
            return Err(ReplicationError::StaleTerm {
                got: message.term,
                seen: self.seen_term,
            });
        }
        if message.sequence != self.next_sequence {
            return Err(ReplicationError::OutOfOrder {
                expected: self.next_sequence,
                got: message.sequence,
            });
        }
        let body = message
            .body
            .as_ref()
            .ok_or(ReplicationError::Empty(message.sequence))?;
        match body {
            replication_message::Body::Snapshot(snapshot) => {
                if message.sequence != 1 {
                    return Err(invalid(
                        "replication stream",
                        format!("snapshot as message {}", message.sequence),
                    ));
                }
                self.state = Some(ReplicatedState::from_snapshot(snapshot)?);
                self.state_term = message.term;
                self.broken = None;
            }
            _ if message.sequence == 1 => {
                return Err(ReplicationError::NoSnapshot(message.sequence));
            }
            replication_message::Body::Delta(delta) => {
                let change = delta
                    .change
                    .as_ref()
                    .ok_or(ReplicationError::Empty(message.sequence))?;
                if message.term != self.state_term {
                    // One stream is one term: a new term starts with a new stream.
                    return Err(invalid(
                        "replication stream",
                        format!(
                            "term {} inside a stream of term {}",
                            message.term, self.state_term
                        ),
                    ));
                }
                let Some(state) = self.state.as_mut() else {
                    return Err(ReplicationError::NoSnapshot(message.sequence));
                };
                state.apply(change)?;
            }
            replication_message::Body::Heartbeat(_) | replication_message::Body::HandedOver(_) => {}
        }
        self.seen_term = message.term;
        self.next_sequence += 1;
        self.last_sent_at_unix_ms = Some(message.sent_at_unix_ms);
        Ok(())
    }

    /// How far behind the active the state is: now minus the sender time of the last
    /// accepted message (heartbeats keep it small while nothing changes). `None` before
    /// the first message.
    pub fn lag(&self, now_unix_ms: i64) -> Option<Duration> {
        let sent = self.last_sent_at_unix_ms?;
        let ms = u64::try_from(now_unix_ms.saturating_sub(sent)).unwrap_or(0);
        Some(Duration::from_millis(ms))
    }

    /// Whether the standby could take over now, and if not why.
    pub fn readiness(&self, now_unix_ms: i64, max_lag: Duration) -> Readiness {
        if let Some(why) = &self.broken {
            return Readiness::NotReady {
                reason: "ReplicationLost",
                detail: why.clone(),
            };
        }
        if self.state.is_none() {
            return Readiness::NotReady {
                reason: "NoReplication",
                detail: "no snapshot from the active yet".to_string(),
            };
        }
        match self.lag(now_unix_ms) {
            Some(lag) if lag > max_lag => Readiness::NotReady {
                reason: "ReplicationLagging",
                detail: format!("{} ms behind the active", lag.as_millis()),
            },
            _ => Readiness::Ready,
        }
    }

    /// The state to take over with, for a standby that now holds the Lease at `term`: only
    /// state of the term just before (the active it replaces); `None` for older state, which
    /// a term in between may have changed, or when nothing was received.
    pub fn takeover(&self, term: i64) -> Option<&ReplicatedState> {
        let state = self.state.as_ref()?;
        (self.state_term.checked_add(1) == Some(term)).then_some(state)
    }

    pub fn state(&self) -> Option<&ReplicatedState> {
        self.state.as_ref()
    }
}

/// Convenience for the parts that report removals.
pub fn registration_removed(extension: &str, contact_uri: &str) -> delta::Change {
    delta::Change::RegistrationRemoved(RegistrationKey {
        extension: extension.to_string(),
        contact_uri: contact_uri.to_string(),
    })
}
