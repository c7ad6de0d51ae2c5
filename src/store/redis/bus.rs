//! The node's pub/sub connection: the channels of the rooms where it has members, and its own
//! control channel, on which other nodes ask it to close a connection whose session moved.
//!
//! Pub/sub delivers at most once: whatever is published while the connection is down, or while
//! the actor is too busy to take it, is gone. The bus does not try to hide that. It tells the
//! actor ([`RedisEvent::Resync`]), which repairs each room from what Redis keeps.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::RedisEvent;
use super::scripts::keys;
use super::shards::{Heard, Shards};
use super::target::Target;
use super::wire;
use crate::metrics::Metrics;
use crate::store::NodeId;
use crate::types::{ClientId, RoomCode};

/// How often the bus pings its connection, to notice a silent one.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a ping or a subscription may take before the connection counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest pause between attempts to connect again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the bus is asked to do.
#[derive(Debug)]
pub enum Control {
    /// Listen to a room's channel, and say when Redis has confirmed it (or `false` if it could
    /// not), so that a member enters a room only once its node hears the room.
    Subscribe(RoomCode, oneshot::Sender<bool>),
    /// Stop listening to a room's channel: the node has no member there any more.
    Unsubscribe(RoomCode),
    /// The node has a new id (it was fenced): listen to that id's control channel.
    Node(NodeId),
}

/// A way to give the bus orders, held by the store. Orders are taken in the order they are
/// given: a room left and then entered again ends up subscribed.
#[derive(Debug, Clone)]
pub struct Bus {
    control: mpsc::UnboundedSender<Control>,
}

impl Bus {
    /// Subscribes to a room's channel; returns once Redis has confirmed it, or `false`.
    pub async fn subscribe(&self, code: RoomCode) -> bool {
        let (confirm, confirmed) = oneshot::channel();
        if self
            .control
            .send(Control::Subscribe(code, confirm))
            .is_err()
        {
            return false;
        }
        confirmed.await.unwrap_or(false)
    }

    /// Unsubscribes from a room's channel.
    pub fn unsubscribe(&self, code: RoomCode) {
        let _ = self.control.send(Control::Unsubscribe(code));
    }

    /// Listens to the control channel of the node's new id.
    pub fn set_node(&self, node: NodeId) {
        let _ = self.control.send(Control::Node(node));
    }
}

/// Starts the bus. The control channel is unbounded, but each order is one room entered or
/// left (or a new node id), given at the actor's pace, and the bus takes them even while Redis
/// is away (answering `false` to a subscription at once).
pub fn start(
    target: &Target,
    node: NodeId,
    events: mpsc::Sender<RedisEvent>,
    metrics: Arc<Metrics>,
) -> Bus {
    let (control, orders) = mpsc::unbounded_channel();
    let bus = Task {
        servers: target.pubsub(),
        next: 0,
        node,
        rooms: HashSet::new(),
        orders,
        events,
        metrics,
        dropped: false,
    };
    if target.is_cluster() {
        tokio::spawn(bus.run_sharded());
    } else {
        tokio::spawn(bus.run());
    }
    Bus { control }
}

