//! The RTP relay of one bridged call: two legs, each with an RTP/RTCP socket pair on leased
//! ports. Packets from one leg go out of the other leg's sockets (so each phone sees the node
//! as its only media peer), with the payload type rewritten, G.711 transcoded when the legs
//! chose different laws, RFC 4733 key presses detected, and both directions recorded.
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
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::media::dtmf::DtmfDetector;
use crate::media::g711;
use crate::media::ports::{PortAllocator, PortError, PortLease};
use crate::media::rtp::{MediaDatagram, classify};
use crate::recording::wav_writer::{CallRecorder, RecordingSummary, Side};

/// How many leases to try when a port of the range is taken by another program.
const BIND_ATTEMPTS: usize = 8;
/// Largest media datagram read (G.711 20 ms frames are 172 bytes).
const MAX_DATAGRAM: usize = 2048;

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
}

/// One side of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// handed straight back.
    /// Synchronous (no await) so a call is set up, or refused, within the handling of its
    /// INVITE; needs a tokio runtime.
    pub fn bind(ports: &PortAllocator, address: IpAddr) -> Result<MediaLeg, MediaError> {
        let mut held = Vec::new();
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let lease = ports.allocate()?;
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
        Err(MediaError::Bind {
            address,
            attempts: BIND_ATTEMPTS,
            source: last_error.unwrap_or_else(|| io::Error::other("no attempt made")),
        })
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

#[derive(Debug, Default)]
struct PeerState {
    peers: [Option<LegPeer>; 2],
    /// Whether the leg's RTP / RTCP source has been latched (symmetric RTP).
    latched_rtp: [bool; 2],
    latched_rtcp: [bool; 2],
}

/// A running relay. Dropping it (or [`MediaSession::stop`]) stops the task and returns both
/// port pairs to the allocator.
pub struct MediaSession {
    state: Arc<Mutex<PeerState>>,
    recorder: Arc<Mutex<Option<CallRecorder>>>,
    task: JoinHandle<()>,
    leases: Vec<PortLease>,
    ports: [u16; 2],
}

impl MediaSession {
    /// Starts relaying between the two legs. `stats` are this call's counters; `node_stats`
    /// the node-wide totals.
    pub fn start(
        caller: MediaLeg,
        callee: MediaLeg,
        stats: Arc<RelayStats>,
        node_stats: Arc<RelayStats>,
        metrics: Option<RelayMetrics>,
    ) -> MediaSession {
        let state = Arc::new(Mutex::new(PeerState::default()));
        let recorder = Arc::new(Mutex::new(None));
        let ports = [caller.rtp_port(), callee.rtp_port()];
        let leases = vec![caller.lease, callee.lease];
        let relay = Relay {
            sockets: [
                Sockets {
                    rtp: caller.rtp,
                    rtcp: caller.rtcp,
                },
                Sockets {
                    rtp: callee.rtp,
                    rtcp: callee.rtcp,
                },
            ],
            state: Arc::clone(&state),
            recorder: Arc::clone(&recorder),
            stats,
            node_stats,
            metrics,
            detectors: [DtmfDetector::new(), DtmfDetector::new()],
        };
        let task = tokio::spawn(relay.run());
        MediaSession {
            state,
            recorder,
            task,
            leases,
            ports,
        }
    }

    /// The node's RTP port on a leg.
    pub fn local_port(&self, leg: Leg) -> u16 {
        self.ports[leg.index()]
    }

    /// Sets (or updates, after an answer) what a leg negotiated.
    pub fn set_peer(&self, leg: Leg, peer: LegPeer) {
        let mut state = self.state.lock();
        let i = leg.index();
        // Keep a latched address: the phone's real source beats what its SDP claims.
        if let Some(old) = &state.peers[i] {
            let mut peer = peer;
            if state.latched_rtp[i] {
                peer.rtp = old.rtp;
            }
            if state.latched_rtcp[i] {
                peer.rtcp = old.rtcp;
            }
            state.peers[i] = Some(peer);
        } else {
            state.peers[i] = Some(peer);
        }
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

struct Relay {
    sockets: [Sockets; 2],
    state: Arc<Mutex<PeerState>>,
    recorder: Arc<Mutex<Option<CallRecorder>>>,
    stats: Arc<RelayStats>,
    node_stats: Arc<RelayStats>,
    metrics: Option<RelayMetrics>,
    detectors: [DtmfDetector; 2],
}

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Forward {
    /// Send these bytes to this address from the other leg's RTP or RTCP socket.
    Rtp(Vec<u8>, SocketAddr),
    Rtcp(Vec<u8>, SocketAddr),
    Drop(&'static str),
}

impl Relay {
    async fn run(mut self) {
        let mut bufs = [[0u8; MAX_DATAGRAM]; 4];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let [b0, b1, b2, b3] = &mut bufs;
            let (leg, rtcp, received, buf) = tokio::select! {
                r = self.sockets[0].rtp.recv_from(b0) => (Leg::Caller, false, r, &b0[..]),
                r = self.sockets[1].rtp.recv_from(b1) => (Leg::Callee, false, r, &b1[..]),
                r = self.sockets[0].rtcp.recv_from(b2) => (Leg::Caller, true, r, &b2[..]),
                r = self.sockets[1].rtcp.recv_from(b3) => (Leg::Callee, true, r, &b3[..]),
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
            let out = &self.sockets[leg.other().index()];
            let sent = match &forward {
                Forward::Rtp(bytes, to) => out.rtp.send_to(bytes, to).await,
                Forward::Rtcp(bytes, to) => out.rtcp.send_to(bytes, to).await,
                Forward::Drop(reason) => {
                    debug!(?leg, reason, "media datagram dropped");
                    self.count(|s| &s.dropped);
                    if let Some(m) = &self.metrics {
                        m.dropped.inc();
                    }
                    continue;
                }
            };
            match (sent, &forward) {
                (Ok(_), Forward::Rtp(bytes, _)) => {
                    self.stats.relayed(leg).fetch_add(1, Ordering::Relaxed);
                    self.node_stats.relayed(leg).fetch_add(1, Ordering::Relaxed);
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
                    self.count(|s| &s.dropped);
                    if let Some(m) = &self.metrics {
                        m.dropped.inc();
                    }
                }
            }
        }
    }

    fn count(&self, which: impl Fn(&RelayStats) -> &AtomicU64) {
        which(&self.stats).fetch_add(1, Ordering::Relaxed);
        which(&self.node_stats).fetch_add(1, Ordering::Relaxed);
    }

    fn process(
        &mut self,
        from: Leg,
        rtcp_port: bool,
        datagram: &[u8],
        source: SocketAddr,
    ) -> Forward {
        let i = from.index();
        let o = from.other().index();
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
        let (Some(src), Some(dst)) = (state.peers[i].clone(), state.peers[o].clone()) else {
            return Forward::Drop("leg not negotiated yet");
        };
        drop(state);
        let packet = match classified {
            MediaDatagram::Rtcp(bytes) => {
                return match dst.rtcp {
                    Some(to) => Forward::Rtcp(bytes.to_vec(), to),
                    None => Forward::Drop("no RTCP destination"),
                };
            }
            MediaDatagram::Rtp(_) if rtcp_port => return Forward::Drop("RTP on the RTCP port"),
            MediaDatagram::Rtp(packet) => packet,
        };
        let Some(to) = dst.rtp else {
            return Forward::Drop("no RTP destination (hold)");
        };
        let payload = packet.payload();
        let payload_at = payload.as_ptr() as usize - datagram.as_ptr() as usize;
        let pt = packet.payload_type();
        let mut bytes = datagram.to_vec();
        if Some(pt) == src.telephone_event {
            if let Some(key) =
                self.detectors[i].on_packet(packet.timestamp(), packet.marker(), payload)
            {
                info!(?from, %key, "DTMF key pressed (RFC 4733)");
                self.count(|s| &s.dtmf_keys);
            }
            let Some(out_pt) = dst.telephone_event else {
                return Forward::Drop("telephone-event not negotiated on the other leg");
            };
            set_payload_type(&mut bytes, out_pt);
            return Forward::Rtp(bytes, to);
        }
        if pt != src.payload_type {
            return Forward::Drop("payload type not negotiated");
        }
        let mut recorder = self.recorder.lock();
        if let Some(r) = recorder.as_mut() {
            let mut samples = Vec::with_capacity(payload.len());
            g711::decode(src.codec, payload, &mut samples);
            let side = match from {
                Leg::Caller => Side::Caller,
                Leg::Callee => Side::Other,
            };
            if r.push(side, &samples).is_err() {
                // Counted and logged by the recorder: stop recording, keep the call.
                *recorder = None;
            }
        }
        drop(recorder);
        if src.codec != dst.codec {
            if let Some(body) = bytes.get_mut(payload_at..payload_at + payload.len()) {
                g711::transcode_in_place(src.codec, dst.codec, body);
            }
            self.count(|s| &s.transcoded);
        }
        set_payload_type(&mut bytes, dst.payload_type);
        Forward::Rtp(bytes, to)
    }
}

/// Rewrites the payload type, keeping the marker bit.
fn set_payload_type(datagram: &mut [u8], pt: u8) {
    if let Some(b) = datagram.get_mut(1) {
        *b = (*b & 0x80) | (pt & 0x7F);
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
        let node = Arc::new(RelayStats::default());
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

        assert_eq!(ports.in_use(), 2);
        assert!(session.stop().is_none(), "nothing was recorded");
        assert_eq!(
            ports.in_use(),
            0,
            "stopping the call returns both port pairs"
        );
    }
}
