//! Rooms: create one, join one by its code (counting the failed attempts), chat, typing and its
//! timer, and leaving.

use tokio::time::Instant;
use tracing::debug;

use super::steps::Then;
use super::{ChatServer, MAX_CHAT_CHARS};
use crate::envelope::{self, KeyCheck};
use crate::error::{ErrorCode, Refusal};
use crate::message::ChatDraft;
use crate::store::memory::unix_millis;
use crate::store::{Member, RoomEvent, Step};
use crate::types::{ClientId, RoomCode};

/// What a room is created as: end-to-end encrypted or plain, and the check value of its key
/// if its creator gave one (only an encrypted room has a key). Kept with the request until the
/// store answers, for the reply (and for another try under a new code).
#[derive(Debug, Clone, Copy)]
pub(super) struct Encryption {
    pub encrypted: bool,
    pub key_check: Option<KeyCheck>,
}

/// The longest `client_msg_id`, in characters.
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;

impl ChatServer {
    /// Opens a room with `id` as its host: end-to-end encrypted if it asked for `encrypted`,
    /// keeping the `key_check` of its key if it gave one (only an encrypted room has a key).
    pub(super) fn create_room(
        &mut self,
        id: ClientId,
        encrypted: bool,
        key_check: Option<&str>,
    ) -> Result<(), Refusal> {
        let key_check = key_check.map(KeyCheck::parse).transpose()?;
        if key_check.is_some() && !encrypted {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "Invalid message: only an end-to-end encrypted room (\"encrypted\": true) has a \
                 key_check.",
            ));
        }
        self.check_can_enter_room(id)?;
        let encryption = Encryption {
            encrypted,
            key_check,
        };
        self.try_create_room(id, encryption, 1);
        Ok(())
    }

    /// Asks the store for a room under a fresh random code; `attempts` counts the codes drawn.
    pub(super) fn try_create_room(&mut self, id: ClientId, encryption: Encryption, attempts: u32) {
        let Ok(member) = self.member(id) else {
            return;
        };
        // 887 million codes: a collision with a live room is rare, and drawing again settles it.
        let code = RoomCode::random();
        let then = Then::Created {
            client: id,
            token: member.token,
            code,
            encryption,
            attempts,
        };
        let step = Step::Create {
            code,
            member,
            encrypted: encryption.encrypted,
            key_check: encryption.key_check,
        };
        self.perform(step, then);
    }

    /// Joins a room, counting the attempts that probe a code in vain against the failed-join
    /// limit: `ROOM_NOT_FOUND`, `ROOM_FULL` and `USERNAME_TAKEN`. A malformed code
    /// (`INVALID_ROOM_CODE`) probes nothing and is not counted, nor are the refusals that do not
    /// depend on the code at all (`USERNAME_REQUIRED`, `ALREADY_IN_ROOM`).
    pub(super) fn join_room(&mut self, id: ClientId, input: &str) -> Result<(), Refusal> {
        self.check_can_enter_room(id)?;
        let code = RoomCode::parse(input)?;
        // Refused before the code is looked at, so that an attempt over the limit reveals
        // nothing about whether the room exists.
        self.check_failed_joins(id)?;
        let member = self.member(id)?;
        let then = Then::Joined {
            client: id,
            token: member.token,
            code,
        };
        self.perform(Step::Join { code, member }, then);
        Ok(())
    }

    /// Who `id` is, as a member of a room.
    fn member(&self, id: ClientId) -> Result<Member, Refusal> {
        let connection = self.connection(id)?;
        Ok(Member {
            token: connection.token,
            conn: self.conn(id),
            name: connection.name.clone().ok_or(ErrorCode::UsernameRequired)?,
        })
    }

    /// `RATE_LIMITED` if `id`, or its address, has used up its failed joins for now.
    fn check_failed_joins(&mut self, id: ClientId) -> Result<(), Refusal> {
        let connection = self
            .connections
            .get_mut(&id)
            .ok_or(ErrorCode::InternalError)?;
        let address = connection.address;
        if self
            .limits
            .may_fail_a_join(&mut connection.limits, address, Instant::now())
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
        if let Some(connection) = self.connections.get_mut(&id) {
            let address = connection.address;
            self.limits
                .count_failed_join(&mut connection.limits, address, Instant::now());
        }
    }

    /// A chat message: checked against the room's kind (plain or end-to-end encrypted), then
    /// given the room's next id by the store, kept, and sent to both members.
    pub(super) fn chat(
        &mut self,
        id: ClientId,
        content: Box<str>,
        encrypted: bool,
        client_msg_id: Option<Box<str>>,
    ) -> Result<(), Refusal> {
        let (code, from) = self.membership(id)?;
        // For a plain room this is one comparison more than protocol v1 needed.
        match (self.connection(id)?.room_encrypted, encrypted) {
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
        if let Some(client_msg_id) = &client_msg_id {
            let chars = client_msg_id.chars().count();
            if chars == 0 || chars > MAX_CLIENT_MSG_ID_CHARS {
                return Err(Refusal::new(
                    ErrorCode::InvalidMessage,
                    "`client_msg_id` is a string of 1 to 64 characters.",
                ));
            }
        }
        // The peer must see the typing indicator go away before the message it turned into: the
        // message says so itself (`ends_typing`), so that typing costs no step of its own.
        let ends_typing = self.stop_typing_timer(id);
        let draft = ChatDraft {
            from: &from,
            content: &content,
            timestamp: unix_millis(),
            client_msg_id: client_msg_id.as_deref(),
            encrypted,
        };
        let step = Step::Chat {
            code,
            token: self.connection(id)?.token,
            conn: self.conn(id),
            tail: draft.tail(),
            client_msg_id,
            ends_typing,
        };
        let then = Then::Chatted {
            client: id,
            ends_typing,
        };
        self.perform(step, then);
        Ok(())
    }

    pub(super) fn typing(&mut self, id: ClientId) -> Result<(), Refusal> {
        let (code, name) = self.membership(id)?;
        // Field by field rather than through `connection_mut`, so that the connection and the
        // timers can be borrowed at the same time.
        let connection = self
            .connections
            .get_mut(&id)
            .ok_or(ErrorCode::InternalError)?;
        if let Some(key) = &connection.typing {
            // Already typing: the peer knows; only push the deadline back.
            self.timers.restart_typing(key, self.typing_timeout);
            return Ok(());
        }
        connection.typing = Some(self.timers.start_typing(id, self.typing_timeout));
        let token = connection.token;
        self.publish(code, RoomEvent::Typing { token, name });
        Ok(())
    }

    pub(super) fn stop_typing(&mut self, id: ClientId) -> Result<(), Refusal> {
        self.membership(id)?;
        self.end_typing(id);
        Ok(())
    }

    /// A typing timer ran out: the member stopped typing without saying so.
    pub(super) fn typing_expired(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without cancelling it.
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.typing = None;
        self.tell_typing_ended(id);
    }

    /// If `id` is typing, stops its timer and tells the peer. Does nothing for an idle member.
    pub(super) fn end_typing(&mut self, id: ClientId) {
        if self.stop_typing_timer(id) {
            self.tell_typing_ended(id);
        }
    }

    /// If `id` is typing, stops its timer without telling anyone (the caller does). Returns
    /// whether it was typing.
    fn stop_typing_timer(&mut self, id: ClientId) -> bool {
        let Some(key) = self
            .connections
            .get_mut(&id)
            .and_then(|connection| connection.typing.take())
        else {
            return false;
        };
        self.timers.cancel_typing(&key);
        true
    }

    /// Tells `id`'s room that `id` stopped typing.
    pub(super) fn tell_typing_ended(&mut self, id: ClientId) {
        if let Ok((code, name)) = self.membership(id)
            && let Ok(connection) = self.connection(id)
        {
            let token = connection.token;
            self.publish(code, RoomEvent::StopTyping { token, name });
        }
    }

    pub(super) fn leave_room(&mut self, id: ClientId) -> Result<(), Refusal> {
        let (code, _) = self.membership(id)?;
        self.end_typing(id);
        let step = Step::Leave {
            code,
            token: self.connection(id)?.token,
            conn: self.conn(id),
        };
        self.perform(step, Then::Left { client: id, code });
        Ok(())
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
