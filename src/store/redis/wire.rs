//! A room's events as they travel over pub/sub between nodes.
//!
//! A chat is `C<id>|<token>|<frame>`: the frame both members receive, ready to send, after the
//! message's id and its sender's session; `S` instead of `C` when the message ends its
//! sender's typing (`ends_typing`). Every other event is `E` and a JSON object, written
//! by the room's Lua scripts (counted events, with their number `s`) or by a node (typing):
//! `{"k":"left","s":7,"t":"<token>","n":"ada","reason":"left"}`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::message::LeaveReason;
use crate::store::RoomEvent;
use crate::types::{SessionToken, Username};

/// An `E` event's JSON. Its strings are borrowed from the payload unless JSON escaped them
/// (Lua's cjson escapes `/`, say).
#[derive(Serialize, Deserialize)]
struct Event<'a> {
    /// Its kind: `joined`, `left`, `disconnected`, `reconnected`, `read`, `typing`,
    /// `stop_typing`.
    #[serde(borrow)]
    k: Cow<'a, str>,
    /// Its number among the room's counted events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    /// The member's session.
    #[serde(borrow)]
    t: Cow<'a, str>,
    /// The member's name.
    #[serde(borrow)]
    n: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    reason: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    up_to: Option<u64>,
}

/// The payload that carries `event` (only typing is published by nodes themselves; the other
/// events are published by the scripts that make them happen).
pub fn encode(event: &RoomEvent) -> String {
    let (k, up_to, reason) = match event {
        RoomEvent::Chat {
            id,
            token,
            frame,
            ends_typing,
        } => {
            let kind = if *ends_typing { 'S' } else { 'C' };
            return format!("{kind}{id}|{}|{frame}", token.hex());
        }
        RoomEvent::Joined { .. } => ("joined", None, None),
        RoomEvent::Left { reason, .. } => (
            "left",
            None,
            Some(match reason {
                LeaveReason::Left => "left",
                LeaveReason::Disconnected => "disconnected",
            }),
        ),
        RoomEvent::Disconnected { .. } => ("disconnected", None, None),
        RoomEvent::Reconnected { .. } => ("reconnected", None, None),
        RoomEvent::Read { up_to, .. } => ("read", Some(*up_to), None),
        RoomEvent::Typing { .. } => ("typing", None, None),
        RoomEvent::StopTyping { .. } => ("stop_typing", None, None),
    };
    let name = match event {
        RoomEvent::Joined { name, .. }
        | RoomEvent::Left { name, .. }
        | RoomEvent::Disconnected { name, .. }
        | RoomEvent::Reconnected { name, .. }
        | RoomEvent::Read { name, .. }
        | RoomEvent::Typing { name, .. }
        | RoomEvent::StopTyping { name, .. } => name.as_str(),
        RoomEvent::Chat { .. } => "",
    };
    let wire = Event {
        k: k.into(),
        s: event.seq(),
        t: event.token().hex().into(),
        n: name.into(),
        reason: reason.map(Cow::from),
        up_to,
    };
    let json = serde_json::to_string(&wire).unwrap_or_default();
    format!("E{json}")
}

/// The event a payload carries, or `None` if it is not one (which no node publishes).
pub fn decode(payload: &str) -> Option<RoomEvent> {
    let chat = payload
        .strip_prefix('C')
        .map(|chat| (chat, false))
        .or_else(|| payload.strip_prefix('S').map(|chat| (chat, true)));
    if let Some((chat, ends_typing)) = chat {
        let (id, rest) = chat.split_once('|')?;
        let (token, frame) = rest.split_once('|')?;
        return Some(RoomEvent::Chat {
            id: id.parse().ok()?,
            token: SessionToken::parse(token)?,
            frame: Utf8Bytes::from(frame),
            ends_typing,
        });
    }
    let event: Event = serde_json::from_str(payload.strip_prefix('E')?).ok()?;
    let token = SessionToken::parse(&event.t)?;
    let name = Username::parse(&event.n).ok()?;
    let seq = || event.s;
    Some(match &*event.k {
        "joined" => RoomEvent::Joined {
            seq: seq()?,
            token,
            name,
        },
        "left" => RoomEvent::Left {
            seq: seq()?,
            token,
            name,
            reason: match event.reason.as_deref() {
                Some("left") => LeaveReason::Left,
                _ => LeaveReason::Disconnected,
            },
        },
        "disconnected" => RoomEvent::Disconnected {
            seq: seq()?,
            token,
            name,
        },
        "reconnected" => RoomEvent::Reconnected {
            seq: seq()?,
            token,
            name,
        },
        "read" => RoomEvent::Read {
            seq: seq()?,
            token,
            name,
            up_to: event.up_to?,
        },
        "typing" => RoomEvent::Typing { token, name },
        "stop_typing" => RoomEvent::StopTyping { token, name },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Username {
        Username::parse(text).expect("a valid name")
    }

    #[test]
    fn every_event_comes_back_as_it_went() {
        let token = SessionToken::random();
        let events = [
            RoomEvent::Chat {
                id: 42,
                token,
                frame: Utf8Bytes::from(r#"{"type":"chat","id":42,"from":"a|b","content":"x|y"}"#),
                ends_typing: false,
            },
            RoomEvent::Chat {
                id: 43,
                token,
                frame: Utf8Bytes::from(r#"{"type":"chat","id":43,"from":"a","content":"x"}"#),
                ends_typing: true,
            },
            RoomEvent::Joined {
                seq: 1,
                token,
                name: name("ada"),
            },
            RoomEvent::Left {
                seq: 2,
                token,
                name: name("ada"),
                reason: LeaveReason::Left,
            },
            RoomEvent::Left {
                seq: 3,
                token,
                name: name("ada"),
                reason: LeaveReason::Disconnected,
            },
            RoomEvent::Disconnected {
                seq: 4,
                token,
                name: name("ada"),
            },
            RoomEvent::Reconnected {
                seq: 5,
                token,
                name: name("ada"),
            },
            RoomEvent::Read {
                seq: 6,
                token,
                name: name("ada \"the\" éclair/𝄞"),
                up_to: 9,
            },
            RoomEvent::Typing {
                token,
                name: name("ada"),
            },
            RoomEvent::StopTyping {
                token,
                name: name("ada"),
            },
        ];
        for event in events {
            let decoded = decode(&encode(&event)).expect("decodes");
            assert_eq!(format!("{decoded:?}"), format!("{event:?}"));
        }
    }

    #[test]
    fn what_no_node_publishes_is_not_an_event() {
        for payload in [
            "",
            "C",
            "Cx|t|f",
            "S1|t",
            "C1|t",
            "E{}",
            "E[1]",
            r#"E{"k":"joined","t":"x","n":"ada"}"#,
        ] {
            assert!(decode(payload).is_none(), "{payload:?}");
        }
    }
}
