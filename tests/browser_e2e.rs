//! End-to-end encrypted rooms in the web client, in a real headless Chromium: two pages talk
//! through an invite link whose fragment holds the key, while the server, a raw WebSocket client
//! in the room and the server's debug log see only envelopes; a page that joined with the code
//! alone is told it needs the link and sends nothing; and envelopes changed or moved by someone
//! in the middle are shown as "could not be verified", never as text.
//!
//! The raw clients seal and open envelopes with `common::e2e`, written from docs/protocol.md
//! with ring rather than WebCrypto: where they and the page understand each other, the page
//! follows the document.
//!
//! Needs Chromium and chromedriver, like `tests/browser.rs` (see `tests/common/browser.rs`).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use fantoccini::Locator;
use fantoccini::key::Key;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use common::browser::{
    ChromeDriver, LAPTOP, Message, PHONE, Page, browser_available, closing_pages_after, eventually,
    one_browser_test_at_a_time,
};
use common::e2e;
use common::{ServerProcess, TestClient, TestServer};

/// What a page shows in place of a message that did not verify.
const UNVERIFIED: &str = "This message could not be verified, so it is not shown.";

/// What a page without the room's key shows in place of a message.
const LOCKED: &str = "Encrypted message — open the invite link to read it.";

/// Alice creates an end-to-end encrypted room and Bob opens its invite link: the link carries a
/// 256-bit key in its fragment, both room bars show the lock, and text with emoji and markup
/// arrives intact, shown as text. Bob's page takes the key out of its address bar and keeps it
/// across a reload, and both pages keep it across a reconnect. When Bob has left, Eve, a raw WebSocket client, joins with the code: in the
/// history and live she gets only envelopes, which open (with the link's key, as
/// docs/protocol.md says) to exactly what Alice typed. Every request the pages made went
/// through a proxy that recorded it: none holds the key or a `Referer`. And the server's debug
/// log holds neither the key nor a word anyone said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_through_the_invite_link_and_the_server_sees_only_envelopes() {
    let test = "two_pages_chat_through_the_invite_link_and_the_server_sees_only_envelopes";
    if !browser_available(test) {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
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
    let server: SocketAddr = addr.parse().expect("the server's address");
    let proxy = RecordingProxy::start(server).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;

    let said = closing_pages_after(
        &[&alice, &bob],
        invite_link_scenario(server, &proxy, &alice, &bob),
    )
    .await;

    let requests = proxy.recorded();
    assert!(
        requests.contains("GET /?room="),
        "the proxy saw Bob's page load the invite: {requests}"
    );
    assert!(
        !requests.to_ascii_lowercase().contains("\r\nreferer:"),
        "no request carries a Referer: {requests}"
    );
    assert!(
        !requests.contains("key="),
        "no request carries the fragment"
    );

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
    let Said { key, texts } = said;
    assert!(!log.contains(&key), "the key is in the log:\n{log}");
    assert!(!requests.contains(&key), "the key went out in a request");
    for text in &texts {
        assert!(!log.contains(text.as_str()), "{text:?} in the log:\n{log}");
    }
    for word in ["Hello", "markup", "reload", "reconnect", "secret"] {
        assert!(!log.contains(word), "{word:?} in the log:\n{log}");
    }
}

/// What the scenario leaves for the checks after it: the room's link key and what was typed.
#[derive(Default)]
struct Said {
    key: String,
    texts: Vec<String>,
}

