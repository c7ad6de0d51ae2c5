//! A node that dies between two Redis steps of one request leaves nothing that is never cleaned
//! up. Each test starts a node told to die at one point (`CHAT_TEST_DIE_AT`, which the
//! `testing` feature compiles in: see `store/redis/failpoint.rs`) beside a node that stays, and
//! checks from the surviving client's side, and in Redis, that the death was handled as any
//! other: the peer is told, the seat is reaped and its grace period swept, and the room's keys
//! go once nobody is left.
//!
//! Without `redis-server` they fail under CI and say they skipped elsewhere.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

use common::redis::{Node, RedisServer, redis_available};
use common::{PATIENCE, TestClient, pair_at};

/// The resume grace period: short, so that the tests see it end.
const GRACE: &str = "2s";

/// One test at a time: their timing (beats, reaping) is what they check.
static TURN: Mutex<()> = Mutex::const_new(());

/// A Redis, a node that stays, and a node that dies at `point`; `None` without `redis-server`.
async fn start(
    test: &str,
    point: &str,
) -> Option<(MutexGuard<'static, ()>, RedisServer, Node, Node)> {
    if !redis_available(test) {
        return None;
    }
    let turn = TURN.lock().await;
    let redis = RedisServer::start().await;
    let args = ["--redis", &redis.url(), "--resume-grace", GRACE];
    let steady = Node::start(&args);
    let doomed = Node::start_with_env(&args, &[("CHAT_TEST_DIE_AT", point)]);
    for node in [&steady, &doomed] {
        healthy(node).await;
    }
    Some((turn, redis, steady, doomed))
}

