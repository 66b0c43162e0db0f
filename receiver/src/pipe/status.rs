//! A pipe's status row (`gapsync-receiver pipes`): who it is from, its link and profile, the
//! senders connected, what landed, what waits, and its last problem. Everything a row holds is
//! kept in atomics and small locks updated as things happen, so reading every row is cheap
//! (no sink lock, no disk).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use gapsync_daemon::control::{Peer as RowPeer, PipeRow, PipeState as RowState};

/// A pipe's state in its status row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeState {
    Running,
    /// The pipe's last ERROR is newer than its last landing.
    Error,
}

/// How bad a pipe's last problem was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warn,
    Error,
}

/// A pipe's last WARN or ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub message: String,
    pub at: SystemTime,
}

/// A sender connected to the pipe (for udp: the source of the current sender session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub since: SystemTime,
}

/// One row of `gapsync-receiver pipes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverPipeStatus {
    pub name: String,
    /// The sender's node.
    pub from: String,
    /// `tcp`, `tls` or `udp`.
    pub link: &'static str,
    pub profile: String,
    /// The sink's type (`directory`).
    pub sink: &'static str,
    pub state: PipeState,
    pub peers: Vec<Peer>,
    /// Files landed since the receiver started, and their bytes.
    pub landed_objects: u64,
    pub landed_bytes: u64,
    /// Today's files and bytes (kept across restarts, like the summary's `today_*`).
    pub today_objects: u64,
    pub today_bytes: u64,
    pub last_landed: Option<SystemTime>,
    /// Transfers staged, not yet committed.
    pub partials: u64,
    /// Transfers received whole and recorded, whose rename into place waits for a retry.
    pub unlanded: u64,
    /// Handshakes naming this pipe that were refused (wrong link, profile, key, replay).
    pub refused_connections: u64,
    /// Links refused because their target leaves the destination, since start.
    pub refused_links: u64,
    pub last_problem: Option<Problem>,
}

/// What a pipe's row is read from: updated by the links and the pipe as things happen.
#[derive(Debug, Default)]
pub struct Activity {
    peers: Mutex<BTreeMap<u64, Peer>>,
    next_peer: AtomicU64,
    pub landed_objects: AtomicU64,
    pub landed_bytes: AtomicU64,
    last_landed: Mutex<Option<SystemTime>>,
    pub partials: AtomicU64,
    pub unlanded: AtomicU64,
    pub refused_connections: AtomicU64,
    last_problem: Mutex<Option<Problem>>,
}

/// Removes its peer from the pipe's row when dropped (the connection ended).
#[derive(Debug)]
pub struct PeerGuard {
    activity: Arc<Activity>,
    id: u64,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        lock(&self.activity.peers).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Activity {
    /// Lists `addr` as connected until the guard is dropped.
    pub fn peer_connected(self: &Arc<Self>, addr: SocketAddr) -> PeerGuard {
        let id = self.next_peer.fetch_add(1, Relaxed);
        let peer = Peer {
            addr,
            since: SystemTime::now(),
        };
        lock(&self.peers).insert(id, peer);
        PeerGuard {
            activity: self.clone(),
            id,
        }
    }

    /// Counts a file made visible.
    pub fn landed(&self, bytes: u64) {
        self.landed_objects.fetch_add(1, Relaxed);
        self.landed_bytes.fetch_add(bytes, Relaxed);
        *lock(&self.last_landed) = Some(SystemTime::now());
    }

    /// Remembers the pipe's latest WARN or ERROR (what the log said).
    pub fn problem(&self, severity: Severity, message: impl Into<String>) {
        *lock(&self.last_problem) = Some(Problem {
            severity,
            message: message.into(),
            at: SystemTime::now(),
        });
    }

    /// The sink's counts after a request.
    pub fn sink_counts(&self, partials: usize, unlanded: usize) {
        self.partials.store(partials as u64, Relaxed);
        self.unlanded.store(unlanded as u64, Relaxed);
    }

    /// RUNNING, or ERROR while the last ERROR is newer than the last landing.
    pub fn state(&self) -> PipeState {
        let last = *lock(&self.last_landed);
        match &*lock(&self.last_problem) {
            Some(p) if p.severity == Severity::Error && last.is_none_or(|l| p.at > l) => {
                PipeState::Error
            }
            _ => PipeState::Running,
        }
    }

    /// The row's fields that live here; the pipe fills in the rest.
    pub fn fill(&self, row: &mut ReceiverPipeStatus) {
        row.state = self.state();
        row.peers = lock(&self.peers).values().cloned().collect();
        row.landed_objects = self.landed_objects.load(Relaxed);
        row.landed_bytes = self.landed_bytes.load(Relaxed);
        row.last_landed = *lock(&self.last_landed);
        row.partials = self.partials.load(Relaxed);
        row.unlanded = self.unlanded.load(Relaxed);
        row.refused_connections = self.refused_connections.load(Relaxed);
        row.last_problem = lock(&self.last_problem).clone();
    }
}

impl ReceiverPipeStatus {
    /// The row `gapsync-receiver pipes` prints (and `--json` gives), with `listen` as the
    /// pipe's remote: where its senders connect.
    pub fn row(&self, listen: &str) -> PipeRow {
        let state = match self.state {
            PipeState::Running => RowState::Running,
            PipeState::Error => RowState::Error,
        };
        let mut row = PipeRow::new(&self.name, state);
        row.link = Some(self.link.to_string());
        row.remote = Some(listen.to_string());
        row.profile = Some(self.profile.clone());
        row.queued_objects = self.unlanded;
        row.delivered_objects = self.landed_objects;
        row.delivered_bytes = self.landed_bytes;
        row.delivered_today_objects = self.today_objects;
        row.delivered_today_bytes = self.today_bytes;
        row.last_delivery = self.last_landed.map(DateTime::<Utc>::from);
        row.from = Some(self.from.clone());
        row.peers = Some(
            self.peers
                .iter()
                .map(|p| RowPeer {
                    address: p.addr.to_string(),
                    since: p.since.into(),
                })
                .collect(),
        );
        row.partials = Some(self.partials);
        row.refused_connections = Some(self.refused_connections);
        row.refused_links = Some(self.refused_links);
        if let Some(p) = &self.last_problem {
            row.last_error = Some(p.message.clone());
            row.last_error_at = Some(p.at.into());
        }
        row
    }
}
