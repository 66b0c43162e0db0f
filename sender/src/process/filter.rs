//! The `filter` processor: which objects a pipe takes, by key (globs) and by time.
//!
//! ```toml
//! { type = "filter", include = ["**/*.csv"], exclude = ["tmp/**"],
//!   start_time = "2026-01-01T00:00:00Z", end_time = "2026-12-31T23:59:59+08:00" }
//! ```
//!
//! - Globs match the object's whole key: its path relative to the source, `/`-separated, no
//!   leading `/` (`plant/2026/a.csv`). `*` and `?` never cross a `/` (globset's
//!   `literal_separator`), so `*.csv` matches top-level files only and `**/*.csv` matches at any
//!   depth, including the top level (`**/` also matches zero folders: `a.csv` matches).
//! - `exclude` wins over `include`; an empty or absent `include` takes every key.
//! - `start_time` / `end_time` are RFC 3339 with an offset (quoted, or TOML's unquoted datetime)
//!   and inclusive; they
//!   are compared with the object's time (for a spool file, its mtime).
//!
//! The policy calls [`Filter::admits`] once per object the source offers. An object refused
//! stays where it is (never settled), its [`Verdict::counter`] is counted in the pipe's status
//! and a DEBUG line names the key and [`Verdict`] (its `Display`).

use std::fmt;
use std::time::SystemTime;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// `{ type = "filter", ... }` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    /// Globs on the key; an object must match one (absent or empty: every object).
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs on the key; an object matching one is never taken.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// RFC 3339; objects older than this are not taken (inclusive bound).
    #[serde(default, deserialize_with = "time_text")]
    pub start_time: Option<String>,
    /// RFC 3339; objects newer than this are not taken (inclusive bound).
    #[serde(default, deserialize_with = "time_text")]
    pub end_time: Option<String>,
}

/// A time as a string or as TOML's own (unquoted) datetime; [`Filter::check`] parses it, so
/// a missing offset is reported with the other problems.
fn time_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct TimeText;
    impl<'de> serde::de::Visitor<'de> for TimeText {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 time such as \"2026-01-01T00:00:00Z\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        // TOML's datetime arrives as a one-entry map holding its text.
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
            match map.next_entry::<String, String>()? {
                Some((_, text)) => Ok(text),
                None => Err(serde::de::Error::invalid_length(0, &self)),
            }
        }
    }
    d.deserialize_any(TimeText).map(Some)
}

/// Why [`Filter::admits`] took or refused an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Taken.
    Admit,
    /// The key matches an `exclude` glob.
    Excluded,
    /// `include` is set and the key matches none of its globs.
    NotIncluded,
    /// The object's time is before `start_time`.
    BeforeStart,
    /// The object's time is after `end_time`.
    AfterEnd,
}

impl Verdict {
    /// Whether the object is taken.
    pub fn is_admitted(self) -> bool {
        self == Verdict::Admit
    }

    /// A stable name for the pipe's status counters (`filtered_excluded`, ...).
    pub fn counter(self) -> &'static str {
        match self {
            Verdict::Admit => "admitted",
            Verdict::Excluded => "excluded",
            Verdict::NotIncluded => "not_included",
            Verdict::BeforeStart => "before_start",
            Verdict::AfterEnd => "after_end",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Admit => "taken",
            Verdict::Excluded => "not taken: the key matches an exclude glob",
            Verdict::NotIncluded => "not taken: the key matches no include glob",
            Verdict::BeforeStart => "not taken: its time is before start_time",
            Verdict::AfterEnd => "not taken: its time is after end_time",
        })
    }
}

/// A checked filter.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    start: Option<SystemTime>,
    end: Option<SystemTime>,
}

impl Filter {
    /// Checks `raw`; every problem is reported, each naming its key (`include`, `start_time`...)
    /// but not the pipe (the caller prefixes that).
    pub fn check(raw: &RawFilter) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let include = globs("include", &raw.include, &mut problems);
        let exclude = globs("exclude", &raw.exclude, &mut problems);
        let start = time("start_time", raw.start_time.as_deref(), &mut problems);
        let end = time("end_time", raw.end_time.as_deref(), &mut problems);
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                problems.push(format!(
                    "start_time {:?} is after end_time {:?}: no object could pass",
                    raw.start_time.as_deref().unwrap_or_default(),
                    raw.end_time.as_deref().unwrap_or_default()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            include: (!raw.include.is_empty()).then_some(include),
            exclude,
            start,
            end,
        })
    }

    /// Whether the object with `key` (`/`-separated, relative) and `time` is taken, and if not,
    /// why. Exclusion is checked first, then inclusion, then the time range.
    pub fn admits(&self, key: &str, time: SystemTime) -> Verdict {
        if self.exclude.is_match(key) {
            return Verdict::Excluded;
        }
        if let Some(include) = &self.include {
            if !include.is_match(key) {
                return Verdict::NotIncluded;
            }
        }
        if self.start.is_some_and(|s| time < s) {
            return Verdict::BeforeStart;
        }
        if self.end.is_some_and(|e| time > e) {
            return Verdict::AfterEnd;
        }
        Verdict::Admit
    }
}

