//! The B2BUA against real SIP peers: the SIP server and transport run in-process on loopback
//! ports (with calls turned on by the test's own settings), SIPp plays both seats. Seat 1002
//! registers with digest and answers (echoing RTP), seat 1001 authenticates its INVITE and
//! calls 1002, playing A-law audio from sip-tester's pcap while 1002 answers in µ-law, so the
//! relay also transcodes. Checked after every scenario: SIPp's exit status on both sides, RTP
//! relayed both ways, and the port allocator back to zero leases. One call has the caller on
//! TCP; with recording on, the WAV, sidecar and CDR are read back.
//!
//! SIPp is required: these tests fail (they do not skip) when `sipp` is missing.

mod support;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use media_node::call::CallSettings;

use support::{TestNode, assert_recording_of_the_call, free_port, require_sipp};

/// The node with calls on; with `record`, recordings (and CDRs) go to the returned directory.
fn start(record: bool) -> (TestNode, Option<tempfile::TempDir>) {
    let recordings = record.then(|| tempfile::tempdir().expect("recording dir"));
    let node = TestNode::start(CallSettings {
        recording_dir: recordings.as_ref().map(|d| d.path().to_path_buf()),
        node_name: "test-node".into(),
        ..CallSettings::default()
    });
    (node, recordings)
}

/// A call from 1001 to 1002 (see [`TestNode::seat_call`]); the A-law caller and µ-law callee
/// make the relay transcode.
fn answered_call_over(node: &TestNode, uas: &str, uac: &str, caller_tcp: bool) {
    node.seat_call(uas, uac, caller_tcp);
    let transcoded = node
        .engine()
        .relay_stats()
        .transcoded
        .load(Ordering::Relaxed);
    assert!(
        transcoded > 0,
        "A-law caller and µ-law callee: the relay must transcode"
    );
}

fn answered_call(node: &TestNode, uas: &str, uac: &str) {
    answered_call_over(node, uas, uac, false);
}

#[test]
fn seat_call_answered_caller_hangs_up() {
    require_sipp();
    let (node, _) = start(false);
    answered_call(&node, "call-uas-answer.xml", "call-uac-bye.xml");
}

#[test]
fn seat_call_answered_callee_hangs_up() {
    require_sipp();
    let (node, _) = start(false);
    answered_call(&node, "call-uas-hangup.xml", "call-uac-callee-bye.xml");
}

#[test]
fn seat_call_from_a_tcp_caller_to_a_udp_callee() {
    require_sipp();
    let (node, _) = start(false);
    answered_call_over(&node, "call-uas-answer.xml", "call-uac-bye.xml", true);
}

#[test]
fn caller_cancels_before_answer_and_hears_487() {
    require_sipp();
    let (node, recordings) = start(true);
    let callee_port = free_port();
    node.register_callee(callee_port);
    let callee = node
        .seat("call-uas-ring.xml", callee_port, None, &[])
        .listening();
    let caller = node.seat("call-uac-cancel.xml", free_port(), None, &["-s", "1002"]);
    caller.assert_ok("caller 1001 cancels");
    callee.assert_ok("callee 1002 cancelled");
    node.wait_settled(|| true);
    // An unanswered call is not recorded, but has its CDR.
    let dir = recordings.as_ref().expect("recording dir").path();
    let cdr = std::fs::read_to_string(dir.join("cdr.jsonl")).expect("CDR written");
    let record: serde_json::Value = serde_json::from_str(cdr.trim()).expect("one CDR line");
    assert_eq!(record["outcome"], "abandoned", "{record}");
    assert_eq!(record["hangupSide"], "caller", "{record}");
    assert!(record["answeredAt"].is_null(), "{record}");
    let wavs = std::fs::read_dir(dir)
        .expect("read recording dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wav"))
        .count();
    assert_eq!(wavs, 0, "nothing to record before an answer");
}

#[test]
fn call_to_unregistered_seat_is_480_and_unknown_number_404() {
    require_sipp();
    let (node, recordings) = start(true);
    node.seat(
        "call-uac-refused-480.xml",
        free_port(),
        None,
        &["-s", "1003"],
    )
    .assert_ok("call to unregistered 1003");
    node.seat(
        "call-uac-refused-404.xml",
        free_port(),
        None,
        &["-s", "4711"],
    )
    .assert_ok("call to unknown 4711");
    assert_eq!(node.engine().ports().in_use(), 0);
    assert_eq!(node.engine().counters().started(), 0, "no call was set up");
    // Refused calls still get their CDR line.
    let dir = recordings.as_ref().expect("recording dir").path();
    let cdr = std::fs::read_to_string(dir.join("cdr.jsonl")).expect("CDR written");
    let records: Vec<serde_json::Value> = cdr
        .lines()
        .map(|l| serde_json::from_str(l).expect("CDR is JSON"))
        .collect();
    assert_eq!(records.len(), 2, "{cdr}");
    assert_eq!(records[0]["to"], "1003");
    assert_eq!(records[0]["outcome"], "failed");
    assert_eq!(records[0]["hangupCause"], "480 Temporarily Unavailable");
    assert_eq!(records[1]["to"], "4711");
    assert_eq!(records[1]["hangupCause"], "404 Not Found");
}

#[test]
fn recorded_call_has_both_channels_and_the_call_length() {
    require_sipp();
    let (node, recordings) = start(true);
    answered_call(&node, "call-uas-answer.xml", "call-uac-bye.xml");
    let dir = recordings.as_ref().expect("recording dir").path();
    let mut wavs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read recording dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    assert_eq!(wavs.len(), 1, "one recording per bridged call: {wavs:?}");
    let wav_path = wavs.pop().unwrap();
    let bytes = std::fs::read(&wav_path).expect("read the recording");
    let cdr = std::fs::read_to_string(dir.join("cdr.jsonl")).expect("CDR written");
    let lines: Vec<&str> = cdr.lines().collect();
    assert_eq!(lines.len(), 1, "one CDR line per call: {cdr}");
    let record: serde_json::Value = serde_json::from_str(lines[0]).expect("CDR is JSON");
    assert_eq!(record["outcome"], "answered", "{record}");
    // The caller's pcap on the left, its echo on the right.
    assert_recording_of_the_call(&bytes, &record);

    let sidecar = std::fs::read_to_string(wav_path.with_extension("json")).expect("sidecar");
    let sidecar: serde_json::Value = serde_json::from_str(&sidecar).expect("sidecar JSON");
    assert_eq!(sidecar["hangupSide"], "caller", "{sidecar}");
    assert_eq!(sidecar["from"], "1001");
    assert_eq!(sidecar["to"], "1002");
}
