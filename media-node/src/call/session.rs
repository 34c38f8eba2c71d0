//! One call: the caller's leg (node = UAS) and the callee's leg (node = UAC), their RFC 3261
//! transactions and timers, and the media relay. The task owns all of it; messages reach it
//! through its queue and timers are deadlines it sleeps on.
//!
//! Transactions handled here: the INVITE server transaction towards the caller (100 Trying at
//! once, provisional responses relayed, the final response retransmitted with Timer G until
//! ACK, given up after Timer H; retransmitted INVITEs answered with the latest response), the
//! INVITE client transaction towards the callee (Timer A retransmission, Timer B timeout, ACK
//! for non-2xx in the transaction and for 2xx end-to-end, re-sent on retransmitted finals,
//! Timer D), and non-INVITE client transactions (BYE, CANCEL) with Timers E and F. Over TCP
//! nothing is retransmitted but the timeouts still apply. BYE and CANCEL received are answered
//! by the SIP server (with its Timer J cache) before they reach the call.
//!
//! Late offer (RFC 3261 §13.2.1): an INVITE without SDP gets the node's offer to the callee
//! (every configured codec); the caller's 200 then carries an offer for its leg (the callee's
//! codec first) and the caller's answer is taken from its ACK. An ACK without a usable answer
//! hangs both legs up (CDR outcome failed).
//!
//! re-INVITE (RFC 3261 §14, RFC 3264 §8.4): a re-INVITE with an offer on either leg is passed
//! across. The node answers 100 Trying, re-INVITEs the other leg (its own client transaction:
//! next CSeq, route set, Timer A/B over UDP, the deadline only over TCP) offering the node's
//! address for that leg, the codec already agreed there, a new o= version and the direction
//! of the original offer (an old-style `c=0.0.0.0` hold becomes sendonly); on the other leg's
//! 2xx it ACKs, updates that leg's media peer and answers the original re-INVITE 200 with the
//! mirrored direction (retransmitted with Timer G until ACK, Timer H). A refusal or a timeout
//! on the other leg is answered with a mapped failure and the media stays as it was. A
//! re-INVITE while another is in progress on the call (either leg, either direction, until
//! its ACK) gets 491 (§14.2). A re-INVITE without SDP is answered by the node alone: 200 with
//! its current offer for the leg, the answer read from the ACK. [`CallSession::send_reinvite`]
//! is the client side the node can also use on its own (re-pointing media at another node).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use switchboard_crds::callcenter::Codec;
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tracing::{debug, info, warn};

mod center;
mod replicate;
mod takeover;

pub use center::CenterSetup;

use super::relay::{Leg, LegPeer, MediaError, MediaLeg, MediaSession, RelayMetrics, RelayStats};
use super::trunks::{ChannelGuard, Trunk};
use super::{CALL_QUEUE, CallEngine, Outbound};
use crate::recording::cdr::{CallDetailRecord, CallDirection, CallOutcome};
use crate::recording::sidecar::{HangupSide, RecordingSegment, RecordingSidecar, sidecar_path};
use crate::recording::wav_writer::{CallRecorder, RecorderOptions};
use crate::sdp::{
    Direction, LocalMedia, NegotiatedAudio, NegotiationError, SdpError, SessionDescription,
    answer_offer, build_offer, build_offer_with, read_answer,
};
use crate::sip::Transport;
use crate::sip::digest::answer_challenge;
use crate::sip::message::{
    BRANCH_MAGIC_COOKIE, NameAddr, SipRequest, SipResponse, build_response_with_body, random_tag,
    reason_phrase, request_destination, split_list,
};
use crate::sip::registrar::Binding;

/// RFC 3261 timer values (§17, table 4).
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// Timers B, F and H: 64 × T1.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// Timer D for UDP: how long retransmitted final responses are absorbed (and re-ACKed).
pub const TIMER_D: Duration = Duration::from_secs(32);

const SDP: &str = "application/sdp";

/// A message for a call task.
#[derive(Debug)]
pub(crate) enum CallEvent {
    Request {
        request: SipRequest,
        source: SocketAddr,
        transport: Transport,
        leg: Leg,
    },
    Response {
        response: SipResponse,
        leg: Leg,
    },
    /// The ACD about a queued caller (calls the node answers itself).
    Center(crate::center::CenterCommand),
}

/// A call about to be set up: the authenticated (or trunk-trusted) caller's INVITE and the
/// routing decision.
#[derive(Debug)]
pub struct CallSetup<'a> {
    pub invite: &'a SipRequest,
    pub source: SocketAddr,
    pub transport: Transport,
    /// The caller: a seat's extension (digest username), or the calling number a trunk sent.
    pub caller: String,
    /// The dialed seat's extension, or the number sent to the trunk.
    pub callee: String,
    /// Where the callee's leg goes.
    pub target: CallTarget,
    /// Inbound, outbound (through a trunk) or internal (seat to seat).
    pub direction: CallDirection,
    /// The trunk channel the call holds (inbound or outbound trunk calls); released when the
    /// call ends.
    pub channel: Option<ChannelGuard>,
}

/// Where the callee's leg of a call goes.
#[derive(Debug, Clone)]
pub enum CallTarget {
    /// A seat's registered contact.
    Seat(Binding),
    /// A trunk's peer (resolved address), answering its digest challenge once.
    Trunk {
        trunk: Arc<Trunk>,
        destination: SocketAddr,
    },
}

/// Why a call was refused before ringing; [`SetupError::status`] is the answer to the INVITE.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("malformed SDP offer: {0}")]
    BadSdp(#[from] SdpError),
    #[error("SDP offer not acceptable: {0}")]
    Negotiation(#[from] NegotiationError),
    #[error("no media for the call: {0}")]
    Media(#[from] MediaError),
    #[error("the node is at its call limit")]
    AtCapacity,
    #[error("the trunk peer's address cannot be resolved")]
    TrunkUnreachable,
}

impl SetupError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Negotiation(_) => 488,
            Self::BadSdp(_) => 400,
            Self::Media(_) | Self::AtCapacity | Self::TrunkUnreachable => 503,
        }
    }
}

/// A request or response sent until answered or timed out.
#[derive(Debug)]
struct Retransmit {
    out: Outbound,
    /// Next retransmission; `None` over TCP (reliable transport).
    next: Option<Instant>,
    interval: Duration,
    /// Timer A doubles without bound; E and G cap at T2.
    capped: bool,
    deadline: Instant,
}

impl Retransmit {
    fn new(out: Outbound, now: Instant, capped: bool) -> Self {
        let next = (out.transport == Transport::Udp).then(|| now + T1);
        Self {
            out,
            next,
            interval: T1,
            capped,
            deadline: now + TRANSACTION_TIMEOUT,
        }
    }

    fn wake(&self) -> Instant {
        self.next.map_or(self.deadline, |n| n.min(self.deadline))
    }

    /// The message to resend now, if due.
    fn due(&mut self, now: Instant) -> Option<Outbound> {
        let next = self.next?;
        if now < next {
            return None;
        }
        self.interval = if self.capped {
            (self.interval * 2).min(T2)
        } else {
            self.interval * 2
        };
        self.next = Some(now + self.interval);
        Some(self.out.clone())
    }
}

/// The request line and transaction identity of a request the node builds.
struct RequestLine<'a> {
    method: &'a str,
    uri: &'a str,
    branch: &'a str,
    cseq: u32,
    /// Whether the dialog's route set applies (not for CANCEL and non-2xx ACK).
    route: bool,
}

/// A BYE or CANCEL the node sent.
#[derive(Debug)]
struct ClientRequest {
    leg: Leg,
    branch: String,
    method: &'static str,
    retransmit: Retransmit,
}

/// One dialog as the node sees it (either leg).
#[derive(Debug, Clone)]
struct DialogSide {
    call_id: String,
    /// Our From (or To) header value, with our tag.
    local: String,
    /// The peer's header value; its tag is added when learned.
    remote: String,
    /// Request-URI of in-dialog requests (the peer's Contact).
    remote_target: String,
    /// Route headers for in-dialog requests.
    route: Vec<String>,
    /// Where requests are sent: the address the peer's signalling comes from (NAT-safe).
    destination: SocketAddr,
    transport: Transport,
    local_cseq: u32,
    /// The last CSeq number the peer used in this dialog (0 before its first request).
    remote_cseq: u32,
}

impl DialogSide {
    /// The callee leg of a call the node answered itself, until an agent answers and their
    /// leg replaces it (see `promote_fork`).
    fn placeholder(destination: SocketAddr, transport: Transport) -> Self {
        Self {
            call_id: String::new(),
            local: String::new(),
            remote: String::new(),
            remote_target: String::new(),
            route: Vec::new(),
            destination,
            transport,
            local_cseq: 1,
            remote_cseq: 0,
        }
    }

    /// The caller's leg of a new INVITE, where the node is the UAS: our tag added to To,
    /// the Contact (else From) as remote target, the Record-Route set. Returns it with our
    /// tag and where responses go (Via received/rport over UDP, RFC 3581).
    fn of_caller(
        invite: &SipRequest,
        source: SocketAddr,
        transport: Transport,
    ) -> (Self, String, SocketAddr) {
        let response_to = match (transport, invite.top_via()) {
            (Transport::Udp, Some(via)) => via.response_destination(source),
            _ => source,
        };
        let tag = random_tag();
        let header = |name| invite.header(name).unwrap_or_default().to_string();
        let remote_target = invite
            .header("Contact")
            .and_then(NameAddr::parse)
            .or_else(|| invite.header("From").and_then(NameAddr::parse))
            .map(|c| c.uri)
            .unwrap_or_default();
        let dialog = Self {
            call_id: header("Call-ID"),
            local: format!("{};tag={tag}", header("To")),
            remote: header("From"),
            destination: request_destination(&remote_target, source),
            remote_target,
            route: invite
                .header_values("Record-Route")
                .flat_map(split_list)
                .map(str::to_string)
                .collect(),
            transport,
            local_cseq: 0,
            remote_cseq: invite.cseq().map_or(0, |(n, _)| n),
        };
        (dialog, tag, response_to)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerState {
    /// INVITE received, no final response yet.
    Proceeding,
    /// 200 sent, waiting for ACK.
    Accepted,
    /// ACK received: the dialog is up.
    Confirmed,
    /// A non-2xx final response sent.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CalleeState {
    /// No callee leg yet: a call the node answered itself, before an agent answers.
    Idle,
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional response received.
    Proceeding,
    /// 2xx received and ACKed: the dialog is up.
    Established,
    /// A final non-2xx response, a timeout, or our BYE.
    Terminated,
}

#[derive(Debug, Clone)]
struct Ending {
    cause: String,
    side: HangupSide,
    outcome: CallOutcome,
}

/// The audio agreed on a leg: the codec and the payload numbers that leg uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AgreedAudio {
    codec: Codec,
    payload_type: u8,
    telephone_event: Option<u8>,
    /// Where the peer receives RTP; `None` while it holds with `c=0.0.0.0` and never said.
    remote: Option<SocketAddr>,
}

impl AgreedAudio {
    fn of(n: &NegotiatedAudio) -> Self {
        Self {
            codec: n.codec,
            payload_type: n.payload_type,
            telephone_event: n.telephone_event,
            remote: n.remote,
        }
    }
}

fn leg_peer(n: &NegotiatedAudio) -> LegPeer {
    LegPeer::new(n.codec, n.payload_type, n.telephone_event, n.remote)
}

/// The node's SDP side of one leg: its media address, session identity and direction, the
/// audio agreed there, and the last SDP it sent (the o= version changes only with it).
#[derive(Debug, Clone)]
struct LegSdp {
    local: LocalMedia,
    audio: Option<AgreedAudio>,
    last: Vec<u8>,
}

impl LegSdp {
    /// Takes the audio a new exchange agreed. An old-style hold (`c=0.0.0.0`) gives no
    /// address: the peer's last one is kept (its media returns there on resume).
    fn agree(&mut self, n: &NegotiatedAudio) {
        let mut audio = AgreedAudio::of(n);
        if audio.remote.is_none() {
            audio.remote = self.audio.and_then(|a| a.remote);
        }
        self.audio = Some(audio);
    }

