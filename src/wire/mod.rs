//! The Postgres wire protocol: framing and messages as a codec with no I/O ([`protocol`]),
//! authentication ([`auth`]), TLS ([`tls`]), cancel keys ([`cancel`]), client encodings
//! ([`encoding`]), array values as bound ([`arrays`]) and the binary COPY format
//! ([`copybin`]). Depends on nothing else of the crate.

pub mod arrays;
pub mod auth;
pub mod cancel;
pub mod copybin;
pub mod encoding;
pub mod protocol;
pub mod tls;
