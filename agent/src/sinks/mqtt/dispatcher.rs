//! Which outbox rows are on the wire under which MQTT packet id.
//!
//! A row is handed to the link, then assigned the packet id the link gave its publish, then
//! waits for the PUBACK (the two steps stay apart so a link that reports ids later, as
//! rumqttc's event loop did, fits the same bookkeeping). On every
//! (re)connect the window is forgotten and the outbox is read again from its first
//! undelivered row: SQLite, not the client's memory, decides what is in flight.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchError {
    /// The client reported a publish we did not hand it: the bookkeeping cannot be trusted,
    /// reconnect and start over from the store.
    UnexpectedPublish(u16),
    /// A pkid was reused while its row was still unacknowledged.
    PkidReused(u16),
}

impl std::fmt::Display for DispatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DispatchError::UnexpectedPublish(p) => write!(
                f,
                "client wrote publish {p} that the outbox did not hand it"
            ),
            DispatchError::PkidReused(p) => {
                write!(f, "packet id {p} reused while still unacknowledged")
            }
        }
    }
}

#[derive(Debug)]
pub struct Dispatcher {
    window: usize,
    /// Highest row handed to the client on this connection; the next read starts after it.
    cursor: i64,
    /// Handed to the client, pkid not yet reported, in hand-over order.
    unassigned: VecDeque<i64>,
    in_flight: HashMap<u16, i64>,
}

impl Dispatcher {
    pub fn new(window: usize) -> Self {
        Dispatcher {
            window: window.max(1),
            cursor: 0,
            unassigned: VecDeque::new(),
            in_flight: HashMap::new(),
        }
    }

    /// How many publishes may be unacknowledged at once on this connection (an MQTT 5
    /// broker's receive maximum can make it smaller than the configured window).
    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// A new connection: whatever was on the old one is resent from the store.
    pub fn reset(&mut self) {
        self.cursor = 0;
        self.unassigned.clear();
        self.in_flight.clear();
    }

    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// How many more rows may be handed to the client now.
    pub fn room(&self) -> usize {
        self.window
            .saturating_sub(self.unassigned.len() + self.in_flight.len())
    }

    pub fn in_flight(&self) -> usize {
        self.unassigned.len() + self.in_flight.len()
    }

    /// The oldest row handed over and not yet acknowledged.
    pub fn oldest_unacked(&self) -> Option<i64> {
        self.in_flight
            .values()
            .chain(self.unassigned.iter())
            .min()
            .copied()
    }

    /// Rows up to `row` are passed over on this connection (held back, not handed over).
    pub fn skip_to(&mut self, row: i64) {
        self.cursor = self.cursor.max(row);
    }

    /// `row` was handed to the client (rows arrive in increasing order).
    pub fn handed(&mut self, row: i64) {
        debug_assert!(row > self.cursor);
        self.cursor = row;
        self.unassigned.push_back(row);
    }

    /// The client wrote a publish with `pkid`: it is the oldest row without one.
    pub fn on_outgoing_publish(&mut self, pkid: u16) -> Result<(), DispatchError> {
        let row = self
            .unassigned
            .pop_front()
            .ok_or(DispatchError::UnexpectedPublish(pkid))?;
        if self.in_flight.insert(pkid, row).is_some() {
            return Err(DispatchError::PkidReused(pkid));
        }
        Ok(())
    }

    /// The broker acknowledged `pkid`; returns the row now delivered. An unknown pkid (a
    /// PUBACK for a previous connection's publish) is ignored: that row is resent anyway.
    pub fn on_puback(&mut self, pkid: u16) -> Option<i64> {
        self.in_flight.remove(&pkid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_matched_to_pkids_in_order_and_retired_on_puback() {
        let mut d = Dispatcher::new(3);
        for row in [10, 11, 12] {
            d.handed(row);
        }
        assert_eq!(d.room(), 0);
        d.on_outgoing_publish(1).unwrap();
        d.on_outgoing_publish(2).unwrap();
        // PUBACKs may come in any order.
        assert_eq!(d.on_puback(2), Some(11));
        assert_eq!(d.room(), 1);
        d.on_outgoing_publish(3).unwrap();
        assert_eq!(d.on_puback(1), Some(10));
        assert_eq!(d.on_puback(3), Some(12));
        assert_eq!(
            d.on_puback(3),
            None,
            "a second PUBACK for the same pkid retires nothing"
        );
        assert_eq!(d.room(), 3);
        assert_eq!(d.cursor(), 12);
    }

    #[test]
    fn reconnect_forgets_the_window_and_rereads_from_the_store() {
        let mut d = Dispatcher::new(8);
        d.handed(1);
        d.handed(2);
        d.on_outgoing_publish(7).unwrap();
        d.reset();
        assert_eq!(d.cursor(), 0);
        assert_eq!(d.in_flight(), 0);
        // A late PUBACK from the old connection is not trusted.
        assert_eq!(d.on_puback(7), None);
    }

    #[test]
    fn bookkeeping_errors_are_reported_not_guessed() {
        let mut d = Dispatcher::new(4);
        assert_eq!(
            d.on_outgoing_publish(1),
            Err(DispatchError::UnexpectedPublish(1))
        );
        d.handed(5);
        d.handed(6);
        d.on_outgoing_publish(9).unwrap();
        assert_eq!(d.on_outgoing_publish(9), Err(DispatchError::PkidReused(9)));
    }

    #[test]
    fn pkids_may_wrap_and_be_reused_after_their_ack() {
        let mut d = Dispatcher::new(2);
        d.handed(1);
        d.on_outgoing_publish(u16::MAX).unwrap();
        assert_eq!(d.on_puback(u16::MAX), Some(1));
        d.handed(2);
        d.on_outgoing_publish(u16::MAX).unwrap();
        assert_eq!(d.on_puback(u16::MAX), Some(2));
    }
}
