//! Protocol v1, row by row and rule by rule, against the real server over real sockets.
//!
//! Tests of what happens when a connection ends run the server with `--resume-grace 0s`
//! (`TestServer::v1`), where v1 holds to the letter; tests/resume.rs covers the grace period.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use common::TestServer;

const ALPHABET: &str = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// The first message on a connection is `connected` with a UUID `client_id`.
#[tokio::test]
async fn connected_is_the_first_message_with_a_uuid() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    assert!(
        uuid::Uuid::parse_str(&a.client_id).is_ok(),
        "{}",
        a.client_id
    );
    assert_ne!(a.client_id, b.client_id);
}

/// `set_username` answers with the trimmed name and may be repeated to change it.
#[tokio::test]
async fn set_username_trims_and_can_change_the_name() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_eq!(
        client.set_username("  Ada Lovelace \t").await["username"],
        "Ada Lovelace"
    );
    assert_eq!(client.set_username("Ada").await["username"], "Ada");
    let thirty_two = "é".repeat(32);
    assert_eq!(
        client.set_username(&thirty_two).await["username"],
        thirty_two.as_str()
    );
}

/// Empty, too long or control-character names are `INVALID_USERNAME`, and the old name stays.
#[tokio::test]
async fn invalid_usernames_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for bad in ["", "   ", &"x".repeat(33), "new\nline", "nul\u{0}"] {
        client
            .send(json!({"type": "set_username", "username": bad}))
            .await;
        client.expect_error("INVALID_USERNAME").await;
    }
    // Without a valid name, the client still cannot create a room.
    client.send(json!({"type": "create_room"})).await;
    client.expect_error("USERNAME_REQUIRED").await;
}

/// `create_room` and `join_room` need a name first.
#[tokio::test]
async fn rooms_need_a_username() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send(json!({"type": "create_room"})).await;
    client.expect_error("USERNAME_REQUIRED").await;
    client
        .send(json!({"type": "join_room", "room_code": "ABC234"}))
        .await;
    client.expect_error("USERNAME_REQUIRED").await;
}

/// A created room has a 6-character code from the alphabet, and codes differ between rooms.
#[tokio::test]
async fn create_room_returns_a_well_formed_unique_code() {
    let server = TestServer::start().await;
    let mut codes = std::collections::HashSet::new();
    for n in 0..20 {
        let mut client = server.named(&format!("host{n}")).await;
        let code = client.create_room().await;
        assert_eq!(code.len(), 6, "{code}");
        assert!(code.chars().all(|c| ALPHABET.contains(c)), "{code}");
        assert!(codes.insert(code));
    }
}

/// Inside a room, `create_room`, `join_room` and `set_username` are `ALREADY_IN_ROOM`.
#[tokio::test]
async fn room_members_cannot_create_join_or_rename() {
    let server = TestServer::start().await;
    let (mut host, _guest, code) = server.pair("ada", "grace").await;
    let mut other = server.named("linus").await;
    let other_code = other.create_room().await;

    host.send(json!({"type": "create_room"})).await;
    host.expect_error("ALREADY_IN_ROOM").await;
    host.send(json!({"type": "join_room", "room_code": other_code}))
        .await;
    host.expect_error("ALREADY_IN_ROOM").await;
    host.send(json!({"type": "join_room", "room_code": code}))
        .await;
    host.expect_error("ALREADY_IN_ROOM").await;
    host.send(json!({"type": "set_username", "username": "someone"}))
        .await;
    host.expect_error("ALREADY_IN_ROOM").await;
}

/// Joining trims and upper-cases the code; the joiner gets `room_joined` with the host's name and
/// an empty history, and the host gets `peer_joined`.
#[tokio::test]
async fn join_room_accepts_a_sloppily_typed_code() {
    let server = TestServer::start().await;
    let mut host = server.named("ada").await;
    let code = host.create_room().await;
    let mut guest = server.named("grace").await;
    let joined = guest.join(&format!("  {}\n", code.to_lowercase())).await;
    assert_eq!(
        joined,
        json!({"type": "room_joined", "room_code": code, "peer": "ada", "history": []})
    );
    assert_eq!(
        host.expect("peer_joined").await,
        json!({"type": "peer_joined", "username": "grace"})
    );
}

