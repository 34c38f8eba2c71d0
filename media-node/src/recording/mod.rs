//! Call recording (stereo WAV, crash-safe, JSON sidecar) and call detail records.
//!
//! Every disk failure here is returned as a [`RecordingError`] naming the file, logged, and
//! counted in `switchboard_recording_failures_total` so a failing disk shows on the node's
//! dashboard and alerts instead of silently losing recordings.

pub mod cdr;
pub mod sidecar;
pub mod voicemail;
pub mod wav_writer;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use prometheus::{IntCounter, Registry};

/// Recording, sidecar and CDR writes that failed.
pub static RECORDING_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    // A constant, valid metric name: construction cannot fail.
    IntCounter::new(
        "switchboard_recording_failures_total",
        "Recording, sidecar and CDR writes that failed (disk full, I/O error, permissions).",
    )
    .expect("valid metric name")
});

/// Registers this module's metrics with the node's registry.
pub fn register_metrics(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(RECORDING_FAILURES.clone()))
}

/// A recording or CDR write that failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: recording exceeds the 4 GiB a WAV file can hold")]
    TooLong { path: PathBuf },
    /// An earlier write failed (and was counted); the file holds the audio up to the last
    /// size update and takes no more.
    #[error("{path}: recording stopped after an earlier write failure")]
    Stopped { path: PathBuf },
}

impl RecordingError {
    /// The file the failure concerns.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Encode { path, .. }
            | Self::TooLong { path }
            | Self::Stopped { path } => path,
        }
    }
}

/// Counts and logs a failure on its way to the caller.
pub(crate) fn failed(error: RecordingError) -> RecordingError {
    RECORDING_FAILURES.inc();
    tracing::error!(path = %error.path().display(), %error, "recording write failed");
    error
}

/// Builds the error for an I/O failure on `path`, counted and logged.
pub(crate) fn io_failed(
    action: &'static str,
    path: &Path,
    source: std::io::Error,
) -> RecordingError {
    failed(RecordingError::Io {
        action,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_and_exposed() {
        let registry = Registry::new();
        register_metrics(&registry).unwrap();
        let before = RECORDING_FAILURES.get();
        let err = io_failed(
            "write",
            Path::new("/rec/call.wav"),
            std::io::Error::other("disk full"),
        );
        assert!(RECORDING_FAILURES.get() > before);
        assert_eq!(err.to_string(), "cannot write /rec/call.wav: disk full");
        let families = registry.gather();
        assert!(
            families
                .iter()
                .any(|f| f.name() == "switchboard_recording_failures_total")
        );
    }
}
