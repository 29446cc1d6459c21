//! Network domain.

mod config;
mod hostname;
mod spec;
mod status;

pub use config::*;
pub use hostname::*;
pub use spec::*;
pub use status::*;
