//! The operator's surface beside the sessions: the admin console ([`admin`]), the HTTP
//! endpoints for health and metrics ([`http`]) and config reload ([`reload`]). Reads and
//! swaps the state sessions share ([`crate::session::Shared`]).

pub mod admin;
pub mod http;
pub mod reload;
