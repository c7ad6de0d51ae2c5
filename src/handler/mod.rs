//! One WebSocket connection: a read task and a write task around one client of the actor.
//!
//! ```text
//!   socket ──► read loop ──ServerCommand──► ChatServer actor
//!   socket ◄── write task ◄──encoded JSON── outbound queue (bounded, filled with try_send)
//! ```
//!
//! The two halves only move bytes; every decision (what a request means, who hears about it) is
//! the actor's. The read loop runs in the connection's own task and the write loop in a task it
//! spawns, so a client that stops reading never keeps us from reading it, and the other way round.
//!
//! - this file: [`serve`], which runs a connection from its handshake to its end, and the read
//!   loop;
//! - `write.rs`: the write task, which batches what the actor queued and pings;
//! - `close.rs`: how a connection ends: the farewell, and the lingering close that makes sure a
//!   close frame reaches the client.

mod close;
mod write;

use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Config;
use crate::error::{ErrorCode, Refusal};
use crate::message::ClientMessage;
use crate::outbox;
use crate::outbox::Close;
use crate::server::{ChatServerHandle, ServerCommand};
use crate::types::ClientId;

/// The largest message a client may send. Chat content is at most 4096 characters, which is at
/// most 16 KiB of UTF-8 before JSON escaping; 64 KiB leaves room for that and nothing silly.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How long the write task may take to hand a close frame to a client that is going away. A
/// client that does not read must not hold up shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a socket on which we sent our close frame is read on (and what arrives discarded)
/// before it is dropped, waiting for the client to close its side; see `linger` in `close.rs`.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// The most bytes read and discarded while lingering: a client still sending after this much
/// is not going to stop, and gets a reset.
pub const LINGER_BYTES: usize = 1024 * 1024;

/// How a connection ends when the actor is gone: "internal error".
const INTERNAL_ERROR: Close = Close {
    code: 1011,
    reason: "internal error",
};

/// The tungstenite settings of every connection, chosen for many mostly idle connections.
///
/// tungstenite allocates `read_buffer_size` bytes eagerly for each connection and defaults to
/// 128 KiB, which would be 1.2 GiB for 10,000 idle people. Chat frames are small, so 1 KiB
/// holds a typical one; the buffer grows on demand for the rare large message, up to the
/// 64 KiB message cap. The write side buffers up to 4 KiB before it writes to the socket, and we
/// flush after each batch anyway, so that number only bounds how much one `write` carries.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(MAX_MESSAGE_BYTES * 4)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Why a connection is ending, as far as the read side can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client sent a close frame; tungstenite has queued the reply, which the write task
    /// sends.
    ClientClosed,
    /// The socket ended or failed without a close handshake.
    Dropped,
    /// Nothing at all arrived for two heartbeat intervals.
    Silent,
    /// A message over [`MAX_MESSAGE_BYTES`].
    TooBig,
    /// A frame that breaks the WebSocket protocol (bad UTF-8 in a text frame, bad framing).
    ProtocolViolation(CloseCode),
    /// The server is shutting down. A node of several (`--redis`) is restarting, as far as its
    /// clients are concerned: they are to resume on another node at once (1012), their seats
    /// held for them.
    Shutdown { restart: bool },
    /// The write task ended first: the actor closed the client's queue (too slow, flooding,
    /// unnamed for too long, or its session resumed elsewhere), the actor is gone, or writing
    /// failed.
    WriterEnded,
    /// The actor is gone; only in a shutdown or after a bug.
    ActorStopped,
}

/// How the write task is to end a connection.
#[derive(Debug)]
enum Farewell {
    /// Send this close frame: the server is the one closing.
    Close(CloseFrame),
    /// Send the reply to the client's own close frame, which tungstenite queued as it read it,
    /// completing the close handshake the client began.
    Reply,
}

impl Ending {
    /// How to say goodbye, if the client can still be told anything.
    fn farewell(self) -> Option<Farewell> {
        let (code, reason) = match self {
            Ending::ClientClosed => return Some(Farewell::Reply),
            Ending::Dropped | Ending::WriterEnded => return None,
            Ending::Silent => (CloseCode::Away, "no heartbeat"),
            Ending::TooBig => (CloseCode::Size, "message too big"),
            Ending::ProtocolViolation(code) => (code, "protocol violation"),
            Ending::Shutdown { restart: false } => (CloseCode::Away, "server shutting down"),
            Ending::Shutdown { restart: true } => (CloseCode::Restart, "service restart"),
            Ending::ActorStopped => (CloseCode::Error, "internal error"),
        };
        Some(Farewell::Close(close_frame(code, reason)))
    }

    /// Whether the frames still arriving can be read as frames. After an oversized or broken
    /// frame, tungstenite's reading is out of step with the stream: what follows is not worth
    /// parsing, only discarding (see [`linger`]).
    fn can_read_on(self) -> bool {
        !matches!(
            self,
            Ending::TooBig | Ending::ProtocolViolation(_) | Ending::Dropped
        )
    }
}

