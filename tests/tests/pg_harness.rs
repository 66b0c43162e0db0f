//! The PostgreSQL test harness itself (tests/src/pg.rs), on a real cluster: it starts as
//! `nobody` on its own port and socket, runs SQL through psql (errors surface), computes
//! ordered digests, stops and starts again with its data, and the password role is refused a
//! wrong password on 127.0.0.1 and accepted with the right one.

use std::process::Command;

use gapsync_tests::PgCluster;
use gapsync_tests::pg::{PASSWORD, PASSWORD_ROLE, pg_bindir, pg_version};

/// psql over TCP as the password role with `password`: success, and its output.
fn login_with(c: &PgCluster, password: &str) -> (bool, String) {
    let out = Command::new(pg_bindir().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT current_user",
            &c.tcp_conninfo("postgres", PASSWORD_ROLE),
        ])
        .env("PGPASSWORD", password)
        .output()
        .expect("run psql");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_cluster_starts_runs_sql_stops_and_starts_again_with_its_data() {
    eprintln!("{}", pg_version());
    let mut c = PgCluster::start("harness");
    assert!(c.running());
    assert!(
        c.data.join(format!(".s.PGSQL.{}", c.port)).exists(),
        "the socket is in the data folder"
    );
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt as _;
        let uid = std::fs::metadata(&c.data).expect("data folder").uid();
        assert_eq!(
            uid, 65534,
            "the cluster belongs to nobody when the tests run as root"
        );
    }
    c.createdb("db1");
    c.psql(
        "db1",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g;",
    );
    assert_eq!(c.row_count("db1", "t"), 100);
    let digest = c.table_digest("db1", "t", "id");
    assert_eq!(digest.len(), 32, "an md5 hex: {digest:?}");
    let expected = c.psql(
        "db1",
        "SELECT md5(string_agg('(' || g || ',\"row ' || g || '\")', E'\\n' ORDER BY g)) FROM generate_series(1, 100) g",
    );
    assert_eq!(
        digest, expected,
        "the digest is md5 of the rows' text in key order"
    );
    let err = c
        .try_psql("db1", "SELECT 1; SELECT * FROM no_such_table; SELECT 2")
        .expect_err("a missing table is an error");
    assert!(
        err.contains("no_such_table"),
        "psql's error is returned: {err}"
    );
    assert!(c.table_exists("db1", "public.t") && !c.table_exists("db1", "public.u"));

    c.stop();
    assert!(
        c.try_psql("db1", "SELECT 1").is_err(),
        "a stopped cluster refuses connections"
    );
    c.start_again();
    assert_eq!(
        c.table_digest("db1", "t", "id"),
        digest,
        "the data survived the restart"
    );
    c.psql("db1", "UPDATE t SET v = 'changed' WHERE id = 50");
    assert_ne!(
        c.table_digest("db1", "t", "id"),
        digest,
        "a changed row changes the digest"
    );
}

#[test]
fn the_password_role_needs_its_password_and_pgbench_fills_its_tables() {
    let c = PgCluster::start("auth");
    let (ok, out) = login_with(&c, PASSWORD);
    assert!(
        ok && out.contains(PASSWORD_ROLE),
        "the right password logs in: {out}"
    );
    let (ok, out) = login_with(&c, "wrong");
    assert!(
        !ok && out.contains("password authentication failed"),
        "a wrong one is refused: {out}"
    );
    c.createdb("bench");
    c.pgbench_init("bench", 1);
    assert_eq!(c.row_count("bench", "pgbench_accounts"), 100_000);
    assert_eq!(c.row_count("bench", "pgbench_branches"), 1);
    assert_eq!(c.row_count("bench", "pgbench_tellers"), 10);
    assert_eq!(c.row_count("bench", "pgbench_history"), 0);
}

#[test]
fn two_clusters_run_side_by_side_and_a_dropped_one_is_stopped() {
    let a = PgCluster::start("a");
    let b = PgCluster::start("b");
    assert_ne!(a.port, b.port);
    a.psql("postgres", "CREATE TABLE only_a (x int)");
    assert!(!b.table_exists("postgres", "only_a"), "separate clusters");
    let pid_file = a.data.join("postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("postmaster.pid")
        .lines()
        .next()
        .expect("pid")
        .parse()
        .expect("pid");
    drop(a);
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "the postmaster {pid} of a dropped cluster is stopped");
    assert_eq!(b.psql("postgres", "SELECT 1"), "1");
}

