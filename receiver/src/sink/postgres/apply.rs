//! Applying one table object in ONE transaction together with its row in `gapsync.applied`:
//!
//! - snapshot: loaded into a new table beside the target, then the old one dropped and the new
//!   one renamed in its place (readers see the old table or the new one, never half);
//! - partition: parent and child created when missing, the child truncated and reloaded;
//! - incremental: loaded into a temporary table, then upserted by key.
//!
//! An object recorded already is skipped, and so is a snapshot older than the newest applied
//! to the same target. The rows stream from the file into `COPY ... FROM STDIN (FORMAT
//! binary)` through a fixed buffer: memory does not grow with the object.

use std::io::Read as _;
use std::time::Instant;

use gapsync_protocol::table::{TableHeader, TableKind};
use postgres::{Client, Transaction};

use super::config::PostgresSettings;
use super::names::{QualName, expr_is_plain};
use super::object::ObjectFile;
use super::schema::{self, idents};

/// What applying an object did, to which target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub target: String,
    /// The header's `id`.
    pub object: String,
    pub kind: &'static str,
    pub done: Done,
}

/// What was done with an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Applied {
        rows: u64,
        ms: u64,
    },
    /// Recorded in `gapsync.applied` already: nothing done.
    AlreadyApplied,
    /// A snapshot older than (or as old as) the newest applied to its target: nothing done.
    OlderSnapshot {
        newest: i64,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, o, k) = (&self.target, &self.object, self.kind);
        match &self.done {
            Done::Applied { rows, ms } => {
                write!(
                    f,
                    "applied table={t} object={o} kind={k} rows={rows} ms={ms}"
                )
            }
            Done::AlreadyApplied => write!(f, "already applied table={t} object={o} kind={k}"),
            Done::OlderSnapshot { newest } => write!(
                f,
                "already applied table={t} object={o} kind={k} (a newer snapshot, run {newest}, was applied; this one is skipped)"
            ),
        }
    }
}

/// Why an object was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The file is not a usable table object: applying it again cannot help.
    #[error("{0}")]
    Bad(String),
    /// The target table does not fit the object: the operator must act.
    #[error("table {table}: {problem}")]
    Schema { table: String, problem: String },
    /// The database refused a statement.
    #[error("{0}")]
    Database(String),
    /// The database cannot be reached, or the connection broke.
    #[error("{0}")]
    Connection(String),
    #[error("{0}")]
    Io(String),
}

pub(crate) fn db_err(e: postgres::Error) -> ApplyError {
    ApplyError::Database(super::db::describe(&e))
}

/// The name `kind` has in logs and in `gapsync.applied`.
pub fn kind_name(k: TableKind) -> &'static str {
    match k {
        TableKind::Snapshot => "snapshot",
        TableKind::Partition => "partition",
        TableKind::Incremental => "incremental",
    }
}

/// The target table an object is applied to (for a partition: the child, in the target
/// parent's schema).
pub fn target_of(h: &TableHeader, s: &PostgresSettings) -> Result<QualName, ApplyError> {
    let source = QualName::parse(&h.table)
        .ok_or_else(|| ApplyError::Bad(format!("table name {:?} is not schema.table", h.table)))?;
    match &h.partition {
        Some(p) if h.kind == TableKind::Partition => {
            let parent = QualName::parse(&p.parent).ok_or_else(|| {
                ApplyError::Bad(format!("parent name {:?} is not schema.table", p.parent))
            })?;
            Ok(QualName {
                schema: s.target(&parent).schema,
                name: source.name,
            })
        }
        _ => Ok(s.target(&source)),
    }
}