    /// Builds the leg's next SDP from `local` (direction and address wanted): the current
    /// o= version when nothing changed, one more when anything did (RFC 3264 §8). Returns the
    /// `LocalMedia` to commit once the exchange succeeds, the bytes, and what `build` adds.
    fn versioned<T, E>(
        &self,
        local: LocalMedia,
        build: impl Fn(&LocalMedia) -> Result<(SessionDescription, T), E>,
    ) -> Result<(LocalMedia, Vec<u8>, T), E> {
        let mut local = LocalMedia {
            session_version: self.local.session_version,
            ..local
        };
        let (same, extra) = build(&local)?;
        let same = same.to_string().into_bytes();
        if same == self.last {
            return Ok((local, same, extra));
        }
        local.session_version += 1;
        let (sdp, extra) = build(&local)?;
        Ok((local, sdp.to_string().into_bytes(), extra))
    }
}

/// The offer the node puts in a re-INVITE on a leg: its own address and port for that leg,
/// the codec (and payload numbers) already agreed there, and the wanted direction.
fn reinvite_offer(local: &LocalMedia, audio: AgreedAudio) -> SessionDescription {
    build_offer_with(
        local,
        &[(audio.codec, audio.payload_type)],
        audio.telephone_event,
    )
}

/// The direction the node offers the other leg when one leg's offer holds or resumes
/// (RFC 6337 §5.3): the same direction, so the far party learns what the near one does. An
/// old-style hold (`c=0.0.0.0`, RFC 3264 §8.4) receives nothing, so it counts as not
/// receiving.
fn relayed_direction(offered: Direction, address_held: bool) -> Direction {
    match (offered, address_held) {
        (d, false) => d,
        (Direction::SendRecv | Direction::SendOnly, true) => Direction::SendOnly,
        (Direction::RecvOnly | Direction::Inactive, true) => Direction::Inactive,
    }
}

/// Why a re-INVITE cannot start now, as the status and reason to refuse it with (RFC 3261
/// §14.2): the call is gone, or an INVITE transaction on the call is still in progress (a
/// re-INVITE either way, or the caller's answer not yet acknowledged).
fn reinvite_refusal(call_up: bool, in_progress: bool) -> Option<(u16, &'static str)> {
    if !call_up {
        Some((481, "Call/Transaction Does Not Exist"))
    } else if in_progress {
        Some((491, "Request Pending"))
    } else {
        None
    }
}

/// What a leg hears when the other leg refuses (or never answers) the re-INVITE passed
/// across. The failure stays a failure of the offer: statuses that would make the leg end
/// its dialog (408, 481, RFC 3261 §12.2.1.2) or ask it for credentials become 500.
fn map_reinvite_failure(status: u16) -> u16 {
    match status {
        491 => 491,
        488 | 606 => 488,
        401 | 407 | 408 | 481 => 500,
        400..=499 => status,
        600..=699 => 603,
        _ => 500,
    }
}

/// A re-INVITE received on a leg: the node's INVITE server transaction (§17.2.1).
#[derive(Debug)]
struct ServerReinvite {
    leg: Leg,
    request: SipRequest,
    cseq: u32,
    source: SocketAddr,
    response_to: SocketAddr,
    transport: Transport,
    last_response: Vec<u8>,
    /// The leg's offer, answered once the other leg accepted; `None` when the re-INVITE had
    /// no SDP (the node's 200 carries the offer).
    offer: Option<SessionDescription>,
    /// No SDP in the re-INVITE: the SDP the 200 offered, committed when the ACK answers it.
    offered: Option<(LocalMedia, Vec<u8>)>,
    /// The final response, retransmitted (Timer G) until ACK or Timer H.
    final_response: Option<Retransmit>,
    /// A final response has been sent.
    answered: bool,
    /// ACKed (or Timer H ran out): no longer in progress.
    done: bool,
}

/// A re-INVITE the node sent on a leg: its INVITE client transaction (§17.1.1).
#[derive(Debug)]
struct ClientReinvite {
    leg: Leg,
    branch: String,
    cseq: u32,
    uri: String,
    /// The leg whose re-INVITE waits for this one (pass-across); `None` for the node's own.
    across: Option<Leg>,
    /// Timer A; its deadline is Timer B, kept after a provisional (a re-INVITE is answered at
    /// once, nobody rings).
    retransmit: Retransmit,
    /// The offer's `LocalMedia` and bytes, the leg's SDP state once a 2xx accepts them.
    offered: (LocalMedia, Vec<u8>),
    /// After the final response: the ACK, re-sent on retransmitted finals until the instant.
    ack: Option<(Outbound, Instant)>,
}

pub(crate) struct CallSession {
    engine: Arc<CallEngine>,
    rx: mpsc::Receiver<CallEvent>,
    caller_ext: String,
    callee_ext: String,
    direction: CallDirection,
    /// The seat of the call (the callee, or the caller of an outbound call).
    seat: Option<String>,
    /// Seats (names) whose phones this call keeps from queue calls in the ACD until it ends.
    direct_seats: Vec<String>,
    /// The trunk of an inbound or outbound trunk call.
    trunk: Option<Arc<Trunk>>,
    /// Outbound through a trunk: the challenge has been answered once already.
    trunk_auth_sent: bool,
    /// The trunk channel, released at the end of the call.
    channel: Option<ChannelGuard>,
    offered_at: DateTime<Utc>,
    answered_at: Option<DateTime<Utc>>,

    /// The caller's INVITE; `None` for a call taken over from another node (its INVITE
    /// transaction was over long before).
    a_invite: Option<SipRequest>,
    a_source: SocketAddr,
    /// Where responses to the caller go (Via / rport).
    a_response_to: SocketAddr,
    a_tag: String,
    a: DialogSide,
    a_state: CallerState,
    a_answer: Vec<u8>,
    a_last_response: Vec<u8>,
    a_final: Option<Retransmit>,

    b: DialogSide,
    b_state: CalleeState,
    b_invite_branch: String,
    b_invite_uri: String,
    /// CSeq number of the current INVITE to the callee (CANCEL and ACK reuse it).
    b_invite_cseq: u32,
    /// `(header, value)` authorising the INVITE to a trunk after a challenge.
    b_invite_auth: Option<(&'static str, String)>,
    /// The callee's SDP offer, kept to re-send the INVITE after a challenge.
    b_offer: Vec<u8>,
    /// The challenged INVITE transaction: its branch and ACK, re-sent if the challenge is
    /// retransmitted.
    b_challenged: Option<(String, Outbound)>,
    /// The callee's To before any tag, for a re-sent INVITE.
    b_remote_initial: String,
    b_invite: Option<Retransmit>,
    /// Timer B, until a provisional response arrives.
    timer_b: Option<Instant>,
    b_ack: Option<Outbound>,
    cancel_pending: bool,
    b_codec_known: bool,

    /// The node's SDP side of the caller's and the callee's leg.
    a_sdp: LegSdp,
    b_sdp: LegSdp,
    /// Late offer: the caller's 200 carried the node's offer; its answer comes in the ACK.
    caller_answer_due: bool,
    /// The call failed for want of media (the CDR says failed even after an answer).
    media_failed: bool,
    reinvite_in: Option<ServerReinvite>,
    reinvite_out: Option<ClientReinvite>,

    pending: Vec<ClientRequest>,
    media: Option<MediaSession>,
    stats: Arc<RelayStats>,
    ring_deadline: Option<Instant>,
    ending: Option<Ending>,
    linger_until: Option<Instant>,
    recording: Option<PathBuf>,
    /// When the segment in `recording` began.
    recording_started_at: Option<DateTime<Utc>>,
    /// Segments of the recording other nodes wrote before the call was taken over here.
    segments_before: Vec<RecordingSegment>,
    /// A call the node answered itself (IVR, queue, voicemail, feature code).
    center: Option<Box<center::CenterCall>>,
    /// A call taken over from the previous active node, until both legs' media moved here.
    takeover: Option<takeover::Takeover>,
}

/// How a call task begins.
enum Start {
    /// Ring the callee with this offer (a B2BUA call).
    Ring(Vec<u8>),
    /// Answer the caller and take the call's first center route.
    Answer,
    /// Re-INVITE the legs of a call taken over from the previous active node.
    TakeOver,
}

impl CallEngine {
    /// A call task begins: counted up here, down in [`CallSession::end`].
    fn call_started(&self) {
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.calls_active.inc();
        }
    }

    /// The caller's SDP offer, if the INVITE has one, and the node's media for the caller's
    /// leg before a port is taken (a new session id, version 1, sendrecv). The offer is
    /// negotiated here, so a bad one is refused before any port is taken.
    pub(super) fn caller_offer(
        &self,
        invite: &SipRequest,
    ) -> Result<(Option<SessionDescription>, LocalMedia), SetupError> {
        let offer = if invite.body.is_empty() {
            None
        } else {
            let text = String::from_utf8_lossy(&invite.body);
            Some(SessionDescription::parse(&text)?)
        };
        let local = LocalMedia {
            address: self.advertised_ip(),
            rtp_port: 0,
            session_id: rand::random::<u32>().into(),
            session_version: 1,
            direction: Direction::SendRecv,
        };
        if let Some(offer) = &offer {
            answer_offer(offer, &self.settings.codecs, &local)?;
        }
        Ok((offer, local))
    }

