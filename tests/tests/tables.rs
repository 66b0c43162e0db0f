//! PostgreSQL tables across the gate (issue 20), on real clusters and real daemons: the source
//! and the target are separate clusters (tests/src/pg.rs), the sender reads the source through
//! its postgres source, the receiver applies into the target through its postgres sink, the
//! gate simulator sits between them. Faults (kills, cuts, the target down, schema changes) are
//! in tables_faults.rs.
//!
//! - pgbench's four tables at scale 10, snapshot through syskeeper-2000: every table's ordered
//!   digest equal on the target, one `gapsync.applied` row per object with its row count.
//! - Every type of the issue (integers, numeric and float with NaN and infinities, Unicode
//!   text, 1 MiB bytea, bool, dates and times, interval, uuid, json, jsonb, arrays, NULLs):
//!   digest equal, and the created table has the source's column types.
//! - A table partitioned by day: closed partitions move once; new closed ones move on `pipe
//!   start` and only they; a changed synced partition moves again only with
//!   `resync_changed = true`.
//! - check-config names the database or table that is wrong.
//! - A table object landed by a directory sink is applied later by `gapsync-receiver load`,
//!   and loading it again applies nothing twice.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gapsync_tests::table_lab::{PIPE, SOURCE_DB, TARGET_DB};
use gapsync_tests::{TableLab, bin, check_config_code, tree_sizes};

/// `(name, mode)` tables as `[[pipe.source.table]]` TOML, with extra keys per table.
fn tables(list: &[(&str, &str, &str)]) -> String {
    list.iter()
        .map(|(name, mode, extra)| {
            format!("[[pipe.source.table]]\nname = {name:?}\nmode = {mode:?}\n{extra}\n")
        })
        .collect()
}

#[test]
fn pgbench_scale_10_snapshot_through_syskeeper_2000_is_identical() {
    let mut lab = TableLab::new("syskeeper-2000");
    lab.source.pgbench_init(SOURCE_DB, 10);
    let pg = [
        ("public.pgbench_accounts", "aid"),
        ("public.pgbench_branches", "bid"),
        ("public.pgbench_tellers", "tid"),
        ("public.pgbench_history", "tid, bid, aid, mtime, delta"),
    ];
    // Some history rows too (pgbench -i leaves the table empty).
    lab.src(
        "INSERT INTO pgbench_history SELECT 1 + g % 100, 1 + g % 10, g, g - 500, now() - g * interval '1 s' FROM generate_series(1, 1000) g",
    );
    lab.tables = tables(&pg.map(|(t, _)| (t, "snapshot", "")));
    lab.start_all();
    lab.wait_equal(&pg, Duration::from_secs(240));

    let applied = lab.dst("SELECT object || ' ' || table_name || ' ' || kind || ' ' || rows FROM gapsync.applied ORDER BY object");
    let lines: Vec<&str> = applied.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "one gapsync.applied row per object:\n{applied}\n{}",
        lab.diagnostics()
    );
    for (t, rows) in [
        ("public.pgbench_accounts", 1_000_000),
        ("public.pgbench_branches", 10),
        ("public.pgbench_history", 1000),
        ("public.pgbench_tellers", 100),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("snapshot:{t}:"))
                    && l.ends_with(&format!(" snapshot {rows}"))),
            "a snapshot row for {t} with {rows} rows in gapsync.applied:\n{applied}"
        );
    }
    let ids = lab.applied_ids();
    assert_eq!(
        ids.len(),
        4,
        "one `applied` line per object: {ids:?}\n{}",
        lab.diagnostics()
    );
    let stats = std::fs::read_to_string(lab.path("sim.stats")).unwrap_or_default();
    assert!(
        stats.contains("violations=0"),
        "the gate saw only one reply byte per frame:\n{stats}"
    );
}

