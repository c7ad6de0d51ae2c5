//! Steps: a request that changes the state of record becomes a [`Step`] of the store, and what
//! is to happen with its [`Outcome`] is written down as a [`Then`]. The two meet in
//! [`ChatServer::conclude`].
//!
//! Splitting each such request in two (what to ask, what to do with the answer) is what lets
//! the same rules run on either store: the in-memory store answers at once, inside
//! [`ChatServer::perform`], while a store on the network answers later, and the actor handles
//! other connections meanwhile (`remote/`).

use std::time::Duration;

use tracing::debug;

use super::remote::Baseline;
use super::rooms::Encryption;
use super::{ChatServer, Store};
use crate::error::{ErrorCode, Refusal};
use crate::message::{self, ServerMessage};
use crate::outbox::Close;
use crate::store::{Joined, Outcome, ResumedRoom, Step, Taken};
use crate::types::{ClientId, RoomCode, SessionToken};

/// What to do with the outcome of a step: the continuation of the request that asked for it.
#[derive(Debug)]
pub(super) enum Then {
    /// Nothing: the step was bookkeeping (a new session, a connection that ended, a grace
    /// period that ran out).
    Nothing,
    /// Tell `client` its name is set.
    Named {
        client: ClientId,
        name: crate::types::Username,
    },
    /// Put `client` in the room it created, or try another code.
    Created {
        client: ClientId,
        token: SessionToken,
        code: RoomCode,
        encryption: Encryption,
        attempts: u32,
    },
    /// Welcome `client` into room `code`, or tell it why not.
    Joined {
        client: ClientId,
        token: SessionToken,
        code: RoomCode,
    },
    /// `client` sent a chat message; `ends_typing` if it was typing until then (the message,
    /// once stored, tells the peer so).
    Chatted { client: ClientId, ends_typing: bool },
    /// `client` sent a read receipt.
    Read { client: ClientId },
    /// `client` left room `code`.
    Left { client: ClientId, code: RoomCode },
    /// The connection of `token` ended in room `code`: start the grace timer of its held seat.
    Dropped {
        code: Option<RoomCode>,
        token: SessionToken,
    },
    /// `client` took over the session `token`: resume its seat, if it has one, and reply.
    /// `fresh` is the connection's own session, given up on success; `last_id` the last
    /// message the client has seen.
    TookSession {
        client: ClientId,
        token: SessionToken,
        fresh: SessionToken,
        last_id: u64,
    },
    /// Give `client` the session `token` it resumed, named `name`, and its seat in `code`.
    Resumed {
        client: ClientId,
        token: SessionToken,
        fresh: SessionToken,
        name: crate::types::Username,
        code: RoomCode,
    },
    /// With `--redis`: room `code` missed events; here is what it is now (then its messages).
    Repaired { code: RoomCode },
    /// With `--redis`: the messages room `code` missed.
    Filled { code: RoomCode },
}

/// How many codes `create_room` draws before it gives up: with 887 million codes, a second draw
/// is already rare.
const CREATE_ATTEMPTS: u32 = 20;

impl ChatServer {
    /// Performs `step` on the store, then `then` with its outcome, then tells the members of
    /// the rooms concerned what happened there.
    pub(super) fn perform(&mut self, step: Step, then: Then) {
        let Store::Memory(store) = &mut self.store else {
            // Answered later, as a `RedisEvent::Done`.
            self.submit(step, then);
            return;
        };
        let outcome = store.apply(step, &mut self.notices);
        self.conclude(then, outcome);
        self.deliver_notices();
    }