    /// Sets a call up (media ports, both SDPs) and starts its task, which rings the callee.
    /// Returns the 100 Trying for the caller; on error, the status to refuse the INVITE with.
    pub fn start_call(self: &Arc<Self>, setup: CallSetup<'_>) -> Result<Vec<u8>, SetupError> {
        if self.at_capacity() {
            return Err(SetupError::AtCapacity);
        }
        // No SDP: late offer (§13.2.1), the node offers to both legs in turn.
        let (offer, a_local) = self.caller_offer(setup.invite)?;
        let caller_media = MediaLeg::bind(&self.ports, self.media_bind())?;
        let callee_media = MediaLeg::bind(&self.ports, self.media_bind())?;
        let a_local = LocalMedia {
            rtp_port: caller_media.rtp_port(),
            ..a_local
        };
        let (answer, negotiated) = match &offer {
            Some(offer) => {
                let (answer, negotiated) = answer_offer(offer, &self.settings.codecs, &a_local)?;
                (answer.to_string().into_bytes(), Some(negotiated))
            }
            None => (Vec::new(), None),
        };
        let b_local = LocalMedia {
            rtp_port: callee_media.rtp_port(),
            session_id: a_local.session_id + 1,
            ..a_local.clone()
        };
        let b_offer = build_offer(&b_local, &self.settings.codecs).to_string();
        let stats = Arc::new(RelayStats::default());
        let media = MediaSession::start(
            caller_media,
            callee_media,
            Arc::clone(&stats),
            self.node_media(),
            self.metrics.as_ref().map(RelayMetrics::from_sip),
        );
        if let Some(n) = &negotiated {
            media.set_peer(Leg::Caller, leg_peer(n));
        }
        let a_sdp = LegSdp {
            local: LocalMedia {
                direction: negotiated
                    .as_ref()
                    .map_or(Direction::SendRecv, |n| n.remote_direction.answer()),
                ..a_local
            },
            audio: negotiated.as_ref().map(AgreedAudio::of),
            last: answer.clone(),
        };
        let b_sdp = LegSdp {
            local: b_local,
            audio: None,
            last: b_offer.clone().into_bytes(),
        };

        let invite = setup.invite;
        let (a, a_tag, a_response_to) =
            DialogSide::of_caller(invite, setup.source, setup.transport);
        let realm = &self.realm;
        let b_call_id = format!("{}@switchboard", random_tag());
        let (remote, remote_target, destination, b_transport, trunk, seat) = match &setup.target {
            CallTarget::Seat(contact) => (
                format!("<sip:{}@{realm}>", setup.callee),
                contact.uri.clone(),
                contact.destination(),
                contact.transport,
                setup.channel.as_ref().map(|c| Arc::clone(c.trunk())),
                Some(setup.callee.clone()),
            ),
            CallTarget::Trunk { trunk, destination } => {
                let peer = &trunk.spec.peer;
                let host = if peer.host.contains(':') {
                    format!("[{}]", peer.host)
                } else {
                    peer.host.clone()
                };
                let transport = trunk.transport();
                let param = if transport == Transport::Tcp {
                    ";transport=tcp"
                } else {
                    ""
                };
                (
                    format!("<sip:{}@{host}>", setup.callee),
                    format!("sip:{}@{host}:{}{param}", setup.callee, peer.port),
                    *destination,
                    transport,
                    Some(Arc::clone(trunk)),
                    Some(setup.caller.clone()),
                )
            }
        };
        let b = DialogSide {
            call_id: b_call_id,
            local: format!("<sip:{}@{realm}>;tag={}", setup.caller, random_tag()),
            remote: remote.clone(),
            remote_target: remote_target.clone(),
            route: Vec::new(),
            destination,
            transport: b_transport,
            local_cseq: 1,
            remote_cseq: 0,
        };
        let trying = build_response_with_body(invite, 100, "Trying", setup.source, None, &[], None);
        let (sender, rx) = mpsc::channel(CALL_QUEUE);
        self.register(
            [(&a.call_id, Leg::Caller), (&b.call_id, Leg::Callee)],
            &sender,
        );
        self.call_started();
        info!(
            call_id = a.call_id,
            caller = setup.caller,
            callee = setup.callee,
            target = remote_target,
            trunk = trunk.as_ref().map(|t| t.name()),
            direction = ?setup.direction,
            "call: ringing"
        );
        let mut session = CallSession {
            caller_ext: setup.caller,
            callee_ext: setup.callee,
            direction: setup.direction,
            seat,
            trunk,
            channel: setup.channel,
            a_invite: Some(invite.clone()),
            a_source: setup.source,
            a_response_to,
            a_tag,
            a_answer: answer,
            a_last_response: trying.clone(),
            b_state: CalleeState::Calling,
            b_invite_branch: branch(),
            b_invite_uri: remote_target,
            b_offer: b_offer.clone().into_bytes(),
            b_remote_initial: remote,
            ..CallSession::blank(Arc::clone(self), rx, (a, a_sdp), (b, b_sdp), media, stats)
        };
        if session.direction != CallDirection::Inbound {
            // The calling seat's phone is busy from the moment it dials.
            let caller = session.caller_ext.clone();
            session.direct_call_started(&caller);
        }
        tokio::spawn(session.run(Start::Ring(b_offer.into_bytes())));
        Ok(trying)
    }
}

fn other_leg(leg: Leg) -> Leg {
    match leg {
        Leg::Caller => Leg::Callee,
        Leg::Callee => Leg::Caller,
    }
}

fn branch() -> String {
    format!("{BRANCH_MAGIC_COOKIE}-sb-{}", random_tag())
}

impl CallSession {
    /// A call task's state with its two legs (the callee's may be a placeholder until an
    /// agent answers) and its media; everything else starts empty, for each kind of call to
    /// set what it knows.
    fn blank(
        engine: Arc<CallEngine>,
        rx: mpsc::Receiver<CallEvent>,
        (a, a_sdp): (DialogSide, LegSdp),
        (b, b_sdp): (DialogSide, LegSdp),
        media: MediaSession,
        stats: Arc<RelayStats>,
    ) -> Self {
        Self {
            engine,
            rx,
            caller_ext: String::new(),
            callee_ext: String::new(),
            direction: CallDirection::Inbound,
            seat: None,
            direct_seats: Vec::new(),
            trunk: None,
            trunk_auth_sent: false,
            channel: None,
            offered_at: Utc::now(),
            answered_at: None,
            a_invite: None,
            a_source: a.destination,
            a_response_to: a.destination,
            a_tag: String::new(),
            a,
            a_state: CallerState::Proceeding,
            a_answer: Vec::new(),
            a_last_response: Vec::new(),
            a_final: None,
            b,
            b_state: CalleeState::Idle,
            b_invite_branch: String::new(),
            b_invite_uri: String::new(),
            b_invite_cseq: 1,
            b_invite_auth: None,
            b_offer: Vec::new(),
            b_challenged: None,
            b_remote_initial: String::new(),
            b_invite: None,
            timer_b: None,
            b_ack: None,
            cancel_pending: false,
            b_codec_known: false,
            a_sdp,
            b_sdp,
            caller_answer_due: false,
            media_failed: false,
            reinvite_in: None,
            reinvite_out: None,
            pending: Vec::new(),
            media: Some(media),
            stats,
            ring_deadline: None,
            ending: None,
            linger_until: None,
            recording: None,
            recording_started_at: None,
            segments_before: Vec::new(),
            center: None,
            takeover: None,
        }
    }

