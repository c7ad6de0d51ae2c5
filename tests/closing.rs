//! Every close the server starts reaches the client, even when the client has sent more than
//! the server will ever read: the client reads the close code, then a clean end of stream.
//!
//! Closing a socket that holds unread input makes the kernel send a reset, and the reset makes
//! the client's kernel throw away what the client had not read yet, close frame included. Each
//! test below leaves input unread on the server's side at the moment it closes, as real clients
//! do (a flooder, a big paste, a busy old tab, a server going down mid-conversation), and only
//! then reads.

mod common;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use chat_server::Config;
use common::{TestClient, TestServer};

/// Queues `count` chats and sends them without reading anything in between.
async fn send_without_reading(client: &mut TestClient, count: usize, label: &str) {
    for n in 0..count {
        let chat = json!({"type": "chat", "content": format!("{label} {n}")});
        client
            .ws
            .feed(Message::text(chat.to_string()))
            .await
            .expect("queue a chat");
    }
    client.ws.flush().await.expect("send the chats");
}

/// A flooder that sends 3000 chats without reading, at `--rate-limit 5 --rate-burst 10`, then
/// reads: it finds its refusals, a last `RATE_LIMITED`, and the close code 1008 with its
/// reason, not a connection reset.
#[tokio::test]
async fn a_flooder_reads_its_1008() {
    let server = TestServer::with_config(Config {
        rate_limit: 5,
        rate_burst: 10,
        ..Config::default()
    })
    .await;
    let mut mallory = server.named("mallory").await;
    mallory.create_room().await;
    send_without_reading(&mut mallory, 3000, "spam").await;

    let (messages, close) = mallory.read_to_close().await;
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "too many messages");
    let last = messages.last().expect("messages before the close");
    assert_eq!(last["code"], "RATE_LIMITED", "{last}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("closing")),
        "{last}"
    );
}

/// A 200 KiB message, over the 64 KiB limit, is answered with close code 1009, which the
/// client reads although the server stopped reading the message a quarter of the way in.
#[tokio::test]
async fn a_message_over_the_limit_reads_its_1009() {
    let server = TestServer::start().await;
    let mut ada = server.named("ada").await;
    let content = "x".repeat(200 * 1024);
    let chat = json!({"type": "chat", "content": content}).to_string();
    ada.ws.send(Message::text(chat)).await.expect("send");
    let (_, close) = ada.read_to_close().await;
    assert_eq!(u16::from(close.code), 1009);
}

/// When a session is resumed on a new connection while its old connection is busy sending,
/// the old connection reads everything that was queued for it, then close code 4000.
#[tokio::test]
async fn a_busy_old_connection_reads_its_4000() {
    let server = TestServer::with_config(Config::default().unlimited()).await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    send_without_reading(&mut grace, 300, "before").await;
    // Once Ada has them all, the room has accepted them all.
    for _ in 0..300 {
        ada.expect("chat").await;
    }

    let mut grace_again = server.client().await;
    grace_again
        .send(json!({"type": "resume", "session_token": grace.session_token, "last_id": 0}))
        .await;
    let resumed = grace_again.expect("resumed").await;
    // Every chat the old connection sent before the takeover reached the room first.
    let missed = resumed["missed"].as_array().expect("missed");
    let mut ids: Vec<u64> = missed.iter().filter_map(|m| m["id"].as_u64()).collect();
    // Replayed messages are `chat` frames after `resumed` when they do not fit in it.
    while ids.len() < 300 {
        ids.push(
            grace_again.expect("chat").await["id"]
                .as_u64()
                .expect("an id"),
        );
    }
    assert_eq!(ids, (1..=300).collect::<Vec<u64>>());

    // The old connection keeps sending after the takeover: nobody reads it any more.
    send_without_reading(&mut grace, 300, "after").await;
    let (messages, close) = grace.read_to_close().await;
    assert_eq!(u16::from(close.code), 4000);
    assert_eq!(close.reason.as_str(), "session resumed elsewhere");
    assert!(messages.iter().all(|m| m["type"] == "chat"));

    // Nothing the old connection said after the takeover was taken as the session's.
    grace_again.chat("the new tab").await;
    assert_eq!(grace_again.expect("chat").await["id"], 301);
    // The old connection still looked open, so Ada only hears that Grace is back.
    assert_eq!(ada.expect("peer_reconnected").await["username"], "grace");
    let chat = ada.expect("chat").await;
    assert_eq!(
        (chat["id"].as_u64(), chat["content"].as_str()),
        (Some(301), Some("the new tab"))
    );
}

/// A client that never reads while the server shuts down, and goes on sending meanwhile,
/// reads its messages and then close code 1001 once it does read.
#[tokio::test]
async fn a_client_that_does_not_read_during_shutdown_reads_its_1001() {
    let server = TestServer::with_config(Config::default().unlimited()).await;
    let mut ada = server.named("ada").await;
    ada.create_room().await;
    send_without_reading(&mut ada, 1000, "before").await;
    let shutdown = tokio::spawn(server.shut_down());
    send_without_reading(&mut ada, 1000, "during").await;

    let (_, close) = ada.read_to_close().await;
    assert_eq!(u16::from(close.code), 1001);
    shutdown.await.expect("no panic").expect("run returns Ok");
}
