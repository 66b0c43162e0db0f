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

/// The key of a message about `peer` (an address, a pipe) for `cause`: repeats of one cause
/// are limited together, different causes each get through.
pub fn key(peer: impl std::fmt::Display, cause: &str) -> String {
    format!("{peer} {cause}")
}

/// A stable name of what kind of error `e` is, from its `Debug` form: the enum variants it is
/// made of (`Decode TooLong`, `BadName Absolute`, `Os NotFound`), without the numbers, names
/// and strings it carries. So a limiter keyed by it limits repeats of one cause (whatever file
/// or offset) and lets each different cause through.
pub fn cause_kind(e: &dyn std::fmt::Debug) -> String {
    let text = format!("{e:?}");
    let mut kinds: Vec<&str> = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' | '\'' => {
                // Skip a string or char literal, escapes included.
                while let Some((_, d)) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !(d.is_ascii_alphanumeric() || d == '_') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                let word = &text[i..end];
                // Variants start with a capital; field names do not.
                if c.is_ascii_uppercase() && kinds.len() < 8 {
                    kinds.push(word);
                }
            }
            _ => {}
        }
    }
    kinds.join(" ")
}

/// `s` without its digits: a message's key when it has no error type to name its kind.
pub fn without_digits(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_digit()).collect()
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

    #[derive(Debug)]
    #[allow(dead_code)]
    enum Inner {
        TooLong { length: u64, max: u64 },
        BadMagic([u8; 4]),
        Absolute,
    }

    #[derive(Debug)]
    #[allow(dead_code)]
    enum Outer {
        Decode(Inner),
        BadName { name: String, source: Inner },
        BadTag(u64, Inner),
    }

    #[test]
    fn the_cause_kind_names_variants_not_values() {
        let a = Outer::Decode(Inner::TooLong { length: 5, max: 3 });
        let b = Outer::Decode(Inner::TooLong { length: 9, max: 3 });
        assert_eq!(cause_kind(&a), "Decode TooLong");
        assert_eq!(cause_kind(&a), cause_kind(&b));
        assert_eq!(
            cause_kind(&Outer::Decode(Inner::BadMagic([1, 2, 3, 4]))),
            "Decode BadMagic"
        );
        let name = |n: &str| Outer::BadName {
            name: n.into(),
            source: Inner::Absolute,
        };
        assert_eq!(cause_kind(&name("/etc/\"Passwd\" X")), "BadName Absolute");
        assert_eq!(cause_kind(&name("a")), cause_kind(&name("Other Name")));
        assert_eq!(
            cause_kind(&Outer::BadTag(7, Inner::Absolute)),
            "BadTag Absolute"
        );
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(cause_kind(&io), "Kind NotFound");
    }

    #[test]
    fn three_causes_from_one_peer_are_three_lines_and_repeats_are_limited() {
        let r = RateLimiter::new(Duration::from_secs(60));
        let t = Instant::now();
        let causes = [
            Outer::Decode(Inner::TooLong { length: 5, max: 3 }),
            Outer::Decode(Inner::BadMagic([0; 4])),
            Outer::BadName {
                name: "x".into(),
                source: Inner::Absolute,
            },
        ];
        let logged = causes
            .iter()
            .filter(|c| r.check(&key("10.0.0.1", &cause_kind(*c)), t).is_some())
            .count();
        assert_eq!(logged, 3, "each cause is said");
        let again = Outer::Decode(Inner::TooLong { length: 77, max: 3 });
        assert_eq!(
            r.check(&key("10.0.0.1", &cause_kind(&again)), t),
            None,
            "a repeat is not"
        );
        assert!(
            r.check(&key("10.0.0.2", &cause_kind(&again)), t).is_some(),
            "another peer is"
        );
    }
}
