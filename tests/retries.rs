//! A retry never duplicates: `chat` may carry the sender's own `client_msg_id`, which comes back
//! in the message, and a repeat of it from the same session is not stored again; the sender
//! gets the original message back instead. The web client resends with the same id when an
//! answer was lost, so from the user's side every message is sent exactly once.

mod common;

use serde_json::json;

use common::TestServer;

/// A message with a `client_msg_id` carries it back to both members; a repeat of the id gets
/// the sender the original message (same id, same content) and tells the peer nothing; another
/// id is a new message.
#[tokio::test]
async fn a_repeated_client_msg_id_is_answered_with_the_original() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    ada.send(json!({"type": "chat", "content": "hello", "client_msg_id": "m-1"}))
        .await;
    let original = ada.expect("chat").await;
    assert_eq!(original["client_msg_id"], "m-1");
    assert_eq!(grace.expect("chat").await, original);

    ada.send(json!({"type": "chat", "content": "hello", "client_msg_id": "m-1"}))
        .await;
    assert_eq!(
        ada.expect("chat").await,
        original,
        "the original, not a new one"
    );
    grace.expect_nothing_pending().await;

    ada.send(json!({"type": "chat", "content": "hello", "client_msg_id": "m-2"}))
        .await;
    let second = ada.expect("chat").await;
    assert_eq!(second["id"], original["id"].as_u64().expect("an id") + 1);
    assert_eq!(grace.expect("chat").await, second);
}

/// The same `client_msg_id` from another session is another message: the ids are each
/// sender's own.
#[tokio::test]
async fn client_msg_ids_are_per_session() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    ada.send(json!({"type": "chat", "content": "from ada", "client_msg_id": "x"}))
        .await;
    ada.expect("chat").await;
    grace.expect("chat").await;
    grace
        .send(json!({"type": "chat", "content": "from grace", "client_msg_id": "x"}))
        .await;
    assert_eq!(grace.expect("chat").await["content"], "from grace");
    assert_eq!(ada.expect("chat").await["content"], "from grace");
}

/// A `client_msg_id` that is not a string of 1 to 64 characters is `INVALID_MESSAGE`, and
/// nothing is stored; a message without one carries none back.
#[tokio::test]
async fn a_bad_client_msg_id_is_refused() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    for bad in [json!(""), json!("x".repeat(65)), json!(7)] {
        ada.send(json!({"type": "chat", "content": "hi", "client_msg_id": bad}))
            .await;
        ada.expect_error("INVALID_MESSAGE").await;
    }
    grace.expect_nothing_pending().await;
    ada.send(json!({"type": "chat", "content": "plain"})).await;
    let plain = ada.expect("chat").await;
    assert_eq!(plain["id"], 1, "nothing was stored before");
    assert!(plain.get("client_msg_id").is_none(), "{plain}");
    let longest = "é".repeat(64);
    ada.send(json!({"type": "chat", "content": "hi", "client_msg_id": longest}))
        .await;
    assert_eq!(ada.expect("chat").await["client_msg_id"], longest.as_str());
}
