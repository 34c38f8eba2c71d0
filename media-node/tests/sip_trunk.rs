//! Trunks against real SIP peers: the node runs in-process on 127.0.0.1, SIPp plays the
//! carrier's trunk from 127.0.0.2 (its allowed source; Linux routes all of 127/8 to lo) and the
//! seats from 127.0.0.1. Covered: an inbound trunk call through an entry point to a registered
//! seat with RTP both ways; an outbound call from seat 1001 dialing `0` + number through a trunk
//! that challenges with 401 (digest answered from the trunk's Secret files, number rewritten by
//! the dial-prefix rule); a trunk that challenges twice (403 to the seat); the channel limit
//! (503, blocked counter, gauges); entry points not served yet (480); an inbound call the seat
//! hangs up; an inbound call the carrier cancels while the seat rings (487 both ways); a
//! recorded inbound call read back from its WAV; an outbound call answering the challenge with
//! standalone credentials (the file's Secret, held in memory). After every test the port
//! allocator and every trunk's busy channels are back to zero, and the CDRs carry the trunk and
//! the direction.
//!
//! SIPp is required: these tests fail (they do not skip) when `sipp` is missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use media_node::call::trunks::TrunkCredentialSource;
use media_node::call::{CallSettings, TrunkSettings};
use support::{
    SETTLE_LIMIT, Sipp, TestNode, assert_recording_of_the_call, free_media_port, free_port,
    free_port_on, require_sipp,
};
use switchboard_crds::callcenter::{EntryPoint, TrunkSpec};

/// The carrier's address: the trunk's `allowedSources`.
const TRUNK_IP: &str = "127.0.0.2";
/// The number of the entry point that rings seat 1002.
const FRONT_DESK: &str = "+4930555100";
/// An entry point routed to a queue (not served yet).
const SALES_QUEUE: &str = "+4930555200";

/// Where the test node's trunk credentials come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Credentials {
    /// Files laid out as the kubelet mounts the trunk's Secret (`<dir>/<trunk>/...`).
    Mounted,
    /// Standalone: the Secret manifest of a config file, held in memory.
    Standalone,
}

/// How [`TrunkNode::start_opts`] sets the node up.
#[derive(Clone, Copy)]
struct Options {
    channel_limit: u32,
    /// `UDP` or `TCP` towards the carrier.
    transport: &'static str,
    credentials: Credentials,
    /// Record answered calls (WAV + sidecar) next to the CDR file.
    record: bool,
}

impl Options {
    fn new(channel_limit: u32) -> Options {
        Options {
            channel_limit,
            transport: "UDP",
            credentials: Credentials::Mounted,
            record: false,
        }
    }
}

/// The shared test node with the `pstn` trunk, its credentials and a CDR file.
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

/// The trunk's credentials as a standalone node gets them: a config file with the CallCenter
/// (whose `spec.trunks` is `trunk_yaml`) and the Secret, loaded as `media-node --config` loads
/// it. The node config points at a mount path that does not exist here, so a call can only
/// authenticate from the values held in memory.
fn standalone_credentials(trunk_yaml: &str) -> TrunkCredentialSource {
    let trunk: Vec<String> = trunk_yaml
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{}{l}", if i == 0 { "  - " } else { "    " }))
        .collect();
    let text = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: pstn-credentials}}\n\
         stringData: {{username: acct, password: s3cret}}\n\
         ---\n\
         apiVersion: switchboard.dev/v1alpha1\nkind: CallCenter\nmetadata: {{name: standalone}}\n\
         spec:\n  sip: {{domain: localhost}}\n  trunks:\n{}\n",
        trunk.join("\n")
    );
    let loaded = media_node::node::parse(&text).expect("a valid standalone file");
    assert!(
        !std::path::Path::new(&loaded.config.trunk_secrets[0].mount_path).exists(),
        "no Secret is mounted for a standalone node"
    );
    let values = loaded
        .trunk_credentials
        .expect("the trunk's Secret is in the file");
    TrunkCredentialSource::Inline(values)
}

impl TrunkNode {
    /// `trunk_port`: where the carrier's SIPp UAS listens on [`TRUNK_IP`] (outbound calls).
    fn start(channel_limit: u32, trunk_port: u16) -> TrunkNode {
        Self::start_opts(trunk_port, Options::new(channel_limit))
    }

    /// As [`Self::start`], with the trunk peer reached over `transport` (`UDP` or `TCP`).
    fn start_with(channel_limit: u32, trunk_port: u16, transport: &'static str) -> TrunkNode {
        Self::start_opts(
            trunk_port,
            Options {
                transport,
                ..Options::new(channel_limit)
            },
        )
    }

