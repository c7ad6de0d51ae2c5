//! Reaping a dead node: the seats it held are held for a resume, with their grace periods filed
//! for sweeping, and the peers of its members are told `peer_disconnected`.
//!
//! A node may die with tens of thousands of rooms. The reaper works through them in batches
//! of [`REAP_BATCH`] rooms, each batch one round trip (`room_reap.lua` once per room, in one
//! pipeline) and one `grace_add.lua` for all the seats it held, at most one batch every
//! [`REAP_PACE`]: Redis runs one script at a time, and a reap that took it over would stall
//! every other node's steps and beats. After each batch the reaper renews its lease on the
//! dead node, so that a long reap is not taken for an abandoned one and done twice; a reaper
//! that loses its lease, or stops being alive itself, stops, and the next node to notice takes
//! the dead node over (every step of a reap may run twice).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::target::Commands;
use redis::{ErrorKind, RedisError, RedisResult, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::RedisEvent;
use super::failpoint;
use super::link::Link;
use super::node::{BEAT_EVERY, BEAT_GAP, DEAD_AFTER, Standing};
use super::scripts::{self, HeldSeat, Scripts, keys, millis};
use crate::store::NodeId;
use crate::types::{RoomCode, SessionToken};

/// How many rooms of a dead node one round trip reaps.
const REAP_BATCH: usize = 200;

/// The shortest time between two batches: at most 20,000 rooms a second, a few milliseconds of
/// Redis in every ten, so that the other steps and beats go on between batches.
const REAP_PACE: Duration = Duration::from_millis(10);

/// How long a reaper's claim on a dead node holds without being renewed, before another node
/// may take it over. Renewed after every batch.
const REAP_LEASE: Duration = Duration::from_secs(10);

/// How long a reaped node stays marked dead: should it come back within that time, its next
/// beat tells it that it was fenced. One that comes back later finds its seats gone when it
/// repairs its rooms.
const FENCE_FOR: Duration = Duration::from_secs(10 * 60);

/// The task that reaps dead nodes.
pub struct Reaper {
    pub link: Arc<Link>,
    pub scripts: Arc<Scripts>,
    /// What this node is: a node reaps only while it may judge others.
    pub standing: watch::Receiver<Standing>,
    /// How long a reaped member's seat is held for a resume.
    pub grace: Duration,
    /// Closed once the actor has stopped, and the reaper with it.
    pub events: mpsc::Sender<RedisEvent>,
}

impl Reaper {
    /// Looks for dead nodes every [`BEAT_EVERY`], and reaps them.
    pub async fn run(self) {
        let mut look = tokio::time::interval(BEAT_EVERY);
        look.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            look.tick().await;
            if self.events.is_closed() {
                return;
            }
            let standing = *self.standing.borrow();
            if !standing.may_judge() {
                continue;
            }
            let Some(mut redis) = self.link.connection() else {
                continue;
            };
            if let Err(err) = self.reap_the_dead(&mut redis, standing.node).await {
                warn!(cause = %err, "could not reap dead nodes");
            }
        }
    }

    /// Reaps every node but `me` that has been silent for [`DEAD_AFTER`] on a majority of the
    /// boards (`keys::BOARDS`). A board that does not answer finds no one dead.
    async fn reap_the_dead(&self, redis: &mut Commands, me: NodeId) -> RedisResult<()> {
        let mut votes: HashMap<NodeId, usize> = HashMap::new();
        let mut failures = 0;
        for board in 0..keys::BOARDS {
            match self.silent_on(redis, me, board).await {
                Ok(silent) => {
                    for node in silent {
                        *votes.entry(node).or_default() += 1;
                    }
                }
                Err(err) => {
                    debug!(board, cause = %err, "a board of beats does not answer");
                    failures += 1;
                }
            }
        }
        if failures > keys::BOARDS - keys::MAJORITY {
            return Err(RedisError::from((
                ErrorKind::Io,
                "fewer than a majority of the boards of beats answer",
            )));
        }
        let dead = votes
            .into_iter()
            .filter(|&(node, count)| node != me && count >= keys::MAJORITY);
        for (dead, _) in dead {
            self.reap(redis, me, dead).await?;
        }
        Ok(())
    }

    /// The nodes silent for [`DEAD_AFTER`] on board `board`, as `me` may judge them there
    /// (`node_dead.lua`).
    async fn silent_on(
        &self,
        redis: &mut Commands,
        me: NodeId,
        board: usize,
    ) -> RedisResult<Vec<NodeId>> {
        let silent: Vec<String> = self
            .scripts
            .node_dead
            .key(keys::live(board))
            .key(keys::since(board))
            .arg(millis(DEAD_AFTER))
            .arg(me.to_string())
            .arg(millis(BEAT_GAP))
            .invoke_async(redis)
            .await?;
        Ok(silent
            .iter()
            .filter_map(|node| NodeId::parse(node))
            .collect())
    }

    /// Reaps one dead node, unless another node is doing it.
    async fn reap(&self, redis: &mut Commands, me: NodeId, dead: NodeId) -> RedisResult<()> {
        let rooms: Option<Vec<String>> = self
            .scripts
            .node_claim
            .key(keys::node_rooms(dead))
            .key(keys::node_dead(dead))
            .key(keys::node_reaper(dead))
            .arg(millis(REAP_LEASE))
            .arg(millis(FENCE_FOR))
            .arg(me.to_string())
            .invoke_async(redis)
            .await?;
        let Some(rooms) = rooms else {
            return Ok(()); // Another node is reaping it.
        };
        let rooms: Vec<RoomCode> = rooms
            .iter()
            .filter_map(|code| RoomCode::parse(code).ok())
            .collect();
        info!(node = %dead, rooms = rooms.len(), "a node is dead: holding its members' seats");
        let started = Instant::now();
        let mut pace = tokio::time::interval(REAP_PACE);
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for batch in rooms.chunks(REAP_BATCH) {
            pace.tick().await;
            let standing = *self.standing.borrow();
            if standing.node != me || !standing.may_judge() {
                warn!(node = %dead, "stopped reaping: this node's own beats are not recorded");
                return Ok(());
            }
            let held = self.hold_seats(redis, dead, batch).await?;
            failpoint::reached("reap:held");
            scripts::file_graces(&self.scripts, redis, &held, self.grace).await?;
            self.shorten_sessions(redis, &held).await?;
            if !self.renew_lease(redis, me, dead).await? {
                warn!(node = %dead, "stopped reaping: another node took the dead node over");
                return Ok(());
            }
        }
        let _: i64 = self
            .scripts
            .node_forget
            .key(keys::node_rooms(dead))
            .key(keys::node_reaper(dead))
            .invoke_async(redis)
            .await?;
        for board in 0..keys::BOARDS {
            let unlisted: RedisResult<i64> = self
                .scripts
                .node_unlist
                .key(keys::live(board))
                .key(keys::since(board))
                .arg(dead.to_string())
                .invoke_async(redis)
                .await;
            // A board that does not answer keeps the dead node's last beat, a vote that no
            // majority joins: the other boards forgot it.
            if let Err(err) = unlisted {
                debug!(board, cause = %err, "could not take a reaped node off a board");
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        info!(node = %dead, rooms = rooms.len(), seconds, "reaped a dead node");
        Ok(())
    }

    /// Holds the seats that `dead` held in `rooms` (or gives them up, with no grace period),
    /// in one round trip, and returns those held, with the ones held already: their grace
    /// entries are filed again, in case an earlier reaper died before it filed them.
    async fn hold_seats(
        &self,
        redis: &mut Commands,
        dead: NodeId,
        rooms: &[RoomCode],
    ) -> RedisResult<Vec<HeldSeat>> {
        let dead_node = dead.to_string();
        let calls = rooms
            .iter()
            .map(|&code| {
                let mut call = scripts::batched(
                    &self.scripts.room_reap,
                    &[keys::room(code), keys::log(code)],
                );
                call.arg(&dead_node)
                    .arg(millis(self.grace))
                    .arg(millis(self.grace + scripts::GRACE_MARGIN));
                call
            })
            .collect();
        let replies = scripts::run_batch(&self.scripts.room_reap, redis, calls).await?;
        let mut held = Vec::new();
        for (&code, reply) in rooms.iter().zip(replies) {
            let Value::Array(seats) = reply else {
                continue;
            };
            for seat in seats.chunks(3) {
                if let [
                    Value::BulkString(token),
                    Value::Int(deadline),
                    Value::Int(left),
                ] = seat
                    && let Some(token) = std::str::from_utf8(token)
                        .ok()
                        .and_then(SessionToken::parse)
                    && let (Ok(deadline), Ok(left)) =
                        (u64::try_from(*deadline), u64::try_from(*left))
                {
                    if deadline > 0 {
                        held.push(HeldSeat {
                            code,
                            token,
                            deadline,
                            left,
                        });
                    } else {
                        // Given up (no grace period): its session goes with the seat, as in
                        // memory. Only with `--resume-grace 0s`, so one call each is fine.
                        scripts::forget_session(&self.scripts, redis, code, &token).await?;
                    }
                }
            }
        }
        Ok(held)
    }

    /// The sessions of the seats held live no longer than their seats may: a session key kept
    /// alive for its connection (an hour) would otherwise outlive the room by that much, the
    /// dead node being gone to shorten it. `PEXPIRE … LT` only ever shortens; a resume gives
    /// the session its full life back. One round trip for the batch.
    async fn shorten_sessions(&self, redis: &mut Commands, held: &[HeldSeat]) -> RedisResult<()> {
        if held.is_empty() {
            return Ok(());
        }
        let keep = millis(self.grace + scripts::GRACE_MARGIN);
        let shortened = held
            .iter()
            .map(|seat| {
                let mut shorten = redis::cmd("PEXPIRE");
                shorten.arg(keys::session(&seat.token)).arg(keep).arg("LT");
                shorten
            })
            .collect();
        redis.each(shortened).await.map(drop)
    }

    /// Renews this node's lease on reaping `dead`. `false`: it ran out, and another node holds
    /// it now.
    async fn renew_lease(
        &self,
        redis: &mut Commands,
        me: NodeId,
        dead: NodeId,
    ) -> RedisResult<bool> {
        let renewed: i64 = self
            .scripts
            .node_lease
            .key(keys::node_reaper(dead))
            .arg(me.to_string())
            .arg(millis(REAP_LEASE))
            .invoke_async(redis)
            .await?;
        Ok(renewed == 1)
    }
}