/// The writers of tables_faults.rs make the hazard the incremental source must handle: rows
/// that commit after a reader saw a larger watermark, with watermark values below it.
#[test]
fn the_concurrent_writers_commit_rows_below_a_watermark_already_seen() {
    use gapsync_tests::table_lab::{EVENTS, Writers};
    let c = PgCluster::start("writers");
    c.psql("postgres", EVENTS);
    let writers = Writers::start(&c.conninfo("postgres"), 4);
    let mut seen = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        let line = c.psql(
            "postgres",
            "SELECT max(ts)::text || '|' || count(*) FROM public.events",
        );
        if let Some((ts, n)) = line.split_once('|') {
            if !ts.is_empty() {
                seen.push((ts.to_owned(), n.parse::<i64>().expect("count")));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rows = writers.finish();
    assert_eq!(
        c.row_count("postgres", "public.events"),
        i64::try_from(rows).expect("rows")
    );
    let late = seen
        .iter()
        .filter(|(ts, n)| {
            let now: i64 = c
                .psql(
                    "postgres",
                    &format!("SELECT count(*) FROM public.events WHERE ts <= '{ts}'"),
                )
                .parse()
                .expect("count");
            now > *n
        })
        .count();
    assert!(
        late > 0,
        "some rows committed after a reader saw a larger ts ({} polls, {rows} rows)",
        seen.len()
    );
}

/// The table lab's comparison fails on a missing table, a missing row and a changed value,
/// and passes once the target equals the source.
#[test]
fn the_table_labs_comparison_sees_every_difference() {
    let lab = gapsync_tests::TableLab::new("loopback");
    let t = [("public.t", "id")];
    lab.src("CREATE TABLE public.t (id int PRIMARY KEY, v float8, s text); INSERT INTO public.t VALUES (1, 'NaN', 'a'), (2, 0.1, NULL)");
    let diff = lab.differences(&t);
    assert!(
        diff.len() == 1 && diff[0].contains("(no table)"),
        "{diff:?}"
    );
    lab.dst("CREATE TABLE public.t (id int PRIMARY KEY, v float8, s text); INSERT INTO public.t VALUES (1, 'NaN', 'a')");
    let diff = lab.differences(&t);
    assert!(
        diff.len() == 1 && diff[0].contains("source 2 rows") && diff[0].contains("target 1 rows"),
        "{diff:?}"
    );
    lab.dst("INSERT INTO public.t VALUES (2, 0.1000000000000001, NULL)");
    assert_eq!(lab.differences(&t).len(), 1, "a float one ulp off differs");
    lab.dst("UPDATE public.t SET v = 0.1 WHERE id = 2");
    assert!(lab.differences(&t).is_empty());
    lab.wait_equal(&t, std::time::Duration::from_secs(1));
    lab.dst("UPDATE public.t SET s = '' WHERE id = 2");
    assert_eq!(
        lab.differences(&t).len(),
        1,
        "NULL and the empty string differ"
    );
}

#[test]
fn applied_lines_are_read_from_a_receiver_log() {
    use gapsync_tests::table_lab::{applied_ids, duplicates};
    let log = "2026-12-03T19:00:00.1Z  INFO gapsync_receiver::sink::postgres: applied table=public.events object=incremental:public.events:1 kind=incremental rows=10 ms=3 pipe=plant-db\n\
               2026-12-03T19:00:00.2Z  INFO gapsync_receiver::sink::postgres: already applied object=incremental:public.events:1 pipe=plant-db\n\
               2026-12-03T19:00:00.3Z  INFO gapsync_receiver::sink::postgres: applied table=public.events object=\"incremental:public.events:2\" kind=incremental rows=1 ms=1\n\
               2026-12-03T19:00:00.4Z  INFO gapsync_receiver::sink::postgres: applied table=public.events object=incremental:public.events:1 kind=incremental rows=10 ms=3\n";
    let ids = applied_ids(log);
    assert_eq!(
        ids,
        [
            "incremental:public.events:1",
            "incremental:public.events:2",
            "incremental:public.events:1"
        ]
    );
    assert_eq!(
        duplicates(&ids).into_iter().collect::<Vec<_>>(),
        [("incremental:public.events:1".to_owned(), 2)]
    );
}
