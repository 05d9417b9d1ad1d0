//! Which of a link's brokers (`urls`) to connect to next. A failed or lost connection moves
//! on to the next broker, round-robin; a reconnect the agent chose (to offer held-back rows
//! again) or a retry of the same broker in the other MQTT version stays where it is. The
//! reconnect back-off is the caller's and is not changed by a move: a cluster that is down as
//! a whole is not asked faster because it has more nodes.

/// Why a connection ended, as far as the choice of the next broker goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Refused, unreachable, timed out or lost: try the next broker.
    Failed,
    /// The broker answered but turned down this MQTT version: ask it again in the other.
    RetryOtherVersion,
    /// The agent closed a healthy connection on purpose: come back to the same broker.
    Deliberate,
    /// Something on this side failed (the store refused, a certificate or password file
    /// could not be read): the broker is not to blame, and leaving it would leave its session
    /// — and what it queues there — behind.
    Local,
}

#[derive(Debug, Clone)]
pub struct Failover {
    brokers: usize,
    current: usize,
}

impl Failover {
    pub fn new(brokers: usize) -> Failover {
        Failover {
            brokers: brokers.max(1),
            current: 0,
        }
    }

    /// The index of the broker to connect to now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Records how the connection to [`current`](Self::current) ended; true if the next
    /// attempt goes to another broker.
    pub fn ended(&mut self, how: Ended) -> bool {
        if how != Ended::Failed || self.brokers == 1 {
            return false;
        }
        self.current = (self.current + 1) % self.brokers;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_failure_stays_on_the_broker() {
        let mut f = Failover::new(3);
        assert!(!f.ended(Ended::Local));
        assert_eq!(f.current(), 0);
    }

    #[test]
    fn a_failure_moves_round_robin_and_wraps() {
        let mut f = Failover::new(3);
        let mut seen = vec![f.current()];
        for _ in 0..6 {
            assert!(f.ended(Ended::Failed));
            seen.push(f.current());
        }
        assert_eq!(seen, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn a_deliberate_reconnect_or_a_version_retry_stays_on_the_broker() {
        let mut f = Failover::new(3);
        f.ended(Ended::Failed);
        assert!(!f.ended(Ended::Deliberate));
        assert!(!f.ended(Ended::RetryOtherVersion));
        assert_eq!(f.current(), 1);
        assert!(f.ended(Ended::Failed));
        assert_eq!(f.current(), 2);
    }

    #[test]
    fn one_broker_is_always_the_one() {
        let mut f = Failover::new(1);
        for how in [Ended::Failed, Ended::Deliberate, Ended::RetryOtherVersion] {
            assert!(!f.ended(how));
            assert_eq!(f.current(), 0);
        }
        assert_eq!(Failover::new(0).current(), 0, "a zero count is one broker");
    }
}
