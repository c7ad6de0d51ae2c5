//! The browser harness shared by the browser tests: a `chromedriver` process, pages driven
//! through WebDriver (one headless Chromium session and profile each), and polling helpers.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages `chromium` and
//! `chromium-driver`); see [`browser_available`] for what happens without them.
#![allow(dead_code)] // Every test binary compiles this module; only the browser tests use it.

use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The longest any expected change on a page may take before the test fails. Generous,
/// because a loaded CI machine can be slow to start a browser; a passing run never waits it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often a condition on a page is checked again while waiting for it.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How a page is shown: one person on a laptop, the other on a phone.
#[derive(Clone, Copy)]
pub enum Screen {
    /// A browser window of this many CSS pixels.
    Desktop { width: u32, height: u32 },
    /// Chrome's phone emulation (a narrow touch screen), this many CSS pixels.
    Phone { width: u32, height: u32 },
}

pub const LAPTOP: Screen = Screen::Desktop {
    width: 960,
    height: 760,
};
pub const PHONE: Screen = Screen::Phone {
    width: 390,
    height: 680,
};

/// Held by each browser test of a test binary while it runs, so that they run one after the
/// other: libtest runs a binary's tests in parallel, and two sets of Chromium processes on a
/// small machine slow each other down enough to look like a bug. (A tokio `Mutex`, because it is
/// held across `.await`s, and each test has its own runtime.)
static ONE_BROWSER_TEST_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Waits until no other browser test of this binary runs; the guard lets the next one start.
pub async fn one_browser_test_at_a_time() -> MutexGuard<'static, ()> {
    ONE_BROWSER_TEST_AT_A_TIME.lock().await
}

/// Runs `scenario`, then closes `pages` whether it passed or panicked, and passes a panic on:
/// a WebDriver session left open would leave its Chromium running after chromedriver is killed.
/// Returns what the scenario returned, for checks that need no page.
pub async fn closing_pages_after<T>(pages: &[&Page], scenario: impl Future<Output = T>) -> T {
    let outcome = AssertUnwindSafe(scenario).catch_unwind().await;
    for page in pages {
        page.close().await;
    }
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// One chat message as a page shows it.
#[derive(Debug)]
pub struct Message {
    pub from: String,
    pub text: String,
    pub own: bool,
    /// One of the page's own messages on its way: sent, but not confirmed by the server yet.
    pub pending: bool,
}

/// One browser page (its own WebDriver session and profile) used by one person.
pub struct Page {
    /// The WebDriver session, for what the helpers below do not cover.
    pub client: Client,
    /// The person using the page, also the name they choose.
    pub name: &'static str,
    _profile: TempDir,
}

impl Page {
    pub async fn open(driver: &ChromeDriver, name: &'static str, screen: Screen) -> Self {
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

    pub async fn close(&self) {
        // Errors are ignored: the session may already be gone, and this is only cleanup.
        let _ = self.client.clone().close().await;
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no element {css}: {e}", self.name))
    }

    pub async fn displayed(&self, css: &str) -> bool {
        self.find(css).await.is_displayed().await.unwrap()
    }

    pub async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// Types the person's name and presses Enter, as someone using the keyboard would.
    pub async fn choose_name(&self) {
        let input = self.find("#name-input").await;
        input
            .send_keys(&format!("{}{}", self.name, Key::Enter))
            .await
            .unwrap();
        self.wait_for_text("#lobby-name", self.name, "the lobby greets by name")
            .await;
    }

    /// Clicks "Create a room" and returns the code the page shows.
    pub async fn create_room(&self) -> String {
        self.find("#create-room").await.click().await.unwrap();
        let big = self.find("#room-code-big").await;
        eventually(&format!("{} sees a room code", self.name), async || {
            let text = big.text().await.ok()?;
            (!text.is_empty()).then_some(text)
        })
        .await
    }

    /// Types `code` into the join form (replacing what was there) and presses Enter.
    pub async fn try_join_room(&self, code: &str) {
        let input = self.find("#join-code").await;
        input.clear().await.unwrap();
        input
            .send_keys(&format!("{code}{}", Key::Enter))
            .await
            .unwrap();
    }

    pub async fn join_room(&self, code: &str) {
        self.try_join_room(code).await;
        self.wait_for_text("#room-code", code, "the joiner is in the room")
            .await;
    }

    pub async fn type_into_message(&self, keys: &str) {
        self.find("#message-input")
            .await
            .send_keys(keys)
            .await
            .unwrap();
    }

    /// Types a message and sends it with Enter.
    pub async fn send_message(&self, text: &str) {
        self.type_into_message(&format!("{text}{}", Key::Enter))
            .await;
    }

    /// Waits until the element `css` shows `expected` in its text.
    pub async fn wait_for_text(&self, css: &str, expected: &str, what: &str) {
        let element = self.find(css).await;
        eventually(&format!("{}: {what}", self.name), async || {
            let text = element.text().await.ok()?;
            text.contains(expected).then_some(())
        })
        .await
    }

    pub async fn wait_for_typing_indicator(&self, expected: &str) {
        self.wait_for_text("#typing", expected, "the typing indicator shows")
            .await
    }

    pub async fn wait_until_nobody_types(&self) {
        self.wait_until_nobody_types_within(PATIENCE).await
    }

    pub async fn wait_until_nobody_types_within(&self, limit: Duration) {
        let indicator = self.find("#typing").await;
        eventually_within(
            &format!("{}: the typing indicator goes away", self.name),
            limit,
            async || (!indicator.is_displayed().await.ok()?).then_some(()),
        )
        .await
    }

    /// Waits until the last message shown is `text` from `from`, confirmed by the server (not
    /// still on its way); returns all messages.
    pub async fn wait_for_message(&self, from: &str, text: &str) -> Vec<Message> {
        let what = format!("{}: the message {text:?} from {from}", self.name);
        eventually(&what, async || {
            let messages = self.messages().await;
            let last = messages.last()?;
            (last.from == from && last.text == text && !last.pending).then_some(messages)
        })
        .await
    }

    /// The chat messages on the page, its own still on their way included, read in one script
    /// call rather than one WebDriver round trip per element.
    pub async fn messages(&self) -> Vec<Message> {
        let script = "return [...document.querySelectorAll('#messages .msg')].map((li) => [
                li.dataset.from,
                li.querySelector('.msg__text').textContent,
                li.classList.contains('msg--own'),
                li.classList.contains('msg--pending'),
            ]);";
        let rows: Vec<(String, String, bool, bool)> =
            serde_json::from_value(self.client.execute(script, vec![]).await.unwrap())
                .expect("the script returns [from, text, own, pending] rows");
        rows.into_iter()
            .map(|(from, text, own, pending)| Message {
                from,
                text,
                own,
                pending,
            })
            .collect()
    }
}

