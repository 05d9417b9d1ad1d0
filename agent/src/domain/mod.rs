//! What a scan means in the dark leg, as pure types and functions with no I/O: which parcel
//! and order a scan is about ([`facts`]), a parcel's state and milestones ([`parcel`]), and
//! the dark-leg alert rules ([`alerts`]). Below the store, which persists these types, and
//! below the deriver task that drives both — so the arrows run one way.

pub mod alerts;
pub mod facts;
pub mod order;
pub mod parcel;
