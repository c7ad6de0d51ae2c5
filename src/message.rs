//! The wire protocol: what clients send ([`ClientMessage`]) and what the server sends
//! ([`ServerMessage`]). Every message is one JSON object in one text frame, with a `"type"` field
//! naming the variant in snake_case; docs/protocol.md tells the whole story.
//!
//! The code is the first 250 lines; the rest of the file is its tests, kept beside it because
//! they pin the wire format to the letter (every message's JSON, and property tests of what is
//! and is not a request).

use serde::ser::{Error as _, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::envelope::KeyCheck;
use crate::error::{ErrorCode, Refusal};
use crate::store::ChatTail;
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// A request from a client. Fields are checked by the actor, not here: serde only makes sure the
/// JSON has the right shape, so a bad value gets the specific error code it deserves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// `{"type":"set_username","username":"ada"}`: choose or change one's name (not in a room).
    SetUsername { username: String },
    /// `{"type":"create_room"}`: open a new room; the sender becomes its host. With
    /// `"encrypted": true` (absent means false) the room is end-to-end encrypted: its chats carry
    /// envelopes only ([`crate::envelope`]), and `"key_check"` (optional) is the check value of
    /// its key ([`crate::envelope::KeyCheck`]), given back to whoever joins or resumes.
    CreateRoom {
        #[serde(default)]
        encrypted: bool,
        #[serde(default)]
        key_check: Option<Box<str>>,
    },
    /// `{"type":"join_room","room_code":"ABC234"}`: join a room as its second member.
    JoinRoom { room_code: String },
    /// `{"type":"chat","content":"hello","client_msg_id":"m-17"}`: say something to the room.
    /// `client_msg_id` (optional, 1 to 64 characters) is the sender's own id for the message:
    /// it comes back in the `chat`, and a repeat of it (a resend after a lost answer) is not
    /// stored twice. In an end-to-end encrypted room,
    /// `{"type":"chat","content":"v1.…","encrypted":true}`: `content` is an envelope, and
    /// `encrypted` (absent means false) must say so.
    Chat {
        // Boxed strings rather than `String`s: every request passes through the read loop of
        // a connection, whose future is as large as its largest request.
        content: Box<str>,
        #[serde(default)]
        encrypted: bool,
        #[serde(default)]
        client_msg_id: Option<Box<str>>,
    },
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
    /// `INVALID_MESSAGE` refusal its sender will receive: for a JSON object, with serde's
    /// explanation in it; for anything else, saying that a request is a JSON object.
    ///
    /// Only a JSON object is a request. serde's internally tagged enums also accept a JSON array
    /// and read its elements as the fields in order, so `["set_username","bob"]` would set a
    /// name; that is refused here, before serde runs.
    pub fn decode(text: &str) -> Result<Self, Refusal> {
        // In JSON the first byte after whitespace says what kind of value follows, and only `{`
        // opens an object. JSON whitespace is exactly these four bytes, the ones serde_json skips,
        // so this check agrees with serde_json on every input: text that starts with `{` goes on
        // to serde_json, which parses the object or says what is wrong with it, and anything
        // else is refused here. For a normal request it is one comparison. The serde ways are no
        // better: parsing into a `serde_json::Value` first allocates for every message, and a
        // wrapper that asks for a map (`deserialize_map`) is as cheap but answers an array with
        // a message about types rather than about what a request is.
        let first = text
            .bytes()
            .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(b'{') {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                r#"Invalid message: a request is one JSON object, such as {"type":"create_room"}."#,
            ));
        }
        serde_json::from_str(text).map_err(|err| {
            Refusal::new(
                ErrorCode::InvalidMessage,
                format!("Invalid message: {err}."),
            )
        })
    }
}

