//! The prompt store: IVR prompts, queue announcements and music on hold, loaded by the
//! relative paths the CRDs name (`campus/welcome.wav`, `moh/default.wav`, matching
//! `PROMPT_PATTERN`) from one base directory, decoded once and shared as `Arc<Prompt>`.
//!
//! A path may not leave the base directory: absolute paths, `..`, empty or `.` components
//! are refused by name, and a symlink pointing outside is refused after resolving it. Files
//! are read synchronously (call [`PromptStore::get`] from `spawn_blocking` or at start-up
//! for large music files); later calls are served from the cache.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::wav::{Prompt, WavError};

/// The announcements the node itself plays (queue position and wait, agent feature-code
/// confirmations, the unavailable message) and the number words they are built from. The
/// default set in the repository's `prompts/` directory has them all.
pub const BUILT_IN: &[&str] = &[
    "queue/all-busy.wav",
    "queue/caller-number.wav",
    "queue/in-line.wav",
    "queue/estimated-wait.wav",
    "queue/minute.wav",
    "queue/minutes.wav",
    "queue/less-than-a-minute.wav",
    "queue/unavailable.wav",
    "agent/logged-in.wav",
    "agent/logged-out.wav",
    "agent/ready.wav",
    "agent/not-ready.wav",
    "agent/refused.wav",
    "numbers/0.wav",
    "numbers/1.wav",
    "numbers/2.wav",
    "numbers/3.wav",
    "numbers/4.wav",
    "numbers/5.wav",
    "numbers/6.wav",
    "numbers/7.wav",
    "numbers/8.wav",
    "numbers/9.wav",
    "numbers/10.wav",
    "numbers/11.wav",
    "numbers/12.wav",
    "numbers/13.wav",
    "numbers/14.wav",
    "numbers/15.wav",
    "numbers/16.wav",
    "numbers/17.wav",
    "numbers/18.wav",
    "numbers/19.wav",
    "numbers/20.wav",
    "numbers/30.wav",
    "numbers/40.wav",
    "numbers/50.wav",
    "numbers/60.wav",
    "numbers/70.wav",
    "numbers/80.wav",
    "numbers/90.wav",
];

/// The number words that say `n` (0 to 99) with the prompts of [`BUILT_IN`]: `23` is
/// `numbers/20.wav` then `numbers/3.wav`. Larger numbers are said as 99.
pub fn number_prompts(n: u32) -> Vec<String> {
    let n = n.min(99);
    if n <= 20 || n.is_multiple_of(10) {
        return vec![format!("numbers/{n}.wav")];
    }
    vec![
        format!("numbers/{}.wav", n / 10 * 10),
        format!("numbers/{}.wav", n % 10),
    ]
}

/// Largest prompt file read: an hour of 8 kHz 16-bit audio is 57.6 MB.
pub const MAX_PROMPT_BYTES: u64 = 64 * 1024 * 1024;

/// Why a prompt cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("prompt path {path:?} is not allowed: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("prompt {path:?} resolves to {resolved}, outside the prompt directory {base}")]
    OutsideBase {
        path: String,
        resolved: PathBuf,
        base: PathBuf,
    },
    #[error("prompt directory {base}: {source}")]
    Base { base: PathBuf, source: io::Error },
    #[error("prompt {path:?} not found under {base}: {source}")]
    NotFound {
        path: String,
        base: PathBuf,
        source: io::Error,
    },
    #[error("prompt {path:?} is {size} bytes, more than the {MAX_PROMPT_BYTES}-byte limit")]
    TooLarge { path: String, size: u64 },
    /// Unreadable, not a WAV, or not 8 kHz mono 16-bit PCM / A-law / µ-law (the message
    /// names the file and what is wrong).
    #[error(transparent)]
    Wav(#[from] WavError),
}

