//! Where the node's Redis is: one `redis-server`, or a Redis Cluster, named by one or more
//! seed URLs (`--redis redis://10.0.0.1:6379/,redis://10.0.0.2:6379/`). Several seeds are a
//! cluster; one seed is a cluster if its server says so (`cluster_enabled:1` in `INFO
//! cluster`), which the node asks once as it starts ([`Target::resolve`]).
//!
//! Steps run on [`Commands`]: one multiplexed connection to the one server, or, on a cluster,
//! this node's own [`Router`] (`router.rs`), which routes each command by its first key's slot
//! over a connection per master, follows `MOVED` and `ASK`, and loads a script again where a
//! shard answers `NOSCRIPT` (as a replica promoted by a failover does). Each room's keys carry
//! its code as their hash tag, so every script of a room runs on the one shard that holds the
//! room.

use std::fmt;
use std::time::Duration;

use futures_util::future;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, Value};

use super::router::Router;

/// One `redis-server`, or a Redis Cluster.
#[derive(Clone)]
pub enum Target {
    One(redis::Client),
    Cluster {
        /// The seeds as given: where the node first asks for the slot map.
        seeds: Vec<redis::Client>,
    },
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::One(client) => write!(f, "One({})", client.get_connection_info().addr()),
            Target::Cluster { seeds, .. } => {
                let seeds: Vec<String> = seeds
                    .iter()
                    .map(|seed| seed.get_connection_info().addr().to_string())
                    .collect();
                write!(f, "Cluster({})", seeds.join(","))
            }
        }
    }
}

impl Target {
    /// Parses `--redis`: one URL (`redis://[user:password@]host[:port][/db]`), or several,
    /// comma-separated, the seeds of a cluster.
    pub fn parse(text: &str) -> Result<Target, String> {
        let urls: Vec<&str> = text.split(',').map(str::trim).collect();
        let seeds = urls
            .iter()
            .map(|url| redis::Client::open(*url).map_err(|err| format!("{url}: {err}")))
            .collect::<Result<Vec<_>, String>>()?;
        match <[redis::Client; 1]>::try_from(seeds) {
            Ok([one]) => Ok(Target::One(one)),
            Err(seeds) => Target::cluster(seeds),
        }
    }

    fn cluster(seeds: Vec<redis::Client>) -> Result<Target, String> {
        Ok(Target::Cluster { seeds })
    }

    /// One URL whose server is a node of a cluster is taken as a cluster's seed. A server that
    /// cannot be asked yet is taken as it is: it is asked again when the node starts over.
    pub async fn resolve(self, timeout: Duration) -> Target {
        let Target::One(client) = &self else {
            return self;
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let Ok(mut connection) = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        else {
            return self;
        };
        let info: RedisResult<String> = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut connection)
            .await;
        match info {
            Ok(info) if info.contains("cluster_enabled:1") => {
                Target::cluster(vec![client.clone()]).unwrap_or(self)
            }
            _ => self,
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    /// A new connection for commands, with `timeout` to connect and for each answer.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<Commands> {
        match self {
            Target::One(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Commands::One(connection))
            }
            Target::Cluster { seeds } => {
                let router = Router::connect(seeds.clone(), timeout).await?;
                Ok(Commands::Cluster(router))
            }
        }
    }

    /// The servers the bus may subscribe through, in turn: the one server, or each seed of a
    /// cluster (a plain `SUBSCRIBE` on any node of a cluster hears every `PUBLISH`).
    pub fn pubsub(&self) -> Vec<redis::Client> {
        match self {
            Target::One(client) => vec![client.clone()],
            Target::Cluster { seeds } => seeds.clone(),
        }
    }
}

/// A connection for commands: to the one server, or to a cluster, routed by key. A clone
/// shares the same sockets.
#[derive(Clone)]
pub enum Commands {
    One(MultiplexedConnection),
    Cluster(Router),
}

impl fmt::Debug for Commands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Commands::One(_) => f.write_str("Commands::One"),
            Commands::Cluster(_) => f.write_str("Commands::Cluster"),
        }
    }
}

impl Commands {
    /// Whether Redis answers: the one server, or on a cluster each master in turn, so that one
    /// master down costs only the rooms of its slots, not the whole node (a cluster's `PING`
    /// goes to every node, and would fail with any one). Returns each master and whether it
    /// answered within `timeout` (none for the one server); `Err` if nothing answers.
    pub async fn check(&mut self, timeout: Duration) -> RedisResult<Vec<(String, bool)>> {
        let ping = redis::cmd("PING");
        match self {
            Commands::One(connection) => {
                answered(timeout, ping.query_async::<Value>(connection)).await?;
                Ok(Vec::new())
            }
            Commands::Cluster(router) => {
                // The map first: a failover may have made a replica a master.
                let _ = answered(timeout, async {
                    router.refresh_slots().await.map(|()| Value::Nil)
                })
                .await;
                let mut answers = Vec::new();
                for master in router.masters() {
                    let pinged = async {
                        let mut connection = router.connection_to(master).await?;
                        ping.query_async::<Value>(&mut connection).await
                    };
                    let up = answered(timeout, pinged).await.is_ok();
                    answers.push((master.to_string(), up));
                }
                if answers.iter().all(|(_, up)| !up) {
                    return Err(RedisError::from((
                        ErrorKind::Io,
                        "no master of the cluster answers",
                    )));
                }
                Ok(answers)
            }
        }
    }

    /// Sends `calls`, each on its own, and returns their replies in order: to one server in one
    /// pipeline (one round trip); to a cluster all at once, each to the shard of its first key,
    /// since a pipeline must stay within one slot there.
    pub async fn each(&mut self, calls: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        match self {
            Commands::One(connection) => {
                let mut pipe = redis::pipe();
                for call in calls {
                    pipe.add_command(call);
                }
                pipe.query_async(connection).await
            }
            Commands::Cluster(connection) => {
                let sent = calls.into_iter().map(|call| {
                    let mut connection = connection.clone();
                    async move { call.query_async::<Value>(&mut connection).await }
                });
                future::try_join_all(sent).await
            }
        }
    }
}

/// `asked`'s answer, or an error if it takes longer than `timeout`.
async fn answered(
    timeout: Duration,
    asked: impl Future<Output = RedisResult<Value>>,
) -> RedisResult<Value> {
    tokio::time::timeout(timeout, asked)
        .await
        .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::Io, "no answer in time"))))
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::One(connection) => connection.req_packed_command(cmd),
            Commands::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::One(connection) => connection.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::One(connection) => connection.get_db(),
            Commands::Cluster(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One URL is one server; several, comma-separated, the seeds of a cluster; a bad one is
    /// refused with the URL it is about.
    #[test]
    fn redis_urls_name_one_server_or_a_cluster() {
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379/"),
            Ok(Target::One(_))
        ));
        let cluster =
            Target::parse("redis://10.0.0.1:6379/, redis://10.0.0.2:6379/").expect("two seeds");
        assert!(cluster.is_cluster());
        assert_eq!(
            format!("{cluster:?}"),
            "Cluster(10.0.0.1:6379,10.0.0.2:6379)"
        );
        let refused = Target::parse("redis://10.0.0.1:6379/,http://x").expect_err("not redis");
        assert!(refused.contains("http://x"), "{refused}");
    }
}
