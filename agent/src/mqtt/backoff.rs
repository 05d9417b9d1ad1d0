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

#[cfg(test)]
mod tests {
    use super::*;

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
