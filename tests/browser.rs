//! The web client, end to end, in a real headless Chromium.
//!
//! The real server runs in-process on a free port; `chromedriver` drives two independent
//! browser pages (two WebDriver sessions, two fresh profiles) that talk to each other through
//! it, the way two people would in two browser tabs.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages `chromium` and
//! `chromium-driver`). Without them the test fails when the `CI` environment variable is set
//! and otherwise prints that it skipped. (README's screenshot is made by
//! `tests/browser_page.rs`.)

mod common;

use std::time::Duration;

use chat_server::Config;
use common::TestServer;
use common::browser::{ChromeDriver, LAPTOP, PHONE, Page, browser_available, closing_pages_after};
use fantoccini::Locator;
use fantoccini::key::Key;

/// The page sends `stop_typing` after 3 s without a keystroke. Clearing the input must stop
/// the indicator sooner than that, so this is how long a clear may take to show.
const CLEAR_SHOWS_WITHIN: Duration = Duration::from_millis(2500);

/// The page's own idle delay before it sends `stop_typing` is 3 s. The server's typing
/// timeout is set far above it, so an indicator that goes away on its own proves the page
/// sent `stop_typing`, not that the server gave up on a silent typist.
const SERVER_TYPING_TIMEOUT: Duration = Duration::from_secs(60);

/// Two people find each other with a room code and talk: names, create, a mistyped code
/// explained next to its field, join, messages both ways with one's own messages set apart,
/// the typing indicator appearing and going away (input cleared, idle, message sent), a
/// message that looks like HTML shown as text, and one person leaving while the other sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_through_the_web_client() {
    if !browser_available("two_people_chat_through_the_web_client") {
        return;
    }
    let server = TestServer::with_config(Config {
        typing_timeout: SERVER_TYPING_TIMEOUT,
        ..Config::default()
    })
    .await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;

    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], conversation(&base, &alice, &bob)).await;
}

async fn conversation(base: &str, alice: &Page, bob: &Page) {
    alice.goto(base).await;
    bob.goto(base).await;

    alice.choose_name().await;
    let code = alice.create_room().await;
    assert_eq!(code.len(), 6, "the room code is shown large: {code:?}");
    let invite = alice.value("#invite-link").await;
    assert_eq!(invite, format!("{base}?room={code}"), "the invite link");

    bob.choose_name().await;
    bob.try_join_room("nope").await;
    bob.wait_for_text(
        "#join-error",
        "A room code is 6 letters and digits",
        "a refused code is explained under the code field",
    )
    .await;
    bob.join_room(&code).await;
    alice
        .wait_for_text("#messages", "Bob joined", "Alice sees Bob join")
        .await;
    assert!(
        !alice.displayed("#invite").await,
        "the invite panel goes away once someone joined"
    );

    alice.send_message("Hi Bob! Did you find it easily?").await;
    bob.wait_for_message("Alice", "Hi Bob! Did you find it easily?")
        .await;
    bob.send_message("Yes, the code worked right away.").await;
    alice
        .wait_for_message("Bob", "Yes, the code worked right away.")
        .await;
    alice
        .send_message("Great. When are you free this week?")
        .await;
    for page in [alice, bob] {
        let messages = page
            .wait_for_message("Alice", "Great. When are you free this week?")
            .await;
        let texts: Vec<_> = messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Hi Bob! Did you find it easily?",
                "Yes, the code worked right away.",
                "Great. When are you free this week?",
            ],
            "{} sees every message, in order",
            page.name
        );
        for message in &messages {
            assert_eq!(
                message.own,
                message.from == page.name,
                "{} tells own messages from the other's",
                page.name
            );
        }
    }
    // Own messages are set apart by the stylesheet (which also proves the CSP let it load).
    let own = alice.find(".msg--own .msg__text").await;
    let peer = alice.find(".msg--peer .msg__text").await;
    assert_ne!(
        own.css_value("background-color").await.unwrap(),
        peer.css_value("background-color").await.unwrap(),
        "own and peer messages look different"
    );

    // Typing shows on the other page, and goes away when the input is cleared.
    bob.type_into_message("Let me check my calendar").await;
    alice.wait_for_typing_indicator("Bob is typing").await;
    bob.type_into_message(&format!("{}a{}", Key::Control, Key::Null))
        .await;
    bob.type_into_message(&Key::Backspace.to_string()).await;
    alice
        .wait_until_nobody_types_within(CLEAR_SHOWS_WITHIN)
        .await;

    // ...goes away on its own when the typist pauses...
    bob.type_into_message("Thurs").await;
    alice.wait_for_typing_indicator("Bob is typing").await;
    alice.wait_until_nobody_types().await;

    // ...and goes away when the message is sent.
    bob.type_into_message("day works").await;
    alice.wait_for_typing_indicator("Bob is typing").await;
    bob.type_into_message(&Key::Enter.to_string()).await;
    alice.wait_for_message("Bob", "Thursday works").await;
    alice.wait_until_nobody_types().await;

    // A message that looks like markup is shown as the characters typed.
    let markup = "<img src=x onerror=alert(1)> <b>bold?</b>";
    alice.send_message(markup).await;
    for page in [alice, bob] {
        page.wait_for_message("Alice", markup).await;
        assert!(
            page.client
                .find_all(Locator::Css("#messages img, #messages b"))
                .await
                .unwrap()
                .is_empty(),
            "{}: no element was made from the message",
            page.name
        );
        assert!(
            page.client.get_alert_text().await.is_err(),
            "{}: no alert opened",
            page.name
        );
    }

    // Bob leaves; he is back in the lobby and Alice sees that he left.
    bob.find("#leave").await.click().await.unwrap();
    bob.wait_for_text(
        "#lobby-note",
        &format!("You left room {code}"),
        "Bob is back in the lobby",
    )
    .await;
    alice
        .wait_for_text("#messages", "Bob left the room", "Alice sees Bob leave")
        .await;
    alice
        .wait_for_text(
            "#room-peer",
            "Waiting for someone",
            "Alice waits for someone new",
        )
        .await;
    assert!(
        alice.displayed("#invite").await,
        "the invite is offered again"
    );
}
