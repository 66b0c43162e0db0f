//! A pipe's schedule: sync windows (when it may send) and cron (when its source runs a job).
//!
//! ```toml
//! schedule = { windows = ["22:30-06:00"], timezone = "Asia/Shanghai" }
//! schedule = { cron = "30 22 * * *", timezone = "Europe/Berlin" }
//! ```
//!
//! - `windows` ([`windows`]): the pipe sends only inside them; outside, objects queue. The
//!   policy checks [`Schedule::is_open`] before each frame: when it turns false, the frame in
//!   flight ends and the transfer resumes at that frame boundary in the next window. The pipe's
//!   status shows `WAITING` and the time of [`Schedule::next_change`], and the pipe sleeps until
//!   then (`tokio::time::sleep` of `next_change - now`, re-checked on wake-up).
//! - `cron` ([`cron`]): the source's job runs at each occurrence ([`Schedule::next_run`]); a run
//!   missed while the daemon was down runs once at start ([`Schedule::missed`], with the last
//!   run kept in [`cron::CronState`]), with an INFO saying so.
//! - Both may be given: cron says when a run starts, windows when its bytes may go out.
//! - `timezone`: an IANA name (`"Asia/Shanghai"`, `"Europe/Berlin"`, `"UTC"`), required with
//!   either, so that a window never silently follows the server's local zone. Windows and cron
//!   follow the zone's wall clock across DST changes (see [`windows`]).
//!
//! No `schedule` table: the pipe is always open and has no cron job.

pub mod cron;
pub mod run;
pub mod windows;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

pub use self::cron::CronRule;
pub use self::windows::Windows;

/// `schedule = { ... }` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub windows: Option<Vec<String>>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
}

/// A checked schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    tz: Tz,
    windows: Option<Windows>,
    cron: Option<CronRule>,
}

