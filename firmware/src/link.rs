//! The scanner's half of the framed link, as a state machine with no I/O.
//!
//! [`Link`] decides *what* to send and *when* — Hello, which event next, when to go back and
//! resend — from the frames it is shown and the time it is told. The scanner does the bytes
//! and the flash. That split keeps every timing rule unit-testable without a UART.
//!
//! The gateway takes events strictly in sequence (go-back-N), so recovery is always the
//! same move: rewind to the first unacked scan and send from there.

use darkleg_protocol::{Frame, NackReason, Step};

/// Link timing. The defaults suit a 115200-baud cable or a short-range radio bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Events in flight before waiting for an ack.
    pub window: u8,
    /// First retransmit timeout; doubles on every timeout up to `max_backoff_ms`.
    pub retransmit_ms: u32,
    pub max_backoff_ms: u32,
    /// Timeouts in a row after which the gateway is presumed gone: back to Hello.
    pub timeouts_before_hello: u8,
    /// A Hello after this long without hearing the gateway, to notice a dead link while idle.
    pub keepalive_ms: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            window: 8,
            retransmit_ms: 500,
            // An operator back in range should not wait long for the scanner to notice.
            max_backoff_ms: 4_000,
            timeouts_before_hello: 3,
            keepalive_ms: 30_000,
        }
    }
}

/// A frame the scanner should send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Hello {
        last_acked: u64,
    },
    /// The stored scan with this sequence number.
    Event {
        seq: u64,
    },
}

/// What a frame from the gateway means for the rest of the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Everything up to `up_to` is durable at the gateway: retire it from flash.
    Acked {
        up_to: u64,
    },
    /// The gateway refused this scan (not acceptable at this station): tell the operator.
    Rejected {
        seq: u64,
    },
    Time {
        unix_ms: u64,
    },
    Step(Step),
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Saying Hello until the gateway answers.
    Down,
    Up,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Link {
    cfg: LinkConfig,
    state: State,
    acked: u64,
    /// Highest sequence sent in the current pass; `acked..=sent` are in flight.
    sent: u64,
    /// When the pending timer fires: Hello retry (down), retransmit or probe expiry (up).
    deadline: u64,
    backoff: u32,
    timeouts: u8,
    last_heard: u64,
    /// A keepalive Hello is out and unanswered.
    probing: bool,
    /// The gateway could not store: send nothing before this.
    hold_until: u64,
    pub stats: LinkStats,
}

/// Counters for the scanner's diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub hellos: u32,
    pub events_sent: u32,
    /// Events sent again after a timeout or Nack.
    pub resent: u32,
    pub timeouts: u32,
    pub nacks: u32,
}

impl Link {
    /// A link that starts down and says Hello on the first poll.
    pub fn new(cfg: LinkConfig, acked: u64) -> Link {
        Link {
            cfg,
            state: State::Down,
            acked,
            sent: acked,
            deadline: 0,
            backoff: cfg.retransmit_ms,
            timeouts: 0,
            last_heard: 0,
            probing: false,
            hold_until: 0,
            stats: LinkStats::default(),
        }
    }

    /// True while the gateway answers.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The next frame to send, given that scans up to `newest` are stored. Call until `None`.
    pub fn poll(&mut self, now: u64, newest: u64) -> Option<Out> {
        match self.state {
            State::Down => {
                if now < self.deadline {
                    return None;
                }
                self.deadline = now + u64::from(self.backoff);
                self.grow_backoff();
                self.stats.hellos += 1;
                Some(Out::Hello {
                    last_acked: self.acked,
                })
            }
            State::Up => {
                let in_flight = self.sent > self.acked;
                if (in_flight || self.probing) && now >= self.deadline {
                    self.stats.timeouts += 1;
                    self.timeouts = self.timeouts.saturating_add(1);
                    self.grow_backoff();
                    if self.probing || self.timeouts >= self.cfg.timeouts_before_hello {
                        return self.go_down(now);
                    }
                    self.rewind();
                    self.deadline = now + u64::from(self.backoff);
                }
                if now < self.hold_until {
                    return None;
                }
                let window = u64::from(self.cfg.window.max(1));
                if self.sent < newest && self.sent < self.acked + window {
                    if self.sent == self.acked {
                        self.deadline = now + u64::from(self.backoff);
                    }
                    self.sent += 1;
                    self.stats.events_sent += 1;
                    return Some(Out::Event { seq: self.sent });
                }
                let quiet = now.saturating_sub(self.last_heard);
                if !in_flight && !self.probing && quiet >= u64::from(self.cfg.keepalive_ms) {
                    self.probing = true;
                    self.deadline = now + u64::from(self.backoff);
                    self.stats.hellos += 1;
                    return Some(Out::Hello {
                        last_acked: self.acked,
                    });
                }
                None
            }
        }
    }

