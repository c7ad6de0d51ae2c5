//! End-to-end encrypted rooms against a hostile server, in real headless Chromium pages: a relay
//! (`common/hostile.rs`) between the pages and the real server rewrites, drops, injects, repeats
//! and reorders frames, as a server that wants to read a conversation would. In every case the
//! relay records every frame the pages send, and none holds what a person typed; the page says
//! where it stands on `<html data-e2e>` (`none`, `verifying`, `verified`, `failed`) and shows
//! only what the other person sent, once, in their order, or says what went wrong.
//!
//! The test vectors of docs/protocol.md are checked here too, against the page's own e2e.js
//! running in the browser and against `common::e2e`, written from the document.
//!
//! Needs Chromium and chromedriver, like `tests/browser.rs` (see `tests/common/browser.rs`).

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use fantoccini::key::Key;
use serde_json::{Value, json};

use common::TestServer;
use common::browser::{
    ChromeDriver, LAPTOP, Message, PHONE, Page, browser_available, closing_pages_after, eventually,
    one_browser_test_at_a_time,
};
use common::e2e;
use hostile::{Frames, HostileRelay};

/// What a failed page says when the server broke the rules.
const BROKEN: &str = "The server did not behave as it must, so this conversation is not safe.";

/// What a page shows in place of a message that did not verify.
const UNVERIFIED: &str = "This message could not be verified, so it is not shown.";

/// What a failed page says when its link does not open the room.
const WRONG_LINK: &str = "This link does not open this room";

/// Characters of a v2 envelope whose text fits one block of 64 bytes: `v2.` and base64url of
/// 37 + 64 bytes. A hello (81 bytes of plaintext, two blocks) is longer, so a hook that acts on
/// these acts on short text messages only.
const ONE_BLOCK_ENVELOPE_CHARS: usize = 3 + 135;

/// A server whose `room_created` leaves out `"encrypted": true` (the cheapest downgrade): the
/// page that asked for an encrypted room goes to `failed`, says the server did not behave as it
/// must, disables its composer, and sends nothing of what its person then types, however the
/// form is submitted: no chat, no typing. Leaving still works and leads back to the lobby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_created_without_the_flag_fails_closed() {
    if !browser_available("a_room_created_without_the_flag_fails_closed") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    relay.to_page(|_, mut frame| {
        if frame["type"] == "room_created" {
            let fields = frame.as_object_mut().expect("an object");
            fields.remove("encrypted");
            fields.remove("key_check");
        }
        vec![frame]
    });
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    closing_pages_after(&[&alice], async {
        alice.goto(&relay.url()).await;
        alice.choose_name().await;
        alice.find("#create-encrypted").await.click().await.unwrap();
        alice.find("#create-room").await.click().await.unwrap();
        alice.wait_for_e2e("failed").await;
        let before = frames_up_to(&relay, "Alice", "create_room");
        alice
            .wait_for_text("#e2e-failed", BROKEN, "Alice is told plainly")
            .await;
        assert!(
            !alice.displayed("#room-lock").await,
            "no lock in a failed room"
        );
        assert_disabled(&alice, "#message-input").await;

        let typed = "plaintext after the downgrade";
        alice.submit_anyway(typed).await;
        alice.leave_failed_room(&relay).await;
        relay.assert_never_sent(typed);
        assert_nothing_said(&relay, "Alice", before);
    })
    .await;
}

/// Bob is in an encrypted room through its invite link when the server sends him a `room_left`
/// he never asked for, then a `room_joined` for the same code without `"encrypted": true`: his
/// page goes to `failed` at the first, stays there at the second, keeps the conversation it had
/// (nothing of it is forgotten on the server's word), and sends nothing more: no chat, no
/// typing, no read receipt, whatever Bob types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrequested_room_left_then_room_joined_fails_closed() {
    if !browser_available("an_unrequested_room_left_then_room_joined_fails_closed") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        let (code, _) = encrypted_pair(&relay, &alice, &bob).await;
        alice.send_message("Before anything happened").await;
        bob.wait_for_message("Alice", "Before anything happened")
            .await;

        let left = json!({"type": "room_left", "room_code": code});
        assert_eq!(relay.inject("Bob", left), 1, "Bob has one socket");
        bob.wait_for_e2e("failed").await;
        // Counted from the failure on: until the page read the forged `room_left`, it was in
        // the room, and a read receipt for Alice's message may have gone out.
        let before = relay.sent_by("Bob").len();
        bob.wait_for_text("#e2e-failed", BROKEN, "Bob is told")
            .await;
        let joined =
            json!({"type": "room_joined", "room_code": code, "peer": "Alice", "history": []});
        relay.inject("Bob", joined);
        alice.send_message("Said after the attack").await;
        alice
            .wait_for_message("Alice", "Said after the attack")
            .await;

        let typed = "Bob writes after the attack";
        bob.submit_anyway(typed).await;
        assert_eq!(bob.e2e().await, "failed", "a room_joined cannot undo it");
        let shown = bob.messages().await;
        assert_eq!(texts_of(&shown), ["Before anything happened"], "{shown:?}");
        bob.leave_failed_room(&relay).await;
        relay.assert_never_sent(typed);
        assert_nothing_said(&relay, "Bob", before);
    })
    .await;
}

