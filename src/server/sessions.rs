//! Sessions: a connection arrives and is greeted with a new session, names itself, drops (its
//! seat held for the resume grace period, or given up), resumes a session on a new connection,
//! or is closed; and read receipts, which belong to a session.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::steps::Then;
use super::{ChatServer, Store};
use crate::connection::Connection;
use crate::error::{ErrorCode, Refusal};
use crate::limits::limit_key;
use crate::message::ServerMessage;
use crate::outbox::{self, Close};
use crate::store::{Conn, Step};
use crate::types::{ClientId, RoomCode, SessionToken, Username};

impl ChatServer {
    /// A new connection: it gets a session of its own, and is greeted with `connected`.
    pub(super) fn connect(&mut self, id: ClientId, address: IpAddr, outbound: outbox::Sender) {
        debug!(client = %id, "client connected");
        let token = SessionToken::random();
        let mut connection = Connection::new(id, token, limit_key(address), outbound);
        connection.limits = self.limits.new_client(Instant::now());
        if let Some(timeout) = self.username_timeout {
            connection.naming_deadline = Some(self.timers.start_naming(id, timeout));
        }
        let greeting = ServerMessage::Connected {
            client_id: id,
            session_token: &token,
        }
        .encode();
        self.connections.insert(id, Box::new(connection));
        self.metrics.connections.increment(1.0);
        self.send(id, greeting);
        let conn = self.conn(id);
        self.perform(Step::Open { token, conn }, Then::Nothing);
    }

    /// A client's connection ended by itself (closed, cut, silent): a room member keeps its
    /// seat for the grace period, so that a new connection can `resume` the session.
    pub(super) fn connection_lost(&mut self, id: ClientId) {
        self.end_connection(id, None, self.resume_grace);
    }

    /// Closes a connection the server gives up on, with `close`, keeping its seat for
    /// `grace` (a slow consumer may resume; a flooder or an unnamed client may not: zero).
    pub(super) fn close_connection(
        &mut self,
        id: ClientId,
        close: &'static Close,
        grace: Duration,
    ) {
        self.end_connection(id, Some(close), grace);
    }

    /// Forgets connection `id` (closing it with `close`, unless it is already gone), and tells
    /// the store: its seat, if it has one, is held for `grace`, or given up.
    fn end_connection(&mut self, id: ClientId, close: Option<&'static Close>, grace: Duration) {
        // The peer sees typing end before it sees the member go.
        self.end_typing(id);
        let Some((token, room)) = self.forget_connection(id, close) else {
            return; // Already gone (dropped as a flooder, or its session resumed elsewhere).
        };
        debug!(client = %id, in_room = room.is_some(), "connection ended");
        let conn = self.conn(id);
        self.perform(
            Step::Drop {
                room,
                token,
                conn,
                grace,
            },
            Then::Dropped { code: room, token },
        );
    }

    /// Closes connection `id` with `close` without telling the store anything: its session is
    /// no longer this connection's (resumed elsewhere), or no longer is at all.
    pub(super) fn close_connection_only(&mut self, id: ClientId, close: &'static Close) {
        if self.forget_connection(id, Some(close)).is_some() {
            debug!(client = %id, code = close.code, "connection closed");
        }
    }

    /// Another connection resumed the session of `conn`: if it is one of ours, it is closed
    /// with 4000. Its typing ends without a word: its peer, told of the resume, sees typing end
    /// first (see `delivery.rs`).
    pub(super) fn kick(&mut self, conn: Conn) {
        if conn.node == self.node {
            self.close_connection_only(conn.client, &Close::TAKEN_OVER);
        } else if let Store::Redis(store) = &self.store {
            // On another node: that node is asked to close it.
            store.kick_remote(conn);
        }
    }

    /// Removes connection `id` from the actor, cancelling its timers and closing its queue with
    /// `close` if given, and returns the session it held and its room.
    fn forget_connection(
        &mut self,
        id: ClientId,
        close: Option<&'static Close>,
    ) -> Option<(SessionToken, Option<RoomCode>)> {
        let connection = *self.connections.remove(&id)?;
        if let Some(key) = &connection.naming_deadline {
            self.timers.cancel_naming(key);
        }
        if let Some(key) = &connection.typing {
            self.timers.cancel_typing(key);
        }
        self.metrics.connections.decrement(1.0);
        self.forget_waiting(id);
        if let Some(code) = connection.room {
            self.left_here(id, code);
        }
        let held = (connection.token, connection.room);
        // Dropping the queue without a close is for a connection that is gone already: its
        // write task has said its farewell and reads the queue no more.
        if let Some(close) = close {
            connection.close(close);
        }
        Some(held)
    }

    /// A held seat's grace period ended: unless its member resumed meanwhile, it is gone for
    /// good.
    pub(super) fn grace_expired(&mut self, code: RoomCode, token: SessionToken, deadline: u64) {
        debug!(room = %code, "resume grace period over");
        self.perform(
            Step::Expire {
                code,
                token,
                deadline,
            },
            Then::Nothing,
        );
    }

    pub(super) fn set_username(&mut self, id: ClientId, input: &str) -> Result<(), Refusal> {
        let connection = self.connection(id)?;
        if connection.room.is_some() {
            return Err(ErrorCode::AlreadyInRoom.into());
        }
        let name = Username::parse(input)?;
        let step = Step::Name {
            token: connection.token,
            conn: self.conn(id),
            name: name.clone(),
        };
        self.perform(step, Then::Named { client: id, name });
        Ok(())
    }

    /// A client's time to choose a name ran out: it is told why and closed with 1008.
    pub(super) fn username_overdue(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without cancelling it.
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.naming_deadline = None;
        if connection.name.is_some() {
            return; // Cannot happen: naming removes the timer. Nothing to do if it did.
        }
        debug!(client = %id, "closing a connection that set no username in time");
        self.metrics.username_timeouts.increment(1);
        let refusal = Refusal::new(
            ErrorCode::UsernameRequired,
            "No username was chosen in time: closing the connection.",
        );
        self.refuse(id, &refusal);
        self.close_connection(id, &Close::UNNAMED, Duration::ZERO);
    }

    /// Takes over the session `token` names, for connection `id` (see
    /// [`crate::message::ClientMessage::Resume`]). The session keeps everything but its
    /// connection: name, room, seat and read receipt; the connection's own fresh session is
    /// given up.
    pub(super) fn resume(
        &mut self,
        id: ClientId,
        token: &str,
        last_id: u64,
    ) -> Result<(), Refusal> {
        let connection = self.connection(id)?;
        if connection.name.is_some() || connection.room.is_some() {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "`resume` must be the first message on a new connection.",
            ));
        }
        // A token the server never issues matches no session.
        let Some(token) = SessionToken::parse(token).filter(|&token| token != connection.token)
        else {
            return Err(ErrorCode::SessionExpired.into());
        };
        let fresh = connection.token;
        let step = Step::TakeSession {
            token,
            conn: self.conn(id),
        };
        let then = Then::TookSession {
            client: id,
            token,
            fresh,
            last_id,
        };
        self.perform(step, then);
        Ok(())
    }

    /// A read receipt: tells the peer how far this member has read. Receipts only move
    /// forward: one that is not past the last is ignored.
    pub(super) fn read(&mut self, id: ClientId, up_to: u64) -> Result<(), Refusal> {
        let (code, _) = self.membership(id)?;
        let step = Step::Read {
            code,
            token: self.connection(id)?.token,
            conn: self.conn(id),
            up_to,
        };
        self.perform(step, Then::Read { client: id });
        Ok(())
    }
}
