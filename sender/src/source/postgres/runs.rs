//! One run of the `snapshot` and `partitions` tables: all of them read in ONE REPEATABLE
//! READ, READ ONLY transaction (one consistent snapshot of the database), each table or
//! child partition streamed into its spill file.
//!
//! Partitions: a child partition is sent once; `tables.json` records it with its
//! fingerprint. The fingerprint is cheap: blake3 of the child's oid, its relfilenode (new
//! after TRUNCATE, VACUUM FULL, CLUSTER) and the tuples inserted, updated and deleted in it
//! (`pg_stat_all_tables.n_tup_ins + n_tup_upd + n_tup_del`), never a scan of its rows. A
//! change of any of them after the partition was synced marks it changed: with
//! `resync_changed = true` it is read and sent again (the receiver truncates and reloads
//! it); with false it is only named at INFO, once. The statistics counters are reset by
//! `pg_stat_reset()` and lost after a crash of the database: a synced partition then looks
//! changed once (sent again with `resync_changed = true`, which is harmless: it is reloaded
//! whole; only logged otherwise). The fingerprints are read just BEFORE the run's snapshot
//! (see [`fingerprints`] for why), and a table that fails does not stop the others (each
//! under a savepoint); the runs thread tries the failed ones again, backing off.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use gapsync_protocol::table::{PartitionInfo, TableHeader, TableKind, VERSION};
use postgres::{Client, IsolationLevel, Transaction};

use super::catalog::{self, Child, NOW_RFC3339, literal, select_list};
use super::config::{TableMode, TableSettings, quote};
use super::objects::ObjectName;
use super::worker::Ctx;

/// Changed partitions already named (child, fingerprint), so each is said once.
pub type Logged = HashSet<(String, String)>;

/// The tables of a run that failed, each with its error; the others were read.
pub type Failed = Vec<(String, anyhow::Error)>;

/// Reads every snapshot and partitions table once (`only`: just these, the ones a previous
/// run failed on). One table failing does not stop the others: each is read under a
/// savepoint of the run's transaction (the same snapshot) and rolled back to it on error.
/// `Err` is a failure of the run itself (connection, transaction).
pub fn run(
    ctx: &Ctx,
    client: &mut Client,
    logged: &mut Logged,
    only: Option<&HashSet<String>>,
) -> anyhow::Result<Failed> {
    let tables: Vec<&TableSettings> = (ctx.s.tables.iter())
        .filter(|t| !matches!(t.mode, TableMode::Incremental { .. }))
        .filter(|t| only.is_none_or(|o| o.contains(&t.name())))
        .collect();
    let mut failed = Failed::new();
    if tables.is_empty() {
        return Ok(failed);
    }
    // Before the snapshot: see `fingerprints`.
    let mut children = HashMap::new();
    for t in tables.iter().filter(|t| is_partitions(t)) {
        match fingerprints(client, t) {
            Ok(c) => drop(children.insert(t.name(), c)),
            Err(e) => failed.push((t.name(), e.context(format!("table {}", t.name())))),
        }
    }
    let mut txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .context("cannot start the run's transaction")?;
    let read_at: String = txn.query_one(&format!("SELECT {NOW_RFC3339}"), &[])?.get(0);
    tracing::info!(pipe = %ctx.pipe, tables = tables.len(), read_at = %read_at, "table run: reading the snapshot and partitions tables in one consistent snapshot");
    for t in tables {
        let name = t.name();
        if failed.iter().any(|(f, _)| *f == name) {
            continue;
        }
        let mut sp = txn.transaction().context("cannot set a savepoint")?;
        let done = match &t.mode {
            TableMode::Snapshot => snapshot(ctx, &mut sp, t, &read_at),
            TableMode::Partitions {
                closed_after,
                resync_changed,
            } => {
                let kids = children.remove(&name).unwrap_or_default();
                let how = (*closed_after, *resync_changed);
                partitions(ctx, &mut sp, t, &read_at, kids, how, logged)
            }
            TableMode::Incremental { .. } => Ok(()),
        };
        match done {
            Ok(()) => sp.commit().context("cannot release a savepoint")?,
            Err(e) => {
                sp.rollback().context("cannot roll back to a savepoint")?;
                failed.push((name.clone(), e.context(format!("table {name}"))));
            }
        }
    }
    txn.commit().context("cannot end the run's transaction")?;
    Ok(failed)
}

fn is_partitions(t: &TableSettings) -> bool {
    matches!(t.mode, TableMode::Partitions { .. })
}

/// The children of a partitions table with their fingerprints, read BEFORE the run's
/// transaction takes its snapshot, in a statement of their own. The statistics counters are
/// not MVCC: read inside the snapshot they would count a row committed after it, which the
/// snapshot does not show, and the partition, recorded with that fingerprint, would never
/// be sent again (not even with `resync_changed`). A backend reports its counts only after
/// its transaction ended, so every row counted here committed before the snapshot and is
/// read; a row committing between this read and the snapshot is read but not counted: the
/// next run sees the fingerprint move and, with `resync_changed`, sends the partition again
/// (harmless: it is reloaded whole).
fn fingerprints(client: &mut Client, t: &TableSettings) -> anyhow::Result<Vec<Child>> {
    match catalog::table(client, t)? {
        Some(tb) if tb.relkind == "p" => Ok(catalog::children(client, tb.oid)?),
        // Named by the run's own check, in its transaction.
        _ => Ok(Vec::new()),
    }
}

