//! G.711 companding (ITU-T G.711): µ-law (PCMU, payload type 0) and A-law (PCMA, payload
//! type 8) to and from 16-bit linear PCM, and transcoding between the two laws.
//!
//! Integer segment arithmetic as in the ITU-T reference (no floating point), so every node
//! produces bit-identical audio. Lookup tables are built at compile time: the relay
//! transcodes a 160-byte frame with 160 table look-ups.

use switchboard_crds::callcenter::Codec;

/// µ-law bias added before the segment search (33 in 14-bit terms, 0x84 in 16-bit terms).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law can represent before the bias would overflow 16 bits.
const ULAW_CLIP: i32 = 32635;

/// Upper bound of each µ-law segment for a biased 16-bit magnitude.
const ULAW_SEGMENT_END: [i32; 8] = [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF];
/// Upper bound of each A-law segment for a 13-bit magnitude.
const ALAW_SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

const fn segment(value: i32, ends: &[i32; 8]) -> usize {
    let mut seg = 0;
    while seg < 8 {
        if value <= ends[seg] {
            return seg;
        }
        seg += 1;
    }
    8
}

/// Encodes one linear sample as µ-law.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut magnitude = sample as i32;
    // The code word is stored inverted; negative samples keep the sign bit cleared.
    let mask: u8 = if magnitude < 0 {
        magnitude = -magnitude;
        0x7F
    } else {
        0xFF
    };
    if magnitude > ULAW_CLIP {
        magnitude = ULAW_CLIP;
    }
    magnitude += ULAW_BIAS;
    let seg = segment(magnitude, &ULAW_SEGMENT_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mantissa = (magnitude >> (seg + 3)) & 0x0F;
    (((seg as i32) << 4) | mantissa) as u8 ^ mask
}

/// Decodes one µ-law code to linear. Both zeros (0xFF and 0x7F) decode to 0.
pub const fn ulaw_to_linear(code: u8) -> i16 {
    let code = !code;
    let mut magnitude = (((code & 0x0F) as i32) << 3) + ULAW_BIAS;
    magnitude <<= (code & 0x70) >> 4;
    if code & 0x80 != 0 {
        (ULAW_BIAS - magnitude) as i16
    } else {
        (magnitude - ULAW_BIAS) as i16
    }
}

/// Encodes one linear sample as A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13 bits.
    let mut magnitude = (sample as i32) >> 3;
    // Even bits are inverted on the wire (0x55); the sign bit is set for positive samples.
    let mask: u8 = if magnitude >= 0 {
        0xD5
    } else {
        magnitude = -magnitude - 1;
        0x55
    };
    let seg = segment(magnitude, &ALAW_SEGMENT_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mantissa = if seg < 2 {
        (magnitude >> 1) & 0x0F
    } else {
        (magnitude >> seg) & 0x0F
    };
    (((seg as i32) << 4) | mantissa) as u8 ^ mask
}

/// Decodes one A-law code to linear.
pub const fn alaw_to_linear(code: u8) -> i16 {
    let code = code ^ 0x55;
    let mut magnitude = ((code & 0x0F) as i32) << 4;
    let seg = (code & 0x70) >> 4;
    match seg {
        0 => magnitude += 8,
        1 => magnitude += 0x108,
        _ => {
            magnitude += 0x108;
            magnitude <<= seg - 1;
        }
    }
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn build_decode_table(law: Codec) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = match law {
            Codec::Pcmu => ulaw_to_linear(code as u8),
            Codec::Pcma => alaw_to_linear(code as u8),
        };
        code += 1;
    }
    table
}

const fn build_transcode_table(from: Codec) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = match from {
            Codec::Pcmu => linear_to_alaw(ulaw_to_linear(code as u8)),
            Codec::Pcma => linear_to_ulaw(alaw_to_linear(code as u8)),
        };
        code += 1;
    }
    table
}

const ULAW_DECODE: [i16; 256] = build_decode_table(Codec::Pcmu);
const ALAW_DECODE: [i16; 256] = build_decode_table(Codec::Pcma);
const ULAW_TO_ALAW: [u8; 256] = build_transcode_table(Codec::Pcmu);
const ALAW_TO_ULAW: [u8; 256] = build_transcode_table(Codec::Pcma);

