//! PostgreSQL tables under faults (issue 20), real clusters and real daemons (see tables.rs):
//!
//! - An incremental table written by concurrent writers for 30 s (some transactions held
//!   open a second, so rows commit late with watermark values below rows already read),
//!   while the sender and the receiver are each killed with -9 and restarted, the gate is
//!   cut and swallows a few reply bytes: the tables end identical, each batch applied once.
//! - The target cluster stopped for 20 s mid-run: the receiver's pipe shows ERROR (or its log
//!   says why) meanwhile; nothing is lost.
//! - A column added at the source appears on the target; a dropped one stops the pipe with an
//!   ERROR naming table and column, nothing is applied wrongly, and everything arrives once
//!   the operator dropped it on the target too.

use std::time::{Duration, Instant};

use gapsync_tests::TableLab;
use gapsync_tests::table_lab::{EVENTS, PIPE, TARGET_DB, Writers, duplicates};

/// The incremental table as the sender's config names it.
fn events_table() -> String {
    "[[pipe.source.table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\nkey = [\"id\"]\n"
        .into()
}

/// Asserts that no object was applied twice (by the receiver's `applied` lines) and that
/// every applied one is recorded in gapsync.applied.
fn assert_applied_once(lab: &TableLab) {
    let ids = lab.applied_ids();
    assert!(
        !ids.is_empty(),
        "some objects were applied\n{}",
        lab.diagnostics()
    );
    let dup = duplicates(&ids);
    assert!(
        dup.is_empty(),
        "objects applied more than once: {dup:?}\n{}",
        lab.diagnostics()
    );
    let recorded = lab.applied_table();
    let missing: Vec<&String> = ids.iter().filter(|i| !recorded.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "applied but not in gapsync.applied: {missing:?}"
    );
    assert!(
        ids.iter()
            .all(|i| i.starts_with("incremental:public.events:")),
        "incremental objects of public.events: {ids:?}"
    );
}

#[test]
fn incremental_with_concurrent_writers_survives_kills_and_cuts() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.tables = events_table();
    lab.source_extra = "poll_interval = \"300ms\"\nbatch_rows = 2000\n".into();
    // The gate also swallows a few reply bytes (and cuts the connection there): the sender
    // sends again what the receiver may already have applied.
    lab.sim_extra = ["3", "25", "60", "110"]
        .iter()
        .flat_map(|n| ["--drop-ack".to_owned(), (*n).to_owned()])
        .collect();
    lab.start_all();
    let writers = Writers::start(&lab.source.conninfo(gapsync_tests::table_lab::SOURCE_DB), 4);
    let start = Instant::now();
    let at = |s: u64| {
        let t = Duration::from_secs(s);
        if let Some(left) = t.checked_sub(start.elapsed()) {
            std::thread::sleep(left);
        }
    };
    lab.wait_for(
        "the first rows on the target",
        Duration::from_secs(30),
        || {
            lab.target.table_exists(TARGET_DB, "public.events")
                && lab.target.row_count(TARGET_DB, "public.events") > 0
        },
    );
    at(6);
    lab.kill_sender();
    std::thread::sleep(Duration::from_millis(700));
    lab.start_sender();
    at(13);
    lab.kill_receiver();
    std::thread::sleep(Duration::from_millis(700));
    lab.start_receiver();
    at(20);
    lab.cut_gate(Duration::from_millis(700));
    at(25);
    lab.kill_sender();
    lab.start_sender();
    at(30);
    let rows = writers.finish();
    assert!(rows > 1000, "the writers inserted {rows} rows");
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(120));
    assert_eq!(
        lab.target.row_count(TARGET_DB, "public.events"),
        i64::try_from(rows).expect("rows"),
        "every row the writers committed"
    );
    assert_applied_once(&lab);
    let stats = std::fs::read_to_string(lab.path("sim.stats")).unwrap_or_default();
    assert!(
        !stats.contains("dropped_acks=0") && stats.contains("dropped_acks="),
        "the (restarted) gate swallowed reply bytes:\n{stats}"
    );
}

