//! The page people keep open (issue 20), in a real headless Chromium: the unread count in the
//! title and on the icon while the page is in a background tab, notifications asked for by the
//! bell and what they say, the invite's QR code read back from a screenshot, installability,
//! and axe-core's accessibility check of every view.
//!
//! The browser is driven as in `tests/browser.rs`; what WebDriver cannot do goes through the
//! DevTools protocol (`ChromeDriver::cdp`): another tab opened in front of a page hides it for
//! real (its `visibilitychange`, `blur` and `document.hasFocus()` are the browser's own), the
//! colour scheme is emulated, and the Notification and Web Share APIs are replaced, before the
//! page's own scripts run, by stand-ins that record what the page gave them.
//!
//! axe-core comes from npm: `npm ci --prefix tests/axe` (`.ci/run` does it). Without it, or
//! without Chromium, the tests fail when `CI` is set and otherwise print that they skipped.
//! `UPDATE_SCREENSHOT=1 cargo test --test browser_page` also writes `docs/screenshot.png`: the
//! waiting view with its QR code on a laptop, next to the phone that opened the invite.

mod common;

use std::path::{Path, PathBuf};

use common::TestServer;
use common::browser::{
    ChromeDriver, LAPTOP, PHONE, Page, browser_available, closing_pages_after, eventually,
    one_browser_test_at_a_time,
};
use fantoccini::key::Key;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Stands in for the browser's `Notification` before the page's scripts run: asking for
/// permission is answered with `ANSWER`, and every notification, close and focus is recorded
/// in `window.notificationLog` for the test to read.
const NOTIFICATION_STUB: &str = r#"
window.notificationLog = { requested: 0, shown: [], closed: 0, focused: 0, latest: null };
class RecordingNotification {
  static permission = 'default';
  static requestPermission() {
    notificationLog.requested += 1;
    RecordingNotification.permission = 'ANSWER';
    return Promise.resolve('ANSWER');
  }
  constructor(title, options = {}) {
    this.onclick = null;
    notificationLog.shown.push({ title, body: options.body ?? '', tag: options.tag ?? '' });
    notificationLog.latest = this;
  }
  close() {
    notificationLog.closed += 1;
  }
}
window.Notification = RecordingNotification;
const realFocus = window.focus.bind(window);
window.focus = () => {
  notificationLog.focused += 1;
  realFocus();
};
"#;

/// Stands in for the Web Share API (which desktop Chromium on Linux lacks): what the page
/// shares is recorded in `window.shared`.
const SHARE_STUB: &str = r#"
window.shared = [];
navigator.share = (data) => {
  window.shared.push(data);
  return Promise.resolve();
};
"#;

/// Records every title and icon the page shows, in `window.headLog`, so that what a hidden
/// tab showed can be read once the person is back.
const HEAD_RECORDER: &str = r#"
window.headLog = [];
const record = () => headLog.push([document.title, document.querySelector('link[rel="icon"]').getAttribute('href')]);
new MutationObserver(record).observe(document.head, { subtree: true, childList: true, characterData: true, attributes: true });
"#;

