//! Trunks against real SIP peers: the node runs in-process on 127.0.0.1, SIPp plays the
//! carrier's trunk from 127.0.0.2 (its allowed source; Linux routes all of 127/8 to lo) and the
//! seats from 127.0.0.1. Covered: an inbound trunk call through an entry point to a registered
//! seat with RTP both ways; an outbound call from seat 1001 dialing `0` + number through a trunk
//! that challenges with 401 (digest answered from the trunk's Secret files, number rewritten by
//! the dial-prefix rule); a trunk that challenges twice (403 to the seat); the channel limit
//! (503, blocked counter, gauges); entry points not served yet (480). After every test the port
//! allocator and every trunk's busy channels are back to zero, and the CDRs carry the trunk and
//! the direction.
//!
//! SIPp is required: these tests fail (they do not skip) when `sipp` is missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod support;

use media_node::call::{CallSettings, TrunkSettings};
use support::{
    SETTLE_LIMIT, Sipp, TestNode, free_media_port, free_port, free_port_on, require_sipp,
};
use switchboard_crds::callcenter::{EntryPoint, TrunkSpec};

/// The carrier's address: the trunk's `allowedSources`.
const TRUNK_IP: &str = "127.0.0.2";
/// The number of the entry point that rings seat 1002.
const FRONT_DESK: &str = "+4930555100";
/// An entry point routed to a queue (not served yet).
const SALES_QUEUE: &str = "+4930555200";

/// The shared test node with the `pstn` trunk, its Secret files and a CDR file.
struct TrunkNode {
    node: TestNode,
    records: tempfile::TempDir,
    _secrets: tempfile::TempDir,
}

impl std::ops::Deref for TrunkNode {
    type Target = TestNode;
    fn deref(&self) -> &TestNode {
        &self.node
    }
}

impl TrunkNode {
    /// `trunk_port`: where the carrier's SIPp UAS listens on [`TRUNK_IP`] (outbound calls).
    fn start(channel_limit: u32, trunk_port: u16) -> TrunkNode {
        Self::start_with(channel_limit, trunk_port, "UDP")
    }

    /// As [`Self::start`], with the trunk peer reached over `transport` (`UDP` or `TCP`).
    fn start_with(channel_limit: u32, trunk_port: u16, transport: &str) -> TrunkNode {
        let records = tempfile::tempdir().expect("records dir");
        // The trunk's Secret as the kubelet mounts it: <dir>/<trunk>/{username,password}.
        let secrets = tempfile::tempdir().expect("secrets dir");
        std::fs::create_dir_all(secrets.path().join("pstn")).expect("secret dir");
        std::fs::write(secrets.path().join("pstn/username"), "acct\n").expect("username");
        std::fs::write(secrets.path().join("pstn/password"), "s3cret\n").expect("password");
        let trunk: TrunkSpec = serde_yaml::from_str(&format!(
            "name: pstn\n\
             peer: {{host: {TRUNK_IP}, port: {trunk_port}, transport: {transport}}}\n\
             allowedSources: [{TRUNK_IP}/32]\n\
             credentials: {{secretName: pstn-credentials}}\n\
             inboundNumbers: ['{FRONT_DESK}', '{SALES_QUEUE}', '+4930555999']\n\
             dialPrefixes: [{{prefix: '0', strip: 1, prepend: '+49'}}]\n\
             channels: {{limit: {channel_limit}}}"
        ))
        .expect("trunk spec");
        let entry_points: Vec<EntryPoint> = serde_yaml::from_str(&format!(
            "[{{number: '{FRONT_DESK}', route: {{action: Seat, target: front-desk}}}},\
              {{number: '{SALES_QUEUE}', route: {{action: Queue, target: sales}}}}]"
        ))
        .expect("entry points");
        let node = TestNode::start(CallSettings {
            cdr_path: Some(records.path().join("cdr.jsonl")),
            node_name: "test-node".into(),
            trunks: TrunkSettings {
                trunks: vec![trunk],
                secrets: Vec::new(),
                secrets_dir: Some(secrets.path().to_path_buf()),
            },
            entry_points,
            seat_extensions: BTreeMap::from([("front-desk".to_string(), "1002".to_string())]),
            ..CallSettings::default()
        });
        TrunkNode {
            node,
            records,
            _secrets: secrets,
        }
    }

    fn trunk(&self) -> &Arc<media_node::call::trunks::Trunk> {
        self.engine().trunks().get("pstn").expect("trunk pstn")
    }

