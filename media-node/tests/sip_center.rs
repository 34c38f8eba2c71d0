//! The call center end to end with real SIP peers: the `media-node` binary serves a call
//! center from manifests (standalone mode, the README's first command) and SIPp plays the
//! carrier's callers (pressing keys with RFC 4733 events) and the agents' phones (logging in
//! with feature codes, answering offered calls).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    Sipp, free_media_port, free_port, free_port_on, free_rtp_range, repo_root, require_sipp,
};

const NODE: &str = env!("CARGO_BIN_EXE_media-node");
const CARRIER: &str = "127.0.0.2";
const LIMIT: Duration = Duration::from_secs(30);

/// The node under test, killed when dropped.
struct CenterNode {
    child: Child,
    dir: tempfile::TempDir,
    sip_port: u16,
    metrics_port: u16,
}

impl Drop for CenterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test center: a carrier trunk from 127.0.0.2, entry `200` to the main menu (1: the
/// support queue, 2: the members' PIN menu, 9: voicemail), entry `300` straight to the queue,
/// and three seats (1001, 1002 in the queue; 1003 on duty after hours). The center is open
/// around the clock (UTC) except on `holiday` (`YYYY-MM-DD`); `queue` is the support Queue's
/// extra spec lines.
fn manifests(rtp: (u16, u16), holiday: Option<&str>, queue: &str) -> String {
    let holidays = holiday.map_or(String::new(), |d| {
        format!("{{date: \"{d}\", name: Test day}}")
    });
    let mut seats = String::new();
    for (ext, queues) in [
        ("1001", "[{name: support}]"),
        ("1002", "[{name: support}]"),
        ("1003", "[]"),
    ] {
        seats.push_str(&format!(
            "---\napiVersion: switchboard.dev/v1alpha1\nkind: Seat\nmetadata: {{name: agent-{ext}}}\n\
             spec:\n  callCenter: college\n  extension: \"{ext}\"\n  displayName: Agent {ext}\n  \
             credentials: {{name: seat-passwords, key: \"{ext}\"}}\n  queues: {queues}\n"
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: seat-passwords}}
stringData: {{"1001": practice-1001, "1002": practice-1002, "1003": practice-1003}}
---
apiVersion: v1
kind: Secret
metadata: {{name: member-pins}}
stringData:
  pins: |
    1234
    7777
---
apiVersion: switchboard.dev/v1alpha1
kind: CallCenter
metadata: {{name: college}}
spec:
  sip: {{domain: localhost}}
  rtp: {{minPort: {min}, maxPort: {max}}}
  trunks:
  - name: carrier
    peer: {{host: 127.0.0.2}}
    allowedSources: ["127.0.0.2"]
  entryPoints:
  - {{number: "200", route: {{action: Menu, target: main}}}}
  - {{number: "300", route: {{action: Queue, target: support}}}}
  ivrMenus:
  - name: main
    prompt: campus/welcome.wav
    timeoutSeconds: 5
    maxRetries: 1
    options:
    - {{digit: "1", route: {{action: Queue, target: support}}}}
    - {{digit: "2", route: {{action: Menu, target: members}}}}
    - {{digit: "9", route: {{action: Voicemail}}}}
    afterHours: {{action: Seat, target: agent-1003}}
  - name: members
    prompt: campus/member-pin.wav
    timeoutSeconds: 5
    maxRetries: 1
    collectPin:
      pins: {{name: member-pins, key: pins}}
      maxDigits: 4
      priorityBoost: 10
      onValid: {{action: Queue, target: support}}
    onFailure: {{action: Queue, target: support}}
  businessHours:
    timeZone: UTC
    weekly:
    - {{days: [Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday], open: "00:00", close: "24:00"}}
    holidays: [{holidays}]
---
apiVersion: switchboard.dev/v1alpha1
kind: Queue
metadata: {{name: support}}
spec:
  callCenter: college
  strategy: LongestIdle
  ringTimeoutSeconds: 5
  announcements: {{position: true, estimatedWait: true, everySeconds: 10}}
{queue}
{seats}"#,
        min = rtp.0,
        max = rtp.1,
    )
}

impl CenterNode {
    fn start(manifests: &str) -> CenterNode {
        require_sipp();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("college.yaml");
        std::fs::write(&config, manifests).expect("write the manifests");
        let sip_port = free_port_on(CARRIER);
        let metrics_port = free_port();
        let control_port = free_port();
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log file");
        let child = Command::new(NODE)
            .arg("--config")
            .arg(&config)
            .args([
                "--sip-listen",
                "0.0.0.0",
                "--sip-port",
                &sip_port.to_string(),
            ])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--control-listen", &format!("127.0.0.1:{control_port}")])
            .arg("--recordings-dir")
            .arg(dir.path().join("recordings"))
            .arg("--prompts")
            .arg(repo_root().join("prompts"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start media-node");
        let node = CenterNode {
            child,
            dir,
            sip_port,
            metrics_port,
        };
        node.wait_for("the node to be ready", || {
            node.http("/readyz").is_some_and(|(code, _)| code == 200)
        });
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn recordings(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    fn http(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// One sample of `/metrics` (`name{labels}`).
    fn sample(&self, series: &str) -> Option<f64> {
        let (_, text) = self.http("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    fn agent_in(&self, seat: &str, state: &str) -> bool {
        self.sample(&format!(
            "switchboard_agent_state{{seat=\"{seat}\",state=\"{state}\"}}"
        )) == Some(1.0)
    }

    fn wait_for(&self, what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if ok() {
                return;
            }
            if self.log().contains("media-node: ") && !self.log().contains("INFO") {
                // The node refused its config and exited: no point waiting.
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; node log:\n{}", self.log());
    }

    /// The CDR lines written so far.
    fn cdrs(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.recordings().join("cdr.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a CDR line is JSON"))
            .collect()
    }

    /// Waits for `n` CDR lines and returns them.
    fn wait_cdrs(&self, n: usize) -> Vec<serde_json::Value> {
        self.wait_for(&format!("{n} CDR line(s)"), || self.cdrs().len() >= n);
        self.cdrs()
    }

    /// SIPp from the carrier's address, calling number `number`, dialing `dialed`.
    fn caller(
        &self,
        scenario: &str,
        dialed: &str,
        number: &str,
        keys: &str,
        key_pause_ms: u32,
        hold_ms: u32,
    ) -> Sipp {
        self.caller_sending(
            scenario,
            dialed,
            number,
            &keys_at(key_pause_ms, keys),
            None,
            hold_ms,
        )
    }

    /// As [`Self::caller`], pressing `keys` at their offsets and speaking over `speech`.
    fn caller_sending(
        &self,
        scenario: &str,
        dialed: &str,
        number: &str,
        keys: &[(u32, char)],
        speech: Option<(u32, u32)>,
        hold_ms: u32,
    ) -> Sipp {
        let pcap = caller_pcap(self.dir.path(), number, keys, speech);
        let port = free_port_on(CARRIER);
        let media = free_media_port(CARRIER);
        Sipp::spawn(
            self.sip_port,
            CARRIER,
            scenario,
            port,
            Some(media),
            &[
                "-s",
                dialed,
                "-key",
                "caller",
                number,
                "-key",
                "keys",
                pcap.to_str().expect("a UTF-8 path"),
                "-d",
                &hold_ms.to_string(),
            ],
        )
    }

    /// Registers a seat's phone on `port` (its calls come there).
    fn register(&self, ext: &str, port: u16) {
        Sipp::spawn(
            self.sip_port,
            "127.0.0.1",
            "seat-register.xml",
            port,
            None,
            &[
                "-key",
                "ext",
                ext,
                "-au",
                ext,
                "-ap",
                &format!("practice-{ext}"),
            ],
        )
        .assert_ok(&format!("seat {ext} registers"));
    }

    /// The seat dials a feature code from another port of the phone and hears the node's
    /// confirmation.
    fn feature_code(&self, ext: &str, code: &str) {
        Sipp::spawn(
            self.sip_port,
            "127.0.0.1",
            "agent-feature-code.xml",
            free_port(),
            Some(free_media_port("127.0.0.1")),
            &[
                "-s",
                code,
                "-key",
                "ext",
                ext,
                "-au",
                ext,
                "-ap",
                &format!("practice-{ext}"),
            ],
        )
        .assert_ok(&format!("seat {ext} dials {code}"));
    }

    /// Registers the seat's phone on a free port, logs the agent in with `*21` and waits
    /// until it is Ready; returns the phone's port.
    fn log_in(&self, ext: &str) -> u16 {
        let port = free_port();
        self.register(ext, port);
        self.feature_code(ext, "*21");
        self.wait_for(&format!("{ext} ready"), || {
            self.agent_in(&format!("agent-{ext}"), "ready")
        });
        port
    }

    /// A seat's phone waiting on `port` for one offered call, answering it.
    fn agent_answers(&self, ext: &str, port: u16, scenario: &str) -> Sipp {
        Sipp::spawn(
            self.sip_port,
            "127.0.0.1",
            scenario,
            port,
            Some(free_media_port("127.0.0.1")),
            &["-key", "ext", ext, "-rtp_echo"],
        )
    }
}

/// What a caller sends, as a pcap SIPp replays with its timing: a silent µ-law packet at
/// once (so the replay starts at the answer), RFC 4733 key presses (payload type 101, from
/// the per-key captures Debian's sip-tester ships) at the given offsets, and optionally a
/// 400 Hz µ-law tone (the caller speaking) over a span.
fn caller_pcap(
    dir: &Path,
    name: &str,
    keys: &[(u32, char)],
    speech: Option<(u32, u32)>,
) -> PathBuf {
    let read = |key: char| {
        let name = match key {
            '*' => "star".to_string(),
            '#' => "pound".to_string(),
            d => d.to_string(),
        };
        let file = format!("/usr/share/sip-tester/dtmf_2833_{name}.pcap");
        std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e} (install sip-tester)"))
    };
    let template = read('1');
    let word = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let first_len = word(&template, 24 + 8) as usize;
    let first = template[40..40 + first_len].to_vec();
    const RTP: usize = 42;
    let ssrc: [u8; 4] = first[RTP + 8..RTP + 12].try_into().expect("4 bytes");
    // (time in µs, packet)
    let mut packets: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut seq: u16 = 1;
    let audio = |at_ms: u32, seq: u16, samples: &[u8]| {
        let mut p = first[..RTP].to_vec();
        p.extend_from_slice(&[0x80, 0x00]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(at_ms * 8).to_be_bytes());
        p.extend_from_slice(&ssrc);
        p.extend_from_slice(samples);
        (u64::from(at_ms) * 1000, p)
    };
    // A continuous stream (silence, or speech over its span) up to the last key: SIPp paces
    // the replay by the packets, so key presses keep their offsets.
    let end = keys
        .iter()
        .map(|(at, _)| at + 200)
        .chain(speech.map(|(_, to)| to))
        .max()
        .unwrap_or(0);
    let mut t = 0;
    while t <= end {
        let speaking = speech.is_some_and(|(from, to)| (from..to).contains(&t));
        let samples: Vec<u8> = (0..160)
            .map(|i| {
                if !speaking {
                    return 0xFF;
                }
                let x = f64::from(t * 8 + i) * 2.0 * std::f64::consts::PI * 400.0 / 8000.0;
                linear_to_ulaw((x.sin() * 8000.0) as i16)
            })
            .collect();
        packets.push(audio(t, seq, &samples));
        seq = seq.wrapping_add(1);
        t += 20;
    }
    for &(at_ms, key) in keys {
        let bytes = read(key);
        let mut at = 24;
        let mut base: Option<u64> = None;
        while at + 16 <= bytes.len() {
            let (sec, usec, incl) = (
                word(&bytes, at),
                word(&bytes, at + 4),
                word(&bytes, at + 8) as usize,
            );
            let mut p = bytes[at + 16..at + 16 + incl].to_vec();
            let t = u64::from(sec) * 1_000_000 + u64::from(usec);
            let t0 = *base.get_or_insert(t);
            seq = seq.wrapping_add(1);
            p[RTP + 2..RTP + 4].copy_from_slice(&seq.to_be_bytes());
            p[RTP + 4..RTP + 8].copy_from_slice(&(at_ms * 8).to_be_bytes());
            p[RTP + 8..RTP + 12].copy_from_slice(&ssrc);
            packets.push((u64::from(at_ms) * 1000 + (t - t0), p));
            at += 16 + incl;
        }
    }
    packets.sort_by_key(|(t, _)| *t);
    let mut out = template[..24].to_vec();
    for (t, mut p) in packets {
        // IPv4 total length, UDP length; no UDP checksum (the payload changed).
        let ip_len = (p.len() - 14) as u16;
        p[16..18].copy_from_slice(&ip_len.to_be_bytes());
        let udp_len = (p.len() - 34) as u16;
        p[38..40].copy_from_slice(&udp_len.to_be_bytes());
        p[40] = 0;
        p[41] = 0;
        out.extend_from_slice(&((t / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((t % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
    }
    let path = dir.join(format!("{name}.pcap"));
    std::fs::write(&path, out).expect("write the caller pcap");
    path
}

/// G.711 µ-law encoding of one sample.
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = (s + BIAS).min(0x7FFF);
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// Keys pressed from `start_ms`, 400 ms apart.
fn keys_at(start_ms: u32, keys: &str) -> Vec<(u32, char)> {
    keys.chars()
        .enumerate()
        .map(|(i, k)| (start_ms + 400 * i as u32, k))
        .collect()
}

#[test]
fn a_caller_chooses_the_queue_in_the_ivr_and_the_longest_idle_agent_answers() {
    let node = CenterNode::start(&manifests(free_rtp_range(60), None, ""));
    // 1001 logs in first: it has been Ready longest when the caller arrives.
    let port_1001 = node.log_in("1001");
    std::thread::sleep(Duration::from_millis(300));
    let port_1002 = node.log_in("1002");
    let agent = node.agent_answers("1001", port_1001, "seat-uas-answer.xml");
    let other = node.agent_answers("1002", port_1002, "seat-uas-answer.xml");

    let keys = "1";
    node.caller(
        "center-caller-bye.xml",
        "200",
        "+4930555001",
        keys,
        1000,
        3000,
    )
    .assert_ok("caller presses 1 and talks to an agent");
    agent.assert_ok("the longest-idle agent answers");
    drop(other);

    let cdrs = node.wait_cdrs(3);
    let call = cdrs
        .iter()
        .find(|c| c["to"] == "200")
        .unwrap_or_else(|| panic!("no CDR of the queue call in {cdrs:#?}"));
    assert_eq!(call["outcome"], "answered", "{call:#}");
    assert_eq!(call["seat"], "agent-1001", "{call:#}");
    assert_eq!(call["queue"], "support", "{call:#}");
    assert_eq!(call["ivrPath"], serde_json::json!(["main:1"]), "{call:#}");
    node.wait_for("1001 back to ready", || {
        node.agent_in("agent-1001", "ready")
    });
    assert!(node.agent_in("agent-1002", "ready"));
    assert_eq!(node.sample("switchboard_rtp_port_pairs_in_use"), Some(0.0));
}

/// Waits until the queue's 15-minute figure `name` reaches `value`.
fn queue_figure(node: &CenterNode, name: &str, value: f64) {
    let series = format!("switchboard_queue_{name}{{queue=\"support\",window=\"15m\"}}");
    node.wait_for(&series, || node.sample(&series) == Some(value));
}

#[test]
fn a_caller_who_hangs_up_while_queued_is_counted_as_abandoned() {
    let node = CenterNode::start(&manifests(free_rtp_range(20), None, ""));
    let keys = "#";
    // Nobody is logged in; the queue waits for an agent ("whenNoAgents: Wait").
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555002",
        keys,
        500,
        2500,
    )
    .assert_ok("caller waits, then hangs up");
    let cdrs = node.wait_cdrs(1);
    assert_eq!(cdrs[0]["outcome"], "abandoned", "{:#}", cdrs[0]);
    assert_eq!(cdrs[0]["queue"], "support", "{:#}", cdrs[0]);
    assert!(
        cdrs[0]["waitSeconds"].as_f64().is_some_and(|w| w >= 2.0),
        "{:#}",
        cdrs[0]
    );
    queue_figure(&node, "calls_offered", 1.0);
    queue_figure(&node, "calls_abandoned", 1.0);
    node.wait_for("nobody waiting", || {
        node.sample("switchboard_queue_calls_waiting{queue=\"support\"}") == Some(0.0)
    });
    node.wait_for("ports released", || {
        node.sample("switchboard_rtp_port_pairs_in_use") == Some(0.0)
    });
}

#[test]
fn an_agent_who_does_not_answer_goes_not_ready_and_the_next_agent_gets_the_call() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, ""));
    let port_1001 = node.log_in("1001");
    std::thread::sleep(Duration::from_millis(300));
    let port_1002 = node.log_in("1002");
    // 1001, offered first, only rings; after the 5 s ring timeout the call goes to 1002.
    let ringing = node.agent_answers("1001", port_1001, "call-uas-ring.xml");
    let answering = node.agent_answers("1002", port_1002, "seat-uas-answer.xml");
    let keys = "#";
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555003",
        keys,
        500,
        9000,
    )
    .assert_ok("caller is answered by the second agent");
    ringing.assert_ok("the first agent's phone was cancelled");
    answering.assert_ok("the second agent answered");
    let cdrs = node.wait_cdrs(3);
    let call = cdrs
        .iter()
        .find(|c| c["to"] == "300")
        .expect("the queue call's CDR");
    assert_eq!(call["seat"], "agent-1002", "{call:#}");
    assert_eq!(call["outcome"], "answered", "{call:#}");
    assert!(
        node.agent_in("agent-1001", "not_ready"),
        "ring-no-answer makes the agent NotReady"
    );
    node.wait_for("1002 ready again", || node.agent_in("agent-1002", "ready"));
    node.wait_for("ports released", || {
        node.sample("switchboard_rtp_port_pairs_in_use") == Some(0.0)
    });
}

#[test]
fn wrap_up_delays_the_next_offer_to_the_agent() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, "  wrapUpSeconds: 4"));
    let port = node.log_in("1001");
    let keys = "#";
    let agent = node.agent_answers("1001", port, "seat-uas-answer.xml");
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555004",
        keys,
        500,
        1500,
    )
    .assert_ok("first caller");
    agent.assert_ok("the agent answered the first caller");
    node.wait_for("the agent wraps up after the call", || {
        node.agent_in("agent-1001", "wrap_up")
    });
    // The second caller arrives during the wrap-up and is offered only after it.
    let agent = node.agent_answers("1001", port, "seat-uas-answer.xml");
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555005",
        keys,
        500,
        6000,
    )
    .assert_ok("second caller");
    agent.assert_ok("the agent answered the second caller");
    let cdrs = node.wait_cdrs(3);
    let second = cdrs
        .iter()
        .find(|c| c["from"] == "+4930555005")
        .expect("the second call's CDR");
    assert_eq!(second["seat"], "agent-1001", "{second:#}");
    let waited = second["waitSeconds"]
        .as_f64()
        .expect("a queued call has its wait");
    assert!(
        waited >= 2.0,
        "offered only after the wrap-up: waited {waited} s"
    );
}

#[test]
fn after_hours_the_menu_sends_the_caller_to_the_seat_on_duty() {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let node = CenterNode::start(&manifests(free_rtp_range(40), Some(&today), ""));
    let port = free_port();
    node.register("1003", port);
    let on_duty = node.agent_answers("1003", port, "seat-uas-answer.xml");
    let keys = "#";
    node.caller(
        "center-caller-bye.xml",
        "200",
        "+4930555006",
        keys,
        500,
        3000,
    )
    .assert_ok("caller reaches the seat on duty");
    on_duty.assert_ok("the seat on duty answers");
    let cdrs = node.wait_cdrs(1);
    assert_eq!(cdrs[0]["seat"], "agent-1003", "{:#}", cdrs[0]);
    assert_eq!(cdrs[0]["outcome"], "answered", "{:#}", cdrs[0]);
    assert_eq!(
        cdrs[0]["ivrPath"],
        serde_json::json!(["main:after-hours"]),
        "{:#}",
        cdrs[0]
    );
}

#[test]
fn a_member_pin_puts_the_caller_ahead_of_a_waiting_non_member() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, ""));
    let port = free_port();
    node.register("1001", port);
    // A non-member waits first; then a member keys 2 (members' menu) and the PIN 1234.
    let plain = node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555007",
        "#",
        500,
        12000,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let member = node.caller(
        "center-caller-bye.xml",
        "200",
        "+4930555008",
        "21234",
        800,
        6000,
    );
    node.wait_for("both callers queued", || {
        node.sample("switchboard_queue_calls_waiting{queue=\"support\"}") == Some(2.0)
    });
    let agent = node.agent_answers("1001", port, "seat-uas-answer.xml");
    node.feature_code("1001", "*21");
    member.assert_ok("the member is served");
    agent.assert_ok("the agent answered the member");
    plain.assert_ok("the non-member hung up after waiting");
    let cdrs = node.wait_cdrs(3);
    let member = cdrs
        .iter()
        .find(|c| c["from"] == "+4930555008")
        .expect("member CDR");
    let plain = cdrs
        .iter()
        .find(|c| c["from"] == "+4930555007")
        .expect("non-member CDR");
    assert_eq!(member["seat"], "agent-1001", "{member:#}");
    assert_eq!(
        member["ivrPath"],
        serde_json::json!(["main:2", "members:pin-valid"]),
        "{member:#}"
    );
    assert_eq!(plain["outcome"], "abandoned", "{plain:#}");
}

