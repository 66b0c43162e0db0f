//! What the source asks PostgreSQL's catalog: a table's columns (`pg_attribute`, spelled by
//! `format_type`, not dropped, `attnum > 0`), its primary key, its partitioning and children.
//! Works on a `Client` or a `Transaction` alike (`GenericClient`).

use gapsync_protocol::table::Column;
use postgres::GenericClient;

use super::config::{TableSettings, quote};

/// A table found in the database.
#[derive(Debug, Clone)]
pub struct Table {
    pub oid: u32,
    /// `r` table, `p` partitioned table, `v` view...
    pub relkind: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
}

/// A child partition.
#[derive(Debug, Clone)]
pub struct Child {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub relkind: String,
    /// `FOR VALUES FROM (...) TO (...)`, as `pg_get_expr` spells it.
    pub bound: String,
    /// What the fingerprint is made of: `relfilenode-n_tup_ins-n_tup_upd-n_tup_del`.
    pub version: String,
}

/// The table, or `None` when it does not exist (or the role cannot see its schema).
pub fn table(
    c: &mut impl GenericClient,
    t: &TableSettings,
) -> Result<Option<Table>, postgres::Error> {
    let row = c.query_one(
        "SELECT to_regclass($1)::oid, (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1))",
        &[&t.ident()],
    )?;
    let (Some(oid), Some(relkind)) = (
        row.get::<_, Option<u32>>(0),
        row.get::<_, Option<String>>(1),
    ) else {
        return Ok(None);
    };
    Ok(Some(Table {
        oid,
        relkind,
        columns: columns(c, oid)?,
        primary_key: primary_key(c, oid)?,
    }))
}

/// The columns, in order.
pub fn columns(c: &mut impl GenericClient, oid: u32) -> Result<Vec<Column>, postgres::Error> {
    let rows = c.query(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&oid],
    )?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
        })
        .collect())
}

/// The primary key's columns, in key order (empty: none).
pub fn primary_key(c: &mut impl GenericClient, oid: u32) -> Result<Vec<String>, postgres::Error> {
    let rows = c.query(
        "SELECT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) \
         WHERE i.indrelid = $1 AND i.indisprimary \
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
        &[&oid],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A partitioned table's key as `pg_get_partkeydef` spells it, its strategy (`r`, `l`, `h`)
/// and, when it is one plain column, that column's type.
pub fn partition_key(
    c: &mut impl GenericClient,
    oid: u32,
) -> Result<(String, String, Option<String>), postgres::Error> {
    let row = c.query_one(
        "SELECT pg_get_partkeydef(p.partrelid), p.partstrat::text, \
         CASE WHEN p.partnatts = 1 THEN format_type(a.atttypid, a.atttypmod) END \
         FROM pg_partitioned_table p \
         LEFT JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] \
         WHERE p.partrelid = $1",
        &[&oid],
    )?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The direct children of a partitioned table, by name, with what their fingerprint is made
/// of: the relfilenode (changes on TRUNCATE, VACUUM FULL, CLUSTER) and the tuples inserted,
/// updated and deleted since the statistics were last reset (`pg_stat_all_tables`).
pub fn children(c: &mut impl GenericClient, oid: u32) -> Result<Vec<Child>, postgres::Error> {
    let rows = c.query(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
         coalesce(pg_get_expr(c.relpartbound, c.oid), ''), \
         c.relfilenode::text || '-' || coalesce(s.n_tup_ins, 0) || '-' || \
         coalesce(s.n_tup_upd, 0) || '-' || coalesce(s.n_tup_del, 0) \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid \
         WHERE i.inhparent = $1 ORDER BY c.relname",
        &[&oid],
    )?;
    Ok(rows
        .iter()
        .map(|r| Child {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            relkind: r.get(3),
            bound: r.get(4),
            version: r.get(5),
        })
        .collect())
}

/// The upper bound of a range partition's `FOR VALUES FROM (...) TO (...)`, unquoted; `None`
/// for MAXVALUE, a multi-column bound, a list, hash or default partition.
pub fn upper_bound(bound: &str) -> Option<String> {
    let (_, to) = bound.rsplit_once(" TO (")?;
    let inner = to.strip_suffix(')')?.trim();
    let quoted = inner.strip_prefix('\'')?.strip_suffix('\'')?;
    // One literal only: a quote inside is doubled ('').
    if quoted.replace("''", "").contains('\'') {
        return None;
    }
    Some(quoted.replace("''", "'"))
}

/// A literal for SQL that cannot take parameters (COPY): `'text'`, with quotes doubled (and
/// backslashes, in an `E''` literal, when there are any).
pub fn literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// The select list of every column.
pub fn select_list(columns: &[Column]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    names.join(", ")
}

/// The database's clock now, RFC 3339 UTC (a header's `read_at`).
pub const NOW_RFC3339: &str =
    "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upper_bound_of_a_range_partition() {
        assert_eq!(
            upper_bound("FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-11-02 00:00:00+00')")
                .as_deref(),
            Some("2026-11-02 00:00:00+00")
        );
        assert_eq!(
            upper_bound("FOR VALUES FROM ('2026-11-01') TO ('2026-11-02')").as_deref(),
            Some("2026-11-02")
        );
        assert_eq!(
            upper_bound("FOR VALUES FROM ('2026-11-01') TO (MAXVALUE)"),
            None
        );
        assert_eq!(upper_bound("FOR VALUES IN (1, 2)"), None);
        assert_eq!(upper_bound("DEFAULT"), None);
        assert_eq!(upper_bound("FOR VALUES FROM ('a', 1) TO ('b', 2)"), None);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literal("2026-01-01"), "'2026-01-01'");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b'"), "E'a\\\\b'''");
    }
}
