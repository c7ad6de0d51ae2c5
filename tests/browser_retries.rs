//! A retry never duplicates, and a restarting node costs no wait (issue 12), in the web client,
//! in a real headless Chromium.
//!
//! Every `chat` the page sends carries its own `client_msg_id`, and the page keeps the message
//! until it comes back as its own `chat`. One that a reconnect cut off, going out or coming
//! back, or that the server answered with `UNAVAILABLE` (it cannot reach its store), goes out
//! again under the same id, which the server never stores twice: the peer gets it once, and
//! the page shows it once. A node that is being restarted closes the page with 1012, and the
//! page reconnects at once and resumes.
//!
//! The in-memory server on loopback never loses a message on the way, answers `UNAVAILABLE` or
//! closes with 1012 by itself, so Bob's page (the page under test) reaches the real server through a
//! [`FlakyNode`]: a WebSocket relay inside the test that stands in for one node of a deployment
//! and has the faults the test gives it. It logs every message it relays, so the tests check
//! what went over the wire, not only what the page shows. Alice is a raw WebSocket client.
//!
//! Needs Chromium and chromedriver, like `tests/browser.rs` (see `tests/common/browser.rs`).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use chat_server::Config;
use common::browser::{
    ChromeDriver, PHONE, Page, browser_available, closing_pages_after, eventually,
    one_browser_test_at_a_time,
};
use common::{PATIENCE, TestClient, TestServer, e2e};

/// The server keeps a dropped member's seat this long: far longer than any test keeps Bob
/// away, so a slow machine cannot turn a resume into an expired session.
const RESUME_GRACE: Duration = Duration::from_secs(120);

/// The page's first reconnect after an ordinary drop waits 0.5 s ± 50%, so never less than
/// this. A reconnect sooner than this after a close did not wait out any delay.
const FIRST_RECONNECT_DELAY_AT_LEAST: Duration = Duration::from_millis(250);

/// After a reconnect that did not bring the session back, the page waits 1 s ± 50%, so never
/// less than this, before the next attempt.
const SECOND_RECONNECT_DELAY_AT_LEAST: Duration = Duration::from_millis(500);

/// The page sends a message refused with `UNAVAILABLE` again after 1 s, then 2 s, and so on...
const FIRST_RESEND_AFTER: Duration = Duration::from_secs(1);
/// ...up to 10 s.
const LONGEST_RESEND_AFTER: Duration = Duration::from_secs(10);

/// How much sooner than its delay a timer of the page may seem to fire, seen from the relay: a
/// timer never fires early, but the page and the relay read different clocks.
const CLOCK_SLACK: Duration = Duration::from_millis(20);

/// The close code of a node that is being restarted.
const SERVICE_RESTART: u16 = 1012;

/// The close code of a server that failed; the page reconnects to it after the usual delay.
const INTERNAL_ERROR: u16 = 1011;

/// Each message Bob's page sends carries a `client_msg_id` of its own, 1 to 64 characters long,
/// which comes back in the `chat` Alice receives; the same text sent twice is two messages with
/// two ids, each shown once; and none is left shown as on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_the_page_sends_carries_a_client_msg_id_of_its_own() {
    if !browser_available("every_message_the_page_sends_carries_a_client_msg_id_of_its_own") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let driver = ChromeDriver::start().await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&bob], async {
        bob.goto(&format!("http://{}/", server.addr)).await;
        let mut alice = alice_with(&bob, &server).await;

        let said = ["Hello Alice", "ok", "ok"];
        let mut ids = Vec::new();
        for text in said {
            bob.send_message(text).await;
            let chat = next_chat(&mut alice).await;
            assert_eq!(chat["content"], text);
            let id = chat["client_msg_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a client_msg_id in {chat}"));
            assert!((1..=64).contains(&id.chars().count()), "{id:?}");
            ids.push(id.to_owned());
        }
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "one id per message: {ids:?}"
        );
        expect_no_more_chats(&mut alice).await;
        let expected: Vec<(String, bool)> = said.map(|text| (text.to_owned(), false)).into();
        eventually(
            "Bob's page shows each message once, in order, none on its way",
            async || (shown(&bob).await == expected).then_some(()),
        )
        .await;
    })
    .await;
}

