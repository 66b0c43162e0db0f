//! `gapsync-demo --tables`: the table job on loopback. Two PostgreSQL clusters of its own
//! (source database `plant`, target database `mirror`), filled with pgbench's tables, an
//! `events` table written to by two clients for a few seconds and a table partitioned by day;
//! the real receiver (postgres sink), the gate simulator and the sender (postgres source) move
//! them through the given profile; then a summary compares an ordered md5 of every row of
//! every table on both sides.

use std::time::{Duration, Instant};

use gapsync_tests::pg::{PG_BINDIR_SEARCH, find_pg_bindir};
use gapsync_tests::table_lab::{EVENTS, SOURCE_DB, TARGET_DB, Writers};
use gapsync_tests::{TableLab, count_lines};

/// pgbench's scale: 200,000 accounts.
const PGBENCH_SCALE: u32 = 2;
/// How long the writers insert into `public.events` after the pipe started.
const WRITE_FOR: Duration = Duration::from_secs(5);
/// Daily partitions: days 0..CLOSED_DAYS are closed (ended at least a day ago), the last two
/// (yesterday and today) are still open and wait.
const CLOSED_DAYS: u32 = 7;

/// A table partitioned by day, 24 rows per day, from 8 days ago (UTC midnight) to tomorrow.
const MEASUREMENTS: &str = r"
CREATE TABLE public.measurements (id bigint NOT NULL, ts timestamptz NOT NULL, v double precision, note text)
  PARTITION BY RANGE (ts);
DO $$
DECLARE base timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '8 days';
BEGIN
  FOR k IN 0..8 LOOP
    EXECUTE format('CREATE TABLE public.measurements_d%s PARTITION OF public.measurements FOR VALUES FROM (%L) TO (%L)',
      k, base + k * interval '1 day', base + (k + 1) * interval '1 day');
  END LOOP;
  INSERT INTO public.measurements
    SELECT k * 10000 + m, base + k * interval '1 day' + m * interval '1 minute', k + m / 1000.0, 'day ' || k || ' minute ' || m
    FROM generate_series(0, 8) k, generate_series(0, 1439, 5) m;
END $$;
";

/// The sender's `[[pipe.source.table]]` list.
const TABLES: &str = r#"
[[pipe.source.table]]
name = "public.pgbench_accounts"
mode = "snapshot"
[[pipe.source.table]]
name = "public.pgbench_branches"
mode = "snapshot"
[[pipe.source.table]]
name = "public.pgbench_tellers"
mode = "snapshot"
[[pipe.source.table]]
name = "public.pgbench_history"
mode = "snapshot"
[[pipe.source.table]]
name = "public.events"
mode = "incremental"
watermark = "ts"
[[pipe.source.table]]
name = "public.measurements"
mode = "partitions"
closed_after = "1d"
"#;

/// The tables compared, with the order of their digest: `(table, order by, mode)`.
fn compared() -> Vec<(String, &'static str, &'static str)> {
    let mut t: Vec<(String, &'static str, &'static str)> = vec![
        ("public.pgbench_accounts".into(), "aid", "snapshot"),
        ("public.pgbench_branches".into(), "bid", "snapshot"),
        ("public.pgbench_tellers".into(), "tid", "snapshot"),
        (
            "public.pgbench_history".into(),
            "tid, bid, aid, mtime, delta",
            "snapshot",
        ),
        ("public.events".into(), "id", "incremental"),
    ];
    t.extend((0..CLOSED_DAYS).map(|k| (format!("public.measurements_d{k}"), "id", "partition")));
    t
}

/// `(table, order by)` of `(table, order by, mode)`.
fn pairs<'a>(v: &[(&'a str, &'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(t, o, _)| (*t, *o)).collect()
}

