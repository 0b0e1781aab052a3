//! Token buckets keyed by user, conversation or IP. In memory per node: a limit is a guard
//! against abuse, not a guarantee, so it need not be replicated.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use parking_lot::Mutex;

/// Most keys a limiter tracks; past it, full (idle) buckets are dropped first.
pub(crate) const RATE_LIMIT_KEYS_MAX: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// `capacity` tokens, refilled at `per_minute / 60` per second.
pub(crate) struct RateLimiter<K> {
    capacity: f64,
    refill_per_sec: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Up to `per_minute` at once, refilled evenly over a minute.
    pub(crate) fn per_minute(per_minute: u32) -> Self {
        Self::new(
            f64::from(per_minute.max(1)),
            f64::from(per_minute.max(1)) / 60.0,
        )
    }

    /// Up to `per_hour` at once, refilled evenly over an hour.
    pub(crate) fn per_hour(per_hour: u32) -> Self {
        Self::new(
            f64::from(per_hour.max(1)),
            f64::from(per_hour.max(1)) / 3600.0,
        )
    }

    /// Up to `per_second` at once, refilled evenly over a second.
    pub(crate) fn per_second(per_second: u32) -> Self {
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
    pub(crate) fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
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
    pub(crate) fn refund(&self, key: &K) {
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

/// The budget a client frame is charged to (sends, edits and deletes are charged by
/// `check_send_rate`, which keeps their idempotency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    Typing,
    Receipt,
    PresenceSubscription,
    Read,
    MembershipChange,
    Ping,
}

impl FrameKind {
    #[cfg(test)]
    /// Every kind, for tests and docs.
    pub(crate) const ALL: [FrameKind; 6] = [
        FrameKind::Typing,
        FrameKind::Receipt,
        FrameKind::PresenceSubscription,
        FrameKind::Read,
        FrameKind::MembershipChange,
        FrameKind::Ping,
    ];

    /// The human part of the `rate_limited` error.
    pub(crate) fn refusal(self) -> &'static str {
        match self {
            FrameKind::Typing => "too many typing frames from this user",
            FrameKind::Receipt => "too many receipts from this user",
            FrameKind::PresenceSubscription => "too many presence subscriptions from this user",
            FrameKind::Read => "too many reads (history, sync, list) from this user",
            FrameKind::MembershipChange => "too many membership changes from this user",
            FrameKind::Ping => "too many pings from this user",
        }
    }
}

/// One per-user bucket per [`FrameKind`], plus the hourly conversation-creation budget.
pub(crate) struct FrameRates {
    typing: RateLimiter<String>,
    receipts: RateLimiter<String>,
    presence: RateLimiter<String>,
    reads: RateLimiter<String>,
    membership: RateLimiter<String>,
    pings: RateLimiter<String>,
    /// Conversations created per user per hour.
    pub(crate) creations: RateLimiter<String>,
}

impl FrameRates {
    pub(crate) fn new(limits: &crate::config::Limits) -> Self {
        FrameRates {
            typing: RateLimiter::per_minute(limits.typing_per_minute),
            receipts: RateLimiter::per_minute(limits.receipts_per_minute),
            presence: RateLimiter::per_minute(limits.presence_subscriptions_per_minute),
            reads: RateLimiter::per_minute(limits.reads_per_minute),
            membership: RateLimiter::per_minute(limits.membership_changes_per_minute),
            pings: RateLimiter::per_minute(limits.pings_per_minute),
            creations: RateLimiter::per_hour(limits.conversations_created_per_hour),
        }
    }

    fn bucket(&self, kind: FrameKind) -> &RateLimiter<String> {
        match kind {
            FrameKind::Typing => &self.typing,
            FrameKind::Receipt => &self.receipts,
            FrameKind::PresenceSubscription => &self.presence,
            FrameKind::Read => &self.reads,
            FrameKind::MembershipChange => &self.membership,
            FrameKind::Ping => &self.pings,
        }
    }

    /// Takes one token of `user`'s `kind` budget, or says how long to wait (ms).
    pub(crate) fn check(&self, kind: FrameKind, user: &str, now: Instant) -> Result<(), u64> {
        self.bucket(kind).check(&user.to_string(), now)
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

    #[test]
    fn hourly_bucket_refills_over_an_hour() {
        let rl = RateLimiter::per_hour(2);
        let t0 = Instant::now();
        assert!(rl.check(&"u", t0).is_ok());
        assert!(rl.check(&"u", t0).is_ok());
        let wait = rl.check(&"u", t0).unwrap_err();
        assert!((1_790_000..=1_800_000).contains(&wait), "wait {wait}");
        assert!(rl.check(&"u", t0 + Duration::from_secs(1801)).is_ok());
    }

    #[test]
    fn frame_kinds_have_separate_budgets() {
        let limits = crate::config::Limits {
            typing_per_minute: 1,
            receipts_per_minute: 1,
            presence_subscriptions_per_minute: 1,
            reads_per_minute: 1,
            membership_changes_per_minute: 1,
            pings_per_minute: 1,
            ..Default::default()
        };
        let rates = FrameRates::new(&limits);
        let t0 = Instant::now();
        for kind in FrameKind::ALL {
            assert!(rates.check(kind, "u", t0).is_ok(), "{kind:?}");
            assert!(rates.check(kind, "u", t0).is_err(), "{kind:?}");
            assert!(
                rates.check(kind, "v", t0).is_ok(),
                "{kind:?} of another user"
            );
        }
    }
}
