//! End-to-end encrypted rooms, from the server's side, against the real server over real
//! sockets: the `encrypted` flag on the wire, envelopes relayed and kept exactly as sent (live,
//! in a joiner's history, in a resume's replay), the refusals that keep plaintext out of an
//! encrypted room and envelopes out of a plain one, and a log that shows none of it.
//!
//! The clients here seal and open envelopes themselves (`common::e2e`, written from
//! docs/protocol.md). What the web page does with them is `tests/browser_e2e.rs`.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use chat_server::Config;
use common::e2e::{self, MAX_ENVELOPE_CHARS, PREFIX};
use common::{ServerProcess, TestClient, TestServer};

/// An end-to-end encrypted room with two members: (host, guest, room code). The host created
/// it with `"encrypted": true`.
async fn encrypted_pair(server: &TestServer) -> (TestClient, TestClient, String) {
    let mut host = server.named("ada").await;
    let code = create_encrypted_room(&mut host).await;
    let mut guest = server.named("grace").await;
    let joined = guest.join(&code).await;
    assert_eq!(joined["encrypted"], true, "{joined}");
    host.expect("peer_joined").await;
    (host, guest, code)
}

/// Creates an end-to-end encrypted room and returns its code.
async fn create_encrypted_room(host: &mut TestClient) -> String {
    host.send(json!({"type": "create_room", "encrypted": true}))
        .await;
    let created = host.expect("room_created").await;
    created["room_code"]
        .as_str()
        .expect("room_code is a string")
        .to_owned()
}

/// Sends `envelope` as an encrypted chat.
async fn say_sealed(client: &mut TestClient, envelope: &str) {
    client
        .send(json!({"type": "chat", "content": envelope, "encrypted": true}))
        .await;
}

/// The `content`s of a list of `chat` objects.
fn contents(chats: &Value) -> Vec<&str> {
    chats
        .as_array()
        .expect("an array of chats")
        .iter()
        .map(|chat| chat["content"].as_str().expect("content"))
        .collect()
}

/// `create_room` with `"encrypted": true` makes an end-to-end encrypted room, and every reply
/// about it says so: `room_created` and the joiner's `room_joined` carry `"encrypted": true`,
/// and nothing else changes.
#[tokio::test]
async fn an_encrypted_room_says_so_to_both_members() {
    let server = TestServer::start().await;
    let mut ada = server.named("ada").await;
    ada.send(json!({"type": "create_room", "encrypted": true}))
        .await;
    let created = ada.expect("room_created").await;
    let code = created["room_code"].as_str().expect("a code").to_owned();
    assert_eq!(
        created,
        json!({"type": "room_created", "room_code": code, "encrypted": true})
    );
    let mut grace = server.named("grace").await;
    assert_eq!(
        grace.join(&code).await,
        json!({"type": "room_joined", "room_code": code, "peer": "ada", "history": [],
            "encrypted": true})
    );
    assert_eq!(
        ada.expect("peer_joined").await,
        json!({"type": "peer_joined", "username": "grace"})
    );
}

/// An envelope is relayed to both members exactly as it was sent, marked `"encrypted": true`;
/// the member who holds the key opens it to the text that was sealed, emoji and markup intact.
#[tokio::test]
async fn envelopes_are_relayed_exactly_as_sent() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, code) = encrypted_pair(&server).await;
    let key = e2e::room_key(&e2e::new_link_key(), &code);
    let text = "Secret plans 🤫 <b>bold</b> & \"quotes\"";
    let envelope = e2e::seal(&key, &code, "ada", text);
    say_sealed(&mut ada, &envelope).await;
    for member in [&mut ada, &mut grace] {
        let chat = member.expect("chat").await;
        assert_eq!(chat["content"], envelope.as_str());
        assert_eq!(chat["encrypted"], true);
        assert_eq!(chat["from"], "ada");
        assert_eq!(chat["id"], 1);
    }
    assert_eq!(
        e2e::open(&key, &code, "ada", &envelope).as_deref(),
        Some(text)
    );
}

