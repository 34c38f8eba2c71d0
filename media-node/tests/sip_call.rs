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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use media_node::call::CallSettings;
use media_node::media::ports::PortAllocator;
use media_node::media::wav;
use media_node::sip::digest::{DEFAULT_NONCE_LIFETIME, ha1};
use media_node::sip::{
    RegistrarPolicy, SeatAccount, SipListeners, SipMetrics, SipServer, SipSettings,
};
use support::{REALM, Sipp, free_media_port, free_port, free_rtp_range, require_sipp};
use switchboard_crds::callcenter::Codec;

/// Longest wait for the node to settle after a scenario (ports released, call ended).
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// The node in-process: a runtime serving SIP on loopback with calls on.
struct TestNode {
    runtime: tokio::runtime::Runtime,
    server: Arc<SipServer>,
    port: u16,
    recordings: Option<tempfile::TempDir>,
}

impl TestNode {
    fn start(record: bool) -> TestNode {
        let seats = ["1001", "1002", "1003"]
            .into_iter()
            .map(|ext| SeatAccount {
                extension: ext.into(),
                ha1: ha1(ext, REALM, &format!("practice-{ext}")),
                max_contacts: 2,
            })
            .collect();
        let settings = SipSettings {
            realm: REALM.into(),
            seats,
            policy: RegistrarPolicy::default(),
            nonce_lifetime: DEFAULT_NONCE_LIFETIME,
        };
        let recordings = record.then(|| tempfile::tempdir().expect("recording dir"));
        let (min, max) = free_rtp_range(40);
        let calls = CallSettings {
            ports: Some(PortAllocator::new(min, max).expect("RTP range")),
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            advertised_address: Some("127.0.0.1".parse().expect("an IP address")),
            recording_dir: recordings.as_ref().map(|d| d.path().to_path_buf()),
            node_name: "test-node".into(),
            ..CallSettings::default()
        };
        let metrics = SipMetrics::new(&prometheus::Registry::new()).expect("metrics");
        let server = Arc::new(
            SipServer::new(settings, metrics, Instant::now())
                .with_calls(calls)
                .expect("calls on"),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}")
            .parse()
            .expect("a socket address");
        let listeners = runtime
            .block_on(SipListeners::bind(addr, addr))
            .expect("bind SIP");
        runtime.spawn(listeners.serve(Arc::clone(&server)));
        TestNode {
            runtime,
            server,
            port,
            recordings,
        }
    }

    fn engine(&self) -> &Arc<media_node::call::CallEngine> {
        self.server.calls().expect("calls are on")
    }

    /// Waits (bounded) until every call has ended and its ports are back.
    fn assert_settled(&self) {
        let engine = self.engine();
        let deadline = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < deadline {
            if engine.ports().in_use() == 0
                && engine.counters().started() == engine.counters().ended()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "node did not settle: {} port pair(s) in use, {} call(s) started, {} ended",
            engine.ports().in_use(),
            engine.counters().started(),
            engine.counters().ended()
        );
    }

    /// Seat 1002 registers from `port` (where its answering scenario will then listen).
    fn register_callee(&self, port: u16) {
        let run = self.sipp("call-register-1002.xml", port, None, &[]);
        run.assert_ok("register 1002");
    }

    fn sipp(&self, scenario: &str, port: u16, media_port: Option<u16>, extra: &[&str]) -> Sipp {
        Sipp::spawn(self.port, "127.0.0.1", scenario, port, media_port, extra)
    }