/// Waits until Redis holds no key of any room: everything the dead node's requests left of
/// rooms was cleaned up.
async fn no_room_left(redis: &RedisServer) {
    let deadline = Instant::now() + 3 * PATIENCE;
    loop {
        let rooms = redis.keys("chat:{[A-Z0-9]*}:*").await;
        if rooms.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left over: {rooms:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key in Redis has a time to live: nothing a dead node left stays for ever.
async fn everything_runs_out(redis: &RedisServer) {
    for key in redis.keys("*").await {
        let ttl = redis.command(&["PTTL", &key]).await.into_integer();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

/// The node dies after it seated a guest and before it wrote the guest's session: the room
/// was listed among the node's before the seat was taken, so the host is told
/// `peer_disconnected` when the node is reaped, then `peer_left` when the grace period ends.
#[tokio::test]
async fn dying_after_a_join_seated_its_guest() {
    let Some((_turn, redis, steady, doomed)) =
        start("dying_after_a_join_seated_its_guest", "join:seated").await
    else {
        return;
    };
    let mut host = steady.named("ada").await;
    let code = host.create_room().await;
    let mut guest = doomed.named("bob").await;
    guest
        .send(json!({"type": "join_room", "room_code": code}))
        .await;
    guest.expect_end().await;
    assert_eq!(host.expect("peer_joined").await["username"], "bob");
    assert_eq!(host.expect("peer_disconnected").await["username"], "bob");
    let left = host.expect("peer_left").await;
    assert_eq!(left["username"], "bob");
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// The node dies after it listed a room for a guest and before it seated it: the guest was
/// never seated, the host hears nothing, and the room goes on.
#[tokio::test]
async fn dying_before_a_join_seated_its_guest() {
    let Some((_turn, redis, steady, doomed)) =
        start("dying_before_a_join_seated_its_guest", "join:listed").await
    else {
        return;
    };
    let mut host = steady.named("ada").await;
    let code = host.create_room().await;
    let mut guest = doomed.named("bob").await;
    guest
        .send(json!({"type": "join_room", "room_code": code}))
        .await;
    guest.expect_end().await;
    let mut other = steady.named("cyd").await;
    other.join(&code).await;
    assert_eq!(host.expect("peer_joined").await["username"], "cyd");
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// The node dies after it created a room and before it wrote the host's session: the room is
/// reaped, its host's grace period ends, and nothing of the room is left.
#[tokio::test]
async fn dying_after_a_create_seated_its_host() {
    let Some((_turn, redis, _steady, doomed)) =
        start("dying_after_a_create_seated_its_host", "create:seated").await
    else {
        return;
    };
    let mut host = doomed.named("ada").await;
    host.send(json!({"type": "create_room"})).await;
    host.expect_end().await;
    everything_runs_out(&redis).await;
    no_room_left(&redis).await;
}

/// The node dies after a resume moved a seat onto it and before it wrote the session: the
/// seat was listed first, so it is reaped and its peer told.
#[tokio::test]
async fn dying_after_a_resume_moved_a_seat() {
    let Some((_turn, redis, steady, doomed)) =
        start("dying_after_a_resume_moved_a_seat", "resume:seated").await
    else {
        return;
    };
    let (mut host, guest, _code) = pair_at(&steady.ws_url(), &steady.ws_url(), "ada", "bob").await;
    let token = guest.session_token.clone();
    drop(guest);
    host.expect("peer_disconnected").await;
    let mut back = TestClient::connect(&doomed.ws_url()).await;
    back.send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    back.expect_end().await;
    assert_eq!(host.expect("peer_reconnected").await["username"], "bob");
    assert_eq!(host.expect("peer_disconnected").await["username"], "bob");
    assert_eq!(host.expect("peer_left").await["username"], "bob");
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// The node dies after it held a dropped member's seat and before it filed its grace period
/// for sweeping: the reap of the node files it, and the peer is told `peer_left` when it ends.
#[tokio::test]
async fn dying_after_a_drop_held_a_seat() {
    let Some((_turn, redis, steady, doomed)) =
        start("dying_after_a_drop_held_a_seat", "drop:held").await
    else {
        return;
    };
    let (mut host, guest, _code) = pair_at(&steady.ws_url(), &doomed.ws_url(), "ada", "bob").await;
    drop(guest);
    assert_eq!(host.expect("peer_disconnected").await["username"], "bob");
    assert_eq!(host.expect("peer_left").await["username"], "bob");
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// The node dies after a member left its room and before its session forgot the room: the
/// peer is told `peer_left` once, and nothing of the member is reaped or swept afterwards.
#[tokio::test]
async fn dying_after_a_leave() {
    let Some((_turn, redis, steady, doomed)) = start("dying_after_a_leave", "leave:left").await
    else {
        return;
    };
    let (mut host, mut guest, _code) =
        pair_at(&steady.ws_url(), &doomed.ws_url(), "ada", "bob").await;
    guest.send(json!({"type": "leave_room"})).await;
    guest.expect_end().await;
    assert_eq!(host.expect("peer_left").await["username"], "bob");
    // Once the node is reaped (its beats run out of the live set), still nothing more.
    only_live_nodes(&redis, 1).await;
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// The node dies after it filed a dropped member's grace period and before it shortened the
/// session's life: the peer is told `peer_disconnected`, then `peer_left` when the grace period
/// ends, swept by the node that stays.
#[tokio::test]
async fn dying_after_a_drop_filed_its_grace_period() {
    let Some((_turn, redis, steady, doomed)) =
        start("dying_after_a_drop_filed_its_grace_period", "drop:filed").await
    else {
        return;
    };
    let (mut host, guest, _code) = pair_at(&steady.ws_url(), &doomed.ws_url(), "ada", "bob").await;
    drop(guest);
    assert_eq!(host.expect("peer_disconnected").await["username"], "bob");
    assert_eq!(host.expect("peer_left").await["username"], "bob");
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// The node dies after it listed a room for a new host and before it created the room: no room
/// exists, and the code is free for another.
#[tokio::test]
async fn dying_before_a_create_seated_its_host() {
    let Some((_turn, redis, _steady, doomed)) =
        start("dying_before_a_create_seated_its_host", "create:listed").await
    else {
        return;
    };
    let mut host = doomed.named("ada").await;
    host.send(json!({"type": "create_room"})).await;
    host.expect_end().await;
    no_room_left(&redis).await;
    everything_runs_out(&redis).await;
}

/// The node dies after it listed a room for a resume and before it moved the seat: the seat
/// stays where it was (held, its member having dropped), so the grace period ends as if the
/// resume had never come: the peer is told `peer_left` once, and nothing else, not even when
/// the dead node is reaped with the room in its list.
#[tokio::test]
async fn dying_after_a_resume_listed_its_room() {
    let Some((_turn, redis, steady, doomed)) =
        start("dying_after_a_resume_listed_its_room", "resume:listed").await
    else {
        return;
    };
    let (mut host, guest, _code) = pair_at(&steady.ws_url(), &steady.ws_url(), "ada", "bob").await;
    let token = guest.session_token.clone();
    drop(guest);
    host.expect("peer_disconnected").await;
    let mut back = TestClient::connect(&doomed.ws_url()).await;
    back.send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    back.expect_end().await;
    assert_eq!(host.expect("peer_left").await["username"], "bob");
    only_live_nodes(&redis, 1).await;
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// A node dies while it reaps another: it has held the dead node's seats and not yet filed
/// their grace periods. Its lease on the reap runs out, and the next node to judge takes the
/// reap over and files them: the seat held by the reaper that died is swept when its grace
/// period ends, and its peer, resumed on that next node, is told `peer_left`. Nothing is left.
///
/// Which node reaps is made certain by the order of starts: the reaper and the node it reaps
/// are the only two nodes when the first dies; the third starts afterwards.
#[tokio::test]
async fn dying_while_reaping_leaves_the_reap_to_the_next_node() {
    let test = "dying_while_reaping_leaves_the_reap_to_the_next_node";
    if !redis_available(test) {
        return;
    }
    let _turn = TURN.lock().await;
    let redis = RedisServer::start().await;
    let args = ["--redis", &redis.url(), "--resume-grace", GRACE];
    let reaper = Node::start_with_env(&args, &[("CHAT_TEST_DIE_AT", "reap:held")]);
    let mut victim = Node::start(&args);
    for node in [&reaper, &victim] {
        healthy(node).await;
    }
    let (mut host, _guest, _code) = pair_at(&reaper.ws_url(), &victim.ws_url(), "ada", "bob").await;
    let token = host.session_token.clone();
    victim.sigkill();
    // The reaper holds bob's seat, and dies before it files the grace period.
    host.expect_end().await;

    let next = Node::start(&args);
    healthy(&next).await;
    let mut host = TestClient::connect(&next.ws_url()).await;
    host.send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    let resumed = host.expect("resumed").await;
    assert_eq!(resumed["peer"], "bob", "{resumed}");
    assert_eq!(resumed["peer_connected"], false, "{resumed}");
    // The next node reaps the reaper, and then, once the reaper's lease has run out, the node
    // the reaper had begun with.
    only_live_nodes(&redis, 1).await;
    assert_eq!(host.expect("peer_left").await["username"], "bob");
    host.expect_nothing_pending().await;
    everything_runs_out(&redis).await;
}

/// Waits until `node` answers `/healthz` with 200: it reaches Redis and its beats are recorded.
async fn healthy(node: &Node) {
    let deadline = Instant::now() + PATIENCE;
    while node.healthz().await != 200 {
        assert!(Instant::now() < deadline, "the node reaches Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `live` nodes are left on the first board of beats: every dead node was reaped to
/// the end (`node_unlist.lua` takes it off every board once its rooms are done).
async fn only_live_nodes(redis: &RedisServer, live: i64) {
    let deadline = Instant::now() + 4 * PATIENCE;
    while redis
        .command(&["ZCARD", "chat:{board:0}:live"])
        .await
        .into_integer()
        > live
    {
        assert!(Instant::now() < deadline, "the dead nodes are reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
