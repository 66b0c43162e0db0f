//! Sync windows: `"HH:MM-HH:MM"` in the schedule's time zone, start inclusive, end exclusive;
//! a window whose end is before its start crosses midnight (`"22:30-06:00"`).
//!
//! Windows follow the wall clock of the zone, so they stay at the same local hours across DST
//! changes:
//! - When the clock springs forward over a window's start (Europe/Berlin, 02:00 -> 03:00), the
//!   window opens at the jump; a window entirely inside the skipped hour does not open that day.
//! - When the clock falls back (03:00 -> 02:00), the repeated local hour is inside or outside a
//!   window twice, so a window that ends in it closes, opens at the jump, and closes again.
//! - A window across the night of a change is one hour shorter or longer in real time.
//!
//! [`Windows::next_change`] finds the next instant the open/closed state changes, exactly (to
//! the second), for the status row and so that the pipe can sleep until then.

use chrono::{DateTime, Days, LocalResult, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// One window: minutes since local midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u16,
    end: u16,
}

impl Window {
    /// Parses `"HH:MM-HH:MM"` (24-hour clock; start and end differ).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("window {text:?} {why}: write \"HH:MM-HH:MM\", e.g. \"22:30-06:00\"")
        };
        let (start, end) = text.split_once('-').ok_or_else(|| bad("has no `-`"))?;
        let start = minute_of_day(start.trim()).ok_or_else(|| bad("has no valid start time"))?;
        let end = minute_of_day(end.trim()).ok_or_else(|| bad("has no valid end time"))?;
        if start == end {
            return Err(format!(
                "window {text:?} starts where it ends: for a pipe that always sends, leave `windows` out"
            ));
        }
        Ok(Self { start, end })
    }

    fn contains(self, minute: u16) -> bool {
        if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// `"HH:MM"` as minutes since midnight (00:00 to 23:59).
fn minute_of_day(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// A pipe's windows; the pipe is open while any of them is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    list: Vec<Window>,
}

/// How far ahead [`Windows::next_change`] looks: every non-empty window opens within it.
const HORIZON_DAYS: u64 = 3;

impl Windows {
    /// Checks every window; each bad one is reported.
    pub fn parse(texts: &[String]) -> Result<Self, Vec<String>> {
        let (list, problems): (Vec<_>, Vec<_>) = texts
            .iter()
            .map(|t| Window::parse(t))
            .partition(Result::is_ok);
        if texts.is_empty() {
            return Err(vec![
                "`windows` is empty: the pipe would never send; leave it out to send at any time"
                    .to_owned(),
            ]);
        }
        if !problems.is_empty() {
            return Err(problems.into_iter().filter_map(Result::err).collect());
        }
        Ok(Self {
            list: list.into_iter().filter_map(Result::ok).collect(),
        })
    }

    /// Whether the local wall-clock time of `now` in `tz` is inside a window.
    pub fn is_open(&self, tz: Tz, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&tz);
        // Boundaries are whole minutes, so the minute decides (hour < 24, minute < 60).
        let minute = u16::try_from(local.hour() * 60 + local.minute()).unwrap_or(0);
        self.list.iter().any(|w| w.contains(minute))
    }

    /// The first instant after `now` at which [`Self::is_open`] changes, or `None` if it never
    /// changes (windows covering the whole day).
    pub fn next_change(&self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let open = self.is_open(tz, now);
        let until = now + TimeDelta::days(HORIZON_DAYS as i64);
        let mut candidates = self.boundaries(tz, now);
        candidates.extend(offset_changes(tz, now, until));
        candidates.retain(|c| *c > now);
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .find(|c| self.is_open(tz, *c) != open)
    }

    /// Every instant a window starts or ends, from the local day before `now` to the horizon.
    /// Boundaries in a skipped hour have no instant: the offset change itself is a candidate.
    fn boundaries(&self, tz: Tz, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let today = now.with_timezone(&tz).date_naive();
        let mut out = Vec::new();
        let days = (0..=HORIZON_DAYS).filter_map(|d| today.checked_add_days(Days::new(d)));
        for date in today.checked_sub_days(Days::new(1)).into_iter().chain(days) {
            for w in &self.list {
                for m in [w.start, w.end] {
                    let Some(naive) = date.and_hms_opt(u32::from(m / 60), u32::from(m % 60), 0)
                    else {
                        continue;
                    };
                    match tz.from_local_datetime(&naive) {
                        LocalResult::Single(t) => out.push(t.with_timezone(&Utc)),
                        LocalResult::Ambiguous(a, b) => {
                            out.extend([a.with_timezone(&Utc), b.with_timezone(&Utc)]);
                        }
                        LocalResult::None => {}
                    }
                }
            }
        }
        out
    }
}

