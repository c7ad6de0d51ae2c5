//! Limits before a WebSocket exists, kept by the HTTP side: the connection caps
//! (`--max-connections`, `--max-connections-per-ip`) and the `Origin` check
//! (`--allowed-origin`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Why a WebSocket upgrade was refused by [`ConnectionLimits::try_acquire`].
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
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionPermit, CapReached> {
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
        let first = limits.try_acquire(one).expect("under both caps");
        let second = limits.try_acquire(one).expect("under both caps");
        assert_eq!(limits.try_acquire(one).err(), Some(CapReached::PerIp));
        let third = limits.try_acquire(two).expect("another address");
        assert_eq!(limits.try_acquire(two).err(), Some(CapReached::Global));
        // The refused global attempt gave back its per-address count.
        assert_eq!(limits.count_for(two), 1);
        drop(first);
        assert_eq!(limits.count_for(one), 1);
        let fourth = limits.try_acquire(two).expect("a place was freed");
        drop((second, third, fourth));
        assert_eq!((limits.count_for(one), limits.count_for(two)), (0, 0));
    }

    /// `0` turns either cap off.
    #[test]
    fn zero_turns_a_cap_off() {
        let limits = ConnectionLimits::new(0, 0);
        let ip: IpAddr = "192.0.2.1".parse().expect("v4");
        let permits: Vec<_> = (0..1000).map(|_| limits.try_acquire(ip)).collect();
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
