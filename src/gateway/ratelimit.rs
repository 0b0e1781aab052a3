//! Token buckets keyed by user, conversation or IP. In memory per node: a limit is a guard
//! against abuse, not a guarantee, so it need not be replicated.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use parking_lot::Mutex;

/// Most keys a limiter tracks; past it, full (idle) buckets are dropped first.
pub const RATE_LIMIT_KEYS_MAX: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// `capacity` tokens, refilled at `per_minute / 60` per second.
pub struct RateLimiter<K> {
    capacity: f64,
    refill_per_sec: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Up to `per_minute` at once, refilled evenly over a minute.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::new(
            f64::from(per_minute.max(1)),
            f64::from(per_minute.max(1)) / 60.0,
        )
    }

    /// Up to `per_second` at once, refilled evenly over a second.
    pub fn per_second(per_second: u32) -> Self {
        Self::new(f64::from(per_second.max(1)), f64::from(per_second.max(1)))
    }

    fn new(capacity: f64, refill_per_sec: f64) -> Self {
        RateLimiter {
            capacity,
            refill_per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is available (ms).
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= RATE_LIMIT_KEYS_MAX && !buckets.contains_key(key) {
            self.evict_full(&mut buckets, now);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_secs = (1.0 - bucket.tokens) / self.refill_per_sec;
            Err((wait_secs * 1000.0).ceil() as u64)
        }
    }

    /// Gives back a token taken by `check` (the request was refused by a later limit).
    pub fn refund(&self, key: &K) {
        if let Some(b) = self.buckets.lock().get_mut(key) {
            b.tokens = (b.tokens + 1.0).min(self.capacity);
        }
    }

    fn evict_full(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let (cap, rate) = (self.capacity, self.refill_per_sec);
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < cap
        });
        if buckets.len() >= RATE_LIMIT_KEYS_MAX {
            buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_capacity_then_refuses_then_refills() {
        let rl = RateLimiter::per_minute(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(rl.check(&"u", t0).is_ok());
        }
        let wait = rl.check(&"u", t0).unwrap_err();
        assert!((900..=1000).contains(&wait), "wait {wait}");
        assert!(rl.check(&"u", t0 + Duration::from_millis(1001)).is_ok());
        assert!(rl.check(&"other", t0).is_ok());
    }
}
