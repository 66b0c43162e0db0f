//! Table objects with hostile or stale headers, applied by `gapsync-receiver load` to a real
//! cluster (the objects are built here: a header from `encode_header` and rows from a real
//! `COPY ... TO STDOUT (FORMAT binary)`):
//!
//! - a column type that smuggles DDL (`integer, OWNER TO ...`) or a CHECK calling a function
//!   is refused, naming table and column, and the target is unchanged; real types
//!   (`numeric(12,2)`, `timestamp(3) with time zone`, `"char"`, arrays) are created exactly;
//! - a partition bound or key with an expression (`pg_read_file(...)`) is refused;
//! - no object writes `gapsync.applied` (directly or by `rename`) or a system schema, nor a
//!   table outside the sink's `tables` allowlist;
//! - an older snapshot (earlier `read_at`, another id) applied after a newer one is skipped,
//!   and an older incremental batch applied late does not overwrite newer row versions;
//! - GRANTs and the owner survive a snapshot swap; a reader holding the table makes the swap
//!   give up after lock_timeout (retried later) instead of queueing every other reader.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gapsync_protocol::table::{
    Column, PartitionInfo, TableHeader, TableKind, VERSION, WatermarkRange, encode_header,
};
use gapsync_tests::{PgCluster, bin, profiles_dir};

const DB: &str = "mirror";
const PIPE: &str = "plant-db";

/// A cluster with database `mirror`, a folder for objects and a receiver config whose pipe
/// `plant-db` has a postgres sink into `mirror` with `sink_extra`.
struct Fx {
    pg: PgCluster,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    n: usize,
}

impl Fx {
    fn new(label: &str, sink_extra: &str) -> Fx {
        let pg = PgCluster::start(label);
        pg.createdb(DB);
        let dir = tempfile::Builder::new()
            .prefix(&format!("gapsync-hostile-{label}-"))
            .tempdir()
            .expect("tempdir");
        let cfg = dir.path().join("receiver.toml");
        let fx = Fx { pg, dir, cfg, n: 0 };
        fx.configure(sink_extra);
        fx
    }

    /// Writes the receiver config, the sink with `sink_extra`.
    fn configure(&self, sink_extra: &str) {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let state = self.dir.path().join("rstate");
        let text = format!(
            "node = \"outside-1\"\nprofile = \"loopback\"\nprofiles_dir = {}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\n\
             state_dir = {}\ncontrol_socket = {}\nlog_dir = {}\n\n[[pipe]]\nname = {PIPE:?}\nfrom = \"plant-a\"\n\
             [pipe.sink]\ntype = \"postgres\"\nconnection = {:?}\n{sink_extra}\n",
            q(&profiles_dir()),
            q(&state),
            q(&state.join("control.sock")),
            q(&self.dir.path().join("rlogs")),
            self.pg.conninfo(DB),
        );
        std::fs::write(&self.cfg, text).expect("write receiver config");
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql(DB, sql)
    }

    /// The binary COPY stream of `select`, as the real server writes it.
    fn copy(&self, select: &str) -> Vec<u8> {
        let mut c = postgres::Client::connect(&self.pg.conninfo(DB), postgres::NoTls)
            .expect("connect for COPY");
        let mut r = c
            .copy_out(&format!("COPY ({select}) TO STDOUT (FORMAT binary)"))
            .expect("COPY TO STDOUT");
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut v).expect("read COPY");
        v
    }

    /// Writes an object file: `h`'s header and the rows of `select`.
    fn object(&mut self, h: &TableHeader, select: &str) -> PathBuf {
        let mut bytes = encode_header(h).expect("encode header");
        bytes.extend(self.copy(select));
        self.n += 1;
        let p = self.dir.path().join(format!("object-{:03}.gst", self.n));
        std::fs::write(&p, bytes).expect("write object");
        p
    }

    /// `gapsync-receiver load` of one file: exit code and output.
    fn load(&self, file: &Path) -> (Option<i32>, String) {
        let out = Command::new(bin("gapsync-receiver"))
            .arg("load")
            .arg("--config")
            .arg(&self.cfg)
            .args(["--pipe", PIPE])
            .arg(file)
            .output()
            .expect("run gapsync-receiver load");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// Loads `file` and expects it refused (exit 1) with every one of `needles` in the output.
    fn refused(&self, file: &Path, needles: &[&str]) -> String {
        let (code, out) = self.load(file);
        assert_eq!(code, Some(1), "the object is refused: {out}");
        for n in needles {
            assert!(out.contains(n), "the refusal says {n:?}: {out}");
        }
        out
    }

    fn applied(&self, file: &Path) -> String {
        let (code, out) = self.load(file);
        assert_eq!(
            code,
            Some(0),
            "the object is applied: {out}\n{}",
            self.pg.server_log()
        );
        out
    }
}