/// Bob's connection dies while a message is on its way. If it never reached the server, his
/// page shows it as on its way, and sends it again, with the same `client_msg_id`, once it has
/// reconnected and resumed by itself. If the server stored it but the answer was lost, the
/// resume's replay brings it back and nothing is stored again. Either way Alice gets it once
/// and Bob's page shows it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cut_off_by_a_drop_arrives_once_after_the_resume() {
    if !browser_available("a_message_cut_off_by_a_drop_arrives_once_after_the_resume") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::with_config(Config {
        resume_grace: RESUME_GRACE,
        ..Config::default()
    })
    .await;
    let node = FlakyNode::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&bob], async {
        bob.goto(&node.url()).await;
        let mut alice = alice_with(&bob, &server).await;

        // Going out: the message never reaches the server.
        node.change(|faults| faults.lose_from_page = true);
        bob.send_message("Are you still there?").await;
        let lost = node
            .wait_for_chat_from_page("Are you still there?", Fate::Lost)
            .await;
        eventually("Bob's page shows the message as on its way", async || {
            let shown = shown(&bob).await;
            (shown == [("Are you still there?".to_owned(), true)]).then_some(())
        })
        .await;
        expect_no_more_chats(&mut alice).await;
        node.change(|faults| faults.lose_from_page = false);
        node.end_every_connection(Ending::Drop);

        let chat = next_chat(&mut alice).await;
        assert_eq!(chat["content"], "Are you still there?");
        assert_eq!(
            chat["client_msg_id"], lost.message["client_msg_id"],
            "sent again under the same id"
        );
        let resent = node
            .wait_for_chat_from_page("Are you still there?", Fate::Passed)
            .await;
        assert!(resent.connection > lost.connection, "after the reconnect");
        assert_eq!(
            node.first_from_page(resent.connection)["type"],
            "resume",
            "the new connection resumed the session before anything else"
        );
        bob.wait_for_message("Bob", "Are you still there?").await;
        expect_no_more_chats(&mut alice).await;

        // Coming back: the server stores the message, but its answer never reaches the page.
        node.change(|faults| faults.lose_to_page = true);
        bob.send_message("The train is in a tunnel").await;
        let chat = next_chat(&mut alice).await;
        assert_eq!(chat["content"], "The train is in a tunnel");
        node.wait_for_chat_to_page("The train is in a tunnel", Fate::Lost)
            .await;
        assert!(
            shown(&bob)
                .await
                .last()
                .is_some_and(|(_, pending)| *pending),
            "without its answer the message is still on its way"
        );
        node.change(|faults| faults.lose_to_page = false);
        node.end_every_connection(Ending::Drop);

        bob.wait_for_message("Bob", "The train is in a tunnel")
            .await;
        assert_eq!(
            shown(&bob).await,
            [
                ("Are you still there?".to_owned(), false),
                ("The train is in a tunnel".to_owned(), false)
            ],
            "Bob's page shows each message once, neither on its way"
        );
        let ids: Vec<Value> = node
            .chats_from_page("The train is in a tunnel")
            .into_iter()
            .map(|sent| sent.message["client_msg_id"].clone())
            .collect();
        assert!(
            ids.iter().all(|id| *id == chat["client_msg_id"]),
            "if sent again, then under the same id: {ids:?}"
        );
        expect_no_more_chats(&mut alice).await;
    })
    .await;
}

