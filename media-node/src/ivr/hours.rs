//! Business hours: is the call center open at a given instant?
//!
//! The schedule is read on the local wall clock of its IANA time zone: an instant is open
//! when its local date is not a holiday and its local time of day (to the minute) lies in one
//! of that weekday's spans, `open` inclusive and `close` exclusive; `close: "24:00"` runs to
//! the end of the day.
//!
//! Daylight-saving transitions follow from judging the wall clock:
//! - spring forward (e.g. Europe/Berlin jumps from 02:00 to 03:00): the skipped local times
//!   never happen, so a span opening inside the gap opens at the first real instant after it
//!   (03:00), and a span closing inside the gap closes there too; that day is an hour shorter.
//! - fall back (Berlin repeats 02:00–03:00): the repeated hour is judged twice by the same
//!   wall-clock times, so a center open at 02:30 is open both times (that day is an hour
//!   longer), and one closed then is closed both times.
//!
//! Nothing here panics, whatever the spec holds; [`BusinessHours::from_spec`] refuses what it
//! cannot read with a [`HoursError`] naming the field.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use switchboard_crds::callcenter::{self as spec, Weekday};

/// Minutes in a day; a `24:00` close.
const DAY_MINUTES: u16 = 24 * 60;

/// Why a business-hours spec could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    #[error("spec.businessHours.timeZone: {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("spec.businessHours.weekly[{index}].{field}: {value:?} is not a time HH:MM")]
    Clock {
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error("spec.businessHours.weekly[{index}].close: {close:?} is not after open ({open:?})")]
    CloseNotAfterOpen {
        index: usize,
        open: String,
        close: String,
    },
    #[error("spec.businessHours.holidays[{index}].date: {value:?} is not a date YYYY-MM-DD")]
    Holiday { index: usize, value: String },
}

/// Opening hours compiled for quick look-ups.
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessHours {
    time_zone: Tz,
    /// Open spans per weekday (Monday first), in minutes since local midnight, `[open, close)`.
    weekly: [Vec<(u16, u16)>; 7],
    /// Local dates closed all day.
    holidays: BTreeSet<NaiveDate>,
}

