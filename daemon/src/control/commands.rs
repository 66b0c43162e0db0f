//! The control commands both daemons have: `pipes`, `pipe stop`, `pipe start`, `reload`. Each
//! finds the socket from the config file, asks the running daemon and prints its answer.
//! Exit codes: 0 done, 1 refused or failed, 2 config unreadable, 3 daemon not running.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::client::{self, ClientError};
use super::table::{self, Side};
use super::{Request, Response};

/// `pipe stop NAME` and `pipe start NAME`.
#[derive(clap::Subcommand, Debug)]
pub enum PipeAction {
    /// Stop a pipe: it ends its frame in flight, keeps its queue and state, and stays stopped
    /// (across restarts too) until `pipe start`.
    Stop {
        /// The pipe's name in the config.
        name: String,
        /// The daemon's config file (it names the control socket).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a stopped pipe.
    Start {
        /// The pipe's name in the config.
        name: String,
        /// The daemon's config file (it names the control socket).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// What a control command prints and its exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

/// Runs one control command against `program`'s daemon and prints its outcome.
pub fn run(program: &str, config: &Path, request: Request, json: bool) -> ExitCode {
    let outcome = outcome(program, config, &request, json, Utc::now());
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(outcome.code)
}

/// What [`run`] prints, `now` giving the ages in the table.
pub fn outcome(
    program: &str,
    config: &Path,
    request: &Request,
    json: bool,
    now: DateTime<Utc>,
) -> Outcome {
    let answer = client::socket_from_config(config, program)
        .and_then(|socket| client::call(program, &socket, request));
    let failed = |code, text: String| Outcome {
        code,
        stdout: String::new(),
        stderr: format!("{text}\n"),
    };
    let done = |stdout: String| Outcome {
        code: 0,
        stdout,
        stderr: String::new(),
    };
    match answer {
        Err(e @ (ClientError::ConfigRead { .. } | ClientError::ConfigParse { .. }))
            if *request == Request::Reload =>
        {
            failed(
                e.exit_code(),
                format!(
                    "{e}\nreload refused: nothing was sent to {program}; if it runs, it keeps its running config"
                ),
            )
        }
        Err(e) => failed(e.exit_code(), e.to_string()),
        Ok(Response::Failed { error }) => failed(1, format!("{program}: {error}")),
        Ok(Response::Done { message }) if *request != Request::Pipes => {
            done(format!("{message}\n"))
        }
        Ok(Response::Pipes { rows }) if *request == Request::Pipes => done(if json {
            let mut text = serde_json::to_string_pretty(&rows).unwrap_or_default();
            text.push('\n');
            text
        } else {
            table::render(Side::of_program(program), &rows, now)
        }),
        Ok(other) => {
            let e = ClientError::BadAnswer {
                program: program.to_owned(),
                detail: format!("{other:?} to {request:?}"),
            };
            failed(1, e.to_string())
        }
    }
}