/// The server cannot reach its store for a while and answers Bob's message, in an end-to-end
/// encrypted room, with `UNAVAILABLE`. Bob's page shows no error, only the message as on its way
/// (lighter), and sends the very same request again, the same envelope under the same
/// `client_msg_id`, after a pause that doubles each time: 1 s, 2 s, ... Once the server can
/// store it again, it goes through: Alice gets it once, and it opens to what Bob wrote; Bob's
/// page shows it once, no longer on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_answered_by_sending_the_same_envelope_again_after_a_pause() {
    let test = "unavailable_is_answered_by_sending_the_same_envelope_again_after_a_pause";
    if !browser_available(test) {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let node = FlakyNode::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&bob], async {
        bob.goto(&node.url()).await;
        bob.choose_name().await;
        bob.find("#create-encrypted").await.click().await.unwrap();
        let code = bob.create_room().await;
        let link = bob.value("#invite-link").await;
        let key = e2e::room_key_v2(&e2e::key_of_link(&link).expect("a key in the link"), &code);
        let mut alice = server.named("Alice").await;
        alice.join(&code).await;
        bob.wait_for_text("#messages", "Alice joined", "Alice is in")
            .await;
        // Now that someone is here, Bob's page sends its hello (the handshake of
        // docs/protocol.md): it is not the message this test follows.
        let hello = next_chat(&mut alice).await;
        let opened = e2e::open_v2(&key, &code, "Bob", hello["content"].as_str().unwrap());
        assert_eq!(opened.map(|o| o.kind_of_body), Some(e2e::TYPE_HELLO));
        let messages = || {
            let chats = node.requests_of_type("chat").into_iter();
            chats
                .filter(|sent| sent.message["content"] != hello["content"])
                .collect::<Vec<_>>()
        };

        node.change(|faults| {
            faults.unavailable.insert("chat", usize::MAX);
        });
        bob.send_message("The code is 4711").await;
        // Once the page sent it a second time, it has handled the first refusal.
        eventually("Bob's page sends the message again", async || {
            (messages().len() >= 2).then_some(())
        })
        .await;
        assert_eq!(
            shown(&bob).await,
            [("The code is 4711".to_owned(), true)],
            "the message shows as on its way"
        );
        let pending = bob.find("#messages .msg--pending .msg__text").await;
        assert_ne!(
            pending.css_value("opacity").await.unwrap(),
            "1",
            "a message on its way looks lighter"
        );
        assert_eq!(
            bob.find("#composer-error").await.text().await.unwrap(),
            "",
            "nothing for Bob to do: no error shows"
        );

        node.change(|faults| faults.unavailable.clear());
        let chat = next_chat(&mut alice).await;
        let attempts = messages();
        let fates: Vec<Fate> = attempts.iter().map(|sent| sent.fate).collect();
        let (last, refused) = fates.split_last().unwrap();
        assert!(
            *last == Fate::Passed && refused.iter().all(|fate| *fate == Fate::Refused),
            "refused, then through once: {fates:?}"
        );
        let first = &attempts[0].message;
        assert!(e2e::header_v2(first["content"].as_str().unwrap()).is_some());
        for (n, pair) in attempts.windows(2).enumerate() {
            assert_eq!(pair[1].message, *first, "the very same request again");
            let pause = pair[1].at - pair[0].at;
            let expected = (FIRST_RESEND_AFTER * 2u32.pow(n as u32)).min(LONGEST_RESEND_AFTER);
            assert!(
                pause >= expected - CLOCK_SLACK,
                "resend {n} after a pause that doubles, not {pause:?}"
            );
        }

        assert_eq!(chat["content"], first["content"]);
        assert_eq!(chat["client_msg_id"], first["client_msg_id"]);
        let envelope = chat["content"].as_str().unwrap();
        let opened = e2e::open_v2(&key, &code, "Bob", envelope).expect("it opens");
        assert_eq!(opened.text(), Some("The code is 4711"));
        bob.wait_for_message("Bob", "The code is 4711").await;
        assert_eq!(
            shown(&bob).await,
            [("The code is 4711".to_owned(), false)],
            "shown once"
        );
        expect_no_more_chats(&mut alice).await;
    })
    .await;
}

