//! Protocol v1 as a client sees it: the messages chat-bench sends and the ones it reads.
//!
//! These types are written here rather than imported from the `chat_server` library on
//! purpose: the benchmark must work against any server that speaks the protocol (the Node
//! peer included), so it depends on the wire format only, never on the server's code.

use serde::{Deserialize, Serialize};

/// A message from client to server: one JSON object per text frame, tagged by `"type"`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage<'a> {
    /// `{"type":"set_username","username":"h0-12"}`
    SetUsername { username: &'a str },
    /// `{"type":"create_room"}`
    CreateRoom,
    /// `{"type":"join_room","room_code":"ABC234"}`
    JoinRoom { room_code: &'a str },
    /// `{"type":"chat","content":"17:123456789....","client_msg_id":"17"}` (the id only with
    /// `--client-msg-ids`).
    Chat {
        content: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<&'a str>,
    },
    /// `{"type":"leave_room"}`
    LeaveRoom,
}

impl ClientMessage<'_> {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        // Serialising these plain enums of strings cannot fail: there are no maps with
        // non-string keys and no custom `Serialize` impls.
        serde_json::to_string(self).expect("client messages always serialise")
    }
}

/// A message from server to client.
///
/// Only the fields chat-bench looks at are declared; serde ignores the others (`client_id`,
/// `id`, `timestamp`, `history`, …), so each variant's doc shows the full JSON.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// `{"type":"connected","client_id":"…uuid…"}`, first after the handshake.
    Connected {},
    /// `{"type":"username_set","username":"h0-12"}`, reply to `set_username`.
    UsernameSet {},
    /// `{"type":"room_created","room_code":"ABC234"}`, reply to `create_room`.
    RoomCreated { room_code: String },
    /// `{"type":"room_joined","room_code":"ABC234","peer":"h0-12","history":[…]}`.
    RoomJoined {},
    /// `{"type":"peer_joined","username":"g0-12"}`, to the member already in the room.
    PeerJoined {},
    /// `{"type":"chat","id":1,"from":"h0-12","content":"…","timestamp":1700000000000}`,
    /// to both members, the sender included.
    Chat { from: String, content: String },
    /// `{"type":"typing","username":"…"}` (chat-bench never types, so never expected).
    Typing {},
    /// `{"type":"stop_typing","username":"…"}`.
    StopTyping {},
    /// `{"type":"peer_left","username":"…","reason":"left"}` (or `"disconnected"`).
    PeerLeft { reason: String },
    /// `{"type":"peer_disconnected","username":"…"}`: the peer's connection dropped and the
    /// server keeps its seat for a while (servers with session resume; protocol v1 servers send
    /// `peer_left` at once instead).
    PeerDisconnected {},
    /// `{"type":"peer_reconnected","username":"…"}`: the peer resumed its session.
    PeerReconnected {},
    /// `{"type":"read","username":"…","up_to":7}`: a read receipt (chat-bench sends none).
    Read {},
    /// `{"type":"room_left","room_code":"ABC234"}`, reply to `leave_room`.
    RoomLeft {},
    /// `{"type":"error","code":"ROOM_FULL","message":"…"}`, a refused request.
    Error { code: String, message: String },
}

impl ServerMessage {
    /// The `type` of this message, for error reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Connected { .. } => "connected",
            ServerMessage::UsernameSet { .. } => "username_set",
            ServerMessage::RoomCreated { .. } => "room_created",
            ServerMessage::RoomJoined { .. } => "room_joined",
            ServerMessage::PeerJoined { .. } => "peer_joined",
            ServerMessage::Chat { .. } => "chat",
            ServerMessage::Typing { .. } => "typing",
            ServerMessage::StopTyping { .. } => "stop_typing",
            ServerMessage::PeerLeft { .. } => "peer_left",
            ServerMessage::PeerDisconnected { .. } => "peer_disconnected",
            ServerMessage::PeerReconnected { .. } => "peer_reconnected",
            ServerMessage::Read { .. } => "read",
            ServerMessage::RoomLeft { .. } => "room_left",
            ServerMessage::Error { .. } => "error",
        }
    }
}

