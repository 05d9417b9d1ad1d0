//! The last warnings and errors the agent logged, for the status page: a supervisor should
//! not need a shell to see "scan NOT stored" or "upstream lost".

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

const KEEP: usize = 20;

/// (Unix ms, level, message with fields).
static RECENT: Mutex<VecDeque<(u64, Level, String)>> = Mutex::new(VecDeque::new());

/// Newest first.
pub fn recent() -> Vec<(u64, Level, String)> {
    let r = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    r.iter().rev().cloned().collect()
}

pub fn record(level: Level, message: String) {
    let mut r = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if r.len() == KEEP {
        r.pop_front();
    }
    r.push_back((crate::clock::now_ms(), level, message));
}

/// A tracing layer that keeps WARN and ERROR events.
pub struct RecentErrors;

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut t = Text(String::new());
        event.record(&mut t);
        record(level, t.0);
    }
}