/// Bob reloads his tab in an encrypted room, and the server's `resumed` says the room is plain:
/// his page, which holds the room's key, does not believe it. It goes to `failed` and sends
/// nothing of what he types; a second reload keeps it failed, whatever the server says then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_without_the_flag_fails_closed_and_stays_failed() {
    if !browser_available("a_resume_without_the_flag_fails_closed_and_stays_failed") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        encrypted_pair(&relay, &alice, &bob).await;
        relay.to_page(|person, mut frame| {
            if person == "Bob" && frame["type"] == "resumed" {
                let fields = frame.as_object_mut().expect("an object");
                fields.remove("encrypted");
                fields.remove("key_check");
            }
            vec![frame]
        });
        bob.client.refresh().await.unwrap();
        bob.wait_for_e2e("failed").await;
        // Counted from the failure on: the page before the reload was in the room, and a read
        // receipt it had scheduled for the pair's messages may have gone out until it unloaded.
        let before = relay.sent_by("Bob").len();
        bob.wait_for_text("#e2e-failed", BROKEN, "Bob is told")
            .await;

        relay.to_page(|_, frame| vec![frame]);
        bob.client.refresh().await.unwrap();
        bob.wait_for_text("#e2e-failed", BROKEN, "still failed after a reload")
            .await;
        assert_eq!(bob.e2e().await, "failed");
        let typed = "Bob after the resume";
        bob.submit_anyway(typed).await;
        bob.leave_failed_room(&relay).await;
        relay.assert_never_sent(typed);
        // Each reload's `resume` is the page's own, and the `leave_room` at the end.
        let after: Vec<Value> = relay.sent_by("Bob").split_off(before);
        for frame in &after {
            assert!(
                matches!(frame["type"].as_str(), Some("resume" | "leave_room")),
                "Bob's failed page sent {frame}"
            );
        }
    })
    .await;
}

/// Bob opens an invite link, and the server answers his `join_room` with a `room_joined` that
/// names another room: his page does not take it (it never says he joined with the code alone,
/// which would be untrue), goes to `failed`, and sends nothing of what he types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_naming_another_room_fails_closed() {
    if !browser_available("a_reply_naming_another_room_fails_closed") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        alice.goto(&relay.url()).await;
        alice.choose_name().await;
        assert_eq!(alice.e2e().await, "none", "in the lobby, in no room");
        let code = alice.create_encrypted_room().await;
        let invite = alice.value("#invite-link").await;
        let other = if code == "ABCDEF" { "GHJKMN" } else { "ABCDEF" };
        relay.to_page(move |person, mut frame| {
            if person == "Bob" && frame["type"] == "room_joined" {
                frame["room_code"] = json!(other);
            }
            vec![frame]
        });
        bob.goto(&invite).await;
        bob.choose_name_only().await;
        bob.wait_for_e2e("failed").await;
        let before = frames_up_to(&relay, "Bob", "join_room");
        bob.wait_for_text("#e2e-failed", BROKEN, "Bob is told")
            .await;
        assert!(
            !bob.displayed("#e2e-missing").await,
            "no 'code alone' notice"
        );
        let typed = "Bob in the swapped room";
        bob.submit_anyway(typed).await;
        bob.leave_failed_room(&relay).await;
        bob.wait_for_e2e("none").await;
        relay.assert_never_sent(typed);
        assert_nothing_said(&relay, "Bob", before);
    })
    .await;
}

