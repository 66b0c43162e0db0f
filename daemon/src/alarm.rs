//! Alarms: a condition that lasts longer than a configured time is said once at ERROR, again
//! every hour while it lasts, and its end once at INFO. Pure: fed with the time and events, it
//! says what to log; the daemons log it with [`log_raised`] and [`log_cleared`] so every alarm
//! reads the same way.
//!
//! Used for a sender pipe that cannot deliver (`alarm_after`), a receiver pipe on which nothing
//! arrives (`silence_alarm`) and the diode link's silence (the profile's `silence_alarm`).

use std::time::{Duration, Instant};

/// How often a lasting alarm is said again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(3600);

/// What an alarm has to say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmEvent {
    /// The condition has lasted `lasting` (the first time, or once more after an hour).
    Raised {
        lasting: Duration,
        /// The last failure reported, if any.
        cause: Option<String>,
        /// 1 for the first ERROR, 2 an hour later, and so on.
        count: u32,
    },
    /// The condition ended after `lasted`.
    Cleared { lasted: Duration },
}

/// One alarm's state.
#[derive(Debug, Clone)]
pub struct Alarm {
    after: Duration,
    repeat: Duration,
    /// Since when the condition holds; `None` while all is well.
    since: Option<Instant>,
    /// When the ERROR was last said, and how many times; `None` while not raised.
    said: Option<(Instant, u32)>,
    cause: Option<String>,
}

impl Alarm {
    /// An alarm raised once its condition lasts `after`, repeated every [`REPEAT_EVERY`].
    pub fn new(after: Duration) -> Self {
        Self::with_repeat(after, REPEAT_EVERY)
    }

    /// An alarm repeated every `repeat` instead of hourly.
    pub fn with_repeat(after: Duration, repeat: Duration) -> Self {
        Self {
            after,
            repeat,
            since: None,
            said: None,
            cause: None,
        }
    }

    /// Remembers the latest failure, named in the next ERROR.
    pub fn failure(&mut self, cause: impl Into<String>) {
        self.cause = Some(cause.into());
    }

    /// Things work (a delivery, an arrival): a raised alarm is cleared. With `watch_on`, the
    /// condition is counted again from `now` (a receiver expects the next arrival); without,
    /// only once [`Alarm::poll`] sees it hold.
    pub fn ok(&mut self, now: Instant, watch_on: bool) -> Option<AlarmEvent> {
        let since = self.since.take();
        self.since = watch_on.then_some(now);
        self.cause = None;
        self.said.take()?;
        Some(AlarmEvent::Cleared {
            lasted: since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
        })
    }

    /// Whether the condition holds at `now` (a sender: files are waiting); says ERROR when it
    /// has lasted long enough, again every `repeat`, and INFO when it no longer holds.
    pub fn poll(&mut self, now: Instant, holds: bool) -> Option<AlarmEvent> {
        if !holds {
            return self.ok(now, false);
        }
        let since = *self.since.get_or_insert(now);
        let lasting = now.saturating_duration_since(since);
        let count = match self.said {
            None if lasting >= self.after => 1,
            Some((at, n)) if now.saturating_duration_since(at) >= self.repeat => n + 1,
            _ => return None,
        };
        self.said = Some((now, count));
        Some(AlarmEvent::Raised {
            lasting,
            cause: self.cause.clone(),
            count,
        })
    }

    /// When [`Alarm::poll`] may next have something to say, if the condition holds.
    pub fn next_poll(&self) -> Option<Instant> {
        match self.said {
            // An absurdly long `after` or `repeat` never comes: no poll, rather than a panic.
            Some((at, _)) => at.checked_add(self.repeat),
            None => self.since.and_then(|s| s.checked_add(self.after)),
        }
    }

    /// True while the alarm is raised.
    pub fn is_raised(&self) -> bool {
        self.said.is_some()
    }
}

/// A duration for a log line, to the second: `5m 3s`.
pub fn seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Logs an alarm's ERROR: `alarm` names which one (`not_delivering`, `silence`,
/// `link_silence`), `pipe` and `peer` where it is, `what` says what is wrong and what to do.
pub fn log_raised(alarm: &str, pipe: &str, peer: &str, ev: &AlarmEvent, what: &str) {
    if let AlarmEvent::Raised {
        lasting,
        cause,
        count,
    } = ev
    {
        let cause = cause.as_deref().unwrap_or("none reported");
        tracing::error!(alarm = %alarm, pipe = %pipe, peer = %peer, lasting = %seconds(*lasting), cause, count, "ALARM: {what} (said again every hour while it lasts)");
    }
}

