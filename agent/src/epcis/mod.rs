//! GS1 EPCIS 2.0 export: every stored scan as an ObjectEvent with its CBV 2.0 bizStep,
//! disposition, read point, business location, the order as a business transaction and the
//! hash-based event ID, in one JSON-LD EPCISDocument written as a stream.

pub mod event;
pub mod export;
#[cfg(test)]
mod vectors;
