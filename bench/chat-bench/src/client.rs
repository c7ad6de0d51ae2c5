//! A protocol v1 client over one WebSocket: connecting (optionally from a chosen source
//! address), the request/reply steps of setting up a room, and reading messages.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::protocol::{ClientMessage, ServerMessage};

/// Why a client could not do what a scenario asked of it.
///
/// None of these is a bug in chat-bench: each is something the server or the machine did,
/// and ends up counted under [`BenchError::kind`] in the report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The TCP connection could not be made (refused, out of files or ports, …).
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// TCP connected but the WebSocket handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[source] tungstenite::Error),
    /// A read or write on an open WebSocket failed.
    #[error("websocket error: {0}")]
    Transport(#[source] tungstenite::Error),
    /// No reply within the step timeout.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The server closed the connection while a reply was awaited.
    #[error("connection closed while waiting for {0}")]
    Closed(&'static str),
    /// The server answered with an `error` message.
    #[error("server refused with {code}: {message}")]
    Refused { code: String, message: String },
    /// The server sent a valid message, but not the one the protocol calls for here.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    /// The server sent something that is not a protocol v1 message.
    #[error("unreadable server message: {0}")]
    Unreadable(String),
    /// A chat message from a sender arrived out of sequence: one was lost or reordered.
    #[error("chat message lost or out of order (expected #{expected}, got #{got})")]
    OutOfOrder { expected: u64, got: u64 },
}

impl BenchError {
    /// A short, stable description used to count failures of the same kind together.
    ///
    /// The two limits of this machine that a large run can hit get a sentence that says what
    /// to do instead of a bare errno.
    pub fn kind(&self) -> String {
        match self {
            BenchError::Connect(err) => format!("connect: {}", describe_io(err)),
            BenchError::Handshake(tungstenite::Error::Io(err)) => {
                format!("handshake: {}", describe_io(err))
            }
            BenchError::Handshake(err) => format!("handshake: {err}"),
            BenchError::Transport(tungstenite::Error::Io(err)) => {
                format!("websocket: {}", describe_io(err))
            }
            BenchError::Transport(err) => format!("websocket: {err}"),
            BenchError::Timeout(what) => format!("timeout waiting for {what}"),
            BenchError::Closed(what) => format!("closed by server while waiting for {what}"),
            BenchError::Refused { code, .. } => format!("server error {code}"),
            BenchError::Unexpected { expected, got } => {
                format!("unexpected {got} (expected {expected})")
            }
            BenchError::Unreadable(_) => "unreadable server message".to_string(),
            BenchError::OutOfOrder { .. } => "chat message lost or out of order".to_string(),
        }
    }
}

/// Describes an I/O error, spelling out the limits that more `--workers` would lift.
fn describe_io(err: &io::Error) -> String {
    // Raw errno values on Linux; std has no `ErrorKind` for either.
    const EMFILE: i32 = 24;
    const EADDRNOTAVAIL: i32 = 99;
    match err.raw_os_error() {
        Some(EMFILE) => "this chat-bench process reached its open-file limit \
            (see `ulimit -n`): spread the sockets over more processes with --workers"
            .to_string(),
        Some(EADDRNOTAVAIL) => "no free local port left for this source address \
            (see /proc/sys/net/ipv4/ip_local_port_range): use more --workers, \
            each of which connects from its own 127.0.0.x"
            .to_string(),
        _ => err.to_string(),
    }
}

/// The server under test: the URL for the handshake and the address to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `ws://` URL, sent in the handshake request.
    pub url: String,
    /// The resolved socket address; always a loopback address.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves a `ws://` URL, refusing anything but a loopback address.
    ///
    /// A load generator pointed at someone else's machine is an attack, so chat-bench only
    /// targets this machine; measuring a remote server takes a deliberate change here.
    pub async fn resolve(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|err| format!("--url {url:?} is not a URL: {err}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err(format!(
                    "--url {url}: wss:// is not supported (chat-bench speaks plain ws:// on loopback)"
                ));
            }
            _ => return Err(format!("--url {url}: the scheme must be ws://")),
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("--url {url}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| format!("--url {url}: cannot resolve {host}: {err}"))?
            .collect();
        let addr = addrs
            .iter()
            .copied()
            .find(|addr| addr.ip().is_loopback())
            .ok_or_else(|| {
                format!(
                    "--url {url}: {host} is not a loopback address; chat-bench only targets \
                     servers on this machine (127.0.0.0/8 or ::1)"
                )
            })?;
        Ok(Target {
            url: url.to_string(),
            addr,
        })
    }
}

