//! Restart back-off for supervised services: doubles from `base` up to `max` for each
//! consecutive quick failure, and starts over once a run lasted `stable`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// A run at least this long counts as healthy and resets the failure count.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            stable: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The failure count after a run of length `ran`, given the count before it.
    pub fn failures_after(&self, previous: u32, ran: Duration) -> u32 {
        if ran >= self.stable {
            1
        } else {
            previous.saturating_add(1)
        }
    }

    /// How long to wait before the next start after `failures` consecutive quick failures.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(16);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(4), Duration::from_secs(4));
        assert_eq!(b.delay(10), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_long_run_resets_failures() {
        let b = Backoff::default();
        assert_eq!(b.failures_after(5, Duration::from_secs(1)), 6);
        assert_eq!(b.failures_after(5, Duration::from_secs(120)), 1);
        assert_eq!(b.failures_after(u32::MAX, Duration::ZERO), u32::MAX);
    }
}
