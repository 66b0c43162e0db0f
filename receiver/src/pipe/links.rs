//! The link rule: a symlink sent as a link (`symlinks = "preserve"` on the sender) is created
//! only when its target, resolved lexically from the link's folder, stays inside the
//! destination. Otherwise it is refused: acknowledged as done (so the sender settles it and
//! does not resend it forever), not created, counted (`refused_links`) and named at WARN.

use std::sync::atomic::Ordering::Relaxed;

use super::{Pipe, lock};

/// Refused links remembered so that their Commit is acknowledged without a write; past this
/// many the memory starts again (a forgotten one is refused again at its next Open).
const REFUSED_MEMORY: usize = 100_000;

/// True when `target`, read from the folder of the link at `path` (both relative to the
/// destination, `/`-separated), names something inside the destination: not absolute, and
/// no `..` climbs above the destination's root. The destination itself (`.` from its root)
/// counts as inside.
pub fn stays_inside(path: &str, target: &str) -> bool {
    if target.starts_with('/') || target.is_empty() || target.contains('\0') {
        return false;
    }
    let mut depth: Vec<&str> = path.split('/').collect();
    depth.pop(); // the link's own name
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            c => depth.push(c),
        }
    }
    true
}

impl Pipe {
    /// True when the link `path -> target` of `transfer` is refused (it would point outside
    /// the destination): remembered so that its Commit is acknowledged without a write,
    /// counted and said at WARN once per object.
    pub fn refuses_link(&self, transfer: u64, path: &str, target: &str) -> bool {
        if stays_inside(path, target) {
            return false;
        }
        if self.remember_refused(transfer) {
            self.stats.refused_links.fetch_add(1, Relaxed);
            tracing::warn!(pipe = %self.name, from = %self.from, %path, %target, "symlink refused: its target leaves the destination (absolute, or `..` above it); not created, acknowledged so the sender settles it");
        }
        true
    }

    /// True while the Data and Commit of `transfer` (a refused link) are acknowledged unwritten.
    pub fn is_refused_link(&self, transfer: u64) -> bool {
        lock(&self.refused_links).contains(&transfer)
    }

    /// Remembers a refused link; true the first time.
    fn remember_refused(&self, transfer: u64) -> bool {
        let mut set = lock(&self.refused_links);
        if set.len() >= REFUSED_MEMORY {
            set.clear();
        }
        set.insert(transfer)
    }
}

#[cfg(test)]
mod tests {
    use super::stays_inside;

    #[test]
    fn targets_inside_the_destination_are_kept_and_escapes_refused() {
        assert!(stays_inside("a/link", "b.txt"));
        assert!(stays_inside("a/link", "../c/d"));
        assert!(stays_inside("a/b/link", "../../x"));
        assert!(stays_inside("link", "./sub/../x"));
        assert!(stays_inside("a/link", ".."));
        assert!(!stays_inside("link", "../x"));
        assert!(!stays_inside("a/link", "../../x"));
        assert!(!stays_inside("a/link", "sub/../../../x"));
        assert!(!stays_inside("a/link", "/etc/passwd"));
        assert!(!stays_inside("a/link", ""));
    }
}