/// The RTP static payload type of a G.711 law (RFC 3551).
pub const fn payload_type(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 8,
    }
}

/// The G.711 law for a static payload type, if it is one.
pub const fn codec_for_payload_type(pt: u8) -> Option<Codec> {
    match pt {
        0 => Some(Codec::Pcmu),
        8 => Some(Codec::Pcma),
        _ => None,
    }
}

/// The code for digital silence in a law (what a missing frame is filled with).
pub const fn silence(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => 0xFF,
        Codec::Pcma => 0xD5,
    }
}

/// Encodes one linear sample.
pub const fn encode_sample(codec: Codec, sample: i16) -> u8 {
    match codec {
        Codec::Pcmu => linear_to_ulaw(sample),
        Codec::Pcma => linear_to_alaw(sample),
    }
}

/// Decodes one code (table look-up).
pub const fn decode_sample(codec: Codec, code: u8) -> i16 {
    match codec {
        Codec::Pcmu => ULAW_DECODE[code as usize],
        Codec::Pcma => ALAW_DECODE[code as usize],
    }
}

/// Appends the linear samples of a G.711 payload to `out`.
pub fn decode(codec: Codec, payload: &[u8], out: &mut Vec<i16>) {
    let table = match codec {
        Codec::Pcmu => &ULAW_DECODE,
        Codec::Pcma => &ALAW_DECODE,
    };
    out.extend(payload.iter().map(|&code| table[code as usize]));
}

/// Appends the G.711 encoding of linear samples to `out`.
pub fn encode(codec: Codec, samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| encode_sample(codec, s)));
}

