//! The replication rules, without a network: what a follower accepts, refuses, and takes
//! over with.

use proptest::prelude::*;
use switchboard_proto::replication::v1::QueuePlace;

use super::*;

fn registration(ext: u8, contact: u8, cseq: u32) -> Registration {
    Registration {
        extension: format!("10{ext:02}"),
        contact_uri: format!("sip:10{ext:02}@10.0.0.{contact}:5060"),
        expires_at_unix_ms: 1_800_000_000_000 + i64::from(cseq),
        call_id: format!("reg-{ext}"),
        cseq,
        source: format!("10.0.0.{contact}:5060"),
        transport: Transport::Udp as i32,
    }
}

fn agent(seat: u8, state: AgentState, since: i64) -> AgentRecord {
    AgentRecord {
        seat: format!("agent-{seat}"),
        state: state as i32,
        reason: String::new(),
        since_unix_ms: since,
        calls_today: 0,
        talk_ms_today: 0,
        wrap_up_until_unix_ms: 0,
    }
}

fn dialog(call_id: &str, cseq: u32) -> Dialog {
    Dialog {
        call_id: call_id.to_string(),
        local: "<sip:300@campus>;tag=node".into(),
        remote: "<sip:+4930555@carrier>;tag=peer".into(),
        remote_target: "sip:+4930555@192.0.2.10:5060".into(),
        route: vec![],
        destination: "192.0.2.10:5060".into(),
        transport: Transport::Udp as i32,
        local_cseq: cseq,
        remote_cseq: 1,
    }
}

fn media(port: u16, version: u64) -> Media {
    Media {
        remote_rtp: format!("192.0.2.10:{port}"),
        codec: "PCMU".into(),
        payload_type: 0,
        telephone_event: 101,
        sdp_session_id: 42,
        sdp_session_version: version,
        direction: "sendrecv".into(),
    }
}

/// Call `n`: established with an agent when `answered`, else waiting in `support`.
fn call(n: u8, answered: bool, version: u64) -> CallRecord {
    let id = format!("call-{n}");
    CallRecord {
        id: id.clone(),
        caller: Some(dialog(&id, 1)),
        caller_media: Some(media(40_000 + u16::from(n), version)),
        callee: answered.then(|| dialog(&format!("{id}-agent"), 1)),
        callee_media: answered.then(|| media(41_000, version)),
        from: "+4930555".into(),
        to: "300".into(),
        direction: switchboard_proto::replication::v1::Direction::Inbound as i32,
        queued: (!answered).then(|| QueuePlace {
            queue: "support".into(),
            enqueued_at_unix_ms: 1_800_000_000_000 + i64::from(n),
            priority_boost: 0,
        }),
        ..CallRecord::default()
    }
}

fn change_strategy() -> impl Strategy<Value = delta::Change> {
    prop_oneof![
        (0..4u8, 0..3u8, 1..50u32)
            .prop_map(|(e, c, s)| delta::Change::Registration(registration(e, c, s))),
        (0..4u8, 0..3u8).prop_map(|(e, c)| {
            let r = registration(e, c, 1);
            registration_removed(&r.extension, &r.contact_uri)
        }),
        (0..4u8, 1..7i32, 0..1000i64).prop_map(|(s, st, t)| {
            delta::Change::Agent(agent(s, AgentState::try_from(st).expect("1..7"), t))
        }),
        (0..5u8, any::<bool>(), 1..9u64).prop_map(|(n, a, v)| delta::Change::Call(call(n, a, v))),
        (0..5u8).prop_map(|n| delta::Change::CallEnded(format!("call-{n}"))),
    ]
}

/// The active's journal after `changes`, and the messages of one stream opened after the
/// first `open_at` of them.
fn stream_of(
    changes: &[delta::Change],
    open_at: usize,
    term: i64,
) -> (Journal, Vec<ReplicationMessage>) {
    let mut journal = Journal::default();
    let mut messages = Vec::new();
    let mut stream = None;
    for (i, change) in changes.iter().enumerate() {
        if i == open_at {
            let (s, first) = FollowerStream::open(journal.snapshot(), term, i as i64);
            messages.push(first);
            stream = Some(s);
        }
        if let Some(delta) = journal.record(change.clone()).expect("valid change")
            && let Some(s) = stream.as_mut()
        {
            messages.push(s.delta(delta, i as i64));
        }
    }
    if stream.is_none() {
        messages.push(FollowerStream::open(journal.snapshot(), term, 0).1);
    }
    (journal, messages)
}

