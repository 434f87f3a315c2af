//! The Postgres wire protocol: framing and messages as a codec with no I/O ([`protocol`]),
//! authentication ([`auth`]), TLS ([`tls`]), cancel keys ([`cancel`]) and client encodings
//! ([`encoding`]), array values as bound ([`arrays`]). Depends on nothing else of the crate.

pub mod arrays;
pub mod auth;
pub mod cancel;
pub mod encoding;
pub mod protocol;
pub mod tls;