/// Transcodes a payload in place from one law to the other (a no-op when they match),
/// for bridging a µ-law leg with an A-law leg.
pub fn transcode_in_place(from: Codec, to: Codec, payload: &mut [u8]) {
    let table = match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => &ULAW_TO_ALAW,
        (Codec::Pcma, Codec::Pcmu) => &ALAW_TO_ULAW,
        _ => return,
    };
    for code in payload {
        *code = table[*code as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-32124), 0x00);
        assert_eq!(linear_to_ulaw(32124), 0x80);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_alaw(8), 0xD5);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-8), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn silence_codes_decode_to_near_zero() {
        assert_eq!(decode_sample(Codec::Pcmu, silence(Codec::Pcmu)), 0);
        assert_eq!(decode_sample(Codec::Pcma, silence(Codec::Pcma)), 8);
    }

    #[test]
    fn ulaw_every_code_round_trips() {
        for code in 0..=255u8 {
            let linear = ulaw_to_linear(code);
            let back = linear_to_ulaw(linear);
            // 0x7F is µ-law's "negative zero"; it re-encodes as the positive zero 0xFF.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(back, expected, "code {code:#04x} -> {linear}");
            assert_eq!(decode_sample(Codec::Pcmu, code), linear);
        }
    }

    #[test]
    fn alaw_every_code_round_trips() {
        for code in 0..=255u8 {
            let linear = alaw_to_linear(code);
            assert_eq!(linear_to_alaw(linear), code, "code {code:#04x} -> {linear}");
            assert_eq!(decode_sample(Codec::Pcma, code), linear);
        }
    }

    /// Quantising is monotonic: a louder input never decodes quieter.
    #[test]
    fn encoding_is_monotonic_over_every_sample() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut previous = i16::MIN;
            for sample in i16::MIN..=i16::MAX {
                let q = decode_sample(codec, encode_sample(codec, sample));
                assert!(q >= previous, "{codec:?}: {sample} -> {q} < {previous}");
                previous = q;
            }
        }
    }

    /// Decoded code values, sorted by magnitude, are strictly increasing (no two codes share
    /// a level except µ-law's two zeros).
    #[test]
    fn decoded_levels_are_distinct() {
        let mut ulaw: Vec<i16> = (0..=255u8).map(ulaw_to_linear).collect();
        ulaw.sort_unstable();
        ulaw.dedup();
        assert_eq!(ulaw.len(), 255);
        let mut alaw: Vec<i16> = (0..=255u8).map(alaw_to_linear).collect();
        alaw.sort_unstable();
        alaw.dedup();
        assert_eq!(alaw.len(), 256);
    }

    #[test]
    fn transcoding_preserves_level_within_one_step() {
        for code in 0..=255u8 {
            let mut buf = [code];
            transcode_in_place(Codec::Pcmu, Codec::Pcma, &mut buf);
            assert_eq!(buf[0], linear_to_alaw(ulaw_to_linear(code)));
            let mut buf = [code];
            transcode_in_place(Codec::Pcma, Codec::Pcmu, &mut buf);
            assert_eq!(buf[0], linear_to_ulaw(alaw_to_linear(code)));
            let mut same = [code];
            transcode_in_place(Codec::Pcmu, Codec::Pcmu, &mut same);
            assert_eq!(same[0], code);
        }
        // A-law -> µ-law -> A-law comes back within one quantisation step of either law.
        for code in 0..=255u8 {
            let mut buf = [code];
            transcode_in_place(Codec::Pcma, Codec::Pcmu, &mut buf);
            transcode_in_place(Codec::Pcmu, Codec::Pcma, &mut buf);
            let diff = (i32::from(alaw_to_linear(buf[0])) - i32::from(alaw_to_linear(code))).abs();
            // µ-law's segments are coarser than A-law's at some levels; either step may apply.
            let level = alaw_to_linear(code);
            let step =
                quantisation_step(Codec::Pcma, level).max(quantisation_step(Codec::Pcmu, level));
            assert!(diff <= step, "{code:#04x}: diff {diff} > step {step}");
        }
    }

    #[test]
    fn payload_types() {
        assert_eq!(payload_type(Codec::Pcmu), 0);
        assert_eq!(payload_type(Codec::Pcma), 8);
        assert_eq!(codec_for_payload_type(0), Some(Codec::Pcmu));
        assert_eq!(codec_for_payload_type(8), Some(Codec::Pcma));
        assert_eq!(codec_for_payload_type(18), None);
    }

    #[test]
    fn buffer_helpers_match_sample_functions() {
        let samples = [0i16, 1, -1, 1000, -1000, i16::MAX, i16::MIN];
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut encoded = Vec::new();
            encode(codec, &samples, &mut encoded);
            let mut decoded = Vec::new();
            decode(codec, &encoded, &mut decoded);
            assert_eq!(encoded.len(), samples.len());
            for (i, &s) in samples.iter().enumerate() {
                assert_eq!(encoded[i], encode_sample(codec, s));
                assert_eq!(decoded[i], decode_sample(codec, encoded[i]));
            }
        }
    }

    /// The width of the quantisation interval a linear value falls in (twice the worst error).
    fn quantisation_step(codec: Codec, sample: i16) -> i32 {
        let magnitude = i32::from(sample).abs();
        match codec {
            Codec::Pcmu => {
                let seg = segment((magnitude + ULAW_BIAS).min(0x7FFF), &ULAW_SEGMENT_END);
                1 << (seg.min(7) + 3)
            }
            Codec::Pcma => {
                let seg = segment(magnitude >> 3, &ALAW_SEGMENT_END);
                if seg < 2 { 16 } else { 1 << (seg.min(7) + 3) }
            }
        }
    }

    proptest! {
        #[test]
        fn quantisation_error_is_bounded(sample in any::<i16>()) {
            for codec in [Codec::Pcmu, Codec::Pcma] {
                let q = decode_sample(codec, encode_sample(codec, sample));
                let err = (i32::from(q) - i32::from(sample)).abs();
                // Outside the clip level the error is the distance to the largest level.
                let clip = if codec == Codec::Pcmu { 32124 } else { 32256 };
                let allowed = quantisation_step(codec, sample).max(i32::from(sample).abs() - clip);
                prop_assert!(err <= allowed, "{:?} {} -> {} (err {})", codec, sample, q, err);
                // The sign survives (A-law has no zero level; it maps 0 and -1 to ±8).
                if sample > 8 { prop_assert!(q > 0); }
                if sample < -8 { prop_assert!(q < 0); }
            }
        }

        #[test]
        fn re_encoding_a_decoded_sample_is_stable(sample in any::<i16>()) {
            for codec in [Codec::Pcmu, Codec::Pcma] {
                let level = decode_sample(codec, encode_sample(codec, sample));
                prop_assert_eq!(decode_sample(codec, encode_sample(codec, level)), level);
            }
        }
    }
}
