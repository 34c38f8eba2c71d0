//! Call recording (stereo WAV, crash-safe, JSON sidecar) and call detail records.
