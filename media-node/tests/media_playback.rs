//! Prompt and tone playback into a call leg, with real UDP sockets on 127.0.0.1 as the
//! phones: what the phone receives (payload, one SSRC, consecutive sequence numbers,
//! timestamps +160, marker at each talkspurt), relayed audio resuming with the same stream
//! after the prompt, music on hold looping until stopped, the finished/stopped
//! notifications and DTMF events, a call that starts with the caller leg only (IVR), and
//! the recording holding the prompt in the channel of what the caller heard, and a node that
//! does not serve (a standby, a fenced active) playing nothing until it serves again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use media_node::call::relay::{
    Leg, LegPeer, MediaError, MediaEvent, MediaLeg, MediaSession, NodeMedia, Playback, PlaybackEnd,
    RelayStats,
};
use media_node::media::dtmf::TelephoneEvent;
use media_node::media::g711;
use media_node::media::ports::PortAllocator;
use media_node::media::prompts::PromptStore;
use media_node::media::rtp::RtpPacket;
use media_node::media::tone::ToneSpec;
use media_node::media::wav::{self, FRAME_SAMPLES, Prompt};
use media_node::recording::wav_writer::{CallRecorder, RecorderOptions};
use switchboard_crds::callcenter::Codec;
use tokio::net::UdpSocket;
use tokio::sync::broadcast;

/// Bound for every wait; the tests wait for events, never for a fixed time.
const PATIENCE: Duration = Duration::from_secs(10);

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// One received RTP packet, owned.
#[derive(Debug, Clone)]
struct Received {
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: Vec<u8>,
    at: Instant,
}

async fn recv(phone: &UdpSocket) -> Received {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(PATIENCE, phone.recv_from(&mut buf))
        .await
        .expect("an RTP packet within the patience bound")
        .expect("receive");
    let p = RtpPacket::parse(&buf[..n]).expect("the node sends valid RTP");
    Received {
        marker: p.marker(),
        pt: p.payload_type(),
        seq: p.sequence(),
        ts: p.timestamp(),
        ssrc: p.ssrc(),
        payload: p.payload().to_vec(),
        at: Instant::now(),
    }
}

async fn next_event(events: &mut broadcast::Receiver<MediaEvent>) -> MediaEvent {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("a media event within the patience bound")
        .expect("event channel open")
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    RtpPacket::new(pt, seq, ts, ssrc, payload)
        .with_marker(marker)
        .to_vec()
}

fn dtmf(event: u8, end: bool) -> [u8; 4] {
    TelephoneEvent {
        event,
        end,
        volume: 10,
        duration: 160,
    }
    .to_bytes()
}

/// A recognisable prompt: a ramp-modulated square wave, `len` samples.
fn test_prompt(len: usize) -> Prompt {
    Prompt::from_samples(
        (0..len)
            .map(|i| {
                let level = 2000 + (i as i32 * 7) % 6000;
                (if (i / 9) % 2 == 0 { level } else { -level }) as i16
            })
            .collect(),
    )
}

/// The prompt through the prompt store, as the IVR will load it.
fn stored(prompt: &Prompt, dir: &std::path::Path, path: &str) -> Arc<Prompt> {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().expect("a prompt path has a folder"))
        .expect("prompt folder");
    std::fs::write(&file, prompt.to_wav_bytes()).expect("prompt written");
    PromptStore::new(dir).get(path).expect("prompt loads")
}

fn seq_gap(a: u16, b: u16) -> u16 {
    b.wrapping_sub(a)
}

