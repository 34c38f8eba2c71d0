//! What the SIPp-driven tests share: the in-process node, free loopback ports, the SIPp
//! process, and the check that SIPp is installed (these tests fail, never skip, without it).
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use media_node::call::{CallEngine, CallSettings};
use media_node::media::ports::PortAllocator;
use media_node::sip::digest::{DEFAULT_NONCE_LIFETIME, ha1};
use media_node::sip::{
    RegistrarPolicy, SeatAccount, SipListeners, SipMetrics, SipServer, SipSettings,
};

pub mod caller_audio;
pub mod center;

pub const REALM: &str = "localhost";
pub const PCAP: &str = "/usr/share/sip-tester/g711a.pcap";
/// Hard limit for one SIPp run (its own `-timeout` is shorter).
pub const SIPP_LIMIT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("media-node lives in the workspace")
        .to_path_buf()
}

/// Fails loudly when SIPp or its pcap is not installed.
pub fn require_sipp() {
    if let Err(e) = Command::new("sipp").arg("-v").output() {
        panic!(
            "sipp is required for the SIP call tests but cannot be run ({e}). Install it with \
             `apt-get install -y sip-tester`."
        );
    }
    assert!(
        Path::new(PCAP).exists(),
        "{PCAP} is missing: install the Debian `sip-tester` package"
    );
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// As [`free_port`], on another loopback address (free on 127.0.0.1 too).
pub fn free_port_on(ip: &str) -> u16 {
    for _ in 0..100 {
        let port = {
            let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
            tcp.local_addr().expect("local address").port()
        };
        let free = |host: &str| {
            TcpListener::bind((host, port)).is_ok() && UdpSocket::bind((host, port)).is_ok()
        };
        if free("127.0.0.1") && free(ip) {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// An even UDP port with the three above it free (SIPp's echo uses media port + 2).
pub fn free_media_port(ip: &str) -> u16 {
    for _ in 0..200 {
        let socket = UdpSocket::bind((ip, 0)).expect("bind a UDP port");
        let port = socket.local_addr().expect("local address").port() & !1;
        drop(socket);
        if port < 60_000 && (0..4).all(|i| UdpSocket::bind((ip, port + i)).is_ok()) {
            return port;
        }
    }
    panic!("no free media port block on loopback");
}

/// A free block of `len` UDP ports for the node's RTP range.
pub fn free_rtp_range(len: u16) -> (u16, u16) {
    for _ in 0..200 {
        let start = (20_000 + (rand_u16() % 20_000)) & !1;
        let sockets: Vec<_> = (start..start + len)
            .map_while(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
            .collect();
        if sockets.len() == usize::from(len) {
            return (start, start + len - 1);
        }
    }
    panic!("no free RTP port range on loopback");
}

pub fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let thread = format!("{:?}", std::thread::current().id());
    let mixed = nanos
        ^ thread
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
    (mixed % 65_521) as u16
}

/// Whether a socket is bound to `ip:port` (UDP, or a listening TCP socket), from
/// `/proc/net/{udp,tcp}`: columns `local_address` as `HEXIP:HEXPORT` (the IPv4 address in the
/// kernel's byte order, little-endian here) and `st` (`0A` is LISTEN for TCP).
pub fn bound(ip: &str, port: u16, tcp: bool) -> bool {
    let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else {
        return false;
    };
    let local = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    let any = format!("00000000:{port:04X}");
    let table = if tcp {
        "/proc/net/tcp"
    } else {
        "/proc/net/udp"
    };
    std::fs::read_to_string(table).is_ok_and(|text| {
        text.lines().skip(1).any(|line| {
            let mut columns = line.split_whitespace().skip(1);
            let (Some(address), Some(_remote), Some(state)) =
                (columns.next(), columns.next(), columns.next())
            else {
                return false;
            };
            (address == local || address == any) && (!tcp || state == "0A")
        })
    })
}

/// One SIPp process, killed when dropped.
pub struct Sipp {
    child: Option<Child>,
    work: tempfile::TempDir,
    scenario: String,
    /// Where its SIP socket listens (`-i`, `-p`) and whether over TCP.
    sip: (String, u16, bool),
}

impl Sipp {
    pub fn spawn(
        node_port: u16,
        ip: &str,
        scenario: &str,
        port: u16,
        media_port: Option<u16>,
        extra: &[&str],
    ) -> Sipp {
        let work = tempfile::tempdir().expect("temp dir for SIPp logs");
        let stdout = std::fs::File::create(work.path().join("stdout.txt")).expect("log file");
        let stderr = std::fs::File::create(work.path().join("stderr.txt")).expect("log file");
        let mut command = Command::new("sipp");
        command
            .arg(format!("127.0.0.1:{node_port}"))
            .arg("-sf")
            .arg(repo_root().join("tests/sip").join(scenario))
            .args(["-i", ip, "-p", &port.to_string()])
            .args(["-key", "domain", REALM, "-key", "pcap", PCAP])
            .args(["-m", "1", "-timeout", "30s", "-timeout_error"])
            .args(["-nostdin", "-trace_err"])
            .args(extra)
            .current_dir(work.path())
            .stdout(stdout)
            .stderr(stderr)
            .stdin(Stdio::null());
        if !extra.contains(&"-t") {
            command.args(["-t", "u1"]);
        }
        if let Some(mp) = media_port {
            command.args(["-mi", ip, "-mp", &mp.to_string()]);
        }
        let child = command.spawn().expect("start sipp");
        let tcp = extra
            .windows(2)
            .any(|w| w[0] == "-t" && w[1].starts_with('t'));
        Sipp {
            child: Some(child),
            work,
            scenario: scenario.to_string(),
            sip: (ip.to_string(), port, tcp),
        }
    }

    /// Waits (bounded) until SIPp's SIP socket is bound, so that a phone answering calls
    /// listens before anyone dials it: the kernel's socket table says so, without touching
    /// the port.
    pub fn listening(mut self) -> Sipp {
        let (ip, port, tcp) = self.sip.clone();
        let deadline = Instant::now() + SIPP_LIMIT;
        while !bound(&ip, port, tcp) {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let (_, output) = self.exited(status);
                panic!(
                    "sipp {} exited with {status} before it listened:{output}",
                    self.scenario
                );
            }
            assert!(
                Instant::now() < deadline,
                "sipp {} did not bind {ip}:{port} within {SIPP_LIMIT:?}",
                self.scenario
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    /// Waits (bounded) for SIPp to exit; returns its status and everything it logged.
    pub fn wait(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("sipp already waited for");
        let deadline = Instant::now() + SIPP_LIMIT;
        let status = loop {
            match child.try_wait().expect("poll sipp") {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    break child.wait().expect("reap sipp");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.exited(status)
    }

    /// The status of a SIPp that has exited, and everything it logged.
    fn exited(&mut self, status: ExitStatus) -> (ExitStatus, String) {
        self.child = None;
        let mut output = String::new();
        if let Ok(entries) = std::fs::read_dir(self.work.path()) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    output.push_str(&format!("\n--- {}\n{text}", entry.path().display()));
                }
            }
        }
        (status, output)
    }

    pub fn assert_ok(mut self, what: &str) {
        let (status, output) = self.wait();
        assert_eq!(
            status.code(),
            Some(0),
            "sipp {} ({what}) failed with {status}:\n{output}",
            self.scenario
        );
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Longest wait for the node to settle after a scenario (ports released, calls ended).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// The node in-process: a runtime serving SIP on 127.0.0.1 with calls on, seats 1001–1003
/// (password `practice-<ext>`), and its own metrics registry.
pub struct TestNode {
    runtime: tokio::runtime::Runtime,
    pub server: Arc<SipServer>,
    pub registry: prometheus::Registry,
    pub port: u16,
}

impl TestNode {
    /// Starts the node with `calls` (a free RTP range and 127.0.0.1 are filled in when left
    /// unset).
    pub fn start(mut calls: CallSettings) -> TestNode {
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
        if calls.ports.is_none() {
            let (min, max) = free_rtp_range(40);
            calls.ports = Some(PortAllocator::new(min, max).expect("RTP range"));
        }
        if calls.advertised_address.is_none() {
            calls.advertised_address = Some("127.0.0.1".parse().expect("an IP address"));
        }
        let registry = prometheus::Registry::new();
        let metrics = SipMetrics::new(&registry).expect("metrics");
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
            registry,
            port,
        }
    }

    pub fn engine(&self) -> &Arc<CallEngine> {
        self.server.calls().expect("calls are on")
    }

    /// Waits (bounded) until every call has ended, its ports are back and `also` holds.
    pub fn wait_settled(&self, also: impl Fn() -> bool) {
        let engine = self.engine();
        let deadline = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < deadline {
            if engine.ports().in_use() == 0
                && engine.counters().started() == engine.counters().ended()
                && also()
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

    /// The value of one sample (`name{labels}`) in the Prometheus text exposition.
    pub fn sample(&self, series: &str) -> Option<f64> {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("metrics encode");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().expect("a metric value"))
    }

    /// SIPp as a seat (from 127.0.0.1).
    pub fn seat(&self, scenario: &str, port: u16, media_port: Option<u16>, extra: &[&str]) -> Sipp {
        Sipp::spawn(self.port, "127.0.0.1", scenario, port, media_port, extra)
    }

    /// As [`Self::seat`], over TCP (`-t t1`).
    pub fn seat_tcp(
        &self,
        scenario: &str,
        port: u16,
        media_port: Option<u16>,
        extra: &[&str],
    ) -> Sipp {
        let mut args = vec!["-t", "t1"];
        args.extend_from_slice(extra);
        Sipp::spawn(self.port, "127.0.0.1", scenario, port, media_port, &args)
    }

    /// Seat 1002 registers and plays `uas` echoing RTP; seat 1001 calls it playing `uac`
    /// (over TCP with `caller_tcp`). Both scenarios must pass, the node settle, and RTP have
    /// been relayed both ways.
    pub fn seat_call(&self, uas: &str, uac: &str, caller_tcp: bool) {
        let callee_port = free_port();
        self.register_callee(callee_port);
        let callee = self
            .seat(
                uas,
                callee_port,
                Some(free_media_port("127.0.0.1")),
                &["-rtp_echo"],
            )
            // The callee listens before the caller dials.
            .listening();
        let media = Some(free_media_port("127.0.0.1"));
        let caller = if caller_tcp {
            self.seat_tcp(uac, free_port(), media, &["-s", "1002"])
        } else {
            self.seat(uac, free_port(), media, &["-s", "1002"])
        };
        caller.assert_ok("caller 1001");
        callee.assert_ok("callee 1002");
        self.wait_settled(|| true);
        self.assert_relayed_both_ways();
    }

    /// Asserts the node relayed RTP in both directions.
    pub fn assert_relayed_both_ways(&self) {
        let stats = self.engine().relay_stats();
        let forward = stats.caller_to_callee.load(Ordering::Relaxed);
        let back = stats.callee_to_caller.load(Ordering::Relaxed);
        eprintln!("relayed {forward} RTP packets caller→callee, {back} callee→caller");
        assert!(forward > 0, "no RTP relayed from caller to callee");
        assert!(back > 0, "no RTP relayed from callee (echo) back to caller");
    }

    /// Seat 1002 registers from `port` (where its answering scenario will then listen).
    pub fn register_callee(&self, port: u16) {
        self.seat("call-register-1002.xml", port, None, &[])
            .assert_ok("register 1002");
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

/// Checks a call's recording against its CDR line: a stereo 8 kHz WAV as long as the call
/// (answer to hang-up, within a second: audio starts a moment after the answer and the last
/// frames may be in flight), with audio on both channels (the caller's on the left, the other
/// party's on the right).
pub fn assert_recording_of_the_call(bytes: &[u8], cdr: &serde_json::Value) {
    let view = media_node::media::wav::parse(bytes).expect("a valid WAV");
    assert_eq!((view.format.channels, view.format.sample_rate), (2, 8000));
    let at = |field: &str| -> chrono::DateTime<chrono::Utc> {
        cdr[field]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{field} in {cdr}"))
    };
    let call_ms = (at("endedAt") - at("answeredAt")).num_milliseconds() as f64;
    let wav_ms = view.frames() as f64 / 8.0;
    eprintln!("recording {wav_ms} ms, call {call_ms} ms");
    assert!(
        (wav_ms - call_ms).abs() < 1000.0,
        "recording {wav_ms} ms vs call {call_ms} ms"
    );
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
}
