//! The wire protocol: what clients send ([`ClientMessage`]) and what the server sends
//! ([`ServerMessage`]). Every message is one JSON object in one text frame, with a `"type"` field
//! naming the variant in snake_case; docs/protocol.md tells the whole story.

use std::collections::VecDeque;

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::{ErrorCode, Refusal};
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// A request from a client. Fields are checked by the actor, not here: serde only makes sure the
/// JSON has the right shape, so a bad value gets the specific error code it deserves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// `{"type":"set_username","username":"ada"}`: choose or change one's name (not in a room).
    SetUsername { username: String },
    /// `{"type":"create_room"}`: open a new room; the sender becomes its host.
    CreateRoom,
    /// `{"type":"join_room","room_code":"ABC234"}`: join a room as its second member.
    JoinRoom { room_code: String },
    /// `{"type":"chat","content":"hello"}`: say something to the room.
    Chat { content: String },
    /// `{"type":"typing"}`: the sender is typing (repeat it to keep the indicator alive).
    Typing,
    /// `{"type":"stop_typing"}`: the sender stopped typing.
    StopTyping,
    /// `{"type":"leave_room"}`: leave the current room.
    LeaveRoom,
    /// `{"type":"resume","session_token":"…","last_id":7}`: as the first message of a new
    /// connection, take over the session that `session_token` names (after a network drop, say)
    /// and get every chat message of its room with an `id` above `last_id`.
    Resume { session_token: String, last_id: u64 },
    /// `{"type":"read","up_to":7}`: the sender has seen the room's messages up to this `id`.
    Read { up_to: u64 },
}

impl ClientMessage {
    /// Decodes one text frame. A frame that is not a well-formed request becomes the
    /// `INVALID_MESSAGE` refusal its sender will receive, with serde's explanation in it.
    pub fn decode(text: &str) -> Result<Self, Refusal> {
        serde_json::from_str(text).map_err(|err| {
            Refusal::new(
                ErrorCode::InvalidMessage,
                format!("Invalid message: {err}."),
            )
        })
    }
}

/// One chat message as the room remembers it and as both members receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Counts up from 1 in each room: the order both members see.
    pub id: u64,
    /// The sender's name.
    pub from: Username,
    /// Exactly what the sender wrote.
    pub content: String,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// A message from the server to one client.
