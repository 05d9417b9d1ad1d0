//! Real parts for the demo and the end-to-end tests: a Mosquitto started on a free port (or,
//! for the demo without one, an MQTT broker inside this process),
//! virtual scanners on pseudo-terminal pairs, and an upstream subscriber that collects
//! what arrives. Nothing here is a mock: the agent under test cannot tell these from a
//! warehouse.

pub mod board;
pub mod broker;
pub mod collector;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod scanner;
pub mod workload;
