//! A stopped pipe sends nothing on either link kind, and sends everything once started: a
//! real receiver process, the pipe's real source and link in this process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gapsync_tests::{Lab, count_files, make_file};

use crate::config::Config;
use crate::pipe::{Pipe, PipeStats};
use crate::state::IdSource;

/// Stops the link when dropped: a failed assertion must end the test, not wait for the
/// runtime's blocking udp thread forever.
struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

fn a_stopped_pipe_sends_nothing_until_it_is_started(profile: &str) {
    let mut lab = Lab::new(profile);
    let files: BTreeMap<String, String> = (0..5)
        .map(|i| {
            let rel = format!("d/f-{i}.bin");
            (
                rel.clone(),
                make_file(&lab.spool.join(&rel), 20_000 * i, i as u64),
            )
        })
        .collect();
    lab.start_receiver();
    let config = Config::load(&lab.sender_config()).expect("valid config");
    let ids = Arc::new(IdSource::open(&config.state_dir).expect("ids"));
    let pc = config.pipes[0].clone();
    let stats = Arc::new(PipeStats::default());
    let source = crate::source::build(&pc, stats.clone());
    let mut pipe = Pipe::new(pc, source, ids.clone(), stats).expect("pipe");
    let handle = pipe.handle();
    handle.pause();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _in_rt = rt.enter();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = StopOnDrop(stop_tx);
    let rx = pipe.start_source().expect("source");
    let task = super::start(pipe, "plant-a", ids.session(), rx, stop_rx);

    std::thread::sleep(Duration::from_secs(2));
    let st = handle.status();
    assert!(!st.running);
    assert_eq!(st.queued_objects, 5, "{st:?}");
    assert_eq!(
        count_files(&lab.dest),
        0,
        "a stopped pipe sent:\n{}",
        lab.diagnostics()
    );
    assert_eq!(count_files(&lab.spool), 5);

    handle.resume();
    lab.wait_for_tree(&files, Duration::from_secs(30));
    let st = handle.status();
    assert_eq!(st.delivered_objects, 5);
    assert!(st.last_delivery.is_some());
    drop(stop);
    rt.block_on(task).expect("link task");
}

#[test]
fn a_stopped_tcp_pipe_sends_nothing_until_it_is_started() {
    a_stopped_pipe_sends_nothing_until_it_is_started("loopback");
}

#[test]
fn a_stopped_udp_pipe_sends_nothing_until_it_is_started() {
    a_stopped_pipe_sends_nothing_until_it_is_started("udp-loopback");
}
