//! The webhook sink: the outbox delivered as signed HTTPS POSTs (Standard Webhooks 1.0).
//! - [`sign`]: `whsec_` secrets and `v1,` signatures, several keys for rotation.
//! - [`message`]: an outbox message → webhook-id, ordering key and body.
//! - [`client`]: HTTP/1.1 over rustls with connection reuse; Retry-After.
//! - [`service`]: the loop — per-key order, `max_in_flight` keys at once, retries,
//!   dead letters and the 410 switch.

pub mod client;
pub mod message;
pub mod service;
pub mod sign;

pub use service::run;
