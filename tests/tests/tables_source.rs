//! The postgres source's repairs (issue 20, review), on real clusters and real daemons (see
//! tables.rs):
//!
//! - A synced partition that changes moves again with `resync_changed = true`, with its new
//!   row; a table that fails in a run does not hold back the others; object ids carry the
//!   state's epoch.
//! - tables.json lost: the tables are read afresh under a new epoch and the receiver applies
//!   the new objects (it does not take them for ones already applied).
//! - check-config refuses a watermark from a sequence with CACHE > 1 and warns of a
//!   `timestamp without time zone` watermark in a time zone with daylight saving time.
//! - The sender starts while the source database is down, and reads once it is up.
//! - The first incremental batch keeps to `batch_bytes` (sized from the table's statistics).
//! - A prepared transaction (its session gone) holds the incremental batch until it is
//!   committed: its row, below the rows committed after it, is not skipped.

use std::time::Duration;

use gapsync_tests::TableLab;
use gapsync_tests::table_lab::{EVENTS, PIPE, TARGET_DB};

/// `[[pipe.source.table]]` TOML of `(name, mode, extra keys)`.
fn tables(list: &[(&str, &str, &str)]) -> String {
    list.iter()
        .map(|(name, mode, extra)| {
            format!("[[pipe.source.table]]\nname = {name:?}\nmode = {mode:?}\n{extra}\n")
        })
        .collect()
}

/// Whether `id` is `<kind>:<table>:<16 hex>:<rest>`; the epoch.
fn epoch_of(id: &str) -> Option<String> {
    let parts: Vec<&str> = id.split(':').collect();
    let [_, _, epoch, rest] = parts.as_slice() else {
        return None;
    };
    let hex = epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && !rest.is_empty()).then(|| (*epoch).to_owned())
}

