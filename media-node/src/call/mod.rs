//! The B2BUA: every call is two SIP dialogs (the caller's leg, where the node is the UAS, and
//! the callee's leg, where it is the UAC) joined by an RTP relay anchored at the node.
//!
//! [`CallEngine`] owns the table of live calls (Call-ID → call task) and sets calls up; each
//! call then runs as one tokio task ([`session`]) that owns both legs' transactions, timers
//! and media, so no lock is held across a call's state changes. Seat-to-seat calls, inbound
//! trunk calls (by entry point or extension) and outbound calls through a trunk are served
//! ([`routing`], [`trunks`]); so are the calls the node answers itself (IVR menus, queues,
//! voicemail, feature codes) once the call-center runtime is attached
//! ([`CallEngine::attach_center`]): their callee leg is the agent the ACD offers them to.

pub mod relay;
pub mod routing;
mod session;
pub mod trunks;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use switchboard_crds::callcenter::{Codec, EntryPoint, FeatureCodes, TrunkSpec};
use switchboard_proto::node_config::TrunkSecret;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::center::CallCenterRuntime;
use crate::media::ports::PortAllocator;
use crate::media::prompts::PromptStore;
use crate::recording::RecordingError;
use crate::recording::cdr::{CallDetailRecord, CallDirection, CallOutcome, CdrWriter};
use crate::recording::sidecar::HangupSide;
use crate::replication::ReplicationHub;
use crate::sip::Transport;
use crate::sip::message::reason_phrase;
use crate::sip::message::{SipRequest, SipResponse};
use crate::sip::registrar::{Binding, Registrar};

pub use relay::{Leg, RelayStats};
pub use session::{CallSetup, CallTarget, CenterSetup, SetupError};
pub use trunks::{TrunkSettings, Trunks};

/// Most calls (both legs) handled at once; beyond it new INVITEs get 503.
pub const MAX_CALLS: usize = 10_000;
/// Call-IDs the call table holds at most: the legs of up calls and of ended calls lingering
/// for Timer D (32 s over UDP). Room for 40,000 calls: 1,000 one-second calls a second.
pub const MAX_CALL_IDS: usize = MAX_CALLS * 8;
/// Queue depth of one call task: signalling is a handful of messages per call.
const CALL_QUEUE: usize = 64;
/// Queue depth of the outbound SIP sender.
pub const OUTBOUND_QUEUE: usize = 8192;

/// What the B2BUA needs from the call center. Calls are off until `ports` is set.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// The RTP/RTCP port range (`spec.rtp`). `None` turns calls off: INVITE gets 501.
    pub ports: Option<PortAllocator>,
    /// G.711 laws in preference order (`spec.codecs`).
    pub codecs: Vec<Codec>,
    /// The address put in Via, Contact and SDP (`spec.sip.advertisedAddress`). Default: the
    /// SIP UDP listener's address, or 127.0.0.1 when that is a wildcard.
    pub advertised_address: Option<IpAddr>,
    /// Where RTP sockets are bound. Default: the advertised address.
    pub media_bind: Option<IpAddr>,
    /// With a directory, every bridged call is recorded there (stereo WAV + JSON sidecar).
    pub recording_dir: Option<PathBuf>,
    /// CDR file (JSON lines). Default: `cdr.jsonl` in `recording_dir`; none without either.
    pub cdr_path: Option<PathBuf>,
    /// This node's name in recordings and CDRs (the pod name).
    pub node_name: String,
    /// How long a seat may ring before the caller gets 480 (ring-no-answer).
    pub ring_timeout: Duration,
    /// The trunks (`spec.trunks`) and where their credentials are.
    pub trunks: TrunkSettings,
    /// `spec.entryPoints`: dialed numbers that enter the center.
    pub entry_points: Vec<EntryPoint>,
    /// Seat name → extension, for entry points that route to a seat.
    pub seat_extensions: BTreeMap<String, String>,
    /// `spec.featureCodes`: what seats dial to change their agent state.
    pub feature_codes: FeatureCodes,
    /// Where IVR prompts, music on hold and announcements are read from. `None`: calls the
    /// node answers itself hear silence where a prompt would play (logged).
    pub prompts_dir: Option<PathBuf>,
    /// Where voicemail messages are written (`<dir>/<mailbox>/`). `None`: no voicemail;
    /// callers routed there hear the unavailable message.
    pub voicemail_dir: Option<PathBuf>,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            ports: None,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            advertised_address: None,
            media_bind: None,
            recording_dir: None,
            cdr_path: None,
            node_name: "media-node".into(),
            ring_timeout: Duration::from_secs(60),
            trunks: TrunkSettings::default(),
            entry_points: Vec::new(),
            seat_extensions: BTreeMap::new(),
            feature_codes: FeatureCodes::default(),
            prompts_dir: None,
            voicemail_dir: None,
        }
    }
}