fn cols(list: &[(&str, &str)]) -> Vec<Column> {
    list.iter()
        .map(|(n, t)| Column {
            name: (*n).into(),
            type_name: (*t).into(),
            not_null: false,
        })
        .collect()
}

fn header(kind: TableKind, table: &str, id: &str, columns: &[(&str, &str)]) -> TableHeader {
    TableHeader {
        version: VERSION,
        kind,
        table: table.into(),
        id: id.into(),
        batch: 1,
        columns: cols(columns),
        key: vec![columns[0].0.to_owned()],
        partition: None,
        watermark: None,
        read_at: "2026-12-03T10:00:00Z".into(),
    }
}

#[test]
fn column_types_that_smuggle_ddl_or_calls_are_refused() {
    let mut fx = Fx::new("hostile-types", "");
    fx.sql(
        "CREATE TABLE public.t (id integer PRIMARY KEY); INSERT INTO public.t VALUES (1);
         CREATE ROLE intruder;",
    );

    // ADD COLUMN of an existing table: a type that is more ALTER TABLE actions.
    let h = header(
        TableKind::Incremental,
        "public.t",
        "incremental:public.t:1",
        &[("id", "integer"), ("w", "integer, OWNER TO \"intruder\"")],
    );
    let f = fx.object(&h, "SELECT 2::integer, 3::integer");
    fx.refused(&f, &["public.t", "\"w\"", "not a type name"]);
    assert_eq!(
        fx.sql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.t'::regclass"),
        "postgres",
        "the owner is unchanged"
    );
    assert_eq!(
        fx.sql("SELECT string_agg(attname, ',') FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attnum > 0"),
        "id",
        "no column was added"
    );
    assert_eq!(
        fx.sql("SELECT count(*) FROM public.t"),
        "1",
        "no row applied"
    );

    // CREATE TABLE: a type with a CHECK that calls a function.
    let h = header(
        TableKind::Snapshot,
        "public.n",
        "snapshot:public.n:1",
        &[
            ("id", "integer"),
            (
                "w",
                "integer CHECK (set_config('gapsync.pwned', 'yes', false) IS NOT NULL)",
            ),
        ],
    );
    let f = fx.object(&h, "SELECT 1::integer, 2::integer");
    fx.refused(&f, &["public.n", "\"w\""]);
    assert!(!fx.pg.table_exists(DB, "public.n"), "no table created");
    assert_eq!(
        fx.sql("SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND connamespace = 'public'::regnamespace"),
        "0",
        "no CHECK constraint anywhere"
    );

    // A type the target does not know: named, nothing created.
    let h = header(
        TableKind::Snapshot,
        "public.u",
        "snapshot:public.u:1",
        &[("id", "integer"), ("x", "no_such_type")],
    );
    let f = fx.object(&h, "SELECT 1::integer, 2::integer");
    fx.refused(&f, &["public.u", "\"x\"", "no_such_type", "does not know"]);
    assert!(!fx.pg.table_exists(DB, "public.u"));

    // Real types, spelled as format_type does or not, are created as the server spells them.
    let h = header(
        TableKind::Snapshot,
        "public.real",
        "snapshot:public.real:1",
        &[
            ("id", "int4"),
            ("amount", "numeric(12,2)"),
            ("at", "timestamp(3) with time zone"),
            ("c", "\"char\""),
            ("tags", "text[]"),
            ("code", "varchar(5)"),
        ],
    );
    let f = fx.object(
        &h,
        "SELECT 1::integer, 12.5::numeric(12,2), '2026-12-03 10:00:00.123+00'::timestamptz(3), 'x'::\"char\", ARRAY['a','b'], 'abc'::varchar(5)",
    );
    fx.applied(&f);
    assert_eq!(
        fx.sql("SELECT string_agg(format_type(atttypid, atttypmod), ' | ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'public.real'::regclass AND attnum > 0"),
        "integer | numeric(12,2) | timestamp(3) with time zone | \"char\" | text[] | character varying(5)"
    );
    assert_eq!(
        fx.sql("SELECT amount, c, tags[2], code FROM public.real"),
        "12.50|x|b|abc"
    );
}

