//! Jittered exponential backoff. A fleet of devices that lost the gateway at the same
//! moment must not come back at the same moment: every delay is spread over its upper
//! half at random ("equal jitter"), so retries never bunch up and never drop to zero.

use std::time::Duration;

/// The delay before retry number `attempt` (0 for the first retry): `base · 2^attempt`,
/// capped at `cap`, then spread to `[d/2, d]` by `unit` (a random number in `[0, 1)`).
/// Pure so its bounds are tested without a clock.
pub fn delay(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    // 2^20 · base is past any cap we use; clamping the exponent avoids overflow.
    let exp = base.saturating_mul(1u32 << attempt.min(20));
    let d = exp.min(cap);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    d / 2 + d.mul_f64(unit / 2.0)
}

/// A random number in `[0, 1)`. Jitter needs no quality, only difference between
/// devices and between calls: std's per-instance random hash keys give that without a
/// random-number crate.
pub fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Retry state of one kind of call.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next retry; each call doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.attempt, self.base, self.cap, unit_random());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Sleeps [`next_delay`](Self::next_delay).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Retries made since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_stay_in_their_upper_half_and_are_capped() {
        let base = 100 * MS;
        let cap = Duration::from_secs(30);
        for attempt in 0..64 {
            let full = (base * 2u32.pow(attempt.min(20))).min(cap);
            let lo = delay(attempt, base, cap, 0.0);
            let hi = delay(attempt, base, cap, 0.999_999);
            assert_eq!(lo, full / 2, "attempt {attempt}");
            assert!(
                hi <= full && hi >= full * 99 / 100,
                "attempt {attempt}: {hi:?}"
            );
        }
        assert_eq!(delay(0, base, cap, 0.0), 50 * MS);
        assert_eq!(delay(3, base, cap, 0.0), 400 * MS);
        assert_eq!(delay(u32::MAX, base, cap, 1.0), cap);
    }

    #[test]
    fn bad_random_input_cannot_escape_the_bounds() {
        let (base, cap) = (MS, 10 * MS);
        for u in [f64::NAN, f64::INFINITY, -1.0, 7.0] {
            let d = delay(5, base, cap, u);
            assert!(d >= 5 * MS && d <= cap, "{u}: {d:?}");
        }
    }

    #[test]
    fn random_units_vary_and_stay_in_range() {
        let xs: Vec<f64> = (0..64).map(|_| unit_random()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(10 * MS, Duration::from_secs(1));
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert!(b.next_delay() <= 10 * MS);
    }
}
