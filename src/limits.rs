//! The building blocks of the server's limits: what keeps one client, or one address, from
//! taking more than its share.
//!
//! - [`Rate`] and [`TokenBucket`]: a rate limit, its rule and one bucket's level.
//! - [`MessageLimits`]: the limits the actor enforces on what clients send: the message rate,
//!   and failed joins per client and per address. Each client keeps its own [`ClientBuckets`].
//! - [`ConnectionLimits`]: caps on simultaneous WebSocket connections, globally and per address.
//!   The HTTP side takes a [`ConnectionPermit`] before it answers an upgrade, and the connection's
//!   task holds it until the connection ends.
//! - [`OriginPolicy`]: which web pages may open a WebSocket to this server.
//!
//! None of these knows about sockets or messages, so each is tested on its own below.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// The address a per-address limit counts against.
///
/// An IPv4 address counts as itself. An IPv6 address counts as its /64 network: one customer of
/// an internet provider usually gets a whole /64, so counting single IPv6 addresses would let one
/// machine open connections from billions of addresses. An IPv4 address written as IPv6
/// (`::ffff:a.b.c.d`, as dual-stack sockets report them) counts as the IPv4 address.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(network))
            }
        },
    }
}

/// Why a WebSocket upgrade was refused by [`ConnectionLimits::try_admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    /// `--max-connections`: the server has as many connections as it will take. HTTP 503.
    Global,
    /// `--max-connections-per-ip`: this address has as many as it may have. HTTP 429.
    PerIp,
}

/// Caps on simultaneous WebSocket connections: one for the whole server, one per address
/// ([`limit_key`]). `0` turns a cap off.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// One permit per connection the server will take, or `None` without a global cap. A
    /// semaphore rather than a counter because its permits give themselves back: the connection
    /// task owns one, and however that task ends, dropping it returns the slot.
    global: Option<Arc<Semaphore>>,
    /// The most connections one address may hold; `0` for no cap.
    per_ip_max: usize,
    /// How many connections each address holds now. Addresses with none are removed, so the map
    /// is only as big as the set of connected addresses.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection's place under [`ConnectionLimits`]. Held by the connection's task; dropping it,
/// however the task ends, gives the place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    /// The connection's permit from the global semaphore, if there is a global cap.
    _global: Option<OwnedSemaphorePermit>,
    /// The connection's count in the per-address map, if there is a per-address cap.
    _per_ip: Option<IpCount>,
}

/// One connection counted against one address; uncounts it when dropped.
#[derive(Debug)]
struct IpCount {
    /// The shared map of counts, the same one as in [`ConnectionLimits::per_ip`].
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// The address counted.
    key: IpAddr,
}

