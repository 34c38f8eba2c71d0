//! The media-node binary run as the operator runs it: from a `node-config.yaml` built by the
//! operator's own `build_node_config` (from `examples/minimal.yaml`), with the pod's
//! environment. Checks the probes, the metrics and the gRPC control API over loopback:
//! `/readyz` turns 200, `/metrics` shows `switchboard_*` metrics, `ApplyConfig` answers
//! APPLIED, UNCHANGED, STALE and REJECTED by the generation rules, and `WatchState` reports
//! the node, then a seat's registration once a phone registers with the config's HA1; a seat
//! added by a later `ApplyConfig` registers at once, without a restart. Every listener is on 127.0.0.1 port 0 (the node prints the addresses); the child
//! is always killed. Waits are bounded; nothing is timed.
//!
//! A second node starts on a recordings directory prepared beforehand (a CDR file, voicemail
//! messages written with `Mailboxes`) and a trunk: `ListCallRecords`, `ListVoicemail` and
//! `FetchVoicemail` serve them and refuse what they must, and the trunk's traffic figures
//! and `switchboard_trunk_offered_erlangs` are reported.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use media_node::recording::cdr::{CallDetailRecord, CallDirection, CallOutcome, CdrWriter};
use media_node::recording::voicemail::{Mailboxes, VoicemailMessage};
use media_node::recording::wav_writer::{CallRecorder, RecorderOptions, Side};
use switchboard_crds::{CallCenter, Queue, Seat};
use switchboard_proto::node::v1::apply_config_reply::Outcome;
use switchboard_proto::node::v1::node_control_client::NodeControlClient;
use switchboard_proto::node::v1::{
    AgentState, ConfigSnapshot, FetchVoicemailRequest, ListCallRecordsRequest,
    ListVoicemailRequest, NodeRole, NodeState, SeatState, SetAgentStateRequest, WatchStateRequest,
};
use switchboard_proto::node_config::{NodeConfig, build_node_config};
use switchboard_proto::replication::v1::replication_client::ReplicationClient;
use switchboard_proto::replication::v1::{
    AgentState as ReplicatedAgentState, CallRecord, Delta, Direction as ReplicatedDirection,
    FollowRequest, ReplicationMessage, delta, replication_message,
};

mod support;

const NODE: &str = env!("CARGO_BIN_EXE_media-node");
/// Upper bound for the node to print its addresses and for `/readyz` to turn 200.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "college";
const POD_NAME: &str = "minimal-media-0";

/// The node config the operator would write for `examples/minimal.yaml` in `college`.
fn operator_config(generation: i64) -> NodeConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/minimal.yaml");
    let text = std::fs::read_to_string(&path).expect("read examples/minimal.yaml");
    let mut center: Option<CallCenter> = None;
    let (mut queues, mut seats) = (Vec::<Queue>::new(), Vec::<Seat>::new());
    let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut value: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("YAML");
        // As the API server holds them: in the CallCenter's namespace.
        value["metadata"]["namespace"] = NAMESPACE.into();
        match value["kind"].as_str() {
            Some("CallCenter") => center = Some(serde_yaml::from_value(value).expect("center")),
            Some("Queue") => queues.push(serde_yaml::from_value(value).expect("queue")),
            Some("Seat") => seats.push(serde_yaml::from_value(value).expect("seat")),
            Some("Secret") => {
                let name = value["metadata"]["name"]
                    .as_str()
                    .expect("name")
                    .to_string();
                let data = serde_yaml::from_value(value["stringData"].clone()).expect("data");
                secrets.insert(name, data);
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    let center = center.expect("a CallCenter");
    let (config, problems) =
        build_node_config(&center, &queues, &seats, &secrets, generation).expect("builds");
    assert!(problems.is_empty(), "{problems:?}");
    config
}

fn snapshot(config: &NodeConfig) -> ConfigSnapshot {
    ConfigSnapshot::new(
        config.generation,
        config.to_yaml().expect("yaml").into_bytes(),
    )
}

/// Sends `signal` (as `kill` spells it) to the node's process.
fn signal(node: &Node, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &node.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal}");
}

/// The running node; killed when dropped, also when an assertion fails.
struct Node {
    child: Child,
    metrics: SocketAddr,
    control: SocketAddr,
    sip_udp: SocketAddr,
    stderr: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(config: &NodeConfig) -> Node {
        Self::start_with(config, |_| {})
    }

    /// Starts the node after `prepare` wrote into its (still empty) recordings directory.
    fn start_with(config: &NodeConfig, prepare: impl FnOnce(&Path)) -> Node {
        Self::start_args(config, prepare, &[])
    }

