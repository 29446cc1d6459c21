//! Cluster domain: the nodes of the cluster as its membership reports them.

mod member;

pub use member::*;
