//! apid: the Machine API server. TLS 1.3 with client certificates, roles from the
//! certificate, one authorization table, maintenance mode for unconfigured nodes, and
//! forwarding of calls to other nodes.

pub mod node;
