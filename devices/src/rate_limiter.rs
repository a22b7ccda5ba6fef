//! Rate limiters for device data paths, as Firecracker's: a bandwidth
//! bucket (bytes) and an ops bucket (requests or frames), each with a size,
//! a one-time burst and the time the bucket takes to fill from empty.
//!
//! A device asks [`RateLimiter::consume`] before it serves a request. When
//! a bucket is short, the request waits (the device puts it back in the
//! ring), and the limiter's timer, which the device watches on the event
//! loop, fires when the tokens will be there.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// One bucket's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Tokens spent before the bucket's own, once.
    pub one_time_burst: u64,
    /// Milliseconds the bucket takes to fill from empty.
    pub refill_time_ms: u64,
}

/// A limiter's configuration; a bucket that is absent, or of size or
/// refill time 0, limits nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Requests (block, entropy) or frames (net).
    pub ops: Option<BucketConfig>,
}

impl RateLimiterConfig {
    /// Whether it limits anything.
    pub fn limits(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .flatten()
            .any(|b| b.size > 0 && b.refill_time_ms > 0)
    }
}

/// A token bucket. The budget may go below zero: a request larger than
/// the whole bucket passes when the bucket is full and leaves a debt that
/// refilling pays first.
#[derive(Debug)]
struct Bucket {
    size: u64,
    refill_ns: u128,
    budget: i128,
    burst: u64,
    last: Instant,
}

impl Bucket {
    fn new(cfg: &BucketConfig, now: Instant) -> Option<Bucket> {
        (cfg.size > 0 && cfg.refill_time_ms > 0).then(|| Bucket {
            size: cfg.size,
            refill_ns: u128::from(cfg.refill_time_ms) * 1_000_000,
            budget: i128::from(cfg.size),
            burst: cfg.one_time_burst,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let tokens = elapsed * u128::from(self.size) / self.refill_ns;
        if tokens == 0 {
            return;
        }
        // Advance by exactly what the tokens took, so no time is lost to
        // rounding.
        let used = tokens * self.refill_ns / u128::from(self.size);
        self.last += Duration::from_nanos(used.min(u128::from(u64::MAX)) as u64);
        self.budget = (self.budget + tokens as i128).min(i128::from(self.size));
    }

    /// Takes `n` tokens, or says how long until it could.
    fn take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let from_burst = n.min(self.burst);
        let rest = n - from_burst;
        // What must be there first: the request, or a full bucket for one
        // larger than the bucket.
        let need = i128::from(rest.min(self.size));
        if rest > 0 && self.budget < need {
            let missing = (need - self.budget) as u128;
            // Saturating: size and refill time come from the API, unbounded.
            let ns = missing
                .saturating_mul(self.refill_ns)
                .div_ceil(u128::from(self.size));
            return Err(Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64));
        }
        self.burst -= from_burst;
        self.budget -= i128::from(rest);
        Ok(())
    }

    /// Gives back what [`Bucket::take`] took (the other bucket was short).
    fn give_back(&mut self, n: u64) {
        self.budget = (self.budget + i128::from(n)).min(i128::from(self.size));
    }
}

/// A bandwidth and an ops bucket, and the timer that says when a waiting
/// request can go.
pub struct RateLimiter {
    bandwidth: Option<Bucket>,
    ops: Option<Bucket>,
    timer: TimerFd,
    waiting: bool,
}

impl RateLimiter {
    /// A limiter as `cfg` says (its timer is made now).
    pub fn new(cfg: &RateLimiterConfig) -> std::io::Result<RateLimiter> {
        let now = Instant::now();
        Ok(RateLimiter {
            bandwidth: cfg.bandwidth.as_ref().and_then(|b| Bucket::new(b, now)),
            ops: cfg.ops.as_ref().and_then(|b| Bucket::new(b, now)),
            timer: TimerFd::new()?,
            waiting: false,
        })
    }

    /// Replaces the buckets (full, as new ones start). A request waiting
    /// for the timer is tried again when it fires.
    pub fn update(&mut self, cfg: &RateLimiterConfig) {
        let now = Instant::now();
        self.bandwidth = cfg.bandwidth.as_ref().and_then(|b| Bucket::new(b, now));
        self.ops = cfg.ops.as_ref().and_then(|b| Bucket::new(b, now));
    }