    /// What a step's outcome does, for the request that asked for it.
    pub(super) fn conclude(&mut self, then: Then, outcome: Outcome) {
        match (then, outcome) {
            (Then::Nothing, _) => {}
            (Then::Chatted { .. }, Outcome::Accepted { .. }) => {
                self.metrics.messages_relayed.increment(1);
            }
            // Anything else stored no message to say that the sender's typing ended (a repeat,
            // a seat gone or moved, the store out of reach): the room is told on its own, and
            // the outcome handled as for any chat.
            (
                Then::Chatted {
                    client,
                    ends_typing: true,
                },
                outcome,
            ) => {
                self.tell_typing_ended(client);
                let then = Then::Chatted {
                    client,
                    ends_typing: false,
                };
                self.conclude(then, outcome);
            }
            (then, Outcome::Unavailable) => self.unavailable(then),
            (Then::Repaired { code }, Outcome::State(state)) => self.repaired(code, state),
            (Then::Filled { code }, Outcome::Frames(frames)) => self.filled(code, frames),
            (Then::Named { client, name }, Outcome::Done) => self.named(client, name),
            (
                Then::Created {
                    client,
                    token,
                    code,
                    encryption,
                    attempts,
                },
                outcome,
            ) => self.created(client, token, code, encryption, attempts, outcome),
            (
                Then::Joined {
                    client,
                    token,
                    code,
                },
                Outcome::Joined(joined),
            ) => {
                self.joined(client, token, code, *joined);
            }
            (Then::Joined { client, .. }, Outcome::Refused(code)) => {
                if matches!(
                    code,
                    ErrorCode::RoomNotFound | ErrorCode::RoomFull | ErrorCode::UsernameTaken
                ) {
                    self.count_failed_join(client);
                }
                self.refuse(client, &code.into());
            }
            (Then::Chatted { client, .. }, Outcome::Duplicate { frame }) => {
                // A repeat of a message already stored (the client could not know it arrived):
                // it gets the original back, and nothing is stored twice.
                if let Some(frame) = frame {
                    self.send(client, frame);
                }
            }
            (Then::Read { client }, Outcome::Future { last_id }) => {
                let refusal = Refusal::new(
                    ErrorCode::InvalidMessage,
                    format!("`up_to` is past the last message in this room, {last_id}."),
                );
                self.refuse(client, &refusal);
            }
            (Then::Read { .. }, Outcome::Done | Outcome::Ignored) => {}
            (Then::Left { client, code }, Outcome::Done) => self.left(client, code),
            (Then::Dropped { code, token }, Outcome::Held { deadline }) => {
                if let Some(code) = code {
                    self.timers
                        .start_grace(code, token, deadline, self.resume_grace);
                }
            }
            (Then::Dropped { .. }, _) => {}
            (Then::TookSession { client, .. } | Then::Resumed { client, .. }, Outcome::Expired) => {
                self.refuse(client, &ErrorCode::SessionExpired.into());
            }
            (
                Then::TookSession {
                    client,
                    token,
                    fresh,
                    last_id,
                },
                Outcome::Taken(taken),
            ) => self.took_session(client, token, fresh, last_id, *taken),
            (
                Then::Resumed {
                    client,
                    token,
                    fresh,
                    name,
                    ..
                },
                Outcome::Resumed(room),
            ) => self.resumed(client, token, fresh, name, Some(*room)),
            // The session is no longer this connection's: another one resumed it.
            (
                Then::Named { client, .. }
                | Then::Joined { client, .. }
                | Then::Chatted { client, .. }
                | Then::Read { client }
                | Then::Left { client, .. },
                Outcome::Moved,
            ) => self.close_connection_only(client, &Close::TAKEN_OVER),
            // The seat is gone (it was given up while this node could not reach the store):
            // the client is to reconnect and see for itself.
            (
                Then::Chatted { client, .. } | Then::Read { client } | Then::Left { client, .. },
                Outcome::Gone,
            ) => self.close_connection_only(client, &Close::RESTART),
            (Then::Repaired { code } | Then::Filled { code }, outcome) => {
                // Never answered so; but a repair that ends must free its place, or the queue
                // of repairs would stall.
                debug!(?outcome, "a repair ended in an outcome it did not expect");
                self.repair_ended(code);
            }
            (then, outcome) => {
                debug!(
                    ?then,
                    ?outcome,
                    "a step ended in an outcome its request did not expect"
                );
                if let Some(client) = then.client() {
                    self.refuse(client, &ErrorCode::InternalError.into());
                }
            }
        }
    }

    fn named(&mut self, client: ClientId, name: crate::types::Username) {
        let Some(connection) = self.connections.get_mut(&client) else {
            return;
        };
        let reply = ServerMessage::UsernameSet { username: &name }.encode();
        connection.name = Some(name);
        // Named in time: the client may now stay as long as it answers the heartbeat.
        if let Some(key) = connection.naming_deadline.take() {
            self.timers.cancel_naming(&key);
        }
        self.send(client, reply);
    }

