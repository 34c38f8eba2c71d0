//! One bridged call through the media building blocks, as the B2BUA wires them: SDP
//! negotiation on both legs (A-law caller, µ-law agent), port leases, RTP relay with
//! transcoding, DTMF detection, stereo recording, sidecar and CDR — then everything read back.

use std::net::IpAddr;

use chrono::Utc;
use media_node::media::dtmf::{DtmfDetector, TelephoneEvent};
use media_node::media::g711;
use media_node::media::ports::PortAllocator;
use media_node::media::rtp::{MediaDatagram, RtpPacket, classify};
use media_node::media::wav;
use media_node::recording::cdr::{CallDetailRecord, CallDirection, CallOutcome, CdrWriter};
use media_node::recording::sidecar::{
    HangupSide, RecordingSegment, RecordingSidecar, sidecar_path,
};
use media_node::recording::wav_writer::{CallRecorder, RecorderOptions, Side};
use media_node::sdp::{
    Direction, LocalMedia, SessionDescription, answer_offer, build_offer, read_answer,
};
use switchboard_crds::callcenter::Codec;

const CALLER_OFFER: &str = "v=0\r\n\
    o=trunk 1 1 IN IP4 192.0.2.1\r\n\
    s=-\r\n\
    c=IN IP4 192.0.2.1\r\n\
    t=0 0\r\n\
    m=audio 30000 RTP/AVP 8 101\r\n\
    a=rtpmap:8 PCMA/8000\r\n\
    a=rtpmap:101 telephone-event/8000\r\n\
    a=fmtp:101 0-15\r\n\
    a=ptime:20\r\n";

/// A square-ish test signal that differs per side so channels cannot be confused.
fn signal(amplitude: i16, len: usize) -> Vec<i16> {
    (0..len)
        .map(|i| {
            if (i / 20) % 2 == 0 {
                amplitude
            } else {
                -amplitude
            }
        })
        .collect()
}