proptest! {
    /// A follower that joins at any point, snapshot then deltas, ends with the active's
    /// state, also after the messages went through the wire format.
    #[test]
    fn a_follower_ends_with_the_actives_state(
        changes in proptest::collection::vec(change_strategy(), 0..60),
        open_at in 0..60usize,
    ) {
        let (journal, messages) = stream_of(&changes, open_at.min(changes.len()), 3);
        let mut follower = Follower::new();
        for m in &messages {
            follower.receive_bytes(&m.encode_to_vec()).expect("in-order messages apply");
        }
        prop_assert_eq!(follower.state(), Some(journal.state()));
        prop_assert_eq!(follower.readiness(0, Duration::from_secs(5)), Readiness::Ready);
    }

    /// Any bytes at all: refused or applied, never a panic, and a refused message leaves
    /// the state exactly as it was.
    #[test]
    fn garbage_is_refused_whole(
        changes in proptest::collection::vec(change_strategy(), 0..20),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let (_, messages) = stream_of(&changes, 0, 1);
        let mut follower = Follower::new();
        for m in &messages {
            follower.receive(m).expect("in order");
        }
        let before = follower.state().cloned();
        if follower.receive_bytes(&garbage).is_err() {
            prop_assert_eq!(follower.state().cloned(), before);
        }
    }

    /// A corrupted but decodable message (a field of a record emptied, a sequence moved)
    /// is refused whole.
    #[test]
    fn a_damaged_message_changes_nothing(
        changes in proptest::collection::vec(change_strategy(), 1..20),
        damage in 0..4u8,
    ) {
        let (_, messages) = stream_of(&changes, 0, 1);
        let mut follower = Follower::new();
        follower.receive(&messages[0]).expect("snapshot");
        let before = follower.state().cloned();
        let mut next = FollowerStream { term: 1, sent: 1 }.delta(
            Delta { change: Some(delta::Change::Call(call(9, true, 1))) },
            0,
        );
        match damage {
            0 => next.sequence += 1,
            1 => next.term = 0,
            2 => {
                if let Some(replication_message::Body::Delta(Delta {
                    change: Some(delta::Change::Call(c)),
                })) = next.body.as_mut()
                {
                    c.caller_media = None;
                }
            }
            _ => {
                if let Some(replication_message::Body::Delta(Delta {
                    change: Some(delta::Change::Call(c)),
                })) = next.body.as_mut()
                {
                    c.queued = Some(QueuePlace { queue: "support".into(), ..QueuePlace::default() });
                }
            }
        }
        prop_assert!(follower.receive(&next).is_err());
        prop_assert_eq!(follower.state().cloned(), before);
    }
}

