//! Call-progress tones (ITU-T E.180 style): one or more sine frequencies switched on and off
//! by a cadence, generated as 8 kHz 16-bit samples for playback into a call leg.
//!
//! Level: given in dBm0 per frequency component. For G.711 the digital milliwatt is
//! 3.17 dB below a full-scale sine (G.711 µ-law; A-law is 3.14 dB, the difference is
//! below the codec's own step size), so a sine of `L` dBm0 has the 16-bit peak amplitude
//! `32767 · 10^((L − 3.17) / 20)`: 0 dBm0 ≈ 22 748, −13 dBm0 ≈ 5 092.
//!
//! Clicks: the oscillators' phases run on across frames and through the silent parts of the
//! cadence, and each burst is faded in and out over [`RAMP_SAMPLES`] (2 ms), so neither a
//! frame boundary nor a cadence edge produces a step in the waveform.

use std::f64::consts::TAU;

use super::wav::{FRAME_SAMPLES, SAMPLE_RATE};

/// dB by which a full-scale sine exceeds 0 dBm0 in G.711 (ITU-T G.711 table 5, µ-law).
pub const FULL_SCALE_DBM0: f64 = 3.17;
/// Fade length at each start and end of a tone burst: long enough to remove the click,
/// short enough not to change the cadence audibly.
pub const RAMP_SAMPLES: u64 = 16;

/// One on/off step of a cadence, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CadenceStep {
    pub on_ms: u32,
    pub off_ms: u32,
}

/// A tone: frequencies, level and cadence.
#[derive(Debug, Clone, PartialEq)]
pub struct ToneSpec {
    /// Frequencies in Hz, summed (e.g. 440 + 480 Hz for North American ringback).
    pub frequencies: Vec<f64>,
    /// Level of each frequency component in dBm0.
    pub level_dbm0: f64,
    /// The on/off steps; empty means a continuous tone (dial tone).
    pub cadence: Vec<CadenceStep>,
    /// Whether the cadence repeats until stopped (ringback, busy) or plays once (a
    /// call-waiting beep), after which the playback finishes.
    pub repeat: bool,
}

const fn step(on_ms: u32, off_ms: u32) -> CadenceStep {
    CadenceStep { on_ms, off_ms }
}

impl ToneSpec {
    pub fn new(
        frequencies: &[f64],
        level_dbm0: f64,
        cadence: &[CadenceStep],
        repeat: bool,
    ) -> Self {
        Self {
            frequencies: frequencies.to_vec(),
            level_dbm0,
            cadence: cadence.to_vec(),
            repeat,
        }
    }

    /// ETSI (CEPT) ringback: 425 Hz, 1 s on, 4 s off.
    pub fn ringback_etsi() -> Self {
        Self::new(&[425.0], -13.0, &[step(1000, 4000)], true)
    }

    /// North American ringback: 440 + 480 Hz, 2 s on, 4 s off, −19 dBm0 per frequency.
    pub fn ringback_north_america() -> Self {
        Self::new(&[440.0, 480.0], -19.0, &[step(2000, 4000)], true)
    }

    /// ETSI busy: 425 Hz, 0.5 s on, 0.5 s off.
    pub fn busy_etsi() -> Self {
        Self::new(&[425.0], -13.0, &[step(500, 500)], true)
    }

    /// North American busy: 480 + 620 Hz, 0.5 s on, 0.5 s off, −24 dBm0 per frequency.
    pub fn busy_north_america() -> Self {
        Self::new(&[480.0, 620.0], -24.0, &[step(500, 500)], true)
    }

    /// ETSI congestion: 425 Hz, 0.2 s on, 0.2 s off.
    pub fn congestion_etsi() -> Self {
        Self::new(&[425.0], -13.0, &[step(200, 200)], true)
    }

    /// North American reorder (congestion): 480 + 620 Hz, 0.25 s on, 0.25 s off.
    pub fn congestion_north_america() -> Self {
        Self::new(&[480.0, 620.0], -24.0, &[step(250, 250)], true)
    }

    /// Continuous dial tone: ETSI 425 Hz.
    pub fn dial_etsi() -> Self {
        Self::new(&[425.0], -13.0, &[], true)
    }

    /// A call-waiting beep played once into a busy agent's leg: 425 Hz, two 0.2 s bursts
    /// 0.2 s apart (the ETSI call-waiting burst), then the playback finishes.
    pub fn call_waiting_beep() -> Self {
        Self::new(&[425.0], -13.0, &[step(200, 200), step(200, 0)], false)
    }

    /// Peak amplitude of one frequency component in 16-bit linear units.
    pub fn amplitude(&self) -> f64 {
        f64::from(i16::MAX) * 10f64.powf((self.level_dbm0 - FULL_SCALE_DBM0) / 20.0)
    }

    /// Samples in one pass of the cadence (0 for a continuous tone).
    pub fn cycle_samples(&self) -> u64 {
        self.cadence
            .iter()
            .map(|s| ms_to_samples(s.on_ms) + ms_to_samples(s.off_ms))
            .sum()
    }
}

