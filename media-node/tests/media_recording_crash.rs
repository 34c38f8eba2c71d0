//! A recording whose writer process is killed (SIGKILL, no destructors) mid-call is still a
//! valid stereo WAV holding the audio up to the last size update.
//!
//! The test re-runs this test binary as a child that records in real time, waits until the
//! child has passed at least one size update, kills it, and reads the file back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use media_node::media::wav;
use media_node::recording::wav_writer::{CallRecorder, RecorderOptions, Side};

const CHILD_DIR_ENV: &str = "SWITCHBOARD_TEST_RECORDING_DIR";

/// The sample each side sends at a position, so the read-back can check every sample.
fn caller_sample(i: usize) -> i16 {
    (i % 30000) as i16 + 1
}
fn agent_sample(i: usize) -> i16 {
    -((i % 30000) as i16) - 1
}

/// The child: records 20 ms frames in real time until killed (or 30 s, as a safety net).
#[test]
#[ignore = "run by killed_recorder_leaves_a_playable_wav as a child process"]
fn child_records_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV).map(PathBuf::from) else {
        return;
    };
    let mut recorder =
        CallRecorder::create(&dir.join("call.wav"), RecorderOptions::default()).unwrap();
    let started = Instant::now();
    let mut position = 0;
    let mut announced = false;
    while started.elapsed() < Duration::from_secs(30) {
        let caller: Vec<i16> = (position..position + 160).map(caller_sample).collect();
        let agent: Vec<i16> = (position..position + 160).map(agent_sample).collect();
        recorder.push(Side::Caller, &caller).unwrap();
        recorder.push(Side::Other, &agent).unwrap();
        position += 160;
        if !announced && recorder.frames_on_disk() > 0 {
            std::fs::write(dir.join("updated"), b"").unwrap();
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn killed_recorder_leaves_a_playable_wav() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_records_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .spawn()
        .unwrap();
    let updated = wait_for(&dir.path().join("updated"), Duration::from_secs(20));
    // Let it write past the update so there is unaccounted audio at the end of the file.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(updated, "the child never updated the header sizes");

    let bytes = std::fs::read(dir.path().join("call.wav")).unwrap();
    let view = wav::parse(&bytes).unwrap();
    assert_eq!(view.format.format, wav::FORMAT_PCM);
    assert_eq!(view.format.channels, 2);
    assert_eq!(view.format.sample_rate, 8000);
    assert_eq!(view.format.bits_per_sample, 16);
    let riff = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    assert_eq!(riff, 36 + view.data.len());
    // Whole 20 ms frames up to a size update (how many depends on the machine's load).
    let frames = view.frames();
    assert!(
        frames >= 160 && frames.is_multiple_of(160),
        "{frames} frames declared"
    );
    assert!(bytes.len() >= 44 + view.data.len());
    for (i, frame) in view.data.chunks_exact(4).enumerate() {
        let left = i16::from_le_bytes([frame[0], frame[1]]);
        let right = i16::from_le_bytes([frame[2], frame[3]]);
        assert_eq!(left, caller_sample(i), "left channel at frame {i}");
        assert_eq!(right, agent_sample(i), "right channel at frame {i}");
    }
}