/// Malformed codes, unknown codes, full rooms and a clashing name each get their own error.
#[tokio::test]
async fn join_room_refusals() {
    let server = TestServer::start().await;
    let (_host, _guest, code) = server.pair("ada", "grace").await;
    let mut third = server.named("linus").await;

    for bad in [
        "",
        "ABC23",
        "ABC2345",
        "ABCDE0",
        "ABCDEI",
        "ABC-23",
        "😀😀😀",
    ] {
        third
            .send(json!({"type": "join_room", "room_code": bad}))
            .await;
        third.expect_error("INVALID_ROOM_CODE").await;
    }
    let unknown = if code == "AAAAAA" { "BBBBBB" } else { "AAAAAA" };
    third
        .send(json!({"type": "join_room", "room_code": unknown}))
        .await;
    third.expect_error("ROOM_NOT_FOUND").await;
    third
        .send(json!({"type": "join_room", "room_code": code}))
        .await;
    third.expect_error("ROOM_FULL").await;

    let mut lonely = server.named("ada").await;
    let lonely_code = lonely.create_room().await;
    let mut namesake = server.named("ada").await;
    namesake
        .send(json!({"type": "join_room", "room_code": lonely_code}))
        .await;
    namesake.expect_error("USERNAME_TAKEN").await;
}

/// Both members receive each chat message, sender included, with the documented fields, the
/// content exactly as sent, ids counting from 1 and a millisecond Unix timestamp.
#[tokio::test]
async fn chat_reaches_both_members() {
    let server = TestServer::start().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;

    host.chat("  hello,\n  world  🌍 <b>").await;
    let at_host = host.expect("chat").await;
    let at_guest = guest.expect("chat").await;
    assert_eq!(at_host, at_guest);
    assert_eq!(at_host["id"], 1);
    assert_eq!(at_host["from"], "ada");
    assert_eq!(at_host["content"], "  hello,\n  world  🌍 <b>");
    let timestamp = at_host["timestamp"]
        .as_u64()
        .expect("timestamp is a number");
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        (before..=after).contains(&timestamp),
        "{before} <= {timestamp} <= {after}"
    );

    guest.chat("hi ada").await;
    assert_eq!(host.expect("chat").await["id"], 2);
    let reply = guest.expect("chat").await;
    assert_eq!(
        (reply["id"].as_u64(), reply["from"].as_str()),
        (Some(2), Some("grace"))
    );
}

/// When both members send at once, both see every message in the same order, ids ascending.
#[tokio::test]
async fn both_members_see_the_same_order() {
    // A hundred messages at once is a script, not a person: rate limiting off.
    let server = TestServer::start().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    for n in 0..50 {
        host.chat(&format!("a{n}")).await;
        guest.chat(&format!("g{n}")).await;
    }
    let mut seen_by_host = Vec::new();
    let mut seen_by_guest = Vec::new();
    for _ in 0..100 {
        let message = host.expect("chat").await;
        seen_by_host.push((message["id"].as_u64(), message["content"].clone()));
        let message = guest.expect("chat").await;
        seen_by_guest.push((message["id"].as_u64(), message["content"].clone()));
    }
    assert_eq!(seen_by_host, seen_by_guest);
    let ids: Vec<_> = seen_by_host.iter().map(|(id, _)| id.expect("id")).collect();
    assert_eq!(ids, (1..=100).collect::<Vec<_>>());
}

/// A member alone in a room may chat; a joiner then receives what was said as history.
#[tokio::test]
async fn history_is_sent_to_the_joiner() {
    let server = TestServer::start().await;
    let mut host = server.named("ada").await;
    let code = host.create_room().await;
    host.chat("first").await;
    host.chat("second").await;
    let first = host.expect("chat").await;
    let second = host.expect("chat").await;

    let mut guest = server.named("grace").await;
    let joined = guest.join(&code).await;
    assert_eq!(joined["history"], json!([first, second]));
    assert_eq!(joined["history"][0]["type"], "chat");
}

/// History keeps only the last 100 messages.
#[tokio::test]
async fn history_keeps_the_last_hundred_messages() {
    // A hundred messages at once is a script, not a person: rate limiting off.
    let server = TestServer::start().await;
    let mut host = server.named("ada").await;
    let code = host.create_room().await;
    for n in 1..=105 {
        host.chat(&format!("m{n}")).await;
    }
    for _ in 1..=105 {
        host.expect("chat").await;
    }
    let mut guest = server.named("grace").await;
    let history = guest.join(&code).await["history"].clone();
    let history = history.as_array().expect("history is an array");
    assert_eq!(history.len(), 100);
    assert_eq!(history[0]["id"], 6);
    assert_eq!(history[99]["content"], "m105");
}

/// When a member goes, history is emptied: the next joiner never sees the earlier conversation.
#[tokio::test]
async fn history_is_emptied_when_a_member_leaves() {
    let server = TestServer::start().await;
    let (mut host, mut guest, code) = server.pair("ada", "grace").await;
    host.chat("private").await;
    host.expect("chat").await;
    guest.expect("chat").await;
    guest.send(json!({"type": "leave_room"})).await;
    guest.expect("room_left").await;
    host.expect("peer_left").await;

    let mut newcomer = server.named("linus").await;
    assert_eq!(newcomer.join(&code).await["history"], json!([]));
    // Ids keep counting in the room.
    host.expect("peer_joined").await;
    host.chat("welcome").await;
    assert_eq!(newcomer.expect("chat").await["id"], 2);
}

