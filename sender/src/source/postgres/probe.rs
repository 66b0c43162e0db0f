//! What check-config and start ask the database of each postgres source, every problem
//! named with its pipe and table: the database reachable and the password right, each table
//! there and readable, incremental tables with their watermark and a key, partitions tables
//! partitioned (by a date or timestamp range with `closed_after`), and for incremental
//! tables a role that sees other sessions' transactions (the late-commit wait).

use postgres::{Client, NoTls};

use super::catalog::{self, Table};
use super::config::{PostgresSettings, TableMode, TableSettings};
use crate::config::Config;
use crate::source::SourceSettings;

/// Types a `closed_after` partition key may have.
const DATE_TYPES: [&str; 3] = [
    "date",
    "timestamp without time zone",
    "timestamp with time zone",
];

/// What the database check of the postgres sources found.
#[derive(Debug, Default)]
pub struct Report {
    /// Faults the operator must fix (wrong password, missing table, a rule the table breaks):
    /// check-config and the daemon's start refuse them.
    pub problems: Vec<String>,
    /// Databases that did not answer: check-config refuses them; the daemon starts anyway
    /// (PostgreSQL may come up after it) and the pipe keeps trying, its status saying why.
    pub unreachable: Vec<String>,
    /// Said at WARN at start, printed by check-config.
    pub warnings: Vec<String>,
}

impl Report {
    /// Everything that is wrong, for check-config.
    pub fn for_check(&self) -> anyhow::Result<()> {
        let all: Vec<&String> = self.problems.iter().chain(&self.unreachable).collect();
        if all.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "{}",
            all.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// The permanent faults only, for the daemon's start.
    pub fn for_start(&self) -> anyhow::Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!("{}", self.problems.join("\n"))
    }
}

/// Checks every postgres source of `config` against its database.
pub fn report(config: &Config) -> Report {
    let mut all = Report::default();
    for pc in &config.pipes {
        if let SourceSettings::Postgres(s) = &pc.source {
            let r = pipe_report(&pc.name, s);
            all.problems.extend(r.problems);
            all.unreachable.extend(r.unreachable);
            all.warnings.extend(r.warnings);
        }
    }
    all
}

/// The problems of one pipe's postgres source as check-config sees them (an unreachable
/// database included; a reload refuses them).
pub fn pipe(name: &str, s: &PostgresSettings) -> Vec<String> {
    let r = pipe_report(name, s);
    r.problems.into_iter().chain(r.unreachable).collect()
}

/// What the check of one pipe's postgres source found.
pub fn pipe_report(name: &str, s: &PostgresSettings) -> Report {
    // The sync client must not run on a tokio runtime's thread: a thread of its own.
    let (name, s) = (name.to_owned(), s.clone());
    std::thread::spawn(move || probe(&name, &s))
        .join()
        .unwrap_or_else(|_| Report {
            problems: vec!["the database check panicked".to_owned()],
            ..Report::default()
        })
}

