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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Config;
use crate::error::{ErrorCode, Refusal};
use crate::message::ClientMessage;
use crate::outbox;
use crate::outbox::{Close, Outbound};
use crate::server::{ChatServerHandle, ServerCommand};
use crate::types::ClientId;

/// The largest message a client may send. Chat content is at most 4096 characters, which is at
/// most 16 KiB of UTF-8 before JSON escaping; 64 KiB leaves room for that and nothing silly.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How long the write task may take to hand a close frame to a client that is going away. A
/// client that does not read must not hold up shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a socket on which we sent our close frame is read on (and what arrives discarded)
/// before it is dropped, waiting for the client to close its side; see [`linger`].
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
    /// The server is shutting down.
    Shutdown,
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
            Ending::Shutdown => (CloseCode::Away, "server shutting down"),
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
        Box::pin(close_at_once(socket, CloseCode::Error, "internal error")).await;
        return;
    }

    let (sink, mut stream) = socket.split();
    let (farewell_tx, farewell_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(
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
        () = shutdown.cancelled() => (Ending::Shutdown, None),
        exit = &mut writer => (Ending::WriterEnded, Some(exit)),
    };
    debug!(client = %client_id, ?ending, "connection ending");
    // Boxed: these last moments of a connection need the whole socket and several futures of
    // their own, and every idle connection would carry room for them if they were inline.
    let last_moments = finish(
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

/// Closes a socket we have not split, with our close frame, for the rare connection that
/// cannot even be registered.
async fn close_at_once<S>(mut socket: WebSocketStream<S>, code: CloseCode, reason: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = close_frame(code, reason);
    if let Ok(Ok(())) = timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await {
        linger(socket, true).await;
    }
}

/// Ends a connection: asks the write task for its farewell, tells the actor, waits for the
/// farewell and then, if it was our close frame, closes the socket gracefully ([`linger`]).
async fn finish<S>(
    ending: Ending,
    finished_writer: Option<Result<WriterExit<S>, JoinError>>,
    mut writer: JoinHandle<WriterExit<S>>,
    farewell_tx: oneshot::Sender<Farewell>,
    mut stream: SplitStream<WebSocketStream<S>>,
    server: &ChatServerHandle,
    client_id: ClientId,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Ask the writer for its farewell *before* telling the actor: the actor then drops our
    // outbound queue, and the writer must not mistake that for being dropped by the actor.
    if finished_writer.is_none() {
        match ending.farewell() {
            Some(farewell) => {
                let _ = farewell_tx.send(farewell);
            }
            None => writer.abort(),
        }
    }
    // Whatever happened to the socket, the peer hears about it now.
    let _ = server.send(ServerCommand::Disconnect { client_id }).await;

    let mut frames_readable = ending.can_read_on();
    let exit = match finished_writer {
        // The `select!` in `serve` polled the writer's `JoinHandle` to completion; polling a
        // finished `JoinHandle` again would panic.
        Some(exit) => exit.ok(),
        None => wait_for_farewell(&mut writer, &mut stream, &mut frames_readable).await,
    };
    match exit {
        Some(WriterExit {
            sink,
            end: WriterEnd::Closed,
        }) => {
            // Both halves come from the same `split`, so they always fit back together.
            if let Ok(socket) = sink.reunite(stream) {
                linger(socket, frames_readable).await;
            }
        }
        Some(WriterExit {
            end: WriterEnd::Failed(err),
            ..
        }) => debug!(client = %client_id, cause = %err, "write failed"),
        Some(WriterExit {
            end: WriterEnd::Answered,
            ..
        }) => {}
        // Aborted, because the socket is dead or the client would not take our last frame.
        None => {}
    }
}

/// Waits for the write task to send its farewell, reading on meanwhile, and returns how it
/// ended; `None` if it took longer than [`CLOSE_TIMEOUT`] and was aborted.
///
/// Reading on matters: a client that is blocked writing to us (a flooder, or a big message
/// cut off half way) may read nothing until its write completes, so it would never see our
/// close frame if we stopped reading first. What arrives now is discarded. `frames_readable`
/// says whether frames can still be read, and turns false when reading fails.
async fn wait_for_farewell<S>(
    writer: &mut JoinHandle<WriterExit<S>>,
    stream: &mut SplitStream<WebSocketStream<S>>,
    frames_readable: &mut bool,
) -> Option<WriterExit<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::sleep(CLOSE_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            exit = &mut *writer => return exit.ok(),
            () = &mut deadline => {
                // The client is not reading; dropping the task drops its half of the socket.
                writer.abort();
                return None;
            }
            frame = stream.next(), if *frames_readable => {
                *frames_readable = matches!(frame, Some(Ok(_)));
            }
        }
    }
}