    /// Waits (bounded) until every call has ended, its ports are back and no trunk channel
    /// is busy.
    fn assert_settled(&self) {
        self.wait_settled(|| self.trunk().busy() == 0);
        assert_eq!(self.metric("switchboard_trunk_channels_busy"), Some(0.0));
    }

    /// Waits (bounded) until the trunk has `n` busy channels.
    fn wait_busy(&self, n: u32) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while self.trunk().busy() != n {
            assert!(
                Instant::now() < deadline,
                "trunk never had {n} busy channel(s) (has {})",
                self.trunk().busy()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of a trunk metric for `pstn`.
    fn metric(&self, name: &str) -> Option<f64> {
        self.sample(&format!("{name}{{trunk=\"pstn\"}}"))
    }

    fn cdrs(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.records.path().join("cdr.jsonl"))
            .expect("CDR file written");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("CDR is JSON"))
            .collect()
    }

    /// SIPp as the carrier (from [`TRUNK_IP`]).
    fn carrier(&self, scenario: &str, port: u16, media_port: Option<u16>, extra: &[&str]) -> Sipp {
        Sipp::spawn(self.port, TRUNK_IP, scenario, port, media_port, extra)
    }
}

fn relayed_both_ways(node: &TrunkNode) {
    let stats = node.engine().relay_stats();
    let forward = stats.caller_to_callee.load(Ordering::Relaxed);
    let back = stats.callee_to_caller.load(Ordering::Relaxed);
    eprintln!("relayed {forward} RTP packets caller→callee, {back} callee→caller");
    assert!(forward > 0, "no RTP relayed from caller to callee");
    assert!(back > 0, "no RTP relayed from callee (echo) back to caller");
}

#[test]
fn trunk_call_reaches_the_entry_points_seat_with_media_both_ways() {
    require_sipp();
    let node = TrunkNode::start(2, free_port_on(TRUNK_IP));
    let callee_port = free_port();
    node.register_callee(callee_port);
    let callee = node.seat(
        "call-uas-answer.xml",
        callee_port,
        Some(free_media_port("127.0.0.1")),
        &["-rtp_echo"],
    );
    // The seat listens before the carrier dials.
    std::thread::sleep(Duration::from_millis(300));
    let carrier = node.carrier(
        "trunk-uac-inbound.xml",
        free_port_on(TRUNK_IP),
        Some(free_media_port(TRUNK_IP)),
        &["-s", FRONT_DESK, "-d", "3000"],
    );
    carrier.assert_ok("carrier calls the front desk");
    callee.assert_ok("seat 1002 answers");
    node.assert_settled();
    relayed_both_ways(&node);
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["direction"], "inbound", "{cdr}");
    assert_eq!(cdr["trunk"], "pstn", "{cdr}");
    assert_eq!(cdr["seat"], "1002", "{cdr}");
    assert_eq!(cdr["from"], "+4940111222", "{cdr}");
    assert_eq!(cdr["outcome"], "answered", "{cdr}");
    assert_eq!(
        node.metric("switchboard_trunk_calls_blocked_total"),
        Some(0.0)
    );
    assert_eq!(node.metric("switchboard_trunk_channel_limit"), Some(2.0));
}