/// Alice writes in her encrypted room and closes her page (the server holds her seat). Bob
/// opens her invite link cut short, as a chat app might cut it: his page finds out at join, by
/// the room's key check, before it shows anything: `failed`, "This link does not open this
/// room", no message (not even as "could not be verified"), and no lock. His page gives the
/// seat back at once: Carol, with the whole link, gets in while Bob's page still says why he
/// did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_short_link_is_told_at_join_with_the_creator_offline() {
    if !browser_available("a_cut_short_link_is_told_at_join_with_the_creator_offline") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    let carol = Page::open(&driver, "Carol", PHONE).await;
    closing_pages_after(&[&alice, &bob, &carol], async {
        alice.goto(&relay.url()).await;
        alice.choose_name().await;
        let code = alice.create_encrypted_room().await;
        alice.wait_for_e2e("verified").await;
        let invite = alice.value("#invite-link").await;
        alice.send_message("Said before the link was cut").await;
        alice
            .wait_for_message("Alice", "Said before the link was cut")
            .await;
        alice.close().await;

        // 30 characters of the 43 are left: still a key (180 bits), just not this room's.
        let cut = &invite[..invite.len() - 13];
        bob.goto(cut).await;
        bob.choose_name_only().await;
        bob.wait_for_e2e("failed").await;
        bob.wait_for_text(
            "#e2e-failed",
            WRONG_LINK,
            "Bob is told the link is at fault",
        )
        .await;
        assert_eq!(bob.find("#room-code").await.text().await.unwrap(), code);
        assert!(bob.messages().await.is_empty(), "no message is shown");
        assert!(!bob.displayed("#room-lock").await, "no lock");
        let body = bob.body_text().await;
        assert!(!body.contains("could not be verified"), "{body}");

        carol.goto(&invite).await;
        carol.choose_name_only().await;
        carol
            .wait_for_text("#room-code", &code, "Carol is in the room")
            .await;
        carol.wait_for_e2e("verified").await;
        assert_eq!(bob.e2e().await, "failed");
        bob.wait_for_text("#e2e-failed", WRONG_LINK, "Bob's page still says why")
            .await;
        relay.assert_never_sent("Said before the link was cut");
    })
    .await;
}

/// A room whose `room_joined` comes without its key check (an older server, or one that keeps it
/// back) is `verifying` on the joiner's page, not `verified`: the lock shows, and the page can
/// write. The first envelope from the other person that opens confirms the key: `verified`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_check_the_page_is_verifying_until_a_message_opens() {
    if !browser_available("without_a_key_check_the_page_is_verifying_until_a_message_opens") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        alice.goto(&relay.url()).await;
        alice.choose_name().await;
        alice.create_encrypted_room().await;
        alice.wait_for_e2e("verified").await;
        let invite = alice.value("#invite-link").await;
        // Alice's hello would confirm the key as soon as Bob is in: held back, to look.
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let holding = held.clone();
        relay.to_page(move |person, mut frame| {
            if person == "Bob" && frame["type"] == "room_joined" {
                frame
                    .as_object_mut()
                    .expect("an object")
                    .remove("key_check");
            }
            if person == "Bob" && frame["type"] == "chat" && frame["from"] == "Alice" {
                holding.lock().unwrap().push(frame);
                return vec![];
            }
            vec![frame]
        });
        bob.goto(&invite).await;
        bob.choose_name_only().await;
        bob.wait_for_e2e("verifying").await;
        bob.wait_for_text("#room-lock", "end-to-end encrypted", "the lock shows")
            .await;
        // Alice is idle: nothing comes between the hook going and the held frames.
        relay.to_page(|_, frame| vec![frame]);
        for frame in held.lock().unwrap().drain(..) {
            relay.inject("Bob", frame);
        }
        alice.send_message("This confirms the key").await;
        bob.wait_for_message("Alice", "This confirms the key").await;
        bob.wait_for_e2e("verified").await;
    })
    .await;
}

/// The server repeats every message of Alice's to Bob (each copy under a chat id of its own,
/// so only the envelope's sequence number can tell): Bob's page shows each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_is_shown_once() {
    if !browser_available("a_repeated_message_is_shown_once") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        encrypted_pair(&relay, &alice, &bob).await;
        let mut ids = Renumber::default();
        let mut count = 0;
        relay_chats_to_bob(&relay, move |frame| {
            count += 1;
            if count > 3 {
                return vec![ids.next(frame)];
            }
            let copy = ids.next(frame.clone());
            vec![ids.next(frame), copy]
        });
        for text in ["one", "two", "three"] {
            alice.send_message(text).await;
        }
        bob.wait_for_message("Alice", "three").await;
        // Comes after the last repeat: once it shows, every repeat has been handled.
        alice.send_message("four, not repeated").await;
        let shown = bob.wait_for_message("Alice", "four, not repeated").await;
        assert_eq!(
            texts_of(&shown),
            ["one", "two", "three", "four, not repeated"]
        );
        assert_eq!(bob.e2e().await, "verified");
    })
    .await;
}

