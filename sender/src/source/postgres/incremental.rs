//! `incremental` tables: batches of rows past a watermark, without missing rows that commit
//! late.
//!
//! The late-commit rule. A writer's watermark value (a sequence's nextval, now(),
//! clock_timestamp()) is assigned before its transaction commits, so a row with a value
//! below one already read can still appear. Each batch therefore:
//! 1. takes, in one statement, its upper bound M (the largest watermark past W visible now,
//!    or the `batch_rows`-th one when more are pending), then the database's clock T in the
//!    next statement (so T is after the snapshot M was read in: a transaction that started
//!    between that statement's start and its snapshot, and committed a row above M's
//!    neighbours, is waited for too);
//! 2. waits until every transaction of this database that started before T has ended
//!    (`pg_stat_activity.xact_start < T`: client backends and background workers such as
//!    pg_cron's, not autovacuum, walsenders and the like; our own sessions, named
//!    `gapsync-sender`, are not waited for), then until every prepared transaction
//!    (`pg_prepared_xacts`) prepared before that moment has been committed or rolled back;
//! 3. reads `W < watermark <= M` ordered by the watermark, streamed into the spill file.
//!
//! Every transaction still open when M's snapshot was taken started before T and is waited
//! for. A transaction that starts after T gets sequence values above M (M's row took its
//! value before that snapshot) and now() / clock_timestamp() values at or after T, above
//! every committed M: nothing at or below M can commit after step 2. This needs the
//! watermark to be assigned by the database at insert, and the role to see other sessions
//! (`pg_read_all_stats` or superuser; [`super::probe`] checks it). [`super::probe`] also
//! refuses what breaks the rule: a sequence with `CACHE` > 1 behind the watermark (a session
//! hands out its cached values long after others passed them) and a hot standby (the
//! primary's open transactions are not in its `pg_stat_activity`); and warns of a
//! `timestamp without time zone` watermark in a time zone with daylight saving time (its
//! values go back an hour in autumn). Rows sharing M's value
//! are all in the batch (`<= M`); the receiver upserts by key, so a row read twice is
//! harmless.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use gapsync_protocol::table::{TableHeader, TableKind, VERSION, WatermarkRange};
use postgres::Client;

use super::APPLICATION_NAME;
use super::catalog::{self, NOW_RFC3339, literal, select_list};
use super::config::{TableMode, TableSettings, quote};
use super::objects::ObjectName;
use super::worker::Ctx;

/// How long a wait for older transactions runs before it is named at WARN.
const WAIT_WARN: Duration = Duration::from_secs(30);

