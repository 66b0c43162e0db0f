//! Table objects: how a batch of rows of a database table crosses as one object (PROTOCOL.md,
//! section 9). The object is an ordinary gapsync object (framed, digested, resumable like a
//! file); its bytes are
//!
//! ```text
//! "GSTABLE1"                 8 bytes, the magic
//! header length              u32, big-endian, at most MAX_HEADER_BYTES
//! header                     UTF-8 JSON, the TableHeader below
//! rows                       PostgreSQL's binary COPY stream, as `COPY ... TO STDOUT
//!                            (FORMAT binary)` wrote it (its own signature, rows, trailer)
//! ```
//!
//! Binary COPY round-trips every PostgreSQL type exactly (numeric, NaN and infinities,
//! timestamps, arrays, bytea...) as long as the target column has the same type, which the
//! header's column list lets the receiver check before it loads a row. No I/O here: the
//! sender's `postgres` source writes these bytes and the receiver's `postgres` sink (and
//! `gapsync-receiver load`) reads them.

use serde::{Deserialize, Serialize};

/// The first 8 bytes of every table object.
pub const MAGIC: &[u8; 8] = b"GSTABLE1";

/// The largest header accepted (checked before it is read into memory).
pub const MAX_HEADER_BYTES: u32 = 1 << 20;

/// Bytes before the header: the magic and the header length.
pub const PREFIX_LEN: usize = 12;

/// The most columns a table object may describe (PostgreSQL's own limit is 1,600).
pub const MAX_COLUMNS: usize = 1600;

/// The header's format version (`version` in the JSON).
pub const VERSION: u32 = 1;

/// What a table object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// The whole table at one moment: the target table is replaced atomically.
    Snapshot,
    /// One whole child partition: the target partition is truncated and reloaded atomically.
    Partition,
    /// Rows past a watermark: upserted by key.
    Incremental,
}

/// One column, as the source database describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The type as PostgreSQL's `format_type` spells it (`numeric(12,2)`, `timestamp with
    /// time zone`, `integer[]`): what `CREATE TABLE` takes and what the target is compared to.
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub not_null: bool,
}

/// A child partition's place in its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// The parent table, `schema.name`.
    pub parent: String,
    /// The parent's partition key, as `pg_get_partkeydef` spells it (`RANGE (ts)`).
    pub parent_key: String,
    /// The child's bound, as `pg_get_expr(relpartbound)` spells it (`FOR VALUES FROM (...)
    /// TO (...)`).
    pub bound: String,
    /// What identified this partition's content when it was read (see the source's
    /// `resync_changed`): a new fingerprint is a new object.
    pub fingerprint: String,
}

/// An incremental batch's watermark range: rows with `from < column <= to` (`from` absent for
/// the first batch), as PostgreSQL's text form of the column's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkRange {
    pub column: String,
    pub from: Option<String>,
    pub to: String,
}

/// The JSON header of a table object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableHeader {
    pub version: u32,
    pub kind: TableKind,
    /// The source table (for a partition: the child), `schema.name`.
    pub table: String,
    /// The object's identity for exactly-once: unique per pipe, the same when the same batch
    /// is sent again (`incremental:public.events:42`, `snapshot:public.assets:7`,
    /// `partition:public.m_2026_11_01:<fingerprint>`).
    pub id: String,
    /// Batch number (incremental) or run number (snapshot); 0 for a partition. Informational:
    /// the receiver orders snapshots and partitions by `read_at`, never by this number.
    pub batch: u64,
    pub columns: Vec<Column>,
    /// The key columns (upserts of incremental batches; the primary key of a created table).
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub partition: Option<PartitionInfo>,
    #[serde(default)]
    pub watermark: Option<WatermarkRange>,
    /// When the rows were read, by the source database's clock (RFC 3339).
    pub read_at: String,
}

