//! The target's tables against an object's columns: looked up in the catalog, created when
//! missing (`create_tables`), a column the object adds is added; a column retyped or dropped
//! at the source stops the object with an error naming the table and column.

use gapsync_protocol::table::{Column, TableHeader};
use postgres::Transaction;

use super::apply::{ApplyError, db_err};
use super::names::{QualName, quote_ident};

/// A relation of the target: its oid and kind (`r` table, `p` partitioned table...).
pub struct Relation {
    pub oid: u32,
    pub kind: String,
}

/// Looks `q` up in the catalog.
pub fn relation(tx: &mut Transaction<'_>, q: &QualName) -> Result<Option<Relation>, ApplyError> {
    let row = tx
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&q.schema, &q.name],
        )
        .map_err(db_err)?;
    Ok(row.map(|r| Relation {
        oid: r.get(0),
        kind: r.get(1),
    }))
}

/// The columns of relation `oid`: name and type as `format_type` spells it.
fn columns(tx: &mut Transaction<'_>, oid: u32) -> Result<Vec<(String, String)>, ApplyError> {
    let rows = tx
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .map_err(db_err)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn schema_err(table: &QualName, problem: String) -> ApplyError {
    ApplyError::Schema {
        table: table.to_string(),
        problem,
    }
}

/// Makes `target` (relation `oid`) take the object's columns: every problem is found before
/// anything is changed; then the columns the object adds are added.
pub fn reconcile(
    tx: &mut Transaction<'_>,
    target: &QualName,
    oid: u32,
    h: &TableHeader,
) -> Result<(), ApplyError> {
    let have = columns(tx, oid)?;
    for (name, ty) in &have {
        match h.columns.iter().find(|c| &c.name == name) {
            None => {
                return Err(schema_err(
                    target,
                    format!(
                        "column {name:?} is on the target but not in the object from {}: it was dropped or renamed at the source; drop it on the target (or add it back at the source), then the pipe resumes by itself",
                        h.table
                    ),
                ));
            }
            Some(c) if &c.type_name != ty => {
                return Err(schema_err(
                    target,
                    format!(
                        "column {name:?} is {ty} on the target but {} in the object from {}: it was retyped at the source; alter it on the target (ALTER TABLE ... ALTER COLUMN {} TYPE {}), then the pipe resumes by itself",
                        c.type_name,
                        h.table,
                        quote_ident(name),
                        c.type_name
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    for c in h
        .columns
        .iter()
        .filter(|c| !have.iter().any(|(n, _)| n == &c.name))
    {
        tx.execute(
            &format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                target.sql(),
                quote_ident(&c.name),
                c.type_name
            ),
            &[],
        )
        .map_err(db_err)?;
        tracing::info!(table = %target, column = %c.name, r#type = %c.type_name, "added a column the source added");
    }
    Ok(())
}

/// Replaces every column type of `h` with the server's own spelling of it: each type is first
/// parsed by the server as a type name and nothing else (`$1::text::regtype`, which refuses a
/// type followed by more DDL, a CHECK, a function call), then spelled by `format_type` from a
/// temporary table made of the types the server accepted. Only that spelling goes into DDL.
pub fn canonical_types(
    tx: &mut Transaction<'_>,
    target: &QualName,
    h: &mut TableHeader,
) -> Result<(), ApplyError> {
    for c in &h.columns {
        if c.type_name.contains(['\0', ';'])
            || c.type_name.contains("--")
            || c.type_name.contains("/*")
        {
            return Err(bad_type(target, c, "it is not a type name"));
        }
        if let Err(e) = tx.query_one("SELECT $1::text::regtype::text", &[&c.type_name]) {
            return Err(match e.code() {
                Some(&postgres::error::SqlState::UNDEFINED_OBJECT) => schema_err(
                    target,
                    format!(
                        "column {:?} has type {:?}, which the target database does not know: create the type or extension on the target, then the pipe resumes by itself",
                        c.name, c.type_name
                    ),
                ),
                _ => bad_type(target, c, &super::db::describe(&e)),
            });
        }
    }
    if h.columns.is_empty() {
        return Ok(());
    }
    // Every type is a lone type name now (the server parsed it as one): the temporary table
    // gives each its typmod, which `regtype` alone drops.
    let defs: Vec<String> = h
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("c{i} {}", c.type_name))
        .collect();
    tx.execute(
        &format!(
            "CREATE TEMP TABLE gapsync_types ({}) ON COMMIT DROP",
            defs.join(", ")
        ),
        &[],
    )
    .map_err(|e| {
        ApplyError::Bad(format!(
            "table {target}: the column types are not usable: {}",
            super::db::describe(&e)
        ))
    })?;
    let rows = tx
        .query(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'pg_temp.gapsync_types'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .map_err(db_err)?;
    for (c, r) in h.columns.iter_mut().zip(&rows) {
        c.type_name = r.get(0);
    }
    tx.execute("DROP TABLE pg_temp.gapsync_types", &[])
        .map_err(db_err)?;
    Ok(())
}

fn bad_type(target: &QualName, c: &Column, why: &str) -> ApplyError {
    ApplyError::Bad(format!(
        "table {target}: column {:?} has type {:?}, which is not a type name the target accepts: {why}",
        c.name, c.type_name
    ))
}

fn column_def(c: &Column) -> String {
    let nn = if c.not_null { " NOT NULL" } else { "" };
    format!("{} {}{nn}", quote_ident(&c.name), c.type_name)
}

/// Creates `q` (and its schema) from the object's columns: `PRIMARY KEY (key)` when `key` is
/// given, `PARTITION BY <part>` when `part` is.
pub fn create_table(
    tx: &mut Transaction<'_>,
    q: &QualName,
    h: &TableHeader,
    key: &[String],
    part: Option<&str>,
) -> Result<(), ApplyError> {
    create_schema(tx, q)?;
    let mut defs: Vec<String> = h.columns.iter().map(column_def).collect();
    if !key.is_empty() {
        defs.push(format!("PRIMARY KEY ({})", idents(key)));
    }
    let part = part
        .map(|p| format!(" PARTITION BY {p}"))
        .unwrap_or_default();
    tx.execute(
        &format!("CREATE TABLE {} ({}){part}", q.sql(), defs.join(", ")),
        &[],
    )
    .map_err(db_err)?;
    tracing::info!(table = %q, "created a table from the source's columns");
    Ok(())
}

/// Creates `q`'s schema unless it exists.
pub fn create_schema(tx: &mut Transaction<'_>, q: &QualName) -> Result<(), ApplyError> {
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&q.schema],
        )
        .map_err(db_err)?
        .is_some();
    if !exists {
        tx.execute(&format!("CREATE SCHEMA {}", quote_ident(&q.schema)), &[])
            .map_err(db_err)?;
    }
    Ok(())
}

/// A missing table that may not be created.
pub fn missing(q: &QualName, h: &TableHeader) -> ApplyError {
    schema_err(
        q,
        format!(
            "the table does not exist on the target and create_tables = false: create it (the columns of {} are {}), then the pipe resumes by itself",
            h.table,
            h.columns
                .iter()
                .map(column_def)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// `"a", "b"`.
pub fn idents(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives the serial sequences owned by `from`'s columns to the same columns of `to` (a
/// snapshot's new table took their defaults), so dropping `from` does not drop them.
pub fn move_owned_sequences(
    tx: &mut Transaction<'_>,
    from: u32,
    to: &QualName,
) -> Result<(), ApplyError> {
    let rows = tx
        .query(
            "SELECT d.objid::regclass::text, a.attname::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid WHERE d.refobjid = $1 AND d.classid = 'pg_class'::regclass AND d.deptype = 'a'",
            &[&from],
        )
        .map_err(db_err)?;
    for r in rows {
        let (seq, col): (String, String) = (r.get(0), r.get(1));
        // `seq` is regclass output: PostgreSQL quoted it already.
        tx.execute(
            &format!(
                "ALTER SEQUENCE {seq} OWNED BY {}.{}",
                to.sql(),
                quote_ident(&col)
            ),
            &[],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

/// Gives the indexes a snapshot's new table got (named after `<target>__gapsync_new`, with a
/// counter when the old table still held the name) the names they would have on `target`:
/// `assets__gapsync_new_pkey1` becomes `assets_pkey` again, so names do not drift run by run.
pub fn rename_indexes(
    tx: &mut Transaction<'_>,
    target: &QualName,
    new_name: &str,
) -> Result<(), ApplyError> {
    let rows = tx
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1 AND t.relname = $2",
            &[&target.schema, &target.name],
        )
        .map_err(db_err)?;
    for r in rows {
        let name: String = r.get(0);
        let Some(rest) = name.strip_prefix(new_name) else {
            continue;
        };
        let wanted = format!(
            "{}{}",
            target.name,
            rest.trim_end_matches(|c: char| c.is_ascii_digit())
        );
        if wanted.len() > 63
            || relation(
                tx,
                &QualName {
                    schema: target.schema.clone(),
                    name: wanted.clone(),
                },
            )?
            .is_some()
        {
            continue;
        }
        let from = QualName {
            schema: target.schema.clone(),
            name,
        };
        tx.execute(
            &format!(
                "ALTER INDEX {} RENAME TO {}",
                from.sql(),
                quote_ident(&wanted)
            ),
            &[],
        )
        .map_err(db_err)?;
    }
    Ok(())
}
