//! Several nodes on one Redis (`--redis`), tested from the clients' side: each test starts its
//! own `redis-server` and two or three chat-server processes, puts the two members of a room on
//! different nodes, and checks what each client receives.
//!
//! The first tests are one set of rules run against both stores: each runs once on a server
//! that keeps everything in memory, once on two nodes sharing Redis, and once on two nodes on a
//! Redis Cluster of three masters (`tests/common/cluster.rs`), so that a rule cannot drift
//! between them. The rest only exist with several nodes. Races between nodes and a node
//! killed or restarted run twice, on three nodes: once on one Redis, once on a Redis Cluster.
//! Redis out of reach, Redis restarted or losing writes, and what Redis keeps run on one Redis;
//! their counterparts on a cluster (a master killed, failed over, migrated) are in
//! `tests/cluster.rs`.
//!
//! Without `redis-server` these tests fail under CI and say they skipped elsewhere.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use common::cluster::RedisCluster;
use common::redis::{
    Node, RedisLink, RedisServer, Reply, nodes, redis_available, send_until_accepted,
};
use common::{PATIENCE, TestClient, TestServer, pair_at};

/// The resume grace period the tests give: short, so that a test waits it out quickly.
const GRACE: &str = "2s";

/// Where the members of a room connect: one in-memory server, nodes on one Redis, or nodes on a
/// Redis Cluster.
enum Setup {
    Memory(TestServer),
    Redis {
        redis: RedisServer,
        nodes: Vec<Node>,
        /// One multi-node test at a time: each runs several processes, and their timing
        /// (heartbeats, liveness) is what many of them check.
        _turn: MutexGuard<'static, ()>,
    },
    /// Nodes on a local Redis Cluster of three masters and their replicas
    /// (`tests/common/cluster.rs`), given its seeds.
    Cluster {
        nodes: Vec<Node>,
        /// Declared after the nodes, so that they stop first.
        cluster: RedisCluster,
        _turn: MutexGuard<'static, ()>,
    },
}

/// Whose turn it is to run processes.
static TURN: Mutex<()> = Mutex::const_new(());

impl Setup {
    /// One server that keeps everything in memory, with a grace period of [`GRACE`].
    async fn memory() -> Self {
        let config = chat_server::Config {
            resume_grace: humantime::parse_duration(GRACE).expect("a duration"),
            ..chat_server::Config::default()
        };
        Setup::Memory(TestServer::with_config(config).await)
    }

    /// `n` nodes on a Redis of their own, with `--resume-grace` [`GRACE`] (unless `args` gives
    /// another) and `args`; `None`
    /// where `redis-server` is missing (outside CI).
    async fn redis(test: &str, n: usize, args: &[&str]) -> Option<Self> {
        if !redis_available(test) {
            return None;
        }
        let turn = TURN.lock().await;
        let redis = RedisServer::start().await;
        let mut all = if args.contains(&"--resume-grace") {
            vec![]
        } else {
            vec!["--resume-grace", GRACE]
        };
        all.extend_from_slice(args);
        let nodes = nodes(n, &redis.url(), &all);
        for node in &nodes {
            linked(node).await;
        }
        Some(Setup::Redis {
            redis,
            nodes,
            _turn: turn,
        })
    }

    /// `n` nodes on a Redis Cluster of their own, with `--resume-grace` [`GRACE`] and `args`;
    /// `None` where `redis-server` is missing (outside CI).
    async fn cluster(test: &str, n: usize, args: &[&str]) -> Option<Self> {
        if !redis_available(test) {
            return None;
        }
        let turn = TURN.lock().await;
        let cluster = RedisCluster::start().await;
        let mut all = vec!["--resume-grace", GRACE];
        all.extend_from_slice(args);
        let nodes = nodes(n, &cluster.seeds().await, &all);
        for node in &nodes {
            linked(node).await;
        }
        Some(Setup::Cluster {
            nodes,
            cluster,
            _turn: turn,
        })
    }

    /// The WebSocket URL of node `i` (any `i`: they are taken in turn).
    fn url(&self, i: usize) -> String {
        match self {
            Setup::Memory(server) => server.ws_url(),
            Setup::Redis { nodes, .. } | Setup::Cluster { nodes, .. } => {
                nodes[i % nodes.len()].ws_url()
            }
        }
    }

    /// The nodes (none in memory).
    fn nodes(&self) -> &[Node] {
        match self {
            Setup::Memory(_) => &[],
            Setup::Redis { nodes, .. } | Setup::Cluster { nodes, .. } => nodes,
        }
    }

    /// The nodes, to stop or kill them (none in memory).
    fn nodes_mut(&mut self) -> &mut [Node] {
        match self {
            Setup::Memory(_) => &mut [],
            Setup::Redis { nodes, .. } | Setup::Cluster { nodes, .. } => nodes,
        }
    }

    /// Runs one command about `key` on the Redis that holds it: the one Redis, or the master
    /// of the key's slot.
    async fn command(&self, key: &str, args: &[&str]) -> Reply {
        match self {
            Setup::Memory(_) => panic!("no Redis in memory"),
            Setup::Redis { redis, .. } => redis.command(args).await,
            Setup::Cluster { cluster, .. } => {
                let master = cluster.master_of_key(key).await;
                cluster.command(master, args).await
            }
        }
    }

    async fn named(&self, i: usize, name: &str) -> TestClient {
        let mut client = TestClient::connect(&self.url(i)).await;
        client.set_username(name).await;
        client
    }

    /// A room with its host on node 0 and its guest on node 1.
    async fn pair(&self, host: &str, guest: &str) -> (TestClient, TestClient, String) {
        pair_at(&self.url(0), &self.url(1), host, guest).await
    }
}

/// Waits until `node` has reached Redis (`/healthz` says 200), as a balancer would before
/// sending it anyone: a node that has not yet answers `UNAVAILABLE`.
async fn linked(node: &Node) {
    let deadline = Instant::now() + PATIENCE;
    while node.healthz().await != 200 {
        assert!(Instant::now() < deadline, "the node reaches Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node started with `args`, once it has reached Redis.
async fn node(args: &[&str]) -> Node {
    let node = Node::start(args);
    linked(&node).await;
    node
}

/// Runs a scenario once on each store: in memory, on one Redis, and on a Redis Cluster.
macro_rules! on_both_stores {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn in_memory() {
                super::$scenario(&Setup::memory().await).await;
            }

            #[tokio::test]
            async fn on_two_nodes_sharing_redis() {
                let test = concat!(stringify!($scenario), "::on_two_nodes_sharing_redis");
                if let Some(setup) = Setup::redis(test, 2, &[]).await {
                    super::$scenario(&setup).await;
                }
            }

            #[tokio::test]
            async fn on_two_nodes_sharing_a_redis_cluster() {
                let test = concat!(
                    stringify!($scenario),
                    "::on_two_nodes_sharing_a_redis_cluster"
                );
                if let Some(setup) = Setup::cluster(test, 2, &[]).await {
                    super::$scenario(&setup).await;
                }
            }
        }
    };
}

/// Runs a scenario of three nodes (each started with `args`) once on one Redis and once on a
/// Redis Cluster.
macro_rules! on_redis_and_cluster {
    ($scenario:ident, $args:expr) => {
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn on_one_redis() {
                let test = concat!(stringify!($scenario), "::on_one_redis");
                if let Some(mut setup) = Setup::redis(test, 3, $args).await {
                    super::$scenario(&mut setup).await;
                }
            }

            #[tokio::test]
            async fn on_a_redis_cluster() {
                let test = concat!(stringify!($scenario), "::on_a_redis_cluster");
                if let Some(mut setup) = Setup::cluster(test, 3, $args).await {
                    super::$scenario(&mut setup).await;
                }
            }
        }
    };
}