#[test]
fn a_stream_must_open_with_a_snapshot_and_stay_in_order() {
    let changes = [
        delta::Change::Registration(registration(1, 1, 1)),
        delta::Change::Agent(agent(1, AgentState::Ready, 5)),
        delta::Change::Call(call(1, false, 1)),
    ];
    let (_, messages) = stream_of(&changes, 1, 2);
    assert_eq!(messages.len(), 3, "a snapshot and two deltas");
    let mut follower = Follower::new();
    assert_eq!(
        follower.receive(&messages[1]),
        Err(ReplicationError::OutOfOrder {
            expected: 1,
            got: 2
        })
    );
    let mut heartbeat_first = FollowerStream { term: 2, sent: 0 };
    assert_eq!(
        follower.receive(&heartbeat_first.heartbeat(0)),
        Err(ReplicationError::NoSnapshot(1))
    );
    follower.receive(&messages[0]).expect("snapshot");
    assert_eq!(
        follower.receive(&messages[2]),
        Err(ReplicationError::OutOfOrder {
            expected: 2,
            got: 3
        }),
        "a gap"
    );
    follower.receive(&messages[1]).expect("next");
    assert_eq!(
        follower.receive(&messages[1]),
        Err(ReplicationError::OutOfOrder {
            expected: 3,
            got: 2
        }),
        "a repeat"
    );
    // After a refusal the stream is given up: not ready until a fresh snapshot.
    follower.resync("gap");
    assert!(matches!(
        follower.readiness(0, Duration::from_secs(5)),
        Readiness::NotReady {
            reason: "ReplicationLost",
            ..
        }
    ));
    let state_kept = follower.state().cloned();
    assert!(
        state_kept.is_some(),
        "the last good state stays until replaced"
    );
    let mut journal = Journal::default();
    for c in &changes {
        journal.record(c.clone()).expect("valid");
    }
    let (_, fresh) = FollowerStream::open(journal.snapshot(), 2, 10);
    follower.receive(&fresh).expect("fresh snapshot");
    assert_eq!(follower.state(), Some(journal.state()));
    assert_eq!(
        follower.readiness(10, Duration::from_secs(5)),
        Readiness::Ready
    );
}

#[test]
fn an_older_term_is_refused_and_a_term_changes_only_with_a_new_stream() {
    let journal = Journal::default();
    let mut follower = Follower::new();
    follower
        .receive(&FollowerStream::open(journal.snapshot(), 5, 0).1)
        .expect("term 5");
    // The deposed active of term 4 still sends: refused, whatever its sequence.
    follower.resync("reconnect");
    let stale = FollowerStream::open(journal.snapshot(), 4, 1).1;
    assert_eq!(
        follower.receive(&stale),
        Err(ReplicationError::StaleTerm { got: 4, seen: 5 })
    );
    // A new stream of term 5 again is fine; a delta claiming term 6 inside it is not.
    let (mut stream, first) = FollowerStream::open(journal.snapshot(), 5, 2);
    follower.receive(&first).expect("same term");
    let mut delta = stream.delta(
        Delta {
            change: Some(delta::Change::Agent(agent(1, AgentState::Ready, 0))),
        },
        3,
    );
    delta.term = 6;
    assert!(matches!(
        follower.receive(&delta),
        Err(ReplicationError::Invalid { .. })
    ));
}

#[test]
fn a_standby_takes_over_only_with_state_of_the_term_before_its_own() {
    let journal = Journal::default();
    let mut follower = Follower::new();
    assert_eq!(follower.takeover(1), None, "nothing received");
    follower
        .receive(&FollowerStream::open(journal.snapshot(), 7, 0).1)
        .expect("term 7");
    assert!(follower.takeover(8).is_some(), "took the Lease from term 7");
    assert_eq!(
        follower.takeover(9),
        None,
        "a term in between: state too old"
    );
    assert_eq!(follower.takeover(7), None, "not a new term");
    assert_eq!(Follower::new().takeover(i64::MIN), None);
}

#[test]
fn lag_and_readiness_follow_the_last_message() {
    let journal = Journal::default();
    let mut follower = Follower::new();
    assert_eq!(follower.lag(1_000), None);
    assert!(matches!(
        follower.readiness(0, Duration::from_secs(2)),
        Readiness::NotReady {
            reason: "NoReplication",
            ..
        }
    ));
    let (mut stream, first) = FollowerStream::open(journal.snapshot(), 1, 1_000);
    follower.receive(&first).expect("snapshot");
    follower
        .receive(&stream.heartbeat(1_900))
        .expect("heartbeat");
    // A handover notice is taken in order like a heartbeat; the state stays.
    let state = follower.state().cloned();
    follower
        .receive(&stream.handed_over(2_000))
        .expect("handed over");
    assert_eq!(follower.state().cloned(), state);
    assert_eq!(follower.lag(2_500), Some(Duration::from_millis(500)));
    assert_eq!(
        follower.lag(1_000),
        Some(Duration::ZERO),
        "clock skew clamps"
    );
    assert_eq!(
        follower.readiness(3_000, Duration::from_secs(2)),
        Readiness::Ready
    );
    assert!(matches!(
        follower.readiness(4_500, Duration::from_secs(2)),
        Readiness::NotReady {
            reason: "ReplicationLagging",
            ..
        }
    ));
}