    fn start_opts(trunk_port: u16, options: Options) -> TrunkNode {
        let Options {
            channel_limit,
            transport,
            credentials,
            record,
        } = options;
        let records = tempfile::tempdir().expect("records dir");
        let secrets = tempfile::tempdir().expect("secrets dir");
        let trunk_yaml = format!(
            "name: pstn\n\
             peer: {{host: {TRUNK_IP}, port: {trunk_port}, transport: {transport}}}\n\
             allowedSources: [{TRUNK_IP}/32]\n\
             credentials: {{secretName: pstn-credentials}}\n\
             inboundNumbers: ['{FRONT_DESK}', '{SALES_QUEUE}', '+4930555999']\n\
             dialPrefixes: [{{prefix: '0', strip: 1, prepend: '+49'}}]\n\
             channels: {{limit: {channel_limit}}}"
        );
        let trunk: TrunkSpec = serde_yaml::from_str(&trunk_yaml).expect("trunk spec");
        let credentials = match credentials {
            Credentials::Mounted => {
                // The trunk's Secret as the kubelet mounts it: <dir>/<trunk>/{username,password}.
                std::fs::create_dir_all(secrets.path().join("pstn")).expect("secret dir");
                std::fs::write(secrets.path().join("pstn/username"), "acct\n").expect("username");
                std::fs::write(secrets.path().join("pstn/password"), "s3cret\n").expect("password");
                TrunkCredentialSource::Mounted {
                    secrets: Vec::new(),
                    dir: Some(secrets.path().to_path_buf()),
                }
            }
            Credentials::Standalone => standalone_credentials(&trunk_yaml),
        };
        let entry_points: Vec<EntryPoint> = serde_yaml::from_str(&format!(
            "[{{number: '{FRONT_DESK}', route: {{action: Seat, target: front-desk}}}},\
              {{number: '{SALES_QUEUE}', route: {{action: Queue, target: sales}}}}]"
        ))
        .expect("entry points");
        let node = TestNode::start(CallSettings {
            cdr_path: Some(records.path().join("cdr.jsonl")),
            recording_dir: record.then(|| records.path().to_path_buf()),
            node_name: "test-node".into(),
            trunks: TrunkSettings {
                trunks: vec![trunk],
                credentials,
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

    fn trunk(&self) -> Arc<media_node::call::trunks::Trunk> {
        self.engine()
            .routing()
            .trunks
            .get("pstn")
            .cloned()
            .expect("trunk pstn")
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

    /// An inbound trunk call: seat 1002 registers and plays `seat` (with RTP echo when
    /// `media`), then the carrier plays `carrier` towards the front desk with `extra`; both
    /// scenarios must pass and the node settle.
    fn inbound(&self, seat: &str, media: bool, carrier: &str, extra: &[&str]) {
        let callee_port = free_port();
        self.register_callee(callee_port);
        let callee = if media {
            self.seat(
                seat,
                callee_port,
                Some(free_media_port("127.0.0.1")),
                &["-rtp_echo"],
            )
        } else {
            self.seat(seat, callee_port, None, &[])
        }
        // The seat listens before the carrier dials.
        .listening();
        let mut args = vec!["-s", FRONT_DESK];
        args.extend_from_slice(extra);
        let media_port = media.then(|| free_media_port(TRUNK_IP));
        self.carrier(carrier, free_port_on(TRUNK_IP), media_port, &args)
            .assert_ok(&format!("carrier plays {carrier}"));
        callee.assert_ok(&format!("seat 1002 plays {seat}"));
        self.assert_settled();
    }

    /// An outbound trunk call: the carrier listens on `trunk_port` playing `carrier` (with
    /// RTP echo when `media`), then seat 1001 dials 0301234567 playing `seat`; both scenarios
    /// must pass and the node settle.
    fn outbound(&self, trunk_port: u16, carrier: &str, media: bool, extra: &[&str], seat: &str) {
        let mut args = extra.to_vec();
        let media_port = media.then(|| {
            args.push("-rtp_echo");
            free_media_port(TRUNK_IP)
        });
        let listening = self
            .carrier(carrier, trunk_port, media_port, &args)
            .listening();
        let seat_media = media.then(|| free_media_port("127.0.0.1"));
        self.seat(seat, free_port(), seat_media, &["-s", "0301234567"])
            .assert_ok(&format!("seat 1001 plays {seat}"));
        listening.assert_ok(&format!("carrier plays {carrier}"));
        self.assert_settled();
    }

    /// SIPp as the carrier (from [`TRUNK_IP`]).
    fn carrier(&self, scenario: &str, port: u16, media_port: Option<u16>, extra: &[&str]) -> Sipp {
        Sipp::spawn(self.port, TRUNK_IP, scenario, port, media_port, extra)
    }
}

#[test]
fn trunk_call_reaches_the_entry_points_seat_with_media_both_ways() {
    require_sipp();
    let node = TrunkNode::start(2, free_port_on(TRUNK_IP));
    node.inbound(
        "call-uas-answer.xml",
        true,
        "trunk-uac-inbound.xml",
        &["-d", "3000"],
    );
    node.assert_relayed_both_ways();
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
    // The scenario checks the digest (acct / s3cret, as in the Secret files) and that the
    // dialed 0301234567 arrives as +49301234567 (strip 1, prepend +49).
    node.outbound(
        trunk_port,
        "trunk-uas-challenge.xml",
        true,
        &[],
        "call-uac-bye.xml",
    );
    node.assert_relayed_both_ways();
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
    node.outbound(
        trunk_port,
        "trunk-uas-challenge.xml",
        true,
        &["-t", "t1"],
        "call-uac-bye.xml",
    );
    node.assert_relayed_both_ways();
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
    node.outbound(
        trunk_port,
        "trunk-uas-challenge-twice.xml",
        false,
        &[],
        "trunk-seat-uac-refused-403.xml",
    );
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
    let callee = node
        .seat(
            "call-uas-answer.xml",
            callee_port,
            Some(free_media_port("127.0.0.1")),
            &["-rtp_echo"],
        )
        .listening();
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

#[test]
fn outbound_call_answers_the_challenge_with_standalone_credentials() {
    require_sipp();
    let trunk_port = free_port_on(TRUNK_IP);
    let node = TrunkNode::start_opts(
        trunk_port,
        Options {
            credentials: Credentials::Standalone,
            ..Options::new(2)
        },
    );
    // The carrier checks the digest made with acct / s3cret from the file's Secret.
    node.outbound(
        trunk_port,
        "trunk-uas-challenge.xml",
        true,
        &[],
        "call-uac-bye.xml",
    );
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0]["outcome"], "answered", "{cdrs:?}");
    assert_eq!(cdrs[0]["trunk"], "pstn", "{cdrs:?}");
}

#[test]
fn trunk_call_hung_up_by_the_seat() {
    require_sipp();
    let node = TrunkNode::start(2, free_port_on(TRUNK_IP));
    // Seat 1002 answers, echoes RTP and sends BYE after 3 s; the carrier gets the BYE.
    node.inbound(
        "call-uas-hangup.xml",
        true,
        "trunk-uac-inbound-seat-bye.xml",
        &[],
    );
    node.assert_relayed_both_ways();
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["direction"], "inbound", "{cdr}");
    assert_eq!(cdr["trunk"], "pstn", "{cdr}");
    assert_eq!(cdr["seat"], "1002", "{cdr}");
    assert_eq!(cdr["outcome"], "answered", "{cdr}");
    assert_eq!(cdr["hangupSide"], "called", "{cdr}");
}

#[test]
fn carrier_cancels_while_the_seat_rings() {
    require_sipp();
    let node = TrunkNode::start(2, free_port_on(TRUNK_IP));
    // Seat 1002 rings until the node CANCELs its leg, then ends the INVITE with 487; the
    // carrier cancels and gets 487.
    node.inbound(
        "call-uas-ring.xml",
        false,
        "trunk-uac-inbound-cancel.xml",
        &[],
    );
    assert_eq!(node.trunk().busy(), 0);
    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["outcome"], "abandoned", "{cdr}");
    assert_eq!(cdr["direction"], "inbound", "{cdr}");
    assert_eq!(cdr["trunk"], "pstn", "{cdr}");
    assert_eq!(cdr["hangupSide"], "caller", "{cdr}");
    assert!(cdr["answeredAt"].is_null(), "{cdr}");
}

#[test]
fn recorded_trunk_call_has_both_channels_and_the_call_length() {
    require_sipp();
    let node = TrunkNode::start_opts(
        free_port_on(TRUNK_IP),
        Options {
            record: true,
            ..Options::new(2)
        },
    );
    node.inbound(
        "call-uas-answer.xml",
        true,
        "trunk-uac-inbound.xml",
        &["-d", "3000"],
    );

    let cdrs = node.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["outcome"], "answered", "{cdr}");
    assert_eq!(cdr["trunk"], "pstn", "{cdr}");
    let name = cdr["recording"]
        .as_str()
        .expect("the CDR names the recording");
    let bytes = std::fs::read(node.records.path().join(name)).expect("read the recording");
    // The carrier's pcap on the left, the seat's echo on the right.
    assert_recording_of_the_call(&bytes, cdr);
}
