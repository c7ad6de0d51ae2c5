//! Shared helpers for the integration tests: a real server on an ephemeral port and a
//! WebSocket client that speaks the protocol's JSON.
#![allow(dead_code)] // Each test binary uses a different part of these helpers.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use chat_server::Config;

/// How long a test waits for something the server must send before calling it a failure. Only
/// a failing test ever waits this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The default settings with `--resume-grace 0s`: protocol v1 to the letter.
pub fn v1_config() -> Config {
    Config {
        resume_grace: Duration::ZERO,
        ..Config::default()
    }
}

/// A chat server running in this process on 127.0.0.1 and a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with the default settings.
    pub async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    /// Starts a server that behaves exactly as protocol v1 says: no resume grace, so a lost
    /// connection is `peer_left` at once (`--resume-grace 0s`).
    pub async fn v1() -> Self {
        Self::with_config(v1_config()).await
    }

    /// Starts a server with `config`.
    pub async fn with_config(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_server::run(listener, config, async {
            let _ = shutdown_rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        }
    }

    /// Starts a server with `config` whose actor panics when the returned sender is used (or
    /// dropped), as a bug in the actor would make it.
    pub async fn with_actor_stop(config: Config) -> (Self, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_server::run_with_actor_stop(
            listener,
            config,
            async {
                let _ = shutdown_rx.await;
            },
            async {
                let _ = stop_rx.await;
            },
        ));
        let server = TestServer {
            addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        };
        (server, stop_tx)
    }

    /// Waits for `run` to return by itself, without asking it to shut down.
    pub async fn finished(mut self) -> std::io::Result<()> {
        let task = self.task.take().expect("server task");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the server stops within the patience period")
            .expect("the server task does not panic")
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Asks the server to shut down and waits until `run` returns.
    pub async fn shut_down(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().expect("server task");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the server stops within the patience period")
            .expect("the server task does not panic")
    }

    /// A connected client, after `connected`.
    pub async fn client(&self) -> TestClient {
        TestClient::connect(&self.ws_url()).await
    }

    /// A connected client that has set `name`.
    pub async fn named(&self, name: &str) -> TestClient {
        let mut client = self.client().await;
        client.set_username(name).await;
        client
    }

    /// Two named clients in one room: (host, guest, room code).
    pub async fn pair(&self, host: &str, guest: &str) -> (TestClient, TestClient, String) {
        pair_at(&self.ws_url(), &self.ws_url(), host, guest).await
    }

    /// The `/metrics` exposition text.
    pub async fn metrics(&self) -> String {
        self.http_get("/metrics").await.2
    }

    /// Whether `/metrics` has exactly the line `line`.
    pub async fn has_metric(&self, line: &str) -> bool {
        self.metrics().await.lines().any(|l| l == line)
    }

    /// Fetches `path` with a plain HTTP/1.1 GET and returns (status, headers, body).
    pub async fn http_get(&self, path: &str) -> (u16, String, String) {
        http_request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sends a raw HTTP request and reads the whole response: (status, head, body).
pub async fn http_request(addr: SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("a response within the patience period")
        .expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
    (status, head.to_string(), body.to_string())
}

/// Tries a WebSocket handshake with `/ws` on `server` from the local address `from` (any
/// 127.x.y.z works on Linux, which is how tests act as several hosts), sending `origin` as the
/// `Origin` header if given. A refused handshake is `Err` with the HTTP status.
pub async fn try_connect(
    server: SocketAddr,
    from: std::net::IpAddr,
    origin: Option<&str>,
) -> Result<TestClient, u16> {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the client's address");
    let stream = socket.connect(server).await.expect("TCP connect");
    let mut request = format!("ws://{server}/ws")
        .into_client_request()
        .expect("a valid request");
    if let Some(origin) = origin {
        request.headers_mut().insert(
            "Origin",
            HeaderValue::from_str(origin).expect("a valid origin"),
        );
    }
    let handshake = tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(stream),
        Some(client_config()),
    );
    let handshake = tokio::time::timeout(PATIENCE, handshake)
        .await
        .expect("a handshake answer within the patience period");
    match handshake {
        Ok((ws, _)) => Ok(TestClient::greeted(ws).await),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("handshake failed: {other}"),
    }
}

/// The largest message the test clients accept: 1 MiB, the default of common WebSocket
/// libraries (Python's `websockets`, for one). The server must never send more in one frame.
pub const CLIENT_MAX_MESSAGE: usize = 1024 * 1024;

/// The WebSocket settings of every test client: [`CLIENT_MAX_MESSAGE`] as the limit.
pub fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(CLIENT_MAX_MESSAGE))
        .max_frame_size(Some(CLIENT_MAX_MESSAGE))
}