#[test]
fn the_caller_rates_the_call_after_the_agent_hangs_up() {
    let queue = "  survey: {prompt: survey/rate.wav, thankYouPrompt: survey/thanks.wav, timeoutSeconds: 10}";
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, queue));
    let port = node.log_in("1002");
    // The agent hangs up 3 s after answering; the caller keys 4 during the survey prompt.
    let agent = node.agent_answers("1002", port, "call-uas-hangup.xml");
    node.caller("center-caller-wait.xml", "300", "+4930555009", "4", 5500, 0)
        .assert_ok("caller rates the call; the node hangs up after the thanks");
    agent.assert_ok("the agent hung up first");
    let cdrs = node.wait_cdrs(2);
    let call = cdrs
        .iter()
        .find(|c| c["to"] == "300")
        .expect("the queue call's CDR");
    assert_eq!(call["surveyScore"], 4, "{call:#}\n{}", node.log());
    assert_eq!(call["outcome"], "answered", "{call:#}");
}

#[test]
fn a_voicemail_message_is_recorded_with_its_metadata_and_cdr() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, ""));
    // Key 9 (voicemail), then # after the greeting and tone to end the message.
    // Key 9 over the menu prompt, speech after the greeting and tone, then # to end.
    node.caller_sending(
        "center-caller-wait.xml",
        "200",
        "+4930555010",
        &[(800, '9'), (13_500, '#')],
        Some((9_000, 13_000)),
        0,
    )
    .assert_ok("caller leaves a message and ends it with #");
    let cdrs = node.wait_cdrs(1);
    assert_eq!(cdrs[0]["outcome"], "voicemail", "{:#}", cdrs[0]);
    let file = cdrs[0]["voicemail"]
        .as_str()
        .expect("the message file in the CDR");
    assert!(file.starts_with("general/"), "{file}");
    let dir = node.recordings().join("voicemail");
    let wav = std::fs::read(dir.join(file)).expect("the message WAV");
    assert_eq!(&wav[..4], b"RIFF");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(file.replace(".wav", ".json"))).expect("the message metadata"),
    )
    .expect("JSON");
    assert_eq!(meta["from"], "+4930555010", "{meta:#}");
    assert_eq!(meta["mailbox"], "general", "{meta:#}");
    assert!(meta["durationSeconds"].as_f64().is_some(), "{meta:#}");
}
