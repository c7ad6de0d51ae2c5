//! Rooms: create one, join one by its code (counting the failed attempts), chat, typing and its
//! timer, and leaving, by request or for good.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::debug;

use super::{ChatServer, MAX_CHAT_CHARS};
use crate::envelope;
use crate::error::{ErrorCode, Refusal};
use crate::message::{self, ChatMessage, LeaveReason, ServerMessage};
use crate::room::{Room, StoredChat};
use crate::types::{ClientId, RoomCode, Username};

impl ChatServer {
    /// Opens a room with `id` as its host: end-to-end encrypted if it asked for `encrypted`.
    pub(super) fn create_room(&mut self, id: ClientId, encrypted: bool) -> Result<(), Refusal> {
        self.check_can_enter_room(id)?;
        // 887 million codes: a collision with a live room is rare, and retrying settles it.
        let code = loop {
            let code = RoomCode::random();
            if !self.rooms.contains_key(&code) {
                break code;
            }
        };
        self.rooms.insert(code, Room::new(code, id, encrypted));
        let client = self.session_mut(id)?;
        client.room = Some(code);
        client.history_from = 1;
        self.metrics.rooms.increment(1.0);
        debug!(client = %id, room = %code, encrypted, "room created");
        let reply = ServerMessage::RoomCreated {
            room_code: code,
            encrypted,
        };
        self.send(id, reply.encode());
        Ok(())
    }

    /// Joins a room, counting the attempts that probe a code in vain against the failed-join
    /// limit: `ROOM_NOT_FOUND`, `ROOM_FULL` and `USERNAME_TAKEN`. A malformed code
    /// (`INVALID_ROOM_CODE`) probes nothing and is not counted, nor are the refusals that do not
    /// depend on the code at all (`USERNAME_REQUIRED`, `ALREADY_IN_ROOM`).
    pub(super) fn join_room(&mut self, id: ClientId, input: &str) -> Result<(), Refusal> {
        let joiner_name = self.check_can_enter_room(id)?;
        let code = RoomCode::parse(input)?;
        // Refused before the code is looked at, so that an attempt over the limit reveals
        // nothing about whether the room exists.
        self.check_failed_joins(id)?;
        let joined = self.join_existing_room(id, code, &joiner_name);
        if let Err(refusal) = &joined
            && matches!(
                refusal.code,
                ErrorCode::RoomNotFound | ErrorCode::RoomFull | ErrorCode::UsernameTaken
            )
        {
            self.count_failed_join(id);
        }
        joined
    }

    /// `RATE_LIMITED` if `id`, or its address, has used up its failed joins for now.
    pub(super) fn check_failed_joins(&mut self, id: ClientId) -> Result<(), Refusal> {
        let client = self.sessions.get_mut(&id).ok_or(ErrorCode::InternalError)?;
        let address = client.address;
        if self
            .limits
            .may_fail_a_join(&mut client.limits, address, Instant::now())
        {
            Ok(())
        } else {
            debug!(client = %id, "too many failed joins");
            Err(Refusal::new(
                ErrorCode::RateLimited,
                "Too many room codes that did not work: wait a minute before trying again.",
            ))
        }
    }

    /// Takes one failed join from `id`'s allowance and from its address's.
    pub(super) fn count_failed_join(&mut self, id: ClientId) {
        if let Some(client) = self.sessions.get_mut(&id) {
            let address = client.address;
            self.limits
                .count_failed_join(&mut client.limits, address, Instant::now());
        }
    }

    /// The part of `join_room` that depends on the room: whether it exists, has a free seat,
    /// and a host with another name.
    pub(super) fn join_existing_room(
        &mut self,
        id: ClientId,
        code: RoomCode,
        joiner_name: &Username,
    ) -> Result<(), Refusal> {
        let room = self.rooms.get(&code).ok_or(ErrorCode::RoomNotFound)?;
        if room.is_full() {
            return Err(ErrorCode::RoomFull.into());
        }
        let host = room.host();
        let host_name = self.username(host)?;
        if host_name == *joiner_name {
            return Err(ErrorCode::UsernameTaken.into());
        }

        // The history, and the `room_joined` carrying what fits of it; the rest follows it.
        let history: Vec<Utf8Bytes> = room.history().map(|chat| chat.frame.clone()).collect();
        let encrypted = room.is_encrypted();
        let welcome = message::with_history(&history, |history, _| ServerMessage::RoomJoined {
            room_code: code,
            peer: &host_name,
            history,
            encrypted,
        });
        let announcement = ServerMessage::PeerJoined {
            username: joiner_name,
        }
        .encode();
        let host_away = !self
            .sessions
            .get(&host)
            .is_some_and(|client| client.is_connected());
        let history_from = self.room_mut(code)?.seat(id);
        let joiner = self.session_mut(id)?;
        joiner.room = Some(code);
        joiner.history_from = history_from;
        debug!(client = %id, room = %code, "room joined");
        self.send_all(id, welcome);
        self.send(host, announcement);
        if host_away {
            // The host's connection dropped and it may still resume: say so, as its peer would
            // have heard had it been here.
            let notice = ServerMessage::PeerDisconnected {
                username: &host_name,
            };
            self.send(id, notice.encode());
        }
        Ok(())
    }

