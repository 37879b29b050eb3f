//! Rate limits for `RateLimit` effects: GCRA per limit and key (governor).
//!
//! A limit of N per window allows a burst of N and then one request every window/N. Keys
//! are hashed with a per-process random key, so clients cannot aim at a collision. Counters
//! are kept across bundle swaps as long as a limit keeps its name, size and window. They do
//! not grow without bound: keys whose state is back to fresh are dropped periodically, and
//! a limit tracking more keys than allowed starts over (it forgets, it never refuses more).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use edgepack_bundles::plan::RateLimitPlan;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// One limit of the plan.
pub struct Limiter {
    name: String,
    quota: Quota,
    max_keys: usize,
    state: ArcSwap<DefaultKeyedRateLimiter<u64>>,
    hasher: std::hash::RandomState,
}

impl Limiter {
    fn new(plan: &RateLimitPlan, max_keys: usize) -> Limiter {
        let limit = NonZeroU32::new(plan.limit.max(1)).unwrap_or(NonZeroU32::MIN);
        let window = Duration::from_millis(plan.per_ms.max(1));
        let period = (window / limit.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(limit))
            .allow_burst(limit);
        Limiter {
            name: plan.name.clone(),
            quota,
            max_keys,
            state: ArcSwap::from_pointee(RateLimiter::keyed(quota)),
            hasher: std::hash::RandomState::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts one request for `key`: `Ok` when allowed, `Err(wait)` when over the limit.
    pub fn check(&self, key: &[u8]) -> Result<(), Duration> {
        let hashed = self.hasher.hash_one(key);
        let state = self.state.load();
        state
            .check_key(&hashed)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops fresh keys; starts over when more keys than allowed remain.
    fn housekeeping(&self) {
        let state = self.state.load();
        state.retain_recent();
        if state.len() > self.max_keys {
            self.state.store(Arc::new(RateLimiter::keyed(self.quota)));
        } else {
            state.shrink_to_fit();
        }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.state.load().len()
    }
}

/// Every limiter the node has, by (name, limit, window), so swaps keep their counters.
pub struct RateLimits {
    max_keys: usize,
    limiters: Mutex<HashMap<(String, u32, u64), Arc<Limiter>>>,
}

impl RateLimits {
    pub fn new(max_keys: usize) -> RateLimits {
        RateLimits {
            max_keys,
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// The limiters for a plan's limits, by id; existing ones are reused, others forgotten.
    pub fn for_plan(&self, plans: &[RateLimitPlan]) -> Vec<Arc<Limiter>> {
        let mut limiters = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut kept = HashMap::new();
        let result = plans
            .iter()
            .map(|plan| {
                let id = (plan.name.clone(), plan.limit, plan.per_ms);
                let limiter = limiters
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Limiter::new(plan, self.max_keys)));
                kept.insert(id, limiter.clone());
                limiter
            })
            .collect();
        *limiters = kept;
        result
    }

    /// Runs housekeeping on every limiter (called periodically).
    pub fn housekeeping(&self) {
        let limiters: Vec<Arc<Limiter>> = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for limiter in limiters {
            limiter.housekeeping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepack_bundles::plan::Source;

    fn plan(name: &str, limit: u32, per_ms: u64) -> RateLimitPlan {
        RateLimitPlan {
            id: 0,
            name: name.into(),
            key: "client-ip".into(),
            limit,
            per_ms,
            source: Source {
                file: "edgepack.kdl".into(),
                line: 1,
                column: 1,
            },
        }
    }

    #[test]
    fn allows_the_burst_then_refuses_with_a_wait() {
        let limits = RateLimits::new(1000);
        let limiter = &limits.for_plan(&[plan("per-ip", 3, 60_000)])[0];
        for _ in 0..3 {
            assert!(limiter.check(b"10.0.0.1").is_ok());
        }
        let wait = limiter.check(b"10.0.0.1").unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.check(b"10.0.0.2").is_ok(), "keys are counted apart");
    }

    #[test]
    fn counters_survive_a_swap_unless_the_limit_changes() {
        let limits = RateLimits::new(1000);
        let first = limits.for_plan(&[plan("per-ip", 1, 60_000)]);
        assert!(first[0].check(b"k").is_ok());
        let same = limits.for_plan(&[plan("per-ip", 1, 60_000)]);
        assert!(same[0].check(b"k").is_err(), "the count carried over");
        let changed = limits.for_plan(&[plan("per-ip", 2, 60_000)]);
        assert!(changed[0].check(b"k").is_ok(), "a new limit starts fresh");
    }

    #[test]
    fn key_counts_stay_bounded() {
        let limits = RateLimits::new(10);
        let limiter = limits.for_plan(&[plan("per-ip", 5, 60_000)]).remove(0);
        for i in 0..100u32 {
            let _ = limiter.check(&i.to_le_bytes());
        }
        assert_eq!(limiter.keys(), 100);
        limits.housekeeping();
        assert!(limiter.keys() <= 10, "{} keys", limiter.keys());
    }
}