/// While Alice's page is in a background tab, each message from Bob raises the count in her
/// title and puts the dot on her icon; her own message, Bob's typing and the room's event lines
/// (Bob leaving and coming back) do not count. Both go when she looks again, and a message
/// that arrives while she looks counts for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_title_and_icon_count_the_peers_messages_while_the_tab_is_hidden() {
    if !browser_available("the_title_and_icon_count_the_peers_messages_while_the_tab_is_hidden") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        let code = meet(&base, &alice, &bob).await;
        let title = format!("Chat · {code}");
        assert_eq!(alice.client.title().await.unwrap(), title);
        script::<Value>(&alice, HEAD_RECORDER).await;

        let away = driver.look_away(&alice).await;
        assert!(!script::<bool>(&alice, "return document.hasFocus()").await);
        bob.send_message("Are you still there?").await;
        alice.wait_for_message("Bob", "Are you still there?").await;
        // Typing, then a message: the server keeps their order, so once the message is shown
        // the typing was seen before it.
        bob.type_into_message("Hello").await;
        alice.wait_for_typing_indicator("Bob is typing").await;
        bob.type_into_message(&format!("?{}", Key::Enter)).await;
        alice.wait_for_message("Bob", "Hello?").await;
        // Her own message, sent from the hidden page (as a script: keys would bring it forward).
        script::<Value>(
            &alice,
            "document.getElementById('message-input').value = 'Back in a minute';
             document.getElementById('composer').requestSubmit();",
        )
        .await;
        alice.wait_for_message("Alice", "Back in a minute").await;
        // Event lines: Bob leaves and comes back.
        bob.find("#leave").await.click().await.unwrap();
        alice
            .wait_for_text("#messages", "Bob left", "Alice's page shows Bob leave")
            .await;
        bob.join_room(&code).await;
        alice
            .wait_for_text("#messages", "Bob joined", "Alice's page shows Bob back")
            .await;
        bob.send_message("Ping").await;
        alice.wait_for_message("Bob", "Ping").await;

        assert_eq!(alice.client.title().await.unwrap(), format!("(3) {title}"));
        assert_eq!(icon(&alice).await, "/favicon-unread.svg");
        let titles: Vec<(String, String)> = script(&alice, "return headLog").await;
        let counts: Vec<&str> = titles.iter().map(|(title, _)| title.as_str()).collect();
        assert_eq!(
            dedup(&counts),
            [
                format!("(1) {title}"),
                format!("(2) {title}"),
                format!("(3) {title}")
            ],
            "one step for each of Bob's three messages, none for anything else"
        );

        driver.look_back(&alice, away).await;
        eventually("Alice's title loses its count", async || {
            (alice.client.title().await.ok()? == title).then_some(())
        })
        .await;
        assert_eq!(icon(&alice).await, "/favicon.svg");

        bob.send_message("Oh, hi!").await;
        alice.wait_for_message("Bob", "Oh, hi!").await;
        assert_eq!(
            alice.client.title().await.unwrap(),
            title,
            "no count while Alice looks"
        );
    })
    .await;
}

/// Notifications are asked for only when the bell is pressed, never on load. Then, in a plain
/// room, a message that arrives while the page is hidden is notified with the sender's name and
/// the start of its text, every message of the burst under the room's tag (so the browser
/// replaces the notification instead of stacking them); the notification is closed when the
/// person looks again, and clicking it brings the tab forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_in_a_plain_room_says_who_wrote_and_what() {
    if !browser_available("a_notification_in_a_plain_room_says_who_wrote_and_what") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        let stub = NOTIFICATION_STUB.replace("ANSWER", "granted");
        driver.before_page_scripts(&alice, &stub).await;
        let code = meet(&base, &alice, &bob).await;
        assert_eq!(
            script::<u32>(&alice, "return notificationLog.requested").await,
            0,
            "no permission prompt on load or on entering the room"
        );
        assert_eq!(pressed(&alice).await, "false");
        alice.find("#notify").await.click().await.unwrap();
        alice
            .wait_for_text(
                "#notify-note",
                "You will be notified",
                "the bell says it is on",
            )
            .await;
        assert_eq!(
            script::<u32>(&alice, "return notificationLog.requested").await,
            1
        );
        assert_eq!(pressed(&alice).await, "true");

        let away = driver.look_away(&alice).await;
        let long = format!("{} end", "Long text, ".repeat(20));
        bob.send_message(&long).await;
        bob.send_message("Second").await;
        alice.wait_for_message("Bob", "Second").await;
        let shown: Vec<Shown> = script(&alice, "return notificationLog.shown").await;
        let tag = format!("chat-{code}");
        let start: String = long.chars().take(119).collect::<String>() + "…";
        assert_eq!(
            shown,
            [
                Shown::new("Bob", &start, &tag),
                Shown::new("Bob", "Second", &tag)
            ],
            "the sender and the start of the text, one tag for the burst"
        );
        assert_eq!(
            script::<u32>(&alice, "return notificationLog.closed").await,
            0
        );

        driver.look_back(&alice, away).await;
        eventually("the notification goes when Alice looks again", async || {
            (script::<u32>(&alice, "return notificationLog.closed").await == 1).then_some(())
        })
        .await;
        script::<Value>(&alice, "notificationLog.latest.onclick()").await;
        assert_eq!(
            script::<u32>(&alice, "return notificationLog.focused").await,
            1,
            "a click on the notification focuses the tab"
        );

        bob.send_message("While you look").await;
        alice.wait_for_message("Bob", "While you look").await;
        let shown: Vec<Shown> = script(&alice, "return notificationLog.shown").await;
        assert_eq!(shown.len(), 2, "no notification while Alice looks");
    })
    .await;
}

