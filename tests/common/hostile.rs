//! A hostile server, for the browser tests of end-to-end encryption: a relay between real pages
//! and the real server that serves the page as the server does, but stands in the middle of
//! every WebSocket, where it can rewrite, drop, inject, repeat and reorder frames in either
//! direction, as a server that wants to read a conversation would. It also records every frame
//! a page sends, so a test can assert that no plaintext ever left the page.
//!
//! Each connection is one of two kinds, told apart by its request: a WebSocket upgrade to `/ws`
//! is relayed frame by frame (the relay accepts the page's WebSocket and opens its own to the
//! server); anything else (the page, its scripts) is copied byte for byte.
//!
//! Used from a test binary as `#[path = "common/hostile.rs"] mod hostile;`.
#![allow(dead_code)] // Each test uses some of the hooks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// What a hook decides for one frame: the frames to send on in its place (none drops it, two
/// repeat it, a held frame comes out later, a changed one is a rewrite).
pub type Frames = Vec<Value>;

/// A hook on one direction: given the name of the page's person (empty until the server has
/// told it, in `username_set` or `resumed`) and a frame, the frames to send on instead. Called
/// with the relay's lock held: it must not block.
pub type Hook = Box<dyn FnMut(&str, Value) -> Frames + Send>;

/// A frame one page sent, as the relay received it.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The page's person (empty before the server named them).
    pub from: String,
    /// The frame's text.
    pub text: String,
}

/// What the relay shares between its connections and the test.
#[derive(Default)]
struct Shared {
    /// Every text frame any page sent, in the order they arrived.
    sent: Vec<Sent>,
    /// Rewrites what the server sends to the pages.
    to_page: Option<Hook>,
    /// Rewrites what the pages send to the server.
    to_server: Option<Hook>,
    /// The relayed WebSockets: whose they are, and where to inject a frame to their page.
    links: Vec<(Arc<Mutex<String>>, mpsc::UnboundedSender<Value>)>,
}

