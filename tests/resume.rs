//! Reconnecting without losing a message: session resume, missed-message replay, the grace
//! period, and read receipts, against the real server over real sockets.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use chat_server::Config;
use common::{TestClient, TestServer};

/// A server whose resume grace period is `grace`.
async fn server_with_grace(grace: Duration) -> TestServer {
    TestServer::with_config(Config {
        resume_grace: grace,
        ..Config::default()
    })
    .await
}

/// A new connection that resumes `token` having seen chat ids up to `last_id`.
async fn resume(server: &TestServer, token: &str, last_id: u64) -> (TestClient, Value) {
    let mut client = server.client().await;
    client
        .send(json!({"type": "resume", "session_token": token, "last_id": last_id}))
        .await;
    let resumed = client.expect("resumed").await;
    (client, resumed)
}

fn contents(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("an array")
        .iter()
        .map(|message| message["content"].as_str().expect("content").to_string())
        .collect()
}

/// `connected` carries a session token of at least 128 random bits in URL-safe text.
#[tokio::test]
async fn connected_carries_a_session_token() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    assert!(a.session_token.len() >= 32, "{}", a.session_token);
    assert!(
        a.session_token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    );
    assert_ne!(a.session_token, b.session_token);
}

/// A member whose TCP connection is cut (no close frame) while its peer keeps talking resumes
/// and receives exactly the messages it missed, in order, once; the peer sees it go and return.
#[tokio::test]
async fn a_cut_connection_resumes_with_exactly_what_it_missed() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, code) = server.pair("ada", "grace").await;
    for n in 1..=3 {
        ada.chat(&format!("before {n}")).await;
        ada.expect("chat").await;
    }
    // Grace reads the first two only: the third is in flight when her connection dies.
    assert_eq!(grace.expect("chat").await["id"], 1);
    assert_eq!(grace.expect("chat").await["id"], 2);
    let token = grace.session_token.clone();
    drop(grace);
    assert_eq!(
        ada.expect("peer_disconnected").await,
        json!({"type": "peer_disconnected", "username": "grace"})
    );
    for n in 1..=3 {
        ada.chat(&format!("meanwhile {n}")).await;
        ada.expect("chat").await;
    }

    let (mut grace, resumed) = resume(&server, &token, 2).await;
    assert_eq!(resumed["client_id"], grace.client_id.as_str());
    assert_eq!(resumed["username"], "grace");
    assert_eq!(resumed["room_code"], code.as_str());
    assert_eq!(resumed["peer"], "ada");
    assert_eq!(resumed["peer_connected"], true);
    assert_eq!(
        contents(&resumed["missed"]),
        ["before 3", "meanwhile 1", "meanwhile 2", "meanwhile 3"]
    );
    let ids: Vec<_> = resumed["missed"]
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!(3), json!(4), json!(5), json!(6)]);
    assert_eq!(resumed["missed"][0]["type"], "chat");
    assert_eq!(
        ada.expect("peer_reconnected").await,
        json!({"type": "peer_reconnected", "username": "grace"})
    );

    // The conversation simply goes on, with the same seat and ids.
    grace.chat("back").await;
    assert_eq!(grace.expect("chat").await["id"], 7);
    assert_eq!(ada.expect("chat").await["content"], "back");
    grace.expect_nothing_pending().await;
}

/// A member whose grace period ends without a resume is gone for good: the peer gets
/// `peer_left` with `"disconnected"`, the history is emptied, and the token is expired.
#[tokio::test]
async fn the_grace_period_ends_in_peer_left() {
    let server = server_with_grace(Duration::from_millis(300)).await;
    let (mut ada, mut grace, code) = server.pair("ada", "grace").await;
    ada.chat("hello").await;
    ada.expect("chat").await;
    grace.expect("chat").await;
    grace.send(json!({"type": "typing"})).await;
    ada.expect("typing").await;
    let token = grace.session_token.clone();
    drop(grace);
    ada.expect("stop_typing").await;
    ada.expect("peer_disconnected").await;
    assert_eq!(
        ada.expect("peer_left").await,
        json!({"type": "peer_left", "username": "grace", "reason": "disconnected"})
    );

    let mut late = server.client().await;
    late.send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    late.expect_error("SESSION_EXPIRED").await;
    // The connection carries on as a new client, and the room has forgotten the conversation.
    late.set_username("linus").await;
    assert_eq!(late.join(&code).await["history"], json!([]));
}

/// An unknown token is `SESSION_EXPIRED`, and the connection carries on as a new client.
#[tokio::test]
async fn an_unknown_token_is_session_expired() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "resume", "session_token": "not-a-token", "last_id": 0}))
        .await;
    client.expect_error("SESSION_EXPIRED").await;
    assert_eq!(client.set_username("ada").await["username"], "ada");
    client.create_room().await;
}

/// A `resume` that is not the first request is refused: a named client has a session already.
#[tokio::test]
async fn resume_must_come_first() {
    let server = TestServer::start().await;
    let other = server.named("grace").await;
    let mut client = server.named("ada").await;
    client
        .send(json!({"type": "resume", "session_token": other.session_token, "last_id": 0}))
        .await;
    client.expect_error("INVALID_MESSAGE").await;
}

