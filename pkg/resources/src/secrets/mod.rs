//! Secrets domain: key material the node holds. Every type here is sensitive: it is never
//! sent to a client without the `os:admin` role.

mod api_certificates;
mod os_root;

pub use api_certificates::*;
pub use os_root::*;
