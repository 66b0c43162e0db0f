//! Steering a running sender: its pipes as units that start and stop on their own, and the
//! answers of the control socket (`pipes`, `pipe stop|start`, `reload`, SIGHUP).
//!
//! ```text
//!  control socket / SIGHUP --Request--> Steer::answer
//!                                          |  stop/start: RunFlag (+ pipe-states.json)
//!                                          |  reload: Config::load, diff by pipe (reload.rs)
//!                                          v
//!   Running pipe = Pipe + its source thread + its link task + its window watcher + RunFlag
//! ```
//!
//! Each [`Running`] pipe has its own stop channel: stopping it ends its link task (the frame in
//! flight is finished or abandoned at a frame boundary; its in-flight records stay in its state
//! folder), which drops the pipe and with it the source's channel, which ends the source's
//! watcher thread. The other pipes are not touched.

mod flag;
mod reload;
pub mod row;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gapsync_daemon::control::{PipeRow, PipeStates, Request, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::flag::RunFlag;
use self::row::{Rate, RowExtras};
use crate::config::{Config, PipeConfig};
use crate::pipe::status::PipeHandle;
use crate::pipe::{Pipe, PipeStats};
use crate::schedule::Schedule;
use crate::schedule::cron::CronState;
use crate::schedule::run::{CronGate, CronTask};
use crate::state::IdSource;
use crate::summary::Summary;

/// One pipe at work.
#[derive(Debug)]
struct Running {
    cfg: PipeConfig,
    handle: PipeHandle,
    flag: Arc<RunFlag>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The window watcher and the cron task, if the pipe has a schedule.
    timers: Vec<JoinHandle<()>>,
    rate: Rate,
    /// What `pipe start` asks a run of (a postgres source's snapshot and partitions tables).
    trigger: Option<crate::source::RunTrigger>,
}

/// The sender's pipes and what steers them.
#[derive(Debug)]
pub struct Steer {
    /// The config file, read again by `reload`.
    path: PathBuf,
    config: Config,
    ids: Arc<IdSource>,
    session: u64,
    states: PipeStates,
    pipes: Vec<Running>,
    summary: Summary,
    last_summary: Instant,
}

impl Steer {
    /// Starts every pipe of `config` (a stopped one stays stopped).
    pub fn start(path: PathBuf, config: Config) -> anyhow::Result<Self> {
        let ids = Arc::new(IdSource::open(&config.state_dir)?);
        let states = PipeStates::load(&config.state_dir)?;
        let mut steer = Self {
            path,
            session: ids.session(),
            ids,
            states,
            pipes: Vec::new(),
            summary: Summary::new(config.log_time),
            last_summary: Instant::now(),
            config,
        };
        for pc in steer.config.pipes.clone() {
            let running = steer.start_pipe(pc)?;
            steer.pipes.push(running);
        }
        Ok(steer)
    }

