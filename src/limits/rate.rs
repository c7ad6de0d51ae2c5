//! Limits on what clients send, kept by the actor: the message rate (`--rate-limit`,
//! `--rate-burst`) and failed joins (`--max-failed-joins`), as token buckets.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The rule of a token bucket: it holds up to `capacity` tokens and gains `per_second` of them
/// a second. Each event takes one token; an event that finds the bucket empty is over the limit.
///
/// It allows a burst of `capacity` events at once and, after that, a steady `per_second`.
/// Every client has the same rules, so a rule is kept once, by [`MessageLimits`], and each
/// client keeps only its buckets' levels ([`TokenBucket`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// The most tokens a bucket holds: the burst it allows.
    capacity: f64,
    /// Tokens gained per second.
    per_second: f64,
}

impl Rate {
    /// Buckets of `capacity` tokens that refill at `per_second`.
    pub fn new(capacity: u32, per_second: f64) -> Self {
        Rate {
            capacity: f64::from(capacity),
            per_second,
        }
    }

    /// Buckets of `capacity` tokens that refill completely once per `period`.
    pub fn per_period(capacity: u32, period: Duration) -> Self {
        let per_second = f64::from(capacity) / period.as_secs_f64().max(f64::EPSILON);
        Rate::new(capacity, per_second)
    }
}

/// The level of one token bucket, whose rule is a [`Rate`] kept elsewhere.
///
/// There is no timer behind it: the bucket refills lazily, by looking at the clock when an event
/// arrives. The clock is tokio's [`Instant`], so tests can run it with paused time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens held at `updated`. Fractional, so slow refill rates lose nothing to rounding.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate`.
    pub fn full(rate: &Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: rate.capacity,
            updated: now,
        }
    }

    /// Takes one token if there is one. `false` means the event is over the limit.
    pub fn try_take(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether an event now would find a token, without taking it.
    pub fn has_token(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= 1.0
    }

    /// Whether the bucket has refilled completely: it remembers nothing, and can be forgotten.
    pub fn is_full(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.capacity
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.capacity);
        self.updated = now;
    }
}

/// One client's buckets under the limits the actor enforces; `None` where a limit is off.
#[derive(Debug, Clone, Default)]
pub struct ClientBuckets {
    /// One token per message the client may send (`--rate-limit`, `--rate-burst`).
    messages: Option<TokenBucket>,
    /// One token per message the client may have *refused* for going over the rate limit,
    /// refilled at the same rate. A client that empties this one too is not a person typing
    /// fast but a program flooding.
    refusals: Option<TokenBucket>,
    /// One token per failed `join_room` the client may make (`--max-failed-joins` a minute).
    failed_joins: Option<TokenBucket>,
}

/// What [`MessageLimits::check_message`] decides about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the rate limit: handle it.
    Allowed,
    /// Over the rate limit: refuse it with `RATE_LIMITED`.
    Refused,
    /// Over the rate limit for so long that the client is flooding: disconnect it.
    Flooding,
}

/// The period of `--max-failed-joins`: that many failures are allowed per minute.
const FAILED_JOINS_PERIOD: Duration = Duration::from_secs(60);

/// The per-address failed-join buckets are swept for forgettable entries when the map reaches
/// this size, and then whenever it has doubled since the last sweep.
const MIN_FAILED_JOINS_SWEEP: usize = 1024;

/// The limits the actor enforces on what clients send: the message rate (`--rate-limit`,
/// `--rate-burst`) and failed joins (`--max-failed-joins`), per client and per address. Owned
/// by the actor, which alone sees messages and joins; each client's own levels are its
/// [`ClientBuckets`].
#[derive(Debug)]
pub struct MessageLimits {
    /// The rule of the message and refusal buckets, or `None` when rate limiting is off.
    messages: Option<Rate>,
    /// The rule of the failed-join buckets, or `None` when that limit is off.
    failed_joins: Option<Rate>,
    /// Failed joins per address ([`limit_key`]), so that a guesser cannot get a fresh allowance
    /// by reconnecting. Entries whose bucket has refilled are swept out now and then (see
    /// [`MessageLimits::count_failed_join`]), which keeps the map as small as the set of
    /// addresses that failed recently.
    failed_joins_by_address: foldhash::HashMap<IpAddr, TokenBucket>,
    /// The size of `failed_joins_by_address` at which it is next swept.
    sweep_at: usize,
}

impl MessageLimits {
    /// The limits of `--rate-limit` messages a second in bursts of `--rate-burst`, and of
    /// `--max-failed-joins` a minute; `0` turns a limit off.
    pub fn new(rate_limit: u32, rate_burst: u32, max_failed_joins: u32) -> Self {
        MessageLimits {
            messages: (rate_limit > 0).then(|| Rate::new(rate_burst.max(1), f64::from(rate_limit))),
            failed_joins: (max_failed_joins > 0)
                .then(|| Rate::per_period(max_failed_joins, FAILED_JOINS_PERIOD)),
            failed_joins_by_address: foldhash::HashMap::default(),
            sweep_at: MIN_FAILED_JOINS_SWEEP,
        }
    }