/// Logs an alarm's end at INFO.
pub fn log_cleared(alarm: &str, pipe: &str, peer: &str, ev: &AlarmEvent, what: &str) {
    if let AlarmEvent::Cleared { lasted } = ev {
        tracing::info!(alarm = %alarm, pipe = %pipe, peer = %peer, lasted = %seconds(*lasted), "alarm cleared: {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn raised_once_after_the_delay_repeated_hourly_and_cleared_once() {
        let t0 = Instant::now();
        let mut a = Alarm::new(300 * S);
        assert_eq!(a.poll(t0, true), None);
        assert_eq!(a.next_poll(), Some(t0 + 300 * S));
        a.failure("cannot connect to the gate: refused");
        assert_eq!(a.poll(t0 + 299 * S, true), None);
        let raised = a.poll(t0 + 300 * S, true);
        assert_eq!(
            raised,
            Some(AlarmEvent::Raised {
                lasting: 300 * S,
                cause: Some("cannot connect to the gate: refused".into()),
                count: 1
            })
        );
        assert!(a.is_raised());
        // Not again within the hour, whatever fails meanwhile.
        a.failure("the receiver closed the connection during the handshake");
        assert_eq!(a.poll(t0 + 301 * S, true), None);
        assert_eq!(a.poll(t0 + 3899 * S, true), None);
        assert_eq!(a.next_poll(), Some(t0 + 3900 * S));
        match a.poll(t0 + 3900 * S, true) {
            Some(AlarmEvent::Raised { cause, count, .. }) => {
                assert_eq!(count, 2);
                assert_eq!(
                    cause.as_deref(),
                    Some("the receiver closed the connection during the handshake"),
                    "the last cause is named"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.ok(t0 + 4000 * S, false),
            Some(AlarmEvent::Cleared { lasted: 4000 * S })
        );
        assert_eq!(a.ok(t0 + 4001 * S, false), None, "cleared once");
        assert!(!a.is_raised());
    }

    #[test]
    fn progress_restarts_the_count_and_an_idle_pipe_is_never_alarmed() {
        let t0 = Instant::now();
        let mut a = Alarm::new(10 * S);
        assert_eq!(a.poll(t0, true), None);
        // Delivering every few seconds: never an alarm.
        for i in 1..100 {
            assert_eq!(a.ok(t0 + i * 5 * S, false), None);
            assert_eq!(a.poll(t0 + i * 5 * S, true), None);
        }
        // Idle (nothing to send) for long: no alarm either.
        assert_eq!(a.poll(t0 + 1000 * S, false), None);
        assert_eq!(a.poll(t0 + 5000 * S, false), None);
        assert_eq!(a.next_poll(), None);
        // Trouble counted from when files wait again.
        assert_eq!(a.poll(t0 + 6000 * S, true), None);
        assert!(matches!(
            a.poll(t0 + 6010 * S, true),
            Some(AlarmEvent::Raised { count: 1, .. })
        ));
        // Nothing left to send (the operator removed the files): cleared.
        assert!(matches!(
            a.poll(t0 + 6020 * S, false),
            Some(AlarmEvent::Cleared { .. })
        ));
    }

    #[test]
    fn a_watched_silence_counts_from_start_and_from_each_arrival() {
        let t0 = Instant::now();
        let mut a = Alarm::new(7200 * S);
        assert_eq!(a.ok(t0, true), None, "start: nothing to clear");
        assert_eq!(a.next_poll(), Some(t0 + 7200 * S));
        assert_eq!(a.poll(t0 + 7199 * S, true), None);
        assert!(matches!(
            a.poll(t0 + 7200 * S, true),
            Some(AlarmEvent::Raised {
                count: 1,
                cause: None,
                ..
            })
        ));
        assert_eq!(
            a.ok(t0 + 8000 * S, true),
            Some(AlarmEvent::Cleared { lasted: 8000 * S })
        );
        assert_eq!(a.poll(t0 + 15199 * S, true), None);
        assert!(a.poll(t0 + 15200 * S, true).is_some());
    }
}