/// Resuming a session whose connection is still open takes it over: the old connection is
/// closed with 4000 "session resumed elsewhere"; a second resume of the same token takes over
/// again from the first.
#[tokio::test]
async fn two_resumes_of_one_token() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    let token = grace.session_token.clone();

    let (mut first, resumed) = resume(&server, &token, 0).await;
    assert_eq!(resumed["peer"], "ada");
    let frame = grace.expect_close().await.expect("a close frame");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4000, "session resumed elsewhere")
    );
    ada.expect("peer_reconnected").await;

    let (mut second, resumed) = resume(&server, &token, 0).await;
    assert_eq!(
        (resumed["username"].as_str(), resumed["peer"].as_str()),
        (Some("grace"), Some("ada"))
    );
    let frame = first.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4000);
    ada.expect("peer_reconnected").await;

    // Only the newest connection speaks for the session.
    second.chat("it is me").await;
    assert_eq!(second.expect("chat").await["from"], "grace");
    assert_eq!(ada.expect("chat").await["content"], "it is me");
    ada.expect_nothing_pending().await;
}

/// A member who left its room and then lost its connection has nothing to resume.
#[tokio::test]
async fn a_member_who_left_cannot_resume() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    grace.send(json!({"type": "leave_room"})).await;
    grace.expect("room_left").await;
    ada.expect("peer_left").await;
    let token = grace.session_token.clone();
    drop(grace);
    ada.expect_nothing_pending().await;

    let mut late = server.client().await;
    late.send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    late.expect_error("SESSION_EXPIRED").await;
}

/// With `--resume-grace 0s` a lost connection is `peer_left` at once, as in protocol v1, and
/// its session cannot be resumed.
#[tokio::test]
async fn no_grace_is_protocol_v1() {
    let server = server_with_grace(Duration::ZERO).await;
    let (mut ada, grace, _) = server.pair("ada", "grace").await;
    let token = grace.session_token.clone();
    drop(grace);
    assert_eq!(ada.expect("peer_left").await["reason"], "disconnected");
    let mut late = server.client().await;
    late.send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    late.expect_error("SESSION_EXPIRED").await;
}

/// If the peer says something and leaves while a member is away, the member still gets those
/// messages on resume, but a newcomer to the room never sees them.
#[tokio::test]
async fn messages_from_a_peer_who_left_meanwhile_are_not_lost() {
    let server = TestServer::start().await;
    let (mut ada, grace, code) = server.pair("ada", "grace").await;
    let token = grace.session_token.clone();
    drop(grace);
    ada.expect("peer_disconnected").await;
    ada.chat("sorry, I have to go").await;
    ada.expect("chat").await;
    ada.send(json!({"type": "leave_room"})).await;
    ada.expect("room_left").await;

    let mut newcomer = server.named("linus").await;
    let joined = newcomer.join(&code).await;
    assert_eq!(
        joined["history"],
        json!([]),
        "the newcomer must not read the old conversation"
    );
    assert_eq!(joined["peer"], "grace");
    // Grace is still away, and the newcomer is told so.
    assert_eq!(
        newcomer.expect("peer_disconnected").await["username"],
        "grace"
    );

    let (_grace, resumed) = resume(&server, &token, 0).await;
    assert_eq!(contents(&resumed["missed"]), ["sorry, I have to go"]);
    assert_eq!(resumed["peer"], "linus");
    assert_eq!(
        newcomer.expect("peer_reconnected").await["username"],
        "grace"
    );
}

/// Read receipts reach the peer, only ever move forward, and cannot point past the last message.
#[tokio::test]
async fn read_receipts() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    for text in ["one", "two"] {
        ada.chat(text).await;
        ada.expect("chat").await;
        grace.expect("chat").await;
    }
    grace.send(json!({"type": "read", "up_to": 2})).await;
    assert_eq!(
        ada.expect("read").await,
        json!({"type": "read", "username": "grace", "up_to": 2})
    );
    // Stale receipts are ignored without an error; future ones are refused.
    grace.send(json!({"type": "read", "up_to": 1})).await;
    grace.send(json!({"type": "read", "up_to": 2})).await;
    grace.expect_nothing_pending().await;
    ada.expect_nothing_pending().await;
    grace.send(json!({"type": "read", "up_to": 3})).await;
    grace.expect_error("INVALID_MESSAGE").await;
    grace.send(json!({"type": "read", "up_to": "two"})).await;
    grace.expect_error("INVALID_MESSAGE").await;

    // A resumed session learns how far its peer has read.
    let token = ada.session_token.clone();
    drop(ada);
    grace.expect("peer_disconnected").await;
    let (mut ada, _) = resume(&server, &token, 2).await;
    assert_eq!(
        ada.expect("read").await,
        json!({"type": "read", "username": "grace", "up_to": 2})
    );

    let mut outsider = server.named("linus").await;
    outsider.send(json!({"type": "read", "up_to": 1})).await;
    outsider.expect_error("NOT_IN_ROOM").await;
}