    /// Full buckets for a client that connects now.
    pub fn new_client(&self, now: Instant) -> ClientBuckets {
        ClientBuckets {
            messages: self.messages.map(|rate| TokenBucket::full(&rate, now)),
            refusals: self.messages.map(|rate| TokenBucket::full(&rate, now)),
            failed_joins: self.failed_joins.map(|rate| TokenBucket::full(&rate, now)),
        }
    }

    /// Whether a message from a client with `buckets` is to be handled. Every message counts,
    /// requests and garbage alike. Over the limit, the message is refused and counted in the
    /// second bucket, of refusals; a client that empties that one too is flooding.
    pub fn check_message(&self, buckets: &mut ClientBuckets, now: Instant) -> Verdict {
        let (Some(rate), Some(messages)) = (&self.messages, &mut buckets.messages) else {
            return Verdict::Allowed;
        };
        if messages.try_take(rate, now) {
            return Verdict::Allowed;
        }
        let refused_in_time = buckets
            .refusals
            .as_mut()
            .is_none_or(|refusals| refusals.try_take(rate, now));
        if refused_in_time {
            Verdict::Refused
        } else {
            Verdict::Flooding
        }
    }

    /// Whether a client with `buckets`, connected from `address`, may fail one more join now:
    /// both it and its address must have a failure left.
    pub fn may_fail_a_join(
        &mut self,
        buckets: &mut ClientBuckets,
        address: IpAddr,
        now: Instant,
    ) -> bool {
        let Some(rate) = &self.failed_joins else {
            return true;
        };
        let client_may = buckets
            .failed_joins
            .as_mut()
            .is_none_or(|tokens| tokens.has_token(rate, now));
        let address_may = self
            .failed_joins_by_address
            .get_mut(&address)
            .is_none_or(|tokens| tokens.has_token(rate, now));
        client_may && address_may
    }

    /// Takes one failed join from the client's allowance and from its address's.
    pub fn count_failed_join(
        &mut self,
        buckets: &mut ClientBuckets,
        address: IpAddr,
        now: Instant,
    ) {
        let Some(rate) = self.failed_joins else {
            return;
        };
        if let Some(tokens) = &mut buckets.failed_joins {
            tokens.try_take(&rate, now);
        }
        if !self.failed_joins_by_address.contains_key(&address)
            && self.failed_joins_by_address.len() >= self.sweep_at
        {
            // A full bucket remembers nothing: forgetting it changes no decision. Sweeping only
            // when the map has doubled keeps the cost per failed join constant on average.
            self.failed_joins_by_address
                .retain(|_, tokens| !tokens.is_full(&rate, now));
            self.sweep_at = (self.failed_joins_by_address.len() * 2).max(MIN_FAILED_JOINS_SWEEP);
        }
        self.failed_joins_by_address
            .entry(address)
            .or_insert_with(|| TokenBucket::full(&rate, now))
            .try_take(&rate, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket allows its burst at once, then refuses until time refills it, at its rate.
    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let rate = Rate::new(3, 2.0);
        let mut bucket = TokenBucket::full(&rate, start);
        assert!((0..3).all(|_| bucket.try_take(&rate, start)));
        assert!(!bucket.try_take(&rate, start));
        // Two tokens a second: one after half a second, not before.
        assert!(!bucket.try_take(&rate, start + Duration::from_millis(400)));
        assert!(bucket.try_take(&rate, start + Duration::from_millis(500)));
        assert!(!bucket.try_take(&rate, start + Duration::from_millis(500)));
        // It never holds more than its capacity, however long it waits.
        let later = start + Duration::from_secs(3600);
        assert!(bucket.is_full(&rate, later));
        assert!((0..3).all(|_| bucket.try_take(&rate, later)));
        assert!(!bucket.has_token(&rate, later));
    }

    /// A bucket per period refills its whole capacity over that period.
    #[tokio::test(start_paused = true)]
    async fn a_bucket_per_minute_refills_over_a_minute() {
        let start = Instant::now();
        let rate = Rate::per_period(6, Duration::from_secs(60));
        let mut bucket = TokenBucket::full(&rate, start);
        assert!((0..6).all(|_| bucket.try_take(&rate, start)));
        assert!(!bucket.try_take(&rate, start + Duration::from_secs(9)));
        assert!(bucket.try_take(&rate, start + Duration::from_secs(10)));
        assert!(bucket.is_full(&rate, start + Duration::from_secs(70)));
    }

    /// A client over the rate limit is refused, and once its refusals are over the limit too,
    /// it is flooding; with the limit off, everything is allowed.
    #[tokio::test(start_paused = true)]
    async fn messages_are_allowed_then_refused_then_flooding() {
        let now = Instant::now();
        let limits = MessageLimits::new(1, 2, 0);
        let mut buckets = limits.new_client(now);
        let verdicts: Vec<Verdict> = (0..5)
            .map(|_| limits.check_message(&mut buckets, now))
            .collect();
        use Verdict::*;
        assert_eq!(verdicts, [Allowed, Allowed, Refused, Refused, Flooding]);
        let off = MessageLimits::new(0, 2, 0);
        let mut buckets = off.new_client(now);
        assert!((0..100).all(|_| off.check_message(&mut buckets, now) == Allowed));
    }
}