/// The WebSocket settings of every client socket.
///
/// tungstenite's default read buffer is 128 KiB, allocated eagerly per connection: 18,000
/// clients would need 2.3 GB for buffers alone. Server messages here are a few hundred bytes,
/// so 4 KiB is plenty. Writes go out at once (write buffer 0) because every send is
/// followed by a flush anyway. The message cap is generous (1 MiB) because a `room_joined`
/// may carry 100 history messages of up to 4096 characters each.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
}

/// Opens client connections to one target, from one source address.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Where to connect.
    target: Target,
    /// The local address to bind before connecting; `None` lets the kernel choose.
    ///
    /// Each source address has its own range of ephemeral ports, so worker processes bind to
    /// distinct 127.0.0.x addresses to hold more than one range's worth of connections.
    source: Option<IpAddr>,
    /// Time allowed for each step.
    step_timeout: Duration,
}

impl Connector {
    /// A connector for `target`, binding to `source` if given.
    pub fn new(target: Target, source: Option<IpAddr>, step_timeout: Duration) -> Connector {
        Connector {
            target,
            source,
            step_timeout,
        }
    }

    /// Connects, performs the WebSocket handshake and waits for the server's `connected`.
    pub async fn connect(&self) -> Result<Client, BenchError> {
        let stream = timeout(self.step_timeout, self.connect_tcp())
            .await
            .map_err(|_| BenchError::Timeout("TCP connect"))??;
        let (ws, _response) = timeout(
            self.step_timeout,
            tokio_tungstenite::client_async_with_config(
                self.target.url.as_str(),
                stream,
                Some(client_config()),
            ),
        )
        .await
        .map_err(|_| BenchError::Timeout("handshake"))?
        .map_err(BenchError::Handshake)?;
        let mut client = Client {
            ws,
            step_timeout: self.step_timeout,
        };
        match client.reply("connected").await? {
            ServerMessage::Connected { .. } => Ok(client),
            other => Err(BenchError::Unexpected {
                expected: "connected",
                got: other.kind(),
            }),
        }
    }

    /// Opens the TCP connection, from the chosen source address if there is one.
    async fn connect_tcp(&self) -> Result<TcpStream, BenchError> {
        let socket = match self.target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(BenchError::Connect)?;
        if let Some(source) = self.source {
            // SO_REUSEADDR lets `bind` pick a port that still has an old connection in
            // TIME_WAIT; `connect` then checks the full address pair is unique.
            socket.set_reuseaddr(true).map_err(BenchError::Connect)?;
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(BenchError::Connect)?;
        }
        let stream = socket
            .connect(self.target.addr)
            .await
            .map_err(BenchError::Connect)?;
        // Chat messages are small and latency is measured: do not let Nagle's algorithm
        // hold one back waiting for the previous one's ACK.
        stream.set_nodelay(true).map_err(BenchError::Connect)?;
        Ok(stream)
    }
}

/// One connected client.
pub struct Client {
    /// The WebSocket, owned by whichever task drives this client.
    ws: WebSocketStream<TcpStream>,
    /// Time allowed for each reply.
    step_timeout: Duration,
}

impl Client {
    /// Sends one message and flushes it.
    pub async fn send(&mut self, message: &ClientMessage<'_>) -> Result<(), BenchError> {
        self.ws
            .send(Message::text(message.to_json()))
            .await
            .map_err(BenchError::Transport)
    }

