//! The RTP relay of one call: up to two legs, each with an RTP/RTCP socket pair on leased
//! ports. Packets from one leg go out of the other leg's sockets (so each phone sees the node
//! as its only media peer), with the payload type rewritten, G.711 transcoded when the legs
//! chose different laws, RFC 4733 key presses detected (and published as [`MediaEvent`]s),
//! and both directions recorded.
//!
//! Playback: the node can play a prompt or a tone into one leg ([`MediaSession::play`]).
//! While it plays, that leg hears the playback instead of the other leg (whose packets into
//! it are dropped and counted in [`RelayStats::replaced_by_playback`]).
//!
//! One stream per leg (RFC 3550): everything the node sends into a leg — relayed packets
//! and playback alike — carries the node's own SSRC for that leg, with sequence numbers and
//! timestamps that continue across every switch between relayed audio and playback (and
//! across an SSRC change of the other phone). Many phones reset or mute their jitter buffer
//! on a new SSRC, or ignore it for a while, so the stream they receive never changes
//! identity; a switch starts a new talkspurt (marker bit set, timestamp advanced by the
//! wall-clock gap). Within a relayed talkspurt the source's own sequence and timestamp
//! spacing are kept, so loss, reordering and RFC 4733 event timestamps stay visible to the
//! receiver's jitter buffer.
//!
//! Recording: the left channel is what the callee hears (the caller's voice, or a playback
//! into the callee leg), the right channel what the caller hears (the other party, or a
//! prompt/music played to the caller).
//!
//! A session may start with the caller leg only (IVR before any agent is bridged) and get
//! the callee leg later ([`MediaSession::attach`]).
//!
//! Symmetric RTP (RFC 4961): a leg's destination starts as the address in its SDP and is
//! replaced by the source of the first packet that leg sends, so phones behind NAT work.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchboard_crds::callcenter::Codec;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::media::dtmf::DtmfDetector;
use crate::media::g711;
use crate::media::ports::{PortAllocator, PortError, PortLease};
use crate::media::rtp::{MediaDatagram, RtpPacket, classify};
use crate::media::tone::{ToneGenerator, ToneSpec};
use crate::media::wav::{FRAME_SAMPLES, Prompt, SAMPLE_RATE};
use crate::recording::wav_writer::{CallRecorder, RecordingSummary, Side};

/// Largest media datagram read (G.711 20 ms frames are 172 bytes).
const MAX_DATAGRAM: usize = 2048;
/// Playback packet interval: one 20 ms G.711 frame per packet.
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// Events kept for a slow subscriber before the oldest are dropped (it sees `Lagged`).
const EVENT_CAPACITY: usize = 64;

/// Why a leg's media could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no RTP ports: {0}")]
    Ports(#[from] PortError),
    #[error("cannot bind RTP/RTCP sockets on {address} after {attempts} port pairs: {source}")]
    Bind {
        address: IpAddr,
        attempts: usize,
        source: io::Error,
    },
    #[error("the {0:?} leg of this call already has media")]
    LegAlreadyAttached(Leg),
}

/// One side of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The calling party (left channel of the recording).
    Caller,
    /// The called party (right channel).
    Callee,
}

impl Leg {
    fn index(self) -> usize {
        match self {
            Leg::Caller => 0,
            Leg::Callee => 1,
        }
    }
    fn other(self) -> Leg {
        match self {
            Leg::Caller => Leg::Callee,
            Leg::Callee => Leg::Caller,
        }
    }
    /// The recording channel holding what this leg hears.
    fn heard_on(self) -> Side {
        match self {
            Leg::Caller => Side::Other,
            Leg::Callee => Side::Caller,
        }
    }
}

/// The node's sockets for one leg, on a leased port pair.
#[derive(Debug)]
pub struct MediaLeg {
    lease: PortLease,
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl MediaLeg {
    /// Leases a port pair and binds both sockets on `address`. A pair that cannot be bound
    /// (another program holds it) stays leased until a working one is found, so it is not
    /// handed straight back; every free pair of the range is tried before giving up (another
    /// program may hold a long run of them).
    /// Synchronous (no await) so a call is set up, or refused, within the handling of its
    /// INVITE; needs a tokio runtime.
    pub fn bind(ports: &PortAllocator, address: IpAddr) -> Result<MediaLeg, MediaError> {
        let mut held = Vec::new();
        let mut last_error = None;
        loop {
            let lease = match ports.allocate() {
                Ok(lease) => lease,
                Err(exhausted) => match last_error {
                    None => return Err(exhausted.into()),
                    Some(source) => {
                        return Err(MediaError::Bind {
                            address,
                            attempts: held.len(),
                            source,
                        });
                    }
                },
            };
            let rtp = bind_udp(SocketAddr::new(address, lease.rtp_port()));
            let rtcp = bind_udp(SocketAddr::new(address, lease.rtcp_port()));
            match (rtp, rtcp) {
                (Ok(rtp), Ok(rtcp)) => return Ok(MediaLeg { lease, rtp, rtcp }),
                (Err(e), _) | (_, Err(e)) => {
                    warn!(port = lease.rtp_port(), error = %e, "RTP port pair busy; trying another");
                    last_error = Some(e);
                    held.push(lease);
                }
            }
        }
    }

    pub fn rtp_port(&self) -> u16 {
        self.lease.rtp_port()
    }
}

fn bind_udp(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(address)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// What the relay knows about a leg's far end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegPeer {
    pub codec: Codec,
    /// Payload type of the audio codec on this leg.
    pub payload_type: u8,
    /// Payload type of telephone-events on this leg, if negotiated.
    pub telephone_event: Option<u8>,
    /// Where this leg's RTP goes (from SDP, then latched to the first packet's source).
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
}

impl LegPeer {
    pub fn new(
        codec: Codec,
        payload_type: u8,
        telephone_event: Option<u8>,
        rtp: Option<SocketAddr>,
    ) -> Self {
        // RTCP on the port above RTP unless told otherwise (RFC 3550 §11).
        let rtcp = rtp.and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p)));
        Self {
            codec,
            payload_type,
            telephone_event,
            rtp,
            rtcp,
        }
    }
}

