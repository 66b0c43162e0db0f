//! The table scenarios (issue 20): T1, pgbench's four tables as one snapshot run on the
//! loopback profile and through the gate simulator with syskeeper-2000, against a same-run
//! baseline (`psql COPY TO STDOUT (FORMAT binary) | rawcopy` into `rawcopy | psql COPY FROM
//! STDIN`); the peak RSS of both daemons at scale 50 and 200 (TRSS); T2, the
//! insert-to-visible lag of an incremental table written at 1,000 rows/s.
//!
//! Both clusters are [`PgCluster`]s (initdb, own port and socket) made durable for the
//! benchmark: `fsync`, `synchronous_commit` and `full_page_writes` on, `shared_buffers =
//! 256MB` (the test harness runs them with fsync off and 32 MB). pgbench's data is generated
//! before that switch (with fsync off, then `sync`): only the timed part runs durable.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use gapsync_tests::pg::pg_bindir;
use gapsync_tests::table_lab::{EVENTS, SOURCE_DB, TARGET_DB};
use gapsync_tests::{PgCluster, TableLab, bin};

use crate::Row;
use crate::measure::{Sample, cpu_seconds, median, quantile};

/// pgbench's four tables.
const PGBENCH: [&str; 4] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_tellers",
    "public.pgbench_history",
];
/// The baseline's database in the target cluster (empty copies of the four tables).
const RAW_DB: &str = "rawcopy";

/// What the table scenarios are given.
#[derive(Debug, Clone, Copy)]
pub struct TableScale {
    pub runs: usize,
    /// pgbench scale of T1 (50, 1 with --tiny).
    pub scale: u32,
    /// pgbench scale of the second RSS measurement (200; None with --tiny).
    pub rss_scale: Option<u32>,
    /// Seconds the T2 writer writes (30, 5 with --tiny).
    pub lag_secs: u64,
    pub t1: bool,
    pub t2: bool,
}

