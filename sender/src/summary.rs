//! The sender's periodic `summary` line per pipe: counters since start and for the current day
//! (kept in `<state_dir>/sender/<pipe>/counters` across restarts), queue depth and state.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use gapsync_daemon::counters::DayCounters;
use gapsync_daemon::logging::LogTime;

use crate::pipe::PipeStats;

/// Every pipe's counters, for the summary lines.
#[derive(Debug)]
pub struct Summary {
    time: LogTime,
    pipes: Vec<(String, Arc<PipeStats>, DayCounters)>,
}

impl Summary {
    pub fn new(time: LogTime) -> Self {
        Self {
            time,
            pipes: Vec::new(),
        }
    }

    /// Adds a pipe whose day counters live in `state_dir` (the pipe's own state folder).
    pub fn add(&mut self, name: &str, stats: Arc<PipeStats>, state_dir: &std::path::Path) {
        let today = self.time.day(SystemTime::now());
        let counters = DayCounters::open(&state_dir.join("counters"), &today);
        self.pipes.push((name.to_owned(), stats, counters));
    }

    /// Removes a pipe (stopped by a reload), keeping its day counters on disk.
    pub fn remove(&mut self, name: &str) {
        self.pipes.retain(|(n, _, day)| {
            if n == name {
                let _ = day.save();
            }
            n != name
        });
    }

    /// Today's objects and bytes of a pipe (kept across restarts), for its status row.
    pub fn today(&mut self, name: &str) -> Option<(u64, u64)> {
        let today = self.time.day(SystemTime::now());
        let (_, s, day) = self.pipes.iter_mut().find(|(n, _, _)| n == name)?;
        Some(day.update(&today, s.files.load(Relaxed), s.bytes.load(Relaxed)))
    }

    /// Logs one summary line per pipe and keeps the day counters.
    pub fn log(&mut self) {
        let today = self.time.day(SystemTime::now());
        for (name, s, day) in &mut self.pipes {
            let (files, bytes) = (s.files.load(Relaxed), s.bytes.load(Relaxed));
            let (today_files, today_bytes) = day.update(&today, files, bytes);
            tracing::info!(
                pipe = %name,
                files,
                bytes,
                today_files,
                today_bytes,
                day = %day.day(),
                wire_bytes = s.wire_bytes.load(Relaxed),
                queued = s.queued.load(Relaxed),
                reconnects = s.reconnects.load(Relaxed),
                quarantined = s.quarantined.load(Relaxed),
                ignored_files = s.ignored_files.load(Relaxed),
                ignored_bytes = s.ignored_bytes.load(Relaxed),
                skipped_links = s.skipped_links.load(Relaxed),
                filtered = s.filtered.load(Relaxed),
                forwarded_skipped = s.forwarded_skipped.load(Relaxed),
                state = if s.connected.load(Relaxed) == 1 { "connected" } else { "disconnected" },
                "summary"
            );
            if let Err(e) = day.save() {
                tracing::warn!(pipe = %name, error = %e, "cannot keep today's counters in the state folder; after a restart they would start from zero");
            }
        }
    }
}
