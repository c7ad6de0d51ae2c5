//! Sweeping the grace periods that have ended, whichever node held the seat: their members
//! leave for good, unless they resumed.
//!
//! Every node sweeps, and whichever comes first claims a batch of the entries that are due, on
//! a lease: a sweeper that dies before it is done leaves them to the next. A batch is one round
//! trip (`room_expire.lua` once per seat, in one pipeline) and one `ZREM` for all its entries.
//! When a reap holds thousands of seats at once, their grace periods end together too: the
//! sweeper then takes batch after batch, at most one every [`SWEEP_PACE`].

use std::sync::Arc;
use std::time::Duration;

use super::target::Commands;
use redis::RedisResult;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::RedisEvent;
use super::link::Link;
use super::scripts::{self, Scripts, keys, millis};
use crate::types::{RoomCode, SessionToken};

/// How often a node looks for grace periods that have ended.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The shortest time between two batches, while more are due.
const SWEEP_PACE: Duration = Duration::from_millis(10);

/// How long a node that claimed an ended grace period has to finish it before another node
/// takes it over.
const SWEEP_LEASE: Duration = Duration::from_secs(5);

/// How many ended grace periods a sweep takes at once.
const SWEEP_BATCH: usize = 200;

/// The task that sweeps.
pub struct Sweeper {
    pub link: Arc<Link>,
    pub scripts: Arc<Scripts>,
    /// Closed once the actor has stopped, and the sweeper with it.
    pub events: mpsc::Sender<RedisEvent>,
}

impl Sweeper {
    /// Sweeps every [`SWEEP_EVERY`], or every [`SWEEP_PACE`] while full batches are due.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Said once while sweeps keep failing (a master of a cluster down fails a bucket's
        // every sweep, four times a second), and again once they have all gone through.
        let mut failing = false;
        loop {
            tick.tick().await;
            if self.events.is_closed() {
                return;
            }
            let Some(mut redis) = self.link.connection() else {
                continue;
            };
            let mut failed = false;
            for bucket in 0..keys::GRACE_BUCKETS {
                loop {
                    match self.sweep(&mut redis, bucket).await {
                        Ok(true) => tokio::time::sleep(SWEEP_PACE).await,
                        Ok(false) => break,
                        Err(err) => {
                            if !failing {
                                warn!(cause = %err, bucket, "could not sweep grace periods");
                            }
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if failing && !failed {
                info!("sweeping grace periods again");
            }
            failing = failed;
        }
    }

    /// Ends one batch of the grace periods that are due in `bucket`. Returns whether the batch
    /// was full, so that more may be due.
    async fn sweep(&self, redis: &mut Commands, bucket: usize) -> RedisResult<bool> {
        let due: Vec<String> = self
            .scripts
            .grace_claim
            .key(keys::grace(bucket))
            .arg(millis(SWEEP_LEASE))
            .arg(SWEEP_BATCH)
            .invoke_async(redis)
            .await?;
        if due.is_empty() {
            return Ok(false);
        }
        let calls = due
            .iter()
            .filter_map(|entry| parse_entry(entry))
            .map(|(code, token, deadline)| {
                let mut call = scripts::batched(
                    &self.scripts.room_expire,
                    &[keys::room(code), keys::log(code)],
                );
                call.arg(token).arg(deadline);
                call
            })
            .collect();
        scripts::run_batch(&self.scripts.room_expire, redis, calls).await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(keys::grace(bucket))
            .arg(&due)
            .query_async(redis)
            .await?;
        Ok(due.len() == SWEEP_BATCH)
    }
}

/// A grace list entry, `CODE|TOKEN|DEADLINE` ([`scripts::grace_entry`]), read back.
fn parse_entry(entry: &str) -> Option<(RoomCode, SessionToken, u64)> {
    let mut parts = entry.splitn(3, '|');
    let code = RoomCode::parse(parts.next()?).ok()?;
    let token = SessionToken::parse(parts.next()?)?;
    let deadline = parts.next()?.parse().ok()?;
    Some((code, token, deadline))
}