/// Checks a CRD prompt path: `PROMPT_PATTERN` (`^[A-Za-z0-9_][A-Za-z0-9._/-]*\.wav$`) plus
/// no `.`/`..`/empty components, so the name alone cannot leave the base directory.
pub fn check_prompt_path(path: &str) -> Result<(), PromptError> {
    let invalid = |reason| {
        Err(PromptError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    let Some(first) = path.chars().next() else {
        return invalid("empty");
    };
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return invalid("must start with a letter, digit or underscore (no absolute paths)");
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
    {
        return invalid("only letters, digits, '.', '_', '/' and '-' are allowed");
    }
    if !path.ends_with(".wav") {
        return invalid("must end in .wav");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return invalid("empty, '.' or '..' path components are not allowed");
    }
    Ok(())
}

/// Prompts under one base directory, cached after the first load.
#[derive(Debug)]
pub struct PromptStore {
    base: PathBuf,
    cache: Mutex<HashMap<String, Arc<Prompt>>>,
}

impl PromptStore {
    /// A store reading from `base` (which must exist when a prompt is loaded).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The prompt at `path` (relative to the base), loaded and decoded on first use.
    pub fn get(&self, path: &str) -> Result<Arc<Prompt>, PromptError> {
        if let Some(prompt) = self.cache.lock().get(path) {
            return Ok(Arc::clone(prompt));
        }
        let prompt = Arc::new(self.load(path)?);
        // Two concurrent first loads both decode; the first one cached wins.
        let mut cache = self.cache.lock();
        Ok(Arc::clone(cache.entry(path.to_string()).or_insert(prompt)))
    }

    /// Forgets cached prompts (after the prompt files were replaced).
    pub fn clear(&self) {
        self.cache.lock().clear();
    }

    /// Prompts currently cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().len()
    }

    /// Resolves `path` to a file inside the base directory, following symlinks.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, PromptError> {
        check_prompt_path(path)?;
        let relative = Path::new(path);
        // Belt and braces: the checks above already exclude these.
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(PromptError::InvalidPath {
                path: path.to_string(),
                reason: "only plain path components are allowed",
            });
        }
        let base = self
            .base
            .canonicalize()
            .map_err(|source| PromptError::Base {
                base: self.base.clone(),
                source,
            })?;
        let resolved =
            base.join(relative)
                .canonicalize()
                .map_err(|source| PromptError::NotFound {
                    path: path.to_string(),
                    base: base.clone(),
                    source,
                })?;
        if !resolved.starts_with(&base) {
            return Err(PromptError::OutsideBase {
                path: path.to_string(),
                resolved,
                base,
            });
        }
        Ok(resolved)
    }

    fn load(&self, path: &str) -> Result<Prompt, PromptError> {
        let file = self.resolve(path)?;
        let io_error = |source| WavError::Io {
            path: file.display().to_string(),
            source,
        };
        let size = std::fs::metadata(&file).map_err(io_error)?.len();
        if size > MAX_PROMPT_BYTES {
            return Err(PromptError::TooLarge {
                path: path.to_string(),
                size,
            });
        }
        Ok(Prompt::load(&file)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::wav::tests::wav_bytes;
    use crate::media::wav::{FORMAT_ALAW, FORMAT_MULAW, FORMAT_PCM};

    #[test]
    fn numbers_are_said_with_at_most_two_words() {
        assert_eq!(number_prompts(0), ["numbers/0.wav"]);
        assert_eq!(number_prompts(17), ["numbers/17.wav"]);
        assert_eq!(number_prompts(40), ["numbers/40.wav"]);
        assert_eq!(number_prompts(23), ["numbers/20.wav", "numbers/3.wav"]);
        assert_eq!(number_prompts(250), ["numbers/90.wav", "numbers/9.wav"]);
        for n in 0..100 {
            for p in number_prompts(n) {
                assert!(BUILT_IN.contains(&p.as_str()), "{n}: {p}");
            }
        }
    }

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn store_with_files() -> (tempfile::TempDir, PromptStore) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("prompts");
        std::fs::create_dir_all(base.join("campus")).unwrap();
        std::fs::create_dir_all(base.join("moh")).unwrap();
        std::fs::write(
            base.join("campus/welcome.wav"),
            wav_bytes(FORMAT_PCM, 1, 8000, 16, &[], &pcm(&[1, 2, 3])),
        )
        .unwrap();
        std::fs::write(
            base.join("moh/default.wav"),
            wav_bytes(FORMAT_MULAW, 1, 8000, 8, &[], &[0xFF; 320]),
        )
        .unwrap();
        std::fs::write(
            base.join("moh/alaw.wav"),
            wav_bytes(FORMAT_ALAW, 1, 8000, 8, &[], &[0xD5; 160]),
        )
        .unwrap();
        (dir, PromptStore::new(base))
    }

    #[test]
    fn loads_and_caches_by_crd_path() {
        let (_dir, store) = store_with_files();
        let welcome = store.get("campus/welcome.wav").unwrap();
        assert_eq!(welcome.samples(), &[1, 2, 3]);
        let again = store.get("campus/welcome.wav").unwrap();
        assert!(Arc::ptr_eq(&welcome, &again), "served from the cache");
        assert_eq!(store.get("moh/default.wav").unwrap().frames().len(), 2);
        assert_eq!(store.get("moh/alaw.wav").unwrap().frames().len(), 1);
        assert_eq!(store.cached(), 3);
        store.clear();
        assert_eq!(store.cached(), 0);
        let reloaded = store.get("campus/welcome.wav").unwrap();
        assert!(!Arc::ptr_eq(&welcome, &reloaded));
    }

    #[test]
    fn refuses_paths_that_leave_the_base() {
        let (dir, store) = store_with_files();
        std::fs::write(
            dir.path().join("secret.wav"),
            wav_bytes(FORMAT_PCM, 1, 8000, 16, &[], &pcm(&[9])),
        )
        .unwrap();
        for bad in [
            "../secret.wav",
            "campus/../../secret.wav",
            "/etc/passwd.wav",
            "./campus/welcome.wav",
            "campus//welcome.wav",
            "campus/./welcome.wav",
            "",
            "campus/welcome.mp3",
            "campus/wel come.wav",
            "campus\\..\\secret.wav",
            ".hidden.wav",
        ] {
            let err = store.get(bad).unwrap_err();
            assert!(
                matches!(err, PromptError::InvalidPath { .. }),
                "{bad:?}: {err}"
            );
        }
        // A symlink inside the base pointing out of it is refused after resolution.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                dir.path().join("secret.wav"),
                store.base().join("campus/escape.wav"),
            )
            .unwrap();
            std::os::unix::fs::symlink(dir.path(), store.base().join("up")).unwrap();
            for escaping in ["campus/escape.wav", "up/secret.wav"] {
                let err = store.get(escaping).unwrap_err();
                assert!(
                    matches!(err, PromptError::OutsideBase { .. }),
                    "{escaping}: {err}"
                );
            }
            // A symlink that stays inside is fine.
            std::os::unix::fs::symlink(
                store.base().join("moh/default.wav"),
                store.base().join("campus/hold.wav"),
            )
            .unwrap();
            assert_eq!(store.get("campus/hold.wav").unwrap().frames().len(), 2);
        }
    }

    #[test]
    fn wrong_formats_and_missing_files_are_clear_errors() {
        let (_dir, store) = store_with_files();
        let base = store.base().to_path_buf();
        std::fs::write(
            base.join("campus/wideband.wav"),
            wav_bytes(FORMAT_PCM, 1, 16000, 16, &[], &pcm(&[0; 4])),
        )
        .unwrap();
        std::fs::write(
            base.join("campus/stereo.wav"),
            wav_bytes(FORMAT_PCM, 2, 8000, 16, &[], &pcm(&[0; 4])),
        )
        .unwrap();
        std::fs::write(base.join("campus/text.wav"), b"hello").unwrap();
        let err = store.get("campus/wideband.wav").unwrap_err().to_string();
        assert!(
            err.contains("wideband.wav") && err.contains("8000 Hz"),
            "{err}"
        );
        let err = store.get("campus/stereo.wav").unwrap_err().to_string();
        assert!(err.contains("stereo.wav") && err.contains("mono"), "{err}");
        let err = store.get("campus/text.wav").unwrap_err().to_string();
        assert!(err.contains("text.wav") && err.contains("RIFF"), "{err}");
        let err = store.get("campus/missing.wav").unwrap_err();
        assert!(matches!(err, PromptError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("campus/missing.wav"));
        let nowhere = PromptStore::new("/nonexistent/prompts");
        assert!(matches!(
            nowhere.get("moh/default.wav").unwrap_err(),
            PromptError::Base { .. }
        ));
        assert_eq!(store.cached(), 0, "failures are not cached");
    }
}