fn partition_header(id: &str, key: &str, bound: &str) -> TableHeader {
    let mut h = header(
        TableKind::Partition,
        "public.m_1",
        id,
        &[("k", "text"), ("v", "integer")],
    );
    h.key.clear();
    h.partition = Some(PartitionInfo {
        parent: "public.m".into(),
        parent_key: key.into(),
        bound: bound.into(),
        fingerprint: "f".into(),
    });
    h
}

#[test]
fn partition_bounds_and_keys_with_expressions_are_refused() {
    let mut fx = Fx::new("hostile-bounds", "");
    let rows = "SELECT '15'::text, 1::integer";
    let h = partition_header(
        "partition:public.m_1:a",
        "LIST (k)",
        "FOR VALUES IN (pg_read_file('PG_VERSION'))",
    );
    let f = fx.object(&h, rows);
    fx.refused(&f, &["bound", "pg_read_file", "refused"]);
    let h = partition_header(
        "partition:public.m_1:b",
        "LIST ((pg_read_file('PG_VERSION')))",
        "FOR VALUES IN ('15')",
    );
    let f = fx.object(&h, rows);
    fx.refused(&f, &["partition key", "refused"]);
    let h = partition_header(
        "partition:public.m_1:c",
        "LIST (nosuch)",
        "FOR VALUES IN ('15')",
    );
    let f = fx.object(&h, rows);
    fx.refused(&f, &["\"nosuch\" is not a column"]);
    assert!(!fx.pg.table_exists(DB, "public.m"), "no parent created");
    assert!(!fx.pg.table_exists(DB, "public.m_1"), "no child created");

    // A plain bound with a quote in a literal is rebuilt and applied.
    let h = partition_header(
        "partition:public.m_1:d",
        "LIST (k)",
        "FOR VALUES IN ('15', 'it''s')",
    );
    let f = fx.object(&h, rows);
    fx.applied(&f);
    assert_eq!(
        fx.sql(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = 'public.m_1'::regclass"
        ),
        "FOR VALUES IN ('15', 'it''s')"
    );
    assert_eq!(
        fx.sql("SELECT pg_get_partkeydef('public.m'::regclass)"),
        "LIST (k)"
    );
}