/// Reads one batch of `t` if rows are pending; true when more are pending after it.
pub fn poll(ctx: &Ctx, client: &mut Client, t: &TableSettings) -> anyhow::Result<bool> {
    let TableMode::Incremental {
        watermark,
        key,
        start_time,
        end_time,
    } = &t.mode
    else {
        return Ok(false);
    };
    let name = t.name();
    let rec = ctx.table_state(&name);
    let tb = catalog::table(client, t)?
        .ok_or_else(|| anyhow!("does not exist (or the role cannot see it)"))?;
    let wm_type = (tb.columns.iter())
        .find(|c| c.name == *watermark)
        .map(|c| c.type_name.clone())
        .ok_or_else(|| anyhow!("has no column {watermark:?} (its `watermark`)"))?;
    let key = key.clone().unwrap_or_else(|| tb.primary_key.clone());
    if key.is_empty() {
        bail!("has no primary key: give `key` (the columns rows are upserted by)");
    }
    let wm = quote(watermark);
    let mut cond = Vec::new();
    match (&rec.watermark, start_time) {
        (Some(w), _) => cond.push(format!("{wm} > {}::{wm_type}", literal(w))),
        (None, Some(s)) => cond.push(format!("{wm} >= {}::{wm_type}", literal(s))),
        (None, None) => {}
    }
    if let Some(e) = end_time {
        cond.push(format!("{wm} < {}::{wm_type}", literal(e)));
    }
    let cond = if cond.is_empty() {
        "true".to_owned()
    } else {
        cond.join(" AND ")
    };
    let per_row = match rec.bytes_per_row {
        Some(b) => Some(b),
        // The first batch: the table's own size per row, when it has been analyzed.
        None => estimate_bytes_per_row(client, tb.oid)?,
    };
    let cap = row_cap(ctx, per_row);
    let ident = t.ident();
    // Step 1: M, then T.
    let bound = client.query_one(
        &format!(
            "SELECT {NOW_RFC3339}, \
             (SELECT {wm}::text FROM {ident} WHERE {cond} ORDER BY {wm} OFFSET {} LIMIT 1), \
             (SELECT max({wm})::text FROM {ident} WHERE {cond})",
            cap - 1
        ),
        &[],
    )?;
    let read_at: String = bound.get(0);
    let (nth, max): (Option<String>, Option<String>) = (bound.get(1), bound.get(2));
    let Some(m) = nth.clone().or(max.clone()) else {
        return Ok(false);
    };
    let t0: String = client
        .query_one("SELECT clock_timestamp()::text", &[])?
        .get(0);
    let more = nth.is_some() && nth != max;
    // Step 2.
    wait_older(ctx, client, &t0, &name)?;
    // Step 3.
    let batch = rec.batch + 1;
    let header = TableHeader {
        version: VERSION,
        kind: TableKind::Incremental,
        table: name.clone(),
        id: format!("incremental:{name}:{}:{batch}", ctx.epoch()),
        batch,
        columns: tb.columns.clone(),
        key,
        partition: None,
        watermark: Some(WatermarkRange {
            column: watermark.clone(),
            from: rec.watermark.clone(),
            to: m.clone(),
        }),
        read_at,
    };
    let sql = format!(
        "COPY (SELECT {} FROM {ident} WHERE {cond} AND {wm} <= {}::{wm_type} ORDER BY {wm}) TO STDOUT (FORMAT binary)",
        select_list(&tb.columns),
        literal(&m)
    );
    let key = ObjectName::Incremental {
        table: name.clone(),
        batch,
    }
    .key();
    let mut rows = client.copy_out(&sql)?;
    ctx.publish(&name, &key, &header, &mut rows, |rec, s| {
        rec.batch = batch;
        rec.watermark = Some(m.clone());
        if let Some(per_row) = s.bytes.checked_div(s.rows) {
            rec.bytes_per_row = Some(per_row.max(1));
        }
    })?;
    Ok(more)
}

/// The rows of the next batch at most: `batch_rows`, fewer when the last batch's bytes per
/// row say `batch_bytes` would be passed.
fn row_cap(ctx: &Ctx, bytes_per_row: Option<u64>) -> u64 {
    let by_rows = ctx.s.batch_rows.get();
    let by_bytes = bytes_per_row.map_or(u64::MAX, |b| ctx.s.batch_bytes.get() / b.max(1));
    by_rows.min(by_bytes).max(1)
}