    /// As [`Self::sipp`], over TCP (`-t t1`).
    fn sipp_tcp(&self, scenario: &str, port: u16, media_port: Option<u16>, extra: &[&str]) -> Sipp {
        let mut args = vec!["-t", "t1"];
        args.extend_from_slice(extra);
        Sipp::spawn(self.port, "127.0.0.1", scenario, port, media_port, &args)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Stops the transport and every call task (their sockets close with them).
        let runtime = std::mem::replace(
            &mut self.runtime,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        );
        runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

fn answered_call(node: &TestNode, uas: &str, uac: &str) {
    answered_call_over(node, uas, uac, false);
}

/// As [`answered_call`]; with `caller_tcp` the caller's leg runs over TCP.
fn answered_call_over(node: &TestNode, uas: &str, uac: &str, caller_tcp: bool) {
    let callee_port = free_port();
    node.register_callee(callee_port);
    let callee = node.sipp(
        uas,
        callee_port,
        Some(free_media_port("127.0.0.1")),
        &["-rtp_echo"],
    );
    // The callee listens before the caller dials.
    std::thread::sleep(Duration::from_millis(300));
    let caller = if caller_tcp {
        node.sipp_tcp(
            uac,
            free_port(),
            Some(free_media_port("127.0.0.1")),
            &["-s", "1002"],
        )
    } else {
        node.sipp(
            uac,
            free_port(),
            Some(free_media_port("127.0.0.1")),
            &["-s", "1002"],
        )
    };
    caller.assert_ok("caller 1001");
    callee.assert_ok("callee 1002");
    node.assert_settled();
    let stats = node.engine().relay_stats();
    let forward = stats.caller_to_callee.load(Ordering::Relaxed);
    let back = stats.callee_to_caller.load(Ordering::Relaxed);
    let transcoded = stats.transcoded.load(Ordering::Relaxed);
    eprintln!(
        "relayed {forward} RTP packets caller→callee, {back} callee→caller, {transcoded} transcoded"
    );
    assert!(forward > 0, "no RTP relayed from caller to callee");
    assert!(back > 0, "no RTP relayed from callee (echo) back to caller");
    assert!(
        transcoded > 0,
        "A-law caller and µ-law callee: the relay must transcode"
    );
}

#[test]
fn seat_call_answered_caller_hangs_up() {
    require_sipp();
    let node = TestNode::start(false);
    answered_call(&node, "call-uas-answer.xml", "call-uac-bye.xml");
}

#[test]
fn seat_call_answered_callee_hangs_up() {
    require_sipp();
    let node = TestNode::start(false);
    answered_call(&node, "call-uas-hangup.xml", "call-uac-callee-bye.xml");
}

#[test]
fn seat_call_from_a_tcp_caller_to_a_udp_callee() {
    require_sipp();
    let node = TestNode::start(false);
    answered_call_over(&node, "call-uas-answer.xml", "call-uac-bye.xml", true);
}

#[test]
fn caller_cancels_before_answer_and_hears_487() {
    require_sipp();
    let node = TestNode::start(true);
    let callee_port = free_port();
    node.register_callee(callee_port);
    let callee = node.sipp("call-uas-ring.xml", callee_port, None, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = node.sipp("call-uac-cancel.xml", free_port(), None, &["-s", "1002"]);
    caller.assert_ok("caller 1001 cancels");
    callee.assert_ok("callee 1002 cancelled");
    node.assert_settled();
    // An unanswered call is not recorded, but has its CDR.
    let dir = node.recordings.as_ref().expect("recording dir").path();
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
    let node = TestNode::start(true);
    node.sipp(
        "call-uac-refused-480.xml",
        free_port(),
        None,
        &["-s", "1003"],
    )
    .assert_ok("call to unregistered 1003");
    node.sipp(
        "call-uac-refused-404.xml",
        free_port(),
        None,
        &["-s", "4711"],
    )
    .assert_ok("call to unknown 4711");
    assert_eq!(node.engine().ports().in_use(), 0);
    assert_eq!(node.engine().counters().started(), 0, "no call was set up");
    // Refused calls still get their CDR line.
    let dir = node.recordings.as_ref().expect("recording dir").path();
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
    let node = TestNode::start(true);
    answered_call(&node, "call-uas-answer.xml", "call-uac-bye.xml");
    let dir = node.recordings.as_ref().expect("recording dir").path();
    let mut wavs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read recording dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    assert_eq!(wavs.len(), 1, "one recording per bridged call: {wavs:?}");
    let wav_path = wavs.pop().unwrap();
    let bytes = std::fs::read(&wav_path).expect("read the recording");
    let view = wav::parse(&bytes).expect("a valid WAV");
    assert_eq!(view.format.channels, 2);
    assert_eq!(view.format.sample_rate, 8000);

    // The call's length as the node logged it (answer to hang-up) in the CDR.
    let cdr = std::fs::read_to_string(dir.join("cdr.jsonl")).expect("CDR written");
    let lines: Vec<&str> = cdr.lines().collect();
    assert_eq!(lines.len(), 1, "one CDR line per call: {cdr}");
    let record: serde_json::Value = serde_json::from_str(lines[0]).expect("CDR is JSON");
    assert_eq!(record["outcome"], "answered", "{record}");
    let answered: chrono::DateTime<chrono::Utc> =
        record["answeredAt"].as_str().unwrap().parse().unwrap();
    let ended: chrono::DateTime<chrono::Utc> = record["endedAt"].as_str().unwrap().parse().unwrap();
    let call_ms = (ended - answered).num_milliseconds() as f64;
    let wav_ms = view.frames() as f64 / 8.0;
    // Audio starts a moment after the answer and the last frames may be in flight: allow
    // a second either way.
    assert!(
        (wav_ms - call_ms).abs() < 1000.0,
        "recording {wav_ms} ms vs call {call_ms} ms"
    );

    // Both channels carry audio: the caller's pcap on the left, its echo on the right.
    let samples: Vec<i16> = view
        .data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let energy = |channel: usize| -> u64 {
        samples
            .iter()
            .skip(channel)
            .step_by(2)
            .map(|s| u64::from(s.unsigned_abs()))
            .sum()
    };
    assert!(energy(0) > 0, "caller channel is silent");
    assert!(energy(1) > 0, "callee channel is silent");

    let sidecar = std::fs::read_to_string(wav_path.with_extension("json")).expect("sidecar");
    let sidecar: serde_json::Value = serde_json::from_str(&sidecar).expect("sidecar JSON");
    assert_eq!(sidecar["hangupSide"], "caller", "{sidecar}");
    assert_eq!(sidecar["from"], "1001");
    assert_eq!(sidecar["to"], "1002");
}
