//! A pipe's `ignore` rule: globs matched against every file and folder NAME in the spool (not
//! against paths). A file whose name matches, or that lies under a folder whose name matches,
//! is never taken; the scanner counts it and names it in the log instead (see
//! [`super::spool`]).

use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// The default `ignore`: names that writers use for files still being written and then
/// rename (the spool rule of the README, rsync's `.name.XXXXXX`, editors' `.name.swp`,
/// browsers' and curl's `*.part`). See the README, "The spool rule", for why `.*` stays.
pub const DEFAULT_IGNORE: &[&str] = &[".*", "*.tmp", "*.part"];

/// Checked globs of one pipe.
#[derive(Debug, Clone)]
pub struct IgnoreRule {
    globs: Vec<String>,
    set: GlobSet,
}

impl Default for IgnoreRule {
    fn default() -> Self {
        let globs: Vec<String> = DEFAULT_IGNORE.iter().map(|g| (*g).to_owned()).collect();
        Self::new(&globs).expect("the default ignore globs are valid")
    }
}

impl IgnoreRule {
    /// Checks `globs`; every bad one is reported, each message naming its glob.
    pub fn new(globs: &[String]) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut builder = GlobSetBuilder::new();
        for g in globs {
            if g.is_empty() {
                problems.push("the empty glob \"\" matches no name: remove it".to_owned());
                continue;
            }
            if g.contains('/') {
                problems.push(format!("glob {g:?} contains `/`: the globs match one file or folder name, not a path (a matching folder is skipped whole)"));
                continue;
            }
            match GlobBuilder::new(g).literal_separator(true).build() {
                Ok(glob) => {
                    builder.add(glob);
                }
                Err(e) => problems.push(format!("glob {g:?} is not valid: {}", e.kind())),
            }
        }
        let set = match builder.build() {
            Ok(set) => set,
            Err(e) => {
                problems.push(format!("the globs cannot be combined: {e}"));
                GlobSet::empty()
            }
        };
        if problems.is_empty() {
            Ok(Self {
                globs: globs.to_vec(),
                set,
            })
        } else {
            Err(problems)
        }
    }

    /// The globs as configured.
    pub fn globs(&self) -> &[String] {
        &self.globs
    }

    /// The first glob that matches `name` (one file or folder name), if any.
    pub fn matching(&self, name: &std::ffi::OsStr) -> Option<&str> {
        if !self.set.is_match(name) {
            return None;
        }
        let first = self.set.matches(name).into_iter().min()?;
        self.globs.get(first).map(String::as_str)
    }

    /// The first glob that matches a name on `rel` (a path relative to the spool): the file's
    /// own name or that of a folder it is under.
    pub fn matching_path(&self, rel: &Path) -> Option<&str> {
        rel.components().find_map(|c| self.matching(c.as_os_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(globs: &[&str]) -> Result<IgnoreRule, Vec<String>> {
        IgnoreRule::new(&globs.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>())
    }

    fn m<'a>(r: &'a IgnoreRule, rel: &str) -> Option<&'a str> {
        r.matching_path(Path::new(rel))
    }

    #[test]
    fn the_default_ignores_dot_names_tmp_and_part_anywhere_on_the_path() {
        let r = IgnoreRule::default();
        assert_eq!(r.globs(), [".*", "*.tmp", "*.part"]);
        assert_eq!(m(&r, ".gitignore"), Some(".*"));
        assert_eq!(m(&r, "src/.name.Ab12Cd"), Some(".*"));
        assert_eq!(m(&r, ".git/objects/ab/cdef"), Some(".*"));
        assert_eq!(m(&r, "a/b/report.tmp"), Some("*.tmp"));
        assert_eq!(m(&r, "dl.iso.part"), Some("*.part"));
        assert_eq!(m(&r, "x.tmp/inside.bin"), Some("*.tmp"));
        assert_eq!(m(&r, "a/b/report.csv"), None);
        assert_eq!(m(&r, "tmp/part/a.tmpx"), None);
        assert_eq!(m(&r, "not.hidden"), None);
    }

    #[test]
    fn a_custom_list_replaces_the_default_and_names_the_first_matching_glob() {
        let r = rule(&["*.tmp", "*.part", ".*.sw?", "[Bb]uild"]).expect("valid");
        assert_eq!(m(&r, ".gitignore"), None);
        assert_eq!(m(&r, ".github/workflows/ci.yml"), None);
        assert_eq!(m(&r, "src/.main.rs.swp"), Some(".*.sw?"));
        assert_eq!(m(&r, "Build/out.o"), Some("[Bb]uild"));
        assert_eq!(m(&r, "build/out.o"), Some("[Bb]uild"));
        assert_eq!(m(&r, "builds/out.o"), None);
        let both = rule(&["*.log", "a*"]).expect("valid");
        assert_eq!(m(&both, "a.log"), Some("*.log"));
        let none = rule(&[]).expect("an empty list ignores nothing");
        assert_eq!(m(&none, ".hidden/x.tmp"), None);
    }

    #[test]
    fn bad_globs_are_all_reported_by_name() {
        let errs = rule(&["ok*", "[unclosed", "a/b", "", "{x,y"]).expect_err("invalid");
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("\"[unclosed\""), "{errs:?}");
        assert!(errs[1].contains("\"a/b\"") && errs[1].contains("not a path"));
        assert!(errs[2].contains("empty glob"));
        assert!(errs[3].contains("\"{x,y\""), "{errs:?}");
    }
}
