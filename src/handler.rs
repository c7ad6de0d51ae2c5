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

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::Outbound;
use crate::config::Config;
use crate::error::{ErrorCode, Refusal};
use crate::message::ClientMessage;
use crate::outbox;
use crate::server::{ChatServerHandle, ServerCommand};
use crate::types::ClientId;

/// The largest message a client may send. Chat content is at most 4096 characters, which is at
/// most 16 KiB of UTF-8 before JSON escaping; 64 KiB leaves room for that and nothing silly.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How long the write task may take to hand a close frame to a client that is going away. A
/// client that does not read must not hold up shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The server is shutting down.
    Shutdown,
    /// The write task ended first: the actor dropped the client (too slow, flooding, or unnamed
    /// for too long), or writing failed.
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
            Ending::Shutdown => (CloseCode::Away, "server shutting down"),
            Ending::ActorStopped => (CloseCode::Error, "internal error"),
        };
        Some(Farewell::Close(close_frame(code, reason)))
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
        return;
    }

    let (sink, stream) = socket.split();
    let (close_tx, close_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbound_rx,
        close_rx,
        config.heartbeat_interval,
    ));

    let ending = tokio::select! {
        ending = read_loop(stream, client_id, &server, config.heartbeat_interval * 2) => ending,
        () = shutdown.cancelled() => Ending::Shutdown,
        _ = &mut writer => Ending::WriterEnded,
    };
    debug!(client = %client_id, ?ending, "connection ending");

    // Ask the writer for its farewell *before* telling the actor: the actor then drops our
    // outbound queue, and the writer must not mistake that for being dropped by the actor.
    match ending.farewell() {
        Some(farewell) => {
            let _ = close_tx.send(farewell);
        }
        None => writer.abort(),
    }
    // Whatever happened to the socket, the peer hears about it now.
    let _ = server.send(ServerCommand::Disconnect { client_id }).await;
    // Wait for the writer to send its close frame, unless it has already finished: the
    // `select!` above polled its `JoinHandle` to completion in that case, and polling a
    // finished `JoinHandle` again panics.
    if ending != Ending::WriterEnded && timeout(CLOSE_TIMEOUT, &mut writer).await.is_err() {
        // The client is not reading; dropping the task drops the socket.
        writer.abort();
    }
}

/// Reads frames and turns them into commands for the actor, until the connection ends.
async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
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

/// Writes queued messages and heartbeat pings until asked to close or until the actor drops the
/// queue.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut outbound: outbox::Receiver,
    mut close: oneshot::Receiver<Farewell>,
    heartbeat_interval: Duration,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + heartbeat_interval, heartbeat_interval);
    // A writer that stalls for longer than a heartbeat interval is talking to a dead peer.
    let stall_limit = heartbeat_interval;

    loop {
        let written = tokio::select! {
            // A close request wins over anything still queued: the connection is over.
            biased;
            farewell = &mut close => {
                if let Ok(farewell) = farewell {
                    say_farewell(&mut sink, farewell).await;
                }
                return Ok(());
            }
            item = outbound.recv() => {
                match item {
                    // Only the actor holds the sender, and it only lets go of a live client that
                    // broke a rule of the server: it fell too far behind (see
                    // `ChatServer::send`), kept sending far over the rate limit, or set no
                    // username in time. All three are policy violations, close code 1008; in the
                    // last two the actor queued an `error` saying why, which `recv` has already
                    // handed us, because a closed channel still yields what was queued first.
                    None => Ok(Some(close_frame(CloseCode::Policy, "policy violation"))),
                    Some(Outbound::Close(code, reason)) => Ok(Some(close_frame(code.into(), reason))),
                    Some(Outbound::Message(text)) => {
                        let batch = async {
                            // Everything queued goes out with one flush: one write to the socket
                            // for many messages. Yielding once first lets the tasks that are
                            // already runnable (the actor working through its batch, the other
                            // read loops) queue theirs too: in a busy room the echo of one's own
                            // message and the peer's next one then share a write, about a third
                            // fewer writes (BENCHMARKS.md).
                            sink.feed(Message::Text(text)).await?;
                            tokio::task::yield_now().await;
                            while let Ok(item) = outbound.try_recv() {
                                match item {
                                    Outbound::Message(text) => sink.feed(Message::Text(text)).await?,
                                    Outbound::Close(code, reason) => {
                                        sink.flush().await?;
                                        return Ok(Some(close_frame(code.into(), reason)));
                                    }
                                }
                            }
                            sink.flush().await?;
                            Ok::<_, WsError>(None)
                        };
                        timeout(stall_limit, batch).await.map_err(|_| stalled())?
                    }
                }
            }
            _ = heartbeat.tick() => {
                timeout(stall_limit, sink.send(Message::Ping(Bytes::new())))
                    .await
                    .map_err(|_| stalled())?
                    .map(|()| None)
            }
        };
        match written {
            Ok(None) => {}
            Ok(Some(frame)) => {
                say_farewell(&mut sink, Farewell::Close(frame)).await;
                return Ok(());
            }
            // The client's Close frame arrived while we were writing: tungstenite queued its
            // reply as it read the frame, and from then on refuses to send anything else. The
            // read loop saw the Close too and is about to ask for that reply to go out.
            Err(WsError::Protocol(ProtocolError::SendAfterClosing)) => {
                if let Ok(Ok(farewell)) = timeout(CLOSE_TIMEOUT, &mut close).await {
                    say_farewell(&mut sink, farewell).await;
                }
                return Ok(());
            }
            Err(err) => return Err(err),
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

/// Sends the connection's last frame: our own close frame, or the reply to the client's.
async fn say_farewell<S>(sink: &mut SplitSink<WebSocketStream<S>, Message>, farewell: Farewell)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Either way the frame is all that is left to do, so a failure here changes nothing.
    let _ = match farewell {
        Farewell::Close(frame) => {
            timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await
        }
        // Closing the sink flushes the reply tungstenite queued.
        Farewell::Reply => timeout(CLOSE_TIMEOUT, sink.close()).await,
    };
}

/// The error a write task ends with when the socket would not take data for too long.
fn stalled() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "socket write stalled",
    ))
}
