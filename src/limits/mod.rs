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
//! None of these knows about sockets or messages, so each is tested on its own. `rate.rs` holds
//! the first two, which the actor keeps; `connections.rs` the last two, which the HTTP side
//! keeps.

mod connections;
mod rate;

pub use connections::{CapReached, ConnectionLimits, ConnectionPermit, OriginPolicy, limit_key};
pub use rate::{ClientBuckets, MessageLimits, Rate, TokenBucket, Verdict};
