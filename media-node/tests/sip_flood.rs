//! A password-guessing flood against the registrar, with real peers: the node runs in-process
//! on 127.0.0.1, one SIPp UAC on 127.0.0.3 floods REGISTERs for seat 1002 with a wrong
//! password (bounded: `-r 500 -m 10000`), while seats 1001 and 1002 on 127.0.0.1 register and
//! make answered calls with RTP. Checked: every seat call and REGISTER during the flood
//! succeeds, every flood REGISTER is answered (401 then 403, or 403 at once when limited), the
//! limiter's `switchboard_sip_auth_rate_limited_total` counts the flood, and the digest checks
//! stay at the limiter's burst plus refill rather than growing with the flood. The call setup
//! times with and without the flood are printed for information only (no timed assertions).
//!
//! SIPp is required: this test fails (it does not skip) when `sipp` is missing.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use media_node::call::CallSettings;
use support::{
    SETTLE_LIMIT, Sipp, TestNode, free_media_port, free_port, free_port_on, require_sipp,
};

/// The flooding source: its own address, so its limiter bucket is not the seats'.
const FLOOD_IP: &str = "127.0.0.3";
/// Answered seat calls per phase (each holds 3 s of audio).
const CALLS: usize = 3;
/// Flood requests, sent at 500 per second (about 20 s, longer than one phase of calls).
const FLOOD_REGISTERS: &str = "10000";

const RATE_LIMITED: &str = "switchboard_sip_auth_rate_limited_total";
const AUTH_FAILURES: &str = "switchboard_sip_auth_failures_total";

struct FloodNode {
    node: TestNode,
    records: tempfile::TempDir,
    /// Seat 1002's one contact, re-registered (refreshed) before each phase of calls.
    callee_port: u16,
}

impl std::ops::Deref for FloodNode {
    type Target = TestNode;
    fn deref(&self) -> &TestNode {
        &self.node
    }
}

impl FloodNode {
    fn start() -> FloodNode {
        let records = tempfile::tempdir().expect("records dir");
        let node = TestNode::start(CallSettings {
            cdr_path: Some(records.path().join("cdr.jsonl")),
            node_name: "test-node".into(),
            ..CallSettings::default()
        });
        FloodNode {
            node,
            records,
            callee_port: free_port(),
        }
    }

    fn cdrs(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.records.path().join("cdr.jsonl"))
            .expect("CDR file written");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("CDR is JSON"))
            .collect()
    }

    fn counter(&self, name: &str) -> f64 {
        self.sample(name)
            .unwrap_or_else(|| panic!("{name} is exported"))
    }

    /// Seat 1002 registers, then 1001 calls it [`CALLS`] times one after another (A-law
    /// audio, echoed back). Returns each call's setup time as the node saw it (offered to
    /// answered, from the CDRs of these calls).
    fn seat_calls(&self) -> Vec<Duration> {
        let before = std::fs::read_to_string(self.records.path().join("cdr.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let relayed = self
            .engine()
            .relay_stats()
            .callee_to_caller
            .load(Ordering::Relaxed);
        let callee_port = self.callee_port;
        self.register_callee(callee_port);
        let calls = CALLS.to_string();
        let callee = self
            .seat(
                "call-uas-answer.xml",
                callee_port,
                Some(free_media_port("127.0.0.1")),
                &["-rtp_echo", "-m", &calls],
            )
            // The callee listens before the caller dials.
            .listening();
        self.seat(
            "call-uac-bye.xml",
            free_port(),
            Some(free_media_port("127.0.0.1")),
            &["-s", "1002", "-m", &calls, "-l", "1"],
        )
        .assert_ok("seat 1001 calls 1002");
        callee.assert_ok("seat 1002 answers every call");
        self.wait_settled(|| true);
        assert!(
            self.engine()
                .relay_stats()
                .callee_to_caller
                .load(Ordering::Relaxed)
                > relayed,
            "no RTP relayed back to the callers"
        );
        let cdrs = self.cdrs();
        let new = &cdrs[before..];
        assert_eq!(new.len(), CALLS, "{new:?}");
        new.iter()
            .map(|cdr| {
                assert_eq!(cdr["outcome"], "answered", "{cdr}");
                let at = |field: &str| -> chrono::DateTime<chrono::Utc> {
                    cdr[field]
                        .as_str()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(|| panic!("{field} in {cdr}"))
                };
                (at("answeredAt") - at("offeredAt"))
                    .to_std()
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn summary(times: &[Duration]) -> String {
    let ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.1}", t.as_secs_f64() * 1000.0))
        .collect();
    format!("[{}] ms", ms.join(", "))
}

#[test]
fn a_wrong_password_flood_is_rate_limited_and_seat_calls_go_on() {
    require_sipp();
    let node = FloodNode::start();

    let quiet = node.seat_calls();

    let flood = Sipp::spawn(
        node.port,
        FLOOD_IP,
        "register-flood-wrong-password.xml",
        free_port_on(FLOOD_IP),
        None,
        // The last -m and -timeout given win over the support module's defaults.
        &["-r", "500", "-m", FLOOD_REGISTERS, "-timeout", "55s"],
    );
    // Bounded wait until the limiter refuses the flood.
    let deadline = Instant::now() + SETTLE_LIMIT;
    while node.counter(RATE_LIMITED) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the flood was never rate-limited ({} digest failures)",
            node.counter(AUTH_FAILURES)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let limited_before = node.counter(RATE_LIMITED);
    // Registered seats keep registering (1001 registers and un-registers here, 1002 before
    // its calls) and calling while the flood goes on.
    node.seat("register.xml", free_port(), None, &[])
        .assert_ok("seat 1001 registers during the flood");
    let flooded = node.seat_calls();
    let limited_during = node.counter(RATE_LIMITED);
    assert!(
        limited_during > limited_before,
        "the flood ended before the seat calls: the test did not measure under load"
    );
    flood.assert_ok("every flood REGISTER refused (401 then 403, or 403 at once)");

    let limited = node.counter(RATE_LIMITED);
    let failures = node.counter(AUTH_FAILURES);
    eprintln!(
        "flood: {FLOOD_REGISTERS} REGISTER attempts from {FLOOD_IP}; {limited} refused by the \
         limiter without digest work, {failures} digest checks failed"
    );
    eprintln!(
        "seat call setup (offered → answered) without flood: {}",
        summary(&quiet)
    );
    eprintln!(
        "seat call setup (offered → answered) during flood:  {}",
        summary(&flooded)
    );
    assert!(limited > 0.0);
    // Digest work is bounded by the limiter (5 in a row, then 5 a minute), not by the flood:
    // a few concurrent guesses may pass the check before the first failures land.
    assert!(
        failures < 50.0,
        "{failures} digest checks for a flood that should have been refused after 5"
    );
    assert_eq!(node.cdrs().len(), 2 * CALLS);
}