/// Applies `obj` exactly once for pipe `who` = (origin, pipe).
pub fn apply(
    client: &mut Client,
    s: &PostgresSettings,
    who: (&str, &str),
    mut obj: ObjectFile,
) -> Result<Outcome, ApplyError> {
    let t0 = Instant::now();
    let h = obj.header.clone();
    schema::check_types(&h)?;
    let target = target_of(&h, s)?;
    let tname = target.to_string();
    let outcome = |done| Outcome {
        target: tname.clone(),
        object: h.id.clone(),
        kind: kind_name(h.kind),
        done,
    };
    let mut tx = client.transaction().map_err(db_err)?;
    let done = tx
        .query_opt(
            "SELECT 1 FROM gapsync.applied WHERE origin = $1 AND pipe = $2 AND object = $3",
            &[&who.0, &who.1, &h.id],
        )
        .map_err(db_err)?;
    if done.is_some() {
        return Ok(outcome(Done::AlreadyApplied));
    }
    let batch = i64::try_from(h.batch).unwrap_or(i64::MAX);
    if h.kind == TableKind::Snapshot {
        let newest: Option<i64> = tx
            .query_one(
                "SELECT max(batch) FROM gapsync.applied WHERE origin = $1 AND pipe = $2 AND table_name = $3 AND kind = 'snapshot'",
                &[&who.0, &who.1, &tname],
            )
            .map_err(db_err)?
            .get(0);
        if let Some(newest) = newest.filter(|n| *n >= batch) {
            return Ok(outcome(Done::OlderSnapshot { newest }));
        }
    }
    let rows = match h.kind {
        TableKind::Snapshot => snapshot(&mut tx, s, &target, &mut obj)?,
        TableKind::Partition => partition(&mut tx, s, &target, &mut obj)?,
        TableKind::Incremental => incremental(&mut tx, s, &target, &mut obj)?,
    };
    tx.execute(
        "INSERT INTO gapsync.applied (origin, pipe, object, table_name, kind, batch, rows) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&who.0, &who.1, &h.id, &tname, &kind_name(h.kind), &batch, &i64::try_from(rows).unwrap_or(i64::MAX)],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(outcome(Done::Applied {
        rows,
        ms: t0.elapsed().as_millis() as u64,
    }))
}

/// Streams the object's COPY stream into `table` (the header's columns, in its order).
fn copy_into(
    tx: &mut Transaction<'_>,
    table: &str,
    obj: &mut ObjectFile,
) -> Result<u64, ApplyError> {
    let names: Vec<String> = obj.header.columns.iter().map(|c| c.name.clone()).collect();
    let sql = format!(
        "COPY {table} ({}) FROM STDIN (FORMAT binary)",
        idents(&names)
    );
    let mut w = tx.copy_in(&sql).map_err(db_err)?;
    let mut rows = (&obj.file).take(obj.copy_len);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = rows
            .read(&mut buf)
            .map_err(|e| ApplyError::Io(format!("cannot read it: {e}")))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut w, &buf[..n])
            .map_err(|e| ApplyError::Database(format!("COPY into {table} failed: {e}")))?;
    }
    w.finish().map_err(db_err)
}

fn snapshot(
    tx: &mut Transaction<'_>,
    s: &PostgresSettings,
    target: &QualName,
    obj: &mut ObjectFile,
) -> Result<u64, ApplyError> {
    let h = obj.header.clone();
    let new = target.beside("__gapsync_new");
    let old = schema::relation(tx, target)?;
    match &old {
        Some(rel) => {
            schema::reconcile(tx, target, rel.oid, &h)?;
            // A table of that name left by hand (a crashed load left none: it was rolled back).
            if schema::relation(tx, &new)?.is_some() {
                exec(tx, &format!("DROP TABLE {}", new.sql()))?;
            }
            exec(
                tx,
                &format!(
                    "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
                    new.sql(),
                    target.sql()
                ),
            )?;
        }
        None if s.create_tables => schema::create_table(tx, &new, &h, &h.key, None)?,
        None => return Err(schema::missing(target, &h)),
    }
    let rows = copy_into(tx, &new.sql(), obj)?;
    if let Some(rel) = old {
        schema::move_owned_sequences(tx, rel.oid, &new)?;
        exec(tx, &format!("DROP TABLE {}", target.sql()))?;
    }
    exec(
        tx,
        &format!(
            "ALTER TABLE {} RENAME TO {}",
            new.sql(),
            super::names::quote_ident(&target.name)
        ),
    )?;
    schema::rename_indexes(tx, target, &new.name)?;
    Ok(rows)
}