/// Closes a socket on which we have sent our close frame, so that the frame reaches the
/// client (the "lingering close" of HTTP servers).
///
/// Closing a TCP socket that still holds unread input makes the kernel answer with a reset,
/// and a reset makes the client's kernel throw away what it had received but not yet read:
/// our close frame with its code. So we first shut down our sending side (a FIN after the
/// close frame, which also tells the client we are done), then read and discard whatever the
/// client still sends, for at most [`LINGER_TIME`] and [`LINGER_BYTES`], until its close
/// frame arrives (nothing may follow it) or it closes its side; only then is the socket
/// dropped. When frames cannot be told apart any more (after an oversized or broken one), the
/// bytes are discarded unread until the end of the stream.
async fn linger<S>(mut socket: WebSocketStream<S>, frames_readable: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let drain = async {
        socket.get_mut().shutdown().await?;
        let mut discarded = 0;
        if frames_readable {
            while discarded < LINGER_BYTES {
                match socket.next().await {
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(message)) => discarded += message.len(),
                    // Out of step with the stream: discard what is left unread, below.
                    Some(Err(_)) => break,
                }
            }
        }
        // On the heap, and only now: a buffer in the future itself would cost every idle
        // connection its size.
        let mut buffer = vec![0; 4096];
        let socket = socket.get_mut();
        while discarded < LINGER_BYTES {
            match socket.read(&mut buffer).await? {
                0 => break, // The client closed its side: a clean end.
                read => discarded += read,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = timeout(LINGER_TIME, drain).await;
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

/// Writes queued messages and heartbeat pings until asked to say farewell or until the actor
/// closes the queue, then hands the sending half back.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut outbound: outbox::Receiver,
    mut farewell: oneshot::Receiver<Farewell>,
    heartbeat_interval: Duration,
) -> WriterExit<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + heartbeat_interval, heartbeat_interval);
    // A writer that stalls for longer than a heartbeat interval is talking to a dead peer.
    let stall_limit = heartbeat_interval;

    // `break 'writing` rather than `return`, so that the sink can be handed back at the end.
    let end = 'writing: loop {
        let sink = &mut sink;
        let written = tokio::select! {
            // A farewell wins over anything still queued: the connection is over.
            biased;
            farewell = &mut farewell => {
                break 'writing match farewell {
                    Ok(farewell) => say_farewell(sink, farewell).await,
                    // The handler is gone without a word: it was aborted, so nobody is
                    // waiting for us either.
                    Err(_) => WriterEnd::Failed(WsError::ConnectionClosed),
                };
            }
            item = outbound.recv() => {
                match item {
                    Some(Outbound::Close(close)) => Ok(Some(close)),
                    // The actor let go of the queue without closing it: the actor itself is
                    // gone (it panicked), so every connection ends with "internal error".
                    None => Ok(Some(INTERNAL_ERROR)),
                    Some(first) => {
                        let batch = async {
                            // Everything queued goes out with one flush: one write to the socket
                            // for many messages. Yielding once, after the first, lets the tasks
                            // that are already runnable (the actor working through its batch, the
                            // other read loops) queue theirs too: in a busy room the echo of one's
                            // own message and the peer's next one then share a write, about a
                            // third fewer writes (BENCHMARKS.md).
                            let mut item = first;
                            let mut yielded = false;
                            let close = loop {
                                match item {
                                    Outbound::Message(text) => sink.feed(Message::Text(text)).await?,
                                    // Rare (a join or a resume with a long history): boxed, so
                                    // that every idle connection does not carry room for it.
                                    Outbound::Batch(frames) => Box::pin(feed_all(sink, frames)).await?,
                                    Outbound::Close(close) => break Some(close),
                                }
                                if !yielded {
                                    tokio::task::yield_now().await;
                                    yielded = true;
                                }
                                match outbound.try_recv() {
                                    Ok(next) => item = next,
                                    Err(_) => break None,
                                }
                            };
                            sink.flush().await?;
                            Ok::<_, WsError>(close)
                        };
                        timeout(stall_limit, batch).await.unwrap_or_else(|_| Err(stalled()))
                    }
                }
            }
            _ = heartbeat.tick() => {
                match timeout(stall_limit, sink.send(Message::Ping(Bytes::new()))).await {
                    Ok(sent) => sent.map(|()| None),
                    Err(_) => Err(stalled()),
                }
            }
        };
        match written {
            Ok(None) => {}
            Ok(Some(close)) => {
                let frame = close_frame(close.code.into(), close.reason);
                break say_farewell(sink, Farewell::Close(frame)).await;
            }
            // The client's Close frame arrived while we were writing: tungstenite queued its
            // reply as it read the frame, and from then on refuses to send anything else. The
            // read loop saw the Close too and is about to ask for that reply to go out.
            Err(WsError::Protocol(ProtocolError::SendAfterClosing)) => {
                break match timeout(CLOSE_TIMEOUT, &mut farewell).await {
                    Ok(Ok(farewell)) => say_farewell(sink, farewell).await,
                    _ => WriterEnd::Failed(WsError::Protocol(ProtocolError::SendAfterClosing)),
                };
            }
            Err(err) => break WriterEnd::Failed(err),
        }
    };
    WriterExit { sink, end }
}

/// Hands several messages to the sink, in order, without flushing.
async fn feed_all<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    frames: Vec<Utf8Bytes>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for text in frames {
        sink.feed(Message::Text(text)).await?;
    }
    Ok(())
}

/// A close frame with a fixed reason.
fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Sends the connection's last frame: our own close frame, or the reply to the client's.
async fn say_farewell<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    farewell: Farewell,
) -> WriterEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sent, end) = match farewell {
        Farewell::Close(frame) => (
            timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await,
            WriterEnd::Closed,
        ),
        // Closing the sink flushes the reply tungstenite queued.
        Farewell::Reply => (
            timeout(CLOSE_TIMEOUT, sink.close()).await,
            WriterEnd::Answered,
        ),
    };
    match sent {
        Ok(Ok(())) => end,
        Ok(Err(err)) => WriterEnd::Failed(err),
        Err(_) => WriterEnd::Failed(stalled()),
    }
}

/// The error a write task ends with when the socket would not take data for too long.
fn stalled() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "socket write stalled",
    ))
}
