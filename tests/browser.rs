//! The web client, end to end, in a real headless Chromium.
//!
//! The real server runs in-process on a free port; `chromedriver` drives two independent
//! browser pages (two WebDriver sessions, two fresh profiles) that talk to each other through
//! it, the way two people would in two browser tabs.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages `chromium` and
//! `chromium-driver`). Without them the test fails when the `CI` environment variable is set
//! and otherwise prints that it skipped. `UPDATE_SCREENSHOT=1 cargo test --test browser` also
//! writes `docs/screenshot.png`: the two pages side by side, mid-conversation.

mod common;

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_server::Config;
use common::TestServer;
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The longest any expected change on a page may take before the test fails. Generous,
/// because a loaded CI machine can be slow to start a browser; a passing run never waits it.
const PATIENCE: Duration = Duration::from_secs(20);

/// How often a condition on a page is checked again while waiting for it.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The page sends `stop_typing` after 3 s without a keystroke. Clearing the input must stop
/// the indicator sooner than that, so this is how long a clear may take to show.
const CLEAR_SHOWS_WITHIN: Duration = Duration::from_millis(2500);

/// The page's own idle delay before it sends `stop_typing` is 3 s. The server's typing
/// timeout is set far above it, so an indicator that goes away on its own proves the page
/// sent `stop_typing`, not that the server gave up on a silent typist.
const SERVER_TYPING_TIMEOUT: Duration = Duration::from_secs(60);

/// How a page is shown: one person on a laptop, the other on a phone.
#[derive(Clone, Copy)]
enum Screen {
    /// A browser window of this many CSS pixels.
    Desktop { width: u32, height: u32 },
    /// Chrome's phone emulation (a narrow touch screen), this many CSS pixels.
    Phone { width: u32, height: u32 },
}

const LAPTOP: Screen = Screen::Desktop {
    width: 960,
    height: 760,
};
const PHONE: Screen = Screen::Phone {
    width: 390,
    height: 680,
};

/// Two people find each other with a room code and talk: names, create, a mistyped code
/// explained next to its field, join, messages both ways with one's own messages set apart,
/// the typing indicator appearing and going away (input cleared, idle, message sent), a
/// message that looks like HTML shown as text, and one person leaving while the other sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_through_the_web_client() {
    if !browser_available() {
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
    // Run the scenario with both sessions closed afterwards even if it panics: a WebDriver
    // session left open would leave its Chromium running after chromedriver is killed.
    let outcome = AssertUnwindSafe(conversation(&base, &alice, &bob))
        .catch_unwind()
        .await;
    alice.close().await;
    bob.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
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
    save_screenshot_if_asked(alice, bob).await;
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

/// One chat message as a page shows it.
#[derive(Debug)]
struct Message {
    from: String,
    text: String,
    own: bool,
}

/// One browser page (its own WebDriver session and profile) used by one person.
struct Page {
    client: Client,
    name: &'static str,
    _profile: TempDir,
}

impl Page {
    async fn open(driver: &ChromeDriver, name: &'static str, screen: Screen) -> Self {
        let profile = TempDir::new(&format!("chat-browser-test-{name}"));
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-quic".to_owned(),
            format!("--user-data-dir={}", profile.0.display()),
        ];
        let mut options = json!({ "binary": CHROMIUM });
        match screen {
            Screen::Desktop { width, height } => {
                args.push(format!("--window-size={width},{height}"))
            }
            Screen::Phone { width, height } => {
                // A window cannot be made narrower than 500 px; emulation can.
                let metrics = json!({ "width": width, "height": height, "pixelRatio": 1 });
                options["mobileEmulation"] = json!({ "deviceMetrics": metrics });
            }
        }
        options["args"] = json!(args);
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .expect("chromedriver starts a Chromium session");
        Page {
            client,
            name,
            _profile: profile,
        }
    }

    async fn close(&self) {
        // Errors are ignored: the session may already be gone, and this is only cleanup.
        let _ = self.client.clone().close().await;
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no element {css}: {e}", self.name))
    }

    async fn displayed(&self, css: &str) -> bool {
        self.find(css).await.is_displayed().await.unwrap()
    }

    async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// Types the person's name and presses Enter, as someone using the keyboard would.
    async fn choose_name(&self) {
        let input = self.find("#name-input").await;
        input
            .send_keys(&format!("{}{}", self.name, Key::Enter))
            .await
            .unwrap();
        self.wait_for_text("#lobby-name", self.name, "the lobby greets by name")
            .await;
    }

    /// Clicks "Create a room" and returns the code the page shows.
    async fn create_room(&self) -> String {
        self.find("#create-room").await.click().await.unwrap();
        let big = self.find("#room-code-big").await;
        eventually(&format!("{} sees a room code", self.name), async || {
            let text = big.text().await.ok()?;
            (!text.is_empty()).then_some(text)
        })
        .await
    }

    /// Types `code` into the join form (replacing what was there) and presses Enter.
    async fn try_join_room(&self, code: &str) {
        let input = self.find("#join-code").await;
        input.clear().await.unwrap();
        input
            .send_keys(&format!("{code}{}", Key::Enter))
            .await
            .unwrap();
    }

    async fn join_room(&self, code: &str) {
        self.try_join_room(code).await;
        self.wait_for_text("#room-code", code, "the joiner is in the room")
            .await;
    }

    async fn type_into_message(&self, keys: &str) {
        self.find("#message-input")
            .await
            .send_keys(keys)
            .await
            .unwrap();
    }

    /// Types a message and sends it with Enter.
    async fn send_message(&self, text: &str) {
        self.type_into_message(&format!("{text}{}", Key::Enter))
            .await;
    }

    /// Waits until the element `css` shows `expected` in its text.
    async fn wait_for_text(&self, css: &str, expected: &str, what: &str) {
        let element = self.find(css).await;
        eventually(&format!("{}: {what}", self.name), async || {
            let text = element.text().await.ok()?;
            text.contains(expected).then_some(())
        })
        .await
    }

    async fn wait_for_typing_indicator(&self, expected: &str) {
        self.wait_for_text("#typing", expected, "the typing indicator shows")
            .await
    }

    async fn wait_until_nobody_types(&self) {
        self.wait_until_nobody_types_within(PATIENCE).await
    }

    async fn wait_until_nobody_types_within(&self, limit: Duration) {
        let indicator = self.find("#typing").await;
        eventually_within(
            &format!("{}: the typing indicator goes away", self.name),
            limit,
            async || (!indicator.is_displayed().await.ok()?).then_some(()),
        )
        .await
    }

    /// Waits until the last message shown is `text` from `from`; returns all messages.
    async fn wait_for_message(&self, from: &str, text: &str) -> Vec<Message> {
        let what = format!("{}: the message {text:?} from {from}", self.name);
        eventually(&what, async || {
            let messages = self.messages().await;
            let last = messages.last()?;
            (last.from == from && last.text == text).then_some(messages)
        })
        .await
    }

    /// The chat messages on the page, read in one script call rather than one WebDriver
    /// round trip per element.
    async fn messages(&self) -> Vec<Message> {
        let script = "return [...document.querySelectorAll('#messages .msg')].map((li) => [
                li.dataset.from,
                li.querySelector('.msg__text').textContent,
                li.classList.contains('msg--own'),
            ]);";
        let rows: Vec<(String, String, bool)> =
            serde_json::from_value(self.client.execute(script, vec![]).await.unwrap())
                .expect("the script returns [from, text, own] rows");
        rows.into_iter()
            .map(|(from, text, own)| Message { from, text, own })
            .collect()
    }
}