/// The instants in `(from, until]` where the zone's UTC offset changes (DST), to the second.
fn offset_changes(tz: Tz, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let hour = TimeDelta::hours(1);
    let mut out = Vec::new();
    let mut a = from;
    while a < until {
        let b = a + hour;
        if offset(a) != offset(b) {
            let (mut lo, mut hi) = (a, b);
            while hi - lo > TimeDelta::seconds(1) {
                let mid = lo + (hi - lo) / 2;
                if offset(mid) == offset(a) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            // Offsets change on whole seconds: `hi` is the first second of the new offset.
            out.push(hi.with_nanosecond(0).unwrap_or(hi));
        }
        a = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn windows(list: &[&str]) -> Windows {
        Windows::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).expect("valid")
    }

    /// Every change from `from`, as UTC text, `n` of them.
    fn changes(w: &Windows, tz: Tz, from: &str, n: usize) -> Vec<String> {
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = w.next_change(tz, t).expect("a change");
            out.push(format!(
                "{} {}",
                t.format("%m-%dT%H:%M:%SZ"),
                if w.is_open(tz, t) { "open" } else { "closed" }
            ));
        }
        out
    }

    #[test]
    fn a_window_across_midnight_in_shanghai() {
        let tz = chrono_tz::Asia::Shanghai;
        let w = windows(&["22:30-06:00"]);
        assert!(!w.is_open(tz, utc("2026-03-10T22:29:59+08:00")));
        assert!(w.is_open(tz, utc("2026-03-10T22:30:00+08:00")));
        assert!(w.is_open(tz, utc("2026-03-11T05:59:59+08:00")));
        assert!(!w.is_open(tz, utc("2026-03-11T06:00:00+08:00")));
        assert_eq!(
            changes(&w, tz, "2026-03-10T12:00:00+08:00", 3),
            [
                "03-10T14:30:00Z open",
                "03-10T22:00:00Z closed",
                "03-11T14:30:00Z open"
            ]
        );
    }

    #[test]
    fn berlin_spring_forward_opens_a_window_at_the_jump_and_shortens_the_night() {
        let tz = chrono_tz::Europe::Berlin;
        // 2026-03-29 02:00 CET becomes 03:00 CEST at 01:00Z: 02:30 never happens.
        let w = windows(&["02:30-04:00"]);
        assert_eq!(
            changes(&w, tz, "2026-03-28T12:00:00Z", 4),
            [
                "03-29T01:00:00Z open",
                "03-29T02:00:00Z closed",
                "03-30T00:30:00Z open",
                "03-30T02:00:00Z closed"
            ]
        );
        // Across the night of the change: 22:30 CET to 06:00 CEST is 6.5 h, not 7.5 h.
        let night = windows(&["22:30-06:00"]);
        assert_eq!(
            changes(&night, tz, "2026-03-28T12:00:00Z", 2),
            ["03-28T21:30:00Z open", "03-29T04:00:00Z closed"]
        );
        // A window inside the skipped hour does not open that day, but does the next.
        let gap = windows(&["02:10-02:40"]);
        assert_eq!(
            changes(&gap, tz, "2026-03-28T12:00:00Z", 1),
            ["03-30T00:10:00Z open"]
        );
    }

    #[test]
    fn berlin_fall_back_repeats_the_hour_so_a_window_ending_in_it_reopens() {
        let tz = chrono_tz::Europe::Berlin;
        // 2026-10-25 03:00 CEST becomes 02:00 CET at 01:00Z: 02:00-03:00 happens twice.
        let w = windows(&["01:00-02:50"]);
        assert_eq!(
            changes(&w, tz, "2026-10-24T22:00:00Z", 5),
            [
                "10-24T23:00:00Z open",
                "10-25T00:50:00Z closed",
                "10-25T01:00:00Z open",
                "10-25T01:50:00Z closed",
                "10-26T00:00:00Z open"
            ]
        );
    }

    #[test]
    fn windows_covering_the_day_never_change_and_several_windows_combine() {
        let tz = chrono_tz::Europe::Berlin;
        let all = windows(&["00:00-12:00", "12:00-00:00"]);
        assert!(all.is_open(tz, utc("2026-10-25T01:30:00Z")));
        assert_eq!(all.next_change(tz, utc("2026-10-25T00:00:00Z")), None);
        let two = windows(&["08:00-09:00", "12:00-13:00"]);
        assert_eq!(
            changes(&two, tz, "2026-06-01T00:00:00Z", 4),
            [
                "06-01T06:00:00Z open",
                "06-01T07:00:00Z closed",
                "06-01T10:00:00Z open",
                "06-01T11:00:00Z closed"
            ]
        );
    }

    #[test]
    fn bad_windows_are_all_reported() {
        let texts: Vec<String> = [
            "25:00-01:00",
            "22:30",
            "10:00-10:00",
            "1030-1100",
            "08:00-09:00",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let p = Windows::parse(&texts).expect_err("invalid");
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("window \"25:00-01:00\" has no valid start time"));
        assert!(p[1].starts_with("window \"22:30\" has no `-`"));
        assert!(p[2].contains("starts where it ends"));
        assert!(p[3].starts_with("window \"1030-1100\" has no valid start time"));
        assert!(Windows::parse(&[]).expect_err("empty")[0].contains("never send"));
    }
}
