//! Unit tests of the postgres sink without a database: a target that cannot be reached keeps
//! every received object in the inbox, unanswered (a local fault), across a restart.

use super::*;
use crate::pipe::replay;

/// Settings pointing at a socket folder where no PostgreSQL listens.
fn settings(root: &Path) -> PostgresSettings {
    PostgresSettings {
        connection: format!("host={} port=1 user=nobody dbname=none", root.display()),
        password_file: None,
        create_tables: true,
        rename: Default::default(),
        tables: None,
    }
}

fn open_sink(root: &Path) -> PostgresSink {
    open_sink_with(root, settings(root))
}

fn open_sink_with(root: &Path, settings: PostgresSettings) -> PostgresSink {
    let state = root.join("state");
    let done = replay::open_done_log(&state, None, Duration::from_secs(3600)).expect("done log");
    PostgresSink::open(
        &settings,
        &state,
        ("plant-a", "db"),
        done,
        Duration::from_secs(3600),
    )
    .expect("a database that is down does not stop the sink from opening")
}

/// A valid table object with no rows.
fn object_bytes() -> Vec<u8> {
    object_for("public.events")
}

/// A valid table object with no rows, for source table `table`.
fn object_for(table: &str) -> Vec<u8> {
    use gapsync_protocol::table::{Column, TableHeader, TableKind, VERSION, encode_header};
    let h = TableHeader {
        version: VERSION,
        kind: TableKind::Incremental,
        table: table.into(),
        id: format!("incremental:{table}:1"),
        batch: 1,
        columns: vec![Column {
            name: "id".into(),
            type_name: "bigint".into(),
            not_null: true,
        }],
        key: vec!["id".into()],
        partition: None,
        watermark: None,
        read_at: "2026-12-03T10:00:00Z".into(),
    };
    let mut v = encode_header(&h).expect("header");
    v.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&[0xff, 0xff]);
    v
}

#[test]
fn a_database_that_is_down_keeps_objects_in_the_inbox_unanswered_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = open_sink(dir.path());
    assert!(
        s.problem_at_open()
            .is_some_and(|m| m.contains("cannot connect")),
        "{:?}",
        s.problem_at_open()
    );
    let data = &object_bytes();
    let open = OpenFile {
        path: "public.events/incremental-000000000001.gst".into(),
        size: data.len() as u64,
        mtime_ns: 0,
    };
    s.open(7, &open).expect("open");
    s.write(7, 0, data).expect("write");
    let commit = Commit {
        size: data.len() as u64,
        digest: *blake3::hash(data).as_bytes(),
    };
    assert_eq!(s.commit(7, &commit).expect("commit"), Applied::Done);
    let flushed = s.flush();
    let err = flushed
        .result
        .expect_err("not applied: the frame is not answered");
    assert!(err.is_local() && !err.is_peer_fault(), "{err}");
    assert!(
        err.to_string()
            .contains("cannot connect to the target database"),
        "{err}"
    );
    assert!(flushed.delivered.is_empty());
    assert!(s.is_unlanded(7));
    assert_eq!(s.unlanded(), 1);
    let inbox = dir.path().join("state/tables/inbox").join(&open.path);
    assert_eq!(&fs::read(&inbox).expect("kept in the inbox"), data);
    // The resent transfer is recorded already, and still waits.
    assert_eq!(s.open(7, &open).expect("reopen"), Applied::AlreadyCommitted);
    assert_eq!(s.commit(7, &commit).expect("recommit"), Applied::Done);
    assert!(s.flush().result.is_err());
    assert!(s.retry_landing().result.is_err());
    drop(s);
    let s = open_sink(dir.path());
    assert_eq!(s.unlanded(), 1, "a restart finds the object in the inbox");
}

#[test]
fn a_file_that_is_not_a_table_object_is_refused_and_moved_out_of_the_inbox() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = open_sink(dir.path());
    let data = b"id,ts\n1,2026-01-01\n";
    let open = OpenFile {
        path: "public.events/rows.csv".into(),
        size: data.len() as u64,
        mtime_ns: 0,
    };
    s.open(3, &open).expect("open");
    s.write(3, 0, data).expect("write");
    let commit = Commit {
        size: data.len() as u64,
        digest: *blake3::hash(data).as_bytes(),
    };
    s.commit(3, &commit).expect("commit");
    let err = s.flush().result.expect_err("refused");
    assert!(!err.is_local(), "answered FAIL: {err}");
    assert!(
        err.to_string().contains("not a gapsync table object"),
        "{err}"
    );
    assert_eq!(s.unlanded(), 0, "nothing waits for it");
    let rejected = dir.path().join("state/tables/rejected").join(&open.path);
    assert_eq!(fs::read(rejected).expect("kept for inspection"), data);
}

/// Sends `data` as `path` through the sink: the flush's error.
fn send(s: &mut PostgresSink, id: u64, path: &str, data: &[u8]) -> SinkError {
    let open = OpenFile {
        path: path.into(),
        size: data.len() as u64,
        mtime_ns: 0,
    };
    s.open(id, &open).expect("open");
    s.write(id, 0, data).expect("write");
    let commit = Commit {
        size: data.len() as u64,
        digest: *blake3::hash(data).as_bytes(),
    };
    s.commit(id, &commit).expect("commit");
    s.flush().result.expect_err("refused")
}

#[test]
fn objects_for_the_ledger_a_system_schema_or_an_unlisted_table_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut set = settings(dir.path());
    set.tables = Some(vec!["public.*".into()]);
    let mut s = open_sink_with(dir.path(), set);
    for (i, table) in ["gapsync.applied", "pg_catalog.pg_x", "plant_b.events"]
        .into_iter()
        .enumerate()
    {
        let path = format!("{table}/incremental-000000000001.gst");
        let err = send(&mut s, 10 + i as u64, &path, &object_for(table));
        assert!(!err.is_local(), "answered FAIL, not retried: {err}");
        assert!(err.to_string().contains(table), "names the table: {err}");
        let rejected = dir.path().join("state/tables/rejected").join(&path);
        assert!(rejected.exists(), "moved to rejected/: {err}");
    }
    assert_eq!(s.unlanded(), 0, "nothing waits for them");
}