/// A node that is being restarted closes Bob's page with 1012: the page reconnects at once,
/// sooner than any of its reconnect delays, and resumes its session: Alice sees Bob come back.
/// After another close code (1011, a server that failed) it waits its usual delay. Either way
/// the conversation goes on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_node_1012_is_left_for_another_at_once() {
    if !browser_available("a_restarting_node_1012_is_left_for_another_at_once") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::with_config(Config {
        resume_grace: RESUME_GRACE,
        ..Config::default()
    })
    .await;
    let node = FlakyNode::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&bob], async {
        bob.goto(&node.url()).await;
        let mut alice = alice_with(&bob, &server).await;
        let code = bob.find("#room-code").await.text().await.unwrap();
        let token = node.to_page_of_type(0, "connected")["session_token"].clone();

        let closed = node.end_every_connection(Ending::Close(SERVICE_RESTART));
        let reconnect = node.wait_for_connection(1).await - closed;
        assert!(
            reconnect < FIRST_RECONNECT_DELAY_AT_LEAST,
            "reconnected at once after 1012, not after {reconnect:?}"
        );
        let resume = node.first_from_page(1);
        assert_eq!(resume["type"], "resume", "{resume}");
        assert_eq!(resume["session_token"], token, "the same session");
        let resumed = node.wait_for_to_page_of_type(1, "resumed").await;
        assert_eq!(resumed["room_code"], code.as_str());
        expect_peer_back(&mut alice).await;
        bob.wait_for_text("#messages", "Reconnected.", "Bob's page is back")
            .await;

        let closed = node.end_every_connection(Ending::Close(INTERNAL_ERROR));
        let reconnect = node.wait_for_connection(2).await - closed;
        assert!(
            reconnect >= FIRST_RECONNECT_DELAY_AT_LEAST,
            "after 1011 the usual delay, not {reconnect:?}"
        );
        assert_eq!(node.first_from_page(2)["session_token"], token);
        node.wait_for_to_page_of_type(2, "resumed").await;
        expect_peer_back(&mut alice).await;

        bob.wait_for_text("#conn-status", "Connected", "Bob's page is connected")
            .await;
        bob.send_message("Sorry, my server restarted").await;
        assert_eq!(
            next_chat(&mut alice).await["content"],
            "Sorry, my server restarted"
        );
        bob.wait_for_message("Bob", "Sorry, my server restarted")
            .await;
    })
    .await;
}

