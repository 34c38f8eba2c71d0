//! Taking over from the previous active node: the replicated records turned back into what
//! the registrar and the ACD hold. Pure conversions; the registrar and the call-center
//! runtime install the results.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_crds::seat::AgentState as ApiAgentState;
use switchboard_proto::replication::v1::{AgentRecord, AgentState, CallRecord, Registration};

use super::WallClock;
use crate::sip::registrar::Binding;

/// The registrar binding a replicated registration stands for; `None` for a record that
/// cannot be one (the follower's checks make that rare: a source that is no address).
pub fn binding(record: &Registration, clock: WallClock, now: Instant) -> Option<Binding> {
    let source: SocketAddr = record.source.parse().ok()?;
    let transport = super::hub::sip_transport(record.transport)?;
    Some(Binding {
        uri: record.contact_uri.clone(),
        expires_at: clock.instant(record.expires_at_unix_ms),
        refreshed_at: now,
        call_id: record.call_id.clone(),
        cseq: record.cseq,
        source,
        transport,
    })
}

/// An agent's state as the ACD's restore takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRestore {
    pub seat: String,
    pub state: ApiAgentState,
    pub reason: Option<String>,
    pub since: Instant,
    pub wrap_up_until: Option<Instant>,
    pub calls_today: u32,
    pub talk_today: Duration,
}

/// The agents of `records` in the order the ACD should restore them: by the time their
/// state began, so Ready agents keep their longest-idle order.
pub fn agents(records: &[AgentRecord], clock: WallClock) -> Vec<AgentRestore> {
    let mut out: Vec<AgentRestore> = records
        .iter()
        .filter_map(|r| {
            let state = match AgentState::try_from(r.state).ok()? {
                AgentState::Unspecified => return None,
                AgentState::LoggedOut => ApiAgentState::LoggedOut,
                AgentState::Ready => ApiAgentState::Ready,
                AgentState::NotReady => ApiAgentState::NotReady,
                AgentState::Ringing => ApiAgentState::Ringing,
                AgentState::Busy => ApiAgentState::Busy,
                AgentState::WrapUp => ApiAgentState::WrapUp,
            };
            Some(AgentRestore {
                seat: r.seat.clone(),
                state,
                reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
                since: clock.instant(r.since_unix_ms),
                wrap_up_until: (r.wrap_up_until_unix_ms != 0)
                    .then(|| clock.instant(r.wrap_up_until_unix_ms)),
                calls_today: r.calls_today,
                talk_today: Duration::from_millis(r.talk_ms_today),
            })
        })
        .collect();
    out.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.seat.cmp(&b.seat)));
    out
}

/// The calls of a takeover in the order to take them: established calls first (their
/// agents become Busy before any queued caller can be offered to them), then queued callers
/// by the time they entered their first queue (their order in the queues).
pub fn calls_in_order<'a>(calls: impl IntoIterator<Item = &'a CallRecord>) -> Vec<&'a CallRecord> {
    let mut calls: Vec<&CallRecord> = calls.into_iter().collect();
    calls.sort_by_key(|c| {
        (
            c.queued.is_some(),
            c.queued.as_ref().map_or(0, |q| q.enqueued_at_unix_ms),
            c.id.clone(),
        )
    });
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Transport as SipTransport;
    use switchboard_proto::replication::v1::Transport;

    #[test]
    fn registrations_and_agents_come_back_with_their_times() {
        let clock = WallClock::now();
        let now = Instant::now();
        let base = clock.unix_ms(now);
        let record = Registration {
            extension: "2001".into(),
            contact_uri: "sip:2001@10.0.0.7:5062".into(),
            expires_at_unix_ms: base + 60_000,
            call_id: "reg-1".into(),
            cseq: 7,
            source: "10.0.0.7:5062".into(),
            transport: Transport::Udp as i32,
        };
        let b = binding(&record, clock, now).expect("a binding");
        assert_eq!(b.expires_in(now), 60);
        assert_eq!((b.cseq, b.transport), (7, SipTransport::Udp));
        let broken = Registration {
            source: "nowhere".into(),
            ..record.clone()
        };
        assert_eq!(binding(&broken, clock, now), None);

        let agent = |seat: &str, state: AgentState, since: i64| AgentRecord {
            seat: seat.into(),
            state: state as i32,
            since_unix_ms: base + since,
            ..AgentRecord::default()
        };
        let restored = agents(
            &[
                agent("late", AgentState::Ready, -1_000),
                agent("early", AgentState::Ready, -9_000),
                agent("garbage", AgentState::Unspecified, 0),
                AgentRecord {
                    reason: "meal".into(),
                    wrap_up_until_unix_ms: 0,
                    ..agent("paused", AgentState::NotReady, -5_000)
                },
            ],
            clock,
        );
        let seats: Vec<&str> = restored.iter().map(|a| a.seat.as_str()).collect();
        assert_eq!(seats, ["early", "paused", "late"]);
        assert_eq!(restored[1].reason.as_deref(), Some("meal"));
        // Replicated times are whole milliseconds.
        let since = now - Duration::from_secs(9);
        assert!(
            restored[0].since.max(since) - restored[0].since.min(since) < Duration::from_millis(1)
        );
    }
}
