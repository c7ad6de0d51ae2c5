//! Sessions: a connection arrives and is greeted, names itself, drops (and its seat is held for
//! the resume grace period), resumes on a new connection, or is forgotten; and read receipts,
//! which belong to a session.

use std::net::IpAddr;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::debug;

use super::ChatServer;
use crate::error::{ErrorCode, Refusal};
use crate::limits::limit_key;
use crate::message::{self, LeaveReason, ServerMessage};
use crate::outbox::{self, Close};
use crate::room::Room;
use crate::session::Session;
use crate::types::{ClientId, SessionToken, Username};

impl ChatServer {
    pub(super) fn connect(&mut self, id: ClientId, address: IpAddr, outbound: outbox::Sender) {
        debug!(client = %id, "client connected");
        let now = Instant::now();
        let mut client = Session::new(id, limit_key(address), outbound);
        client.limits = self.limits.new_client(now);
        if let Some(timeout) = self.username_timeout {
            client.naming_deadline = Some(self.timers.start_naming(id, timeout));
        }
        let greeting = ServerMessage::Connected {
            client_id: id,
            session_token: &client.session_token,
        }
        .encode();
        self.tokens.insert(client.session_token.clone(), id);
        self.sessions.insert(id, Box::new(client));
        self.metrics.connections.increment(1.0);
        self.send(id, greeting);
    }

    /// A client's connection ended, or is to end with `close` (a slow consumer). A room member
    /// keeps its seat for the grace period, so that a new connection can `resume` the session;
    /// anyone else is forgotten at once.
    pub(super) fn connection_lost(&mut self, id: ClientId, close: Option<&'static Close>) {
        let Some(client) = self.sessions.get(&id) else {
            return; // Already forgotten (dropped as a flooder, or its session resumed elsewhere).
        };
        if !client.is_connected() {
            return; // Already held: it was dropped as too slow, and its handler has now ended.
        }
        if self.resume_grace.is_zero() || client.room.is_none() {
            self.forget(id, close);
            return;
        }
        // The peer sees typing end before it sees the member go.
        self.end_typing(id);
        let grace = self.timers.start_grace(id, self.resume_grace);
        if let Some(client) = self.sessions.get_mut(&id) {
            client.detach(close);
            client.grace = Some(grace);
        }
        self.metrics.connections.decrement(1.0);
        debug!(client = %id, "connection lost; seat held for a resume");
        if let Ok((code, username)) = self.membership(id) {
            let notice = ServerMessage::PeerDisconnected {
                username: &username,
            };
            self.send_to_peer(code, id, notice.encode());
        }
    }

    /// A held session's grace period ended without a resume: the member is gone for good.
    pub(super) fn grace_expired(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without `DelayQueue::remove`.
        if let Some(client) = self.sessions.get_mut(&id) {
            client.grace = None;
            debug!(client = %id, "resume grace period over");
            self.forget(id, None);
        }
    }

    /// Forgets a client for good: it leaves its room (the peer gets `peer_left` with
    /// `"disconnected"`), its session can no longer be resumed, and its connection, if it still
    /// has one, is closed with `close`.
    pub(super) fn forget(&mut self, id: ClientId, close: Option<&'static Close>) {
        let Some(connected) = self.sessions.get(&id).map(|client| client.is_connected()) else {
            return; // Already gone.
        };
        self.leave(id, LeaveReason::Disconnected);
        if let Some(mut client) = self.sessions.remove(&id) {
            client.detach(close);
            // Timer keys still in the client are pending (an expired key is taken out of the
            // client before anything else), so they are there to remove.
            if let Some(key) = client.naming_deadline {
                self.timers.cancel_naming(&key);
            }
            if let Some(key) = client.grace {
                self.timers.cancel_grace(&key);
            }
            self.tokens.remove(&client.session_token);
        }
        if connected {
            self.metrics.connections.decrement(1.0);
        }
        debug!(client = %id, "client forgotten");
    }

    pub(super) fn set_username(&mut self, id: ClientId, input: &str) -> Result<(), Refusal> {
        let client = self.session_mut(id)?;
        if client.room.is_some() {
            return Err(ErrorCode::AlreadyInRoom.into());
        }
        let username = Username::parse(input)?;
        let reply = ServerMessage::UsernameSet {
            username: &username,
        }
        .encode();
        client.username = Some(username);
        // Named in time: the client may now stay as long as it answers the heartbeat.
        if let Some(key) = client.naming_deadline.take() {
            self.timers.cancel_naming(&key);
        }
        self.send(id, reply);
        Ok(())
    }

    /// A client's time to choose a name ran out: it is told why and closed (code 1008, sent by
    /// its write task when it finds its queue closed).
    pub(super) fn username_overdue(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without `DelayQueue::remove`.
        let Some(client) = self.sessions.get_mut(&id) else {
            return;
        };
        client.naming_deadline = None;
        if client.username.is_some() {
            return; // Cannot happen: naming removes the timer. Nothing to do if it did.
        }
        debug!(client = %id, "closing a connection that set no username in time");
        self.metrics.username_timeouts.increment(1);
        let refusal = Refusal::new(
            ErrorCode::UsernameRequired,
            "No username was chosen in time: closing the connection.",
        );
        self.refuse(id, &refusal);
        self.forget(id, Some(&Close::UNNAMED));
    }

