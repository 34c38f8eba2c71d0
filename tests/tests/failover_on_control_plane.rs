//! Takeover of live calls on the real control plane: two media-node processes of a HotStandby
//! center elect through a real Lease. Seat 1002 (SIPp) calls seat 1001 (SIPp, echoing the
//! audio back) through the active node A several times at once, with recording on; once the
//! standby B holds every call, A is killed (SIGKILL). B must take the Lease, re-INVITE both
//! legs of every call so their media comes to it, relay audio both ways, write a new
//! recording segment linked to A's in its sidecar, and relay the caller's BYE at the end:
//! every SIPp call completes its scenario. The times are printed, not asserted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use switchboard_crds::callcenter::{HaMode, HighAvailabilitySpec, RecordingMode};
use switchboard_tests::cluster::free_udp_port;
use switchboard_tests::digest_phone::ChallengedPhone;
use switchboard_tests::node_process::{
    NodeProcess, hot_standby_config, minimal_seat_1001, minimal_seat_1002_calls,
    prepare_hot_standby, role_is, sample, start_hot_standby_pair,
};
use switchboard_tests::rtp::RtpEar;
use switchboard_tests::{TestNamespace, control_plane, wait_for};

const WAIT: Duration = Duration::from_secs(60);
/// Calls up at once when the active node dies.
const CALLS: u32 = 10;

/// A recording's two channels: how many samples of each are not silence.
fn voiced_samples(wav: &Path) -> Result<(usize, usize)> {
    let bytes = std::fs::read(wav).with_context(|| format!("reading {}", wav.display()))?;
    ensure!(
        bytes.len() >= 44 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        wav.display()
    );
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    ensure!(channels == 2, "{} has {channels} channels", wav.display());
    let (mut left, mut right) = (0, 0);
    for frame in bytes[44..].chunks_exact(4) {
        let l = i16::from_le_bytes([frame[0], frame[1]]);
        let r = i16::from_le_bytes([frame[2], frame[3]]);
        left += usize::from(l.unsigned_abs() > 64);
        right += usize::from(r.unsigned_abs() > 64);
    }
    Ok((left, right))
}

async fn metric(node: &NodeProcess, series: &str) -> f64 {
    sample(node, series).await.unwrap_or(0.0)
}