    /// The session id of this run.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The running config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts one pipe: its state, source, link and window watcher.
    fn start_pipe(&mut self, pc: PipeConfig) -> anyhow::Result<Running> {
        let stats = Arc::new(PipeStats::default());
        let source = crate::source::build(&pc, stats.clone());
        // A source that runs jobs (postgres) is triggered by the cron; a spool is held back.
        let trigger = source.run_trigger();
        let mut pipe = Pipe::new(pc.clone(), source, self.ids.clone(), stats.clone())
            .with_context(|| {
                format!(
                    "pipe {}: cannot open its state in {}",
                    pc.name,
                    pc.state_dir.display()
                )
            })?;
        let has_cron = pc.schedule.as_ref().and_then(|s| s.cron()).is_some();
        let cron = (has_cron && trigger.is_none()).then(|| {
            let gate = Arc::new(CronGate::default());
            pipe.gate_by_cron(gate.clone());
            gate
        });
        let cron_state = match has_cron {
            true => Some(
                CronState::open(&pc.state_dir)
                    .with_context(|| format!("pipe {}: cannot read its last cron run", pc.name))?,
            ),
            false => None,
        };
        // Before the source starts: a stopped pipe's source reads no database at all.
        let stopped = self.states.is_stopped(&pc.name);
        (stats.stopped).store(stopped, std::sync::atomic::Ordering::Relaxed);
        let rx = pipe
            .start_source()
            .with_context(|| format!("pipe {}: cannot start its source", pc.name))?;
        let handle = pipe.handle();
        let open = (pc.schedule.as_ref()).is_none_or(|s| s.is_open(chrono::Utc::now()));
        let flag = RunFlag::new(handle.clone(), stopped, open, cron.clone());
        let (stop, stop_rx) = watch::channel(false);
        let task = crate::link::start(pipe, &self.config.node, self.session, rx, stop_rx);
        let mut timers = Vec::new();
        if let Some(s) = &pc.schedule {
            timers.extend(flag::watch_windows(
                pc.name.clone(),
                flag.clone(),
                s.clone(),
            ));
        }
        if let (Some(state), Some(schedule)) = (cron_state, &pc.schedule) {
            let mut task = cron_task(&pc, schedule, state, cron, &flag);
            task.trigger = trigger.clone();
            timers.push(tokio::spawn(task.run()));
        }
        self.summary.add(&pc.name, stats, &pc.state_dir);
        log_pipe_started(&pc, stopped);
        Ok(Running {
            cfg: pc,
            handle,
            flag,
            stop,
            task,
            timers,
            rate: Rate::default(),
            trigger,
        })
    }

    /// Stops one pipe and waits until its link has ended (its state is then at rest).
    async fn stop_pipe(&mut self, r: Running) {
        let _ = r.stop.send(true);
        r.timers.iter().for_each(JoinHandle::abort);
        let _ = r.task.await;
        self.summary.remove(&r.cfg.name);
        log_pipe_stopped(&r.handle);
    }

    /// Answers one control request (SIGHUP comes as [`Request::Reload`]).
    pub fn answer(&mut self, request: &Request) -> Response {
        match request {
            Request::Pipes => Response::Pipes { rows: self.rows() },
            Request::Stop { pipe } => self.set_stopped(pipe, true),
            Request::Start { pipe } => self.set_stopped(pipe, false),
            Request::Reload => self.reload(),
        }
    }

    /// One row per pipe, in config order.
    fn rows(&mut self) -> Vec<PipeRow> {
        let now = Instant::now();
        let mut rows = Vec::new();
        for r in &mut self.pipes {
            let st = r.handle.status();
            r.rate.sample(now, st.delivered_bytes);
            let today = self.summary.today(&r.cfg.name).unwrap_or_default();
            let extras = RowExtras {
                state: r.flag.state(&st),
                today,
                drain_eta_seconds: r.rate.drain_eta(st.queued_bytes),
            };
            rows.push(row::row(&st, extras));
        }
        rows
    }

    /// `pipe stop NAME` / `pipe start NAME`: recorded durably first, then applied.
    fn set_stopped(&mut self, name: &str, stop: bool) -> Response {
        let Some(r) = self.pipes.iter().find(|r| r.cfg.name == name) else {
            let known: Vec<&str> = self.pipes.iter().map(|r| r.cfg.name.as_str()).collect();
            return Response::failed(format!(
                "no pipe named {name:?} in this sender (its pipes: {})",
                known.join(", ")
            ));
        };
        let changed = if stop {
            self.states.stop(name)
        } else {
            self.states.start(name)
        };
        let changed = match changed {
            Ok(c) => c,
            Err(e) => return Response::failed(format!("pipe {name}: {e}; nothing changed")),
        };
        r.flag.set_stopped(stop);
        // `pipe start` also asks a source that runs jobs for a run (README "Tables").
        let run = match (&r.trigger, stop) {
            (Some(t), false) => {
                t.fire();
                tracing::info!(pipe = %name, "pipe start: the source reads its snapshot and partitions tables now");
                " (its snapshot and partitions tables are read now)"
            }
            _ => "",
        };
        let word = if stop { "stopped" } else { "started" };
        if !changed {
            return Response::done(format!("pipe {name} was already {word}{run}"));
        }
        tracing::info!(pipe = %name, "pipe {word} by the operator");
        let note = if stop {
            " (the frame in flight ends; it stays stopped across restarts until `pipe start`)"
        } else {
            ""
        };
        Response::done(format!("pipe {name} {word}{note}{run}"))
    }