/// In an end-to-end encrypted room a notification says only who wrote ("New message from
/// Bob"): the text, which Alice's page shows, is nowhere in what the notification was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_in_an_encrypted_room_says_only_who_wrote() {
    if !browser_available("a_notification_in_an_encrypted_room_says_only_who_wrote") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        let stub = NOTIFICATION_STUB.replace("ANSWER", "granted");
        driver.before_page_scripts(&alice, &stub).await;
        let code = meet_encrypted(&base, &alice, &bob).await;
        alice.find("#notify").await.click().await.unwrap();
        alice
            .wait_for_text(
                "#notify-note",
                "You will be notified",
                "the bell says it is on",
            )
            .await;

        let away = driver.look_away(&alice).await;
        bob.send_message("The secret plans are in the blue folder")
            .await;
        alice
            .wait_for_message("Bob", "The secret plans are in the blue folder")
            .await;
        let shown: Vec<Shown> = script(&alice, "return notificationLog.shown").await;
        assert_eq!(
            shown,
            [Shown::new(
                "New message from Bob",
                "",
                &format!("chat-{code}")
            )]
        );
        let everything = script::<Value>(&alice, "return notificationLog.shown").await;
        assert!(
            !everything.to_string().contains("secret"),
            "the text stays on the page: {everything}"
        );
        driver.look_back(&alice, away).await;
    })
    .await;
}

/// Where the browser refuses notifications, the bell says so and nothing else changes: the
/// messages and the count still come, with no notification. Where it has none, the bell says
/// that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bell_says_when_notifications_are_refused_or_missing() {
    if !browser_available("the_bell_says_when_notifications_are_refused_or_missing") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    let carol = Page::open(&driver, "Carol", PHONE).await;
    closing_pages_after(&[&alice, &bob, &carol], async {
        let stub = NOTIFICATION_STUB.replace("ANSWER", "denied");
        driver.before_page_scripts(&alice, &stub).await;
        let code = meet(&base, &alice, &bob).await;
        alice.find("#notify").await.click().await.unwrap();
        alice
            .wait_for_text(
                "#notify-note",
                "blocks notifications",
                "the bell says they are refused",
            )
            .await;
        assert_eq!(pressed(&alice).await, "false");
        let disabled = alice
            .find("#notify")
            .await
            .attr("aria-disabled")
            .await
            .unwrap();
        assert_eq!(disabled.as_deref(), Some("true"));

        let away = driver.look_away(&alice).await;
        bob.send_message("Anyone?").await;
        alice.wait_for_message("Bob", "Anyone?").await;
        assert_eq!(
            alice.client.title().await.unwrap(),
            format!("(1) Chat · {code}")
        );
        let shown: Vec<Shown> = script(&alice, "return notificationLog.shown").await;
        assert!(shown.is_empty(), "no notification where refused: {shown:?}");
        driver.look_back(&alice, away).await;

        driver
            .before_page_scripts(&carol, "delete window.Notification;")
            .await;
        carol.goto(&base).await;
        carol.choose_name().await;
        carol.create_room().await;
        carol.find("#notify").await.click().await.unwrap();
        carol
            .wait_for_text(
                "#notify-note",
                "cannot show notifications",
                "the bell says there are none",
            )
            .await;
    })
    .await;
}

