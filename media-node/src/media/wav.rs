//! WAV (RIFF) reading: 8 kHz mono prompts for IVR menus and music on hold, in 16-bit PCM,
//! G.711 A-law (format 6) or µ-law (format 7), cut into 20 ms frames for playback.
//!
//! The chunk walk is strict about sizes (a chunk may not run past the file) and skips chunks
//! it does not know (`LIST`, `fact`, `cue `...), so arbitrary bytes give an error, not a panic.
//! [`parse`] is format-generic so the recorder's stereo files can be read back too.

use std::path::Path;

use switchboard_crds::callcenter::Codec;

use super::g711;

/// The only sample rate the node plays and records.
pub const SAMPLE_RATE: u32 = 8000;
/// Samples in one 20 ms frame at 8 kHz (one RTP packet).
pub const FRAME_SAMPLES: usize = 160;

/// WAV format codes (`wFormatTag`).
pub const FORMAT_PCM: u16 = 1;
pub const FORMAT_ALAW: u16 = 6;
pub const FORMAT_MULAW: u16 = 7;
pub const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Why a WAV file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid { path: String, source: InvalidWav },
}

/// Why bytes are not a usable WAV (the caller adds the file name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidWav {
    pub reason: String,
}

/// The `fmt ` chunk fields the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    /// Format code; for WAVE_FORMAT_EXTENSIBLE, the sub-format's code.
    pub format: u16,
    pub channels: u16,
    pub sample_rate: u32,
    pub bits_per_sample: u16,
    pub block_align: u16,
}

/// A parsed WAV: its format and the bytes of its `data` chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavView<'a> {
    pub format: WavFormat,
    pub data: &'a [u8],
}

impl WavView<'_> {
    /// Whole sample frames (one sample per channel) in the data chunk.
    pub fn frames(&self) -> usize {
        match self.format.block_align {
            0 => 0,
            align => self.data.len() / usize::from(align),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the RIFF/WAVE structure: finds `fmt ` and `data`, skipping other chunks.
pub fn parse(bytes: &[u8]) -> Result<WavView<'_>, InvalidWav> {
    parse_chunks(bytes).map_err(|reason| InvalidWav { reason })
}

fn parse_chunks(bytes: &[u8]) -> Result<WavView<'_>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let riff_size = le32(bytes, 4) as usize;
    // The RIFF size counts from byte 8. A size past the end means a truncated file.
    let riff_end = riff_size
        .checked_add(8)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "RIFF size {riff_size} runs past the end of the {}-byte file",
                bytes.len()
            )
        })?;
    let mut at = 12;
    let mut format = None;
    let mut data = None;
    while at + 8 <= riff_end {
        let id = &bytes[at..at + 4];
        let size = le32(bytes, at + 4) as usize;
        let body = at + 8;
        let end = body
            .checked_add(size)
            .filter(|&end| end <= riff_end)
            .ok_or_else(|| {
                format!(
                    "chunk {:?} at byte {at} of size {size} runs past the RIFF end {riff_end}",
                    String::from_utf8_lossy(id)
                )
            })?;
        match id {
            b"fmt " => format = Some(parse_format(&bytes[body..end])?),
            b"data" => {
                data = Some(&bytes[body..end]);
                // Nothing after the audio matters for playback.
                break;
            }
            _ => {}
        }
        // Chunks are padded to an even length; a missing final pad byte is tolerated.
        at = end + size % 2;
    }
    let format = format.ok_or("no fmt chunk before the data chunk")?;
    let data = data.ok_or("no data chunk")?;
    Ok(WavView { format, data })
}

fn parse_format(body: &[u8]) -> Result<WavFormat, String> {
    if body.len() < 16 {
        return Err(format!(
            "fmt chunk of {} bytes is shorter than 16",
            body.len()
        ));
    }
    let mut format = le16(body, 0);
    if format == FORMAT_EXTENSIBLE {
        // cbSize(2) validBits(2) channelMask(4) then the sub-format GUID, whose first two
        // bytes are the plain format code.
        if body.len() < 26 {
            return Err("WAVE_FORMAT_EXTENSIBLE fmt chunk too short".into());
        }
        format = le16(body, 24);
    }
    let parsed = WavFormat {
        format,
        channels: le16(body, 2),
        sample_rate: le32(body, 4),
        block_align: le16(body, 12),
        bits_per_sample: le16(body, 14),
    };
    if parsed.channels == 0 {
        return Err("fmt chunk declares zero channels".into());
    }
    let bytes_per_sample = parsed.bits_per_sample.div_ceil(8);
    if u32::from(parsed.block_align) != u32::from(bytes_per_sample) * u32::from(parsed.channels) {
        return Err(format!(
            "block align {} does not match {} channels of {} bits",
            parsed.block_align, parsed.channels, parsed.bits_per_sample
        ));
    }
    Ok(parsed)
}

