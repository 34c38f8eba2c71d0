//! Taking over a live call from the previous active node (docs/high-availability.md): the
//! replicated [`CallRecord`] becomes a call task on this node with new media ports, and the
//! node re-INVITEs the legs one after the other (caller first) so that their media comes
//! here. Each re-INVITE keeps the leg's SDP origin with the next version, offers the codec
//! agreed there and the direction the node last gave it, and carries this node's Contact, so
//! it is also a target refresh: the phone's later requests (its BYE) come to this node.
//!
//! The new node sends to both peers from the start (it knows where they receive); each peer
//! sends here once it accepted its re-INVITE. A leg that refuses the re-INVITE or never
//! answers it has lost the call: the node hangs up both legs. A 491 (the phone's own
//! re-INVITE crossed ours) is tried again once, after 2.1–4 s (RFC 3261 §14.1).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use switchboard_crds::callcenter::Codec;
use switchboard_proto::replication::v1::{
    CallRecord, Dialog, Direction as WireDirection, Media, RecordingSegment as WireSegment,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::center::CenterPlace;
use super::{
    AgreedAudio, CALL_QUEUE, CallEngine, CallSession, CalleeState, CallerState, DialogSide, LegSdp,
    Start, branch,
};
use crate::call::relay::{
    Leg, LegPeer, MediaError, MediaLeg, MediaSession, RelayMetrics, RelayStats,
};
use crate::recording::cdr::{CallDirection, CallOutcome};
use crate::recording::sidecar::{HangupSide, RecordingSegment};
use crate::replication::WallClock;
use crate::replication::hub::sip_transport;
use crate::sdp::{Direction, LocalMedia};

/// Why a replicated call cannot be taken over.
#[derive(Debug, Error)]
pub enum TakeoverError {
    #[error("the record has no {0}")]
    Missing(&'static str),
    #[error("{field} {value:?} is not usable")]
    Invalid { field: &'static str, value: String },
    #[error("a center call on a node without the call-center runtime")]
    NoCenter,
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// A call taken over, until both legs accepted their re-INVITE.
#[derive(Debug)]
pub(super) struct Takeover {
    /// Legs still to re-INVITE, the one in progress first.
    todo: VecDeque<Leg>,
    /// After a 491: when to try the leg again.
    pub(super) retry_at: Option<Instant>,
    retried: bool,
    began: Instant,
}

/// One leg's media as the previous node agreed it.
#[derive(Debug, Clone, PartialEq)]
struct LegMedia {
    audio: AgreedAudio,
    session_id: u64,
    session_version: u64,
    direction: Direction,
}

impl LegMedia {
    fn of(media: &Media) -> Result<Self, TakeoverError> {
        let invalid = |field, value: &dyn ToString| TakeoverError::Invalid {
            field,
            value: value.to_string(),
        };
        let remote: SocketAddr = media
            .remote_rtp
            .parse()
            .map_err(|_| invalid("remote RTP address", &media.remote_rtp))?;
        let codec = match media.codec.as_str() {
            "PCMU" => Codec::Pcmu,
            "PCMA" => Codec::Pcma,
            other => return Err(invalid("codec", &other)),
        };
        let payload_type = u8::try_from(media.payload_type)
            .ok()
            .filter(|pt| *pt < 128)
            .ok_or_else(|| invalid("payload type", &media.payload_type))?;
        let telephone_event = match media.telephone_event {
            0 => None,
            pt => Some(
                u8::try_from(pt)
                    .ok()
                    .filter(|pt| *pt < 128)
                    .ok_or_else(|| invalid("telephone-event payload type", &pt))?,
            ),
        };
        let direction = Direction::parse(&media.direction)
            .ok_or_else(|| invalid("direction", &media.direction))?;
        Ok(Self {
            audio: AgreedAudio {
                codec,
                payload_type,
                telephone_event,
                remote: Some(remote),
            },
            session_id: media.sdp_session_id,
            session_version: media.sdp_session_version,
            direction,
        })
    }

    /// The leg's SDP side on this node: the same origin and direction at this node's address
    /// and port. No SDP was sent from here yet, so the next offer has the next version.
    fn sdp(&self, address: std::net::IpAddr, rtp_port: u16) -> LegSdp {
        LegSdp {
            local: LocalMedia {
                address,
                rtp_port,
                session_id: self.session_id,
                session_version: self.session_version,
                direction: self.direction,
            },
            audio: Some(self.audio),
            last: Vec::new(),
        }
    }

    fn peer(&self) -> LegPeer {
        LegPeer::new(
            self.audio.codec,
            self.audio.payload_type,
            self.audio.telephone_event,
            self.audio.remote,
        )
    }
}

fn dialog_side(d: &Dialog) -> Result<DialogSide, TakeoverError> {
    let destination = d.destination.parse().map_err(|_| TakeoverError::Invalid {
        field: "dialog destination",
        value: d.destination.clone(),
    })?;
    let transport = sip_transport(d.transport).ok_or(TakeoverError::Invalid {
        field: "dialog transport",
        value: d.transport.to_string(),
    })?;
    if d.call_id.is_empty() || d.remote_target.is_empty() {
        return Err(TakeoverError::Missing("dialog Call-ID or remote target"));
    }
    Ok(DialogSide {
        call_id: d.call_id.clone(),
        local: d.local.clone(),
        remote: d.remote.clone(),
        remote_target: d.remote_target.clone(),
        route: d.route.clone(),
        destination,
        transport,
        local_cseq: d.local_cseq,
        remote_cseq: d.remote_cseq,
    })
}

fn utc(unix_ms: i64) -> Option<DateTime<Utc>> {
    (unix_ms > 0)
        .then(|| Utc.timestamp_millis_opt(unix_ms).single())
        .flatten()
}

/// What a replicated call is, read and checked before any port is taken.
#[derive(Debug)]
struct TakenCall {
    caller: (DialogSide, LegMedia),
    /// `None` while the caller waits in a queue.
    callee: Option<(DialogSide, LegMedia)>,
    direction: CallDirection,
    offered_at: DateTime<Utc>,
    answered_at: Option<DateTime<Utc>>,
    segments: Vec<RecordingSegment>,
}

impl TakenCall {
    fn of(record: &CallRecord) -> Result<Self, TakeoverError> {
        let leg = |dialog: &Option<Dialog>, media: &Option<Media>| -> Result<_, TakeoverError> {
            Ok((
                dialog_side(dialog.as_ref().ok_or(TakeoverError::Missing("dialog"))?)?,
                LegMedia::of(media.as_ref().ok_or(TakeoverError::Missing("media"))?)?,
            ))
        };
        let caller = leg(&record.caller, &record.caller_media)?;
        let callee = match (&record.callee, &record.queued) {
            (Some(_), None) => Some(leg(&record.callee, &record.callee_media)?),
            (None, Some(_)) if record.center => None,
            _ => return Err(TakeoverError::Missing("callee or queue place")),
        };
        let direction = match WireDirection::try_from(record.direction) {
            Ok(WireDirection::Inbound) => CallDirection::Inbound,
            Ok(WireDirection::Outbound) => CallDirection::Outbound,
            Ok(WireDirection::Internal) => CallDirection::Internal,
            _ => {
                return Err(TakeoverError::Invalid {
                    field: "direction",
                    value: record.direction.to_string(),
                });
            }
        };
        let segments = record
            .recording_segments
            .iter()
            .map(|s: &WireSegment| RecordingSegment {
                file: s.file.clone(),
                node: s.node.clone(),
                started_at: utc(s.started_at_unix_ms).unwrap_or_default(),
                ended_at: None,
            })
            .collect();
        Ok(Self {
            caller,
            callee,
            direction,
            offered_at: utc(record.offered_at_unix_ms).unwrap_or_else(Utc::now),
            answered_at: utc(record.answered_at_unix_ms),
            segments,
        })
    }
}

impl CallEngine {
    /// Takes over a call the previous active node served: new media ports (sending to both
    /// peers at once), the dialogs as they were, the agent Busy again or the caller queued
    /// again in their order, the trunk channel, a new recording segment; then the call's task
    /// re-INVITEs its legs. Queued callers must be taken over after established calls and
    /// in the order they entered their first queue.
    pub fn take_over_call(
        self: &Arc<Self>,
        record: &CallRecord,
        clock: WallClock,
    ) -> Result<(), TakeoverError> {
        let began = Instant::now();
        let call = TakenCall::of(record)?;
        let runtime = if record.center {
            Some(Arc::clone(self.center().ok_or(TakeoverError::NoCenter)?))
        } else {
            None
        };
        let address = self.advertised_ip();
        let caller_leg = MediaLeg::bind(&self.ports, self.media_bind())?;
        let callee_leg = match &call.callee {
            Some(_) => Some(MediaLeg::bind(&self.ports, self.media_bind())?),
            None => None,
        };
        let stats = Arc::new(RelayStats::default());
        let a_sdp = call.caller.1.sdp(address, caller_leg.rtp_port());
        let (caller_dialog, caller_media) = call.caller;
        let metrics = self.metrics.as_ref().map(RelayMetrics::from_sip);
        let (media, b, b_sdp, b_state) = match (call.callee, callee_leg) {
            (Some((b, callee_media)), Some(leg)) => {
                let b_sdp = callee_media.sdp(address, leg.rtp_port());
                let media = MediaSession::start(
                    caller_leg,
                    leg,
                    Arc::clone(&stats),
                    self.node_media(),
                    metrics,
                );
                media.set_peer(Leg::Callee, callee_media.peer());
                (media, b, b_sdp, CalleeState::Established)
            }
            _ => {
                let media = MediaSession::start_caller_only(
                    caller_leg,
                    Arc::clone(&stats),
                    self.node_media(),
                    metrics,
                );
                let b = DialogSide::placeholder(caller_dialog.destination, caller_dialog.transport);
                let b_sdp = LegSdp {
                    local: LocalMedia {
                        session_id: caller_media.session_id + 1,
                        session_version: 1,
                        ..a_sdp.local.clone()
                    },
                    audio: None,
                    last: Vec::new(),
                };
                (media, b, b_sdp, CalleeState::Idle)
            }
        };
        media.set_peer(Leg::Caller, caller_media.peer());

        let (sender, rx) = mpsc::channel(CALL_QUEUE);
        if b_state == CalleeState::Established {
            self.register(
                [
                    (&caller_dialog.call_id, Leg::Caller),
                    (&b.call_id, Leg::Callee),
                ],
                &sender,
            );
        } else {
            self.register_leg(&caller_dialog.call_id, Leg::Caller, &sender);
        }
        self.call_started();
        let routing = self.routing();
        let trunk = (!record.trunk.is_empty())
            .then(|| routing.trunks.get(&record.trunk).cloned())
            .flatten();
        let channel = trunk.as_ref().map(|t| routing.trunks.take_over(t));
        let takeover = Takeover {
            todo: match b_state {
                CalleeState::Established => VecDeque::from([Leg::Caller, Leg::Callee]),
                _ => VecDeque::from([Leg::Caller]),
            },
            retry_at: None,
            retried: false,
            began,
        };
        let mut session = CallSession {
            caller_ext: record.from.clone(),
            callee_ext: record.to.clone(),
            direction: call.direction,
            seat: (!record.seat.is_empty()).then(|| record.seat.clone()),
            trunk,
            channel,
            offered_at: call.offered_at,
            answered_at: call.answered_at,
            a_state: CallerState::Confirmed,
            b_state,
            b_invite_branch: branch(),
            b_invite_uri: b.remote_target.clone(),
            b_invite_cseq: b.local_cseq,
            b_codec_known: true,
            segments_before: call.segments,
            takeover: Some(takeover),
            ..CallSession::blank(
                Arc::clone(self),
                rx,
                (caller_dialog, a_sdp),
                (b, b_sdp),
                media,
                stats,
            )
        };
        match runtime {
            Some(runtime) => {
                let queued = record.queued.as_ref();
                let place = CenterPlace {
                    queue: queued
                        .map(|q| q.queue.clone())
                        .or_else(|| (!record.queue.is_empty()).then(|| record.queue.clone())),
                    since: queued.map_or(began, |q| clock.instant(q.enqueued_at_unix_ms)),
                    boost: queued.map_or(0, |q| q.priority_boost),
                    agent: (session.b_state == CalleeState::Established)
                        .then(|| session.seat.clone())
                        .flatten()
                        .map(|seat| (seat, clock.instant(record.answered_at_unix_ms))),
                    ivr_path: record.ivr_path.clone(),
                };
                session.center_take_over(runtime, sender, place, began);
            }
            None => {
                if let Some(center) = self.center() {
                    for seat in &record.direct_seats {
                        center.direct_call_started(seat);
                    }
                }
                session.direct_seats = record.direct_seats.clone();
            }
        }
        if !record.recording.is_empty() {
            session.start_recording();
        }
        info!(
            call_id = session.a.call_id,
            queued = record.queued.is_some(),
            seat = record.seat,
            "call taken over; re-INVITEing its legs"
        );
        tokio::spawn(session.run(Start::TakeOver));
        Ok(())
    }
}

impl CallSession {
    /// Re-INVITEs the next leg of a call taken over, or counts the takeover done.
    pub(super) fn takeover_next_leg(&mut self, now: Instant) {
        let Some(t) = self.takeover.as_ref() else {
            return;
        };
        let Some(&leg) = t.todo.front() else {
            let took = now.saturating_duration_since(t.began);
            self.takeover = None;
            if let Some(m) = &self.engine.metrics {
                m.calls_taken_over.with_label_values(&["resumed"]).inc();
                m.takeover_seconds.observe(took.as_secs_f64());
            }
            info!(
                call_id = self.a.call_id,
                took_ms = took.as_millis() as u64,
                "call taken over: media moved to this node"
            );
            return;
        };
        let direction = self.sdp(leg).local.direction;
        match self.reoffer(leg, direction) {
            Some(offer) => self.send_reinvite(leg, offer, None, now),
            None => self.takeover_lost(leg, "no agreed audio", now),
        }
    }

    /// A leg answered (or never answered) the takeover re-INVITE.
    pub(super) fn takeover_leg_answered(
        &mut self,
        leg: Leg,
        outcome: Result<(), u16>,
        now: Instant,
    ) {
        let Some(t) = self.takeover.as_mut() else {
            return;
        };
        if t.todo.front() != Some(&leg) {
            return;
        }
        match outcome {
            Ok(()) => {
                t.todo.pop_front();
                self.takeover_next_leg(now);
            }
            Err(491) if !t.retried => {
                t.retried = true;
                let wait = Duration::from_millis(2100 + rand::random::<u64>() % 1900);
                t.retry_at = Some(now + wait);
                info!(
                    call_id = self.a.call_id,
                    ?leg,
                    ?wait,
                    "takeover re-INVITE crossed the phone's (491); trying again"
                );
            }
            Err(status) => {
                self.takeover_lost(leg, &format!("{status} to the takeover re-INVITE"), now)
            }
        }
    }

    pub(super) fn takeover_on_timer(&mut self, now: Instant) {
        if let Some(t) = self.takeover.as_mut()
            && t.retry_at.is_some_and(|at| now >= at)
        {
            t.retry_at = None;
            self.takeover_next_leg(now);
        }
    }

    /// A leg did not take the media move: its media still goes to the dead node, so the call
    /// is lost; both legs are hung up.
    fn takeover_lost(&mut self, leg: Leg, why: &str, now: Instant) {
        self.takeover = None;
        if let Some(m) = &self.engine.metrics {
            m.calls_taken_over.with_label_values(&["lost"]).inc();
        }
        warn!(
            call_id = self.a.call_id,
            ?leg,
            why,
            "call lost in the takeover; hanging up"
        );
        if self.ending.is_some() {
            return;
        }
        self.send_bye(Leg::Caller, now);
        if self.b_state == CalleeState::Established {
            self.b_state = CalleeState::Terminated;
            self.send_bye(Leg::Callee, now);
        }
        let cause = format!("takeover failed: {why}");
        self.end(HangupSide::Node, &cause, CallOutcome::Failed, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::replication::v1::{QueuePlace, Transport};

    fn dialog(call_id: &str) -> Dialog {
        Dialog {
            call_id: call_id.into(),
            local: "<sip:2001@campus>;tag=n1".into(),
            remote: "<sip:0441@carrier>;tag=c1".into(),
            remote_target: "sip:0441@10.0.0.9:5060".into(),
            route: vec!["<sip:10.0.0.1;lr>".into()],
            destination: "10.0.0.9:5060".into(),
            transport: Transport::Udp as i32,
            local_cseq: 3,
            remote_cseq: 2,
        }
    }

    fn media(port: u16) -> Media {
        Media {
            remote_rtp: format!("10.0.0.9:{port}"),
            codec: "PCMA".into(),
            payload_type: 8,
            telephone_event: 101,
            sdp_session_id: 77,
            sdp_session_version: 4,
            direction: "sendrecv".into(),
        }
    }

    fn established() -> CallRecord {
        CallRecord {
            id: "call-1".into(),
            caller: Some(dialog("call-1")),
            caller_media: Some(media(4000)),
            callee: Some(dialog("leg-2")),
            callee_media: Some(media(4002)),
            from: "0441".into(),
            to: "2001".into(),
            direction: WireDirection::Inbound as i32,
            offered_at_unix_ms: 1_700_000_000_000,
            answered_at_unix_ms: 1_700_000_002_000,
            recording_segments: vec![WireSegment {
                file: "a.wav".into(),
                node: "campus-media-0".into(),
                started_at_unix_ms: 1_700_000_002_000,
            }],
            ..CallRecord::default()
        }
    }

    #[test]
    fn an_established_call_comes_back_with_its_dialogs_media_and_segments() {
        let call = TakenCall::of(&established()).expect("taken");
        let (dialog, media) = &call.caller;
        assert_eq!(dialog.destination, "10.0.0.9:5060".parse().expect("addr"));
        assert_eq!((dialog.local_cseq, dialog.remote_cseq), (3, 2));
        assert_eq!(dialog.route, ["<sip:10.0.0.1;lr>"]);
        assert_eq!(media.audio.codec, Codec::Pcma);
        assert_eq!(media.audio.telephone_event, Some(101));
        let sdp = media.sdp("10.1.1.1".parse().expect("ip"), 30000);
        // Same origin; the next offer from this node has the next version.
        assert_eq!((sdp.local.session_id, sdp.local.session_version), (77, 4));
        assert!(sdp.last.is_empty());
        assert!(call.callee.is_some());
        assert_eq!(call.segments.len(), 1);
        assert_eq!(call.segments[0].node, "campus-media-0");
        assert!(call.answered_at.is_some());
    }

    #[test]
    fn a_queued_caller_needs_a_center_call_and_no_callee() {
        let queued = CallRecord {
            callee: None,
            callee_media: None,
            queued: Some(QueuePlace {
                queue: "support".into(),
                enqueued_at_unix_ms: 1_700_000_001_000,
                priority_boost: 0,
            }),
            ..established()
        };
        assert!(matches!(
            TakenCall::of(&queued),
            Err(TakeoverError::Missing(_))
        ));
        let center = CallRecord {
            center: true,
            ..queued
        };
        assert!(TakenCall::of(&center).expect("taken").callee.is_none());
    }

    #[test]
    fn unusable_records_are_refused_with_what_is_wrong() {
        let broken = |f: fn(&mut CallRecord)| {
            let mut r = established();
            f(&mut r);
            TakenCall::of(&r).expect_err("refused").to_string()
        };
        assert!(broken(|r| r.caller_media = None).contains("media"));
        assert!(
            broken(|r| r
                .caller
                .as_mut()
                .into_iter()
                .for_each(|d| d.destination = "x".into()))
            .contains("destination")
        );
        assert!(
            broken(|r| r
                .callee_media
                .as_mut()
                .into_iter()
                .for_each(|m| m.codec = "G729".into()))
            .contains("codec")
        );
        assert!(
            broken(|r| r
                .caller_media
                .as_mut()
                .into_iter()
                .for_each(|m| m.payload_type = 300))
            .contains("payload type")
        );
        assert!(
            broken(|r| r
                .caller_media
                .as_mut()
                .into_iter()
                .for_each(|m| m.direction = "up".into()))
            .contains("direction")
        );
        assert!(broken(|r| r.direction = 0).contains("direction"));
    }
}
