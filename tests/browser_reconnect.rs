//! The web client recovers from a dropped connection by itself, in a real headless Chromium.
//!
//! Alice's page talks to the server directly; Bob's page (the page under test) loads through a
//! small TCP proxy inside the test, which can cut every connection at once, the way a phone
//! losing its network does: no WebSocket close frame, the sockets just end. While the proxy is
//! cut off, new connections are dropped as soon as they arrive, so Bob's page stays away until
//! the test puts the network back, and its retries really fail meanwhile.
//!
//! Needs Chromium and chromedriver, like `tests/browser.rs` (see `tests/common/browser.rs`).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_server::Config;
use common::browser::{
    ChromeDriver, LAPTOP, PHONE, Page, browser_available, closing_pages_after, eventually,
    one_browser_test_at_a_time,
};
use common::{TestClient, TestServer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The server keeps a dropped member's seat this long. Far longer than the test ever keeps Bob
/// away, so a slow machine cannot turn the resume into an expired session.
const RESUME_GRACE: Duration = Duration::from_secs(120);

/// The grace period of the test where Bob's session expires: short, so the test is quick.
const SHORT_GRACE: Duration = Duration::from_secs(1);

/// The page's first automatic retry comes within 0.75 s (0.5 s ± 50% jitter). A page that was
/// told its session moved elsewhere is watched this long to show that it does not retry.
const NO_RETRY_WINDOW: Duration = Duration::from_secs(3);

/// Bob's network drops and Alice, a program, says more than the room keeps (1,010 messages,
/// too many for one frame): when Bob's page is back it shows the last 1,000 in order, once
/// each, and says that the 10 before could not be recovered, rather than pretending the
/// conversation is complete; and it does not offer to resend anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_absence_is_replayed_and_what_was_lost_is_said() {
    if !browser_available("a_long_absence_is_replayed_and_what_was_lost_is_said") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::with_config(Config {
        resume_grace: RESUME_GRACE,
        ..Config::default().unlimited()
    })
    .await;
    let proxy = Proxy::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&bob], async {
        let mut alice = server.named("Alice").await;
        let code = alice.create_room().await;
        bob.goto(&format!("http://{}/", proxy.addr)).await;
        bob.choose_name().await;
        bob.join_room(&code).await;
        alice.expect("peer_joined").await;

        proxy.go_offline();
        alice.expect("peer_disconnected").await;
        let said: Vec<String> = (1..=1010)
            .map(|n| format!("message {n} of a long monologue, long enough to need many frames"))
            .collect();
        for text in &said {
            alice.chat(text).await;
            alice.expect("chat").await;
        }

        proxy.go_online();
        let shown = bob.wait_for_message("Alice", &said[1009]).await;
        let texts: Vec<&str> = shown.iter().map(|m| m.text.as_str()).collect();
        let expected: Vec<&str> = said[10..].iter().map(String::as_str).collect();
        assert_eq!(texts, expected, "the last 1,000, in order, once each");
        bob.wait_for_text(
            "#messages",
            "10 earlier messages could not be recovered.",
            "Bob's page says what was lost",
        )
        .await;
        assert_eq!(
            bob.text("#composer-error").await,
            "",
            "nothing to resend: Bob sent nothing"
        );
    })
    .await;
}

/// Bob's network drops mid-conversation. Bob's page says it is reconnecting; Alice's page shows
/// Bob as "connection lost — waiting" in its header and conversation; Alice keeps writing. When
/// the network is back, Bob's page reconnects and resumes without anyone clicking anything, and
/// shows exactly the messages it missed, once each and in order, after the ones it had. Alice
/// sees Bob back; Bob's page, being in view, sends a read receipt and Alice sees "Seen" under
/// her last message. A reload of Bob's page resumes too, with the whole conversation shown once.
/// Finally, another connection resumes Bob's session: his page then says the chat was opened
/// elsewhere and does not take the session back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_by_itself_and_misses_nothing() {
    if !browser_available("the_page_reconnects_by_itself_and_misses_nothing") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::with_config(Config {
        resume_grace: RESUME_GRACE,
        ..Config::default()
    })
    .await;
    let proxy = Proxy::start(server.addr).await;
    let driver = ChromeDriver::start().await;

    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], scenario(&server, &proxy, &alice, &bob)).await;
}