    /// Takes in one frame from the gateway.
    pub fn on_frame(&mut self, frame: &Frame<'_>, now: u64) -> Heard {
        self.last_heard = now;
        self.probing = false;
        match *frame {
            Frame::Ack { up_to } => {
                if self.state == State::Down {
                    // The answer to Hello: start sending from whatever it acked.
                    self.state = State::Up;
                    self.sent = self.acked;
                    self.backoff = self.cfg.retransmit_ms;
                    self.timeouts = 0;
                }
                if up_to > self.acked {
                    self.acked = up_to;
                    self.timeouts = 0;
                    self.backoff = self.cfg.retransmit_ms;
                    self.deadline = now + u64::from(self.backoff);
                }
                self.sent = self.sent.max(self.acked);
                Heard::Acked { up_to }
            }
            Frame::Nack { seq, reason } => {
                self.stats.nacks += 1;
                match reason {
                    NackReason::Rejected => return Heard::Rejected { seq },
                    NackReason::OutOfOrder => self.rewind(),
                    NackReason::NoHello => {
                        self.go_down(now);
                    }
                    NackReason::Storage => {
                        // The gateway's disk is full or failing: keep everything in
                        // flash and come back later rather than hammer it.
                        self.rewind();
                        self.hold_until = now + u64::from(self.backoff);
                        self.grow_backoff();
                    }
                }
                Heard::Nothing
            }
            Frame::TimeSync { unix_ms } => Heard::Time { unix_ms },
            Frame::SetStep { step } => Heard::Step(step),
            Frame::Hello { .. } | Frame::Event(_) => Heard::Nothing,
        }
    }

    fn rewind(&mut self) {
        self.stats.resent += (self.sent - self.acked) as u32;
        self.sent = self.acked;
    }

    fn go_down(&mut self, now: u64) -> Option<Out> {
        self.rewind();
        self.state = State::Down;
        self.probing = false;
        self.timeouts = 0;
        self.backoff = self.cfg.retransmit_ms;
        self.deadline = now;
        self.poll(now, 0)
    }