/// A chat message before the store numbers it: everything of its `chat` frame but the id.
///
/// `{"type":"chat","id":1,"from":"ada","content":"hi","timestamp":1764000000000}` goes to both
/// members, the sender included; with the `client_msg_id` its sender gave, if it gave one. The
/// id counts up from 1 in each room, and only the store can give it, so the frame is encoded in
/// two parts: this draft's JSON, its [`ChatTail`], and the id, joined by the store
/// ([`ChatTail::frame`]).
#[derive(Debug, Clone, Serialize)]
pub struct ChatDraft<'a> {
    /// The sender's name.
    pub from: &'a Username,
    /// Exactly what the sender wrote.
    pub content: &'a str,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The sender's own id for the message, if it gave one (see [`ClientMessage::Chat`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<&'a str>,
    /// Said in an end-to-end encrypted room: `content` is an envelope. On the wire only when
    /// true, so a plain room's `chat` is exactly protocol v1's.
    #[serde(skip_serializing_if = "is_false")]
    pub encrypted: bool,
}

/// For `skip_serializing_if`: the `encrypted` flags are on the wire only when true.
fn is_false(flag: &bool) -> bool {
    !*flag
}

impl ChatDraft<'_> {
    /// The frame's JSON after its id: `,"from":…}`.
    pub fn tail(&self) -> ChatTail {
        // Serialising a struct of strings and a number cannot fail.
        let json = serde_json::to_string(self).expect("a chat draft always serialises");
        // `{"from":…}` becomes `,"from":…}`: the object goes on after the id.
        let mut tail = json;
        tail.replace_range(..1, ",");
        ChatTail(tail)
    }
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
    /// "peer_connected":true,"missed":[{"type":"chat",…}],"more":0,"lost":0}`: reply to a
    /// successful `resume`. `room_code` and `peer` are `null` when there is none; `missed` holds
    /// the room's messages after the `last_id` the client gave, oldest first, as many as fit in
    /// the frame; `more` counts the `chat` frames that follow at once with the rest; `lost`
    /// counts those the server no longer had. `"encrypted":true` when the room is end-to-end
    /// encrypted (absent otherwise), with its `"key_check"` if its creator gave one.
    Resumed {
        client_id: ClientId,
        username: Option<&'a Username>,
        room_code: Option<RoomCode>,
        peer: Option<&'a Username>,
        peer_connected: bool,
        missed: ChatHistory<'a>,
        more: usize,
        lost: u64,
        #[serde(skip_serializing_if = "is_false")]
        encrypted: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_check: Option<KeyCheck>,
    },
    /// `{"type":"username_set","username":"ada"}`: the name as stored (trimmed).
    UsernameSet { username: &'a Username },
    /// `{"type":"room_created","room_code":"ABC234"}`: the sender is the host of a new room;
    /// with `"encrypted":true` when it asked for an end-to-end encrypted one, and its
    /// `"key_check"` back as it sent it.
    RoomCreated {
        room_code: RoomCode,
        #[serde(skip_serializing_if = "is_false")]
        encrypted: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_check: Option<KeyCheck>,
    },
    /// `{"type":"room_joined","room_code":"ABC234","peer":"ada","history":[{"type":"chat",…}]}`:
    /// the sender joined; `history` is what was said since the room last lost a member, as
    /// much as fits in the frame (the rest follows as `chat` frames). `"encrypted":true` when
    /// the room is end-to-end encrypted (absent otherwise), with its `"key_check"` if its
    /// creator gave one: a page whose key does not match knows at once that its link is wrong.
    RoomJoined {
        room_code: RoomCode,
        peer: &'a Username,
        history: ChatHistory<'a>,
        #[serde(skip_serializing_if = "is_false")]
        encrypted: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_check: Option<KeyCheck>,
    },
    /// `{"type":"peer_joined","username":"grace"}`: to the member already in the room.
    PeerJoined { username: &'a Username },
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
        let mut json = serde_json::to_string(self).expect("server messages always serialise");
        // The bytes keep the string's whole allocation, and a room may keep a frame for long:
        // give back what growing the string over-reserved (up to half of it) when it is worth
        // a copy. Small frames keep their few spare bytes.
        let spare = json.capacity() - json.len();
        if spare > SPARE_BYTES_KEPT && spare > json.len() / 8 {
            json.shrink_to_fit();
        }
        Utf8Bytes::from(json)
    }
}

/// How many unused bytes an encoded frame may keep in its allocation before
/// [`ServerMessage::encode`] gives them back.
const SPARE_BYTES_KEPT: usize = 1024;

/// Why a peer left, in `peer_left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The peer sent `leave_room`.
    Left,
    /// The peer's connection ended: closed, timed out, or dropped as a slow consumer.
    Disconnected,
}