    /// The next protocol message, or `Ok(None)` once the server has closed the connection.
    ///
    /// Cancel-safe: the message is taken from the stream only when this returns, so this can
    /// be one branch of a `select!`. Pings are answered by tungstenite while reading.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, BenchError> {
        loop {
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(err)) => return Err(BenchError::Transport(err)),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text)
                        .map(Some)
                        .map_err(|err| BenchError::Unreadable(err.to_string()));
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(BenchError::Unreadable("binary frame".to_string()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Waits (at most the step timeout) for the next message, turning `error` replies and a
    /// closed connection into errors. `waiting_for` names the expected reply for reports.
    pub async fn reply(&mut self, waiting_for: &'static str) -> Result<ServerMessage, BenchError> {
        match timeout(self.step_timeout, self.recv()).await {
            Err(_) => Err(BenchError::Timeout(waiting_for)),
            Ok(Err(err)) => Err(err),
            Ok(Ok(None)) => Err(BenchError::Closed(waiting_for)),
            Ok(Ok(Some(ServerMessage::Error { code, message }))) => {
                Err(BenchError::Refused { code, message })
            }
            Ok(Ok(Some(message))) => Ok(message),
        }
    }

    /// `set_username`, then waits for `username_set`.
    pub async fn set_username(&mut self, username: &str) -> Result<(), BenchError> {
        self.send(&ClientMessage::SetUsername { username }).await?;
        match self.reply("username_set").await? {
            ServerMessage::UsernameSet { .. } => Ok(()),
            other => Err(unexpected("username_set", &other)),
        }
    }

    /// `create_room`, then waits for `room_created` and returns the room code.
    pub async fn create_room(&mut self) -> Result<String, BenchError> {
        self.send(&ClientMessage::CreateRoom).await?;
        match self.reply("room_created").await? {
            ServerMessage::RoomCreated { room_code } => Ok(room_code),
            other => Err(unexpected("room_created", &other)),
        }
    }

    /// `join_room`, then waits for `room_joined`.
    pub async fn join_room(&mut self, room_code: &str) -> Result<(), BenchError> {
        self.send(&ClientMessage::JoinRoom { room_code }).await?;
        match self.reply("room_joined").await? {
            ServerMessage::RoomJoined { .. } => Ok(()),
            other => Err(unexpected("room_joined", &other)),
        }
    }

    /// Waits for `peer_joined` (the host, after the guest's `join_room`).
    pub async fn wait_peer_joined(&mut self) -> Result<(), BenchError> {
        match self.reply("peer_joined").await? {
            ServerMessage::PeerJoined { .. } => Ok(()),
            other => Err(unexpected("peer_joined", &other)),
        }
    }

    /// Closes the WebSocket properly: sends a Close frame and reads until the server closes
    /// the TCP connection, so that the server (which closes first) keeps the TIME_WAIT state
    /// and this machine's client ports are free again at once.
    ///
    /// A server that drops the connection without answering the Close frame breaks RFC 6455
    /// (§5.5.1) but has done everything a chat user needs, so that is reported apart from
    /// errors, as [`Closed::WithoutReply`].
    pub async fn close(mut self) -> Result<Closed, BenchError> {
        let closing = async {
            match self.ws.close(None).await {
                // The server may have closed first (it saw our peer leave, or shut down).
                Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
                Err(err) => return Err(BenchError::Transport(err)),
            }
            while let Some(frame) = self.ws.next().await {
                match frame {
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(tungstenite::Error::Protocol(
                        ProtocolError::ResetWithoutClosingHandshake,
                    )) => return Ok(Closed::WithoutReply),
                    Err(err) => return Err(BenchError::Transport(err)),
                }
            }
            Ok(Closed::Cleanly)
        };
        timeout(self.step_timeout, closing)
            .await
            .map_err(|_| BenchError::Timeout("the server to close the connection"))?
    }
}

/// How a connection ended after [`Client::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The server answered the Close frame and then closed the TCP connection.
    Cleanly,
    /// The server closed the TCP connection without answering the Close frame.
    WithoutReply,
}

/// An [`BenchError::Unexpected`] for `got` where `expected` was due.
pub fn unexpected(expected: &'static str, got: &ServerMessage) -> BenchError {
    BenchError::Unexpected {
        expected,
        got: got.kind(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only ws:// URLs on loopback addresses are accepted.
    #[tokio::test]
    async fn target_must_be_loopback_ws() {
        assert!(Target::resolve("ws://127.0.0.1:9/ws").await.is_ok());
        assert!(Target::resolve("ws://[::1]:9/ws").await.is_ok());
        assert!(Target::resolve("ws://10.0.0.1:9/ws").await.is_err());
        assert!(Target::resolve("wss://127.0.0.1:9/ws").await.is_err());
        assert!(Target::resolve("http://127.0.0.1:9/ws").await.is_err());
    }

    /// Running out of files or ports produces a sentence naming the fix, not a bare errno.
    #[test]
    fn limits_are_explained() {
        let emfile = BenchError::Connect(io::Error::from_raw_os_error(24));
        assert!(emfile.kind().contains("--workers"), "{}", emfile.kind());
        let no_port = BenchError::Connect(io::Error::from_raw_os_error(99));
        assert!(no_port.kind().contains("--workers"), "{}", no_port.kind());
    }
}