/// Bob's page reconnects after a 1012 to a node that cannot reach its store, which answers its
/// `resume` with `UNAVAILABLE`. The page does not give the session up: it tries again on a new
/// connection, after a delay rather than at once, and that resume brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_refused_for_now_is_tried_again_on_a_new_connection() {
    if !browser_available("a_resume_refused_for_now_is_tried_again_on_a_new_connection") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::with_config(Config {
        resume_grace: RESUME_GRACE,
        ..Config::default()
    })
    .await;
    let node = FlakyNode::start(server.addr).await;
    let driver = ChromeDriver::start().await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&bob], async {
        bob.goto(&node.url()).await;
        let mut alice = alice_with(&bob, &server).await;
        let token = node.to_page_of_type(0, "connected")["session_token"].clone();

        node.change(|faults| {
            faults.unavailable.insert("resume", 1);
        });
        node.end_every_connection(Ending::Close(SERVICE_RESTART));
        node.wait_for_connection(1).await;
        let refused = eventually("the first resume is refused", async || {
            node.requests_of_type("resume").into_iter().next()
        })
        .await;
        assert_eq!((refused.connection, refused.fate), (1, Fate::Refused));

        let retried = node.wait_for_connection(2).await;
        assert!(
            retried - refused.at >= SECOND_RECONNECT_DELAY_AT_LEAST,
            "a delay before trying again, not {:?}",
            retried - refused.at
        );
        let resume = node.first_from_page(2);
        assert_eq!(
            (&resume["type"], &resume["session_token"]),
            (&json!("resume"), &token)
        );
        node.wait_for_to_page_of_type(2, "resumed").await;
        expect_peer_back(&mut alice).await;
        bob.wait_for_text("#messages", "Reconnected.", "Bob's page is back")
            .await;
        bob.send_message("Back again").await;
        assert_eq!(next_chat(&mut alice).await["content"], "Back again");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Bob names himself and creates a room on his page; Alice, a raw client, joins it.
async fn alice_with(bob: &Page, server: &TestServer) -> TestClient {
    bob.choose_name().await;
    let code = bob.create_room().await;
    let mut alice = server.named("Alice").await;
    alice.join(&code).await;
    bob.wait_for_text("#messages", "Alice joined", "Alice is in")
        .await;
    alice
}

/// The chat messages `page` shows: (text, whether still on its way).
async fn shown(page: &Page) -> Vec<(String, bool)> {
    page.messages()
        .await
        .into_iter()
        .map(|message| (message.text, message.pending))
        .collect()
}

/// The next `chat` `client` receives, passing over what tells of the page's typing, receipts,
/// drops and comebacks.
async fn next_chat(client: &mut TestClient) -> Value {
    loop {
        let message = client.recv().await;
        match message["type"].as_str() {
            Some("chat") => return message,
            Some("typing" | "stop_typing" | "read" | "peer_disconnected" | "peer_reconnected") => {}
            _ => panic!("expected a chat, got {message}"),
        }
    }
}

/// Reads what tells `client` of its peer's drop and comeback, up to `peer_reconnected`. The
/// drop may go unannounced: the server can take the peer's `resume` before it notices that the
/// old connection ended.
async fn expect_peer_back(client: &mut TestClient) {
    loop {
        let message = client.recv().await;
        match message["type"].as_str() {
            Some("peer_reconnected") => return,
            Some("peer_disconnected") => {}
            _ => panic!("expected the peer back, got {message}"),
        }
    }
}

/// Proves that no `chat` is queued for `client`: asks for a known error and reads up to it.
async fn expect_no_more_chats(client: &mut TestClient) {
    client.send(json!({"type": "__sync__"})).await;
    loop {
        let message = client.recv().await;
        assert_ne!(message["type"], "chat", "one chat too many: {message}");
        if message["type"] == "error" {
            assert_eq!(message["code"], "INVALID_MESSAGE", "{message}");
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The flaky node
// ---------------------------------------------------------------------------------------

/// What the node did with a message it relayed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    /// Passed on.
    Passed,
    /// Dropped, as a connection that dies drops what is under way.
    Lost,
    /// Answered with `UNAVAILABLE` in the server's stead, as a node that cannot reach its store.
    Refused,
}

/// One message the node relayed, either way.
#[derive(Clone, Debug)]
struct Relayed {
    /// Which of the page's WebSocket connections carried it, counted from 0.
    connection: usize,
    /// Whether it came from the page (else from the server, for the page).
    from_page: bool,
    /// When the node read it.
    at: Instant,
    message: Value,
    fate: Fate,
}

/// The faults the node has, as the test sets them.
#[derive(Default)]
struct Faults {
    /// The page's messages are lost on the way to the server.
    lose_from_page: bool,
    /// The server's messages are lost on the way to the page.
    lose_to_page: bool,
    /// How many more of the page's requests of each `type` to answer with `UNAVAILABLE`.
    unavailable: HashMap<&'static str, usize>,
}

/// How the node ends a connection of the page.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// With a close frame with this code, as a server does.
    Close(u16),
    /// Its socket just closes, as when the network goes.
    Drop,
}

/// What the relays and the test share. A std `Mutex`: it is held for a few instructions, never
/// across an `.await`.
#[derive(Default)]
struct Log {
    faults: Faults,
    relayed: Vec<Relayed>,
    /// Each WebSocket connection of the page, in order: when it was accepted, and the way to
    /// tell its relay to end it (taken when used).
    connections: Vec<(Instant, Option<oneshot::Sender<Ending>>)>,
}

/// A stand-in for one node of a deployment, in front of the real server: it serves the page's
/// files as they are, and relays each of the page's WebSocket connections over a connection of
/// its own to the server, message by message, with the faults the test gives it.
struct FlakyNode {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    accept_task: JoinHandle<()>,
}

impl FlakyNode {
    async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the node");
        let addr = listener.local_addr().expect("the node's address");
        let log = Arc::new(Mutex::new(Log::default()));
        let accept_task = tokio::spawn(accept_loop(listener, server, log.clone()));
        FlakyNode {
            addr,
            log,
            accept_task,
        }
    }

    /// The page, served through the node: its WebSocket connects to the node too.
    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // Poisoned only if a relay panicked, which already fails the test.
        self.log.lock().unwrap()
    }

    /// Changes the node's faults.
    fn change(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.log().faults);
    }

    /// Ends every open connection of the page; returns when the node began to.
    fn end_every_connection(&self, ending: Ending) -> Instant {
        let began = Instant::now();
        for (_, end) in &mut self.log().connections {
            if let Some(end) = end.take() {
                let _ = end.send(ending); // The relay may have ended already.
            }
        }
        began
    }

    /// Waits until the page opened its WebSocket connection number `n`; returns when.
    async fn wait_for_connection(&self, n: usize) -> Instant {
        eventually(&format!("the page opens connection {n}"), async || {
            self.log().connections.get(n).map(|(accepted, _)| *accepted)
        })
        .await
    }

    fn relayed(&self) -> Vec<Relayed> {
        self.log().relayed.clone()
    }

    /// The page's requests of `type`, in order.
    fn requests_of_type(&self, kind: &str) -> Vec<Relayed> {
        let relayed = self.relayed().into_iter();
        relayed
            .filter(|r| r.from_page && r.message["type"] == kind)
            .collect()
    }

    /// The page's `chat` requests with `content`, in order.
    fn chats_from_page(&self, content: &str) -> Vec<Relayed> {
        let chats = self.requests_of_type("chat").into_iter();
        chats.filter(|r| r.message["content"] == content).collect()
    }

    /// The first message the page sent on connection `n`, which must have sent one.
    fn first_from_page(&self, connection: usize) -> Value {
        self.relayed()
            .into_iter()
            .find(|r| r.from_page && r.connection == connection)
            .unwrap_or_else(|| panic!("the page sent nothing on connection {connection}"))
            .message
    }

    /// The first message of `type` the server sent the page on connection `n`, if any.
    fn try_to_page_of_type(&self, connection: usize, kind: &str) -> Option<Value> {
        let relayed = self.relayed().into_iter();
        relayed
            .filter(|r| !r.from_page && r.connection == connection)
            .find(|r| r.message["type"] == kind)
            .map(|r| r.message)
    }

    fn to_page_of_type(&self, connection: usize, kind: &str) -> Value {
        self.try_to_page_of_type(connection, kind)
            .unwrap_or_else(|| panic!("no {kind} on connection {connection}"))
    }

    async fn wait_for_to_page_of_type(&self, connection: usize, kind: &str) -> Value {
        let what = format!("the server sends {kind} on connection {connection}");
        eventually(&what, async || self.try_to_page_of_type(connection, kind)).await
    }

    /// Waits for a `chat` with `content` from the page that met `fate`.
    async fn wait_for_chat_from_page(&self, content: &str, fate: Fate) -> Relayed {
        let what = format!("the page's chat {content:?}: {fate:?}");
        eventually(&what, async || {
            let chats = self.chats_from_page(content);
            chats.into_iter().find(|chat| chat.fate == fate)
        })
        .await
    }

    /// Waits for a `chat` with `content` for the page that met `fate`.
    async fn wait_for_chat_to_page(&self, content: &str, fate: Fate) -> Relayed {
        let what = format!("the chat {content:?} for the page: {fate:?}");
        eventually(&what, async || {
            self.relayed().into_iter().find(|r| {
                !r.from_page
                    && r.message["type"] == "chat"
                    && r.message["content"] == content
                    && r.fate == fate
            })
        })
        .await
    }
}