async fn invite_link_scenario(
    server: SocketAddr,
    proxy: &RecordingProxy,
    alice: &Page,
    bob: &Page,
) -> Said {
    let base = format!("http://{}/", proxy.addr);
    alice.goto(&base).await;
    alice.choose_name().await;
    assert!(
        !alice
            .find("#create-encrypted")
            .await
            .is_selected()
            .await
            .unwrap(),
        "end-to-end encryption is off by default"
    );
    let code = alice.create_encrypted_room().await;
    let invite = alice.value("#invite-link").await;
    assert!(
        invite.starts_with(&format!("{base}?room={code}#key=")),
        "the invite link carries the key in its fragment: {invite}"
    );
    let key = e2e::key_of_link(&invite).expect("a key in the link");
    assert_eq!(key.len(), 43, "256 bits in base64url: {key}");
    assert!(alice.displayed("#room-lock").await, "Alice sees the lock");
    assert!(
        alice.displayed("#invite-e2e-note").await,
        "the big code comes with the note that the link is needed"
    );
    assert_eq!(
        alice.find("#room-code-big").await.text().await.unwrap(),
        code
    );

    bob.goto(&invite).await;
    let address = bob.client.current_url().await.unwrap();
    assert_eq!(
        address.fragment(),
        None,
        "the key is out of the address bar: {address}"
    );
    bob.accept_invite(&code).await;
    alice
        .wait_for_text("#messages", "Bob joined", "Alice sees Bob join")
        .await;
    bob.wait_for_text(
        "#room-lock",
        "end-to-end encrypted",
        "Bob's room bar shows the lock",
    )
    .await;
    // The lock is drawn (an emoji would be an empty box without an emoji font), and the
    // composer keeps what is typed from spell-check services and autofill.
    assert!(
        bob.client
            .find(fantoccini::Locator::Css("#room-lock svg"))
            .await
            .is_ok(),
        "the lock is an inline SVG"
    );
    let composer = bob.find("#message-input").await;
    assert_eq!(
        composer.attr("spellcheck").await.unwrap().as_deref(),
        Some("false")
    );
    assert_eq!(
        composer.attr("autocomplete").await.unwrap().as_deref(),
        Some("off")
    );
    for page in [alice, bob] {
        let state = page
            .client
            .execute("return document.documentElement.dataset.e2e;", vec![])
            .await
            .unwrap();
        assert_eq!(
            state, "verified",
            "{}: the key check confirmed the key",
            page.name
        );
    }
    assert_eq!(
        bob.value("#invite-link").await,
        invite,
        "Bob's page offers the same link, key and all"
    );

    let texts = [
        "Hello Bob 👋🏽 — this is <b>markup</b> & \"quotes\"",
        "Ça marche 🧪 <script>alert(1)</script>\nsecond line",
        "After the reload 🔁",
        "After a reconnect 🔌",
        "Only Eve is here now, and this is secret 🤫",
        "<i>said to Eve</i> live",
    ]
    .map(str::to_owned);
    alice.send_message(&texts[0]).await;
    bob.wait_for_message("Alice", &texts[0]).await;
    // Shift+Enter makes the new line; Enter sends.
    let (first, second) = texts[1].split_once('\n').expect("two lines");
    bob.type_into_message(&format!(
        "{first}{}{}{}{second}{}",
        Key::Shift,
        Key::Enter,
        Key::Null,
        Key::Enter
    ))
    .await;
    for page in [alice, bob] {
        let shown = page.wait_for_message("Bob", &texts[1]).await;
        assert_eq!(
            texts_of(&shown),
            [texts[0].as_str(), &texts[1]],
            "{} sees both messages intact",
            page.name
        );
        assert!(
            page.client
                .find_all(Locator::Css("#messages b, #messages script"))
                .await
                .unwrap()
                .is_empty(),
            "{}: no element was made from a message",
            page.name
        );
    }

    // A reload keeps the key (sessionStorage): the conversation comes back readable.
    bob.client.refresh().await.unwrap();
    let shown = bob.wait_for_message("Bob", &texts[1]).await;
    assert_eq!(texts_of(&shown), [texts[0].as_str(), &texts[1]]);
    bob.wait_for_text("#room-lock", "end-to-end encrypted", "the lock is back")
        .await;
    bob.send_message(&texts[2]).await;
    alice.wait_for_message("Bob", &texts[2]).await;

    // The network drops under both pages: they reconnect and resume, and still hold the key.
    proxy.drop_connections();
    for page in [alice, bob] {
        page.wait_for_text("#messages", "Reconnected.", "the page is back")
            .await;
    }
    alice.send_message(&texts[3]).await;
    bob.wait_for_message("Alice", &texts[3]).await;
    bob.wait_for_text("#room-lock", "end-to-end encrypted", "the lock stays")
        .await;

    // Bob leaves; what Alice says now is kept for whoever joins next.
    bob.find("#leave").await.click().await.unwrap();
    alice
        .wait_for_text("#messages", "Bob left the room", "Alice sees Bob leave")
        .await;
    alice.send_message(&texts[4]).await;
    alice.wait_for_message("Alice", &texts[4]).await;

    // Eve joins with the code alone, as a raw client: the server gives her envelopes only.
    let mut eve = TestClient::connect(&format!("ws://{server}/ws")).await;
    eve.set_username("Eve").await;
    let joined = eve.join(&code).await;
    assert_eq!(joined["encrypted"], true);
    let room_key = e2e::room_key_v2(&key, &code);
    let history = joined["history"].as_array().expect("a history");
    assert_eq!(history.len(), 1, "{joined}");
    assert_sealed(&history[0], &room_key, &code, "Alice", &texts[4]);
    alice
        .wait_for_text("#messages", "Eve joined", "Alice sees Eve join")
        .await;
    alice.send_message(&texts[5]).await;
    let live = next_text_chat(&mut eve, &room_key, &code).await;
    assert_sealed(&live, &room_key, &code, "Alice", &texts[5]);
    for text in &texts {
        assert!(
            !joined.to_string().contains(text.as_str()) && !live.to_string().contains(text),
            "Eve received {text:?} in plaintext"
        );
    }
    Said {
        key,
        texts: texts.to_vec(),
    }
}

