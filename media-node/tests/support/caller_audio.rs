//! What a caller of the center sends, as a pcap SIPp replays: µ-law audio and RFC 4733 key presses.

use std::path::{Path, PathBuf};

/// What a caller sends, as a pcap SIPp replays with its timing: a silent µ-law packet at
/// once (so the replay starts at the answer), RFC 4733 key presses (payload type 101, from
/// the per-key captures Debian's sip-tester ships) at the given offsets, and optionally a
/// 400 Hz µ-law tone (the caller speaking) over a span.
pub fn caller_pcap(
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
    for (i, (t, mut p)) in packets.into_iter().enumerate() {
        // Sequence numbers in sending order, as a phone numbers them: a key press numbered
        // after later audio would make that audio look old to the relay.
        p[RTP + 2..RTP + 4].copy_from_slice(&(i as u16).wrapping_add(1).to_be_bytes());
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
pub fn linear_to_ulaw(sample: i16) -> u8 {
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
pub fn keys_at(start_ms: u32, keys: &str) -> Vec<(u32, char)> {
    keys.chars()
        .enumerate()
        .map(|(i, k)| (start_ms + 400 * i as u32, k))
        .collect()
}