/// Every type of the issue, each column NULL in one row.
const TYPES_TABLE: &str = r#"
CREATE TABLE public.types (
  id int PRIMARY KEY,
  i2 smallint, i4 integer, i8 bigint, num numeric, num_p numeric(20,5),
  f4 real, f8 double precision,
  t text, vc varchar(40), ch char(5),
  b bytea, ok boolean,
  d date, tm time, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, ia integer[], ta text[]
);
INSERT INTO public.types VALUES
 (1, 32767, 2147483647, 9223372036854775807, 123456789012345678901234567890.123456789012345, 12345.67891,
  3.4028235e38, 1.7976931348623157e308,
  'héllo wörld 日本語 中文 Ελληνικά עברית 😀🎉👩‍👩‍👧 e' || U&'\0301' || ' a' || U&'\0308\0323' || E'\ttab\nnewline \\ backslash "quote" ''apos''',
  'Größe', 'ab',
  '\x00ff10207f80fe'::bytea, true,
  '2026-02-28', '23:59:59.999999', '2026-12-03 10:11:12.123456', '2026-12-03 10:11:12.654321+08', '1 year 2 mons 3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": [1, 2.5, "x"], "u": "😀", "dup": 1, "dup": 2}', '{"nested": {"a": null, "b": [true, false]}, "u": "Ünïcödé"}',
  '{1,2,3}', '{"a,b","with \"quote\"",NULL,"😀",""}'),
 (2, -32768, -2147483648, -9223372036854775808, 'NaN', -0.00001,
  'NaN', 'NaN',
  '', '', '',
  ''::bytea, false,
  '4713-01-01 BC', '00:00', '-infinity', 'infinity', '-178000000 years',
  '00000000-0000-0000-0000-000000000000', 'null', '[]', '{{1,2},{3,4}}', '{}'),
 (3, 0, 0, 0, '-0.000000000000000000001', 0,
  '-Infinity', 'Infinity',
  repeat('long text ', 10000), NULL, NULL,
  (SELECT string_agg(decode(md5(g::text), 'hex'), ''::bytea ORDER BY g) FROM generate_series(1, 65536) g), NULL,
  'infinity', '12:00', '1970-01-01 00:00:00', '2000-01-01 00:00:00.000001+00', '-1 days +00:00:00.000001',
  NULL, '{}', '{}', '{NULL,-1}', '{NULL}'),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, 1, 1, 1, 1e-30, 99999999999999.99999, '-Infinity', '-Infinity', 'x', 'x', 'x',
  (SELECT string_agg(decode(md5((g * 7)::text), 'hex'), ''::bytea ORDER BY g) FROM generate_series(1, 65536) g), true,
  '2000-02-29', '00:00:00.000001', '294276-12-31 23:59:59.999999', '1900-01-01 00:00:00+00', '0',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', '"str"', '"str"', NULL, NULL);
"#;

/// `column type` lines of `table` in the database's column order.
fn column_types(c: &gapsync_tests::PgCluster, db: &str, table: &str) -> String {
    c.psql(
        db,
        &format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), E'\\n' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
        ),
    )
}

#[test]
fn every_type_round_trips_exactly() {
    let mut lab = TableLab::new("loopback");
    lab.src(TYPES_TABLE);
    assert_eq!(
        lab.src("SELECT octet_length(b) FROM public.types WHERE id = 3"),
        "1048576",
        "a 1 MiB bytea value"
    );
    lab.tables = tables(&[("public.types", "snapshot", "")]);
    lab.start_all();
    lab.wait_equal(&[("public.types", "id")], Duration::from_secs(90));
    assert_eq!(
        column_types(&lab.target, TARGET_DB, "public.types"),
        column_types(&lab.source, SOURCE_DB, "public.types"),
        "the created table has the source's columns and types"
    );
    // The special values, checked by name as a user would (the digest covers them too).
    let special = "SELECT num::text, f4::text, f8::text, ts::text, tstz::text FROM public.types WHERE id IN (2, 3, 5) ORDER BY id";
    assert_eq!(lab.dst(special), lab.src(special));
    assert_eq!(
        lab.dst("SELECT md5(b) FROM public.types WHERE id = 3"),
        lab.src("SELECT md5(b) FROM public.types WHERE id = 3"),
        "the 1 MiB bytea is exact"
    );
    assert_eq!(
        lab.dst("SELECT count(*) FROM public.types WHERE num_nonnulls(i2, i4, i8, num, num_p, f4, f8, t, vc, ch, b, ok, d, tm, ts, tstz, iv, u, j, jb, ia, ta) = 0"),
        "1",
        "the row of NULLs arrived as NULLs"
    );
}

