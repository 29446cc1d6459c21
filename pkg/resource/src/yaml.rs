//! Guards for YAML from outside (configs, patches, bundles, resource documents).
//!
//! YAML aliases let a small text stand for a huge value (`[*a, *a, ...]` where `&a` is a
//! long string): deserializers expand them. [`check_expansion`] walks the text once,
//! counting what the expanded value would hold, and stops as soon as it passes a budget,
//! before anything big is built.

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

/// Fails if the (multi-document) YAML text would expand past [`EXPANSION_BUDGET`]. Syntax
/// errors are left for the real parse to report, with its better message.
pub fn check_expansion(text: &str) -> Result<(), String> {
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
}