impl From<WsError> for Ending {
    fn from(err: WsError) -> Self {
        match err {
            WsError::Capacity(_) => Ending::TooBig,
            WsError::Utf8(_) => Ending::ProtocolViolation(CloseCode::Invalid),
            WsError::Protocol(_) => Ending::ProtocolViolation(CloseCode::Protocol),
            _ => Ending::Dropped,
        }
    }
}

/// How the write task ended.
#[derive(Debug)]
enum WriterEnd {
    /// It sent our close frame: the server closed the connection, and now closes the socket
    /// gracefully ([`linger`]).
    Closed,
    /// It answered the client's close frame: the close handshake is complete.
    Answered,
    /// Writing failed or stalled, or the last frame could not be sent in time: the socket is
    /// of no further use.
    Failed(WsError),
}

/// The write task's result: how it ended, and the sending half of the socket, handed back so
/// that the socket can be closed gracefully.
struct WriterExit<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    end: WriterEnd,
}

/// Serves one client, connected from `address`, from the completed handshake until the
/// connection ends.
pub async fn serve<S>(
    socket: WebSocketStream<S>,
    address: IpAddr,
    server: ChatServerHandle,
    config: &Config,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client_id = ClientId::new();
    let (outbound_tx, outbound_rx) = outbox::channel(config.outbound_queue);
    // Register before reading anything, so the actor knows the client when its first request
    // arrives. The actor answers with `connected`.
    let connect = ServerCommand::Connect {
        client_id,
        address,
        outbound: outbound_tx,
    };
    if server.send(connect).await.is_err() {
        // The actor is gone: say so rather than leave the client with a silent socket. Boxed,
        // like `finish` below, so that idle connections do not carry room for it.
        Box::pin(close::close_at_once(
            socket,
            CloseCode::Error,
            "internal error",
        ))
        .await;
        return;
    }

    let (sink, mut stream) = socket.split();
    let (farewell_tx, farewell_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write::write_loop(
        sink,
        outbound_rx,
        farewell_rx,
        config.heartbeat_interval,
    ));

    // The read loop borrows the stream rather than owning it: when another branch wins, the
    // stream survives, to be read on while the farewell goes out and then closed gracefully.
    let (ending, finished_writer) = tokio::select! {
        ending = read_loop(&mut stream, client_id, &server, config.heartbeat_interval * 2) => {
            (ending, None)
        }
        () = shutdown.cancelled() => {
            (Ending::Shutdown { restart: config.redis.is_some() }, None)
        }
        exit = &mut writer => (Ending::WriterEnded, Some(exit)),
    };
    debug!(client = %client_id, ?ending, "connection ending");
    // Boxed: these last moments of a connection need the whole socket and several futures of
    // their own, and every idle connection would carry room for them if they were inline.
    let last_moments = close::finish(
        ending,
        finished_writer,
        writer,
        farewell_tx,
        stream,
        &server,
        client_id,
    );
    Box::pin(last_moments).await;
}

/// Reads frames and turns them into commands for the actor, until the connection ends.
async fn read_loop<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    client_id: ClientId,
    server: &ChatServerHandle,
    silence_limit: Duration,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The heartbeat check, done lazily: rather than reset a timer on every frame, remember when
    // we last heard anything, and when the timer fires see whether that is long enough ago.
    let mut last_heard = Instant::now();
    let deadline = tokio::time::sleep(silence_limit);
    tokio::pin!(deadline);

    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = &mut deadline => {
                if last_heard.elapsed() >= silence_limit {
                    return Ending::Silent;
                }
                deadline.as_mut().reset(last_heard + silence_limit);
                continue;
            }
        };
        last_heard = Instant::now();

        let command = match frame {
            None => return Ending::Dropped,
            Some(Err(err)) => return Ending::from(err),
            Some(Ok(Message::Text(text))) => match ClientMessage::decode(&text) {
                Ok(request) => ServerCommand::Request { client_id, request },
                Err(refusal) => ServerCommand::Reject { client_id, refusal },
            },
            Some(Ok(Message::Binary(_))) => {
                let refusal = Refusal::new(
                    ErrorCode::InvalidMessage,
                    "Binary frames are not supported: send JSON in text frames.",
                );
                ServerCommand::Reject { client_id, refusal }
            }
            Some(Ok(Message::Close(_))) => return Ending::ClientClosed,
            // Pings are answered by tungstenite itself; pongs only prove the client is alive,
            // which `last_heard` has already noted.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
        };
        // Waits while the actor's queue is full: a client that floods is slowed down here.
        if server.send(command).await.is_err() {
            return Ending::ActorStopped;
        }
    }
}

/// A close frame with a fixed reason.
fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