/// A WebSocket client that speaks the chat protocol's JSON.
pub struct TestClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub client_id: String,
    /// The token `connected` gave, for a later `resume`.
    pub session_token: String,
}

impl TestClient {
    /// Connects and reads the `connected` greeting.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(client_config()), false)
                .await
                .expect("websocket handshake");
        Self::greeted(ws).await
    }

    /// Wraps a fresh WebSocket and reads the `connected` greeting.
    pub async fn greeted(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        let mut client = TestClient {
            ws,
            client_id: String::new(),
            session_token: String::new(),
        };
        let greeting = client.expect("connected").await;
        let text = |field: &str| {
            greeting[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} is a string in {greeting}"))
                .to_string()
        };
        client.client_id = text("client_id");
        client.session_token = text("session_token");
        client
    }

    /// Sends one JSON value as a text frame.
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends raw text as a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a frame");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .expect("send a frame");
    }

    /// The next JSON message from the server. Control frames are skipped (and pings answered by
    /// tungstenite as we read). Panics on a close, an error, or nothing within [`PATIENCE`].
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a message within the patience period")
                .expect("the connection is open")
                .expect("a valid frame");
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next message, which must have `"type": kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let message = self.recv().await;
        assert_eq!(message["type"], kind, "unexpected message: {message}");
        message
    }

    /// The next message, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let message = self.expect("error").await;
        assert_eq!(message["code"], code, "unexpected error: {message}");
        assert!(
            message["message"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{message}"
        );
        message
    }

    /// Proves that nothing else is queued for this client: sends a request whose only answer is
    /// a known error and checks that this answer is the very next message.
    pub async fn expect_nothing_pending(&mut self) {
        self.send(json!({"type": "__sync__"})).await;
        let message = self.recv().await;
        assert_eq!(
            message["type"], "error",
            "expected nothing pending, got {message}"
        );
        assert_eq!(
            message["code"], "INVALID_MESSAGE",
            "expected nothing pending, got {message}"
        );
    }

    /// Reads until the server closes the connection and returns its close frame.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the server closes within the patience period");
            match frame {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Reads every message until the server's close frame, and returns them with the frame.
    /// The server must then end the stream cleanly: a reset instead would have thrown away
    /// what the client had not read yet, close frame included.
    pub async fn read_to_close(&mut self) -> (Vec<Value>, CloseFrame) {
        let mut messages = Vec::new();
        let close = loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the server closes within the patience period");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    messages.push(serde_json::from_str(&text).expect("JSON"));
                }
                Some(Ok(Message::Close(Some(frame)))) => break frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected messages and a close frame, got {other:?}"),
            }
        };
        // Our close reply goes out as we read on; then the server's FIN ends the stream.
        let end = tokio::time::timeout(PATIENCE, self.ws.next())
            .await
            .expect("the stream ends within the patience period");
        assert!(
            end.is_none(),
            "a clean end after the close frame, not {end:?}"
        );
        (messages, close)
    }

    /// Reads until the connection has ended (closed or reset), ignoring what comes before.
    pub async fn expect_end(&mut self) {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the connection ends within the patience period");
            if !matches!(frame, Some(Ok(_))) {
                return;
            }
        }
    }

    pub async fn set_username(&mut self, name: &str) -> Value {
        self.send(json!({"type": "set_username", "username": name}))
            .await;
        self.expect("username_set").await
    }

    pub async fn create_room(&mut self) -> String {
        self.send(json!({"type": "create_room"})).await;
        let created = self.expect("room_created").await;
        created["room_code"]
            .as_str()
            .expect("room_code is a string")
            .to_string()
    }

    pub async fn join(&mut self, code: &str) -> Value {
        self.send(json!({"type": "join_room", "room_code": code}))
            .await;
        self.expect("room_joined").await
    }

    pub async fn chat(&mut self, content: &str) {
        self.send(json!({"type": "chat", "content": content})).await;
    }
}
pub mod browser;
pub mod cluster;
pub mod e2e;
pub mod redis;

/// The `chat-server` binary, started by a test on `127.0.0.1:0`. A thread reads its stdout to the
/// end, so the server never writes its logs into a closed pipe; every line goes to `lines`.
pub struct ServerProcess {
    pub child: std::process::Child,
    /// `host:port`, from the startup line.
    pub addr: String,
    /// Every line logged after the startup line.
    pub lines: std::sync::mpsc::Receiver<String>,
    /// The lines up to and including the startup line.
    pub startup: Vec<String>,
}

impl ServerProcess {
    /// Starts `command` (the binary with its arguments) and waits for the startup line, which
    /// names the address the operating system chose.
    pub fn start(command: &mut std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start chat-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `CHAT_TEST_ECHO=1 cargo test … -- --nocapture` shows what the nodes logged.
                if std::env::var_os("CHAT_TEST_ECHO").is_some() {
                    eprintln!("NODE {line}");
                }
                // Keep draining even when nobody listens any more.
                let _ = line_tx.send(line);
            }
        });
        let mut startup = Vec::new();
        let addr = loop {
            let line = lines.recv_timeout(PATIENCE).expect("a startup line");
            let addr = line.find("http://").and_then(|start| {
                let rest = &line[start + "http://".len()..];
                rest.find('/').map(|end| rest[..end].to_string())
            });
            startup.push(line);
            if let Some(addr) = addr {
                break addr;
            }
        };
        ServerProcess {
            child,
            addr,
            lines,
            startup,
        }
    }

    /// The binary, to give arguments and environment to.
    pub fn command() -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
        command.env("NO_COLOR", "1");
        command
    }
}

/// A room created by `host` at `host_url` and joined by `guest` at `guest_url` (the same
/// server, or two nodes of one), each told of the other: (host, guest, room code).
pub async fn pair_at(
    host_url: &str,
    guest_url: &str,
    host: &str,
    guest: &str,
) -> (TestClient, TestClient, String) {
    let mut host_client = TestClient::connect(host_url).await;
    host_client.set_username(host).await;
    let code = host_client.create_room().await;
    let mut guest_client = TestClient::connect(guest_url).await;
    guest_client.set_username(guest).await;
    let joined = guest_client.join(&code).await;
    assert_eq!(joined["peer"], host);
    let announced = host_client.expect("peer_joined").await;
    assert_eq!(announced["username"], guest);
    (host_client, guest_client, code)
}

/// A TCP proxy in front of a server whose connections can be cut the way a dead network cuts
/// them: no FIN, no reset, nothing at all any more in either direction, while both sockets stay
/// open. The server cannot tell until its heartbeat notices.
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: tokio_util::sync::CancellationToken,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts a proxy to `server` on a free port.
    pub async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let cut = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(Self::serve(listener, server, cut.clone()));
        CuttableProxy { addr, cut, task }
    }

    /// The WebSocket URL through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops forwarding on every connection, for good, without closing any socket.
    pub fn cut(&self) {
        self.cut.cancel();
    }

    async fn serve(
        listener: TcpListener,
        server: SocketAddr,
        cut: tokio_util::sync::CancellationToken,
    ) {
        // Each connection's task; dropping the set (with this future, when the proxy goes)
        // aborts them and closes their sockets.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = cut.cancelled() => {
                    // Keep every connection open and silent until the proxy goes.
                    std::future::pending::<()>().await;
                    return;
                }
            };
            let Ok((client, _)) = accepted else { return };
            let Ok(upstream) = TcpStream::connect(server).await else {
                return;
            };
            let cut = cut.clone();
            connections.spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = upstream.into_split();
                tokio::select! {
                    _ = tokio::io::copy(&mut client_read, &mut server_write) => return,
                    _ = tokio::io::copy(&mut server_read, &mut client_write) => return,
                    () = cut.cancelled() => {}
                }
                // Cut: hold the sockets open and silent.
                let _held = (client_read, client_write, server_read, server_write);
                std::future::pending::<()>().await;
            });
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (current, peak) resident memory of process `pid`, in KiB, from /proc.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