/// Packet counters, per call and (summed) per node.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub caller_to_callee: AtomicU64,
    pub callee_to_caller: AtomicU64,
    pub rtcp: AtomicU64,
    pub transcoded: AtomicU64,
    pub dtmf_keys: AtomicU64,
    /// Malformed, unknown payload type, or no destination yet.
    pub dropped: AtomicU64,
    /// Packets of prompts and tones sent into a leg.
    pub playback_packets: AtomicU64,
    /// Packets of the other leg not relayed because a playback was playing into the leg.
    pub replaced_by_playback: AtomicU64,
    /// Playback packets not sent because the node does not serve ([`NodeMedia`]).
    pub playback_withheld: AtomicU64,
}

/// What the relays of all calls on a node share: the node-wide counters, and whether the
/// node serves. A standby, or an active fenced off the API server, plays nothing into its
/// calls (music on hold, prompts): the node that holds the Lease took them over, or will, and
/// plays its own; a caller would hear both. The playback keeps time meanwhile, and is heard
/// again if this node serves again. Relayed audio still flows: it only goes where the phones
/// send it.
#[derive(Debug, Clone, Default)]
pub struct NodeMedia {
    pub stats: Arc<RelayStats>,
    /// `None`: always serving (a node on its own).
    pub serving: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl NodeMedia {
    fn serving(&self) -> bool {
        self.serving
            .as_ref()
            .is_none_or(|s| s.load(Ordering::Relaxed))
    }
}

impl RelayStats {
    fn relayed(&self, from: Leg) -> &AtomicU64 {
        match from {
            Leg::Caller => &self.caller_to_callee,
            Leg::Callee => &self.callee_to_caller,
        }
    }
}

/// The node's Prometheus counters the relay feeds, resolved once per call.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// Packets and bytes from the caller (index 0) and from the callee (index 1).
    pub packets: [prometheus::IntCounter; 2],
    pub bytes: [prometheus::IntCounter; 2],
    pub rtcp: prometheus::IntCounter,
    pub dropped: prometheus::IntCounter,
}

impl RelayMetrics {
    pub fn from_sip(metrics: &crate::sip::SipMetrics) -> Self {
        let dir = |d: &str| {
            (
                metrics.rtp_packets.with_label_values(&[d]),
                metrics.rtp_bytes.with_label_values(&[d]),
            )
        };
        let (p0, b0) = dir("caller_to_callee");
        let (p1, b1) = dir("callee_to_caller");
        Self {
            packets: [p0, p1],
            bytes: [b0, b1],
            rtcp: metrics.rtcp_packets.clone(),
            dropped: metrics.media_dropped.clone(),
        }
    }
}

/// What to play into a leg.
#[derive(Debug, Clone)]
pub enum Playback {
    /// A prompt, once (IVR menu, announcement) or looped until stopped (music on hold).
    Prompt { prompt: Arc<Prompt>, looped: bool },
    /// A call-progress tone; repeating cadences play until stopped, play-once ones finish.
    Tone(ToneSpec),
}

impl Playback {
    /// The prompt once; its end is reported.
    pub fn once(prompt: Arc<Prompt>) -> Self {
        Playback::Prompt {
            prompt,
            looped: false,
        }
    }

    /// The prompt over and over until stopped (music on hold).
    pub fn looped(prompt: Arc<Prompt>) -> Self {
        Playback::Prompt {
            prompt,
            looped: true,
        }
    }

    pub fn tone(spec: ToneSpec) -> Self {
        Playback::Tone(spec)
    }
}

/// Identifies one playback within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlaybackId(pub u64);

/// How a playback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackEnd {
    /// A prompt or play-once tone played to its end (the last frame's 20 ms included).
    Finished,
    /// [`MediaSession::stop_playback`].
    Stopped,
    /// Another playback was started on the same leg.
    Replaced,
    /// The session stopped first.
    SessionEnded,
}

/// What the media of a call reports to the call logic (IVR, queue, supervisor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key pressed on a leg (RFC 4733), once per press.
    Dtmf { leg: Leg, key: char },
    PlaybackEnded {
        leg: Leg,
        id: PlaybackId,
        end: PlaybackEnd,
    },
}

/// A playback started by [`MediaSession::play`].
#[derive(Debug)]
pub struct PlaybackHandle {
    id: PlaybackId,
    leg: Leg,
    ended: oneshot::Receiver<PlaybackEnd>,
    result: Option<PlaybackEnd>,
}

impl PlaybackHandle {
    pub fn id(&self) -> PlaybackId {
        self.id
    }

    pub fn leg(&self) -> Leg {
        self.leg
    }

    /// Waits until the playback ends (cancel-safe; may be awaited again after it returned).
    pub async fn ended(&mut self) -> PlaybackEnd {
        if let Some(end) = self.result {
            return end;
        }
        // The sender is dropped without a value only when the session's task is gone.
        let end = (&mut self.ended).await.unwrap_or(PlaybackEnd::SessionEnded);
        self.result = Some(end);
        end
    }

    /// How the playback ended, if it has.
    pub fn try_ended(&mut self) -> Option<PlaybackEnd> {
        if self.result.is_none() {
            self.result = match self.ended.try_recv() {
                Ok(end) => Some(end),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(PlaybackEnd::SessionEnded),
            };
        }
        self.result
    }
}

#[derive(Debug, Default)]
struct PeerState {
    peers: [Option<LegPeer>; 2],
    /// Whether the leg's RTP / RTCP source has been latched (symmetric RTP).
    latched_rtp: [bool; 2],
    latched_rtcp: [bool; 2],
    /// The RTP address the leg's SDP gave last, so a re-INVITE that moves the media is told
    /// from one that repeats it.
    sdp_rtp: [Option<SocketAddr>; 2],
}

