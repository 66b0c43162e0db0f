//! The postgres source's limits (issue 20, refine), real clusters and real daemons:
//!
//! - `max_pending`: with the gate down, incremental reading pauses once the spill files not
//!   yet sent reach it (one WARN naming the pipe and the figure, shown in the pipe's status),
//!   and resumes (one INFO) once the gate is back and they were sent; no row is lost.
//! - `pipe stop`: incremental reading pauses and the source keeps no session in the
//!   database; `pipe start` resumes it and the rows written meanwhile arrive.
//! - A snapshot run skips a table whose previous snapshot is still queued (one INFO); the
//!   queued one goes when the gate is back, and the next run reads the table again.
//! - `reload` asks the database what check-config asks: a changed pipe naming a missing
//!   table is refused with check-config's message, the running config kept.

use std::path::PathBuf;
use std::time::Duration;

use gapsync_tests::TableLab;
use gapsync_tests::table_lab::{EVENTS, PIPE, SOURCE_DB, TARGET_DB};

fn events_table() -> String {
    "[[pipe.source.table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\nkey = [\"id\"]\n"
        .into()
}

/// The sender's spill folder of the pipe.
fn spill_dir(lab: &TableLab) -> PathBuf {
    lab.path("sstate").join("sender").join(PIPE).join("tables")
}

/// The spill files (not the temporary ones) under the pipe's spill folder: (key, bytes).
fn spill_files(lab: &TableLab) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(tables) = std::fs::read_dir(spill_dir(lab)) else {
        return out;
    };
    for t in tables.flatten() {
        for f in std::fs::read_dir(t.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                let len = f.metadata().map_or(0, |m| m.len());
                out.push((format!("{}/{name}", t.file_name().to_string_lossy()), len));
            }
        }
    }
    out.sort();
    out
}

fn insert_events(lab: &TableLab, n: u32) {
    lab.src(&format!(
        "INSERT INTO public.events (writer, payload) SELECT 1, repeat('x', 200) || g FROM generate_series(1, {n}) g"
    ));
}

fn kill_sim(lab: &mut TableLab) {
    if let Some(mut s) = lab.sim.take() {
        s.kill9();
    }
}

#[test]
fn incremental_reading_pauses_at_max_pending_and_resumes_once_sent() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.tables = events_table();
    // About 230 bytes a row: a batch of 20 rows is about 5 kB.
    lab.source_extra =
        "poll_interval = \"100ms\"\nbatch_rows = 20\nmax_pending = \"20kB\"\n".into();
    lab.start_all();
    insert_events(&lab, 5);
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(30));
    // The gate goes down: nothing is sent, spill files stay.
    kill_sim(&mut lab);
    insert_events(&lab, 1000);
    lab.wait_for("the max_pending WARN", Duration::from_secs(30), || {
        lab.sender_log().contains("incremental reading paused")
    });
    // Reading stays paused: a few more polls, and the spill files stay near the limit.
    std::thread::sleep(Duration::from_secs(2));
    let pending: u64 = spill_files(&lab).iter().map(|(_, n)| n).sum();
    assert!(
        (20_000..20_000 + 10_000).contains(&pending),
        "spill files not yet sent: {pending} bytes, max_pending 20000 (+ a batch)\n{:?}",
        spill_files(&lab)
    );
    let log = lab.sender_log();
    let warn = log
        .lines()
        .find(|l| l.contains("incremental reading paused"))
        .expect("the WARN line");
    assert!(
        warn.contains("WARN") && warn.contains(PIPE) && warn.contains("max_pending=20000"),
        "{warn}"
    );
    let (code, out) = lab.sender_ctl(&["pipes"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: incremental reading paused"),
        "pipes: {out}"
    );
    assert!(
        lab.source.row_count(SOURCE_DB, "public.events")
            > lab.target.row_count(TARGET_DB, "public.events"),
        "rows are waiting"
    );
    // The gate is back: everything arrives, reading resumed once, paused once.
    lab.start_sim();
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
    let log = lab.sender_log();
    assert_eq!(
        log.matches("incremental reading paused").count(),
        log.matches("incremental reading resumed").count(),
        "{log}"
    );
    assert!(log.contains("incremental reading resumed"), "{log}");
    lab.wait_for("the spill folder empty", Duration::from_secs(20), || {
        spill_files(&lab).is_empty()
    });
}

