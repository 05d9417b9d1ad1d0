//! The MQTT upstream sink, split like the rest of the agent's moving parts:
//! - [`options`]: upstream config → `rumqttc::MqttOptions` (the connection is [`crate::mqtt`]).
//! - [`dispatcher`]: the outbox ↔ packet-id state machine, no I/O, unit-tested.
//! - [`service`]: the thin loop that drives the dispatcher with the store and rumqttc.

pub mod dispatcher;
pub mod options;
pub mod service;

pub use service::run;