fn ms_to_samples(ms: u32) -> u64 {
    u64::from(ms) * u64::from(SAMPLE_RATE) / 1000
}

/// Generates a [`ToneSpec`] frame by frame, keeping oscillator phase and cadence position.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    spec: ToneSpec,
    amplitude: f64,
    /// Phase increment per sample and current phase of each frequency, in radians.
    steps: Vec<f64>,
    phases: Vec<f64>,
    /// Samples generated so far.
    position: u64,
    cycle: u64,
}

impl ToneGenerator {
    pub fn new(spec: ToneSpec) -> Self {
        let steps = spec
            .frequencies
            .iter()
            .map(|f| TAU * f / f64::from(SAMPLE_RATE))
            .collect::<Vec<_>>();
        // Components summed at the same phase could clip; the level of each is what the tone
        // plans specify, and the sum is clamped to 16 bits below.
        Self {
            amplitude: spec.amplitude(),
            phases: vec![0.0; steps.len()],
            steps,
            position: 0,
            cycle: spec.cycle_samples(),
            spec,
        }
    }

    pub fn spec(&self) -> &ToneSpec {
        &self.spec
    }

    /// Whether a play-once cadence is over.
    pub fn is_finished(&self) -> bool {
        !self.spec.repeat && self.cycle > 0 && self.position >= self.cycle
    }

