//! `reload` (and SIGHUP): the config file is checked first (a bad one is refused with its
//! problems and the running one kept; the database of each added or changed postgres pipe
//! is asked what check-config asks it); then, pipe by pipe, added pipes start, removed pipes
//! stop (DROP: their state folder stays where it is, `<state_dir>/sender/<pipe>`, and
//! `pipe-states.json` records when), changed pipes restart, and the others are not touched.

use gapsync_daemon::control::Response;

use super::{Running, Steer};
use crate::config::{Config, PipeConfig};
use crate::source::SourceSettings;
use crate::source::postgres::probe;

/// What a reload does to the pipes.
#[derive(Debug, Default)]
struct Plan {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    unchanged: Vec<String>,
}

impl Steer {
    /// Reads the config file again and applies it (see the module docs).
    pub(super) fn reload(&mut self) -> Response {
        let new = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(config = %self.path.display(), error = %why, "the new config has problems and is not applied; the running config is kept");
                return Response::failed(format!(
                    "reload refused, the running config is kept: {why}"
                ));
            }
        };
        let fixed = restart_only(&self.config, &new);
        if !fixed.is_empty() {
            let why = format!(
                "{} cannot change while the daemon runs: run systemctl restart gapsync-sender to apply them (the running config is kept until then)",
                fixed.join(", ")
            );
            tracing::error!(config = %self.path.display(), "the new config is not applied: {why}");
            return Response::failed(format!("reload refused: {why}"));
        }
        let plan = plan(&self.config, &new);
        let problems = tokio::task::block_in_place(|| probe_databases(&plan, &new));
        if !problems.is_empty() {
            let why = problems.join("\n");
            tracing::error!(config = %self.path.display(), error = %why, "the new config has problems and is not applied; the running config is kept");
            return Response::failed(format!("reload refused, the running config is kept: {why}"));
        }
        let errors = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.apply(&plan, &new))
        });
        self.config = new;
        let said = describe(&plan);
        if errors.is_empty() {
            tracing::info!(config = %self.path.display(), "config reloaded: {said}");
            Response::done(format!("reloaded: {said}"))
        } else {
            let errors = errors.join("; ");
            tracing::error!(config = %self.path.display(), "config reloaded, but {errors}");
            Response::failed(format!("reloaded ({said}), but {errors}"))
        }
    }

    /// Stops the removed and changed pipes, then starts the added and changed ones, keeping
    /// the new config's order. Returns the pipes that could not be started or recorded.
    async fn apply(&mut self, plan: &Plan, new: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        let mut kept: Vec<Running> = Vec::new();
        for r in std::mem::take(&mut self.pipes) {
            let name = r.cfg.name.clone();
            if plan.unchanged.contains(&name) {
                kept.push(r);
                continue;
            }
            self.stop_pipe(r).await;
            if plan.removed.contains(&name) {
                if let Err(e) = self.states.dropped_at(&name, chrono::Utc::now()) {
                    errors.push(format!("pipe {name}: {e}"));
                }
                tracing::info!(pipe = %name, state = %self.config.state_dir.join("sender").join(&name).display(), "pipe removed by a reload (DROP): its state folder is kept where it is; a pipe of the same name added later resumes from it");
            }
        }
        for pc in &new.pipes {
            if let Some(i) = kept.iter().position(|r| r.cfg.name == pc.name) {
                let mut r = kept.remove(i);
                r.cfg = pc.clone();
                self.pipes.push(r);
                continue;
            }
            if plan.added.contains(&pc.name) {
                if let Ok(Some(at)) = self.states.restore(&pc.name) {
                    tracing::info!(pipe = %pc.name, dropped_at = %at.to_rfc3339(), "pipe added again by a reload: it resumes from the state it had when it was removed");
                }
            }
            match self.start_pipe(pc.clone()) {
                Ok(r) => self.pipes.push(r),
                Err(e) => {
                    tracing::error!(pipe = %pc.name, error = %format!("{e:#}"), "cannot start the pipe after a reload; fix the cause and reload again");
                    errors.push(format!("{e:#}"));
                }
            }
        }
        errors
    }
}

/// The daemon-wide keys that differ: they need a restart.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, same: bool| {
        if !same {
            keys.push(key);
        }
    };
    check("node", old.node == new.node);
    check("state_dir", old.state_dir == new.state_dir);
    check("log_dir", old.log_dir == new.log_dir);
    check("log_format", old.log_format == new.log_format);
    check("log_time", old.log_time == new.log_time);
    check("log_level", old.log_level == new.log_level);
    check(
        "summary_interval",
        old.summary_interval == new.summary_interval,
    );
    check("control_socket", old.control_socket == new.control_socket);
    keys
}

