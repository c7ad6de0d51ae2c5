//! What a joiner and a resuming member receive of a room's conversation: every message, once
//! and in order, in frames that a client with a 1 MiB limit accepts (the test clients have
//! it), however large the messages; and, where a storage bound dropped something, a count of
//! what was lost instead of a silent gap.

mod common;

use serde_json::{Value, json};

use chat_server::Config;
use chat_server::message::MAX_FRAME_BYTES;
use chat_server::room::Room;
use common::{CuttableProxy, TestClient, TestServer};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The longest chat content, in characters.
const MAX_CHARS: usize = 4096;

/// The next frame, which must be a text frame of at most `MAX_FRAME_BYTES`, as JSON.
async fn next_frame(client: &mut TestClient) -> Value {
    loop {
        let frame = tokio::time::timeout(common::PATIENCE, client.ws.next())
            .await
            .expect("a frame within the patience period")
            .expect("the connection is open")
            .expect("a frame the client accepts");
        match frame {
            Message::Text(text) => {
                assert!(
                    text.len() <= MAX_FRAME_BYTES,
                    "a frame of {} bytes",
                    text.len()
                );
                return serde_json::from_str(&text).expect("JSON");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads a message that carries a history (`kind`, its messages in `field`) and the `chat`
/// frames that follow it until `count` messages have arrived; returns the message and the
/// messages in the order they came.
async fn read_history(
    client: &mut TestClient,
    kind: &str,
    field: &str,
    count: usize,
) -> (Value, Vec<Value>) {
    let head = next_frame(client).await;
    assert_eq!(head["type"], kind, "{head}");
    let mut messages: Vec<Value> = head[field].as_array().expect("an array").clone();
    if kind == "resumed" {
        // `resumed` says how many `chat` frames follow with the rest.
        let more = head["more"].as_u64().expect("more") as usize;
        assert_eq!(messages.len() + more, count, "{kind} announces the rest");
    }
    while messages.len() < count {
        let chat = next_frame(client).await;
        assert_eq!(chat["type"], "chat", "{chat}");
        messages.push(chat);
    }
    (head, messages)
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|message| message["id"].as_u64().expect("an id"))
        .collect()
}

/// `count` chats of `content` from `client`, each read back before the next.
async fn say(client: &mut TestClient, count: usize, content: &str) {
    for _ in 0..count {
        client.chat(content).await;
        client.expect("chat").await;
    }
}

/// A host alone in a room says 100 of the longest messages (4,096 emoji, 16 KiB each); a
/// guest who then joins receives every one of them, in order, once, over frames a 1 MiB
/// client accepts, and the conversation goes on.
#[tokio::test]
async fn a_joiner_receives_a_history_of_the_longest_messages() {
    for content in [
        "😀".repeat(MAX_CHARS),
        // Characters JSON must escape, six bytes each on the wire: the longest frames.
        "\u{1}".repeat(MAX_CHARS),
    ] {
        let server = TestServer::start().await;
        let mut ada = server.named("ada").await;
        let code = ada.create_room().await;
        say(&mut ada, 100, &content).await;

        let mut grace = server.named("grace").await;
        grace
            .send(json!({"type": "join_room", "room_code": code}))
            .await;
        let (joined, history) = read_history(&mut grace, "room_joined", "history", 100).await;
        assert_eq!(joined["peer"], "ada");
        assert_eq!(ids(&history), (1..=100).collect::<Vec<_>>());
        assert!(
            history
                .iter()
                .all(|chat| chat["content"] == content.as_str())
        );
        ada.expect("peer_joined").await;

        grace.chat("hello").await;
        assert_eq!(grace.expect("chat").await["id"], 101);
        assert_eq!(ada.expect("chat").await["content"], "hello");
        grace.expect_nothing_pending().await;
    }
}

/// The largest replay a resume can need: a member away while its peer says as much as the
/// room keeps (1,000 messages, about 4 MiB) gets all of it, in order, once, with nothing lost.
#[tokio::test]
async fn a_resume_receives_the_largest_replay() {
    let server = TestServer::with_config(Config::default().unlimited()).await;
    let (mut ada, grace, _) = server.pair("ada", "grace").await;
    let token = grace.session_token.clone();
    drop(grace);
    ada.expect("peer_disconnected").await;
    // 1,000 messages whose frames with the room's bookkeeping just fit in its 4 MiB.
    let per_message = Room::MAX_STORED_BYTES / Room::MAX_STORED;
    let content = "x".repeat(per_message - Room::OVERHEAD_PER_MESSAGE - 100);
    say(&mut ada, Room::MAX_STORED, &content).await;

    let mut grace = server.client().await;
    grace
        .send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    let (resumed, missed) = read_history(&mut grace, "resumed", "missed", Room::MAX_STORED).await;
    assert_eq!(resumed["lost"], 0);
    assert_eq!(ids(&missed), (1..=1000).collect::<Vec<_>>());
    ada.expect("peer_reconnected").await;
    grace.chat("back").await;
    assert_eq!(grace.expect("chat").await["id"], 1001);
}

/// When the room's bound pushed messages out while a member was away, `resumed` says how many
/// it lost, and `missed` holds the rest in order: an explicit gap, never a silent one.
#[tokio::test]
async fn a_resume_past_the_bound_says_what_was_lost() {
    let server = TestServer::with_config(Config::default().unlimited()).await;
    let (mut ada, grace, _) = server.pair("ada", "grace").await;
    let token = grace.session_token.clone();
    drop(grace);
    ada.expect("peer_disconnected").await;
    say(&mut ada, Room::MAX_STORED + 10, "hi").await;

    let mut grace = server.client().await;
    grace
        .send(json!({"type": "resume", "session_token": token, "last_id": 3}))
        .await;
    let (resumed, missed) = read_history(&mut grace, "resumed", "missed", Room::MAX_STORED).await;
    // Ids 1 to 10 were pushed out; the member had seen 1 to 3, so 4 to 10 are lost.
    assert_eq!(resumed["lost"], 7);
    assert_eq!(ids(&missed), (11..=1010).collect::<Vec<_>>());
}

/// A member whose network dies without a FIN still looks present to the server; its peer says
/// 150 things meanwhile; a resume on a new connection, before the heartbeat notices, gets all
/// 150 after the last one the member saw, in order, once.
#[tokio::test]
async fn a_resume_after_a_silent_cut_misses_nothing() {
    let server = TestServer::with_config(Config::default().unlimited()).await;
    let proxy = CuttableProxy::start(server.addr).await;
    let mut ada = server.named("ada").await;
    let code = ada.create_room().await;
    let mut grace = TestClient::connect(&proxy.ws_url()).await;
    grace.set_username("grace").await;
    grace.join(&code).await;
    ada.expect("peer_joined").await;
    say(&mut ada, 5, "before").await;
    for id in 1..=5 {
        assert_eq!(grace.expect("chat").await["id"], id);
    }

    proxy.cut();
    for n in 1..=150 {
        ada.chat(&format!("meanwhile {n}")).await;
        ada.expect("chat").await;
    }

    let mut grace_again = server.client().await;
    let resume = json!({"type": "resume", "session_token": grace.session_token, "last_id": 5});
    grace_again.send(resume).await;
    let (resumed, missed) = read_history(&mut grace_again, "resumed", "missed", 150).await;
    assert_eq!(resumed["lost"], 0);
    assert_eq!(ids(&missed), (6..=155).collect::<Vec<_>>());
    let contents: Vec<String> = (1..=150).map(|n| format!("meanwhile {n}")).collect();
    assert_eq!(
        missed
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>(),
        contents
    );
    grace_again.expect_nothing_pending().await;
}