    /// As [`Node::start_with`], with more command-line arguments.
    fn start_args(config: &NodeConfig, prepare: impl FnOnce(&Path), extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(dir.path());
        let file = dir.path().join("node-config.yaml");
        std::fs::write(&file, config.to_yaml().expect("yaml")).expect("write the config");
        let mut child = Command::new(NODE)
            .arg("--config")
            .arg(&file)
            .args(["--sip-listen", "127.0.0.1", "--sip-port", "0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--control-listen", "127.0.0.1:0"])
            .env("POD_NAME", POD_NAME)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("POD_IP", "127.0.0.1")
            .env("NODE_IP", "127.0.0.1")
            .env("SWITCHBOARD_CALL_CENTER", "minimal")
            .env("SWITCHBOARD_LEASE_NAME", "minimal-media")
            .env("SWITCHBOARD_RECORDINGS_DIR", dir.path())
            .env("RUST_LOG", "info")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start media-node");
        // Readers on threads, so a silent child cannot block the test past its limit.
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut node = Node {
            child,
            metrics: SocketAddr::from(([0, 0, 0, 0], 0)),
            control: SocketAddr::from(([0, 0, 0, 0], 0)),
            sip_udp: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr: err_rx,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_LIMIT;
        let (mut metrics, mut control, mut sip_udp) = (None, None, None);
        while metrics.is_none() || control.is_none() || sip_udp.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match out_rx.recv_timeout(left) {
                Ok(l) => l,
                Err(e) => panic!(
                    "no listener addresses from media-node ({e}):\n{}",
                    node.log()
                ),
            };
            if let Some(a) =
                line.strip_prefix("media-node: metrics, /healthz and /readyz on http://")
            {
                metrics = Some(a.parse().expect("metrics address"));
            } else if let Some(a) = line.strip_prefix("media-node: control API (gRPC, h2c) on ") {
                control = Some(a.parse().expect("control address"));
            } else if line.starts_with("media-node: SIP for domain") {
                let udp = line
                    .split(" on udp ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .expect("the UDP address");
                sip_udp = Some(udp.parse().expect("SIP UDP address"));
            }
        }
        node.metrics = metrics.expect("metrics address");
        node.control = control.expect("control address");
        node.sip_udp = sip_udp.expect("SIP UDP address");
        node
    }

    /// What the node logged so far, for failure messages.
    fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// One HTTP/1.1 GET: status code and body. `None` while the node does not answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }
}

fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(text.as_bytes()))
}