/// The hostile relay, on a free local port.
pub struct HostileRelay {
    /// Where pages are pointed instead of the server.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl HostileRelay {
    /// Starts a relay in front of the server at `server`.
    pub async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(serve(listener, server, shared.clone()));
        HostileRelay { addr, shared, task }
    }

    /// The page's address through the relay.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Rewrites every frame from the server to a page with `hook` from now on.
    pub fn to_page(&self, hook: impl FnMut(&str, Value) -> Frames + Send + 'static) {
        self.lock().to_page = Some(Box::new(hook));
    }

    /// Rewrites every frame from a page to the server with `hook` from now on.
    pub fn to_server(&self, hook: impl FnMut(&str, Value) -> Frames + Send + 'static) {
        self.lock().to_server = Some(Box::new(hook));
    }

    /// Relays faithfully again.
    pub fn behave(&self) {
        let mut shared = self.lock();
        shared.to_page = None;
        shared.to_server = None;
    }

    /// Sends `frame` to the page of `person` (every open WebSocket of theirs), as if the server
    /// had sent it. Returns how many sockets it went to.
    pub fn inject(&self, person: &str, frame: Value) -> usize {
        let shared = self.lock();
        shared
            .links
            .iter()
            .filter(|(name, tx)| *name.lock().expect("not poisoned") == person && !tx.is_closed())
            .filter(|(_, tx)| tx.send(frame.clone()).is_ok())
            .count()
    }

    /// Every frame the pages sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }

    /// Every frame `person`'s page sent so far, parsed.
    pub fn sent_by(&self, person: &str) -> Vec<Value> {
        self.sent()
            .into_iter()
            .filter(|sent| sent.from == person)
            .filter_map(|sent| serde_json::from_str(&sent.text).ok())
            .collect()
    }

    /// Asserts that no frame any page sent contains `text` (what a person typed): in an
    /// encrypted room nothing they write may leave the page but sealed.
    pub fn assert_never_sent(&self, text: &str) {
        for sent in self.sent() {
            assert!(
                !sent.text.contains(text),
                "{}'s page sent {text:?} in the clear: {}",
                sent.from,
                sent.text
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .expect("no hook panicked while holding the lock")
    }
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, server: SocketAddr, shared: Arc<Mutex<Shared>>) {
    // Each connection's task; dropping the set (when the relay goes) aborts them.
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((page, _)) = listener.accept().await {
        let shared = shared.clone();
        connections.spawn(async move {
            if is_websocket(&page).await {
                relay_websocket(page, server, shared).await;
            } else if let Ok(upstream) = TcpStream::connect(server).await {
                copy_bytes(page, upstream).await;
            }
        });
    }
}

/// Whether the request waiting on `page` is a WebSocket upgrade to `/ws`. Looks at it with
/// `peek`, which leaves it in the socket for whoever handles the connection.
async fn is_websocket(page: &TcpStream) -> bool {
    let mut buffer = vec![0; 8192];
    for _ in 0..200 {
        let Ok(n) = page.peek(&mut buffer).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        let head = String::from_utf8_lossy(&buffer[..n]).to_ascii_lowercase();
        if head.contains("\r\n\r\n") || n == buffer.len() {
            return head.starts_with("get /ws") && head.contains("upgrade: websocket");
        }
        // Only part of the request is in: `peek` would return at once again, so wait a little.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Copies bytes both ways until either side closes: the page and its files, as served.
async fn copy_bytes(page: TcpStream, upstream: TcpStream) {
    let (mut page_read, mut page_write) = page.into_split();
    let (mut server_read, mut server_write) = upstream.into_split();
    tokio::select! {
        _ = tokio::io::copy(&mut page_read, &mut server_write) => {}
        _ = tokio::io::copy(&mut server_read, &mut page_write) => {}
    }
}

/// Relays one WebSocket frame by frame, through the hooks.
async fn relay_websocket(page: TcpStream, server: SocketAddr, shared: Arc<Mutex<Shared>>) {
    let Ok(page) = tokio_tungstenite::accept_async(page).await else {
        return;
    };
    let Ok((upstream, _)) = tokio_tungstenite::connect_async(format!("ws://{server}/ws")).await
    else {
        return;
    };
    let (mut page_tx, mut page_rx) = page.split();
    let (mut server_tx, mut server_rx) = upstream.split();
    let person = Arc::new(Mutex::new(String::new()));
    let (inject_tx, mut inject_rx) = mpsc::unbounded_channel();
    shared
        .lock()
        .expect("not poisoned")
        .links
        .push((person.clone(), inject_tx));

    let to_server = async {
        while let Some(Ok(message)) = page_rx.next().await {
            let frames = match message {
                Message::Text(text) => {
                    let from = person.lock().expect("not poisoned").clone();
                    let mut shared = shared.lock().expect("not poisoned");
                    shared.sent.push(Sent {
                        from: from.clone(),
                        text: text.to_string(),
                    });
                    through(&mut shared.to_server, &from, &text)
                }
                Message::Close(_) => break,
                other => {
                    if server_tx.send(other).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            for frame in frames {
                if server_tx.send(text_frame(&frame)).await.is_err() {
                    return;
                }
            }
        }
        let _ = server_tx.close().await;
    };
    let to_page = async {
        loop {
            let frames = tokio::select! {
                message = server_rx.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        learn_name(&person, &text);
                        let from = person.lock().expect("not poisoned").clone();
                        let mut shared = shared.lock().expect("not poisoned");
                        through(&mut shared.to_page, &from, &text)
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let _ = page_tx.send(Message::Close(frame)).await;
                        break;
                    }
                    Some(Ok(other)) => {
                        if page_tx.send(other).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Some(Err(_)) | None => break,
                },
                Some(injected) = inject_rx.recv() => vec![injected],
            };
            for frame in frames {
                if page_tx.send(text_frame(&frame)).await.is_err() {
                    return;
                }
            }
        }
        let _ = page_tx.close().await;
    };
    // Either side gone ends the link: the other is dropped with it, as a network drop would.
    tokio::select! {
        () = to_server => {}
        () = to_page => {}
    }
}

/// The frames `text` becomes through `hook` (itself alone without one, or if it is not JSON).
fn through(hook: &mut Option<Hook>, from: &str, text: &str) -> Frames {
    match (hook, serde_json::from_str::<Value>(text)) {
        (Some(hook), Ok(value)) => hook(from, value),
        (_, Ok(value)) => vec![value],
        (_, Err(_)) => vec![Value::String(text.to_owned())],
    }
}

fn text_frame(frame: &Value) -> Message {
    match frame {
        // Not JSON when it came: passed on as it was.
        Value::String(text) => Message::text(text.clone()),
        other => Message::text(other.to_string()),
    }
}

/// Takes the page's person's name from what the server tells it.
fn learn_name(person: &Mutex<String>, text: &str) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if matches!(value["type"].as_str(), Some("username_set" | "resumed"))
        && let Some(name) = value["username"].as_str()
    {
        *person.lock().expect("not poisoned") = name.to_owned();
    }
}
