//! The `rate_limit` processor: a token bucket of bytes per second for one pipe, on every link
//! kind.
//!
//! ```toml
//! { type = "rate_limit", bytes_per_second = 20000000, burst_bytes = 4194304 }
//! ```
//!
//! `burst_bytes` defaults to one second's worth (`bytes_per_second`), not to one frame: the
//! frame size depends on the profile, which this check does not see, and a frame larger than the
//! burst still passes (below), so the burst need not hold a frame.
//!
//! How the policy calls it: one [`RateLimiter`] per pipe (`Arc`), made with
//! [`RateLimiter::new`] when the pipe starts; before writing a frame of `n` bytes to the link,
//! `limiter.take(n).await` on the async links (tcp, tls) or `limiter.take_blocking(n)` on the
//! diode link's blocking thread. It counts what it is given: put it after `compress` to limit
//! bytes on the wire (the [`super::Processors`] order says which; see there).
//!
//! The guarantee: from the limiter's creation, the bytes granted up to any moment never exceed
//! `burst_bytes + bytes_per_second × elapsed`. A take is paid IN ADVANCE: `take(n)` withdraws
//! `n` at once (the level may go below zero) and returns when the level is back at zero, so a
//! 4 MiB frame against 1 MB/s with a full 1 MB bucket waits about 3.2 s and then goes out whole,
//! and the frames after it wait their turn (grants come in the order of the calls).
//!
//! Written by hand (30 lines) rather than with `governor`: governor's async wait sleeps on
//! `futures-timer` (its own timer thread, not tokio's clock, so tokio's paused clock cannot test
//! it), its blocking side would need our own sleep anyway, and `until_n_ready` refuses any `n`
//! above the burst (`InsufficientCapacity`), so frames would have to be split. A cancelled
//! `take` (the pipe stopped while it waited) keeps its withdrawal: the next frame waits longer,
//! never less, so the limit holds.

use std::num::NonZeroU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// `{ type = "rate_limit", ... }` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Required, > 0.
    pub bytes_per_second: Option<i64>,
    /// > 0; default: `bytes_per_second` (one second's worth).
    pub burst_bytes: Option<i64>,
}

/// A checked `rate_limit` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub bytes_per_second: NonZeroU64,
    pub burst_bytes: NonZeroU64,
}

impl RateLimit {
    /// Checks `raw`; every problem is reported, each naming its key.
    pub fn check(raw: &RawRateLimit) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let rate = match raw.bytes_per_second {
            None => {
                problems
                    .push("bytes_per_second is required (e.g. 20000000 for 20 MB/s)".to_owned());
                None
            }
            Some(v) => positive("bytes_per_second", v, &mut problems),
        };
        let burst = match raw.burst_bytes {
            None => rate,
            Some(v) => positive("burst_bytes", v, &mut problems),
        };
        match (rate, burst) {
            (Some(bytes_per_second), Some(burst_bytes)) if problems.is_empty() => Ok(Self {
                bytes_per_second,
                burst_bytes,
            }),
            _ => Err(problems),
        }
    }
}

fn positive(key: &str, v: i64, problems: &mut Vec<String>) -> Option<NonZeroU64> {
    let r = u64::try_from(v).ok().and_then(NonZeroU64::new);
    if r.is_none() {
        problems.push(format!(
            "{key} = {v} must be above 0 (to stop a pipe use `gapsync-sender pipe stop`)"
        ));
    }
    r
}

/// The token bucket shared by everything that sends on one pipe.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may go out now; below zero while a take is being paid for.
    level: f64,
    at: Instant,
}