///
/// It borrows what it carries because the actor serialises every message once, right away
/// ([`ServerMessage::encode`]), and hands the same bytes to each recipient.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// `{"type":"connected","client_id":"…uuid…","session_token":"…"}`: the first message on
    /// every connection. The token lets a later connection `resume` this session.
    Connected {
        client_id: ClientId,
        session_token: &'a SessionToken,
    },
    /// `{"type":"resumed","client_id":"…","username":"ada","room_code":"ABC234","peer":"grace",
    /// "peer_connected":true,"missed":[{"type":"chat",…}]}`: reply to a successful `resume`.
    /// `room_code` and `peer` are `null` when there is none; `missed` holds the room's messages
    /// after the `last_id` the client gave, oldest first.
    Resumed {
        client_id: ClientId,
        username: Option<&'a Username>,
        room_code: Option<RoomCode>,
        peer: Option<&'a Username>,
        peer_connected: bool,
        missed: ChatHistory<'a>,
    },
    /// `{"type":"username_set","username":"ada"}`: the name as stored (trimmed).
    UsernameSet { username: &'a Username },
    /// `{"type":"room_created","room_code":"ABC234"}`: the sender is the host of a new room.
    RoomCreated { room_code: RoomCode },
    /// `{"type":"room_joined","room_code":"ABC234","peer":"ada","history":[{"type":"chat",…}]}`:
    /// the sender joined; `history` is what was said since the room last lost a member.
    RoomJoined {
        room_code: RoomCode,
        peer: &'a Username,
        history: ChatHistory<'a>,
    },
    /// `{"type":"peer_joined","username":"grace"}`: to the member already in the room.
    PeerJoined { username: &'a Username },
    /// `{"type":"chat","id":1,"from":"ada","content":"hi","timestamp":1764000000000}`: to both
    /// members, the sender included.
    Chat(&'a ChatMessage),
    /// `{"type":"typing","username":"ada"}`: the peer started typing.
    Typing { username: &'a Username },
    /// `{"type":"stop_typing","username":"ada"}`: the peer stopped typing.
    StopTyping { username: &'a Username },
    /// `{"type":"peer_left","username":"ada","reason":"left"}`: the peer is gone; the receiver is
    /// now the room's host.
    PeerLeft {
        username: &'a Username,
        reason: LeaveReason,
    },
    /// `{"type":"peer_disconnected","username":"ada"}`: the peer's connection dropped; its seat
    /// is kept for the grace period, in case it resumes.
    PeerDisconnected { username: &'a Username },
    /// `{"type":"peer_reconnected","username":"ada"}`: the peer resumed its session.
    PeerReconnected { username: &'a Username },
    /// `{"type":"read","username":"ada","up_to":7}`: the peer has seen messages up to `up_to`.
    Read { username: &'a Username, up_to: u64 },
    /// `{"type":"room_left","room_code":"ABC234"}`: reply to `leave_room`.
    RoomLeft { room_code: RoomCode },
    /// `{"type":"error","code":"ROOM_FULL","message":"…"}`: a request was refused.
    Error { code: ErrorCode, message: &'a str },
}

impl ServerMessage<'_> {
    /// Serialises the message into the text of one WebSocket frame. The result is reference
    /// counted, so sending it to both members of a room copies no bytes.
    pub fn encode(&self) -> Utf8Bytes {
        // Serialising to a `String` can only fail for maps with non-string keys or a failing
        // `Serialize` impl; none of the types above has either.
        let json = serde_json::to_string(self).expect("server messages always serialise");
        Utf8Bytes::from(json)
    }
}

/// Why a peer left, in `peer_left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The peer sent `leave_room`.
    Left,
    /// The peer's connection ended: closed, timed out, or dropped as a slow consumer.
    Disconnected,
}

/// Some of a room's remembered messages, serialised the way they were first sent: each a
/// `chat` object with its `"type"`, so a client handles history and live messages alike.
#[derive(Debug, Clone, Copy)]
pub struct ChatHistory<'a> {
    /// Older messages kept aside for a member who was away (see `ChatServer::resume`).
    earlier: &'a VecDeque<ChatMessage>,
    /// The room's history, oldest first.
    later: &'a VecDeque<ChatMessage>,
    /// Only messages with a larger `id` are included.
    after_id: u64,
}

/// The empty history, for the parts of a [`ChatHistory`] that have nothing to show.
static NO_MESSAGES: VecDeque<ChatMessage> = VecDeque::new();

impl<'a> ChatHistory<'a> {
    /// Every message of a room's history.
    pub fn all(messages: &'a VecDeque<ChatMessage>) -> Self {
        ChatHistory {
            earlier: &NO_MESSAGES,
            later: messages,
            after_id: 0,
        }
    }

    /// The messages of `earlier` and then of `later`, if any, with an `id` above `after_id`.
    pub fn after(
        earlier: &'a VecDeque<ChatMessage>,
        later: Option<&'a VecDeque<ChatMessage>>,
        after_id: u64,
    ) -> Self {
        ChatHistory {
            earlier,
            later: later.unwrap_or(&NO_MESSAGES),
            after_id,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &'a ChatMessage> + use<'a> {
        let after_id = self.after_id;
        self.earlier
            .iter()
            .chain(self.later.iter())
            .filter(move |message| message.id > after_id)
    }
}

impl Serialize for ChatHistory<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for message in self.iter() {
            seq.serialize_element(&ServerMessage::Chat(message))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn encode(message: &ServerMessage) -> Value {
        serde_json::from_str(&message.encode()).expect("valid JSON")
    }

    /// Every client message decodes from its documented JSON; unknown extra fields are ignored.
    #[test]
    fn client_messages_decode_from_their_documented_json() {
        let cases = [
            (
                r#"{"type":"set_username","username":"ada"}"#,
                ClientMessage::SetUsername {
                    username: "ada".into(),
                },
            ),
            (r#"{"type":"create_room"}"#, ClientMessage::CreateRoom),
            (
                r#"{"type":"join_room","room_code":"abc234"}"#,
                ClientMessage::JoinRoom {
                    room_code: "abc234".into(),
                },
            ),
            (
                r#"{"type":"chat","content":" hi "}"#,
                ClientMessage::Chat {
                    content: " hi ".into(),
                },
            ),
            (r#"{"type":"typing"}"#, ClientMessage::Typing),
            (
                r#"{"type":"stop_typing","extra":1}"#,
                ClientMessage::StopTyping,
            ),
            (
                r#"{"content":"x","type":"leave_room"}"#,
                ClientMessage::LeaveRoom,
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(ClientMessage::decode(json), Ok(expected), "{json}");
        }
    }

    /// Malformed input of every kind is an `INVALID_MESSAGE` refusal, never a panic.
    #[test]
    fn malformed_client_messages_are_invalid_message() {
        for bad in [
            "",
            "not json",
            "[]",
            "42",
            "null",
            r#""chat""#,
            r#"{}"#,
            r#"{"type":"shout"}"#,
            r#"{"type":7}"#,
            r#"{"type":"chat"}"#,
            r#"{"type":"chat","content":5}"#,
            r#"{"type":"join_room","room_code":null}"#,
            r#"{"type":"set_username","username":["a"]}"#,
        ] {
            let refusal = ClientMessage::decode(bad).expect_err(bad);
            assert_eq!(refusal.code, ErrorCode::InvalidMessage, "{bad}");
        }
    }

    /// Server messages carry the documented `type` and field names.
    #[test]
    fn server_messages_encode_to_their_documented_json() {
        let ada = Username::parse("ada").expect("valid");
        let code = RoomCode::parse("ABC234").expect("valid");
        let chat = ChatMessage {
            id: 1,
            from: ada.clone(),
            content: "hi".into(),
            timestamp: 5,
        };
        let history = VecDeque::from([chat.clone()]);

        assert_eq!(
            encode(&ServerMessage::Chat(&chat)),
            json!({"type":"chat","id":1,"from":"ada","content":"hi","timestamp":5})
        );
        assert_eq!(
            encode(&ServerMessage::RoomJoined {
                room_code: code,
                peer: &ada,
                history: ChatHistory::all(&history)
            }),
            json!({"type":"room_joined","room_code":"ABC234","peer":"ada","history":[
                {"type":"chat","id":1,"from":"ada","content":"hi","timestamp":5}
            ]})
        );
        assert_eq!(
            encode(&ServerMessage::PeerLeft {
                username: &ada,
                reason: LeaveReason::Disconnected
            }),
            json!({"type":"peer_left","username":"ada","reason":"disconnected"})
        );
        assert_eq!(
            encode(&ServerMessage::Error {
                code: ErrorCode::RoomFull,
                message: "full"
            }),
            json!({"type":"error","code":"ROOM_FULL","message":"full"})
        );
        assert_eq!(
            encode(&ServerMessage::RoomCreated { room_code: code }),
            json!({"type":"room_created","room_code":"ABC234"})
        );
    }
}
