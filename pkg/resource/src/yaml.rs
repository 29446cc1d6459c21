//! Guards for YAML from outside (configs, patches, bundles, resource documents).
//!
//! YAML aliases let a small text stand for a huge value (`[*a, *a, ...]` where `&a` is a
//! long string): deserializers expand them. [`check_expansion`] walks the text once,
//! counting what the expanded value would hold, and stops as soon as it passes a budget,
//! before anything big is built.
//!
//! Deeply nested flow collections (`[[[[...`) cost the YAML parser time that grows with
//! the square of the depth (100,000 levels: over a minute): [`check_nesting`] refuses
//! more than [`MAX_NESTING`] levels in one linear pass before the parser sees the text.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The most scalar bytes plus nodes an expanded YAML text may hold.
pub const EXPANSION_BUDGET: usize = 16 * 1024 * 1024;

struct Budget<'a>(&'a Cell<usize>);

impl Budget<'_> {
    fn spend<E: serde::de::Error>(&self, amount: usize) -> Result<(), E> {
        let left = self.0.get().checked_sub(amount.max(1)).ok_or_else(|| {
            E::custom(format!(
                "the document expands to more than {EXPANSION_BUDGET} bytes (YAML aliases?)"
            ))
        })?;
        self.0.set(left);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.spend(1)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.spend(8)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.spend(8)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.spend(8)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.spend(v.len())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.spend(1)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.spend(1)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        Budget(self.0).deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend::<A::Error>(1)?;
        while seq.next_element_seed(Budget(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend::<A::Error>(1)?;
        while map.next_key_seed(Budget(self.0))?.is_some() {
            map.next_value_seed(Budget(self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        let ((), variant) = data.variant_seed(Budget(self.0))?;
        variant.newtype_variant_seed(Budget(self.0))
    }
}

/// The lines of a YAML text, broken where YAML 1.1 (libyaml) breaks them: at `\n`,
/// `\r\n`, `\r`, NEL, LS and PS. Each line comes as (its text, its text with its
/// break). `str::lines` knows only the first two, and the YAML emitter may end a block
/// scalar with an LS: a `---` after it is a marker to YAML.
pub fn lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let is_break = |c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
        let (end, next) = match rest.char_indices().find(|&(_, c)| is_break(c)) {
            None => (rest.len(), rest.len()),
            Some((i, '\r')) if rest[i + 1..].starts_with('\n') => (i, i + 2),
            Some((i, c)) => (i, i + c.len_utf8()),
        };
        let (whole, tail) = rest.split_at(next);
        rest = tail;
        Some((&whole[..end], whole))
    })
}

/// The most flow collections (`[...]`, `{...}`) one may hold inside another. Configs,
/// patches, bundles and resources nest a handful of levels.
pub const MAX_NESTING: usize = 64;

/// Fails, naming the line, if flow collections nest deeper than [`MAX_NESTING`]. One pass
/// over the text: quoted scalars, comments and block scalars (`|`, `>`) are skipped, and
/// a `[` or `{` counts only where a flow collection can start (after an indicator or at
/// the start of a value), not inside a plain scalar such as `a[1]`.
pub fn check_nesting(text: &str) -> Result<(), String> {
    let mut depth = 0usize;
    // Inside a block scalar: the indentation its content is deeper than.
    let mut block_scalar: Option<usize> = None;
    for (number, (line, _)) in lines(text).enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block_scalar {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut quote: Option<char> = None;
        let mut escaped = false;
        // Whether a node may start here (the start of the line, after `- `, `? `, `: `,
        // and in a flow collection after `[`, `{`, `,`): only there do `[`, `{` and
        // quotes open something; anywhere else they are part of a plain scalar.
        let mut node_start = true;
        // An indicator (`-`, `?`, `:`) that counts only if a space follows it.
        let mut pending = false;
        let mut after_space = true;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if q == '"' && c == '\\' {
                    escaped = true;
                } else if q == '\'' && c == '\'' && chars.peek() == Some(&'\'') {
                    // `''` is a quote inside single quotes.
                    chars.next();
                } else if c == q {
                    quote = None;
                    node_start = false;
                }
                continue;
            }
            if c == ' ' || c == '\t' {
                if pending {
                    node_start = true;
                    pending = false;
                }
                after_space = true;
                continue;
            }
            if pending {
                pending = false;
                node_start = false;
            }
            match c {
                '#' if after_space => break,
                '-' | '?' if node_start => {
                    pending = true;
                    node_start = false;
                }
                ':' => pending = true,
                '\'' | '"' if node_start => quote = Some(c),
                '[' | '{' if depth > 0 || node_start => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!(
                            "line {}: collections nested more than {MAX_NESTING} deep",
                            number + 1
                        ));
                    }
                    node_start = true;
                }
                ']' | '}' if depth > 0 => {
                    depth -= 1;
                    node_start = false;
                }
                ',' if depth > 0 => node_start = true,
                _ => node_start = false,
            }
            after_space = false;
        }
        if depth == 0 && quote.is_none() && opens_block_scalar(line) {
            block_scalar = Some(indent);
        }
    }
    Ok(())
}

