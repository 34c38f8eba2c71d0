//! Call detail records: one JSON object per line, one line per call (recorded or not),
//! appended and handed to the operating system as each call ends.
//!
//! Fields of a line (camelCase JSON; absent optional fields are `null`):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `callId` | string | SIP Call-ID of the caller's leg |
//! | `from` | string | calling party (URI or number) |
//! | `to` | string | dialed number or extension |
//! | `direction` | `inbound` \| `outbound` \| `internal` | trunk → seat, seat → trunk, seat → seat |
//! | `trunk` | string? | trunk used, if any |
//! | `seat` | string? | seat that took or placed the call |
//! | `queue` | string? | ACD queue the call waited in |
//! | `offeredAt` | RFC 3339 | INVITE received |
//! | `answeredAt` | RFC 3339? | 200 OK for the INVITE |
//! | `endedAt` | RFC 3339 | call ended (BYE, CANCEL, error or timeout) |
//! | `outcome` | `answered` \| `abandoned` \| `busy` \| `noAnswer` \| `failed` \| `blocked` \| `voicemail` | how the call ended |
//! | `hangupCause` | string? | SIP status or reason, e.g. `"BYE"`, `"486 Busy Here"` |
//! | `hangupSide` | `caller` \| `called` \| `node` ? | which party ended the call |
//! | `recording` | string? | recording file name when the call was recorded |
//! | `node` | string | media node that handled the call |
//! | `waitSeconds` | number? | time the caller waited in the queue(s), when queued |
//! | `surveyScore` | 1–5? | the caller's post-call survey key, when given |
//! | `voicemail` | string? | voicemail message file (`<mailbox>/<file>.wav`) when one was left |
//! | `ivrPath` | [string]? | the IVR menus and keys of the call, e.g. `["main:1", "members:pin-valid"]` |
//!
//! For calls the node answers itself (IVR, queue, voicemail, feature codes), `answeredAt` is
//! when an agent answered (absent when none did); `outcome` is `answered` when an agent (or a
//! feature code) served the call, `voicemail` when a message was left, `abandoned` when the
//! caller hung up first, `failed` when the center could not take the call.
//!
//! [`read_records`] reads the lines back (the control API's `ListCallRecords`); `docs/cdr.md`
//! documents the file for its users and must list the same fields as the table above.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::sidecar::HangupSide;
use super::{RecordingError, failed, io_failed};

/// Which way the call went.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CallDirection {
    Inbound,
    Outbound,
    Internal,
}

/// How the call ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CallOutcome {
    /// Answered and then hung up by either side.
    Answered,
    /// The caller hung up before an answer.
    Abandoned,
    /// The called side was busy.
    Busy,
    /// Nobody answered in time.
    NoAnswer,
    /// Not found, unavailable or an error.
    Failed,
    /// Refused at the trunk's channel limit.
    Blocked,
    /// The caller left a voicemail message.
    Voicemail,
}

/// One call detail record (see the module documentation for the field list).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallDetailRecord {
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub direction: CallDirection,
    pub trunk: Option<String>,
    pub seat: Option<String>,
    pub queue: Option<String>,
    pub offered_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
    pub outcome: CallOutcome,
    pub hangup_cause: Option<String>,
    pub hangup_side: Option<HangupSide>,
    pub recording: Option<String>,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey_score: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ivr_path: Vec<String>,
}

#[derive(Debug)]
struct CdrFile {
    file: File,
    /// A failed write may have left a partial line; the next record starts on a new line
    /// so only the failed record is lost.
    line_broken: bool,
}

/// Appends CDR lines to one file; shareable across call tasks.
#[derive(Debug)]
pub struct CdrWriter {
    path: PathBuf,
    inner: Mutex<CdrFile>,
}