#[test]
fn a_changed_partition_moves_with_its_new_row_and_a_failing_table_holds_back_no_other() {
    let mut lab = TableLab::new("loopback");
    lab.src(
        "CREATE TABLE public.m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE public.m_a PARTITION OF public.m FOR VALUES FROM (0) TO (100);
         CREATE TABLE public.m_b PARTITION OF public.m FOR VALUES FROM (100) TO (200);
         INSERT INTO public.m SELECT g, 'row ' || g FROM generate_series(0, 199, 3) g;
         CREATE TABLE public.a (id int PRIMARY KEY, v text);
         INSERT INTO public.a SELECT g, 'a' || g FROM generate_series(1, 50) g;
         CREATE TABLE public.b (id int PRIMARY KEY);
         INSERT INTO public.b VALUES (1);",
    );
    lab.tables = tables(&[
        ("public.m", "partitions", "resync_changed = true\n"),
        ("public.a", "snapshot", ""),
        ("public.b", "snapshot", ""),
    ]);
    lab.start_all();
    let all = [
        ("public.m_a", "id"),
        ("public.m_b", "id"),
        ("public.a", "id"),
        ("public.b", "id"),
    ];
    lab.wait_equal(&all, Duration::from_secs(90));
    let ids = lab.applied_ids();
    assert_eq!(ids.len(), 4, "{ids:?}\n{}", lab.diagnostics());
    let epochs: Vec<Option<String>> = ids.iter().map(|i| epoch_of(i)).collect();
    assert!(
        epochs.iter().all(|e| e.is_some() && *e == epochs[0]),
        "every id carries the same epoch: {ids:?}"
    );
    assert!(
        ids.iter().any(|i| i.starts_with("partition:public.m_a:")),
        "{ids:?}"
    );

    // Table b goes away: its run fails, and must not hold back the others.
    lab.src("DROP TABLE public.b");
    lab.src("INSERT INTO public.m_a VALUES (1, 'late row')");
    lab.src("INSERT INTO public.a VALUES (51, 'a51')");
    lab.trigger_run();
    lab.wait_equal(
        &[
            ("public.m_a", "id"),
            ("public.m_b", "id"),
            ("public.a", "id"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        lab.dst("SELECT v FROM public.m_a WHERE id = 1"),
        "late row",
        "the changed partition arrived with its new row"
    );
    lab.wait_for(
        "the failing table named in the sender's log",
        Duration::from_secs(20),
        || lab.sender_log().contains("table public.b"),
    );
}

#[test]
fn a_lost_state_file_starts_a_new_epoch_and_the_new_rows_are_applied() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.src("INSERT INTO public.events (writer, payload) SELECT 1, 'first ' || g FROM generate_series(1, 100) g");
    lab.tables = "[[pipe.source.table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\n".into();
    lab.start_all();
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
    lab.kill_sender();
    // The host is rebuilt: the sender's state is gone (tables.json and the spill folder).
    let pipe_state = lab.path("sstate").join("sender").join(PIPE);
    std::fs::remove_file(pipe_state.join("tables.json")).expect("tables.json was there");
    let _ = std::fs::remove_dir_all(pipe_state.join("tables"));
    lab.src("INSERT INTO public.events (writer, payload) SELECT 2, 'second ' || g FROM generate_series(1, 50) g");
    lab.start_sender();
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
    assert_eq!(lab.target.row_count(TARGET_DB, "public.events"), 150);
    let ids = lab.applied_ids();
    let epochs: std::collections::BTreeSet<String> =
        ids.iter().filter_map(|i| epoch_of(i)).collect();
    assert_eq!(
        epochs.len(),
        2,
        "two epochs in the applied ids: {ids:?}\n{}",
        lab.diagnostics()
    );
}

#[test]
fn check_config_refuses_a_cached_sequence_and_warns_of_a_dst_timestamp() {
    let mut lab = TableLab::new("loopback");
    lab.src(
        "CREATE TABLE public.seq_t (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 20) PRIMARY KEY, v text);
         CREATE TABLE public.local_t (id bigserial PRIMARY KEY, ts timestamp NOT NULL DEFAULT now());
         ALTER DATABASE plant SET timezone = 'Europe/Berlin';",
    );
    lab.tables = tables(&[
        ("public.seq_t", "incremental", "watermark = \"id\"\n"),
        ("public.local_t", "incremental", "watermark = \"ts\"\n"),
    ]);
    lab.sender_config();
    let (code, out) = lab.sender_ctl(&["check-config"]);
    assert_ne!(code, Some(0), "refused: {out}");
    assert!(
        out.contains("table public.seq_t") && out.contains("CACHE 20"),
        "names the table and the cache: {out}"
    );
    assert!(out.contains("ALTER SEQUENCE"), "says what to run: {out}");
    assert!(
        out.contains("public.local_t") && out.contains("timestamptz"),
        "warns of the timestamp without time zone: {out}"
    );
    assert!(out.contains("Europe/Berlin"), "names the time zone: {out}");

    lab.src("ALTER TABLE public.seq_t ALTER COLUMN id SET CACHE 1");
    let (code, out) = lab.sender_ctl(&["check-config"]);
    assert_eq!(code, Some(0), "accepted once the cache is 1: {out}");
    assert!(out.contains("warning:"), "still warns: {out}");
}

#[test]
fn the_sender_starts_while_the_database_is_down_and_reads_once_it_is_up() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.src("INSERT INTO public.events (writer, payload) SELECT 1, 'p' || g FROM generate_series(1, 30) g");
    lab.tables = "[[pipe.source.table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\n".into();
    lab.sender_config();
    lab.source.stop();
    let (code, out) = lab.sender_ctl(&["check-config"]);
    assert_ne!(code, Some(0), "check-config still reports it: {out}");
    assert!(out.contains("cannot connect to the database"), "{out}");
    lab.start_all();
    lab.wait_for(
        "the sender's warning that the database does not answer",
        Duration::from_secs(20),
        || lab.sender_log().contains("does not answer yet"),
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.assert_daemons_alive();
    lab.source.start_again();
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
}

#[test]
fn the_first_incremental_batch_keeps_to_batch_bytes() {
    let mut lab = TableLab::new("loopback");
    lab.src(EVENTS);
    lab.src(
        "INSERT INTO public.events (writer, payload) SELECT 1, repeat('x', 1000) FROM generate_series(1, 2000);
         ANALYZE public.events;",
    );
    lab.tables = "[[pipe.source.table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\n".into();
    lab.source_extra = "poll_interval = \"200ms\"\nbatch_bytes = \"200kB\"\n".into();
    lab.start_all();
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(90));
    let first = lab.dst("SELECT rows FROM gapsync.applied ORDER BY batch LIMIT 1");
    let rows: i64 = first.trim().parse().expect("a row count");
    // About 1 kB a row: 200 rows fit; without an estimate the first batch took all 2000.
    assert!(
        (50..=400).contains(&rows),
        "the first batch has {rows} rows\n{}",
        lab.dst("SELECT object, rows FROM gapsync.applied ORDER BY batch")
    );
}