    /// The next 20 ms frame, or `None` once a play-once cadence is over (a final partial
    /// frame is padded with silence).
    pub fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]> {
        if self.is_finished() {
            return None;
        }
        let mut frame = [0i16; FRAME_SAMPLES];
        self.fill(&mut frame);
        Some(frame)
    }

    /// Fills `out` with the next samples (silence after a play-once cadence ends).
    pub fn fill(&mut self, out: &mut [i16]) {
        for sample in out {
            let gain = self.envelope();
            let mut value = 0.0;
            for (phase, step) in self.phases.iter_mut().zip(&self.steps) {
                value += phase.sin();
                // Wrapped every sample so precision does not degrade over a long call.
                *phase = (*phase + step) % TAU;
            }
            let scaled = (value * self.amplitude * gain).round();
            *sample = scaled.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
            self.position += 1;
        }
    }

    /// Gain (0..=1) at the current position: the cadence with faded edges.
    fn envelope(&self) -> f64 {
        if self.cycle == 0 {
            return 1.0;
        }
        if !self.spec.repeat && self.position >= self.cycle {
            return 0.0;
        }
        let mut at = self.position % self.cycle;
        for step in &self.spec.cadence {
            let on = ms_to_samples(step.on_ms);
            let off = ms_to_samples(step.off_ms);
            if at < on {
                let from_edge = at.min(on - 1 - at);
                return if from_edge < RAMP_SAMPLES {
                    // Raised cosine from 0 at the edge to 1 after RAMP_SAMPLES.
                    let x = (from_edge as f64 + 0.5) / RAMP_SAMPLES as f64;
                    0.5 - 0.5 * (std::f64::consts::PI * x).cos()
                } else {
                    1.0
                };
            }
            at -= on;
            if at < off {
                return 0.0;
            }
            at -= off;
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Power of `frequency` in `samples` (Goertzel), normalised so a sine of amplitude A
    /// gives about (A/2)².
    fn goertzel(samples: &[i16], frequency: f64) -> f64 {
        let n = samples.len() as f64;
        let k = (n * frequency / f64::from(SAMPLE_RATE)).round();
        let w = TAU * k / n;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in samples {
            let s0 = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n)
    }

    fn generate(spec: &ToneSpec, samples: usize) -> Vec<i16> {
        let mut generator = ToneGenerator::new(spec.clone());
        let mut out = Vec::with_capacity(samples);
        while out.len() < samples {
            match generator.next_frame() {
                Some(frame) => out.extend_from_slice(&frame),
                None => break,
            }
        }
        out.truncate(samples);
        out
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn level_follows_dbm0() {
        let zero = ToneSpec::new(&[1000.0], 0.0, &[], true);
        assert!(
            (zero.amplitude() - 22_748.0).abs() < 2.0,
            "{}",
            zero.amplitude()
        );
        let tone = generate(&ToneSpec::dial_etsi(), 8000);
        // RMS of a sine is A/√2.
        let expected = ToneSpec::dial_etsi().amplitude() / 2f64.sqrt();
        assert!((rms(&tone) - expected).abs() / expected < 0.01);
    }

    #[test]
    fn frequencies_are_where_the_spec_says() {
        // 400 ms of the on part of each tone.
        for spec in [
            ToneSpec::ringback_etsi(),
            ToneSpec::ringback_north_america(),
            ToneSpec::busy_north_america(),
        ] {
            let samples = generate(&spec, 3200);
            let on = &samples[..3200];
            let a = spec.amplitude();
            for &f in &spec.frequencies {
                let p = goertzel(on, f);
                assert!(p > 0.2 * (a / 2.0).powi(2), "{f} Hz missing: {p}");
            }
            // Nothing at unrelated frequencies (DTMF row/column tones, 1 kHz).
            for off in [697.0, 1000.0, 1336.0, 350.0] {
                let p = goertzel(on, off);
                assert!(p < 0.01 * (a / 2.0).powi(2), "{off} Hz present: {p}");
            }
        }
        // Zero crossings of a single 425 Hz tone over one second: 850.
        let samples = generate(&ToneSpec::dial_etsi(), 8000);
        let crossings = samples
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        assert!((848..=852).contains(&crossings), "{crossings}");
    }

    /// On/off pattern in 10 ms blocks: true where the block carries the tone.
    fn pattern(samples: &[i16]) -> Vec<bool> {
        samples.chunks(80).map(|block| rms(block) > 100.0).collect()
    }

    #[test]
    fn cadences_switch_on_and_off_on_time() {
        // ETSI ringback: 1 s on, 4 s off, repeated: 100 blocks on, 400 off, 100 on.
        let samples = generate(&ToneSpec::ringback_etsi(), 8000 * 6);
        let p = pattern(&samples);
        assert!(p[..100].iter().all(|&on| on));
        assert!(p[100..500].iter().all(|&on| !on));
        assert!(p[500..600].iter().all(|&on| on));
        // North American ringback: 2 s on, 4 s off.
        let p = pattern(&generate(&ToneSpec::ringback_north_america(), 8000 * 7));
        assert!(p[..200].iter().all(|&on| on));
        assert!(p[200..600].iter().all(|&on| !on));
        assert!(p[600..700].iter().all(|&on| on));
        // Busy: 0.5/0.5.
        let p = pattern(&generate(&ToneSpec::busy_etsi(), 8000 * 2));
        let expected: Vec<bool> = (0..200).map(|i| (i / 50) % 2 == 0).collect();
        assert_eq!(p, expected);
        // Congestion: 0.2/0.2 (ETSI) and 0.25/0.25 (North America).
        let p = pattern(&generate(&ToneSpec::congestion_etsi(), 8000));
        let expected: Vec<bool> = (0..100).map(|i| (i / 20) % 2 == 0).collect();
        assert_eq!(p, expected);
        let p = pattern(&generate(&ToneSpec::congestion_north_america(), 8000));
        let expected: Vec<bool> = (0..100).map(|i| (i / 25) % 2 == 0).collect();
        assert_eq!(p, expected);
    }

    #[test]
    fn a_play_once_beep_finishes() {
        let spec = ToneSpec::call_waiting_beep();
        let mut generator = ToneGenerator::new(spec.clone());
        let mut samples = Vec::new();
        while let Some(frame) = generator.next_frame() {
            samples.extend_from_slice(&frame);
            assert!(samples.len() < 80_000, "a play-once tone must end");
        }
        // 0.2 on + 0.2 off + 0.2 on = 600 ms = 30 frames.
        assert_eq!(samples.len(), 4800);
        let p = pattern(&samples);
        let expected: Vec<bool> = (0..60).map(|i| (i / 20) % 2 == 0).collect();
        assert_eq!(p, expected);
        assert!(generator.is_finished());
    }

    #[test]
    fn no_clicks_across_frames_or_cadence_edges() {
        // The largest step of a 620 Hz sine of amplitude A is about A·2π·620/8000; frame
        // boundaries and on/off edges must not exceed it.
        let spec = ToneSpec::busy_north_america();
        let samples = generate(&spec, 8000 * 2);
        let a = spec.amplitude() * 2.0;
        // Plus the fade's own slope (π/2 over RAMP_SAMPLES); a hard cut would step by up to `a`.
        let limit = a * (TAU * 620.0 / 8000.0 + std::f64::consts::PI / 2.0 / RAMP_SAMPLES as f64);
        let worst = samples
            .windows(2)
            .map(|w| (f64::from(w[1]) - f64::from(w[0])).abs())
            .fold(0.0, f64::max);
        assert!(worst <= limit, "step {worst} > {limit}");
        // Frame-by-frame equals one long run: the phase carries over frame boundaries.
        let mut long = vec![0i16; 1600];
        ToneGenerator::new(spec.clone()).fill(&mut long);
        assert_eq!(&samples[..1600], &long[..]);
    }

    #[test]
    fn minutes_of_tone_stay_in_phase_and_level() {
        let spec = ToneSpec::dial_etsi();
        let mut generator = ToneGenerator::new(spec.clone());
        // Skip ten minutes (music-on-hold length), then check frequency and level.
        let mut skip = vec![0i16; 8000];
        for _ in 0..600 {
            generator.fill(&mut skip);
        }
        let mut later = vec![0i16; 8000];
        generator.fill(&mut later);
        let p = goertzel(&later, 425.0);
        assert!(p > 0.9 * (spec.amplitude() / 2.0).powi(2), "{p}");
    }
}