/// Runs the wanted table scenarios; their rows. Without PostgreSQL they are skipped with a
/// printed reason (the other scenarios still run).
pub fn scenarios(ts: TableScale, work: &Path) -> anyhow::Result<Vec<Row>> {
    if std::panic::catch_unwind(pg_bindir).is_err() {
        println!("T scenarios skipped: PostgreSQL is not installed (apt-get install postgresql)");
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    let mut lab = TableLab::new("loopback");
    prepare_pgbench(&lab, ts.scale)?;
    durable(&mut lab.source)?;
    durable(&mut lab.target)?;
    if ts.t1 {
        let sizes = table_sizes(&lab)?;
        lab.target.createdb(RAW_DB);
        pgbench(&lab.target, RAW_DB, ts.scale, "dtp")?;
        for prof in ["loopback", "syskeeper-2000"] {
            rows.push(t1(&mut lab, prof, &sizes, ts, work)?);
        }
        lab.target
            .psql("postgres", &format!("DROP DATABASE {RAW_DB}"));
    }
    if ts.t2 {
        rows.push(t2(&mut lab, ts.lag_secs)?);
    }
    drop(lab);
    if ts.t1 {
        if let Some(scale) = ts.rss_scale {
            rows.extend(rss_at(scale)?);
        }
    }
    Ok(rows)
}

/// `pgbench -i -s scale` on the source (fsync still off), plus `1000 x scale` history rows
/// (pgbench -i leaves that table empty); then `sync`.
fn prepare_pgbench(lab: &TableLab, scale: u32) -> anyhow::Result<()> {
    let t = Instant::now();
    eprintln!("T: pgbench -i -s {scale} on the source cluster");
    pgbench(&lab.source, SOURCE_DB, scale, "dtgvp")?;
    lab.src(&format!(
        "INSERT INTO pgbench_history SELECT 1 + g % (10 * {scale}), 1 + g % {scale}, g, g % 5000 - 2500, now() - g * interval '1 s', 'bench' FROM generate_series(1, 1000 * {scale}) g"
    ));
    rustix::fs::sync();
    eprintln!("T: source ready in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// `pgbench -i -I steps -s scale` on database `db` of cluster `c`.
fn pgbench(c: &PgCluster, db: &str, scale: u32, steps: &str) -> anyhow::Result<()> {
    let out = Command::new(pg_bindir().join("pgbench"))
        .args(["-i", "-q", "-I", steps, "-s", &scale.to_string(), "-h"])
        .arg(c.socket_dir())
        .args(["-p", &c.port.to_string(), "-U", "postgres", db])
        .output()?;
    if !out.status.success() {
        bail!(
            "pgbench -i on {}: {}",
            c.label,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Makes the cluster durable and gives it a sane shared_buffers; restarts it.
fn durable(c: &mut PgCluster) -> anyhow::Result<()> {
    c.psql(
        "postgres",
        "ALTER SYSTEM SET fsync = on; ALTER SYSTEM SET synchronous_commit = on; \
         ALTER SYSTEM SET full_page_writes = on; ALTER SYSTEM SET shared_buffers = '256MB'",
    );
    c.stop();
    c.start_again();
    let got = c.psql(
        "postgres",
        "SELECT current_setting('fsync') || ' ' || current_setting('shared_buffers')",
    );
    if got != "on 256MB" {
        bail!("cluster {}: fsync and shared_buffers are {got}", c.label);
    }
    Ok(())
}

/// Rows and COPY binary bytes of each pgbench table of the source.
fn table_sizes(lab: &TableLab) -> anyhow::Result<Vec<(String, u64, u64)>> {
    PGBENCH
        .iter()
        .map(|t| {
            let rows = lab.source.row_count(SOURCE_DB, t) as u64;
            Ok(((*t).to_owned(), rows, copy_bytes(&lab.source, t)?))
        })
        .collect()
}

/// A psql command line running `sql` on `db` of `c` (for `sh -c`).
fn psql_sh(c: &PgCluster, db: &str, sql: &str) -> String {
    format!(
        "{} -X -q -h {} -p {} -U postgres -d {db} -c \"{sql}\"",
        pg_bindir().join("psql").display(),
        c.socket_dir().display(),
        c.port
    )
}

/// CHECKPOINT on both clusters, then `sync`: neither side pays for what the other left.
fn settle(lab: &TableLab) {
    lab.source.psql("postgres", "CHECKPOINT");
    lab.target.psql("postgres", "CHECKPOINT");
    rustix::fs::sync();
}

/// Stops the daemons and removes their state and logs, the target's copies and its
/// `gapsync` schema: the next start is a first start.
fn reset_gapsync(lab: &mut TableLab) {
    let procs = [lab.sender.take(), lab.sim.take(), lab.receiver.take()];
    for mut p in procs.into_iter().flatten() {
        p.kill9();
    }
    lab.sim_addr = None;
    for d in ["sstate", "rstate", "slogs", "rlogs"] {
        let _ = std::fs::remove_dir_all(lab.path(d));
    }
    let drops: Vec<String> = PGBENCH
        .iter()
        .chain(["public.events"].iter())
        .map(|t| format!("DROP TABLE IF EXISTS {t};"))
        .collect();
    lab.dst(&format!(
        "{} DROP SCHEMA IF EXISTS gapsync CASCADE",
        drops.concat()
    ));
}

/// The log time of a log line.
fn line_time(l: &str) -> Option<SystemTime> {
    let t = l.split_whitespace().next()?;
    humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok()
}

/// The log times of the receiver's `applied` lines (not `already applied`), in log order.
fn applied_times(log: &str) -> Vec<SystemTime> {
    log.lines()
        .filter(|l| l.contains(": applied ") && !l.contains("already applied"))
        .filter_map(line_time)
        .collect()
}

/// Where a run's time went, from the logs: seconds after `t0` at which the sender had the
/// last object spilled (`table object ready`) and sent, and each table's `applied` line.
fn breakdown(lab: &TableLab, t0: SystemTime) -> String {
    let after = |l: &&str| line_time(l).is_some_and(|t| t >= t0);
    let secs = |l: &str| {
        line_time(l).map_or(f64::NAN, |t| {
            t.duration_since(t0).unwrap_or_default().as_secs_f64()
        })
    };
    let slog = lab.sender_log();
    let last = |needle: &str| {
        slog.lines()
            .filter(after)
            .filter(|l| l.contains(needle))
            .map(secs)
            .fold(f64::NAN, f64::max)
    };
    let rlog = lab.receiver_log();
    let applied: Vec<String> = rlog
        .lines()
        .filter(after)
        .filter(|l| l.contains(": applied ") && !l.contains("already applied"))
        .map(|l| {
            let table = l
                .split("table=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?");
            let ms = l
                .split(" ms=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?");
            format!("{table} +{:.1} s (its transaction {ms} ms)", secs(l))
        })
        .collect();
    format!(
        "spilled +{:.1} s, sent +{:.1} s, applied {}",
        last("table object ready"),
        last(": sent pipe="),
        applied.join(", ")
    )
}

/// T1 on profile `prof`: `ts.runs` gapsync runs of the four tables (the first from the
/// sender's start, the next ones from `pipe start`), each followed by a baseline run.
fn t1(
    lab: &mut TableLab,
    prof: &str,
    sizes: &[(String, u64, u64)],
    ts: TableScale,
    work: &Path,
) -> anyhow::Result<Row> {
    reset_gapsync(lab);
    lab.profile = prof.to_owned();
    lab.tables = PGBENCH
        .iter()
        .map(|t| format!("[[pipe.source.table]]\nname = {t:?}\nmode = \"snapshot\"\n"))
        .collect();
    let (rows, bytes) = sizes
        .iter()
        .fold((0, 0), |(r, b), (_, tr, tb)| (r + tr, b + tb));
    let timeout = Duration::from_secs(120 + bytes / 2_000_000);
    let (mut gap, mut base) = (Vec::new(), Vec::new());
    for i in 1..=ts.runs {
        let g = gapsync_run(lab, i, rows, bytes, timeout)
            .with_context(|| format!("T1 {prof} run {i}"))?;
        let b = baseline_run(lab, sizes, work).with_context(|| format!("T1 baseline run {i}"))?;
        eprintln!(
            "T1 {prof} run {i}: gapsync {:.0} rows/s {:.1} MB/s in {:.2} s; baseline {:.0} rows/s {:.1} MB/s in {:.2} s",
            g.files_per_s(),
            g.mb_per_s(),
            g.secs,
            b.files_per_s(),
            b.mb_per_s(),
            b.secs
        );
        gap.push(g);
        base.push(b);
    }
    let mbs = |v: &[Sample]| median(v.iter().map(Sample::mb_per_s).collect());
    let (gap_mbs, base_mbs) = (mbs(&gap), mbs(&base));
    let mut row = crate::compare(
        &format!(
            "T1 pgbench scale {} snapshot ({rows} rows, {:.0} MB COPY binary), {prof}",
            ts.scale,
            bytes as f64 / 1e6
        ),
        "rows/s",
        gap,
        base,
        Sample::files_per_s,
        0.8,
    );
    row.base_label = format!(
        "baseline psql COPY TO binary, rawcopy, psql COPY FROM: {base_mbs:.1} MB/s against gapsync {gap_mbs:.1} MB/s{}",
        if prof == "loopback" {
            ""
        } else {
            "; the baseline is a plain TCP copy, not through the simulator"
        }
    );
    row.target
        .push_str("; peak RSS <= 128 MiB each (sender / receiver column)");
    let rss_ok = row
        .gap
        .iter()
        .all(|s| s.rss_kib.iter().all(|&k| k <= 128 * 1024));
    row.met = row.met.map(|m| m && rss_ok);
    Ok(row)
}

/// One gapsync run: the first starts the daemons (time from the sender's start), the next
/// ones trigger `pipe start`; time runs to the log time of the last of the 4 `applied` lines.
fn gapsync_run(
    lab: &mut TableLab,
    i: usize,
    rows: u64,
    bytes: u64,
    timeout: Duration,
) -> anyhow::Result<Sample> {
    settle(lab);
    let t0;
    if i == 1 {
        lab.start_receiver();
        if lab.profile != "loopback" {
            lab.start_sim();
        }
        t0 = SystemTime::now();
        lab.start_sender();
    } else {
        t0 = SystemTime::now();
        lab.trigger_run();
    }
    let pids = [
        lab.sender.as_ref().context("sender")?.pid(),
        lab.receiver.as_ref().context("receiver")?.pid(),
    ];
    let cpu0 = if i == 1 {
        [0.0; 2]
    } else {
        pids.map(cpu_seconds)
    };
    let want = 4 * i;
    let deadline = Instant::now() + timeout;
    let times = loop {
        let times = applied_times(&lab.receiver_log());
        if times.len() >= want {
            break times;
        }
        if Instant::now() > deadline {
            bail!(
                "timed out: {} of {want} objects applied\n{}",
                times.len(),
                lab.diagnostics()
            );
        }
        lab.assert_daemons_alive();
        std::thread::sleep(Duration::from_millis(50));
    };
    let end = times[want - 4..want].iter().max().copied().unwrap_or(t0);
    // The sender logs `sent` once the answer came, which may follow the last `applied` line.
    std::thread::sleep(Duration::from_millis(300));
    eprintln!("  gapsync run {i}: {}", breakdown(lab, t0));
    let cpu = pids.map(cpu_seconds);
    Ok(Sample {
        secs: end.duration_since(t0).unwrap_or_default().as_secs_f64(),
        bytes,
        files: rows,
        cpu: [cpu[0] - cpu0[0], cpu[1] - cpu0[1]],
        rss_kib: [
            lab.sender.as_ref().map_or(0, |p| p.peak_rss_kib()),
            lab.receiver.as_ref().map_or(0, |p| p.peak_rss_kib()),
        ],
        busy_cores: 0.0,
    })
}

/// One baseline run: the four tables one after the other, each `psql COPY TO | rawcopy send`
/// into `rawcopy recv | psql COPY FROM` (empty copies with the same primary keys, truncated
/// before the run, fsync on); the four timed copies summed.
fn baseline_run(
    lab: &TableLab,
    sizes: &[(String, u64, u64)],
    work: &Path,
) -> anyhow::Result<Sample> {
    let names: Vec<&str> = sizes.iter().map(|(t, _, _)| t.as_str()).collect();
    lab.target
        .psql(RAW_DB, &format!("TRUNCATE {}", names.join(", ")));
    settle(lab);
    let rawcopy = bin("gapsync-rawcopy").display().to_string();
    let mut sum = Sample::default();
    for (t, rows, bytes) in sizes {
        let send = format!(
            "{} | {rawcopy} send --to 127.0.0.1:{{PORT}} --input -",
            psql_sh(
                &lab.source,
                SOURCE_DB,
                &format!("COPY {t} TO STDOUT (FORMAT binary)")
            )
        );
        let recv = format!(
            "{rawcopy} recv --listen 127.0.0.1:{{PORT}} --out - | {}",
            psql_sh(
                &lab.target,
                RAW_DB,
                &format!("COPY {t} FROM STDIN (FORMAT binary)")
            )
        );
        let s = crate::runs::baseline(work, &send, &recv, *bytes, *rows)?;
        sum.secs += s.secs;
        sum.bytes += s.bytes;
        sum.files += s.files;
        sum.cpu = [sum.cpu[0] + s.cpu[0], sum.cpu[1] + s.cpu[1]];
        sum.rss_kib = [
            sum.rss_kib[0].max(s.rss_kib[0]),
            sum.rss_kib[1].max(s.rss_kib[1]),
        ];
    }
    let n = lab.target.row_count(RAW_DB, "public.pgbench_accounts") as u64;
    let want = sizes.first().map_or(0, |s| s.1);
    if n != want {
        bail!("the baseline loaded {n} accounts rows, not {want}");
    }
    Ok(sum)
}

/// Peak RSS of both daemons in one loopback snapshot run at pgbench scale `scale` (its own
/// clusters); skipped with a printed reason when the disk has under 20 GB free.
fn rss_at(scale: u32) -> anyhow::Result<Vec<Row>> {
    let free = free_gb(&std::env::temp_dir());
    if free < 20.0 {
        println!(
            "TRSS scale {scale} skipped: {free:.1} GB free under {} (needs 20)",
            std::env::temp_dir().display()
        );
        return Ok(Vec::new());
    }
    eprintln!("TRSS: {free:.0} GB free; pgbench scale {scale}");
    let mut lab = TableLab::new("loopback");
    prepare_pgbench(&lab, scale)?;
    durable(&mut lab.source)?;
    durable(&mut lab.target)?;
    let sizes = table_sizes(&lab)?;
    reset_gapsync(&mut lab);
    lab.tables = PGBENCH
        .iter()
        .map(|t| format!("[[pipe.source.table]]\nname = {t:?}\nmode = \"snapshot\"\n"))
        .collect();
    let (rows, bytes) = sizes
        .iter()
        .fold((0, 0), |(r, b), (_, tr, tb)| (r + tr, b + tb));
    let g = gapsync_run(
        &mut lab,
        1,
        rows,
        bytes,
        Duration::from_secs(120 + bytes / 2_000_000),
    )?;
    eprintln!(
        "TRSS scale {scale}: {:.0} rows/s {:.1} MB/s in {:.2} s; peak RSS {} / {} KiB",
        g.files_per_s(),
        g.mb_per_s(),
        g.secs,
        g.rss_kib[0],
        g.rss_kib[1]
    );
    Ok(vec![Row {
        name: format!(
            "TRSS pgbench scale {scale} snapshot ({rows} rows, {:.0} MB), loopback, one run",
            bytes as f64 / 1e6
        ),
        unit: "rows/s",
        value: g.files_per_s(),
        base: None,
        base_label: format!("{:.1} MB/s, no baseline", g.mb_per_s()),
        base_cpu_per_gib: None,
        target: "peak RSS <= 128 MiB each".into(),
        met: Some(g.rss_kib.iter().all(|&k| k <= 128 * 1024)),
        gap: vec![g],
    }])
}

/// Free space of the filesystem holding `dir`, in GB (`df`); 0 when unknown.
fn free_gb(dir: &Path) -> f64 {
    Command::new("df")
        .args(["-k", "--output=avail"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<f64>().ok())
        })
        .map_or(0.0, |k| k * 1024.0 / 1e9)
}

/// T2: one writer inserts 10 rows every 10 ms (1,000 rows/s, `ts` from clock_timestamp())
/// for `secs` into an incremental table; the target is polled every 50 ms for rows past the
/// highest id seen, each row's lag being `clock_timestamp() - ts` at the poll that first sees
/// it (so up to 50 ms late).
fn t2(lab: &mut TableLab, secs: u64) -> anyhow::Result<Row> {
    reset_gapsync(lab);
    lab.profile = "loopback".into();
    lab.src(&format!("DROP TABLE IF EXISTS public.events; {EVENTS}"));
    lab.tables = "[[pipe.source.table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\nkey = [\"id\"]\n".into();
    // The default poll interval (500 ms), as users get it.
    lab.source_extra = String::new();
    // One row first: the lag counts from the time it is on the target (the daemons started,
    // connected and the target table created), for rows after it.
    lab.src("INSERT INTO public.events (writer, payload) VALUES (0, 'warm-up')");
    settle(lab);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for(
        "the warm-up row on the target",
        Duration::from_secs(60),
        || {
            lab.target.table_exists(TARGET_DB, "public.events")
                && lab.target.row_count(TARGET_DB, "public.events") == 1
        },
    );
    let pids = [
        lab.sender.as_ref().context("sender")?.pid(),
        lab.receiver.as_ref().context("receiver")?.pid(),
    ];
    let writer = start_writer(lab.source.conninfo(SOURCE_DB), secs);
    let cpu0 = pids.map(cpu_seconds);
    let lags = collect_lags(lab, writer)?;
    let cpu = pids.map(cpu_seconds);
    let bytes = copy_bytes(&lab.source, "public.events")?;
    let (p50, p99) = (quantile(lags.clone(), 0.5), quantile(lags.clone(), 0.99));
    let max = lags.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "T2: {} rows, lag p50 {p50:.0} ms p99 {p99:.0} ms max {max:.0} ms",
        lags.len()
    );
    let sample = Sample {
        secs: secs as f64,
        bytes,
        files: lags.len() as u64,
        cpu: [cpu[0] - cpu0[0], cpu[1] - cpu0[1]],
        rss_kib: [
            lab.sender.as_ref().map_or(0, |p| p.peak_rss_kib()),
            lab.receiver.as_ref().map_or(0, |p| p.peak_rss_kib()),
        ],
        busy_cores: 0.0,
    };
    Ok(Row {
        name: format!(
            "T2 incremental lag, 1,000 rows/s (10 per insert) for {secs} s, poll_interval 500ms, loopback"
        ),
        unit: "ms p50",
        value: p50,
        base: None,
        base_label: format!(
            "p99 {p99:.0} ms, max {max:.0} ms ({} rows; polled every 50 ms)",
            lags.len()
        ),
        base_cpu_per_gib: None,
        target: "p99 <= 2000 ms".into(),
        met: Some(p99 <= 2000.0),
        gap: vec![sample],
    })
}

/// The COPY binary size of `table` on the source.
fn copy_bytes(c: &PgCluster, table: &str) -> anyhow::Result<u64> {
    let sh = format!(
        "{} | wc -c",
        psql_sh(
            c,
            SOURCE_DB,
            &format!("COPY {table} TO STDOUT (FORMAT binary)")
        )
    );
    let out = Command::new("sh").arg("-c").arg(&sh).output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("COPY size of {table}"))
}

/// A thread inserting 10 rows every 10 ms for `secs` into public.events; the rows inserted.
fn start_writer(conninfo: String, secs: u64) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&conninfo, postgres::NoTls)?;
        let start = Instant::now();
        let mut n = 0u64;
        for i in 0..secs * 100 {
            let due = Duration::from_millis(i * 10);
            if let Some(w) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(w);
            }
            n += c.execute(
                "INSERT INTO public.events (writer, payload) SELECT 1, 'row ' || g FROM generate_series(1, 10) g",
                &[],
            )?;
        }
        Ok(n)
    })
}

