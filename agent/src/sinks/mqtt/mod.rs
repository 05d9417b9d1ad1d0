//! The MQTT upstream sink, split like the rest of the agent's moving parts:
//! - [`options`]: upstream config → `rumqttc::MqttOptions` (the connection is [`crate::mqtt`]).
//! - [`batcher`]: outbox rows → publishes within the room and the measured size limit.
//! - [`link`]: one connection in MQTT 5 or 3.1.1, as a few events (acked, refused…).
//! - [`dispatcher`]: the outbox ↔ packet-id state machine, no I/O, unit-tested.
//! - [`service`]: the thin loop that drives the dispatcher with the store and rumqttc.

pub mod batcher;
pub mod dispatcher;
pub mod link;
pub mod options;
pub mod service;

pub use service::run;