    /// Takes one op and `bytes` bytes. When either bucket is short it takes
    /// nothing, arms the timer for when both will do, and returns false.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if !self.limits() {
            // Nothing to limit: no clock read on the data path.
            return true;
        }
        self.consume_at(bytes, Instant::now())
    }

    fn consume_at(&mut self, bytes: u64, now: Instant) -> bool {
        // The op first; bytes only if it was there, and the op back if the
        // bytes were not. Another wait may follow for the other bucket.
        let wait = match self.ops.as_mut().map(|b| b.take(1, now)) {
            Some(Err(w)) => Some(w),
            took => match self.bandwidth.as_mut().map(|b| b.take(bytes, now)) {
                Some(Err(w)) => {
                    if took.is_some() {
                        if let Some(b) = self.ops.as_mut() {
                            b.give_back(1);
                        }
                    }
                    Some(w)
                }
                _ => None,
            },
        };
        let Some(wait) = wait else {
            return true;
        };
        self.waiting = true;
        // At least a millisecond: a zero time would disarm the timer.
        let wait = wait.max(Duration::from_millis(1));
        if let Err(e) = self.timer.reset(wait, None) {
            log::warn!("rate limiter: cannot arm its timer: {e}");
        }
        false
    }

    /// Whether it has a bucket: without one, [`Self::consume`] always
    /// passes and a caller need not size its request.
    pub fn limits(&self) -> bool {
        self.ops.is_some() || self.bandwidth.is_some()
    }

    /// Whether a request waits for the timer.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// The timer fired: the waiting request may be tried again.
    pub fn timer_fired(&mut self) {
        let _ = self.timer.wait();
        self.waiting = false;
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst: burst,
            refill_time_ms: refill_ms,
        })
    }

    #[test]
    fn a_bucket_refills_at_its_rate_and_no_faster() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&bucket(1000, 0, 1000).unwrap(), t0).unwrap();
        assert!(b.take(1000, t0).is_ok());
        // Empty: 100 tokens take 100 ms.
        assert_eq!(b.take(100, t0), Err(Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(b.take(100, t1), Err(Duration::from_millis(50)));
        let t2 = t0 + Duration::from_millis(100);
        assert!(b.take(100, t2).is_ok());
        // Never more than the size, however long it waited.
        let t3 = t2 + Duration::from_secs(60);
        assert!(b.take(1000, t3).is_ok());
        assert!(b.take(1, t3).is_err());
    }

    #[test]
    fn the_burst_goes_first_and_once() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&bucket(100, 500, 1000).unwrap(), t0).unwrap();
        assert!(b.take(500, t0).is_ok());
        assert!(b.take(100, t0).is_ok());
        assert!(b.take(1, t0).is_err());
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&bucket(100, 0, 1000).unwrap(), t0).unwrap();
        assert!(b.take(300, t0).is_ok());
        // 200 of debt, then 100 to have the next full request: 3 s.
        assert_eq!(b.take(100, t0), Err(Duration::from_secs(3)));
        assert!(b.take(100, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn a_short_bucket_takes_nothing_from_the_other() {
        let cfg = RateLimiterConfig {
            bandwidth: bucket(1000, 0, 1000),
            ops: bucket(10, 0, 1000),
        };
        let mut l = RateLimiter::new(&cfg).unwrap();
        let t0 = Instant::now();
        assert!(l.consume_at(1000, t0));
        // Bandwidth is empty: the op taken for this one is given back.
        assert!(!l.consume_at(10, t0));
        assert!(l.waiting());
        for _ in 0..9 {
            let t = t0 + Duration::from_secs(2);
            assert!(l.consume_at(0, t));
        }
    }

    #[test]
    fn the_largest_buckets_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&bucket(u64::MAX, 0, u64::MAX).unwrap(), t0).unwrap();
        assert!(b.take(u64::MAX, t0).is_ok());
        assert!(b.take(u64::MAX, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn empty_or_zero_buckets_limit_nothing() {
        for cfg in [
            RateLimiterConfig::default(),
            RateLimiterConfig {
                bandwidth: bucket(0, 0, 1000),
                ops: bucket(10, 0, 0),
            },
        ] {
            assert!(!cfg.limits());
            let mut l = RateLimiter::new(&cfg).unwrap();
            for _ in 0..1000 {
                assert!(l.consume(1 << 30));
            }
        }
    }
}