/// A prompt decoded to 8 kHz linear samples, ready to encode for either leg's codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    samples: Vec<i16>,
}

impl Prompt {
    /// Reads a prompt file.
    pub fn load(path: &Path) -> Result<Self, WavError> {
        let bytes = std::fs::read(path).map_err(|source| WavError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_wav_bytes(&bytes).map_err(|source| WavError::Invalid {
            path: path.display().to_string(),
            source,
        })
    }

    /// Decodes a prompt held in memory: 8 kHz mono PCM16, A-law or µ-law.
    pub fn from_wav_bytes(bytes: &[u8]) -> Result<Self, InvalidWav> {
        Self::decode(bytes).map_err(|reason| InvalidWav { reason })
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let wav = parse_chunks(bytes)?;
        let f = wav.format;
        if f.channels != 1 {
            return Err(format!(
                "prompt has {} channels; it must be mono",
                f.channels
            ));
        }
        if f.sample_rate != SAMPLE_RATE {
            return Err(format!(
                "prompt sample rate is {} Hz; it must be 8000 Hz",
                f.sample_rate
            ));
        }
        let mut samples = Vec::with_capacity(wav.data.len());
        match (f.format, f.bits_per_sample) {
            (FORMAT_PCM, 16) => samples.extend(
                wav.data
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]])),
            ),
            (FORMAT_MULAW, 8) => g711::decode(Codec::Pcmu, wav.data, &mut samples),
            (FORMAT_ALAW, 8) => g711::decode(Codec::Pcma, wav.data, &mut samples),
            (format, bits) => {
                return Err(format!(
                    "unsupported prompt encoding: format {format} with {bits} bits \
                     (use 16-bit PCM, A-law or µ-law)"
                ));
            }
        }
        Ok(Self { samples })
    }

    /// A prompt from linear samples (generated audio, tests).
    pub fn from_samples(samples: Vec<i16>) -> Self {
        Self { samples }
    }

    /// The prompt as an 8 kHz mono 16-bit PCM WAV file.
    pub fn to_wav_bytes(&self) -> Vec<u8> {
        const HEADER: usize = 44;
        // A prompt longer than 4 GiB cannot be a WAV; sizes saturate rather than wrap.
        let data_len = u32::try_from(self.samples.len() * 2).unwrap_or(u32::MAX - 36);
        let mut out = Vec::with_capacity(HEADER + self.samples.len() * 2);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(data_len + 36).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&FORMAT_PCM.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
        out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for sample in &self.samples {
            out.extend_from_slice(&sample.to_le_bytes());
        }
        out
    }

    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// Number of 20 ms frames (the last one possibly partial).
    pub fn frame_count(&self) -> usize {
        self.samples.len().div_ceil(FRAME_SAMPLES)
    }

    /// Frame `index` of [`Self::frames`], without walking the ones before it (playback
    /// keeps a frame cursor).
    pub fn frame(&self, index: usize) -> Option<[i16; FRAME_SAMPLES]> {
        let start = index.checked_mul(FRAME_SAMPLES)?;
        let chunk = self.samples.get(start..)?;
        if chunk.is_empty() {
            return None;
        }
        let chunk = &chunk[..chunk.len().min(FRAME_SAMPLES)];
        let mut frame = [0i16; FRAME_SAMPLES];
        frame[..chunk.len()].copy_from_slice(chunk);
        Some(frame)
    }

    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(SAMPLE_RATE)
    }

    /// The prompt in 20 ms frames of 160 samples; the last frame is padded with silence.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = [i16; FRAME_SAMPLES]> + '_ {
        self.samples.chunks(FRAME_SAMPLES).map(|chunk| {
            let mut frame = [0i16; FRAME_SAMPLES];
            frame[..chunk.len()].copy_from_slice(chunk);
            frame
        })
    }

    /// The prompt as RTP payloads for a leg's codec: 160 bytes per 20 ms frame.
    pub fn encoded_frames(&self, codec: Codec) -> Vec<Vec<u8>> {
        self.frames()
            .map(|frame| {
                let mut payload = Vec::with_capacity(FRAME_SAMPLES);
                g711::encode(codec, &frame, &mut payload);
                payload
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a WAV file: format, channels, rate, bits, extra chunks before data, data.
    pub(crate) fn wav_bytes(
        format: u16,
        channels: u16,
        rate: u32,
        bits: u16,
        extra: &[(&[u8; 4], &[u8])],
        data: &[u8],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(b"WAVE");
        body.extend_from_slice(b"fmt ");
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&format.to_le_bytes());
        body.extend_from_slice(&channels.to_le_bytes());
        body.extend_from_slice(&rate.to_le_bytes());
        let align = bits.div_ceil(8) * channels;
        body.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        body.extend_from_slice(&align.to_le_bytes());
        body.extend_from_slice(&bits.to_le_bytes());
        for (id, content) in extra {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(content.len() as u32).to_le_bytes());
            body.extend_from_slice(content);
            if content.len() % 2 == 1 {
                body.push(0);
            }
        }
        body.extend_from_slice(b"data");
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn reads_pcm16_mono() {
        let samples: Vec<i16> = (0..400).map(|i| (i * 50 - 10000) as i16).collect();
        let bytes = wav_bytes(FORMAT_PCM, 1, 8000, 16, &[], &pcm(&samples));
        let prompt = Prompt::from_wav_bytes(&bytes).unwrap();
        assert_eq!(prompt.samples(), &samples[..]);
        assert_eq!(prompt.duration_ms(), 50);
        let frames: Vec<_> = prompt.frames().collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], &samples[..160]);
        assert_eq!(&frames[2][..80], &samples[320..]);
        assert!(frames[2][80..].iter().all(|&s| s == 0));
    }

    #[test]
    fn reads_g711_prompts() {
        let codes: Vec<u8> = (0..=255).collect();
        let mu = Prompt::from_wav_bytes(&wav_bytes(FORMAT_MULAW, 1, 8000, 8, &[], &codes)).unwrap();
        let a = Prompt::from_wav_bytes(&wav_bytes(FORMAT_ALAW, 1, 8000, 8, &[], &codes)).unwrap();
        for (i, &code) in codes.iter().enumerate() {
            assert_eq!(mu.samples()[i], g711::ulaw_to_linear(code));
            assert_eq!(a.samples()[i], g711::alaw_to_linear(code));
        }
        let payloads = mu.encoded_frames(Codec::Pcmu);
        assert_eq!(payloads.len(), 2);
        assert!(payloads.iter().all(|p| p.len() == FRAME_SAMPLES));
        // µ-law through linear and back is the identity except for the negative zero.
        assert_eq!(payloads[0][0x10], 0x10);
    }

    #[test]
    fn skips_unknown_chunks_including_odd_sized_ones() {
        let data = pcm(&[1, 2, 3]);
        let bytes = wav_bytes(
            FORMAT_PCM,
            1,
            8000,
            16,
            &[(b"LIST", b"INFOabc"), (b"fact", &[0, 0, 0, 0])],
            &data,
        );
        assert_eq!(
            Prompt::from_wav_bytes(&bytes).unwrap().samples(),
            &[1, 2, 3]
        );
    }

    #[test]
    fn reads_extensible_format() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(b"WAVE");
        bytes.extend_from_slice(b"fmt ");
        bytes.extend_from_slice(&40u32.to_le_bytes());
        bytes.extend_from_slice(&FORMAT_EXTENSIBLE.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&8000u32.to_le_bytes());
        bytes.extend_from_slice(&16000u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        bytes.extend_from_slice(&16u16.to_le_bytes()); // valid bits
        bytes.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        bytes.extend_from_slice(&FORMAT_PCM.to_le_bytes());
        bytes.extend_from_slice(&[0; 14]); // rest of the GUID
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&pcm(&[7, -7]));
        let riff = (bytes.len() - 8) as u32;
        bytes[4..8].copy_from_slice(&riff.to_le_bytes());
        assert_eq!(Prompt::from_wav_bytes(&bytes).unwrap().samples(), &[7, -7]);
    }

    #[test]
    fn rejects_wrong_prompt_formats() {
        let data = pcm(&[0; 10]);
        let stereo = wav_bytes(FORMAT_PCM, 2, 8000, 16, &[], &data);
        assert!(
            Prompt::from_wav_bytes(&stereo)
                .unwrap_err()
                .reason
                .contains("mono")
        );
        let wideband = wav_bytes(FORMAT_PCM, 1, 16000, 16, &[], &data);
        assert!(
            Prompt::from_wav_bytes(&wideband)
                .unwrap_err()
                .reason
                .contains("8000")
        );
        let float = wav_bytes(3, 1, 8000, 32, &[], &data);
        assert!(
            Prompt::from_wav_bytes(&float)
                .unwrap_err()
                .reason
                .contains("unsupported")
        );
        let pcm8 = wav_bytes(FORMAT_PCM, 1, 8000, 8, &[], &data);
        assert!(Prompt::from_wav_bytes(&pcm8).is_err());
        // Stereo parses generically.
        let view = parse(&stereo).unwrap();
        assert_eq!(view.format.channels, 2);
        assert_eq!(view.frames(), 5);
    }

    #[test]
    fn rejects_bad_structure_and_sizes() {
        let good = wav_bytes(FORMAT_PCM, 1, 8000, 16, &[], &pcm(&[1, 2, 3, 4]));
        assert!(parse(&good).is_ok());
        assert!(parse(b"RIFX").is_err());
        let mut not_wave = good.clone();
        not_wave[8..12].copy_from_slice(b"AVI ");
        assert!(parse(&not_wave).is_err());
        // RIFF size past the end (truncated download).
        assert!(
            parse(&good[..good.len() - 1])
                .unwrap_err()
                .reason
                .contains("RIFF size")
        );
        // data chunk size past the RIFF end.
        let mut long_data = good.clone();
        let at = long_data.len() - 8 - 4;
        long_data[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse(&long_data).unwrap_err().reason.contains("runs past"));
        // Huge sizes do not overflow.
        let mut huge = good.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
        // No data chunk.
        let mut no_data = good.clone();
        let data_id = no_data.len() - 8 - 8;
        no_data[data_id..data_id + 4].copy_from_slice(b"junk");
        assert_eq!(parse(&no_data).unwrap_err().reason, "no data chunk");
        // Bad block align.
        let mut align = good.clone();
        align[32] = 3;
        assert!(parse(&align).unwrap_err().reason.contains("block align"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("welcome.wav");
        let err = Prompt::load(&missing).unwrap_err().to_string();
        assert!(err.contains("welcome.wav"), "{err}");
        std::fs::write(&missing, b"garbage").unwrap();
        let err = Prompt::load(&missing).unwrap_err().to_string();
        assert!(err.contains("welcome.wav") && err.contains("RIFF"), "{err}");
        let good = wav_bytes(FORMAT_MULAW, 1, 8000, 8, &[], &[0xFF; 320]);
        std::fs::write(&missing, good).unwrap();
        assert_eq!(Prompt::load(&missing).unwrap().frames().len(), 2);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Prompt::from_wav_bytes(&bytes);
        }

        /// Arbitrary bytes behind a valid RIFF/WAVE header exercise the chunk walk.
        #[test]
        fn arbitrary_chunks_never_panic(chunks in proptest::collection::vec(any::<u8>(), 0..300), fix_size in any::<bool>()) {
            let mut bytes = b"RIFF\0\0\0\0WAVE".to_vec();
            bytes.extend_from_slice(&chunks);
            if fix_size {
                let size = (bytes.len() - 8) as u32;
                bytes[4..8].copy_from_slice(&size.to_le_bytes());
            }
            if let Ok(view) = parse(&bytes) {
                prop_assert!(view.data.len() <= bytes.len());
            }
            let _ = Prompt::from_wav_bytes(&bytes);
        }

        #[test]
        fn pcm_prompts_round_trip(samples in proptest::collection::vec(any::<i16>(), 0..1000)) {
            let bytes = wav_bytes(FORMAT_PCM, 1, 8000, 16, &[(b"LIST", b"x")], &pcm(&samples));
            let prompt = Prompt::from_wav_bytes(&bytes).unwrap();
            prop_assert_eq!(prompt.samples(), &samples[..]);
            prop_assert_eq!(prompt.frames().len(), samples.len().div_ceil(FRAME_SAMPLES));
            prop_assert_eq!(prompt.frame_count(), prompt.frames().len());
            for (i, frame) in prompt.frames().enumerate() {
                prop_assert_eq!(prompt.frame(i), Some(frame));
            }
            prop_assert_eq!(prompt.frame(prompt.frame_count()), None);
            // Written back out, the prompt reads the same.
            let copy = Prompt::from_wav_bytes(&prompt.to_wav_bytes()).unwrap();
            prop_assert_eq!(copy, prompt);
        }
    }
}
