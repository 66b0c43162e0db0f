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

/// Checks every postgres source of `config` against its database.
pub fn all(config: &Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for pc in &config.pipes {
        if let SourceSettings::Postgres(s) = &pc.source {
            problems.extend(pipe(&pc.name, s));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{}", problems.join("\n"))
}

/// The problems of one pipe's postgres source.
pub fn pipe(name: &str, s: &PostgresSettings) -> Vec<String> {
    // The sync client must not run on a tokio runtime's thread: a thread of its own.
    let (name, s) = (name.to_owned(), s.clone());
    std::thread::spawn(move || probe(&name, &s))
        .join()
        .unwrap_or_else(|_| vec!["the database check panicked".to_owned()])
}

fn probe(name: &str, s: &PostgresSettings) -> Vec<String> {
    let mut c = match s.connection.connect(NoTls) {
        Ok(c) => c,
        Err(e) => {
            let e = chain(&e);
            let hint = if e.contains("password") {
                "; check the password (password_file) and the role's pg_hba.conf entry"
            } else {
                "; check that the database runs and that `connection` names it"
            };
            return vec![format!(
                "pipe {name}: postgres source: cannot connect to the database ({}): {e}{hint}",
                s.shown
            )];
        }
    };
    let mut p = Vec::new();
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
                if let Err(e) = table(&mut c, t, &tb, &mut p, (&label, &role)) {
                    p.push(format!("{label}: {}", chain(&e)));
                }
            }
        }
    }
    let incremental = (s.tables.iter()).any(|t| matches!(t.mode, TableMode::Incremental { .. }));
    if incremental {
        if let Err(e) = sees_sessions(&mut c, name, &mut p) {
            p.push(format!("pipe {name}: {}", chain(&e)));
        }
    }
    p
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