fn probe(name: &str, s: &PostgresSettings) -> Report {
    let mut r = Report::default();
    let mut c = match s.connection.connect(NoTls) {
        Ok(c) => c,
        Err(e) => {
            let text = chain(&e);
            let hint = if text.contains("password") {
                "; check the password (password_file) and the role's pg_hba.conf entry"
            } else {
                "; check that the database runs and that `connection` names it"
            };
            let line = format!(
                "pipe {name}: postgres source: cannot connect to the database ({}): {text}{hint}",
                s.shown
            );
            // The server answered (wrong password, no such database or role), or the
            // config lacks something: the operator must act. Else it is not up (yet).
            if e.as_db_error().is_some() || text.contains("password") {
                r.problems.push(line);
            } else {
                r.unreachable.push(line);
            }
            return r;
        }
    };
    let p = &mut r.problems;
    let role: String = c
        .query_one("SELECT current_user::text", &[])
        .map_or_else(|_| "<role>".to_owned(), |r| r.get(0));
    for t in &s.tables {
        let label = format!("pipe {name}: table {}", t.name());
        match catalog::table(&mut c, t) {
            Err(e) => p.push(format!("{label}: {}", chain(&e))),
            Ok(None) => p.push(format!(
                "{label}: does not exist in the database ({}), or the role cannot see its schema",
                s.shown
            )),
            Ok(Some(tb)) => {
                if let Err(e) = table(&mut c, t, &tb, p, (&label, &role)) {
                    p.push(format!("{label}: {}", chain(&e)));
                }
                match watermark_rules(&mut c, t, &tb) {
                    Ok((problems, warnings)) => {
                        p.extend(problems.into_iter().map(|m| format!("{label}: {m}")));
                        (r.warnings).extend(warnings.into_iter().map(|m| format!("{label}: {m}")));
                    }
                    Err(e) => p.push(format!("{label}: {}", chain(&e))),
                }
            }
        }
    }
    let incremental = (s.tables.iter()).any(|t| matches!(t.mode, TableMode::Incremental { .. }));
    if incremental {
        if let Err(e) = sees_sessions(&mut c, name, p) {
            p.push(format!("pipe {name}: {}", chain(&e)));
        }
        match standby(&mut c) {
            Ok(Some(m)) => p.push(format!("pipe {name}: {m}")),
            Ok(None) => {}
            Err(e) => p.push(format!("pipe {name}: {}", chain(&e))),
        }
    }
    r
}

