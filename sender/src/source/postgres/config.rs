//! The postgres source's keys (README "Tables: the postgres source"):
//!
//! ```toml
//! [pipe.source]
//! type = "postgres"
//! connection = "host=/run/postgresql dbname=plant user=gapsync"   # libpq keywords or a URL
//! password_file = "/etc/gapsync/plant-db.pass"                       # optional, first line
//! poll_interval = "500ms"     # incremental: how often new rows are looked for
//! batch_rows = 100000         # incremental: rows per batch at most
//! batch_bytes = "64MiB"       # incremental: approximate bytes per batch at most
//! max_pending = "1GiB"        # incremental: reading pauses above this many unsent bytes
//! [[pipe.source.table]]
//! name = "public.events"
//! mode = "incremental"        # snapshot | partitions | incremental
//! watermark = "ts"
//! ```
//!
//! What can be checked without the database is checked here (every problem at once); what
//! needs it (the table exists, its key, its partitioning) is checked by [`super::probe`].

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use gapsync_daemon::config::abs;
use serde::Deserialize;

use crate::source::SourceContext;

/// Default for `poll_interval`.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);
/// Default for `batch_rows`.
pub const DEFAULT_BATCH_ROWS: u64 = 100_000;
/// Default for `batch_bytes`.
pub const DEFAULT_BATCH_BYTES: u64 = 64 << 20;
/// Default for `max_pending`.
pub const DEFAULT_MAX_PENDING: u64 = 1 << 30;

/// How a table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The whole table at each run.
    Snapshot,
    /// Each closed child partition once.
    Partitions,
    /// Rows past a watermark, continuously.
    Incremental,
}

/// `[[pipe.source.table]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    pub name: Option<String>,
    pub mode: Option<Mode>,
    #[serde(default, with = "humantime_serde")]
    pub closed_after: Option<Duration>,
    pub resync_changed: Option<bool>,
    pub watermark: Option<String>,
    pub key: Option<Vec<String>>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

/// A byte count as written: `1000000` or `"64MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Number(u64),
    Text(String),
}

/// A postgres source as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawPostgres {
    pub connection: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    pub batch_rows: Option<u64>,
    pub batch_bytes: Option<Size>,
    /// incremental: bytes of spill files not yet sent above which reading pauses.
    pub max_pending: Option<Size>,
    /// On the udp link: how long delivered spill files are kept for a resend.
    #[serde(default, with = "humantime_serde")]
    pub keep_sent_for: Option<Duration>,
    #[serde(default)]
    pub table: Vec<RawTable>,
    /// Keys a postgres source does not take (see the spool's `unknown`).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// A table's checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableMode {
    Snapshot,
    Partitions {
        closed_after: Option<Duration>,
        resync_changed: bool,
    },
    Incremental {
        watermark: String,
        /// `None`: the table's primary key.
        key: Option<Vec<String>>,
        start_time: Option<String>,
        end_time: Option<String>,
    },
}

/// One checked table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSettings {
    pub schema: String,
    pub table: String,
    pub mode: TableMode,
}

impl TableSettings {
    /// `schema.table`, as written and as objects name it.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The table as an SQL identifier (`"schema"."table"`).
    pub fn ident(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.table))
    }
}

/// A checked postgres source.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub connection: postgres::Config,
    /// The connection string as written (for messages; a password in it is not shown).
    pub shown: String,
    pub poll_interval: Duration,
    pub batch_rows: NonZeroU64,
    pub batch_bytes: NonZeroU64,
    /// incremental: reading pauses while the spill files not yet sent pass this.
    pub max_pending: NonZeroU64,
    pub keep_sent_for: Option<Duration>,
    pub tables: Vec<TableSettings>,
    /// `<state_dir>/sender/<pipe>`: spill files under `tables/`, state in `tables.json`.
    pub pipe_state: PathBuf,
    /// Delivered spill files kept on the diode (`tables-sent/`).
    pub diode: bool,
}

/// `"name"` with inner quotes doubled.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `64MiB`, `500kB`, `1000`: a byte count.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