/// Whether `line` ends with a block scalar's header (`key: |`, `- >-`, `|2`...).
fn opens_block_scalar(line: &str) -> bool {
    let content = line.split(" #").next().unwrap_or(line).trim_end();
    let Some(at) = content.rfind(['|', '>']) else {
        return false;
    };
    let (before, header) = content.split_at(at);
    header[1..]
        .chars()
        .all(|c| matches!(c, '+' | '-' | '1'..='9'))
        && (before.ends_with(": ") || before.ends_with("- ") || before.trim().is_empty())
}

/// Fails if the (multi-document) YAML text nests too deep ([`check_nesting`]) or would
/// expand past [`EXPANSION_BUDGET`]. Syntax errors are left for the real parse to report,
/// with its better message.
pub fn check_expansion(text: &str) -> Result<(), String> {
    check_nesting(text)?;
    // Only an alias (`*name`) repeats a node: a text without `*` expands to itself, and
    // most configs have none, so they skip this whole extra parse.
    if !text.contains('*') {
        return Ok(());
    }
    let budget = Cell::new(EXPANSION_BUDGET);
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match Budget(&budget).deserialize(doc) {
            Ok(()) => {}
            Err(e) if budget.get() == 0 || e.to_string().contains("expands to more than") => {
                return Err(e.to_string())
            }
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_yaml_passes_and_alias_bombs_do_not() {
        check_expansion("a: 1\nb: [x, y]\n---\nc: {d: e}\n").unwrap();
        check_expansion("a: &x hello\nb: *x\n").unwrap();
        let long = "x".repeat(1 << 20);
        let bomb = format!("a: &s {long}\nb: [{}]\n", vec!["*s"; 64].join(","));
        let err = check_expansion(&bomb).unwrap_err();
        assert!(err.contains("expands to more than"), "{err}");
        // Nested: each level doubles.
        let mut nested = String::from("l0: &l0 [aaaaaaaaaaaaaaaaaaaaaaaa]\n");
        for i in 1..40 {
            nested.push_str(&format!("l{i}: &l{i} [*l{p}, *l{p}]\n", p = i - 1));
        }
        // (The YAML library stops this one itself; either way nothing big is built.)
        assert!(
            check_expansion(&nested).is_err()
                || serde_yaml_ng::from_str::<serde_json::Value>(&nested).is_err()
        );
        // Syntax errors are the parser's to report.
        check_expansion("a: [\n").unwrap();
    }

    #[test]
    fn deep_nesting_is_refused_at_once_and_ordinary_brackets_are_not() {
        let deep = format!("kind: MachineConfig\nx: {}", "[".repeat(100_000));
        let started = std::time::Instant::now();
        let err = check_expansion(&deep).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            err.contains("line 2") && err.contains("nested more than 64"),
            "{err}"
        );
        // A comment ends at any YAML line break, CR alone too: what follows it counts.
        for eol in ["\r", "\u{85}", "\u{2028}", "\u{2029}"] {
            let hidden = format!("# note{eol}x: {}", "[".repeat(100));
            let err = check_nesting(&hidden).unwrap_err();
            assert!(err.contains("line 2"), "{eol:?}: {err}");
        }
        let deep_maps = format!("a: {}", "{b: ".repeat(65));
        assert!(check_nesting(&deep_maps).is_err());
        check_nesting(&format!("a: {}{}", "[".repeat(64), "]".repeat(64))).unwrap();
        // Brackets that open no collection: in plain and quoted scalars, comments and
        // block scalars, however many.
        let mut ordinary = String::from("kind: MachineConfig\n");
        for _ in 0..100 {
            ordinary.push_str("a: x[1\nb: \"[[\"\nc: '{{'\n# [[[[\nd: [e, f] # ]]\n");
            // Found by the config round trip: `:` and `-` are indicators only before a space.
            ordinary.push_str(
                "e: 1:{\nf: -[x\n'{{': g\nh: '''{{'\ni: A? {[\nj: \u{2000}{\nk: ''': {'\n",
            );
        }
        ordinary.push_str("content: |\n");
        for _ in 0..100 {
            ordinary.push_str("  if [ -f x ]; then [[[\n");
        }
        ordinary.push_str("after: [ok]\n");
        check_nesting(&ordinary).unwrap();
        // The block scalar ends where the indentation does: nesting after it counts.
        let after = format!("content: |\n  [[[\nx: {}", "[".repeat(65));
        assert!(check_nesting(&after).is_err());
    }
}