/// Polls `check` until it returns `Some`, or fails the test after `PATIENCE` naming `what`.
async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, PATIENCE, check).await
}

/// Polls `check` until it returns `Some`, or fails the test after `limit` naming `what`.
async fn eventually_within<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} in vain for: {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether Chromium and chromedriver are installed. Missing in CI is a failure, because
/// a test that silently skips there would pass while testing nothing.
fn browser_available() -> bool {
    let missing: Vec<_> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not found (Debian: `apt-get install -y chromium chromium-driver`)",
        missing.join(" and ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "the browser test cannot run in CI: {why}"
    );
    // Straight to stderr: libtest hides `eprintln!` output of passing tests, and a skip
    // should not go unnoticed.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED two_people_chat_through_the_web_client: {why}"
    );
    false
}

/// A `chromedriver` process on a free local port, killed when dropped, also when the test
/// panics.
struct ChromeDriver {
    process: Child,
    port: u16,
}

impl ChromeDriver {
    async fn start() -> Self {
        // chromedriver cannot be told to pick a port itself (port 0 is refused), so ask the
        // OS for a free one and hand it over. Another process could take it in between; on
        // a test machine that is unlikely enough.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = ChromeDriver { process, port };
        eventually("chromedriver answers on its port", async || {
            driver.is_ready().await.then_some(())
        })
        .await;
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Asks the WebDriver `/status` endpoint whether new sessions can be created.
    async fn is_ready(&self) -> bool {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        let Ok(uri) = format!("{}/status", self.url()).parse() else {
            return false;
        };
        let Ok(response) = client.get(uri).await else {
            return false; // Not listening yet.
        };
        let Ok(body) = response.into_body().collect().await else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
            .is_ok_and(|status| status["value"]["ready"] == true)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Kill fails only if the process already exited, which is what we want anyway.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A directory under the system temp dir, removed when dropped: each browser profile
/// starts empty, so nothing from an earlier run (stored names, caches) leaks in.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        // A leftover from a crashed run with the same pid would not be empty.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a browser profile directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    canvas.save(&path).unwrap();
    eprintln!("wrote {}", path.display());
}
