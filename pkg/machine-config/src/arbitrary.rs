//! Small collections for property tests: derived strategies default to 100 items a
//! level, which makes nested configs megabytes large.

use std::collections::BTreeMap;

use proptest::prelude::*;

pub fn small_vec<T: Arbitrary + 'static>() -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec(any::<T>(), 0..3)
}

pub fn small_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(any::<String>(), any::<String>(), 0..3)
}