struct Task {
    /// Where it may listen: the one Redis, or each seed of a cluster (a plain `SUBSCRIBE` on
    /// any node of a cluster hears every `PUBLISH`), tried in turn.
    servers: Vec<redis::Client>,
    /// The one to try next.
    next: usize,
    node: NodeId,
    /// The rooms whose channels the node listens to, to subscribe again after a reconnect.
    rooms: HashSet<RoomCode>,
    orders: mpsc::UnboundedReceiver<Control>,
    events: mpsc::Sender<RedisEvent>,
    metrics: Arc<Metrics>,
    /// Whether an event was dropped because the actor's queue was full.
    dropped: bool,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let server = &self.servers[self.next % self.servers.len()];
            // The next attempt, after this connection is lost or refused, tries the next one.
            self.next += 1;
            let connected = tokio::time::timeout(ANSWER_TIMEOUT, server.get_async_pubsub()).await;
            match connected {
                Ok(Ok(pubsub)) => {
                    backoff = Duration::from_millis(100);
                    let (sink, stream) = pubsub.split();
                    if !self.listen(sink, stream).await {
                        return; // The actor has stopped.
                    }
                }
                _ => {
                    debug!("pub/sub cannot reach Redis");
                    // Orders keep being taken while Redis is away.
                    let pause = tokio::time::sleep(backoff);
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            () = &mut pause => break,
                            order = self.orders.recv() => match order {
                                Some(order) => self.take_offline(order),
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// An order while there is no connection: noted for when there is one.
    fn take_offline(&mut self, order: Control) {
        match order {
            Control::Subscribe(code, confirm) => {
                let _ = confirm.send(false);
                // Not listed: the member it was for is told `UNAVAILABLE`, and did not enter.
                let _ = code;
            }
            Control::Unsubscribe(code) => {
                self.rooms.remove(&code);
            }
            Control::Node(node) => self.node = node,
        }
    }

    /// Listens on one connection until it is lost. Returns `false` once the actor has stopped.
    async fn listen(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> bool {
        let mut channels: Vec<String> =
            self.rooms.iter().map(|&code| keys::channel(code)).collect();
        channels.push(keys::node_control(self.node));
        let subscribed = tokio::time::timeout(ANSWER_TIMEOUT, sink.subscribe(&channels)).await;
        if !matches!(subscribed, Ok(Ok(()))) {
            return true;
        }
        info!(rooms = self.rooms.len(), "listening to Redis pub/sub");
        // Whatever was published while the bus was away is lost: the actor repairs every room.
        if self.events.send(RedisEvent::Resync).await.is_err() {
            return false;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        warn!("lost the pub/sub connection to Redis");
                        return true;
                    };
                    self.forward(message.get_channel_name(), message.get_payload_bytes());
                }
                order = self.orders.recv() => {
                    let Some(order) = order else { return false };
                    if !self.obey(&mut sink, order).await {
                        return true;
                    }
                }
                _ = ping.tick() => {
                    if self.dropped && self.events.try_send(RedisEvent::Resync).is_ok() {
                        self.dropped = false;
                    }
                    let pong = tokio::time::timeout(ANSWER_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        warn!("the pub/sub connection to Redis stopped answering");
                        return true;
                    }
                }
            }
        }
    }

    /// Carries out an order. Returns `false` if the connection failed doing it.
    async fn obey(&mut self, sink: &mut PubSubSink, order: Control) -> bool {
        match order {
            Control::Subscribe(code, confirm) => {
                self.rooms.insert(code);
                let done =
                    tokio::time::timeout(ANSWER_TIMEOUT, sink.subscribe(keys::channel(code))).await;
                let ok = matches!(done, Ok(Ok(())));
                let _ = confirm.send(ok);
                ok
            }
            Control::Unsubscribe(code) => {
                self.rooms.remove(&code);
                let done =
                    tokio::time::timeout(ANSWER_TIMEOUT, sink.unsubscribe(keys::channel(code)))
                        .await;
                matches!(done, Ok(Ok(())))
            }
            Control::Node(node) => {
                let old = std::mem::replace(&mut self.node, node);
                let done = tokio::time::timeout(ANSWER_TIMEOUT, async {
                    sink.unsubscribe(keys::node_control(old)).await?;
                    sink.subscribe(keys::node_control(node)).await
                })
                .await;
                matches!(done, Ok(Ok(())))
            }
        }
    }

    /// On a Redis Cluster: each channel listened to on the master of its slot, with sharded
    /// pub/sub (`shards.rs`), and moved there again when its slot moves; the rooms whose
    /// channels moved are repaired. The node's control channel is sharded too.
    async fn run_sharded(mut self) {
        let (heard_by_shards, mut heard) = mpsc::channel(1024);
        let mut shards = Shards::new(self.servers.clone(), heard_by_shards);
        shards.subscribe(keys::node_control(self.node), None).await;
        let mut tick = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                heard = heard.recv() => match heard {
                    Some(Heard::Message { channel, payload }) => self.forward(&channel, &payload),
                    Some(Heard::Homeless { channel }) => shards.homeless(channel),
                    Some(Heard::Lost { master, link }) => shards.ended(master, link),
                    None => return,
                },
                order = self.orders.recv() => {
                    let Some(order) = order else { return };
                    match order {
                        Control::Subscribe(code, confirm) => {
                            self.rooms.insert(code);
                            shards.subscribe(keys::channel(code), Some(confirm)).await;
                        }
                        Control::Unsubscribe(code) => {
                            self.rooms.remove(&code);
                            shards.unsubscribe(&keys::channel(code)).await;
                        }
                        Control::Node(node) => {
                            let old = std::mem::replace(&mut self.node, node);
                            shards.unsubscribe(&keys::node_control(old)).await;
                            shards.subscribe(keys::node_control(node), None).await;
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.dropped && self.events.try_send(RedisEvent::Resync).is_ok() {
                        self.dropped = false;
                    }
                    let silent = shards.ping().await;
                    self.metrics.redis.probe_timeouts.increment(silent as u64);
                    let moved: Vec<RoomCode> = shards
                        .rehome()
                        .await
                        .iter()
                        .filter_map(|channel| keys::channel_room(channel))
                        .filter(|code| self.rooms.contains(code))
                        .collect();
                    let (masters, homeless) = shards.state();
                    self.metrics.redis.shard_connections.set(masters as f64);
                    self.metrics.redis.homeless_channels.set(homeless as f64);
                    if !moved.is_empty() {
                        self.metrics.redis.resubscribed.increment(moved.len() as u64);
                        if self.events.send(RedisEvent::Moved(moved)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Passes a message to the actor, without waiting for it: if its queue is full, the event
    /// is dropped, and the rooms are repaired once the actor catches up.
    fn forward(&mut self, channel: &str, payload: &[u8]) {
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        let event = if let Some(code) = keys::channel_room(channel) {
            let Some(event) = wire::decode(payload) else {
                warn!(room = %code, "an event no node publishes");
                return;
            };
            self.metrics.redis.pubsub_events.increment(1);
            RedisEvent::Room(code, event)
        } else {
            match ClientId::parse(payload) {
                Some(client) => RedisEvent::Kick(client),
                None => return,
            }
        };
        if self.dropped {
            if self.events.try_send(RedisEvent::Resync).is_err() {
                return;
            }
            self.dropped = false;
        }
        if self.events.try_send(event).is_err() {
            warn!("the actor is behind: dropping a room event, to repair later");
            self.dropped = true;
        }
    }
}