#[test]
fn the_ledger_system_schemas_and_unlisted_tables_cannot_be_targeted() {
    let mut fx = Fx::new("hostile-targets", "");
    fx.sql("CREATE TABLE public.canary (x integer); INSERT INTO public.canary VALUES (7);");
    // One object applied, so the ledger has a row to lose.
    let h = header(
        TableKind::Snapshot,
        "public.ok",
        "snapshot:public.ok:1",
        &[("id", "integer")],
    );
    let f = fx.object(&h, "SELECT 1::integer");
    fx.applied(&f);
    let ledger =
        |fx: &Fx| fx.sql("SELECT string_agg(object, ',' ORDER BY object) FROM gapsync.applied");
    let before = ledger(&fx);
    assert_eq!(before, "snapshot:public.ok:1");

    let ledger_cols = [
        ("origin", "text"),
        ("pipe", "text"),
        ("object", "text"),
        ("table_name", "text"),
        ("kind", "text"),
        ("batch", "bigint"),
        ("rows", "bigint"),
        ("applied_at", "timestamp with time zone"),
        ("read_at", "timestamp with time zone"),
    ];
    let empty = "SELECT 'a'::text, 'b'::text, 'c'::text, 'd'::text, 'e'::text, 1::bigint, 1::bigint, now(), now() WHERE false";
    for (table, id) in [
        ("gapsync.applied", "snapshot:gapsync.applied:9"),
        ("pg_catalog.pg_gapsync", "snapshot:pg_catalog.pg_gapsync:9"),
        ("information_schema.x", "snapshot:information_schema.x:9"),
    ] {
        let h = header(TableKind::Snapshot, table, id, &ledger_cols);
        let f = fx.object(&h, empty);
        fx.refused(&f, &["refused", id, "never writes to"]);
    }
    assert_eq!(ledger(&fx), before, "the ledger is untouched");
    assert!(!fx.pg.table_exists(DB, "pg_catalog.pg_gapsync"));

    // A rename into the ledger is a config error.
    fx.configure("rename = { \"public.sneaky\" = \"gapsync.applied\" }");
    let h = header(
        TableKind::Snapshot,
        "public.sneaky",
        "snapshot:public.sneaky:9",
        &ledger_cols,
    );
    let f = fx.object(&h, empty);
    let (code, out) = fx.load(&f);
    assert_eq!(code, Some(2), "the config is refused: {out}");
    assert!(out.contains("is never written to"), "{out}");
    assert_eq!(ledger(&fx), before, "the ledger is untouched");

    // Outside the allowlist: refused, naming the table; inside: applied.
    fx.configure("tables = [\"public.*\", \"plant_a.events\"]");
    let h = header(
        TableKind::Snapshot,
        "plant_b.x",
        "snapshot:plant_b.x:1",
        &[("id", "integer")],
    );
    let f = fx.object(&h, "SELECT 1::integer");
    fx.refused(
        &f,
        &["refused", "plant_b.x", "`tables` list does not allow"],
    );
    assert!(!fx.pg.table_exists(DB, "plant_b.x"));
    let h = header(
        TableKind::Snapshot,
        "plant_a.events",
        "snapshot:plant_a.events:1",
        &[("id", "integer")],
    );
    let f = fx.object(&h, "SELECT 1::integer");
    fx.applied(&f);
    assert_eq!(fx.sql("SELECT x FROM public.canary"), "7");
}

#[test]
fn older_versions_applied_late_never_overwrite_newer_ones() {
    let mut fx = Fx::new("hostile-order", "");
    // A snapshot read at 12:00 (run 1 of a new epoch), then one read at 11:00 (run 7 of the
    // epoch before): the older one is skipped whatever its run number.
    let mut newer = header(
        TableKind::Snapshot,
        "public.s",
        "snapshot:public.s:2:1",
        &[("id", "integer"), ("v", "text")],
    );
    newer.read_at = "2026-12-03T12:00:00Z".into();
    let mut older = newer.clone();
    older.id = "snapshot:public.s:1:7".into();
    older.batch = 7;
    older.read_at = "2026-12-03T11:00:00+00:00".into();
    let f_new = fx.object(&newer, "SELECT 1::integer, 'new'::text");
    let f_old = fx.object(&older, "SELECT 1::integer, 'old'::text");
    fx.applied(&f_new);
    let (code, out) = fx.load(&f_old);
    assert_eq!(code, Some(0), "a stale snapshot is not a failure: {out}");
    assert!(out.contains("older than applied"), "{out}");
    assert_eq!(fx.sql("SELECT v FROM public.s"), "new");

    // Incremental: batch 2 (rows up to 12:00) first, then batch 1 (up to 11:00) late.
    let columns = [
        ("id", "integer"),
        ("ts", "timestamp with time zone"),
        ("v", "text"),
    ];
    let wm = |from: Option<&str>, to: &str| WatermarkRange {
        column: "ts".into(),
        from: from.map(Into::into),
        to: to.into(),
    };
    let mut b2 = header(
        TableKind::Incremental,
        "public.ev",
        "incremental:public.ev:1:2",
        &columns,
    );
    b2.batch = 2;
    b2.watermark = Some(wm(Some("2026-12-03 11:00:00+00"), "2026-12-03 12:00:00+00"));
    let mut b1 = header(
        TableKind::Incremental,
        "public.ev",
        "incremental:public.ev:1:1",
        &columns,
    );
    b1.watermark = Some(wm(None, "2026-12-03 11:00:00+00"));
    let f2 = fx.object(
        &b2,
        "SELECT 1::integer, '2026-12-03 12:00:00+00'::timestamptz, 'new'::text",
    );
    let f1 = fx.object(
        &b1,
        "VALUES (1::integer, '2026-12-03 10:00:00+00'::timestamptz, 'old'::text), (2, '2026-12-03 10:30:00+00', 'only in batch 1')",
    );
    fx.applied(&f2);
    fx.applied(&f1);
    assert_eq!(
        fx.sql("SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM public.ev"),
        "1=new,2=only in batch 1",
        "the late batch adds its new row but keeps the newer version of row 1"
    );
    assert_eq!(
        fx.sql("SELECT count(*) FROM gapsync.applied WHERE read_at IS NOT NULL"),
        "3",
        "read_at is recorded for every applied object"
    );
}