impl Schedule {
    /// Checks a pipe's `schedule` table; every problem is reported, each message starting with
    /// `pipe NAME: schedule: ` and naming the key.
    pub fn check(pipe: &str, raw: &RawSchedule) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let windows = raw.windows.as_deref().and_then(|w| {
            Windows::parse(w)
                .map_err(|p| problems.extend(p.into_iter().map(|m| format!("windows: {m}"))))
                .ok()
        });
        let cron = raw
            .cron
            .as_deref()
            .and_then(|c| CronRule::parse(c).map_err(|m| problems.push(m)).ok());
        if raw.windows.is_none() && raw.cron.is_none() {
            problems.push("has neither `windows` nor `cron`: give one, or leave `schedule` out for a pipe that always sends".to_owned());
        }
        let tz = match raw.timezone.as_deref() {
            None => {
                problems.push("`timezone` is required with windows or cron (an IANA name such as \"Asia/Shanghai\", \"Europe/Berlin\" or \"UTC\")".to_owned());
                None
            }
            Some(name) => name.parse::<Tz>().map_err(|_| {
                problems.push(format!("timezone {name:?} is not an IANA time zone name (e.g. \"Asia/Shanghai\", \"Europe/Berlin\", \"UTC\"; case matters)"));
            }).ok(),
        };
        match tz {
            Some(tz) if problems.is_empty() => Ok(Self { tz, windows, cron }),
            _ => Err(problems
                .into_iter()
                .map(|m| format!("pipe {pipe}: schedule: {m}"))
                .collect()),
        }
    }

    /// The zone windows and cron are read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Whether the pipe may send at `now` (always, without windows).
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.windows
            .as_ref()
            .is_none_or(|w| w.is_open(self.tz, now))
    }

    /// When [`Self::is_open`] next changes after `now`; `None` without windows or when they
    /// cover the whole day.
    pub fn next_change(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.windows.as_ref()?.next_change(self.tz, now)
    }

    /// The cron expression, if any.
    pub fn cron(&self) -> Option<&CronRule> {
        self.cron.as_ref()
    }

    /// The next cron occurrence strictly after `after`; `None` without cron.
    pub fn next_run(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.as_ref()?.next_run(self.tz, after)
    }

    /// Whether a cron occurrence fell after `last_run` and at or before `now`; false without
    /// cron or without a record.
    pub fn missed(&self, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        self.cron
            .as_ref()
            .is_some_and(|c| c.missed(self.tz, last_run, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Pipe {
        schedule: Option<RawSchedule>,
    }

    fn parse(text: &str) -> Result<RawSchedule, String> {
        toml::from_str::<Pipe>(text)
            .map_err(|e| e.to_string())?
            .schedule
            .ok_or_else(|| "no schedule".to_owned())
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_issue_example_is_open_at_night_in_shanghai() {
        let raw = parse(r#"schedule = { windows = ["22:30-06:00"], timezone = "Asia/Shanghai" }"#)
            .expect("parses");
        let s = Schedule::check("scada", &raw).expect("valid");
        assert_eq!(s.timezone(), chrono_tz::Asia::Shanghai);
        assert!(s.is_open(utc("2026-03-10T23:00:00+08:00")));
        assert!(!s.is_open(utc("2026-03-10T12:00:00+08:00")));
        assert_eq!(
            s.next_change(utc("2026-03-10T12:00:00+08:00")),
            Some(utc("2026-03-10T22:30:00+08:00"))
        );
        assert!(s.cron().is_none() && s.next_run(utc("2026-03-10T12:00:00Z")).is_none());
        assert!(!s.missed(
            Some(utc("2026-01-01T00:00:00Z")),
            utc("2026-03-10T12:00:00Z")
        ));
    }

    #[test]
    fn cron_alone_keeps_the_pipe_open_and_reports_missed_runs() {
        let raw = RawSchedule {
            cron: Some("30 22 * * *".into()),
            timezone: Some("Europe/Berlin".into()),
            ..RawSchedule::default()
        };
        let s = Schedule::check("nightly", &raw).expect("valid");
        assert!(s.is_open(utc("2026-03-10T12:00:00Z")));
        assert_eq!(s.next_change(utc("2026-03-10T12:00:00Z")), None);
        assert_eq!(
            s.next_run(utc("2026-03-10T12:00:00Z")),
            Some(utc("2026-03-10T21:30:00Z"))
        );
        assert!(s.missed(
            Some(utc("2026-03-09T21:30:00Z")),
            utc("2026-03-11T06:00:00Z")
        ));
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_pipe_and_key() {
        let raw = RawSchedule {
            windows: Some(vec!["22:30".into(), "25:00-01:00".into()]),
            cron: Some("0 30 22 * * *".into()),
            timezone: Some("Asia/Shanghia".into()),
        };
        let p = Schedule::check("scada", &raw).expect_err("invalid");
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("pipe scada: schedule: windows: window \"22:30\""));
        assert!(p[1].starts_with("pipe scada: schedule: windows: window \"25:00-01:00\""));
        assert!(p[2].starts_with("pipe scada: schedule: cron \"0 30 22 * * *\" has 6 fields"));
        assert!(
            p[3].starts_with("pipe scada: schedule: timezone \"Asia/Shanghia\" is not an IANA")
        );
    }

    #[test]
    fn a_timezone_is_required_and_so_is_windows_or_cron() {
        let raw = parse(r#"schedule = { windows = ["08:00-09:00"] }"#).expect("parses");
        let p = Schedule::check("a", &raw).expect_err("no zone");
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("`timezone` is required"), "{}", p[0]);
        let raw = parse(r#"schedule = { timezone = "UTC" }"#).expect("parses");
        let p = Schedule::check("a", &raw).expect_err("nothing");
        assert_eq!(
            p,
            [
                "pipe a: schedule: has neither `windows` nor `cron`: give one, or leave `schedule` out for a pipe that always sends"
            ]
        );
        let e = parse(r#"schedule = { window = ["08:00-09:00"], timezone = "UTC" }"#)
            .expect_err("typo");
        assert!(e.contains("unknown field `window`"), "{e}");
    }
}