/// Builds the globs of `key`, adding a message per bad glob to `problems`.
fn globs(key: &str, list: &[String], problems: &mut Vec<String>) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for g in list {
        if g.is_empty() {
            problems.push(format!(
                "{key}: the empty glob \"\" matches no key: remove it"
            ));
            continue;
        }
        if g.starts_with('/') {
            problems.push(format!(
                "{key}: glob {g:?} starts with `/`: keys are relative to the source (write {:?})",
                g.trim_start_matches('/')
            ));
            continue;
        }
        match GlobBuilder::new(g).literal_separator(true).build() {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => problems.push(format!("{key}: glob {g:?} is not valid: {}", e.kind())),
        }
    }
    builder.build().unwrap_or_else(|e| {
        problems.push(format!("{key}: the globs cannot be combined: {e}"));
        GlobSet::empty()
    })
}

/// Parses an RFC 3339 time of `key`, adding a message to `problems` if it is not one.
fn time(key: &str, text: Option<&str>, problems: &mut Vec<String>) -> Option<SystemTime> {
    let text = text?;
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Some(SystemTime::from(t)),
        Err(e) => {
            problems.push(format!(
                "{key} {text:?} is not an RFC 3339 time ({e}): write e.g. \"2026-01-01T00:00:00Z\" or \"2026-01-01T08:00:00+08:00\""
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raw(include: &[&str], exclude: &[&str]) -> RawFilter {
        RawFilter {
            include: include.iter().map(|s| (*s).to_owned()).collect(),
            exclude: exclude.iter().map(|s| (*s).to_owned()).collect(),
            ..RawFilter::default()
        }
    }

    fn at(rfc: &str) -> SystemTime {
        chrono::DateTime::parse_from_rfc3339(rfc)
            .expect("test time")
            .into()
    }

    #[test]
    fn star_stays_in_one_folder_and_double_star_matches_any_depth_including_the_top() {
        let now = SystemTime::now();
        let top = Filter::check(&raw(&["*.csv"], &[])).expect("valid");
        assert_eq!(top.admits("a.csv", now), Verdict::Admit);
        assert_eq!(top.admits("plant/a.csv", now), Verdict::NotIncluded);
        let any = Filter::check(&raw(&["**/*.csv"], &[])).expect("valid");
        assert_eq!(any.admits("a.csv", now), Verdict::Admit);
        assert_eq!(any.admits("plant/2026/a.csv", now), Verdict::Admit);
        assert_eq!(any.admits("plant/a.csv.tmp", now), Verdict::NotIncluded);
    }

    #[test]
    fn exclude_wins_over_include_and_no_include_takes_everything() {
        let now = SystemTime::now();
        let f = Filter::check(&raw(&["**/*.csv"], &["tmp/**"])).expect("valid");
        assert_eq!(f.admits("tmp/a.csv", now), Verdict::Excluded);
        assert_eq!(f.admits("tmp/deep/a.csv", now), Verdict::Excluded);
        assert_eq!(f.admits("data/tmp/a.csv", now), Verdict::Admit);
        let all = Filter::check(&raw(&[], &["*.log"])).expect("valid");
        assert_eq!(all.admits("x/y.bin", now), Verdict::Admit);
        assert_eq!(all.admits("y.log", now), Verdict::Excluded);
        assert_eq!(all.admits("x/y.log", now), Verdict::Admit);
    }

    #[test]
    fn time_bounds_are_inclusive_and_accept_offsets() {
        let mut r = raw(&[], &[]);
        r.start_time = Some("2026-01-01T00:00:00Z".into());
        r.end_time = Some("2026-01-31T08:00:00+08:00".into());
        let f = Filter::check(&r).expect("valid");
        let start = at("2026-01-01T00:00:00Z");
        let end = at("2026-01-31T00:00:00Z");
        assert_eq!(f.admits("a", start), Verdict::Admit);
        assert_eq!(f.admits("a", end), Verdict::Admit);
        let ns = Duration::from_nanos(1);
        assert_eq!(f.admits("a", start - ns), Verdict::BeforeStart);
        assert_eq!(f.admits("a", end + ns), Verdict::AfterEnd);
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_key() {
        let mut r = raw(&["", "/abs/*.csv", "a[b"], &["**/{x"]);
        r.start_time = Some("yesterday".into());
        r.end_time = Some("2026-01-01 00:00:00".into());
        let problems = Filter::check(&r).expect_err("invalid");
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert!(problems[0].starts_with("include: the empty glob"));
        assert!(problems[1].contains("starts with `/`") && problems[1].contains("\"abs/*.csv\""));
        assert!(problems[2].starts_with("include: glob \"a[b\" is not valid"));
        assert!(problems[3].starts_with("exclude: glob \"**/{x\" is not valid"));
        assert!(problems[4].starts_with("start_time \"yesterday\" is not an RFC 3339 time"));
        assert!(problems[5].starts_with("end_time"));
    }

    #[test]
    fn a_start_after_the_end_is_refused() {
        let mut r = raw(&[], &[]);
        r.start_time = Some("2026-02-01T00:00:00Z".into());
        r.end_time = Some("2026-01-01T00:00:00Z".into());
        let problems = Filter::check(&r).expect_err("invalid");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("is after end_time"), "{}", problems[0]);
    }

    #[test]
    fn verdicts_have_counter_names_and_sentences() {
        assert!(Verdict::Admit.is_admitted());
        assert!(!Verdict::AfterEnd.is_admitted());
        assert_eq!(Verdict::NotIncluded.counter(), "not_included");
        assert_eq!(
            Verdict::Excluded.to_string(),
            "not taken: the key matches an exclude glob"
        );
    }
}