/// Polls the target every 50 ms for rows past the highest id seen (the warm-up row is id 1)
/// until every row the writer inserted arrived; each row's lag in ms.
fn collect_lags(
    lab: &TableLab,
    writer: std::thread::JoinHandle<anyhow::Result<u64>>,
) -> anyhow::Result<Vec<f64>> {
    let mut writer = Some(writer);
    let mut target = postgres::Client::connect(&lab.target.conninfo(TARGET_DB), postgres::NoTls)?;
    let (mut seen, mut lags, mut inserted) = (1i64, Vec::new(), None);
    let mut done_at = None;
    loop {
        if let Some(w) = writer.take_if(|w| w.is_finished()) {
            let n = w
                .join()
                .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
            inserted = Some(n);
            done_at = Some(Instant::now());
        }
        if let Ok(rows) = target.query(
            "SELECT id, extract(epoch FROM clock_timestamp() - ts)::float8 FROM public.events WHERE id > $1",
            &[&seen],
        ) {
            for r in rows {
                seen = seen.max(r.get::<_, i64>(0));
                lags.push(r.get::<_, f64>(1) * 1e3);
            }
        }
        match (inserted, done_at) {
            (Some(n), _) if lags.len() as u64 >= n => return Ok(lags),
            (Some(n), Some(t)) if t.elapsed() > Duration::from_secs(60) => {
                bail!(
                    "T2: {} of {n} rows on the target 60 s after the writer ended\n{}",
                    lags.len(),
                    lab.diagnostics()
                )
            }
            _ => {}
        }
        lab.assert_daemons_alive();
        std::thread::sleep(Duration::from_millis(50));
    }
}