/// The same rules at each connection of the incremental thread (the database may have been
/// unreachable at start, or changed since): an error naming every broken rule; the warnings
/// are logged.
pub fn incremental_rules(
    c: &mut Client,
    ctx_pipe: &str,
    tables: &[TableSettings],
) -> anyhow::Result<()> {
    let mut problems: Vec<String> = standby(c)?.into_iter().collect();
    for t in tables {
        let Some(tb) = catalog::table(c, t)? else {
            continue;
        };
        let (p, w) = watermark_rules(c, t, &tb)?;
        problems.extend(p.into_iter().map(|m| format!("table {}: {m}", t.name())));
        for m in w {
            tracing::warn!(pipe = %ctx_pipe, table = %t.name(), "{m}");
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{}", problems.join("; "))
}

/// An incremental table on a hot standby: refused.
fn standby(c: &mut Client) -> Result<Option<String>, postgres::Error> {
    let recovering: bool = c.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
    Ok(recovering.then(|| "incremental tables cannot be read from a hot standby: its pg_stat_activity does not show the primary's open transactions, so rows committing late would be missed; connect to the primary (snapshot and partitions tables may stay on the standby, in a pipe of their own)".to_owned()))
}

/// The late-commit rule's conditions on an incremental table's watermark: problems (a
/// sequence with CACHE > 1 behind it) and warnings (a `timestamp without time zone` in a
/// time zone with daylight saving time).
fn watermark_rules(
    c: &mut Client,
    t: &TableSettings,
    tb: &Table,
) -> Result<(Vec<String>, Vec<String>), postgres::Error> {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let TableMode::Incremental { watermark, .. } = &t.mode else {
        return Ok((problems, warnings));
    };
    let Some(col) = tb.columns.iter().find(|c| c.name == *watermark) else {
        return Ok((problems, warnings));
    };
    for row in c.query(
        "SELECT s.seqrelid::regclass::text, s.seqcache FROM pg_sequence s \
         WHERE s.seqcache > 1 AND (s.seqrelid = to_regclass(pg_get_serial_sequence($1::text, $2::text)) \
         OR s.seqrelid IN (SELECT d.refobjid FROM pg_attrdef ad \
           JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum \
           JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid \
             AND d.refclassid = 'pg_class'::regclass \
           WHERE ad.adrelid = $3 AND a.attname::text = $2::text))",
        &[&t.ident(), watermark, &tb.oid],
    )? {
        let (seq, cache): (String, i64) = (row.get(0), row.get(1));
        problems.push(format!("its watermark {watermark:?} comes from the sequence {seq} with CACHE {cache}: a session hands out its cached values long after other sessions passed them, so rows would be missed; run ALTER SEQUENCE {seq} CACHE 1;"));
    }
    let ty = &col.type_name;
    if ty.starts_with("timestamp") && ty.ends_with("without time zone") {
        let row = c.query_one(
            "SELECT current_setting('TimeZone'), (SELECT count(DISTINCT extract(timezone FROM g)) \
             FROM generate_series(now() - interval '1 year', now() + interval '1 year', interval '1 week') g) > 1",
            &[],
        )?;
        let (zone, shifts): (String, bool) = (row.get(0), row.get(1));
        if shifts {
            warnings.push(format!("its watermark {watermark:?} is a timestamp without time zone and the database's TimeZone {zone} has daylight saving time: now() values go back an hour when it ends, and rows written in that hour are missed; make the column timestamptz (ALTER TABLE {} ALTER COLUMN {} TYPE timestamptz)", t.ident(), super::config::quote(watermark)));
        }
    }
    Ok((problems, warnings))
}

fn table(
    c: &mut Client,
    t: &TableSettings,
    tb: &Table,
    p: &mut Vec<String>,
    (label, role): (&str, &str),
) -> Result<(), postgres::Error> {
    let readable: bool = c
        .query_one("SELECT has_table_privilege($1::oid, 'SELECT')", &[&tb.oid])?
        .get(0);
    if !readable {
        p.push(format!(
            "{label}: the role may not read it: GRANT SELECT ON {} TO {};",
            t.ident(),
            super::config::quote(role)
        ));
    }
    let has = |col: &str| tb.columns.iter().any(|c| c.name == col);
    match &t.mode {
        TableMode::Snapshot => {}
        TableMode::Incremental { watermark, key, .. } => {
            if !has(watermark) {
                p.push(format!(
                    "{label}: has no column {watermark:?} (its `watermark`)"
                ));
            }
            match key {
                Some(k) => (k.iter().filter(|k| !has(k)))
                    .for_each(|k| p.push(format!("{label}: has no column {k:?} (in its `key`)"))),
                None if tb.primary_key.is_empty() => p.push(format!("{label}: incremental mode needs a key and the table has no primary key: give `key = [\"...\"]` (the columns rows are upserted by)")),
                None => {}
            }
        }
        TableMode::Partitions { closed_after, .. } => {
            if tb.relkind != "p" {
                p.push(format!("{label}: is not a partitioned table (mode = \"partitions\"): use mode = \"snapshot\", or name its partitioned parent"));
                return Ok(());
            }
            let (keydef, strategy, key_type) = catalog::partition_key(c, tb.oid)?;
            let dated =
                strategy == "r" && key_type.as_deref().is_some_and(|k| DATE_TYPES.contains(&k));
            if closed_after.is_some() && !dated {
                p.push(format!("{label}: `closed_after` needs a range partition key of one date or timestamp column; this table is partitioned by {keydef}: leave closed_after out to send every partition once"));
            }
        }
    }
    Ok(())
}

/// Whether the role sees other sessions' transactions in pg_stat_activity.
fn sees_sessions(c: &mut Client, name: &str, p: &mut Vec<String>) -> Result<(), postgres::Error> {
    let row = c.query_one(
        "SELECT current_user::text, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
         OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')",
        &[],
    )?;
    let (user, sees): (String, Option<bool>) = (row.get(0), row.get(1));
    if sees != Some(true) {
        p.push(format!("pipe {name}: incremental tables need a role that sees the other sessions' transactions (pg_stat_activity), so that rows committing late are not missed; as a superuser run: GRANT pg_read_all_stats TO \"{user}\";"));
    }
    Ok(())
}

/// The error with its causes (`postgres::Error` alone says only "db error").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