impl CdrWriter {
    /// Opens (or creates) the CDR file for appending.
    pub fn open(path: &Path) -> Result<Self, RecordingError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_failed("open", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner: Mutex::new(CdrFile {
                file,
                line_broken: false,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one call's line with a single write (an `O_APPEND` write lands whole).
    pub fn append(&self, record: &CallDetailRecord) -> Result<(), RecordingError> {
        let mut line = serde_json::to_vec(record).map_err(|source| {
            failed(RecordingError::Encode {
                path: self.path.clone(),
                source,
            })
        })?;
        line.push(b'\n');
        let mut inner = self.inner.lock();
        if inner.line_broken {
            line.insert(0, b'\n');
        }
        let result = inner
            .file
            .write_all(&line)
            .and_then(|()| inner.file.flush());
        inner.line_broken = result.is_err();
        result.map_err(|e| io_failed("append CDR to", &self.path, e))
    }

    /// Forces appended lines to stable storage (on drain and shutdown).
    pub fn sync(&self) -> Result<(), RecordingError> {
        self.inner
            .lock()
            .file
            .sync_data()
            .map_err(|e| io_failed("sync", &self.path, e))
    }
}

/// CDR lines read back from the file.
#[derive(Debug, Default, PartialEq)]
pub struct CdrPage {
    /// The matching lines exactly as written, in file order (the order calls ended).
    pub records: Vec<String>,
    /// More lines matched than the limit allowed.
    pub truncated: bool,
    /// Lines that are not a readable record (a line torn by a failed write, damage), skipped.
    pub skipped: u64,
}

/// The one field the reader needs; other fields are passed through untouched, so lines of
/// older or newer nodes are served as they are.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndedAt {
    ended_at: DateTime<Utc>,
}

/// Reads the records of calls that ended at or after `since`, at most `limit` of them, oldest
/// first. A missing file holds no records. Blocking: call it off the async runtime. A read
/// failure is returned, not counted as a recording failure (nothing was lost).
pub fn read_records(
    path: &Path,
    since: DateTime<Utc>,
    limit: usize,
) -> Result<CdrPage, RecordingError> {
    let io = |source| RecordingError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CdrPage::default()),
        Err(e) => return Err(io(e)),
    };
    let mut reader = BufReader::new(file);
    let mut page = CdrPage::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            page.skipped += 1;
            continue;
        };
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            // The line break written after a failed write leaves an empty line.
            continue;
        }
        match serde_json::from_str::<EndedAt>(text) {
            Ok(record) if record.ended_at >= since => {
                if page.records.len() == limit {
                    page.truncated = true;
                    break;
                }
                page.records.push(text.to_string());
            }
            Ok(_) => {}
            Err(_) => page.skipped += 1,
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record(call_id: &str, outcome: CallOutcome) -> CallDetailRecord {
        let offered = Utc.with_ymd_and_hms(2026, 11, 22, 9, 30, 0).unwrap();
        let answered =
            (outcome == CallOutcome::Answered).then(|| offered + chrono::Duration::seconds(8));
        CallDetailRecord {
            call_id: call_id.into(),
            from: "+4930123456".into(),
            to: "1000".into(),
            direction: CallDirection::Inbound,
            trunk: Some("carrier-a".into()),
            seat: answered.map(|_| "agent-07".into()),
            queue: Some("sales".into()),
            offered_at: offered,
            answered_at: answered,
            ended_at: offered + chrono::Duration::seconds(90),
            outcome,
            hangup_cause: Some("BYE".into()),
            hangup_side: Some(HangupSide::Called),
            recording: answered.map(|_| format!("{call_id}.wav")),
            node: "campus-media-0".into(),
            wait_seconds: Some(12.5),
            survey_score: answered.map(|_| 4),
            voicemail: None,
            ivr_path: vec!["main:1".into()],
        }
    }

    #[test]
    fn appends_one_line_per_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let cdr = CdrWriter::open(&path).unwrap();
        cdr.append(&record("c1", CallOutcome::Answered)).unwrap();
        cdr.append(&record("c2", CallOutcome::Abandoned)).unwrap();
        // Flushed per call: visible before any sync or close.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: CallDetailRecord = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first, record("c1", CallOutcome::Answered));
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["outcome"], "abandoned");
        assert_eq!(second["recording"], serde_json::Value::Null);
        assert_eq!(second["hangupSide"], "called");
        assert_eq!(second["direction"], "inbound");
        assert_eq!(second["offeredAt"], "2026-11-22T09:30:00Z");
        cdr.sync().unwrap();
        drop(cdr);
        // Reopening appends rather than truncating.
        let again = CdrWriter::open(&path).unwrap();
        again.append(&record("c3", CallOutcome::Blocked)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn records_are_read_back_since_an_instant_with_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        assert_eq!(
            read_records(&path, DateTime::UNIX_EPOCH, 10).unwrap(),
            CdrPage::default(),
            "no file, no records"
        );
        let cdr = CdrWriter::open(&path).unwrap();
        let mut written = Vec::new();
        for i in 0..5 {
            let mut r = record(&format!("c{i}"), CallOutcome::Answered);
            r.ended_at += chrono::Duration::minutes(i);
            cdr.append(&r).unwrap();
            written.push(serde_json::to_string(&r).unwrap());
        }
        // A torn line, an empty line and bytes that are not UTF-8 are skipped.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"callId\":\"torn\n\n\xff\xfe\n").unwrap();
        let all = read_records(&path, DateTime::UNIX_EPOCH, 10).unwrap();
        assert_eq!(
            (all.records.clone(), all.truncated, all.skipped),
            (written.clone(), false, 2)
        );
        let since = record("x", CallOutcome::Answered).ended_at + chrono::Duration::minutes(2);
        let page = read_records(&path, since, 2).unwrap();
        assert_eq!(page.records, written[2..4]);
        assert!(page.truncated, "c4 matched too");
        let page = read_records(&path, since, 3).unwrap();
        assert_eq!((page.records.len(), page.truncated), (3, false));
    }

    #[test]
    fn concurrent_calls_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let cdr = std::sync::Arc::new(CdrWriter::open(&path).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cdr = cdr.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        cdr.append(&record(&format!("t{t}-{i}"), CallOutcome::Answered))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 200);
        for line in text.lines() {
            serde_json::from_str::<CallDetailRecord>(line).unwrap();
        }
    }

    #[test]
    fn open_failure_names_the_file_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("cdr.jsonl");
        let before = crate::recording::RECORDING_FAILURES.get();
        let err = CdrWriter::open(&path).unwrap_err();
        assert!(err.to_string().contains("cdr.jsonl"), "{err}");
        assert!(crate::recording::RECORDING_FAILURES.get() > before);
    }

    /// A full disk: /dev/full accepts the open and fails every write.
    #[test]
    fn write_failure_is_reported_and_counted() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let cdr = CdrWriter::open(full).unwrap();
        let before = crate::recording::RECORDING_FAILURES.get();
        let err = cdr.append(&record("c1", CallOutcome::Failed)).unwrap_err();
        assert!(err.to_string().contains("/dev/full"), "{err}");
        assert!(crate::recording::RECORDING_FAILURES.get() > before);
        assert!(cdr.inner.lock().line_broken);
    }
}
