//! Join admission: a token bucket per source and one for the whole listener. Pure: the caller
//! passes `now`. A join costs the responder a few X25519 operations and a chain verification,
//! so an address that knows the join port must not be able to make it do unbounded work.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Joins one source may start in a burst.
    pub per_source_burst: f64,
    /// Joins per second one source regains.
    pub per_source_rate: f64,
    /// Joins the whole listener may start in a burst.
    pub global_burst: f64,
    /// Joins per second the whole listener regains.
    pub global_rate: f64,
    /// Sources remembered at once; beyond this, new sources are refused until old buckets
    /// refill and are forgotten, so a spoofing flood cannot grow the table without bound.
    pub max_sources: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_source_burst: 5.0,
            per_source_rate: 0.5,
            global_burst: 50.0,
            global_rate: 20.0,
            max_sources: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = self.at.max(now);
    }
}

/// Decides whether a new join from a source may start.
#[derive(Debug)]
pub struct JoinRateLimiter {
    config: RateLimitConfig,
    global: Option<Bucket>,
    sources: HashMap<IpAddr, Bucket>,
}

/// The key a source is counted under: IPv4 addresses (also when mapped into IPv6) alone, IPv6
/// by /64, since one host commonly holds a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl JoinRateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            global: None,
            sources: HashMap::new(),
        }
    }

    /// Takes a token for a join from `source`, or returns false (and takes nothing) when the
    /// source or the listener is over its rate.
    pub fn try_admit(&mut self, source: IpAddr, now: Instant) -> bool {
        let c = self.config;
        let global = self
            .global
            .get_or_insert_with(|| Bucket::full(c.global_burst, now));
        global.refill(c.global_rate, c.global_burst, now);
        if global.tokens < 1.0 {
            return false;
        }
        let key = source_key(source);
        if !self.sources.contains_key(&key) && self.sources.len() >= c.max_sources {
            self.forget_full(now);
            if self.sources.len() >= c.max_sources {
                return false;
            }
        }
        let bucket = self
            .sources
            .entry(key)
            .or_insert_with(|| Bucket::full(c.per_source_burst, now));
        bucket.refill(c.per_source_rate, c.per_source_burst, now);
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        if let Some(g) = self.global.as_mut() {
            g.tokens -= 1.0;
        }
        true
    }

    /// Drops buckets that have refilled: forgetting them changes no decision.
    fn forget_full(&mut self, now: Instant) {
        let c = self.config;
        self.sources.retain(|_, b| {
            b.refill(c.per_source_rate, c.per_source_burst, now);
            b.tokens < c.per_source_burst
        });
    }

    /// Sources currently remembered.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// How long until `source` may join again, if it may not now (for logs).
    pub fn retry_after(&self, source: IpAddr) -> Option<Duration> {
        let b = self.sources.get(&source_key(source))?;
        (b.tokens < 1.0)
            .then(|| Duration::from_secs_f64((1.0 - b.tokens) / self.config.per_source_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RateLimitConfig {
        RateLimitConfig {
            per_source_burst: 3.0,
            per_source_rate: 1.0,
            global_burst: 10.0,
            global_rate: 2.0,
            max_sources: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = JoinRateLimiter::new(cfg());
        let a = ip("192.0.2.1");
        assert!((0..3).all(|_| l.try_admit(a, t0)));
        assert!(!l.try_admit(a, t0));
        assert!(l.retry_after(a).is_some());
        assert!(!l.try_admit(a, t0 + Duration::from_millis(900)));
        assert!(l.try_admit(a, t0 + Duration::from_millis(1000)));
        assert!(!l.try_admit(a, t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn one_source_over_its_rate_does_not_block_another() {
        let t0 = Instant::now();
        let mut l = JoinRateLimiter::new(cfg());
        for _ in 0..20 {
            l.try_admit(ip("192.0.2.1"), t0);
        }
        assert!(l.try_admit(ip("192.0.2.2"), t0));
    }

    #[test]
    fn the_global_cap_holds_across_sources() {
        let t0 = Instant::now();
        let mut l = JoinRateLimiter::new(cfg());
        let admitted = (0..50u8)
            .filter(|i| l.try_admit(IpAddr::from([10, 0, 0, *i]), t0))
            .count();
        assert_eq!(admitted, 10);
        // Two per second come back.
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (100..150u8)
            .filter(|i| l.try_admit(IpAddr::from([10, 0, 0, *i]), t1))
            .count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn refused_joins_take_no_global_token() {
        let t0 = Instant::now();
        let mut l = JoinRateLimiter::new(cfg());
        for _ in 0..100 {
            l.try_admit(ip("192.0.2.1"), t0);
        }
        // Only 3 of the 100 were admitted, so 7 global tokens are left for others.
        let admitted = (0..20u8)
            .filter(|i| l.try_admit(IpAddr::from([10, 0, 1, *i]), t0))
            .count();
        assert_eq!(admitted, 7);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t0 = Instant::now();
        let mut l = JoinRateLimiter::new(cfg());
        assert!(l.try_admit(ip("2001:db8:0:1::1"), t0));
        assert!(l.try_admit(ip("2001:db8:0:1::2"), t0));
        assert!(l.try_admit(ip("2001:db8:0:1:ffff::3"), t0));
        assert!(!l.try_admit(ip("2001:db8:0:1::4"), t0));
        assert!(l.try_admit(ip("2001:db8:0:2::1"), t0));

        for _ in 0..3 {
            assert!(l.try_admit(ip("192.0.2.9"), t0));
        }
        assert!(!l.try_admit(ip("::ffff:192.0.2.9"), t0));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_refilled_sources() {
        let t0 = Instant::now();
        let mut l = JoinRateLimiter::new(RateLimitConfig {
            max_sources: 4,
            global_burst: 1000.0,
            ..cfg()
        });
        for i in 0..4u8 {
            assert!(l.try_admit(IpAddr::from([10, 0, 0, i]), t0));
        }
        assert!(!l.try_admit(ip("10.0.0.200"), t0), "table full");
        assert_eq!(l.tracked_sources(), 4);
        // After the buckets refill they are forgotten and room is made.
        let later = t0 + Duration::from_secs(2);
        assert!(l.try_admit(ip("10.0.0.200"), later));
        assert_eq!(l.tracked_sources(), 1);
    }
}