async fn scenario(server: &TestServer, proxy: &Proxy, alice: &Page, bob: &Page) {
    alice.goto(&format!("http://{}/", server.addr)).await;
    bob.goto(&format!("http://{}/", proxy.addr)).await;

    alice.choose_name().await;
    let code = alice.create_room().await;
    bob.choose_name().await;
    bob.join_room(&code).await;
    alice
        .wait_for_text("#messages", "Bob joined", "Bob is in")
        .await;

    alice.send_message("Are you on the train yet?").await;
    bob.wait_for_message("Alice", "Are you on the train yet?")
        .await;
    bob.send_message("Just got on. The tunnel is coming up")
        .await;
    alice
        .wait_for_message("Bob", "Just got on. The tunnel is coming up")
        .await;

    // The tunnel: every connection of Bob's page ends at once, without a close frame.
    proxy.go_offline();
    bob.wait_for_text(
        "#conn-status",
        "Reconnecting",
        "Bob's page says it is reconnecting",
    )
    .await;
    assert!(
        bob.displayed("#conn-lost").await,
        "Bob's page shows the reconnecting banner"
    );
    alice
        .wait_for_text(
            "#room-peer",
            "connection lost — waiting",
            "the header shows Bob's connection is lost",
        )
        .await;
    alice
        .wait_for_text(
            "#messages",
            "Bob: connection lost — waiting",
            "the conversation says Bob's connection is lost",
        )
        .await;

    let said_meanwhile = [
        "I'll keep writing, you'll get it later",
        "Dinner at 8?",
        "<b>bring</b> the map",
    ];
    for text in said_meanwhile {
        alice.send_message(text).await;
        alice.wait_for_message("Alice", text).await;
    }
    assert_eq!(
        bob.messages().await.len(),
        2,
        "Bob's page got nothing while it was cut off"
    );

    // Out of the tunnel. Nobody touches Bob's page.
    proxy.go_online();
    let last = said_meanwhile[said_meanwhile.len() - 1];
    let shown = bob.wait_for_message("Alice", last).await;
    let shown: Vec<_> = shown
        .iter()
        .map(|m| (m.from.as_str(), m.text.as_str(), m.own))
        .collect();
    assert_eq!(
        shown,
        [
            ("Alice", "Are you on the train yet?", false),
            ("Bob", "Just got on. The tunnel is coming up", true),
            ("Alice", said_meanwhile[0], false),
            ("Alice", said_meanwhile[1], false),
            ("Alice", said_meanwhile[2], false),
        ],
        "Bob's page shows what it had and exactly what it missed, once each, in order"
    );
    bob.wait_for_text("#conn-status", "Connected", "Bob's page is connected again")
        .await;
    assert!(
        !bob.displayed("#conn-lost").await,
        "the reconnecting banner is gone"
    );
    assert_eq!(
        bob.text("#room-code").await,
        code,
        "Bob is still in room {code}"
    );
    alice
        .wait_for_text("#messages", "Bob is back", "Alice sees Bob come back")
        .await;
    alice
        .wait_for_text("#room-peer", "with Bob", "the header no longer waits")
        .await;

    // Bob's page is in view, so it confirms what it shows; Alice sees it under her last message.
    let seen_under = eventually("Alice sees Seen under her last message", async || {
        let seen = alice.seen_under().await;
        (seen.as_deref() == Some(last)).then_some(seen)
    })
    .await;
    assert_eq!(seen_under.as_deref(), Some(last));
    assert_eq!(
        alice.count("#messages .msg__seen").await,
        1,
        "one Seen, under the last message read"
    );

    // The resumed connection carries new messages both ways.
    bob.send_message("Sorry, tunnel. 8 is perfect").await;
    alice
        .wait_for_message("Bob", "Sorry, tunnel. 8 is perfect")
        .await;

    // A reload starts with an empty page; the session kept in sessionStorage brings the room
    // and its whole conversation back, each message once.
    bob.client.refresh().await.unwrap();
    let reloaded = bob
        .wait_for_message("Bob", "Sorry, tunnel. 8 is perfect")
        .await;
    let texts: Vec<_> = reloaded.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "Are you on the train yet?",
            "Just got on. The tunnel is coming up",
            said_meanwhile[0],
            said_meanwhile[1],
            said_meanwhile[2],
            "Sorry, tunnel. 8 is perfect",
        ],
        "after a reload Bob's page shows the conversation once"
    );
    assert_eq!(bob.text("#room-code").await, code, "still in the room");
    bob.wait_for_text("#conn-status", "Connected", "connected after the reload")
        .await;

    // The same session is resumed elsewhere (another tab, say): Bob's page is closed with 4000
    // and must leave the session to the other connection rather than take it back.
    let token = bob.session_token().await;
    let mut elsewhere = TestClient::connect(&server.ws_url()).await;
    elsewhere
        .send(json!({"type": "resume", "session_token": token, "last_id": 0}))
        .await;
    let resumed = elsewhere.expect("resumed").await;
    assert_eq!(resumed["username"], "Bob");
    bob.wait_for_text(
        "#conn-lost-text",
        "opened elsewhere",
        "Bob's page says the chat was opened elsewhere",
    )
    .await;
    tokio::time::sleep(NO_RETRY_WINDOW).await; // A negative: nothing must happen meanwhile.
    assert_eq!(
        bob.text("#conn-status").await,
        "Offline",
        "Bob's page did not reconnect by itself"
    );
    elsewhere.send(json!({"type": "__sync__"})).await;
    loop {
        // Passes over the read receipt the resume restates; panics if we were closed.
        let message = elsewhere.recv().await;
        if message["type"] == "error" {
            assert_eq!(message["code"], "INVALID_MESSAGE");
            break;
        }
    }
}

