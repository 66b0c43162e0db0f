//! The spool source's keys: `source = { type = "spool", path = "...", after_send = "delete" }`,
//! or the same keys flat in `[[pipe]]` (`spool` for `path`), the shorthand older configs use.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gapsync_daemon::config::abs;
use gapsync_daemon::folders;
use serde::Deserialize;

use super::ignore::IgnoreRule;
use crate::source::SourceContext;

/// Default for `settle`: how long a file must be unchanged before a scan takes it.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// Default for `poll_interval`.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// What happens to a spool file once it was delivered (gate) or sent (diode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterSend {
    Delete,
    Move,
}

/// What the spool does with a symlink (`symlinks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Symlinks {
    /// Not sent: named once at WARN (rate-limited) and counted (`skipped_links`).
    #[default]
    Skip,
    /// Sent as a link with its target text; the receiver creates it only inside its dest.
    Preserve,
}

/// A spool source as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawSpool {
    pub path: Option<PathBuf>,
    pub after_send: Option<AfterSend>,
    pub sent_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// Globs on file and folder names never taken from the spool (default: `DEFAULT_IGNORE`).
    pub ignore: Option<Vec<String>>,
    /// On the udp link: how long files stay in `sent_dir` for a manual resend (none: forever).
    #[serde(default, with = "humantime_serde")]
    pub keep_sent_for: Option<Duration>,
    /// `skip` (default) or `preserve`: symlinks sent as links (tcp/tls links only).
    pub symlinks: Option<Symlinks>,
    /// Send each file's permission bits (tcp/tls links only); default false.
    pub preserve_mode: Option<bool>,
    /// Keys a spool source does not take, reported with every other problem (serde_ignored
    /// does not see inside an internally tagged enum).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// A checked spool source.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub path: PathBuf,
    pub after_send: AfterSend,
    pub sent_dir: PathBuf,
    /// How long sent files stay in `sent_dir` (udp link); `None`: until removed by hand.
    pub keep_sent_for: Option<Duration>,
    pub settle: Duration,
    pub poll_interval: Duration,
    /// Names the spool never takes.
    pub ignore: IgnoreRule,
    pub symlinks: Symlinks,
    pub preserve_mode: bool,
}

impl RawSpool {
    /// Checks the keys, pushing every problem; `None` when the source cannot be built.
    pub fn check(
        self,
        p: &mut Vec<String>,
        label: &str,
        cx: &SourceContext,
    ) -> Option<SpoolSettings> {
        for key in self.unknown.keys() {
            p.push(format!("unknown key `{key}` in {label} `source`: a spool source takes path, after_send, sent_dir, settle, poll_interval, ignore, keep_sent_for, symlinks, preserve_mode"));
        }
        if self.keep_sent_for.is_some() && !cx.diode {
            p.push(format!("{label}: `keep_sent_for` is only for the udp link (on a gate link the receiver confirms every file)"));
        }
        let symlinks = self.symlinks.unwrap_or_default();
        let preserve_mode = self.preserve_mode.unwrap_or(false);
        if cx.diode && symlinks == Symlinks::Preserve {
            p.push(format!("{label}: `symlinks = \"preserve\"` needs a tcp or tls link: the udp (diode) link's Announce carries no link target; use symlinks = \"skip\" (links are then named and counted, not sent)"));
        }
        if cx.diode && preserve_mode {
            p.push(format!("{label}: `preserve_mode = true` needs a tcp or tls link: the udp (diode) link's Announce carries no mode; remove it (files then land with the receiver's default mode)"));
        }
        let sent_dir = self.sent_dir.map(|d| abs(cx.base, &d));
        if let Some(d) = &sent_dir {
            folders::creatable(p, &format!("{label}: `sent_dir`"), d);
        }
        let ignore = match self.ignore {
            None => IgnoreRule::default(),
            Some(globs) => IgnoreRule::new(&globs).unwrap_or_else(|bad| {
                p.extend(bad.into_iter().map(|b| format!("{label}: `ignore`: {b}")));
                IgnoreRule::default()
            }),
        };
        let Some(path) = self.path.map(|d| abs(cx.base, &d)) else {
            p.push(format!("{label}: `spool` is missing: give source = {{ type = \"spool\", path = \"...\" }} (or the shorthand spool = \"...\")"));
            return None;
        };
        folders::existing(p, &format!("{label}: spool"), &path, "2770");
        Some(SpoolSettings {
            path,
            // Nothing confirms arrival on a diode: keep what was sent for a resend.
            after_send: (self.after_send).unwrap_or(if cx.diode {
                AfterSend::Move
            } else {
                AfterSend::Delete
            }),
            sent_dir: sent_dir.or_else(|| Some(cx.pipe_state?.join("sent")))?,
            keep_sent_for: self.keep_sent_for,
            settle: self.settle.unwrap_or(DEFAULT_SETTLE),
            poll_interval: self.poll_interval.unwrap_or(DEFAULT_POLL),
            ignore,
            symlinks,
            preserve_mode,
        })
    }
}
