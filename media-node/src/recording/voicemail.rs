//! Voicemail messages: one stereo WAV per message (the caller on the left channel) and a JSON
//! metadata file beside it, in one directory per mailbox: `<dir>/<mailbox>/<id>.wav` and
//! `<id>.json`. A seat's mailbox is named after the seat; the center's general mailbox (queue
//! overflow, entry points without a seat) is [`GENERAL_MAILBOX`].

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RecordingError;
use super::sidecar::{read_json, write_json_atomic};

/// The mailbox of messages for the center as a whole.
pub const GENERAL_MAILBOX: &str = "general";

/// What is known about one message (its `.json` file).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VoicemailMessage {
    /// The message's id: its file name without extension (sortable by time).
    pub id: String,
    pub mailbox: String,
    /// The calling number.
    pub from: String,
    /// The queue the caller left, when the message came from a queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The SIP Call-ID of the caller's leg (joins the CDR line).
    pub call_id: String,
    pub received_at: DateTime<Utc>,
    /// Length of the recorded message.
    pub duration_seconds: f64,
    /// The WAV file name in the mailbox directory.
    pub file: String,
}

/// Why a mailbox or message cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("{0:?} is not a mailbox or message name (lowercase letters, digits and '-' only)")]
    InvalidName(String),
    #[error("no message {id:?} in mailbox {mailbox:?}")]
    NotFound { mailbox: String, id: String },
    #[error(transparent)]
    Recording(#[from] RecordingError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mailbox and message names: what seat names and generated ids look like, so a name can
/// never leave the voicemail directory.
fn checked(name: &str) -> Result<&str, MailboxError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(name)
        .ok_or_else(|| MailboxError::InvalidName(name.to_string()))
}

/// The voicemail directory of a node.
#[derive(Debug, Clone)]
pub struct Mailboxes {
    dir: PathBuf,
}

impl Mailboxes {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a new message of `mailbox` is written: the directory is created, the id is the
    /// time and a random suffix. Returns the id and the WAV path.
    pub fn new_message(
        &self,
        mailbox: &str,
        at: DateTime<Utc>,
    ) -> Result<(String, PathBuf), MailboxError> {
        let dir = self.dir.join(checked(mailbox)?);
        std::fs::create_dir_all(&dir).map_err(|source| MailboxError::Io {
            path: dir.clone(),
            source,
        })?;
        let id = format!(
            "{}-{:08x}",
            at.format("%Y%m%dt%H%M%S%3fz"),
            rand::random::<u32>()
        );
        let path = dir.join(format!("{id}.wav"));
        Ok((id, path))
    }

    /// Writes a message's metadata next to its WAV.
    pub fn save(&self, message: &VoicemailMessage) -> Result<(), MailboxError> {
        let path = self
            .dir
            .join(checked(&message.mailbox)?)
            .join(format!("{}.json", checked(&message.id)?));
        Ok(write_json_atomic(message, &path)?)
    }

    /// The messages of a mailbox, oldest first (none for a mailbox that has none yet).
    pub fn list(&self, mailbox: &str) -> Result<Vec<VoicemailMessage>, MailboxError> {
        let dir = self.dir.join(checked(mailbox)?);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(MailboxError::Io { path: dir, source }),
        };
        let mut messages = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                match read_json::<VoicemailMessage>(&path) {
                    Ok(m) => messages.push(m),
                    // One damaged file must not hide the others.
                    Err(error) => tracing::warn!(%error, "voicemail metadata unreadable; skipped"),
                }
            }
        }
        messages.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(messages)
    }

    /// A message and the bytes of its WAV file.
    pub fn read(
        &self,
        mailbox: &str,
        id: &str,
    ) -> Result<(VoicemailMessage, Vec<u8>), MailboxError> {
        let dir = self.dir.join(checked(mailbox)?);
        let meta = dir.join(format!("{}.json", checked(id)?));
        if !meta.exists() {
            return Err(MailboxError::NotFound {
                mailbox: mailbox.to_string(),
                id: id.to_string(),
            });
        }
        let message: VoicemailMessage = read_json(&meta)?;
        let wav = dir.join(checked_file(&message.file)?);
        let bytes = std::fs::read(&wav).map_err(|source| MailboxError::Io { path: wav, source })?;
        Ok((message, bytes))
    }
}

/// A WAV file name from a metadata file: `<id>.wav` only.
fn checked_file(file: &str) -> Result<&str, MailboxError> {
    let stem = file
        .strip_suffix(".wav")
        .ok_or_else(|| MailboxError::InvalidName(file.to_string()))?;
    checked(stem)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_listed_oldest_first_and_names_cannot_leave_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let boxes = Mailboxes::new(dir.path());
        let t0 = Utc::now();
        let mut ids = Vec::new();
        for (i, from) in ["+4930111", "+4930222"].into_iter().enumerate() {
            let at = t0 + chrono::Duration::seconds(i as i64);
            let (id, wav) = boxes.new_message("agent-1001", at).expect("new message");
            std::fs::write(&wav, b"RIFF").expect("wav");
            boxes
                .save(&VoicemailMessage {
                    id: id.clone(),
                    mailbox: "agent-1001".into(),
                    from: from.into(),
                    queue: None,
                    call_id: format!("c{i}"),
                    received_at: at,
                    duration_seconds: 3.5,
                    file: format!("{id}.wav"),
                })
                .expect("save");
            ids.push(id);
        }
        let listed = boxes.list("agent-1001").expect("list");
        assert_eq!(listed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
        assert_eq!(listed[1].from, "+4930222");
        let (message, bytes) = boxes.read("agent-1001", &ids[0]).expect("read");
        assert_eq!(
            (message.from.as_str(), bytes.as_slice()),
            ("+4930111", &b"RIFF"[..])
        );
        assert!(boxes.list("general").expect("empty mailbox").is_empty());
        for bad in ["../etc", "a/b", "", "Agent", "x.json"] {
            assert!(
                matches!(boxes.list(bad), Err(MailboxError::InvalidName(_))),
                "{bad}"
            );
            assert!(boxes.read("agent-1001", bad).is_err(), "{bad}");
        }
        assert!(matches!(
            boxes.read("agent-1001", "nope"),
            Err(MailboxError::NotFound { .. })
        ));
    }
}
