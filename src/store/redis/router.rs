//! Commands on a Redis Cluster, routed by this node itself: one multiplexed connection per
//! master, and the slot map read with `CLUSTER SLOTS`.
//!
//! Why not the `redis` crate's cluster connection: while one master is down (killed, and its
//! replica not yet promoted), it goes into recovery again on every command that fails there,
//! and holds every other command, for every master, behind each recovery. Measured with 1,000
//! rooms (`bench/failover.py`), a killed master stopped every room of the node for seconds,
//! long enough for the link's check to find no master answering. Here a master that does not
//! answer costs only the commands for its slots: they fail (the step answers `UNAVAILABLE`),
//! and the others go on, each on its own master's connection.
//!
//! What a command meets, and what the router does:
//! - `MOVED slot addr`: the slot has a new owner (a failover, a migration that ended). The map
//!   is corrected for that slot, read again in the background, and the command sent there.
//! - `ASK slot addr`: the slot is migrating and this key is already there: `ASKING` and the
//!   command, once, on that master.
//! - `TRYAGAIN`: a script's keys are split by a migration in progress: tried again shortly.
//! - a connection that fails: dropped, so that the next command connects again, and the map
//!   read again (a failover may have moved the slot).
//! - `NOSCRIPT` (a promoted replica): the `redis` crate's `Script` loads the script with a
//!   keyless `SCRIPT LOAD`, which the router sends to every master, and tries again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, Value};
use tracing::{debug, warn};

use super::shards::{slot_of, slot_range};

/// How many times a command that met `TRYAGAIN` (a migration in progress) is tried again: for
/// up to two seconds, as long as a step may take.
const TRY_AGAIN_TIMES: u32 = 80;
/// How long to wait before trying again.
const TRY_AGAIN_AFTER: Duration = Duration::from_millis(25);

/// A cluster's commands, routed by slot. A clone shares the connections and the slot map.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where to ask for the slot map when no master answers.
    seeds: Vec<redis::Client>,
    /// How long to connect, and to wait for each answer.
    timeout: Duration,
    /// Each slot range and its master, as last read.
    slots: Mutex<Vec<(u16, u16, SocketAddr)>>,
    /// The connection to each master, made when first needed.
    connections: Mutex<HashMap<SocketAddr, MultiplexedConnection>>,
    /// A reading of the slot map is under way in the background: hundreds of commands failing
    /// on a dead master ask for one, and one at a time is enough.
    refreshing: AtomicBool,
}

impl Router {
    /// A router for the cluster of `seeds`, once one of them has said where the slots are.
    pub async fn connect(seeds: Vec<redis::Client>, timeout: Duration) -> RedisResult<Router> {
        let router = Router {
            inner: Arc::new(Inner {
                seeds,
                timeout,
                slots: Mutex::new(Vec::new()),
                connections: Mutex::new(HashMap::new()),
                refreshing: AtomicBool::new(false),
            }),
        };
        router.refresh_slots().await?;
        Ok(router)
    }