/// Empty or blank content is `EMPTY_MESSAGE`; over 4096 characters is `MESSAGE_TOO_LONG`;
/// exactly 4096 multi-byte characters is fine.
#[tokio::test]
async fn chat_content_limits() {
    let server = TestServer::start().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    for blank in ["", " ", "\n\t "] {
        host.chat(blank).await;
        host.expect_error("EMPTY_MESSAGE").await;
    }
    host.chat(&"x".repeat(4097)).await;
    host.expect_error("MESSAGE_TOO_LONG").await;
    let longest = "ü".repeat(4096);
    host.chat(&longest).await;
    assert_eq!(host.expect("chat").await["content"], longest.as_str());
    assert_eq!(
        guest.expect("chat").await["id"],
        1,
        "refused messages take no id"
    );
}

/// `chat`, `typing`, `stop_typing` and `leave_room` outside a room are `NOT_IN_ROOM`.
#[tokio::test]
async fn room_requests_outside_a_room_are_not_in_room() {
    let server = TestServer::start().await;
    let mut client = server.named("ada").await;
    for kind in ["chat", "typing", "stop_typing", "leave_room"] {
        client.send(json!({"type": kind, "content": "hi"})).await;
        client.expect_error("NOT_IN_ROOM").await;
    }
}

/// `typing` reaches the peer once per typing spell; a repeat only restarts the timer;
/// `stop_typing` ends the spell; `stop_typing` from an idle member sends nothing at all.
#[tokio::test]
async fn typing_is_a_state_per_member() {
    let server = TestServer::start().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;

    host.send(json!({"type": "stop_typing"})).await;
    host.expect_nothing_pending().await;

    host.send(json!({"type": "typing"})).await;
    host.send(json!({"type": "typing"})).await;
    host.send(json!({"type": "typing"})).await;
    assert_eq!(
        guest.expect("typing").await,
        json!({"type": "typing", "username": "ada"})
    );
    host.send(json!({"type": "stop_typing"})).await;
    assert_eq!(
        guest.expect("stop_typing").await,
        json!({"type": "stop_typing", "username": "ada"})
    );
    host.send(json!({"type": "stop_typing"})).await;
    host.expect_nothing_pending().await;
    guest.expect_nothing_pending().await;
    // The typist hears nothing about its own typing.
    host.expect_nothing_pending().await;
}

/// A typing member who sends a chat message produces `stop_typing` before the message.
#[tokio::test]
async fn chat_ends_typing_first() {
    let server = TestServer::start().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    host.send(json!({"type": "typing"})).await;
    guest.expect("typing").await;
    host.chat("done typing").await;
    guest.expect("stop_typing").await;
    assert_eq!(guest.expect("chat").await["content"], "done typing");
    host.expect("chat").await;
    host.expect_nothing_pending().await;
}