impl Drop for FlakyNode {
    fn drop(&mut self) {
        // The accept loop owns every relay task: aborting it ends them all.
        self.accept_task.abort();
    }
}

/// Accepts the page's connections, each served by a task of its own.
async fn accept_loop(listener: TcpListener, server: SocketAddr, log: Arc<Mutex<Log>>) {
    // Dropping the set, when this task is aborted, aborts every task in it.
    let mut tasks = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let accepted = Instant::now();
        while tasks.try_join_next().is_some() {} // Forget the ones that ended.
        tasks.spawn(serve(stream, accepted, server, log.clone()));
    }
}

/// Serves one connection of the page: a WebSocket is relayed message by message, anything
/// else (the page and its files) passed through as it is.
async fn serve(mut stream: TcpStream, accepted: Instant, server: SocketAddr, log: Arc<Mutex<Log>>) {
    if !asks_for_websocket(&stream).await {
        let Ok(mut upstream) = TcpStream::connect(server).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        return;
    }
    let Ok(page) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let Ok((upstream, _)) = tokio_tungstenite::connect_async(format!("ws://{server}/ws")).await
    else {
        return;
    };
    let (end_tx, end_rx) = oneshot::channel();
    let connection = {
        let mut log = log.lock().unwrap();
        log.connections.push((accepted, Some(end_tx)));
        log.connections.len() - 1
    };
    relay(connection, page, upstream, end_rx, log).await;
}

