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
//! 2. waits until every client transaction of this database that started before T has ended
//!    (`pg_stat_activity.xact_start < T`; our own sessions, named `gapsync-sender`, are not
//!    waited for);
//! 3. reads `W < watermark <= M` ordered by the watermark, streamed into the spill file.
//!
//! Every transaction still open when M's snapshot was taken started before T and is waited
//! for. A transaction that starts after T gets sequence values above M (M's row took its
//! value before that snapshot) and now() / clock_timestamp() values at or after T, above
//! every committed M: nothing at or below M can commit after step 2. This needs the
//! watermark to be assigned by the database at insert, and the role to see other sessions
//! (`pg_read_all_stats` or superuser; [`super::probe`] checks it). Rows sharing M's value
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
    let cap = row_cap(ctx, rec.bytes_per_row);
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

/// Waits until no client transaction of this database that started before `t0` is open.
fn wait_older(ctx: &Ctx, client: &mut Client, t0: &str, table: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        let row = client
            .query_one(
                "SELECT count(*), min(pid), min(xact_start)::text FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND backend_type = 'client backend' \
                 AND application_name IS DISTINCT FROM $2 \
                 AND xact_start < $1::text::timestamptz",
                &[&t0, &APPLICATION_NAME],
            )
            .context("cannot read pg_stat_activity")?;
        let open: i64 = row.get(0);
        if open == 0 {
            return Ok(());
        }
        if ctx.tx.is_closed() {
            bail!("the pipe stopped");
        }
        if !warned && started.elapsed() >= WAIT_WARN {
            warned = true;
            let pid: Option<i32> = row.get(1);
            let since: Option<String> = row.get(2);
            tracing::warn!(pipe = %ctx.pipe, table = %table, transactions = open, pid, since, "incremental: waiting for older transactions of the database to end before reading the next batch (a transaction left open delays every incremental table; end it or it holds the batch)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
