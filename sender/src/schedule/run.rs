//! `cron` for a spool: "send what is there at the run time, then wait". A run admits every
//! object the pipe had found by then ([`CronGate::admit`]); objects found later wait for the
//! next run. A run missed while the daemon was down runs once shortly after start (once the
//! source's first scan has reported what is there), with an INFO saying so; the last run is
//! kept in [`super::cron::CronState`].

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Schedule;
use super::cron::CronState;

/// The longest the cron task sleeps before it looks at the clock again.
const RECHECK: Duration = Duration::from_secs(30);

/// Which objects a cron pipe may send: those found at or before the last run.
#[derive(Debug, Default)]
pub struct CronGate {
    cutoff: Mutex<Option<Instant>>,
    /// Objects wait for the next run and none may go now (for the pipe's state).
    held: AtomicBool,
}

impl CronGate {
    /// Admits the objects found up to `at`.
    pub fn admit(&self, at: Instant) {
        *self.cutoff.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// Whether an object found at `found` may be sent.
    pub fn admits(&self, found: Instant) -> bool {
        (*self.cutoff.lock().unwrap_or_else(|e| e.into_inner())).is_some_and(|c| found <= c)
    }

    /// Notes whether queued objects wait for the next run with none admitted.
    pub fn set_held(&self, held: bool) {
        self.held.store(held, Relaxed);
    }

    /// Whether queued objects wait for the next run.
    pub fn held(&self) -> bool {
        self.held.load(Relaxed)
    }
}

/// What the cron task of a pipe needs.
pub struct CronTask {
    pub pipe: String,
    pub schedule: Schedule,
    pub state: CronState,
    /// A spool's gate: a run admits what was found by then (`None`: the source runs jobs).
    pub gate: Option<Arc<CronGate>>,
    /// A source that runs jobs (a table snapshot): a run asks it for one.
    pub trigger: Option<crate::source::RunTrigger>,
    /// How long after start a missed run waits for the source's first scan.
    pub first_scan: Duration,
    /// Wakes the pipe's link after a run.
    pub wake: Box<dyn Fn() + Send>,
}

impl CronTask {
    /// Runs until aborted.
    pub async fn run(mut self) {
        let now = Utc::now();
        match self.state.last_run() {
            None => self.record(now),
            Some(last) if self.schedule.missed(Some(last), now) => {
                tracing::info!(pipe = %self.pipe, last_run = %last.to_rfc3339(), "a cron run was missed while the daemon was down: running it once now");
                tokio::time::sleep(self.first_scan).await;
                self.run_now(Utc::now());
            }
            Some(_) => {}
        }
        let mut next = self.schedule.next_run(Utc::now());
        while let Some(at) = next {
            let now = Utc::now();
            if now >= at {
                self.run_now(at);
                next = self.schedule.next_run(at.max(now));
                continue;
            }
            let wait = (at - now).to_std().map_or(RECHECK, |d| d.min(RECHECK));
            tokio::time::sleep(wait).await;
        }
        tracing::warn!(pipe = %self.pipe, "the cron expression has no next run: the pipe sends nothing more until its schedule is changed");
    }

    /// One run at `at`: admits what was found by now.
    fn run_now(&mut self, at: DateTime<Utc>) {
        let cron = self.schedule.cron().map_or("", |c| c.as_str());
        let timezone = self.schedule.timezone();
        if let Some(gate) = &self.gate {
            gate.admit(Instant::now());
            tracing::info!(pipe = %self.pipe, run = %at.to_rfc3339(), cron, %timezone, "cron run: sending what the pipe has found; objects found later wait for the next run");
        }
        if let Some(trigger) = &self.trigger {
            trigger.fire();
            tracing::info!(pipe = %self.pipe, run = %at.to_rfc3339(), cron, %timezone, "cron run: the source reads its snapshot and partitions tables");
        }
        (self.wake)();
        self.record(at);
    }

    fn record(&mut self, at: DateTime<Utc>) {
        if let Err(e) = self.state.record(at) {
            tracing::warn!(pipe = %self.pipe, error = %e, "cannot record the cron run in the state folder; after a restart it may run again once");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_admits_what_was_found_by_then() {
        let gate = CronGate::default();
        let before = Instant::now();
        assert!(!gate.admits(before), "nothing before the first run");
        gate.admit(Instant::now());
        let after = Instant::now() + Duration::from_millis(5);
        assert!(gate.admits(before) && !gate.admits(after));
    }
}
