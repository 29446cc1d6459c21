//! The state of a node: every resource, with compare-and-swap writes, owners, finalizers,
//! teardown, label selectors and ordered watches.
//!
//! Namespaces live in memory; the ones named when the state is opened are also written
//! to a crash-safe file (see [`StateBuilder::persistent`]) before a write is acknowledged,
//! and read back when the state is opened again.

mod error;
mod kind_store;
mod persistent;
mod state;
mod watch;

pub use error::StateError;
pub use persistent::LoadReport;
pub use state::{State, StateBuilder};
pub use watch::{Event, Watch, WatchKindOptions, WatchLimits};

/// The default number of events a watcher may fall behind before its watch is closed
/// with [`StateError::Overrun`].
pub const DEFAULT_WATCH_CAPACITY: usize = 16 * 1024;
