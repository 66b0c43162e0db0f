//! Rate limiting for warnings a peer or a dead gate can cause in a loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets a message with a given key through at most once per interval and counts the rest.
#[derive(Debug)]
pub struct RateLimiter {
    every: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RateLimiter {
    /// At most one message per key every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` if the message may be logged now, `n` being how many were suppressed since the
    /// last one; `None` if it must be suppressed.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, (t, _)| now.duration_since(*t) < self.every);
        }
        match seen.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_within_the_interval_and_counts() {
        let r = RateLimiter::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.check("a", t), Some(0));
        assert_eq!(r.check("a", t + Duration::from_secs(1)), None);
        assert_eq!(r.check("a", t + Duration::from_secs(2)), None);
        assert_eq!(r.check("b", t), Some(0));
        assert_eq!(r.check("a", t + Duration::from_secs(11)), Some(2));
    }
}