#[tokio::test]
async fn a_prompt_plays_into_the_caller_leg_and_the_relay_resumes_in_the_same_stream() {
    let ports = PortAllocator::new(43_200, 43_299).unwrap();
    let caller_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let caller_leg = MediaLeg::bind(&ports, lo()).unwrap();
    let callee_leg = MediaLeg::bind(&ports, lo()).unwrap();
    let to_callee_leg = SocketAddr::new(lo(), callee_leg.rtp_port());
    let stats = Arc::new(RelayStats::default());
    let session = MediaSession::start(
        caller_leg,
        callee_leg,
        Arc::clone(&stats),
        NodeMedia::default(),
        None,
    );
    // A-law caller, µ-law agent: the prompt must be encoded for the caller's law.
    session.set_peer(
        Leg::Caller,
        LegPeer::new(
            Codec::Pcma,
            8,
            Some(101),
            Some(caller_phone.local_addr().unwrap()),
        ),
    );
    session.set_peer(
        Leg::Callee,
        LegPeer::new(
            Codec::Pcmu,
            0,
            Some(96),
            Some(callee_phone.local_addr().unwrap()),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("call.wav");
    session.record(CallRecorder::create(&recording, RecorderOptions::default()).unwrap());
    let mut events = session.events();

    // The agent talks first: three relayed packets from the agent's own stream.
    let agent_voice = [g711::encode_sample(Codec::Pcmu, 300); FRAME_SAMPLES];
    let mut relayed = Vec::new();
    for k in 0..3u16 {
        let packet = rtp(
            0,
            500 + k,
            9000 + 160 * u32::from(k),
            0xA6E7,
            k == 0,
            &agent_voice,
        );
        callee_phone.send_to(&packet, to_callee_leg).await.unwrap();
        relayed.push(recv(&caller_phone).await);
    }
    let node_ssrc = relayed[0].ssrc;
    assert_ne!(
        node_ssrc, 0xA6E7,
        "the node sends its own SSRC to the caller"
    );
    for pair in relayed.windows(2) {
        assert_eq!(seq_gap(pair[0].seq, pair[1].seq), 1);
        assert_eq!(pair[1].ts.wrapping_sub(pair[0].ts), 160);
        assert_eq!(pair[1].ssrc, node_ssrc);
    }
    assert!(relayed[0].marker);

    // Now an announcement to the caller: 3990 samples = 25 frames, the last one partial.
    let prompt = stored(&test_prompt(3990), dir.path(), "campus/welcome.wav");
    let expected: Vec<Vec<u8>> = prompt.encoded_frames(Codec::Pcma);
    assert_eq!(expected.len(), 25);
    let mut handle = session.play(Leg::Caller, Playback::once(Arc::clone(&prompt)));
    assert_eq!(handle.leg(), Leg::Caller);
    let mut played = Vec::new();
    for n in 0..expected.len() {
        played.push(recv(&caller_phone).await);
        if n == 2 {
            // The agent keeps talking during the prompt: the caller must not hear it.
            for k in 3..6u16 {
                let packet = rtp(
                    0,
                    500 + k,
                    9000 + 160 * u32::from(k),
                    0xA6E7,
                    false,
                    &agent_voice,
                );
                callee_phone.send_to(&packet, to_callee_leg).await.unwrap();
            }
            // Taken (and dropped) while the prompt still has 22 frames to go.
            let deadline = Instant::now() + PATIENCE;
            while stats.replaced_by_playback.load(Ordering::Relaxed) < 3 {
                assert!(Instant::now() < deadline, "agent packets never arrived");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    for (n, (got, want)) in played.iter().zip(&expected).enumerate() {
        assert_eq!(got.pt, 8, "the caller's negotiated payload type");
        assert_eq!(got.ssrc, node_ssrc, "one SSRC across relay and playback");
        assert_eq!(&got.payload, want, "frame {n} is the prompt, A-law encoded");
        // The G.711 round trip stays within the A-law step size of the prompt.
        let decoded: Vec<i16> = got
            .payload
            .iter()
            .map(|&c| g711::decode_sample(Codec::Pcma, c))
            .collect();
        let frame = prompt.frame(n).unwrap();
        for (d, s) in decoded.iter().zip(frame) {
            let error = (i32::from(*d) - i32::from(s)).abs();
            assert!(error <= i32::from(s).abs() / 16 + 16, "{d} vs {s}");
        }
    }
    assert!(played[0].marker, "the prompt starts a talkspurt");
    assert!(played[1..].iter().all(|p| !p.marker));
    assert_eq!(seq_gap(relayed[2].seq, played[0].seq), 1, "seq continues");
    let gap = played[0].ts.wrapping_sub(relayed[2].ts);
    assert!(
        gap >= 160 && gap % 160 == 0,
        "ts moves on by whole frames: {gap}"
    );
    for pair in played.windows(2) {
        assert_eq!(seq_gap(pair[0].seq, pair[1].seq), 1);
        assert_eq!(pair[1].ts.wrapping_sub(pair[0].ts), 160);
    }
    let span = played.last().unwrap().at - played[0].at;
    println!("25 prompt packets arrived over {span:?} (nominal 480 ms at 20 ms pacing)");

    assert_eq!(handle.ended().await, PlaybackEnd::Finished);
    assert_eq!(
        next_event(&mut events).await,
        MediaEvent::PlaybackEnded {
            leg: Leg::Caller,
            id: handle.id(),
            end: PlaybackEnd::Finished
        }
    );
    assert_eq!(stats.playback_packets.load(Ordering::Relaxed), 25);
    assert_eq!(
        stats.replaced_by_playback.load(Ordering::Relaxed),
        3,
        "the agent's packets during the prompt were dropped and counted"
    );

    // After the prompt the agent is heard again, in the same stream: next seq, later ts,
    // marker for the new talkspurt, same SSRC.
    let packet = rtp(0, 506, 9000 + 160 * 6, 0xA6E7, false, &agent_voice);
    callee_phone.send_to(&packet, to_callee_leg).await.unwrap();
    let resumed = recv(&caller_phone).await;
    let last = played.last().unwrap();
    assert_eq!(resumed.ssrc, node_ssrc);
    assert_eq!(seq_gap(last.seq, resumed.seq), 1);
    let gap = resumed.ts.wrapping_sub(last.ts);
    assert!(gap >= 160 && gap % 160 == 0 && gap < 8000 * 60, "{gap}");
    assert!(resumed.marker);
    assert_eq!(resumed.pt, 8);
    let transcoded: Vec<u8> = agent_voice
        .iter()
        .map(|&c| g711::encode_sample(Codec::Pcma, g711::decode_sample(Codec::Pcmu, c)))
        .collect();
    assert_eq!(resumed.payload, transcoded);
    // The agent's stream continues within the talkspurt with its own spacing.
    let packet = rtp(0, 507, 9000 + 160 * 7, 0xA6E7, false, &agent_voice);
    callee_phone.send_to(&packet, to_callee_leg).await.unwrap();
    let next = recv(&caller_phone).await;
    assert_eq!(seq_gap(resumed.seq, next.seq), 1);
    assert_eq!(next.ts.wrapping_sub(resumed.ts), 160);
    assert!(!next.marker);

    // The recording: the caller heard the prompt, so it is in the right channel.
    let summary = session.stop().expect("recording finished");
    assert!(summary.frames >= 3990);
    let bytes = std::fs::read(&recording).unwrap();
    let view = wav::parse(&bytes).unwrap();
    assert_eq!(view.format.channels, 2);
    let frames: Vec<(i16, i16)> = view
        .data
        .chunks_exact(4)
        .map(|f| {
            (
                i16::from_le_bytes([f[0], f[1]]),
                i16::from_le_bytes([f[2], f[3]]),
            )
        })
        .collect();
    let right: Vec<i16> = frames.iter().map(|f| f.1).collect();
    let left: Vec<i16> = frames.iter().map(|f| f.0).collect();
    let samples = prompt.samples();
    let at = right
        .windows(samples.len())
        .position(|w| w == samples)
        .expect("the prompt is in the right channel");
    assert!(
        left[at..at + samples.len()].iter().all(|&s| s == 0),
        "the caller said nothing meanwhile"
    );
    assert!(
        !left.windows(samples.len()).any(|w| w == samples),
        "not in the left channel"
    );
    assert_eq!(ports.in_use(), 0);
}

#[tokio::test]
async fn an_ivr_call_with_one_leg_loops_music_detects_keys_and_bridges_later() {
    let ports = PortAllocator::new(43_300, 43_399).unwrap();
    let caller_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let caller_leg = MediaLeg::bind(&ports, lo()).unwrap();
    let to_caller_leg = SocketAddr::new(lo(), caller_leg.rtp_port());
    let stats = Arc::new(RelayStats::default());
    let mut session =
        MediaSession::start_caller_only(caller_leg, Arc::clone(&stats), NodeMedia::default(), None);
    assert!(session.has_leg(Leg::Caller) && !session.has_leg(Leg::Callee));
    assert_eq!(session.local_port(Leg::Callee), 0);
    session.set_peer(
        Leg::Caller,
        LegPeer::new(
            Codec::Pcmu,
            0,
            Some(101),
            Some(caller_phone.local_addr().unwrap()),
        ),
    );
    let mut events = session.events();

    // Music on hold: a 3-frame prompt, looped.
    let dir = tempfile::tempdir().unwrap();
    let music = stored(
        &test_prompt(3 * FRAME_SAMPLES),
        dir.path(),
        "moh/default.wav",
    );
    let frames = music.encoded_frames(Codec::Pcmu);
    let mut moh = session.play(Leg::Caller, Playback::looped(Arc::clone(&music)));
    let mut heard = Vec::new();
    for n in 0..8 {
        let p = recv(&caller_phone).await;
        assert_eq!(p.payload, frames[n % 3], "frame {n} loops the music");
        assert_eq!(p.pt, 0);
        heard.push(p);
        if n == 1 {
            // A key press on the IVR leg arrives as an event while the music plays.
            for (marker, end) in [(true, false), (false, false), (false, true)] {
                let packet = rtp(101, 70, 4000, 0x77, marker, &dtmf(5, end));
                caller_phone.send_to(&packet, to_caller_leg).await.unwrap();
            }
        }
    }
    assert!(heard[0].marker && heard[1..].iter().all(|p| !p.marker));
    for pair in heard.windows(2) {
        assert_eq!(seq_gap(pair[0].seq, pair[1].seq), 1);
        assert_eq!(pair[1].ts.wrapping_sub(pair[0].ts), 160);
        assert_eq!(pair[1].ssrc, heard[0].ssrc);
    }
    assert_eq!(
        next_event(&mut events).await,
        MediaEvent::Dtmf {
            leg: Leg::Caller,
            key: '5'
        }
    );
    assert_eq!(
        moh.try_ended(),
        None,
        "music on hold does not end by itself"
    );

    // Stopped on request.
    session.stop_playback(Leg::Caller);
    assert_eq!(moh.ended().await, PlaybackEnd::Stopped);
    assert_eq!(moh.ended().await, PlaybackEnd::Stopped, "awaitable again");
    assert!(matches!(
        next_event(&mut events).await,
        MediaEvent::PlaybackEnded {
            leg: Leg::Caller,
            end: PlaybackEnd::Stopped,
            ..
        }
    ));
    // No packet after the stop: a later key press round trip proves the task moved on.
    let sent_at_stop = stats.playback_packets.load(Ordering::Relaxed);
    for (marker, end) in [(true, false), (false, true)] {
        let packet = rtp(101, 71, 4800, 0x77, marker, &dtmf(9, end));
        caller_phone.send_to(&packet, to_caller_leg).await.unwrap();
    }
    assert_eq!(
        next_event(&mut events).await,
        MediaEvent::Dtmf {
            leg: Leg::Caller,
            key: '9'
        }
    );
    assert_eq!(stats.playback_packets.load(Ordering::Relaxed), sent_at_stop);
    // Receive what was sent before the stop, in sequence.
    let mut last = heard.last().unwrap().clone();
    let mut received = heard.len() as u64;
    while received < sent_at_stop {
        let p = recv(&caller_phone).await;
        assert_eq!(seq_gap(last.seq, p.seq), 1);
        assert_eq!(p.ssrc, heard[0].ssrc);
        last = p;
        received += 1;
    }
    assert_eq!(
        stats.dropped.load(Ordering::Relaxed),
        0,
        "keys are not drops"
    );

    // A replaced playback reports it; the caller's speech with no agent is consumed.
    let mut first = session.play(Leg::Caller, Playback::tone(ToneSpec::ringback_etsi()));
    let mut second = session.play(Leg::Caller, Playback::tone(ToneSpec::call_waiting_beep()));
    assert_eq!(first.ended().await, PlaybackEnd::Replaced);
    // The beep is 600 ms: 30 frames, then it finishes on its own.
    assert_eq!(second.ended().await, PlaybackEnd::Finished);
    // The ringback may have sent a frame before it was replaced; then the 30 beep frames.
    // Every packet continues the sequence, so none came after the music was stopped.
    let total = stats.playback_packets.load(Ordering::Relaxed);
    let mut tones = Vec::new();
    while received < total {
        let p = recv(&caller_phone).await;
        assert_eq!(seq_gap(last.seq, p.seq), 1, "no packet after the stop");
        assert_eq!(p.ssrc, heard[0].ssrc, "still one stream");
        last = p.clone();
        tones.push(p);
        received += 1;
    }
    assert!((30..=31).contains(&tones.len()), "{}", tones.len());
    let beep = &tones[tones.len() - 30..];
    assert!(beep[0].marker, "the beep starts a talkspurt");
    assert!(beep[1..].iter().all(|p| !p.marker));

    // The agent is bridged: the callee leg is attached and negotiated.
    let callee_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee_leg = MediaLeg::bind(&ports, lo()).unwrap();
    let to_callee_leg = SocketAddr::new(lo(), callee_leg.rtp_port());
    session.attach(Leg::Callee, callee_leg).unwrap();
    let again = MediaLeg::bind(&ports, lo()).unwrap();
    assert!(matches!(
        session.attach(Leg::Callee, again),
        Err(MediaError::LegAlreadyAttached(Leg::Callee))
    ));
    assert_eq!(session.local_port(Leg::Callee), to_callee_leg.port());
    session.set_peer(
        Leg::Callee,
        LegPeer::new(
            Codec::Pcma,
            8,
            None,
            Some(callee_phone.local_addr().unwrap()),
        ),
    );
    let voice = [g711::encode_sample(Codec::Pcmu, -1200); FRAME_SAMPLES];
    // The attach is processed by the session's task in order with the packets it gets
    // afterwards only once it ran: retry the first packet until it is relayed.
    let deadline = Instant::now() + PATIENCE;
    let to_agent = loop {
        caller_phone
            .send_to(&rtp(0, 1, 160, 0x55, false, &voice), to_caller_leg)
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), callee_phone.recv_from(&mut buf)).await
        {
            break RtpPacket::parse(&buf[..n]).unwrap().to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "caller audio never reached the agent"
        );
    };
    let to_agent = RtpPacket::parse(&to_agent).unwrap();
    assert_eq!(to_agent.payload_type(), 8);
    assert!(to_agent.marker());
    // The agent answers; the caller hears it in the same stream as the music and the beep.
    let answer = rtp(8, 40, 800, 0x99, true, &[0xD5; FRAME_SAMPLES]);
    callee_phone.send_to(&answer, to_callee_leg).await.unwrap();
    let agent = recv(&caller_phone).await;
    assert_eq!(agent.ssrc, heard[0].ssrc);
    assert_eq!(seq_gap(last.seq, agent.seq), 1);
    assert_eq!(agent.pt, 0);

    // Stopping the call ends a playback still under way.
    let mut held = session.play(Leg::Callee, Playback::looped(music));
    assert!(session.stop().is_none());
    assert_eq!(held.ended().await, PlaybackEnd::SessionEnded);
    assert_eq!(
        ports.in_use(),
        0,
        "the refused extra leg's lease went back too"
    );
}

#[tokio::test]
async fn a_node_that_does_not_serve_plays_nothing_into_its_calls() {
    use std::sync::atomic::AtomicBool;
    let ports = PortAllocator::new(43_500, 43_599).unwrap();
    let caller_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let serving = Arc::new(AtomicBool::new(false));
    let node = NodeMedia {
        stats: Arc::new(RelayStats::default()),
        serving: Some(Arc::clone(&serving)),
    };
    let stats = Arc::new(RelayStats::default());
    let session = MediaSession::start_caller_only(
        MediaLeg::bind(&ports, lo()).unwrap(),
        Arc::clone(&stats),
        node.clone(),
        None,
    );
    session.set_peer(
        Leg::Caller,
        LegPeer::new(
            Codec::Pcmu,
            0,
            None,
            Some(caller_phone.local_addr().unwrap()),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let music = stored(
        &test_prompt(3 * FRAME_SAMPLES),
        dir.path(),
        "moh/default.wav",
    );
    let frames = music.encoded_frames(Codec::Pcmu);
    let _moh = session.play(Leg::Caller, Playback::looped(Arc::clone(&music)));

    // Fenced: the music keeps time, nothing is sent.
    let deadline = Instant::now() + PATIENCE;
    while stats.playback_withheld.load(Ordering::Relaxed) < 5 {
        assert!(Instant::now() < deadline, "no playback tick withheld");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = [0u8; 2048];
    assert!(
        caller_phone.try_recv_from(&mut buf).is_err(),
        "the phone heard a node that does not serve"
    );
    assert_eq!(stats.playback_packets.load(Ordering::Relaxed), 0);
    assert!(node.stats.playback_withheld.load(Ordering::Relaxed) >= 5);

    // Serving again: the music is heard, starting a talkspurt, where it has got to.
    serving.store(true, Ordering::Relaxed);
    let first = recv(&caller_phone).await;
    assert!(first.marker);
    assert!(frames.contains(&first.payload), "a frame of the music");
    let next = recv(&caller_phone).await;
    assert_eq!(seq_gap(first.seq, next.seq), 1);
}
