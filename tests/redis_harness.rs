//! The multi-node harness itself (`tests/common/redis.rs`): its Redis starts, answers, forgets
//! everything on a restart and goes away with the test; its link to Redis forwards, goes
//! silent when cut and forwards again when restored; its nodes report what they serve and
//! stop on SIGTERM. The multi-node tests rely on each of these.
//!
//! Needs `/usr/bin/redis-server` (Debian package `redis-server`): without it the Redis tests
//! fail when the `CI` environment variable is set and otherwise print that they skipped.

mod common;

use std::time::Duration;

use common::browser::eventually;
use common::redis::{Node, RedisClient, RedisLink, RedisServer, Reply, redis_available};

/// How long a command through a cut link goes unanswered before the test takes the silence
/// for what it is. Redis on loopback answers within a millisecond.
const SILENCE: Duration = Duration::from_millis(300);

fn pong() -> Reply {
    Reply::Status("PONG".into())
}

/// Sends `PING` and returns the answer, or `None` if there was none within [`SILENCE`].
async fn ping_within_silence(client: &mut RedisClient) -> Option<Reply> {
    tokio::time::timeout(SILENCE, client.command(&["PING"]))
        .await
        .ok()
        .map(|answer| answer.expect("the connection stays open"))
}

/// A test's Redis listens on 127.0.0.1 below the ephemeral ports, keeps what it is given
/// until it restarts, comes back empty on the same port (its old clients see their
/// connection end), and is gone once dropped. Two run side by side, each with its own data.
#[tokio::test]
async fn redis_server_keeps_data_until_restarted_on_the_same_port() {
    if !redis_available("redis_server_keeps_data_until_restarted_on_the_same_port") {
        return;
    }
    let (mut redis, other) = tokio::join!(RedisServer::start(), RedisServer::start());
    assert_ne!(redis.port(), other.port());
    assert!(redis.port() < 32_768, "port {}", redis.port());
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));

    assert_eq!(
        redis.command(&["SET", "chat:test", "kept"]).await,
        Reply::Status("OK".into())
    );
    assert_eq!(
        redis.command(&["GET", "chat:test"]).await,
        Reply::Bulk(Some("kept".into()))
    );
    assert_eq!(redis.keys("chat:*").await, ["chat:test"]);
    assert_eq!(redis.dbsize().await, 1);
    assert_eq!(other.dbsize().await, 0, "the other server has its own data");

    let mut old_client = redis.client().await;
    assert_eq!(old_client.command(&["PING"]).await.expect("PONG"), pong());
    let port = redis.port();
    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert!(
        old_client.command(&["PING"]).await.is_err(),
        "a connection to the Redis that was stopped has ended"
    );
    assert_eq!(redis.command(&["PING"]).await, pong());
    assert_eq!(redis.dbsize().await, 0, "nothing survives a restart");

    drop(redis);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "nothing listens on the port once the server is dropped"
    );
}

/// A cut link answers nothing on the connections it carried, nor on new ones, while Redis
/// itself still answers; restored, it forwards new connections, and it can be cut and restored
/// again. Those caught in a cut stay silent.
#[tokio::test]
async fn redis_link_goes_silent_when_cut_and_forwards_again_when_restored() {
    if !redis_available("redis_link_goes_silent_when_cut_and_forwards_again_when_restored") {
        return;
    }
    let redis = RedisServer::start().await;
    let link = RedisLink::start(redis.addr()).await;
    assert_eq!(link.url(), format!("redis://{}/", link.addr()));
    let connect = async || {
        RedisClient::connect(link.addr())
            .await
            .expect("the link accepts connections")
    };

    let mut before = connect().await;
    assert_eq!(ping_within_silence(&mut before).await, Some(pong()));
    assert_eq!(
        before.command(&["SET", "through", "link"]).await.unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(redis.keys("*").await, ["through"], "it reached Redis");

    link.cut();
    assert_eq!(ping_within_silence(&mut before).await, None, "cut");
    let mut during = connect().await;
    assert_eq!(ping_within_silence(&mut during).await, None, "new, cut");
    assert_eq!(redis.command(&["PING"]).await, pong(), "Redis is fine");

    link.restore();
    let mut after = connect().await;
    assert_eq!(ping_within_silence(&mut after).await, Some(pong()));
    assert_eq!(ping_within_silence(&mut before).await, None, "still cut");
    assert_eq!(ping_within_silence(&mut during).await, None, "still cut");

    link.cut();
    assert_eq!(ping_within_silence(&mut after).await, None, "cut again");
    link.restore();
    let mut again = connect().await;
    assert_eq!(ping_within_silence(&mut again).await, Some(pong()));
}

/// While Redis is down, a connection through the link is closed at once, as a node would see
/// a refusal; once Redis is back on its port, the link reaches it again.
#[tokio::test]
async fn redis_link_closes_connections_while_redis_is_down() {
    if !redis_available("redis_link_closes_connections_while_redis_is_down") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let link = RedisLink::start(redis.addr()).await;

    redis.stop();
    let mut client = RedisClient::connect(link.addr())
        .await
        .expect("the link accepts connections");
    let answer = tokio::time::timeout(common::PATIENCE, client.command(&["PING"]))
        .await
        .expect("the link closes the connection without waiting");
    assert!(answer.is_err(), "no answer but an ended connection");

    redis.start_again().await;
    let mut client = RedisClient::connect(link.addr()).await.unwrap();
    assert_eq!(ping_within_silence(&mut client).await, Some(pong()));
}

/// A node (here without Redis) tells its address, serves `/healthz` and `/metrics` with its
/// connection gauge, and on SIGTERM closes its connections and exits with status 0.
#[tokio::test]
async fn node_reports_its_connections_and_stops_on_sigterm() {
    let mut node = Node::start(&[]);
    assert_eq!(node.healthz().await, 200);
    assert_eq!(node.metric("chat_connections").await, Some(0.0));

    let mut client = node.named("ada").await;
    eventually("the node counts the connection", async || {
        (node.metric("chat_connections").await == Some(1.0)).then_some(())
    })
    .await;

    node.sigterm();
    let close = client.expect_close().await;
    assert!(close.is_some(), "a close frame, with its code");
    assert!(node.exited().await.success());
}
