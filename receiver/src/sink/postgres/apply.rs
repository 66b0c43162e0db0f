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

use super::bounds;
use super::config::PostgresSettings;
use super::names::{QualName, refused_schema};
use super::object::ObjectFile;
use super::schema::{self, idents};
use super::swap;

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
    /// A snapshot or partition read earlier (by the source's clock) than the newest version
    /// of its target applied already: nothing done.
    Older {
        newest: String,
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
            Done::Older { newest } => write!(
                f,
                "older than applied table={t} object={o} kind={k} (a version read at {newest} was applied; this one is skipped)"
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
    /// The object targets a table the sink may not write to: refused for good.
    #[error("refused: {0}")]
    Refused(String),
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
    let target = target_of(&obj.header, s)?;
    check_allowed(&obj.header, s, &target)?;
    let h = obj.header.clone();
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
    let read_at = read_at(&mut tx, &h)?;
    if h.kind != TableKind::Incremental {
        // The source database's clock orders versions of a table (or a partition): one read
        // earlier than a version applied already is stale, whatever its id or path.
        let newest: Option<String> = tx
            .query_opt(
                "SELECT max(read_at)::text FROM gapsync.applied WHERE origin = $1 AND pipe = $2 AND table_name = $3 AND kind = $4 HAVING max(read_at) > $5::text::timestamptz",
                &[&who.0, &who.1, &tname, &kind_name(h.kind), &read_at],
            )
            .map_err(db_err)?
            .map(|r| r.get(0));
        if let Some(newest) = newest {
            return Ok(outcome(Done::Older { newest }));
        }
    }
    schema::canonical_types(&mut tx, &target, &mut obj.header)?;
    let rows = match h.kind {
        TableKind::Snapshot => snapshot(&mut tx, s, &target, &mut obj)?,
        TableKind::Partition => partition(&mut tx, s, &target, &mut obj)?,
        TableKind::Incremental => incremental(&mut tx, s, &target, &mut obj)?,
    };
    let batch = i64::try_from(h.batch).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO gapsync.applied (origin, pipe, object, table_name, kind, batch, rows, read_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::timestamptz)",
        &[&who.0, &who.1, &h.id, &tname, &kind_name(h.kind), &batch, &i64::try_from(rows).unwrap_or(i64::MAX), &read_at],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(outcome(Done::Applied {
        rows,
        ms: t0.elapsed().as_millis() as u64,
    }))
}

/// The header's `read_at`, checked by the server as a timestamp with time zone.
fn read_at(tx: &mut Transaction<'_>, h: &TableHeader) -> Result<String, ApplyError> {
    tx.query_one("SELECT $1::text::timestamptz::text", &[&h.read_at])
        .map(|r| r.get(0))
        .map_err(|e| {
            ApplyError::Bad(format!(
                "its read_at {:?} is not a timestamp: {}",
                h.read_at,
                super::db::describe(&e)
            ))
        })
}

/// Refuses an object whose target may not be written, before the database is asked.
pub fn precheck(h: &TableHeader, s: &PostgresSettings) -> Result<(), ApplyError> {
    check_allowed(h, s, &target_of(h, s)?)
}

/// An object whose target (for a partition: also its parent's target) is in a refused schema,
/// or outside the sink's `tables` allowlist, is refused.
fn check_allowed(
    h: &TableHeader,
    s: &PostgresSettings,
    target: &QualName,
) -> Result<(), ApplyError> {
    let mut names = vec![target.clone()];
    let mut listed = target.clone();
    if let (TableKind::Partition, Some(p)) = (h.kind, &h.partition) {
        if let Some(parent) = QualName::parse(&p.parent) {
            listed = s.target(&parent);
            names.push(listed.clone());
        }
    }
    if let Some(n) = names.iter().find(|n| refused_schema(&n.schema)) {
        return Err(ApplyError::Refused(format!(
            "object {} from {} targets table {n}, in a schema gapsync never writes to (gapsync, pg_*, information_schema)",
            h.id, h.table
        )));
    }
    if !s.allows(&listed) {
        return Err(ApplyError::Refused(format!(
            "object {} from {} targets table {listed}, which the sink's `tables` list does not allow",
            h.id, h.table
        )));
    }
    Ok(())
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
    swap::limit_lock_wait(tx)?;
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
    let mut access = None;
    if let Some(rel) = old {
        access = Some(swap::access_of(tx, rel.oid)?);
        schema::move_owned_sequences(tx, rel.oid, &new)?;
        swap::exec_locking(tx, &format!("DROP TABLE {}", target.sql()), target, rel.oid)?;
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
    if let Some(a) = access {
        swap::restore(tx, target, &a)?;
    }
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
    let names: Vec<String> = h.columns.iter().map(|c| c.name.clone()).collect();
    let key = bounds::partition_key(&p.parent_key, &names).map_err(|e| {
        ApplyError::Bad(format!("partition key {:?} is refused: {e}", p.parent_key))
    })?;
    let bound = bounds::bound(&p.bound)
        .map_err(|e| ApplyError::Bad(format!("partition bound {:?} is refused: {e}", p.bound)))?;
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
        None if s.create_tables => schema::create_table(tx, &parent, &h, &[], Some(&key))?,
        None => return Err(schema::missing(&parent, &h)),
    }
    match schema::relation(tx, child)? {
        Some(rel) => {
            swap::limit_lock_wait(tx)?;
            swap::exec_locking(tx, &format!("TRUNCATE {}", child.sql()), child, rel.oid)?;
        }
        None if s.create_tables => {
            exec(
                tx,
                &format!(
                    "CREATE TABLE {} PARTITION OF {} {}",
                    child.sql(),
                    parent.sql(),
                    bound
                ),
            )?;
            tracing::info!(table = %child, parent = %parent, bound = %bound, "created a partition");
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
    // A batch applied late (after a newer one) never overwrites a newer version of a row.
    let newer_only = match &h.watermark {
        Some(w) if names.contains(&w.column) => {
            let q = super::names::quote_ident(&w.column);
            format!(" WHERE gapsync_target.{q} IS NULL OR gapsync_target.{q} <= EXCLUDED.{q}")
        }
        Some(w) => {
            return Err(ApplyError::Bad(format!(
                "its watermark column {:?} is not one of its columns",
                w.column
            )));
        }
        None => String::new(),
    };
    let action = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}{newer_only}", updates.join(", "))
    };
    let sql = format!(
        "INSERT INTO {} AS gapsync_target ({cols}) SELECT {cols} FROM pg_temp.gapsync_stage ON CONFLICT ({}) {action}",
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
