//! A pipe's processors: what it takes, how it compresses, how fast it sends.
//!
//! ```toml
//! processors = [
//!   { type = "filter", include = ["**/*.csv"], exclude = ["tmp/**"], start_time = "2026-01-01T00:00:00Z" },
//!   { type = "compress", codec = "zstd", level = 3 },
//!   { type = "rate_limit", bytes_per_second = 20000000 },
//! ]
//! ```
//!
//! ```text
//!  source --offer(key, size, time)--> [history mark] -> [filter] --admitted--> queue
//!  queue --frame bytes--> [compress] -> [rate_limit] -> link
//! ```
//!
//! Each kind is one file with its config next to its runtime: [`filter`], [`compress`],
//! [`rate_limit`]; `history` / `realtime` are pipe keys, not processors ([`history`]).
//!
//! How the policy uses this module: the pipe's config check calls
//! [`Processors::check`]`(pipe_name, &raw.processors)` and appends the messages to its own list
//! (each already names the pipe and the step). Then, per pipe:
//! - before queueing an object: `processors.filter()` → [`filter::Filter::admits`];
//! - at session setup: `processors.compress()` → the codec and level to negotiate;
//! - when the pipe starts: `processors.rate_limit()` → [`rate_limit::RateLimiter::new`], and
//!   `take(n)` / `take_blocking(n)` before each frame, with `n` the frame's bytes on the wire if
//!   [`Processors::limit_after_compress`] (the step is listed after `compress`), else the
//!   original bytes it carries.
//!
//! Order: the steps are kept in the order written. It only matters between `compress` and
//! `rate_limit` (which bytes the limit counts); a filter looks at the key and the time, which
//! compression does not change, so its place makes no difference.
//!
//! At most one step of each kind: two filters would have to be all passed (AND), while the globs
//! inside one filter are alternatives (OR); mixing both in one list reads ambiguously, and one
//! filter with more globs says the same. A second `compress` would compress compressed bytes,
//! and of two `rate_limit`s only the lower one would ever act.
//!
//! Unknown keys: each step's struct has `deny_unknown_fields`. This matters because the loader's
//! collector of unknown keys (`serde_ignored`) cannot see inside an internally tagged enum
//! (serde buffers its content first), so without it a misspelt key (`level_` ...) would be
//! silently dropped. The first unknown key of a step therefore fails the parse, naming the key.

pub mod compress;
pub mod filter;
pub mod history;
pub mod rate_limit;

use serde::Deserialize;

use self::compress::{Compress, RawCompress};
use self::filter::{Filter, RawFilter};
use self::rate_limit::{RateLimit, RawRateLimit};

/// One entry of a pipe's `processors` list as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawProcessor {
    Filter(RawFilter),
    Compress(RawCompress),
    RateLimit(RawRateLimit),
}

impl RawProcessor {
    /// The `type` tag as written.
    pub fn kind(&self) -> &'static str {
        match self {
            RawProcessor::Filter(_) => "filter",
            RawProcessor::Compress(_) => "compress",
            RawProcessor::RateLimit(_) => "rate_limit",
        }
    }
}

/// One checked step.
#[derive(Debug, Clone)]
pub enum Processor {
    Filter(Filter),
    Compress(Compress),
    RateLimit(RateLimit),
}

/// A pipe's checked processors, in the order written, at most one of each kind.
#[derive(Debug, Clone, Default)]
pub struct Processors {
    steps: Vec<Processor>,
}

impl Processors {
    /// Checks a pipe's `processors` list; every problem of every step is reported, each message
    /// starting with `pipe NAME: processors[i] (kind): ` and naming the key at fault.
    pub fn check(pipe: &str, raw: &[RawProcessor]) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut steps = Vec::new();
        for (i, step) in raw.iter().enumerate() {
            let kind = step.kind();
            let at = format!("pipe {pipe}: processors[{i}] ({kind})");
            if let Some(first) = raw.iter().position(|s| s.kind() == kind).filter(|&f| f < i) {
                problems.push(format!(
                    "{at}: a second {kind} step (the first is processors[{first}]): {}",
                    why_one(kind)
                ));
                continue;
            }
            match check_step(step) {
                Ok(p) => steps.push(p),
                Err(list) => problems.extend(list.into_iter().map(|m| format!("{at}: {m}"))),
            }
        }
        if problems.is_empty() {
            Ok(Self { steps })
        } else {
            Err(problems)
        }
    }

    /// The steps in the order written.
    pub fn steps(&self) -> &[Processor] {
        &self.steps
    }

    /// The filter, if any.
    pub fn filter(&self) -> Option<&Filter> {
        self.steps.iter().find_map(|s| match s {
            Processor::Filter(f) => Some(f),
            _ => None,
        })
    }

    /// The compression, if any.
    pub fn compress(&self) -> Option<&Compress> {
        self.steps.iter().find_map(|s| match s {
            Processor::Compress(c) => Some(c),
            _ => None,
        })
    }

    /// The rate limit, if any.
    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.steps.iter().find_map(|s| match s {
            Processor::RateLimit(r) => Some(r),
            _ => None,
        })
    }

    /// Whether the rate limit counts compressed bytes (it is listed after `compress`).
    pub fn limit_after_compress(&self) -> bool {
        let pos = |f: fn(&Processor) -> bool| self.steps.iter().position(f);
        match (
            pos(|s| matches!(s, Processor::Compress(_))),
            pos(|s| matches!(s, Processor::RateLimit(_))),
        ) {
            (Some(c), Some(r)) => c < r,
            _ => false,
        }
    }
}

