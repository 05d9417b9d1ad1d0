//! The MQTT upstream sink, split like the rest of the agent's moving parts:
//! - [`batcher`]: outbox rows → publishes within the room and the measured size limit.
//! - [`link`]: one connection in MQTT 5 or 3.1.1, as a few events (acked, refused…), on
//!   [`crate::mqtt::wire`]'s codec.
//! - [`dispatcher`]: the outbox ↔ packet-id state machine, no I/O, unit-tested.
//! - [`service`]: the thin loop that drives the dispatcher with the store and the link.

pub mod batcher;
pub mod dispatcher;
pub mod link;
pub mod service;

pub use service::run;