/// The waiting view shows the invite link as a QR code that reads back, from a screenshot, as
/// exactly the link: for a plain room on a laptop in the light scheme, and for an encrypted
/// room (the link with its key) on a phone in the dark scheme, where it stays dark on light.
/// It is labelled for screen readers. Share hands the link to the system's share sheet where
/// the browser has one, and is not offered where it has not (the "Copy link" beside it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invite_qr_code_reads_as_the_invite_link() {
    if !browser_available("the_invite_qr_code_reads_as_the_invite_link") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    let dana = Page::open(&driver, "Dana", PHONE).await;
    closing_pages_after(&[&alice, &bob, &dana], async {
        alice.goto(&base).await;
        alice.choose_name().await;
        let code = alice.create_room().await;
        let link = alice.value("#invite-link").await;
        assert_eq!(link, format!("{base}?room={code}"));
        assert_eq!(scan_qr_code(&alice).await, link);
        let label = alice
            .find("#invite-qr svg")
            .await
            .attr("aria-label")
            .await
            .unwrap();
        assert!(label.is_some_and(|l| l.contains("QR code of the invite link")));
        assert!(
            !alice.displayed("#share-link").await,
            "no Share button without the Web Share API"
        );
        assert!(alice.displayed("#copy-link").await, "Copy link instead");

        // Bob opens the link Alice's code holds, as a phone that scanned it would.
        bob.goto(&link).await;
        bob.wait_for_text("#invite-code", &code, "Bob's page says he was invited")
            .await;
        save_screenshot_if_asked(&alice, &bob).await;

        driver.before_page_scripts(&dana, SHARE_STUB).await;
        driver.emulate_color_scheme(&dana, "dark").await;
        dana.goto(&base).await;
        dana.choose_name().await;
        let code = create_encrypted_room(&dana).await;
        let link = dana.value("#invite-link").await;
        assert!(
            link.starts_with(&format!("{base}?room={code}#key=")),
            "the link with its key: {link}"
        );
        let background: String = script(
            &dana,
            "return getComputedStyle(document.body).backgroundColor",
        )
        .await;
        assert_eq!(
            background, "rgb(20, 23, 28)",
            "Dana's page is in the dark scheme"
        );
        assert_eq!(scan_qr_code(&dana).await, link);

        dana.find("#share-link").await.click().await.unwrap();
        let shared: Vec<Value> = eventually("the link is shared", async || {
            let shared: Vec<Value> = script(&dana, "return window.shared").await;
            (!shared.is_empty()).then_some(shared)
        })
        .await;
        assert_eq!(shared.len(), 1);
        assert_eq!(
            shared[0]["url"], link,
            "Share hands on the link with its key"
        );
    })
    .await;
}

/// The page passes Chromium's installability check, and the manifest it links is the one the
/// server serves: name, short name, standalone display, colours and icons at 192 and 512 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_installable() {
    if !browser_available("the_page_is_installable") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", PHONE).await;
    closing_pages_after(&[&alice], async {
        alice.goto(&base).await;
        alice.find("#name-input").await;
        let manifest = driver.cdp(&alice, "Page.getAppManifest", json!({})).await;
        assert_eq!(manifest["url"], format!("{base}manifest.webmanifest"));
        assert_eq!(manifest["errors"], json!([]), "{manifest}");
        let parsed = &manifest["manifest"];
        assert_eq!(parsed["name"], "Chat");
        assert_eq!(parsed["display"], "kStandalone");
        assert_eq!(parsed["startUrl"], base);
        let sizes: Vec<&str> = parsed["icons"]
            .as_array()
            .expect("icons")
            .iter()
            .filter_map(|icon| icon["sizes"].as_str())
            .collect();
        assert!(
            sizes.contains(&"192x192") && sizes.contains(&"512x512"),
            "{sizes:?}"
        );

        let installability = driver
            .cdp(&alice, "Page.getInstallabilityErrors", json!({}))
            .await;
        assert_eq!(
            installability["installabilityErrors"],
            json!([]),
            "Chromium would offer to install the page"
        );
    })
    .await;
}

/// axe-core finds no accessibility violation in any view: choosing a name, the lobby, waiting
/// with the invite's QR code (and the bell's note shown), and chatting; on a laptop and on a
/// phone, in the light and the dark scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axe_finds_no_violation_in_any_view_width_or_scheme() {
    if !browser_available("axe_finds_no_violation_in_any_view_width_or_scheme") {
        return;
    }
    let Some(axe) = axe_source() else {
        return;
    };
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let base = format!("http://{}/", server.addr);
    let driver = ChromeDriver::start().await;
    for (screen, width) in [(LAPTOP, "laptop"), (PHONE, "phone")] {
        for scheme in ["light", "dark"] {
            let alice = Page::open(&driver, "Alice", screen).await;
            let bob = Page::open(&driver, "Bob", screen).await;
            let context = format!("{width}, {scheme}");
            closing_pages_after(
                &[&alice, &bob],
                every_view_passes_axe(&driver, &axe, &base, &alice, &bob, &context, scheme),
            )
            .await;
        }
    }
}