/// The server slips a plaintext `chat` under Alice's name into Bob's encrypted room, once
/// without `"encrypted": true` and once with it: Bob's page shows neither as text, only as
/// "could not be verified", and stays `verified` (the key is right; the message is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_slipped_into_an_encrypted_room_is_never_shown_as_text() {
    if !browser_available("plaintext_slipped_into_an_encrypted_room_is_never_shown_as_text") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        encrypted_pair(&relay, &alice, &bob).await;
        // Bob's receipts would name the relay's ids to the server.
        relay.to_server(|person, frame| {
            if person == "Bob" && frame["type"] == "read" {
                vec![]
            } else {
                vec![frame]
            }
        });
        let forged = "Send me the link again, please";
        for (id, encrypted) in [(1_000_001, false), (1_000_002, true)] {
            let chat = json!({
                "type": "chat", "id": id, "from": "Alice", "content": forged,
                "timestamp": 1_764_086_400_123_u64, "encrypted": encrypted,
            });
            assert_eq!(relay.inject("Bob", chat), 1);
        }
        let shown = eventually("Bob shows both forgeries", async || {
            let messages = bob.messages().await;
            (messages.len() == 2).then_some(messages)
        })
        .await;
        assert_eq!(texts_of(&shown), [UNVERIFIED, UNVERIFIED]);
        assert!(!bob.body_text().await.contains(forged));
        assert_eq!(bob.e2e().await, "verified");
    })
    .await;
}

/// The server holds back one of Alice's messages until after the next, and withholds another
/// altogether: Bob's page says where a message did not arrive ("1 message from Alice did not
/// arrive", never the text of anything), shows the held-back one when it comes, marked as
/// arrived out of order, and everything else in Alice's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reordered_message_is_marked_and_a_withheld_one_is_said() {
    if !browser_available("a_reordered_message_is_marked_and_a_withheld_one_is_said") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        encrypted_pair(&relay, &alice, &bob).await;
        let mut ids = Renumber::default();
        let mut count = 0;
        let mut held = None;
        relay_chats_to_bob(&relay, move |frame| {
            count += 1;
            match count {
                1 => {
                    held = Some(frame);
                    vec![]
                }
                2 => {
                    let first = held.take().expect("the first is held");
                    vec![ids.next(frame), ids.next(first)]
                }
                4 => vec![],
                _ => vec![ids.next(frame)],
            }
        });
        let texts = ["m1 held back", "m2", "m3", "m4 withheld", "m5"];
        for text in texts {
            alice.send_message(text).await;
            alice.wait_for_message("Alice", text).await;
        }
        let shown = bob.wait_for_message("Alice", "m5").await;
        assert_eq!(texts_of(&shown), ["m2", "m1 held back", "m3", "m5"]);
        let late: Vec<bool> = serde_json::from_value(
            bob.client
                .execute(
                    "return [...document.querySelectorAll('#messages .msg')]
                        .map((li) => li.classList.contains('msg--late'));",
                    vec![],
                )
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(late, [false, true, false, false], "only m1 is marked late");
        let events = bob.events().await;
        let gaps: Vec<&String> = events
            .iter()
            .filter(|e| e.contains("did not arrive"))
            .collect();
        assert_eq!(
            gaps,
            [
                "1 message from Alice did not arrive.",
                "1 message from Alice did not arrive."
            ],
            "{events:?}"
        );
        for event in &events {
            for text in texts {
                assert!(
                    !event.contains(text),
                    "a warning repeats a message: {event}"
                );
            }
        }
    })
    .await;
}