#[test]
fn grants_and_owner_survive_a_swap_and_a_held_table_is_retried_not_queued() {
    let mut fx = Fx::new("hostile-swap", "");
    fx.sql(
        "CREATE ROLE reader LOGIN; CREATE ROLE keeper;
         CREATE TABLE public.g (id integer PRIMARY KEY, v text); INSERT INTO public.g VALUES (1, 'before');
         GRANT SELECT ON public.g TO reader; GRANT SELECT, INSERT ON public.g TO keeper WITH GRANT OPTION;
         ALTER TABLE public.g OWNER TO keeper;",
    );
    let acl = |fx: &Fx| {
        fx.sql(
            "SELECT pg_get_userbyid(relowner) || ': ' || (SELECT string_agg(DISTINCT coalesce(pg_get_userbyid(NULLIF(a.grantee, 0)), 'PUBLIC') || ' ' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END, ', ') FROM aclexplode(relacl) a) FROM pg_class WHERE oid = 'public.g'::regclass",
        )
    };
    let before = acl(&fx);
    let mut h = header(
        TableKind::Snapshot,
        "public.g",
        "snapshot:public.g:1:1",
        &[("id", "integer"), ("v", "text")],
    );
    h.read_at = "2026-12-03T10:00:00Z".into();
    let f = fx.object(&h, "SELECT 1::integer, 'after'::text");
    fx.applied(&f);
    assert_eq!(
        acl(&fx),
        before,
        "owner and grants are those of the replaced table"
    );
    assert_eq!(
        fx.sql("SET ROLE reader; SELECT v FROM public.g"),
        "after",
        "the reader still reads the table after the swap"
    );

    // A long reader holds the table: the swap gives up after lock_timeout, the table is as it
    // was, and the object is applied once the reader is gone.
    let holder_sql = "BEGIN; SELECT count(*) FROM public.g; SELECT pg_sleep(12); COMMIT;";
    let conninfo = fx.pg.conninfo(DB);
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
        c.batch_execute(holder_sql).expect("the long reader");
    });
    let t0 = Instant::now();
    while fx.sql("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.relation = 'public.g'::regclass AND a.query LIKE '%pg_sleep%'") == "0" {
        assert!(t0.elapsed() < Duration::from_secs(10), "the reader took its lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    let holder_pid = fx.sql("SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(12)%' AND pid <> pg_backend_pid()");
    h.id = "snapshot:public.g:1:2".into();
    h.read_at = "2026-12-03T11:00:00Z".into();
    let f = fx.object(&h, "SELECT 1::integer, 'third'::text");
    let t1 = Instant::now();
    let out = fx.refused(&f, &["public.g", "lock_timeout", holder_pid.as_str()]);
    assert!(
        t1.elapsed() < Duration::from_secs(10),
        "the swap gave up after about 5 s, not after the reader: {:?} {out}",
        t1.elapsed()
    );
    assert_eq!(
        fx.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"),
        "0",
        "nobody is left queueing behind a swap"
    );
    assert_eq!(fx.sql("SELECT v FROM public.g"), "after");
    holder.join().expect("the reader ended");
    fx.applied(&f);
    assert_eq!(fx.sql("SET ROLE reader; SELECT v FROM public.g"), "third");
}
