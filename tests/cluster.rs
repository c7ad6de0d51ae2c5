//! Several nodes on a Redis Cluster (`--redis` with the seeds of a local 3-master, 3-replica
//! cluster: `tests/common/cluster.rs`), seen from the clients' side: rooms on every shard carry
//! every message once and in order, across nodes; a failover, a killed master, a migrating slot
//! and the loss of the master of the nodes' beats or of a node's own slot lose no accepted
//! message and fence no node.
//!
//! Without `redis-server` they fail under CI and say they skipped elsewhere.

mod common;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

use common::cluster::RedisCluster;
use common::redis::{Node, nodes, redis_available, send_until_accepted};
use common::{PATIENCE, TestClient, pair_at};

/// One test at a time: each starts six `redis-server`s and two nodes.
static TURN: Mutex<()> = Mutex::const_new(());

/// A cluster and two nodes on it, both reaching it; `None` without `redis-server`.
async fn two_nodes(test: &str) -> Option<(MutexGuard<'static, ()>, RedisCluster, Vec<Node>)> {
    if !redis_available(test) {
        return None;
    }
    let turn = TURN.lock().await;
    let cluster = RedisCluster::start().await;
    let seeds = cluster.seeds().await;
    let nodes = nodes(
        2,
        &seeds,
        &["--resume-grace", "30s", "--max-connections-per-ip", "1000"],
    );
    for node in &nodes {
        let deadline = Instant::now() + PATIENCE;
        while node.healthz().await != 200 {
            assert!(Instant::now() < deadline, "the node reaches the cluster");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Some((turn, cluster, nodes))
}

/// A room whose host is on node 0 and guest on node 1, with its code.
struct Room {
    host: TestClient,
    guest: TestClient,
    code: String,
}

/// Rooms across the two nodes, as many as it takes for every master to hold `each` of them
/// (a room lives on the shard of its code's slot), in the order of the masters.
async fn rooms_on_every_master(
    cluster: &RedisCluster,
    nodes: &[Node],
    each: usize,
) -> Vec<Vec<Room>> {
    let masters = cluster.masters().await;
    let mut by_master: Vec<Vec<Room>> = masters.iter().map(|_| Vec::new()).collect();
    let mut made = 0;
    while by_master.iter().any(|rooms| rooms.len() < each) {
        assert!(made < 40 * each, "codes spread over every master");
        let (host, guest, code) = pair_at(
            &nodes[0].ws_url(),
            &nodes[1].ws_url(),
            &format!("host{made}"),
            &format!("guest{made}"),
        )
        .await;
        made += 1;
        let master = cluster
            .master_of_key(&format!("chat:{{{code}}}:room"))
            .await;
        let at = masters
            .iter()
            .position(|&addr| addr == master)
            .expect("the room's master is one of the masters");
        if by_master[at].len() < each {
            by_master[at].push(Room { host, guest, code });
        }
    }
    by_master
}

/// Each of `contents`, sent by `from` (until accepted), reaches `to` once and in order, with
/// the echo's id; returns the ids.
async fn say_all(from: &mut TestClient, to: &mut TestClient, contents: &[String]) -> Vec<u64> {
    let mut ids = Vec::new();
    for content in contents {
        let echo = send_until_accepted(from, content).await;
        let copy = to.expect("chat").await;
        assert_eq!(copy["content"], *content, "{copy}");
        assert_eq!(copy["id"], echo["id"], "{copy}");
        ids.push(copy["id"].as_u64().expect("an id"));
    }
    ids
}

fn said(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| format!("{prefix} {n}")).collect()
}

/// Two nodes on a cluster: rooms on every master (two each), their members on different
/// nodes, talk both ways; every message reaches the other member once, in order, with ids
/// that go up by one, and a member who drops resumes on the other node with nothing missed.
#[tokio::test]
async fn rooms_on_every_shard_carry_every_message_once_and_in_order() {
    let test = "rooms_on_every_shard_carry_every_message_once_and_in_order";
    let Some((_turn, cluster, nodes)) = two_nodes(test).await else {
        return;
    };
    let by_master = rooms_on_every_master(&cluster, &nodes, 2).await;
    let before = cluster.stats().await;
    for room in by_master.into_iter().flatten() {
        let Room {
            mut host,
            mut guest,
            code,
        } = room;
        let mut ids = say_all(&mut host, &mut guest, &said(&code, 1..=3)).await;
        ids.extend(say_all(&mut guest, &mut host, &said(&code, 4..=6)).await);
        assert_eq!(ids, (1..=6).collect::<Vec<u64>>(), "room {code}");

        let token = guest.session_token.clone();
        drop(guest);
        host.expect("peer_disconnected").await;
        host.chat(&format!("{code} while away")).await;
        host.expect("chat").await;
        let mut back = TestClient::connect(&nodes[0].ws_url()).await;
        back.send(json!({"type": "resume", "session_token": token, "last_id": 6}))
            .await;
        let resumed = back.expect("resumed").await;
        let missed: Vec<&str> = resumed["missed"]
            .as_array()
            .expect("missed")
            .iter()
            .filter_map(|m| m["content"].as_str())
            .collect();
        assert_eq!(missed, vec![format!("{code} while away")], "{resumed}");
        host.expect("peer_reconnected").await;
    }
    // Every event went by sharded pub/sub: not one plain PUBLISH crossed the cluster's bus.
    let after = cluster.stats().await;
    assert_eq!(
        after.publish_sent, before.publish_sent,
        "{before:?} {after:?}"
    );
    assert!(
        after.publishshard_sent > before.publishshard_sent,
        "{after:?}"
    );
}

/// A manual failover (`CLUSTER FAILOVER`) of the shard that holds a room, in the middle of its
/// conversation: every message sent before, during and after it (each sent again while the node
/// answers `UNAVAILABLE`, with its `client_msg_id`) reaches the other member once and in order,
/// and the rooms on the other shards are not disturbed.
#[tokio::test]
async fn a_failover_mid_conversation_loses_nothing() {
    let test = "a_failover_mid_conversation_loses_nothing";
    let Some((_turn, cluster, nodes)) = two_nodes(test).await else {
        return;
    };
    let mut by_master = rooms_on_every_master(&cluster, &nodes, 1).await;
    let masters = cluster.masters().await;
    let mut room = by_master[0].remove(0);
    let mut ids = say_all(&mut room.host, &mut room.guest, &said("before", 1..=5)).await;
    let replica = cluster
        .replica_of(masters[0])
        .await
        .expect("the master has a replica");
    cluster.failover(replica).await;
    ids.extend(say_all(&mut room.host, &mut room.guest, &said("after", 1..=5)).await);
    ids.extend(say_all(&mut room.guest, &mut room.host, &said("back", 1..=5)).await);
    assert_eq!(ids, (1..=15).collect::<Vec<u64>>());
    for mut other in by_master.into_iter().flatten() {
        let ids = say_all(&mut other.host, &mut other.guest, &said("elsewhere", 1..=2)).await;
        assert_eq!(ids, vec![1, 2], "room {}", other.code);
    }
    room.host.expect_nothing_pending().await;
    room.guest.expect_nothing_pending().await;
}

/// A room's master killed with SIGKILL, mid-conversation: until its replica takes over, the
/// room's steps are answered `UNAVAILABLE`; every message accepted (before, and after it is
/// sent again) reaches the other member once and in order, and the room goes on afterwards.
/// (What a master had acknowledged but not yet sent to its replica would be lost with it, as in
/// any Redis; here each message is sent after the last one arrived, so none is in flight.)
#[tokio::test]
async fn a_killed_master_loses_no_accepted_message() {
    let test = "a_killed_master_loses_no_accepted_message";
    let Some((_turn, mut cluster, nodes)) = two_nodes(test).await else {
        return;
    };
    let mut by_master = rooms_on_every_master(&cluster, &nodes, 1).await;
    let masters = cluster.masters().await;
    let mut room = by_master[1].remove(0);
    let mut ids = say_all(&mut room.host, &mut room.guest, &said("before", 1..=5)).await;
    // Every write of the room is on the replica before the kill.
    cluster.command(masters[1], &["WAIT", "1", "1000"]).await;
    cluster.kill_master(masters[1]).await;
    ids.extend(say_all(&mut room.host, &mut room.guest, &said("after", 1..=5)).await);
    ids.extend(say_all(&mut room.guest, &mut room.host, &said("back", 1..=5)).await);
    let expected: Vec<u64> = (1..=15).collect();
    assert_eq!(ids, expected);
    room.host.expect_nothing_pending().await;
    room.guest.expect_nothing_pending().await;
}

/// One of the three boards the nodes beat on (`chat:{board:0}:live`) lost for good: its master
/// and its replica killed. The nodes beat on the other two, a majority, so for longer than a
/// node waits before it lets its clients go (4.5 s) and than the others wait before they count
/// it dead (5 s), no node is fenced or found dead: nobody is told `peer_disconnected`, no
/// connection is closed, both nodes say 200, and a room on another master goes on.
#[tokio::test]
async fn losing_a_board_of_beats_for_good_fences_no_node() {
    let test = "losing_a_board_of_beats_for_good_fences_no_node";
    let Some((_turn, mut cluster, nodes)) = two_nodes(test).await else {
        return;
    };
    let board = cluster.master_of_key("chat:{board:0}:live").await;
    let masters = cluster.masters().await;
    let mut by_master = rooms_on_every_master(&cluster, &nodes, 1).await;
    let elsewhere = masters
        .iter()
        .position(|&master| master != board)
        .expect("three masters");
    let mut room = by_master.swap_remove(elsewhere).pop().expect("a room");
    let replica = cluster.kill_master_now(board).await;
    cluster.kill(replica);
    // Longer than a node lets its clients go after its last recorded beat, and than the others
    // wait to count it dead: a node fenced or judged dead would have said so by then.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for node in &nodes {
        let (status, body) = node.healthz_text().await;
        assert_eq!(status, 200, "{body}");
    }
    let ids = say_all(&mut room.host, &mut room.guest, &said("still here", 1..=2)).await;
    assert_eq!(ids, vec![1, 2]);
    room.host.expect_nothing_pending().await;
    room.guest.expect_nothing_pending().await;
}

