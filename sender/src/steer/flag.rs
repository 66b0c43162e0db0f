//! A pipe's effective running flag, decided here and nowhere else: the pipe sends while the
//! operator has not stopped it (`pipe stop`, kept in `pipe-states.json`) AND its schedule's
//! window is open. The links only read the flag ([`crate::pipe::Pipe::is_running`]): a gate
//! link ends the frame it is writing and sends no more, the diode stops between groups of
//! blocks; what is in flight keeps its state and resumes when the flag is on again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use gapsync_daemon::control::PipeState;
use tokio::task::JoinHandle;

use crate::pipe::status::{PipeHandle, PipeStatus};
use crate::schedule::Schedule;
use crate::schedule::run::CronGate;

/// The longest a window watcher sleeps before it looks at the clock again (a clock set back
/// or forward is noticed within this).
const RECHECK: Duration = Duration::from_secs(30);

/// What the flag is made of.
#[derive(Debug, Clone, Copy)]
struct Parts {
    /// Stopped by the operator.
    stopped: bool,
    /// Inside a window (always, without windows).
    open: bool,
}

/// The one place a pipe's running flag is set.
#[derive(Debug)]
pub struct RunFlag {
    handle: PipeHandle,
    parts: Mutex<Parts>,
    /// A cron pipe's gate: between runs (nothing admitted waits) the pipe is WAITING.
    cron: Option<Arc<CronGate>>,
}

impl RunFlag {
    /// A flag for the pipe behind `handle`, applied at once (before its link starts).
    pub fn new(
        handle: PipeHandle,
        stopped: bool,
        open: bool,
        cron: Option<Arc<CronGate>>,
    ) -> Arc<Self> {
        let flag = Arc::new(Self {
            handle,
            parts: Mutex::new(Parts { stopped, open }),
            cron,
        });
        flag.apply(Parts { stopped, open });
        flag
    }

    fn parts(&self) -> MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The operator stopped (true) or started (false) the pipe.
    pub fn set_stopped(&self, stopped: bool) {
        let mut parts = self.parts();
        parts.stopped = stopped;
        self.apply(*parts);
    }

    /// The schedule's window opened (true) or closed (false).
    pub fn set_open(&self, open: bool) {
        let mut parts = self.parts();
        parts.open = open;
        self.apply(*parts);
    }

    /// Wakes a running pipe's link (a cron run admitted objects).
    pub fn poke(&self) {
        if self.handle.is_running() {
            self.handle.resume();
        }
    }

    fn apply(&self, parts: Parts) {
        (self.handle.stats.stopped).store(parts.stopped, std::sync::atomic::Ordering::Relaxed);
        let run = !parts.stopped && parts.open;
        if run != self.handle.is_running() {
            if run {
                self.handle.resume();
            } else {
                self.handle.pause();
            }
        }
    }

    /// The state `pipes` shows: STOPPED (by the operator), WAITING (outside its window, or a
    /// cron pipe with nothing to send until its next run),
    /// ERROR (its last problem is an ERROR and its link is not connected), else RUNNING.
    pub fn state(&self, status: &PipeStatus) -> PipeState {
        let parts = *self.parts();
        let failing = status
            .last_problem
            .as_ref()
            .is_some_and(|p| p.level == "ERROR");
        if parts.stopped {
            PipeState::Stopped
        } else if !parts.open || self.between_runs(status) {
            PipeState::Waiting
        } else if failing && !status.connected {
            PipeState::Error
        } else {
            PipeState::Running
        }
    }
}

impl RunFlag {
    fn between_runs(&self, st: &PipeStatus) -> bool {
        self.cron
            .as_ref()
            .is_some_and(|g| g.held() || (st.queued_objects == 0 && st.in_flight == 0))
    }
}

/// Opens and closes `flag` with `schedule`'s windows until aborted; `None` when the schedule
/// has no windows (the pipe is always open).
pub fn watch_windows(
    pipe: String,
    flag: Arc<RunFlag>,
    schedule: Schedule,
) -> Option<JoinHandle<()>> {
    let now = Utc::now();
    if schedule.is_open(now) && schedule.next_change(now).is_none() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut was: Option<bool> = None;
        loop {
            let now = Utc::now();
            let open = schedule.is_open(now);
            let next = schedule.next_change(now);
            if was != Some(open) {
                let until = next.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
                if open {
                    tracing::info!(pipe = %pipe, until = %until, "sync window open: the pipe sends");
                } else {
                    tracing::info!(pipe = %pipe, opens_at = %until, "outside its sync windows: the pipe waits (objects queue)");
                }
                was = Some(open);
            }
            flag.set_open(open);
            // Just past the change, so that the window's (inclusive) start is seen as open.
            let wait = next
                .and_then(|t| (t - now).to_std().ok())
                .map_or(RECHECK, |d| (d + Duration::from_millis(20)).min(RECHECK));
            tokio::time::sleep(wait).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipe::status::tests::pipe;

    #[test]
    fn the_pipe_runs_only_when_started_and_inside_its_window() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = pipe(d.path());
        let h = p.handle();
        let flag = RunFlag::new(h.clone(), true, true, None);
        let state = || flag.state(&h.status());
        assert!(!p.is_running());
        assert_eq!(state(), PipeState::Stopped, "stopped from the start");
        flag.set_stopped(false);
        assert!(p.is_running());
        assert_eq!(state(), PipeState::Running);
        flag.set_open(false);
        assert!(!p.is_running());
        assert_eq!(state(), PipeState::Waiting);
        flag.set_stopped(true);
        assert_eq!(state(), PipeState::Stopped, "a stop wins over the window");
        flag.set_open(true);
        assert!(
            !p.is_running(),
            "the window opening does not start a stopped pipe"
        );
        flag.set_stopped(false);
        assert!(p.is_running());
        p.stats.failed("cannot connect");
        assert_eq!(state(), PipeState::Error, "an ERROR while not connected");
    }

    #[test]
    fn a_cron_pipe_waits_between_runs() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = pipe(d.path());
        let h = p.handle();
        let gate = Arc::new(CronGate::default());
        let flag = RunFlag::new(h.clone(), false, true, Some(gate.clone()));
        assert_eq!(
            flag.state(&h.status()),
            PipeState::Waiting,
            "nothing to send"
        );
        p.stats
            .queued
            .store(2, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(flag.state(&h.status()), PipeState::Running);
        gate.set_held(true);
        assert_eq!(
            flag.state(&h.status()),
            PipeState::Waiting,
            "held for the next run"
        );
    }
}
