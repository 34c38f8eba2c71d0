//! The call recorder: one stereo 8 kHz 16-bit PCM WAV per call, caller on the left channel
//! and the other party (agent, seat or trunk) on the right, written while the call runs.
//!
//! Crash safety: the header is written first (with a zero data size), audio is appended, and
//! the RIFF and data sizes are rewritten at least once per second and on close. A node killed
//! mid-call therefore leaves a valid WAV holding the audio up to the last size update; bytes
//! appended after it lie beyond the RIFF end, where players ignore them.
//!
//! Alignment: the two legs deliver audio independently. Samples of each side wait in a queue
//! until the other side's matching samples arrive; when one side runs more than
//! `max_skew` ahead (the other is silent: on hold, one-way audio, lost packets), the missing
//! side is filled with silence so the channels stay time-aligned.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{RecordingError, failed, io_failed};

/// Sample rate of every recording.
pub const SAMPLE_RATE: u32 = 8000;
const CHANNELS: u16 = 2;
const BITS_PER_SAMPLE: u16 = 16;
const BLOCK_ALIGN: u16 = CHANNELS * BITS_PER_SAMPLE / 8;
/// Size of the canonical header written before the audio.
pub const HEADER_LEN: u64 = 44;
/// Offsets of the two sizes rewritten during the call.
const RIFF_SIZE_AT: u64 = 4;
const DATA_SIZE_AT: u64 = 40;

/// Recorder settings.
#[derive(Debug, Clone, Copy)]
pub struct RecorderOptions {
    /// How often the header sizes are brought up to date (at most one second).
    pub size_update_interval: Duration,
    /// How far (in samples) one side may run ahead before the other is filled with silence.
    pub max_skew_samples: usize,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            size_update_interval: Duration::from_secs(1),
            // 200 ms: more than normal jitter, short enough that hold shows as silence.
            max_skew_samples: 1600,
        }
    }
}

/// What a finished recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingSummary {
    /// Stereo sample frames (1/8000 s each).
    pub frames: u64,
}

impl RecordingSummary {
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.frames * 1_000_000 / u64::from(SAMPLE_RATE))
    }
}

/// Which channel a leg's audio goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The calling party, left channel.
    Caller,
    /// The other party, right channel.
    Other,
}

/// A recording in progress.
#[derive(Debug)]
pub struct CallRecorder {
    path: PathBuf,
    file: BufWriter<File>,
    options: RecorderOptions,
    caller: VecDeque<i16>,
    other: VecDeque<i16>,
    /// Frames handed to the file (possibly still in the write buffer).
    frames_written: u64,
    /// Frames the header currently declares.
    frames_in_header: u64,
    /// When the sizes were last brought up to date; `None` until the first audio or tick,
    /// so the one-second clock starts with the call's media.
    last_size_update: Option<Instant>,
    scratch: Vec<u8>,
    finished: bool,
    /// Set by the first failed write: later calls fail fast without re-counting it.
    stopped: bool,
}