async fn every_view_passes_axe(
    driver: &ChromeDriver,
    axe: &str,
    base: &str,
    alice: &Page,
    bob: &Page,
    context: &str,
    scheme: &str,
) {
    let stub = NOTIFICATION_STUB.replace("ANSWER", "granted");
    for page in [alice, bob] {
        driver.before_page_scripts(page, &stub).await;
        driver.emulate_color_scheme(page, scheme).await;
    }
    alice.goto(base).await;
    alice.find("#name-input").await;
    assert_no_violation(alice, axe, &format!("name view ({context})")).await;
    alice.choose_name().await;
    assert_no_violation(alice, axe, &format!("lobby ({context})")).await;
    create_encrypted_room(alice).await;
    alice.find("#invite-qr svg").await;
    alice.find("#notify").await.click().await.unwrap();
    alice
        .wait_for_text(
            "#notify-note",
            "You will be notified",
            "the bell says it is on",
        )
        .await;
    assert_no_violation(alice, axe, &format!("waiting view ({context})")).await;

    let link = alice.value("#invite-link").await;
    bob.goto(&link).await;
    bob.find("#invite-code").await;
    assert_no_violation(bob, axe, &format!("name view of an invite ({context})")).await;
    bob.choose_name_to_join().await;
    alice
        .wait_for_text("#messages", "Bob joined", "Alice sees Bob join")
        .await;
    alice.send_message("Hi Bob, you found it.").await;
    bob.wait_for_message("Alice", "Hi Bob, you found it.").await;
    bob.send_message("I scanned the code.").await;
    alice.wait_for_message("Bob", "I scanned the code.").await;
    assert_no_violation(alice, axe, &format!("chatting view ({context})")).await;
    assert_no_violation(bob, axe, &format!("chatting view of the guest ({context})")).await;
}

