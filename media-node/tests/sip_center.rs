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

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

    /// SIPp from the carrier's address.
    fn caller(
        &self,
        scenario: &str,
        number: &str,
        keys: &Path,
        key_pause_ms: u32,
        hold_ms: u32,
    ) -> Sipp {
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
                "200",
                "-key",
                "caller",
                number,
                "-key",
                "keys",
                keys.to_str().expect("a UTF-8 path"),
                "-d",
                &key_pause_ms.to_string(),
                "-set",
                "hold",
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

/// A pcap of RFC 4733 key presses (payload type 101), built from the per-key captures
/// Debian's sip-tester ships: each press 400 ms after the previous, with its own RTP
/// timestamp so the node counts them as separate presses.
fn keys_pcap(dir: &Path, keys: &str) -> PathBuf {
    const GAP_MS: u32 = 400;
    let mut out: Vec<u8> = Vec::new();
    let mut seq_base: u16 = 0;
    for (k, key) in keys.chars().enumerate() {
        let name = match key {
            '*' => "star".to_string(),
            '#' => "pound".to_string(),
            d => d.to_string(),
        };
        let file = format!("/usr/share/sip-tester/dtmf_2833_{name}.pcap");
        let bytes =
            std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e} (install sip-tester)"));
        if out.is_empty() {
            out.extend_from_slice(&bytes[..24]);
        }
        let shift_us = u64::from(GAP_MS) * 1000 * k as u64;
        let mut at = 24;
        let mut n: u16 = 0;
        while at + 16 <= bytes.len() {
            let word = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
            let (sec, usec, incl) = (word(at), word(at + 4), word(at + 8) as usize);
            let mut packet = bytes[at + 16..at + 16 + incl].to_vec();
            let total = u64::from(sec) * 1_000_000 + u64::from(usec) + shift_us;
            // Ethernet 14 + IPv4 20 + UDP 8: the RTP header follows.
            let rtp = 42;
            packet[40] = 0;
            packet[41] = 0; // no UDP checksum: the RTP bytes change
            let seq = u16::from_be_bytes([packet[rtp + 2], packet[rtp + 3]])
                .wrapping_add(seq_base + 1000 * k as u16);
            packet[rtp + 2..rtp + 4].copy_from_slice(&seq.to_be_bytes());
            let ts = u32::from_be_bytes(packet[rtp + 4..rtp + 8].try_into().expect("4 bytes"))
                .wrapping_add(GAP_MS * 8 * k as u32);
            packet[rtp + 4..rtp + 8].copy_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&((total / 1_000_000) as u32).to_le_bytes());
            out.extend_from_slice(&((total % 1_000_000) as u32).to_le_bytes());
            out.extend_from_slice(&(packet.len() as u32).to_le_bytes());
            out.extend_from_slice(&(packet.len() as u32).to_le_bytes());
            out.extend_from_slice(&packet);
            at += 16 + incl;
            n += 1;
        }
        seq_base = seq_base.wrapping_add(n);
    }
    let path = dir.join(format!(
        "keys-{}.pcap",
        keys.replace('#', "pound").replace('*', "star")
    ));
    std::fs::write(&path, out).expect("write the keys pcap");
    path
}

#[test]
fn a_caller_chooses_the_queue_in_the_ivr_and_the_longest_idle_agent_answers() {
    let node = CenterNode::start(&manifests(free_rtp_range(60), None, ""));
    let (port_1001, port_1002) = (free_port(), free_port());
    node.register("1001", port_1001);
    node.register("1002", port_1002);
    // 1001 logs in first: it has been Ready longest when the caller arrives.
    node.feature_code("1001", "*21");
    node.wait_for("1001 ready", || node.agent_in("agent-1001", "ready"));
    std::thread::sleep(Duration::from_millis(300));
    node.feature_code("1002", "*21");
    node.wait_for("1002 ready", || node.agent_in("agent-1002", "ready"));
    let agent = node.agent_answers("1001", port_1001, "seat-uas-answer.xml");
    let other = node.agent_answers("1002", port_1002, "seat-uas-answer.xml");

    let keys = keys_pcap(node.dir.path(), "1");
    node.caller("center-caller-bye.xml", "+4930555001", &keys, 1000, 3000)
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
