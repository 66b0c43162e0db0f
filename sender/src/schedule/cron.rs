//! `cron`: when a pipe's source runs its job (a table snapshot; for a spool, "send what is there
//! at 22:30, then wait"). Five fields, minute to day of week (`"30 22 * * *"`), or a nickname
//! (`@daily`, `@hourly`, ...), in the schedule's time zone, evaluated by `croner`. Seconds and
//! years are refused, so the fields mean what they mean in crontab(5).
//!
//! DST (croner's rule, tested below): an occurrence in the skipped hour runs at the jump
//! (02:30 on the spring-forward night runs at 03:00), one in the repeated hour runs once, at its
//! first pass.
//!
//! Catch-up: [`CronRule::missed`] says whether an occurrence fell between the last run and now,
//! i.e. while the daemon was down; the policy then runs once at start (however many were
//! missed) and logs an INFO saying so. [`CronState`] is the small durable record of the last run
//! in the pipe's state folder.

use std::fs;
use std::io;
use std::path::Path;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A checked cron expression.
#[derive(Debug, Clone)]
pub struct CronRule {
    text: String,
    cron: Cron,
}

impl PartialEq for CronRule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl CronRule {
    /// Parses a 5-field expression or a nickname.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        if !text.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "cron {text:?} has {fields} fields: write 5 (minute hour day-of-month month day-of-week), e.g. \"30 22 * * *\""
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        match parser.parse(text) {
            Ok(cron) => Ok(Self {
                text: text.to_owned(),
                cron,
            }),
            Err(e) => Err(format!("cron {text:?} is not valid: {e}")),
        }
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first occurrence strictly after `after`, in `tz`; `None` if there is none (an
    /// expression such as `0 0 30 2 *` that never matches).
    pub fn next_run(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether an occurrence fell after `last_run` and at or before `now` (a run missed while the
    /// daemon was down). No record: nothing was missed (the policy records a baseline at the
    /// pipe's first start, see [`CronState`]).
    pub fn missed(&self, tz: Tz, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        last_run
            .and_then(|last| self.next_run(tz, last))
            .is_some_and(|next| next <= now)
    }
}

/// The last run of a pipe's cron job, kept in the pipe's state folder.
///
/// The policy: at start, `CronState::open(dir)`; if it has no record, `record(now)` (the
/// baseline: occurrences before the pipe existed are not "missed"); if
/// `rule.missed(tz, state.last_run(), now)`, run once now and `record(now)`; then sleep until
/// `rule.next_run(tz, now)`, run, and `record` that occurrence's time.
#[derive(Debug, Clone)]
pub struct CronState {
    path: std::path::PathBuf,
    last_run: Option<DateTime<Utc>>,
}

impl CronState {
    /// The record's file name in the pipe's state folder.
    pub const FILE: &'static str = "cron-last-run";

    /// Reads the record (absent: no run yet). A damaged record is an error naming the file.
    pub fn open(pipe_state_dir: &Path) -> io::Result<Self> {
        let path = pipe_state_dir.join(Self::FILE);
        let last_run = match fs::read_to_string(&path) {
            Ok(text) => Some(
                DateTime::parse_from_rfc3339(text.trim())
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: not an RFC 3339 time ({e}); delete it to start the schedule afresh", path.display()),
                        )
                    })?
                    .with_timezone(&Utc),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Self { path, last_run })
    }

    /// The last run recorded, if any.
    pub fn last_run(&self) -> Option<DateTime<Utc>> {
        self.last_run
    }

    /// Records `at` as the last run, durably (temporary file, fsync, rename, fsync of the folder).
    pub fn record(&mut self, at: DateTime<Utc>) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            gapsync_daemon::durable::create_dir_durable(dir)?;
        }
        let text = format!("{}\n", at.to_rfc3339());
        gapsync_daemon::durable::write_atomic(&self.path, text.as_bytes())?;
        self.last_run = Some(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn rule(text: &str) -> CronRule {
        CronRule::parse(text).expect("valid")
    }

    #[test]
    fn next_runs_follow_the_zone() {
        let sh = chrono_tz::Asia::Shanghai;
        let r = rule("30 22 * * *");
        assert_eq!(
            r.next_run(sh, utc("2026-03-10T12:00:00Z")),
            Some(utc("2026-03-10T14:30:00Z"))
        );
        // Strictly after: at the occurrence itself, the next one is a day later.
        assert_eq!(
            r.next_run(sh, utc("2026-03-10T14:30:00Z")),
            Some(utc("2026-03-11T14:30:00Z"))
        );
        // Weekdays at 09:00 in Berlin, across the spring-forward weekend: 08:00Z then 07:00Z.
        let be = chrono_tz::Europe::Berlin;
        let w = rule("0 9 * * 1-5");
        let fri = w.next_run(be, utc("2026-03-27T00:00:00Z")).expect("next");
        assert_eq!(fri, utc("2026-03-27T08:00:00Z"));
        assert_eq!(w.next_run(be, fri), Some(utc("2026-03-30T07:00:00Z")));
        assert_eq!(
            rule("@daily").next_run(sh, utc("2026-03-10T12:00:00Z")),
            Some(utc("2026-03-10T16:00:00Z"))
        );
    }

    #[test]
    fn a_run_missed_while_down_is_seen_once_and_none_before_the_first_record() {
        let sh = chrono_tz::Asia::Shanghai;
        let r = rule("30 22 * * *");
        let last = Some(utc("2026-03-09T22:30:00+08:00"));
        // Down over 2026-03-10 22:30 local, back at 23:00.
        assert!(r.missed(sh, last, utc("2026-03-10T23:00:00+08:00")));
        // Down for three days: still one bool, one catch-up run.
        assert!(r.missed(sh, last, utc("2026-03-13T08:00:00+08:00")));
        // Back before the next occurrence, or exactly at it.
        assert!(!r.missed(sh, last, utc("2026-03-10T22:00:00+08:00")));
        assert!(r.missed(sh, last, utc("2026-03-10T22:30:00+08:00")));
        // After the catch-up run is recorded, nothing is missed any more.
        assert!(!r.missed(
            sh,
            Some(utc("2026-03-10T23:00:00+08:00")),
            utc("2026-03-10T23:05:00+08:00")
        ));
        assert!(!r.missed(sh, None, utc("2026-03-10T23:00:00+08:00")));
    }

    #[test]
    fn a_run_in_the_skipped_hour_runs_at_the_jump_and_a_repeated_hour_runs_once() {
        let be = chrono_tz::Europe::Berlin;
        let r = rule("30 2 * * *");
        // 2026-03-29: 02:30 does not exist; the run comes at the jump to 03:00 CEST.
        assert_eq!(
            r.next_run(be, utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        // 2026-10-25: 02:30 happens twice; the run comes at the first (CEST), not again.
        let first = r.next_run(be, utc("2026-10-24T12:00:00Z")).expect("next");
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(r.next_run(be, first), Some(utc("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn only_five_fields_or_a_nickname_are_accepted() {
        let e = CronRule::parse("0 30 22 * * *").expect_err("six fields");
        assert!(e.starts_with("cron \"0 30 22 * * *\" has 6 fields"), "{e}");
        let e = CronRule::parse("30 22 * *").expect_err("four fields");
        assert!(e.contains("has 4 fields"), "{e}");
        let e = CronRule::parse("61 22 * * *").expect_err("bad minute");
        assert!(e.starts_with("cron \"61 22 * * *\" is not valid"), "{e}");
        assert_eq!(
            rule("*/15 8-18 * * MON-FRI").as_str(),
            "*/15 8-18 * * MON-FRI"
        );
    }

    #[test]
    fn the_last_run_survives_a_restart_and_a_damaged_record_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("pipes/nightly");
        let mut s = CronState::open(&state).expect("open");
        assert_eq!(s.last_run(), None);
        let at = utc("2026-03-10T14:30:00Z");
        s.record(at).expect("record");
        assert_eq!(
            CronState::open(&state).expect("reopen").last_run(),
            Some(at)
        );
        fs::write(state.join(CronState::FILE), "yesterday\n").expect("write");
        let e = CronState::open(&state).expect_err("damaged");
        assert!(e.to_string().contains(CronState::FILE), "{e}");
    }
}
