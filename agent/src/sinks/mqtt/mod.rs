//! The MQTT upstream sink, split like the rest of the agent's moving parts:
//! - [`options`]: config → `rumqttc::MqttOptions` (TLS, credentials, session).
//! - [`dispatcher`]: the outbox ↔ packet-id state machine, no I/O, unit-tested.
//! - [`backoff`]: reconnect delays with jitter (rumqttc has none).
//! - [`service`]: the thin loop that drives the dispatcher with the store and rumqttc.

pub mod backoff;
pub mod dispatcher;
pub mod options;
pub mod service;

pub use service::run;
