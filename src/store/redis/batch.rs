//! The steps of the hot path (chats, read receipts, typing) sent to Redis together.
//!
//! What a chat costs Redis is mostly not its script but the trip: a read of the request, a
//! write of the answer, a write to each node that hears the room. Sent one by one, at a few
//! thousand chats a second, each chat makes those system calls of its own. Sent together, a
//! batch of chats is one read, one write of their answers, and one write to each listening node
//! of everything they published (Redis writes a connection's output once per turn of its event
//! loop).
//!
//! So the store hands these steps to one batching task ([`start`]) rather than to a task each.
//! Its rule: **at most one batch every [`LINGER`]**. A step that finds the last batch older than
//! that goes at once, so a quiet room waits for nothing; under load, the steps that arrive
//! within one linger go together, and none waits longer than that. A batch is one task that
//! starts every step of it in the same turn, so their commands reach the connection's writer
//! together and leave in one write (one per master on a cluster, where each step still goes to
//! its own room's shard: a batch is never one multi-slot command).
//!
//! Order is not touched: a batch holds at most one step of a room, since a room's lane lets
//! one step out at a time (`RedisStore::submit`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Floors, Lane, Shared};
use crate::store::Step;

/// The shortest time between two batches, and so the longest a step waits for its batch.
pub const LINGER: Duration = Duration::from_millis(2);

/// A step waiting for its batch: what [`Shared::perform`] needs to run it and report.
pub struct Job {
    pub op: u64,
    pub lane: Lane,
    pub step: Step,
    pub floors: Floors,
}

/// Whether `step` goes in a batch: the steps every message or keystroke makes. The others (a
/// room entered or left, a session) are rare, and run at once in a task of their own.
pub fn is_batched(step: &Step) -> bool {
    matches!(
        step,
        Step::Chat { .. } | Step::Read { .. } | Step::Publish { .. }
    )
}

/// Starts the batching task; steps sent to the returned channel run in batches.
pub fn start(shared: Arc<Shared>) -> mpsc::UnboundedSender<Job> {
    let (jobs, waiting) = mpsc::unbounded_channel();
    tokio::spawn(gather(waiting, shared));
    jobs
}

/// Takes the steps as they come, and sends them in batches, one every [`LINGER`] at most.
async fn gather(mut waiting: mpsc::UnboundedReceiver<Job>, shared: Arc<Shared>) {
    let mut last_batch: Option<Instant> = None;
    while let Some(first) = waiting.recv().await {
        if let Some(last) = last_batch {
            tokio::time::sleep_until(last + LINGER).await;
        }
        let mut batch = vec![first];
        while let Ok(job) = waiting.try_recv() {
            batch.push(job);
        }
        last_batch = Some(Instant::now());
        shared.metrics.redis.batches.increment(1);
        shared
            .metrics
            .redis
            .batched_steps
            .increment(batch.len() as u64);
        tokio::spawn(send(batch, Arc::clone(&shared)));
    }
}

/// Runs a batch: every step started in this task's first turn, each reported as it ends.
async fn send(batch: Vec<Job>, shared: Arc<Shared>) {
    let mut running: FuturesUnordered<_> = batch
        .into_iter()
        .map(|job| Arc::clone(&shared).perform(job))
        .collect();
    while running.next().await.is_some() {}
}
