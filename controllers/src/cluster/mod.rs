//! Controllers of the cluster domain.

mod forward_targets;
mod members;

pub use forward_targets::ForwardTargetsController;
pub use members::MembersController;