/// Exits with how to install PostgreSQL when its binaries (pgbench included) are missing.
pub fn require_postgres() {
    let found = find_pg_bindir();
    if found.as_ref().is_some_and(|d| d.join("pgbench").exists()) {
        return;
    }
    eprintln!(
        "gapsync-demo --tables: PostgreSQL is not installed: no initdb, pg_ctl, postgres, psql and \
         pgbench found under {PG_BINDIR_SEARCH}{}.\n\n\
         Install it, then run the demo again:\n\
         \x20 Debian/Ubuntu:  sudo apt-get install postgresql   (the binaries land in /usr/lib/postgresql/<version>/bin)\n\
         \x20 Fedora/RHEL:    sudo dnf install postgresql-server postgresql-contrib   (puts them on the PATH)\n\
         \x20 elsewhere:      install the PostgreSQL server (10 or later) and put its bin folder on the PATH\n\n\
         The demo starts two clusters of its own in /tmp (as user nobody when run as root); it needs no \
         running PostgreSQL service.",
        found.map_or(String::new(), |d| format!(
            " (pgbench is missing in {})",
            d.display()
        ))
    );
    std::process::exit(2);
}

/// The whole table demo; `keep`: leave the lab folder (configs, logs) in place.
pub fn run(profile: &str, keep: bool) {
    println!("gapsync demo --tables: starting two PostgreSQL clusters (source and target)...");
    let mut lab = TableLab::new(profile);
    lab.root.disable_cleanup(true);
    println!(
        "gapsync demo --tables: source on port {} (database {SOURCE_DB}), target on port {} (database {TARGET_DB}); \
         filling the source (pgbench -i -s {PGBENCH_SCALE}, events, measurements by day)...",
        lab.source.port, lab.target.port
    );
    fill_source(&lab);
    lab.tables = TABLES.to_owned();
    println!("gapsync demo --tables: starting the receiver, the gate simulator and the sender...");
    lab.start_receiver();
    lab.start_sim();
    let start = Instant::now();
    lab.start_sender();
    println!(
        "gapsync demo --tables: receiver on {}, gate simulator on {}, sender started (profile {profile}); \
         2 clients insert into public.events for {} s meanwhile...",
        lab.receiver_addr.map(|a| a.to_string()).unwrap_or_default(),
        lab.sim_addr.map(|a| a.to_string()).unwrap_or_default(),
        WRITE_FOR.as_secs()
    );
    let writers = Writers::start(&lab.source.conninfo(SOURCE_DB), 2);
    let tables = compared();
    let (bulk, events): (Vec<_>, Vec<_>) = tables
        .iter()
        .map(|(t, o, m)| (t.as_str(), *o, *m))
        .partition(|(_, _, m)| *m != "incremental");
    lab.wait_equal(&pairs(&bulk), Duration::from_secs(600));
    let bulk_secs = start.elapsed().as_secs_f64();
    println!(
        "gapsync demo --tables: the snapshots and the closed partitions are equal on the target after {bulk_secs:.1} s; \
         the clients go on writing..."
    );
    std::thread::sleep(WRITE_FOR.saturating_sub(start.elapsed()));
    let written = writers.finish();
    let stopped = Instant::now();
    println!(
        "gapsync demo --tables: the clients wrote {written} events and stopped; waiting for the last ones..."
    );
    lab.wait_equal(&pairs(&events), Duration::from_secs(120));
    let lag = stopped.elapsed().as_secs_f64();
    let ok = summary(&lab, &tables, bulk_secs, lag);
    finish(lab, keep, ok);
}

/// pgbench's tables (with 1,000 history rows), public.events with 1,000 rows, and the
/// partitioned public.measurements.
fn fill_source(lab: &TableLab) {
    lab.source.pgbench_init(SOURCE_DB, PGBENCH_SCALE);
    lab.src(
        "INSERT INTO pgbench_history SELECT 1 + g % 20, 1 + g % 2, g, g - 500, now() - g * interval '1 s' \
         FROM generate_series(1, 1000) g",
    );
    lab.src(EVENTS);
    lab.src(
        "INSERT INTO public.events (writer, payload) SELECT -1, 'before the start ' || g FROM generate_series(1, 1000) g",
    );
    lab.src(MEASUREMENTS);
}