impl RawPostgres {
    /// Checks the keys, pushing every problem; `None` when the source cannot be built.
    pub fn check(
        self,
        p: &mut Vec<String>,
        label: &str,
        cx: &SourceContext,
    ) -> Option<PostgresSettings> {
        for key in self.unknown.keys() {
            p.push(format!("unknown key `{key}` in {label} `source`: a postgres source takes connection, password_file, poll_interval, batch_rows, batch_bytes, max_pending, keep_sent_for, table"));
        }
        if self.keep_sent_for.is_some() && !cx.diode {
            p.push(format!("{label}: `keep_sent_for` is only for the udp link (on a gate link the receiver confirms every object)"));
        }
        let connection = self.connection_config(p, label, cx);
        let batch_rows = NonZeroU64::new(self.batch_rows.unwrap_or(DEFAULT_BATCH_ROWS));
        if batch_rows.is_none() {
            p.push(format!("{label}: `batch_rows` must be at least 1"));
        }
        let batch_bytes = size(
            p,
            label,
            "batch_bytes",
            &self.batch_bytes,
            DEFAULT_BATCH_BYTES,
        );
        let max_pending = size(
            p,
            label,
            "max_pending",
            &self.max_pending,
            DEFAULT_MAX_PENDING,
        );
        if self.poll_interval.is_some_and(|d| d.is_zero()) {
            p.push(format!("{label}: `poll_interval` must be above 0"));
        }
        if self.table.is_empty() {
            p.push(format!("{label}: a postgres source needs at least one [[pipe.source.table]] with name and mode"));
        }
        let mut names = std::collections::HashSet::new();
        let mut tables = Vec::new();
        for (i, t) in self.table.into_iter().enumerate() {
            let Some(t) = t.check(p, &format!("{label}: table #{}", i + 1)) else {
                continue;
            };
            if names.insert(t.name()) {
                tables.push(t);
            } else {
                p.push(format!("{label}: table {} is listed twice", t.name()));
            }
        }
        Some(PostgresSettings {
            connection: connection?,
            shown: String::new(),
            poll_interval: self.poll_interval.unwrap_or(DEFAULT_POLL),
            batch_rows: batch_rows?,
            batch_bytes: batch_bytes?,
            max_pending: max_pending?,
            keep_sent_for: self.keep_sent_for,
            tables,
            pipe_state: cx.pipe_state?.to_path_buf(),
            diode: cx.diode,
        })
        .map(|mut s| {
            s.shown = shown(&s.connection);
            s
        })
    }

    /// The connection string parsed, with the password file's first line.
    fn connection_config(
        &self,
        p: &mut Vec<String>,
        label: &str,
        cx: &SourceContext,
    ) -> Option<postgres::Config> {
        let Some(text) = self.connection.as_deref() else {
            p.push(format!("{label}: `connection` is missing: give libpq keywords (\"host=/run/postgresql dbname=plant user=gapsync\") or a postgresql:// URL"));
            return None;
        };
        let mut config = match text.parse::<postgres::Config>() {
            Ok(c) => c,
            Err(e) => {
                p.push(format!("{label}: `connection` is not valid ({e}): give libpq keywords (\"host=/run/postgresql dbname=plant user=gapsync\") or a postgresql:// URL"));
                return None;
            }
        };
        if let Some(file) = &self.password_file {
            let file = abs(cx.base, file);
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    config.password(text.lines().next().unwrap_or_default());
                }
                Err(e) => p.push(format!(
                    "{label}: `password_file` {}: cannot be read ({e})",
                    file.display()
                )),
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name(super::APPLICATION_NAME);
        // Watermarks and partition bounds are kept as text and cast back: one date style,
        // whatever the server's default (the time zone stays the database's own), and floats
        // in their exact shortest form (PostgreSQL 10 and 11 round to 15 digits without
        // extra_float_digits = 3: a float watermark read back would not be the one stored).
        let options = format!(
            "{} -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=3",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim());
        Some(config)
    }
}

