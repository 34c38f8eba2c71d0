//! What the active reports of a live call for its standby (docs/high-availability.md): the
//! call's [`CallRecord`], replaced whole at every change and removed when the call ends.
//!
//! Two kinds of call are replicated, the ones a standby can take over:
//! - an established two-party call: the caller's dialog confirmed (ACK received) and the
//!   callee's established (a B2BUA call after the 200/ACK, a center call bridged to an agent);
//! - a center call whose caller waits in a queue (dialog confirmed): its queue place, no callee.
//!
//! Calls still ringing, in the IVR, ringing a seat directly, in a survey or in voicemail are
//! not: they have no record, and a call that stops being one of the two kinds (a queued caller
//! sent to voicemail, a caller left alone for the survey) is removed as if it ended.

use switchboard_crds::callcenter::Codec;
use switchboard_proto::replication::v1::{
    CallRecord, Dialog, Direction as WireDirection, Media, QueuePlace, RecordingSegment, delta,
};

use super::{CallSession, CalleeState, CallerState, DialogSide, LegSdp};
use crate::recording::cdr::CallDirection;
use crate::replication::WallClock;
use crate::replication::hub::wire_transport;

impl CallSession {
    /// The call as a standby would take it over now; `None` when it is not a replicated kind
    /// (see the module) or something a takeover needs is unknown (no audio agreed yet).
    pub(super) fn call_record(&self, clock: WallClock) -> Option<CallRecord> {
        if self.ending.is_some() || self.a_state != CallerState::Confirmed {
            return None;
        }
        let center = self.center.as_deref();
        let established = self.b_state == CalleeState::Established;
        let queued = if established {
            None
        } else {
            let (queue, since, boost) = center?.queue_place()?;
            Some(QueuePlace {
                queue: queue.to_string(),
                enqueued_at_unix_ms: clock.unix_ms(since),
                priority_boost: boost,
            })
        };
        let (callee, callee_media) = if established {
            (Some(dialog(&self.b)), Some(media(&self.b_sdp)?))
        } else {
            (None, None)
        };
        Some(CallRecord {
            id: self.a.call_id.clone(),
            caller: Some(dialog(&self.a)),
            caller_media: Some(media(&self.a_sdp)?),
            callee,
            callee_media,
            from: self.caller_ext.clone(),
            to: self.callee_ext.clone(),
            direction: wire_direction(self.direction) as i32,
            trunk: self
                .trunk
                .as_ref()
                .map(|t| t.name().to_string())
                .unwrap_or_default(),
            seat: self.seat.clone().unwrap_or_default(),
            queue: center.and_then(|c| c.queue_name()).unwrap_or_default(),
            offered_at_unix_ms: self.offered_at.timestamp_millis(),
            answered_at_unix_ms: self.answered_at.map_or(0, |t| t.timestamp_millis()),
            // Recordings are written flat in the recordings directory: the file name is the
            // path under it.
            recording: self
                .recording
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            queued,
            ivr_path: center.map(|c| c.ivr_path()).unwrap_or_default(),
            center: center.is_some(),
            direct_seats: self.direct_seats.clone(),
            recording_segments: self
                .recording_segments(None)
                .into_iter()
                .map(|s| RecordingSegment {
                    file: s.file,
                    node: s.node,
                    started_at_unix_ms: s.started_at.timestamp_millis(),
                })
                .collect(),
        })
    }

    /// Reports the call as it is now: its record, or its removal when it is no longer a
    /// replicated kind (removing a call the journal never had sends nothing).
    pub(super) fn replicate(&self) {
        let Some(hub) = self.engine.replication() else {
            return;
        };
        match self.call_record(hub.clock()) {
            Some(record) => hub.record(delta::Change::Call(record)),
            None => hub.record(delta::Change::CallEnded(self.a.call_id.clone())),
        }
    }

    /// The call ended: its record goes.
    pub(super) fn replicate_ended(&self) {
        if let Some(hub) = self.engine.replication() {
            hub.record(delta::Change::CallEnded(self.a.call_id.clone()));
        }
    }
}

fn dialog(d: &DialogSide) -> Dialog {
    Dialog {
        call_id: d.call_id.clone(),
        local: d.local.clone(),
        remote: d.remote.clone(),
        remote_target: d.remote_target.clone(),
        route: d.route.clone(),
        destination: d.destination.to_string(),
        transport: wire_transport(d.transport) as i32,
        local_cseq: d.local_cseq,
        remote_cseq: d.remote_cseq,
    }
}

/// A leg's media; `None` before audio (with the peer's address) was agreed there.
fn media(sdp: &LegSdp) -> Option<Media> {
    let audio = sdp.audio?;
    Some(Media {
        remote_rtp: audio.remote?.to_string(),
        codec: match audio.codec {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
        .to_string(),
        payload_type: audio.payload_type.into(),
        telephone_event: audio.telephone_event.map_or(0, u32::from),
        sdp_session_id: sdp.local.session_id,
        sdp_session_version: sdp.local.session_version,
        direction: sdp.local.direction.as_str().to_string(),
    })
}

fn wire_direction(direction: CallDirection) -> WireDirection {
    match direction {
        CallDirection::Inbound => WireDirection::Inbound,
        CallDirection::Outbound => WireDirection::Outbound,
        CallDirection::Internal => WireDirection::Internal,
    }
}