/// In an encrypted room a `chat` without `"encrypted": true` is `ENCRYPTION_REQUIRED`, whatever
/// it holds (plain text, `"encrypted": false`, even an envelope), so a page that lost its key
/// cannot leak plaintext: the sender alone is told, and the peer receives nothing, not even the
/// end of the sender's typing.
#[tokio::test]
async fn a_plaintext_chat_in_an_encrypted_room_is_encryption_required() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, code) = encrypted_pair(&server).await;
    ada.send(json!({"type": "typing"})).await;
    grace.expect("typing").await;
    let envelope = e2e::seal(
        &e2e::room_key(&e2e::new_link_key(), &code),
        &code,
        "ada",
        "hi",
    );
    for request in [
        json!({"type": "chat", "content": "the launch code is 0000"}),
        json!({"type": "chat", "content": "the launch code is 0000", "encrypted": false}),
        json!({"type": "chat", "content": envelope}),
        json!({"type": "chat", "content": ""}),
    ] {
        ada.send(request).await;
        let refused = ada.expect_error("ENCRYPTION_REQUIRED").await;
        assert!(
            refused["message"]
                .as_str()
                .is_some_and(|text| text.contains("end-to-end encrypted")),
            "{refused}"
        );
    }
    grace.expect_nothing_pending().await;
    ada.expect_nothing_pending().await;
}

/// A plain room refuses a `chat` marked `"encrypted": true` with `INVALID_MESSAGE`, saying the
/// room is not encrypted; nothing reaches the peer.
#[tokio::test]
async fn an_encrypted_chat_in_a_plain_room_is_refused() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, code) = server.pair("ada", "grace").await;
    let envelope = e2e::seal(
        &e2e::room_key(&e2e::new_link_key(), &code),
        &code,
        "ada",
        "hi",
    );
    say_sealed(&mut ada, &envelope).await;
    let refused = ada.expect_error("INVALID_MESSAGE").await;
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|text| text.contains("not end-to-end encrypted")),
        "{refused}"
    );
    grace.expect_nothing_pending().await;
    // The room carries on as a plain room.
    ada.chat("hello").await;
    assert_eq!(grace.expect("chat").await["content"], "hello");
}

/// The size limit of an envelope is what 4,096 characters of plaintext can make (21,886
/// characters, docs/protocol.md): the longest real envelope, 4,096 four-byte emoji, is exactly
/// that and goes through; one character more is `MESSAGE_TOO_LONG`. Anything that is not an
/// envelope is `INVALID_MESSAGE`. The peer gets only the one that went through.
#[tokio::test]
async fn over_long_and_malformed_envelopes_are_refused() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, code) = encrypted_pair(&server).await;
    let key = e2e::room_key(&e2e::new_link_key(), &code);
    let longest = e2e::seal(&key, &code, "ada", &"😀".repeat(4096));
    assert_eq!(longest.len(), MAX_ENVELOPE_CHARS);

    say_sealed(&mut ada, &format!("{longest}A")).await;
    ada.expect_error("MESSAGE_TOO_LONG").await;
    let shortest = format!("{PREFIX}{}", "A".repeat(38)); // An IV and a tag: 28 bytes.
    for malformed in [
        "hello".to_owned(),
        String::new(),
        format!("v2.{}", &shortest[PREFIX.len()..]),
        format!("{shortest}=="),
        format!("{PREFIX}{}+/", "A".repeat(38)),
        format!("{PREFIX}{}", "A".repeat(37)),
        format!("{PREFIX}{}", "A".repeat(36)),
    ] {
        say_sealed(&mut ada, &malformed).await;
        ada.expect_error("INVALID_MESSAGE").await;
    }

    say_sealed(&mut ada, &longest).await;
    say_sealed(&mut ada, &shortest).await;
    for member in [&mut ada, &mut grace] {
        assert_eq!(member.expect("chat").await["content"], longest.as_str());
        assert_eq!(member.expect("chat").await["content"], shortest.as_str());
    }
    assert_eq!(
        e2e::open(&key, &code, "ada", &longest),
        Some("😀".repeat(4096))
    );
    grace.expect_nothing_pending().await;
}

/// What an encrypted room keeps is the envelopes, unchanged: a newcomer who joins after a
/// member left reads in `history` exactly the envelopes said since, each marked encrypted.
#[tokio::test]
async fn history_carries_envelopes_unchanged() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, code) = encrypted_pair(&server).await;
    let key = e2e::room_key(&e2e::new_link_key(), &code);
    grace.send(json!({"type": "leave_room"})).await;
    grace.expect("room_left").await;
    ada.expect("peer_left").await;
    let said: Vec<String> = ["first 🙂", "second <i>"]
        .iter()
        .map(|text| e2e::seal(&key, &code, "ada", text))
        .collect();
    for envelope in &said {
        say_sealed(&mut ada, envelope).await;
        ada.expect("chat").await;
    }

    let mut eve = server.named("eve").await;
    let joined = eve.join(&code).await;
    assert_eq!(joined["encrypted"], true);
    assert_eq!(contents(&joined["history"]), said);
    for chat in joined["history"].as_array().expect("history") {
        assert_eq!(chat["encrypted"], true, "{chat}");
    }
}