/// The content of the last chat message each member sends when the run stops: once a member
/// has seen its own marker echoed and its peer's arrive, neither will send anything more.
pub const END_OF_RUN: &str = "end of run";

/// What chat-bench writes into a chat message's `content` so that the receiving peer can tell
/// which message it is and when it was sent: `"<seq>:<sent_ns>"`, padded with dots.
///
/// `sent_ns` counts nanoseconds since the [`Clock`](crate::measure::Clock) epoch of the
/// worker process. Both members of a room always live in the same process, so the receiver
/// reads the same clock the sender wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sender's sequence number, counting from 0; the receiver checks that none is lost
    /// or reordered.
    pub seq: u64,
    /// When the message was sent (or, at a fixed rate, when it was due to be sent).
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes this stamp as chat content of at least `size` bytes into `out` (cleared first).
    pub fn write(&self, size: usize, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        // Writing into a String cannot fail.
        let _ = write!(out, "{}:{}", self.seq, self.sent_ns);
        while out.len() < size {
            out.push('.');
        }
    }

    /// Reads a stamp back from chat content; `None` if the content was not written by
    /// [`Stamp::write`].
    pub fn parse(content: &str) -> Option<Stamp> {
        let (seq, rest) = content.split_once(':')?;
        let sent = rest.trim_end_matches('.');
        Some(Stamp {
            seq: seq.parse().ok()?,
            sent_ns: sent.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client messages serialise to the exact JSON of protocol v1.
    #[test]
    fn client_messages_match_the_wire_format() {
        assert_eq!(
            ClientMessage::SetUsername { username: "ann" }.to_json(),
            r#"{"type":"set_username","username":"ann"}"#
        );
        assert_eq!(
            ClientMessage::CreateRoom.to_json(),
            r#"{"type":"create_room"}"#
        );
        assert_eq!(
            ClientMessage::JoinRoom {
                room_code: "ABC234"
            }
            .to_json(),
            r#"{"type":"join_room","room_code":"ABC234"}"#
        );
        assert_eq!(
            ClientMessage::LeaveRoom.to_json(),
            r#"{"type":"leave_room"}"#
        );
    }

    /// A server chat with extra fields (`id`, `timestamp`) parses, and the extras are ignored.
    #[test]
    fn server_chat_parses_with_extra_fields() {
        let msg: ServerMessage = serde_json::from_str(
            r#"{"type":"chat","id":3,"from":"bob","content":"hi","timestamp":1700000000000}"#,
        )
        .expect("valid chat");
        assert!(
            matches!(msg, ServerMessage::Chat { ref from, ref content } if from == "bob" && content == "hi")
        );
    }

    /// A stamp survives the round trip through chat content, padding included.
    #[test]
    fn stamp_round_trip_with_padding() {
        let stamp = Stamp {
            seq: 42,
            sent_ns: 1_234_567,
        };
        let mut content = String::new();
        stamp.write(64, &mut content);
        assert_eq!(content.len(), 64);
        assert_eq!(Stamp::parse(&content), Some(stamp));
    }

    /// Content too short for padding is just the stamp, never truncated.
    #[test]
    fn stamp_longer_than_size_is_kept_whole() {
        let stamp = Stamp {
            seq: 7,
            sent_ns: 99,
        };
        let mut content = String::new();
        stamp.write(1, &mut content);
        assert_eq!(content, "7:99");
    }

    /// Content that chat-bench did not write is not mistaken for a stamp.
    #[test]
    fn foreign_content_is_not_a_stamp() {
        assert_eq!(Stamp::parse("hello"), None);
        assert_eq!(Stamp::parse("1:x"), None);
    }
}