/// A message the node sends on its own (requests and responses of the B2BUA legs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub bytes: Vec<u8>,
    pub destination: SocketAddr,
    pub transport: Transport,
    /// Over TCP with no open connection to `destination`: open one (requests to a trunk).
    /// Phones are never connected to: they connect to the node.
    pub connect: bool,
}

/// Where the transport listens, and the queue its sender task reads.
#[derive(Debug, Clone)]
pub struct OutboundLink {
    pub sender: mpsc::Sender<Outbound>,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

/// Why the B2BUA could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CallSetupError {
    #[error("cannot open the CDR file: {0}")]
    Cdr(#[from] RecordingError),
    #[error("cannot create the recording directory {path}: {source}")]
    RecordingDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no codecs configured for calls")]
    NoCodecs,
}

/// Node-wide call counters (also exported as Prometheus metrics by the SIP layer).
#[derive(Debug, Default)]
pub struct CallCounters {
    pub started: AtomicU64,
    pub ended: AtomicU64,
}

#[derive(Clone)]
struct CallRef {
    sender: mpsc::Sender<session::CallEvent>,
    leg: Leg,
}

/// The live calls and what every call shares.
pub struct CallEngine {
    settings: CallSettings,
    ports: PortAllocator,
    realm: String,
    calls: Mutex<HashMap<String, CallRef>>,
    link: OnceLock<OutboundLink>,
    cdr: Option<CdrWriter>,
    relay_stats: Arc<RelayStats>,
    counters: CallCounters,
    metrics: Option<crate::sip::SipMetrics>,
    /// Swapped whole by [`CallEngine::reconfigure`]; a call routes on the snapshot it read.
    routing: RwLock<Arc<Routing>>,
    /// The ACD, IVR and statistics; without it center routes are refused with 480.
    center: OnceLock<Arc<CallCenterRuntime>>,
    /// The seats' registrations, to find the phone an offer rings.
    registrar: OnceLock<Arc<Mutex<Registrar>>>,
    /// The SIP server's serving switch (off on a standby or a fenced node).
    serving: OnceLock<Arc<std::sync::atomic::AtomicBool>>,
    prompts: Option<PromptStore>,
    /// Where established and queued calls are reported for the standby; none: not replicated.
    replication: OnceLock<Arc<ReplicationHub>>,
}

/// What decides where a call goes, and what a node takes from a new config without
/// restarting: entry points, the seats' extensions, the trunks.
#[derive(Debug)]
pub struct Routing {
    pub entry_points: Vec<EntryPoint>,
    /// Seat name → extension, for entry points that route to a seat.
    pub seat_extensions: BTreeMap<String, String>,
    pub trunks: Trunks,
    pub feature_codes: FeatureCodes,
}

impl Routing {
    /// The dial plan the routing core decides over.
    pub fn dial_plan(&self) -> routing::DialPlan<'_> {
        routing::DialPlan {
            entry_points: &self.entry_points,
            seat_extensions: &self.seat_extensions,
            trunks: &self.trunks,
            feature_codes: &self.feature_codes,
        }
    }
}

/// A call refused before it rang anyone, for its CDR line.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub call_id: &'a str,
    pub caller: &'a str,
    pub dialed: &'a str,
    pub status: u16,
    pub direction: CallDirection,
    pub trunk: Option<&'a str>,
    pub outcome: CallOutcome,
}