/// Prints the per-table comparison and the totals; true when every table is equal, every
/// object was applied once and the gate saw no violation. `bulk_secs`: from the sender's
/// start until the snapshot and partition tables were equal; `lag`: from the writers' stop
/// until the events were.
fn summary(lab: &TableLab, tables: &[(String, &str, &str)], bulk_secs: f64, lag: f64) -> bool {
    println!();
    println!(
        "  {:<30} {:>11} {:>9} {:>9}  {:<32} equal",
        "table", "mode", "source", "target", "md5 of every row, ordered"
    );
    let (mut all_equal, mut bulk_rows, mut event_rows) = (true, 0i64, 0i64);
    for (t, order, mode) in tables {
        let (s, d) = (
            lab.source.table_digest(SOURCE_DB, t, order),
            lab.target.table_digest(TARGET_DB, t, order),
        );
        let (sn, dn) = (
            lab.source.row_count(SOURCE_DB, t),
            lab.target.row_count(TARGET_DB, t),
        );
        let equal = s == d && sn == dn;
        all_equal &= equal;
        *(if *mode == "incremental" {
            &mut event_rows
        } else {
            &mut bulk_rows
        }) += dn;
        println!(
            "  {t:<30} {mode:>11} {sn:>9} {dn:>9}  {d:<32} {}",
            if equal { "OK" } else { "DIFFERENT" }
        );
    }
    let parts = "SELECT count(*) || ' parts' FROM pg_inherits WHERE inhparent = 'public.measurements'::regclass";
    println!(
        "  {:<30} {:>11} {:>9} {:>9}  (yesterday's and today's partitions are open: not sent yet)",
        "public.measurements (parent)",
        "partitions",
        lab.src(parts),
        lab.dst(parts)
    );
    println!();
    println!(
        "  rows       {bulk_rows} snapshot and partition rows in {bulk_secs:.1} s = {:.0} rows/s \
         (from the sender's start until equal)",
        bulk_rows as f64 / bulk_secs
    );
    println!(
        "  events     {event_rows} rows, the last ones equal on the target {lag:.1} s after the writers stopped"
    );
    totals(lab) && all_equal
}

/// The objects and gate lines; true when each object was applied exactly once and the gate
/// saw no violation.
fn totals(lab: &TableLab) -> bool {
    let recorded = lab.applied_table();
    let applied = lab.applied_ids();
    let once = gapsync_tests::table_lab::duplicates(&applied).is_empty()
        && applied.len() == recorded.len();
    let stats = std::fs::read_to_string(lab.path("sim.stats")).unwrap_or_default();
    let stat = |k: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    println!(
        "  objects    {} applied, {} ({} rows in gapsync.applied, {} `applied` log lines, {} `already applied`)",
        recorded.len(),
        if once { "each once" } else { "NOT each once" },
        recorded.len(),
        applied.len(),
        count_lines(&lab.receiver_log(), &["already applied"])
    );
    println!(
        "  gate       {} frames, {:.1} MB forwarded, {} reply bytes back, {} violations of the one-byte rule",
        stat("frames"),
        stat("forward_bytes") as f64 / 1e6,
        stat("reverse_bytes"),
        stat("violations")
    );
    once && stat("violations") == 0
}

/// Stops the daemons and both clusters, then removes the lab folder or says where it is.
fn finish(mut lab: TableLab, keep: bool, ok: bool) {
    for p in [lab.sender.as_mut(), lab.receiver.as_mut()]
        .into_iter()
        .flatten()
    {
        p.term();
    }
    let root = lab.root.path().to_path_buf();
    // Stops the clusters (their folders go with them); the lab folder stays (cleanup disabled).
    drop(lab);
    if keep || !ok {
        println!("  configs    {}/sender.toml, receiver.toml", root.display());
        println!(
            "  logs       {}/rlogs/, {}/slogs/",
            root.display(),
            root.display()
        );
        println!(
            "  try        grep ' applied ' {}/rlogs/*.log | head",
            root.display()
        );
        println!(
            "  remove it  rm -rf {}   (both clusters are stopped and removed already)",
            root.display()
        );
    } else {
        if let Err(e) = std::fs::remove_dir_all(&root) {
            eprintln!("gapsync demo: cannot remove {}: {e}", root.display());
        }
        println!(
            "  cleaned    removed {} and both clusters (run with --keep to look at the configs and logs)",
            root.display()
        );
    }
    if !ok {
        eprintln!("gapsync demo --tables: FAILED (the folder above is kept; see its logs)");
        std::process::exit(1);
    }
    println!("\ngapsync demo --tables: OK");
}