/// A size key (`key`), `default` when absent; a problem pushed when not a size above 0.
fn size(
    p: &mut Vec<String>,
    label: &str,
    key: &str,
    raw: &Option<Size>,
    default: u64,
) -> Option<NonZeroU64> {
    match raw {
        None => NonZeroU64::new(default),
        Some(Size::Number(n)) => NonZeroU64::new(*n).or_else(|| {
            p.push(format!("{label}: `{key}` must be above 0"));
            None
        }),
        Some(Size::Text(t)) => parse_bytes(t).and_then(NonZeroU64::new).or_else(|| {
            p.push(format!("{label}: `{key}` {t:?} is not a size above 0 (e.g. \"64MiB\", \"500kB\", \"1000000\")"));
            None
        }),
    }
}

/// Where the connection goes, for messages (never the password).
fn shown(c: &postgres::Config) -> String {
    let hosts: Vec<String> = (c.get_hosts().iter())
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host={} port={} dbname={} user={}",
        hosts.join(","),
        if ports.is_empty() {
            "5432".to_owned()
        } else {
            ports.join(",")
        },
        c.get_dbname().unwrap_or("-"),
        c.get_user().unwrap_or("-")
    )
}

impl RawTable {
    fn check(mut self, p: &mut Vec<String>, label: &str) -> Option<TableSettings> {
        let Some(name) = self.name.take() else {
            p.push(format!(
                "{label}: `name` is missing (\"schema.table\", e.g. \"public.events\")"
            ));
            return None;
        };
        let label = format!("{label} ({name})");
        let parts: Vec<&str> = name.split('.').collect();
        let [schema, table] = parts.as_slice() else {
            p.push(format!(
                "{label}: `name` must be \"schema.table\" (e.g. \"public.events\")"
            ));
            return None;
        };
        if schema.is_empty() || table.is_empty() || name.contains('/') {
            p.push(format!(
                "{label}: `name` must be \"schema.table\" (e.g. \"public.events\")"
            ));
            return None;
        }
        let Some(mode) = self.mode else {
            p.push(format!(
                "{label}: `mode` is missing: snapshot, partitions or incremental"
            ));
            return None;
        };
        let mode = self.mode_settings(p, &label, mode)?;
        Some(TableSettings {
            schema: (*schema).to_owned(),
            table: (*table).to_owned(),
            mode,
        })
    }

