//! The postgres sink's config:
//! `sink = { type = "postgres", connection = "...", password_file = "...", create_tables = true,
//! rename = { "public.events" = "plant_a.events" }, tables = ["public.*"] }`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use gapsync_daemon::config::abs;
use serde::Deserialize;

use super::names::{QualName, refused_schema};

/// How long a connection attempt may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of a `type = "postgres"` sink, as written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PostgresConfig {
    /// libpq keywords (`host=/run/postgresql dbname=mirror user=gapsync`) or a
    /// `postgresql://` URL.
    pub connection: Option<String>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// Create missing schemas, tables and partitions from the objects' columns (default true).
    pub create_tables: Option<bool>,
    /// Source `schema.table` -> target `schema.table`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// The target tables (after `rename`) objects may write to: `schema.table` globs
    /// (`public.*`); absent, every table outside the refused schemas.
    pub tables: Option<Vec<String>>,
}

/// A checked postgres sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    pub connection: String,
    pub password_file: Option<PathBuf>,
    pub create_tables: bool,
    pub rename: BTreeMap<QualName, QualName>,
    /// `schema.table` globs of the targets allowed; `None`: all.
    pub tables: Option<Vec<String>>,
}

impl PostgresConfig {
    /// Checks the sink, pushing every problem.
    pub fn check(self, p: &mut Vec<String>, label: &str, base: &Path) -> Option<PostgresSettings> {
        let connection = match self.connection {
            None => {
                p.push(format!(
                    "{label}: `sink.connection` is missing: the target database, e.g. connection = \"host=/run/postgresql dbname=mirror user=gapsync\""
                ));
                None
            }
            Some(c) => match postgres::Config::from_str(&c) {
                Ok(_) => Some(c),
                Err(e) => {
                    p.push(format!(
                        "{label}: `sink.connection` is not a libpq connection string or postgresql:// URL: {e}"
                    ));
                    None
                }
            },
        };
        let password_file = self.password_file.map(|f| abs(base, &f));
        if let Some(f) = &password_file {
            if let Err(e) = read_password(f) {
                p.push(format!("{label}: `sink.password_file`: {e}"));
            }
        }
        let mut rename = BTreeMap::new();
        for (from, to) in &self.rename {
            match (QualName::parse_strict(from), QualName::parse_strict(to)) {
                (Some(_), Some(t)) if refused_schema(&t.schema) => p.push(format!(
                    "{label}: `sink.rename` entry {from:?} = {to:?}: schema {:?} is never written to (gapsync, information_schema and pg_* are refused)",
                    t.schema
                )),
                (Some(f), Some(t)) => {
                    rename.insert(f, t);
                }
                _ => p.push(format!(
                    "{label}: `sink.rename` entry {from:?} = {to:?}: both sides must be schema.table, e.g. \"public.events\" = \"plant_a.events\""
                )),
            }
        }
        for t in self.tables.iter().flatten() {
            if QualName::parse_strict(t).is_none() {
                p.push(format!(
                    "{label}: `sink.tables` entry {t:?} is not schema.table (a glob such as \"public.*\" or a name such as \"plant_a.events\")"
                ));
            }
        }
        Some(PostgresSettings {
            connection: connection?,
            password_file,
            create_tables: self.create_tables.unwrap_or(true),
            rename,
            tables: self.tables,
        })
    }
}

/// The first line of a password file.
pub fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(format!(
            "{} is empty (its first line is the password)",
            path.display()
        ));
    }
    Ok(line)
}