/// Requests from the session handle to its task.
enum Command {
    Play {
        leg: Leg,
        id: PlaybackId,
        playback: Playback,
        done: oneshot::Sender<PlaybackEnd>,
    },
    Stop {
        leg: Leg,
    },
    Attach {
        leg: Leg,
        sockets: Sockets,
    },
}

/// A running relay. Dropping it (or [`MediaSession::stop`]) stops the task and returns the
/// port pairs to the allocator.
pub struct MediaSession {
    state: Arc<Mutex<PeerState>>,
    recorder: Arc<Mutex<Option<CallRecorder>>>,
    task: JoinHandle<()>,
    leases: Vec<PortLease>,
    /// The node's RTP port per leg; 0 while a leg has no media.
    ports: [u16; 2],
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<MediaEvent>,
    next_playback: AtomicU64,
}

impl MediaSession {
    /// Starts relaying between the two legs. `stats` are this call's counters; `node` what
    /// the node's calls share.
    pub fn start(
        caller: MediaLeg,
        callee: MediaLeg,
        stats: Arc<RelayStats>,
        node: NodeMedia,
        metrics: Option<RelayMetrics>,
    ) -> MediaSession {
        Self::launch(caller, Some(callee), stats, node, metrics)
    }

    /// Starts the media of a call that has only the caller leg so far (IVR, queue): key
    /// presses are detected and prompts play; the callee leg comes with [`Self::attach`].
    pub fn start_caller_only(
        caller: MediaLeg,
        stats: Arc<RelayStats>,
        node: NodeMedia,
        metrics: Option<RelayMetrics>,
    ) -> MediaSession {
        Self::launch(caller, None, stats, node, metrics)
    }

    fn launch(
        caller: MediaLeg,
        callee: Option<MediaLeg>,
        stats: Arc<RelayStats>,
        node: NodeMedia,
        metrics: Option<RelayMetrics>,
    ) -> MediaSession {
        let state = Arc::new(Mutex::new(PeerState::default()));
        let recorder = Arc::new(Mutex::new(None));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let mut ports = [caller.rtp_port(), 0];
        let mut leases = vec![caller.lease];
        let mut sockets = [
            Some(Sockets {
                rtp: caller.rtp,
                rtcp: caller.rtcp,
            }),
            None,
        ];
        if let Some(callee) = callee {
            ports[1] = callee.rtp_port();
            leases.push(callee.lease);
            sockets[1] = Some(Sockets {
                rtp: callee.rtp,
                rtcp: callee.rtcp,
            });
        }
        let relay = Relay {
            sockets,
            state: Arc::clone(&state),
            recorder: Arc::clone(&recorder),
            stats,
            node,
            metrics,
            detectors: [DtmfDetector::new(), DtmfDetector::new()],
            streams: [OutStream::new(), OutStream::new()],
            playbacks: [None, None],
            pacing: None,
            commands: command_rx,
            events: events.clone(),
        };
        let task = tokio::spawn(relay.run());
        MediaSession {
            state,
            recorder,
            task,
            leases,
            ports,
            commands,
            events,
            next_playback: AtomicU64::new(1),
        }
    }

    /// The node's RTP port on a leg (0 while the leg has no media yet).
    pub fn local_port(&self, leg: Leg) -> u16 {
        self.ports[leg.index()]
    }

    /// Whether the leg has media sockets.
    pub fn has_leg(&self, leg: Leg) -> bool {
        self.ports[leg.index()] != 0
    }

    /// Gives a leg that the session started without (the agent bridged after the IVR) its
    /// sockets. Set its far end with [`Self::set_peer`].
    pub fn attach(&mut self, leg: Leg, media: MediaLeg) -> Result<(), MediaError> {
        if self.has_leg(leg) {
            return Err(MediaError::LegAlreadyAttached(leg));
        }
        self.ports[leg.index()] = media.rtp_port();
        self.leases.push(media.lease);
        // The task only ends when the session is stopped, so this cannot fail while `self`
        // lives; the sockets would be closed with the task anyway.
        let _ = self.commands.send(Command::Attach {
            leg,
            sockets: Sockets {
                rtp: media.rtp,
                rtcp: media.rtcp,
            },
        });
        Ok(())
    }

    /// Sets (or updates, after an answer) what a leg negotiated.
    pub fn set_peer(&self, leg: Leg, peer: LegPeer) {
        let mut state = self.state.lock();
        let i = leg.index();
        let moved = state.sdp_rtp[i] != peer.rtp;
        state.sdp_rtp[i] = peer.rtp;
        match &state.peers[i] {
            // The same SDP address again (a hold, a session refresh): keep a latched address,
            // since the phone's real source beats what its SDP claims.
            Some(old) if !moved => {
                let mut peer = peer;
                if state.latched_rtp[i] {
                    peer.rtp = old.rtp;
                }
                if state.latched_rtcp[i] {
                    peer.rtcp = old.rtcp;
                }
                state.peers[i] = Some(peer);
            }
            // New media (first SDP, or a re-INVITE that moved it, as after a takeover): send
            // there, and latch again on its first packet.
            _ => {
                state.peers[i] = Some(peer);
                state.latched_rtp[i] = false;
                state.latched_rtcp[i] = false;
            }
        }
    }

    /// Starts playing into `leg`, replacing a playback already playing there. The leg hears
    /// it instead of the other leg until it finishes or is stopped.
    pub fn play(&self, leg: Leg, playback: Playback) -> PlaybackHandle {
        let id = PlaybackId(self.next_playback.fetch_add(1, Ordering::Relaxed));
        let (done, ended) = oneshot::channel();
        // A failed send drops `done`, so the handle reports `SessionEnded`.
        let _ = self.commands.send(Command::Play {
            leg,
            id,
            playback,
            done,
        });
        PlaybackHandle {
            id,
            leg,
            ended,
            result: None,
        }
    }

