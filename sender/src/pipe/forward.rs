//! `forward_received = false`: objects that arrived through gapsync (their source holds an
//! origin chain for them, e.g. a spool that is another pipe's landing folder) stay where they
//! are, unsent. Each is counted (`forwarded_skipped` in the summary and the status) and named
//! once at INFO, at most [`NAMES_PER_MINUTE`] a minute, then one line with the count of the
//! rest (as the spool's `ignore` rule names its files).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use gapsync_protocol::OriginChain;

use super::{Pipe, Take};

/// Skipped objects named per minute per pipe; the rest are counted in one line.
pub const NAMES_PER_MINUTE: u32 = 20;

/// The naming budget of the current minute.
#[derive(Debug, Default)]
pub struct Names {
    since: Option<Instant>,
    named: u32,
    unnamed: u64,
}

impl Names {
    /// Whether to name one more object now; says how many went unnamed when a minute ends.
    fn name_one(&mut self, pipe: &str) -> bool {
        let now = Instant::now();
        if self
            .since
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            if self.unnamed > 0 {
                tracing::info!(pipe = %pipe, objects = self.unnamed, "more objects that arrived through gapsync were left in the source (forward_received = false)");
            }
            *self = Self {
                since: Some(now),
                ..Self::default()
            };
        }
        if self.named < NAMES_PER_MINUTE {
            self.named += 1;
            true
        } else {
            self.unnamed += 1;
            false
        }
    }
}

impl Pipe {
    /// Leaves `key`, which arrived through gapsync over `origin`, in the source: counted,
    /// named (within the budget), and not queued again while it stays there.
    pub(super) fn skip_forwarded(&mut self, key: String, origin: &OriginChain) -> Take {
        self.stats.forwarded_skipped.fetch_add(1, Relaxed);
        if self.forward_names.name_one(&self.cfg.name) {
            tracing::info!(pipe = %self.cfg.name, path = %key, origin = %origin, "not sent: the object arrived through gapsync and forward_received = false; it stays in the source");
        }
        // Still known: a later scan does not queue it again.
        if let Err(e) = self.store.remove(&key) {
            tracing::warn!(pipe = %self.cfg.name, path = %key, error = %e, "cannot update the in-flight journal");
        }
        Take::Skipped
    }
}
