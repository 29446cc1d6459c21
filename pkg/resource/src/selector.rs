//! Label selectors in the syntax kubectl users know:
//! `app=web, tier!=db, zone in (a, b), env notin (dev), canary, !legacy`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ResourceError;

/// One condition on a resource's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelTerm {
    Exists(String),
    NotExists(String),
    Equal(String, String),
    NotEqual(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

impl LabelTerm {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelTerm::Exists(k) => labels.contains_key(k),
            LabelTerm::NotExists(k) => !labels.contains_key(k),
            LabelTerm::Equal(k, v) => labels.get(k) == Some(v),
            LabelTerm::NotEqual(k, v) => labels.get(k) != Some(v),
            LabelTerm::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelTerm::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

/// A conjunction of label terms; the empty query matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelQuery {
    pub terms: Vec<LabelTerm>,
}

impl LabelQuery {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn with(mut self, term: LabelTerm) -> Self {
        self.terms.push(term);
        self
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| t.matches(labels))
    }

    /// Parses a selector; errors name the byte position of the problem.
    pub fn parse(input: &str) -> Result<Self, ResourceError> {
        Parser { input, pos: 0 }.query()
    }
}

impl fmt::Display for LabelQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match term {
                LabelTerm::Exists(k) => write!(f, "{k}")?,
                LabelTerm::NotExists(k) => write!(f, "!{k}")?,
                LabelTerm::Equal(k, v) => write!(f, "{k}={v}")?,
                LabelTerm::NotEqual(k, v) => write!(f, "{k}!={v}")?,
                LabelTerm::In(k, vs) => write!(f, "{k} in ({})", set(vs))?,
                LabelTerm::NotIn(k, vs) => write!(f, "{k} notin ({})", set(vs))?,
            }
        }
        Ok(())
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

impl Parser<'_> {
    fn error(&self, reason: &'static str) -> ResourceError {
        ResourceError::Selector {
            input: self.input.to_string(),
            position: self.pos,
            reason,
        }
    }

    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// A label key or value; empty values are allowed only where `allow_empty`.
    fn name(&mut self, allow_empty: bool) -> Result<String, ResourceError> {
        self.skip_spaces();
        let len = self
            .rest()
            .find(|c: char| !is_name_char(c))
            .unwrap_or(self.rest().len());
        if len == 0 && !allow_empty {
            return Err(self.error("expected a label name"));
        }
        let name = self.rest()[..len].to_string();
        self.pos += len;
        Ok(name)
    }

    /// `in` or `notin` followed by a space or `(`; a key may start with those letters.
    fn eat_keyword(&mut self, word: &str) -> bool {
        self.skip_spaces();
        let rest = self.rest();
        if rest.starts_with(word)
            && rest[word.len()..]
                .chars()
                .next()
                .is_some_and(|c| c == '(' || c.is_whitespace())
        {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, ResourceError> {
        if !self.eat("(") {
            return Err(self.error("expected '(' to open a set"));
        }
        let mut values = BTreeSet::new();
        loop {
            values.insert(self.name(true)?);
            if self.eat(")") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("expected ',' or ')' in a set"));
            }
        }
    }

    fn term(&mut self) -> Result<LabelTerm, ResourceError> {
        if self.eat("!") {
            return Ok(LabelTerm::NotExists(self.name(false)?));
        }
        let key = self.name(false)?;
        if self.eat("!=") {
            Ok(LabelTerm::NotEqual(key, self.name(true)?))
        } else if self.eat("==") || self.eat("=") {
            Ok(LabelTerm::Equal(key, self.name(true)?))
        } else if self.eat_keyword("notin") {
            Ok(LabelTerm::NotIn(key, self.set()?))
        } else if self.eat_keyword("in") {
            Ok(LabelTerm::In(key, self.set()?))
        } else {
            Ok(LabelTerm::Exists(key))
        }
    }

    fn query(mut self) -> Result<LabelQuery, ResourceError> {
        let mut query = LabelQuery::default();
        self.skip_spaces();
        if self.rest().is_empty() {
            return Ok(query);
        }
        loop {
            query.terms.push(self.term()?);
            self.skip_spaces();
            if self.rest().is_empty() {
                return Ok(query);
            }
            if !self.eat(",") {
                return Err(self.error("expected ',' between terms"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_every_term_kind() {
        let q = LabelQuery::parse(
            "app=web, tier!=db, zone in (a, b), env notin (dev), canary, !legacy",
        )
        .unwrap();
        assert_eq!(q.terms.len(), 6);
        let good = labels(&[
            ("app", "web"),
            ("tier", "fe"),
            ("zone", "b"),
            ("canary", ""),
        ]);
        assert!(q.matches(&good));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "1".into());
        assert!(!q.matches(&bad));
        let mut bad = good.clone();
        bad.insert("zone".into(), "c".into());
        assert!(!q.matches(&bad));
        assert_eq!(LabelQuery::parse(&q.to_string()).unwrap(), q);
    }

    #[test]
    fn keys_may_start_with_keywords() {
        let q = LabelQuery::parse("input=1,notinteresting").unwrap();
        assert_eq!(
            q.terms,
            vec![
                LabelTerm::Equal("input".into(), "1".into()),
                LabelTerm::Exists("notinteresting".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_position() {
        let err = LabelQuery::parse("app=web,,x").unwrap_err();
        assert!(err.to_string().contains("at byte 8"), "{err}");
        let err = LabelQuery::parse("zone in (a, b").unwrap_err();
        assert!(err.to_string().contains("expected ',' or ')'"), "{err}");
        assert!(LabelQuery::parse("a=b c").is_err());
    }

    #[test]
    fn empty_query_matches_everything() {
        assert!(LabelQuery::parse("  ").unwrap().matches(&labels(&[])));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,64}") {
            let _ = LabelQuery::parse(&s);
        }
    }
}
