//! Strategies for property tests. Small collections: derived strategies default to 100
//! items a level, which makes nested configs megabytes large. Text from any characters
//! (control characters, quotes and YAML's indicators among them) drawn one by one:
//! proptest's own `any::<String>()` builds its character class anew for every string,
//! which made generating configs most of the round trip's time.

use std::collections::BTreeMap;

use proptest::prelude::*;

pub fn small_vec<T: Arbitrary + 'static>() -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec(any::<T>(), 0..3)
}

/// Up to 16 characters of any kind.
pub fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..16).prop_map(String::from_iter)
}

pub fn maybe_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

pub fn small_texts() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(), 0..3)
}

pub fn small_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(text(), text(), 0..3)
}