impl CallEngine {
    /// Sets up the B2BUA; `None` when `settings.ports` is unset (calls off).
    pub fn new(
        settings: CallSettings,
        realm: String,
        metrics: Option<crate::sip::SipMetrics>,
    ) -> Result<Option<Arc<Self>>, CallSetupError> {
        let Some(ports) = settings.ports.clone() else {
            return Ok(None);
        };
        if settings.codecs.is_empty() {
            return Err(CallSetupError::NoCodecs);
        }
        if let Some(dir) = &settings.recording_dir {
            std::fs::create_dir_all(dir).map_err(|source| CallSetupError::RecordingDir {
                path: dir.clone(),
                source,
            })?;
        }
        let cdr_path = settings
            .cdr_path
            .clone()
            .or_else(|| settings.recording_dir.as_ref().map(|d| d.join("cdr.jsonl")));
        let cdr = cdr_path.map(|p| CdrWriter::open(&p)).transpose()?;
        if let Some(dir) = &settings.voicemail_dir {
            std::fs::create_dir_all(dir).map_err(|source| CallSetupError::RecordingDir {
                path: dir.clone(),
                source,
            })?;
        }
        let routing = Routing {
            entry_points: settings.entry_points.clone(),
            seat_extensions: settings.seat_extensions.clone(),
            trunks: Trunks::new(&settings.trunks, metrics.as_ref().map(|m| m.trunks.clone())),
            feature_codes: settings.feature_codes.clone(),
        };
        let prompts = settings.prompts_dir.clone().map(PromptStore::new);
        if let Some(m) = &metrics {
            ports.observe(m.rtp_port_pairs_in_use.clone());
        }
        Ok(Some(Arc::new(Self {
            settings,
            ports,
            realm,
            calls: Mutex::new(HashMap::new()),
            link: OnceLock::new(),
            cdr,
            relay_stats: Arc::new(RelayStats::default()),
            counters: CallCounters::default(),
            metrics,
            routing: RwLock::new(Arc::new(routing)),
            center: OnceLock::new(),
            registrar: OnceLock::new(),
            serving: OnceLock::new(),
            prompts,
            replication: OnceLock::new(),
        })))
    }

    /// Shares the SIP server's sending switch: while it is off, the calls send no request.
    pub(crate) fn share_serving(&self, serving: Arc<std::sync::atomic::AtomicBool>) {
        let _ = self.serving.set(serving);
    }

    /// Connects the call-center runtime: from now on IVR, queue, voicemail and feature-code
    /// routes are answered (once; later calls are ignored).
    pub fn attach_center(&self, center: Arc<CallCenterRuntime>) {
        let _ = self.center.set(center);
    }

    /// The call-center runtime, when attached.
    pub fn center(&self) -> Option<&Arc<CallCenterRuntime>> {
        self.center.get()
    }

    /// Reports established and queued calls to `hub` from now on (once; later calls are
    /// ignored). Calls already up are reported at their next change.
    pub fn attach_replication(&self, hub: Arc<ReplicationHub>) {
        let _ = self.replication.set(hub);
    }

    /// The replication hub, when attached.
    pub fn replication(&self) -> Option<&Arc<ReplicationHub>> {
        self.replication.get()
    }

    /// Connects the registrar whose bindings offers ring (set by the SIP server).
    pub(crate) fn attach_registrar(&self, registrar: Arc<Mutex<Registrar>>) {
        let _ = self.registrar.set(registrar);
    }

    /// Where voicemail messages are kept, when voicemail is on.
    pub fn voicemail_dir(&self) -> Option<&std::path::Path> {
        self.settings.voicemail_dir.as_deref()
    }

    /// Where the CDR file is, when CDRs are written.
    pub fn cdr_path(&self) -> Option<&std::path::Path> {
        self.cdr.as_ref().map(|c| c.path())
    }

    /// The prompt store, when prompts are configured.
    pub fn prompts(&self) -> Option<&PromptStore> {
        self.prompts.as_ref()
    }

    /// Loads every prompt in `used` ahead of the first call that plays it, and exports how
    /// many cannot be read (`switchboard_prompts_missing`); returns that count.
    pub fn check_prompts(&self, used: impl IntoIterator<Item = String>) -> usize {
        let Some(store) = &self.prompts else {
            return 0;
        };
        let mut missing = 0;
        for path in used {
            if let Err(error) = store.get(&path) {
                missing += 1;
                warn!(%error, "prompt unavailable; callers hear silence where it should play");
            }
        }
        if let Some(m) = &self.metrics {
            m.prompts_missing
                .set(i64::try_from(missing).unwrap_or(i64::MAX));
        }
        info!(
            dir = %store.base().display(),
            loaded = store.cached(),
            missing,
            "prompts checked"
        );
        missing
    }

    /// The phone an offer to `extension` rings: its most recently refreshed live contact.
    fn seat_contact(&self, extension: &str) -> Option<Binding> {
        let registrar = self.registrar.get()?;
        registrar
            .lock()
            .bindings(extension, std::time::Instant::now())
            .into_iter()
            .max_by_key(|b| b.refreshed_at)
    }

