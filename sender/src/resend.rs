//! `gapsync-sender resend`: puts the files a diode pipe sent in a time range back into its
//! spool. They keep their transfer ids (the sent log has them), so the receiver lands only
//! those it did not get.

use std::path::Path;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use crate::config::Config;
use crate::pipe::sent_log::SentLog;
use crate::source::spool::move_file;

fn parse_time(what: &str, text: &str) -> anyhow::Result<u64> {
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        anyhow::anyhow!("--{what} {text:?}: {e}; write it as \"2026-11-21 10:00:00\" (UTC)")
    })?;
    Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn resend(config: &Path, pipe: &str, since: &str, until: Option<&str>) -> anyhow::Result<usize> {
    let config = Config::load(config)?;
    let Some(pc) = config.pipes.iter().find(|p| p.name == pipe) else {
        anyhow::bail!(
            "no pipe {pipe:?} in the config; its pipes are: {}",
            config
                .pipes
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let Some(spool) = pc.source.spool() else {
        anyhow::bail!("pipe {pipe:?} has no spool source: only a spool's sent files can be resent");
    };
    let since = parse_time("since", since)?;
    let until = match until {
        Some(u) => parse_time("until", u)?,
        None => crate::state::unix_now(),
    };
    let mut moved = 0;
    for e in SentLog::read(&pc.state_dir)?
        .into_iter()
        .filter(|e| (since..=until).contains(&e.at))
    {
        let from = spool.sent_dir.join(&e.path);
        match std::fs::metadata(&from) {
            Ok(m) if m.len() == e.size => match move_file(&from, &spool.path.join(&e.path)) {
                Ok(()) => {
                    println!("resending {}", e.path);
                    moved += 1;
                }
                Err(err) => eprintln!("cannot move {} back into the spool: {err}", from.display()),
            },
            _ => eprintln!(
                "not in sent_dir (removed after keep_sent_for, after_send = \"delete\", or by hand): {}",
                e.path
            ),
        }
    }
    Ok(moved)
}

/// Runs the subcommand; exit 0 when files were put back, 1 when none was, 2 on bad input.
pub fn run(config: &Path, pipe: &str, since: &str, until: Option<&str>) -> ExitCode {
    match resend(config, pipe, since, until) {
        Ok(0) => {
            eprintln!("no file of pipe {pipe} sent in that range is in sent_dir");
            ExitCode::FAILURE
        }
        Ok(n) => {
            println!(
                "{n} file(s) put back into the spool of pipe {pipe}; the running sender sends them"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}