/// Whether a connection's first request is the WebSocket upgrade, judged on its first bytes,
/// which stay in the socket for whoever reads it next. (Browsers open a connection of its own
/// for each WebSocket, so the page's files never come on one.)
async fn asks_for_websocket(stream: &TcpStream) -> bool {
    const UPGRADE: &[u8] = b"GET /ws ";
    let mut start = [0; UPGRADE.len()];
    loop {
        match stream.peek(&mut start).await {
            Ok(n) if n == UPGRADE.len() => return start == UPGRADE,
            Ok(0) | Err(_) => return false,
            // Only part of the request line is in: look again in a moment.
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Relays one WebSocket connection of the page, message by message, until either side closes
/// it or the test ends it.
async fn relay(
    connection: usize,
    page: WebSocketStream<TcpStream>,
    server: WebSocketStream<MaybeTlsStream<TcpStream>>,
    mut end: oneshot::Receiver<Ending>,
    log: Arc<Mutex<Log>>,
) {
    let (mut to_page, mut from_page) = page.split();
    let (mut to_server, mut from_server) = server.split();
    loop {
        tokio::select! {
            frame = from_page.next() => {
                // A close, or the end: the page is gone. (Pages send text frames only.)
                let Some(Ok(Frame::Text(text))) = frame else { return };
                let message: Value = serde_json::from_str(&text).unwrap_or_default();
                let fate = log.lock().unwrap().fate_from_page(connection, message);
                let sent = match fate {
                    Fate::Passed => to_server.send(Frame::Text(text)).await,
                    Fate::Lost => Ok(()),
                    Fate::Refused => to_page.send(Frame::text(UNAVAILABLE.to_string())).await,
                };
                if sent.is_err() { return; }
            }
            frame = from_server.next() => match frame {
                Some(Ok(Frame::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap_or_default();
                    let fate = log.lock().unwrap().fate_for_page(connection, message);
                    if fate == Fate::Passed && to_page.send(Frame::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Frame::Close(close))) => {
                    let _ = to_page.send(Frame::Close(close)).await;
                    return;
                }
                Some(Ok(_)) => {} // Pings, which tungstenite answers by itself.
                _ => return,
            },
            ending = &mut end => {
                if let Ok(Ending::Close(code)) = ending {
                    close_page(&mut to_page, &mut from_page, code).await;
                }
                // Returning drops both connections: the server sees this one end.
                return;
            }
        }
    }
}

/// The answer of a node that cannot reach its store.
const UNAVAILABLE: &str = r#"{"type":"error","code":"UNAVAILABLE","message":"The service is briefly unavailable; nothing was done. Try again."}"#;

/// Closes the page's connection with `code`, as a server does: the close frame, then the
/// page's close frame in reply, then (when the caller drops it) the socket. A browser reports
/// the close only once the socket is closed.
async fn close_page(
    to_page: &mut SplitSink<WebSocketStream<TcpStream>, Frame>,
    from_page: &mut SplitStream<WebSocketStream<TcpStream>>,
    code: u16,
) {
    let reason = if code == SERVICE_RESTART {
        "service restart"
    } else {
        "internal error"
    };
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = to_page.send(Frame::Close(Some(frame))).await;
    let _ = tokio::time::timeout(PATIENCE, async {
        while from_page.next().await.is_some() {}
    })
    .await;
}

impl Log {
    /// Decides the fate of a message from the page on `connection`, and logs it.
    fn fate_from_page(&mut self, connection: usize, message: Value) -> Fate {
        let kind = message["type"].as_str().unwrap_or_default();
        let refusals = self.faults.unavailable.get_mut(kind).filter(|n| **n > 0);
        let fate = if let Some(refusals) = refusals {
            *refusals -= 1;
            Fate::Refused
        } else if self.faults.lose_from_page {
            Fate::Lost
        } else {
            Fate::Passed
        };
        self.record(connection, true, message, fate)
    }

    /// Decides the fate of a message from the server for the page on `connection`, and logs it.
    fn fate_for_page(&mut self, connection: usize, message: Value) -> Fate {
        let fate = if self.faults.lose_to_page {
            Fate::Lost
        } else {
            Fate::Passed
        };
        self.record(connection, false, message, fate)
    }

    fn record(&mut self, connection: usize, from_page: bool, message: Value, fate: Fate) -> Fate {
        self.relayed.push(Relayed {
            connection,
            from_page,
            at: Instant::now(),
            message,
            fate,
        });
        fate
    }
}