    fn mode_settings(self, p: &mut Vec<String>, label: &str, mode: Mode) -> Option<TableMode> {
        let before = p.len();
        let only = |p: &mut Vec<String>, set: bool, key: &str, modes: &str| {
            if set {
                p.push(format!("{label}: `{key}` is only for {modes} mode"));
            }
        };
        let not_partitions = mode != Mode::Partitions;
        let not_incremental = mode != Mode::Incremental;
        only(
            p,
            not_partitions && self.closed_after.is_some(),
            "closed_after",
            "partitions",
        );
        only(
            p,
            not_partitions && self.resync_changed.is_some(),
            "resync_changed",
            "partitions",
        );
        only(
            p,
            not_incremental && self.watermark.is_some(),
            "watermark",
            "incremental",
        );
        only(
            p,
            not_incremental && self.key.is_some(),
            "key",
            "incremental",
        );
        only(
            p,
            not_incremental && self.start_time.is_some(),
            "start_time",
            "incremental",
        );
        only(
            p,
            not_incremental && self.end_time.is_some(),
            "end_time",
            "incremental",
        );
        let checked = match mode {
            Mode::Snapshot => TableMode::Snapshot,
            Mode::Partitions => TableMode::Partitions {
                closed_after: self.closed_after,
                resync_changed: self.resync_changed.unwrap_or(false),
            },
            Mode::Incremental => {
                let Some(watermark) = self.watermark.filter(|w| !w.is_empty()) else {
                    p.push(format!("{label}: incremental mode needs `watermark`: a non-decreasing column assigned by the database at insert (a sequence, now(), clock_timestamp())"));
                    return None;
                };
                if self.key.as_ref().is_some_and(Vec::is_empty) {
                    p.push(format!("{label}: `key` is empty: name the key columns, or leave it out for the table's primary key"));
                }
                TableMode::Incremental {
                    watermark,
                    key: self.key,
                    start_time: self.start_time,
                    end_time: self.end_time,
                }
            }
        };
        (p.len() == before).then_some(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, diode: bool) -> (Vec<String>, Option<PostgresSettings>) {
        let raw: RawPostgres = toml::from_str(text).expect("parses");
        let state = PathBuf::from("/state/sender/p");
        let cx = SourceContext {
            base: std::path::Path::new("/etc/gapsync"),
            pipe_state: Some(&state),
            diode,
        };
        let mut p = Vec::new();
        let s = raw.check(&mut p, "[[pipe]] #1 (p)", &cx);
        (p, s)
    }

    #[test]
    fn the_spec_example_is_valid_with_its_defaults() {
        let (p, s) = check(
            "connection = \"host=/run/postgresql dbname=plant user=gapsync\"\n\
             [[table]]\nname = \"public.measurements\"\nmode = \"partitions\"\nclosed_after = \"1d\"\n\
             [[table]]\nname = \"public.events\"\nmode = \"incremental\"\nwatermark = \"ts\"\nkey = [\"id\"]\n\
             [[table]]\nname = \"public.assets\"\nmode = \"snapshot\"\n",
            false,
        );
        assert!(p.is_empty(), "{p:#?}");
        let s = s.expect("settings");
        assert_eq!(s.poll_interval, DEFAULT_POLL);
        assert_eq!(s.batch_rows.get(), DEFAULT_BATCH_ROWS);
        assert_eq!(s.batch_bytes.get(), DEFAULT_BATCH_BYTES);
        assert_eq!(s.max_pending.get(), 1 << 30);
        assert_eq!(s.tables.len(), 3);
        assert_eq!(s.tables[1].ident(), "\"public\".\"events\"");
        assert_eq!(
            s.tables[0].mode,
            TableMode::Partitions {
                closed_after: Some(Duration::from_secs(86400)),
                resync_changed: false
            }
        );
        assert_eq!(
            s.shown,
            "host=/run/postgresql port=5432 dbname=plant user=gapsync"
        );
        let options = s.connection.get_options().unwrap_or_default();
        assert!(options.contains("-c extra_float_digits=3"), "{options}");
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_table() {
        let (p, s) = check(
            "connection = \"host=x port=notaport\"\nbatch_rows = 0\nbatch_bytes = \"12 parsecs\"\nmax_pending = 0\nkeep_sent_for = \"1d\"\nfoo = 1\n\
             [[table]]\nname = \"public.events\"\nmode = \"incremental\"\n\
             [[table]]\nname = \"assets\"\nmode = \"snapshot\"\n\
             [[table]]\nname = \"public.a\"\nmode = \"snapshot\"\nwatermark = \"ts\"\nclosed_after = \"1d\"\n\
             [[table]]\nname = \"public.m\"\n",
            false,
        );
        assert!(s.is_none());
        let all = p.join("\n");
        for want in [
            "unknown key `foo`",
            "`keep_sent_for` is only for the udp link",
            "`connection` is not valid",
            "`batch_rows` must be at least 1",
            "`batch_bytes` \"12 parsecs\" is not a size",
            "`max_pending` must be above 0",
            "table #1 (public.events): incremental mode needs `watermark`",
            "table #2 (assets): `name` must be \"schema.table\"",
            "table #3 (public.a): `closed_after` is only for partitions mode",
            "table #3 (public.a): `watermark` is only for incremental mode",
            "table #4 (public.m): `mode` is missing",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        assert_eq!(p.len(), 11, "{all}");
    }

    #[test]
    fn a_password_file_that_cannot_be_read_is_named_and_unknown_table_keys_refused() {
        let (p, _) = check(
            "connection = \"postgresql://u@h/db\"\npassword_file = \"/nonexistent/pass\"\n\
             [[table]]\nname = \"public.a\"\nmode = \"snapshot\"\n",
            true,
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("`password_file` /nonexistent/pass: cannot be read"));
        let e = toml::from_str::<RawPostgres>("[[table]]\nname = \"a.b\"\nmod = \"snapshot\"\n")
            .expect_err("typo");
        assert!(e.to_string().contains("unknown field `mod`"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("500kB"), Some(500_000));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("1 GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("MiB"), None);
        assert_eq!(parse_bytes("5 apples"), None);
    }
}
