//! The highest sustained rate of calls that go through the IVR and the queue to an answering
//! agent: the real `media-node` binary serving a call center from manifests (standalone mode),
//! driven by SIPp on loopback. Prints numbers; asserts nothing about them.
//!
//! The center: entry point `200` → IVR menu `main` (the 15 s `campus/welcome.wav`, key 1
//! barges in) → Queue `support` (LongestIdle, no wrap-up) → `--seats` seats, registered (all
//! with the same Contact) and logged in (Ready) through the control API before measuring.
//! One SIPp UAS answers for every seat and echoes the audio it gets. One SIPp UAC is the
//! carrier on 127.0.0.2: per step it places `rate × --seconds` calls at a fixed rate; each
//! call presses 1 at 1 s, speaks (a tone) from 1.5 s, and hangs up `--hold-ms` after the
//! node answered it (IVR + queue + talk to the agent).
//!
//! A step *passes* when the callers' SIPp counts every call successful and none failed, the
//! agents' SIPp none failed, every call has a CDR `answered` by a seat through the queue
//! (`ivrPath` `main:1`), and the node settles afterwards (no RTP port pair leased, nobody
//! waiting, every agent Ready again). Stepping stops at the first step that does not pass.
//! Between steps the node must be idle. The node's log and CDRs are copied to
//! `target/tmp/center_call_rate/` at the end.
//!
//! Run: `cargo bench -p media-node --bench center_call_rate [-- --rates 2,5,10,20,40
//! --seconds 20 --seats 600 --hold-ms 4000]`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use media_node::sip::digest::answer_challenge;
use support::caller_audio::caller_pcap;
use support::center::{CARRIER, CenterNode};
use support::{REALM, free_media_port, free_port, free_port_on, free_rtp_range, repo_root};
use switchboard_proto::node::v1::node_control_client::NodeControlClient;
use switchboard_proto::node::v1::{AgentState, SetAgentStateRequest};

/// When the caller presses 1 (ms after the node answered it).
const KEY_MS: u32 = 1000;
/// Longest wait for the node to become idle after a step.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);
/// How often the node's memory and the callers' SIPp CPU time are sampled during a step.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

struct Settings {
    rates: Vec<u32>,
    seconds: u32,
    seats: u32,
    hold_ms: u32,
}

impl Settings {
    fn from_args() -> Settings {
        let mut settings = Settings {
            rates: vec![2, 5, 10, 20, 40, 80, 120, 140, 160, 200],
            seconds: 20,
            seats: 600,
            hold_ms: 4000,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .unwrap_or_else(|| panic!("{name} needs a value"))
            };
            let number = |name: &str, v: String| -> u32 {
                v.parse()
                    .unwrap_or_else(|e| panic!("{name} {v}: {e} (a whole number)"))
            };
            match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench target.
                "--bench" => {}
                "--rates" => {
                    settings.rates = value("--rates")
                        .split(',')
                        .map(|r| number("--rates", r.trim().to_string()))
                        .collect();
                }
                "--seconds" => settings.seconds = number("--seconds", value("--seconds")),
                "--seats" => settings.seats = number("--seats", value("--seats")),
                "--hold-ms" => settings.hold_ms = number("--hold-ms", value("--hold-ms")),
                other => panic!(
                    "unknown argument {other}; usage: center_call_rate [--rates 2,5,10] \
                     [--seconds 20] [--seats 600] [--hold-ms 4000]"
                ),
            }
        }
        assert!(
            !settings.rates.is_empty() && settings.rates.iter().all(|&r| r > 0),
            "--rates needs positive rates"
        );
        assert!(
            settings.hold_ms > KEY_MS + 1000,
            "--hold-ms must leave time for the IVR and a talk"
        );
        assert!(settings.seats > 0, "--seats must be positive");
        settings
    }
}

/// The seats' extensions: 2001, 2002, …
fn extensions(seats: u32) -> Vec<String> {
    (0..seats).map(|i| (2001 + i).to_string()).collect()
}