/// Which pipes are added, removed, changed (anything of theirs differs: their table as
/// written, their profile with the overrides, `[tls]`, their key file's key) or unchanged.
/// What check-config asks the database of each added or changed postgres pipe.
fn probe_databases(plan: &Plan, new: &Config) -> Vec<String> {
    let touched = |n: &String| plan.added.contains(n) || plan.changed.contains(n);
    let mut problems = Vec::new();
    for pc in new.pipes.iter().filter(|pc| touched(&pc.name)) {
        if let SourceSettings::Postgres(s) = &pc.source {
            problems.extend(probe::pipe(&pc.name, s));
        }
    }
    problems
}

fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    for o in &old.pipes {
        match new.pipes.iter().find(|n| n.name == o.name) {
            None => plan.removed.push(o.name.clone()),
            Some(n) if same_pipe(old, o, new, n) => plan.unchanged.push(o.name.clone()),
            Some(_) => plan.changed.push(o.name.clone()),
        }
    }
    for n in &new.pipes {
        if !old.pipes.iter().any(|o| o.name == n.name) {
            plan.added.push(n.name.clone());
        }
    }
    plan
}

/// Whether pipe `a` of `old` and `b` of `new` are the same.
fn same_pipe(old: &Config, a: &PipeConfig, new: &Config, b: &PipeConfig) -> bool {
    let key = |p: &PipeConfig| p.auth.as_ref().map(|a| (a.key.id, a.key.key.clone()));
    old.pipes_written.get(&a.name) == new.pipes_written.get(&b.name)
        && a.profile == b.profile
        && old.tls_written == new.tls_written
        && key(a) == key(b)
}

/// "added [a], removed [b] (state kept), restarted [c], unchanged 2".
fn describe(plan: &Plan) -> String {
    let list = |v: &[String]| format!("[{}]", v.join(", "));
    format!(
        "added {}, removed {} (their state kept), restarted {}, unchanged {}",
        list(&plan.added),
        list(&plan.removed),
        list(&plan.changed),
        plan.unchanged.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a config of `pipes` (`[[pipe]]` tables) with `top` keys, in `d`.
    fn load(d: &std::path::Path, top: &str, pipes: &str) -> Config {
        for s in ["a", "b", "c"] {
            std::fs::create_dir_all(d.join(s)).expect("spool");
        }
        let text = format!(
            "node = \"n\"\nprofile = \"loopback\"\nprofiles_dir = {:?}\nstate_dir = \"state\"\n{top}\n{pipes}",
            gapsync_tests::profiles_dir().display().to_string()
        );
        let path = d.join("s.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(&path).expect("valid")
    }

    const A: &str = "[[pipe]]\nname = \"a\"\ngate = \"h:1\"\nspool = \"a\"\n";
    const B: &str = "[[pipe]]\nname = \"b\"\ngate = \"h:1\"\nspool = \"b\"\n";

    #[test]
    fn pipes_are_added_removed_changed_or_left_alone() {
        let d = tempfile::tempdir().expect("tempdir");
        let old = load(d.path(), "", &format!("{A}{B}"));
        let same = load(d.path(), "", &format!("{A}{B}"));
        let p = plan(&old, &same);
        assert_eq!((p.unchanged.len(), p.changed.len()), (2, 0), "{p:?}");
        let b2 = B.replace("spool = \"b\"", "spool = \"b\"\nmax_attempts = 9");
        let c = "[[pipe]]\nname = \"c\"\ngate = \"h:1\"\nspool = \"c\"\n";
        let new = load(d.path(), "", &format!("{b2}{c}"));
        let p = plan(&old, &new);
        assert_eq!(
            (p.added, p.removed, p.changed, p.unchanged),
            (
                vec!["c".to_owned()],
                vec!["a".to_owned()],
                vec!["b".to_owned()],
                vec![]
            )
        );
        let overrides = load(
            d.path(),
            "[profile_overrides]\nwindow = 3\n",
            &format!("{A}{B}"),
        );
        assert_eq!(
            plan(&old, &overrides).changed.len(),
            2,
            "a profile change reaches every pipe"
        );
        assert!(restart_only(&old, &overrides).is_empty());
    }

    #[test]
    fn daemon_wide_keys_need_a_restart() {
        let d = tempfile::tempdir().expect("tempdir");
        let old = load(d.path(), "", A);
        let new = load(
            d.path(),
            "log_level = \"debug\"\ncontrol_socket = \"x.sock\"",
            A,
        );
        assert_eq!(restart_only(&old, &new), ["log_level", "control_socket"]);
    }
}