    /// The masters, as the slot map says.
    pub fn masters(&self) -> Vec<SocketAddr> {
        let mut masters: Vec<SocketAddr> = lock(&self.inner.slots)
            .iter()
            .map(|(_, _, master)| *master)
            .collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// Reads the slot map again: from the masters known, then the seeds; the first to answer.
    pub async fn refresh_slots(&self) -> RedisResult<()> {
        let mut slots = None;
        for master in self.masters() {
            slots = self.slots_from_master(master).await.ok();
            if slots.is_some() {
                break;
            }
        }
        for seed in &self.inner.seeds {
            if slots.is_some() {
                break;
            }
            slots = self.slots_from_seed(seed).await.ok();
        }
        let slots = slots.ok_or_else(|| {
            RedisError::from((
                ErrorKind::Io,
                "no node of the cluster said where its slots are",
            ))
        })?;
        *lock(&self.inner.slots) = slots;
        Ok(())
    }

    async fn slots_from_master(
        &self,
        master: SocketAddr,
    ) -> RedisResult<Vec<(u16, u16, SocketAddr)>> {
        let mut connection = self.connection_to(master).await?;
        read_slot_map(&mut connection).await
    }

    async fn slots_from_seed(
        &self,
        seed: &redis::Client,
    ) -> RedisResult<Vec<(u16, u16, SocketAddr)>> {
        let mut connection = seed
            .get_multiplexed_async_connection_with_config(&self.config())
            .await?;
        read_slot_map(&mut connection).await
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout))
    }

    /// The connection to `master`, made if there is none.
    pub async fn connection_to(&self, master: SocketAddr) -> RedisResult<MultiplexedConnection> {
        if let Some(connection) = lock(&self.inner.connections).get(&master) {
            return Ok(connection.clone());
        }
        let client = redis::Client::open(format!("redis://{master}/"))?;
        let connection = client
            .get_multiplexed_async_connection_with_config(&self.config())
            .await?;
        lock(&self.inner.connections).insert(master, connection.clone());
        Ok(connection)
    }

    /// The master of `slot`, as the map says.
    fn master_of(&self, slot: u16) -> Option<SocketAddr> {
        lock(&self.inner.slots)
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, master)| *master)
    }

    /// `master`'s connection failed: it is dropped, and the map read again in the background
    /// (a failover may have moved its slots).
    fn forget(&self, master: SocketAddr) {
        lock(&self.inner.connections).remove(&master);
        self.refresh_in_background();
    }

    /// `slot` is `master`'s now (a `MOVED`): noted at once, and the map read again.
    fn moved(&self, slot: u16, master: SocketAddr) {
        lock(&self.inner.slots).insert(0, (slot, slot, master));
        self.refresh_in_background();
    }

    /// Reads the slot map again in a task of its own, unless one is doing so already.
    fn refresh_in_background(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let router = self.clone();
        tokio::spawn(async move {
            if let Err(err) = router.refresh_slots().await {
                debug!(cause = %err, "could not read the cluster's slot map");
            }
            router.inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Sends `cmd` where its key's slot is, following the cluster's redirections.
    async fn send(&self, cmd: &Cmd) -> RedisResult<Value> {
        let Some(slot) = slot_of_command(cmd) else {
            return self.send_keyless(cmd).await;
        };
        let mut master = self.master_for(slot).await?;
        let mut tries = 0;
        loop {
            match self.send_to(master, cmd).await {
                Err(err) if err.code() == Some("MOVED") => {
                    let (to, slot) = redirection(&err)?;
                    self.moved(slot, to);
                    master = to;
                }
                Err(err) if err.code() == Some("ASK") => {
                    let (to, _) = redirection(&err)?;
                    return self.ask(to, cmd).await;
                }
                Err(err) if err.code() == Some("TRYAGAIN") && tries < TRY_AGAIN_TIMES => {
                    tokio::time::sleep(TRY_AGAIN_AFTER).await;
                }
                answer => return answer,
            }
            tries += 1;
            if tries > TRY_AGAIN_TIMES {
                return Err(RedisError::from((
                    ErrorKind::Io,
                    "redirected too many times",
                )));
            }
        }
    }

    /// The master of `slot`, reading the map first if it does not say.
    async fn master_for(&self, slot: u16) -> RedisResult<SocketAddr> {
        if let Some(master) = self.master_of(slot) {
            return Ok(master);
        }
        self.refresh_slots().await?;
        self.master_of(slot)
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "no master serves that slot")))
    }

    /// Sends `cmd` to `master`; a connection that fails is forgotten.
    async fn send_to(&self, master: SocketAddr, cmd: &Cmd) -> RedisResult<Value> {
        let mut connection = match self.connection_to(master).await {
            Ok(connection) => connection,
            Err(err) => {
                self.forget(master);
                return Err(err);
            }
        };
        // A server's error (`MOVED`, `ASK`, `TRYAGAIN`…) comes back as a value: made an error
        // here, to be followed above.
        let answer = connection
            .req_packed_command(cmd)
            .await
            .and_then(Value::extract_error);
        if let Err(err) = &answer
            && (err.is_io_error() || err.is_connection_dropped() || err.is_timeout())
        {
            warn!(%master, cause = %err, "a master of the cluster failed a command");
            self.forget(master);
        }
        answer
    }

    /// `ASKING` and `cmd` on `master`, which holds the key while its slot migrates there.
    async fn ask(&self, master: SocketAddr, cmd: &Cmd) -> RedisResult<Value> {
        let mut connection = self.connection_to(master).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").ignore().add_command(cmd.clone());
        let mut answers: Vec<Value> = pipe.query_async(&mut connection).await?;
        answers
            .pop()
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "no answer after ASKING")))
    }

    /// A command without a key: `SCRIPT LOAD` goes to every master (each runs the scripts of
    /// its own rooms); anything else to the first master that answers.
    async fn send_keyless(&self, cmd: &Cmd) -> RedisResult<Value> {
        let to_all = first_arg(cmd).as_deref() == Some("SCRIPT");
        let (mut answered, mut failed) = (None, None);
        for master in self.masters() {
            match self.send_to(master, cmd).await {
                Ok(answer) if !to_all => return Ok(answer),
                Ok(answer) => answered = Some(answer),
                Err(err) => failed = Some(err),
            }
        }
        match (answered, failed) {
            (Some(answer), _) => Ok(answer),
            (None, Some(err)) => Err(err),
            (None, None) => Err(RedisError::from((
                ErrorKind::Io,
                "no master of the cluster",
            ))),
        }
    }
}