/// The bytes per row of a table by PostgreSQL's statistics (`pg_relation_size / reltuples`),
/// `None` before it was analyzed (or when it is empty or partitioned).
fn estimate_bytes_per_row(client: &mut Client, oid: u32) -> anyhow::Result<Option<u64>> {
    let row = client
        .query_one(
            "SELECT CASE WHEN reltuples > 0 THEN (pg_relation_size(oid) / reltuples)::float8 END \
             FROM pg_class WHERE oid = $1",
            &[&oid],
        )
        .context("cannot read the table's size")?;
    let per_row: Option<f64> = row.get(0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(per_row
        .filter(|b| b.is_finite() && *b >= 1.0)
        .map(|b| b.ceil() as u64))
}

/// Sessions that never write rows an incremental table reads: not waited for. Everything
/// else is, client backends and background workers alike (pg_cron and extensions' jobs
/// write too; a background worker's backend_type is its own name from PostgreSQL 13 on).
const NON_WRITERS: &str = "'autovacuum launcher', 'autovacuum worker', 'walsender', \
    'walreceiver', 'checkpointer', 'background writer', 'walwriter', 'startup', 'archiver', \
    'stats collector', 'logical replication launcher', 'io worker', 'walsummarizer', \
    'slotsync worker'";

/// Waits until no transaction of this database that started before `t0` can still commit:
/// first the sessions (`pg_stat_activity.xact_start < t0`), then the prepared transactions
/// (a transaction started before `t0` may have been prepared since, leaving its session:
/// every one prepared before the moment the sessions were seen clear is waited for).
fn wait_older(ctx: &Ctx, client: &mut Client, t0: &str, table: &str) -> anyhow::Result<()> {
    let sessions = format!(
        "SELECT count(*), min(pid)::text, min(xact_start)::text FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND backend_type NOT IN ({NON_WRITERS}) \
         AND application_name IS DISTINCT FROM $2 \
         AND xact_start < $1::text::timestamptz"
    );
    let mut waiting = Waiting::new(ctx, table, "transactions");
    loop {
        let row = (client.query_one(&sessions, &[&t0, &APPLICATION_NAME]))
            .context("cannot read pg_stat_activity")?;
        if !waiting.open(row.get(0), row.get(1), row.get(2))? {
            break;
        }
    }
    let t1: String = client
        .query_one("SELECT clock_timestamp()::text", &[])?
        .get(0);
    let mut waiting = Waiting::new(ctx, table, "prepared transactions");
    loop {
        let row = client
            .query_one(
                "SELECT count(*), min(gid), min(prepared)::text FROM pg_prepared_xacts \
                 WHERE database = current_database() AND prepared < $1::text::timestamptz",
                &[&t1],
            )
            .context("cannot read pg_prepared_xacts")?;
        if !waiting.open(row.get(0), row.get(1), row.get(2))? {
            return Ok(());
        }
    }
}

/// One wait of [`wait_older`]: polls backing off from 20 ms to 1 s, named at WARN after
/// [`WAIT_WARN`].
struct Waiting<'a> {
    ctx: &'a Ctx,
    table: &'a str,
    what: &'static str,
    started: Instant,
    pause: Duration,
    warned: bool,
}

impl<'a> Waiting<'a> {
    fn new(ctx: &'a Ctx, table: &'a str, what: &'static str) -> Self {
        Self {
            ctx,
            table,
            what,
            started: Instant::now(),
            pause: Duration::from_millis(20),
            warned: false,
        }
    }

    /// True (after a pause) while `open` older ones are left.
    fn open(
        &mut self,
        open: i64,
        first: Option<String>,
        since: Option<String>,
    ) -> anyhow::Result<bool> {
        if open == 0 {
            return Ok(false);
        }
        if self.ctx.tx.is_closed() {
            bail!("the pipe stopped");
        }
        if !self.warned && self.started.elapsed() >= WAIT_WARN {
            self.warned = true;
            let (pipe, table, what) = (&self.ctx.pipe, self.table, self.what);
            tracing::warn!(pipe = %pipe, table = %table, what, open, first, since, "incremental: waiting for older transactions of the database to end before reading the next batch (a transaction left open, or prepared and never committed, delays every incremental table; end it or it holds the batch)");
        }
        std::thread::sleep(self.pause);
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_non_writers_are_a_valid_sql_list() {
        let names: Vec<&str> = super::NON_WRITERS.split(',').map(str::trim).collect();
        assert!(
            names
                .iter()
                .all(|n| n.starts_with('\'') && n.ends_with('\''))
        );
        assert!(names.contains(&"'autovacuum worker'"));
        assert!(
            !names
                .iter()
                .any(|n| n.contains("client backend") || n.contains("background worker"))
        );
    }
}