fn partition(
    tx: &mut Transaction<'_>,
    s: &PostgresSettings,
    child: &QualName,
    obj: &mut ObjectFile,
) -> Result<u64, ApplyError> {
    let h = obj.header.clone();
    let p = h
        .partition
        .clone()
        .ok_or_else(|| ApplyError::Bad("a partition object without its `partition`".into()))?;
    if !expr_is_plain(&p.parent_key) || !expr_is_plain(&p.bound) {
        return Err(ApplyError::Bad(format!(
            "partition key {:?} or bound {:?} is not a plain expression",
            p.parent_key, p.bound
        )));
    }
    let parent = QualName::parse(&p.parent)
        .map(|q| s.target(&q))
        .ok_or_else(|| {
            ApplyError::Bad(format!("parent name {:?} is not schema.table", p.parent))
        })?;
    match schema::relation(tx, &parent)? {
        Some(rel) if rel.kind != "p" => {
            return Err(ApplyError::Schema {
                table: parent.to_string(),
                problem: "the table is not partitioned on the target, but the source sends it partition by partition: replace it with a partitioned table (or drop it and let create_tables make it)".into(),
            });
        }
        Some(rel) => schema::reconcile(tx, &parent, rel.oid, &h)?,
        None if s.create_tables => schema::create_table(tx, &parent, &h, &[], Some(&p.parent_key))?,
        None => return Err(schema::missing(&parent, &h)),
    }
    match schema::relation(tx, child)? {
        Some(_) => exec(tx, &format!("TRUNCATE {}", child.sql()))?,
        None if s.create_tables => {
            exec(
                tx,
                &format!(
                    "CREATE TABLE {} PARTITION OF {} {}",
                    child.sql(),
                    parent.sql(),
                    p.bound
                ),
            )?;
            tracing::info!(table = %child, parent = %parent, bound = %p.bound, "created a partition");
        }
        None => return Err(schema::missing(child, &h)),
    }
    copy_into(tx, &child.sql(), obj)
}

fn incremental(
    tx: &mut Transaction<'_>,
    s: &PostgresSettings,
    target: &QualName,
    obj: &mut ObjectFile,
) -> Result<u64, ApplyError> {
    let h = obj.header.clone();
    match schema::relation(tx, target)? {
        Some(rel) => schema::reconcile(tx, target, rel.oid, &h)?,
        None if s.create_tables => schema::create_table(tx, target, &h, &h.key, None)?,
        None => return Err(schema::missing(target, &h)),
    }
    let names: Vec<String> = h.columns.iter().map(|c| c.name.clone()).collect();
    let cols = idents(&names);
    // No stage table is left from before: it is dropped at commit and with a rollback.
    exec(
        tx,
        &format!(
            "CREATE TEMP TABLE gapsync_stage ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
            target.sql()
        ),
    )?;
    let rows = copy_into(tx, "pg_temp.gapsync_stage", obj)?;
    let updates: Vec<String> = names
        .iter()
        .filter(|n| !h.key.contains(n))
        .map(|n| {
            let q = super::names::quote_ident(n);
            format!("{q} = EXCLUDED.{q}")
        })
        .collect();
    let action = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let sql = format!(
        "INSERT INTO {} ({cols}) SELECT {cols} FROM pg_temp.gapsync_stage ON CONFLICT ({}) {action}",
        target.sql(),
        idents(&h.key)
    );
    tx.execute(&sql, &[]).map_err(|e| {
        if e.code() == Some(&postgres::error::SqlState::INVALID_COLUMN_REFERENCE) {
            ApplyError::Schema {
                table: target.to_string(),
                problem: format!(
                    "no primary key or unique index on the key ({}) on the target, so batches cannot be upserted: add one",
                    h.key.join(", ")
                ),
            }
        } else {
            db_err(e)
        }
    })?;
    Ok(rows)
}

fn exec(tx: &mut Transaction<'_>, sql: &str) -> Result<(), ApplyError> {
    tx.execute(sql, &[]).map(|_| ()).map_err(db_err)
}
