//! Cluster domain: the nodes of the cluster as its membership reports them, and the
//! nodes this node's API may forward calls to.

mod forward_target;
mod member;

pub use forward_target::*;
pub use member::*;