/// The largest frame the server sends, in bytes: as large as the largest a client may send
/// ([`crate::handler::MAX_MESSAGE_BYTES`]), far under the 1 MiB that common WebSocket libraries
/// accept by default, and small enough that a connection's write buffer, which keeps the size
/// of the largest frame it ever wrote, stays small. The largest single message, a `chat` of
/// 4,096 characters that JSON must escape, is about 25 KiB; only a history can be longer, and
/// [`with_history`] splits it.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Chat messages of a room as they were first sent: each a `chat` frame, with its `"type"`,
/// so a client handles history and live messages alike. Serialised as the frames' own JSON,
/// copied as it is.
#[derive(Debug, Clone, Copy)]
pub struct ChatHistory<'a>(&'a [Utf8Bytes]);

impl ChatHistory<'_> {
    /// No messages.
    pub const NONE: ChatHistory<'static> = ChatHistory(&[]);
}

impl Serialize for ChatHistory<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for frame in self.0 {
            // Every frame is a `chat` the server encoded itself, so it is always JSON; reading
            // it as a raw value only checks that and borrows it, copying nothing.
            let raw: &RawValue = serde_json::from_str(frame).map_err(S::Error::custom)?;
            seq.serialize_element(raw)?;
        }
        seq.end()
    }
}