/// When both are present, the pages run the handshake: both show the same safety number, and
/// what they write next is sealed under a session key (kind 0x01), which the link key does not
/// open. A server that swaps a hello (a newcomer's own hello given back to her as the other's,
/// since it cannot make one) gets no session: the page shows it as "could not be verified",
/// shows no safety number, and goes on under the room key, which the server does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_gives_one_safety_number_and_a_swapped_hello_gives_none() {
    if !browser_available("the_handshake_gives_one_safety_number_and_a_swapped_hello_gives_none") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    let carol = Page::open(&driver, "Carol", PHONE).await;
    closing_pages_after(&[&alice, &bob, &carol], async {
        let (code, key) = encrypted_pair(&relay, &alice, &bob).await;
        let alices = alice.safety_number().await;
        let bobs = bob.safety_number().await;
        assert_eq!(alices, bobs, "one safety number on both pages");
        assert!(
            alices.len() == 14 && alices.chars().filter(|c| *c == ' ').count() == 2,
            "three groups of four digits: {alices}"
        );
        alice.send_message("Under the session key").await;
        bob.wait_for_message("Alice", "Under the session key").await;
        let envelope = last_chat_content(&relay, "Alice");
        let (kind, _) = e2e::header_v2(&envelope).expect("a v2 envelope");
        assert_eq!(kind, e2e::KIND_SESSION, "sealed under the session key");
        let room_key = e2e::room_key_v2(&key, &code);
        assert_eq!(e2e::open_v2(&room_key, &code, "Alice", &envelope), None);

        // Bob leaves; Carol comes with the link. The server keeps her hello from Alice and
        // gives it back to Carol as Alice's (all it can do: it cannot make one).
        bob.find("#leave").await.click().await.unwrap();
        alice
            .wait_for_text("#messages", "Bob left", "Alice sees Bob leave")
            .await;
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let hellos = kept.clone();
        relay.to_server(move |person, frame| {
            let is_hello = frame["content"]
                .as_str()
                .is_some_and(|c| c.len() > ONE_BLOCK_ENVELOPE_CHARS);
            match (person, frame["type"].as_str()) {
                ("Carol", Some("chat")) if is_hello => {
                    hellos.lock().unwrap().push(frame);
                    vec![] // Never reaches Alice.
                }
                // The reflected chat below has an id of the relay's own, which a receipt
                // would name to the server.
                ("Carol", Some("read")) => vec![],
                _ => vec![frame],
            }
        });
        let invite = alice.value("#invite-link").await;
        carol.goto(&invite).await;
        carol.choose_name_only().await;
        carol.wait_for_e2e("verified").await;
        let hello = eventually("Carol's page sends its hello", async || {
            kept.lock().unwrap().first().cloned()
        })
        .await;
        let reflected = json!({
            "type": "chat", "id": 0.5, "from": "Alice", "content": hello["content"],
            "encrypted": true, "timestamp": "2026-01-01T00:00:00Z",
        });
        assert_eq!(relay.inject("Carol", reflected), 1);
        let shown = carol.wait_for_message("Alice", UNVERIFIED).await;
        assert_eq!(shown.len(), 1, "{shown:?}");
        alice.send_message("To Carol").await;
        carol.wait_for_message("Alice", "To Carol").await;
        assert!(
            !carol.displayed("#safety").await,
            "no session, no safety number"
        );
        carol.send_message("Carol under the room key").await;
        alice
            .wait_for_message("Carol", "Carol under the room key")
            .await;
        let envelope = last_chat_content(&relay, "Carol");
        let opened = e2e::open_v2(&room_key, &code, "Carol", &envelope).expect("room key");
        assert_eq!(opened.kind, e2e::KIND_ROOM);
        assert_eq!(carol.e2e().await, "verified");
        relay.assert_never_sent("To Carol");
        relay.assert_never_sent("Carol under the room key");
    })
    .await;
}