/// Why a table object's prefix or header cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("not a gapsync table object (its first 8 bytes are not \"GSTABLE1\")")]
    Magic,
    #[error("table object header of {0} bytes is over the limit of {MAX_HEADER_BYTES}")]
    HeaderTooLarge(u32),
    #[error("table object header is not valid: {0}")]
    Header(String),
    #[error("table object version {0} is not supported (this gapsync reads version {VERSION})")]
    Version(u32),
}

/// Encodes the prefix and header; the binary COPY stream follows.
pub fn encode_header(h: &TableHeader) -> Result<Vec<u8>, TableError> {
    let json = serde_json::to_vec(h).map_err(|e| TableError::Header(e.to_string()))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|n| *n <= MAX_HEADER_BYTES)
        .ok_or(TableError::HeaderTooLarge(u32::MAX))?;
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Reads the header's length from the first [`PREFIX_LEN`] bytes (checked against the limit
/// before anything is allocated).
pub fn header_len(prefix: &[u8; PREFIX_LEN]) -> Result<u32, TableError> {
    if &prefix[..8] != MAGIC {
        return Err(TableError::Magic);
    }
    let len = u32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    if len > MAX_HEADER_BYTES {
        return Err(TableError::HeaderTooLarge(len));
    }
    Ok(len)
}

/// Parses and checks the header's JSON.
pub fn decode_header(json: &[u8]) -> Result<TableHeader, TableError> {
    let h: TableHeader =
        serde_json::from_slice(json).map_err(|e| TableError::Header(e.to_string()))?;
    if h.version != VERSION {
        return Err(TableError::Version(h.version));
    }
    if h.columns.is_empty() || h.columns.len() > MAX_COLUMNS {
        return Err(TableError::Header(format!(
            "{} columns (1 to {MAX_COLUMNS} expected)",
            h.columns.len()
        )));
    }
    if h.kind == TableKind::Partition && h.partition.is_none() {
        return Err(TableError::Header(
            "a partition object without its `partition`".into(),
        ));
    }
    if h.kind == TableKind::Incremental && h.key.is_empty() {
        return Err(TableError::Header(
            "an incremental object without its `key`".into(),
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> TableHeader {
        TableHeader {
            version: VERSION,
            kind: TableKind::Incremental,
            table: "public.events".into(),
            id: "incremental:public.events:1".into(),
            batch: 1,
            columns: vec![Column {
                name: "id".into(),
                type_name: "bigint".into(),
                not_null: true,
            }],
            key: vec!["id".into()],
            partition: None,
            watermark: Some(WatermarkRange {
                column: "id".into(),
                from: None,
                to: "42".into(),
            }),
            read_at: "2026-12-03T10:00:00Z".into(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode_header(&header()).expect("test data");
        let prefix: [u8; PREFIX_LEN] = bytes[..PREFIX_LEN].try_into().expect("test data");
        let len = header_len(&prefix).expect("test data") as usize;
        assert_eq!(len, bytes.len() - PREFIX_LEN);
        assert_eq!(
            decode_header(&bytes[PREFIX_LEN..]).expect("test data"),
            header()
        );
    }

    #[test]
    fn limits_before_allocation() {
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[..8].copy_from_slice(MAGIC);
        prefix[8..].copy_from_slice(&(MAX_HEADER_BYTES + 1).to_be_bytes());
        assert_eq!(
            header_len(&prefix),
            Err(TableError::HeaderTooLarge(MAX_HEADER_BYTES + 1))
        );
        prefix[0] = b'X';
        assert_eq!(header_len(&prefix), Err(TableError::Magic));
    }

    #[test]
    fn refuses_incomplete_headers() {
        let mut h = header();
        h.key.clear();
        let json = serde_json::to_vec(&h).expect("test data");
        assert!(matches!(decode_header(&json), Err(TableError::Header(_))));
        let mut h = header();
        h.version = 2;
        let json = serde_json::to_vec(&h).expect("test data");
        assert_eq!(decode_header(&json), Err(TableError::Version(2)));
    }
}
