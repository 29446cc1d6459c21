//! Controllers of the time domain: the clock kept in step with the configured time
//! servers over SNTP (RFC 4330).

mod sync;

pub use sync::{Clock, SyncController, SystemClock};