/// Registers `extension` over UDP as a phone would: REGISTER, 401 with a nonce, REGISTER with
/// a digest (qop=auth) computed from the seat's HA1. Returns the final status line.
fn register(node: SocketAddr, extension: &str, ha1: &str) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a phone socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let local = socket.local_addr().expect("local address");
    let request = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-runtime-{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{extension}@localhost>;tag=runtime\r\n\
             To: <sip:{extension}@localhost>\r\n\
             Call-ID: runtime-register@127.0.0.1\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{extension}@{local}>\r\n\
             Expires: 300\r\n\
             {auth}Content-Length: 0\r\n\r\n"
        )
    };
    let exchange = |message: String| {
        socket.send_to(message.as_bytes(), node).expect("send");
        let mut buf = [0u8; 4096];
        let (n, _) = socket.recv_from(&mut buf).expect("a response");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let challenge = exchange(request(1, ""));
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a nonce");
    let (nc, cnonce, uri) = ("00000001", "runtime-cnonce", "sip:localhost");
    let ha2 = md5_hex(&format!("REGISTER:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"{extension}\", realm=\"localhost\", \
         nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, \
         qop=auth, nc={nc}, cnonce=\"{cnonce}\"\r\n"
    );
    let answer = exchange(request(2, &auth));
    answer.lines().next().unwrap_or_default().to_string()
}

/// The next message of a `WatchState` stream, within [`STARTUP_LIMIT`].
async fn next_state(stream: &mut tonic::Streaming<NodeState>) -> NodeState {
    tokio::time::timeout(STARTUP_LIMIT, stream.message())
        .await
        .expect("a state within the limit")
        .expect("a healthy stream")
        .expect("a state")
}

/// Reads the stream until `seat` is reported in `state`.
async fn seat_reaches(
    stream: &mut tonic::Streaming<NodeState>,
    seat: &str,
    state: AgentState,
) -> SeatState {
    loop {
        let found = next_state(stream)
            .await
            .seats
            .into_iter()
            .find(|s| s.seat == seat && s.agent_state() == state);
        if let Some(found) = found {
            return found;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runs_the_operators_config_and_serves_probes_metrics_and_control() {
    let config = operator_config(3);
    let node = tokio::task::block_in_place(|| Node::start(&config));

    // Readiness: bounded wait for 200 (the node answers 503 with a reason until then).
    let deadline = Instant::now() + STARTUP_LIMIT;
    let mut last = None;
    while Instant::now() < deadline {
        last = tokio::task::block_in_place(|| node.get("/readyz"));
        if matches!(&last, Some((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last,
        Some((200, "ready\n".to_string())),
        "/readyz never turned 200:\n{}",
        node.log()
    );
    let health = tokio::task::block_in_place(|| node.get("/healthz"));
    assert_eq!(health.map(|h| h.0), Some(200));

    let (code, metrics) = tokio::task::block_in_place(|| node.get("/metrics")).expect("metrics");
    assert_eq!(code, 200);
    for name in [
        "switchboard_config_generation 3",
        "switchboard_registered_seats",
        "switchboard_recording_failures_total",
        "switchboard_node_start_time_seconds",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    let mut client = NodeControlClient::connect(format!("http://{}", node.control))
        .await
        .expect("connect to the control API");
    let apply = |snap: ConfigSnapshot| {
        let mut client = client.clone();
        async move {
            client
                .apply_config(snap)
                .await
                .expect("ApplyConfig answers")
                .into_inner()
        }
    };

    let next = operator_config(4);
    let reply = apply(snapshot(&next)).await;
    assert_eq!(
        (reply.outcome(), reply.running_generation),
        (Outcome::Applied, 4),
        "{reply:?}"
    );

    let reply = apply(snapshot(&next)).await;
    assert_eq!(
        (reply.outcome(), reply.running_generation),
        (Outcome::Unchanged, 4)
    );

    let reply = apply(snapshot(&config)).await;
    assert_eq!(
        (reply.outcome(), reply.running_generation),
        (Outcome::Stale, 4)
    );
    assert!(reply.message.contains("older"), "{reply:?}");

    let mut corrupted = snapshot(&operator_config(5));
    corrupted.config_hash = "0".repeat(32);
    let reply = apply(corrupted).await;
    assert_eq!(
        (reply.outcome(), reply.running_generation),
        (Outcome::Rejected, 4),
        "the previous config keeps running"
    );
    assert!(reply.message.contains("config_hash"), "{reply:?}");

    let mut stream = client
        .clone()
        .watch_state(WatchStateRequest {})
        .await
        .expect("WatchState answers")
        .into_inner();
    let state = next_state(&mut stream).await;
    assert_eq!(state.node, POD_NAME);
    assert_eq!(state.role(), NodeRole::Active);
    assert_eq!(state.config_generation, 4);
    let seats: Vec<_> = state
        .seats
        .iter()
        .map(|s| (s.seat.as_str(), s.registered))
        .collect();
    assert_eq!(seats, [("agent-1001", false), ("agent-1002", false)]);

    // A phone registers with the HA1 the config carries; the stream reports it (the node
    // samples its registrar, so the next message comes within a bounded wait).
    let ha1 = next.seats[0].ha1.clone();
    let sip = node.sip_udp;
    let status = tokio::task::block_in_place(|| register(sip, "1001", &ha1));
    assert!(
        status.starts_with("SIP/2.0 200"),
        "{status}\n{}",
        node.log()
    );
    let state = next_state(&mut stream).await;
    let seats: Vec<_> = state
        .seats
        .iter()
        .map(|s| (s.seat.as_str(), s.registered))
        .collect();
    assert_eq!(seats, [("agent-1001", true), ("agent-1002", false)]);

    // A new seat arrives in generation 5: it can register at once, without a restart, and
    // 1001's registration survives the change.
    let mut with_new_seat = operator_config(5);
    let mut seat = with_new_seat.seats[1].clone();
    seat.name = "agent-1003".into();
    seat.spec.extension = "1003".into();
    seat.ha1 = md5_hex("1003:localhost:practice-1003");
    with_new_seat.seats.push(seat);
    let reply = apply(snapshot(&with_new_seat)).await;
    assert_eq!(
        (reply.outcome(), reply.message.as_str()),
        (Outcome::Applied, ""),
        "{reply:?}"
    );
    let ha1_1003 = md5_hex("1003:localhost:practice-1003");
    let status = tokio::task::block_in_place(|| register(sip, "1003", &ha1_1003));
    assert!(
        status.starts_with("SIP/2.0 200"),
        "{status}\n{}",
        node.log()
    );
    let registered = loop {
        let state = next_state(&mut stream).await;
        if state
            .seats
            .iter()
            .any(|s| s.seat == "agent-1003" && s.registered)
        {
            break state;
        }
    };
    let seats: Vec<_> = registered
        .seats
        .iter()
        .map(|s| (s.seat.as_str(), s.registered))
        .collect();
    assert_eq!(
        seats,
        [
            ("agent-1001", true),
            ("agent-1002", false),
            ("agent-1003", true)
        ]
    );

    // Agent states through the control API: a registered seat logs in and pauses; a seat
    // without a phone cannot log in; only LOGGED_OUT, READY and NOT_READY can be asked for.
    let set = |seat: &str, state: AgentState, reason: &str| {
        let mut client = client.clone();
        let request = SetAgentStateRequest {
            seat: seat.to_string(),
            state: state as i32,
            not_ready_reason: reason.to_string(),
        };
        async move { client.set_agent_state(request).await }
    };
    let reply = set("agent-1001", AgentState::Ready, "")
        .await
        .expect("login");
    assert_eq!(reply.into_inner().state(), AgentState::Ready);
    let agent_1001 = seat_reaches(&mut stream, "agent-1001", AgentState::Ready).await;
    assert!(
        agent_1001.state_since_unix > 1_700_000_000,
        "{agent_1001:?}"
    );
    let reply = set("agent-1001", AgentState::NotReady, "break")
        .await
        .expect("pause");
    assert_eq!(reply.into_inner().state(), AgentState::NotReady);
    let refused = set("agent-1002", AgentState::Ready, "")
        .await
        .expect_err("no phone, no login");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("no registered phone"),
        "{refused:?}"
    );
    for (seat, state, reason, code) in [
        (
            "agent-1001",
            AgentState::NotReady,
            "",
            tonic::Code::InvalidArgument,
        ),
        (
            "agent-1001",
            AgentState::Busy,
            "",
            tonic::Code::InvalidArgument,
        ),
        ("agent-9999", AgentState::Ready, "", tonic::Code::NotFound),
    ] {
        let error = set(seat, state, reason).await.expect_err("refused");
        assert_eq!(error.code(), code, "{seat} {state:?}: {error:?}");
    }
    let paused = seat_reaches(&mut stream, "agent-1001", AgentState::NotReady).await;
    assert_eq!(paused.not_ready_reason, "break");
    // The queue of the minimal center reports its live figures: its one logged-in agent is
    // paused, so none is ready.
    let queues: Vec<_> = client
        .clone()
        .watch_state(WatchStateRequest {})
        .await
        .expect("WatchState answers")
        .into_inner()
        .message()
        .await
        .expect("a healthy stream")
        .expect("a state")
        .queues
        .into_iter()
        .map(|q| (q.queue, q.calls_waiting, q.agents_ready))
        .collect();
    assert_eq!(queues, [("support".to_string(), 0, 0)]);
    let agent_metric = "switchboard_agent_state{seat=\"agent-1001\",state=\"not_ready\"} 1";
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        let (_, metrics) = tokio::task::block_in_place(|| node.get("/metrics")).expect("metrics");
        if metrics.contains(agent_metric) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{agent_metric} missing from /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Drain over the control API: no call is up; from now on registrations are refused.
    let drained = client
        .drain(switchboard_proto::node::v1::DrainRequest::default())
        .await
        .expect("Drain")
        .into_inner();
    assert_eq!(drained.calls_remaining, 0);
    registrations_refused(node.sip_udp, "a drained node registers").await;

    let (_, metrics) = tokio::task::block_in_place(|| node.get("/metrics")).expect("metrics");
    assert!(
        metrics.contains("switchboard_config_generation 5"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_config_applies_total{outcome=\"stale\"} 1"));
}

/// A CDR line of a call that ended `ended_minutes` after 2026-03-02 09:00 UTC.
fn cdr(call_id: &str, ended_minutes: i64) -> CallDetailRecord {
    let offered = chrono::DateTime::from_timestamp(1_772_442_000, 0).expect("time");
    let ended = offered + chrono::Duration::minutes(ended_minutes);
    CallDetailRecord {
        call_id: call_id.into(),
        from: "+4930123456".into(),
        to: "1000".into(),
        direction: CallDirection::Inbound,
        trunk: Some("carrier".into()),
        seat: Some("agent-1001".into()),
        queue: Some("support".into()),
        offered_at: offered,
        answered_at: Some(offered + chrono::Duration::seconds(8)),
        ended_at: ended,
        outcome: CallOutcome::Answered,
        hangup_cause: Some("BYE".into()),
        hangup_side: None,
        recording: None,
        node: POD_NAME.into(),
        wait_seconds: Some(8.0),
        survey_score: Some(5),
        voicemail: None,
        ivr_path: vec!["main:1".into()],
    }
}

/// Records a stereo voicemail WAV of `seconds` (a tone on the caller's side) into
/// `mailbox` and saves its metadata, as the node does. Returns the message and its WAV path.
fn leave_voicemail(
    boxes: &Mailboxes,
    mailbox: &str,
    from: &str,
    at: chrono::DateTime<chrono::Utc>,
    seconds: usize,
) -> (VoicemailMessage, std::path::PathBuf) {
    let (id, wav) = boxes.new_message(mailbox, at).expect("new message");
    let mut recorder = CallRecorder::create(&wav, RecorderOptions::default()).expect("recorder");
    for frame in 0..seconds * 50 {
        let tone: Vec<i16> = (0..160)
            .map(|i| (((frame * 160 + i) % 20) as i16 - 10) * 800)
            .collect();
        recorder.push(Side::Caller, &tone).expect("caller audio");
        recorder.push(Side::Other, &[0; 160]).expect("silence");
    }
    let summary = recorder.finish().expect("finish");
    let message = VoicemailMessage {
        id: id.clone(),
        mailbox: mailbox.into(),
        from: from.into(),
        queue: Some("support".into()),
        call_id: format!("vm-{id}"),
        received_at: at,
        duration_seconds: summary.duration().as_secs_f64(),
        file: format!("{id}.wav"),
    };
    boxes.save(&message).expect("save");
    (message, wav)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_records_voicemail_and_trunk_traffic_are_served_over_the_control_api() {
    let mut config = operator_config(1);
    config.spec.trunks.push(
        serde_yaml::from_str(
            "name: carrier\npeer: {host: 127.0.0.2}\nallowedSources: [127.0.0.2]\n\
             channels: {limit: 4}",
        )
        .expect("trunk"),
    );
    let mut lines = Vec::new();
    let mut messages = Vec::new();
    let node = tokio::task::block_in_place(|| {
        Node::start_with(&config, |dir| {
            let writer = CdrWriter::open(&dir.join("cdr.jsonl")).expect("cdr file");
            for (i, minutes) in [1, 2, 3, 4, 5].into_iter().enumerate() {
                let record = cdr(&format!("call-{i}"), minutes);
                writer.append(&record).expect("append");
                lines.push(serde_json::to_string(&record).expect("json"));
            }
            drop(writer);
            // A line torn by a failed write: skipped, the others still served.
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("cdr.jsonl"))
                .expect("reopen");
            file.write_all(b"{\"callId\":\"torn\n").expect("torn line");
            let boxes = Mailboxes::new(dir.join("voicemail"));
            let at = chrono::DateTime::from_timestamp(1_772_445_600, 0).expect("time");
            messages.push(leave_voicemail(&boxes, "general", "+4930111", at, 3));
            messages.push(leave_voicemail(
                &boxes,
                "general",
                "+4930222",
                at + chrono::Duration::seconds(30),
                1,
            ));
        })
    });
    let mut client = NodeControlClient::connect(format!("http://{}", node.control))
        .await
        .expect("connect to the control API");

    // Call records: all of them oldest first, then since an instant and with a limit.
    let list = |since_unix: i64, limit: u32| {
        let mut client = client.clone();
        async move {
            client
                .list_call_records(ListCallRecordsRequest { since_unix, limit })
                .await
        }
    };
    let all = list(0, 0).await.expect("ListCallRecords").into_inner();
    assert_eq!(all.records_json, lines, "{}", node.log());
    assert!(!all.truncated);
    let since = cdr("x", 3).ended_at.timestamp();
    let page = list(since, 2).await.expect("a page").into_inner();
    assert_eq!(
        (page.records_json.as_slice(), page.truncated),
        (&lines[2..4], true)
    );
    let rest = list(since, 3).await.expect("the rest").into_inner();
    assert_eq!(
        (rest.records_json.as_slice(), rest.truncated),
        (&lines[2..], false)
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&rest.records_json[0]).expect("a JSON record");
    assert_eq!(parsed["callId"], "call-2");
    assert_eq!(parsed["endedAt"], "2026-03-02T09:03:00Z");
    let too_many = list(0, 10_001).await.expect_err("limit above 10000");
    assert_eq!(
        too_many.code(),
        tonic::Code::InvalidArgument,
        "{too_many:?}"
    );

    // Voicemail: listed oldest first; fetched byte for byte in 64 KiB chunks.
    let listed = client
        .list_voicemail(ListVoicemailRequest {
            mailbox: "general".into(),
        })
        .await
        .expect("ListVoicemail")
        .into_inner()
        .messages;
    let summary: Vec<_> = listed
        .iter()
        .map(|m| {
            (
                m.id.as_str(),
                m.from.as_str(),
                m.queue.as_str(),
                m.received_unix,
            )
        })
        .collect();
    let expected: Vec<_> = messages
        .iter()
        .map(|(m, _)| {
            (
                m.id.as_str(),
                m.from.as_str(),
                "support",
                m.received_at.timestamp(),
            )
        })
        .collect();
    assert_eq!(summary, expected);
    assert!(
        (listed[0].duration_seconds - 3.0).abs() < 0.05,
        "{listed:?}"
    );
    let empty = client
        .list_voicemail(ListVoicemailRequest {
            mailbox: "agent-1002".into(),
        })
        .await
        .expect("a mailbox with no messages")
        .into_inner();
    assert!(empty.messages.is_empty());

    let (first, first_wav) = &messages[0];
    let mut stream = client
        .fetch_voicemail(FetchVoicemailRequest {
            mailbox: "general".into(),
            id: first.id.clone(),
        })
        .await
        .expect("FetchVoicemail")
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = tokio::time::timeout(STARTUP_LIMIT, stream.message())
        .await
        .expect("a chunk within the limit")
        .expect("a healthy stream")
    {
        chunks.push(chunk);
    }
    let on_disk = std::fs::read(first_wav).expect("the WAV");
    assert!(on_disk.len() > 64 * 1024, "3 s of stereo spans chunks");
    let fetched: Vec<u8> = chunks.iter().flat_map(|c| c.wav.clone()).collect();
    assert_eq!(fetched, on_disk, "the fetched bytes are the file");
    assert!(chunks.len() > 1 && chunks.iter().all(|c| c.wav.len() <= 64 * 1024));
    let meta = chunks[0]
        .message
        .as_ref()
        .expect("metadata in the first chunk");
    assert_eq!(
        (meta.id.as_str(), meta.call_id.as_str()),
        (first.id.as_str(), first.call_id.as_str())
    );
    assert!(chunks[1..].iter().all(|c| c.message.is_none()));

    for (mailbox, id, code) in [
        ("../etc", "x", tonic::Code::InvalidArgument),
        ("general", "../../cdr", tonic::Code::InvalidArgument),
        (
            "general",
            "20990101t000000000z-00000000",
            tonic::Code::NotFound,
        ),
        ("agent-1001", first.id.as_str(), tonic::Code::NotFound),
    ] {
        let refused = client
            .fetch_voicemail(FetchVoicemailRequest {
                mailbox: mailbox.into(),
                id: id.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), code, "{mailbox}/{id}: {refused:?}");
    }
    let refused = client
        .list_voicemail(ListVoicemailRequest {
            mailbox: "General".into(),
        })
        .await
        .expect_err("not a mailbox name");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // The trunk's traffic: no call yet, so nothing offered, over the time since the start.
    let state = next_state(
        &mut client
            .watch_state(WatchStateRequest {})
            .await
            .expect("WatchState")
            .into_inner(),
    )
    .await;
    let trunk = state
        .trunks
        .iter()
        .find(|t| t.trunk == "carrier")
        .expect("the trunk");
    assert_eq!(
        (
            trunk.channel_limit,
            trunk.channels_busy,
            trunk.window_calls_offered,
            trunk.window_calls_blocked,
            trunk.offered_erlangs
        ),
        (4, 0, 0, 0, 0.0),
        "{trunk:?}"
    );
    assert!(trunk.window_seconds <= 15 * 60, "{trunk:?}");
    let support = state
        .queues
        .iter()
        .find(|q| q.queue == "support")
        .expect("queue");
    assert_eq!(
        (
            support.calls_offered_15m,
            support.average_handle_seconds,
            support.average_speed_of_answer_seconds
        ),
        (0, None, None)
    );
    let (_, metrics) = tokio::task::block_in_place(|| node.get("/metrics")).expect("metrics");
    assert!(
        metrics.contains("switchboard_trunk_offered_erlangs{trunk=\"carrier\"} 0"),
        "{metrics}"
    );
}

/// The first answer of `node` to a minimal request (`REGISTER` or `INVITE` from seat 1001).
fn first_answer(node: SocketAddr, method: &str) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a phone socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let local = socket.local_addr().expect("local address");
    let (uri, to) = match method {
        "INVITE" => ("sip:1002@localhost", "<sip:1002@localhost>"),
        _ => ("sip:localhost", "<sip:1001@localhost>"),
    };
    let request = format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-standby-{method};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@localhost>;tag=standby\r\n\
         To: {to}\r\n\
         Call-ID: standby-{method}@127.0.0.1\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:1001@{local}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    socket.send_to(request.as_bytes(), node).expect("send");
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = socket.recv_from(&mut buf).expect("an answer");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        // A provisional 100 Trying is not the answer.
        if !text.starts_with("SIP/2.0 100") {
            return text;
        }
    }
}

/// One sample of `/metrics` (`name{labels}`).
fn sample(node: &Node, series: &str) -> Option<f64> {
    let (_, text) = node.get("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits (bounded) until `ok` holds for `node`'s metrics.
async fn metrics_reach(node: &Node, what: &str, ok: impl Fn(&Node) -> bool) {
    let deadline = Instant::now() + STARTUP_LIMIT;
    while Instant::now() < deadline {
        if tokio::task::block_in_place(|| ok(node)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}:\n{}", node.log());
}

/// The next replication message that is not a heartbeat.
async fn next_change(
    stream: &mut tonic::Streaming<ReplicationMessage>,
) -> (u64, replication_message::Body) {
    loop {
        let message = tokio::time::timeout(STARTUP_LIMIT, stream.message())
            .await
            .expect("a message within the limit")
            .expect("a healthy stream")
            .expect("a message");
        match message.body.expect("a body") {
            replication_message::Body::Heartbeat(_) => {}
            body => return (message.sequence, body),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_follows_the_actives_registrations_and_agent_states() {
    let config = operator_config(1);
    let active = tokio::task::block_in_place(|| Node::start(&config));
    let ha1 = config.seats[0].ha1.clone();
    let extension = config.seats[0].spec.extension.clone();
    let seat = config.seats[0].name.clone();
    let status = tokio::task::block_in_place(|| register(active.sip_udp, &extension, &ha1));
    assert!(status.starts_with("SIP/2.0 200"), "{status}");
    let mut control = NodeControlClient::connect(format!("http://{}", active.control))
        .await
        .expect("connect to the control API");
    control
        .set_agent_state(SetAgentStateRequest {
            seat: seat.clone(),
            state: AgentState::Ready as i32,
            not_ready_reason: String::new(),
        })
        .await
        .expect("log in");

    // The stream as a standby reads it: a snapshot with the phone and the Ready agent, then
    // the pause as the next change, heartbeats in between.
    let mut replication = ReplicationClient::connect(format!("http://{}", active.control))
        .await
        .expect("connect to replication");
    let mut stream = replication
        .follow(FollowRequest {
            standby: "test".into(),
        })
        .await
        .expect("the active serves replication")
        .into_inner();
    let (sequence, first) = next_change(&mut stream).await;
    assert_eq!(sequence, 1);
    let replication_message::Body::Snapshot(snapshot) = first else {
        panic!("the stream opens with a snapshot: {first:?}");
    };
    assert_eq!(snapshot.config_generation, 1);
    assert!(
        snapshot
            .registrations
            .iter()
            .any(|r| r.extension == extension && r.source.starts_with("127.0.0.1:")),
        "{:?}",
        snapshot.registrations
    );
    let agent = snapshot
        .agents
        .iter()
        .find(|a| a.seat == seat)
        .expect("the seat's agent");
    assert_eq!(agent.state(), ReplicatedAgentState::Ready);
    control
        .set_agent_state(SetAgentStateRequest {
            seat: seat.clone(),
            state: AgentState::NotReady as i32,
            not_ready_reason: "break".into(),
        })
        .await
        .expect("pause");
    let (sequence, change) = next_change(&mut stream).await;
    assert!(sequence > 1);
    let replication_message::Body::Delta(Delta {
        change: Some(delta::Change::Agent(paused)),
    }) = change
    else {
        panic!("the pause is the next change: {change:?}");
    };
    assert_eq!(
        (paused.seat.as_str(), paused.state(), paused.reason.as_str()),
        (seat.as_str(), ReplicatedAgentState::NotReady, "break")
    );

    // A standby node follows the active and is ready; it serves no stream itself.
    let url = format!("http://{}", active.control);
    let standby =
        tokio::task::block_in_place(|| Node::start_args(&config, |_| {}, &["--follow", &url]));
    metrics_reach(&standby, "the standby ready with the active's state", |n| {
        sample(n, "switchboard_standby_ready") == Some(1.0)
            && sample(n, "switchboard_replication_records{kind=\"registrations\"}") == Some(1.0)
            && sample(n, "switchboard_replication_records{kind=\"agents\"}")
                == Some(config.seats.len() as f64)
    })
    .await;
    assert_eq!(
        sample(&standby, "switchboard_node_role{role=\"standby\"}"),
        Some(1.0)
    );
    assert!(sample(&standby, "switchboard_replication_lag_seconds").is_some_and(|l| l < 5.0));
    metrics_reach(&active, "the active counting its followers", |n| {
        sample(n, "switchboard_replication_followers") == Some(2.0)
    })
    .await;
    let refused = ReplicationClient::connect(format!("http://{}", standby.control))
        .await
        .expect("connect to the standby")
        .follow(FollowRequest {
            standby: "test".into(),
        })
        .await
        .expect_err("a standby serves no replication");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    // Nor does it serve SIP: new calls and registrations go to the active node.
    for method in ["REGISTER", "INVITE"] {
        let answer = tokio::task::block_in_place(|| first_answer(standby.sip_udp, method));
        assert!(
            answer.starts_with("SIP/2.0 503"),
            "a standby answers {method} with 503: {answer}"
        );
    }
    assert!(
        tokio::task::block_in_place(|| first_answer(active.sip_udp, "REGISTER"))
            .starts_with("SIP/2.0 401"),
        "the active one challenges it"
    );

    // The active hangs (stopped: its sockets stay open, nothing is sent, no reset): the
    // standby takes the silent stream for broken; once the active runs again, the standby
    // follows it anew and is ready again.
    signal(&active, "-STOP");
    metrics_reach(&standby, "the standby not ready with a hung active", |n| {
        sample(n, "switchboard_standby_ready") == Some(0.0)
            && sample(
                n,
                "switchboard_replication_resyncs_total{reason=\"disconnected\"}",
            )
            .is_some_and(|r| r >= 1.0)
    })
    .await;
    signal(&active, "-CONT");
    metrics_reach(&standby, "the standby ready again", |n| {
        sample(n, "switchboard_standby_ready") == Some(1.0)
    })
    .await;

    // The active dies: the standby is not ready any more and says why in its metrics.
    drop(stream);
    drop(active);
    metrics_reach(&standby, "the standby not ready without its active", |n| {
        sample(n, "switchboard_standby_ready") == Some(0.0)
            && sample(
                n,
                "switchboard_replication_resyncs_total{reason=\"disconnected\"}",
            )
            .is_some_and(|r| r >= 1.0)
    })
    .await;
}

/// Reads a `Follow` stream as a standby does, every message into `follower` (which checks
/// each record), until a delta `wanted` picks; heartbeats and other changes are applied and
/// passed over.
async fn follow_until<T>(
    stream: &mut tonic::Streaming<ReplicationMessage>,
    follower: &mut media_node::replication::Follower,
    wanted: impl Fn(&delta::Change) -> Option<T>,
) -> T {
    loop {
        let message = tokio::time::timeout(STARTUP_LIMIT, stream.message())
            .await
            .expect("a message within the limit")
            .expect("a healthy stream")
            .expect("a message");
        follower
            .receive(&message)
            .unwrap_or_else(|e| panic!("the follower refuses {message:?}: {e}"));
        if let Some(replication_message::Body::Delta(Delta {
            change: Some(change),
        })) = &message.body
            && let Some(found) = wanted(change)
        {
            return found;
        }
    }
}

/// A standby's view of `node`: the stream, and a follower that took its snapshot.
async fn follow(
    node: &Node,
) -> (
    tonic::Streaming<ReplicationMessage>,
    media_node::replication::Follower,
) {
    let mut stream = ReplicationClient::connect(format!("http://{}", node.control))
        .await
        .expect("connect to replication")
        .follow(FollowRequest {
            standby: "test".into(),
        })
        .await
        .expect("the active serves replication")
        .into_inner();
    let snapshot = tokio::time::timeout(STARTUP_LIMIT, stream.message())
        .await
        .expect("a snapshot within the limit")
        .expect("a healthy stream")
        .expect("a snapshot");
    let mut follower = media_node::replication::Follower::new();
    follower.receive(&snapshot).expect("the snapshot is good");
    (stream, follower)
}

/// SIPp against `node` as seat `ext` on `port` (RTP on `media`), authenticating with the
/// seat's password from the example's Secret.
fn seat_sipp(
    node: &Node,
    scenario: &str,
    ext: &str,
    (port, media): (u16, Option<u16>),
    extra: &[&str],
) -> support::Sipp {
    let password = format!("practice-{ext}");
    let mut args = vec!["-key", "ext", ext, "-au", ext, "-ap", &password];
    args.extend_from_slice(extra);
    support::Sipp::spawn(
        node.sip_udp.port(),
        "127.0.0.1",
        scenario,
        port,
        media,
        &args,
    )
}

/// A seat call in progress: the SIPp phones, their SIP and RTP ports.
struct SeatCall {
    caller: support::Sipp,
    callee: support::Sipp,
    caller_port: u16,
    callee_port: u16,
    caller_media: u16,
    callee_media: u16,
}

/// Seat 1002's phone registers and waits to answer (µ-law, echoing RTP); 1001 calls it
/// with `scenario` (A-law), `extra` its arguments beyond the dialed seat.
async fn seat_call(node: &Node, scenario: &str, extra: &[&str]) -> SeatCall {
    let callee_port = support::free_port();
    let callee_media = support::free_media_port("127.0.0.1");
    tokio::task::block_in_place(|| {
        seat_sipp(node, "seat-register.xml", "1002", (callee_port, None), &[])
            .assert_ok("1002 registers");
    });
    let callee = support::Sipp::spawn(
        node.sip_udp.port(),
        "127.0.0.1",
        "seat-uas-answer.xml",
        callee_port,
        Some(callee_media),
        &["-key", "ext", "1002", "-rtp_echo"],
    );
    let callee = tokio::task::block_in_place(|| callee.listening());
    let caller_port = support::free_port();
    let caller_media = support::free_media_port("127.0.0.1");
    let mut args = vec!["-s", "1002"];
    args.extend_from_slice(extra);
    let caller = seat_sipp(
        node,
        scenario,
        "1001",
        (caller_port, Some(caller_media)),
        &args,
    );
    SeatCall {
        caller,
        callee,
        caller_port,
        callee_port,
        caller_media,
        callee_media,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_replicates_an_answered_seat_call_until_its_bye() {
    support::require_sipp();
    let mut config = operator_config(1);
    // Recorded, so the record names the recording in progress.
    config.spec.recording.mode = switchboard_crds::callcenter::RecordingMode::Always;
    let node = tokio::task::block_in_place(|| Node::start(&config));
    let (mut stream, mut follower) = follow(&node).await;

    // Seat 1002's phone registers and answers (µ-law, echoing RTP); 1001 calls it (A-law),
    // talks 3 s and hangs up.
    let SeatCall {
        caller,
        callee,
        caller_port,
        callee_port,
        caller_media,
        callee_media,
    } = seat_call(&node, "seat-uac-bye.xml", &[]).await;

    // Answered and ACKed: the whole call in one record.
    let record: CallRecord = follow_until(&mut stream, &mut follower, |c| match c {
        delta::Change::Call(record) => Some(record.clone()),
        _ => None,
    })
    .await;
    let a = record.caller.as_ref().expect("the caller's dialog");
    let b = record.callee.as_ref().expect("the callee's dialog");
    assert_eq!(a.call_id, record.id, "{record:#?}");
    assert!(b.call_id.ends_with("@switchboard"), "{record:#?}");
    assert_ne!(a.call_id, b.call_id);
    for (dialog, peer_tag) in [(a, "SIPpTag00"), (b, "SIPpTag01")] {
        assert!(dialog.local.contains(";tag="), "{record:#?}");
        assert!(dialog.remote.contains(peer_tag), "{record:#?}");
    }
    assert_eq!(
        a.remote_target,
        format!("sip:1001@127.0.0.1:{caller_port};transport=UDP")
    );
    assert_eq!(
        b.remote_target,
        format!("sip:1002@127.0.0.1:{callee_port};transport=UDP")
    );
    assert_eq!(a.destination, format!("127.0.0.1:{caller_port}"));
    assert_eq!(b.destination, format!("127.0.0.1:{callee_port}"));
    // The caller's authenticated INVITE was its CSeq 2; the node's INVITE to 1002 its 1.
    assert_eq!((a.remote_cseq, b.local_cseq), (2, 1), "{record:#?}");
    let a_media = record.caller_media.as_ref().expect("the caller's media");
    let b_media = record.callee_media.as_ref().expect("the callee's media");
    assert_eq!(a_media.remote_rtp, format!("127.0.0.1:{caller_media}"));
    assert_eq!(b_media.remote_rtp, format!("127.0.0.1:{callee_media}"));
    assert_eq!((a_media.codec.as_str(), a_media.payload_type), ("PCMA", 8));
    assert_eq!((b_media.codec.as_str(), b_media.payload_type), ("PCMU", 0));
    for m in [a_media, b_media] {
        assert_eq!(m.telephone_event, 101, "{record:#?}");
        assert_eq!(m.direction, "sendrecv", "{record:#?}");
        assert!(m.sdp_session_version >= 1, "{record:#?}");
    }
    assert_ne!(a_media.sdp_session_id, b_media.sdp_session_id);
    assert_eq!((record.from.as_str(), record.to.as_str()), ("1001", "1002"));
    assert_eq!(record.direction(), ReplicatedDirection::Internal);
    assert!(
        record.answered_at_unix_ms >= record.offered_at_unix_ms && record.offered_at_unix_ms > 0,
        "{record:#?}"
    );
    assert!(record.recording.ends_with(".wav"), "{record:#?}");
    assert!(record.queued.is_none());
    let state = follower.state().expect("the follower's state");
    assert_eq!(state.calls.get(&record.id), Some(&record));

    // The BYE: the record goes.
    let ended = follow_until(&mut stream, &mut follower, |c| match c {
        delta::Change::CallEnded(id) => Some(id.clone()),
        delta::Change::Call(other) => panic!("a change after the answer: {other:#?}"),
        _ => None,
    })
    .await;
    assert_eq!(ended, record.id);
    assert!(follower.state().expect("state").calls.is_empty());
    tokio::task::block_in_place(|| {
        caller.assert_ok("1001 calls and hangs up");
        callee.assert_ok("1002 answers");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_replicates_a_queued_caller_until_they_hang_up() {
    support::require_sipp();
    let config = operator_config(1);
    let node = tokio::task::block_in_place(|| Node::start(&config));
    let (mut stream, mut follower) = follow(&node).await;

    // Seat 1001 dials the queue's number; no agent is logged in and the queue waits for one.
    let before = media_node::replication::unix_now_ms();
    let (caller_port, caller_media) = (support::free_port(), support::free_media_port("127.0.0.1"));
    let caller = seat_sipp(
        &node,
        "seat-uac-bye.xml",
        "1001",
        (caller_port, Some(caller_media)),
        &["-s", "100"],
    );
    let record: CallRecord = follow_until(&mut stream, &mut follower, |c| match c {
        delta::Change::Call(record) => Some(record.clone()),
        _ => None,
    })
    .await;
    let after = media_node::replication::unix_now_ms();
    let place = record.queued.as_ref().expect("a queue place");
    assert_eq!(place.queue, "support", "{record:#?}");
    assert_eq!(place.priority_boost, 0);
    assert!(
        (before..=after).contains(&place.enqueued_at_unix_ms),
        "enqueued between {before} and {after}: {record:#?}"
    );
    assert!(record.callee.is_none() && record.callee_media.is_none());
    let a = record.caller.as_ref().expect("the caller's dialog");
    assert_eq!(a.call_id, record.id);
    assert!(a.remote.contains("SIPpTag00"), "{record:#?}");
    assert_eq!(a.destination, format!("127.0.0.1:{caller_port}"));
    let media = record.caller_media.as_ref().expect("the caller's media");
    assert_eq!(media.codec, "PCMA");
    assert_eq!(media.remote_rtp, format!("127.0.0.1:{caller_media}"));
    assert_eq!((record.from.as_str(), record.to.as_str()), ("1001", "100"));
    assert_eq!(record.queue, "support");
    assert_eq!(record.answered_at_unix_ms, 0, "no agent answered");
    let state = follower.state().expect("the follower's state");
    assert_eq!(state.calls.get(&record.id), Some(&record));

    let ended = follow_until(&mut stream, &mut follower, |c| match c {
        delta::Change::CallEnded(id) => Some(id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ended, record.id);
    assert!(follower.state().expect("state").calls.is_empty());
    tokio::task::block_in_place(|| caller.assert_ok("1001 waits in the queue and hangs up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_new_work_away_and_lets_the_call_up_finish() {
    support::require_sipp();
    let config = operator_config(1);
    let mut node = tokio::task::block_in_place(|| Node::start(&config));
    // 1002 answers; 1001 calls it, talks 4 s and hangs up (its BYE to the node's Contact).
    let SeatCall { caller, callee, .. } =
        seat_call(&node, "seat-uac-hold-bye.xml", &["-d", "4000"]).await;
    metrics_reach(&node, "the call up", |n| {
        sample(n, "switchboard_calls_active") == Some(1.0)
    })
    .await;

    // SIGTERM (a rolling update): the node takes nothing new...
    signal(&node, "-TERM");
    registrations_refused(node.sip_udp, "still taking registrations").await;
    // ...the call up goes on to its end (the caller's BYE passes through)...
    tokio::task::block_in_place(|| {
        caller.assert_ok("the call finishes during the drain");
        callee.assert_ok("the callee's side finishes too");
    });
    // ...and then the node exits by itself, successfully.
    let deadline = Instant::now() + STARTUP_LIMIT;
    let exit = loop {
        if let Some(status) = node.child.try_wait().expect("poll the node") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not exit after its last call"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit}:\n{}", node.log());
    assert!(
        node.log().contains("drained; shutting down"),
        "{}",
        node.log()
    );
}

/// Waits (bounded) until the node at `sip` answers a REGISTER with 503 (draining); fails with
/// `what` and the last answer otherwise.
async fn registrations_refused(sip: SocketAddr, what: &str) {
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        let answer = tokio::task::block_in_place(|| first_answer(sip, "REGISTER"));
        if answer.starts_with("SIP/2.0 503") {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
