//! Real parts for the demo and the end-to-end tests: a Mosquitto started on a free port,
//! virtual scanners on pseudo-terminal pairs, and an upstream subscriber that collects
//! what arrives. Nothing here is a mock: the agent under test cannot tell these from a
//! warehouse.

pub mod board;
pub mod broker;
pub mod collector;
pub mod scanner;
pub mod workload;
