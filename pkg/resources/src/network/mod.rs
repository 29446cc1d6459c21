//! Network domain.

mod config;
mod hostname;

pub use config::*;
pub use hostname::*;