    /// Stops the playback into `leg`, if any; the leg hears the other leg again.
    pub fn stop_playback(&self, leg: Leg) {
        let _ = self.commands.send(Command::Stop { leg });
    }

    /// Key presses and playback ends from now on. Each subscriber gets every event; one that
    /// falls more than 64 events behind loses the oldest (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<MediaEvent> {
        self.events.subscribe()
    }

    /// Starts recording both directions (at the answer).
    pub fn record(&self, recorder: CallRecorder) {
        *self.recorder.lock() = Some(recorder);
    }

    /// Stops relaying, releases the ports and finishes the recording.
    pub fn stop(mut self) -> Option<RecordingSummary> {
        self.task.abort();
        self.leases.clear();
        let recorder = self.recorder.lock().take();
        recorder.and_then(|r| match r.finish() {
            Ok(summary) => Some(summary),
            // Already counted and logged by the recording module.
            Err(error) => {
                warn!(%error, "recording could not be finished");
                None
            }
        })
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Sockets {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

/// Sequence/timestamp translation of the other leg's current stream into a leg's stream.
#[derive(Debug, Clone, Copy)]
struct RelaySegment {
    source_ssrc: u32,
    seq_delta: u16,
    ts_delta: u32,
    /// Our first sequence number of the segment: packets mapping before it are stale.
    first_seq: u16,
}

/// The one RTP stream the node sends into a leg.
#[derive(Debug)]
struct OutStream {
    ssrc: u32,
    /// One past the highest sequence number sent.
    next_seq: u16,
    /// Timestamp of the latest packet sent (the random origin before the first).
    last_ts: u32,
    last_sent: Option<Instant>,
    /// How relayed packets are mapped; `None` after a playback or before the first one,
    /// so the next relayed packet starts a new talkspurt.
    segment: Option<RelaySegment>,
}

impl OutStream {
    fn new() -> Self {
        // Random SSRC, sequence and timestamp origins (RFC 3550 §5.1, §8).
        Self {
            ssrc: rand::random(),
            next_seq: rand::random(),
            last_ts: rand::random(),
            last_sent: None,
            segment: None,
        }
    }

    /// The timestamp of a talkspurt starting `now`: the wall-clock time since the last
    /// packet, in whole frames and at least one (the last packet's own 20 ms).
    fn talkspurt_ts(&self, now: Instant) -> u32 {
        let Some(last) = self.last_sent else {
            return self.last_ts;
        };
        let frame = FRAME_SAMPLES as u64;
        let elapsed = now.saturating_duration_since(last).as_micros() as u64
            * u64::from(SAMPLE_RATE)
            / 1_000_000;
        let frames = ((elapsed + frame / 2) / frame).max(1);
        // RTP timestamps wrap at 2^32.
        self.last_ts.wrapping_add((frames * frame) as u32)
    }

    fn sent(&mut self, seq: u16, ts: u32, now: Instant) {
        if seq.wrapping_sub(self.next_seq) as i16 >= 0 {
            self.next_seq = seq.wrapping_add(1);
        }
        if self.last_sent.is_none() || ts.wrapping_sub(self.last_ts) as i32 > 0 {
            self.last_ts = ts;
        }
        self.last_sent = Some(now);
    }

    /// Whether a packet of the segment's source, mapping to our `seq`, means the source
    /// restarted its sequence: further back than any reordering explains (RFC 3550 A.1's
    /// MAX_MISORDER). Then it starts a new talkspurt instead of being refused as a straggler
    /// for the rest of the call.
    fn restarted(seq: u16, segment: RelaySegment) -> bool {
        const MAX_MISORDER: i32 = 100;
        i32::from(seq.wrapping_sub(segment.first_seq) as i16) < -MAX_MISORDER
    }

    /// Our (sequence, timestamp, marker) for a relayed packet; `None` for a straggler from
    /// before the current talkspurt began (it would collide with what was sent since).
    fn map_relayed(&mut self, packet: &RtpPacket<'_>, now: Instant) -> Option<(u16, u32, bool)> {
        let (seq, ts, marker) = match self.segment {
            Some(s)
                if s.source_ssrc == packet.ssrc()
                    && !Self::restarted(packet.sequence().wrapping_add(s.seq_delta), s) =>
            {
                let seq = packet.sequence().wrapping_add(s.seq_delta);
                if (seq.wrapping_sub(s.first_seq) as i16) < 0 {
                    return None;
                }
                (
                    seq,
                    packet.timestamp().wrapping_add(s.ts_delta),
                    packet.marker(),
                )
            }
            _ => {
                let seq = self.next_seq;
                let ts = self.talkspurt_ts(now);
                self.segment = Some(RelaySegment {
                    source_ssrc: packet.ssrc(),
                    seq_delta: seq.wrapping_sub(packet.sequence()),
                    ts_delta: ts.wrapping_sub(packet.timestamp()),
                    first_seq: seq,
                });
                (seq, ts, true)
            }
        };
        self.sent(seq, ts, now);
        Some((seq, ts, marker))
    }

    /// Our (sequence, timestamp) for the next playback packet.
    fn next_playback(&mut self, first: bool, now: Instant) -> (u16, u32) {
        let seq = self.next_seq;
        let ts = if first || self.last_sent.is_none() {
            self.talkspurt_ts(now)
        } else {
            self.last_ts.wrapping_add(FRAME_SAMPLES as u32)
        };
        self.segment = None;
        self.sent(seq, ts, now);
        (seq, ts)
    }
}

/// Where a playback's audio comes from.
enum PlaybackSource {
    Prompt {
        prompt: Arc<Prompt>,
        next_frame: usize,
        looped: bool,
    },
    Tone(Box<ToneGenerator>),
}

impl PlaybackSource {
    fn new(playback: Playback) -> Self {
        match playback {
            Playback::Prompt { prompt, looped } => PlaybackSource::Prompt {
                prompt,
                next_frame: 0,
                looped,
            },
            Playback::Tone(spec) => PlaybackSource::Tone(Box::new(ToneGenerator::new(spec))),
        }
    }

    /// The next 20 ms frame; `None` at the end (an empty prompt ends even when looped).
    fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]> {
        match self {
            PlaybackSource::Prompt {
                prompt,
                next_frame,
                looped,
            } => {
                if *looped && *next_frame >= prompt.frame_count() {
                    *next_frame = 0;
                }
                let frame = prompt.frame(*next_frame)?;
                *next_frame += 1;
                Some(frame)
            }
            PlaybackSource::Tone(generator) => generator.next_frame(),
        }
    }
}

struct ActivePlayback {
    id: PlaybackId,
    source: PlaybackSource,
    done: oneshot::Sender<PlaybackEnd>,
    /// Whether a packet of it has been sent (the first one carries the marker).
    sent_any: bool,
}

struct Relay {
    /// `None` for a leg the call does not have yet.
    sockets: [Option<Sockets>; 2],
    state: Arc<Mutex<PeerState>>,
    recorder: Arc<Mutex<Option<CallRecorder>>>,
    stats: Arc<RelayStats>,
    node: NodeMedia,
    metrics: Option<RelayMetrics>,
    detectors: [DtmfDetector; 2],
    /// The node's stream into each leg.
    streams: [OutStream; 2],
    playbacks: [Option<ActivePlayback>; 2],
    /// The 20 ms playback clock, running while any playback is active. Ticks are on a
    /// fixed schedule from its start (missed ticks burst), so pacing never drifts.
    pacing: Option<Interval>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: broadcast::Sender<MediaEvent>,
}

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Forward {
    /// Send these bytes to this address from the other leg's RTP or RTCP socket.
    Rtp(Vec<u8>, SocketAddr),
    Rtcp(Vec<u8>, SocketAddr),
    Drop(&'static str),
    /// Not relayed because a playback plays into the other leg.
    Replaced,
    /// Used by the node itself (recorded, keys detected) with no other leg to relay to.
    Consumed,
}

async fn recv_on(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn next_tick(pacing: &mut Option<Interval>) {
    match pacing {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Relay {
    async fn run(mut self) {
        let mut bufs = [[0u8; MAX_DATAGRAM]; 4];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let [b0, b1, b2, b3] = &mut bufs;
            let caller = self.sockets[0].as_ref();
            let callee = self.sockets[1].as_ref();
            let (leg, rtcp, received, buf) = tokio::select! {
                r = recv_on(caller.map(|s| &s.rtp), b0) => (Leg::Caller, false, r, &b0[..]),
                r = recv_on(callee.map(|s| &s.rtp), b1) => (Leg::Callee, false, r, &b1[..]),
                r = recv_on(caller.map(|s| &s.rtcp), b2) => (Leg::Caller, true, r, &b2[..]),
                r = recv_on(callee.map(|s| &s.rtcp), b3) => (Leg::Callee, true, r, &b3[..]),
                () = next_tick(&mut self.pacing) => {
                    self.play_frames().await;
                    continue;
                }
                command = self.commands.recv() => {
                    match command {
                        Some(command) => self.command(command),
                        // The session handle is gone (it aborts the task too).
                        None => return,
                    }
                    continue;
                }
                _ = tick.tick() => {
                    let mut recorder = self.recorder.lock();
                    if let Some(r) = recorder.as_mut()
                        && r.tick(Instant::now()).is_err()
                    {
                        // Counted and logged by the recorder; the call goes on unrecorded.
                        *recorder = None;
                    }
                    continue;
                }
            };
            let (len, source) = match received {
                Ok(r) => r,
                Err(error) => {
                    // ICMP unreachable from an earlier send: that peer is not there yet.
                    debug!(%error, "RTP receive error");
                    continue;
                }
            };
            let Some(datagram) = buf.get(..len) else {
                continue;
            };
            let forward = self.process(leg, rtcp, datagram, source);
            let (bytes, to) = match &forward {
                Forward::Rtp(bytes, to) | Forward::Rtcp(bytes, to) => (bytes, *to),
                Forward::Consumed => continue,
                Forward::Replaced => {
                    self.count(|s| &s.replaced_by_playback);
                    continue;
                }
                Forward::Drop(reason) => {
                    debug!(?leg, reason, "media datagram dropped");
                    self.count_dropped();
                    continue;
                }
            };
            // `process` relays only to a leg that has sockets.
            let Some(out) = self.sockets[leg.other().index()].as_ref() else {
                continue;
            };
            let socket = if matches!(forward, Forward::Rtp(..)) {
                &out.rtp
            } else {
                &out.rtcp
            };
            let sent = socket.send_to(bytes, to).await;
            match (sent, &forward) {
                (Ok(_), Forward::Rtp(bytes, _)) => {
                    self.stats.relayed(leg).fetch_add(1, Ordering::Relaxed);
                    self.node.stats.relayed(leg).fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = &self.metrics {
                        m.packets[leg.index()].inc();
                        m.bytes[leg.index()].inc_by(bytes.len() as u64);
                    }
                }
                (Ok(_), _) => {
                    self.count(|s| &s.rtcp);
                    if let Some(m) = &self.metrics {
                        m.rtcp.inc();
                    }
                }
                (Err(error), _) => {
                    debug!(%error, "cannot relay a media datagram");
                    self.count_dropped();
                }
            }
        }
    }

    fn count(&self, which: impl Fn(&RelayStats) -> &AtomicU64) {
        which(&self.stats).fetch_add(1, Ordering::Relaxed);
        which(&self.node.stats).fetch_add(1, Ordering::Relaxed);
    }

    fn count_dropped(&self) {
        self.count(|s| &s.dropped);
        if let Some(m) = &self.metrics {
            m.dropped.inc();
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Play {
                leg,
                id,
                playback,
                done,
            } => {
                self.end_playback(leg, PlaybackEnd::Replaced);
                debug!(?leg, ?id, "playback started");
                self.playbacks[leg.index()] = Some(ActivePlayback {
                    id,
                    source: PlaybackSource::new(playback),
                    done,
                    sent_any: false,
                });
                if self.pacing.is_none() {
                    // The first tick is immediate: the prompt starts without delay.
                    let mut interval = tokio::time::interval(PACKET_INTERVAL);
                    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
                    self.pacing = Some(interval);
                }
            }
            Command::Stop { leg } => self.end_playback(leg, PlaybackEnd::Stopped),
            Command::Attach { leg, sockets } => {
                let slot = &mut self.sockets[leg.index()];
                if slot.is_none() {
                    *slot = Some(sockets);
                }
            }
        }
    }

    /// Ends the playback into `leg`, if any, and tells whoever waits for it.
    fn end_playback(&mut self, leg: Leg, end: PlaybackEnd) {
        let Some(active) = self.playbacks[leg.index()].take() else {
            return;
        };
        debug!(?leg, id = ?active.id, ?end, "playback ended");
        // The handle may have been dropped: nobody waits, which is fine.
        let _ = active.done.send(end);
        let _ = self.events.send(MediaEvent::PlaybackEnded {
            leg,
            id: active.id,
            end,
        });
        if self.playbacks.iter().all(Option::is_none) {
            self.pacing = None;
        }
    }

    /// One 20 ms tick: the next frame of each active playback into its leg.
    async fn play_frames(&mut self) {
        let now = Instant::now();
        for leg in [Leg::Caller, Leg::Callee] {
            let i = leg.index();
            let Some(active) = self.playbacks[i].as_mut() else {
                continue;
            };
            let Some(frame) = active.source.next_frame() else {
                // The last frame has played for its 20 ms: the prompt is over.
                self.end_playback(leg, PlaybackEnd::Finished);
                continue;
            };
            if !self.node.serving() {
                self.count(|s| &s.playback_withheld);
                continue;
            }
            let first = !active.sent_any;
            // The playback keeps time even while the leg cannot be reached yet.
            let peer = self.state.lock().peers[i].clone();
            let (Some(peer), Some(sockets)) = (peer, self.sockets[i].as_ref()) else {
                continue;
            };
            let Some(to) = peer.rtp else {
                continue;
            };
            let mut payload = Vec::with_capacity(FRAME_SAMPLES);
            g711::encode(peer.codec, &frame, &mut payload);
            let stream = &mut self.streams[i];
            let (seq, ts) = stream.next_playback(first, now);
            let packet = RtpPacket::new(peer.payload_type, seq, ts, stream.ssrc, &payload)
                .with_marker(first)
                .to_vec();
            match sockets.rtp.send_to(&packet, to).await {
                Ok(_) => {
                    self.count(|s| &s.playback_packets);
                    if let Some(active) = self.playbacks[i].as_mut() {
                        active.sent_any = true;
                    }
                }
                Err(error) => {
                    debug!(%error, ?leg, "cannot send a playback packet");
                    self.count_dropped();
                }
            }
            self.record(leg.heard_on(), &frame);
        }
    }

    /// Adds audio to a channel of the recording, if the call is recorded.
    fn record(&self, side: Side, samples: &[i16]) {
        let mut recorder = self.recorder.lock();
        if let Some(r) = recorder.as_mut()
            && r.push(side, samples).is_err()
        {
            // Counted and logged by the recorder: stop recording, keep the call.
            *recorder = None;
        }
    }

    fn process(
        &mut self,
        from: Leg,
        rtcp_port: bool,
        datagram: &[u8],
        source: SocketAddr,
    ) -> Forward {
        let i = from.index();
        let to_leg = from.other();
        let o = to_leg.index();
        let mut state = self.state.lock();
        let classified = match classify(datagram) {
            Ok(c) => c,
            Err(_) => return Forward::Drop("malformed"),
        };
        // Latch only on a well-formed packet, so garbage cannot steer the stream.
        if rtcp_port {
            if !state.latched_rtcp[i]
                && let Some(peer) = state.peers[i].as_mut()
            {
                peer.rtcp = Some(source);
                state.latched_rtcp[i] = true;
            }
        } else if !state.latched_rtp[i]
            && let Some(peer) = state.peers[i].as_mut()
        {
            if peer.rtp != Some(source) {
                info!(?from, %source, "symmetric RTP: latched the leg's real source");
            }
            peer.rtp = Some(source);
            state.latched_rtp[i] = true;
        }
        let Some(src) = state.peers[i].clone() else {
            return Forward::Drop("leg not negotiated yet");
        };
        // The other leg counts only once it has both sockets and a negotiated far end.
        let dst = state.peers[o].clone().filter(|_| self.sockets[o].is_some());
        drop(state);
        let packet = match classified {
            MediaDatagram::Rtcp(bytes) => {
                return match dst.and_then(|d| d.rtcp) {
                    Some(to) => Forward::Rtcp(bytes.to_vec(), to),
                    None => Forward::Drop("no RTCP destination"),
                };
            }
            MediaDatagram::Rtp(_) if rtcp_port => return Forward::Drop("RTP on the RTCP port"),
            MediaDatagram::Rtp(packet) => packet,
        };
        let payload = packet.payload();
        let payload_at = payload.as_ptr() as usize - datagram.as_ptr() as usize;
        let pt = packet.payload_type();
        let replaced = self.playbacks[o].is_some();
        let now = Instant::now();
        let mut bytes = datagram.to_vec();
        if Some(pt) == src.telephone_event {
            if let Some(key) =
                self.detectors[i].on_packet(packet.timestamp(), packet.marker(), payload)
            {
                info!(?from, %key, "DTMF key pressed (RFC 4733)");
                self.count(|s| &s.dtmf_keys);
                // No subscriber is not an error: nobody is interested in keys yet.
                let _ = self.events.send(MediaEvent::Dtmf { leg: from, key });
            }
            if replaced {
                return Forward::Replaced;
            }
            let Some(dst) = dst else {
                return Forward::Consumed;
            };
            let Some(out_pt) = dst.telephone_event else {
                return Forward::Drop("telephone-event not negotiated on the other leg");
            };
            let Some(to) = dst.rtp else {
                return Forward::Drop("no RTP destination (hold)");
            };
            let Some(stream) = self.streams[o].map_relayed(&packet, now) else {
                return Forward::Drop("late packet from before a playback");
            };
            restamp(&mut bytes, out_pt, stream, self.streams[o].ssrc);
            return Forward::Rtp(bytes, to);
        }
        if pt != src.payload_type {
            return Forward::Drop("payload type not negotiated");
        }
        if replaced {
            // What the other leg hears (the playback) is recorded by the playback.
            return Forward::Replaced;
        }
        let to = match &dst {
            Some(d) => match d.rtp {
                Some(to) => Some(to),
                None => return Forward::Drop("no RTP destination (hold)"),
            },
            None => None,
        };
        if self.recorder.lock().is_some() {
            let mut samples = Vec::with_capacity(payload.len());
            g711::decode(src.codec, payload, &mut samples);
            self.record(to_leg.heard_on(), &samples);
        }
        let (Some(dst), Some(to)) = (dst, to) else {
            return Forward::Consumed;
        };
        if src.codec != dst.codec {
            if let Some(body) = bytes.get_mut(payload_at..payload_at + payload.len()) {
                g711::transcode_in_place(src.codec, dst.codec, body);
            }
            self.count(|s| &s.transcoded);
        }
        let Some(stream) = self.streams[o].map_relayed(&packet, now) else {
            return Forward::Drop("late packet from before a playback");
        };
        restamp(&mut bytes, dst.payload_type, stream, self.streams[o].ssrc);
        Forward::Rtp(bytes, to)
    }
}

/// Rewrites a relayed packet's header into the node's stream: payload type, marker,
/// sequence number, timestamp and SSRC (CSRCs, extension and padding are kept).
fn restamp(datagram: &mut [u8], pt: u8, (seq, ts, marker): (u16, u32, bool), ssrc: u32) {
    if let Some(header) = datagram.get_mut(1..12) {
        header[0] = u8::from(marker) << 7 | (pt & 0x7F);
        header[1..3].copy_from_slice(&seq.to_be_bytes());
        header[3..7].copy_from_slice(&ts.to_be_bytes());
        header[7..11].copy_from_slice(&ssrc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::TelephoneEvent;
    use crate::media::rtp::RtpPacket;

    fn rtp(pt: u8, seq: u16, marker: bool, payload: &[u8]) -> Vec<u8> {
        RtpPacket::new(pt, seq, 160 * u32::from(seq), 0x1234, payload)
            .with_marker(marker)
            .to_vec()
    }

    async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("a relayed packet within 5 s")
            .expect("receive");
        (buf[..n].to_vec(), from)
    }

    #[test]
    fn one_outgoing_stream_across_source_changes_wraps_and_stragglers() {
        let mut out = OutStream::new();
        out.next_seq = u16::MAX - 1;
        out.last_ts = u32::MAX - 200;
        let start = Instant::now();
        let payload = [0u8; 160];
        let packet =
            |ssrc, seq, ts, marker| RtpPacket::new(0, seq, ts, ssrc, &payload).with_marker(marker);
        // First packet: a talkspurt at our origins, marker set.
        let a = out.map_relayed(&packet(1, 10, 1000, false), start).unwrap();
        assert_eq!(a, (u16::MAX - 1, u32::MAX - 200, true));
        // The source's spacing is kept, across the 16/32-bit wraps.
        let b = out.map_relayed(&packet(1, 11, 1160, false), start).unwrap();
        assert_eq!(
            (b.0, b.1, b.2),
            (u16::MAX, (u32::MAX - 200).wrapping_add(160), false)
        );
        let c = out.map_relayed(&packet(1, 13, 1480, false), start).unwrap();
        assert_eq!(c.0, 1, "a lost packet stays a gap");
        // A straggler from before the talkspurt began is refused.
        assert!(out.map_relayed(&packet(1, 9, 840, false), start).is_none());
        // A source that jumps back further than reordering explains restarted its
        // sequence: a new talkspurt, not a call of refused packets.
        let mut restarted = OutStream::new();
        let r0 = restarted
            .map_relayed(&packet(7, 1000, 0, false), start)
            .unwrap();
        assert!(
            restarted
                .map_relayed(&packet(7, 950, 160, false), start)
                .is_none(),
            "50 back: a straggler"
        );
        let r1 = restarted
            .map_relayed(&packet(7, 100, 320, false), start)
            .unwrap();
        assert_eq!(r1.0, r0.0.wrapping_add(1));
        assert!(r1.2, "a restart starts a talkspurt");
        let r2 = restarted
            .map_relayed(&packet(7, 101, 480, false), start)
            .unwrap();
        assert_eq!(r2.0, r1.0.wrapping_add(1));
        // The other phone changes SSRC (transfer, re-INVITE): same stream for us, next seq,
        // timestamp advanced by the wall-clock gap, marker set.
        let later = start + Duration::from_millis(100);
        let d = out.map_relayed(&packet(2, 5000, 7, false), later).unwrap();
        assert_eq!(d.0, 2);
        assert_eq!(d.1.wrapping_sub(c.1), 800, "100 ms = 5 frames");
        assert!(d.2);
        // A playback after it continues the sequence; relayed audio after it re-anchors.
        let (seq, ts) = out.next_playback(true, later + Duration::from_millis(5));
        assert_eq!((seq, ts.wrapping_sub(d.1)), (3, 160));
        let (seq, ts) = out.next_playback(false, later + Duration::from_millis(25));
        assert_eq!((seq, ts.wrapping_sub(d.1)), (4, 320));
        let e = out
            .map_relayed(
                &packet(2, 5001, 167, false),
                later + Duration::from_millis(45),
            )
            .unwrap();
        assert_eq!(e.0, 5);
        assert_eq!(e.1.wrapping_sub(ts), 160);
        assert!(e.2, "relayed audio after a playback starts a talkspurt");
    }

    #[tokio::test]
    async fn relays_transcodes_detects_dtmf_and_drops_garbage() {
        let ports = PortAllocator::new(42_000, 42_099).unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let caller_leg = MediaLeg::bind(&ports, lo).unwrap();
        let callee_leg = MediaLeg::bind(&ports, lo).unwrap();
        let (caller_port, callee_port) = (caller_leg.rtp_port(), callee_leg.rtp_port());
        let caller_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stats = Arc::new(RelayStats::default());
        let node = NodeMedia::default();
        let registry = prometheus::Registry::new();
        let sip_metrics = crate::sip::SipMetrics::new(&registry).unwrap();
        let session = MediaSession::start(
            caller_leg,
            callee_leg,
            Arc::clone(&stats),
            node,
            Some(RelayMetrics::from_sip(&sip_metrics)),
        );
        // The caller's SDP names a wrong port: symmetric RTP must learn the real one.
        session.set_peer(
            Leg::Caller,
            LegPeer::new(
                Codec::Pcma,
                8,
                Some(101),
                Some("127.0.0.1:9".parse().unwrap()),
            ),
        );
        session.set_peer(
            Leg::Callee,
            LegPeer::new(
                Codec::Pcmu,
                0,
                Some(96),
                Some(callee_phone.local_addr().unwrap()),
            ),
        );
        let to_caller_leg = SocketAddr::new(lo, caller_port);
        let to_callee_leg = SocketAddr::new(lo, callee_port);

        // Garbage is dropped and counted, never relayed.
        caller_phone
            .send_to(b"\x00garbage", to_caller_leg)
            .await
            .unwrap();
        // A-law from the caller arrives as µ-law at the callee.
        let alaw = [g711::encode_sample(Codec::Pcma, 1000); 160];
        caller_phone
            .send_to(&rtp(8, 1, false, &alaw), to_caller_leg)
            .await
            .unwrap();
        let (packet, from) = recv(&callee_phone).await;
        assert_eq!(from, to_callee_leg, "sent from the callee leg's port");
        let parsed = RtpPacket::parse(&packet).unwrap();
        assert_eq!(parsed.payload_type(), 0);
        let expected: Vec<u8> = alaw
            .iter()
            .map(|&c| g711::encode_sample(Codec::Pcmu, g711::decode_sample(Codec::Pcma, c)))
            .collect();
        assert_eq!(parsed.payload(), &expected[..]);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);

        // A key press on the caller leg is detected and passed with the callee's event PT.
        let five = TelephoneEvent {
            event: 5,
            end: false,
            volume: 10,
            duration: 160,
        };
        caller_phone
            .send_to(&rtp(101, 2, true, &five.to_bytes()), to_caller_leg)
            .await
            .unwrap();
        let (packet, _) = recv(&callee_phone).await;
        assert_eq!(RtpPacket::parse(&packet).unwrap().payload_type(), 96);
        assert_eq!(stats.dtmf_keys.load(Ordering::Relaxed), 1);

        // The callee's µ-law goes back to where the caller really sends from.
        callee_phone
            .send_to(&rtp(0, 1, false, &[0xFF; 160]), to_callee_leg)
            .await
            .unwrap();
        let (packet, from) = recv(&caller_phone).await;
        assert_eq!(from, to_caller_leg);
        assert_eq!(RtpPacket::parse(&packet).unwrap().payload_type(), 8);
        assert_eq!(stats.caller_to_callee.load(Ordering::Relaxed), 2);
        assert_eq!(stats.callee_to_caller.load(Ordering::Relaxed), 1);
        let relayed = |d: &str| sip_metrics.rtp_packets.with_label_values(&[d]).get();
        assert_eq!(relayed("caller_to_callee"), 2);
        assert_eq!(relayed("callee_to_caller"), 1);
        assert_eq!(sip_metrics.media_dropped.get(), 1);

        // A re-INVITE repeating the caller's (wrong) SDP address keeps the latched source.
        session.set_peer(
            Leg::Caller,
            LegPeer::new(
                Codec::Pcma,
                8,
                Some(101),
                Some("127.0.0.1:9".parse().unwrap()),
            ),
        );
        callee_phone
            .send_to(&rtp(0, 2, false, &[0xFF; 160]), to_callee_leg)
            .await
            .unwrap();
        let (_, from) = recv(&caller_phone).await;
        assert_eq!(from, to_caller_leg, "still sent to the latched source");
        // One that moves the caller's media (a new phone address, as after a takeover) is
        // followed at once.
        let moved_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        session.set_peer(
            Leg::Caller,
            LegPeer::new(
                Codec::Pcma,
                8,
                Some(101),
                Some(moved_phone.local_addr().unwrap()),
            ),
        );
        callee_phone
            .send_to(&rtp(0, 3, false, &[0xFF; 160]), to_callee_leg)
            .await
            .unwrap();
        let (packet, from) = recv(&moved_phone).await;
        assert_eq!(from, to_caller_leg);
        assert_eq!(RtpPacket::parse(&packet).unwrap().payload_type(), 8);

        assert_eq!(ports.in_use(), 2);
        assert!(session.stop().is_none(), "nothing was recorded");
        assert_eq!(
            ports.in_use(),
            0,
            "stopping the call returns both port pairs"
        );
    }
}