    /// A chat message: checked against the room's kind (plain or end-to-end encrypted), then
    /// given the room's next id, kept, and sent to both members.
    pub(super) fn chat(
        &mut self,
        id: ClientId,
        content: String,
        encrypted: bool,
    ) -> Result<(), Refusal> {
        let (code, from) = self.membership(id)?;
        let room = self.rooms.get_mut(&code).ok_or(ErrorCode::InternalError)?;
        // For a plain room this is one comparison more than protocol v1 needed.
        match (room.is_encrypted(), encrypted) {
            (false, false) => check_plain_content(&content)?,
            (true, true) => envelope::check(&content)?,
            // A page that lost its key must not leak plaintext into the room.
            (true, false) => return Err(ErrorCode::EncryptionRequired.into()),
            (false, true) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidMessage,
                    "This room is not end-to-end encrypted: send the message itself, without \
                     \"encrypted\": true.",
                ));
            }
        }
        let message = ChatMessage {
            id: room.next_id(),
            from,
            content,
            timestamp: unix_millis(),
            encrypted,
        };
        // Encoded once; the room keeps the frame, and each member's queue gets a
        // reference-counted copy of the same bytes. The content, an envelope included, is kept
        // and relayed exactly as it came.
        let frame = ServerMessage::Chat(&message).encode();
        let stored = StoredChat {
            id: message.id,
            frame: frame.clone(),
        };
        let grown = room.store(stored);
        let members = room.members();
        self.stored_bytes = self.stored_bytes.saturating_add_signed(grown);
        // The peer must see the typing indicator go away before the message it turned into,
        // which is sent only below.
        self.end_typing(id);
        for member in members {
            self.send(member, frame.clone());
        }
        self.metrics.messages_relayed.increment(1);
        self.keep_to_storage_budget();
        Ok(())
    }

    pub(super) fn typing(&mut self, id: ClientId) -> Result<(), Refusal> {
        let (code, username) = self.membership(id)?;
        // Field by field rather than through `session_mut`, so that the client and the timers can
        // be borrowed at the same time.
        let client = self.sessions.get_mut(&id).ok_or(ErrorCode::InternalError)?;
        if let Some(key) = &client.typing {
            // Already typing: the peer knows; only push the deadline back.
            self.timers.restart_typing(key, self.typing_timeout);
            return Ok(());
        }
        client.typing = Some(self.timers.start_typing(id, self.typing_timeout));
        self.send_to_peer(
            code,
            id,
            ServerMessage::Typing {
                username: &username,
            }
            .encode(),
        );
        Ok(())
    }

    pub(super) fn stop_typing(&mut self, id: ClientId) -> Result<(), Refusal> {
        self.membership(id)?;
        self.end_typing(id);
        Ok(())
    }

    /// A typing timer ran out: the member stopped typing without saying so.
    pub(super) fn typing_expired(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without `DelayQueue::remove`.
        let Some(client) = self.sessions.get_mut(&id) else {
            return;
        };
        client.typing = None;
        if let Ok((code, username)) = self.membership(id) {
            self.send_to_peer(
                code,
                id,
                ServerMessage::StopTyping {
                    username: &username,
                }
                .encode(),
            );
        }
    }

    /// If `id` is typing, stops its timer and tells the peer. Does nothing for an idle member.
    pub(super) fn end_typing(&mut self, id: ClientId) {
        let Some(key) = self
            .sessions
            .get_mut(&id)
            .and_then(|client| client.typing.take())
        else {
            return;
        };
        self.timers.cancel_typing(&key);
        if let Ok((code, username)) = self.membership(id) {
            self.send_to_peer(
                code,
                id,
                ServerMessage::StopTyping {
                    username: &username,
                }
                .encode(),
            );
        }
    }

    pub(super) fn leave_room(&mut self, id: ClientId) -> Result<(), Refusal> {
        let (code, _) = self.membership(id)?;
        self.leave(id, LeaveReason::Left);
        self.send(id, ServerMessage::RoomLeft { room_code: code }.encode());
        Ok(())
    }

    /// Takes `id` out of its room, if it is in one: typing ends first, then the member who stays
    /// gets `peer_left` and becomes the host, or the room is deleted if nobody stays.
    pub(super) fn leave(&mut self, id: ClientId, reason: LeaveReason) {
        let Ok((code, username)) = self.membership(id) else {
            return;
        };
        self.end_typing(id);
        if let Some(client) = self.sessions.get_mut(&id) {
            client.room = None;
            client.read_up_to = 0;
        }
        let Some(room) = self.rooms.get_mut(&code) else {
            return;
        };
        match room.remove(id) {
            Some(stays) => {
                // What was said before the one who stays entered is nobody's any more. The rest
                // is its own conversation: kept for its resume, though a joiner will not see it.
                let history_from = self.sessions.get(&stays).map_or(0, |c| c.history_from);
                let freed = room.forget_before(history_from);
                self.stored_bytes -= freed;
                let notice = ServerMessage::PeerLeft {
                    username: &username,
                    reason,
                }
                .encode();
                self.send(stays, notice);
            }
            None => {
                if let Some(room) = self.rooms.remove(&code) {
                    self.stored_bytes -= room.stored_bytes();
                }
                self.metrics.rooms.decrement(1.0);
                debug!(room = %code, "room deleted");
            }
        }
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
    }
}

/// The rules of a plain room's chat content: not empty or only whitespace
/// (`EMPTY_MESSAGE`), at most [`MAX_CHAT_CHARS`] characters (`MESSAGE_TOO_LONG`).
fn check_plain_content(content: &str) -> Result<(), Refusal> {
    if content.trim().is_empty() {
        return Err(ErrorCode::EmptyMessage.into());
    }
    // A string has at least as many bytes as characters, so only long ones need counting.
    if content.len() > MAX_CHAT_CHARS && content.chars().count() > MAX_CHAT_CHARS {
        return Err(ErrorCode::MessageTooLong.into());
    }
    Ok(())
}

/// Now, in milliseconds since the Unix epoch, as chat timestamps are.
fn unix_millis() -> u64 {
    // A clock set before 1970 is not worth failing a chat message for: it reads as 0.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