impl ConnectionLimits {
    /// Caps of `max_connections` in all and `max_per_ip` per address; `0` turns a cap off.
    pub fn new(max_connections: usize, max_per_ip: usize) -> Self {
        ConnectionLimits {
            global: (max_connections > 0)
                .then(|| Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)))),
            per_ip_max: max_per_ip,
            per_ip: Arc::default(),
        }
    }

    /// Takes a place for one more connection from `ip`, or says which cap is reached. Never
    /// waits: a refused upgrade is answered at once rather than queued.
    pub fn try_admit(&self, ip: IpAddr) -> Result<ConnectionPermit, CapReached> {
        // The per-address cap is checked first: a single address at its cap gets 429 even when
        // the server is also full, which tells that client the problem is its own.
        let per_ip = if self.per_ip_max > 0 {
            let key = limit_key(ip);
            // A std Mutex, not tokio's: the lock is held for one hash map update, never across an
            // `.await`, so it is never held long enough for blocking to matter, and it is cheaper
            // than an async lock. It also has to be taken in `Drop`, which cannot `.await`. A
            // poisoned lock (a panic while holding it) still guards a consistent map, because
            // every update is a single `entry` operation, so we carry on with it.
            let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(key).or_insert(0);
            if *count >= self.per_ip_max {
                return Err(CapReached::PerIp);
            }
            *count += 1;
            Some(IpCount {
                counts: Arc::clone(&self.per_ip),
                key,
            })
        } else {
            None
        };
        let global = match &self.global {
            // If this fails, `per_ip` is dropped on the way out and gives its count back.
            Some(semaphore) => Some(
                Arc::clone(semaphore)
                    .try_acquire_owned()
                    .map_err(|_| CapReached::Global)?,
            ),
            None => None,
        };
        Ok(ConnectionPermit {
            _global: global,
            _per_ip: per_ip,
        })
    }

    /// How many connections `ip` holds now (for tests).
    pub fn count_for(&self, ip: IpAddr) -> usize {
        let counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&limit_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for IpCount {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Which web pages may open a WebSocket to the server, judged by the `Origin` header browsers send.
///
/// Browsers let any page open a WebSocket to any server, sending the page's origin along; without
/// a check, a page on some other site could chat in its visitors' names. Programs other than
/// browsers send no `Origin` (or any they like), so the check protects browser users only, and
/// clients without the header are always accepted.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `--allowed-origin` values, lower-cased and without a trailing `/`.
    allowed: Vec<String>,
    /// `--allowed-origin '*'` was given: every origin is accepted.
    any: bool,
}

impl OriginPolicy {
    /// A policy that accepts the server's own origin, requests without `Origin`, and `allowed`.
    pub fn new(allowed: &[String]) -> Self {
        OriginPolicy {
            any: allowed.iter().any(|origin| origin.trim() == "*"),
            allowed: allowed
                .iter()
                .map(|origin| origin.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a request with `origin` (the `Origin` header, if any) and `host` (the `Host`
    /// header, if any) may upgrade. The server's own origin is one whose `host[:port]` is the
    /// request's `Host`: the page was served by the very address it now connects to.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            return true;
        }
        // `scheme://host[:port]`; the opaque origin `null` has no authority and never matches.
        let authority = origin.split_once("://").map(|(_, authority)| authority);
        match (authority, host) {
            (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host.trim()),
            _ => false,
        }
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

    /// IPv6 addresses count per /64 network; IPv4-mapped addresses count as IPv4.
    #[test]
    fn addresses_are_counted_by_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("an address");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("an address");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("an address");
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("an address");
        assert_eq!(
            limit_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("v4")
        );
    }

    /// The per-address cap refuses the address at its cap only, and a dropped permit frees the
    /// place; the global cap refuses everyone once reached.
    #[test]
    fn connection_caps_hold_and_permits_give_back() {
        let limits = ConnectionLimits::new(3, 2);
        let one: IpAddr = "192.0.2.1".parse().expect("v4");
        let two: IpAddr = "192.0.2.2".parse().expect("v4");
        let first = limits.try_admit(one).expect("under both caps");
        let second = limits.try_admit(one).expect("under both caps");
        assert_eq!(limits.try_admit(one).err(), Some(CapReached::PerIp));
        let third = limits.try_admit(two).expect("another address");
        assert_eq!(limits.try_admit(two).err(), Some(CapReached::Global));
        // The refused global attempt gave back its per-address count.
        assert_eq!(limits.count_for(two), 1);
        drop(first);
        assert_eq!(limits.count_for(one), 1);
        let fourth = limits.try_admit(two).expect("a place was freed");
        drop((second, third, fourth));
        assert_eq!((limits.count_for(one), limits.count_for(two)), (0, 0));
    }

    /// `0` turns either cap off.
    #[test]
    fn zero_turns_a_cap_off() {
        let limits = ConnectionLimits::new(0, 0);
        let ip: IpAddr = "192.0.2.1".parse().expect("v4");
        let permits: Vec<_> = (0..1000).map(|_| limits.try_admit(ip)).collect();
        assert!(permits.iter().all(Result::is_ok));
    }

    /// By default: no `Origin` and the server's own origin pass; other sites do not. Listed
    /// origins are added, and `*` accepts every origin.
    #[test]
    fn origin_policy() {
        let default = OriginPolicy::new(&[]);
        assert!(default.allows(None, Some("chat.example:8080")));
        assert!(default.allows(Some("http://chat.example:8080"), Some("chat.example:8080")));
        assert!(default.allows(Some("https://Chat.Example"), Some("chat.example")));
        assert!(!default.allows(Some("https://evil.example"), Some("chat.example")));
        assert!(!default.allows(Some("http://chat.example:9999"), Some("chat.example:8080")));
        assert!(!default.allows(Some("null"), Some("chat.example")));
        assert!(!default.allows(Some("https://chat.example"), None));

        let listed = OriginPolicy::new(&["https://app.example/".into()]);
        assert!(listed.allows(Some("https://APP.example"), Some("chat.example")));
        assert!(listed.allows(Some("http://chat.example"), Some("chat.example")));
        assert!(!listed.allows(Some("https://evil.example"), Some("chat.example")));

        let any = OriginPolicy::new(&["*".into()]);
        assert!(any.allows(Some("https://evil.example"), Some("chat.example")));
    }
}