/// The `chat` messages among `messages`, as (id, from, content).
fn chats(messages: &[Value]) -> Vec<(u64, String, String)> {
    messages
        .iter()
        .filter(|m| m["type"] == "chat")
        .map(|m| {
            (
                m["id"].as_u64().expect("an id"),
                m["from"].as_str().expect("a sender").to_string(),
                m["content"].as_str().expect("content").to_string(),
            )
        })
        .collect()
}

/// Reads `count` chat messages, skipping nothing else: anything but a chat fails the test.
async fn read_chats(client: &mut TestClient, count: usize) -> Vec<(u64, String, String)> {
    let mut received = Vec::new();
    while received.len() < count {
        received.push(client.expect("chat").await);
    }
    chats(&received)
}

// One set of rules, on both stores.

/// Both members receive every message, their own echo included, exactly once and in id order,
/// with ids that increase by one, while both send at once.
async fn one_order_per_room(setup: &Setup) {
    let (mut host, mut guest, _) = setup.pair("ada", "bob").await;
    const EACH: usize = 40;
    for i in 0..EACH {
        host.chat(&format!("ada {i}")).await;
        guest.chat(&format!("bob {i}")).await;
    }
    let seen_by_host = read_chats(&mut host, 2 * EACH).await;
    let seen_by_guest = read_chats(&mut guest, 2 * EACH).await;
    assert_eq!(seen_by_host, seen_by_guest, "both see one order");
    let ids: Vec<u64> = seen_by_host.iter().map(|(id, ..)| *id).collect();
    assert_eq!(ids, (1..=2 * EACH as u64).collect::<Vec<_>>());
    for who in ["ada", "bob"] {
        let said: Vec<&str> = seen_by_host
            .iter()
            .filter(|(_, from, _)| from == who)
            .map(|(.., content)| content.as_str())
            .collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{who} {i}")).collect();
        assert_eq!(
            said, expected,
            "{who}'s messages, each once, in the order sent"
        );
    }
    host.expect_nothing_pending().await;
    guest.expect_nothing_pending().await;
}
on_both_stores!(one_order_per_room);

/// How many rooms chat at once in the batching test: enough that their steps meet in Redis.
const BUSY_ROOMS: usize = 400;
/// How many messages each member of each room sends there, all at once.
const BUSY_EACH: usize = 4;
/// Every test client comes from 127.0.0.1, and sends at once.
const BUSY_FLAGS: &[&str] = &["--max-connections-per-ip", "0", "--rate-limit", "0"];

/// Many rooms spanning two nodes, every member sending at once: each member receives every
/// message of its room once and in order, and the nodes sent the steps to Redis in batches
/// (`store/redis/batch.rs`), several steps to a batch, not one.
async fn many_rooms_chatting_at_once_go_to_redis_in_batches(setup: &Setup) {
    let mut rooms = Vec::with_capacity(BUSY_ROOMS);
    for r in 0..BUSY_ROOMS {
        let (host, guest, _) = setup.pair(&format!("h{r}"), &format!("g{r}")).await;
        rooms.push((host, guest));
    }
    for (host, guest) in &mut rooms {
        for i in 0..BUSY_EACH {
            host.chat(&format!("h {i}")).await;
            guest.chat(&format!("g {i}")).await;
        }
    }
    for (host, guest) in &mut rooms {
        let seen_by_host = read_chats(host, 2 * BUSY_EACH).await;
        let seen_by_guest = read_chats(guest, 2 * BUSY_EACH).await;
        assert_eq!(seen_by_host, seen_by_guest, "both see one order");
        let ids: Vec<u64> = seen_by_host.iter().map(|(id, ..)| *id).collect();
        assert_eq!(ids, (1..=2 * BUSY_EACH as u64).collect::<Vec<_>>());
        for (prefix, from_host) in [("h", true), ("g", false)] {
            let said: Vec<&str> = seen_by_host
                .iter()
                .filter(|(_, from, _)| from.starts_with('h') == from_host)
                .map(|(.., content)| content.as_str())
                .collect();
            let expected: Vec<String> = (0..BUSY_EACH).map(|i| format!("{prefix} {i}")).collect();
            assert_eq!(said, expected, "each message once, in the order sent");
        }
    }
    let (mut batches, mut steps) = (0.0, 0.0);
    for node in setup.nodes() {
        batches += node.metric("chat_redis_batches_total").await.unwrap_or(0.0);
        steps += node
            .metric("chat_redis_batched_steps_total")
            .await
            .unwrap_or(0.0);
    }
    let chats = (BUSY_ROOMS * 2 * BUSY_EACH) as f64;
    assert!(steps >= chats, "every chat went in a batch: {steps} steps");
    assert!(
        steps >= 2.0 * batches,
        "{steps} steps in {batches} batches: the steps of different rooms went together"
    );
}

#[tokio::test]
async fn many_rooms_chatting_at_once_go_to_one_redis_in_batches() {
    let test = "many_rooms_chatting_at_once_go_to_one_redis_in_batches";
    if let Some(setup) = Setup::redis(test, 2, BUSY_FLAGS).await {
        many_rooms_chatting_at_once_go_to_redis_in_batches(&setup).await;
    }
}

#[tokio::test]
async fn many_rooms_chatting_at_once_go_to_a_redis_cluster_in_batches() {
    let test = "many_rooms_chatting_at_once_go_to_a_redis_cluster_in_batches";
    if let Some(setup) = Setup::cluster(test, 2, BUSY_FLAGS).await {
        many_rooms_chatting_at_once_go_to_redis_in_batches(&setup).await;
    }
}

/// Typing reaches the peer; the peer sees it stop before the message it turned into, and
/// before the typist leaves.
async fn typing_stops_before_what_ended_it(setup: &Setup) {
    let (mut host, mut guest, _) = setup.pair("ada", "bob").await;
    host.send(json!({"type": "typing"})).await;
    assert_eq!(guest.expect("typing").await["username"], "ada");
    host.chat("done typing").await;
    assert_eq!(guest.expect("stop_typing").await["username"], "ada");
    assert_eq!(guest.expect("chat").await["content"], "done typing");
    host.expect("chat").await;
    host.send(json!({"type": "typing"})).await;
    guest.expect("typing").await;
    host.send(json!({"type": "leave_room"})).await;
    host.expect("room_left").await;
    guest.expect("stop_typing").await;
    let left = guest.expect("peer_left").await;
    assert_eq!(
        (&left["username"], &left["reason"]),
        (&json!("ada"), &json!("left"))
    );
    guest.expect_nothing_pending().await;
}
on_both_stores!(typing_stops_before_what_ended_it);

/// A member who joins while the host is typing never hears `typing`, but is told
/// `stop_typing` before the message the typing turned into, as any peer is.
async fn a_joiner_hears_typing_end_before_the_message(setup: &Setup) {
    let mut host = setup.named(0, "ada").await;
    let code = host.create_room().await;
    host.send(json!({"type": "typing"})).await;
    let mut guest = setup.named(1, "bob").await;
    guest.join(&code).await;
    host.expect("peer_joined").await;
    host.chat("typed while bob came").await;
    assert_eq!(guest.expect("stop_typing").await["username"], "ada");
    assert_eq!(
        guest.expect("chat").await["content"],
        "typed while bob came"
    );
    host.expect("chat").await;
    guest.expect_nothing_pending().await;
}
on_both_stores!(a_joiner_hears_typing_end_before_the_message);

