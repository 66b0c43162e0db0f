//! A partition's bound and its parent's key as a header carries them, parsed strictly and
//! rebuilt from their parts: only the forms `pg_get_expr(relpartbound)` and
//! `pg_get_partkeydef` print for plain literal bounds and plain column keys are accepted, so a
//! hostile header cannot put an expression (a function call) into DDL.

use super::names::quote_ident;

/// One literal of a bound.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lit {
    /// A single-quoted string, unescaped.
    Str(String),
    /// A number as written (digits, one sign, one dot, an exponent).
    Num(String),
    /// MINVALUE, MAXVALUE, NULL, TRUE, FALSE.
    Word(&'static str),
}

impl Lit {
    fn sql(&self) -> String {
        match self {
            Lit::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Lit::Num(n) => n.clone(),
            Lit::Word(w) => (*w).to_owned(),
        }
    }
}

/// A tokenizer over a bound or key: words, numbers, strings, `(`, `)`, `,`.
struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Num(String),
    Str(String),
    Open,
    Close,
    Comma,
}

impl<'a> Lexer<'a> {
    fn tokens(text: &'a str) -> Result<Vec<Tok>, String> {
        let mut l = Lexer {
            s: text.as_bytes(),
            at: 0,
        };
        let mut out = Vec::new();
        while let Some(t) = l.next()? {
            out.push(t);
        }
        Ok(out)
    }

    fn next(&mut self) -> Result<Option<Tok>, String> {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
        let Some(&c) = self.s.get(self.at) else {
            return Ok(None);
        };
        let start = self.at;
        self.at += 1;
        Ok(Some(match c {
            b'(' => Tok::Open,
            b')' => Tok::Close,
            b',' => Tok::Comma,
            b'\'' => Tok::Str(self.quoted(b'\'')?),
            b'"' => Tok::Quoted(self.quoted(b'"')?),
            b'-' | b'+' | b'.' | b'0'..=b'9' => Tok::Num(self.number(start)?),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while self
                    .s
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.at += 1;
                }
                Tok::Word(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
            }
            c => return Err(format!("unexpected character {:?}", c as char)),
        }))
    }

    /// A string or identifier up to its closing quote, a doubled quote standing for one.
    fn quoted(&mut self, q: u8) -> Result<String, String> {
        let mut v = Vec::new();
        loop {
            match self.s.get(self.at) {
                None => return Err("an unterminated quote".into()),
                Some(&c) if c == q && self.s.get(self.at + 1) == Some(&q) => {
                    v.push(q);
                    self.at += 2;
                }
                Some(&c) if c == q => {
                    self.at += 1;
                    break;
                }
                Some(&c) => {
                    v.push(c);
                    self.at += 1;
                }
            }
        }
        String::from_utf8(v).map_err(|_| "a quoted text that is not UTF-8".into())
    }

    fn number(&mut self, start: usize) -> Result<String, String> {
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-'))
        {
            self.at += 1;
        }
        let n = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("");
        if n.parse::<f64>().is_ok() && !n.contains(['i', 'I', 'n', 'N']) {
            Ok(n.to_owned())
        } else {
            Err(format!("{n:?} is not a number"))
        }
    }
}

/// Parses a list `( item, ... )` starting at `toks[*i]` with `item`.
fn list<T>(
    toks: &[Tok],
    i: &mut usize,
    mut item: impl FnMut(&Tok) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if toks.get(*i) != Some(&Tok::Open) {
        return Err("a list in parentheses is expected".into());
    }
    *i += 1;
    let mut out = Vec::new();
    loop {
        let t = toks.get(*i).ok_or("the list is not closed")?;
        out.push(item(t)?);
        *i += 1;
        match toks.get(*i) {
            Some(Tok::Comma) => *i += 1,
            Some(Tok::Close) => {
                *i += 1;
                return Ok(out);
            }
            _ => return Err("`,` or `)` is expected in a list".into()),
        }
    }
}

fn lit(t: &Tok) -> Result<Lit, String> {
    match t {
        Tok::Str(s) => Ok(Lit::Str(s.clone())),
        Tok::Num(n) => Ok(Lit::Num(n.clone())),
        Tok::Word(w) => {
            let up = w.to_ascii_uppercase();
            ["MINVALUE", "MAXVALUE", "NULL", "TRUE", "FALSE"]
                .into_iter()
                .find(|k| *k == up)
                .map(Lit::Word)
                .ok_or_else(|| format!("{w:?} is not a literal (a function or column is refused)"))
        }
        _ => Err("a literal is expected".into()),
    }
}

fn word(toks: &[Tok], i: &mut usize, w: &str) -> Result<(), String> {
    match toks.get(*i) {
        Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w) => {
            *i += 1;
            Ok(())
        }
        _ => Err(format!("{w} is expected")),
    }
}

fn lits(l: &[Lit]) -> String {
    l.iter().map(Lit::sql).collect::<Vec<_>>().join(", ")
}

