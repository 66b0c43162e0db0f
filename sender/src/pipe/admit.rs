//! Which objects a pipe takes: its `filter` processor and its `history` / `realtime` switches,
//! asked once per object version the source offers.
//!
//! ```text
//!  source --Found(key, size, time)--> Admission --taken--> queue
//!                                        |
//!                                        +--refused--> stays in the source, counted (`filtered`)
//! ```
//!
//! A refused object is never settled: it stays where it is. It is remembered with the size and
//! time it was refused at, so the source offering it again unchanged (a spool scan every
//! `poll_interval`) costs one map lookup and no log line; a changed version (new size or mtime)
//! is judged again. The DEBUG line saying why is written once per version. `filtered` in the
//! pipe's status is how many objects are refused now (a refused object that later passes, once
//! changed, is no longer counted; one removed by hand stays counted until the next start).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use crate::config::PipeConfig;
use crate::pipe::PipeStats;
use crate::process::filter::Filter;
use crate::process::history::{HistoryMark, Present};

/// A pipe's admission rules and the objects they refused.
#[derive(Debug, Default)]
pub struct Admission {
    pipe: String,
    filter: Option<Filter>,
    /// Kept only when `history` or `realtime` is off.
    mark: Option<HistoryMark>,
    history: bool,
    realtime: bool,
    /// Refused objects, with the size and time they were refused at.
    refused: HashMap<String, (u64, SystemTime)>,
}

impl Admission {
    /// The rules of `cfg`. The history mark is read from the pipe's state folder, or written
    /// there with `list()` when the pipe is created (its first start); with `history` and
    /// `realtime` both on, an existing mark is not read (it is not needed).
    pub fn open(
        cfg: &PipeConfig,
        list: impl FnOnce() -> io::Result<Vec<Present>>,
    ) -> io::Result<Self> {
        let (history, realtime) = (cfg.history, cfg.realtime);
        let mark = open_mark(&cfg.name, &cfg.state_dir, history && realtime, list)?;
        Ok(Self {
            pipe: cfg.name.clone(),
            filter: cfg.processors.filter().cloned(),
            mark,
            history,
            realtime,
            refused: HashMap::new(),
        })
    }

    /// Whether the pipe takes the object `key` of `size` bytes and `time`; a refusal is
    /// remembered and counted in `stats.filtered`.
    pub fn admits(&mut self, key: &str, size: u64, time: SystemTime, stats: &PipeStats) -> bool {
        if self.refused.get(key) == Some(&(size, time)) {
            return false;
        }
        match self.why_not(key, size, time) {
            None => {
                if self.refused.remove(key).is_some() {
                    stats.filtered.store(self.refused.len() as u64, Relaxed);
                }
                true
            }
            Some(why) => {
                tracing::debug!(pipe = %self.pipe, path = %key, size, reason = %why, "object left in the source");
                self.refused.insert(key.to_owned(), (size, time));
                stats.filtered.store(self.refused.len() as u64, Relaxed);
                false
            }
        }
    }

    /// Why the object is not taken; `None` when it is.
    fn why_not(&self, key: &str, size: u64, time: SystemTime) -> Option<String> {
        if let Some(f) = &self.filter {
            let verdict = f.admits(key, time);
            if !verdict.is_admitted() {
                return Some(format!("{} ({})", verdict, verdict.counter()));
            }
        }
        let mark = self.mark.as_ref()?;
        if mark.admits(self.history, self.realtime, key, size, time) {
            return None;
        }
        Some(if mark.is_history(key, size, time) {
            "not taken: it was there when the pipe was created and `history = false` (not_history)"
                .to_owned()
        } else {
            "not taken: it arrived after the pipe was created and `realtime = false` (not_realtime)"
                .to_owned()
        })
    }
}

/// The pipe's history mark: created if missing; read only when `unneeded` is false.
fn open_mark(
    pipe: &str,
    state_dir: &Path,
    unneeded: bool,
    list: impl FnOnce() -> io::Result<Vec<Present>>,
) -> io::Result<Option<HistoryMark>> {
    let existed = state_dir.join(HistoryMark::FILE).exists();
    if unneeded && existed {
        return Ok(None);
    }
    let mark = HistoryMark::open_or_create(state_dir, SystemTime::now(), list)?;
    if !existed {
        let created = humantime::format_rfc3339_seconds(mark.created());
        tracing::info!(pipe = %pipe, objects = mark.len(), %created, "pipe created: the objects present now are its history (`history`); those that arrive later are realtime (`realtime`)");
    }
    Ok((!unneeded).then_some(mark))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Processors, RawProcessor};
    use std::time::{Duration, UNIX_EPOCH};

    fn admission(filter: &str, history: bool, realtime: bool, present: Vec<Present>) -> Admission {
        let raw: Vec<RawProcessor> = if filter.is_empty() {
            Vec::new()
        } else {
            #[derive(serde::Deserialize)]
            struct P {
                processors: Vec<RawProcessor>,
            }
            toml::from_str::<P>(&format!("processors = [{filter}]"))
                .expect("parses")
                .processors
        };
        let processors = Processors::check("p", &raw).expect("valid");
        let dir = tempfile::tempdir().expect("tempdir");
        let mark =
            HistoryMark::open_or_create(dir.path(), UNIX_EPOCH, || Ok(present)).expect("mark");
        Admission {
            pipe: "p".into(),
            filter: processors.filter().cloned(),
            mark: (!(history && realtime)).then_some(mark),
            history,
            realtime,
            refused: HashMap::new(),
        }
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_refused_object_is_counted_once_and_judged_again_only_when_it_changes() {
        let mut a = admission(
            r#"{ type = "filter", include = ["*.csv"] }"#,
            true,
            true,
            vec![],
        );
        let stats = PipeStats::default();
        assert!(a.admits("a.csv", 1, t(1), &stats));
        for _ in 0..3 {
            assert!(!a.admits("b.txt", 1, t(1), &stats));
        }
        assert!(!a.admits("c.txt", 1, t(1), &stats));
        assert_eq!(stats.filtered.load(Relaxed), 2);
        // Changed, and still refused: counted once.
        assert!(!a.admits("b.txt", 2, t(2), &stats));
        assert_eq!(stats.filtered.load(Relaxed), 2);
    }

    #[test]
    fn history_off_keeps_what_was_there_at_creation_until_it_changes() {
        let present = vec![Present {
            key: "old.bin".into(),
            size: 5,
            mtime: t(10),
        }];
        let mut a = admission("", false, true, present);
        let stats = PipeStats::default();
        assert!(!a.admits("old.bin", 5, t(10), &stats));
        assert!(a.admits("new.bin", 5, t(10), &stats));
        assert_eq!(stats.filtered.load(Relaxed), 1);
        // Rewritten after creation: new content, realtime, taken; no longer counted.
        assert!(a.admits("old.bin", 6, t(20), &stats));
        assert_eq!(stats.filtered.load(Relaxed), 0);
    }

    #[test]
    fn realtime_off_takes_only_what_was_there_at_creation() {
        let present = vec![Present {
            key: "old.bin".into(),
            size: 5,
            mtime: t(10),
        }];
        let mut a = admission("", true, false, present);
        let stats = PipeStats::default();
        assert!(a.admits("old.bin", 5, t(10), &stats));
        assert!(!a.admits("new.bin", 5, t(10), &stats));
        let why = a.why_not("new.bin", 5, t(10)).expect("refused");
        assert!(why.contains("not_realtime"), "{why}");
    }
}
