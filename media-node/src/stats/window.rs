//! Bounded-memory time windows: the last 15 minutes as 10-second buckets, and "today" as
//! running totals that start again at local midnight.

use std::collections::VecDeque;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// Width of one bucket of the rolling window, seconds.
pub const BUCKET_SECONDS: i64 = 10;
/// Buckets in the rolling window: 90 × 10 s = 15 minutes.
pub const WINDOW_BUCKETS: i64 = 90;

/// Counters that can be summed bucket by bucket.
pub(crate) trait Tally: Default + Clone {
    fn add(&mut self, other: &Self);
}

/// The bucket that holds instant `t` (buckets are aligned to the Unix epoch, so every node
/// and every queue cuts time at the same instants).
pub(crate) fn slot_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(BUCKET_SECONDS)
}

/// The instant bucket `slot` begins.
pub(crate) fn slot_start(slot: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(slot.saturating_mul(BUCKET_SECONDS), 0)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Where the rolling window seen at `now` begins: the start of the oldest of the 90 buckets
/// (the current, partly filled bucket is one of them), so the window spans 14:50 to 15:00.
pub fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    slot_start(slot_of(now) - (WINDOW_BUCKETS - 1))
}

/// The calendar date at instant `t` in the call center's time zone.
pub fn local_date(tz: Tz, t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// The first instant of `date` in `tz`: local midnight, or, where a DST change skips
/// midnight (clocks jump from 23:59:59 to 01:00), the first local time that exists.
pub fn start_of_day(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    // Gaps are at most a few hours; step by minutes until a local time exists.
    (0..=24 * 60)
        .find_map(|minutes| {
            tz.from_local_datetime(&(midnight + TimeDelta::minutes(minutes)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| midnight.and_utc())
}

/// Milliseconds that `[from, to)` overlaps `[lo, hi)`.
pub(crate) fn overlap_ms(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
) -> u64 {
    let start = from.max(lo);
    let end = to.min(hi);
    if end <= start {
        return 0;
    }
    u64::try_from((end - start).num_milliseconds()).unwrap_or(0)
}

/// The last 15 minutes of counters in 10-second buckets. Only buckets that saw an event are
/// kept (at most 90), so an idle queue or seat costs nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rolling<T> {
    /// Ordered by slot, oldest first.
    buckets: VecDeque<(i64, T)>,
}

impl<T: Tally> Rolling<T> {
    /// The bucket for `slot`, created if needed; `None` when `slot` is older than the window
    /// behind the newest bucket seen (the event can no longer be in any window).
    pub(crate) fn bucket_mut(&mut self, slot: i64) -> Option<&mut T> {
        let newest = self.buckets.back().map_or(slot, |(s, _)| (*s).max(slot));
        let oldest_kept = newest - (WINDOW_BUCKETS - 1);
        while self.buckets.front().is_some_and(|(s, _)| *s < oldest_kept) {
            self.buckets.pop_front();
        }
        if slot < oldest_kept {
            return None;
        }
        let index = self.buckets.partition_point(|(s, _)| *s < slot);
        if self.buckets.get(index).is_none_or(|(s, _)| *s != slot) {
            self.buckets.insert(index, (slot, T::default()));
        }
        self.buckets.get_mut(index).map(|(_, tally)| tally)
    }

    /// Adds `amount_ms` over `[from, to)` into the buckets it spans (clipped to the window
    /// that ends at `to`), using `add` to put a slice of milliseconds into a bucket.
    pub(crate) fn spread(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        add: impl Fn(&mut T, u64),
    ) {
        let mut cursor = from.max(window_start(to));
        while cursor < to {
            let slot = slot_of(cursor);
            let end = slot_start(slot + 1).min(to);
            let ms = overlap_ms(cursor, end, cursor, end);
            if let Some(bucket) = self.bucket_mut(slot) {
                add(bucket, ms);
            }
            if end <= cursor {
                break;
            }
            cursor = end;
        }
    }

    /// The sum of the buckets in the window seen at `now`.
    pub(crate) fn sum(&self, now: DateTime<Utc>) -> T {
        let newest = slot_of(now);
        let oldest = newest - (WINDOW_BUCKETS - 1);
        let mut total = T::default();
        for (_, tally) in self
            .buckets
            .iter()
            .filter(|(s, _)| (oldest..=newest).contains(s))
        {
            total.add(tally);
        }
        total
    }

    /// Buckets held (for the memory bound in tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Running totals of one local day; they start from zero on the first event of a new day.
#[derive(Debug, Clone, Default)]
pub(crate) struct Daily<T> {
    day: Option<NaiveDate>,
    totals: T,
}

impl<T: Tally> Daily<T> {
    /// The totals of `day`, reset first if `day` is newer than the totals; `None` for an
    /// event of an earlier day that arrives late (yesterday is over).
    pub(crate) fn on_mut(&mut self, day: NaiveDate) -> Option<&mut T> {
        match self.day {
            Some(current) if current > day => None,
            Some(current) if current == day => Some(&mut self.totals),
            _ => {
                self.day = Some(day);
                self.totals = T::default();
                Some(&mut self.totals)
            }
        }
    }

    /// The totals of `day` (zero when nothing happened on it yet).
    pub(crate) fn on(&self, day: NaiveDate) -> T {
        if self.day == Some(day) {
            self.totals.clone()
        } else {
            T::default()
        }
    }
}
