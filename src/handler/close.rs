//! How a connection ends: the write task's farewell, and then, when the server is the one
//! closing, the lingering close that makes sure the close frame reaches the client.

use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::debug;

use super::{
    CLOSE_TIMEOUT, Ending, Farewell, LINGER_BYTES, LINGER_TIME, WriterEnd, WriterExit, close_frame,
};
use crate::server::{ChatServerHandle, ServerCommand};
use crate::types::ClientId;

/// Closes a socket we have not split, with our close frame, for the rare connection that
/// cannot even be registered.
pub(super) async fn close_at_once<S>(
    mut socket: WebSocketStream<S>,
    code: CloseCode,
    reason: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = close_frame(code, reason);
    if let Ok(Ok(())) = timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await {
        linger(socket, true).await;
    }
}

/// Ends a connection: asks the write task for its farewell, tells the actor, waits for the
/// farewell and then, if it was our close frame, closes the socket gracefully ([`linger`]).
pub(super) async fn finish<S>(
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
pub(super) async fn wait_for_farewell<S>(
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
pub(super) async fn linger<S>(mut socket: WebSocketStream<S>, frames_readable: bool)
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