#[test]
fn a_prepared_transaction_holds_the_batch_until_it_is_committed() {
    let mut lab = TableLab::new("loopback");
    lab.src("ALTER SYSTEM SET max_prepared_transactions = 5");
    lab.source.stop();
    lab.source.start_again();
    lab.src(EVENTS);
    lab.src("INSERT INTO public.events (writer, payload) SELECT 1, 'before' FROM generate_series(1, 10)");
    lab.tables = "[[pipe.source.table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\n".into();
    lab.start_all();
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
    // A row gets its watermark, its transaction is prepared (its session gone), and rows
    // committed after it pass its value.
    lab.src(
        "BEGIN; INSERT INTO public.events (writer, payload) VALUES (9, 'prepared'); PREPARE TRANSACTION 'p1';",
    );
    lab.src(
        "INSERT INTO public.events (writer, payload) SELECT 2, 'after' FROM generate_series(1, 10)",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.dst("SELECT count(*) FROM public.events WHERE payload = 'after'"),
        "0",
        "the batch waits for the prepared transaction\n{}",
        lab.diagnostics()
    );
    lab.src("COMMIT PREPARED 'p1'");
    lab.wait_equal(&[("public.events", "id")], Duration::from_secs(60));
    assert_eq!(
        lab.dst("SELECT count(*) FROM public.events WHERE payload = 'prepared'"),
        "1"
    );
}

/// One incremental table that fails (dropped at the source) rests alone: the next incremental
/// table of the pipe goes on receiving its rows, and the failure is named in the log.
#[test]
fn a_failing_incremental_table_holds_back_no_other_incremental_table() {
    let mut lab = TableLab::new("loopback");
    lab.src(
        "CREATE TABLE public.first (id bigserial PRIMARY KEY, v text);
         INSERT INTO public.first (v) SELECT 'f' || g FROM generate_series(1, 10) g;
         CREATE TABLE public.second (id bigserial PRIMARY KEY, v text);
         INSERT INTO public.second (v) SELECT 's' || g FROM generate_series(1, 10) g;",
    );
    let keyed = "watermark = \"id\"\n";
    lab.tables = tables(&[
        ("public.first", "incremental", keyed),
        ("public.second", "incremental", keyed),
    ]);
    lab.start_all();
    lab.wait_equal(
        &[("public.first", "id"), ("public.second", "id")],
        Duration::from_secs(60),
    );
    // The first table in the list goes away; rows keep coming to the second.
    lab.src("DROP TABLE public.first");
    lab.src("INSERT INTO public.second (v) SELECT 'later' || g FROM generate_series(1, 25) g");
    lab.wait_equal(&[("public.second", "id")], Duration::from_secs(30));
    assert_eq!(lab.dst("SELECT count(*) FROM public.second"), "35");
    lab.wait_for(
        "the failing table named in the sender's log",
        Duration::from_secs(20),
        || lab.sender_log().contains("table public.first"),
    );
}