/// Bob is away longer than the grace period, so Alice sees him gone and his session expires.
/// When his network is back, his page finds the session expired, starts afresh by itself (his
/// name again, and back into the same room, which Alice kept open), says that messages from
/// while he was away may be missing, and shows what Alice said after he was gone for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_starts_afresh_in_the_same_room() {
    if !browser_available("an_expired_session_starts_afresh_in_the_same_room") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::with_config(Config {
        resume_grace: SHORT_GRACE,
        ..Config::default()
    })
    .await;
    let proxy = Proxy::start(server.addr).await;
    let driver = ChromeDriver::start().await;

    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&alice, &bob], async {
        alice.goto(&format!("http://{}/", server.addr)).await;
        bob.goto(&format!("http://{}/", proxy.addr)).await;
        alice.choose_name().await;
        let code = alice.create_room().await;
        bob.choose_name().await;
        bob.join_room(&code).await;
        alice.send_message("See you in a bit").await;
        bob.wait_for_message("Alice", "See you in a bit").await;

        proxy.go_offline();
        alice
            .wait_for_text(
                "#messages",
                "Bob lost their connection",
                "Bob's seat goes when the grace period ends",
            )
            .await;
        alice.send_message("Ping me when you're back").await;
        alice
            .wait_for_message("Alice", "Ping me when you're back")
            .await;

        proxy.go_online();
        bob.wait_for_text(
            "#messages",
            "could not be resumed",
            "Bob's page says it started afresh",
        )
        .await;
        let shown = bob
            .wait_for_message("Alice", "Ping me when you're back")
            .await;
        let texts: Vec<_> = shown.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(
            texts,
            ["See you in a bit", "Ping me when you're back"],
            "Bob keeps what he had and gets what was said since he was gone for good"
        );
        assert_eq!(
            bob.text("#room-code").await,
            code,
            "Bob is back in the room"
        );
        alice
            .wait_for_text("#room-peer", "with Bob", "Alice is with Bob again")
            .await;
    })
    .await;
}

/// Page reads the reconnection test needs beyond the shared harness.
trait ReconnectPage {
    /// The text content of the element `css`.
    async fn text(&self, css: &str) -> String;
    /// How many elements match `css`.
    async fn count(&self, css: &str) -> usize;
    /// The text of the message that "Seen" sits under, if any.
    async fn seen_under(&self) -> Option<String>;
    /// The page's session token, as it keeps it for a reload.
    async fn session_token(&self) -> String;
}

impl ReconnectPage for Page {
    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(fantoccini::Locator::Css(css))
            .await
            .unwrap()
            .len()
    }

    async fn seen_under(&self) -> Option<String> {
        let script = "const seen = document.querySelector('#messages .msg__seen');
            return seen ? seen.closest('.msg').querySelector('.msg__text').textContent : null;";
        let value = self.client.execute(script, vec![]).await.unwrap();
        value.as_str().map(str::to_owned)
    }

    async fn session_token(&self) -> String {
        let script = "return sessionStorage.getItem('chat.session');";
        let value = self.client.execute(script, vec![]).await.unwrap();
        value
            .as_str()
            .expect("the page keeps its session token")
            .to_owned()
    }
}

/// A TCP proxy in front of the server whose network the test can take down and bring back.
struct Proxy {
    /// Where pages connect instead of the server.
    addr: SocketAddr,
    links: Arc<Mutex<Links>>,
    accept_task: JoinHandle<()>,
}

/// What the accept loop and the test share. A std `Mutex` is enough: it is held for a few
/// instructions and never across an `.await`.
#[derive(Default)]
struct Links {
    /// The tasks copying each proxied connection; aborting one drops both of its sockets.
    open: Vec<AbortHandle>,
    /// While set, a new connection is dropped as soon as it is accepted: the network is down.
    offline: bool,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let links = Arc::new(Mutex::new(Links::default()));
        let accept_task = tokio::spawn(accept_loop(listener, upstream, links.clone()));
        Proxy {
            addr,
            links,
            accept_task,
        }
    }

    /// Ends every proxied connection at once, without a close frame, and refuses new ones.
    fn go_offline(&self) {
        // The lock is only poisoned if a holder panicked, which would already fail the test.
        let mut links = self.links.lock().unwrap();
        links.offline = true;
        for link in links.open.drain(..) {
            link.abort();
        }
    }

    /// Lets new connections through again.
    fn go_online(&self) {
        self.links.lock().unwrap().offline = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        if let Ok(mut links) = self.links.lock() {
            links.open.drain(..).for_each(|link| link.abort());
        }
    }
}

/// Accepts connections and copies each to a new connection to `upstream`, both ways.
async fn accept_loop(listener: TcpListener, upstream: SocketAddr, links: Arc<Mutex<Links>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let mut links = links.lock().unwrap();
        if links.offline {
            continue; // Dropping `client` closes it: to the browser, the server is unreachable.
        }
        let link = tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            // Ends when either side closes, or when the test aborts this task.
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        // Finished links stay in the list; aborting a finished task does nothing.
        links.open.push(link.abort_handle());
    }
}