fn check_step(step: &RawProcessor) -> Result<Processor, Vec<String>> {
    Ok(match step {
        RawProcessor::Filter(r) => Processor::Filter(Filter::check(r)?),
        RawProcessor::Compress(r) => Processor::Compress(Compress::check(r)?),
        RawProcessor::RateLimit(r) => Processor::RateLimit(RateLimit::check(r)?),
    })
}

fn why_one(kind: &str) -> &'static str {
    match kind {
        "filter" => {
            "put all globs and times in one filter (its include globs are alternatives; two filters would both have to pass)"
        }
        "compress" => "a second compression would compress compressed bytes",
        _ => "of two limits only the lower one would act: keep that one",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Pipe {
        #[serde(default)]
        processors: Vec<RawProcessor>,
    }

    fn parse(text: &str) -> Result<Vec<RawProcessor>, String> {
        toml::from_str::<Pipe>(text)
            .map(|p| p.processors)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_parses_and_keeps_its_order() {
        let raw = parse(
            r#"processors = [
  { type = "filter", include = ["**/*.csv"], exclude = ["tmp/**"], start_time = "2026-01-01T00:00:00Z" },
  { type = "compress", codec = "zstd", level = 3 },
  { type = "rate_limit", bytes_per_second = 20000000 },
]"#,
        )
        .expect("parses");
        let p = Processors::check("scada", &raw).expect("valid");
        assert_eq!(p.steps().len(), 3);
        assert!(p.filter().is_some());
        assert_eq!(p.compress().map(|c| c.level), Some(3));
        assert_eq!(
            p.rate_limit().map(|r| r.burst_bytes.get()),
            Some(20_000_000)
        );
        assert!(p.limit_after_compress());
    }

    #[test]
    fn a_rate_limit_before_compress_counts_original_bytes() {
        let raw = parse(
            r#"processors = [{ type = "rate_limit", bytes_per_second = 5 }, { type = "compress" }]"#,
        )
        .expect("parses");
        assert!(
            !Processors::check("p", &raw)
                .expect("valid")
                .limit_after_compress()
        );
        let none = Processors::check("p", &[]).expect("valid");
        assert!(none.filter().is_none() && !none.limit_after_compress());
    }

    #[test]
    fn a_filter_time_may_be_a_toml_datetime_but_needs_an_offset() {
        let raw = parse(r#"processors = [{ type = "filter", start_time = 2026-01-01T00:00:00Z }]"#)
            .expect("parses");
        assert!(Processors::check("p", &raw).is_ok());
        let raw = parse(r#"processors = [{ type = "filter", end_time = 2026-01-01T08:00:00 }]"#)
            .expect("parses");
        let p = Processors::check("p", &raw).expect_err("no offset");
        assert!(p[0].starts_with("pipe p: processors[0] (filter): end_time \"2026-01-01T08:00:00\" is not an RFC 3339 time"), "{p:?}");
    }

    #[test]
    fn unknown_keys_and_types_fail_the_parse_naming_them() {
        let e =
            parse(r#"processors = [{ type = "compress", levle = 3 }]"#).expect_err("unknown key");
        assert!(e.contains("unknown field `levle`"), "{e}");
        let e =
            parse(r#"processors = [{ type = "filter", pattern = "a" }]"#).expect_err("unknown key");
        assert!(e.contains("unknown field `pattern`"), "{e}");
        let e = parse(r#"processors = [{ type = "gzip" }]"#).expect_err("unknown type");
        assert!(e.contains("unknown variant `gzip`"), "{e}");
        let e = parse(r#"processors = [{ level = 3 }]"#).expect_err("no type");
        assert!(e.contains("missing field `type`"), "{e}");
    }

    #[test]
    fn every_problem_of_every_step_is_reported_at_once() {
        let raw = parse(
            r#"processors = [
  { type = "filter", include = ["a[b"], end_time = "soon" },
  { type = "compress", level = 25 },
  { type = "rate_limit", bytes_per_second = 0 },
  { type = "compress", level = 3 },
  { type = "filter" },
]"#,
        )
        .expect("parses");
        let p = Processors::check("scada", &raw).expect_err("invalid");
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(p[0].starts_with("pipe scada: processors[0] (filter): include: glob \"a[b\""));
        assert!(p[1].starts_with("pipe scada: processors[0] (filter): end_time \"soon\""));
        assert!(p[2].starts_with("pipe scada: processors[1] (compress): level 25"));
        assert!(p[3].starts_with("pipe scada: processors[2] (rate_limit): bytes_per_second = 0"));
        assert!(p[4].starts_with(
            "pipe scada: processors[3] (compress): a second compress step (the first is processors[1])"
        ));
        assert!(p[5].starts_with("pipe scada: processors[4] (filter): a second filter step"));
    }
}
