//! Outbound network policy shared by every destination that opens connections.

pub mod ssrf;
