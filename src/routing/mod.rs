//! From SQL text to a plan: [`router`] parses with Postgres's grammar, classifies each
//! statement and extracts its shard keys into a route; [`literals`] makes literal templates
//! so one plan serves every constant; [`copyplan`] and [`copysplit`] place COPY rows.
//! Uses [`crate::sharding`] for placement and [`crate::gather`] for merge plans; never
//! touches a connection.

pub mod copyplan;
pub mod copysplit;
pub mod literals;
pub mod router;
