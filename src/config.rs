//! Settings a server runs with.

use std::time::Duration;

/// What an operator can tune. The binary fills it from the command line and `CHAT_…`
/// environment variables; tests build it directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a member counts as typing after its last `typing` message. When it runs out the
    /// peer gets `stop_typing`, so a closed laptop does not leave "… is typing" up forever.
    pub typing_timeout: Duration,
    /// How often the server pings each client. A client that sends nothing at all (not even a
    /// pong) for two intervals is disconnected.
    pub heartbeat_interval: Duration,
    /// How many encoded messages may wait for one client's socket. A client that falls this far
    /// behind is disconnected as a slow consumer instead of holding memory or the actor.
    pub outbound_queue: usize,
}

impl Config {
    /// Default for [`Config::typing_timeout`].
    pub const DEFAULT_TYPING_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default for [`Config::heartbeat_interval`].
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
    /// Default for [`Config::outbound_queue`]: far more than a conversation ever has in flight.
    pub const DEFAULT_OUTBOUND_QUEUE: usize = 128;
}

impl Default for Config {
    fn default() -> Self {
        Config {
            typing_timeout: Config::DEFAULT_TYPING_TIMEOUT,
            heartbeat_interval: Config::DEFAULT_HEARTBEAT_INTERVAL,
            outbound_queue: Config::DEFAULT_OUTBOUND_QUEUE,
        }
    }
}