/// `chat` is a v2 envelope marked encrypted, from `from`, that opens to `text` under the room key.
fn assert_sealed(chat: &Value, key: &ring::aead::LessSafeKey, code: &str, from: &str, text: &str) {
    assert_eq!(chat["type"], "chat", "{chat}");
    assert_eq!(chat["encrypted"], true, "{chat}");
    assert_eq!(chat["from"], from, "{chat}");
    let envelope = chat["content"].as_str().expect("content");
    assert!(
        e2e::header_v2(envelope).is_some(),
        "not an envelope: {chat}"
    );
    let opened = e2e::open_v2(key, code, from, envelope).expect("the envelope opens");
    assert_eq!(
        opened.text(),
        Some(text),
        "the envelope opens to what was typed"
    );
    assert_eq!(opened.kind, e2e::KIND_ROOM, "sealed under the room key");
}

/// Bob joins Alice's encrypted room by typing its code: his page says plainly that the room is
/// end-to-end encrypted and that he needs the invite link, shows no lock, and shows Alice's
/// messages as "encrypted message — open the invite link", never their ciphertext. His composer
/// is disabled, and even a submitted form sends nothing: Alice receives no chat, no typing, no
/// read receipt from him.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_joins_by_code_alone_is_told_and_sends_nothing() {
    if !browser_available("a_page_that_joins_by_code_alone_is_told_and_sends_nothing") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let driver = ChromeDriver::start().await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(&[&bob], async {
        // Alice is a raw client that holds the key and seals her own envelopes.
        let mut alice = server.named("Alice").await;
        alice
            .send(json!({"type": "create_room", "encrypted": true}))
            .await;
        let created = alice.expect("room_created").await;
        let code = created["room_code"].as_str().expect("a code").to_owned();
        let key = e2e::room_key_v2(&e2e::new_link_key(), &code);

        bob.goto(&format!("http://{}/", server.addr)).await;
        bob.choose_name().await;
        bob.join_room(&code).await;
        alice.expect("peer_joined").await;
        bob.wait_for_text(
            "#e2e-missing",
            "This room is end-to-end encrypted",
            "Bob is told the room is encrypted",
        )
        .await;
        let notice = bob.find("#e2e-missing").await.text().await.unwrap();
        assert!(notice.contains("invite link"), "{notice}");
        assert!(
            !bob.displayed("#room-lock").await,
            "no lock without the key"
        );
        for control in ["#message-input", "#send"] {
            assert!(
                bob.find(control).await.prop("disabled").await.unwrap() == Some("true".into()),
                "{control} is disabled"
            );
        }

        let envelope = e2e::seal_v2(
            &key,
            &code,
            "Alice",
            e2e::new_run(),
            1,
            "for link holders only",
        );
        alice
            .send(json!({"type": "chat", "content": envelope, "encrypted": true}))
            .await;
        alice.expect("chat").await;
        bob.wait_for_message("Alice", LOCKED).await;
        let body = bob.body_text().await;
        assert!(
            !body.contains(&envelope[..20]) && !body.contains("for link holders"),
            "Bob's page shows neither ciphertext nor plaintext: {body}"
        );

        // However the form is submitted, nothing goes out.
        let script = "document.getElementById('message-input').value = 'plaintext that must stay';
            document.getElementById('composer').requestSubmit();";
        bob.client.execute(script, vec![]).await.unwrap();
        bob.wait_for_text(
            "#composer-error",
            "end-to-end encrypted",
            "Bob is told why nothing was sent",
        )
        .await;
        alice.expect_nothing_pending().await;
    })
    .await;
}