#[test]
fn the_target_cluster_down_for_20_s_loses_nothing() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.tables = events_table();
    lab.start_all();
    let writers = Writers::start(&lab.source.conninfo(gapsync_tests::table_lab::SOURCE_DB), 2);
    lab.wait_for(
        "the first rows on the target",
        Duration::from_secs(30),
        || {
            lab.target.table_exists(TARGET_DB, "public.events")
                && lab.target.row_count(TARGET_DB, "public.events") > 0
        },
    );
    lab.target.stop();
    let down = Instant::now();
    let mut states = Vec::new();
    while down.elapsed() < Duration::from_secs(20) {
        if let Some(row) = lab.receiver_row() {
            let s = format!(
                "{} ({})",
                row["state"].as_str().unwrap_or("?"),
                row["last_error"]
            );
            if states.last() != Some(&s) {
                states.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log_while_down = lab.receiver_log();
    eprintln!("the receiver's pipe while the target was down: {states:?}");
    lab.target.start_again();
    std::thread::sleep(Duration::from_secs(3));
    let rows = writers.finish();
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(90));
    assert_eq!(
        lab.target.row_count(TARGET_DB, "public.events"),
        i64::try_from(rows).expect("rows"),
        "every row the writers committed"
    );
    let logged_why = log_while_down
        .lines()
        .any(|l| l.contains(" ERROR ") && l.contains(PIPE));
    assert!(
        states.iter().any(|s| s.starts_with("ERROR ")) || logged_why,
        "while the target was down the receiver's pipe said ERROR (states seen: {states:?}) or logged why at ERROR:\n{}",
        lab.diagnostics()
    );
    assert_applied_once(&lab);
    lab.wait_for(
        "the pipe out of ERROR once the target is back",
        Duration::from_secs(30),
        || lab.receiver_row().is_some_and(|r| r["state"] != "ERROR"),
    );
}

#[test]
fn an_added_column_appears_and_a_dropped_one_stops_the_pipe_until_fixed() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.tables = events_table();
    lab.start_all();
    let insert = |lab: &TableLab, n: u32, cols: &str, vals: &str| {
        lab.src(&format!(
            "INSERT INTO public.events (writer, {cols}) SELECT g, {vals} FROM generate_series(1, {n}) g"
        ));
    };
    insert(&lab, 10, "payload", "'before ' || g");
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));

    lab.src("ALTER TABLE public.events ADD COLUMN extra numeric");
    insert(&lab, 10, "payload, extra", "'added ' || g, g * 1.5");
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
    assert_eq!(
        lab.dst("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.events'::regclass AND attname = 'extra'"),
        "numeric",
        "the added column is on the target"
    );

    lab.src("ALTER TABLE public.events DROP COLUMN payload");
    insert(&lab, 10, "extra", "g");
    let mut log = String::new();
    lab.wait_for(
        "an ERROR naming public.events and payload in the receiver's log",
        Duration::from_secs(60),
        || {
            log = lab.receiver_log();
            log.lines()
                .any(|l| l.contains(" ERROR ") && l.contains("events") && l.contains("payload"))
        },
    );
    let row = lab.receiver_row();
    assert!(
        row.as_ref().is_some_and(|r| r["state"] == "ERROR"
            && r["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("payload"))),
        "the receiver's pipe is in ERROR with the message naming the column: {row:?}\n{}",
        lab.diagnostics()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        lab.target.row_count(TARGET_DB, "public.events"),
        20,
        "nothing of the incompatible batch is applied\n{}",
        lab.diagnostics()
    );

    // The operator drops the column on the target too: everything arrives by itself.
    lab.dst("ALTER TABLE public.events DROP COLUMN payload");
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
    assert_eq!(lab.target.row_count(TARGET_DB, "public.events"), 30);
    lab.wait_for("the pipe out of ERROR", Duration::from_secs(30), || {
        lab.receiver_row().is_some_and(|r| r["state"] != "ERROR")
    });
    assert_applied_once(&lab);
}