/// The whole table.
fn snapshot(
    ctx: &Ctx,
    txn: &mut Transaction<'_>,
    t: &TableSettings,
    read_at: &str,
) -> anyhow::Result<()> {
    let name = t.name();
    let tb = catalog::table(txn, t)?
        .ok_or_else(|| anyhow!("does not exist (or the role cannot see it)"))?;
    if let Some(queued) = super::queued_snapshot(&ctx.dir, &name) {
        // The receiver applies only the newest snapshot anyway: one waiting is enough.
        tracing::info!(pipe = %ctx.pipe, table = %name, queued = %queued, "snapshot run: table skipped, its previous snapshot is not sent yet (it goes first; the next run after it was sent reads the table again)");
        return Ok(());
    }
    let run = ctx.table_state(&name).batch + 1;
    let key = ObjectName::Snapshot {
        table: name.clone(),
        run,
    }
    .key();
    let header = TableHeader {
        version: VERSION,
        kind: TableKind::Snapshot,
        table: name.clone(),
        id: format!("snapshot:{name}:{}:{run}", ctx.epoch()),
        batch: run,
        columns: tb.columns.clone(),
        key: tb.primary_key,
        partition: None,
        watermark: None,
        read_at: read_at.to_owned(),
    };
    let sql = format!(
        "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
        select_list(&tb.columns),
        t.ident()
    );
    let mut rows = txn.copy_out(&sql)?;
    ctx.publish(&name, &key, &header, &mut rows, |rec, _| rec.batch = run)
}

/// Each closed child partition not synced yet (or changed, with `resync_changed`).
fn partitions(
    ctx: &Ctx,
    txn: &mut Transaction<'_>,
    t: &TableSettings,
    read_at: &str,
    children: Vec<Child>,
    (closed_after, resync_changed): (Option<Duration>, bool),
    logged: &mut Logged,
) -> anyhow::Result<()> {
    let name = t.name();
    let tb = catalog::table(txn, t)?
        .ok_or_else(|| anyhow!("does not exist (or the role cannot see it)"))?;
    if tb.relkind != "p" {
        bail!(
            "is not a partitioned table: use mode = \"snapshot\", or name its partitioned parent"
        );
    }
    let (parent_key, _, key_type) = catalog::partition_key(txn, tb.oid)?;
    for child in children {
        if child.relkind == "p" {
            if logged.insert((child.name.clone(), String::new())) {
                tracing::warn!(pipe = %ctx.pipe, table = %name, partition = %child.name, "a child partition that is itself partitioned is not sent (only one level of partitions)");
            }
            continue;
        }
        let fingerprint = blake3::hash(format!("{}:{}", child.oid, child.version).as_bytes())
            .to_hex()
            .to_string();
        match ctx.table_state(&name).partitions.get(&child.name) {
            Some(fp) if *fp == fingerprint => continue,
            Some(_) if !resync_changed => {
                if logged.insert((child.name.clone(), fingerprint)) {
                    tracing::info!(pipe = %ctx.pipe, table = %name, partition = %child.name, "a synced partition changed since it was sent (its relfilenode or its insert/update/delete counts); not sent again: resync_changed = false");
                }
                continue;
            }
            _ => {}
        }
        if let Some(after) = closed_after {
            if !closed(txn, &child.bound, key_type.as_deref(), after)? {
                continue;
            }
        }
        let info = PartitionInfo {
            parent: name.clone(),
            parent_key: parent_key.clone(),
            bound: child.bound.clone(),
            fingerprint,
        };
        send_partition(ctx, txn, &child, info, &tb.primary_key, read_at)?;
    }
    Ok(())
}

/// Reads one child partition into its spill file and records it with its fingerprint.
fn send_partition(
    ctx: &Ctx,
    txn: &mut Transaction<'_>,
    child: &Child,
    info: PartitionInfo,
    parent_pk: &[String],
    read_at: &str,
) -> anyhow::Result<()> {
    let child_name = format!("{}.{}", child.schema, child.name);
    let columns = catalog::columns(txn, child.oid)?;
    let mut key = catalog::primary_key(txn, child.oid)?;
    if key.is_empty() {
        key = parent_pk.to_vec();
    }
    let object = ObjectName::Partition {
        parent: info.parent.clone(),
        child: child.name.clone(),
        fingerprint: info.fingerprint.clone(),
    };
    let (parent, fingerprint) = (info.parent.clone(), info.fingerprint.clone());
    let header = TableHeader {
        version: VERSION,
        kind: TableKind::Partition,
        table: child_name.clone(),
        id: format!("partition:{child_name}:{}:{fingerprint}", ctx.epoch()),
        batch: 0,
        columns: columns.clone(),
        key,
        partition: Some(info),
        watermark: None,
        read_at: read_at.to_owned(),
    };
    let sql = format!(
        "COPY (SELECT {} FROM {}.{}) TO STDOUT (FORMAT binary)",
        select_list(&columns),
        quote(&child.schema),
        quote(&child.name)
    );
    let mut rows = txn.copy_out(&sql)?;
    ctx.publish(&parent, &object.key(), &header, &mut rows, |rec, _| {
        rec.partitions.insert(child.name.clone(), fingerprint);
    })
    .with_context(|| format!("partition {child_name}"))
}

/// Whether a range partition's upper bound plus `after` is at or before the database's now().
fn closed(
    txn: &mut Transaction<'_>,
    bound: &str,
    key_type: Option<&str>,
    after: Duration,
) -> anyhow::Result<bool> {
    let (Some(upper), Some(ty)) = (catalog::upper_bound(bound), key_type) else {
        return Ok(false);
    };
    let sql = format!(
        "SELECT ({}::{ty} + {}::interval) <= now()",
        literal(&upper),
        literal(&format!("{} milliseconds", after.as_millis()))
    );
    Ok(txn.query_one(&sql, &[])?.get(0))
}