/// Polls `check` until it returns `Some`, or fails the test after `PATIENCE` naming `what`.
pub async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, PATIENCE, check).await
}

/// Polls `check` until it returns `Some`, or fails the test after `limit` naming `what`.
pub async fn eventually_within<T>(
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
pub fn browser_available(test: &str) -> bool {
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
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// A `chromedriver` process on a free local port, killed when dropped, also when the test
/// panics.
pub struct ChromeDriver {
    process: Child,
    port: u16,
}

impl ChromeDriver {
    pub async fn start() -> Self {
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

    pub fn url(&self) -> String {
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

impl ChromeDriver {
    /// Sends the Chrome DevTools Protocol command `method` with `params` to `page`'s browser,
    /// through chromedriver's `goog/cdp/execute` endpoint, and returns its result: for what
    /// WebDriver has no command for (emulated media, installability, scripts that run before
    /// the page's own).
    pub async fn cdp(
        &self,
        page: &Page,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        let session = page
            .client
            .session_id()
            .await
            .unwrap()
            .expect("an open WebDriver session");
        let uri: hyper::Uri = format!("{}/session/{session}/goog/cdp/execute", self.url())
            .parse()
            .expect("a valid URL");
        let body = json!({ "cmd": method, "params": params }).to_string();
        let request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let response = client.request(request).await.expect("chromedriver answers");
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let reply: serde_json::Value =
            serde_json::from_slice(&body).expect("chromedriver answers with JSON");
        assert!(status.is_success(), "{method}: {reply}");
        reply["value"].clone()
    }
}

/// Another tab, opened in front of a page, so that the page is hidden and unfocused as when
/// its person switched tabs: WebDriver stays on the page, which scripts can still read.
pub struct OtherTab {
    target_id: serde_json::Value,
}

impl ChromeDriver {
    /// Opens another tab in front of `page` (see [`OtherTab`]).
    pub async fn look_away(&self, page: &Page) -> OtherTab {
        let created = self
            .cdp(page, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        OtherTab {
            target_id: created["targetId"].clone(),
        }
    }

    /// Closes `tab`, so that the page behind it is shown and focused again.
    pub async fn look_back(&self, page: &Page, tab: OtherTab) {
        let params = json!({ "targetId": tab.target_id });
        self.cdp(page, "Target.closeTarget", params).await;
    }

    /// Shows `page` in the light or dark colour scheme (`prefers-color-scheme`).
    pub async fn emulate_color_scheme(&self, page: &Page, scheme: &str) {
        let features = json!([{ "name": "prefers-color-scheme", "value": scheme }]);
        self.cdp(
            page,
            "Emulation.setEmulatedMedia",
            json!({ "features": features }),
        )
        .await;
    }

    /// Runs `script` in every document `page` loads from now on, before the page's own scripts:
    /// to stand in for a browser API the test records.
    pub async fn before_page_scripts(&self, page: &Page, script: &str) {
        let params = json!({ "source": script });
        self.cdp(page, "Page.addScriptToEvaluateOnNewDocument", params)
            .await;
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
        // The process id keeps test binaries apart, the counter the pages of one binary.
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        let count = CREATED.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{count}", std::process::id()));
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