/// How the active node goes in [`calls_survive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// SIGKILL: the standby takes the Lease when it expires.
    Killed,
    /// SIGTERM, then SIGKILL a second after it handed the Lease over (a pod deleted with no
    /// grace: the kubelet still sends SIGTERM first): the new active follows the draining
    /// node and takes its calls over when its stream breaks.
    KilledWhileDraining,
    /// SIGTERM, then SIGKILL 200 ms later, mostly before B's next try saw the handed-over
    /// Lease: B takes it from a node already dead and must not wait for its calls to end.
    KilledRightAfterSigterm,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_live_calls_when_the_active_node_is_killed() -> Result<()> {
    calls_survive(Death::Killed).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_an_active_killed_while_it_drains() -> Result<()> {
    calls_survive(Death::KilledWhileDraining).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_an_active_killed_right_after_sigterm() -> Result<()> {
    calls_survive(Death::KilledRightAfterSigterm).await
}

async fn calls_survive(death: Death) -> Result<()> {
    let client = control_plane().await?;
    let ns = TestNamespace::create(&client, "takeover").await?;
    // The default Lease timing (3 s, renewed every second).
    let yaml = hot_standby_config(&ns.name, |center, _| {
        center.spec.recording.mode = RecordingMode::Always;
        center.spec.high_availability = HighAvailabilitySpec {
            mode: HaMode::HotStandby,
            ..HighAvailabilitySpec::default()
        };
    })?;
    prepare_hot_standby(&client, &ns.name).await?;
    let (mut a, b) = start_hot_standby_pair(&client, &ns.name, &yaml).await?;

    // Seat 1001's phone registers with A and answers every call, echoing its audio.
    let loopback = "127.0.0.1".parse()?;
    let phone = free_udp_port(loopback)?.to_string();
    let seat = |scenario: &str| minimal_seat_1001(a.sip_udp, &phone, scenario);
    seat("seat-register.xml").spawn().await?.finish().await?;
    let callee_media = free_udp_port(loopback)?.to_string();
    let answering = seat("takeover-seat-uas.xml")
        .calls(CALLS)
        .limit(WAIT)
        .key("rtp_port", &callee_media)
        .args([
            "-mi",
            "127.0.0.1",
            "-mp",
            callee_media.as_str(),
            "-rtp_echo",
        ])
        .spawn()
        .await?
        .listening(SocketAddr::new(loopback, phone.parse()?))
        .await?;
    let caller_media = free_udp_port(loopback)?.to_string();
    let calling =
        minimal_seat_1002_calls(a.sip_udp, "takeover-seat-uac.xml", "1001", &caller_media)
            .calls(CALLS)
            .limit(WAIT)
            .args(["-l", &CALLS.to_string(), "-r", "10", "-d", "3000"])
            .spawn()
            .await?;

    // Every call established at A and held by B.
    wait_for(WAIT, "every call replicated to B", || async {
        (metric(&b, "switchboard_replication_records{kind=\"calls\"}").await == f64::from(CALLS))
            .then_some(())
    })
    .await
    .with_context(|| format!("A:\n{}\nB:\n{}", a.log(), b.log()))?;
    // Seat 1002's phone is challenged by A; its answer will reach B.
    let challenged =
        ChallengedPhone::challenged_by(a.sip_udp, "1002", "practice-1002", "localhost")
            .await
            .with_context(|| a.log())?;
    let killed = Instant::now();
    if death != Death::Killed {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &a.pid().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {}: {status}", a.pid());
    }
    if death == Death::KilledWhileDraining {
        let handed_over = wait_for(WAIT, "B active after A handed the Lease over", || async {
            role_is(&b, "active").await.then(|| killed.elapsed())
        })
        .await
        .with_context(|| format!("A:\n{}\nB:\n{}", a.log(), b.log()))?;
        // Told on the replication stream, B took the Lease at once rather than at its next try.
        ensure!(
            b.log().contains("the active handed its Lease over"),
            "B was not told of the handover:\n{}",
            b.log()
        );
        eprintln!(
            "takeover ({death:?}): A handed the Lease over, B active {:.2} s after A's SIGTERM",
            handed_over.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if death == Death::KilledRightAfterSigterm {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.kill();
    let active = wait_for(WAIT, "B active", || async {
        role_is(&b, "active").await.then(|| killed.elapsed())
    })
    .await
    .with_context(|| b.log())?;
    let resumed = wait_for(WAIT, "every call taken over", || async {
        let resumed = metric(
            &b,
            "switchboard_calls_taken_over_total{outcome=\"resumed\"}",
        )
        .await;
        let lost = metric(&b, "switchboard_calls_taken_over_total{outcome=\"lost\"}").await;
        (resumed + lost >= f64::from(CALLS)).then(|| (killed.elapsed(), resumed, lost))
    })
    .await
    .with_context(|| b.log())?;
    // B took A's nonce key with the rest of A's state: the phone's answer to A's challenge
    // is good at B (a fresh challenge instead lost a caller in a rolling update).
    let (status, answer) = challenged.answer_at(b.sip_udp).await?;
    ensure!(
        status == 200,
        "seat 1002's answer to A's challenge, at B: {answer}\nB:\n{}",
        b.log()
    );
    let rtp_after = (
        metric(
            &b,
            "switchboard_rtp_packets_total{direction=\"caller_to_callee\"}",
        )
        .await,
        metric(
            &b,
            "switchboard_rtp_packets_total{direction=\"callee_to_caller\"}",
        )
        .await,
    );

    // Both phones complete their scenarios: re-INVITE accepted, the BYE relayed by B.
    calling
        .finish()
        .await
        .with_context(|| format!("the calling phone\nB:\n{}", b.log()))?;
    answering
        .finish()
        .await
        .with_context(|| format!("the answering phone\nB:\n{}", b.log()))?;
    ensure!(
        resumed.1 == f64::from(CALLS) && resumed.2 == 0.0,
        "{} calls resumed and {} lost of {CALLS}",
        resumed.1,
        resumed.2
    );
    ensure!(
        rtp_after.0 > 0.0 && rtp_after.1 > 0.0,
        "B relayed {rtp_after:?} RTP packets (caller to callee, callee to caller)"
    );
    // The phones are done once their BYEs are answered; B counts each call a moment later.
    let answered = wait_for(WAIT, "B to count every call it ended", || async {
        let answered = metric(&b, "switchboard_calls_total{outcome=\"answered\"}").await;
        (answered >= f64::from(CALLS)).then_some(answered)
    })
    .await
    .with_context(|| format!("B:\n{}", b.log()))?;
    ensure!(
        answered == f64::from(CALLS),
        "B ended {answered} answered calls of {CALLS}"
    );
    ensure!(
        metric(&b, "switchboard_registered_seats").await >= 1.0,
        "seat 1001 is not registered with B"
    );

    // B's recording segments: each linked to A's first segment, audio in both channels.
    let mut segments = 0;
    for entry in std::fs::read_dir(b.recordings())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") || path.ends_with("cdr.json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let Ok(sidecar) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(parts) = sidecar["segments"].as_array() else {
            continue;
        };
        ensure!(
            parts.len() == 2
                && parts[0]["node"] == "minimal-media-0"
                && parts[1]["node"] == "minimal-media-1"
                && sidecar["file"] == parts[0]["file"],
            "sidecar {} does not link A's segment and B's: {text}",
            path.display()
        );
        let file = parts[1]["file"].as_str().context("segment file")?;
        let (left, right) = voiced_samples(&b.recordings().join(file))?;
        ensure!(
            left > 800 && right > 800,
            "{file}: {left} voiced samples from the caller, {right} from the callee"
        );
        segments += 1;
    }
    ensure!(
        segments == CALLS,
        "{segments} recording segments on B for {CALLS} calls"
    );
    eprintln!(
        "takeover ({death:?}): {CALLS} calls up; B active after {:.1} s, every call's media moved to B after {:.1} s (Lease 3 s, renewed every second)",
        active.as_secs_f64(),
        resumed.0.as_secs_f64()
    );
    drop(b);
    ns.delete().await?;
    Ok(())
}

/// Callers waiting in a queue when the active node dies: the new active queues them again in
/// the order they called (with their original enqueue time, so their wait goes on) after
/// re-INVITEing them, and the agent answers them in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_callers_keep_their_order_across_a_takeover() -> Result<()> {
    use switchboard_proto::node::v1::node_control_client::NodeControlClient;
    use switchboard_proto::node::v1::{AgentState, SetAgentStateRequest};

    const CALLERS: usize = 3;
    let client = control_plane().await?;
    let ns = TestNamespace::create(&client, "takeover-queue").await?;
    // No wrap-up, so the agent takes the callers one after the other at once.
    let yaml = hot_standby_config(&ns.name, |center, queues| {
        center.spec.high_availability = HighAvailabilitySpec {
            mode: HaMode::HotStandby,
            ..HighAvailabilitySpec::default()
        };
        for queue in queues {
            queue.spec.wrap_up_seconds = 0;
        }
    })?;
    prepare_hot_standby(&client, &ns.name).await?;
    let (mut a, b) = start_hot_standby_pair(&client, &ns.name, &yaml).await?;

    // Agent 1001's phone registers with A; the agent stays logged out, so callers wait.
    let loopback = "127.0.0.1".parse()?;
    let phone = free_udp_port(loopback)?.to_string();
    let agent_phone = |node: SocketAddr, scenario: &str| minimal_seat_1001(node, &phone, scenario);
    agent_phone(a.sip_udp, "seat-register.xml")
        .spawn()
        .await?
        .finish()
        .await?;
    let mut callers = Vec::new();
    let mut ears = Vec::new();
    let mut queued_at = Vec::new();
    for i in 0..CALLERS {
        let media = free_udp_port(loopback)?.to_string();
        let ear = RtpEar::bind(loopback, WAIT).await?;
        callers.push(
            minimal_seat_1002_calls(a.sip_udp, "takeover-queued-caller.xml", "100", &media)
                .key("rtp_port", &ear.port().to_string())
                .limit(WAIT)
                .args(["-cid_str", &format!("caller{i}-%u-%p@%s")])
                .spawn()
                .await?,
        );
        // Each caller queued before the next calls: their order is certain.
        wait_for(WAIT, "the caller replicated as queued", || async {
            (metric(&b, "switchboard_replication_records{kind=\"calls\"}").await == (i + 1) as f64)
                .then_some(())
        })
        .await
        .with_context(|| a.log())?;
        queued_at.push(Instant::now());
        ears.push(ear);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Long enough in the queue that a wait counted afresh on B would be shorter.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    a.kill();
    wait_for(WAIT, "every caller taken over", || async {
        (metric(
            &b,
            "switchboard_calls_taken_over_total{outcome=\"resumed\"}",
        )
        .await
            == CALLERS as f64)
            .then_some(())
    })
    .await
    .with_context(|| b.log())?;
    // Each caller heard music on hold from A while it waited, and hears it from B again.
    for (i, ear) in ears.iter().enumerate() {
        ensure!(
            ear.heard_from(a.sip_udp.ip())
                .is_some_and(|h| h.packets > 0 && h.first < killed),
            "caller {i} heard no music on hold from A: {:?}",
            ear.heard()
        );
        wait_for(WAIT, "music on hold from B", || async {
            ear.heard_from(b.sip_udp.ip())
                .is_some_and(|h| h.packets >= 10)
                .then_some(())
        })
        .await
        .with_context(|| format!("caller {i} heard {:?}", ear.heard()))?;
    }

    // The agent's phone answers each offer from B and hangs up after a while; the agent
    // logs in on B, where the registration was taken over.
    let answering = agent_phone(b.sip_udp, "call-uas-hangup.xml")
        .calls(CALLERS as u32)
        .limit(WAIT)
        .spawn()
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut control = NodeControlClient::connect(format!("http://{}", b.control)).await?;
    control
        .set_agent_state(SetAgentStateRequest {
            seat: "agent-1001".into(),
            state: AgentState::Ready as i32,
            not_ready_reason: String::new(),
        })
        .await
        .context("logging the agent in on B")?;
    answering
        .finish()
        .await
        .with_context(|| format!("the agent's phone\nB:\n{}", b.log()))?;
    for (i, caller) in callers.into_iter().enumerate() {
        caller
            .finish()
            .await
            .with_context(|| format!("caller {i}\nB:\n{}", b.log()))?;
    }

    // B's CDRs: answered in the order they called, each wait counted from its first
    // enqueue on A (before the kill).
    let waits = switchboard_tests::queued::answered_in_order(
        &b.recordings().join("cdr.jsonl"),
        &queued_at,
        killed,
        WAIT,
    )
    .await?;
    eprintln!("takeover of queued callers: answered in their order, waits {waits:?} s");
    drop(b);
    ns.delete().await?;
    Ok(())
}