    /// Connects the engine to the transport's sender (once; later calls are ignored).
    pub fn attach(&self, link: OutboundLink) {
        let _ = self.link.set(link);
    }

    /// The RTP port allocator (tests check it is back to zero after every call).
    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    /// Packets relayed over all calls so far.
    pub fn relay_stats(&self) -> &RelayStats {
        &self.relay_stats
    }

    /// What a new call's relay shares with the node's other calls.
    pub(crate) fn node_media(&self) -> relay::NodeMedia {
        relay::NodeMedia {
            stats: Arc::clone(&self.relay_stats),
            serving: self.serving.get().cloned(),
        }
    }

    pub fn counters(&self) -> &CallCounters {
        &self.counters
    }

    /// The routing in force now (entry points, extensions, trunks and their channels).
    pub fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read())
    }

    /// Takes a new config's routing; calls already set up keep theirs, and trunks that keep
    /// their name keep their busy channels (see [`Trunks::reconfigured`]).
    pub fn reconfigure(
        &self,
        entry_points: Vec<EntryPoint>,
        seat_extensions: BTreeMap<String, String>,
        feature_codes: FeatureCodes,
        trunks: &[TrunkSpec],
        trunk_secrets: &[TrunkSecret],
    ) {
        let mut routing = self.routing.write();
        let next = Routing {
            entry_points,
            seat_extensions,
            trunks: routing.trunks.reconfigured(trunks, trunk_secrets),
            feature_codes,
        };
        *routing = Arc::new(next);
    }

    /// Calls with a live task (including those finishing their transaction timers).
    pub fn live_calls(&self) -> usize {
        self.calls
            .lock()
            .values()
            .filter(|c| c.leg == Leg::Caller)
            .count()
    }

    /// Whether a Call-ID belongs to a live call.
    pub fn knows(&self, call_id: &str) -> bool {
        self.calls.lock().contains_key(call_id)
    }

    /// Hands an in-dialog request (or a retransmitted INVITE, or an ACK) to its call. `false`
    /// when no call has this Call-ID.
    pub fn deliver_request(
        &self,
        request: &SipRequest,
        source: SocketAddr,
        transport: Transport,
    ) -> bool {
        let Some(call_id) = request.header("Call-ID") else {
            return false;
        };
        let Some(call) = self.calls.lock().get(call_id).cloned() else {
            return false;
        };
        self.send_event(
            &call,
            session::CallEvent::Request {
                request: request.clone(),
                source,
                transport,
                leg: call.leg,
            },
        );
        true
    }

    /// Hands a response to the call whose leg sent the request. `false` when none matches.
    pub fn deliver_response(&self, response: SipResponse) -> bool {
        let Some(call_id) = response.header("Call-ID").map(str::to_string) else {
            return false;
        };
        let Some(call) = self.calls.lock().get(&call_id).cloned() else {
            return false;
        };
        let leg = call.leg;
        self.send_event(&call, session::CallEvent::Response { response, leg });
        true
    }

    fn send_event(&self, call: &CallRef, event: session::CallEvent) {
        if call.sender.try_send(event).is_err() {
            // A call task that cannot keep up with its own signalling is stuck or gone;
            // the message is dropped like a lost datagram (the peer retransmits).
            warn!("call task queue full or closed; SIP message dropped");
        }
    }

    fn register(&self, call_ids: [(&str, Leg); 2], sender: &mpsc::Sender<session::CallEvent>) {
        let mut calls = self.calls.lock();
        for (id, leg) in call_ids {
            calls.insert(
                id.to_string(),
                CallRef {
                    sender: sender.clone(),
                    leg,
                },
            );
        }
    }

    /// Adds one more Call-ID to a call (an agent leg offered by the ACD).
    fn register_leg(&self, call_id: &str, leg: Leg, sender: &mpsc::Sender<session::CallEvent>) {
        self.calls.lock().insert(
            call_id.to_string(),
            CallRef {
                sender: sender.clone(),
                leg,
            },
        );
    }

    fn unregister<'a>(&self, call_ids: impl IntoIterator<Item = &'a str>) {
        let mut calls = self.calls.lock();
        for id in call_ids {
            calls.remove(id);
        }
        debug!(live = calls.len() / 2, "call finished");
    }

    /// Writes the CDR of a call refused before it rang anyone (routing or setup failure, a
    /// trunk at its channel limit), so every offered call has its line.
    pub fn record_refused(&self, refused: Refused<'_>) {
        if let Some(m) = &self.metrics {
            m.calls
                .with_label_values(&[session::outcome_label(refused.outcome)])
                .inc();
        }
        let Some(cdr) = &self.cdr else {
            return;
        };
        let now = chrono::Utc::now();
        let record = CallDetailRecord {
            call_id: refused.call_id.to_string(),
            from: refused.caller.to_string(),
            to: refused.dialed.to_string(),
            direction: refused.direction,
            trunk: refused.trunk.map(str::to_string),
            seat: None,
            queue: None,
            offered_at: now,
            answered_at: None,
            ended_at: now,
            outcome: refused.outcome,
            hangup_cause: Some(format!(
                "{} {}",
                refused.status,
                reason_phrase(refused.status)
            )),
            hangup_side: Some(HangupSide::Node),
            recording: None,
            node: self.settings.node_name.clone(),
            wait_seconds: None,
            survey_score: None,
            voicemail: None,
            ivr_path: Vec::new(),
        };
        // A failed append is counted and logged by the CDR writer.
        let _ = cdr.append(&record);
    }

    /// Calls up now (answered or not), for a drain to wait on.
    pub fn calls_up(&self) -> u64 {
        self.counters
            .started()
            .saturating_sub(self.counters.ended())
    }

    /// Whether a new call must be refused: `MAX_CALLS` calls are up, or the call table (two
    /// Call-IDs per call, kept for Timer D after a call ends to absorb retransmissions) is
    /// full. Ended calls count only against the second bound, so a short-call burst is not
    /// refused for calls that are already over.
    fn at_capacity(&self) -> bool {
        let up = self
            .counters
            .started()
            .saturating_sub(self.counters.ended());
        up >= MAX_CALLS as u64 || self.calls.lock().len() >= MAX_CALL_IDS
    }

    fn send(&self, out: Outbound) {
        if !out.bytes.starts_with(b"SIP/2.0 ")
            && self
                .serving
                .get()
                .is_some_and(|s| !s.load(std::sync::atomic::Ordering::Relaxed))
        {
            // Fenced: another node may hold the Lease and serve these dialogs now; a request
            // from here would contradict it.
            debug!("not the active node: in-dialog request not sent");
            if let Some(m) = &self.metrics {
                m.dropped.with_label_values(&["not_active"]).inc();
            }
            return;
        }
        let Some(link) = self.link.get() else {
            warn!("no SIP transport attached; message not sent");
            return;
        };
        if link.sender.try_send(out).is_err() {
            warn!("outbound SIP queue full; message dropped (the retransmission timer retries)");
            if let Some(m) = &self.metrics {
                m.dropped.with_label_values(&["outbound_queue_full"]).inc();
            }
        }
    }

    /// The address and port peers reach this node's SIP on, for Via and Contact.
    fn sip_address(&self, transport: Transport) -> SocketAddr {
        let listener = self.link.get().map(|l| match transport {
            Transport::Udp => l.udp,
            Transport::Tcp => l.tcp,
        });
        let port = listener.map_or(5060, |l| l.port());
        SocketAddr::new(self.advertised_ip(), port)
    }

    fn advertised_ip(&self) -> IpAddr {
        if let Some(ip) = self.settings.advertised_address {
            return ip;
        }
        match self.link.get().map(|l| l.udp.ip()) {
            Some(ip) if !ip.is_unspecified() => ip,
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    fn media_bind(&self) -> IpAddr {
        self.settings
            .media_bind
            .unwrap_or_else(|| self.advertised_ip())
    }
}

impl CallCounters {
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ports::PortAllocator;

    #[test]
    fn calls_that_ended_do_not_count_against_the_call_limit() {
        let engine = CallEngine::new(
            CallSettings {
                ports: Some(PortAllocator::new(40_000, 40_099).expect("a range")),
                ..CallSettings::default()
            },
            "localhost".into(),
            None,
        )
        .expect("settings are valid")
        .expect("calls are on");
        let max = MAX_CALLS as u64;
        engine.counters.started.store(max, Ordering::Relaxed);
        assert!(engine.at_capacity(), "{MAX_CALLS} calls up");
        // A burst of short calls: most of them over, their Call-IDs lingering for Timer D.
        engine.counters.started.store(max * 3, Ordering::Relaxed);
        engine.counters.ended.store(max * 3 - 10, Ordering::Relaxed);
        assert!(!engine.at_capacity(), "10 calls up");
    }
}