/// The handshake's curve: two pages whose browser has X25519 both offer it after P-256 and agree
/// with it; a page whose browser lacks it (WebCrypto's X25519 made to fail before the page's
/// scripts run) offers P-256 alone, and the other page meets it there. Either way both pages
/// show one safety number and seal what follows under a session key. Each hello's offer is read
/// here with the room key, as docs/protocol.md lays it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_uses_x25519_where_both_pages_have_it_and_p256_otherwise() {
    if !browser_available("the_handshake_uses_x25519_where_both_pages_have_it_and_p256_otherwise") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let relay = HostileRelay::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    let dave = Page::open(&driver, "Dave", LAPTOP).await;
    let erin = Page::open(&driver, "Erin", PHONE).await;
    // Dave's browser, as an older one: no X25519 in WebCrypto.
    driver
        .before_page_scripts(
            &dave,
            "const generate = crypto.subtle.generateKey.bind(crypto.subtle);
             crypto.subtle.generateKey = (algorithm, ...rest) =>
               (algorithm && algorithm.name === 'X25519')
                 ? Promise.reject(new DOMException('no X25519 here', 'NotSupportedError'))
                 : generate(algorithm, ...rest);",
        )
        .await;
    closing_pages_after(&[&alice, &bob, &dave, &erin], async {
        // P-256's tag and point after the 8-byte run of the peer seen; then X25519's, or not.
        let offer = |person: &str, code: &str, key: &str| {
            let room_key = e2e::room_key_v2(key, code);
            relay
                .sent_by(person)
                .iter()
                .filter_map(|frame| frame["content"].as_str())
                .filter_map(|envelope| e2e::open_v2(&room_key, code, person, envelope))
                .find(|opened| opened.kind_of_body == e2e::TYPE_HELLO)
                .map(|hello| hello.body[8..].to_vec())
                .unwrap_or_else(|| panic!("{person} sent a hello"))
        };
        for (first, second, both_x25519) in [(&alice, &bob, true), (&dave, &erin, false)] {
            let (code, key) = encrypted_pair(&relay, first, second).await;
            for (page, has_x25519) in [(first, both_x25519), (second, true)] {
                let offer = offer(page.name, &code, &key);
                assert_eq!((offer[0], offer.len() >= 66), (0x01, true), "P-256 first");
                if has_x25519 {
                    assert_eq!(
                        (offer.len(), offer[66]),
                        (99, 0x02),
                        "{}: X25519",
                        page.name
                    );
                } else {
                    assert_eq!(offer.len(), 66, "{}: P-256 alone", page.name);
                }
            }
            assert_eq!(
                first.safety_number().await,
                second.safety_number().await,
                "one safety number on both pages"
            );
            first.send_message("After the handshake").await;
            second
                .wait_for_message(first.name, "After the handshake")
                .await;
            let envelope = last_chat_content(&relay, first.name);
            let (kind, _) = e2e::header_v2(&envelope).expect("a v2 envelope");
            assert_eq!(kind, e2e::KIND_SESSION, "sealed under the session key");
            relay.assert_never_sent("After the handshake");
        }
    })
    .await;
}

