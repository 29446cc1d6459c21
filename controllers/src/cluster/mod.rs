//! Controllers of the cluster domain.

mod members;

pub use members::MembersController;