#[test]
fn bridged_call_is_relayed_detected_recorded_and_logged() {
    let node: IpAddr = "198.51.100.7".parse().unwrap();
    let ports = PortAllocator::new(10000, 10007).unwrap();
    let caller_ports = ports.allocate().unwrap();
    let agent_ports = ports.allocate().unwrap();
    assert_eq!(ports.in_use(), 2);

    // Caller leg: the trunk offers A-law only; the call center prefers µ-law but takes A-law.
    let offer = SessionDescription::parse(CALLER_OFFER).unwrap();
    let caller_local = LocalMedia {
        address: node,
        rtp_port: caller_ports.rtp_port(),
        session_id: 7,
        session_version: 1,
        direction: Direction::SendRecv,
    };
    let (caller_answer, caller_audio) =
        answer_offer(&offer, &[Codec::Pcmu, Codec::Pcma], &caller_local).unwrap();
    assert_eq!(caller_audio.codec, Codec::Pcma);
    assert_eq!(caller_audio.telephone_event, Some(101));
    assert!(
        caller_answer
            .to_string()
            .contains("m=audio 10000 RTP/AVP 8 101")
    );

    // Agent leg: the node offers µ-law, the seat's phone answers µ-law.
    let agent_offer = build_offer(
        &LocalMedia {
            rtp_port: agent_ports.rtp_port(),
            ..caller_local.clone()
        },
        &[Codec::Pcmu],
    );
    let phone = LocalMedia {
        address: "192.0.2.50".parse().unwrap(),
        rtp_port: 40000,
        session_id: 99,
        session_version: 1,
        direction: Direction::SendRecv,
    };
    let (phone_answer, _) = answer_offer(
        &SessionDescription::parse(&agent_offer.to_string()).unwrap(),
        &[Codec::Pcmu],
        &phone,
    )
    .unwrap();
    let agent_audio =
        read_answer(&SessionDescription::parse(&phone_answer.to_string()).unwrap()).unwrap();
    assert_eq!(agent_audio.codec, Codec::Pcmu);
    assert_eq!(
        agent_audio.remote,
        Some("192.0.2.50:40000".parse().unwrap())
    );

    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("call-7.wav");
    let mut recorder = CallRecorder::create(&recording, RecorderOptions::default()).unwrap();
    let mut dtmf = DtmfDetector::new();
    let mut keys = String::new();

    let caller_voice = signal(4000, 8000);
    let agent_voice = signal(-9000, 8000);
    let mut relayed_to_agent = Vec::new();
    for (n, (c, a)) in caller_voice
        .chunks(160)
        .zip(agent_voice.chunks(160))
        .enumerate()
    {
        let seq = n as u16;
        let ts = n as u32 * 160;
        // Caller → node: A-law RTP.
        let mut payload = Vec::new();
        g711::encode(Codec::Pcma, c, &mut payload);
        let datagram = RtpPacket::new(8, seq, ts, 0xCA11, &payload).to_vec();
        let MediaDatagram::Rtp(packet) = classify(&datagram).unwrap() else {
            panic!("RTP expected");
        };
        // Record the caller's audio, then transcode and re-originate towards the agent.
        let mut linear = Vec::new();
        g711::decode(caller_audio.codec, packet.payload(), &mut linear);
        recorder.push(Side::Caller, &linear).unwrap();
        let mut out = packet.payload().to_vec();
        g711::transcode_in_place(caller_audio.codec, agent_audio.codec, &mut out);
        let to_agent = RtpPacket::new(agent_audio.payload_type, seq, ts, 0xB0B, &out).to_vec();
        let at_agent = RtpPacket::parse(&to_agent).unwrap();
        assert_eq!(at_agent.payload_type(), 0);
        g711::decode(Codec::Pcmu, at_agent.payload(), &mut relayed_to_agent);

        // Agent → node: µ-law RTP, recorded on the right channel.
        let mut agent_payload = Vec::new();
        g711::encode(Codec::Pcmu, a, &mut agent_payload);
        let agent_datagram = RtpPacket::new(0, seq, ts, 0xA6E7, &agent_payload).to_vec();
        let agent_packet = RtpPacket::parse(&agent_datagram).unwrap();
        let mut agent_linear = Vec::new();
        g711::decode(agent_audio.codec, agent_packet.payload(), &mut agent_linear);
        recorder.push(Side::Other, &agent_linear).unwrap();

        // The caller presses 5 half-way through: start, update, three ends.
        if (20..25).contains(&n) {
            let event = TelephoneEvent {
                event: 5,
                end: n >= 22,
                volume: 10,
                duration: (n as u16 - 19) * 160,
            };
            let bytes = event.to_bytes();
            let dtmf_packet = RtpPacket::new(101, 1000 + seq, 20 * 160, 0xCA11, &bytes)
                .with_marker(n == 20)
                .to_vec();
            let parsed = RtpPacket::parse(&dtmf_packet).unwrap();
            assert_eq!(Some(parsed.payload_type()), caller_audio.telephone_event);
            if let Some(key) = dtmf.on_packet(parsed.timestamp(), parsed.marker(), parsed.payload())
            {
                keys.push(key);
            }
        }
    }
    assert_eq!(keys, "5");

    // The transcoded audio the agent hears stays within one quantisation step of the caller.
    assert_eq!(relayed_to_agent.len(), caller_voice.len());
    for (heard, said) in relayed_to_agent.iter().zip(&caller_voice) {
        assert!((i32::from(*heard) - i32::from(*said)).abs() <= 256);
    }

    // Hang-up: the agent sends BYE.
    let summary = recorder.finish().unwrap();
    assert_eq!(summary.frames, 8000);
    let now = Utc::now();
    let file_name = "call-7.wav".to_string();
    let meta = RecordingSidecar {
        call_id: "call-7@192.0.2.1".into(),
        from: "+4930123456".into(),
        to: "1000".into(),
        trunk: Some("carrier-a".into()),
        seat: Some("agent-07".into()),
        offered_at: now - chrono::Duration::seconds(3),
        answered_at: Some(now - chrono::Duration::seconds(1)),
        ended_at: Some(now),
        hangup_cause: Some("BYE".into()),
        hangup_side: Some(HangupSide::Called),
        file: file_name.clone(),
        segments: vec![RecordingSegment {
            file: file_name.clone(),
            node: "media-0".into(),
            started_at: now - chrono::Duration::seconds(1),
            ended_at: Some(now),
        }],
    };
    meta.write_atomic(&sidecar_path(&recording)).unwrap();
    let cdr = CdrWriter::open(&dir.path().join("cdr.jsonl")).unwrap();
    cdr.append(&CallDetailRecord {
        call_id: meta.call_id.clone(),
        from: meta.from.clone(),
        to: meta.to.clone(),
        direction: CallDirection::Inbound,
        trunk: meta.trunk.clone(),
        seat: meta.seat.clone(),
        queue: Some("sales".into()),
        offered_at: meta.offered_at,
        answered_at: meta.answered_at,
        ended_at: now,
        outcome: CallOutcome::Answered,
        hangup_cause: meta.hangup_cause.clone(),
        hangup_side: meta.hangup_side,
        recording: Some(file_name),
        node: "media-0".into(),
        wait_seconds: Some(4.0),
        survey_score: None,
        voicemail: None,
        ivr_path: Vec::new(),
    })
    .unwrap();

    // Every end path drops the leases: the ports are free again.
    drop(caller_ports);
    drop(agent_ports);
    assert_eq!(ports.in_use(), 0);
    assert_eq!(ports.free(), ports.capacity());

    // Read everything back.
    let bytes = std::fs::read(&recording).unwrap();
    let view = wav::parse(&bytes).unwrap();
    assert_eq!(
        (
            view.format.channels,
            view.format.sample_rate,
            view.format.bits_per_sample
        ),
        (2, 8000, 16)
    );
    assert_eq!(view.frames(), 8000); // one second
    for (i, frame) in view.data.chunks_exact(4).enumerate() {
        let left = i16::from_le_bytes([frame[0], frame[1]]);
        let right = i16::from_le_bytes([frame[2], frame[3]]);
        assert!((i32::from(left) - i32::from(caller_voice[i])).abs() <= 256);
        assert!((i32::from(right) - i32::from(agent_voice[i])).abs() <= 512);
    }
    let sidecar = RecordingSidecar::read(&dir.path().join("call-7.json")).unwrap();
    assert_eq!(sidecar, meta);
    let lines = std::fs::read_to_string(dir.path().join("cdr.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 1);
    let cdr_line: serde_json::Value = serde_json::from_str(lines.trim_end()).unwrap();
    assert_eq!(cdr_line["outcome"], "answered");
    assert_eq!(cdr_line["recording"], "call-7.wav");
}
