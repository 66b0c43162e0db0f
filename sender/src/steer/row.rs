//! A sender pipe's row of `gapsync-sender pipes` (SHOW PIPES), and the recent delivery rate
//! its drain estimate comes from.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gapsync_daemon::control::{PipeRow, PipeState};

use crate::pipe::status::PipeStatus;

/// How far back the delivery rate looks.
const RATE_SPAN: Duration = Duration::from_secs(300);
/// The shortest span a rate is computed over.
const RATE_MIN_SPAN: Duration = Duration::from_secs(2);

/// Bytes delivered, sampled over the last [`RATE_SPAN`].
#[derive(Debug, Default)]
pub struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// Notes the pipe's delivered bytes (since start) at `now`.
    pub fn sample(&mut self, now: Instant, delivered_bytes: u64) {
        while (self.samples.front()).is_some_and(|(t, _)| now.duration_since(*t) > RATE_SPAN) {
            self.samples.pop_front();
        }
        self.samples.push_back((now, delivered_bytes));
    }

    /// Seconds to deliver `queued_bytes` at the recent rate: 0 for an empty queue, `None` when
    /// nothing was delivered recently (or too little is known).
    pub fn drain_eta(&self, queued_bytes: u64) -> Option<u64> {
        if queued_bytes == 0 {
            return Some(0);
        }
        let (t0, b0) = *self.samples.front()?;
        let (t1, b1) = *self.samples.back()?;
        let span = t1.duration_since(t0);
        let moved = b1.saturating_sub(b0);
        if span < RATE_MIN_SPAN || moved == 0 {
            return None;
        }
        let per_second = moved as f64 / span.as_secs_f64();
        Some((queued_bytes as f64 / per_second).ceil() as u64)
    }
}

/// What a row needs besides the pipe's status.
#[derive(Debug, Clone, Copy)]
pub struct RowExtras {
    pub state: PipeState,
    /// Today's delivered objects and bytes.
    pub today: (u64, u64),
    pub drain_eta_seconds: Option<u64>,
}

/// The row `pipes` prints for a pipe.
pub fn row(st: &PipeStatus, extras: RowExtras) -> PipeRow {
    let mut row = PipeRow::new(&st.name, extras.state);
    row.link = Some(st.link.to_owned());
    row.remote = Some(st.remote.clone());
    row.profile = Some(st.profile.clone());
    row.queued_objects = st.queued_objects;
    row.queued_bytes = st.queued_bytes;
    row.in_flight = Some(st.in_flight);
    row.delivered_objects = st.delivered_objects;
    row.delivered_bytes = st.delivered_bytes;
    (row.delivered_today_objects, row.delivered_today_bytes) = extras.today;
    row.last_delivery = st.last_delivery.map(DateTime::<Utc>::from);
    row.drain_eta_seconds = extras.drain_eta_seconds;
    row.quarantined = Some(st.quarantined);
    row.filtered = Some(st.filtered);
    row.ignored = Some(st.ignored_files);
    row.skipped_links = Some(st.skipped_links);
    row.note = st.note.clone();
    if let Some(p) = &st.last_problem {
        row.last_error = Some(format!("{}: {}", p.level, p.message));
        row.last_error_at = Some(DateTime::<Utc>::from(p.at));
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_estimate_follows_the_recent_rate() {
        let mut r = Rate::default();
        let t = Instant::now();
        assert_eq!(r.drain_eta(0), Some(0));
        assert_eq!(r.drain_eta(100), None, "no rate yet");
        r.sample(t, 0);
        r.sample(t + Duration::from_secs(10), 1000);
        assert_eq!(r.drain_eta(500), Some(5));
        r.sample(t + Duration::from_secs(400), 1000);
        assert_eq!(
            r.drain_eta(500),
            None,
            "nothing moved in the last 5 minutes"
        );
    }
}
