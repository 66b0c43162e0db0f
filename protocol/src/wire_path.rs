//! Relative file names as they cross the wire, and the rules that confine them.

/// Longest relative path accepted, in bytes (Linux `PATH_MAX` is 4096 for a whole path).
pub const MAX_PATH_BYTES: usize = 4000;
/// Longest single path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Deepest folder nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a name from the wire (or the spool) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {0} bytes long, over the limit of {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("a component is {0} bytes long, over the limit of {MAX_COMPONENT_BYTES}")]
    ComponentTooLong(usize),
    #[error("the name is nested {0} folders deep, over the limit of {MAX_DEPTH}")]
    TooDeep(usize),
    #[error("the name is absolute; only names relative to the destination are accepted")]
    Absolute,
    #[error("the name has an empty, '.' or '..' component")]
    Traversal,
    #[error("the name contains a NUL or another control character")]
    ControlChar,
    #[error("the name contains a backslash, which is not portable")]
    Backslash,
}

/// A relative path that stays inside the folder it is joined to: no `..`, no absolute path,
/// no control characters, bounded length. Components are joined with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WirePath(String);

impl WirePath {
    /// Checks a name. Every rule is checked before the name is used anywhere.
    pub fn parse(name: &str) -> Result<Self, PathError> {
        if name.is_empty() {
            return Err(PathError::Empty);
        }
        if name.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(name.len()));
        }
        if name.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if name.chars().any(char::is_control) {
            return Err(PathError::ControlChar);
        }
        if name.contains('\\') {
            return Err(PathError::Backslash);
        }
        let mut depth = 0;
        for part in name.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(PathError::Traversal);
            }
            if part.len() > MAX_COMPONENT_BYTES {
                return Err(PathError::ComponentTooLong(part.len()));
            }
            depth += 1;
        }
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep(depth));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl std::fmt::Display for WirePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_and_non_ascii_names() {
        for ok in [
            "a",
            "a/b/c.bin",
            "变电站/遥测 2026.csv",
            "x..y",
            ".hidden/ok",
        ] {
            assert!(WirePath::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_every_escape() {
        let long = "x".repeat(256);
        let deep = vec!["d"; 65].join("/");
        let cases: [(&str, PathError); 10] = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::Traversal),
            ("a/../../x", PathError::Traversal),
            ("a//b", PathError::Traversal),
            ("a/./b", PathError::Traversal),
            ("a/", PathError::Traversal),
            ("a\0b", PathError::ControlChar),
            ("a\\..\\b", PathError::Backslash),
            (&long, PathError::ComponentTooLong(256)),
        ];
        for (name, err) in cases {
            assert_eq!(WirePath::parse(name), Err(err), "{name:?}");
        }
        assert_eq!(WirePath::parse(&deep), Err(PathError::TooDeep(65)));
        assert!(matches!(
            WirePath::parse(&"a/".repeat(2100)),
            Err(PathError::TooLong(_))
        ));
    }
}
