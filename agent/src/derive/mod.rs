//! What the gateway works out from stored scans: which parcel and order a scan is about,
//! each parcel's milestones, and dark-leg alerts — published per merchant through the outbox
//! like every other upstream message.
//!
//! Everything here is a pure function of stored events (and, for timers, the clock), so late
//! and out-of-order events converge to the same answer; the task applies it incrementally.
//!
//! - [`facts`]: a scan, with its device's context, becomes a fact (picked, packed, handed over).
//! - [`parcel`]: facts become a parcel's state and `darkleg.milestone.v1` messages.
//! - [`alerts`]: state and clock become open alerts and `darkleg.alert.v1` messages.
//! - [`task`]: reads new events, writes facts, states, alerts and messages in one transaction.

pub mod alerts;
pub mod facts;
pub mod parcel;
pub mod task;

#[cfg(test)]
mod tests;