/// A typing member who stays silent for the typing timeout produces `stop_typing`.
#[tokio::test]
async fn typing_times_out() {
    let config = chat_server::Config {
        typing_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let server = TestServer::with_config(config).await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    let started = std::time::Instant::now();
    host.send(json!({"type": "typing"})).await;
    guest.expect("typing").await;
    guest.expect("stop_typing").await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
}

/// A typing member who leaves produces `stop_typing` before `peer_left`; the leaver gets
/// `room_left`, and the member who stays can go on chatting alone.
#[tokio::test]
async fn leaving_while_typing() {
    let server = TestServer::start().await;
    let (mut host, mut guest, code) = server.pair("ada", "grace").await;
    guest.send(json!({"type": "typing"})).await;
    host.expect("typing").await;
    guest.send(json!({"type": "leave_room"})).await;
    assert_eq!(
        guest.expect("room_left").await,
        json!({"type": "room_left", "room_code": code})
    );
    host.expect("stop_typing").await;
    assert_eq!(
        host.expect("peer_left").await,
        json!({"type": "peer_left", "username": "grace", "reason": "left"})
    );
    host.chat("still here").await;
    host.expect("chat").await;
    // The leaver is out of the room and may now create or join another.
    guest
        .send(json!({"type": "chat", "content": "hello?"}))
        .await;
    guest.expect_error("NOT_IN_ROOM").await;
    guest.create_room().await;
}

/// The member who stays becomes the host, and the room stays joinable under the same code.
#[tokio::test]
async fn the_room_survives_the_host_leaving() {
    let server = TestServer::start().await;
    let (mut host, mut guest, code) = server.pair("ada", "grace").await;
    host.send(json!({"type": "leave_room"})).await;
    host.expect("room_left").await;
    guest.expect("peer_left").await;

    let mut newcomer = server.named("linus").await;
    assert_eq!(newcomer.join(&code).await["peer"], "grace");
    assert_eq!(guest.expect("peer_joined").await["username"], "linus");
}

/// A room whose last member leaves is deleted: its code is `ROOM_NOT_FOUND` from then on.
#[tokio::test]
async fn an_empty_room_is_deleted() {
    let server = TestServer::start().await;
    let mut host = server.named("ada").await;
    let code = host.create_room().await;
    host.send(json!({"type": "leave_room"})).await;
    host.expect("room_left").await;
    let mut late = server.named("grace").await;
    late.send(json!({"type": "join_room", "room_code": code}))
        .await;
    late.expect_error("ROOM_NOT_FOUND").await;
}

/// A member whose connection drops without a close handshake produces `stop_typing` (if typing)
/// and then `peer_left` with `"disconnected"`; the one who stays keeps the room.
#[tokio::test]
async fn an_abrupt_disconnect_is_announced() {
    let server = TestServer::v1().await;
    let (mut host, mut guest, code) = server.pair("ada", "grace").await;
    guest.send(json!({"type": "typing"})).await;
    host.expect("typing").await;
    // Dropping the stream closes the TCP connection without a WebSocket close frame.
    drop(guest);
    host.expect("stop_typing").await;
    assert_eq!(
        host.expect("peer_left").await,
        json!({"type": "peer_left", "username": "grace", "reason": "disconnected"})
    );
    let mut newcomer = server.named("linus").await;
    assert_eq!(newcomer.join(&code).await["peer"], "ada");
}

/// A clean close (a close frame) is announced as a disconnect too.
#[tokio::test]
async fn a_clean_close_is_announced_as_disconnected() {
    let server = TestServer::v1().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    guest.ws.close(None).await.expect("close handshake");
    assert_eq!(host.expect("peer_left").await["reason"], "disconnected");
}

/// Bad input of every kind is answered with `INVALID_MESSAGE` and the connection stays usable.
#[tokio::test]
async fn bad_input_is_answered_not_fatal() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for bad in [
        "not json",
        "{\"type\":",
        "[1,2,3]",
        "\"chat\"",
        "null",
        "{}",
        r#"{"type":"dance"}"#,
        r#"{"type":42}"#,
        r#"{"type":"chat"}"#,
        r#"{"type":"set_username","username":7}"#,
        r#"{"type":"join_room","room_code":["ABC234"]}"#,
    ] {
        client.send_text(bad).await;
        client.expect_error("INVALID_MESSAGE").await;
    }
    client.send_binary(b"\x00\x01binary").await;
    client.expect_error("INVALID_MESSAGE").await;
    assert_eq!(
        client.set_username("still fine").await["username"],
        "still fine"
    );
}

/// A message over 64 KiB closes that connection with 1009; other clients are unaffected.
#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let server = TestServer::v1().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    let huge = format!(r#"{{"type":"chat","content":"{}"}}"#, "x".repeat(64 * 1024));
    guest.send_text(&huge).await;
    let frame = guest.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(host.expect("peer_left").await["reason"], "disconnected");
    host.chat("unaffected").await;
    host.expect("chat").await;
}

/// Nothing a client sends touches another room: errors go only to the client that caused them.
#[tokio::test]
async fn errors_go_only_to_their_cause() {
    let server = TestServer::start().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    host.send_text("garbage").await;
    host.expect_error("INVALID_MESSAGE").await;
    guest.expect_nothing_pending().await;
}

/// A JSON array is not a request, even one laid out like a request: `["set_username","bob"]` is
/// `INVALID_MESSAGE` and sets no name, so `create_room` afterwards is still `USERNAME_REQUIRED`.
#[tokio::test]
async fn an_array_is_not_a_request() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send_text(r#"["set_username","bob"]"#).await;
    let refusal = client.expect_error("INVALID_MESSAGE").await;
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|text| text.contains("JSON object")),
        "{refusal}"
    );
    client.send(json!({"type": "create_room"})).await;
    client.expect_error("USERNAME_REQUIRED").await;
    client.expect_nothing_pending().await;
}

/// A name of only invisible characters, and a name with a text-direction override in it, are
/// `INVALID_USERNAME` over a real socket, and neither becomes the client's name.
#[tokio::test]
async fn invisible_and_direction_overriding_names_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for bad in ["\u{200B}\u{200B}", "ada\u{202E}grace"] {
        client
            .send(json!({"type": "set_username", "username": bad}))
            .await;
        client.expect_error("INVALID_USERNAME").await;
    }
    client.send(json!({"type": "create_room"})).await;
    client.expect_error("USERNAME_REQUIRED").await;
    // A joined emoji keeps its zero-width joiner and is a fine name.
    assert_eq!(
        client.set_username("👩\u{200D}💻").await["username"],
        "👩\u{200D}💻"
    );
}