/// The benchmark's call center (see the module documentation).
fn manifests(seats: &[String], rtp: (u16, u16)) -> String {
    let mut passwords = String::new();
    let mut seat_docs = String::new();
    for ext in seats {
        passwords.push_str(&format!("  \"{ext}\": practice-{ext}\n"));
        seat_docs.push_str(&format!(
            "---\napiVersion: switchboard.dev/v1alpha1\nkind: Seat\nmetadata: {{name: agent-{ext}}}\n\
             spec:\n  callCenter: bench\n  extension: \"{ext}\"\n  displayName: Agent {ext}\n  \
             credentials: {{name: seat-passwords, key: \"{ext}\"}}\n  queues: [{{name: support}}]\n"
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: seat-passwords}}
stringData:
{passwords}---
apiVersion: switchboard.dev/v1alpha1
kind: CallCenter
metadata: {{name: bench}}
spec:
  sip: {{domain: {REALM}}}
  rtp: {{minPort: {min}, maxPort: {max}}}
  recording: {{mode: Never}}
  trunks:
  - name: carrier
    peer: {{host: {CARRIER}}}
    allowedSources: ["{CARRIER}"]
    # The trunk must never be what refuses a call.
    channels: {{limit: 10000, minChannels: 1, maxChannels: 10000}}
  entryPoints:
  - {{number: "200", route: {{action: Menu, target: main}}}}
  ivrMenus:
  - name: main
    prompt: campus/welcome.wav
    timeoutSeconds: 5
    maxRetries: 1
    options:
    - {{digit: "1", route: {{action: Queue, target: support}}}}
---
apiVersion: switchboard.dev/v1alpha1
kind: Queue
metadata: {{name: support}}
spec:
  callCenter: bench
  strategy: LongestIdle
  wrapUpSeconds: 0
  ringTimeoutSeconds: 10
  maxLength: 10000
  maxWaitSeconds: 600
{seat_docs}"#,
        min = rtp.0,
        max = rtp.1,
    )
}

/// A long-running SIPp process (a load, not one call), killed when dropped. Its statistics
/// go to `stats.csv` (`-trace_stat`), its errors to `errors.log`.
struct SippLoad {
    child: Option<Child>,
    work: tempfile::TempDir,
    pid: u32,
}