/// A live migration of an active room's slot to another master. While the slot is MIGRATING
/// with the room's keys still on their owner, the room works as before. Once its keys have
/// moved (the owner answers `ASK`), its scripts run on the new master, whose `SPUBLISH` reaches
/// no one yet (the nodes listen on the old owner): the messages are accepted, and arrive once
/// the migration ends, when the old owner pushes `sunsubscribe`, each node listens on the new
/// master and repairs the room. Every message reaches both members once and in order, and the
/// room goes on on its new shard.
#[tokio::test]
async fn a_room_whose_slot_migrates_loses_nothing() {
    let test = "a_room_whose_slot_migrates_loses_nothing";
    let Some((_turn, cluster, nodes)) = two_nodes(test).await else {
        return;
    };
    let mut by_master = rooms_on_every_master(&cluster, &nodes, 1).await;
    let masters = cluster.masters().await;
    let mut room = by_master[0].remove(0);
    let slot = common::cluster::slot_of(&format!("chat:{{{}}}:room", room.code));
    let mut ids = say_all(&mut room.host, &mut room.guest, &said("before", 1..=3)).await;
    let migration = cluster.begin_migration(slot, masters[2]).await;
    ids.extend(say_all(&mut room.host, &mut room.guest, &said("migrating", 1..=3)).await);
    assert!(migration.move_keys().await >= 2, "the room's keys move");
    let moving = said("moving", 1..=3);
    for content in &moving {
        room.host
            .send(json!({"type": "chat", "content": content, "client_msg_id": content}))
            .await;
    }
    migration.finish().await;
    for content in &moving {
        let echo = room.host.expect("chat").await;
        let copy = room.guest.expect("chat").await;
        assert_eq!(
            (&echo["content"], &copy["content"]),
            (&json!(content), &json!(content))
        );
        assert_eq!(echo["id"], copy["id"]);
        ids.push(copy["id"].as_u64().expect("an id"));
    }
    ids.extend(say_all(&mut room.guest, &mut room.host, &said("moved", 1..=3)).await);
    assert_eq!(ids, (1..=12).collect::<Vec<u64>>());
    assert_eq!(
        cluster
            .master_of_key(&format!("chat:{{{}}}:room", room.code))
            .await,
        masters[2]
    );
    room.host.expect_nothing_pending().await;
    room.guest.expect_nothing_pending().await;
}

