//! Sinks: read the store's outbox, deliver upstream, mark delivery only on the upstream's
//! acknowledgement. Sinks never see sources; a restart resumes from the store.

pub mod mqtt;
pub mod webhook;