impl BusinessHours {
    /// Compiles the spec's schedule. Overlapping spans (refused by validation) simply merge.
    pub fn from_spec(hours: &spec::BusinessHours) -> Result<Self, HoursError> {
        let time_zone: Tz = hours
            .time_zone
            .parse()
            .map_err(|_| HoursError::TimeZone(hours.time_zone.clone()))?;
        let mut weekly: [Vec<(u16, u16)>; 7] = Default::default();
        for (index, span) in hours.weekly.iter().enumerate() {
            let clock = |field: &'static str, value: &str| {
                parse_clock(value).ok_or_else(|| HoursError::Clock {
                    index,
                    field,
                    value: value.to_string(),
                })
            };
            let open = clock("open", &span.open)?;
            let close = clock("close", &span.close)?;
            if close <= open {
                return Err(HoursError::CloseNotAfterOpen {
                    index,
                    open: span.open.clone(),
                    close: span.close.clone(),
                });
            }
            for day in &span.days {
                weekly[day_index(*day)].push((open, close));
            }
        }
        for spans in &mut weekly {
            spans.sort_unstable();
        }
        let holidays = hours
            .holidays
            .iter()
            .enumerate()
            .map(|(index, holiday)| {
                NaiveDate::parse_from_str(&holiday.date, "%Y-%m-%d").map_err(|_| {
                    HoursError::Holiday {
                        index,
                        value: holiday.date.clone(),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            time_zone,
            weekly,
            holidays,
        })
    }

    /// The schedule's time zone.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// Whether the center is open at `at` (see the module docs for holidays and DST).
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let utc = at.naive_utc();
        let offset = self.time_zone.offset_from_utc_datetime(&utc).fix();
        // `with_timezone` panics at the ends of chrono's range; no call is placed there.
        let Some(local) = utc.checked_add_offset(offset) else {
            return false;
        };
        if self.holidays.contains(&local.date()) {
            return false;
        }
        // `hour() <= 23`, so this never exceeds 1439 (a leap second reads as :59).
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let day = local.weekday().num_days_from_monday() as usize;
        self.weekly
            .get(day)
            .is_some_and(|spans| spans.iter().any(|&(o, c)| o <= minute && minute < c))
    }
}

fn day_index(day: Weekday) -> usize {
    match day {
        Weekday::Monday => 0,
        Weekday::Tuesday => 1,
        Weekday::Wednesday => 2,
        Weekday::Thursday => 3,
        Weekday::Friday => 4,
        Weekday::Saturday => 5,
        Weekday::Sunday => 6,
    }
}

/// Minutes since midnight of `HH:MM`, with `24:00` as the end of the day.
fn parse_clock(s: &str) -> Option<u16> {
    if s == "24:00" {
        return Some(DAY_MINUTES);
    }
    // The spec's pattern demands two-digit fields; chrono alone would accept `9:00`.
    if s.len() != 5 {
        return None;
    }
    let t = NaiveTime::parse_from_str(s, "%H:%M").ok()?;
    Some((t.hour() * 60 + t.minute()) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::{Holiday, OpeningHours};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("an RFC 3339 instant")
    }

    fn hours(tz: &str, weekly: &[(&[Weekday], &str, &str)], holidays: &[&str]) -> BusinessHours {
        BusinessHours::from_spec(&spec_hours(tz, weekly, holidays)).expect("valid hours")
    }

    fn spec_hours(
        tz: &str,
        weekly: &[(&[Weekday], &str, &str)],
        holidays: &[&str],
    ) -> spec::BusinessHours {
        spec::BusinessHours {
            time_zone: tz.to_string(),
            weekly: weekly
                .iter()
                .map(|(days, open, close)| OpeningHours {
                    days: days.to_vec(),
                    open: open.to_string(),
                    close: close.to_string(),
                })
                .collect(),
            holidays: holidays
                .iter()
                .map(|d| Holiday {
                    date: d.to_string(),
                    name: None,
                })
                .collect(),
        }
    }

    const WEEKDAYS: &[Weekday] = &[
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
    ];

    #[test]
    fn shanghai_office_hours_edges_are_open_inclusive_close_exclusive() {
        // UTC+8 all year: 09:00 local is 01:00Z.
        let h = hours(
            "Asia/Shanghai",
            &[
                (WEEKDAYS, "09:00", "18:00"),
                (&[Weekday::Saturday], "10:00", "12:30"),
            ],
            &[],
        );
        // Wednesday 2025-06-11.
        assert!(!h.is_open(at("2025-06-11T00:59:59Z")), "08:59:59 local");
        assert!(h.is_open(at("2025-06-11T01:00:00Z")), "09:00 local opens");
        assert!(h.is_open(at("2025-06-11T09:59:59Z")), "17:59:59 local");
        assert!(!h.is_open(at("2025-06-11T10:00:00Z")), "18:00 local closes");
        // Saturday 2025-06-14 10:00-12:30.
        assert!(!h.is_open(at("2025-06-14T01:59:00Z")));
        assert!(h.is_open(at("2025-06-14T02:00:00Z")));
        assert!(h.is_open(at("2025-06-14T04:29:00Z")));
        assert!(!h.is_open(at("2025-06-14T04:30:00Z")));
        // Sunday has no entry: closed all day.
        assert!(!h.is_open(at("2025-06-15T04:00:00Z")));
    }

    #[test]
    fn the_local_weekday_counts_not_the_utc_one() {
        // Monday 2025-06-16 08:30 local is still Sunday 2025-06-15 in UTC.
        let h = hours(
            "Asia/Shanghai",
            &[(&[Weekday::Monday], "08:00", "09:00")],
            &[],
        );
        assert!(h.is_open(at("2025-06-16T00:30:00Z")));
        assert!(!h.is_open(at("2025-06-15T00:30:00Z")), "a Sunday locally");
    }

    #[test]
    fn holidays_close_the_whole_local_day() {
        // 2025-10-01 (National Day) is a Wednesday.
        let h = hours(
            "Asia/Shanghai",
            &[(WEEKDAYS, "00:00", "24:00")],
            &["2025-10-01"],
        );
        assert!(
            h.is_open(at("2025-09-30T15:59:59Z")),
            "Sept 30 23:59:59 local"
        );
        assert!(!h.is_open(at("2025-09-30T16:00:00Z")), "Oct 1 00:00 local");
        assert!(!h.is_open(at("2025-10-01T04:00:00Z")));
        assert!(
            !h.is_open(at("2025-10-01T15:59:59Z")),
            "Oct 1 23:59:59 local"
        );
        assert!(h.is_open(at("2025-10-01T16:00:00Z")), "Oct 2 00:00 local");
    }

    #[test]
    fn close_at_24_00_runs_to_the_end_of_the_day() {
        let h = hours(
            "Asia/Shanghai",
            &[(&[Weekday::Friday], "20:00", "24:00")],
            &[],
        );
        // Friday 2025-06-13 23:59 local = 15:59Z; Saturday 00:00 local = 16:00Z.
        assert!(h.is_open(at("2025-06-13T15:59:59Z")));
        assert!(!h.is_open(at("2025-06-13T16:00:00Z")));
        // Friday 19:59 local.
        assert!(!h.is_open(at("2025-06-13T11:59:00Z")));
    }

    #[test]
    fn spans_on_consecutive_days_join_at_midnight() {
        let h = hours(
            "Asia/Shanghai",
            &[
                (&[Weekday::Friday], "18:00", "24:00"),
                (&[Weekday::Saturday], "00:00", "02:00"),
            ],
            &[],
        );
        assert!(h.is_open(at("2025-06-13T15:59:00Z")), "Fri 23:59");
        assert!(h.is_open(at("2025-06-13T16:00:00Z")), "Sat 00:00");
        assert!(h.is_open(at("2025-06-13T17:59:00Z")), "Sat 01:59");
        assert!(!h.is_open(at("2025-06-13T18:00:00Z")), "Sat 02:00");
    }

    #[test]
    fn two_spans_on_one_day_leave_a_lunch_break() {
        let h = hours(
            "Asia/Shanghai",
            &[(WEEKDAYS, "13:30", "17:00"), (WEEKDAYS, "08:30", "12:00")],
            &[],
        );
        assert!(h.is_open(at("2025-06-11T03:59:00Z")), "11:59");
        assert!(!h.is_open(at("2025-06-11T04:00:00Z")), "12:00");
        assert!(!h.is_open(at("2025-06-11T05:29:00Z")), "13:29");
        assert!(h.is_open(at("2025-06-11T05:30:00Z")), "13:30");
    }

    #[test]
    fn berlin_follows_summer_time_around_the_last_sunday_of_march() {
        // Open every day 08:00-20:00. Saturday 2025-03-29 is CET (UTC+1), Monday 2025-03-31
        // is CEST (UTC+2); clocks jump 02:00 -> 03:00 on Sunday 2025-03-30.
        let every_day = &[
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
            Weekday::Saturday,
            Weekday::Sunday,
        ];
        let h = hours("Europe/Berlin", &[(every_day, "08:00", "20:00")], &[]);
        assert!(!h.is_open(at("2025-03-29T06:59:00Z")), "Sat 07:59 CET");
        assert!(h.is_open(at("2025-03-29T07:00:00Z")), "Sat 08:00 CET");
        assert!(h.is_open(at("2025-03-29T18:59:00Z")), "Sat 19:59 CET");
        assert!(!h.is_open(at("2025-03-29T19:00:00Z")), "Sat 20:00 CET");
        assert!(!h.is_open(at("2025-03-31T05:59:00Z")), "Mon 07:59 CEST");
        assert!(h.is_open(at("2025-03-31T06:00:00Z")), "Mon 08:00 CEST");
        assert!(h.is_open(at("2025-03-31T17:59:00Z")), "Mon 19:59 CEST");
        assert!(!h.is_open(at("2025-03-31T18:00:00Z")), "Mon 20:00 CEST");
        // On the switch day itself, 08:00 CEST is 06:00Z.
        assert!(!h.is_open(at("2025-03-30T05:59:00Z")));
        assert!(h.is_open(at("2025-03-30T06:00:00Z")));
    }

    #[test]
    fn a_span_in_the_spring_gap_opens_when_the_gap_ends() {
        // Sunday 2025-03-30: 01:59:59 CET (00:59:59Z) is followed by 03:00 CEST (01:00Z).
        let h = hours(
            "Europe/Berlin",
            &[(&[Weekday::Sunday], "02:30", "04:00")],
            &[],
        );
        assert!(!h.is_open(at("2025-03-30T00:59:59Z")), "01:59:59 CET");
        assert!(h.is_open(at("2025-03-30T01:00:00Z")), "03:00 CEST");
        assert!(h.is_open(at("2025-03-30T01:59:00Z")), "03:59 CEST");
        assert!(!h.is_open(at("2025-03-30T02:00:00Z")), "04:00 CEST");
        // A span that closes inside the gap closes when the gap starts.
        let h = hours(
            "Europe/Berlin",
            &[(&[Weekday::Sunday], "01:00", "02:30")],
            &[],
        );
        assert!(h.is_open(at("2025-03-30T00:59:59Z")), "01:59:59 CET");
        assert!(!h.is_open(at("2025-03-30T01:00:00Z")), "03:00 CEST");
    }

    #[test]
    fn the_repeated_autumn_hour_is_judged_twice_by_the_wall_clock() {
        // Sunday 2025-10-26: 02:00-03:00 happens at 00:00Z (CEST) and again at 01:00Z (CET).
        let h = hours(
            "Europe/Berlin",
            &[(&[Weekday::Sunday], "02:00", "02:30")],
            &[],
        );
        assert!(h.is_open(at("2025-10-26T00:15:00Z")), "02:15 CEST");
        assert!(!h.is_open(at("2025-10-26T00:45:00Z")), "02:45 CEST");
        assert!(h.is_open(at("2025-10-26T01:15:00Z")), "02:15 CET");
        assert!(!h.is_open(at("2025-10-26T01:45:00Z")), "02:45 CET");
    }

    #[test]
    fn holidays_use_the_local_date_in_a_dst_zone() {
        // Christmas 2025 in Berlin (CET): 2025-12-24T23:00Z is already Dec 25 locally.
        let h = hours(
            "Europe/Berlin",
            &[(WEEKDAYS, "00:00", "24:00")],
            &["2025-12-25"],
        );
        assert!(h.is_open(at("2025-12-24T22:59:59Z")));
        assert!(!h.is_open(at("2025-12-24T23:00:00Z")));
        assert!(h.is_open(at("2025-12-25T23:00:00Z")), "Dec 26 00:00 local");
    }

    #[test]
    fn unreadable_specs_are_refused_with_the_field() {
        let bad_zone = spec_hours("Mars/Olympus_Mons", &[(WEEKDAYS, "09:00", "17:00")], &[]);
        assert_eq!(
            BusinessHours::from_spec(&bad_zone),
            Err(HoursError::TimeZone("Mars/Olympus_Mons".into()))
        );
        for (open, close, field) in [
            ("9:00", "17:00", "open"),
            ("09:00", "25:00", "close"),
            ("24:00x", "17:00", "open"),
            ("", "17:00", "open"),
            ("09:00", "17:60", "close"),
        ] {
            let spec = spec_hours("UTC", &[(WEEKDAYS, open, close)], &[]);
            match BusinessHours::from_spec(&spec) {
                Err(HoursError::Clock {
                    index: 0, field: f, ..
                }) => assert_eq!(f, field),
                other => panic!("{open}-{close}: {other:?}"),
            }
        }
        for (open, close) in [("17:00", "09:00"), ("09:00", "09:00"), ("24:00", "24:00")] {
            let spec = spec_hours("UTC", &[(WEEKDAYS, open, close)], &[]);
            assert!(matches!(
                BusinessHours::from_spec(&spec),
                Err(HoursError::CloseNotAfterOpen { index: 0, .. })
            ));
        }
        let spec = spec_hours(
            "UTC",
            &[(WEEKDAYS, "09:00", "17:00")],
            &["2025-01-01", "2025-02-30"],
        );
        let err = BusinessHours::from_spec(&spec).expect_err("Feb 30");
        assert_eq!(
            err,
            HoursError::Holiday {
                index: 1,
                value: "2025-02-30".into()
            }
        );
        assert!(err.to_string().contains("holidays[1]"));
    }

    #[test]
    fn no_instant_panics_and_every_weekday_maps() {
        let h = hours("Pacific/Chatham", &[(WEEKDAYS, "00:00", "24:00")], &[]);
        for s in [
            "1970-01-01T00:00:00Z",
            "2038-01-19T03:14:07Z",
            "9999-12-31T23:59:59Z",
        ] {
            let _ = h.is_open(at(s));
        }
        let _ = h.is_open(DateTime::<Utc>::MIN_UTC);
        let _ = h.is_open(DateTime::<Utc>::MAX_UTC);
        // Monday..Sunday 2025-06-09..15 at 12:45 local (UTC+12:45): only weekdays are open.
        let open: Vec<bool> = (9..=15)
            .map(|d| h.is_open(at(&format!("2025-06-{d:02}T00:00:00Z"))))
            .collect();
        assert_eq!(open, [true, true, true, true, true, false, false]);
    }
}
