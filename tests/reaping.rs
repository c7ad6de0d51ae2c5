//! A node that dies with thousands of rooms, tested from the clients' side: three nodes on one
//! Redis, the hosts of every room on the node that is killed, their guests on the other two.
//! The reap must tell every guest once, and must not take the survivors down with it: no other
//! node misses a beat, is fenced, or closes a connection.
//!
//! The test holds [`ROOMS`] rooms with real connections (the test process may open 20,000
//! files), and ten times as many more in Redis only: copies of a real room, listed among the
//! dead node's rooms as it would have listed them, with nobody connected.
//!
//! Without `redis-server` it fails under CI and says it skipped elsewhere.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde_json::json;

use common::redis::{Node, RedisServer, nodes, redis_available};
use common::{PATIENCE, TestClient};

/// Rooms with a host and a guest connected.
const ROOMS: usize = 2_000;

/// Rooms of the dead node in Redis only, for each room with connections.
const SIMULATED_PER_ROOM: usize = 10;

/// How many clients connect, or wait for a message, at once.
const AT_ONCE: usize = 64;

/// Arguments for nodes that hold thousands of connections from one address, and keep a dead
/// node's seats longer than the test takes (so that `peer_left` is not part of it).
const ARGS: &[&str] = &[
    "--resume-grace",
    "120s",
    "--max-connections",
    "100000",
    "--max-connections-per-ip",
    "100000",
];

/// Waits until `node` has reached Redis, as a balancer would before sending it anyone.
async fn linked(node: &Node) {
    let deadline = Instant::now() + PATIENCE;
    while node.healthz().await != 200 {
        assert!(Instant::now() < deadline, "the node reaches Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A room on the node that will die (its host) and a survivor (its guest), by index.
async fn room(dying: String, surviving: String, i: usize) -> (TestClient, TestClient) {
    let mut host = TestClient::connect(&dying).await;
    host.set_username(&format!("host{i}")).await;
    let code = host.create_room().await;
    let mut guest = TestClient::connect(&surviving).await;
    guest.set_username(&format!("guest{i}")).await;
    guest.join(&code).await;
    host.expect("peer_joined").await;
    (host, guest)
}

/// Random room codes, none of them in `taken`.
fn fresh_codes(count: usize, taken: &HashSet<String>) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut codes = HashSet::new();
    while codes.len() < count {
        let code: String = (0..6)
            .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
            .collect();
        if !taken.contains(&code) {
            codes.insert(code);
        }
    }
    codes.into_iter().collect()
}

/// Lists `count` more rooms among `node_rooms` (the dead node's list), each a copy of the room
/// `template` (its hash and its log): rooms whose host sat on that node, whose guest nobody
/// hears.
async fn simulate_rooms(redis: &RedisServer, node_rooms: &str, template: &str, codes: &[String]) {
    const COPY: &str = "for i = 2, #ARGV do \
        redis.call('COPY', 'chat:{' .. ARGV[1] .. '}:room', 'chat:{' .. ARGV[i] .. '}:room') \
        redis.call('COPY', 'chat:{' .. ARGV[1] .. '}:log', 'chat:{' .. ARGV[i] .. '}:log') \
        redis.call('SADD', KEYS[1], ARGV[i]) end return 1";
    for chunk in codes.chunks(1_000) {
        let mut args = vec!["EVAL", COPY, "1", node_rooms, template];
        args.extend(chunk.iter().map(String::as_str));
        redis.command(&args).await;
    }
}

/// Every line `node` has logged so far.
fn logged(node: &Node) -> Vec<String> {
    node.lines().try_iter().collect()
}

/// A node killed with the hosts of 2,000 rooms (and 20,000 more in Redis alone): every guest,
/// on the two surviving nodes, gets `peer_disconnected` exactly once; no surviving node misses
/// a beat, is fenced, or closes a connection; and a room between the two survivors goes on as
/// if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_with_thousands_of_rooms_takes_no_other_down() {
    if !redis_available("a_node_dying_with_thousands_of_rooms_takes_no_other_down") {
        return;
    }
    let redis = RedisServer::start().await;
    let mut nodes = nodes(3, &redis.url(), ARGS);
    for node in &nodes {
        linked(node).await;
    }
    let dying = nodes[0].ws_url();
    let survivors = [nodes[1].ws_url(), nodes[2].ws_url()];
    let rooms: Vec<(TestClient, TestClient)> = stream::iter(0..ROOMS)
        .map(|i| room(dying.clone(), survivors[i % 2].clone(), i))
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let (hosts, mut guests): (Vec<_>, Vec<_>) = rooms.into_iter().unzip();
    // A room that lives on the two survivors alone.
    let (mut ada, mut bob, _) = common::pair_at(&survivors[0], &survivors[1], "ada", "bob").await;

    // The dead node's list is the one with every host's room.
    let mut dead_list = None;
    for list in redis.keys("chat:{node:*}:rooms").await {
        if redis.command(&["SCARD", &list]).await.into_integer() == ROOMS as i64 {
            dead_list = Some(list);
        }
    }
    let dead_list = dead_list.expect("the dying node lists its rooms");
    let real: HashSet<String> = redis
        .command(&["SMEMBERS", &dead_list])
        .await
        .into_strings()
        .into_iter()
        .collect();
    let template = real.iter().next().expect("a room").clone();
    let simulated = fresh_codes(ROOMS * SIMULATED_PER_ROOM, &real);
    simulate_rooms(&redis, &dead_list, &template, &simulated).await;
    for node in &nodes[1..] {
        logged(node); // What they said while rooms were made does not count.
    }

    nodes[0].sigkill();
    drop(hosts);
    // The reap is done once the dead node's list is gone: every guest has been told by then
    // (what they were sent waits in their sockets).
    let deadline = Instant::now() + 6 * PATIENCE;
    while redis.command(&["EXISTS", &dead_list]).await.into_integer() == 1 {
        assert!(Instant::now() < deadline, "the dead node is reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stream::iter(guests.iter_mut())
        .for_each_concurrent(AT_ONCE, |guest| async move {
            let told = guest.expect("peer_disconnected").await;
            assert!(
                told["username"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("host"))
            );
        })
        .await;
    // Every room the dead node listed was reaped: its host's seat is held.
    let sample = &simulated[..100];
    for code in sample {
        let room = format!("chat:{{{code}}}:room");
        let fields = redis.command(&["HKEYS", &room]).await.into_strings();
        assert!(
            fields.iter().any(|field| field.ends_with(":h")),
            "{code} was reaped: {fields:?}"
        );
    }
    // Nothing else reached any guest: no second `peer_disconnected`, no close.
    stream::iter(guests.iter_mut())
        .for_each_concurrent(AT_ONCE, |guest| guest.expect_nothing_pending())
        .await;
    ada.chat("still here").await;
    assert_eq!(ada.expect("chat").await["content"], "still here");
    assert_eq!(bob.expect("chat").await["content"], "still here");
    bob.send(json!({"type": "typing"})).await;
    ada.expect("typing").await;
    ada.expect_nothing_pending().await;
    // Both survivors beat on time all along.
    for node in &nodes[1..] {
        let trouble: Vec<String> = logged(node)
            .into_iter()
            .filter(|line| line.contains("heartbeat failed") || line.contains("fenced"))
            .collect();
        assert!(trouble.is_empty(), "a survivor missed a beat: {trouble:?}");
    }
}
