//! What the gateway works out from stored scans: which parcel and order a scan is about,
//! each parcel's milestones, and dark-leg alerts — published per merchant through the outbox
//! like every other upstream message.
//!
//! Everything here is a pure function of stored events (and, for timers, the clock), so late
//! and out-of-order events converge to the same answer; the task applies it incrementally.
//!
//! The pure rules live in [`crate::domain`] (facts, parcel state, alert rules); here is the
//! [`task`] that reads new events and writes facts, states, alerts and messages in one
//! transaction.

pub mod task;

#[cfg(test)]
mod tests;
