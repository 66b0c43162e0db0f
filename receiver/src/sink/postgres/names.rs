//! Names in SQL: identifiers are always quoted (PostgreSQL's `quote_ident`, always quoting), and
//! a `schema.table` name from the config or a header is split into its two parts.

use std::fmt;

/// Quotes an identifier: `"` around it, inner `"` doubled. Always quoted, so case and
/// reserved words are kept as they are.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table's schema and name, as the source spelled them (unquoted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QualName {
    pub schema: String,
    pub name: String,
}

impl QualName {
    /// Splits `schema.table` at its first dot; a name without a schema is in `public`.
    pub fn parse(s: &str) -> Option<Self> {
        let (schema, name) = s.split_once('.').unwrap_or(("public", s));
        (!schema.is_empty() && !name.is_empty() && !s.contains('\0')).then(|| Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `schema.table` with both parts given (config entries).
    pub fn parse_strict(s: &str) -> Option<Self> {
        s.contains('.').then(|| Self::parse(s)).flatten()
    }

    /// `"schema"."name"`, for SQL text.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// A name beside this one in the same schema (`<name><suffix>`, cut to PostgreSQL's 63
    /// bytes so it is not silently truncated into another name).
    pub fn beside(&self, suffix: &str) -> Self {
        let mut base = self.name.clone();
        while base.len() + suffix.len() > 63 {
            base.pop();
        }
        Self {
            schema: self.schema.clone(),
            name: format!("{base}{suffix}"),
        }
    }
}

impl fmt::Display for QualName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Schemas no object may write to: the sink's own state (`gapsync`) and the system's.
pub fn refused_schema(schema: &str) -> bool {
    schema == "gapsync" || schema == "information_schema" || schema.starts_with("pg_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_quotes_doubled() {
        assert_eq!(quote_ident("events"), "\"events\"");
        assert_eq!(
            quote_ident("Weird \"x\"; drop"),
            "\"Weird \"\"x\"\"; drop\""
        );
        let q = QualName::parse("plant_a.Events").expect("test value");
        assert_eq!(q.sql(), "\"plant_a\".\"Events\"");
        assert_eq!(QualName::parse("t").expect("test value").schema, "public");
        assert!(QualName::parse(".t").is_none());
        assert!(QualName::parse("s.").is_none());
    }

    #[test]
    fn a_name_beside_stays_within_63_bytes() {
        let q = QualName::parse(&format!("s.{}", "x".repeat(70))).expect("test value");
        let b = q.beside("__gapsync_new");
        assert_eq!(b.name.len(), 63);
        assert!(b.name.ends_with("__gapsync_new"));
    }
}