#[test]
fn outbound_call_answers_the_trunks_challenge_once() {
    require_sipp();
    let trunk_port = free_port_on(TRUNK_IP);
    let node = TrunkNode::start(2, trunk_port);
    let carrier = node.carrier(
        "trunk-uas-challenge.xml",
        trunk_port,
        Some(free_media_port(TRUNK_IP)),
        // The scenario checks the digest (acct / s3cret, as in the Secret files) and that
        // the dialed 0301234567 arrives as +49301234567 (strip 1, prepend +49).
        &["-rtp_echo"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let seat = node.seat(
        "call-uac-bye.xml",
        free_port(),
        Some(free_media_port("127.0.0.1")),
        &["-s", "0301234567"],
    );
    seat.assert_ok("seat 1001 dials out");
    carrier.assert_ok("carrier challenges, then answers");
    node.assert_settled();
    relayed_both_ways(&node);
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["direction"], "outbound", "{cdr}");
    assert_eq!(cdr["trunk"], "pstn", "{cdr}");
    assert_eq!(cdr["seat"], "1001", "{cdr}");
    assert_eq!(cdr["to"], "+49301234567", "{cdr}");
    assert_eq!(cdr["outcome"], "answered", "{cdr}");
}

#[test]
fn outbound_call_through_a_tcp_trunk_opens_the_connection() {
    require_sipp();
    let trunk_port = free_port_on(TRUNK_IP);
    let node = TrunkNode::start_with(2, trunk_port, "TCP");
    // The carrier listens on TCP; the node connects to it (phones are never connected to).
    let carrier = node.carrier(
        "trunk-uas-challenge.xml",
        trunk_port,
        Some(free_media_port(TRUNK_IP)),
        &["-t", "t1", "-rtp_echo"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let seat = node.seat(
        "call-uac-bye.xml",
        free_port(),
        Some(free_media_port("127.0.0.1")),
        &["-s", "0301234567"],
    );
    seat.assert_ok("seat 1001 dials out over UDP");
    carrier.assert_ok("carrier on TCP challenges, then answers");
    node.assert_settled();
    relayed_both_ways(&node);
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0]["outcome"], "answered", "{cdrs:?}");
    assert_eq!(cdrs[0]["direction"], "outbound", "{cdrs:?}");
}

#[test]
fn a_second_challenge_fails_the_outbound_call_with_403() {
    require_sipp();
    let trunk_port = free_port_on(TRUNK_IP);
    let node = TrunkNode::start(2, trunk_port);
    let carrier = node.carrier("trunk-uas-challenge-twice.xml", trunk_port, None, &[]);
    std::thread::sleep(Duration::from_millis(300));
    node.seat(
        "trunk-seat-uac-refused-403.xml",
        free_port(),
        None,
        &["-s", "0301234567"],
    )
    .assert_ok("seat 1001 refused");
    carrier.assert_ok("carrier challenges twice");
    node.assert_settled();
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0]["direction"], "outbound");
    assert_eq!(cdrs[0]["outcome"], "failed");
    assert_eq!(cdrs[0]["trunk"], "pstn");
}

#[test]
fn channel_limit_blocks_the_second_trunk_call_with_503() {
    require_sipp();
    let node = TrunkNode::start(1, free_port_on(TRUNK_IP));
    assert_eq!(node.metric("switchboard_trunk_channel_limit"), Some(1.0));
    let callee_port = free_port();
    node.register_callee(callee_port);
    let callee = node.seat(
        "call-uas-answer.xml",
        callee_port,
        Some(free_media_port("127.0.0.1")),
        &["-rtp_echo"],
    );
    std::thread::sleep(Duration::from_millis(300));
    // The first call holds the only channel for 5 s after the answer.
    let first = node.carrier(
        "trunk-uac-inbound.xml",
        free_port_on(TRUNK_IP),
        Some(free_media_port(TRUNK_IP)),
        &["-s", FRONT_DESK, "-d", "5000"],
    );
    node.wait_busy(1);
    assert_eq!(node.metric("switchboard_trunk_channels_busy"), Some(1.0));
    node.carrier(
        "trunk-uac-refused-503.xml",
        free_port_on(TRUNK_IP),
        None,
        &["-s", FRONT_DESK],
    )
    .assert_ok("second trunk call blocked");
    assert_eq!(node.trunk().blocked(), 1);
    assert_eq!(
        node.metric("switchboard_trunk_calls_blocked_total"),
        Some(1.0)
    );
    first.assert_ok("first trunk call");
    callee.assert_ok("seat 1002");
    node.assert_settled();
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 2, "{cdrs:?}");
    let blocked: Vec<_> = cdrs.iter().filter(|c| c["outcome"] == "blocked").collect();
    assert_eq!(blocked.len(), 1, "{cdrs:?}");
    assert_eq!(blocked[0]["trunk"], "pstn");
    assert_eq!(blocked[0]["direction"], "inbound");
}

#[test]
fn entry_points_not_served_yet_get_480_and_unrouted_numbers_404() {
    require_sipp();
    let node = TrunkNode::start(2, free_port_on(TRUNK_IP));
    node.carrier(
        "trunk-uac-refused-480.xml",
        free_port_on(TRUNK_IP),
        None,
        &["-s", SALES_QUEUE],
    )
    .assert_ok("queue entry point");
    node.carrier(
        "trunk-uac-refused-404.xml",
        free_port_on(TRUNK_IP),
        None,
        &["-s", "+4930555999"],
    )
    .assert_ok("inbound number without entry point");
    node.assert_settled();
    assert_eq!(node.engine().counters().started(), 0, "no call was set up");
    assert_eq!(
        node.sample("switchboard_calls_not_served_total{action=\"queue\"}"),
        Some(1.0)
    );
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 2, "{cdrs:?}");
    assert_eq!(cdrs[0]["hangupCause"], "480 Temporarily Unavailable");
    assert_eq!(cdrs[0]["direction"], "inbound");
    assert_eq!(cdrs[1]["hangupCause"], "404 Not Found");
}
