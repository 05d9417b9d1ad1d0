//! Reconnect delays: exponential with "equal jitter" (half fixed, half random), so a
//! broker that comes back is not hit by every gateway of a site in the same millisecond.

use std::time::Duration;

pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(self.uniform())
    }

    /// xorshift64*: jitter needs spread, not cryptographic quality.
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A [`Backoff`] for a connection that must prove itself before the delay starts over: a
/// CONNACK alone proves little — a relay whose every batch the store then refuses (outbox
/// full) would reconnect every 200 ms. Progress (a message committed) or `healthy_after` of
/// uptime does.
pub struct Reconnect {
    backoff: Backoff,
    healthy_after_ms: u64,
    up_since_ms: Option<u64>,
    failures: u32,
}

impl Reconnect {
    pub fn new(backoff: Backoff, healthy_after: Duration) -> Self {
        Reconnect {
            backoff,
            healthy_after_ms: healthy_after.as_millis() as u64,
            up_since_ms: None,
            failures: 0,
        }
    }

    /// A CONNACK: the connection is up, not yet proven.
    pub fn connected(&mut self, now_ms: u64) {
        self.up_since_ms = Some(now_ms);
    }

    /// The connection did what it is for: the next loss starts from the base delay.
    pub fn progress(&mut self) {
        self.backoff.reset();
        self.failures = 0;
    }

    /// The connection (or the attempt) is gone: how long to wait before the next one.
    pub fn lost(&mut self, now_ms: u64) -> Duration {
        if let Some(up) = self.up_since_ms.take() {
            if now_ms.saturating_sub(up) >= self.healthy_after_ms {
                self.progress();
            }
        }
        self.failures = self.failures.saturating_add(1);
        self.backoff.next_delay()
    }

    /// Losses since the last proven connection.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connack_alone_does_not_reset_the_delay_progress_or_uptime_does() {
        let (base, cap) = (Duration::from_millis(200), Duration::from_secs(30));
        let mut r = Reconnect::new(Backoff::new(base, cap, 7), Duration::from_secs(30));
        // Connected, then refused by the store 10 ms later, ten times: the delay grows.
        let mut now = 0;
        let mut last = Duration::ZERO;
        for i in 0..10u32 {
            r.connected(now);
            now += 10;
            last = r.lost(now);
            assert!(
                last >= base.saturating_mul(1 << i).min(cap) / 2,
                "attempt {i}: {last:?}"
            );
        }
        assert!(last >= cap / 2);
        assert_eq!(r.failures(), 10);
        // A committed message: back to the base delay.
        r.connected(now);
        r.progress();
        assert!(r.lost(now + 10) <= base);
        assert_eq!(r.failures(), 1);
        for _ in 0..6 {
            r.lost(now);
        }
        // Up for the healthy span without traffic: proven as well.
        r.connected(now);
        assert!(r.lost(now + 30_000) <= base);
        // A failed attempt without a CONNACK proves nothing: the delay grows again.
        assert!(r.lost(now + 60_000) >= base);
    }

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(base, cap, 42);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let exp = base.saturating_mul(1 << i).min(cap);
            assert!(
                *d >= exp / 2 && *d <= exp,
                "attempt {i}: {d:?} outside [{:?}, {exp:?}]",
                exp / 2
            );
        }
        assert!(delays[11] >= cap / 2);
        b.reset();
        assert!(b.next_delay() <= base);
        // Two gateways with different seeds do not retry in lockstep.
        let mut a = Backoff::new(base, cap, 1);
        let mut c = Backoff::new(base, cap, 2);
        let same = (0..8).filter(|_| a.next_delay() == c.next_delay()).count();
        assert!(same < 8);
    }
}
