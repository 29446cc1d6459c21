//! Controllers of the network domain.

mod hostname;

pub use hostname::HostnameController;
