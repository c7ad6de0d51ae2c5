//! Errors, split by who caused them.
//!
//! - [`ErrorCode`] and [`Refusal`]: a client asked for something the rules do not allow. This is
//!   *expected*: the client gets an `error` message and the connection carries on.
//! - [`SendError`]: the actor could not hand a message to a client's queue. Expected too: the
//!   client is gone or too slow, and the actor disconnects it.
//! - [`AppError`]: the server itself could not do its job (its TLS settings, or its actor
//!   stopped). Logged, never sent to a client.

use std::borrow::Cow;
use std::fmt;

use serde::{Serialize, Serializer};

/// The `code` of an `error` message: what kind of request was refused.
///
/// On the wire in `SCREAMING_SNAKE_CASE` (`ErrorCode::RoomFull` is `"ROOM_FULL"`), the exact
/// names of protocol v1. The variants below are the one list of codes: their wire names
/// ([`ErrorCode::as_str`]) and the list of all of them (`ErrorCode::iter()`, in declaration order)
/// are derived from it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Not a JSON object (malformed JSON, or an array, string, number, boolean or `null`), an
    /// unknown `type`, a missing or mistyped field, or a binary frame. Expected from broken or
    /// hostile clients; the connection carries on.
    InvalidMessage,
    /// `create_room` or `join_room` before `set_username`.
    UsernameRequired,
    /// A name that is empty after trimming, longer than 32 characters, holds a control character
    /// or a text-direction embedding, override or isolate, or has nothing visible in it (only
    /// whitespace and invisible characters such as zero-width spaces). `Username` says why.
    InvalidUsername,
    /// The member already in the room has the name the joiner uses.
    UsernameTaken,
    /// `create_room`, `join_room` or `set_username` while in a room.
    AlreadyInRoom,
    /// `chat`, `typing`, `stop_typing` or `leave_room` outside a room.
    NotInRoom,
    /// A room code that is not 6 characters of the code alphabet.
    InvalidRoomCode,
    /// A well-formed room code with no live room behind it.
    RoomNotFound,
    /// The room already has two members.
    RoomFull,
    /// Chat content that is empty or only whitespace.
    EmptyMessage,
    /// Chat content over 4096 characters; in an end-to-end encrypted room, an envelope over
    /// the size that 4096 characters of plaintext can make (see [`crate::envelope`]).
    MessageTooLong,
    /// A `chat` without `"encrypted": true` in an end-to-end encrypted room. Expected from a page
    /// that lost its key (or never had it): refused, so that it cannot leak plaintext into a
    /// room whose members expect none.
    EncryptionRequired,
    /// Too many messages too fast (`--rate-limit`), or too many failed `join_room` attempts
    /// (`--max-failed-joins`). Expected from scripts and guessers, never from a person typing.
    RateLimited,
    /// A `resume` with a session token that is unknown, or whose grace period has ended. The
    /// connection carries on as a new client.
    SessionExpired,
    /// With `--redis`: the node cannot reach Redis right now, or Redis did not answer in time.
    /// The request may or may not have taken effect: a `chat` is safe to send again with the
    /// same `client_msg_id`, which is never stored twice.
    Unavailable,
    /// A bug on the server's side: should never be sent.
    InternalError,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The sentence a person reads when this code needs no more detail.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "That message is not one this server understands.",
            ErrorCode::UsernameRequired => "Choose a username first.",
            ErrorCode::InvalidUsername => {
                "A username is 1 to 32 characters, at least one of them visible, without control \
                 or text-direction characters."
            }
            ErrorCode::UsernameTaken => "The other person in that room already uses this name.",
            ErrorCode::AlreadyInRoom => "Leave the room you are in first.",
            ErrorCode::NotInRoom => "You are not in a room.",
            ErrorCode::InvalidRoomCode => {
                "A room code is 6 letters and digits (no 0, O, 1, I or L)."
            }
            ErrorCode::RoomNotFound => "There is no room with that code.",
            ErrorCode::RoomFull => "That room already has two people in it.",
            ErrorCode::EmptyMessage => "A message cannot be empty.",
            ErrorCode::MessageTooLong => "A message can be at most 4096 characters long.",
            ErrorCode::EncryptionRequired => {
                "This room is end-to-end encrypted: only encrypted messages can be sent in it."
            }
            ErrorCode::RateLimited => "Too many messages: slow down.",
            ErrorCode::SessionExpired => "That session has ended: start again with a username.",
            ErrorCode::Unavailable => {
                "The server cannot reach its storage right now: try again in a moment."
            }
            ErrorCode::InternalError => "Something went wrong on the server.",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: becomes an `error` message to the one client that made it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// What kind of refusal, for programs.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: Cow<'static, str>,
}

impl Refusal {
    /// A refusal with a message more specific than the code's default one.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal::new(code, code.default_message())
    }
}

/// Why the actor could not queue a message for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The client's outbound queue is full: it reads slower than its peer writes. Expected under
    /// load or abuse; the actor disconnects the client rather than wait for it.
    #[error("the client's outbound queue is full")]
    QueueFull,
    /// The client's connection task has ended and dropped its receiver. Expected: it is about to
    /// tell the actor, which then forgets the client.
    #[error("the client's connection is gone")]
    Disconnected,
}

/// A failure of the server itself. Logged, never sent to a client. (A connection's own
/// transport failures, a reset or a broken frame, are ordinary ends of that connection: the
/// handler logs them at debug level and they go no further.)
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The TLS certificate or key could not be loaded, or do not fit together. Fatal at
    /// startup: the operator asked for TLS, so serving without it would be wrong.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The chat server actor is no longer running. Only happens during shutdown, or after a bug
    /// made the actor panic (then `run` fails; see [`crate::run`]).
    #[error("the chat server actor has stopped")]
    ActorStopped,
}