/// Runs axe-core on the page as it is now and fails on any violation, listing each rule and
/// the elements it found.
async fn assert_no_violation(page: &Page, axe: &str, what: &str) {
    // Scripts that WebDriver runs are not held to the page's Content-Security-Policy.
    page.client
        .execute(&format!("{axe}\nreturn true;"), vec![])
        .await
        .expect("axe-core loads");
    let violations = page
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document).then(
               (result) => done(result.violations.map((v) =>
                 `${v.id} (${v.impact}): ${v.help}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)),
               (error) => done([`axe failed: ${error}`]));",
            vec![],
        )
        .await
        .expect("axe-core runs");
    let violations: Vec<String> = serde_json::from_value(violations).expect("a list");
    assert!(
        violations.is_empty(),
        "{}: axe-core finds violations in the {what}:\n{}",
        page.name,
        violations.join("\n")
    );
}

/// axe-core's script, from `npm ci --prefix tests/axe`; None (after saying so) when it is not
/// installed outside CI.
fn axe_source() -> Option<String> {
    let path: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/axe/node_modules/axe-core/axe.min.js");
    match std::fs::read_to_string(&path) {
        Ok(source) => Some(source),
        Err(err) => {
            let why = format!(
                "{}: {err} (install it with `npm ci --prefix tests/axe`)",
                path.display()
            );
            assert!(
                std::env::var_os("CI").is_none(),
                "axe-core is missing: {why}"
            );
            eprintln!("SKIPPED the axe-core check: {why}");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One notification as the stand-in recorded it.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct Shown {
    title: String,
    body: String,
    tag: String,
}

impl Shown {
    fn new(title: &str, body: &str, tag: &str) -> Self {
        Shown {
            title: title.to_owned(),
            body: body.to_owned(),
            tag: tag.to_owned(),
        }
    }
}

trait Person {
    async fn choose_name_to_join(&self);
}

impl Person for Page {
    /// Chooses a name on a page opened from an invite link, which goes straight into the room.
    async fn choose_name_to_join(&self) {
        let input = self.find("#name-input").await;
        input
            .send_keys(&format!("{}{}", self.name, Key::Enter))
            .await
            .unwrap();
        self.wait_for_text("#room-peer", "with ", "the guest is in the room")
            .await;
    }
}

/// Alice creates a plain room and Bob joins it with its code; returns the code.
async fn meet(base: &str, alice: &Page, bob: &Page) -> String {
    alice.goto(base).await;
    alice.choose_name().await;
    let code = alice.create_room().await;
    bob.goto(base).await;
    bob.choose_name().await;
    bob.join_room(&code).await;
    alice
        .wait_for_text("#messages", "Bob joined", "Alice sees Bob join")
        .await;
    code
}

/// Alice creates an end-to-end encrypted room and Bob opens its invite link; returns the code.
async fn meet_encrypted(base: &str, alice: &Page, bob: &Page) -> String {
    alice.goto(base).await;
    alice.choose_name().await;
    let code = create_encrypted_room(alice).await;
    bob.goto(&alice.value("#invite-link").await).await;
    bob.choose_name_to_join().await;
    alice
        .wait_for_text("#messages", "Bob joined", "Alice sees Bob join")
        .await;
    code
}

/// Ticks "End-to-end encrypted" and creates the room; returns its code.
async fn create_encrypted_room(page: &Page) -> String {
    page.find("#create-encrypted").await.click().await.unwrap();
    let code = page.create_room().await;
    assert!(
        page.displayed("#room-lock").await,
        "{}: the room is encrypted",
        page.name
    );
    code
}

/// Runs `body` in the page (as a function body: `return` gives the result).
async fn script<T: DeserializeOwned>(page: &Page, body: &str) -> T {
    let value = page.client.execute(body, vec![]).await.unwrap();
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{body}: {e}"))
}

/// The tab's icon, as the page names it.
async fn icon(page: &Page) -> String {
    script(
        page,
        "return document.querySelector('link[rel=\"icon\"]').getAttribute('href')",
    )
    .await
}

/// Whether the bell is pressed (`aria-pressed`).
async fn pressed(page: &Page) -> String {
    let bell = page.find("#notify").await;
    bell.attr("aria-pressed").await.unwrap().unwrap_or_default()
}

/// `items` with runs of equal neighbours made one.
fn dedup(items: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if out.last().is_none_or(|last| last != item) {
            out.push((*item).to_owned());
        }
    }
    out
}

/// Takes a screenshot of the page's QR code, as a phone's camera would see the screen, and
/// decodes it. Also checks the code's corner, its quiet zone, is light whatever the scheme.
async fn scan_qr_code(page: &Page) -> String {
    let code = page.find("#invite-qr svg").await;
    let png = code.screenshot().await.unwrap();
    let image = image::load_from_memory(&png).unwrap().to_luma8();
    assert!(
        image.width() >= 200,
        "{}: the QR code is {} px wide: too small to scan across a table",
        page.name,
        image.width()
    );
    assert!(
        image.get_pixel(2, 2).0[0] > 200,
        "{}: the quiet zone is light",
        page.name
    );
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(
        grids.len(),
        1,
        "{}: one QR code in the screenshot",
        page.name
    );
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    content
}

/// With `UPDATE_SCREENSHOT` set, writes `docs/screenshot.png`: both pages side by side.
/// Without it nothing is written, so a plain `cargo test` leaves the work tree clean.
async fn save_screenshot_if_asked(left: &Page, right: &Page) {
    if std::env::var_os("UPDATE_SCREENSHOT").is_none() {
        return;
    }
    let shots = [left, right].map(|page| page.client.screenshot());
    let [left, right] = futures_util::future::join_all(shots)
        .await
        .into_iter()
        .map(|png| image::load_from_memory(&png.unwrap()).unwrap().to_rgba8())
        .collect::<Vec<_>>()
        .try_into()
        .expect("two screenshots");
    let margin = 24;
    let width = margin * 3 + left.width() + right.width();
    let height = margin * 2 + left.height().max(right.height());
    let mut canvas = image::RgbaImage::from_pixel(width, height, image::Rgba([203, 209, 216, 255]));
    image::imageops::overlay(&mut canvas, &left, margin.into(), margin.into());
    let right_x = margin * 2 + left.width();
    image::imageops::overlay(&mut canvas, &right, right_x.into(), margin.into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot.png");
    canvas.save(&path).unwrap();
    eprintln!("wrote {}", path.display());
}
