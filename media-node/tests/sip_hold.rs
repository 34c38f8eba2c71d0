//! re-INVITE and late offer through the B2BUA against real SIP peers (SIPp on loopback, the
//! node in-process). Seat 1001 holds the answered call with a re-INVITE (a=sendonly): the
//! node must re-INVITE seat 1002 with a=sendonly (checked by 1002's scenario), answer 1001
//! a=recvonly (checked by 1001's), and the same for the resume (a=sendrecv). Audio is played
//! only after the resume, so RTP relayed both ways (1002 echoes) shows media flows again. The
//! late offer call has no SDP in the INVITE: the node's 200 offers (callee's codec first), the
//! caller answers in the ACK, and RTP must flow both ways. After every call the node settles:
//! every call ended and every RTP port back.
//!
//! SIPp is required: these tests fail (they do not skip) when `sipp` is missing.

mod support;

use std::sync::atomic::Ordering;

use media_node::call::CallSettings;
use support::{TestNode, require_sipp};

/// Runs 1001 (`uac`) calling 1002 (`uas`, echoing RTP) to the end: both SIPp exit codes,
/// the node settled, RTP relayed both ways, one call set up.
fn call(node: &TestNode, uas: &str, uac: &str) {
    node.seat_call(uas, uac, false);
    assert_eq!(node.engine().counters().started(), 1);
}

#[test]
fn caller_holds_and_resumes_through_the_node() {
    require_sipp();
    let node = TestNode::start(CallSettings::default());
    call(&node, "call-uas-hold.xml", "call-uac-hold.xml");
}

#[test]
fn late_offer_caller_answers_in_the_ack() {
    require_sipp();
    let recordings = tempfile::tempdir().expect("recording dir");
    let node = TestNode::start(CallSettings {
        recording_dir: Some(recordings.path().to_path_buf()),
        node_name: "test-node".into(),
        ..CallSettings::default()
    });
    call(&node, "call-uas-answer.xml", "call-uac-late-offer.xml");
    // A-law caller (answered PCMA in its ACK), µ-law callee: the relay transcodes.
    let transcoded = node
        .engine()
        .relay_stats()
        .transcoded
        .load(Ordering::Relaxed);
    assert!(
        transcoded > 0,
        "PCMA caller and PCMU callee: no transcoding"
    );
    let cdr = std::fs::read_to_string(recordings.path().join("cdr.jsonl")).expect("CDR written");
    let record: serde_json::Value = serde_json::from_str(cdr.trim()).expect("one CDR line");
    assert_eq!(record["outcome"], "answered", "{record}");
    assert_eq!(record["hangupSide"], "caller", "{record}");
}
