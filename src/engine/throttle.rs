//! Rows-per-second throttling of copy batches, shared by all workers of a job and
//! changeable while the job runs (`job throttle`).

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct Throttle {
    /// The rate in force (0: unthrottled) and its limiter.
    state: Mutex<(u64, Option<std::sync::Arc<DefaultDirectRateLimiter>>)>,
    burst: NonZeroU32,
}

impl Throttle {
    /// `burst` is the largest batch: a batch never waits for more cells than that.
    pub fn new(rows_per_second: u64, burst: usize) -> Throttle {
        let burst =
            NonZeroU32::new(burst.clamp(1, u32::MAX as usize) as u32).expect("at least one");
        let throttle = Throttle {
            state: Mutex::new((0, None)),
            burst,
        };
        throttle.set_rate(rows_per_second);
        throttle
    }

    /// Changes the rate; 0 removes the limit.
    pub fn set_rate(&self, rows_per_second: u64) {
        let mut state = self.state.lock().expect("throttle lock");
        if state.0 == rows_per_second && (rows_per_second == 0) == state.1.is_none() {
            return;
        }
        let limiter = NonZeroU32::new(rows_per_second.min(u32::MAX as u64) as u32).map(|rate| {
            std::sync::Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(self.burst),
            ))
        });
        *state = (rows_per_second, limiter);
    }

    pub fn rate(&self) -> u64 {
        self.state.lock().expect("throttle lock").0
    }

    /// Waits until `rows` may be written; returns how long it waited.
    pub async fn admit(&self, rows: usize) -> Duration {
        let limiter = self.state.lock().expect("throttle lock").1.clone();
        let (Some(limiter), Some(rows)) = (limiter, NonZeroU32::new(rows as u32)) else {
            return Duration::ZERO;
        };
        let started = Instant::now();
        // Capacity errors cannot happen: the burst is at least the largest batch.
        let _ = limiter.until_n_ready(rows.min(self.burst)).await;
        started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn holds_the_rate_and_changes_live() {
        let throttle = Throttle::new(2_000, 100);
        let started = Instant::now();
        for _ in 0..30 {
            throttle.admit(100).await;
        }
        // 3,000 rows at 2,000/s with a first burst of 100: about 1.45 s.
        let took = started.elapsed();
        assert!(
            took > Duration::from_millis(1_300) && took < Duration::from_millis(1_900),
            "{took:?}"
        );
        throttle.set_rate(0);
        assert_eq!(throttle.admit(100).await, Duration::ZERO);
    }
}