/// A message that ends its sender's typing is one publish in Redis: the message itself tells
/// the peer's node that the typing ended, with no `StopTyping` of its own.
#[tokio::test]
async fn a_typed_message_is_one_publish() {
    let Some(Setup::Redis { redis, nodes, .. }) =
        Setup::redis("a_typed_message_is_one_publish", 2, &[]).await
    else {
        return;
    };
    let (mut host, mut guest, _) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    host.send(json!({"type": "typing"})).await;
    guest.expect("typing").await;
    redis.command(&["CONFIG", "RESETSTAT"]).await;
    host.chat("done typing").await;
    assert_eq!(guest.expect("stop_typing").await["username"], "ada");
    guest.expect("chat").await;
    host.expect("chat").await;
    let stats = match redis.command(&["INFO", "commandstats"]).await {
        Reply::Bulk(Some(stats)) => stats,
        other => panic!("INFO answers with a string, not {other:?}"),
    };
    let publishes = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .map(|calls| calls.parse::<u64>().expect("a count"));
    assert_eq!(publishes, Some(1), "{stats}");
}

/// A joiner gets the conversation so far; once a member leaves, the next joiner gets nothing
/// of what was said before.
async fn history_for_joiners_and_its_end(setup: &Setup) {
    let mut host = setup.named(0, "ada").await;
    let code = host.create_room().await;
    for text in ["one", "two", "three"] {
        host.chat(text).await;
        host.expect("chat").await;
    }
    let mut guest = setup.named(1, "bob").await;
    let joined = guest.join(&code).await;
    let history: Vec<&str> = joined["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect();
    assert_eq!(history, ["one", "two", "three"]);
    host.expect("peer_joined").await;
    guest.send(json!({"type": "leave_room"})).await;
    guest.expect("room_left").await;
    host.expect("peer_left").await;
    let mut next = setup.named(2, "cy").await;
    let joined = next.join(&code).await;
    assert_eq!(joined["history"], json!([]), "{joined}");
}
on_both_stores!(history_for_joiners_and_its_end);

/// A member whose connection drops resumes (on another node, with Redis): it gets what it
/// missed exactly once and in order, and its peer sees `peer_disconnected` then
/// `peer_reconnected`, and its receipts.
async fn resume_gets_what_was_missed(setup: &Setup) {
    let (mut host, mut guest, code) = setup.pair("ada", "bob").await;
    host.chat("before").await;
    host.expect("chat").await;
    let seen = guest.expect("chat").await["id"].as_u64().expect("an id");
    let token = guest.session_token.clone();
    drop(guest); // The connection ends without a close handshake.
    assert_eq!(host.expect("peer_disconnected").await["username"], "bob");
    for text in ["missed 1", "missed 2"] {
        host.chat(text).await;
        host.expect("chat").await;
    }
    host.send(json!({"type": "read", "up_to": 3})).await;
    let mut back = TestClient::connect(&setup.url(2)).await;
    back.send(json!({"type": "resume", "session_token": token, "last_id": seen}))
        .await;
    let resumed = back.expect("resumed").await;
    assert_eq!(resumed["room_code"], code);
    assert_eq!(resumed["peer"], "ada");
    let missed: Vec<&str> = resumed["missed"]
        .as_array()
        .expect("missed")
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect();
    assert_eq!(missed, ["missed 1", "missed 2"]);
    let receipt = back.expect("read").await;
    assert_eq!(
        (&receipt["username"], &receipt["up_to"]),
        (&json!("ada"), &json!(3))
    );
    assert_eq!(host.expect("peer_reconnected").await["username"], "bob");
    host.chat("after").await;
    host.expect("chat").await;
    assert_eq!(back.expect("chat").await["content"], "after");
    back.expect_nothing_pending().await;
    host.expect_nothing_pending().await;
}
on_both_stores!(resume_gets_what_was_missed);

/// A resume while the old connection is still open (another tab, or a connection not yet known
/// dead) closes the old one with 4000, wherever it is.
async fn resume_closes_the_old_connection(setup: &Setup) {
    let (_host, mut guest, _) = setup.pair("ada", "bob").await;
    let mut back = TestClient::connect(&setup.url(2)).await;
    back.send(json!({"type": "resume", "session_token": guest.session_token, "last_id": 0}))
        .await;
    back.expect("resumed").await;
    let close = guest.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
}
on_both_stores!(resume_closes_the_old_connection);

/// A takeover while the peer talks: the member's new connection, on the node that already hears
/// the room, gets every message after its `last_id` once and in order, between `missed` and the
/// live ones, however the resume and the peer's messages interleave (three rounds).
async fn a_resume_while_the_peer_talks_misses_nothing(setup: &Setup) {
    let (mut host, mut guest, _) = setup.pair("ada", "bob").await;
    let token = guest.session_token.clone();
    let mut last_id = 0;
    for round in 0..3 {
        let flood = async {
            let mut ids = Vec::new();
            for n in 0..30 {
                host.chat(&format!("round {round}, {n}")).await;
                // Paced, so that the resume lands among the messages rather than after them.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // The host's echoes, around what it is told of the takeover.
            while ids.len() < 30 {
                let message = host.recv().await;
                match message["type"].as_str() {
                    Some("chat") => ids.push(message["id"].as_u64().expect("an id")),
                    Some("peer_disconnected" | "peer_reconnected") => {}
                    _ => panic!("the host is told {message}"),
                }
            }
            ids
        };
        let takeover = async {
            let mut back = TestClient::connect(&setup.url(1)).await;
            back.send(json!({"type": "resume", "session_token": token, "last_id": last_id}))
                .await;
            let resumed = back.expect("resumed").await;
            let missed: Vec<u64> = resumed["missed"]
                .as_array()
                .expect("missed")
                .iter()
                .map(|chat| chat["id"].as_u64().expect("an id"))
                .collect();
            (back, missed)
        };
        let (sent, (mut back, mut received)) = tokio::join!(flood, takeover);
        let newest = *sent.last().expect("30 sent");
        while received.last().copied().unwrap_or(last_id) < newest {
            let message = back.recv().await;
            if message["type"] == "chat" {
                received.push(message["id"].as_u64().expect("an id"));
            }
        }
        let expected: Vec<u64> = (last_id + 1..=newest).collect();
        assert_eq!(
            received, expected,
            "round {round}: every message once, in order"
        );
        let close = guest.expect_close().await;
        assert_eq!(close.map(|frame| u16::from(frame.code)), Some(4000));
        back.expect_nothing_pending().await;
        guest = back;
        last_id = newest;
    }
}
on_both_stores!(a_resume_while_the_peer_talks_misses_nothing);

/// A retried message with the same `client_msg_id` is answered with the original, and stored
/// once.
async fn a_retry_never_duplicates(setup: &Setup) {
    let (mut host, mut guest, _) = setup.pair("ada", "bob").await;
    let message = json!({"type": "chat", "content": "once", "client_msg_id": "m-1"});
    host.send(message.clone()).await;
    let first = host.expect("chat").await;
    assert_eq!(first["client_msg_id"], "m-1");
    host.send(message).await;
    assert_eq!(host.expect("chat").await, first, "the original, again");
    assert_eq!(guest.expect("chat").await, first);
    host.chat("next").await;
    assert_eq!(
        guest.expect("chat").await["id"],
        first["id"].as_u64().expect("id") + 1
    );
}
on_both_stores!(a_retry_never_duplicates);

/// A `client_msg_id` is matched whole, whatever it holds (one that is a prefix of another, or
/// that holds tabs, newlines and backslashes, as a store's own bookkeeping might), and each of
/// the sender's last 100 is remembered.
async fn retry_ids_are_matched_whole(setup: &Setup) {
    let (mut host, mut guest, _) = setup.pair("ada", "bob").await;
    // A hundred plain ids, then the awkward ones: the last 100 hold all of the awkward ones.
    let mut ids: Vec<String> = (0..100).map(|n| format!("n-{n}")).collect();
    ids.extend(
        ["m\t1\nm", "m", "m-1", "m-10", "m\\", "\n1\t", "é🙂"]
            .iter()
            .map(|id| id.to_string()),
    );
    let mut sent = Vec::new();
    for id in &ids {
        host.send(json!({"type": "chat", "content": "x", "client_msg_id": id}))
            .await;
        let chat = host.expect("chat").await;
        assert_eq!(chat["client_msg_id"].as_str(), Some(id.as_str()));
        assert_eq!(guest.expect("chat").await, chat);
        sent.push(chat);
    }
    let ids_sent: Vec<u64> = sent
        .iter()
        .map(|chat| chat["id"].as_u64().expect("id"))
        .collect();
    assert!(
        ids_sent.windows(2).all(|w| w[1] == w[0] + 1),
        "each a new message: {ids_sent:?}"
    );
    // The sender's connection drops, and it resumes (on another node) to try them again, as the
    // web client does after a reconnect: each of the last 100 gets its own original back, and
    // nothing new reaches the peer.
    let token = host.session_token.clone();
    drop(host);
    guest.expect("peer_disconnected").await;
    let mut back = TestClient::connect(&setup.url(1)).await;
    let last_id = ids_sent.last().copied();
    back.send(json!({"type": "resume", "session_token": token, "last_id": last_id}))
        .await;
    assert_eq!(back.expect("resumed").await["missed"], json!([]));
    guest.expect("peer_reconnected").await;
    for (id, original) in ids.iter().zip(&sent).skip(ids.len() - 100) {
        back.send(json!({"type": "chat", "content": "x", "client_msg_id": id}))
            .await;
        assert_eq!(&back.expect("chat").await, original, "{id:?}");
    }
    guest.expect_nothing_pending().await;
}
on_both_stores!(retry_ids_are_matched_whole);

/// The sender's last 100 `client_msg_id`s are remembered, and no more: a repeat of the 100th
/// last is answered with its original, while the 101st last (and older) is a new message, which
/// the peer receives, and counts from then on. 111 messages, so that Redis has dropped old
/// entries from its buckets of recent ids.
async fn exactly_the_last_100_ids_are_remembered(setup: &Setup) {
    let (mut host, mut guest, _) = setup.pair("ada", "bob").await;
    let mut sent = Vec::new();
    for n in 0..111 {
        host.send(json!({"type": "chat", "content": "x", "client_msg_id": format!("n-{n}")}))
            .await;
        let chat = host.expect("chat").await;
        assert_eq!(guest.expect("chat").await, chat);
        sent.push(chat);
    }
    // n-11 is the 100th last: a repeat.
    host.send(json!({"type": "chat", "content": "x", "client_msg_id": "n-11"}))
        .await;
    assert_eq!(host.expect("chat").await, sent[11], "the 100th last, again");
    guest.expect_nothing_pending().await;
    // n-10 is the 101st last, and n-0 older still: new messages, one after the other.
    let mut next = sent[110]["id"].as_u64().expect("id");
    for old in ["n-10", "n-0"] {
        host.send(json!({"type": "chat", "content": "x", "client_msg_id": old}))
            .await;
        let again = host.expect("chat").await;
        next += 1;
        assert_eq!(again["id"].as_u64(), Some(next), "{old} is a new message");
        assert_eq!(guest.expect("chat").await, again);
        sent.push(again);
    }
    // Used again, an id counts from its new use.
    host.send(json!({"type": "chat", "content": "x", "client_msg_id": "n-10"}))
        .await;
    assert_eq!(host.expect("chat").await, sent[111], "n-10's new message");
    guest.expect_nothing_pending().await;
}
on_both_stores!(exactly_the_last_100_ids_are_remembered);

/// The name rule and the cap: a joiner with the host's name is refused, and a third is refused.
async fn names_and_the_cap(setup: &Setup) {
    let (_host, _guest, code) = setup.pair("ada", "bob").await;
    let mut third = setup.named(2, "cy").await;
    third
        .send(json!({"type": "join_room", "room_code": code}))
        .await;
    third.expect_error("ROOM_FULL").await;
    let mut host = setup.named(0, "dee").await;
    let code = host.create_room().await;
    let mut same = setup.named(1, "dee").await;
    same.send(json!({"type": "join_room", "room_code": code}))
        .await;
    same.expect_error("USERNAME_TAKEN").await;
}
on_both_stores!(names_and_the_cap);

/// An end-to-end encrypted room is one on every node: the joiner is told so, its plain text is
/// refused, and envelopes reach the peer exactly as sent.
async fn the_encrypted_flag_travels_with_the_room(setup: &Setup) {
    let mut host = setup.named(0, "ada").await;
    host.send(json!({"type": "create_room", "encrypted": true}))
        .await;
    let created = host.expect("room_created").await;
    assert_eq!(created["encrypted"], true, "{created}");
    let code = created["room_code"].as_str().expect("a code").to_string();
    let mut guest = setup.named(1, "bob").await;
    let joined = guest.join(&code).await;
    assert_eq!(joined["encrypted"], true, "{joined}");
    host.expect("peer_joined").await;
    guest.chat("in the clear").await;
    guest.expect_error("ENCRYPTION_REQUIRED").await;
    let key = common::e2e::room_key(&common::e2e::new_link_key(), &code);
    let envelope = common::e2e::seal(&key, &code, "bob", "sealed");
    guest
        .send(json!({"type": "chat", "content": envelope, "encrypted": true}))
        .await;
    let relayed = host.expect("chat").await;
    assert_eq!(
        (&relayed["content"], &relayed["encrypted"]),
        (&json!(envelope), &json!(true))
    );
    assert_eq!(
        common::e2e::open(&key, &code, "bob", &envelope).as_deref(),
        Some("sealed")
    );
}
on_both_stores!(the_encrypted_flag_travels_with_the_room);

/// An encrypted room's `key_check` travels with the room, exactly as its creator sent it: back
/// in `room_created`, to a joiner on another node in `room_joined`, and in `resumed` on a third
/// node, so a page with a wrong link finds out at once wherever it lands.
async fn the_key_check_travels_with_the_room(setup: &Setup) {
    const CHECK: &str = "Zk9-_x3Q0aBcDeFgHiJkLm";
    let mut host = setup.named(0, "ada").await;
    host.send(json!({"type": "create_room", "encrypted": true, "key_check": CHECK}))
        .await;
    let created = host.expect("room_created").await;
    assert_eq!(created["key_check"], CHECK, "{created}");
    let code = created["room_code"].as_str().expect("a code").to_string();
    let mut guest = setup.named(1, "bob").await;
    let joined = guest.join(&code).await;
    assert_eq!(
        (&joined["encrypted"], &joined["key_check"]),
        (&json!(true), &json!(CHECK)),
        "{joined}"
    );
    let mut back = TestClient::connect(&setup.url(2)).await;
    back.send(json!({"type": "resume", "session_token": guest.session_token, "last_id": 0}))
        .await;
    let resumed = back.expect("resumed").await;
    assert_eq!(resumed["key_check"], CHECK, "{resumed}");
}
on_both_stores!(the_key_check_travels_with_the_room);

// Only with several nodes.

/// Three nodes on one Redis, or `None` (skipped).
async fn three_nodes(
    test: &str,
    args: &[&str],
) -> Option<(RedisServer, Vec<Node>, MutexGuard<'static, ()>)> {
    let Setup::Redis {
        redis,
        nodes,
        _turn,
    } = Setup::redis(test, 3, args).await?
    else {
        unreachable!("Setup::redis makes nodes");
    };
    Some((redis, nodes, _turn))
}

/// A room code is never issued twice, whichever node creates it: hosts on three nodes create
/// rooms at once, and every code is different and joinable.
async fn codes_are_never_issued_twice(setup: &mut Setup) {
    let nodes = setup.nodes();
    let mut creators = Vec::new();
    for i in 0..60 {
        let url = nodes[i % 3].ws_url();
        creators.push(tokio::spawn(async move {
            let mut client = TestClient::connect(&url).await;
            client.set_username(&format!("host{i}")).await;
            (client.create_room().await, client)
        }));
    }
    let mut codes = HashSet::new();
    let mut hosts = Vec::new();
    for creator in creators {
        let (code, client) = creator.await.expect("a creator");
        assert!(codes.insert(code.clone()), "{code} issued twice");
        hosts.push((code, client));
    }
    // Each code leads to its own host.
    for (i, (code, mut host)) in hosts.into_iter().enumerate().take(6) {
        let mut guest = TestClient::connect(&nodes[(i + 1) % 3].ws_url()).await;
        guest.set_username("guest").await;
        let joined = guest.join(&code).await;
        assert_eq!(joined["peer"], format!("host{i}"));
        host.expect("peer_joined").await;
    }
}

on_redis_and_cluster!(codes_are_never_issued_twice, &[]);

/// Two guests who join the same room at the same moment through different nodes: exactly one
/// `room_joined` and one `ROOM_FULL`, every time.
async fn a_join_race_seats_one(setup: &mut Setup) {
    let nodes = setup.nodes();
    for round in 0..25 {
        let mut host = TestClient::connect(&nodes[0].ws_url()).await;
        host.set_username("host").await;
        let code = host.create_room().await;
        let mut guests = Vec::new();
        for (i, node) in nodes[1..].iter().enumerate() {
            let mut guest = TestClient::connect(&node.ws_url()).await;
            guest.set_username(&format!("guest{i}")).await;
            guests.push(guest);
        }
        let request = json!({"type": "join_room", "room_code": code});
        let (a, b) = guests.split_at_mut(1);
        let (first, second) = tokio::join!(a[0].send(request.clone()), b[0].send(request.clone()));
        let ((), ()) = (first, second);
        let (one, two) = tokio::join!(a[0].recv(), b[0].recv());
        let mut outcomes = [one, two]
            .iter()
            .map(|m| match m["type"].as_str() {
                Some("error") => m["code"].as_str().unwrap_or("?").to_string(),
                other => other.unwrap_or("?").to_string(),
            })
            .collect::<Vec<_>>();
        outcomes.sort();
        assert_eq!(outcomes, ["ROOM_FULL", "room_joined"], "round {round}");
        host.expect("peer_joined").await;
        host.expect_nothing_pending().await;
    }
}

on_redis_and_cluster!(a_join_race_seats_one, &["--max-failed-joins", "0"]);

/// The name rule under a race: a guest with the host's name and another guest join at once
/// through different nodes. The first is never seated (`USERNAME_TAKEN`, or `ROOM_FULL` if the
/// other was seated first), and the second always is.
async fn a_name_race_seats_one(setup: &mut Setup) {
    let nodes = setup.nodes();
    for round in 0..10 {
        let mut host = TestClient::connect(&nodes[0].ws_url()).await;
        host.set_username("same").await;
        let code = host.create_room().await;
        let mut a = TestClient::connect(&nodes[1].ws_url()).await;
        a.set_username("same").await;
        let mut b = TestClient::connect(&nodes[2].ws_url()).await;
        b.set_username("other").await;
        let request = json!({"type": "join_room", "room_code": code});
        let ((), ()) = tokio::join!(a.send(request.clone()), b.send(request.clone()));
        let refused = a.expect("error").await;
        assert!(
            refused["code"] == "USERNAME_TAKEN" || refused["code"] == "ROOM_FULL",
            "round {round}: {refused}"
        );
        b.expect("room_joined").await;
        host.expect("peer_joined").await;
        host.expect_nothing_pending().await;
    }
}

on_redis_and_cluster!(a_name_race_seats_one, &["--max-failed-joins", "0"]);

/// A node killed with SIGKILL: its member's peer on a surviving node gets `peer_disconnected`
/// within the documented bound (node liveness: silent for 5 s, noticed within a beat), then
/// `peer_left` when the grace period ends.
async fn a_killed_node_s_members_are_let_go(setup: &mut Setup) {
    let nodes = setup.nodes_mut();
    let (mut host, guest, _code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    nodes[1].sigkill();
    let killed = Instant::now();
    assert_eq!(host.expect("peer_disconnected").await["username"], "bob");
    let noticed = killed.elapsed();
    assert!(
        noticed < Duration::from_secs(8),
        "noticed after {noticed:?}"
    );
    let left = host.expect("peer_left").await;
    assert_eq!(left["reason"], "disconnected");
    host.expect_nothing_pending().await;
    // The dead member's session runs out with its seat (the grace period and a minute), not an
    // hour later as a connected session would.
    let session = format!("chat:sess:{{{}}}", guest.session_token);
    let ttl = setup
        .command(&session, &["PTTL", &session])
        .await
        .into_integer();
    assert!(
        ttl == -2 || (0..=62_000).contains(&ttl),
        "{session} lives {ttl} ms more"
    );
}

on_redis_and_cluster!(a_killed_node_s_members_are_let_go, &[]);

/// A node killed with SIGKILL, whose client resumes on a surviving node: no accepted message is
/// lost, and its peer sees it reconnect.
async fn a_killed_node_s_members_resume_elsewhere(setup: &mut Setup) {
    let nodes = setup.nodes_mut();
    let (mut host, mut guest, _code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    guest.chat("sent before the crash").await;
    let last = guest.expect("chat").await["id"].as_u64().expect("id");
    host.expect("chat").await;
    nodes[1].sigkill();
    host.chat("while bob's node is dead").await;
    host.expect("chat").await;
    host.expect("peer_disconnected").await;
    let mut back = TestClient::connect(&nodes[2].ws_url()).await;
    back.send(json!({"type": "resume", "session_token": guest.session_token, "last_id": last}))
        .await;
    let resumed = back.expect("resumed").await;
    assert_eq!(
        chats(resumed["missed"].as_array().expect("missed")).len(),
        1
    );
    assert_eq!(resumed["missed"][0]["content"], "while bob's node is dead");
    host.expect("peer_reconnected").await;
    back.chat("back").await;
    assert_eq!(host.expect("chat").await["content"], "back");
}

on_redis_and_cluster!(a_killed_node_s_members_resume_elsewhere, &[]);

/// A rolling restart: SIGTERM closes the node's connections with 1012 and keeps their seats;
/// the client resumes on another node; its peer sees at most `peer_disconnected` and
/// `peer_reconnected`, and misses nothing.
async fn a_rolling_restart_loses_nothing(setup: &mut Setup) {
    let nodes = setup.nodes_mut();
    let (mut host, mut guest, _code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    nodes[1].sigterm();
    let (_, close) = guest.read_to_close().await;
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
    assert!(nodes[1].exited().await.success());
    assert_eq!(host.expect("peer_disconnected").await["username"], "bob");
    host.chat("during the restart").await;
    host.expect("chat").await;
    let mut back = TestClient::connect(&nodes[2].ws_url()).await;
    back.send(json!({"type": "resume", "session_token": guest.session_token, "last_id": 0}))
        .await;
    let resumed = back.expect("resumed").await;
    assert_eq!(resumed["missed"][0]["content"], "during the restart");
    // The peer saw the member go and come back, and nothing else.
    assert_eq!(host.expect("peer_reconnected").await["username"], "bob");
    host.expect_nothing_pending().await;
}

on_redis_and_cluster!(a_rolling_restart_loses_nothing, &[]);

/// Two nodes on one Redis, one of them (`cut_off`) reaching it through a link the test can cut.
struct CutOff {
    _turn: MutexGuard<'static, ()>,
    /// Running as long as the test holds it.
    _redis: RedisServer,
    link: RedisLink,
    steady: Node,
    cut_off: Node,
}

impl CutOff {
    /// The two nodes, each started with `args`; `None` where `redis-server` is missing.
    async fn start(test: &str, args: &[&str]) -> Option<Self> {
        if !redis_available(test) {
            return None;
        }
        let _turn = TURN.lock().await;
        let redis = RedisServer::start().await;
        let link = RedisLink::start(redis.addr()).await;
        let steady = node(&[&["--redis", &redis.url()], args].concat()).await;
        let cut_off = node(&[&["--redis", &link.url()], args].concat()).await;
        Some(CutOff {
            _turn,
            _redis: redis,
            link,
            steady,
            cut_off,
        })
    }
}

/// Redis out of reach of one node, for less than the node waits before it lets its clients go:
/// the node keeps its connections, a request that needs Redis gets `UNAVAILABLE`, `/healthz`
/// says 503 (from its first missed beat); once Redis is back, every message accepted before
/// and during the cut reaches both members, exactly once and in order (the node repairs what
/// its pub/sub missed), and a retry with the same `client_msg_id` is not stored twice.
#[tokio::test]
async fn redis_out_of_reach_loses_nothing() {
    let Some(CutOff {
        _turn,
        _redis,
        link,
        steady,
        cut_off,
    }) = CutOff::start(
        "redis_out_of_reach_loses_nothing",
        &["--resume-grace", "30s"],
    )
    .await
    else {
        return;
    };
    let (mut host, mut guest, _code) =
        pair_at(&steady.ws_url(), &cut_off.ws_url(), "ada", "bob").await;
    host.chat("before the cut").await;
    host.expect("chat").await;
    guest.expect("chat").await;

    link.cut();
    let retry = json!({"type": "chat", "content": "from bob", "client_msg_id": "b-1"});
    guest.send(retry.clone()).await;
    guest.expect_error("UNAVAILABLE").await;
    // The node notices within a ping or two that it lost Redis.
    let deadline = Instant::now() + PATIENCE;
    while cut_off.healthz().await != 503 {
        assert!(
            Instant::now() < deadline,
            "the node says it cannot reach Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(steady.healthz().await, 200);
    for text in ["during 1", "during 2"] {
        host.chat(text).await;
        host.expect("chat").await;
    }

    link.restore();
    // The node says it is healthy once it reaches Redis again.
    linked(&cut_off).await;
    let missed = read_chats(&mut guest, 2).await;
    let texts: Vec<&str> = missed.iter().map(|(.., c)| c.as_str()).collect();
    assert_eq!(texts, ["during 1", "during 2"]);
    // The message that got UNAVAILABLE may or may not have been stored: sent again, it is
    // stored once either way.
    guest.send(retry.clone()).await;
    let mine = guest.expect("chat").await;
    assert_eq!(mine["content"], "from bob");
    guest.send(retry).await;
    assert_eq!(guest.expect("chat").await, mine);
    let at_host = host.expect("chat").await;
    assert_eq!(at_host, mine);
    host.expect_nothing_pending().await;
    guest.expect_nothing_pending().await;
    // What `/metrics` says of it, once the node has beaten again (within a second).
    let deadline = Instant::now() + PATIENCE;
    while cut_off.metric("chat_redis_node_live").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the node beats again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_off_metrics = cut_off.metrics().await;
    let metric = |name| common::redis::metric_value(&cut_off_metrics, name).unwrap_or(0.0);
    assert!(
        metric("chat_redis_errors_total") >= 1.0,
        "{cut_off_metrics}"
    );
    assert!(
        metric("chat_redis_gaps_repaired_total") >= 1.0,
        "{cut_off_metrics}"
    );
    assert!(
        metric("chat_redis_pubsub_events_total") >= 3.0,
        "{cut_off_metrics}"
    );
    assert_eq!(metric("chat_redis_up"), 1.0);
    assert!(
        cut_off_metrics.contains("chat_redis_step_seconds_bucket"),
        "{cut_off_metrics}"
    );
}

/// A `peer_joined` published while a node's pub/sub was cut off is not waited for in vain: the
/// node repairs the room from its state once it hears Redis again.
#[tokio::test]
async fn a_lost_peer_joined_is_repaired() {
    let Some(CutOff {
        _turn,
        _redis,
        link,
        steady,
        cut_off,
    }) = CutOff::start("a_lost_peer_joined_is_repaired", &[]).await
    else {
        return;
    };
    let mut host = TestClient::connect(&cut_off.ws_url()).await;
    host.set_username("ada").await;
    let code = host.create_room().await;
    link.cut();
    let mut guest = TestClient::connect(&steady.ws_url()).await;
    guest.set_username("bob").await;
    guest.join(&code).await;
    guest.chat("hello?").await;
    guest.expect("chat").await;
    link.restore();
    assert_eq!(host.expect("peer_joined").await["username"], "bob");
    assert_eq!(host.expect("chat").await["content"], "hello?");
    host.expect_nothing_pending().await;
}

/// A node cut off from Redis, but not from its clients, lets them go before the others may
/// count it dead: its room member is closed with 1012 while the cut lasts (the node logs it
/// before the other node logs the death), `/healthz` says 503, and the member resumes on the
/// other node with nothing missed. Its seat is not taken from it afterwards: the reap of the
/// cut-off node finds it moved, and its peer hears nothing but the reconnection. When the link
/// heals, the node carries on as a new node, with no seat held twice.
#[tokio::test]
async fn a_node_cut_off_lets_its_clients_go_in_time() {
    let Some(CutOff {
        _turn,
        _redis: redis,
        link,
        steady,
        cut_off,
    }) = CutOff::start(
        "a_node_cut_off_lets_its_clients_go_in_time",
        &["--resume-grace", "60s"],
    )
    .await
    else {
        return;
    };
    let (mut host, mut guest, code) =
        pair_at(&steady.ws_url(), &cut_off.ws_url(), "ada", "bob").await;
    host.chat("before the cut").await;
    host.expect("chat").await;
    let last = guest.expect("chat").await["id"].as_u64().expect("id");
    drain(&steady);
    drain(&cut_off);

    link.cut();
    let (said, close) = guest.read_to_close().await;
    assert_eq!(u16::from(close.code), 1012, "{close:?} after {said:?}");
    assert_eq!(cut_off.healthz().await, 503);
    host.chat("while bob's node is cut off").await;
    host.expect("chat").await;
    let mut back = TestClient::connect(&steady.ws_url()).await;
    back.send(json!({"type": "resume", "session_token": guest.session_token, "last_id": last}))
        .await;
    let resumed = back.expect("resumed").await;
    let missed = chats(resumed["missed"].as_array().expect("missed"));
    assert_eq!(missed.len(), 1, "{resumed}");
    assert_eq!(missed[0].2, "while bob's node is cut off");
    // The cut-off node's old id is reaped; the seat it held is not among what it reaps any more.
    let deadline = Instant::now() + 2 * PATIENCE;
    while redis
        .command(&["ZCARD", "chat:{board:0}:live"])
        .await
        .into_integer()
        > 1
    {
        assert!(Instant::now() < deadline, "the cut-off node is reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reaped_at = logged_at(&steady, "a node is dead");
    let let_go_at = logged_at(&cut_off, "letting every connection go");
    assert!(
        let_go_at < reaped_at,
        "let go at {let_go_at}, counted dead at {reaped_at}"
    );
    // The peer may have been told of the drop (the reap may come before the resume), but the
    // member is back, and stays so.
    let mut heard = host.recv().await;
    if heard["type"] == "peer_disconnected" {
        heard = host.recv().await;
    }
    assert_eq!(heard["type"], "peer_reconnected", "{heard}");
    assert_eq!(heard["username"], "bob");
    host.expect_nothing_pending().await;

    link.restore();
    linked(&cut_off).await;
    // Back as a new node: it serves rooms again, and what it did of bob's old connection (its
    // drop, retried) takes nothing from bob's seat.
    let (mut carol, mut dan, _) =
        pair_at(&cut_off.ws_url(), &steady.ws_url(), "carol", "dan").await;
    carol.chat("new room").await;
    carol.expect("chat").await;
    assert_eq!(dan.expect("chat").await["content"], "new room");
    back.chat("still seated").await;
    assert_eq!(back.expect("chat").await["content"], "still seated");
    assert_eq!(host.expect("chat").await["content"], "still seated");
    host.expect_nothing_pending().await;
    back.expect_nothing_pending().await;
    // Bob's seat is held by his new connection alone.
    let room = format!("chat:{{{code}}}:room");
    let seats = redis
        .command(&["HMGET", &room, "m1", "m2"])
        .await
        .into_strings();
    assert_eq!(seats.len(), 2, "two seats in {code}: {seats:?}");
    let held_by = redis
        .command(&["HMGET", &room, &format!("{}:c", guest.session_token)])
        .await
        .into_strings();
    assert!(
        held_by.len() == 1 && held_by[0].ends_with(&format!("/{}", back.client_id)),
        "bob's seat is his new connection's: {held_by:?}"
    );
}

/// Forgets what `node` has logged so far.
fn drain(node: &Node) {
    while node.lines().try_recv().is_ok() {}
}

/// The time stamp (RFC 3339, as the nodes log it) of the first line `node` logged with `what`
/// since it was last drained.
fn logged_at(node: &Node, what: &str) -> String {
    loop {
        let line = node
            .lines()
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the node logs {what:?}"));
        if line.contains(what) {
            return line
                .split_whitespace()
                .next()
                .expect("a time stamp")
                .to_string();
        }
    }
}

/// After a Redis restart from a snapshot, every heartbeat in it is old: the nodes must not take
/// each other for dead. The snapshot is taken 6 s before the restart (longer than the liveness
/// bound), and the restart itself is quick (shorter than a node waits before it lets its clients
/// go), so no node has a reason to close anything: nobody is told `peer_disconnected`, no
/// connection is closed, and no node fences itself.
#[tokio::test]
async fn a_redis_restart_kills_no_node() {
    let test = "a_redis_restart_kills_no_node";
    let Some((mut redis, nodes, _turn)) = three_nodes(test, &[]).await else {
        return;
    };
    let (mut host, mut guest, _code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    redis.command(&["SAVE"]).await;
    // Longer than the liveness bound: every beat in the saved data is stale by then.
    tokio::time::sleep(Duration::from_secs(6)).await;
    redis.stop();
    redis.start_again().await;
    // Longer than a beat and a judgement: a node that took another for dead would have said so.
    tokio::time::sleep(Duration::from_secs(7)).await;
    host.chat("still here").await;
    assert_eq!(host.expect("chat").await["content"], "still here");
    assert_eq!(guest.expect("chat").await["content"], "still here");
    host.expect_nothing_pending().await;
    guest.expect_nothing_pending().await;
}

/// Redis restarted from a snapshot older than what it had acknowledged (as after a crash with an
/// old RDB, an AOF that lost its last second, or a failover to a replica that was behind): the
/// room's counter went back from 10 to 5. No id is handed out twice: every message accepted
/// afterwards reaches both members once and in order, with ids above every id they were given;
/// and a member who resumes from an id that Redis lost is told how many it cannot have (`lost`)
/// rather than nothing.
#[tokio::test]
async fn redis_losing_writes_hands_out_no_id_twice() {
    let test = "redis_losing_writes_hands_out_no_id_twice";
    let Some((mut redis, nodes, _turn)) = three_nodes(test, &[]).await else {
        return;
    };
    let (mut host, mut guest, code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    let say = |n: usize| format!("message {n}");
    for n in 1..=10 {
        if n == 6 {
            // What Redis will come back with: messages 1 to 5.
            redis.command(&["SAVE"]).await;
        }
        host.chat(&say(n)).await;
        host.expect("chat").await;
        assert_eq!(guest.expect("chat").await["id"], n);
    }
    redis.stop(); // No save on the way down: what came after the SAVE is lost.
    redis.start_again().await;
    assert_eq!(
        redis
            .command(&["LLEN", &format!("chat:{{{code}}}:log")])
            .await
            .into_integer(),
        5,
        "Redis came back with the first five messages only"
    );

    // The first message after the restart may reach Redis before either node has noticed
    // anything: it is still given an id above 10, and both members get it.
    let mut ids = Vec::new();
    for n in 11..=15 {
        let echo = send_until_accepted(&mut host, &say(n)).await;
        let copy = guest.expect("chat").await;
        assert_eq!(echo, copy);
        assert_eq!(copy["content"], say(n));
        ids.push(copy["id"].as_u64().expect("an id"));
    }
    assert!(ids[0] > 10, "ids go on above every id given out: {ids:?}");
    assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "{ids:?}");
    host.expect_nothing_pending().await;
    guest.expect_nothing_pending().await;

    // Bob resumes from message 7, which Redis no longer has: he is told that three are lost
    // (8 to 10), and given what came after.
    let token = guest.session_token.clone();
    drop(guest);
    host.expect("peer_disconnected").await;
    // Again while the node is still reconnecting to the restarted Redis.
    let request = json!({"type": "resume", "session_token": token, "last_id": 7});
    let (_back, resumed) = resume_until_answered(&nodes[2], request).await;
    assert_eq!(resumed["lost"], 3, "{resumed}");
    let missed: Vec<String> = chats(resumed["missed"].as_array().expect("missed"))
        .into_iter()
        .map(|(.., content)| content)
        .collect();
    assert_eq!(missed, (11..=15).map(say).collect::<Vec<_>>());
    host.expect("peer_reconnected").await;
}

/// Redis went back (a restart from an older snapshot: the room's counter from 10 to 5) while
/// no node heard the room: both members had dropped, their seats held. Nobody could raise the
/// room, so the first resume, on a node that never heard it, comes before any repair. The
/// member's own `last_id` (10) is then the floor: its next message gets id 11, not 6, and the other member, resuming from 10, gets that message in
/// `missed` rather than never. (Without the floor, the message took id 6 and the other member,
/// who had seen an earlier 6, was never given it.)
#[tokio::test]
async fn a_resume_no_node_could_raise_takes_the_members_last_id_as_the_floor() {
    let test = "a_resume_no_node_could_raise_takes_the_members_last_id_as_the_floor";
    // A grace period longer than the test: Redis comes back with both seats on their old
    // connections, and should a node be slow to beat again after the restart and be reaped,
    // the seats it held are still there to resume.
    let Some((mut redis, nodes, _turn)) = three_nodes(test, &["--resume-grace", "60s"]).await
    else {
        return;
    };
    let (mut host, mut guest, code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    let say = |n: usize| format!("message {n}");
    for n in 1..=10 {
        if n == 6 {
            redis.command(&["SAVE"]).await;
        }
        host.chat(&say(n)).await;
        host.expect("chat").await;
        assert_eq!(guest.expect("chat").await["id"], n);
    }
    let (host_token, guest_token) = (host.session_token.clone(), guest.session_token.clone());
    drop(host);
    guest.expect("peer_disconnected").await;
    drop(guest);
    // Both seats held: neither node has a member in the room any more, so neither hears it.
    let room = format!("chat:{{{code}}}:room");
    loop {
        let fields = redis.command(&["HKEYS", &room]).await.into_strings();
        let held = fields.iter().filter(|field| field.ends_with(":h")).count();
        if held == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.stop(); // What came after the SAVE is lost: the room's last id is 5 again.
    redis.start_again().await;
    // Node 2 is back on both its connections (commands, and pub/sub: its control channel is
    // subscribed again), so that the resumes below are not answered `UNAVAILABLE` half-way.
    linked(&nodes[2]).await;
    let deadline = Instant::now() + PATIENCE;
    while redis
        .command(&["PUBSUB", "CHANNELS", "chat:{node:*}:ctl"])
        .await
        .into_strings()
        .len()
        < nodes.len()
    {
        assert!(Instant::now() < deadline, "the nodes listen again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let resume = |token: &str, last_id: u64| json!({"type": "resume", "session_token": token, "last_id": last_id});
    let (mut host, resumed) = resume_until_answered(&nodes[2], resume(&host_token, 10)).await;
    assert_eq!(resumed["missed"], json!([]), "{resumed}");
    let echo = send_until_accepted(&mut host, "after the restart").await;
    assert_eq!(echo["id"], 11, "{echo}");

    let (_guest, resumed) = resume_until_answered(&nodes[2], resume(&guest_token, 10)).await;
    let missed = chats(resumed["missed"].as_array().expect("missed"));
    assert_eq!(
        missed,
        vec![(11, "ada".to_string(), "after the restart".to_string())],
        "{resumed}"
    );
    assert_eq!(resumed["lost"], 0, "{resumed}");
}

/// A member's word for how far it has read is taken only in a room whose history may have
/// gone back. In a room vouched for (made in this run of Redis), a resume from an id the room
/// never reached, on a node that does not hear the room, changes nothing: the next message
/// gets the next id, and a resume from the start still gets every message.
#[tokio::test]
async fn a_resume_from_beyond_the_last_id_does_not_raise_a_vouched_room() {
    let test = "a_resume_from_beyond_the_last_id_does_not_raise_a_vouched_room";
    let Some((_redis, nodes, _turn)) = three_nodes(test, &[]).await else {
        return;
    };
    let (mut host, mut guest, _code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    for n in 1..=3 {
        host.chat(&format!("message {n}")).await;
        host.expect("chat").await;
        guest.expect("chat").await;
    }
    let token = guest.session_token.clone();
    drop(guest);
    host.expect("peer_disconnected").await;
    let resume =
        |last_id: u64| json!({"type": "resume", "session_token": token, "last_id": last_id});
    let (mut liar, resumed) = resume_until_answered(&nodes[2], resume(1_000_000)).await;
    assert_eq!(resumed["lost"], 0, "{resumed}");
    host.expect("peer_reconnected").await;
    host.chat("message 4").await;
    assert_eq!(host.expect("chat").await["id"], 4);
    assert_eq!(liar.expect("chat").await["id"], 4);
    drop(liar);
    host.expect("peer_disconnected").await;
    let (_back, resumed) = resume_until_answered(&nodes[2], resume(0)).await;
    let ids: Vec<u64> = chats(resumed["missed"].as_array().expect("missed"))
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "{resumed}");
}

/// Sends the `resume` `request` on a new connection to `node` until the node answers
/// `resumed` rather than `UNAVAILABLE` (it is reconnecting to Redis), each time on a new
/// connection, as the web client does; returns the connection that resumed, and its answer.
async fn resume_until_answered(node: &Node, request: Value) -> (TestClient, Value) {
    loop {
        let mut client = TestClient::connect(&node.ws_url()).await;
        client.send(request.clone()).await;
        let answer = client.recv().await;
        if answer["type"] == "resumed" {
            return (client, answer);
        }
        assert_eq!(answer["code"], "UNAVAILABLE", "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rooms of the recovery test, each spanning both nodes.
const RECOVERY_ROOMS: usize = 100;

/// After Redis restarts (quickly, with its data: what a stall longer than the ping timeout does
/// to the nodes too, since they drop their connections and make new ones), both nodes repair
/// their rooms: each node repairs each of its rooms once (`chat_redis_gaps_repaired_total`
/// grows by the number of rooms, not twice that), and every room works afterwards.
#[tokio::test]
async fn a_redis_restart_repairs_each_room_once() {
    let Some(Setup::Redis {
        mut redis, nodes, ..
    }) = Setup::redis(
        "a_redis_restart_repairs_each_room_once",
        2,
        &["--max-connections-per-ip", "1000"],
    )
    .await
    else {
        return;
    };
    let mut rooms = Vec::new();
    for i in 0..RECOVERY_ROOMS {
        let pair = pair_at(
            &nodes[0].ws_url(),
            &nodes[1].ws_url(),
            &format!("host{i}"),
            &format!("guest{i}"),
        )
        .await;
        rooms.push(pair);
    }
    let repaired = |text: &str| {
        common::redis::metric_value(text, "chat_redis_gaps_repaired_total").unwrap_or(0.0)
    };
    let mut before = Vec::new();
    for node in &nodes {
        before.push(repaired(&node.metrics().await));
    }
    redis.command(&["SAVE"]).await;
    redis.restart().await;
    // Each node repairs every room (its pub/sub was lost), and then no more.
    for (node, before) in nodes.iter().zip(&before) {
        let deadline = Instant::now() + 3 * PATIENCE;
        loop {
            let done = repaired(&node.metrics().await) - before;
            if done >= RECOVERY_ROOMS as f64 {
                break;
            }
            assert!(Instant::now() < deadline, "{done} rooms repaired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (i, (host, guest, _)) in rooms.iter_mut().enumerate() {
        let text = format!("after the stall {i}");
        send_until_accepted(host, &text).await;
        assert_eq!(guest.expect("chat").await["content"], text);
        guest.expect_nothing_pending().await;
    }
    for (node, before) in nodes.iter().zip(&before) {
        let done = repaired(&node.metrics().await) - before;
        assert_eq!(done, RECOVERY_ROOMS as f64, "each room repaired once");
    }
}

/// Everything Redis keeps of chat, key by key (`DUMP` of each key but the boards of the nodes'
/// heartbeats, which change every second).
async fn stored(redis: &RedisServer) -> Vec<(String, Vec<String>)> {
    let mut stored = Vec::new();
    for key in redis.keys("*").await {
        if key.ends_with(":live") {
            continue;
        }
        let kind = match redis.command(&["TYPE", &key]).await {
            Reply::Status(kind) => kind,
            other => panic!("TYPE answers with a status, not {other:?}"),
        };
        let read: &[&str] = match kind.as_str() {
            "hash" => &["HGETALL", &key],
            "list" => &["LRANGE", &key, "0", "-1"],
            "set" => &["SMEMBERS", &key],
            "zset" => &["ZRANGE", &key, "0", "-1"],
            other => panic!("{key} is a {other}, which chat-server does not keep"),
        };
        let mut value = redis.command(read).await.into_strings();
        value.sort();
        stored.push((key, value));
    }
    stored
}

/// Nothing outlives its use: once a room's members are gone, Redis holds no key of the room or
/// of their sessions; and every key that a dead node could leave behind has a TTL.
#[tokio::test]
async fn nothing_outlives_its_use() {
    let Some(Setup::Redis { redis, nodes, .. }) =
        Setup::redis("nothing_outlives_its_use", 2, &[]).await
    else {
        return;
    };
    let (mut host, mut guest, code) =
        pair_at(&nodes[0].ws_url(), &nodes[1].ws_url(), "ada", "bob").await;
    host.chat("a message").await;
    host.expect("chat").await;
    guest.expect("chat").await;
    // Typing is ephemeral: it travels over pub/sub and leaves nothing in Redis.
    let before = stored(&redis).await;
    host.send(json!({"type": "typing"})).await;
    guest.expect("typing").await;
    host.send(json!({"type": "stop_typing"})).await;
    guest.expect("stop_typing").await;
    host.send(json!({"type": "typing"})).await;
    guest.expect("typing").await;
    assert_eq!(
        stored(&redis).await,
        before,
        "typing changed what Redis keeps"
    );
    // While the room lives: every key has a TTL.
    for key in redis.keys("*").await {
        let ttl = redis.command(&["PTTL", &key]).await.into_integer();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    assert!(!redis.keys(&format!("chat:{{{code}}}*")).await.is_empty());
    host.send(json!({"type": "leave_room"})).await;
    host.expect("room_left").await;
    guest.expect("stop_typing").await;
    guest.expect("peer_left").await;
    guest.send(json!({"type": "leave_room"})).await;
    guest.expect("room_left").await;
    drop((host, guest));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let room = redis.keys(&format!("chat:{{{code}}}*")).await;
        let sessions = redis.keys("chat:sess:*").await;
        if room.is_empty() && sessions.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left over: {room:?} {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