#[test]
fn a_stopped_pipe_reads_nothing_and_keeps_no_session() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.src("CREATE TABLE public.assets (id int PRIMARY KEY); INSERT INTO public.assets VALUES (1), (2)");
    // A snapshot table too: its run's session must not stay either.
    lab.tables =
        events_table() + "[[pipe.source.table]]\nname = \"public.assets\"\nmode = \"snapshot\"\n";
    lab.start_all();
    insert_events(&lab, 10);
    lab.wait_equal(
        &[("public.events", "id"), ("public.assets", "id")],
        Duration::from_secs(30),
    );
    let (code, out) = lab.sender_ctl(&["pipe", "stop", PIPE]);
    assert_eq!(code, Some(0), "{out}");
    lab.wait_for(
        "the paused line of a stopped pipe",
        Duration::from_secs(10),
        || {
            lab.sender_log()
                .contains("incremental reading paused: the pipe is stopped")
        },
    );
    let ready = |lab: &TableLab| lab.sender_log().matches("table object ready").count();
    let before = ready(&lab);
    insert_events(&lab, 50);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ready(&lab), before, "no batch read while stopped");
    assert!(spill_files(&lab).is_empty(), "{:?}", spill_files(&lab));
    let sessions =
        lab.src("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gapsync-sender'");
    assert_eq!(sessions.trim(), "0", "the source's sessions while stopped");
    let (code, out) = lab.sender_ctl(&["pipe", "start", PIPE]);
    assert_eq!(code, Some(0), "{out}");
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(30));
    assert!(lab.sender_log().contains("incremental reading resumed"));
}

#[test]
fn a_run_skips_a_table_whose_previous_snapshot_is_still_queued() {
    let mut lab = TableLab::new("loopback");
    lab.src("CREATE TABLE public.assets (id int PRIMARY KEY, v text); INSERT INTO public.assets SELECT g, 'a' FROM generate_series(1, 100) g");
    lab.tables = "[[pipe.source.table]]\nname = \"public.assets\"\nmode = \"snapshot\"\n".into();
    lab.start_all();
    lab.wait_equal(&[("public.assets", "id")], Duration::from_secs(30));
    kill_sim(&mut lab);
    lab.src("UPDATE public.assets SET v = 'b'");
    lab.trigger_run();
    lab.wait_for("snapshot 2 spilled", Duration::from_secs(20), || {
        spill_files(&lab)
            .iter()
            .any(|(k, _)| k.ends_with("snapshot-000000000002.gst"))
    });
    lab.src("UPDATE public.assets SET v = 'c'");
    lab.trigger_run();
    lab.wait_for("the skip line", Duration::from_secs(20), || {
        lab.sender_log()
            .contains("its previous snapshot is not sent yet")
    });
    let files = spill_files(&lab);
    assert_eq!(
        files.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["public.assets/snapshot-000000000002.gst"],
        "only the queued snapshot"
    );
    // The gate is back: the queued (older) snapshot goes; the next run reads again.
    lab.start_sim();
    lab.wait_for("snapshot 2 applied", Duration::from_secs(30), || {
        lab.applied_ids()
            .iter()
            .any(|i| i.starts_with("snapshot:public.assets:") && i.ends_with(":2"))
    });
    lab.wait_for("the spill folder empty", Duration::from_secs(20), || {
        spill_files(&lab).is_empty()
    });
    assert_eq!(lab.dst("SELECT DISTINCT v FROM public.assets").trim(), "b");
    lab.trigger_run();
    lab.wait_equal(&[("public.assets", "id")], Duration::from_secs(30));
    assert_eq!(
        lab.applied_ids()
            .iter()
            .filter(|i| i.starts_with("snapshot:"))
            .count(),
        3,
        "{:?}",
        lab.applied_ids()
    );
}

#[test]
fn a_reload_naming_a_missing_table_is_refused_like_check_config() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.tables = events_table();
    lab.start_all();
    insert_events(&lab, 3);
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(30));
    lab.tables
        .push_str("[[pipe.source.table]]\nname = \"public.nosuch\"\nmode = \"snapshot\"\n");
    lab.sender_config();
    let (code, checked) = lab.sender_ctl(&["check-config"]);
    assert_ne!(code, Some(0), "{checked}");
    let problem = checked
        .lines()
        .find(|l| l.contains("public.nosuch"))
        .expect("check-config names the table")
        .trim()
        .to_owned();
    let (code, out) = lab.sender_ctl(&["reload"]);
    assert_ne!(code, Some(0), "reload: {out}");
    assert!(out.contains("reload refused"), "{out}");
    let tail = problem.split("pipe plant-db").nth(1).unwrap_or(&problem);
    assert!(
        out.contains(tail),
        "reload says {out:?}, check-config said {problem:?}"
    );
    // The running pipe goes on.
    insert_events(&lab, 3);
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(30));
    assert!(
        !lab.sender_log().contains("config reloaded"),
        "{}",
        lab.sender_log()
    );
}