#[test]
fn the_journal_sends_only_real_changes_and_refuses_nonsense() {
    let mut journal = Journal::default();
    let ready = delta::Change::Agent(agent(1, AgentState::Ready, 5));
    assert!(journal.record(ready.clone()).expect("valid").is_some());
    assert_eq!(journal.record(ready).expect("valid"), None, "no change");
    assert_eq!(
        journal
            .record(delta::Change::CallEnded("never-there".into()))
            .expect("valid"),
        None
    );
    let mut bad = registration(1, 1, 1);
    bad.source = "not an address".into();
    assert!(journal.record(delta::Change::Registration(bad)).is_err());
    let mut both = call(1, true, 1);
    both.queued = call(1, false, 1).queued;
    assert!(journal.record(delta::Change::Call(both)).is_err());
    assert!(journal.state().calls.is_empty());
}

#[test]
fn a_snapshot_with_a_duplicate_or_bad_record_is_refused_whole() {
    let snapshot = Snapshot {
        config_generation: 3,
        registrations: vec![registration(1, 1, 1)],
        agents: vec![
            agent(1, AgentState::Ready, 0),
            agent(1, AgentState::Busy, 0),
        ],
        calls: vec![],
        nonce_key: vec![],
    };
    let message = ReplicationMessage {
        sequence: 1,
        term: 1,
        sent_at_unix_ms: 0,
        body: Some(replication_message::Body::Snapshot(snapshot)),
    };
    let mut follower = Follower::new();
    assert!(matches!(
        follower.receive(&message),
        Err(ReplicationError::Invalid { .. })
    ));
    assert_eq!(follower.state(), None);
    let mut unknown_state = agent(2, AgentState::Ready, 0);
    unknown_state.state = 99;
    let message = ReplicationMessage {
        body: Some(replication_message::Body::Snapshot(Snapshot {
            agents: vec![unknown_state],
            ..Snapshot::default()
        })),
        ..message
    };
    assert!(follower.receive(&message).is_err());
    assert_eq!(follower.state(), None);
}

#[test]
fn the_snapshot_carries_the_nonce_key_and_a_key_of_the_wrong_size_is_refused() {
    let key = crate::sip::digest::NonceKey([0x5a; 64]);
    let mut journal = Journal::default();
    let without = journal.snapshot();
    assert!(without.nonce_key.is_empty(), "none set: none sent");
    journal.set_nonce_key(key);
    let snapshot = journal.snapshot();
    assert_eq!(snapshot.nonce_key, vec![0x5a; 64]);
    // The key is a secret: the snapshot's Debug names its size only.
    let shown = format!("{snapshot:?}");
    assert!(shown.contains("nonce_key: (64 bytes)"), "{shown}");
    assert!(!shown.contains("90, 90"), "{shown}");
    assert!(!format!("{:?}", journal.state()).contains("90, 90"));

    let opening = |snapshot: Snapshot| ReplicationMessage {
        sequence: 1,
        term: 1,
        sent_at_unix_ms: 0,
        body: Some(replication_message::Body::Snapshot(snapshot)),
    };
    let mut follower = Follower::new();
    follower
        .receive(&opening(snapshot))
        .expect("a good snapshot");
    assert_eq!(follower.state().and_then(|s| s.nonce_key), Some(key));
    // A sender that does not share its key: the follower has none.
    let mut older = Follower::new();
    older.receive(&opening(without)).expect("a good snapshot");
    assert_eq!(older.state().and_then(|s| s.nonce_key), None);
    for size in [1, 63, 65] {
        let mut follower = Follower::new();
        let bad = Snapshot {
            nonce_key: vec![1; size],
            ..Snapshot::default()
        };
        assert!(
            matches!(
                follower.receive(&opening(bad)),
                Err(ReplicationError::Invalid { .. })
            ),
            "{size} bytes"
        );
        assert_eq!(follower.state(), None);
    }
}