/// The 44-byte header of a stereo 8 kHz 16-bit PCM WAV with `data_len` bytes of audio.
fn header(data_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&CHANNELS.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * u32::from(BLOCK_ALIGN)).to_le_bytes());
    h[32..34].copy_from_slice(&BLOCK_ALIGN.to_le_bytes());
    h[34..36].copy_from_slice(&BITS_PER_SAMPLE.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// The most frames whose data and RIFF sizes still fit 32 bits.
const MAX_FRAMES: u64 = (u32::MAX as u64 - 36) / BLOCK_ALIGN as u64;

impl CallRecorder {
    /// Starts a recording at `path`. An existing file is never overwritten: a takeover node
    /// writes a new segment instead.
    pub fn create(path: &Path, options: RecorderOptions) -> Result<Self, RecordingError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_failed("create", path, e))?;
        file.write_all(&header(0))
            .map_err(|e| io_failed("write header of", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(64 * 1024, file),
            options: RecorderOptions {
                size_update_interval: options.size_update_interval.min(Duration::from_secs(1)),
                ..options
            },
            caller: VecDeque::new(),
            other: VecDeque::new(),
            frames_written: 0,
            frames_in_header: 0,
            last_size_update: None,
            scratch: Vec::new(),
            finished: false,
            stopped: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames the header declares: what a reader sees if the node dies now.
    pub fn frames_on_disk(&self) -> u64 {
        self.frames_in_header
    }

    /// Appends decoded audio of one side (a 20 ms frame is 160 samples).
    pub fn push(&mut self, side: Side, samples: &[i16]) -> Result<(), RecordingError> {
        self.push_at(side, samples, Instant::now())
    }

    /// As [`Self::push`], with the current time given (for tests and a shared clock).
    pub fn push_at(
        &mut self,
        side: Side,
        samples: &[i16],
        now: Instant,
    ) -> Result<(), RecordingError> {
        self.checked(|rec| {
            match side {
                Side::Caller => rec.caller.extend(samples),
                Side::Other => rec.other.extend(samples),
            }
            rec.write_aligned(false)?;
            rec.update_sizes_if_due(now)
        })
    }

    /// Runs a write step unless an earlier one failed; a failure stops the recording.
    fn checked<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<T, RecordingError>,
    ) -> Result<T, RecordingError> {
        if self.stopped {
            return Err(RecordingError::Stopped {
                path: self.path.clone(),
            });
        }
        let result = step(self);
        self.stopped = result.is_err();
        result
    }

    /// Updates the header sizes if the interval has passed. The media loop calls this on
    /// its timer too, so sizes stay current while both sides are silent.
    pub fn tick(&mut self, now: Instant) -> Result<(), RecordingError> {
        self.checked(|rec| rec.update_sizes_if_due(now))
    }

    fn update_sizes_if_due(&mut self, now: Instant) -> Result<(), RecordingError> {
        match self.last_size_update {
            None => {
                self.last_size_update = Some(now);
                Ok(())
            }
            Some(last)
                if now.saturating_duration_since(last) >= self.options.size_update_interval =>
            {
                self.update_sizes(now)
            }
            Some(_) => Ok(()),
        }
    }

    /// Writes the frames both sides have, plus silence-filled frames where one side is more
    /// than `max_skew` ahead (or everything, when `drain`).
    fn write_aligned(&mut self, drain: bool) -> Result<(), RecordingError> {
        let both = self.caller.len().min(self.other.len());
        let longest = self.caller.len().max(self.other.len());
        let frames = if drain {
            longest
        } else if longest - both > self.options.max_skew_samples {
            longest - self.options.max_skew_samples
        } else {
            both
        };
        if frames == 0 {
            return Ok(());
        }
        if self.frames_written + frames as u64 > MAX_FRAMES {
            return Err(failed(RecordingError::TooLong {
                path: self.path.clone(),
            }));
        }
        self.scratch.clear();
        self.scratch.reserve(frames * usize::from(BLOCK_ALIGN));
        for _ in 0..frames {
            let left = self.caller.pop_front().unwrap_or(0);
            let right = self.other.pop_front().unwrap_or(0);
            self.scratch.extend_from_slice(&left.to_le_bytes());
            self.scratch.extend_from_slice(&right.to_le_bytes());
        }
        self.file
            .write_all(&self.scratch)
            .map_err(|e| io_failed("write audio to", &self.path, e))?;
        self.frames_written += frames as u64;
        Ok(())
    }

    /// Flushes the audio, then rewrites both sizes to cover it.
    fn update_sizes(&mut self, now: Instant) -> Result<(), RecordingError> {
        self.last_size_update = Some(now);
        if self.frames_in_header == self.frames_written {
            return Ok(());
        }
        // Audio first: the header must never claim bytes that are not in the file.
        self.file
            .flush()
            .map_err(|e| io_failed("write audio to", &self.path, e))?;
        let data_len =
            u32::try_from(self.frames_written * u64::from(BLOCK_ALIGN)).map_err(|_| {
                failed(RecordingError::TooLong {
                    path: self.path.clone(),
                })
            })?;
        let path = &self.path;
        let file = self.file.get_mut();
        let write_sizes = |file: &mut File| -> std::io::Result<()> {
            file.seek(SeekFrom::Start(RIFF_SIZE_AT))?;
            file.write_all(&(data_len + 36).to_le_bytes())?;
            file.seek(SeekFrom::Start(DATA_SIZE_AT))?;
            file.write_all(&data_len.to_le_bytes())?;
            file.seek(SeekFrom::End(0))?;
            Ok(())
        };
        write_sizes(file).map_err(|e| io_failed("update header of", path, e))?;
        self.frames_in_header = self.frames_written;
        Ok(())
    }

    /// Ends the recording: the shorter side is filled with silence, sizes are final and the
    /// file is synced to disk.
    pub fn finish(mut self) -> Result<RecordingSummary, RecordingError> {
        self.finished = true;
        self.checked(|rec| {
            rec.write_aligned(true)?;
            rec.update_sizes(Instant::now())?;
            rec.file
                .get_ref()
                .sync_all()
                .map_err(|e| io_failed("sync", &rec.path, e))?;
            Ok(RecordingSummary {
                frames: rec.frames_written,
            })
        })
    }
}

impl Drop for CallRecorder {
    /// A recorder dropped without `finish` (call torn down by an error or a panic) still
    /// leaves a consistent file; failures are counted and logged by `io_failed`.
    fn drop(&mut self) {
        if !self.finished && !self.stopped {
            let _ = self
                .write_aligned(true)
                .and_then(|()| self.update_sizes(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::wav;
    use proptest::prelude::*;

    /// Reads a recording back: checks the format and splits the channels.
    fn read_back(path: &Path) -> (Vec<i16>, Vec<i16>) {
        let bytes = std::fs::read(path).unwrap();
        read_back_bytes(&bytes)
    }

    fn read_back_bytes(bytes: &[u8]) -> (Vec<i16>, Vec<i16>) {
        let view = wav::parse(bytes).unwrap();
        assert_eq!(view.format.format, wav::FORMAT_PCM);
        assert_eq!(view.format.channels, 2);
        assert_eq!(view.format.sample_rate, 8000);
        assert_eq!(view.format.bits_per_sample, 16);
        assert_eq!(view.data.len() % 4, 0);
        // The RIFF size must agree with the data chunk exactly (what strict players check).
        let riff = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        assert_eq!(riff, 36 + view.data.len());
        let mut left = Vec::new();
        let mut right = Vec::new();
        for frame in view.data.chunks_exact(4) {
            left.push(i16::from_le_bytes([frame[0], frame[1]]));
            right.push(i16::from_le_bytes([frame[2], frame[3]]));
        }
        (left, right)
    }

    fn tone(start: i16, len: usize) -> Vec<i16> {
        (0..len).map(|i| start.wrapping_add(i as i16)).collect()
    }

    #[test]
    fn both_sides_land_on_their_channels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call.wav");
        let mut rec = CallRecorder::create(&path, RecorderOptions::default()).unwrap();
        let caller = tone(1000, 800);
        let agent = tone(-5000, 800);
        for (c, a) in caller.chunks(160).zip(agent.chunks(160)) {
            rec.push(Side::Caller, c).unwrap();
            rec.push(Side::Other, a).unwrap();
        }
        let summary = rec.finish().unwrap();
        assert_eq!(summary.frames, 800);
        assert_eq!(summary.duration(), Duration::from_millis(100));
        let (left, right) = read_back(&path);
        assert_eq!(left, caller);
        assert_eq!(right, agent);
    }

    #[test]
    fn fresh_file_is_a_valid_empty_wav() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.wav");
        let rec = CallRecorder::create(&path, RecorderOptions::default()).unwrap();
        let (left, right) = read_back(&path);
        assert!(left.is_empty() && right.is_empty());
        assert_eq!(rec.finish().unwrap().frames, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_LEN);
    }

    #[test]
    fn missing_side_is_filled_with_silence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hold.wav");
        let options = RecorderOptions {
            max_skew_samples: 320,
            ..RecorderOptions::default()
        };
        let mut rec = CallRecorder::create(&path, options).unwrap();
        // Caller talks for 100 ms while the agent's side is on hold (no RTP).
        let caller = tone(10, 800);
        for c in caller.chunks(160) {
            rec.push(Side::Caller, c).unwrap();
        }
        // The agent comes back: their audio lines up after the skew window.
        let agent = tone(-300, 320);
        rec.push(Side::Other, &agent).unwrap();
        rec.finish().unwrap();
        let (left, right) = read_back(&path);
        assert_eq!(left, caller);
        assert_eq!(right.len(), 800);
        assert!(right[..480].iter().all(|&s| s == 0));
        assert_eq!(&right[480..], &agent[..]);
    }

    #[test]
    fn finish_pads_the_shorter_side() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.wav");
        let mut rec = CallRecorder::create(&path, RecorderOptions::default()).unwrap();
        rec.push(Side::Caller, &tone(1, 160)).unwrap();
        rec.push(Side::Other, &tone(1, 100)).unwrap();
        rec.finish().unwrap();
        let (left, right) = read_back(&path);
        assert_eq!(left.len(), 160);
        assert_eq!(&right[..100], &tone(1, 100)[..]);
        assert!(right[100..].iter().all(|&s| s == 0));
    }

    /// A node killed mid-call: the file on disk (copied while the writer still runs, or
    /// left behind by a writer that never finishes) is a valid WAV up to the last update.
    #[test]
    fn killed_writer_leaves_a_playable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("killed.wav");
        let mut rec = CallRecorder::create(&path, RecorderOptions::default()).unwrap();
        let start = Instant::now();
        let caller = tone(100, 8000 * 3);
        let agent = tone(-100, 8000 * 3);
        let mut updates = Vec::new();
        // Three seconds of 20 ms frames on a simulated clock.
        for (i, (c, a)) in caller.chunks(160).zip(agent.chunks(160)).enumerate() {
            let now = start + Duration::from_millis(20 * (i as u64 + 1));
            rec.push_at(Side::Caller, c, now).unwrap();
            rec.push_at(Side::Other, a, now).unwrap();
            if rec.frames_on_disk() != updates.last().copied().unwrap_or(0) {
                updates.push(rec.frames_on_disk());
            }
        }
        // Sizes moved forward about once per simulated second.
        assert_eq!(updates, vec![8000, 16000]);
        let snapshot = std::fs::read(&path).unwrap();
        let (left, right) = read_back_bytes(&snapshot);
        assert_eq!(left.len(), 16000);
        assert_eq!(left, caller[..16000]);
        assert_eq!(right, agent[..16000]);
        // A writer that dies without finish or drop (kill -9): same result.
        std::mem::forget(rec);
        let (left, _) = read_back(&path);
        assert!(left.len() >= 16000);
    }

    #[test]
    fn dropped_recorder_finalises_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dropped.wav");
        let mut rec = CallRecorder::create(&path, RecorderOptions::default()).unwrap();
        rec.push(Side::Caller, &tone(5, 400)).unwrap();
        drop(rec);
        let (left, right) = read_back(&path);
        assert_eq!(left, tone(5, 400));
        assert_eq!(right, vec![0; 400]);
    }

    #[test]
    fn tick_updates_sizes_while_silent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tick.wav");
        let mut rec = CallRecorder::create(&path, RecorderOptions::default()).unwrap();
        let t0 = Instant::now();
        rec.push_at(Side::Caller, &tone(0, 160), t0).unwrap();
        rec.push_at(Side::Other, &tone(0, 160), t0).unwrap();
        assert_eq!(rec.frames_on_disk(), 0);
        rec.tick(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(rec.frames_on_disk(), 0);
        rec.tick(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(rec.frames_on_disk(), 160);
        assert_eq!(read_back(&path).0.len(), 160);
    }

    #[test]
    fn never_overwrites_and_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exists.wav");
        std::fs::write(&path, b"keep").unwrap();
        let before = crate::recording::RECORDING_FAILURES.get();
        let err = CallRecorder::create(&path, RecorderOptions::default()).unwrap_err();
        assert!(err.to_string().contains("exists.wav"), "{err}");
        assert!(crate::recording::RECORDING_FAILURES.get() > before);
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        let missing_dir = dir.path().join("no/such/dir/call.wav");
        assert!(CallRecorder::create(&missing_dir, RecorderOptions::default()).is_err());
    }

    /// A full disk mid-call: the failure is returned and counted once, the recording stops,
    /// and the file keeps the audio up to the last size update.
    #[test]
    fn disk_full_mid_call_stops_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.wav");
        let mut rec = CallRecorder::create(&path, RecorderOptions::default()).unwrap();
        rec.push(Side::Caller, &tone(1, 160)).unwrap();
        rec.push(Side::Other, &tone(1, 160)).unwrap();
        let t0 = Instant::now();
        rec.tick(t0).unwrap();
        rec.tick(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(rec.frames_on_disk(), 160);
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        rec.file = BufWriter::new(full);
        rec.push(Side::Caller, &tone(1, 160)).unwrap();
        rec.push(Side::Other, &tone(1, 160)).unwrap();
        let before = crate::recording::RECORDING_FAILURES.get();
        let err = rec.tick(t0 + Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, RecordingError::Io { .. }), "{err}");
        assert!(err.to_string().contains("full.wav"), "{err}");
        let after = crate::recording::RECORDING_FAILURES.get();
        assert!(after > before);
        let again = rec.push(Side::Caller, &tone(1, 160)).unwrap_err();
        assert!(matches!(again, RecordingError::Stopped { .. }));
        assert!(matches!(rec.finish(), Err(RecordingError::Stopped { .. })));
        let (left, _) = read_back(&path);
        assert_eq!(left.len(), 160);
    }

    #[test]
    fn header_matches_the_canonical_layout() {
        let h = header(32000);
        assert_eq!(&h[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([h[4], h[5], h[6], h[7]]), 32036);
        let file = [&h[..], &[0u8; 32000][..]].concat();
        let view = wav::parse(&file).unwrap();
        assert_eq!(view.format.block_align, 4);
        assert_eq!(view.frames(), 8000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever order and size the two legs deliver audio in, each channel holds its
        /// side's samples in order, the channels are equally long, and no sample is lost.
        #[test]
        fn channels_keep_their_samples(pushes in proptest::collection::vec((any::<bool>(), 0usize..400), 0..40), skew in 0usize..1000) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.wav");
            let options = RecorderOptions { max_skew_samples: skew, ..RecorderOptions::default() };
            let mut rec = CallRecorder::create(&path, options).unwrap();
            let mut sent = (Vec::new(), Vec::new());
            for (i, (caller, len)) in pushes.into_iter().enumerate() {
                // Non-zero samples so silence fill is distinguishable.
                let samples = vec![(i as i16 % 100) + 1; len];
                if caller {
                    sent.0.extend_from_slice(&samples);
                    rec.push(Side::Caller, &samples).unwrap();
                } else {
                    sent.1.extend_from_slice(&samples);
                    rec.push(Side::Other, &samples).unwrap();
                }
            }
            let frames = rec.finish().unwrap().frames as usize;
            let (left, right) = read_back(&path);
            prop_assert_eq!(left.len(), frames);
            prop_assert_eq!(right.len(), frames);
            prop_assert!(frames >= sent.0.len().max(sent.1.len()));
            let left_audio: Vec<i16> = left.into_iter().filter(|&s| s != 0).collect();
            let right_audio: Vec<i16> = right.into_iter().filter(|&s| s != 0).collect();
            prop_assert_eq!(left_audio, sent.0);
            prop_assert_eq!(right_audio, sent.1);
        }
    }
}