impl SippLoad {
    fn spawn(
        node: &CenterNode,
        ip: &str,
        scenario: &str,
        port: u16,
        media_port: Option<u16>,
        extra: &[String],
    ) -> SippLoad {
        let work = tempfile::tempdir().expect("temp dir for SIPp logs");
        let log = |name: &str| std::fs::File::create(work.path().join(name)).expect("log file");
        let mut command = Command::new("sipp");
        command
            .arg(format!("127.0.0.1:{}", node.sip_port))
            .arg("-sf")
            .arg(repo_root().join("tests/sip").join(scenario))
            .args(["-i", ip, "-p", &port.to_string(), "-t", "u1"])
            .args(["-key", "domain", REALM])
            .args(["-nostdin", "-trace_stat", "-stf", "stats.csv", "-fd", "1"])
            .args(["-trace_err", "-error_file", "errors.log"])
            .args(extra)
            .current_dir(work.path())
            .stdout(log("stdout.txt"))
            .stderr(log("stderr.txt"))
            .stdin(Stdio::null());
        if let Some(mp) = media_port {
            command.args(["-mi", ip, "-mp", &mp.to_string()]);
        }
        let child = command.spawn().expect("start sipp");
        let pid = child.id();
        SippLoad {
            child: Some(child),
            work,
            pid,
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("poll sipp")?;
        self.child = None;
        Some(status)
    }

    fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIPp's last statistics line, by column name (`-trace_stat` writes every second and
    /// at exit).
    fn stats(&self) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.work.path().join("stats.csv")).unwrap_or_default();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else {
            return BTreeMap::new();
        };
        let Some(last) = lines.next_back() else {
            return BTreeMap::new();
        };
        header
            .split(';')
            .zip(last.split(';'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn count(&self, column: &str) -> u64 {
        self.stats()
            .get(column)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The first lines SIPp logged as errors (and its stderr).
    fn errors(&self, lines: usize) -> String {
        ["errors.log", "stderr.txt"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.work.path().join(f)).ok())
            .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| !l.trim().is_empty())
            .take(lines)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for SippLoad {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU time (user + system, all threads) of a process in seconds, while it runs.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces; fields are counted after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

const RELAYED: &str = "switchboard_rtp_packets_total";
const MEDIA_DROPPED: &str = "switchboard_media_dropped_total";

const PORT_PAIRS: &str = "switchboard_rtp_port_pairs_in_use";
const WAITING: &str = "switchboard_queue_calls_waiting{queue=\"support\"}";
const READY: &str = "switchboard_queue_agents{queue=\"support\",state=\"ready\"}";
const ACTIVE: &str = "switchboard_calls_active";

/// One `/metrics` scrape.
struct Scrape(String);

impl Scrape {
    fn of(node: &CenterNode) -> Scrape {
        Scrape(node.http("/metrics").map(|(_, t)| t).unwrap_or_default())
    }

    /// One series (`name{labels}`); NaN when absent.
    fn get(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// The sum of every series of a metric (all label values).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(name))
            .filter(|l| matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum()
    }

    /// Whether the node is idle: no port pair leased, nobody waiting, no call up, every
    /// agent Ready.
    fn idle(&self, seats: usize) -> bool {
        self.get(PORT_PAIRS) == 0.0
            && self.get(WAITING) == 0.0
            && self.get(ACTIVE) == 0.0
            && self.get(READY) == seats as f64
    }
}

/// Waits (bounded) until the node is idle; false when it is not within `SETTLE_LIMIT`.
fn wait_idle(node: &CenterNode, seats: usize) -> bool {
    let deadline = Instant::now() + SETTLE_LIMIT;
    while Instant::now() < deadline {
        if Scrape::of(node).idle(seats) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

/// Registers every seat's phone with the same Contact, `127.0.0.1:port`, where the agents'
/// SIPp then answers. The node sends a seat's calls to the address its REGISTER came from,
/// so every REGISTER must come from `port`: one SIPp run per seat would take minutes for
/// hundreds of seats, so this setup step speaks SIP itself (digest answered with the node's
/// own `answer_challenge`).
fn register_seats(node: &CenterNode, seats: &[String], port: u16) {
    let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind the agents' port");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("a read timeout");
    let to = SocketAddr::from(([127, 0, 0, 1], node.sip_port));
    for ext in seats {
        let call_id = format!("bench-register-{ext}-{port}");
        let request = |cseq: u32, authorization: &str| {
            format!(
                "REGISTER sip:{REALM} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call_id}-{cseq};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:{ext}@{REALM}>;tag=bench{ext}\r\n\
                 To: <sip:{ext}@{REALM}>\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:{ext}@127.0.0.1:{port};transport=UDP>\r\n\
                 Expires: 3600\r\n\
                 {authorization}Content-Length: 0\r\n\r\n"
            )
        };
        let challenge = exchange(&socket, to, &request(1, ""), 401);
        let www = challenge
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("WWW-Authenticate")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no challenge for {ext}:\n{challenge}"));
        let answer = answer_challenge(
            &www,
            ext,
            &format!("practice-{ext}"),
            "REGISTER",
            &format!("sip:{REALM}"),
        )
        .unwrap_or_else(|e| panic!("answer the challenge for {ext}: {e}"));
        exchange(
            &socket,
            to,
            &request(2, &format!("Authorization: {answer}\r\n")),
            200,
        );
    }
    node.wait_for("every seat registered", || {
        node.sample("switchboard_registered_seats") == Some(seats.len() as f64)
    });
}

/// Sends a request and returns the final response with status `expect` (retransmitting a
/// few times, as UDP needs).
fn exchange(socket: &UdpSocket, to: SocketAddr, request: &str, expect: u16) -> String {
    let call_id = request
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap_or_default()
        .to_string();
    let mut buf = vec![0u8; 65_535];
    for _attempt in 0..4 {
        socket
            .send_to(request.as_bytes(), to)
            .expect("send a REGISTER");
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            let response = String::from_utf8_lossy(&buf[..n]).to_string();
            let status: Option<u16> = response
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok());
            if !response.contains(&call_id) || status.is_none_or(|s| s < 200) {
                continue;
            }
            assert_eq!(status, Some(expect), "for\n{request}\ngot\n{response}");
            return response;
        }
    }
    panic!("no answer to\n{request}");
}

/// Logs every seat in (Ready) through the node's gRPC control API.
fn log_in_seats(node: &CenterNode, seats: &[String]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut client =
            NodeControlClient::connect(format!("http://127.0.0.1:{}", node.control_port))
                .await
                .expect("connect to the control API");
        for ext in seats {
            let seat = format!("agent-{ext}");
            let reply = client
                .set_agent_state(SetAgentStateRequest {
                    seat: seat.clone(),
                    state: AgentState::Ready as i32,
                    not_ready_reason: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("log {seat} in: {e}"));
            assert_eq!(reply.into_inner().state(), AgentState::Ready, "{seat}");
        }
    });
    node.wait_for("every agent Ready", || {
        node.sample(READY) == Some(seats.len() as f64)
    });
}

/// What one step measured.
#[derive(Default)]
struct Step {
    rate: u32,
    calls: u32,
    /// The arrival rate the node saw (CDR `offeredAt`, first to last call).
    offered_rate: f64,
    sipp_exit: String,
    sipp_ok: u64,
    sipp_failed: u64,
    sipp_retransmissions: u64,
    /// Calls the agents' SIPp ended well / failed during the step.
    agent_ok: u64,
    agent_failed: u64,
    cdrs: usize,
    answered: usize,
    /// Other CDR outcomes (or answered not through the queue), by name.
    lost: BTreeMap<String, usize>,
    wait_p50: f64,
    wait_p95: f64,
    wait_max: f64,
    talk_p50: f64,
    /// From the first call to the caller SIPp's exit.
    wall: f64,
    node_cpu: f64,
    caller_cpu: f64,
    agent_cpu: f64,
    node_rss_peak_kib: u64,
    /// RTP packets the node relayed between caller and agent (both directions).
    relayed: f64,
    media_dropped: f64,
    /// Most calls up at once (CDR `offeredAt` to `endedAt`) and most agents talking at once
    /// (`answeredAt` to `endedAt`).
    peak_calls: usize,
    peak_talking: usize,
    settled: bool,
    node_warnings: usize,
    node_errors: usize,
    node_panics: usize,
}

impl Step {
    fn passed(&self) -> bool {
        self.sipp_exit == "0"
            && self.sipp_ok == u64::from(self.calls)
            && self.sipp_failed == 0
            && self.agent_failed == 0
            && self.answered == self.calls as usize
            && self.cdrs == self.calls as usize
            && self.settled
            && self.node_panics == 0
    }
}

/// The most intervals overlapping at one instant.
fn most_at_once(intervals: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    // Ends sort before starts at the same instant.
    let mut edges: Vec<(DateTime<Utc>, i32)> = intervals
        .iter()
        .flat_map(|&(from, to)| [(from, 1), (to, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct Bench {
    node: CenterNode,
    agents: SippLoad,
    seats: usize,
    hold_ms: u32,
    seconds: u32,
    ticks: f64,
}

impl Bench {
    fn run_step(&mut self, index: usize, rate: u32) -> Step {
        let calls = rate * self.seconds;
        let prefix = format!("+4930{index:02}5");
        let node_pid = self.node.pid();
        let pcap = caller_pcap(
            self.node.dir.path(),
            &format!("caller-{rate}"),
            &[(KEY_MS, '1')],
            Some((KEY_MS + 500, self.hold_ms.saturating_sub(100))),
        );
        let log_before = self.node.log().len();
        let before = Scrape::of(&self.node);
        let agent_ok_before = self.agents.count("SuccessfulCall(C)");
        let agent_failed_before = self.agents.count("FailedCall(C)");
        let node_cpu_before = cpu_seconds(node_pid, self.ticks).unwrap_or(f64::NAN);
        let agent_cpu_before = cpu_seconds(self.agents.pid, self.ticks).unwrap_or(f64::NAN);
        let hold_s = self.hold_ms.div_ceil(1000);
        // SIPp's own bound; the loop below has a longer one.
        let sipp_timeout = self.seconds + hold_s + 60;
        let limit = rate * (hold_s + 30);
        let mut caller = SippLoad::spawn(
            &self.node,
            CARRIER,
            "bench-caller.xml",
            free_port_on(CARRIER),
            Some(free_media_port(CARRIER)),
            &[
                "-s".into(),
                "200".into(),
                "-key".into(),
                "prefix".into(),
                prefix.clone(),
                "-key".into(),
                "keys".into(),
                pcap.to_str().expect("a UTF-8 path").into(),
                "-d".into(),
                self.hold_ms.to_string(),
                "-r".into(),
                rate.to_string(),
                "-rp".into(),
                "1000".into(),
                "-m".into(),
                calls.to_string(),
                "-l".into(),
                limit.to_string(),
                "-recv_timeout".into(),
                "30000".into(),
                "-timeout".into(),
                format!("{sipp_timeout}s"),
                "-timeout_error".into(),
            ],
        );
        let started = Instant::now();
        let deadline = started + Duration::from_secs(u64::from(sipp_timeout) + 30);
        let mut step = Step {
            rate,
            calls,
            ..Step::default()
        };
        let mut caller_cpu = 0.0;
        let mut last_sample = Instant::now() - SAMPLE_EVERY;
        let status = loop {
            if let Some(status) = caller.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                eprintln!("the callers' SIPp did not end in time; killed");
                break caller.kill();
            }
            if last_sample.elapsed() >= SAMPLE_EVERY {
                last_sample = Instant::now();
                // The last value read before SIPp exits (its /proc entry goes with it).
                if let Some(cpu) = cpu_seconds(caller.pid, self.ticks) {
                    caller_cpu = cpu;
                }
                if let Some(rss) = rss_kib(node_pid) {
                    step.node_rss_peak_kib = step.node_rss_peak_kib.max(rss);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        step.wall = started.elapsed().as_secs_f64();
        step.caller_cpu = caller_cpu;
        step.node_cpu = cpu_seconds(node_pid, self.ticks).unwrap_or(f64::NAN) - node_cpu_before;
        step.agent_cpu =
            cpu_seconds(self.agents.pid, self.ticks).unwrap_or(f64::NAN) - agent_cpu_before;
        step.sipp_exit = status.map_or("killed".into(), |s| {
            s.code().map_or(format!("{s}"), |c| c.to_string())
        });
        step.sipp_ok = caller.count("SuccessfulCall(C)");
        step.sipp_failed = caller.count("FailedCall(C)");
        step.sipp_retransmissions = caller.count("Retransmissions(C)");
        if step.sipp_exit != "0" {
            eprintln!("callers' SIPp errors (first lines):\n{}", caller.errors(15));
        }

        step.settled = wait_idle(&self.node, self.seats);
        if !step.settled {
            let now = Scrape::of(&self.node);
            eprintln!(
                "the node did not settle within {SETTLE_LIMIT:?}: {} port pair(s) leased, {} \
                 waiting, {} call(s) active, {} of {} agents Ready",
                now.get(PORT_PAIRS),
                now.get(WAITING),
                now.get(ACTIVE),
                now.get(READY),
                self.seats
            );
        }
        let after = Scrape::of(&self.node);
        step.relayed = after.sum(RELAYED) - before.sum(RELAYED);
        step.media_dropped = after.sum(MEDIA_DROPPED) - before.sum(MEDIA_DROPPED);
        // The agents' SIPp writes its statistics every second.
        std::thread::sleep(Duration::from_millis(1500));
        let agent_ok = self.agents.count("SuccessfulCall(C)") - agent_ok_before;
        let agent_failed = self.agents.count("FailedCall(C)") - agent_failed_before;
        step.agent_ok = agent_ok;
        step.agent_failed = agent_failed;
        if agent_failed > 0 {
            eprintln!(
                "the agents' SIPp: {agent_ok} call(s) ended well, {agent_failed} failed:\n{}",
                self.agents.errors(10)
            );
        }

        let cdrs: Vec<serde_json::Value> = self
            .node
            .cdrs()
            .into_iter()
            .filter(|c| c["from"].as_str().is_some_and(|f| f.starts_with(&prefix)))
            .collect();
        step.cdrs = cdrs.len();
        let mut waits = Vec::new();
        let mut talks = Vec::new();
        let mut offered: Vec<DateTime<Utc>> = Vec::new();
        let mut calls_up = Vec::new();
        let mut talking = Vec::new();
        let time = |c: &serde_json::Value, field: &str| -> Option<DateTime<Utc>> {
            c[field].as_str().and_then(|t| t.parse().ok())
        };
        for cdr in &cdrs {
            offered.extend(time(cdr, "offeredAt"));
            if let (Some(o), Some(e)) = (time(cdr, "offeredAt"), time(cdr, "endedAt")) {
                calls_up.push((o, e));
            }
            if let (Some(a), Some(e)) = (time(cdr, "answeredAt"), time(cdr, "endedAt")) {
                talking.push((a, e));
            }
            let through_queue = cdr["outcome"] == "answered"
                && cdr["seat"].is_string()
                && cdr["queue"] == "support"
                && cdr["ivrPath"] == serde_json::json!(["main:1"]);
            if through_queue {
                step.answered += 1;
                waits.extend(cdr["waitSeconds"].as_f64());
                if let (Some(a), Some(e)) = (time(cdr, "answeredAt"), time(cdr, "endedAt")) {
                    talks.push((e - a).num_milliseconds() as f64 / 1000.0);
                }
            } else {
                let what = format!(
                    "{} ({})",
                    cdr["outcome"].as_str().unwrap_or("?"),
                    cdr["hangupCause"].as_str().unwrap_or("-")
                );
                *step.lost.entry(what).or_default() += 1;
            }
        }
        step.peak_calls = most_at_once(&calls_up);
        step.peak_talking = most_at_once(&talking);
        waits.sort_by(f64::total_cmp);
        talks.sort_by(f64::total_cmp);
        step.wait_p50 = percentile(&waits, 0.5);
        step.wait_p95 = percentile(&waits, 0.95);
        step.wait_max = waits.last().copied().unwrap_or(f64::NAN);
        step.talk_p50 = percentile(&talks, 0.5);
        offered.sort();
        if let (Some(first), Some(last)) = (offered.first(), offered.last())
            && offered.len() > 1
        {
            let span = (*last - *first).num_milliseconds() as f64 / 1000.0;
            step.offered_rate = (offered.len() - 1) as f64 / span.max(0.001);
        }

        let log = self.node.log();
        let new = log.get(log_before..).unwrap_or_default();
        for line in new.lines() {
            if line.contains("panicked") {
                step.node_panics += 1;
            } else if line.contains("ERROR") {
                step.node_errors += 1;
            } else if line.contains("WARN") {
                step.node_warnings += 1;
            }
        }
        if step.node_panics + step.node_errors + step.node_warnings > 0 {
            let mut shown = 0;
            eprintln!("node log, warnings and errors of this step (first 10):");
            for line in new.lines() {
                if (line.contains("panicked") || line.contains("ERROR") || line.contains("WARN"))
                    && shown < 10
                {
                    eprintln!("  {line}");
                    shown += 1;
                }
            }
        }
        if !self.node.running() {
            eprintln!("the node exited; its log ends:\n{}", tail(&log, 30));
            step.settled = false;
        }
        step
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn print_table(steps: &[Step], seats: usize) {
    let row = |name: &str, f: &dyn Fn(&Step) -> String| {
        let mut line = format!("| {name} |");
        for s in steps {
            line.push_str(&format!(" {} |", f(s)));
        }
        println!("{line}");
    };
    row("target rate (calls/s)", &|s| format!("{}/s", s.rate));
    let mut sep = String::from("|---|");
    for _ in steps {
        sep.push_str("---|");
    }
    println!("{sep}");
    row("arrival rate at the node", &|s| {
        format!("{:.1}/s", s.offered_rate)
    });
    row("calls placed", &|s| s.calls.to_string());
    row("SIPp successful / failed (exit)", &|s| {
        format!("{} / {} ({})", s.sipp_ok, s.sipp_failed, s.sipp_exit)
    });
    row("agents' SIPp: calls ended well / failed", &|s| {
        format!("{} / {}", s.agent_ok, s.agent_failed)
    });
    row("answered by an agent via IVR + queue (CDR)", &|s| {
        format!("{} / {}", s.answered, s.cdrs)
    });
    row("other CDR outcomes", &|s| {
        if s.lost.is_empty() {
            "none".into()
        } else {
            s.lost
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    });
    row("queue wait p50 / p95 / max", &|s| {
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            s.wait_p50 * 1000.0,
            s.wait_p95 * 1000.0,
            s.wait_max * 1000.0
        )
    });
    row("talk time p50 (agent answer to hang-up)", &|s| {
        format!("{:.2} s", s.talk_p50)
    });
    row("most calls up / agents talking at once", &|s| {
        format!("{} / {}", s.peak_calls, s.peak_talking)
    });
    row("node CPU (of one core, over the step)", &|s| {
        format!("{:.0} %", 100.0 * s.node_cpu / s.wall)
    });
    row("node CPU per call", &|s| {
        format!("{:.1} ms", 1000.0 * s.node_cpu / f64::from(s.calls))
    });
    row("callers' SIPp CPU / agents' SIPp CPU", &|s| {
        format!(
            "{:.0} % / {:.0} %",
            100.0 * s.caller_cpu / s.wall,
            100.0 * s.agent_cpu / s.wall
        )
    });
    row("node RSS peak", &|s| {
        format!("{:.0} MiB", s.node_rss_peak_kib as f64 / 1024.0)
    });
    row(
        "RTP packets relayed caller ⇄ agent / media dropped",
        &|s| format!("{:.0} / {:.0}", s.relayed, s.media_dropped),
    );
    row("SIPp retransmissions", &|s| {
        s.sipp_retransmissions.to_string()
    });
    row("node log warnings / errors / panics", &|s| {
        format!(
            "{} / {} / {}",
            s.node_warnings, s.node_errors, s.node_panics
        )
    });
    row("node settled after the step", &|s| {
        if s.settled { "yes" } else { "no" }.into()
    });
    row("passed", &|s| if s.passed() { "yes" } else { "no" }.into());
    println!("({seats} agents logged in; step wall time includes the last calls' hold time)");
}

fn main() {
    let settings = Settings::from_args();
    let seats = extensions(settings.seats);
    let hold_s = settings.hold_ms.div_ceil(1000);
    // Two port pairs per call (caller and agent leg), calls of up to hold + 30 s at the
    // highest rate, with room to spare; at most 20,000 ports.
    let max_rate = settings.rates.iter().copied().max().unwrap_or(1);
    let ports = (max_rate * (hold_s + 5) * 4 * 2).clamp(400, 20_000) as u16;
    let rtp = free_rtp_range(ports);
    println!(
        "center_call_rate: {} seats, rates {:?}/s for {} s each, calls of {} ms (key 1 at {KEY_MS} \
         ms), RTP ports {}-{}, load average {}",
        settings.seats,
        settings.rates,
        settings.seconds,
        settings.hold_ms,
        rtp.0,
        rtp.1,
        load_average()
    );
    let t0 = Instant::now();
    let node = CenterNode::start(&manifests(&seats, rtp));
    let agent_port = free_port();
    register_seats(&node, &seats, agent_port);
    let agents = SippLoad::spawn(
        &node,
        "127.0.0.1",
        "bench-seat-uas.xml",
        agent_port,
        Some(free_media_port("127.0.0.1")),
        &["-rtp_echo".into(), "-l".into(), "10000".into()],
    );
    log_in_seats(&node, &seats);
    println!(
        "node up, {} seats registered and Ready in {:.1} s",
        seats.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut bench = Bench {
        node,
        agents,
        seats: seats.len(),
        hold_ms: settings.hold_ms,
        seconds: settings.seconds,
        ticks: clock_ticks(),
    };
    let mut steps: Vec<Step> = Vec::new();
    for (index, &rate) in settings.rates.iter().enumerate() {
        if !wait_idle(&bench.node, bench.seats) {
            println!("the node is not idle before the {rate}/s step; stopping");
            break;
        }
        println!(
            "step {rate}/s: {} calls, load average {}",
            rate * settings.seconds,
            load_average()
        );
        let step = bench.run_step(index, rate);
        let passed = step.passed();
        println!(
            "  {}: {} of {} answered by an agent, SIPp {} ok / {} failed, node CPU {:.1} s",
            if passed { "passed" } else { "LOST CALLS" },
            step.answered,
            step.calls,
            step.sipp_ok,
            step.sipp_failed,
            step.node_cpu
        );
        steps.push(step);
        if !passed {
            break;
        }
    }
    println!();
    print_table(&steps, bench.seats);
    match steps.iter().filter(|s| s.passed()).map(|s| s.rate).max() {
        Some(rate) if steps.iter().all(|s| s.passed()) => println!(
            "\nhighest sustained rate: {rate} calls/s (every step passed; the limit is above the \
             last rate tried)"
        ),
        Some(rate) => println!("\nhighest sustained rate: {rate} calls/s"),
        None => println!("\nhighest sustained rate: none (the first step lost calls)"),
    }
    let agent_errors = bench.agents.errors(5);
    if !agent_errors.is_empty() {
        println!("agents' SIPp errors (first lines):\n{agent_errors}");
    }
    // The node's log and CDRs outlive its temporary directory, for a closer look.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("center_call_rate");
    if std::fs::create_dir_all(&kept).is_ok() {
        let _ = std::fs::copy(
            bench.node.dir.path().join("node.log"),
            kept.join("node.log"),
        );
        let _ = std::fs::copy(
            bench.node.recordings().join("cdr.jsonl"),
            kept.join("cdr.jsonl"),
        );
        println!("node log and CDRs: {}", kept.display());
    }
}
