//! Callers queued across a takeover, as the new active node's call records tell. The tests
//! place them with Call-IDs `caller<i>-…` (SIPp's `-cid_str`), in the order `i`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

/// The queued callers' records in `cdrs` (the CDR file's lines) in the order they were
/// answered: (answeredAt, Call-ID, waitSeconds).
fn answered_callers(cdrs: &str) -> Vec<(String, String, f64)> {
    let mut answered: Vec<(String, String, f64)> = cdrs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|c| {
            c["callId"]
                .as_str()
                .is_some_and(|id| id.starts_with("caller"))
        })
        .map(|c| {
            (
                c["answeredAt"].as_str().unwrap_or_default().to_string(),
                c["callId"].as_str().unwrap_or_default().to_string(),
                c["waitSeconds"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    answered.sort_by(|x, y| x.0.cmp(&y.0));
    answered
}

/// Waits (up to `limit`) for the records of the callers first queued at `queued_at` in
/// `cdr_file` (a call's record is written once its last transaction ended, just after the
/// caller's phone saw the end), then checks that they were answered in the order they called
/// and that each wait counts from the first enqueue, before the takeover at `killed`.
/// Returns the waits in seconds.
pub async fn answered_in_order(
    cdr_file: &Path,
    queued_at: &[Instant],
    killed: Instant,
    limit: Duration,
) -> Result<Vec<f64>> {
    let (cdrs, answered) = crate::wait_for(limit, "the queued callers' call records", || async {
        let cdrs = std::fs::read_to_string(cdr_file).ok()?;
        let answered = answered_callers(&cdrs);
        (answered.len() == queued_at.len()).then_some((cdrs, answered))
    })
    .await?;
    let order: Vec<&str> = answered
        .iter()
        .map(|(_, id, _)| id.split('-').next().unwrap_or_default())
        .collect();
    let called: Vec<String> = (0..queued_at.len()).map(|i| format!("caller{i}")).collect();
    ensure!(order == called, "answered in the order {order:?}:\n{cdrs}");
    for ((at, id, wait), queued) in answered.iter().zip(queued_at) {
        let before_kill = killed.duration_since(*queued).as_secs_f64();
        ensure!(
            !at.is_empty() && *wait >= before_kill,
            "{id} waited {wait} s by the new active's count, {before_kill:.1} s of it before \
             the takeover:\n{cdrs}"
        );
    }
    Ok(answered
        .iter()
        .map(|(_, _, w)| (w * 10.0).round() / 10.0)
        .collect())
}
