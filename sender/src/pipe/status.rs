//! What the control socket shows of a running pipe (SHOW PIPES), and how it stops and starts
//! one. Reading a status is cheap: counters and one short lock.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::stats::{PipeStats, Problem};

/// One pipe's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeStatus {
    pub name: String,
    /// `tcp`, `tls` or `udp`.
    pub link: &'static str,
    /// The gate (or receiver) the pipe sends to.
    pub remote: String,
    pub profile: String,
    /// False while stopped by [`PipeHandle::pause`].
    pub running: bool,
    pub connected: bool,
    pub queued_objects: u64,
    pub queued_bytes: u64,
    pub in_flight: u64,
    /// Since the daemon started.
    pub delivered_objects: u64,
    pub delivered_bytes: u64,
    pub last_delivery: Option<SystemTime>,
    pub quarantined: u64,
    pub ignored_files: u64,
    pub ignored_bytes: u64,
    pub skipped_links: u64,
    /// Objects the pipe's filter or `history` / `realtime` leave in the source, now.
    pub filtered: u64,
    /// Objects left in the source because they arrived through gapsync (`forward_received`).
    pub forwarded_skipped: u64,
    /// What the source holds back now.
    pub note: Option<String>,
    /// The last WARN or ERROR the pipe logged, with its time.
    pub last_problem: Option<Problem>,
}

/// A running pipe, as the control socket holds it.
#[derive(Debug, Clone)]
pub struct PipeHandle {
    pub name: String,
    pub link: &'static str,
    pub remote: String,
    pub profile: String,
    pub stats: Arc<PipeStats>,
    running: Arc<watch::Sender<bool>>,
}

impl PipeHandle {
    pub fn new(
        cfg: &crate::config::PipeConfig,
        stats: Arc<PipeStats>,
        running: Arc<watch::Sender<bool>>,
    ) -> Self {
        Self {
            name: cfg.name.clone(),
            link: crate::link::kind_name(cfg.profile.link),
            remote: cfg.gate.clone(),
            profile: cfg.profile.name.clone(),
            stats,
            running,
        }
    }

    /// A snapshot of the pipe's state.
    pub fn status(&self) -> PipeStatus {
        let s = &self.stats;
        let last = s.last_delivery_ms.load(Relaxed);
        PipeStatus {
            name: self.name.clone(),
            link: self.link,
            remote: self.remote.clone(),
            profile: self.profile.clone(),
            running: self.is_running(),
            connected: s.connected.load(Relaxed) > 0,
            queued_objects: s.queued.load(Relaxed),
            queued_bytes: s.queued_bytes.load(Relaxed),
            in_flight: s.in_flight.load(Relaxed),
            delivered_objects: s.files.load(Relaxed),
            delivered_bytes: s.bytes.load(Relaxed),
            last_delivery: (last > 0).then(|| UNIX_EPOCH + Duration::from_millis(last)),
            quarantined: s.quarantined.load(Relaxed),
            ignored_files: s.ignored_files.load(Relaxed),
            ignored_bytes: s.ignored_bytes.load(Relaxed),
            skipped_links: s.skipped_links.load(Relaxed),
            filtered: s.filtered.load(Relaxed),
            forwarded_skipped: s.forwarded_skipped.load(Relaxed),
            note: s.note.lock().ok().and_then(|n| n.clone()),
            last_problem: s.last_problem.lock().ok().and_then(|p| p.clone()),
        }
    }

    pub fn is_running(&self) -> bool {
        *self.running.borrow()
    }

    /// Stops the pipe: a gate link finishes the frame it is writing and sends nothing more,
    /// the diode stops between groups of blocks; what is in flight keeps its state.
    pub fn pause(&self) {
        self.running.send_replace(false);
    }

    /// Lets a stopped pipe send again.
    pub fn resume(&self) {
        self.running.send_replace(true);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pipe::Pipe;
    use crate::source::SourceEvent;
    use crate::state::IdSource;

    /// A pipe of a loopback profile over a real spool and state folder (also for the tests
    /// of `steer`).
    pub(crate) fn pipe(d: &std::path::Path) -> Pipe {
        std::fs::create_dir_all(d.join("spool")).expect("spool");
        let text = format!(
            "node = \"n\"\nprofile = \"loopback\"\nprofiles_dir = {:?}\nstate_dir = \"state\"\n[[pipe]]\nname = \"p\"\ngate = \"127.0.0.1:9\"\nsource = {{ type = \"spool\", path = \"spool\" }}\n",
            gapsync_tests::profiles_dir().display().to_string()
        );
        std::fs::write(d.join("s.toml"), text).expect("write");
        let config = Config::load(&d.join("s.toml")).expect("valid");
        let ids = Arc::new(IdSource::open(&config.state_dir).expect("ids"));
        let pc = config.pipes[0].clone();
        let stats = Arc::new(PipeStats::default());
        let source = crate::source::build(&pc, stats.clone());
        Pipe::new(pc, source, ids, stats).expect("pipe")
    }

    #[test]
    fn the_status_counts_the_queue_and_the_handle_stops_and_starts_the_pipe() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut p = pipe(d.path());
        let h = p.handle();
        p.on_source(SourceEvent::Found {
            rel: "a.bin".into(),
            size: 1000,
            time: SystemTime::now(),
        });
        p.stats.failed("file quarantined: x");
        let st = h.status();
        assert_eq!(
            (st.name.as_str(), st.link, st.profile.as_str()),
            ("p", "tcp", "loopback")
        );
        assert_eq!((st.queued_bytes, st.delivered_objects), (1000, 0));
        assert_eq!(
            st.last_problem.map(|p| (p.level, p.message)),
            Some(("ERROR", "file quarantined: x".into()))
        );
        assert!(st.running && p.is_running());
        let running = p.running();
        h.pause();
        assert!(!p.is_running() && !h.status().running);
        assert!(running.has_changed().expect("open"));
        h.resume();
        assert!(p.is_running());
    }
}