/// A partition bound (`FOR VALUES FROM (...) TO (...)`, `FOR VALUES IN (...)`, `FOR VALUES
/// WITH (MODULUS n, REMAINDER n)`, `DEFAULT`) rebuilt from its literals; an error otherwise.
pub fn bound(text: &str) -> Result<String, String> {
    let toks = Lexer::tokens(text)?;
    let mut i = 0;
    let out = if word(&toks, &mut i, "DEFAULT").is_ok() {
        "DEFAULT".to_owned()
    } else {
        word(&toks, &mut i, "FOR")?;
        word(&toks, &mut i, "VALUES")?;
        match toks.get(i) {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("FROM") => {
                i += 1;
                let from = list(&toks, &mut i, lit)?;
                word(&toks, &mut i, "TO")?;
                let to = list(&toks, &mut i, lit)?;
                format!("FOR VALUES FROM ({}) TO ({})", lits(&from), lits(&to))
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("IN") => {
                i += 1;
                format!("FOR VALUES IN ({})", lits(&list(&toks, &mut i, lit)?))
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("WITH") => {
                i += 1;
                hash_bound(&toks, &mut i)?
            }
            _ => return Err("FROM, IN or WITH is expected after FOR VALUES".into()),
        }
    };
    if i != toks.len() {
        return Err("something follows the bound".into());
    }
    Ok(out)
}

fn hash_bound(toks: &[Tok], i: &mut usize) -> Result<String, String> {
    let bad = || "(MODULUS n, REMAINDER n) is expected".to_owned();
    let int = |t: Option<&Tok>| match t {
        Some(Tok::Num(n)) if n.bytes().all(|c| c.is_ascii_digit()) => Ok(n.clone()),
        _ => Err(bad()),
    };
    if toks.get(*i) != Some(&Tok::Open) {
        return Err(bad());
    }
    *i += 1;
    word(toks, i, "MODULUS").map_err(|_| bad())?;
    let m = int(toks.get(*i))?;
    *i += 1;
    if toks.get(*i) != Some(&Tok::Comma) {
        return Err(bad());
    }
    *i += 1;
    word(toks, i, "REMAINDER").map_err(|_| bad())?;
    let r = int(toks.get(*i))?;
    *i += 1;
    if toks.get(*i) != Some(&Tok::Close) {
        return Err(bad());
    }
    *i += 1;
    Ok(format!("FOR VALUES WITH (MODULUS {m}, REMAINDER {r})"))
}

/// A parent's partition key (`RANGE (a, b)`, `LIST (a)`, `HASH (a)`) rebuilt with quoted
/// names, each one a column of the object; an error otherwise.
pub fn partition_key(text: &str, columns: &[String]) -> Result<String, String> {
    let toks = Lexer::tokens(text)?;
    let mut i = 0;
    let strategy = match toks.first() {
        Some(Tok::Word(w))
            if ["RANGE", "LIST", "HASH"].contains(&w.to_ascii_uppercase().as_str()) =>
        {
            w.to_ascii_uppercase()
        }
        _ => return Err("RANGE, LIST or HASH is expected".into()),
    };
    i += 1;
    let cols = list(&toks, &mut i, |t| match t {
        Tok::Word(w) => Ok(w.to_ascii_lowercase()),
        Tok::Quoted(q) => Ok(q.clone()),
        _ => Err("a column name is expected (an expression is refused)".into()),
    })?;
    if i != toks.len() {
        return Err("something follows the key".into());
    }
    if let Some(c) = cols.iter().find(|c| !columns.contains(c)) {
        return Err(format!("{c:?} is not a column of the object"));
    }
    let names: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
    Ok(format!("{strategy} ({})", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bounds_are_rebuilt() {
        let ok = |b: &str| bound(b).expect("a plain bound");
        assert_eq!(
            ok("FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-01-02 00:00:00+00')"),
            "FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-01-02 00:00:00+00')"
        );
        assert_eq!(
            ok("FOR VALUES FROM (MINVALUE, 1) TO (MAXVALUE, -2.5e3)"),
            "FOR VALUES FROM (MINVALUE, 1) TO (MAXVALUE, -2.5e3)"
        );
        assert_eq!(
            ok("FOR VALUES IN ('it''s', NULL, true)"),
            "FOR VALUES IN ('it''s', NULL, TRUE)"
        );
        assert_eq!(
            ok("FOR VALUES WITH (modulus 4, remainder 1)"),
            "FOR VALUES WITH (MODULUS 4, REMAINDER 1)"
        );
        assert_eq!(ok("DEFAULT"), "DEFAULT");
    }

    #[test]
    fn expressions_in_bounds_are_refused() {
        for b in [
            "FOR VALUES IN (pg_read_file('PG_VERSION'))",
            "FOR VALUES IN (1); DROP TABLE x",
            "FOR VALUES IN ('a'::text)",
            "FOR VALUES IN (1 + 1)",
            "FOR VALUES IN ('x' || 'y')",
            "FOR VALUES FROM (1) TO (2) PARTITION BY RANGE (a)",
            "FOR VALUES IN ('unterminated)",
            "FOR VALUES WITH (MODULUS 4, REMAINDER now())",
            "DEFAULT PARTITION BY LIST (a)",
            "FOR VALUES IN (1 /* c */)",
            "FOR VALUES IN (E'x')",
            "FOR VALUES IN (Infinity)",
        ] {
            assert!(bound(b).is_err(), "{b}");
        }
    }

    #[test]
    fn keys_are_plain_columns_of_the_object() {
        let cols = vec!["ts".to_owned(), "Site".to_owned()];
        assert_eq!(
            partition_key("RANGE (ts)", &cols).expect("ok"),
            "RANGE (\"ts\")"
        );
        assert_eq!(
            partition_key("list (ts, \"Site\")", &cols).expect("ok"),
            "LIST (\"ts\", \"Site\")"
        );
        for k in [
            "RANGE (lower(ts))",
            "RANGE (ts) ; DROP TABLE x",
            "RANGE (other)",
            "RANGE (Site)",
            "RANGE ((ts))",
            "BTREE (ts)",
            "RANGE (ts COLLATE \"C\")",
        ] {
            assert!(partition_key(k, &cols).is_err(), "{k}");
        }
    }
}
