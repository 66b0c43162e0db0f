//! `gapsync-receiver load --config FILE --pipe NAME FILE...`: applies table object files (for
//! example landed by a directory sink, the offline path) through pipe NAME's postgres sink
//! settings, with the same code and the same exactly-once record as the daemon. And the
//! database part of `check-config`: every postgres sink's target is connected to.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, PipeConfig};
use crate::sink::SinkSettings;
use crate::sink::postgres::db::{Db, DbThread};

/// Applies `files` in the order given; one line per file. Exit 0 when every file was applied
/// or applied already, 1 otherwise, 2 for a config or pipe that cannot be used.
pub fn run(config: &Path, pipe: &str, from: Option<&str>, files: &[PathBuf]) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let p = match find_pipe(&config, pipe, from) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let SinkSettings::Postgres(settings) = &p.sink else {
        eprintln!(
            "pipe {} from {} has a {} sink: `load` applies table objects through a postgres sink's settings",
            p.name,
            p.from,
            p.sink.kind()
        );
        return ExitCode::from(2);
    };
    let db = match DbThread::spawn(Db::new(settings.clone(), &p.from, &p.name), &p.name) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("cannot start the database thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for f in files {
        let path = f.clone();
        let r = db.run(move |db| db.apply_file(&path));
        match r {
            Some(Ok(outcome)) => println!("{}: {outcome}", f.display()),
            Some(Err(e)) => {
                failed += 1;
                println!("{}: not applied: {e}", f.display());
            }
            None => {
                failed += 1;
                println!("{}: not applied: the database thread stopped", f.display());
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} file(s) not applied", files.len());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn find_pipe<'a>(
    config: &'a Config,
    name: &str,
    from: Option<&str>,
) -> Result<&'a PipeConfig, String> {
    let found: Vec<&PipeConfig> = config
        .pipes
        .iter()
        .filter(|p| p.name == name && from.is_none_or(|f| p.from == f))
        .collect();
    match found.as_slice() {
        [p] => Ok(p),
        [] => Err(format!(
            "no pipe {name:?} in the config{}",
            from.map(|f| format!(" from {f:?}")).unwrap_or_default()
        )),
        _ => Err(format!(
            "pipe {name:?} is configured for several senders: say which with --from"
        )),
    }
}

/// Connects to every postgres sink's target database (check-config): each one unreachable,
/// refusing the password, or without the state table is a problem naming its pipe.
pub fn check_databases(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for p in &config.pipes {
        let SinkSettings::Postgres(s) = &p.sink else {
            continue;
        };
        let mut db = Db::new(s.clone(), &p.from, &p.name);
        // check-config runs outside any runtime: the blocking client may be used here.
        if let Err(e) = db.client() {
            problems.push(format!(
                "pipe {} from {}: sink: {}",
                p.name, p.from, e.message
            ));
        }
    }
    problems
}