    fn grow_backoff(&mut self) {
        self.backoff = self.backoff.saturating_mul(2).min(self.cfg.max_backoff_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LinkConfig {
        LinkConfig {
            window: 3,
            retransmit_ms: 100,
            max_backoff_ms: 400,
            timeouts_before_hello: 2,
            keepalive_ms: 1_000,
        }
    }

    fn drain(link: &mut Link, now: u64, newest: u64) -> std::vec::Vec<Out> {
        core::iter::from_fn(|| link.poll(now, newest)).collect()
    }

    #[test]
    fn hello_until_answered_with_backoff() {
        let mut l = Link::new(cfg(), 7);
        assert_eq!(l.poll(0, 0), Some(Out::Hello { last_acked: 7 }));
        assert_eq!(l.poll(99, 0), None);
        assert_eq!(l.poll(100, 0), Some(Out::Hello { last_acked: 7 }));
        // Backoff doubled: next after 200 ms, then capped at 400.
        assert_eq!(l.poll(299, 0), None);
        assert!(l.poll(300, 0).is_some());
        assert!(l.poll(700, 0).is_some());
        assert_eq!(l.poll(1099, 0), None);
        assert!(!l.is_up());
    }

    #[test]
    fn window_bounds_events_in_flight_and_ack_slides_it() {
        let mut l = Link::new(cfg(), 0);
        l.poll(0, 0);
        assert_eq!(
            l.on_frame(&Frame::Ack { up_to: 0 }, 1),
            Heard::Acked { up_to: 0 }
        );
        assert!(l.is_up());
        let sent = drain(&mut l, 2, 10);
        assert_eq!(
            sent,
            [1, 2, 3].map(|seq| Out::Event { seq }).to_vec(),
            "window of 3"
        );
        l.on_frame(&Frame::Ack { up_to: 2 }, 5);
        assert_eq!(
            drain(&mut l, 6, 10),
            [4, 5].map(|seq| Out::Event { seq }).to_vec()
        );
    }

    #[test]
    fn timeout_rewinds_then_falls_back_to_hello() {
        let mut l = Link::new(cfg(), 0);
        l.poll(0, 0);
        l.on_frame(&Frame::Ack { up_to: 0 }, 0);
        assert_eq!(drain(&mut l, 0, 2).len(), 2);
        // No ack within 100 ms: go back to seq 1 with a doubled timeout.
        assert_eq!(
            drain(&mut l, 100, 2),
            [1, 2].map(|seq| Out::Event { seq }).to_vec()
        );
        assert_eq!(l.stats.resent, 2);
        assert_eq!(drain(&mut l, 299, 2), []);
        // Second timeout in a row: the gateway is gone; Hello again.
        assert_eq!(drain(&mut l, 300, 2), [Out::Hello { last_acked: 0 }]);
        assert!(!l.is_up());
        // The gateway answers with what it has: resume after it.
        l.on_frame(&Frame::Ack { up_to: 1 }, 310);
        assert_eq!(drain(&mut l, 310, 2), [Out::Event { seq: 2 }]);
    }

    #[test]
    fn out_of_order_nack_rewinds_and_rejected_is_reported() {
        let mut l = Link::new(cfg(), 0);
        l.poll(0, 0);
        l.on_frame(&Frame::Ack { up_to: 0 }, 0);
        drain(&mut l, 0, 3);
        let nack = Frame::Nack {
            seq: 2,
            reason: NackReason::OutOfOrder,
        };
        assert_eq!(l.on_frame(&nack, 1), Heard::Nothing);
        l.on_frame(&Frame::Ack { up_to: 1 }, 1);
        assert_eq!(
            drain(&mut l, 1, 3),
            [2, 3].map(|seq| Out::Event { seq }).to_vec()
        );
        let rejected = Frame::Nack {
            seq: 2,
            reason: NackReason::Rejected,
        };
        assert_eq!(l.on_frame(&rejected, 2), Heard::Rejected { seq: 2 });
    }

    #[test]
    fn storage_nack_holds_sending_off() {
        let mut l = Link::new(cfg(), 0);
        l.poll(0, 0);
        l.on_frame(&Frame::Ack { up_to: 0 }, 0);
        drain(&mut l, 0, 1);
        let nack = Frame::Nack {
            seq: 1,
            reason: NackReason::Storage,
        };
        l.on_frame(&nack, 10);
        assert_eq!(drain(&mut l, 50, 1), []);
        assert_eq!(drain(&mut l, 110, 1), [Out::Event { seq: 1 }]);
    }

    #[test]
    fn idle_link_probes_and_goes_down_when_unanswered() {
        let mut l = Link::new(cfg(), 4);
        l.poll(0, 4);
        l.on_frame(&Frame::Ack { up_to: 4 }, 0);
        assert_eq!(drain(&mut l, 999, 4), []);
        assert_eq!(drain(&mut l, 1_000, 4), [Out::Hello { last_acked: 4 }]);
        assert!(l.is_up(), "a probe does not yet mean the link is down");
        assert_eq!(drain(&mut l, 1_100, 4), [Out::Hello { last_acked: 4 }]);
        assert!(!l.is_up());
    }

    #[test]
    fn ack_beyond_anything_sent_moves_the_floor() {
        // A device whose flash was wiped: the gateway knows seq 50 already.
        let mut l = Link::new(cfg(), 0);
        l.poll(0, 0);
        assert_eq!(
            l.on_frame(&Frame::Ack { up_to: 50 }, 0),
            Heard::Acked { up_to: 50 }
        );
        assert_eq!(drain(&mut l, 0, 51), [Out::Event { seq: 51 }]);
    }
}