/// `CLUSTER SLOTS` on `connection`, as (first slot, last slot, master).
async fn read_slot_map(
    connection: &mut MultiplexedConnection,
) -> RedisResult<Vec<(u16, u16, SocketAddr)>> {
    let answer: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(connection)
        .await?;
    let Value::Array(ranges) = answer else {
        return Err(RedisError::from((
            ErrorKind::Parse,
            "CLUSTER SLOTS is not a list",
        )));
    };
    Ok(ranges.iter().filter_map(slot_range).collect())
}

/// Where a `MOVED` or `ASK` sends a command: the master's address, and the slot.
fn redirection(err: &RedisError) -> RedisResult<(SocketAddr, u16)> {
    err.redirect_node()
        .and_then(|(addr, slot)| Some((addr.parse().ok()?, slot)))
        .ok_or_else(|| RedisError::from((ErrorKind::Parse, "a redirection without an address")))
}

/// The command's name, upper-cased.
fn first_arg(cmd: &Cmd) -> Option<String> {
    match cmd.args_iter().next()? {
        redis::Arg::Simple(name) => Some(String::from_utf8_lossy(name).to_uppercase()),
        _ => None,
    }
}

/// The slot of the key a command is about: an `EVALSHA`'s first key, or the first argument of
/// the others (`PEXPIRE key`, `SREM key`, `SPUBLISH channel`); `None` for those without one.
fn slot_of_command(cmd: &Cmd) -> Option<u16> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = String::from_utf8_lossy(args.first()?).to_uppercase();
    let key = match name.as_str() {
        "EVALSHA" | "EVAL" | "EVALSHA_RO" | "EVAL_RO" => {
            let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.get(3)?
        }
        "PING" | "INFO" | "CLUSTER" | "SCRIPT" | "TIME" => return None,
        _ => args.get(1)?,
    };
    Some(slot_of(&String::from_utf8_lossy(key)))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnectionLike for Router {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.send(cmd))
    }

    /// A pipeline goes, whole, to the master of its first command's key: the store sends
    /// pipelines only within one slot on a cluster (`Commands::each`).
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let slot = pipeline.cmd_iter().find_map(slot_of_command);
            let master = match slot {
                Some(slot) => self.master_for(slot).await?,
                None => *self
                    .masters()
                    .first()
                    .ok_or_else(|| RedisError::from((ErrorKind::Io, "no master of the cluster")))?,
            };
            let mut connection = self.connection_to(master).await?;
            connection
                .req_packed_commands(pipeline, offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `EVALSHA` goes by its first key, other commands by their first argument, and the
    /// commands without a key by none.
    #[test]
    fn commands_are_routed_by_their_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc")
            .arg(2)
            .arg("chat:{ABC123}:room")
            .arg("chat:{ABC123}:log");
        assert_eq!(slot_of_command(&eval), Some(slot_of("ABC123")));
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg("chat:sess:{T}").arg(100);
        assert_eq!(slot_of_command(&expire), Some(slot_of("T")));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0);
        assert_eq!(slot_of_command(&keyless), None);
        assert_eq!(slot_of_command(&redis::cmd("PING")), None);
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(slot_of_command(&load), None);
    }
}