    fn created(
        &mut self,
        client: ClientId,
        token: SessionToken,
        code: RoomCode,
        encryption: Encryption,
        attempts: u32,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Created => {
                let Some(connection) = self.connections.get_mut(&client) else {
                    // Gone while the store seated it (only with a store on the network).
                    self.abandon_seat(client, code, token, Duration::ZERO);
                    return;
                };
                connection.room = Some(code);
                connection.room_encrypted = encryption.encrypted;
                connection.seen_chat = 0;
                connection.seen_event = 0;
                connection.peer_typing = false;
                debug!(%client, room = %code, encryption.encrypted, "room created");
                let name = connection.name.clone();
                self.entered(client, code, Baseline::created(name));
                let reply = ServerMessage::RoomCreated {
                    room_code: code,
                    encrypted: encryption.encrypted,
                    key_check: encryption.key_check,
                };
                self.send(client, reply.encode());
            }
            // A live room has that code: draw another.
            Outcome::CodeTaken if attempts < CREATE_ATTEMPTS => {
                self.try_create_room(client, encryption, attempts + 1);
            }
            _ => self.refuse(client, &ErrorCode::InternalError.into()),
        }
    }

    fn joined(&mut self, client: ClientId, token: SessionToken, code: RoomCode, joined: Joined) {
        let Some(connection) = self.connections.get_mut(&client) else {
            // Gone while the store seated it (only with a store on the network).
            self.abandon_seat(client, code, token, Duration::ZERO);
            return;
        };
        connection.room = Some(code);
        connection.room_encrypted = joined.encrypted;
        connection.seen_chat = joined.last_id;
        connection.seen_event = joined.event_seq;
        connection.peer_typing = false;
        debug!(%client, room = %code, "room joined");
        let name = connection.name.clone();
        self.entered(client, code, Baseline::joined(name, &joined));
        // The history, in the `room_joined` and, if it does not fit, after it.
        let welcome =
            message::with_history(&joined.history, |history, _| ServerMessage::RoomJoined {
                room_code: code,
                peer: &joined.host,
                history,
                encrypted: joined.encrypted,
                key_check: joined.key_check,
            });
        self.send_all(client, welcome);
        if !joined.host_connected {
            // The host's connection dropped and it may still resume: say so, as its peer would
            // have heard had it been here.
            let notice = ServerMessage::PeerDisconnected {
                username: &joined.host,
            };
            self.send(client, notice.encode());
        }
    }

    fn left(&mut self, client: ClientId, code: RoomCode) {
        if let Some(connection) = self.connections.get_mut(&client) {
            connection.room = None;
            connection.peer_typing = false;
        }
        self.left_here(client, code);
        self.send(client, ServerMessage::RoomLeft { room_code: code }.encode());
    }

    fn took_session(
        &mut self,
        client: ClientId,
        token: SessionToken,
        fresh: SessionToken,
        last_id: u64,
        taken: Taken,
    ) {
        match taken.room {
            Some(code) => {
                let step = Step::ResumeSeat {
                    code,
                    token,
                    conn: self.conn(client),
                    last_id,
                };
                let then = Then::Resumed {
                    client,
                    token,
                    fresh,
                    name: taken.name,
                    code,
                };
                self.perform(step, then);
            }
            None => self.resumed(client, token, fresh, taken.name, None),
        }
    }

    fn resumed(
        &mut self,
        client: ClientId,
        token: SessionToken,
        fresh: SessionToken,
        name: crate::types::Username,
        room: Option<ResumedRoom>,
    ) {
        let Some(connection) = self.connections.get_mut(&client) else {
            // Gone while the store moved the seat onto it (only with a store on the network):
            // the seat is held again, for the next resume.
            if let Some(room) = room {
                self.abandon_seat(client, room.code, token, self.resume_grace);
            }
            return;
        };
        connection.token = token;
        connection.name = Some(name.clone());
        let name = Some(name);
        if let Some(key) = connection.naming_deadline.take() {
            self.timers.cancel_naming(&key);
        }
        let room_code = room.as_ref().map(|room| room.code);
        connection.room = room_code;
        connection.peer_typing = false;
        if let Some(room) = &room {
            connection.room_encrypted = room.encrypted;
            connection.seen_chat = room.last_id;
            connection.seen_event = room.event_seq;
        }
        debug!(%client, "session resumed");
        if let Some(room) = &room {
            self.entered(client, room.code, Baseline::resumed(name.clone(), room));
        }
        // The reply: where the session stands, and every message it may have missed.
        let missed = room.as_ref().map_or(&[][..], |room| &room.missed[..]);
        let peer = room.as_ref().and_then(|room| room.peer.as_ref());
        let lost = room.as_ref().map_or(0, |room| room.lost);
        if lost > 0 {
            debug!(%client, lost, "resumed with messages lost to the storage bounds");
        }
        let reply = message::with_history(missed, |missed, more| ServerMessage::Resumed {
            client_id: client,
            username: name.as_ref(),
            room_code,
            peer: peer.map(|peer| &peer.name),
            peer_connected: peer.is_some_and(|peer| peer.connected),
            missed,
            more,
            lost,
            encrypted: room.as_ref().is_some_and(|room| room.encrypted),
            key_check: room.as_ref().and_then(|room| room.key_check),
        });
        self.send_all(client, reply);
        if let Some(peer) = peer.filter(|peer| peer.read_up_to > 0) {
            let receipt = ServerMessage::Read {
                username: &peer.name,
                up_to: peer.read_up_to,
            };
            self.send(client, receipt.encode());
        }
        // The connection's own session, from its `connected`, is given up for the one it
        // resumed.
        let conn = self.conn(client);
        self.perform(
            Step::Drop {
                room: None,
                token: fresh,
                conn,
                grace: Duration::ZERO,
            },
            Then::Nothing,
        );
    }
}

impl Then {
    /// Whether what the request does changes what the actor knows of its connection (its name,
    /// room or session), so that the client's next request must wait for it.
    pub(super) fn changes_the_connection(&self) -> bool {
        !matches!(self, Then::Chatted { .. } | Then::Read { .. })
    }

    /// The client whose request this is, if any.
    pub(super) fn client(&self) -> Option<ClientId> {
        match self {
            Then::Nothing | Then::Dropped { .. } | Then::Repaired { .. } | Then::Filled { .. } => {
                None
            }
            Then::Named { client, .. }
            | Then::Created { client, .. }
            | Then::Joined { client, .. }
            | Then::Chatted { client, .. }
            | Then::Read { client }
            | Then::Left { client, .. }
            | Then::TookSession { client, .. }
            | Then::Resumed { client, .. } => Some(*client),
        }
    }
}