/// The partitioned table: a day per partition from `base` (today - 30 days, UTC midnight).
const PARTITIONED: &str = r"
CREATE TABLE public.measurements (id bigint NOT NULL, ts timestamptz NOT NULL, v double precision, note text)
  PARTITION BY RANGE (ts);
CREATE FUNCTION public.day_partition(k int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE base timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '30 days';
BEGIN
  EXECUTE format('CREATE TABLE public.measurements_d%s PARTITION OF public.measurements FOR VALUES FROM (%L) TO (%L)',
    lpad(k::text, 2, '0'), base + k * interval '1 day', base + (k + 1) * interval '1 day');
  INSERT INTO public.measurements
    SELECT k * 1000 + h, base + k * interval '1 day' + h * interval '1 hour', k + h / 100.0, 'day ' || k || ' hour ' || h
    FROM generate_series(0, 23) h;
END $$;
";

/// The child partition of day `k`.
fn child(k: u32) -> String {
    format!("public.measurements_d{k:02}")
}

/// The object ids of partition objects of day `k` among `ids`.
fn partition_ids(ids: &[String], k: u32) -> usize {
    let prefix = format!("partition:{}:", child(k));
    ids.iter().filter(|i| i.starts_with(&prefix)).count()
}

#[test]
fn closed_partitions_move_once_and_changed_ones_only_with_resync_changed() {
    let mut lab = TableLab::new("loopback");
    lab.src(PARTITIONED);
    // Days 0..=19 (closed: they ended at least 10 days ago) and two future days (open).
    for k in (0..20).chain([35, 36]) {
        lab.src(&format!("SELECT public.day_partition({k})"));
    }
    let table = |resync: bool| {
        tables(&[(
            "public.measurements",
            "partitions",
            &format!("closed_after = \"1d\"\nresync_changed = {resync}\n"),
        )])
    };
    lab.tables = table(false);
    lab.start_all();
    let days = |range: std::ops::Range<u32>| -> Vec<(String, &'static str)> {
        range.map(|k| (child(k), "id")).collect()
    };
    let equal = |lab: &TableLab, r: std::ops::Range<u32>| {
        let d = days(r);
        let refs: Vec<(&str, &str)> = d.iter().map(|(t, o)| (t.as_str(), *o)).collect();
        lab.wait_equal(&refs, Duration::from_secs(90));
    };
    equal(&lab, 0..20);
    lab.wait_for(
        "20 partitions in gapsync.applied",
        Duration::from_secs(20),
        || lab.applied_table().len() >= 20,
    );
    std::thread::sleep(Duration::from_secs(2));
    let ids = lab.applied_ids();
    assert_eq!(
        ids.len(),
        20,
        "the 20 closed partitions, once each: {ids:?}\n{}",
        lab.diagnostics()
    );
    for k in 0..20 {
        assert_eq!(partition_ids(&ids, k), 1, "day {k} applied once: {ids:?}");
    }
    for k in [35, 36] {
        assert!(
            !lab.target.table_exists(TARGET_DB, &child(k))
                || lab.target.row_count(TARGET_DB, &child(k)) == 0,
            "the open partition of day {k} is not sent"
        );
    }

    // Days 20..=24 are added (closed already): `pipe start` sends them and only them.
    for k in 20..25 {
        lab.src(&format!("SELECT public.day_partition({k})"));
    }
    lab.trigger_run();
    equal(&lab, 20..25);
    std::thread::sleep(Duration::from_secs(2));
    let ids = lab.applied_ids();
    assert_eq!(
        ids.len(),
        25,
        "only the 5 new partitions moved: {ids:?}\n{}",
        lab.diagnostics()
    );
    assert_eq!(lab.applied_table().len(), 25, "25 rows in gapsync.applied");

    // Day 3 changes after it was synced: not sent again without resync_changed (day 25, added
    // at the same time, shows that the run happened).
    lab.src("UPDATE public.measurements SET v = -1, note = 'changed' WHERE id = 3005");
    let old_day3 = lab.target.table_digest(TARGET_DB, &child(3), "id");
    lab.src("SELECT public.day_partition(25)");
    std::thread::sleep(Duration::from_secs(2));
    lab.trigger_run();
    equal(&lab, 25..26);
    std::thread::sleep(Duration::from_secs(3));
    let ids = lab.applied_ids();
    assert_eq!(
        partition_ids(&ids, 3),
        1,
        "a changed partition is not resent without resync_changed: {ids:?}"
    );
    assert_eq!(ids.len(), 26, "{ids:?}\n{}", lab.diagnostics());
    assert_eq!(
        lab.target.table_digest(TARGET_DB, &child(3), "id"),
        old_day3,
        "the target keeps the synced content of day 3"
    );

    // With resync_changed = true (a second config, the sender restarted): day 3 moves again,
    // the unchanged partitions do not.
    lab.kill_sender();
    lab.tables = table(true);
    lab.start_sender();
    equal(&lab, 3..4);
    std::thread::sleep(Duration::from_secs(3));
    let ids = lab.applied_ids();
    assert_eq!(
        partition_ids(&ids, 3),
        2,
        "the changed day 3 resent once: {ids:?}\n{}",
        lab.diagnostics()
    );
    for k in (0..26).filter(|k| *k != 3) {
        assert_eq!(
            partition_ids(&ids, k),
            1,
            "unchanged day {k} not resent: {ids:?}"
        );
    }
    assert_eq!(
        lab.target.row_count(TARGET_DB, "public.measurements"),
        26 * 24
    );
}

/// Writes `text` to `name` in the lab (mode 0600).
fn write_file(lab: &TableLab, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = lab.path(name);
    std::fs::write(&p, text).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// Runs the sender's check-config on a config of `tables` with `connection` (and
/// `source_extra`): exit code and output.
fn check(
    lab: &TableLab,
    name: &str,
    connection: &str,
    source_extra: &str,
    tables: &str,
) -> (Option<i32>, String) {
    let text = lab
        .sender_config_text(tables, &format!("{source_extra}\n"))
        .replace(
            &format!("connection = {:?}", lab.source.conninfo(SOURCE_DB)),
            &format!("connection = {connection:?}"),
        );
    let cfg = write_file(lab, name, &text);
    check_config_code(&[], &bin("gapsync-sender"), &cfg)
}

#[test]
fn check_config_names_the_unreachable_database_the_bad_password_and_the_bad_table() {
    let lab = TableLab::new("loopback");
    lab.src(
        "CREATE TABLE public.assets (id int PRIMARY KEY, name text);
         CREATE TABLE public.events (id bigserial PRIMARY KEY, ts timestamptz DEFAULT clock_timestamp());
         GRANT SELECT ON public.assets TO gapsync_pw;",
    );
    let good = lab.source.conninfo(SOURCE_DB);
    let assets = tables(&[("public.assets", "snapshot", "")]);
    let (code, out) = check(&lab, "good.toml", &good, "", &assets);
    assert_eq!(code, Some(0), "a good config passes: {out}");

    let pw = lab
        .source
        .tcp_conninfo(SOURCE_DB, gapsync_tests::pg::PASSWORD_ROLE);
    let right = write_file(&lab, "right.pass", "secret\n");
    let (code, out) = check(
        &lab,
        "pw-right.toml",
        &pw,
        &format!("password_file = {:?}", right.display().to_string()),
        &assets,
    );
    assert_eq!(
        code,
        Some(0),
        "the right password from password_file passes: {out}"
    );

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let unreachable =
        format!("host=127.0.0.1 port={free} user=postgres dbname={SOURCE_DB} connect_timeout=3");
    let wrong = write_file(&lab, "wrong.pass", "not-the-password\n");
    let cases: Vec<(&str, String, String, String, Vec<&str>)> = vec![
        (
            "unreachable",
            unreachable,
            String::new(),
            assets.clone(),
            vec![PIPE],
        ),
        (
            "wrong-password",
            pw,
            format!("password_file = {:?}", wrong.display().to_string()),
            assets.clone(),
            vec![PIPE, "password"],
        ),
        (
            "missing-table",
            good.clone(),
            String::new(),
            tables(&[("public.no_such_table", "snapshot", "")]),
            vec![PIPE, "public.no_such_table"],
        ),
        (
            "no-watermark",
            good.clone(),
            String::new(),
            tables(&[("public.events", "incremental", "")]),
            vec![PIPE, "public.events", "watermark"],
        ),
        (
            "not-partitioned",
            good,
            String::new(),
            tables(&[("public.assets", "partitions", "closed_after = \"1d\"\n")]),
            vec![PIPE, "public.assets", "partition"],
        ),
    ];
    for (name, conn, extra, t, words) in cases {
        let (code, out) = check(&lab, &format!("{name}.toml"), &conn, &extra, &t);
        assert!(
            code.is_some_and(|c| c != 0),
            "{name}: check-config must fail, got {code:?}: {out}"
        );
        for w in words {
            assert!(out.contains(w), "{name}: the message names {w:?}: {out}");
        }
    }
}

/// The `.gst` files under `dir`, sorted by path.
fn gst_files(dir: &std::path::Path) -> Vec<PathBuf> {
    tree_sizes(dir)
        .into_keys()
        .filter(|k| k.ends_with(".gst"))
        .map(|k| dir.join(k))
        .collect()
}

/// `gapsync-receiver load --config CONFIG --pipe plant-db FILES...`: exit code and output.
fn load(config: &std::path::Path, files: &[PathBuf]) -> (Option<i32>, String) {
    let out = Command::new(bin("gapsync-receiver"))
        .arg("load")
        .arg("--config")
        .arg(config)
        .args(["--pipe", PIPE])
        .args(files)
        .output()
        .expect("run gapsync-receiver load");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn objects_landed_by_a_directory_sink_are_loaded_later_exactly_once() {
    let mut lab = TableLab::new("loopback");
    lab.src(
        "CREATE TABLE public.assets (id int PRIMARY KEY, name text, bought date);
         INSERT INTO public.assets SELECT g, 'asset ' || g, date '2020-01-01' + g FROM generate_series(1, 500) g;
         CREATE TABLE public.events (id bigserial PRIMARY KEY, ts timestamptz NOT NULL DEFAULT clock_timestamp(), what text);
         INSERT INTO public.events (what) SELECT 'event ' || g FROM generate_series(1, 300) g;",
    );
    let landing = lab.path("landing");
    std::fs::create_dir_all(&landing).expect("landing");
    lab.sink_toml = Some(format!(
        "[pipe.sink]\ntype = \"directory\"\npath = {:?}\n",
        landing.display().to_string()
    ));
    lab.tables = tables(&[
        ("public.assets", "snapshot", ""),
        ("public.events", "incremental", "watermark = \"ts\"\n"),
    ]);
    lab.start_all();
    lab.wait_for(
        "a snapshot and an incremental object landed",
        Duration::from_secs(60),
        || {
            let files = gst_files(&landing);
            files
                .iter()
                .any(|f| f.to_string_lossy().contains("public.assets/snapshot-"))
                && files
                    .iter()
                    .any(|f| f.to_string_lossy().contains("public.events/incremental-"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.kill_sender();
    let files = gst_files(&landing);
    for f in &files {
        let head = std::fs::read(f).expect("read object");
        assert!(
            head.starts_with(b"GSTABLE1"),
            "{} is a table object file",
            f.display()
        );
    }
    assert!(
        !lab.target.table_exists(TARGET_DB, "public.assets"),
        "nothing applied yet"
    );

    // The offline path: a receiver config whose pipe has a postgres sink.
    let cfg = lab.path("receiver-load.toml");
    std::fs::write(
        &cfg,
        lab.receiver_config_text("rstate-load", &lab.postgres_sink()),
    )
    .expect("write config");
    let (code, out) = load(&cfg, &files);
    assert_eq!(
        code,
        Some(0),
        "load applies every file: {out}\n{}",
        lab.diagnostics()
    );
    assert!(
        out.lines().count() >= files.len(),
        "one line per file: {out}"
    );
    lab.wait_equal(
        &[("public.assets", "id"), ("public.events", "id")],
        Duration::from_secs(5),
    );
    let recorded = lab.applied_table();
    assert_eq!(
        recorded.len(),
        files.len(),
        "one gapsync.applied row per file: {recorded:?}"
    );

    let (code, again) = load(&cfg, &files);
    assert_eq!(code, Some(0), "loading again succeeds: {again}");
    assert_eq!(
        again.matches("already applied").count(),
        files.len(),
        "every file is reported `already applied`: {again}"
    );
    assert_eq!(lab.applied_table(), recorded, "nothing applied twice");
    lab.wait_equal(
        &[("public.assets", "id"), ("public.events", "id")],
        Duration::from_secs(1),
    );
}