impl PostgresSettings {
    /// The client config: the connection string, the password file's password, a connect
    /// timeout when none is given, and the application name `gapsync-receiver`.
    pub fn client_config(&self) -> Result<postgres::Config, String> {
        let mut c = postgres::Config::from_str(&self.connection)
            .map_err(|e| format!("`connection` is not valid: {e}"))?;
        if let Some(f) = &self.password_file {
            c.password(read_password(f)?);
        }
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(CONNECT_TIMEOUT);
        }
        if c.get_application_name().is_none() {
            c.application_name("gapsync-receiver");
        }
        Ok(c)
    }

    /// Whether objects may write to target `t` (the `tables` allowlist).
    pub fn allows(&self, t: &QualName) -> bool {
        let name = t.to_string();
        self.tables
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| glob(g.as_bytes(), name.as_bytes())))
    }

    /// The target of source table `source`: renamed, or the same name.
    pub fn target(&self, source: &QualName) -> QualName {
        self.rename
            .get(source)
            .cloned()
            .unwrap_or_else(|| source.clone())
    }
}

/// `*` matches any run of characters, `?` one; everything else itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> (Option<PostgresSettings>, Vec<String>) {
        let c: PostgresConfig = toml::from_str(toml_text).expect("test value");
        let mut p = Vec::new();
        let s = c.check(&mut p, "[[pipe]] #1 (db)", Path::new("/etc/gapsync"));
        (s, p)
    }

    #[test]
    fn a_full_sink_is_read() {
        let (s, p) = parse(
            "connection = \"host=/run/postgresql dbname=mirror user=gapsync\"\ncreate_tables = false\nrename = { \"public.events\" = \"plant_a.events\" }\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let s = s.expect("test value");
        assert!(!s.create_tables);
        let src = QualName::parse("public.events").expect("test value");
        assert_eq!(s.target(&src).to_string(), "plant_a.events");
        let other = QualName::parse("public.assets").expect("test value");
        assert_eq!(s.target(&other), other);
        assert!(
            s.client_config()
                .expect("test value")
                .get_connect_timeout()
                .is_some()
        );
    }

    #[test]
    fn the_tables_allowlist_takes_globs() {
        let (s, p) =
            parse("connection = \"host=x\"\ntables = [\"public.*\", \"plant_a.events\"]\n");
        assert!(p.is_empty(), "{p:?}");
        let s = s.expect("test value");
        let q = |n: &str| QualName::parse(n).expect("test value");
        assert!(s.allows(&q("public.assets")));
        assert!(s.allows(&q("plant_a.events")));
        assert!(!s.allows(&q("plant_a.other")));
        assert!(!s.allows(&q("publicx.a")));
        let (s, _) = parse("connection = \"host=x\"\n");
        assert!(s.expect("test value").allows(&q("any.thing")));
        let (_, p) =
            parse("connection = \"host=x\"\nrename = { \"public.a\" = \"gapsync.applied\" }\n");
        assert!(p[0].contains("is never written to"), "{p:?}");
        let (_, p) = parse("connection = \"host=x\"\ntables = [\"events\"]\n");
        assert!(p[0].contains("`sink.tables` entry \"events\""), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let (s, p) = parse(
            "password_file = \"missing.pass\"\nrename = { \"events\" = \"plant_a.events\", \"public.a\" = \"b.\" }\n",
        );
        assert!(s.is_none());
        let all = p.join("\n");
        assert!(all.contains("`sink.connection` is missing"), "{all}");
        assert!(all.contains("/etc/gapsync/missing.pass"), "{all}");
        assert!(
            all.contains("\"events\" = \"plant_a.events\": both sides must be schema.table"),
            "{all}"
        );
        assert!(all.contains("\"public.a\" = \"b.\""), "{all}");
        assert_eq!(p.len(), 4, "{all}");
    }

    #[test]
    fn a_url_is_a_connection_too_and_a_bad_one_is_named() {
        let (s, p) = parse("connection = \"postgresql://gapsync@db.example/mirror\"\n");
        assert!(p.is_empty() && s.is_some(), "{p:?}");
        let (_, p) = parse("connection = \"host=x port=notaport\"\n");
        assert!(
            p[0].contains("`sink.connection` is not a libpq connection string"),
            "{p:?}"
        );
    }
}