/// One master killed: until its replica takes over, only the rooms of its slots are
/// unavailable. The master killed is the one of a node's own bookkeeping (the slot of its list
/// of rooms, which its beats check): that node, like the other, goes on. The rooms on the other
/// masters, a hundred on each, all chatting at once, go on (each message accepted at the first
/// try, and delivered), `/healthz` still says 200 on both nodes and names the shard that does not
/// answer, and `/metrics` has `chat_redis_shard_up{shard="…"} 0` for it. Once the replica has
/// taken over, the dead master's room works again.
#[tokio::test]
async fn one_master_down_takes_only_its_rooms_away() {
    const ROOMS_PER_MASTER: usize = 100;
    let test = "one_master_down_takes_only_its_rooms_away";
    let Some((_turn, mut cluster, nodes)) = two_nodes(test).await else {
        return;
    };
    let dead = master_of_a_node(&cluster).await;
    let mut by_master = rooms_on_every_master(&cluster, &nodes, ROOMS_PER_MASTER).await;
    let masters = cluster.masters().await;
    let at = masters
        .iter()
        .position(|&master| master == dead)
        .expect("a master");
    let mut on_dead = by_master.remove(at);
    let replica = cluster.kill_master_now(dead).await;
    // Until the nodes notice (their next check, within a second), /healthz and the metric.
    let metric = format!("chat_redis_shard_up{{shard=\"{dead}\"}}");
    for node in &nodes {
        let deadline = Instant::now() + PATIENCE;
        while node.metric(&metric).await != Some(0.0) {
            assert!(
                Instant::now() < deadline,
                "the node notices the master is down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Through beats that cannot reach one node's own slot (at least two of them, a second
    // apart), and the ones after.
    for _ in 0..3 {
        for node in &nodes {
            let (status, body) = node.healthz_text().await;
            // The replica may already have taken over, and the node seen it: then the shard
            // is up, and the body says ok.
            assert_eq!(status, 200, "{body}");
        }
        // Every room at once, as traffic would: none waits behind the dead master.
        let chats = by_master.iter_mut().flatten().map(|other| async move {
            let content = format!("{} while a master is down", other.code);
            other.host.chat(&content).await;
            let echo = other.host.recv().await;
            assert_eq!(echo["type"], "chat", "accepted at the first try: {echo}");
            assert_eq!(other.guest.expect("chat").await["content"], content);
        });
        join_all(chats).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    cluster.promoted(replica).await;
    let room = &mut on_dead[0];
    let ids = say_all(&mut room.host, &mut room.guest, &said("after", 1..=2)).await;
    assert_eq!(ids, vec![1, 2]);
}

/// The master of one node's own slot (its list of rooms, checked by its beats).
async fn master_of_a_node(cluster: &RedisCluster) -> std::net::SocketAddr {
    let live = "chat:{board:0}:live";
    let board = cluster.master_of_key(live).await;
    let ids = cluster
        .command(board, &["ZRANGE", live, "0", "-1"])
        .await
        .into_strings();
    assert_eq!(ids.len(), 2, "both nodes beat: {ids:?}");
    cluster
        .master_of_key(&format!("chat:{{node:{}}}:rooms", ids[0]))
        .await
}