/// Mallory is in Alice's encrypted room with the link's key, and stands in for a server that
/// alters what it relays. A message she seals as herself, as docs/protocol.md says (v2), shows
/// on Alice's page as text. But the same envelope with one byte changed, an envelope Alice sent
/// relayed as Mallory's, envelopes made for another room (with that room's key, or with this
/// room's key but bound to the other room), and a v1 envelope (which carries no sequence
/// number) are each shown as "could not be verified", never as text or ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_moved_envelope_is_shown_as_not_verified() {
    if !browser_available("a_tampered_or_moved_envelope_is_shown_as_not_verified") {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let server = TestServer::start().await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    closing_pages_after(&[&alice], async {
        alice.goto(&format!("http://{}/", server.addr)).await;
        alice.choose_name().await;
        let code = alice.create_encrypted_room().await;
        let link_key = e2e::key_of_link(&alice.value("#invite-link").await).expect("a key");
        let key = e2e::room_key_v2(&link_key, &code);

        let mut mallory = server.named("Mallory").await;
        mallory.join(&code).await;
        alice.send_message("Hi, who is this?").await;
        // Alice's page also sends its hello, now that someone is here: skipped.
        let alices = next_text_chat(&mut mallory, &key, &code).await;
        let alices = alices["content"].as_str().expect("an envelope").to_owned();

        let run = e2e::new_run();
        let genuine = e2e::seal_v2(&key, &code, "Mallory", run, 1, "It's me, with the link 🔑");
        let other_room = if code == "ABCDEF" { "GHJKMN" } else { "ABCDEF" };
        let other_key = e2e::room_key_v2(&link_key, other_room);
        let forgeries = [
            ("one byte changed", e2e::tamper_v2(&genuine)),
            ("Alice's envelope as Mallory's", alices),
            (
                "made for another room with its key",
                e2e::seal_v2(&other_key, other_room, "Mallory", run, 2, "moved"),
            ),
            (
                "bound to another room",
                e2e::seal_v2(&key, other_room, "Mallory", run, 3, "moved"),
            ),
            (
                "an older client's v1 envelope",
                e2e::seal(&e2e::room_key(&link_key, &code), &code, "Mallory", "moved"),
            ),
        ];
        send_sealed(&mut mallory, &key, &code, &genuine).await;
        alice
            .wait_for_message("Mallory", "It's me, with the link 🔑")
            .await;
        for (count, (what, forgery)) in forgeries.iter().enumerate() {
            send_sealed(&mut mallory, &key, &code, forgery).await;
            let shown = alice.wait_for_messages(3 + count).await;
            let last = shown.last().expect("a message");
            assert_eq!(
                (last.from.as_str(), last.text.as_str()),
                ("Mallory", UNVERIFIED),
                "{what}"
            );
        }
        let body = alice.body_text().await;
        assert!(
            !body.contains("v1.") && !body.contains("v2."),
            "no ciphertext on the page: {body}"
        );
        assert!(
            !body.contains("moved"),
            "no forged text on the page: {body}"
        );
    })
    .await;
}

/// Sends `envelope` as an encrypted chat and waits for it to come back.
async fn send_sealed(
    client: &mut TestClient,
    key: &ring::aead::LessSafeKey,
    code: &str,
    envelope: &str,
) {
    client
        .send(json!({"type": "chat", "content": envelope, "encrypted": true}))
        .await;
    let echo = next_text_chat(client, key, code).await;
    assert_eq!(echo["content"], envelope);
}