    /// Takes over the session `token` names, for the new connection `id` (see
    /// [`ClientMessage::Resume`]). The session keeps everything but its connection: name, room,
    /// seat, read receipt and limits; `id`'s own fresh session is dropped.
    pub(super) fn resume(
        &mut self,
        id: ClientId,
        token: &str,
        last_id: u64,
    ) -> Result<(), Refusal> {
        let fresh = self.sessions.get(&id).ok_or(ErrorCode::InternalError)?;
        if fresh.username.is_some() || fresh.room.is_some() {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "`resume` must be the first message on a new connection.",
            ));
        }
        let token = SessionToken::from(token);
        let old_id = match self.tokens.get(&token) {
            Some(&old_id) if old_id != id => old_id,
            _ => return Err(ErrorCode::SessionExpired.into()),
        };
        // A session that never chose a name holds nothing worth resuming.
        if self
            .sessions
            .get(&old_id)
            .is_none_or(|old| old.username.is_none())
        {
            return Err(ErrorCode::SessionExpired.into());
        }
        // If the old connection is still open, its typing ends with it.
        self.end_typing(old_id);

        let (Some(mut fresh), Some(mut session)) =
            (self.sessions.remove(&id), self.sessions.remove(&old_id))
        else {
            return Err(ErrorCode::InternalError.into());
        };
        if let Some(key) = fresh.naming_deadline.take() {
            self.timers.cancel_naming(&key);
        }
        if let Some(key) = session.grace.take() {
            self.timers.cancel_grace(&key);
        }
        self.tokens.remove(&fresh.session_token);
        self.tokens.insert(token, id);
        let old_connection = session.attach(fresh.take_queue());
        session.id = id;
        if let Some(code) = session.room
            && let Some(room) = self.rooms.get_mut(&code)
        {
            room.replace(old_id, id);
        }
        let username = session.username.clone();
        let room_code = session.room;
        let history_from = session.history_from;
        self.sessions.insert(id, session);

        if let Some(old_connection) = old_connection {
            // Still open: another device or tab, or a connection that is dead but not yet
            // noticed. Its write task sends what is queued, then closes with 4000; the close
            // needs no room in the queue, so a full one cannot turn it into anything else.
            old_connection.close(&Close::TAKEN_OVER);
            self.metrics.connections.decrement(1.0);
        }
        debug!(client = %id, previous = %old_id, "session resumed");

        // The reply: where the session stands, and every message it may have missed, back to
        // when it entered the room; what a storage bound dropped meanwhile is counted as lost.
        let room = room_code.and_then(|code| self.rooms.get(&code));
        let peer = room
            .and_then(|room| room.peer_of(id))
            .and_then(|peer| self.sessions.get(&peer));
        let peer_name = peer.and_then(|peer| peer.username.clone());
        let peer_read = peer.map_or(0, |peer| peer.read_up_to);
        let wanted_from = last_id.saturating_add(1).max(history_from);
        let (missed, lost): (Vec<Utf8Bytes>, u64) = match room {
            Some(room) => (
                room.messages_from(wanted_from)
                    .map(|chat| chat.frame.clone())
                    .collect(),
                (room.lost_through() + 1).saturating_sub(wanted_from),
            ),
            None => (Vec::new(), 0),
        };
        let reply = message::with_history(&missed, |missed, more| ServerMessage::Resumed {
            client_id: id,
            username: username.as_ref(),
            room_code,
            peer: peer_name.as_ref(),
            peer_connected: peer.is_some_and(|client| client.is_connected()),
            missed,
            more,
            lost,
            encrypted: room.is_some_and(Room::is_encrypted),
        });
        if lost > 0 {
            debug!(client = %id, lost, "resumed with messages lost to the storage bounds");
        }
        self.send_all(id, reply);
        if let (Some(peer_name), true) = (&peer_name, peer_read > 0) {
            let receipt = ServerMessage::Read {
                username: peer_name,
                up_to: peer_read,
            };
            self.send(id, receipt.encode());
        }
        if let (Some(code), Some(username)) = (room_code, &username) {
            let notice = ServerMessage::PeerReconnected { username };
            self.send_to_peer(code, id, notice.encode());
        }
        Ok(())
    }

    /// A read receipt: tells the peer how far this member has read. Receipts only move
    /// forward: one that is not past the last is ignored.
    pub(super) fn read(&mut self, id: ClientId, up_to: u64) -> Result<(), Refusal> {
        let (code, username) = self.membership(id)?;
        let last_id = self.rooms.get(&code).map_or(0, Room::last_id);
        if up_to > last_id {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                format!("`up_to` is {up_to}, but the last message in this room is {last_id}."),
            ));
        }
        let client = self.session_mut(id)?;
        if up_to <= client.read_up_to {
            return Ok(());
        }
        client.read_up_to = up_to;
        let receipt = ServerMessage::Read {
            username: &username,
            up_to,
        };
        self.send_to_peer(code, id, receipt.encode());
        Ok(())
    }
}
