//! Phases that live in other modules (growth of the backlog, slow storage), called from here
//! so the table can show them. Each returns a JSON object whose `goals` array holds
//! `{"goal": "…", "figure": "…", "met": true|false}` rows for the goals table; `None` while
//! its module is not part of this build (the table then says "not run").
//!
//! To wire one in: `mod growth;` in main.rs and `Some(crate::growth::growth_phase(quick))`
//! here (likewise `storage::slow_storage_phase`).

use serde_json::Value;

/// Backlogs of 100k, 1M and 10M (fewer with `quick`): drain, RSS, start-up at each.
pub fn growth(_quick: bool) -> Option<Value> {
    None
}

/// Ingest and ack latency with a 10 ms fsync.
pub fn slow_storage(_quick: bool) -> Option<Value> {
    None
}
