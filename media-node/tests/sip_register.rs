//! The standalone node against a real SIP peer: SIPp (Debian `sip-tester`) registers a seat with
//! digest authentication over UDP and TCP, pings with OPTIONS, and is refused with a wrong
//! password; malformed input over UDP and TCP gets 400 or is dropped while the node keeps
//! serving. Each test starts its own node on a free loopback port and always kills it.
//!
//! SIPp is required: these tests fail (they do not skip) when `sipp` is missing.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_media-node");
/// How long a node may take to answer its first OPTIONS.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// Hard limit for one SIPp run (its own `-timeout` is shorter).
const SIPP_LIMIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("media-node lives in the workspace")
        .to_path_buf()
}

/// Fails loudly when SIPp is not installed.
fn require_sipp() {
    match Command::new("sipp").arg("-v").output() {
        Ok(_) => {}
        Err(e) => panic!(
            "sipp is required for the SIP tests but cannot be run ({e}). Install it with \
             `apt-get install -y sip-tester` (or `tests/k8s/install-packages sip`)."
        ),
    }
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// A running media-node, killed when dropped (also when the test fails).
struct Node {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let example = std::fs::read_to_string(repo_root().join("examples/minimal.yaml"))
            .expect("read examples/minimal.yaml");
        let config = dir.path().join("center.yaml");
        std::fs::write(&config, example).expect("write the config");
        let port = free_port();
        let child = Command::new(NODE)
            .arg("--config")
            .arg(&config)
            .args(["--sip-listen", "127.0.0.1", "--sip-port", &port.to_string()])
            .arg("--recordings-dir")
            .arg(dir.path().join("recordings"))
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start media-node");
        let mut node = Node {
            child,
            port,
            _dir: dir,
        };
        node.wait_until_answering();
        node
    }

    /// Sends OPTIONS until the node answers 200 (bounded).
    fn wait_until_answering(&mut self) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP probe");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set a read timeout");
        let local = socket.local_addr().expect("probe address");
        let deadline = Instant::now() + STARTUP_LIMIT;
        let mut attempt = 0;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let output = self.drain_output();
                panic!("media-node exited during startup with {status}:\n{output}");
            }
            attempt += 1;
            let probe = format!(
                "OPTIONS sip:localhost SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bK-probe-{attempt};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:probe@127.0.0.1>;tag=probe\r\n\
                 To: <sip:localhost>\r\n\
                 Call-ID: probe-{attempt}@127.0.0.1\r\n\
                 CSeq: {attempt} OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            if socket
                .send_to(probe.as_bytes(), ("127.0.0.1", self.port))
                .is_ok()
            {
                let mut buf = [0u8; 2048];
                if let Ok((n, _)) = socket.recv_from(&mut buf)
                    && buf[..n].starts_with(b"SIP/2.0 200 ")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let output = self.drain_output();
        panic!("media-node did not answer OPTIONS within {STARTUP_LIMIT:?}:\n{output}");
    }

    /// Stops the node and returns everything it printed.
    fn drain_output(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }

    /// Runs a scenario from `tests/sip/` once; returns SIPp's exit status and output.
    fn sipp(&mut self, scenario: &str, transport: &str) -> (ExitStatus, String) {
        let work = tempfile::tempdir().expect("temp dir for SIPp logs");
        let scenario_path = repo_root().join("tests/sip").join(scenario);
        let mut child = Command::new("sipp")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("-sf")
            .arg(&scenario_path)
            .args(["-t", transport])
            .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
            .args(["-key", "domain", "localhost"])
            .args(["-m", "1", "-timeout", "20s", "-timeout_error"])
            .args(["-nostdin", "-trace_err"])
            .current_dir(work.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sipp");
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
        let mut output = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut output);
        }
        // SIPp's unexpected-message log says what went wrong; its screen dump rarely does.
        if let Ok(entries) = std::fs::read_dir(work.path()) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    output.push_str(&format!("\n--- {}\n{text}", entry.path().display()));
                }
            }
        }
        (status, output)
    }

    /// Asserts a scenario succeeds (SIPp exit status 0: every call succeeded).
    fn assert_scenario(&mut self, scenario: &str, transport: &str) {
        let (status, output) = self.sipp(scenario, transport);
        if status.code() != Some(0) {
            let node_output = self.drain_output();
            panic!(
                "sipp {scenario} over {transport} failed with {status}:\n{output}\n\
                 --- media-node output\n{node_output}"
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn seat_registers_with_digest_over_udp() {
    require_sipp();
    let mut node = Node::start();
    node.assert_scenario("register.xml", "u1");
}

#[test]
fn seat_registers_with_digest_over_tcp() {
    require_sipp();
    let mut node = Node::start();
    node.assert_scenario("register.xml", "t1");
}

#[test]
fn wrong_password_is_refused_after_the_challenge() {
    require_sipp();
    let mut node = Node::start();
    node.assert_scenario("register-wrong-password.xml", "u1");
    node.assert_scenario("register-wrong-password.xml", "t1");
}

#[test]
fn options_ping_is_answered_and_node_stops_on_sigterm() {
    require_sipp();
    let mut node = Node::start();
    node.assert_scenario("options.xml", "u1");
    node.assert_scenario("options.xml", "t1");
    // SIGTERM through kill(1): the workspace forbids the unsafe code a direct kill(2) needs.
    let pid = node.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = node.child.try_wait().expect("poll media-node") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "media-node did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "media-node exited with {status} after SIGTERM"
    );
}

/// Reads one response (or until the peer closes or the bounded wait ends).
fn read_some(stream: &mut std::net::TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

#[test]
fn malformed_input_gets_400_or_is_dropped_and_the_node_keeps_serving() {
    use std::io::Write;
    require_sipp();
    let mut node = Node::start();
    let missing_call_id = "REGISTER sip:localhost SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-bad;rport\r\n\
        From: <sip:1001@localhost>;tag=a\r\n\
        To: <sip:1001@localhost>\r\n\
        CSeq: 1 REGISTER\r\n\
        Content-Length: 0\r\n\r\n";

    // UDP: garbage is dropped; a request without Call-ID gets 400 at the source (rport).
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    for junk in [&b"\x00\xff garbage"[..], b"INVITE\r\n\r\n", b"\r\n\r\n"] {
        udp.send_to(junk, ("127.0.0.1", node.port)).expect("send");
    }
    udp.send_to(missing_call_id.as_bytes(), ("127.0.0.1", node.port))
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = udp.recv_from(&mut buf).expect("a 400 over UDP");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        answer.starts_with("SIP/2.0 400 Missing or Malformed Call-ID\r\n"),
        "{answer}"
    );

    // TCP: the same request gets 400 on its connection; a CRLFCRLF ping gets a CRLF pong.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", node.port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    tcp.write_all(missing_call_id.replace("UDP", "TCP").as_bytes())
        .expect("write");
    let answer = read_some(&mut tcp);
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
    tcp.write_all(b"\r\n\r\n").expect("write a ping");
    assert_eq!(read_some(&mut tcp), "\r\n");

    // An endless header block is cut off at the size limit: the node closes the connection.
    let mut flood = std::net::TcpStream::connect(("127.0.0.1", node.port)).expect("connect");
    flood
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let line = format!("X-Padding: {}\r\n", "a".repeat(1000));
    let mut closed = false;
    for _ in 0..64 {
        if flood.write_all(line.as_bytes()).is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        // Closed means end-of-stream or a reset, not a read timeout.
        let mut buf = [0u8; 64];
        closed = match flood.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
    }
    assert!(
        closed,
        "an oversized header block must close the connection"
    );

    // Still serving everyone else.
    node.assert_scenario("options.xml", "u1");
    node.assert_scenario("register.xml", "t1");
}