/// A resume replays what was missed as the envelopes that were said, unchanged, and `resumed`
/// says the room is encrypted.
#[tokio::test]
async fn a_resume_replays_envelopes_unchanged() {
    let server = TestServer::with_config(Config {
        resume_grace: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    let (mut ada, grace, code) = encrypted_pair(&server).await;
    let key = e2e::room_key(&e2e::new_link_key(), &code);
    let token = grace.session_token.clone();
    drop(grace);
    ada.expect("peer_disconnected").await;
    let said: Vec<String> = ["while you were away", "still away? 👀"]
        .iter()
        .map(|text| e2e::seal(&key, &code, "ada", text))
        .collect();
    for envelope in &said {
        say_sealed(&mut ada, envelope).await;
        ada.expect("chat").await;
    }

    let mut grace = server.client().await;
    grace
        .send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    let resumed = grace.expect("resumed").await;
    assert_eq!(resumed["encrypted"], true, "{resumed}");
    assert_eq!(resumed["room_code"], code.as_str());
    assert_eq!(contents(&resumed["missed"]), said);
    for (chat, text) in resumed["missed"]
        .as_array()
        .expect("missed")
        .iter()
        .zip(["while you were away", "still away? 👀"])
    {
        assert_eq!(chat["encrypted"], true);
        let envelope = chat["content"].as_str().expect("content");
        assert_eq!(
            e2e::open(&key, &code, "ada", envelope).as_deref(),
            Some(text)
        );
    }
}

/// Nothing changes on the wire for a plain room: `room_created`, `room_joined`, `chat` and
/// `resumed` carry no `encrypted` field at all, as in protocol v1; `"encrypted": false` in
/// `create_room` is a plain room.
#[tokio::test]
async fn a_plain_rooms_messages_carry_no_encrypted_field() {
    let server = TestServer::start().await;
    let mut ada = server.named("ada").await;
    ada.send(json!({"type": "create_room", "encrypted": false}))
        .await;
    let created = ada.expect("room_created").await;
    let code = created["room_code"].as_str().expect("a code").to_owned();
    assert_eq!(created, json!({"type": "room_created", "room_code": code}));
    let mut grace = server.named("grace").await;
    let joined = grace.join(&code).await;
    assert_eq!(
        joined,
        json!({"type": "room_joined", "room_code": code, "peer": "ada", "history": []})
    );
    ada.expect("peer_joined").await;
    grace.chat("plain words").await;
    let chat = ada.expect("chat").await;
    let mut fields: Vec<&str> = chat
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["content", "from", "id", "timestamp", "type"]);

    let token = grace.session_token.clone();
    drop(grace);
    ada.expect("peer_disconnected").await;
    let mut grace = server.client().await;
    grace
        .send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    let resumed = grace.expect("resumed").await;
    assert!(resumed.get("encrypted").is_none(), "{resumed}");
    assert!(resumed["missed"][0].get("encrypted").is_none(), "{resumed}");
}

/// With the server's debug logs on, the log shows no envelope, accepted or refused, and none of
/// the plaintext a page without its key tried to send: the server logs that a room was
/// created encrypted, never what is said in it.
#[tokio::test]
async fn the_debug_log_shows_no_envelope_and_no_plaintext() {
    let mut command = ServerProcess::command();
    command
        .args(["--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "chat_server=debug")
        .stderr(Stdio::piped());
    let ServerProcess {
        mut child,
        addr,
        lines,
        startup,
    } = ServerProcess::start(&mut command);
    let mut stderr = child.stderr.take().expect("piped stderr");

    let url = format!("ws://{addr}/ws");
    let mut ada = TestClient::connect(&url).await;
    ada.set_username("ada").await;
    let code = create_encrypted_room(&mut ada).await;
    let mut grace = TestClient::connect(&url).await;
    grace.set_username("grace").await;
    grace.join(&code).await;
    ada.expect("peer_joined").await;
    let link_key = e2e::new_link_key();
    let key = e2e::room_key(&link_key, &code);
    let envelope = e2e::seal(&key, &code, "ada", "the launch code is 0000");
    say_sealed(&mut ada, &envelope).await;
    ada.expect("chat").await;
    // Letters base64url allows, so that this is a well-formed envelope the server keeps.
    let marked = format!("{PREFIX}SECRETENVELOPESECRETENVELOPESECRETENVELOPE");
    say_sealed(&mut ada, &marked).await;
    ada.expect("chat").await;
    say_sealed(&mut ada, "v1.SECRET-REFUSED=").await;
    ada.expect_error("INVALID_MESSAGE").await;
    ada.chat("SECRET plaintext from a page without its key")
        .await;
    ada.expect_error("ENCRYPTION_REQUIRED").await;
    drop((ada, grace));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join");
    assert_eq!(exit.expect("wait").code(), Some(0));
    let mut log: String = startup
        .into_iter()
        .chain(lines.iter())
        .map(|line| line + "\n")
        .collect();
    stderr.read_to_string(&mut log).expect("read stderr");
    assert!(log.contains("room created"), "debug lines are in: {log}");
    let envelope_body = &envelope[PREFIX.len()..];
    for secret in [
        "SECRET",
        "launch code",
        envelope_body,
        &envelope_body[..16],
        &link_key,
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

/// A `key_check` is kept with the room exactly as its creator sent it, and given back to the
/// creator, to whoever joins, and to a resume; a room created without one (an older client)
/// has none, and a plain room never has one.
#[tokio::test]
async fn the_key_check_comes_back_on_create_join_and_resume() {
    const CHECK: &str = "AbCdEfGhIjKlMnOpQr-_09";
    let server = TestServer::start().await;
    let mut host = server.named("ada").await;
    host.send(json!({"type": "create_room", "encrypted": true, "key_check": CHECK}))
        .await;
    let created = host.expect("room_created").await;
    assert_eq!(created["key_check"], CHECK, "{created}");
    let code = created["room_code"].as_str().expect("a code").to_owned();
    let mut guest = server.named("grace").await;
    let joined = guest.join(&code).await;
    assert_eq!(joined["key_check"], CHECK, "{joined}");
    let mut back = server.client().await;
    back.send(json!({"type": "resume", "session_token": guest.session_token, "last_id": 0}))
        .await;
    let resumed = back.expect("resumed").await;
    assert_eq!(resumed["key_check"], CHECK, "{resumed}");

    let mut old = server.named("old").await;
    let code = create_encrypted_room(&mut old).await;
    let mut joiner = server.named("joiner").await;
    let joined = joiner.join(&code).await;
    assert_eq!(joined["encrypted"], true, "{joined}");
    assert!(joined.get("key_check").is_none(), "{joined}");
}

/// A `key_check` that is not 22 characters of base64url, or one on a room that is not
/// encrypted, is `INVALID_MESSAGE` to its sender, and no room is opened.
#[tokio::test]
async fn a_malformed_or_misplaced_key_check_is_refused() {
    let server = TestServer::start().await;
    let mut host = server.named("ada").await;
    for request in [
        json!({"type": "create_room", "encrypted": true, "key_check": "too-short"}),
        json!({"type": "create_room", "encrypted": true, "key_check": "AbCdEfGhIjKlMnOpQr+/09"}),
        json!({"type": "create_room", "key_check": "AbCdEfGhIjKlMnOpQr-_09"}),
    ] {
        host.send(request.clone()).await;
        let refusal = host.expect_error("INVALID_MESSAGE").await;
        assert!(
            refusal["message"]
                .as_str()
                .is_some_and(|m| m.contains("key_check")),
            "the refusal says what is wrong: {request} -> {refusal}"
        );
    }
    host.send(json!({"type": "create_room", "encrypted": true, "key_check": 42}))
        .await;
    host.expect_error("INVALID_MESSAGE").await;
    // Still in no room: it can create one now.
    host.send(json!({"type": "create_room"})).await;
    host.expect("room_created").await;
}

/// v2 envelopes (the web client's) are relayed exactly as sent, from the smallest (one block
/// of padded plaintext) to the largest; one whose plaintext is not padded to whole blocks of
/// 64 bytes is `INVALID_MESSAGE`, and one over the limit `MESSAGE_TOO_LONG`.
#[tokio::test]
async fn v2_envelopes_are_relayed_and_checked() {
    let server = TestServer::start().await;
    let (mut host, mut guest, _code) = encrypted_pair(&server).await;
    // 37 + 64·k bytes in base64url: k = 1 is 101 bytes (135 characters), k = 257 is 16,485
    // bytes (21,980 characters).
    let smallest = format!("v2.{}", "A".repeat(135));
    let largest = format!("v2.{}", "-_".repeat(10_990));
    for envelope in [&smallest, &largest] {
        say_sealed(&mut host, envelope).await;
        assert_eq!(host.expect("chat").await["content"], envelope.as_str());
        assert_eq!(guest.expect("chat").await["content"], envelope.as_str());
    }
    say_sealed(&mut host, &format!("v2.{}", "A".repeat(136))).await;
    host.expect_error("INVALID_MESSAGE").await;
    say_sealed(&mut host, &format!("{largest}AAAA")).await;
    host.expect_error("MESSAGE_TOO_LONG").await;
    guest.expect_nothing_pending().await;
}
