#![allow(dead_code)]

use basalt_resource::{Resource, ResourceKey, ResourceSpec};
use serde::{Deserialize, Serialize};

/// A test spec: a counter, with a copy of itself to detect torn records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ResourceSpec)]
#[resource(type = "Counters.test.basalt.dev", namespace = "test")]
pub struct Counter {
    pub value: u64,
    pub check: String,
}

impl Counter {
    pub fn new(value: u64) -> Self {
        Counter {
            value,
            check: format!("value={value}"),
        }
    }
}

pub fn counter(id: &str, value: u64) -> Resource<Counter> {
    Resource::new(id, Counter::new(value))
}

pub fn key(id: &str) -> ResourceKey {
    ResourceKey::new(Counter::DEFAULT_NAMESPACE, Counter::TYPE, id)
}