    /// Runs the call from `start` until it is over.
    async fn run(mut self, start: Start) {
        let now = Instant::now();
        match start {
            Start::Ring(offer) => {
                self.send_invite(offer, now);
                self.ring_deadline = Some(now + self.engine.settings.ring_timeout);
            }
            Start::Answer => self.center_start(now),
            Start::TakeOver => self.takeover_next_leg(now),
        }
        loop {
            let wake = self.next_wake();
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => self.on_event(event, Instant::now()),
                    // The engine never drops a live call's sender; be safe anyway.
                    None => break,
                },
                event = center::media_event(&mut self.center) => {
                    self.on_media_event(event, Instant::now());
                }
                () = sleep_until(wake.into()) => self.on_timer(Instant::now()),
            }
            if self.finished(Instant::now()) {
                break;
            }
        }
        // Every exit path releases the media (ports) and writes the records.
        self.end(
            HangupSide::Node,
            "node shutdown",
            CallOutcome::Failed,
            Instant::now(),
        );
        let mut call_ids = vec![self.a.call_id.as_str(), self.b.call_id.as_str()];
        if let Some(c) = &self.center {
            call_ids.extend(c.fork_call_ids());
        }
        self.engine.unregister(call_ids);
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut wake = far;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = wake.min(t);
            }
        };
        consider(self.b_invite.as_ref().map(Retransmit::wake));
        consider(self.timer_b);
        consider(self.a_final.as_ref().map(Retransmit::wake));
        consider(self.ring_deadline);
        consider(self.linger_until);
        consider(
            self.reinvite_in
                .as_ref()
                .and_then(|s| s.final_response.as_ref())
                .map(Retransmit::wake),
        );
        consider(self.reinvite_out.as_ref().map(|c| match &c.ack {
            Some((_, until)) => *until,
            None => c.retransmit.wake(),
        }));
        for p in &self.pending {
            consider(Some(p.retransmit.wake()));
        }
        if let Some(c) = &self.center {
            consider(c.next_wake());
        }
        consider(self.takeover.as_ref().and_then(|t| t.retry_at));
        wake
    }

    fn finished(&self, now: Instant) -> bool {
        self.ending.is_some()
            && self.pending.is_empty()
            && self.a_final.is_none()
            && self.b_invite.is_none()
            // A re-INVITE in progress still needs its final response ACKed.
            && self.reinvite_out.as_ref().is_none_or(|c| c.ack.is_some())
            && self.center.as_ref().is_none_or(|c| c.forks_done(now))
            && self.linger_until.is_none_or(|t| now >= t)
    }

    // ---- sending ----------------------------------------------------------------------

    fn send(&self, out: Outbound) {
        self.engine.send(out);
    }

    fn to_caller(&self, bytes: Vec<u8>) -> Outbound {
        Outbound {
            bytes,
            destination: self.a_response_to,
            transport: self.a.transport,
            connect: false,
        }
    }

    fn dialog(&self, leg: Leg) -> &DialogSide {
        match leg {
            Leg::Caller => &self.a,
            Leg::Callee => &self.b,
        }
    }

    /// Builds a request on a leg.
    fn request(&self, leg: Leg, line: RequestLine<'_>, body: Option<&[u8]>) -> Outbound {
        self.request_on(self.dialog(leg), leg, line, body)
    }

    /// Builds a request in dialog `d`, which is `leg` of the call (or an agent's leg being
    /// offered, as `Leg::Callee`).
    fn request_on(
        &self,
        d: &DialogSide,
        leg: Leg,
        line: RequestLine<'_>,
        body: Option<&[u8]>,
    ) -> Outbound {
        use std::fmt::Write as _;
        let RequestLine {
            method,
            uri,
            branch,
            cseq,
            route,
        } = line;
        let via = self.engine.sip_address(d.transport);
        let mut out = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {via};branch={branch};rport\r\nMax-Forwards: 70\r\n",
            d.transport
        );
        if route {
            for r in &d.route {
                let _ = write!(out, "Route: {r}\r\n");
            }
        }
        let _ = write!(
            out,
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n",
            d.local, d.remote, d.call_id
        );
        if method == "INVITE" {
            let user = match leg {
                Leg::Caller => &self.callee_ext,
                Leg::Callee => &self.caller_ext,
            };
            let _ = write!(
                out,
                "Contact: <sip:{user}@{via};transport={}>\r\n",
                d.transport
            );
            out.push_str("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n");
            // The trunk's credentials answer its challenge of the initial INVITE only.
            if leg == Leg::Callee
                && branch == self.b_invite_branch
                && let Some((name, value)) = &self.b_invite_auth
            {
                let _ = write!(out, "{name}: {value}\r\n");
            }
        }
        let _ = write!(
            out,
            "User-Agent: Switchboard media-node {}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        let mut bytes = match body {
            Some(b) => {
                let _ = write!(
                    out,
                    "Content-Type: {SDP}\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                );
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(b);
                bytes
            }
            None => {
                out.push_str("Content-Length: 0\r\n\r\n");
                out.into_bytes()
            }
        };
        bytes.shrink_to_fit();
        Outbound {
            bytes,
            destination: d.destination,
            transport: d.transport,
            // Requests to a trunk peer may open the TCP connection to it.
            connect: leg == Leg::Callee && self.direction == CallDirection::Outbound,
        }
    }

    fn send_invite(&mut self, offer: Vec<u8>, now: Instant) {
        let uri = self.b_invite_uri.clone();
        let branch = self.b_invite_branch.clone();
        let line = RequestLine {
            method: "INVITE",
            uri: &uri,
            branch: &branch,
            cseq: self.b_invite_cseq,
            route: false,
        };
        let out = self.request(Leg::Callee, line, Some(&offer));
        self.send(out.clone());
        self.b_invite = Some(Retransmit::new(out, now, false));
        self.timer_b = Some(now + TRANSACTION_TIMEOUT);
    }

    /// A new request in `leg`'s dialog: the next CSeq, the remote target as Request-URI, the
    /// route set, a new branch. Returns it with its branch and CSeq number.
    fn in_dialog_request(
        &mut self,
        leg: Leg,
        method: &'static str,
        body: Option<&[u8]>,
    ) -> (Outbound, String, u32) {
        let branch = branch();
        let d = self.dialog_mut(leg);
        d.local_cseq += 1;
        let cseq = d.local_cseq;
        let uri = d.remote_target.clone();
        let out = self.request(
            leg,
            RequestLine {
                method,
                uri: &uri,
                branch: &branch,
                cseq,
                route: true,
            },
            body,
        );
        (out, branch, cseq)
    }

    /// Sends BYE (in the confirmed dialog) on a leg.
    fn send_bye(&mut self, leg: Leg, now: Instant) {
        let (out, branch, _) = self.in_dialog_request(leg, "BYE", None);
        self.send(out.clone());
        info!(call_id = self.a.call_id, ?leg, "BYE sent");
        self.pending.push(ClientRequest {
            leg,
            branch,
            method: "BYE",
            retransmit: Retransmit::new(out, now, true),
        });
    }

    /// Sends CANCEL for the INVITE to the callee (RFC 3261 §9.1: same branch, CSeq number
    /// and Request-URI, To without tag).
    fn send_cancel(&mut self, now: Instant) {
        let branch = self.b_invite_branch.clone();
        let uri = self.b_invite_uri.clone();
        let out = self.request(
            Leg::Callee,
            RequestLine {
                method: "CANCEL",
                uri: &uri,
                branch: &branch,
                cseq: self.b_invite_cseq,
                route: false,
            },
            None,
        );
        self.send(out.clone());
        self.cancel_pending = false;
        self.pending.push(ClientRequest {
            leg: Leg::Callee,
            branch,
            method: "CANCEL",
            retransmit: Retransmit::new(out, now, true),
        });
    }

    /// Sends a response to the caller's INVITE; finals are retransmitted until ACK.
    fn respond_caller(&mut self, status: u16, reason: &str, with_sdp: bool, now: Instant) {
        let Some(invite) = self.a_invite.as_ref() else {
            // A call taken over has no INVITE transaction to answer.
            return;
        };
        let mut extra: Vec<(&str, String)> = Vec::new();
        let contact;
        if (101..300).contains(&status) {
            let via = self.engine.sip_address(self.a.transport);
            contact = format!(
                "<sip:{}@{via};transport={}>",
                self.callee_ext, self.a.transport
            );
            extra.push(("Contact", contact));
            // The UAS copies Record-Route into responses that create the dialog (§12.1.1).
            for rr in invite.header_values("Record-Route") {
                extra.push(("Record-Route", rr.to_string()));
            }
        }
        if status == 200 {
            extra.push(("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS".to_string()));
        }
        let body = with_sdp.then_some((SDP, self.a_answer.as_slice()));
        let tag = (status > 100).then_some(self.a_tag.as_str());
        let bytes =
            build_response_with_body(invite, status, reason, self.a_source, tag, &extra, body);
        if let Some(m) = &self.engine.metrics {
            m.responses.with_label_values(&[&status.to_string()]).inc();
        }
        self.a_last_response = bytes.clone();
        let out = self.to_caller(bytes);
        self.send(out.clone());
        if status >= 200 {
            self.a_state = if status < 300 {
                CallerState::Accepted
            } else {
                CallerState::Rejected
            };
            self.a_final = Some(Retransmit::new(out, now, true));
        }
    }

    // ---- events -----------------------------------------------------------------------

    fn on_event(&mut self, event: CallEvent, now: Instant) {
        match event {
            CallEvent::Request {
                request,
                source,
                transport,
                leg,
            } => self.on_request(request, source, transport, leg, now),
            CallEvent::Response { response, leg } => self.on_response(response, leg, now),
            CallEvent::Center(command) => self.on_center_command(command, now),
        }
    }

    fn on_request(
        &mut self,
        request: SipRequest,
        source: SocketAddr,
        transport: Transport,
        leg: Leg,
        now: Instant,
    ) {
        let has_to_tag = request
            .header("To")
            .and_then(NameAddr::parse)
            .is_some_and(|t| t.tag().is_some());
        match (&request.method, leg) {
            (rsip::Method::Invite, Leg::Caller) if !has_to_tag => {
                // A retransmitted INVITE: repeat the latest response (§17.2.1).
                if self.a_last_response.is_empty() {
                    return;
                }
                let out = self.to_caller(self.a_last_response.clone());
                self.send(out);
            }
            (rsip::Method::Invite, _) => self.on_reinvite(request, source, transport, leg, now),
            (rsip::Method::Ack, _) => self.on_ack(&request, leg, now),
            (rsip::Method::Bye, _) => self.on_bye(leg, now),
            (rsip::Method::Cancel, Leg::Caller)
                if self.a_state == CallerState::Proceeding && self.ending.is_none() =>
            {
                info!(call_id = self.a.call_id, "caller cancelled before answer");
                self.respond_caller(487, "Request Terminated", false, now);
                self.cancel_callee(now);
                self.end(
                    HangupSide::Caller,
                    "487 Request Terminated",
                    CallOutcome::Abandoned,
                    now,
                );
            }
            _ => {}
        }
    }

    fn sdp(&self, leg: Leg) -> &LegSdp {
        match leg {
            Leg::Caller => &self.a_sdp,
            Leg::Callee => &self.b_sdp,
        }
    }

    fn sdp_mut(&mut self, leg: Leg) -> &mut LegSdp {
        match leg {
            Leg::Caller => &mut self.a_sdp,
            Leg::Callee => &mut self.b_sdp,
        }
    }

    fn dialog_mut(&mut self, leg: Leg) -> &mut DialogSide {
        match leg {
            Leg::Caller => &mut self.a,
            Leg::Callee => &mut self.b,
        }
    }

    /// Codecs to answer a leg's new offer with: the one agreed there first (no needless
    /// change of codec), then the call center's others.
    fn codec_preferences(&self, leg: Leg) -> Vec<Codec> {
        first_then_others(
            self.sdp(leg).audio.map(|a| a.codec),
            &self.engine.settings.codecs,
        )
    }

    /// The node's re-INVITE offer for a leg with a wanted direction; `None` before any audio
    /// was agreed there.
    fn reoffer(&self, leg: Leg, direction: Direction) -> Option<(LocalMedia, Vec<u8>)> {
        let sdp = self.sdp(leg);
        let audio = sdp.audio?;
        let local = LocalMedia {
            direction,
            ..sdp.local.clone()
        };
        sdp.versioned(local, |l| {
            Ok::<_, std::convert::Infallible>((reinvite_offer(l, audio), ()))
        })
        .ok()
        .map(|(local, bytes, ())| (local, bytes))
    }

    /// The node's current offer for a leg, for a re-INVITE without SDP: the agreed codec
    /// first, then the call center's others, in the node's current direction there.
    fn current_offer(&self, leg: Leg) -> Option<(LocalMedia, Vec<u8>)> {
        let sdp = self.sdp(leg);
        let audio = sdp.audio?;
        let codecs: Vec<(Codec, u8)> = std::iter::once((audio.codec, audio.payload_type))
            .chain(
                self.engine
                    .settings
                    .codecs
                    .iter()
                    .filter(|&&c| c != audio.codec)
                    .map(|&c| (c, crate::media::g711::payload_type(c))),
            )
            .collect();
        sdp.versioned(sdp.local.clone(), |l| {
            Ok::<_, std::convert::Infallible>((
                build_offer_with(l, &codecs, audio.telephone_event),
                (),
            ))
        })
        .ok()
        .map(|(local, bytes, ())| (local, bytes))
    }

    /// A peer's SDP answer (in a 2xx or an ACK) to an offer of the node's listing `offered`.
    fn read_peer_answer(body: &[u8], offered: &[Codec]) -> Result<NegotiatedAudio, String> {
        if body.is_empty() {
            return Err("no SDP answer".into());
        }
        let text = String::from_utf8_lossy(body);
        let sdp = SessionDescription::parse(&text).map_err(|e| e.to_string())?;
        let audio = read_answer(&sdp).map_err(|e| e.to_string())?;
        if !offered.contains(&audio.codec) {
            return Err(format!(
                "answered with {:?}, which was not offered",
                audio.codec
            ));
        }
        Ok(audio)
    }

    /// Answers an in-dialog request once, outside any transaction: a refusal the peer gets
    /// again if it retransmits.
    fn reply_once(
        &self,
        request: &SipRequest,
        source: SocketAddr,
        destination: SocketAddr,
        transport: Transport,
        status: u16,
        reason: &str,
    ) {
        let bytes = build_response_with_body(request, status, reason, source, None, &[], None);
        if let Some(m) = &self.engine.metrics {
            m.responses.with_label_values(&[&status.to_string()]).inc();
        }
        self.send(Outbound {
            bytes,
            destination,
            transport,
            connect: false,
        });
    }

    /// A re-INVITE on a leg (RFC 3261 §14.2): refused while the call is not up or another
    /// INVITE is in progress, answered by the node alone without SDP, passed across with one.
    fn on_reinvite(
        &mut self,
        request: SipRequest,
        source: SocketAddr,
        transport: Transport,
        leg: Leg,
        now: Instant,
    ) {
        let Some((cseq, _)) = request.cseq() else {
            return;
        };
        let response_to = match (transport, request.top_via()) {
            (Transport::Udp, Some(via)) => via.response_destination(source),
            _ => source,
        };
        if let Some(s) = &self.reinvite_in
            && s.leg == leg
            && s.cseq == cseq
        {
            // A retransmission: repeat the latest response (§17.2.1).
            self.send(Outbound {
                bytes: s.last_response.clone(),
                destination: s.response_to,
                transport: s.transport,
                connect: false,
            });
            return;
        }
        let dialog = self.dialog_mut(leg);
        dialog.remote_cseq = dialog.remote_cseq.max(cseq);
        // A call the node answered itself has its caller leg up without a callee.
        let callee_up = self.b_state == CalleeState::Established
            || (self.center.is_some() && leg == Leg::Caller);
        let call_up = self.ending.is_none()
            && callee_up
            && matches!(self.a_state, CallerState::Accepted | CallerState::Confirmed);
        let in_progress = self.a_state != CallerState::Confirmed
            || self.reinvite_in.as_ref().is_some_and(|s| !s.done)
            || self.reinvite_out.as_ref().is_some_and(|c| c.ack.is_none());
        if let Some((status, reason)) = reinvite_refusal(call_up, in_progress) {
            info!(call_id = self.a.call_id, ?leg, status, "re-INVITE refused");
            self.reply_once(&request, source, response_to, transport, status, reason);
            return;
        }
        let body = request.body.clone();
        self.reinvite_in = Some(ServerReinvite {
            leg,
            request,
            cseq,
            source,
            response_to,
            transport,
            last_response: Vec::new(),
            offer: None,
            offered: None,
            final_response: None,
            answered: false,
            done: false,
        });
        if body.is_empty() {
            // Asking for an offer (§14.1): the node's current one; the answer is in the ACK.
            let Some(offered) = self.current_offer(leg) else {
                self.respond_reinvite(500, "Server Internal Error (no media agreed)", None, now);
                return;
            };
            let bytes = offered.1.clone();
            if let Some(s) = self.reinvite_in.as_mut() {
                s.offered = Some(offered);
            }
            debug!(
                call_id = self.a.call_id,
                ?leg,
                "re-INVITE without SDP: node offers"
            );
            self.respond_reinvite(200, "OK", Some(bytes), now);
            return;
        }
        let text = String::from_utf8_lossy(&body);
        let offer = match SessionDescription::parse(&text) {
            Ok(offer) => offer,
            Err(error) => {
                warn!(call_id = self.a.call_id, ?leg, %error, "re-INVITE with malformed SDP");
                self.respond_reinvite(400, "Bad Request (malformed SDP)", None, now);
                return;
            }
        };
        let prefs = self.codec_preferences(leg);
        let negotiated = match answer_offer(&offer, &prefs, &self.sdp(leg).local) {
            Ok((_, negotiated)) => negotiated,
            Err(error) => {
                info!(call_id = self.a.call_id, ?leg, %error, "re-INVITE offer not acceptable");
                self.respond_reinvite(488, reason_phrase(488), None, now);
                return;
            }
        };
        if self.b_state != CalleeState::Established {
            // No other leg to ask (the node's own IVR, queue or voicemail): answer here.
            self.answer_reinvite_locally(leg, &offer, &prefs, now);
            return;
        }
        if let Some(s) = self.reinvite_in.as_mut() {
            s.offer = Some(offer);
        }
        self.respond_reinvite(100, "Trying", None, now);
        let other = other_leg(leg);
        let direction = relayed_direction(negotiated.remote_direction, negotiated.remote.is_none());
        match self.reoffer(other, direction) {
            Some(offered) => {
                info!(
                    call_id = self.a.call_id,
                    from = ?leg,
                    direction = direction.as_str(),
                    "re-INVITE passed across"
                );
                self.send_reinvite(other, offered, Some(leg), now);
            }
            None => self.respond_reinvite(
                500,
                "Server Internal Error (no media agreed on the other leg)",
                None,
                now,
            ),
        }
    }

    /// Answers a leg's re-INVITE offer with the node's own media (its address and port stay,
    /// the direction mirrors the offer's): a session refresh or a hold while the caller is in
    /// the node's IVR or queue.
    fn answer_reinvite_locally(
        &mut self,
        leg: Leg,
        offer: &SessionDescription,
        prefs: &[Codec],
        now: Instant,
    ) {
        let answered = self.sdp(leg).versioned(self.sdp(leg).local.clone(), |l| {
            answer_offer(offer, prefs, l)
        });
        let (local, bytes, negotiated) = match answered {
            Ok(a) => a,
            Err(error) => {
                info!(call_id = self.a.call_id, ?leg, %error, "re-INVITE offer not acceptable");
                self.respond_reinvite(488, reason_phrase(488), None, now);
                return;
            }
        };
        if let Some(media) = &self.media {
            media.set_peer(leg, leg_peer(&negotiated));
        }
        let sdp = self.sdp_mut(leg);
        sdp.local = local;
        sdp.last = bytes.clone();
        sdp.agree(&negotiated);
        debug!(
            call_id = self.a.call_id,
            ?leg,
            "re-INVITE answered by the node"
        );
        self.respond_reinvite(200, "OK", Some(bytes), now);
        self.replicate();
    }

    /// Sends a response to the re-INVITE in progress; finals are retransmitted until ACK.
    fn respond_reinvite(&mut self, status: u16, reason: &str, body: Option<Vec<u8>>, now: Instant) {
        let Some(s) = &self.reinvite_in else {
            return;
        };
        let mut extra: Vec<(&str, String)> = Vec::new();
        if (200..300).contains(&status) {
            let via = self.engine.sip_address(s.transport);
            let user = match s.leg {
                Leg::Caller => &self.callee_ext,
                Leg::Callee => &self.caller_ext,
            };
            extra.push((
                "Contact",
                format!("<sip:{user}@{via};transport={}>", s.transport),
            ));
            extra.push(("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS".to_string()));
        }
        let bytes = build_response_with_body(
            &s.request,
            status,
            reason,
            s.source,
            None,
            &extra,
            body.as_deref().map(|b| (SDP, b)),
        );
        if let Some(m) = &self.engine.metrics {
            m.responses.with_label_values(&[&status.to_string()]).inc();
        }
        let out = Outbound {
            bytes: bytes.clone(),
            destination: s.response_to,
            transport: s.transport,
            connect: false,
        };
        self.send(out.clone());
        if let Some(s) = self.reinvite_in.as_mut() {
            s.last_response = bytes;
            if status >= 200 {
                s.answered = true;
                s.final_response = Some(Retransmit::new(out, now, true));
            }
        }
    }

    /// Sends a re-INVITE offering `offered` on a leg: its own INVITE client transaction (the
    /// dialog's next CSeq, its route set and remote target, a new branch; Timer A over UDP,
    /// Timer B). `across` is the leg whose re-INVITE waits for the outcome; `None` when the
    /// node re-INVITEs on its own (to move the call's media to another node).
    fn send_reinvite(
        &mut self,
        leg: Leg,
        offered: (LocalMedia, Vec<u8>),
        across: Option<Leg>,
        now: Instant,
    ) {
        let (out, branch, cseq) = self.in_dialog_request(leg, "INVITE", Some(&offered.1));
        let uri = self.dialog(leg).remote_target.clone();
        self.send(out.clone());
        // The new local CSeq: a standby must continue above it.
        self.replicate();
        self.reinvite_out = Some(ClientReinvite {
            leg,
            branch,
            cseq,
            uri,
            across,
            retransmit: Retransmit::new(out, now, false),
            offered,
            ack: None,
        });
    }

    fn on_reinvite_response(&mut self, response: SipResponse, now: Instant) {
        let Some(c) = self.reinvite_out.as_mut() else {
            return;
        };
        let status = response.status;
        if let Some((ack, _)) = &c.ack {
            // A retransmitted final: our ACK was lost.
            if status >= 200 {
                let ack = ack.clone();
                self.send(ack);
            }
            return;
        }
        if status < 200 {
            // Stop Timer A; Timer B still bounds the wait.
            c.retransmit.next = None;
            return;
        }
        let (leg, cseq, across, offered) = (c.leg, c.cseq, c.across, c.offered.clone());
        let (uri, ack_branch) = if status < 300 {
            if let Some(contact) = response.header("Contact").and_then(NameAddr::parse) {
                // A 2xx to a re-INVITE refreshes the remote target (§12.2.1.2).
                self.dialog_mut(leg).remote_target = contact.uri;
            }
            // The 2xx ACK is its own transaction (§13.2.2.4).
            (self.dialog(leg).remote_target.clone(), branch())
        } else {
            // The non-2xx ACK belongs to the INVITE transaction (§17.1.1.3).
            (c.uri.clone(), c.branch.clone())
        };
        let ack = self.request(
            leg,
            RequestLine {
                method: "ACK",
                uri: &uri,
                branch: &ack_branch,
                cseq,
                route: true,
            },
            None,
        );
        self.send(ack.clone());
        let linger = if ack.transport == Transport::Udp {
            now + TIMER_D
        } else {
            now
        };
        if let Some(c) = self.reinvite_out.as_mut() {
            c.ack = Some((ack, linger));
        }
        if status >= 300 {
            info!(
                call_id = self.a.call_id,
                ?leg,
                status,
                "re-INVITE refused; media unchanged"
            );
            if across.is_some() {
                self.finish_pass_across(Err(map_reinvite_failure(status)), now);
            }
            if status == 481 && self.ending.is_none() {
                self.drop_lost_leg(leg, now);
            } else if across.is_none() {
                self.takeover_leg_answered(leg, Err(status), now);
            }
            return;
        }
        let offered_codecs: Vec<Codec> = self.sdp(leg).audio.map(|a| a.codec).into_iter().collect();
        let accepted = match Self::read_peer_answer(&response.body, &offered_codecs) {
            Ok(n) => {
                if let Some(media) = &self.media {
                    media.set_peer(leg, leg_peer(&n));
                }
                let sdp = self.sdp_mut(leg);
                (sdp.local, sdp.last) = offered;
                sdp.agree(&n);
                true
            }
            Err(reason) => {
                warn!(call_id = self.a.call_id, ?leg, %reason, "re-INVITE answer unusable");
                false
            }
        };
        self.replicate();
        match across {
            Some(_) => self.finish_pass_across(if accepted { Ok(()) } else { Err(488) }, now),
            None => {
                info!(
                    call_id = self.a.call_id,
                    ?leg,
                    accepted,
                    "node's re-INVITE answered"
                );
                self.takeover_leg_answered(leg, if accepted { Ok(()) } else { Err(488) }, now);
            }
        }
    }

    /// The other leg answered (or not) the re-INVITE passed across: answer the one waiting,
    /// with the node's answer to its offer (mirrored direction) and its new media peer, or
    /// with the failure (media unchanged).
    fn finish_pass_across(&mut self, outcome: Result<(), u16>, now: Instant) {
        let Some(s) = &self.reinvite_in else {
            return;
        };
        if s.answered {
            return;
        }
        let leg = s.leg;
        let contact = s.request.header("Contact").and_then(NameAddr::parse);
        let status = match (outcome, s.offer.clone()) {
            (Ok(()), Some(offer)) => {
                let prefs = self.codec_preferences(leg);
                let sdp = self.sdp(leg);
                match sdp.versioned(sdp.local.clone(), |l| answer_offer(&offer, &prefs, l)) {
                    Ok((local, bytes, n)) => {
                        if let Some(media) = &self.media {
                            media.set_peer(leg, leg_peer(&n));
                        }
                        let sdp = self.sdp_mut(leg);
                        sdp.local = LocalMedia {
                            direction: n.remote_direction.answer(),
                            ..local
                        };
                        sdp.last = bytes.clone();
                        sdp.agree(&n);
                        if let Some(contact) = contact {
                            // A target refresh (§12.2.2).
                            self.dialog_mut(leg).remote_target = contact.uri;
                        }
                        info!(
                            call_id = self.a.call_id,
                            ?leg,
                            direction = n.remote_direction.as_str(),
                            "re-INVITE accepted"
                        );
                        self.respond_reinvite(200, "OK", Some(bytes), now);
                        self.replicate();
                        return;
                    }
                    // Checked when the offer came; kept as a refusal, never a panic.
                    Err(_) => 488,
                }
            }
            (Ok(()), None) => 500,
            (Err(status), _) => status,
        };
        self.respond_reinvite(status, reason_phrase(status), None, now);
    }

    /// A leg said 481 to an in-dialog request: its dialog is gone, and with it the call
    /// (§12.2.1.2).
    fn drop_lost_leg(&mut self, leg: Leg, now: Instant) {
        warn!(
            call_id = self.a.call_id,
            ?leg,
            "leg's dialog is gone (481); ending the call"
        );
        let side = match leg {
            Leg::Caller => {
                if self.b_state == CalleeState::Established {
                    self.b_state = CalleeState::Terminated;
                    self.send_bye(Leg::Callee, now);
                }
                HangupSide::Caller
            }
            Leg::Callee => {
                self.b_state = CalleeState::Terminated;
                self.a_final = None;
                self.send_bye(Leg::Caller, now);
                HangupSide::Called
            }
        };
        self.end(side, "481 dialog gone", CallOutcome::Answered, now);
    }

    fn on_ack(&mut self, request: &SipRequest, leg: Leg, now: Instant) {
        let cseq = request.cseq().map(|(n, _)| n);
        if let Some(s) = self.reinvite_in.as_mut()
            && s.leg == leg
            && Some(s.cseq) == cseq
        {
            if s.done {
                return;
            }
            s.done = true;
            s.final_response = None;
            if let Some(offered) = s.offered.take() {
                self.take_reinvite_answer(leg, request, offered);
                self.replicate();
            }
            return;
        }
        if leg != Leg::Caller
            || cseq
                != self
                    .a_invite
                    .as_ref()
                    .and_then(|i| i.cseq())
                    .map(|(n, _)| n)
        {
            return;
        }
        match self.a_state {
            CallerState::Accepted => {
                self.a_state = CallerState::Confirmed;
                self.a_final = None;
                debug!(call_id = self.a.call_id, "caller ACKed the answer");
                if self.caller_answer_due {
                    self.caller_answer_due = false;
                    self.take_caller_answer(request, now);
                }
                // Both dialogs up (or the caller queued): the call is replicated from now on.
                self.replicate();
            }
            CallerState::Rejected => self.a_final = None,
            _ => {}
        }
    }

    /// A re-INVITE without SDP: the peer's ACK answers the offer the node's 200 carried. An
    /// unusable answer leaves the media as it was.
    fn take_reinvite_answer(&mut self, leg: Leg, ack: &SipRequest, offered: (LocalMedia, Vec<u8>)) {
        let codecs = self.engine.settings.codecs.clone();
        let agreed = self.sdp(leg).audio.map(|a| a.codec);
        let offered_codecs: Vec<Codec> = agreed.into_iter().chain(codecs).collect();
        match Self::read_peer_answer(&ack.body, &offered_codecs) {
            Ok(n) => {
                if let Some(media) = &self.media {
                    media.set_peer(leg, leg_peer(&n));
                }
                let sdp = self.sdp_mut(leg);
                (sdp.local, sdp.last) = offered;
                sdp.agree(&n);
            }
            Err(reason) => {
                warn!(call_id = self.a.call_id, ?leg, %reason, "ACK answer unusable; media unchanged");
            }
        }
    }

    /// Late offer: the caller's ACK answers the offer in the node's 200. Without a usable
    /// answer the call has no media: both legs are hung up and the CDR says failed.
    fn take_caller_answer(&mut self, ack: &SipRequest, now: Instant) {
        let offered = self.engine.settings.codecs.clone();
        match Self::read_peer_answer(&ack.body, &offered) {
            Ok(n) => {
                if let Some(media) = &self.media {
                    media.set_peer(Leg::Caller, leg_peer(&n));
                }
                self.a_sdp.agree(&n);
                debug!(call_id = self.a.call_id, codec = ?n.codec, "caller answered in the ACK");
            }
            Err(reason) => {
                warn!(call_id = self.a.call_id, %reason, "late offer: no usable answer in the caller's ACK; hanging up");
                self.send_bye(Leg::Caller, now);
                if self.b_state == CalleeState::Established {
                    self.b_state = CalleeState::Terminated;
                    self.send_bye(Leg::Callee, now);
                }
                self.media_failed = true;
                self.end(
                    HangupSide::Node,
                    &format!("late offer: {reason}"),
                    CallOutcome::Failed,
                    now,
                );
            }
        }
    }

    fn on_bye(&mut self, leg: Leg, now: Instant) {
        if self.ending.is_some() {
            return;
        }
        match leg {
            Leg::Caller => {
                if self.a_state == CallerState::Proceeding {
                    return;
                }
                info!(call_id = self.a.call_id, "caller hung up");
                if self.b_state == CalleeState::Established {
                    self.b_state = CalleeState::Terminated;
                    self.send_bye(Leg::Callee, now);
                }
                // A BYE ends waiting for the ACK too.
                self.a_final = None;
                self.end(HangupSide::Caller, "BYE", CallOutcome::Answered, now);
            }
            Leg::Callee => {
                if self.b_state != CalleeState::Established {
                    return;
                }
                info!(call_id = self.a.call_id, "callee hung up");
                self.b_state = CalleeState::Terminated;
                if self.center_agent_hung_up(now) {
                    return;
                }
                if matches!(self.a_state, CallerState::Accepted | CallerState::Confirmed) {
                    self.a_final = None;
                    self.send_bye(Leg::Caller, now);
                }
                self.end(HangupSide::Called, "BYE", CallOutcome::Answered, now);
            }
        }
    }

    fn cancel_callee(&mut self, now: Instant) {
        match self.b_state {
            CalleeState::Proceeding => self.send_cancel(now),
            // CANCEL may only follow a provisional response (§9.1): send it when one comes.
            CalleeState::Calling => self.cancel_pending = true,
            CalleeState::Established => {
                self.b_state = CalleeState::Terminated;
                self.send_bye(Leg::Callee, now);
            }
            CalleeState::Idle | CalleeState::Terminated => {}
        }
    }

    fn on_response(&mut self, response: SipResponse, leg: Leg, now: Instant) {
        let Some(branch) = response
            .top_via()
            .and_then(|v| v.branch().map(str::to_string))
        else {
            return;
        };
        let method = response.cseq().map(|(_, m)| m.to_ascii_uppercase());
        if leg == Leg::Callee
            && method.as_deref() == Some("INVITE")
            && self.on_fork_response(&response, &branch, now)
        {
            return;
        }
        if leg == Leg::Callee
            && response.status >= 300
            && let Some((challenged, ack)) = &self.b_challenged
            && *challenged == branch
        {
            // The challenge again: our ACK for it was lost.
            let ack = ack.clone();
            self.send(ack);
            return;
        }
        if leg == Leg::Callee
            && branch == self.b_invite_branch
            && method.as_deref() == Some("INVITE")
        {
            self.on_invite_response(response, now);
            return;
        }
        if let Some(c) = &self.reinvite_out
            && c.leg == leg
            && c.branch == branch
            && method.as_deref() == Some("INVITE")
        {
            self.on_reinvite_response(response, now);
            return;
        }
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.leg == leg && p.branch == branch && method.as_deref() == Some(p.method))
        {
            if response.status >= 200 {
                let done = self.pending.remove(i);
                debug!(
                    method = done.method,
                    status = response.status,
                    ?leg,
                    "request answered"
                );
            } else {
                // A provisional stops retransmission (Timer E then runs at T2; keep it simple:
                // stop resending and wait for the final until Timer F).
                self.pending[i].retransmit.next = None;
            }
        }
    }

    fn on_invite_response(&mut self, response: SipResponse, now: Instant) {
        let status = response.status;
        match status {
            100..=199 => {
                self.b_invite = None;
                self.timer_b = None;
                if self.b_state == CalleeState::Calling {
                    self.b_state = CalleeState::Proceeding;
                }
                if self.cancel_pending {
                    self.send_cancel(now);
                    return;
                }
                if status == 100 || self.a_state != CallerState::Proceeding || self.ending.is_some()
                {
                    return;
                }
                // Early media: the callee's SDP in a 183 sets its leg up now (not with a late
                // offer: the caller has nothing to answer yet).
                let early = status == 183
                    && !response.body.is_empty()
                    && self.learn_callee_sdp(&response)
                    && self.a_sdp.audio.is_some();
                if early {
                    self.respond_caller(183, "Session Progress", true, now);
                } else {
                    self.respond_caller(180, "Ringing", false, now);
                }
            }
            200..=299 => self.on_callee_answer(response, now),
            _ => {
                // ACK in the INVITE transaction: same branch, To with the callee's tag.
                let first = self.b_state != CalleeState::Terminated || self.b_ack.is_none();
                if first {
                    if let Some(tag) = response.to_tag()
                        && !self.b.remote.contains(";tag=")
                    {
                        self.b.remote = format!("{};tag={tag}", self.b.remote);
                    }
                    let uri = self.b_invite_uri.clone();
                    let branch = self.b_invite_branch.clone();
                    self.b_ack = Some(self.request(
                        Leg::Callee,
                        RequestLine {
                            method: "ACK",
                            uri: &uri,
                            branch: &branch,
                            cseq: self.b_invite_cseq,
                            route: false,
                        },
                        None,
                    ));
                }
                if let Some(ack) = self.b_ack.clone() {
                    self.send(ack);
                }
                if !first {
                    return;
                }
                self.b_invite = None;
                self.timer_b = None;
                self.b_state = CalleeState::Terminated;
                if matches!(status, 401 | 407)
                    && self.a_state == CallerState::Proceeding
                    && self.ending.is_none()
                    && self.trunk.is_some()
                {
                    self.on_trunk_challenge(&response, now);
                    return;
                }
                if self.a_state == CallerState::Proceeding && self.ending.is_none() {
                    let (out_status, outcome) = map_callee_failure(status);
                    info!(call_id = self.a.call_id, status, "callee refused the call");
                    self.respond_caller(out_status, reason_phrase(out_status), false, now);
                    self.end(
                        HangupSide::Called,
                        &format!("{status} {}", reason_phrase(status)),
                        outcome,
                        now,
                    );
                }
                if self.linger_until.is_none() && self.b.transport == Transport::Udp {
                    self.linger_until = Some(now + TIMER_D);
                }
            }
        }
    }

    /// A trunk answered our INVITE with 401/407 (already ACKed): answer the challenge once
    /// with the trunk's credentials and re-send the INVITE (new transaction, CSeq + 1). A
    /// second challenge, or no usable credentials, fails the call with 403 to the caller.
    fn on_trunk_challenge(&mut self, response: &SipResponse, now: Instant) {
        let Some(trunk) = self.trunk.clone() else {
            return;
        };
        let (challenge_header, auth_header) = if response.status == 407 {
            ("Proxy-Authenticate", "Proxy-Authorization")
        } else {
            ("WWW-Authenticate", "Authorization")
        };
        let authorization = if self.trunk_auth_sent {
            warn!(
                call_id = self.a.call_id,
                trunk = trunk.name(),
                "trunk refused our credentials (challenged twice)"
            );
            None
        } else {
            let credentials = self.engine.routing().trunks.credentials(trunk.name());
            let challenge = response
                .header_values(challenge_header)
                .find(|v| v.trim_start().to_ascii_lowercase().starts_with("digest"));
            match (credentials, challenge) {
                (Some(c), Some(challenge)) => {
                    match answer_challenge(
                        challenge,
                        &c.username,
                        &c.password,
                        "INVITE",
                        &self.b_invite_uri,
                    ) {
                        Ok(value) => Some(value),
                        Err(error) => {
                            warn!(call_id = self.a.call_id, trunk = trunk.name(), %error, "cannot answer the trunk's challenge");
                            None
                        }
                    }
                }
                (_, None) => {
                    warn!(
                        call_id = self.a.call_id,
                        trunk = trunk.name(),
                        "trunk challenge without a Digest {challenge_header}"
                    );
                    None
                }
                (None, _) => None,
            }
        };
        let Some(authorization) = authorization else {
            self.respond_caller(403, "Forbidden (trunk authentication failed)", false, now);
            self.end(
                HangupSide::Called,
                &format!("{} trunk authentication failed", response.status),
                CallOutcome::Failed,
                now,
            );
            return;
        };
        info!(
            call_id = self.a.call_id,
            trunk = trunk.name(),
            status = response.status,
            "answering the trunk's challenge"
        );
        if let Some(ack) = self.b_ack.take() {
            self.b_challenged = Some((self.b_invite_branch.clone(), ack));
        }
        self.trunk_auth_sent = true;
        self.b_invite_auth = Some((auth_header, authorization));
        self.b_invite_cseq += 1;
        self.b_invite_branch = branch();
        self.b.remote = self.b_remote_initial.clone();
        self.b_state = CalleeState::Calling;
        let offer = self.b_offer.clone();
        self.send_invite(offer, now);
    }

    /// Reads the callee's SDP answer into the relay. `false` when it is unusable.
    fn learn_callee_sdp(&mut self, response: &SipResponse) -> bool {
        let text = String::from_utf8_lossy(&response.body);
        let negotiated = match SessionDescription::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|sdp| read_answer(&sdp).map_err(|e| e.to_string()))
        {
            Ok(n) => n,
            Err(error) => {
                warn!(call_id = self.a.call_id, %error, "callee's SDP answer unusable");
                return false;
            }
        };
        if let Some(media) = &self.media {
            media.set_peer(Leg::Callee, leg_peer(&negotiated));
        }
        self.b_sdp.agree(&negotiated);
        self.b_codec_known = true;
        true
    }

    fn on_callee_answer(&mut self, response: SipResponse, now: Instant) {
        self.b_invite = None;
        self.timer_b = None;
        if self.b_state == CalleeState::Established
            || (self.b_state == CalleeState::Terminated && self.b_ack.is_some())
        {
            // A retransmitted 2xx: our ACK was lost (§13.2.2.4).
            if let Some(ack) = self.b_ack.clone() {
                self.send(ack);
            }
            return;
        }
        if let Some(tag) = response.to_tag() {
            self.b.remote = format!("{};tag={tag}", self.b.remote);
        }
        if let Some(contact) = response.header("Contact").and_then(NameAddr::parse) {
            self.b.remote_target = contact.uri;
        }
        // The UAC's route set is the Record-Route in reverse (§12.1.2).
        let mut route: Vec<String> = response
            .header_values("Record-Route")
            .flat_map(split_list)
            .map(str::to_string)
            .collect();
        route.reverse();
        self.b.route = route;
        self.b_state = CalleeState::Established;
        // The 2xx ACK is its own transaction: new branch, sent end to end (§13.2.2.4).
        let target = self.b.remote_target.clone();
        let ack = self.request(
            Leg::Callee,
            RequestLine {
                method: "ACK",
                uri: &target,
                branch: &branch(),
                cseq: self.b_invite_cseq,
                route: true,
            },
            None,
        );
        self.send(ack.clone());
        self.b_ack = Some(ack);
        self.b.local_cseq = self.b_invite_cseq;

        if self.a_state != CallerState::Proceeding || self.ending.is_some() {
            // The caller is gone (CANCEL crossed the answer): hang the callee up.
            self.b_state = CalleeState::Terminated;
            self.send_bye(Leg::Callee, now);
            return;
        }
        if !self.learn_callee_sdp(&response) {
            self.b_state = CalleeState::Terminated;
            self.send_bye(Leg::Callee, now);
            self.respond_caller(488, reason_phrase(488), false, now);
            self.end(
                HangupSide::Node,
                "488 callee SDP unusable",
                CallOutcome::Failed,
                now,
            );
            return;
        }
        info!(
            call_id = self.a.call_id,
            callee = self.callee_ext,
            "call answered"
        );
        if self.a_sdp.audio.is_none() {
            // Late offer: the caller's 200 offers the callee's codec first, then the others.
            let codecs = first_then_others(
                self.b_sdp.audio.map(|a| a.codec),
                &self.engine.settings.codecs,
            );
            let offer = build_offer(&self.a_sdp.local, &codecs)
                .to_string()
                .into_bytes();
            self.a_sdp.last = offer.clone();
            self.a_answer = offer;
            self.caller_answer_due = true;
        }
        self.answered_at = Some(Utc::now());
        self.ring_deadline = None;
        if self.direction != CallDirection::Outbound {
            let callee = self.callee_ext.clone();
            self.direct_call_started(&callee);
        }
        self.respond_caller(200, "OK", true, now);
        self.start_recording();
    }

    /// The seat of `extension` (if it is one) is on this call: no queue call for it until
    /// the call ends.
    fn direct_call_started(&mut self, extension: &str) {
        let Some(center) = self.engine.center() else {
            return;
        };
        if let Some(seat) = center.seat_of(extension) {
            center.direct_call_started(&seat);
            self.direct_seats.push(seat);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if let Some(t) = self.b_invite.as_mut() {
            if now >= t.deadline {
                self.b_invite = None;
            } else if let Some(out) = t.due(now) {
                self.send(out);
            }
        }
        if self.timer_b.is_some_and(|t| now >= t) {
            // Timer B: the callee never answered at all.
            self.timer_b = None;
            self.b_invite = None;
            self.b_state = CalleeState::Terminated;
            self.cancel_pending = false;
            if self.a_state == CallerState::Proceeding && self.ending.is_none() {
                warn!(call_id = self.a.call_id, "callee did not respond (Timer B)");
                self.respond_caller(408, reason_phrase(408), false, now);
                self.end(
                    HangupSide::Node,
                    "408 Request Timeout",
                    CallOutcome::NoAnswer,
                    now,
                );
            }
        }
        if self.ring_deadline.is_some_and(|t| now >= t) {
            self.ring_deadline = None;
            if self.a_state == CallerState::Proceeding && self.ending.is_none() {
                info!(call_id = self.a.call_id, "ring-no-answer");
                self.respond_caller(480, reason_phrase(480), false, now);
                self.cancel_callee(now);
                self.end(
                    HangupSide::Node,
                    "480 ring-no-answer",
                    CallOutcome::NoAnswer,
                    now,
                );
            }
        }
        if let Some(t) = self.a_final.as_mut() {
            if now >= t.deadline {
                // Timer H: no ACK. A 2xx never acknowledged means the caller is gone (§13.3.1.4).
                self.a_final = None;
                if self.a_state == CallerState::Accepted && self.ending.is_none() {
                    warn!(call_id = self.a.call_id, "no ACK for the answer (Timer H)");
                    self.send_bye(Leg::Caller, now);
                    if self.b_state == CalleeState::Established {
                        self.b_state = CalleeState::Terminated;
                        self.send_bye(Leg::Callee, now);
                    }
                    self.end(HangupSide::Node, "no ACK", CallOutcome::Failed, now);
                }
            } else if let Some(out) = t.due(now) {
                self.send(out);
            }
        }
        if let Some(s) = self.reinvite_in.as_mut()
            && let Some(t) = s.final_response.as_mut()
        {
            if now >= t.deadline {
                // Timer H: the media already changed; the call goes on.
                s.final_response = None;
                s.offered = None;
                s.done = true;
                warn!(call_id = self.a.call_id, leg = ?s.leg, "no ACK for the re-INVITE's response (Timer H)");
            } else if let Some(out) = t.due(now) {
                self.engine.send(out);
            }
        }
        if let Some(c) = self.reinvite_out.as_mut() {
            match &c.ack {
                Some((_, until)) => {
                    if now >= *until {
                        self.reinvite_out = None;
                    }
                }
                None if now >= c.retransmit.deadline => {
                    let (leg, across) = (c.leg, c.across);
                    self.reinvite_out = None;
                    warn!(
                        call_id = self.a.call_id,
                        ?leg,
                        "re-INVITE not answered (Timer B); media unchanged"
                    );
                    if across.is_some() {
                        self.finish_pass_across(Err(map_reinvite_failure(408)), now);
                    } else {
                        self.takeover_leg_answered(leg, Err(408), now);
                    }
                }
                None => {
                    if let Some(out) = c.retransmit.due(now) {
                        self.engine.send(out);
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if now >= p.retransmit.deadline {
                // Timer F: the peer is gone; the call ends regardless.
                warn!(method = p.method, leg = ?p.leg, "request timed out (Timer F)");
                self.pending.remove(i);
                continue;
            }
            if let Some(out) = p.retransmit.due(now) {
                self.engine.send(out);
            }
            i += 1;
        }
        self.center_on_timer(now);
        self.takeover_on_timer(now);
    }

    // ---- the end ----------------------------------------------------------------------

    fn start_recording(&mut self) {
        let Some(dir) = self.engine.settings.recording_dir.clone() else {
            return;
        };
        let Some(media) = &self.media else {
            return;
        };
        let safe: String = self
            .a
            .call_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let name = format!("{}-{safe}.wav", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
        let path = dir.join(&name);
        match CallRecorder::create(&path, RecorderOptions::default()) {
            Ok(recorder) => {
                media.record(recorder);
                self.recording = Some(path.clone());
                self.recording_started_at = Some(Utc::now());
                // Written now too, so a recording whose node dies still has its metadata.
                let _ = self.sidecar(None).write_atomic(&sidecar_path(&path));
                self.replicate();
            }
            // Counted and logged by the recording module; the call goes on unrecorded.
            Err(error) => warn!(call_id = self.a.call_id, %error, "call not recorded"),
        }
    }

    /// The recording's segments so far: other nodes' before a takeover, then this node's
    /// (while it records), ending at `ended_at`.
    fn recording_segments(&self, ended_at: Option<DateTime<Utc>>) -> Vec<RecordingSegment> {
        let current = self
            .recording
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|file| RecordingSegment {
                file: file.to_string_lossy().into_owned(),
                node: self.engine.settings.node_name.clone(),
                started_at: self
                    .recording_started_at
                    .or(self.answered_at)
                    .unwrap_or(self.offered_at),
                ended_at,
            });
        self.segments_before
            .iter()
            .cloned()
            .chain(current)
            .collect()
    }

    fn sidecar(&self, ending: Option<&Ending>) -> RecordingSidecar {
        let ended_at = ending.map(|_| Utc::now());
        let segments = self.recording_segments(ended_at);
        RecordingSidecar {
            call_id: self.a.call_id.clone(),
            from: self.caller_ext.clone(),
            to: self.callee_ext.clone(),
            trunk: self.trunk.as_ref().map(|t| t.name().to_string()),
            seat: self.seat.clone(),
            offered_at: self.offered_at,
            answered_at: self.answered_at,
            ended_at,
            hangup_cause: ending.map(|e| e.cause.clone()),
            hangup_side: ending.map(|e| e.side),
            // The first segment's file names the recording (the one a takeover continues).
            file: segments.first().map(|s| s.file.clone()).unwrap_or_default(),
            segments,
        }
    }

    /// Ends the call once: releases the media, finishes the recording, writes the CDR.
    fn end(&mut self, side: HangupSide, cause: &str, outcome: CallOutcome, now: Instant) {
        if self.ending.is_some() {
            return;
        }
        if self.reinvite_in.as_ref().is_some_and(|s| !s.answered) {
            // The call ends under a re-INVITE in progress: it is terminated (RFC 5407 §3.2).
            self.respond_reinvite(487, "Request Terminated", None, now);
        }
        let outcome = match &self.center {
            Some(c) => c.outcome(outcome),
            None if self.answered_at.is_some() && !self.media_failed => CallOutcome::Answered,
            None => outcome,
        };
        let ending = Ending {
            cause: cause.to_string(),
            side,
            outcome,
        };
        self.center_finish(now);
        if let Some(center) = self.engine.center() {
            for seat in self.direct_seats.drain(..) {
                center.direct_call_ended(&seat);
            }
        }
        self.ring_deadline = None;
        let relayed = (
            self.stats.caller_to_callee.load(Ordering::Relaxed),
            self.stats.callee_to_caller.load(Ordering::Relaxed),
        );
        let recorded = self.media.take().and_then(MediaSession::stop);
        // The trunk channel is free as soon as the call is (not after the linger timers).
        drop(self.channel.take());
        info!(
            call_id = self.a.call_id,
            cause,
            ?side,
            caller_to_callee = relayed.0,
            callee_to_caller = relayed.1,
            "call ended"
        );
        if self.recording.is_some()
            && let Some(path) = &self.recording
        {
            let _ = self
                .sidecar(Some(&ending))
                .write_atomic(&sidecar_path(path));
        }
        let voicemail = self.center_save_voicemail(recorded);
        if let Some(cdr) = &self.engine.cdr {
            let center = self.center.as_deref();
            let record = CallDetailRecord {
                call_id: self.a.call_id.clone(),
                from: self.caller_ext.clone(),
                to: self.callee_ext.clone(),
                direction: self.direction,
                trunk: self.trunk.as_ref().map(|t| t.name().to_string()),
                seat: self.seat.clone(),
                queue: center.and_then(|c| c.queue_name()),
                offered_at: self.offered_at,
                answered_at: self.answered_at,
                ended_at: Utc::now(),
                outcome: ending.outcome,
                hangup_cause: Some(ending.cause.clone()),
                hangup_side: Some(side),
                recording: self
                    .recording
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
                node: self.engine.settings.node_name.clone(),
                wait_seconds: center.and_then(|c| c.waited()).map(|w| w.as_secs_f64()),
                survey_score: center.and_then(|c| c.survey_score()),
                voicemail,
                ivr_path: center.map(|c| c.ivr_path()).unwrap_or_default(),
            };
            // A failed append is counted and logged by the CDR writer.
            let _ = cdr.append(&record);
        }
        self.engine.counters.ended.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.engine.metrics {
            m.calls_active.dec();
            m.calls
                .with_label_values(&[outcome_label(ending.outcome)])
                .inc();
        }
        self.ending = Some(ending);
        self.replicate_ended();
        // Absorb retransmissions of the caller's INVITE or our finals for a while (UDP).
        if self.linger_until.is_none() {
            let udp = self.a.transport == Transport::Udp || self.b.transport == Transport::Udp;
            self.linger_until = Some(if udp { now + TIMER_D } else { now });
        }
    }
}

/// `first` (when set), then the other codecs of `all` in their order: an offer that keeps a
/// codec already agreed or chosen on the other leg, without dropping the rest.
fn first_then_others(first: Option<Codec>, all: &[Codec]) -> Vec<Codec> {
    first
        .into_iter()
        .chain(all.iter().copied().filter(|&c| Some(c) != first))
        .collect()
}

/// What the caller hears when the callee refuses, and how the CDR counts it.
fn map_callee_failure(status: u16) -> (u16, CallOutcome) {
    match status {
        486 | 600 => (486, CallOutcome::Busy),
        408 | 480 => (480, CallOutcome::NoAnswer),
        487 => (487, CallOutcome::Abandoned),
        // Redirects are not followed for seat calls.
        300..=399 => (480, CallOutcome::Failed),
        400..=699 => (status, CallOutcome::Failed),
        _ => (500, CallOutcome::Failed),
    }
}

pub(crate) fn outcome_label(outcome: CallOutcome) -> &'static str {
    match outcome {
        CallOutcome::Answered => "answered",
        CallOutcome::Abandoned => "abandoned",
        CallOutcome::Busy => "busy",
        CallOutcome::NoAnswer => "no_answer",
        CallOutcome::Failed => "failed",
        CallOutcome::Blocked => "blocked",
        CallOutcome::Voicemail => "voicemail",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_a_doubles_and_timer_e_caps_at_t2() {
        let now = Instant::now();
        let out = Outbound {
            bytes: b"INVITE".to_vec(),
            destination: "127.0.0.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            connect: false,
        };
        let mut a = Retransmit::new(out.clone(), now, false);
        let mut e = Retransmit::new(out.clone(), now, true);
        let mut at = now;
        let mut a_intervals = Vec::new();
        let mut e_intervals = Vec::new();
        for _ in 0..5 {
            at = a.next.unwrap();
            assert!(a.due(at).is_some());
            a_intervals.push(a.interval.as_millis());
        }
        for _ in 0..5 {
            let t = e.next.unwrap();
            assert!(e.due(t).is_some());
            e_intervals.push(e.interval.as_millis());
        }
        assert_eq!(a_intervals, [1000, 2000, 4000, 8000, 16000]);
        assert_eq!(e_intervals, [1000, 2000, 4000, 4000, 4000]);
        assert!(a.due(at).is_none(), "not due twice at the same instant");
        assert_eq!(a.deadline, now + TRANSACTION_TIMEOUT);
    }

    #[test]
    fn tcp_is_never_retransmitted() {
        let now = Instant::now();
        let mut r = Retransmit::new(
            Outbound {
                bytes: Vec::new(),
                destination: "127.0.0.1:5060".parse().unwrap(),
                transport: Transport::Tcp,
                connect: false,
            },
            now,
            true,
        );
        assert!(r.due(now + Duration::from_secs(10)).is_none());
        assert_eq!(r.wake(), now + TRANSACTION_TIMEOUT);
    }

    #[test]
    fn hold_direction_is_passed_across_and_mirrored_in_the_answer() {
        use Direction::*;
        for (offered, across, answered) in [
            (SendOnly, SendOnly, RecvOnly),
            (Inactive, Inactive, Inactive),
            (SendRecv, SendRecv, SendRecv),
            (RecvOnly, RecvOnly, SendOnly),
        ] {
            assert_eq!(relayed_direction(offered, false), across, "{offered:?}");
            assert_eq!(offered.answer(), answered, "{offered:?}");
        }
        // Old-style hold (c=0.0.0.0): the holder receives nothing.
        assert_eq!(relayed_direction(SendRecv, true), SendOnly);
        assert_eq!(relayed_direction(RecvOnly, true), Inactive);
    }

    fn leg_sdp() -> LegSdp {
        let local = LocalMedia {
            address: "10.0.0.5".parse().unwrap(),
            rtp_port: 30000,
            session_id: 77,
            session_version: 1,
            direction: Direction::SendRecv,
        };
        let audio = AgreedAudio {
            codec: Codec::Pcma,
            payload_type: 8,
            telephone_event: Some(101),
            remote: None,
        };
        let last = build_offer(&local, &[Codec::Pcmu, Codec::Pcma])
            .to_string()
            .into_bytes();
        LegSdp {
            local,
            audio: Some(audio),
            last,
        }
    }

    fn reoffer_of(sdp: &LegSdp, direction: Direction) -> (LocalMedia, String) {
        let audio = sdp.audio.unwrap();
        let local = LocalMedia {
            direction,
            ..sdp.local.clone()
        };
        let (local, bytes, ()) = sdp
            .versioned(local, |l| {
                Ok::<_, std::convert::Infallible>((reinvite_offer(l, audio), ()))
            })
            .unwrap();
        (local, String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn reinvite_offer_keeps_address_port_and_codec_with_a_new_version() {
        let mut sdp = leg_sdp();
        let (local, hold) = reoffer_of(&sdp, Direction::SendOnly);
        assert!(
            hold.contains("o=switchboard 77 2 IN IP4 10.0.0.5\r\n"),
            "{hold}"
        );
        assert!(hold.contains("c=IN IP4 10.0.0.5\r\n"), "{hold}");
        // Only the codec agreed on the leg, with telephone-event.
        assert!(hold.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{hold}");
        assert!(hold.contains("a=sendonly\r\n"), "{hold}");
        assert!(!hold.contains("PCMU"), "{hold}");
        // Committed after the 2xx: the same offer again keeps its version (RFC 3264 §8)...
        sdp.local = local;
        sdp.last = hold.clone().into_bytes();
        let (_, again) = reoffer_of(&sdp, Direction::SendOnly);
        assert_eq!(again, hold);
        // ...and resuming changes it.
        let (local, resume) = reoffer_of(&sdp, Direction::SendRecv);
        assert_eq!(local.session_version, 3);
        assert!(resume.contains("o=switchboard 77 3 IN IP4"), "{resume}");
        assert!(resume.contains("a=sendrecv\r\n"), "{resume}");
    }

    #[test]
    fn reinvite_answer_mirrors_the_offered_direction() {
        let sdp = leg_sdp();
        let phone = LocalMedia {
            address: "192.0.2.9".parse().unwrap(),
            rtp_port: 4000,
            session_id: 5,
            session_version: 2,
            direction: Direction::SendOnly,
        };
        let offer = reinvite_offer(&phone, sdp.audio.unwrap());
        let prefs = [Codec::Pcma, Codec::Pcmu];
        let (local, bytes, n) = sdp
            .versioned(sdp.local.clone(), |l| answer_offer(&offer, &prefs, l))
            .unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("a=recvonly\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{text}");
        assert_eq!(local.session_version, 2);
        assert_eq!(n.remote, Some("192.0.2.9:4000".parse().unwrap()));
        assert_eq!(n.remote_direction, Direction::SendOnly);
    }

    #[test]
    fn reinvite_during_another_gets_491_and_after_the_call_481() {
        assert_eq!(reinvite_refusal(true, false), None);
        assert_eq!(reinvite_refusal(true, true).map(|r| r.0), Some(491));
        assert_eq!(reinvite_refusal(false, true).map(|r| r.0), Some(481));
        assert_eq!(reinvite_refusal(false, false).map(|r| r.0), Some(481));
    }

    #[test]
    fn reinvite_failures_keep_their_class() {
        assert_eq!(map_reinvite_failure(491), 491);
        assert_eq!(map_reinvite_failure(488), 488);
        assert_eq!(map_reinvite_failure(606), 488);
        assert_eq!(map_reinvite_failure(403), 403);
        // Not the caller's dialog that failed: it must not end its dialog (§12.2.1.2).
        assert_eq!(map_reinvite_failure(408), 500);
        assert_eq!(map_reinvite_failure(481), 500);
        assert_eq!(map_reinvite_failure(407), 500);
        assert_eq!(map_reinvite_failure(503), 500);
        assert_eq!(map_reinvite_failure(603), 603);
        assert_eq!(map_reinvite_failure(302), 500);
    }

    #[test]
    fn late_offer_answers_are_checked_against_the_offer() {
        let phone = LocalMedia {
            address: "192.0.2.9".parse().unwrap(),
            rtp_port: 4000,
            session_id: 5,
            session_version: 1,
            direction: Direction::SendRecv,
        };
        let answer = build_offer(&phone, &[Codec::Pcma]).to_string();
        let n =
            CallSession::read_peer_answer(answer.as_bytes(), &[Codec::Pcmu, Codec::Pcma]).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert!(CallSession::read_peer_answer(answer.as_bytes(), &[Codec::Pcmu]).is_err());
        assert!(CallSession::read_peer_answer(b"", &[Codec::Pcmu]).is_err());
        assert!(CallSession::read_peer_answer(b"v=0\r\nbad", &[Codec::Pcmu]).is_err());
    }

    #[test]
    fn callee_failures_map_to_caller_codes() {
        assert_eq!(map_callee_failure(486).0, 486);
        assert_eq!(map_callee_failure(600).0, 486);
        assert_eq!(map_callee_failure(408).0, 480);
        assert_eq!(map_callee_failure(302).0, 480);
        assert_eq!(map_callee_failure(403).0, 403);
        assert_eq!(map_callee_failure(503).0, 503);
    }
}