/// Encodes a message that carries a history (`room_joined`, `resumed`) with as many of
/// `frames` as fit in one frame of [`MAX_FRAME_BYTES`], oldest first, and returns it followed
/// by the frames that did not fit, in order, to be sent as they are: nothing is dropped to make
/// a history fit. `message` is given the part of the history inside and how many frames follow.
pub fn with_history<'h>(
    frames: &'h [Utf8Bytes],
    message: impl Fn(ChatHistory<'h>, usize) -> ServerMessage<'h>,
) -> Vec<Utf8Bytes> {
    // The message with an empty history (and the largest count that can follow, so that the
    // estimate is never short), then each frame adds its length and a comma.
    let mut size = message(ChatHistory::NONE, frames.len()).encode().len();
    let fit = frames
        .iter()
        .enumerate()
        .take_while(|(index, frame)| {
            size += frame.len() + usize::from(*index > 0);
            size <= MAX_FRAME_BYTES
        })
        .count();
    let (inside, after) = frames.split_at(fit);
    let mut encoded = Vec::with_capacity(1 + after.len());
    encoded.push(message(ChatHistory(inside), after.len()).encode());
    encoded.extend(after.iter().cloned());
    encoded
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
            (
                r#"{"type":"create_room"}"#,
                ClientMessage::CreateRoom {
                    encrypted: false,
                    key_check: None,
                },
            ),
            (
                r#"{"type":"create_room","encrypted":true}"#,
                ClientMessage::CreateRoom {
                    encrypted: true,
                    key_check: None,
                },
            ),
            (
                r#"{"type":"create_room","encrypted":true,"key_check":"AbCdEfGhIjKlMnOpQr-_09"}"#,
                ClientMessage::CreateRoom {
                    encrypted: true,
                    key_check: Some("AbCdEfGhIjKlMnOpQr-_09".into()),
                },
            ),
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
                    encrypted: false,
                    client_msg_id: None,
                },
            ),
            (
                r#"{"type":"chat","content":"v1.AAAA","encrypted":true}"#,
                ClientMessage::Chat {
                    content: "v1.AAAA".into(),
                    encrypted: true,
                    client_msg_id: None,
                },
            ),
            (
                r#"{"type":"chat","content":"hi","encrypted":false,"client_msg_id":"m"}"#,
                ClientMessage::Chat {
                    content: "hi".into(),
                    encrypted: false,
                    client_msg_id: Some("m".into()),
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
            r#"{"type":"create_room","encrypted":"yes"}"#,
            r#"{"type":"chat","content":"v1.AAAA","encrypted":1}"#,
            r#"{"type":"chat","content":"hi","client_msg_id":7}"#,
        ] {
            let refusal = ClientMessage::decode(bad).expect_err(bad);
            assert_eq!(refusal.code, ErrorCode::InvalidMessage, "{bad}");
        }
    }

    /// A history that fits goes inside its message; one that does not is split: as many
    /// messages as fit inside, the rest after it as they are, in order, and no frame is over
    /// `MAX_FRAME_BYTES`.
    #[test]
    fn a_long_history_is_split_over_frames_in_order() {
        let ada = Username::parse("ada").expect("valid");
        let code = RoomCode::parse("ABC234").expect("valid");
        let frames: Vec<Utf8Bytes> = (1..=100)
            .map(|id| {
                let content = "😀".repeat(4096);
                let chat = ChatDraft {
                    from: &ada,
                    content: &content,
                    timestamp: 5,
                    client_msg_id: None,
                    encrypted: false,
                };
                chat.tail().frame(id)
            })
            .collect();
        let joined = |history, _more| ServerMessage::RoomJoined {
            room_code: code,
            peer: &ada,
            history,
            encrypted: false,
            key_check: None,
        };
        let short = with_history(&frames[..2], joined);
        assert_eq!(short.len(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(&short[0]).expect("JSON")["history"][1]["id"],
            2
        );

        let long = with_history(&frames, joined);
        assert!(long.len() > 1);
        assert!(long.iter().all(|frame| frame.len() <= MAX_FRAME_BYTES));
        let first: Value = serde_json::from_str(&long[0]).expect("JSON");
        assert_eq!(first["type"], "room_joined");
        let mut ids: Vec<Value> = first["history"]
            .as_array()
            .expect("an array")
            .iter()
            .map(|chat| chat["id"].clone())
            .collect();
        assert!(!ids.is_empty(), "the first frame carries what fits");
        for frame in &long[1..] {
            let chat: Value = serde_json::from_str(frame).expect("JSON");
            assert_eq!(chat["type"], "chat");
            ids.push(chat["id"].clone());
        }
        assert_eq!(ids, (1..=100).map(Value::from).collect::<Vec<_>>());
    }

    /// Server messages carry the documented `type` and field names.
    #[test]
    fn server_messages_encode_to_their_documented_json() {
        let ada = Username::parse("ada").expect("valid");
        let code = RoomCode::parse("ABC234").expect("valid");
        let chat = ChatDraft {
            from: &ada,
            content: "hi",
            timestamp: 5,
            client_msg_id: None,
            encrypted: false,
        };
        let history = [chat.tail().frame(1)];
        assert_eq!(
            serde_json::from_str::<Value>(&history[0]).expect("JSON"),
            json!({"type":"chat","id":1,"from":"ada","content":"hi","timestamp":5})
        );
        let with_id = ChatDraft {
            client_msg_id: Some("m-1"),
            ..chat.clone()
        };
        assert_eq!(
            serde_json::from_str::<Value>(&with_id.tail().frame(7)).expect("JSON"),
            json!({"type":"chat","id":7,"from":"ada","content":"hi","timestamp":5,
                   "client_msg_id":"m-1"})
        );
        assert_eq!(
            encode(&ServerMessage::RoomJoined {
                room_code: code,
                peer: &ada,
                history: ChatHistory(&history),
                encrypted: false,
                key_check: None,
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
            encode(&ServerMessage::RoomCreated {
                room_code: code,
                encrypted: false,
                key_check: None,
            }),
            json!({"type":"room_created","room_code":"ABC234"})
        );
    }

    /// An end-to-end encrypted room says so with `"encrypted":true` in `room_created`,
    /// `room_joined`, `resumed` and each `chat`; a plain room's messages carry no `encrypted`
    /// field at all, so they are exactly protocol v1's.
    #[test]
    fn encrypted_is_on_the_wire_only_when_true() {
        let ada = Username::parse("ada").expect("valid");
        let code = RoomCode::parse("ABC234").expect("valid");
        let sealed = ChatDraft {
            from: &ada,
            content: "v1.AAAA",
            timestamp: 5,
            client_msg_id: None,
            encrypted: true,
        };
        let history = [sealed.tail().frame(1)];
        let sealed_json = json!({"type":"chat","id":1,"from":"ada","content":"v1.AAAA",
            "timestamp":5,"encrypted":true});
        assert_eq!(
            serde_json::from_str::<Value>(&history[0]).expect("JSON"),
            sealed_json
        );
        assert_eq!(
            encode(&ServerMessage::RoomCreated {
                room_code: code,
                encrypted: true,
                key_check: None,
            }),
            json!({"type":"room_created","room_code":"ABC234","encrypted":true})
        );
        let check = KeyCheck::parse("AbCdEfGhIjKlMnOpQr-_09").expect("a key check");
        assert_eq!(
            encode(&ServerMessage::RoomCreated {
                room_code: code,
                encrypted: true,
                key_check: Some(check),
            }),
            json!({"type":"room_created","room_code":"ABC234","encrypted":true,
                "key_check":"AbCdEfGhIjKlMnOpQr-_09"})
        );
        assert_eq!(
            encode(&ServerMessage::RoomJoined {
                room_code: code,
                peer: &ada,
                history: ChatHistory(&history),
                encrypted: true,
                key_check: Some(check),
            }),
            json!({"type":"room_joined","room_code":"ABC234","peer":"ada",
                "history":[sealed_json],"encrypted":true,"key_check":"AbCdEfGhIjKlMnOpQr-_09"})
        );
        let resumed = |encrypted| ServerMessage::Resumed {
            client_id: ClientId::new(),
            username: Some(&ada),
            room_code: Some(code),
            peer: None,
            peer_connected: false,
            missed: ChatHistory::NONE,
            more: 0,
            lost: 0,
            encrypted,
            key_check: encrypted.then_some(check),
        };
        assert_eq!(encode(&resumed(true))["encrypted"], true);
        assert_eq!(encode(&resumed(true))["key_check"], check.as_str());
        assert!(encode(&resumed(false)).get("key_check").is_none());
        assert!(encode(&resumed(false)).get("encrypted").is_none());
    }

    /// Only an object is a request. serde alone would take an array as a request too, reading
    /// its elements as the fields in order; `decode` refuses arrays, and every other non-object,
    /// with a message that says what a request is.
    #[test]
    fn non_objects_are_refused_as_not_an_object() {
        // The hole `decode` closes: serde's internally tagged enums accept sequences.
        assert!(serde_json::from_str::<ClientMessage>(r#"["set_username","bob"]"#).is_ok());
        for bad in [
            r#"["set_username","bob"]"#,
            r#"["chat","hi"]"#,
            r#"["create_room"]"#,
            r#"["resume","0123456789abcdef0123456789abcdef",0]"#,
            r#"[{"type":"create_room"}]"#,
            " \t\r\n[\"typing\"]",
            r#""{\"type\":\"typing\"}""#,
            "true",
            "-0.5e3",
            "null",
            "",
            " \n ",
            // A byte order mark is not JSON whitespace, so this is not an object either.
            "\u{FEFF}{\"type\":\"typing\"}",
            // Nor is a vertical tab or a no-break space.
            "\u{B}{\"type\":\"typing\"}",
            "\u{A0}{\"type\":\"typing\"}",
        ] {
            let refusal = ClientMessage::decode(bad).expect_err(bad);
            assert_eq!(refusal.code, ErrorCode::InvalidMessage, "{bad:?}");
            assert!(
                refusal.message.contains("JSON object"),
                "{bad:?}: {refusal}"
            );
        }
    }

    /// JSON whitespace (space, tab, line feed, carriage return) may come before and after the
    /// object, as JSON allows.
    #[test]
    fn json_whitespace_around_an_object_is_fine() {
        assert_eq!(
            ClientMessage::decode(" \t\r\n{ \"type\" : \"typing\" }\r\n"),
            Ok(ClientMessage::Typing)
        );
    }

    /// Something that starts like an object but is not well-formed still gets serde's
    /// explanation, not the "not an object" one.
    #[test]
    fn broken_objects_get_serdes_explanation() {
        let refusal = ClientMessage::decode(r#"{"type":"chat""#).expect_err("truncated");
        assert_eq!(refusal.code, ErrorCode::InvalidMessage);
        assert!(refusal.message.contains("EOF"), "{refusal}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The request types, to make arrays and strings that look like requests.
        const TYPES: &[&str] = &[
            "set_username",
            "create_room",
            "join_room",
            "chat",
            "typing",
            "stop_typing",
            "leave_room",
            "resume",
            "read",
        ];

        /// JSON whitespace to put around a message.
        fn whitespace() -> impl Strategy<Value = String> {
            "[ \t\n\r]{0,4}"
        }

        /// Any JSON value that is not an array or an object.
        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_filter_map("JSON has no NaN or infinity", |x| {
                    serde_json::Number::from_f64(x).map(Value::Number)
                }),
                any::<String>().prop_map(Value::String),
                prop::sample::select(TYPES).prop_map(Value::from),
            ]
        }

        /// Any JSON value, nested up to four levels.
        fn any_json() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..6)
                        .prop_map(|fields| Value::Object(fields.into_iter().collect())),
                ]
            })
        }

        /// A well-formed request as JSON, with the message it must decode to. One unknown extra
        /// field is sometimes added, which must be ignored.
        fn request() -> impl Strategy<Value = (Value, ClientMessage)> {
            let known = prop_oneof![
                any::<String>().prop_map(|username| (
                    json!({"type": "set_username", "username": username}),
                    ClientMessage::SetUsername { username }
                )),
                Just((
                    json!({"type": "create_room"}),
                    ClientMessage::CreateRoom {
                        encrypted: false,
                        key_check: None,
                    }
                )),
                any::<bool>().prop_map(|encrypted| (
                    json!({"type": "create_room", "encrypted": encrypted}),
                    ClientMessage::CreateRoom {
                        encrypted,
                        key_check: None,
                    }
                )),
                (any::<bool>(), any::<String>()).prop_map(|(encrypted, check)| (
                    json!({"type": "create_room", "encrypted": encrypted, "key_check": check}),
                    ClientMessage::CreateRoom {
                        encrypted,
                        key_check: Some(check.into()),
                    }
                )),
                any::<String>().prop_map(|room_code| (
                    json!({"type": "join_room", "room_code": room_code}),
                    ClientMessage::JoinRoom { room_code }
                )),
                any::<String>().prop_map(|content| (
                    json!({"type": "chat", "content": content}),
                    ClientMessage::Chat {
                        content: content.into(),
                        encrypted: false,
                        client_msg_id: None
                    }
                )),
                (any::<String>(), any::<bool>()).prop_map(|(content, encrypted)| (
                    json!({"type": "chat", "content": content, "encrypted": encrypted}),
                    ClientMessage::Chat {
                        content: content.into(),
                        encrypted,
                        client_msg_id: None
                    }
                )),
                Just((json!({"type": "typing"}), ClientMessage::Typing)),
                Just((json!({"type": "stop_typing"}), ClientMessage::StopTyping)),
                Just((json!({"type": "leave_room"}), ClientMessage::LeaveRoom)),
                (any::<String>(), any::<u64>()).prop_map(|(session_token, last_id)| (
                    json!({"type": "resume", "session_token": session_token, "last_id": last_id}),
                    ClientMessage::Resume {
                        session_token,
                        last_id
                    }
                )),
                any::<u64>().prop_map(|up_to| (
                    json!({"type": "read", "up_to": up_to}),
                    ClientMessage::Read { up_to }
                )),
            ];
            // "extra_" keeps the extra field's name clear of every real field's.
            let extra = prop::option::of(("extra_[a-z]{0,8}", any_json()));
            (known, extra).prop_map(|((mut json, message), extra)| {
                if let (Some((name, value)), Value::Object(fields)) = (extra, &mut json) {
                    fields.insert(name, value);
                }
                (json, message)
            })
        }

        /// Any JSON value that is not an object: scalars, arrays of anything, arrays shaped
        /// like requests (`["chat","hi"]`, `["read",7]`), and well-formed requests wrapped in
        /// an array.
        fn non_object() -> impl Strategy<Value = Value> {
            let field = prop_oneof![
                any::<String>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
            ];
            let request_like = (
                prop::sample::select(TYPES),
                prop::collection::vec(field, 0..3),
            )
                .prop_map(|(kind, fields)| {
                    Value::Array(std::iter::once(Value::from(kind)).chain(fields).collect())
                });
            prop_oneof![
                scalar(),
                prop::collection::vec(any_json(), 0..6).prop_map(Value::Array),
                request_like,
                request().prop_map(|(json, _)| Value::Array(vec![json])),
            ]
        }

        proptest! {
            /// No JSON value other than an object decodes, however it is laid out and whatever
            /// it holds: each is `INVALID_MESSAGE` saying a request is an object, and none
            /// panics.
            #[test]
            fn every_non_object_is_refused(
                value in non_object(),
                before in whitespace(),
                after in whitespace(),
                pretty in any::<bool>(),
            ) {
                let json = if pretty {
                    serde_json::to_string_pretty(&value)
                } else {
                    serde_json::to_string(&value)
                };
                let text = format!("{before}{}{after}", json.expect("a Value serialises"));
                let refusal = ClientMessage::decode(&text);
                prop_assert!(
                    matches!(&refusal, Err(r) if r.code == ErrorCode::InvalidMessage
                        && r.message.contains("JSON object")),
                    "{text:?} gave {refusal:?}"
                );
            }

            /// Every well-formed request object still decodes to its message, in any layout
            /// and with an unknown field added.
            #[test]
            fn every_request_object_decodes(
                (value, message) in request(),
                before in whitespace(),
                after in whitespace(),
                pretty in any::<bool>(),
            ) {
                let json = if pretty {
                    serde_json::to_string_pretty(&value)
                } else {
                    serde_json::to_string(&value)
                };
                let text = format!("{before}{}{after}", json.expect("a Value serialises"));
                prop_assert_eq!(ClientMessage::decode(&text), Ok(message), "{}", text);
            }

            /// Any text at all decodes to a request or an `INVALID_MESSAGE` refusal, never a
            /// panic.
            #[test]
            fn any_text_decodes_or_is_refused(text in any::<String>()) {
                if let Err(refusal) = ClientMessage::decode(&text) {
                    prop_assert_eq!(refusal.code, ErrorCode::InvalidMessage);
                }
            }
        }
    }
}
