//! A call center node under test: the `media-node` binary serving manifests (standalone
//! mode), with the SIP, metrics and CDR views the center tests and benchmarks read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::caller_audio::{caller_pcap, keys_at};
use super::{Sipp, free_media_port, free_port, free_port_on, repo_root, require_sipp};

const NODE: &str = env!("CARGO_BIN_EXE_media-node");
/// The carrier's address: callers come from here (the test trunks' allowed source).
pub const CARRIER: &str = "127.0.0.2";
/// Longest wait for a state the node should reach.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The node under test, killed when dropped.
pub struct CenterNode {
    child: Child,
    pub dir: tempfile::TempDir,
    pub sip_port: u16,
    pub metrics_port: u16,
    /// The gRPC control API (h2c) on 127.0.0.1.
    pub control_port: u16,
}

impl Drop for CenterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CenterNode {
    pub fn start(manifests: &str) -> CenterNode {
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
            control_port,
        };
        node.wait_for("the node to be ready", || {
            node.http("/readyz").is_some_and(|(code, _)| code == 200)
        });
        node
    }

    /// The node's process id (for its CPU time and memory in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the node process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn recordings(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    pub fn http(&self, path: &str) -> Option<(u16, String)> {
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
    pub fn sample(&self, series: &str) -> Option<f64> {
        let (_, text) = self.http("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn agent_in(&self, seat: &str, state: &str) -> bool {
        self.sample(&format!(
            "switchboard_agent_state{{seat=\"{seat}\",state=\"{state}\"}}"
        )) == Some(1.0)
    }

    pub fn wait_for(&self, what: &str, ok: impl Fn() -> bool) {
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
    pub fn cdrs(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.recordings().join("cdr.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a CDR line is JSON"))
            .collect()
    }

    /// Waits for `n` CDR lines and returns them.
    pub fn wait_cdrs(&self, n: usize) -> Vec<serde_json::Value> {
        self.wait_for(&format!("{n} CDR line(s)"), || self.cdrs().len() >= n);
        self.cdrs()
    }

    /// SIPp from the carrier's address, calling number `number`, dialing `dialed`.
    pub fn caller(
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
    pub fn caller_sending(
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
    pub fn register(&self, ext: &str, port: u16) {
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
    pub fn feature_code(&self, ext: &str, code: &str) {
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
    pub fn log_in(&self, ext: &str) -> u16 {
        let port = free_port();
        self.register(ext, port);
        self.feature_code(ext, "*21");
        self.wait_for(&format!("{ext} ready"), || {
            self.agent_in(&format!("agent-{ext}"), "ready")
        });
        port
    }

    /// A seat's phone waiting on `port` for one offered call, answering it.
    pub fn agent_answers(&self, ext: &str, port: u16, scenario: &str) -> Sipp {
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