    /// Called every few seconds: rate samples, and the summary lines when due.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for r in &mut self.pipes {
            r.rate.sample(now, r.handle.status().delivered_bytes);
        }
        if self.last_summary.elapsed() >= self.config.summary_interval {
            self.last_summary = now;
            tokio::task::block_in_place(|| self.summary.log());
        }
    }

    /// Stops every pipe (at shutdown), then the last summary and one line per pipe.
    pub async fn shutdown(mut self) {
        let pipes = std::mem::take(&mut self.pipes);
        for r in &pipes {
            let _ = r.stop.send(true);
        }
        for r in &pipes {
            r.timers.iter().for_each(JoinHandle::abort);
        }
        let mut handles = Vec::new();
        for r in pipes {
            let _ = r.task.await;
            handles.push(r.handle);
        }
        self.summary.log();
        handles.iter().for_each(log_pipe_stopped);
    }
}

/// The cron task of a pipe (see [`crate::schedule::run`]).
fn cron_task(
    pc: &PipeConfig,
    schedule: &Schedule,
    state: CronState,
    gate: Option<Arc<CronGate>>,
    flag: &Arc<RunFlag>,
) -> CronTask {
    let first_scan = (pc.source.spool()).map_or(Duration::from_secs(2), |s| {
        s.settle + s.poll_interval + Duration::from_secs(1)
    });
    let flag = flag.clone();
    CronTask {
        pipe: pc.name.clone(),
        schedule: schedule.clone(),
        state,
        gate,
        trigger: None,
        first_scan,
        wake: Box::new(move || flag.poke()),
    }
}

/// The line per pipe started (at start and by a reload), with what it runs.
fn log_pipe_started(pc: &PipeConfig, stopped: bool) {
    let link = crate::link::kind_name(pc.profile.link);
    tracing::info!(pipe = %pc.name, profile = %pc.profile.name, link = %link, gate = %pc.gate, history = pc.history, realtime = pc.realtime, forward_received = pc.forward_received, stopped, "pipe started");
    if stopped {
        tracing::info!(pipe = %pc.name, "the pipe was stopped by the operator and stays stopped until `gapsync-sender pipe start {}`", pc.name);
    }
    log_processors(pc);
    match &pc.auth {
        Some(a) => {
            if let Some(w) = &a.key.warning {
                tracing::warn!(pipe = %pc.name, key_id = a.key.id, "{w}");
            }
        }
        None => {
            tracing::info!(pipe = %pc.name, "pipe sends without a key: frames are checksummed but not authenticated")
        }
    }
}

/// What the pipe's processors do, in one INFO line (nothing when it has none).
fn log_processors(pc: &PipeConfig) {
    let p = &pc.processors;
    if p.steps().is_empty() {
        return;
    }
    let compress = p.compress().map(|c| format!("zstd level {}", c.level));
    let rate = p.rate_limit().map(|r| r.bytes_per_second.get());
    tracing::info!(pipe = %pc.name, filter = p.filter().is_some(), compress = compress.as_deref().unwrap_or("off"), rate_limit_bytes_per_second = rate, limit_counts = if p.limit_after_compress() { "wire bytes" } else { "original bytes" }, "pipe processors");
}

/// One line per pipe stopped, from its status.
fn log_pipe_stopped(h: &PipeHandle) {
    let st = h.status();
    tracing::info!(pipe = %st.name, link = st.link, queued = st.queued_objects, queued_bytes = st.queued_bytes, delivered = st.delivered_objects, quarantined = st.quarantined, "pipe stopped");
}