/// The test vectors of docs/protocol.md: the key check of the fixed link key, and the exact
/// envelope of a fixed text sealed with a fixed run id, sequence number and IV, come out the
/// same from the page's own e2e.js (in the browser), from `common::e2e` (written from the
/// document), and as the document prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_vectors_hold_for_the_page_the_document_and_the_tests() {
    if !browser_available("the_test_vectors_hold_for_the_page_the_document_and_the_tests") {
        return;
    }
    const LINK_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const CODE: &str = "K7M2QX";
    const FROM: &str = "Ada";
    const RUN: &str = "0123456789abcdef";
    const SEQ: u32 = 1;
    const IV: &str = "000102030405060708090a0b";
    const TEXT: &str = "Hello, Grace 👋";
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md");
    let run: [u8; 8] = hex(RUN).try_into().unwrap();
    let iv: [u8; 12] = hex(IV).try_into().unwrap();
    let from_rust = e2e::seal_v2_with(
        &e2e::room_key_v2(LINK_KEY, CODE),
        CODE,
        FROM,
        e2e::KIND_ROOM,
        run,
        SEQ,
        e2e::TYPE_TEXT,
        TEXT.as_bytes(),
        iv,
    );
    let check = e2e::key_check(LINK_KEY);

    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let driver = ChromeDriver::start().await;
    let page = Page::open(&driver, "Ada", LAPTOP).await;
    closing_pages_after(&[&page], async {
        page.goto(&format!("http://{}/", server.addr)).await;
        page.find("#name-input").await;
        let script = "const [key, code, from, run, seq, iv, text, done] = arguments;
            import('/js/e2e.js').then(async (e2e) => done([
                await e2e.keyCheck(key),
                await e2e.sealTextForVector(key, code, from, run, seq, iv, text),
            ]));";
        let args = [LINK_KEY, CODE, FROM, RUN]
            .map(|s| json!(s))
            .into_iter()
            .chain([json!(SEQ), json!(IV), json!(TEXT)])
            .collect();
        let result = page.client.execute_async(script, args).await.unwrap();
        let (page_check, page_envelope): (String, String) =
            serde_json::from_value(result).expect("two strings");
        assert_eq!(page_check, check, "the page's key check");
        assert_eq!(page_envelope, from_rust, "the page's envelope");
        let opened = e2e::open_v2(
            &e2e::room_key_v2(LINK_KEY, CODE),
            CODE,
            FROM,
            &page_envelope,
        )
        .expect("it opens");
        assert_eq!((opened.seq, opened.text()), (SEQ, Some(TEXT)));

        // Padding: 57 bytes of text fill the first block of 64 (with the 7-byte header); 58
        // take a second. Envelopes are 37 + 64·k bytes, in base64url with `v2.`.
        let script = "const [key, done] = arguments;
            import('/js/e2e.js').then(async (e2e) => done(await Promise.all(
                [0, 57, 58, 121, 122].map((n) => e2e.sealTextForVector(
                    key, 'K7M2QX', 'Ada', '0123456789abcdef', 1, '000102030405060708090a0b',
                    'a'.repeat(n))))));";
        let sealed = page
            .client
            .execute_async(script, vec![json!(LINK_KEY)])
            .await
            .unwrap();
        let lengths: Vec<usize> = serde_json::from_value::<Vec<String>>(sealed)
            .unwrap()
            .iter()
            .map(String::len)
            .collect();
        let of_blocks = |k: usize| 3 + ((37 + 64 * k) * 4).div_ceil(3);
        assert_eq!(
            lengths,
            [
                of_blocks(1),
                of_blocks(1),
                of_blocks(2),
                of_blocks(2),
                of_blocks(3)
            ]
        );
    })
    .await;
    assert!(
        docs.contains(&check),
        "the document prints the key check {check}"
    );
    assert!(
        docs.contains(&from_rust),
        "the document prints the envelope {from_rust}"
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Alice creates an encrypted room through the relay and Bob opens its invite link; returns the
/// code and the link key once both pages are `verified` and have run the handshake.
async fn encrypted_pair(relay: &HostileRelay, alice: &Page, bob: &Page) -> (String, String) {
    alice.goto(&relay.url()).await;
    alice.choose_name().await;
    let code = alice.create_encrypted_room().await;
    let invite = alice.value("#invite-link").await;
    let key = e2e::key_of_link(&invite).expect("a key in the link");
    bob.goto(&invite).await;
    bob.choose_name_only().await;
    bob.wait_for_text("#room-code", &code, "Bob is in the room")
        .await;
    for page in [alice, bob] {
        page.wait_for_e2e("verified").await;
        page.safety_number().await;
    }
    (code, key)
}

/// Renumbers the `chat` frames a hook sends on to a page, so that a repeated or reordered one
/// still comes with a higher id than the last (the page skips an id it has shown: only the
/// envelope's sequence number is left to tell). Far above the server's own ids.
#[derive(Default)]
struct Renumber(u64);

impl Renumber {
    fn next(&mut self, mut frame: Value) -> Value {
        self.0 += 1;
        frame["id"] = json!(1_000_000 + self.0);
        frame
    }
}

/// Runs `hook` on the short text messages the server sends Bob from Alice (not on her hellos),
/// and drops Bob's read receipts, which would name the renumbered ids to the server.
fn relay_chats_to_bob(
    relay: &HostileRelay,
    mut hook: impl FnMut(Value) -> Frames + Send + 'static,
) {
    relay.to_page(move |person, frame| {
        let short = frame["content"]
            .as_str()
            .is_some_and(|c| c.len() == ONE_BLOCK_ENVELOPE_CHARS);
        if person == "Bob" && frame["type"] == "chat" && frame["from"] == "Alice" && short {
            hook(frame)
        } else {
            vec![frame]
        }
    });
    relay.to_server(|person, frame| {
        if person == "Bob" && frame["type"] == "read" {
            vec![]
        } else {
            vec![frame]
        }
    });
}

/// The `content` of the last chat `person`'s page sent.
fn last_chat_content(relay: &HostileRelay, person: &str) -> String {
    relay
        .sent_by(person)
        .into_iter()
        .rev()
        .find(|frame| frame["type"] == "chat")
        .and_then(|frame| frame["content"].as_str().map(str::to_owned))
        .expect("a chat")
}

/// How many frames `person`'s page sent up to and with its (first) request of type `kind`.
fn frames_up_to(relay: &HostileRelay, person: &str, kind: &str) -> usize {
    let sent = relay.sent_by(person);
    let at = sent.iter().position(|frame| frame["type"] == kind);
    at.unwrap_or_else(|| panic!("{person} sent no {kind}: {sent:?}")) + 1
}

/// Since `person`'s frame number `from` (when their page failed), the page sent nothing but its
/// `leave_room`: no chat, no typing, no read receipt.
fn assert_nothing_said(relay: &HostileRelay, person: &str, from: usize) {
    let after: Vec<Value> = relay.sent_by(person).split_off(from);
    for frame in &after {
        assert!(
            frame["type"] == "leave_room",
            "{person}'s failed page sent {frame}: {after:?}"
        );
    }
}

async fn assert_disabled(page: &Page, css: &str) {
    assert_eq!(
        page.find(css).await.prop("disabled").await.unwrap(),
        Some("true".into()),
        "{css} is disabled"
    );
}

fn texts_of(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

/// What these tests do with a page beyond the shared harness.
trait HostilePage {
    /// Ticks "End-to-end encrypted", clicks "Create a room" and returns the code shown.
    async fn create_encrypted_room(&self) -> String;
    /// Types the person's name and presses Enter, on a page opened from an invite link (which
    /// then joins the room by itself).
    async fn choose_name_only(&self);
    /// `<html data-e2e>`.
    async fn e2e(&self) -> String;
    /// Waits until `<html data-e2e>` is `state`.
    async fn wait_for_e2e(&self, state: &str);
    /// Waits for the safety number and returns it.
    async fn safety_number(&self) -> String;
    /// Puts `text` in the composer and submits it, and signals typing, past any disabled
    /// control, as a person fiddling with the page could.
    async fn submit_anyway(&self, text: &str);
    /// Clicks "Leave" in a failed room: the page goes back to the lobby at once, and its
    /// `leave_room` is the last thing it sent.
    async fn leave_failed_room(&self, relay: &HostileRelay);
    /// The event lines of the conversation.
    async fn events(&self) -> Vec<String>;
    /// The text of the whole page, as the person sees it.
    async fn body_text(&self) -> String;
}

impl HostilePage for Page {
    async fn create_encrypted_room(&self) -> String {
        self.find("#create-encrypted").await.click().await.unwrap();
        self.create_room().await
    }

    async fn choose_name_only(&self) {
        self.find("#name-input")
            .await
            .send_keys(&format!("{}{}", self.name, Key::Enter))
            .await
            .unwrap();
    }

    async fn e2e(&self) -> String {
        let value = self
            .client
            .execute("return document.documentElement.dataset.e2e || '';", vec![])
            .await
            .unwrap();
        value.as_str().unwrap_or_default().to_owned()
    }

    async fn wait_for_e2e(&self, state: &str) {
        let what = format!("{}: data-e2e is {state}", self.name);
        eventually(&what, async || (self.e2e().await == state).then_some(())).await
    }

    async fn safety_number(&self) -> String {
        let element = self.find("#safety-number").await;
        let what = format!("{}: a safety number", self.name);
        eventually(&what, async || {
            let text = element.text().await.ok()?;
            (!text.is_empty()).then_some(text)
        })
        .await
    }

    async fn submit_anyway(&self, text: &str) {
        let script = "const input = document.getElementById('message-input');
            input.disabled = false;
            input.value = arguments[0];
            input.dispatchEvent(new Event('input'));
            document.getElementById('composer').requestSubmit();";
        self.client
            .execute(script, vec![json!(text)])
            .await
            .unwrap();
    }

    async fn leave_failed_room(&self, relay: &HostileRelay) {
        self.find("#leave").await.click().await.unwrap();
        self.wait_for_text("#lobby-note", "You left room", "back in the lobby")
            .await;
        assert_eq!(self.e2e().await, "none");
        let name = self.name;
        eventually("the relay saw the leave_room", async || {
            let sent = relay.sent_by(name);
            (sent.last()?["type"] == "leave_room").then_some(())
        })
        .await;
    }

    async fn events(&self) -> Vec<String> {
        let script = "return [...document.querySelectorAll('#messages .event')]
            .map((li) => li.textContent);";
        serde_json::from_value(self.client.execute(script, vec![]).await.unwrap()).unwrap()
    }

    async fn body_text(&self) -> String {
        let text = self
            .client
            .execute("return document.body.innerText;", vec![])
            .await
            .unwrap();
        text.as_str().unwrap_or_default().to_owned()
    }
}
