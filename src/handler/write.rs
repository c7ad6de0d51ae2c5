//! The write task: sends what the actor queued for the connection, a batch per socket write,
//! pings every heartbeat interval, and ends with the connection's last frame.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::{CLOSE_TIMEOUT, Farewell, INTERNAL_ERROR, WriterEnd, WriterExit, close_frame};
use crate::outbox::{self, Outbound};

/// Writes queued messages and heartbeat pings until asked to say farewell or until the actor
/// closes the queue, then hands the sending half back.
pub(super) async fn write_loop<S>(
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
pub(super) async fn feed_all<S>(
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

/// Sends the connection's last frame: our own close frame, or the reply to the client's.
pub(super) async fn say_farewell<S>(
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
pub(super) fn stalled() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "socket write stalled",
    ))
}