/// The next `chat` a raw client receives that is not a hello of the handshake (one that opens
/// under the room key `key` as type 0x02), past what a page sends as it goes along.
async fn next_text_chat(
    client: &mut TestClient,
    key: &ring::aead::LessSafeKey,
    code: &str,
) -> Value {
    loop {
        let chat = next_chat(client).await;
        let from = chat["from"].as_str().unwrap_or_default();
        let opened = chat["content"]
            .as_str()
            .and_then(|envelope| e2e::open_v2(key, code, from, envelope));
        if opened.is_none_or(|opened| opened.kind_of_body != e2e::TYPE_HELLO) {
            return chat;
        }
    }
}

/// The next `chat` a raw client receives, past what a page sends as it goes along (its typing
/// and its read receipts).
async fn next_chat(client: &mut TestClient) -> Value {
    loop {
        let message = client.recv().await;
        match message["type"].as_str() {
            Some("typing" | "stop_typing" | "read") => continue,
            _ => {
                assert_eq!(message["type"], "chat", "unexpected message: {message}");
                return message;
            }
        }
    }
}

fn texts_of(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

/// What these tests do with a page beyond the shared harness.
trait E2ePage {
    /// Ticks "End-to-end encrypted", clicks "Create a room" and returns the code shown.
    async fn create_encrypted_room(&self) -> String;
    /// On a page opened from an invite link: types the name, which takes the page straight
    /// into room `code`.
    async fn accept_invite(&self, code: &str);
    /// Waits until the page shows `count` messages, none of them still being decrypted, and
    /// returns them.
    async fn wait_for_messages(&self, count: usize) -> Vec<Message>;
    /// The text of the whole page, as the person sees it.
    async fn body_text(&self) -> String;
}

impl E2ePage for Page {
    async fn create_encrypted_room(&self) -> String {
        self.find("#create-encrypted").await.click().await.unwrap();
        self.create_room().await
    }

    async fn accept_invite(&self, code: &str) {
        self.find("#name-input")
            .await
            .send_keys(&format!("{}{}", self.name, Key::Enter))
            .await
            .unwrap();
        self.wait_for_text("#room-code", code, "the invite leads into the room")
            .await;
    }

    async fn wait_for_messages(&self, count: usize) -> Vec<Message> {
        let what = format!("{}: {count} messages, all decrypted", self.name);
        eventually(&what, async || {
            let messages = self.messages().await;
            let settled = messages.len() == count
                && messages.iter().all(|message| message.text != "Decrypting…");
            settled.then_some(messages)
        })
        .await
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

/// A TCP proxy in front of the server that records every byte the pages send through it, so
/// the test can read each HTTP request they made (WebSocket frames from a browser are masked,
/// so only the requests themselves are readable).
struct RecordingProxy {
    /// Where pages connect instead of the server.
    addr: SocketAddr,
    /// Everything the pages sent, in arrival order per connection. A std `Mutex`: held for an
    /// append, never across an `.await`.
    sent: Arc<Mutex<Vec<u8>>>,
    /// The tasks copying each connection; aborting one drops both of its sockets.
    links: Arc<Mutex<Vec<AbortHandle>>>,
    task: JoinHandle<()>,
}

impl RecordingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let links = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(Self::serve(listener, upstream, sent.clone(), links.clone()));
        RecordingProxy {
            addr,
            sent,
            links,
            task,
        }
    }

    /// What the pages have sent so far, as text.
    fn recorded(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }

    /// Ends every connection at once, without a close frame, as a dropped network does. New
    /// connections go through as before.
    fn drop_connections(&self) {
        self.links
            .lock()
            .unwrap()
            .drain(..)
            .for_each(|link| link.abort());
    }

    async fn serve(
        listener: TcpListener,
        upstream: SocketAddr,
        sent: Arc<Mutex<Vec<u8>>>,
        links: Arc<Mutex<Vec<AbortHandle>>>,
    ) {
        // Each connection's task; dropping the set (with this future) aborts them.
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let sent = sent.clone();
            let link = connections.spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream = async {
                    let mut buffer = vec![0; 16 * 1024];
                    loop {
                        let n = match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        sent.lock().unwrap().extend_from_slice(&buffer[..n]);
                        if server_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                };
                let downstream = async {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    let _ = client_write.shutdown().await;
                };
                tokio::join!(upstream, downstream);
            });
            links.lock().unwrap().push(link);
        }
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