impl RateLimiter {
    /// A limiter with a full bucket.
    pub fn new(cfg: &RateLimit) -> Self {
        let (rate, burst) = (
            cfg.bytes_per_second.get() as f64,
            cfg.burst_bytes.get() as f64,
        );
        Self {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                level: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Withdraws `n` bytes at `now` and returns how long the caller must wait before sending
    /// them (zero if the bucket held them).
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.level = (b.level + elapsed * self.rate).min(self.burst);
        b.at = b.at.max(now);
        let n = n as f64;
        b.level -= n;
        if b.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.level / self.rate)
        }
    }

    /// Waits until `n` bytes may be sent (tokio; cancel-safe in the sense above).
    pub async fn take(&self, n: u64) {
        let now = Instant::now();
        let wait = self.reserve(n, now);
        if !wait.is_zero() {
            tokio::time::sleep_until(now + wait).await;
        }
    }

    /// Blocks the calling thread until `n` bytes may be sent (the diode link's thread).
    pub fn take_blocking(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MB: u64 = 1_000_000;
    const MIB: u64 = 1 << 20;

    fn limiter(rate: u64, burst: Option<u64>) -> RateLimiter {
        let raw = RawRateLimit {
            bytes_per_second: Some(rate as i64),
            burst_bytes: burst.map(|b| b as i64),
        };
        RateLimiter::new(&RateLimit::check(&raw).expect("valid"))
    }

    /// Asserts the guarantee: granted bytes never above burst + rate x elapsed.
    fn assert_within(grants: &[(Instant, u64)], start: Instant, rate: u64, burst: u64) {
        let mut total = 0;
        for (at, n) in grants {
            total += n;
            let allowed = burst as f64 + rate as f64 * (*at - start).as_secs_f64();
            assert!(
                total as f64 <= allowed + 1.0,
                "{total} bytes granted by {:?}, allowed {allowed}",
                *at - start
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn frames_larger_than_the_burst_pass_whole_and_are_paid_in_advance() {
        let l = limiter(MB, None);
        let start = Instant::now();
        let mut grants = Vec::new();
        for _ in 0..4 {
            l.take(4 * MIB).await;
            grants.push((Instant::now(), 4 * MIB));
        }
        assert_within(&grants, start, MB, MB);
        // The first waits for the 3.19 MB above the full 1 MB bucket, each next one for 4.19 MB.
        let secs: Vec<f64> = grants
            .iter()
            .map(|(at, _)| (*at - start).as_secs_f64())
            .collect();
        let first = (4 * MIB - MB) as f64 / MB as f64;
        let each = (4 * MIB) as f64 / MB as f64;
        for (i, s) in secs.iter().enumerate() {
            let expected = first + each * i as f64;
            assert!(
                (s - expected).abs() < 0.01,
                "frame {i} at {s} s, expected {expected}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn small_frames_flow_at_the_rate_after_one_burst() {
        let l = limiter(2 * MB, Some(MB / 2));
        let start = Instant::now();
        let mut grants = Vec::new();
        while Instant::now() - start < Duration::from_secs(10) {
            l.take(64 * 1024).await;
            grants.push((Instant::now(), 64 * 1024));
        }
        assert_within(&grants, start, 2 * MB, MB / 2);
        let total: u64 = grants.iter().map(|g| g.1).sum();
        // It does let data through: 10 s at 2 MB/s plus the burst, less at most one frame.
        assert!(
            total >= 20 * MB + MB / 2 - 64 * 1024,
            "only {total} bytes in 10 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_bucket_is_shared_by_every_sender_of_the_pipe() {
        let l = Arc::new(limiter(MB, None));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let mut g = Vec::new();
                for _ in 0..10 {
                    l.take(300_000).await;
                    g.push((Instant::now(), 300_000));
                }
                g
            }));
        }
        let mut grants = Vec::new();
        for t in tasks {
            grants.extend(t.await.expect("task"));
        }
        grants.sort_by_key(|g| g.0);
        assert_within(&grants, start, MB, MB);
        // 9 MB in all: the last grant cannot come before (9 MB - 1 MB burst) / 1 MB/s = 8 s.
        let last = grants.last().expect("grants").0 - start;
        assert!(
            last >= Duration::from_secs(8),
            "9 MB granted within {last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pipe_saves_up_one_burst_only() {
        let l = limiter(MB, Some(MB / 4));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert_eq!(l.reserve(MB / 4, now), Duration::ZERO);
        let wait = l.reserve(MB / 2, now);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn take_blocking_sleeps_the_thread_until_paid() {
        let l = limiter(1_000_000, Some(100_000));
        let t = std::time::Instant::now();
        l.take_blocking(100_000);
        l.take_blocking(100_000);
        // The second take waited for 100 kB at 1 MB/s.
        assert!(
            t.elapsed() >= Duration::from_millis(99),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn burst_defaults_to_one_second_and_bad_values_are_all_reported() {
        let ok = RateLimit::check(&RawRateLimit {
            bytes_per_second: Some(20_000_000),
            burst_bytes: None,
        })
        .expect("valid");
        assert_eq!(ok.burst_bytes.get(), 20_000_000);
        let p = RateLimit::check(&RawRateLimit {
            bytes_per_second: Some(0),
            burst_bytes: Some(-1),
        })
        .expect_err("invalid");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("bytes_per_second = 0 must be above 0"));
        assert!(p[1].starts_with("burst_bytes = -1 must be above 0"));
        let p = RateLimit::check(&RawRateLimit::default()).expect_err("invalid");
        assert_eq!(
            p,
            ["bytes_per_second is required (e.g. 20000000 for 20 MB/s)"]
        );
    }
}
