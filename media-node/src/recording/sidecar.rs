//! The JSON metadata sidecar written next to each recording (`call.wav` → `call.json`).
//!
//! It is replaced atomically (write a temporary file in the same directory, sync, rename),
//! so a reader or a node taking over after a failover sees either the old or the new
//! metadata, never a torn file. Times are RFC 3339 in UTC.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{RecordingError, failed, io_failed};

/// Which party ended the call.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HangupSide {
    /// The calling party (left channel).
    Caller,
    /// The called party: agent, seat or trunk (right channel).
    Called,
    /// The node itself: timeout, error, drain or channel limit.
    Node,
}

/// One file of a recording. A call that survives a failover continues on the new active
/// node in a new segment, so a recording can span several files.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSegment {
    /// File name, relative to the sidecar's directory.
    pub file: String,
    /// The media node that wrote it.
    pub node: String,
    pub started_at: DateTime<Utc>,
    /// Unset while the segment is being written (or if its node died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

/// The metadata of one recorded call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSidecar {
    /// SIP Call-ID of the caller's leg.
    pub call_id: String,
    /// Calling party (URI or number).
    pub from: String,
    /// Dialed number or extension.
    pub to: String,
    /// Trunk the call came in on or went out through, if any.
    #[serde(default)]
    pub trunk: Option<String>,
    /// Seat that took or placed the call, if any.
    #[serde(default)]
    pub seat: Option<String>,
    /// When the INVITE arrived.
    pub offered_at: DateTime<Utc>,
    #[serde(default)]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    /// SIP status or reason that ended the call (e.g. `"BYE"`, `"487 Request Terminated"`).
    #[serde(default)]
    pub hangup_cause: Option<String>,
    #[serde(default)]
    pub hangup_side: Option<HangupSide>,
    /// The first (or only) recording file name.
    pub file: String,
    /// Every file of the recording, in order.
    #[serde(default)]
    pub segments: Vec<RecordingSegment>,
}

/// The sidecar path for a recording: same name, `.json` extension.
pub fn sidecar_path(recording: &Path) -> PathBuf {
    recording.with_extension("json")
}

impl RecordingSidecar {
    /// Writes the sidecar to `path` atomically: temp file, fsync, rename, fsync directory.
    pub fn write_atomic(&self, path: &Path) -> Result<(), RecordingError> {
        write_json_atomic(self, path)
    }

    /// Reads a sidecar (for a takeover node continuing a recording, and for tests).
    pub fn read(path: &Path) -> Result<Self, RecordingError> {
        read_json(path)
    }
}

/// Reads a JSON metadata file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RecordingError> {
    let bytes = std::fs::read(path).map_err(|e| io_failed("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| {
        failed(RecordingError::Encode {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Writes a JSON metadata file atomically: temp file, fsync, rename, fsync directory.
pub(crate) fn write_json_atomic<T: Serialize>(
    value: &T,
    path: &Path,
) -> Result<(), RecordingError> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| {
        failed(RecordingError::Encode {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let write_tmp = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    if let Err(e) = write_tmp() {
        // Best effort: do not leave a half-written temp file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(io_failed("write", &tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| io_failed("rename into", path, e))?;
    // The rename is durable only once the directory entry is synced.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_failed("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> RecordingSidecar {
        let offered = Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).unwrap();
        RecordingSidecar {
            call_id: "a84b4c76e66710@pc33".into(),
            from: "sip:+4930123456@trunk.example".into(),
            to: "+49301234000".into(),
            trunk: Some("carrier-a".into()),
            seat: Some("agent-07".into()),
            offered_at: offered,
            answered_at: Some(offered + chrono::Duration::seconds(12)),
            ended_at: Some(offered + chrono::Duration::seconds(300)),
            hangup_cause: Some("BYE".into()),
            hangup_side: Some(HangupSide::Caller),
            file: "20261122-130000-a84b.wav".into(),
            segments: vec![RecordingSegment {
                file: "20261122-130000-a84b.wav".into(),
                node: "campus-media-0".into(),
                started_at: offered + chrono::Duration::seconds(12),
                ended_at: Some(offered + chrono::Duration::seconds(300)),
            }],
        }
    }

    #[test]
    fn writes_camel_case_json_with_rfc3339_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = sidecar_path(&dir.path().join("call.wav"));
        assert!(path.ends_with("call.json"));
        sample().write_atomic(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(value["callId"], "a84b4c76e66710@pc33");
        assert_eq!(value["trunk"], "carrier-a");
        assert_eq!(value["seat"], "agent-07");
        assert_eq!(value["hangupSide"], "caller");
        assert_eq!(value["hangupCause"], "BYE");
        assert_eq!(value["file"], "20261122-130000-a84b.wav");
        for field in ["offeredAt", "answeredAt", "endedAt"] {
            let text = value[field].as_str().unwrap();
            assert!(
                DateTime::parse_from_rfc3339(text).is_ok(),
                "{field}: {text}"
            );
        }
        assert_eq!(value["offeredAt"], "2026-11-22T13:00:00Z");
        assert_eq!(value["segments"][0]["node"], "campus-media-0");
        assert_eq!(RecordingSidecar::read(&path).unwrap(), sample());
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn rewrite_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call.json");
        let mut meta = sample();
        meta.answered_at = None;
        meta.ended_at = None;
        meta.hangup_side = None;
        meta.write_atomic(&path).unwrap();
        let first = RecordingSidecar::read(&path).unwrap();
        assert_eq!(first.ended_at, None);
        sample().write_atomic(&path).unwrap();
        assert_eq!(RecordingSidecar::read(&path).unwrap(), sample());
    }

    #[test]
    fn disk_errors_name_the_file_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("call.json");
        let before = crate::recording::RECORDING_FAILURES.get();
        let err = sample().write_atomic(&path).unwrap_err();
        assert!(err.to_string().contains("call.json.tmp"), "{err}");
        assert!(crate::recording::RECORDING_FAILURES.get() > before);
        let err = RecordingSidecar::read(&path).unwrap_err();
        assert!(err.to_string().contains("call.json"), "{err}");
        let garbage = dir.path().join("garbage.json");
        std::fs::write(&garbage, b"{").unwrap();
        assert!(RecordingSidecar::read(&garbage).is_err());
    }
}
